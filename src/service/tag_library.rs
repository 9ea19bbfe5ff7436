//! Tag libraries (标签库): the HQ, region and store layers of tag groups and
//! tags, and each staff member's personal tags.
//!
//! Which tags and groups a caller sees is the rule of
//! [`crate::authz::visibility`]; the library reads through it.

use std::collections::HashMap;

use chrono::Utc;
use entity::{enums::TagStatus, org_unit, tag, tag_group};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use serde_json::json;

use super::audit::{self, AuditEntry};
pub use crate::authz::visibility::{VisibleTag, find_group, group_visible, groups_by_id, tag_visible, visible_tags};
use crate::authz::{Action, Principal};
pub use crate::domain::tag::{in_force, is_retired};
use crate::domain::{Description, OrgUnitId, TagId, TagName};
use crate::error::{AppError, AppResult};
use crate::store::constraint::on_constraint;

/// Longest assignment TTL a tag may carry (ten years).
const MAX_TTL_SECONDS: i64 = 10 * 366 * 24 * 3600;

/// One layer of an effective library: the groups of one org unit.
#[derive(Debug, Clone)]
pub struct LibraryLayer {
    pub org_unit: org_unit::Model,
    pub groups: Vec<tag_group::Model>,
}

/// The effective library of an org unit, root layer first.
#[derive(Debug, Clone)]
pub struct Library {
    pub org_unit: org_unit::Model,
    pub layers: Vec<LibraryLayer>,
}

/// The effective library of an org unit: HQ + region + … + the unit.
///
/// # Errors
/// `NOT_FOUND` when the caller may not read the unit's library.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn library_for(db: &impl ConnectionTrait, principal: &Principal, unit: OrgUnitId) -> AppResult<Library> {
    if !principal.may(Action::TagLibraryRead, unit.0) {
        return Err(AppError::not_found("org unit", unit));
    }
    let chain: Vec<org_unit::Model> = principal.org.ancestors_or_self(unit.0).into_iter().cloned().collect();
    let groups: Vec<tag_group::Model> = tag_group::Entity::find()
        .filter(tag_group::Column::OrgUnitId.is_in(chain.iter().map(|u| u.id)))
        .order_by_asc(tag_group::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .filter(|g| group_visible(principal, g, Some(unit.0)))
        .collect();
    let mut by_unit: HashMap<i64, Vec<tag_group::Model>> = HashMap::new();
    for group in groups {
        by_unit.entry(group.org_unit_id).or_default().push(group);
    }
    let org_unit = chain.last().cloned().ok_or_else(|| AppError::not_found("org unit", unit))?;
    let layers = chain
        .into_iter()
        .map(|u| LibraryLayer { groups: by_unit.remove(&u.id).unwrap_or_default(), org_unit: u })
        .collect();
    Ok(Library { org_unit, layers })
}

/// A tag the caller may see.
///
/// # Errors
/// `NOT_FOUND` for missing and invisible tags alike.
pub async fn find_tag(db: &impl ConnectionTrait, principal: &Principal, id: TagId) -> AppResult<tag::Model> {
    let tags = visible_tags(db, principal, &[id]).await?;
    tags.into_values().next().map(|v| v.tag).ok_or_else(|| AppError::not_found("tag", id))
}

/// The tags of the given groups, active ones only unless asked.
///
/// # Errors
/// Database errors.
pub async fn tags_of_groups(
    db: &impl ConnectionTrait,
    group_ids: &[i64],
    include_archived: bool,
) -> AppResult<HashMap<i64, Vec<tag::Model>>> {
    let mut query = tag::Entity::find().filter(tag::Column::GroupId.is_in(group_ids.iter().copied()));
    if !include_archived {
        query = query.filter(tag::Column::Status.eq(TagStatus::Active));
    }
    let mut out: HashMap<i64, Vec<tag::Model>> = HashMap::new();
    for tag in query.order_by_asc(tag::Column::Id).all(db).await? {
        if let Some(group) = tag.group_id {
            out.entry(group).or_default().push(tag);
        }
    }
    Ok(out)
}

/// The visibility classes in use by tag groups, sorted.
///
/// # Errors
/// Database errors.
pub async fn visibility_classes(db: &impl ConnectionTrait) -> AppResult<Vec<String>> {
    let mut classes: Vec<String> = tag_group::Entity::find()
        .select_only()
        .column(tag_group::Column::VisibilityClass)
        .distinct()
        .into_tuple()
        .all(db)
        .await?;
    classes.sort();
    Ok(classes)
}

/// The caller's own personal tags.
///
/// # Errors
/// Database errors.
pub async fn personal_tags(db: &impl ConnectionTrait, principal: &Principal) -> AppResult<Vec<tag::Model>> {
    Ok(tag::Entity::find()
        .filter(tag::Column::OwnerStaffId.eq(principal.staff.id))
        .filter(tag::Column::Status.eq(TagStatus::Active))
        .order_by_asc(tag::Column::Id)
        .all(db)
        .await?)
}

pub(crate) fn check_ttl(ttl: Option<i64>) -> AppResult<()> {
    match ttl {
        Some(t) if !(1..=MAX_TTL_SECONDS).contains(&t) => {
            Err(AppError::validation("ttlSeconds", format!("must be between 1 and {MAX_TTL_SECONDS}")))
        }
        _ => Ok(()),
    }
}

/// Creates a personal tag (个人标签) of the caller, seen only by it.
///
/// # Errors
/// `FORBIDDEN` without `personal_tag:manage` anywhere, `CONFLICT` when the
/// caller already has a personal tag of that name.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn create_personal_tag(
    db: &DatabaseConnection,
    principal: &Principal,
    name: TagName,
    description: Description,
) -> AppResult<tag::Model> {
    if !principal.may_anywhere(Action::PersonalTagManage) {
        return Err(AppError::Forbidden(format!("you may not {}", Action::PersonalTagManage.name())));
    }
    let now = Utc::now();
    let txn = db.begin().await?;
    let tag = tag::Entity::insert(tag::ActiveModel {
        id: NotSet,
        group_id: Set(None),
        owner_staff_id: Set(Some(principal.staff.id)),
        name: Set(name.into_inner()),
        description: Set(description.into_inner()),
        aliases: Set(json!([])),
        canonical_tag_id: Set(None),
        ttl_seconds: Set(None),
        status: Set(TagStatus::Active),
        merged_into_id: Set(None),
        version: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec_with_returning(&txn)
    .await
    .map_err(|e| on_constraint(e, |_| "you already have a personal tag with that name".to_owned()))?;
    // Filed under its owner's unit; the audit log shows its name to its
    // owner only (and to readers of all personal tags).
    let entry = AuditEntry::ok(principal.staff_id(), "tag.create", "tag", tag.id)
        .in_unit(principal.staff.home_org_unit_id)
        .with_detail(json!({ "name": tag.name, "personal": true }));
    audit::record(&txn, entry).await?;
    txn.commit().await?;
    Ok(tag)
}
