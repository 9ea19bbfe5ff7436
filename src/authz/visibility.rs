//! Tag visibility: the one rule of which tags a principal may see, and on
//! which customers. The tag library, tagging, customer filters, the SQL
//! segment compiler, the in-memory segment index and cross analysis all
//! ask here.
//!
//! - A **personal tag** (it has an owner) is seen by its owner, and by
//!   readers of all personal tags (`personal_tag:read_all`), on every
//!   customer.
//! - An **enterprise tag** is seen as its group is. In the library, a group
//!   is seen when its layer is readable (the caller may read the library of
//!   its unit or of a unit below it) and its visibility class is readable
//!   somewhere (or at the unit asked about). On a customer, a tag counts
//!   only where the caller may read its class at the customer's unit.

use std::collections::HashMap;
use std::sync::Arc;

use entity::{tag, tag_group};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use super::{ClassAccess, Principal, Scope};
use crate::domain::{TagGroupId, TagId};
use crate::error::{AppError, AppResult};

/// A tag the caller may see, with its group (enterprise tags).
#[derive(Debug, Clone)]
pub struct VisibleTag {
    pub tag: tag::Model,
    pub group: Option<tag_group::Model>,
}

/// A personal tag of `owner` is seen by its owner and by readers of all
/// personal tags.
pub fn personal_visible(principal: &Principal, owner: i64) -> bool {
    owner == principal.staff.id || principal.reads_all_personal_tags()
}

/// The units whose customers show the caller tags of a visibility class.
pub fn class_units(principal: &Principal, class: &str) -> Arc<Scope> {
    principal.class_scope(class, ClassAccess::Read)
}

/// The units whose customers show the caller a tag it may see: `None` for
/// a personal tag (seen by its owner wherever it is), else where its class
/// is readable.
pub fn tag_units(principal: &Principal, group: Option<&tag_group::Model>) -> Option<Arc<Scope>> {
    group.map(|g| class_units(principal, &g.visibility_class))
}

/// True when the caller may see a tag group: its library layer is readable
/// and the caller may read its visibility class — at `at_unit` when given
/// (a customer's unit, a library's unit), somewhere otherwise.
pub fn group_visible(principal: &Principal, group: &tag_group::Model, at_unit: Option<i64>) -> bool {
    if !principal.may_read_library_layer(group.org_unit_id) {
        return false;
    }
    let classes = class_units(principal, &group.visibility_class);
    match at_unit {
        Some(unit) => classes.contains(unit),
        None => !classes.is_empty(),
    }
}

/// True when the caller may see the tag: a personal tag only by its owner
/// (or with `personal_tag:read_all`), an enterprise tag when its group is
/// visible (see [`group_visible`]).
pub fn tag_visible(
    principal: &Principal,
    tag: &tag::Model,
    group: Option<&tag_group::Model>,
    at_unit: Option<i64>,
) -> bool {
    match (tag.owner_staff_id, group) {
        (Some(owner), _) => personal_visible(principal, owner),
        (None, Some(group)) => group_visible(principal, group, at_unit),
        (None, None) => false,
    }
}

/// True when the caller may see a tag on a customer of `org_unit_id`: a
/// personal tag (`owner` set) by its owner or with `personal_tag:read_all`,
/// an enterprise tag (of visibility `class`) when its class is readable in
/// that unit.
pub fn on_customer_visible(principal: &Principal, owner: Option<i64>, class: Option<&str>, org_unit_id: i64) -> bool {
    match (owner, class) {
        (Some(owner), _) => personal_visible(principal, owner),
        (None, Some(class)) => class_units(principal, class).contains(org_unit_id),
        (None, None) => false,
    }
}

/// The named tags, all of which must be visible to the caller (somewhere
/// in its scope), with their groups.
///
/// # Errors
/// `NOT_FOUND` naming the first tag that is missing or invisible: unknown
/// and invisible tags cannot be told apart.
pub async fn visible_tags(
    db: &impl ConnectionTrait,
    principal: &Principal,
    ids: &[TagId],
) -> AppResult<HashMap<TagId, VisibleTag>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let tags = tag::Entity::find().filter(tag::Column::Id.is_in(ids.iter().map(|t| t.0))).all(db).await?;
    let visible: HashMap<TagId, VisibleTag> = with_groups(db, tags)
        .await?
        .into_iter()
        .filter(|v| visible(principal, v))
        .map(|v| (TagId(v.tag.id), v))
        .collect();
    match ids.iter().find(|id| !visible.contains_key(id)) {
        Some(missing) => Err(AppError::not_found("tag", missing)),
        None => Ok(visible),
    }
}

/// The tags with their groups, those the caller may see.
///
/// # Errors
/// Database errors.
pub async fn visible_of(
    db: &impl ConnectionTrait,
    principal: &Principal,
    tags: Vec<tag::Model>,
) -> AppResult<Vec<VisibleTag>> {
    Ok(with_groups(db, tags).await?.into_iter().filter(|v| visible(principal, v)).collect())
}

fn visible(principal: &Principal, v: &VisibleTag) -> bool {
    tag_visible(principal, &v.tag, v.group.as_ref(), None)
}

async fn with_groups(db: &impl ConnectionTrait, tags: Vec<tag::Model>) -> AppResult<Vec<VisibleTag>> {
    let groups = groups_by_id(db, tags.iter().filter_map(|t| t.group_id)).await?;
    Ok(tags
        .into_iter()
        .map(|tag| VisibleTag { group: tag.group_id.and_then(|g| groups.get(&g).cloned()), tag })
        .collect())
}

/// A tag group the caller may see.
///
/// # Errors
/// `NOT_FOUND` for missing and invisible groups alike.
pub async fn find_group(
    db: &impl ConnectionTrait,
    principal: &Principal,
    id: TagGroupId,
) -> AppResult<tag_group::Model> {
    tag_group::Entity::find_by_id(id.0)
        .one(db)
        .await?
        .filter(|g| group_visible(principal, g, None))
        .ok_or_else(|| AppError::not_found("tag group", id))
}

/// Groups by id (no visibility check: callers reach them from visible tags).
///
/// # Errors
/// Database errors.
pub async fn groups_by_id(
    db: &impl ConnectionTrait,
    ids: impl IntoIterator<Item = i64>,
) -> AppResult<HashMap<i64, tag_group::Model>> {
    let ids: Vec<i64> = ids.into_iter().collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let groups = tag_group::Entity::find().filter(tag_group::Column::Id.is_in(ids)).all(db).await?;
    Ok(groups.into_iter().map(|g| (g.id, g)).collect())
}
