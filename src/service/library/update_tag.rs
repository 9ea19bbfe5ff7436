//! Editing a tag: rename, description, aliases, canonical tag, TTL, or a
//! move to another group (its holders must be within the new group's
//! library). Rollbacks reuse it to write an earlier state back.

use entity::{enums::TagStatus, tag};
use sea_orm::DatabaseTransaction;

use super::checks::{check_canonical, check_move};
use super::model::{Author, TagChanges, TagState};
use super::versions::{base_of, load_group, load_tag, write_tag};
use crate::domain::{Aliases, Description, NamingPattern, ObjectKey, TagGroupId, TagId, TagName, Versions};
use crate::error::{AppError, AppResult};
use crate::service::tag_library::check_ttl;

/// Applies `changes` to tag `id` as a version with `action`.
///
/// # Errors
/// `VALIDATION` for a merged tag, a personal tag, bad values, a move its
/// holders do not allow or an edit that changes nothing; `CONFLICT` as
/// [`write_tag`].
pub(super) async fn update_tag(
    txn: &DatabaseTransaction,
    by: &Author,
    id: TagId,
    changes: &TagChanges,
    base: &Versions,
    action: &str,
) -> AppResult<tag::Model> {
    let before = load_tag(txn, id).await?;
    if before.status == TagStatus::Merged {
        return Err(AppError::validation(
            "id",
            format!("tag {:?} was merged; edit the tag it was merged into", before.name),
        ));
    }
    let mut after = TagState::from(&before);
    let group_id = changes
        .group_id
        .or(before.group_id.map(TagGroupId))
        .ok_or_else(|| AppError::validation("id", "not an enterprise tag"))?;
    let group = load_group(txn, group_id).await?;
    if let Some(name) = &changes.name {
        after.name = TagName::parse(name, "name")?.into_inner();
    }
    if let Some(description) = &changes.description {
        after.description = Description::parse(Some(description), "description")?.into_inner();
    }
    if let Some(aliases) = &changes.aliases {
        after.aliases = Aliases::parse(aliases, "aliases")?.into_vec();
    }
    if let Some(ttl) = changes.ttl_seconds {
        check_ttl(ttl)?;
        after.ttl_seconds = ttl;
    }
    if let Some(status) = changes.status {
        if status == TagStatus::Merged {
            return Err(AppError::validation("version", "a tag cannot be rolled back into a merged state"));
        }
        after.status = status;
    }
    if let Some(pattern) = &group.naming_pattern {
        NamingPattern::parse(pattern, "namingPattern")?.check(&TagName::parse(&after.name, "name")?, "name")?;
    }
    if Some(group.id) != before.group_id {
        check_move(txn, &before, &group, None).await?;
        after.group_id = Some(group.id);
    }
    if let Some(canonical) = changes.canonical_tag_id {
        if let Some(canonical) = canonical {
            check_canonical(txn, canonical, &group, Some(id)).await?;
        }
        after.canonical_tag_id = canonical.map(|c| c.0);
    }
    if after == TagState::from(&before) {
        return Err(AppError::validation("input", "the edit changes nothing"));
    }
    write_tag(txn, by, &before, after, base_of(base, ObjectKey::tag(id))?, action).await
}
