//! Domain types that parse raw input once. Services take only these, so a
//! value that reached a service has already been checked.

mod id;
mod identity;
mod name;
mod object_key;
mod page;
mod phone;
mod reason;
pub mod tag;

pub use id::{
    AlertId, AuditEntryId, ChangeRequestId, CustomerEventId, CustomerId, EventSeq, JobId, LockId, OrgUnitId, RuleId,
    SegmentId, StaffId, TagGroupId, TagId, decode_global, encode_global, parse_ids,
};
pub use identity::{Identity, IdentitySource};
pub use name::{
    Aliases, CustomerName, Description, Email, ExternalIdentity, IdentityValue, Login, NamingPattern, OptionalText,
    RoleName, StaffName, TagName, VisibilityClass,
};
pub use object_key::{ObjectKey, ObjectKind, Versions};
pub use page::{Cursor, Direction, Page, PageArgs, PageSize};
pub use phone::Phone;
pub use reason::Reason;
