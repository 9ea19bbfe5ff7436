//! Writing a tag's or group's new state as its next version, and reading
//! the versions back. Each write is a conditional update on the version the
//! edit was checked against (zero rows → `CONFLICT`), followed by the
//! version row in `store::library_version`.

use entity::{enums::TagStatus, tag, tag_group};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    sea_query::{Expr, ExprTrait},
};
use serde::Serialize;
use serde_json::json;

use super::model::{Author, GroupState, TagState};
use crate::authz::Principal;
use crate::domain::{ObjectKey, TagGroupId, TagId, Versions};
use crate::error::{AppError, AppResult};
use crate::service::tag_library::{find_group, find_tag};
use crate::store::constraint::on_constraint;
use crate::store::library_version::{self, NewVersion, VersionEntry};

pub(super) async fn load_tag(txn: &impl ConnectionTrait, id: TagId) -> AppResult<tag::Model> {
    tag::Entity::find_by_id(id.0).one(txn).await?.ok_or_else(|| AppError::not_found("tag", id.0))
}

pub(super) async fn load_group(txn: &impl ConnectionTrait, id: TagGroupId) -> AppResult<tag_group::Model> {
    tag_group::Entity::find_by_id(id.0).one(txn).await?.ok_or_else(|| AppError::not_found("tag group", id.0))
}

/// The version of `key` the edit was checked against.
pub(super) fn base_of(base: &Versions, key: ObjectKey) -> AppResult<i32> {
    base.get(&key).copied().ok_or_else(|| AppError::internal(anyhow::anyhow!("no base version for {key}")))
}

fn stale(key: ObjectKey) -> AppError {
    AppError::Conflict(format!("{key} changed meanwhile; reload and retry"))
}

fn state_json(state: impl Serialize) -> AppResult<serde_json::Value> {
    serde_json::to_value(state).map_err(AppError::internal)
}

/// The state of a tag at `version`: a stored version, or the current one.
///
/// # Errors
/// `VALIDATION` for a version that was never stored.
pub(super) async fn stored_tag_state(
    db: &impl ConnectionTrait,
    current: &tag::Model,
    version: i32,
) -> AppResult<TagState> {
    if version == current.version {
        return Ok(TagState::from(current));
    }
    let state =
        library_version::stored_state(db, ObjectKey::tag(TagId(current.id)), version).await?.ok_or_else(|| {
            AppError::validation("version", format!("tag {} has no stored version {version}", current.id))
        })?;
    serde_json::from_value(state).map_err(AppError::internal)
}

/// Stores version `version` of `key`, made `by` somebody with `action`.
async fn record(
    txn: &impl ConnectionTrait,
    by: &Author,
    key: ObjectKey,
    version: i32,
    action: &str,
    state: impl Serialize,
) -> AppResult<()> {
    let row = NewVersion {
        key,
        version,
        action,
        state: state_json(state)?,
        changed_by: Some(by.actor),
        change_request: by.change_request,
        at: by.at,
    };
    library_version::insert(txn, row).await
}

/// Records the first version of an object `by` created.
pub(super) async fn record_created(
    txn: &impl ConnectionTrait,
    by: &Author,
    key: ObjectKey,
    state: impl Serialize,
) -> AppResult<()> {
    record(txn, by, key, 1, "create", state).await
}

/// Writes a tag's new state if it is still at `base`, and its version.
///
/// # Errors
/// `CONFLICT` when the tag moved past `base` or the group has a tag of
/// that name.
pub(super) async fn write_tag(
    txn: &DatabaseTransaction,
    by: &Author,
    before: &tag::Model,
    after: TagState,
    base: i32,
    action: &str,
) -> AppResult<tag::Model> {
    let key = ObjectKey::tag(TagId(before.id));
    library_version::ensure_recorded(txn, key, before.version, state_json(TagState::from(before))?, before.updated_at)
        .await?;
    let result = tag::Entity::update_many()
        .col_expr(tag::Column::GroupId, Expr::value(after.group_id))
        .col_expr(tag::Column::Name, Expr::value(after.name.clone()))
        .col_expr(tag::Column::Description, Expr::value(after.description.clone()))
        .col_expr(tag::Column::Aliases, Expr::value(json!(after.aliases)))
        .col_expr(tag::Column::CanonicalTagId, Expr::value(after.canonical_tag_id))
        .col_expr(tag::Column::TtlSeconds, Expr::value(after.ttl_seconds))
        .col_expr(tag::Column::Status, Expr::value(after.status.as_str()))
        .col_expr(tag::Column::MergedIntoId, Expr::value(after.merged_into_id))
        .col_expr(tag::Column::Version, Expr::col(tag::Column::Version).add(1))
        .col_expr(tag::Column::UpdatedAt, Expr::value(by.at))
        .filter(tag::Column::Id.eq(before.id))
        .filter(tag::Column::Version.eq(base))
        .exec(txn)
        .await
        .map_err(|e| on_constraint(e, |_| format!("the group already has a tag named {:?}", after.name)))?;
    if result.rows_affected != 1 {
        return Err(stale(key));
    }
    record(txn, by, key, base + 1, action, &after).await?;
    load_tag(txn, TagId(before.id)).await
}

