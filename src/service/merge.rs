//! Merging two records of one person (客户合并): everything the removed
//! customer has moves to the kept one, and the removed one becomes a
//! tombstone (`merged_into_id`, `merged_at`) whose id redirects to the kept
//! customer (docs/customer-data.md).
//!
//! **Tags.** A tag only the removed customer holds moves with its
//! provenance (source, who, when, expiry). A tag both hold stays as the
//! kept customer has it. In an exclusive group where both hold a tag, the
//! kept customer's tag wins and the removed customer's is dropped (the
//! audit row lists it). Nothing else is dropped.
//!
//! **History.** The removed customer's customer events, tag events,
//! identities, static-segment memberships (`segment_member`), deferred
//! rule actions, alerts and modification-lock coverage move to the kept
//! customer. Customer events are append-only (enforced by the database);
//! the one change it allows is this move, an event's `customer_id` to the
//! customer its customer was merged into, so the tombstone is marked
//! first. The kept customer's `events`, rules, dry runs and scheduled
//! evaluations then see the merged history under its own id. New
//! tag events record the merge itself (source `MERGE`): a `REMOVE` of each
//! of the removed customer's tags from it, an `ADD` on the kept customer of
//! each tag that moved, and a `REMOVE` on the kept customer of each
//! dropped tag (its history now sits there). Segment indexes follow those
//! events, and the change log tells them the removed customer is gone.
//!
//! A caller with `customer:merge` at both customers' units merges at once;
//! anybody else with `customer:update` at both files a change request of
//! kind `customer.merge`, applied on approval with the requester's rights.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::Utc;
use entity::{
    change_request, customer, customer_event, customer_identity, customer_tag,
    enums::{TagOp, TagSource},
    modification_lock_customer, rule_deferred_action, segment_member, tag, tag_alert, tag_event, tag_group,
};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{Expr, ExprTrait, Query},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::audit::{self, AuditEntry};
use super::customer::find_live_in_scope;
use super::governance::requests::{self, ChangeRequestKind, NewRequest, RequestTarget};
use crate::authz::{Action, Principal};
use crate::domain::{CustomerId, Reason};
use crate::error::{AppError, AppResult};
use crate::store::event_log::{EventBy, insert_event_rows, share_event_log};

/// A merge to make.
#[derive(Debug, Clone)]
pub struct MergeRequest {
    pub keep: CustomerId,
    pub remove: CustomerId,
    pub reason: Option<Reason>,
}

/// A merge as a change request carries it: the two customers at the
/// versions the requester saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergePayload {
    pub keep: i64,
    pub remove: i64,
    pub keep_version: i32,
    pub remove_version: i32,
}

/// What a merge moved.
#[derive(Debug, Clone)]
pub struct Merged {
    pub kept: customer::Model,
    pub tags_moved: Vec<i64>,
    /// Tags of the removed customer that the kept one held already (same
    /// tag, or another tag of the same exclusive group).
    pub tags_dropped: Vec<i64>,
    pub events_moved: u64,
    pub identities_moved: u64,
}

/// A merge done at once, or filed for approval.
#[derive(Debug, Clone)]
pub enum MergeOutcome {
    Merged(Merged),
    Requested(change_request::Model),
}

/// Merges `remove` into `keep`, or files the merge for approval (see the
/// module's documentation).
///
/// # Errors
/// `NOT_FOUND` when either customer is missing, merged already, or outside
/// the caller's scope; `FORBIDDEN` without `customer:update` at both;
/// `VALIDATION` for one customer twice; `CONFLICT` when one changed meanwhile.
#[tracing::instrument(skip(db, principal, req), fields(staff = principal.staff.id, keep = %req.keep, remove = %req.remove))]
pub async fn merge_customers(
    db: &DatabaseConnection,
    principal: &Principal,
    req: MergeRequest,
) -> AppResult<MergeOutcome> {
    if req.keep == req.remove {
        return Err(AppError::validation("remove", "a customer cannot be merged into itself"));
    }
    let keep = find_live_in_scope(db, principal, req.keep).await?;
    let remove = find_live_in_scope(db, principal, req.remove).await?;
    principal.require(Action::CustomerUpdate, keep.org_unit_id)?;
    principal.require(Action::CustomerUpdate, remove.org_unit_id)?;
    let payload =
        MergePayload { keep: keep.id, remove: remove.id, keep_version: keep.version, remove_version: remove.version };
    let txn = db.begin().await?;
    if principal.may(Action::CustomerMerge, keep.org_unit_id)
        && principal.may(Action::CustomerMerge, remove.org_unit_id)
    {
        let merged = apply(&txn, principal, &payload, req.reason.as_ref(), None).await?;
        txn.commit().await?;
        return Ok(MergeOutcome::Merged(merged));
    }
    let scope = principal.org.common_ancestor([keep.org_unit_id, remove.org_unit_id]).unwrap_or(keep.org_unit_id);
    let request = requests::file(
        &txn,
        principal,
        NewRequest {
            kind: ChangeRequestKind::CustomerMerge,
            target: RequestTarget::Customers,
            base_versions: json!({ "keep": keep.version, "remove": remove.version }),
            payload: serde_json::to_value(&payload).map_err(AppError::internal)?,
            scope,
            reason: req.reason,
        },
    )
    .await?;
    txn.commit().await?;
    Ok(MergeOutcome::Requested(request))
}

