//! Rules of the library that more than one edit checks: where a tag's
//! holders may be, exclusive groups, canonical tags.

use entity::{customer, customer_tag, enums::TagStatus, tag, tag_group};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, sea_query::ExprTrait};

use super::versions::load_group;
use crate::authz::OrgTree;
use crate::domain::{TagGroupId, TagId};
use crate::error::{AppError, AppResult};

/// Customers holding a tag.
pub(super) async fn holders(txn: &impl ConnectionTrait, tag_id: TagId) -> AppResult<Vec<i64>> {
    Ok(customer_tag::Entity::find()
        .select_only()
        .column(customer_tag::Column::CustomerId)
        .filter(customer_tag::Column::TagId.eq(tag_id.0))
        .order_by_asc(customer_tag::Column::CustomerId)
        .into_tuple()
        .all(txn)
        .await?)
}

/// Customers holding more than one of the given tags, at most a few.
pub(super) async fn holding_several(txn: &impl ConnectionTrait, tag_ids: &[i64]) -> AppResult<Option<i64>> {
    if tag_ids.len() < 2 {
        return Ok(None);
    }
    let rows: Vec<(i64, i64)> = customer_tag::Entity::find()
        .select_only()
        .column(customer_tag::Column::CustomerId)
        .column_as(customer_tag::Column::TagId.count(), "n")
        .filter(customer_tag::Column::TagId.is_in(tag_ids.iter().copied()))
        .group_by(customer_tag::Column::CustomerId)
        .having(customer_tag::Column::TagId.count().gt(1))
        .limit(1)
        .into_tuple()
        .all(txn)
        .await?;
    Ok(rows.first().map(|(c, _)| *c))
}

/// A moved tag's holders must all be within the new group's library, and
/// an exclusive target group must not end up with two tags on a customer
/// (when merging into `merging_into`, holding it and the moved tag is fine:
/// the customer keeps one).
pub(super) async fn check_move(
    txn: &impl ConnectionTrait,
    t: &tag::Model,
    to: &tag_group::Model,
    merging_into: Option<TagId>,
) -> AppResult<()> {
    let holder_units: Vec<i64> = customer::Entity::find()
        .select_only()
        .column(customer::Column::OrgUnitId)
        .filter(
            customer::Column::Id.in_subquery(
                sea_orm::sea_query::Query::select()
                    .column(customer_tag::Column::CustomerId)
                    .from(customer_tag::Entity)
                    .and_where(customer_tag::Column::TagId.eq(t.id))
                    .to_owned(),
            ),
        )
        .distinct()
        .into_tuple()
        .all(txn)
        .await?;
    if !holder_units.is_empty() {
        let org = OrgTree::load(txn).await?;
        if let Some(outside) = holder_units.into_iter().find(|u| !org.is_within(*u, to.org_unit_id)) {
            let path = org.get(outside).map_or_else(|| outside.to_string(), |u| u.path.clone());
            return Err(AppError::validation(
                "groupId",
                format!("customers of {path} hold the tag, and {:?} is not in their library", to.name),
            ));
        }
    }
    if to.exclusive {
        let mut ids: Vec<i64> = tag::Entity::find()
            .select_only()
            .column(tag::Column::Id)
            .filter(tag::Column::GroupId.eq(to.id))
            .into_tuple()
            .all(txn)
            .await?;
        ids.retain(|id| Some(TagId(*id)) != merging_into);
        ids.push(t.id);
        ids.dedup();
        if let Some(customer) = holding_several(txn, &ids).await? {
            return Err(AppError::validation(
                "groupId",
                format!("{:?} is exclusive and customer {customer} would hold two of its tags", to.name),
            ));
        }
    }
    Ok(())
}

pub(super) async fn check_canonical(
    txn: &impl ConnectionTrait,
    canonical: TagId,
    group: &tag_group::Model,
    editing: Option<TagId>,
) -> AppResult<()> {
    let invalid =
        || AppError::validation("canonicalTagId", "must be an active enterprise tag of a higher library layer");
    if Some(canonical) == editing {
        return Err(invalid());
    }
    let c = tag::Entity::find_by_id(canonical.0).one(txn).await?.ok_or_else(invalid)?;
    let cg = match c.group_id {
        Some(g) => load_group(txn, TagGroupId(g)).await?,
        None => return Err(invalid()),
    };
    let higher_layer =
        cg.org_unit_id != group.org_unit_id && OrgTree::load(txn).await?.is_within(group.org_unit_id, cg.org_unit_id);
    if c.status != TagStatus::Active || !higher_layer {
        return Err(invalid());
    }
    Ok(())
}
