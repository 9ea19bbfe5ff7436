//! Rule actions deferred by a modification lock (修改锁). Rules hold no
//! lock, so a lock in force on a tag's group covering the customer stops
//! a rule's change; the change is kept in `rule_deferred_action` (with the
//! lock, and the triggering event or scheduled run) and applied once the
//! lock ends: at once when it is released by hand (`unlockTagGroup`), and
//! by every scheduler round for locks released otherwise or expired. An
//! action is marked applied in the transaction that applies it, so it is
//! applied once and never lost: while another lock covers the customer
//! then, the action waits for that one.
//!
//! Applying replays the decision, not the rule: an add puts the tag on
//! (replacing the customer's other tag of an exclusive group) unless the
//! customer holds it; a remove takes it off if held. The change carries
//! the rule's original explanation (`rule:<id>@v<n>/event:<id>` or
//! `…/run:<id>`). A rule disabled or archived since no longer acts: its
//! deferred actions are closed then without a change. A late event closes
//! the same way an action whose event its replay judges again without
//! deciding that action (`record.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use entity::{
    customer_tag,
    enums::{RuleStatus, TagOp, TagSource},
    modification_lock, rule, rule_deferred_action, tag, tag_group,
};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait, sea_query::Expr,
};

use super::explain::{run_source_ref, source_ref};
use crate::config::Limits;
use crate::error::AppResult;
use crate::service::tagging::{SystemChange, apply_system_changes, lock_customer_rows};
use crate::store::CHUNK;

/// Deferred actions handled per transaction.
const BATCH: u64 = 500;

/// The modification locks in force now on `groups` that cover each of
/// `customers`: (customer, group) → the oldest such lock. Rules and
/// sweeps hold no lock, so every lock stops them.
///
/// # Errors
/// Database errors.
pub(crate) async fn locks_in_force(
    db: &impl ConnectionTrait,
    customers: &[i64],
    groups: &BTreeSet<i64>,
) -> AppResult<HashMap<(i64, i64), i64>> {
    let mut out = HashMap::new();
    if customers.is_empty() || groups.is_empty() {
        return Ok(out);
    }
    let locks = modification_lock::Entity::find()
        .filter(modification_lock::Column::GroupId.is_in(groups.iter().copied()))
        .filter(modification_lock::Column::ReleasedAt.is_null())
        .filter(modification_lock::Column::ExpiresAt.gt(Utc::now()))
        .order_by_asc(modification_lock::Column::Id)
        .all(db)
        .await?;
    if locks.is_empty() {
        return Ok(out);
    }
    let group_of: HashMap<i64, i64> = locks.iter().map(|l| (l.id, l.group_id)).collect();
    for lock in locks.iter().filter(|l| l.whole_group) {
        for c in customers {
            out.entry((*c, lock.group_id)).or_insert(lock.id);
        }
    }
    let partial: Vec<modification_lock::Model> = locks.iter().filter(|l| !l.whole_group).cloned().collect();
    for (lock, customer) in crate::service::governance::locks::coverage(db, &partial, customers).await? {
        out.entry((customer, group_of[&lock])).or_insert(lock);
    }
    Ok(out)
}

/// Applies the deferred actions whose lock has ended (released, or past
/// its end at `now`), oldest first, each once. Returns how many were
/// applied (an action with nothing left to do counts: it is done).
///
/// # Errors
/// Database errors.
#[tracing::instrument(skip(db, limits))]
pub async fn apply_pending(db: &DatabaseConnection, limits: &Limits, now: DateTime<Utc>) -> AppResult<u64> {
    let mut total = 0u64;
    let mut after = 0i64;
    loop {
        let pending = rule_deferred_action::Entity::find()
            .filter(rule_deferred_action::Column::AppliedAt.is_null())
            .filter(rule_deferred_action::Column::Id.gt(after))
            .order_by_asc(rule_deferred_action::Column::Id)
            .limit(BATCH)
            .all(db)
            .await?;
        let Some(last) = pending.last() else { return Ok(total) };
        after = last.id;
        let lock_ids: BTreeSet<i64> = pending.iter().map(|a| a.lock_id).collect();
        let ended: BTreeSet<i64> = modification_lock::Entity::find()
            .filter(modification_lock::Column::Id.is_in(lock_ids.iter().copied()))
            .filter(
                Condition::any()
                    .add(modification_lock::Column::ReleasedAt.is_not_null())
                    .add(modification_lock::Column::ExpiresAt.lte(now)),
            )
            .all(db)
            .await?
            .into_iter()
            .map(|l| l.id)
            .collect();
        let due: Vec<i64> = pending.iter().filter(|a| ended.contains(&a.lock_id)).map(|a| a.id).collect();
        if due.is_empty() {
            continue;
        }
        total += apply_batch(db, limits, &due).await?;
    }
}

