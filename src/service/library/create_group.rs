//! Creating a tag group in a library layer, with its first version.

use entity::tag_group;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    DatabaseTransaction, EntityTrait,
};

use super::model::{Author, GroupState, NewGroupSpec};
use super::versions::record_created;
use crate::domain::{Description, NamingPattern, ObjectKey, OrgUnitId, TagGroupId, TagName, VisibilityClass};
use crate::error::AppResult;
use crate::store::constraint::on_constraint;

/// Creates the group in the library of `org_unit_id`.
///
/// # Errors
/// `VALIDATION` for bad values; `CONFLICT` when the layer has a group of
/// that name.
pub(super) async fn create_group(
    txn: &DatabaseTransaction,
    by: &Author,
    org_unit_id: OrgUnitId,
    spec: &NewGroupSpec,
) -> AppResult<tag_group::Model> {
    let name = TagName::parse(&spec.name, "name")?;
    let description = Description::parse(Some(&spec.description), "description")?;
    let class = VisibilityClass::parse(&spec.visibility_class, "visibilityClass")?;
    let pattern = spec.naming_pattern.as_deref().map(|p| NamingPattern::parse(p, "namingPattern")).transpose()?;
    let created = tag_group::Entity::insert(tag_group::ActiveModel {
        id: NotSet,
        org_unit_id: Set(org_unit_id.0),
        name: Set(name.as_str().to_owned()),
        description: Set(description.into_inner()),
        category: Set(spec.category),
        visibility_class: Set(class.into_inner()),
        exclusive: Set(spec.exclusive),
        naming_pattern: Set(pattern.map(|p| p.as_str().to_owned())),
        version: Set(1),
        created_at: Set(by.at),
        updated_at: Set(by.at),
    })
    .exec_with_returning(txn)
    .await
    .map_err(|e| {
        on_constraint(e, |_| format!("this library layer already has a tag group named {:?}", name.as_str()))
    })?;
    record_created(txn, by, ObjectKey::tag_group(TagGroupId(created.id)), GroupState::from(&created)).await?;
    Ok(created)
}
