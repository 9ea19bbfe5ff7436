//! Enumerations stored as short strings (portable between SQLite and
//! PostgreSQL, readable in a SQL shell).

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $value:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
        #[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
        #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $(
                #[sea_orm(string_value = $value)]
                $variant,
            )+
        }

        impl $name {
            /// The stored (and API) spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value,)+
                }
            }
        }
    };
}

stored_enum!(
    /// Level of an org unit. Depth may grow; code never assumes three levels.
    OrgUnitKind { Hq = "HQ", Region = "REGION", Store = "STORE" }
);

stored_enum!(
    Gender { Female = "FEMALE", Male = "MALE", Unknown = "UNKNOWN" }
);

stored_enum!(
    /// Category of a tag group (SPEC §4).
    TagCategory {
        Basic = "BASIC",
        Behavior = "BEHAVIOR",
        Interest = "INTEREST",
        Value = "VALUE",
        Lifecycle = "LIFECYCLE",
        Service = "SERVICE",
        Predictive = "PREDICTIVE",
    }
);

stored_enum!(
    TagStatus { Active = "ACTIVE", Archived = "ARCHIVED", Merged = "MERGED" }
);

stored_enum!(
    /// Where an assignment came from (SPEC §5); `MERGE`: moved by a merge of two tags.
    TagSource {
        Manual = "MANUAL",
        Bulk = "BULK",
        Rule = "RULE",
        Import = "IMPORT",
        Api = "API",
        Merge = "MERGE",
    }
);

stored_enum!(
    TagOp { Add = "ADD", Remove = "REMOVE" }
);

stored_enum!(
    AuditOutcome { Ok = "OK", Denied = "DENIED", Failed = "FAILED" }
);

stored_enum!(
    AlertKind { TagCountThreshold = "TAG_COUNT" }
);

stored_enum!(
    /// Dynamic segments are re-evaluated on every use; static ones keep the
    /// members they had when saved.
    SegmentKind { Dynamic = "DYNAMIC", Static = "STATIC" }
);

stored_enum!(
    /// Where a change request stands (SPEC §6).
    ChangeRequestStatus {
        Pending = "PENDING",
        Approved = "APPROVED",
        Rejected = "REJECTED",
        Stale = "STALE",
        Cancelled = "CANCELLED",
    }
);