/// Applies the named deferred actions in one transaction.
async fn apply_batch(db: &DatabaseConnection, limits: &Limits, ids: &[i64]) -> AppResult<u64> {
    let txn = db.begin().await?;
    crate::store::event_log::share_event_log(&txn).await?;
    let customers: Vec<i64> = rule_deferred_action::Entity::find()
        .select_only()
        .column(rule_deferred_action::Column::CustomerId)
        .filter(rule_deferred_action::Column::Id.is_in(ids.iter().copied()))
        .into_tuple()
        .all(&txn)
        .await?;
    lock_customer_rows(&txn, &customers, Condition::all()).await?;
    // Read again under the customers' locks: another instance may have
    // applied some meanwhile.
    let actions = rule_deferred_action::Entity::find()
        .filter(rule_deferred_action::Column::Id.is_in(ids.iter().copied()))
        .filter(rule_deferred_action::Column::AppliedAt.is_null())
        .order_by_asc(rule_deferred_action::Column::Id)
        .all(&txn)
        .await?;
    let tag_ids: BTreeSet<i64> = actions.iter().map(|a| a.tag_id).collect();
    let tags: HashMap<i64, tag::Model> = tag::Entity::find()
        .filter(tag::Column::Id.is_in(tag_ids.iter().copied()))
        .all(&txn)
        .await?
        .into_iter()
        .map(|t| (t.id, t))
        .collect();
    let group_ids: BTreeSet<i64> = tags.values().filter_map(|t| t.group_id).collect();
    let groups: HashMap<i64, tag_group::Model> = tag_group::Entity::find()
        .filter(tag_group::Column::Id.is_in(group_ids.iter().copied()))
        .all(&txn)
        .await?
        .into_iter()
        .map(|g| (g.id, g))
        .collect();
    let customer_ids: Vec<i64> = actions.iter().map(|a| a.customer_id).collect();
    let locked = locks_in_force(&txn, &customer_ids, &group_ids).await?;
    // A rule disabled or archived since its action was deferred no longer
    // acts: the action is closed without a change.
    let rule_ids: BTreeSet<i64> = actions.iter().map(|a| a.rule_id).collect();
    let enabled: BTreeSet<i64> = rule::Entity::find()
        .select_only()
        .column(rule::Column::Id)
        .filter(rule::Column::Id.is_in(rule_ids.iter().copied()))
        .filter(rule::Column::Status.eq(RuleStatus::Enabled))
        .into_tuple()
        .all(&txn)
        .await?
        .into_iter()
        .collect();
    let now = Utc::now();
    let mut applied = Vec::new();
    let mut waiting: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for action in &actions {
        if !enabled.contains(&action.rule_id) {
            applied.push(action.id);
            continue;
        }
        let Some(tag) = tags.get(&action.tag_id) else {
            applied.push(action.id);
            continue;
        };
        let group = tag.group_id.and_then(|g| groups.get(&g));
        if let Some(lock) = group.and_then(|g| locked.get(&(action.customer_id, g.id))) {
            // Another lock covers the customer now: wait for that one.
            waiting.entry(*lock).or_default().push(action.id);
            continue;
        }
        let exclusive_tags: Vec<i64> = match group.filter(|g| g.exclusive) {
            Some(g) => {
                tag::Entity::find()
                    .select_only()
                    .column(tag::Column::Id)
                    .filter(tag::Column::GroupId.eq(g.id))
                    .into_tuple()
                    .all(&txn)
                    .await?
            }
            None => vec![action.tag_id],
        };
        let held: BTreeSet<i64> = customer_tag::Entity::find()
            .select_only()
            .column(customer_tag::Column::TagId)
            .filter(customer_tag::Column::CustomerId.eq(action.customer_id))
            .filter(customer_tag::Column::TagId.is_in(exclusive_tags.iter().copied().chain([action.tag_id])))
            .into_tuple()
            .all(&txn)
            .await?
            .into_iter()
            .collect();
        let change = |tag_id: i64, op: TagOp, expires_at: Option<DateTime<Utc>>| SystemChange {
            customer_id: action.customer_id,
            tag_id,
            op,
            expires_at,
        };
        let mut changes = Vec::new();
        if action.op == TagOp::Add.as_str() {
            if !held.contains(&action.tag_id) {
                changes.extend(held.iter().filter(|t| **t != action.tag_id).map(|t| change(*t, TagOp::Remove, None)));
                let ttl = action.ttl_seconds.or(tag.ttl_seconds);
                changes.push(change(action.tag_id, TagOp::Add, ttl.map(|s| now + Duration::seconds(s))));
            }
        } else if held.contains(&action.tag_id) {
            changes.push(change(action.tag_id, TagOp::Remove, None));
        }
        let why = match (action.event_id, action.run_id) {
            (Some(event), _) => source_ref(action.rule_id, action.rule_version, event),
            (None, Some(run)) => run_source_ref(action.rule_id, action.rule_version, run),
            (None, None) => format!("rule:{}@v{}", action.rule_id, action.rule_version),
        };
        apply_system_changes(&txn, limits, TagSource::Rule, Some(why), &changes).await?;
        applied.push(action.id);
    }
    for (lock, ids) in waiting {
        rule_deferred_action::Entity::update_many()
            .col_expr(rule_deferred_action::Column::LockId, Expr::value(lock))
            .filter(rule_deferred_action::Column::Id.is_in(ids))
            .exec(&txn)
            .await?;
    }
    mark_done(&txn, &applied, now).await?;
    txn.commit().await?;
    Ok(applied.len() as u64)
}

/// Marks deferred actions done at `at`: applied, or closed without a
/// change (a rule disabled or archived since, a tag gone, a late event's
/// replay that no longer decides the action). No round applies them
/// after that.
///
/// # Errors
/// Database errors.
pub(crate) async fn mark_done(db: &impl ConnectionTrait, ids: &[i64], at: DateTime<Utc>) -> AppResult<()> {
    for chunk in ids.chunks(CHUNK) {
        rule_deferred_action::Entity::update_many()
            .col_expr(rule_deferred_action::Column::AppliedAt, Expr::value(at))
            .filter(rule_deferred_action::Column::Id.is_in(chunk.iter().copied()))
            .filter(rule_deferred_action::Column::AppliedAt.is_null())
            .exec(db)
            .await?;
    }
    Ok(())
}
