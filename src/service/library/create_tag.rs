//! Creating an enterprise tag in a group, with its first version.

use entity::{enums::TagStatus, tag};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    DatabaseTransaction, EntityTrait,
};

use super::checks::check_canonical;
use super::model::{Author, NewTagSpec, TagState};
use super::versions::{load_group, record_created};
use crate::domain::{Aliases, Description, NamingPattern, ObjectKey, TagGroupId, TagId, TagName};
use crate::error::AppResult;
use crate::service::tag_library::check_ttl;
use crate::store::constraint::on_constraint;

/// Creates the tag, checking what holds whoever applies it: the group is
/// active, the name fits its pattern and is free, the TTL is in range, the
/// canonical tag is an active tag of a higher layer.
///
/// # Errors
/// `VALIDATION` for values that break those rules; `CONFLICT` when the
/// group has a tag of that name.
pub(super) async fn create_tag(
    txn: &DatabaseTransaction,
    by: &Author,
    group_id: TagGroupId,
    spec: &NewTagSpec,
) -> AppResult<tag::Model> {
    let group = load_group(txn, group_id).await?;
    let name = TagName::parse(&spec.name, "name")?;
    if let Some(pattern) = &group.naming_pattern {
        NamingPattern::parse(pattern, "namingPattern")?.check(&name, "name")?;
    }
    let description = Description::parse(Some(&spec.description), "description")?;
    let aliases = Aliases::parse(&spec.aliases, "aliases")?;
    check_ttl(spec.ttl_seconds)?;
    if let Some(canonical) = spec.canonical_tag_id {
        check_canonical(txn, canonical, &group, None).await?;
    }
    let now = by.at;
    let created = tag::Entity::insert(tag::ActiveModel {
        id: NotSet,
        group_id: Set(Some(group.id)),
        owner_staff_id: Set(None),
        name: Set(name.as_str().to_owned()),
        description: Set(description.into_inner()),
        aliases: Set(aliases.into_json()),
        canonical_tag_id: Set(spec.canonical_tag_id.map(|c| c.0)),
        ttl_seconds: Set(spec.ttl_seconds),
        status: Set(TagStatus::Active),
        merged_into_id: Set(None),
        version: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec_with_returning(txn)
    .await
    .map_err(|e| on_constraint(e, |_| format!("tag group {:?} already has a tag named {:?}", group.name, spec.name)))?;
    record_created(txn, by, ObjectKey::tag(TagId(created.id)), TagState::from(&created)).await?;
    Ok(created)
}
