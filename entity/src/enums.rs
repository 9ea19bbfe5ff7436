//! Enumerations stored as short strings (portable between SQLite and
//! PostgreSQL, readable in a SQL shell).

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize)]
        #[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
        #[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
        #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
        pub enum $name {
            $(
                $(#[$vmeta])*
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
    OrgUnitKind {
        /// Headquarters, the root.
        Hq = "HQ",
        /// A region under HQ.
        Region = "REGION",
        /// A store.
        Store = "STORE",
    }
);

stored_enum!(
    /// A customer's gender.
    Gender {
        /// Female.
        Female = "FEMALE",
        /// Male.
        Male = "MALE",
        /// Not given.
        Unknown = "UNKNOWN",
    }
);

stored_enum!(
    /// Category of a tag group.
    TagCategory {
        /// Basic attributes (age band, region, …).
        Basic = "BASIC",
        /// What the customer does (buys, visits, …).
        Behavior = "BEHAVIOR",
        /// What the customer likes.
        Interest = "INTEREST",
        /// What the customer is worth.
        Value = "VALUE",
        /// Lifecycle stage (客户阶段).
        Lifecycle = "LIFECYCLE",
        /// Service notes.
        Service = "SERVICE",
        /// Predictions by models.
        Predictive = "PREDICTIVE",
    }
);

stored_enum!(
    /// Where a tag stands in its life.
    TagStatus {
        /// In use.
        Active = "ACTIVE",
        /// Retired: in no list, cannot be assigned; history stays.
        Archived = "ARCHIVED",
        /// Merged into another tag (see `mergedInto`).
        Merged = "MERGED",
    }
);

stored_enum!(
    /// Where an assignment came from.
    TagSource {
        /// Put on by hand.
        Manual = "MANUAL",
        /// Put on by a bulk call.
        Bulk = "BULK",
        /// Put on by a rule.
        Rule = "RULE",
        /// Put on by an import.
        Import = "IMPORT",
        /// Put on by another system through the API.
        Api = "API",
        /// Moved by a merge of two tags.
        Merge = "MERGE",
        /// Taken off when the assignment's `expiresAt` passed.
        Expiry = "EXPIRY",
    }
);

stored_enum!(
    /// What a tag event did.
    TagOp {
        /// The tag was put on.
        Add = "ADD",
        /// The tag was taken off.
        Remove = "REMOVE",
    }
);

stored_enum!(
    /// How an audited action ended.
    AuditOutcome {
        /// It was done.
        Ok = "OK",
        /// It was refused (permission, guarded field, lock).
        Denied = "DENIED",
        /// It failed.
        Failed = "FAILED",
    }
);

stored_enum!(
    /// Kind of a tag alert.
    AlertKind {
        /// A tag's holder count crossed a threshold.
        TagCountThreshold = "TAG_COUNT",
    }
);

stored_enum!(
    /// Dynamic segments are re-evaluated on every use; static ones keep the
    /// members they had when saved.
    SegmentKind {
        /// Re-evaluated on every use.
        Dynamic = "DYNAMIC",
        /// Keeps the members it had when saved.
        Static = "STATIC",
    }
);

stored_enum!(
    /// Where a change request stands.
    ChangeRequestStatus {
        /// Waiting for a decision.
        Pending = "PENDING",
        /// Approved and applied.
        Approved = "APPROVED",
        /// Rejected, with a reason.
        Rejected = "REJECTED",
        /// Its target changed since it was filed; it can no longer apply.
        Stale = "STALE",
        /// Withdrawn by its requester.
        Cancelled = "CANCELLED",
    }
);

stored_enum!(
    /// What a customer event reports (automatic tagging's input).
    CustomerEventKind {
        /// The customer wrote a message (with its text).
        MessageReceived = "MESSAGE_RECEIVED",
        /// The customer clicked a link (URL and title).
        LinkClicked = "LINK_CLICKED",
        /// The customer joined a group chat.
        GroupJoined = "GROUP_JOINED",
        /// The customer left a group chat.
        GroupLeft = "GROUP_LEFT",
        /// The customer paid an order (amount, order id).
        OrderPaid = "ORDER_PAID",
        /// The customer was added as a contact (with the channel).
        CustomerAdded = "CUSTOMER_ADDED",
        /// The customer submitted a form (form and answers).
        FormSubmitted = "FORM_SUBMITTED",
        /// Anything else: a name and JSON properties.
        Custom = "CUSTOM",
    }
);

stored_enum!(
    /// Where an automatic-tagging rule stands.
    RuleStatus {
        /// Fires on events.
        Enabled = "ENABLED",
        /// Kept, but fires on nothing.
        Disabled = "DISABLED",
        /// Retired: fires on nothing and cannot be enabled again.
        Archived = "ARCHIVED",
    }
);

stored_enum!(
    /// Where a scheduled rule's run stands.
    RuleRunStatus {
        /// An instance is running it (while its lease holds).
        Running = "RUNNING",
        /// Every customer was judged.
        Succeeded = "SUCCEEDED",
        /// Stopped by an error (see `error`).
        Failed = "FAILED",
    }
);

stored_enum!(
    /// Where a bulk job stands.
    JobStatus {
        /// Waiting for an instance to run it.
        Queued = "QUEUED",
        /// Waiting for its change request to be approved.
        AwaitingApproval = "AWAITING_APPROVAL",
        /// An instance is running it.
        Running = "RUNNING",
        /// Every customer was processed.
        Succeeded = "SUCCEEDED",
        /// Stopped by an error; the counts say exactly what was applied.
        Failed = "FAILED",
        /// Cancelled; the counts say exactly what was applied.
        Cancelled = "CANCELLED",
    }
);

stored_enum!(
    /// What a governance alert is about.
    GovernanceAlertKind {
        /// A customer carries more tags than the alert threshold.
        TagOverload = "TAG_OVERLOAD",
        /// A tag almost nobody carries, or nobody tagged lately.
        ZombieTag = "ZOMBIE_TAG",
        /// Two tags that are probably one idea.
        DuplicateTags = "DUPLICATE_TAGS",
        /// A scheduled rule run failed.
        FailedRun = "FAILED_RUN",
        /// A modification lock past its expiry, or whose holder is gone.
        StrandedLock = "STRANDED_LOCK",
    }
);

stored_enum!(
    /// Where a governance alert stands.
    AlertStatus {
        /// Raised, nobody has looked at it yet.
        Open = "OPEN",
        /// Somebody is on it.
        Acknowledged = "ACKNOWLEDGED",
        /// Dealt with, or its condition went away.
        Resolved = "RESOLVED",
    }
);
