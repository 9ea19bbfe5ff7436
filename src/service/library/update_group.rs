//! Editing a tag group: name, description, category, visibility class,
//! exclusivity and naming pattern. Making a group exclusive, or giving it
//! a pattern, is refused while its tags or holders break the new rule.

use entity::{enums::TagStatus, tag, tag_group};
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter};

use super::checks::holding_several;
use super::model::{Author, GroupChanges, GroupState};
use super::versions::{base_of, load_group, write_group};
use crate::domain::{Description, NamingPattern, ObjectKey, TagGroupId, TagName, Versions, VisibilityClass};
use crate::error::{AppError, AppResult};

/// Applies `changes` to group `id` as its next version.
///
/// # Errors
/// `VALIDATION` for bad values, an edit that changes nothing, a pattern
/// one of its tags breaks, or exclusivity a customer breaks; `CONFLICT`
/// when it moved or the name is taken in its layer.
pub(super) async fn update_group(
    txn: &DatabaseTransaction,
    by: &Author,
    id: TagGroupId,
    changes: &GroupChanges,
    base: &Versions,
) -> AppResult<tag_group::Model> {
    let before = load_group(txn, id).await?;
    let mut after = GroupState::from(&before);
    if let Some(name) = &changes.name {
        after.name = TagName::parse(name, "name")?.into_inner();
    }
    if let Some(description) = &changes.description {
        after.description = Description::parse(Some(description), "description")?.into_inner();
    }
    if let Some(category) = changes.category {
        after.category = category;
    }
    if let Some(class) = &changes.visibility_class {
        after.visibility_class = VisibilityClass::parse(class, "visibilityClass")?.into_inner();
    }
    if let Some(exclusive) = changes.exclusive {
        after.exclusive = exclusive;
    }
    if let Some(pattern) = &changes.naming_pattern {
        after.naming_pattern = pattern
            .as_deref()
            .map(|p| NamingPattern::parse(p, "namingPattern"))
            .transpose()?
            .map(|p| p.as_str().to_owned());
    }
    if after == GroupState::from(&before) {
        return Err(AppError::validation("input", "the edit changes nothing"));
    }
    let tags = tag::Entity::find().filter(tag::Column::GroupId.eq(id.0)).all(txn).await?;
    if let Some(pattern) = after.naming_pattern.as_deref().filter(|_| after.naming_pattern != before.naming_pattern) {
        let pattern = NamingPattern::parse(pattern, "namingPattern")?;
        for t in tags.iter().filter(|t| t.status != TagStatus::Merged) {
            pattern.check(&TagName::parse(&t.name, "namingPattern")?, "namingPattern").map_err(|_| {
                AppError::validation("namingPattern", format!("the group's tag {:?} does not match it", t.name))
            })?;
        }
    }
    if after.exclusive && !before.exclusive {
        let ids: Vec<i64> = tags.iter().map(|t| t.id).collect();
        if let Some(customer) = holding_several(txn, &ids).await? {
            return Err(AppError::validation(
                "exclusive",
                format!("customer {customer} holds several tags of the group; untag first"),
            ));
        }
    }
    let base = base_of(base, ObjectKey::tag_group(id))?;
    write_group(txn, by, &before, after, base).await
}