/// Writes a group's new state if it is still at `base`, and its version.
///
/// # Errors
/// `CONFLICT` when the group moved past `base` or its layer has a group of
/// that name.
pub(super) async fn write_group(
    txn: &DatabaseTransaction,
    by: &Author,
    before: &tag_group::Model,
    after: GroupState,
    base: i32,
) -> AppResult<tag_group::Model> {
    let key = ObjectKey::tag_group(TagGroupId(before.id));
    library_version::ensure_recorded(
        txn,
        key,
        before.version,
        state_json(GroupState::from(before))?,
        before.updated_at,
    )
    .await?;
    let result = tag_group::Entity::update_many()
        .col_expr(tag_group::Column::Name, Expr::value(after.name.clone()))
        .col_expr(tag_group::Column::Description, Expr::value(after.description.clone()))
        .col_expr(tag_group::Column::Category, Expr::value(after.category.as_str()))
        .col_expr(tag_group::Column::VisibilityClass, Expr::value(after.visibility_class.clone()))
        .col_expr(tag_group::Column::Exclusive, Expr::value(after.exclusive))
        .col_expr(tag_group::Column::NamingPattern, Expr::value(after.naming_pattern.clone()))
        .col_expr(tag_group::Column::Version, Expr::col(tag_group::Column::Version).add(1))
        .col_expr(tag_group::Column::UpdatedAt, Expr::value(by.at))
        .filter(tag_group::Column::Id.eq(before.id))
        .filter(tag_group::Column::Version.eq(base))
        .exec(txn)
        .await
        .map_err(|e| on_constraint(e, |_| format!("this library layer already has a group named {:?}", after.name)))?;
    if result.rows_affected != 1 {
        return Err(stale(key));
    }
    record(txn, by, key, base + 1, "update", &after).await?;
    load_group(txn, TagGroupId(before.id)).await
}

/// Moves a tag from status `from` to `to` (archive, restore).
pub(super) async fn set_status(
    txn: &DatabaseTransaction,
    by: &Author,
    id: TagId,
    (from, to): (TagStatus, TagStatus),
    base: &Versions,
    action: &str,
) -> AppResult<tag::Model> {
    let before = load_tag(txn, id).await?;
    if before.status != from {
        return Err(AppError::validation(
            "id",
            format!("tag {:?} is {}, not {}", before.name, before.status.as_str(), from.as_str()),
        ));
    }
    let after = TagState { status: to, ..TagState::from(&before) };
    write_tag(txn, by, &before, after, base_of(base, ObjectKey::tag(id))?, action).await
}

/// The history of a tag the caller may see, newest first.
///
/// # Errors
/// `NOT_FOUND` for invisible tags.
pub async fn tag_history(db: &impl ConnectionTrait, principal: &Principal, id: TagId) -> AppResult<Vec<VersionEntry>> {
    let t = find_tag(db, principal, id).await?;
    let state = state_json(TagState::from(&t))?;
    library_version::history(db, ObjectKey::tag(TagId(t.id)), t.version, state, t.updated_at).await
}

/// The history of a tag group the caller may see, newest first.
///
/// # Errors
/// `NOT_FOUND` for invisible groups.
pub async fn group_history(
    db: &impl ConnectionTrait,
    principal: &Principal,
    id: TagGroupId,
) -> AppResult<Vec<VersionEntry>> {
    let g = find_group(db, principal, id).await?;
    let state = state_json(GroupState::from(&g))?;
    library_version::history(db, ObjectKey::tag_group(TagGroupId(g.id)), g.version, state, g.updated_at).await
}
