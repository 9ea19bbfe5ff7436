//! Restoring an archived tag: it is listed and assignable again.

use entity::{enums::TagStatus, tag};
use sea_orm::DatabaseTransaction;

use super::model::Author;
use super::versions::set_status;
use crate::domain::{TagId, Versions};
use crate::error::AppResult;

/// Moves an archived tag back to `ACTIVE`.
///
/// # Errors
/// `VALIDATION` when the tag is not archived; `CONFLICT` when it moved.
pub(super) async fn restore(
    txn: &DatabaseTransaction,
    by: &Author,
    id: TagId,
    base: &Versions,
) -> AppResult<tag::Model> {
    set_status(txn, by, id, (TagStatus::Archived, TagStatus::Active), base, "restore").await
}
