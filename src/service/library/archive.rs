//! Archiving a tag: it leaves every list and cannot be assigned; its
//! assignments and history stay.

use entity::{enums::TagStatus, tag};
use sea_orm::DatabaseTransaction;

use super::model::Author;
use super::versions::set_status;
use crate::domain::{TagId, Versions};
use crate::error::AppResult;

/// Moves an active tag to `ARCHIVED`.
///
/// # Errors
/// `VALIDATION` when the tag is not active; `CONFLICT` when it moved.
pub(super) async fn archive(
    txn: &DatabaseTransaction,
    by: &Author,
    id: TagId,
    base: &Versions,
) -> AppResult<tag::Model> {
    set_status(txn, by, id, (TagStatus::Active, TagStatus::Archived), base, "archive").await
}
