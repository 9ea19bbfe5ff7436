//! Rolling a tag back to an earlier version: that version's state is
//! written back as a new version (an edit like any other, so it may need
//! approval and is checked like an update).

use entity::tag;
use sea_orm::DatabaseTransaction;

use super::model::{Author, TagChanges};
use super::update_tag::update_tag;
use super::versions::{load_tag, stored_tag_state};
use crate::domain::{TagGroupId, TagId, Versions};
use crate::error::AppResult;

/// Writes the state tag `id` had at `version` back as its next version.
///
/// # Errors
/// `VALIDATION` for a version never stored or a state that no longer fits
/// (a merged state, a move its holders do not allow); as `update_tag`.
pub(super) async fn rollback(
    txn: &DatabaseTransaction,
    by: &Author,
    id: TagId,
    version: i32,
    base: &Versions,
) -> AppResult<tag::Model> {
    let current = load_tag(txn, id).await?;
    let state = stored_tag_state(txn, &current, version).await?;
    let changes = TagChanges {
        name: Some(state.name),
        description: Some(state.description),
        aliases: Some(state.aliases),
        canonical_tag_id: Some(state.canonical_tag_id.map(TagId)),
        ttl_seconds: Some(state.ttl_seconds),
        group_id: state.group_id.map(TagGroupId),
        status: Some(state.status),
    };
    update_tag(txn, by, id, &changes, base, "rollback").await
}