/// Whether both customers of a pending merge request are still as the
/// requester saw them (else approving marks it `STALE`).
///
/// # Errors
/// `INTERNAL` for a payload this version cannot read; database errors.
pub(crate) async fn still_current(txn: &DatabaseTransaction, request: &change_request::Model) -> AppResult<bool> {
    let p: MergePayload = serde_json::from_value(request.payload.clone()).map_err(AppError::internal)?;
    let rows = customer::Entity::find().filter(customer::Column::Id.is_in([p.keep, p.remove])).all(txn).await?;
    let current =
        |id: i64, version: i32| rows.iter().any(|c| c.id == id && c.version == version && c.merged_into_id.is_none());
    Ok(current(p.keep, p.keep_version) && current(p.remove, p.remove_version))
}

/// Applies an approved merge request with the requester's rights (the
/// merge right waived), in the approval's transaction.
///
/// # Errors
/// `NOT_FOUND` when the requester can no longer read a customer,
/// `FORBIDDEN` when it may no longer update one; as [`merge_customers`].
pub(crate) async fn apply_approved(
    txn: &DatabaseTransaction,
    requester: &Principal,
    request: &change_request::Model,
) -> AppResult<Merged> {
    let p: MergePayload = serde_json::from_value(request.payload.clone()).map_err(AppError::internal)?;
    for id in [p.keep, p.remove] {
        let c = find_live_in_scope(txn, requester, CustomerId(id)).await?;
        requester.require(Action::CustomerUpdate, c.org_unit_id)?;
    }
    let reason = Reason::parse(Some(&request.reason), "reason")?;
    apply(txn, requester, &p, reason.as_ref(), Some(request.id)).await
}

/// The tags of a customer with their exclusive group, if any.
async fn tags_of(txn: &DatabaseTransaction, customer_id: i64) -> AppResult<Vec<(i64, Option<i64>)>> {
    let held: Vec<i64> = customer_tag::Entity::find()
        .select_only()
        .column(customer_tag::Column::TagId)
        .filter(customer_tag::Column::CustomerId.eq(customer_id))
        .into_tuple()
        .all(txn)
        .await?;
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let groups: HashMap<i64, Option<i64>> = tag::Entity::find()
        .select_only()
        .columns([tag::Column::Id, tag::Column::GroupId])
        .filter(tag::Column::Id.is_in(held.iter().copied()))
        .into_tuple::<(i64, Option<i64>)>()
        .all(txn)
        .await?
        .into_iter()
        .collect();
    let group_ids: BTreeSet<i64> = groups.values().flatten().copied().collect();
    let exclusive: HashSet<i64> = tag_group::Entity::find()
        .select_only()
        .column(tag_group::Column::Id)
        .filter(tag_group::Column::Id.is_in(group_ids))
        .filter(tag_group::Column::Exclusive.eq(true))
        .into_tuple::<i64>()
        .all(txn)
        .await?
        .into_iter()
        .collect();
    Ok(held.into_iter().map(|t| (t, groups.get(&t).copied().flatten().filter(|g| exclusive.contains(g)))).collect())
}

/// Moves `table.column` from one customer to another, leaving out rows
/// the kept customer has already under the same `key` (then deleted).
async fn move_keyed<E: EntityTrait>(
    txn: &DatabaseTransaction,
    customer: E::Column,
    key: E::Column,
    from: i64,
    to: i64,
) -> AppResult<u64>
where
    E::Column: ColumnTrait,
{
    let held = Query::select().column(key).from(E::default()).and_where(customer.eq(to)).to_owned();
    let moved = E::update_many()
        .col_expr(customer, Expr::value(to))
        .filter(customer.eq(from))
        .filter(key.not_in_subquery(held))
        .exec(txn)
        .await?
        .rows_affected;
    E::delete_many().filter(customer.eq(from)).exec(txn).await?;
    Ok(moved)
}

/// The merge itself, in `txn`: conditional on both customers being live
/// at the versions given (else `CONFLICT`), audited.
async fn apply(
    txn: &DatabaseTransaction,
    principal: &Principal,
    p: &MergePayload,
    reason: Option<&Reason>,
    request_id: Option<i64>,
) -> AppResult<Merged> {
    share_event_log(txn).await?;
    // Both rows locked in id order, as taggers lock theirs.
    let mut locked = customer::Entity::find()
        .filter(customer::Column::Id.is_in([p.keep, p.remove]))
        .order_by_asc(customer::Column::Id)
        .lock_exclusive()
        .all(txn)
        .await?;
    let changed =
        || AppError::Conflict("one of the customers was changed or merged meanwhile; reload and retry".into());
    let pos = |id| locked.iter().position(|c: &customer::Model| c.id == id);
    let (Some(k), Some(r)) = (pos(p.keep), pos(p.remove)) else { return Err(changed()) };
    let remove = locked.remove(r);
    let keep = locked.remove(if k > r { k - 1 } else { k });
    if keep.version != p.keep_version
        || remove.version != p.remove_version
        || keep.merged_into_id.is_some()
        || remove.merged_into_id.is_some()
    {
        return Err(changed());
    }
    let now = Utc::now();

    // Tags: the kept customer's win (same tag, or the same exclusive group).
    let kept_tags = tags_of(txn, keep.id).await?;
    let removed_tags = tags_of(txn, remove.id).await?;
    let kept_ids: HashSet<i64> = kept_tags.iter().map(|(t, _)| *t).collect();
    let kept_groups: HashSet<i64> = kept_tags.iter().filter_map(|(_, g)| *g).collect();
    let (mut moved, mut dropped) = (Vec::new(), Vec::new());
    for (t, group) in &removed_tags {
        if kept_ids.contains(t) || group.is_some_and(|g| kept_groups.contains(&g)) {
            dropped.push(*t);
        } else {
            moved.push(*t);
        }
    }
    // History first, so that the merge's own events below stay where they are written.
    let events_moved = tag_event::Entity::update_many()
        .col_expr(tag_event::Column::CustomerId, Expr::value(keep.id))
        .filter(tag_event::Column::CustomerId.eq(remove.id))
        .exec(txn)
        .await?
        .rows_affected;
    if !moved.is_empty() {
        customer_tag::Entity::update_many()
            .col_expr(customer_tag::Column::CustomerId, Expr::value(keep.id))
            .filter(customer_tag::Column::CustomerId.eq(remove.id))
            .filter(customer_tag::Column::TagId.is_in(moved.iter().copied()))
            .exec(txn)
            .await?;
    }
    customer_tag::Entity::delete_many().filter(customer_tag::Column::CustomerId.eq(remove.id)).exec(txn).await?;
    let by = EventBy {
        actor: Some(principal.staff.id),
        source: TagSource::Merge,
        source_ref: Some(format!("customer-merge:{}", CustomerId(remove.id))),
        at: now,
    };
    let mut events: Vec<(i64, i64, TagOp)> = removed_tags.iter().map(|(t, _)| (remove.id, *t, TagOp::Remove)).collect();
    events.extend(moved.iter().map(|t| (keep.id, *t, TagOp::Add)));
    events.extend(dropped.iter().filter(|t| !kept_ids.contains(t)).map(|t| (keep.id, *t, TagOp::Remove)));
    insert_event_rows(txn, &by, &events).await?;

    let identities_moved = customer_identity::Entity::update_many()
        .col_expr(customer_identity::Column::CustomerId, Expr::value(keep.id))
        .filter(customer_identity::Column::CustomerId.eq(remove.id))
        .exec(txn)
        .await?
        .rows_affected;
    rule_deferred_action::Entity::update_many()
        .col_expr(rule_deferred_action::Column::CustomerId, Expr::value(keep.id))
        .filter(rule_deferred_action::Column::CustomerId.eq(remove.id))
        .exec(txn)
        .await?;
    tag_alert::Entity::update_many()
        .col_expr(tag_alert::Column::CustomerId, Expr::value(keep.id))
        .filter(tag_alert::Column::CustomerId.eq(remove.id))
        .exec(txn)
        .await?;
    let memberships = move_keyed::<segment_member::Entity>(
        txn,
        segment_member::Column::CustomerId,
        segment_member::Column::SegmentId,
        remove.id,
        keep.id,
    )
    .await?;
    move_keyed::<modification_lock_customer::Entity>(
        txn,
        modification_lock_customer::Column::CustomerId,
        modification_lock_customer::Column::LockId,
        remove.id,
        keep.id,
    )
    .await?;

    // The kept customer's fields win; its empty ones take the removed
    // customer's; spend and orders add up.
    let last_order_at = Ord::max(keep.last_order_at, remove.last_order_at);
    customer::Entity::update_many()
        .col_expr(customer::Column::Phone, Expr::value(keep.phone.clone().or(remove.phone.clone())))
        .col_expr(customer::Column::BirthDate, Expr::value(keep.birth_date.or(remove.birth_date)))
        .col_expr(customer::Column::City, Expr::value(keep.city.clone().or(remove.city.clone())))
        .col_expr(customer::Column::Industry, Expr::value(keep.industry.clone().or(remove.industry.clone())))
        .col_expr(customer::Column::Channel, Expr::value(keep.channel.clone().or(remove.channel.clone())))
        .col_expr(
            customer::Column::Gender,
            Expr::value(if keep.gender == entity::enums::Gender::Unknown { remove.gender } else { keep.gender }),
        )
        .col_expr(customer::Column::TotalSpendCents, Expr::value(keep.total_spend_cents + remove.total_spend_cents))
        .col_expr(customer::Column::OrderCount, Expr::value(keep.order_count + remove.order_count))
        .col_expr(customer::Column::LastOrderAt, Expr::value(last_order_at))
        .col_expr(customer::Column::UpdatedAt, Expr::value(now))
        .col_expr(customer::Column::Version, Expr::col(customer::Column::Version).add(1))
        .filter(customer::Column::Id.eq(keep.id))
        .exec(txn)
        .await?;
    customer::Entity::update_many()
        .col_expr(customer::Column::MergedIntoId, Expr::value(keep.id))
        .col_expr(customer::Column::MergedAt, Expr::value(now))
        .col_expr(customer::Column::UpdatedAt, Expr::value(now))
        .col_expr(customer::Column::Version, Expr::col(customer::Column::Version).add(1))
        .filter(customer::Column::Id.eq(remove.id))
        .exec(txn)
        .await?;
    // Customer events move once the tombstone names the kept customer: the
    // database refuses any other change to them (migration
    // `m20261202_000120_merge_moves_events`).
    let customer_events = customer_event::Entity::update_many()
        .col_expr(customer_event::Column::CustomerId, Expr::value(keep.id))
        .filter(customer_event::Column::CustomerId.eq(remove.id))
        .exec(txn)
        .await?
        .rows_affected;
    super::import::log_changes(txn, &[keep.id, remove.id]).await?;
    audit::record(
        txn,
        AuditEntry::ok(principal.staff_id(), "customer.merge", "customer", keep.id)
            .in_unit(keep.org_unit_id)
            .with_detail(json!({
                "keep": keep.id,
                "remove": remove.id,
                "removeOrgUnitId": remove.org_unit_id,
                "tagsMoved": moved,
                "tagsDropped": dropped,
                "tagEventsMoved": events_moved,
                "customerEventsMoved": customer_events,
                "identitiesMoved": identities_moved,
                "segmentMemberships": memberships,
                "reason": reason.map(Reason::as_str),
                "changeRequestId": request_id,
            })),
    )
    .await?;
    let kept = customer::Entity::find_by_id(keep.id).one(txn).await?.ok_or_else(changed)?;
    Ok(Merged { kept, tags_moved: moved, tags_dropped: dropped, events_moved: customer_events, identities_moved })
}
