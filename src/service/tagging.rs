//! Tagging (打标签): adding and removing tags on customers.
//!
//! One call is one transaction: assignments, tag events, alerts and the
//! audit row land together or not at all. Tagging is idempotent (a tag the
//! customer has is left alone), exclusive groups hold one tag per customer
//! (the new one replaces the old, as one change), and the per-customer cap
//! is checked before anything is written.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use entity::{
    change_request, customer, customer_tag,
    enums::{AlertKind, TagOp, TagSource, TagStatus},
    tag, tag_alert, tag_event, tag_group,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    FromQueryResult, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
    sea_query::{Expr, ExprTrait, IntoColumnRef, LockBehavior, LockType, Query},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::NewestFirst;
use super::audit::{self, AuditEntry};
use super::tag_library::{self, VisibleTag};
use crate::authz::visibility::on_customer_visible;
use crate::authz::{Action, ClassAccess, Permission, Principal};
use crate::config::Limits;
use crate::domain::{CustomerId, EventSeq, PageArgs, Reason, TagId};
use crate::error::{AppError, AppResult};
use crate::service::governance::{
    locks,
    requests::{self, ChangeRequestKind, NewRequest, RequestTarget},
};
use crate::store::constraint::on_constraint;
use crate::store::event_log::{
    EventBy, Log, LogPosition, NewEvent, after, insert_event_rows, log_position, pg_array, pg_instant, share_event_log,
};
use crate::store::{id_in, ids_per_statement};

/// Rows per multi-row statement: well under SQLite's bound-parameter limit.
const CHUNK: usize = 500;

/// What to tag.
#[derive(Debug, Clone)]
pub struct TagRequest {
    pub customers: Vec<CustomerId>,
    pub tags: Vec<TagId>,
    /// Overrides the tags' own TTL.
    pub expires_at: Option<DateTime<Utc>>,
    pub source: TagSource,
    pub source_ref: Option<String>,
}

impl TagRequest {
    /// Who, how and when, for the call's tag events and assignments: the
    /// caller, now.
    fn by(&self, principal: &Principal) -> EventBy {
        EventBy {
            actor: Some(principal.staff.id),
            source: self.source,
            source_ref: self.source_ref.clone(),
            at: Utc::now(),
        }
    }
}

/// What a tagging call changed.
#[derive(Debug, Clone, Default)]
pub struct TaggingOutcome {
    /// The customers named, in the order given.
    pub customers: Vec<customer::Model>,
    pub added: u32,
    /// Assignments removed: by `untag`, or replaced in an exclusive group.
    pub removed: u32,
    /// Requested changes that were already in place.
    pub unchanged: u32,
    /// Requested changes left out because somebody else changed those
    /// customers' tags of that group after the bulk call began: their write
    /// stays rather than being overwritten.
    pub kept: u32,
    pub alerts_raised: u32,
}

/// What a bulk run leaves alone (see [`TaggingOutcome::kept`]): the
/// (customer, tag) pairs that others changed after the call began.
#[derive(Debug, Default)]
struct Keep {
    /// The newest tag event when the bulk call began (for the audit row):
    /// the run applies as of then. `None` outside bulk runs.
    as_of: Option<i64>,
    pairs: HashSet<(i64, i64)>,
}

impl Keep {
    fn contains(&self, customer_id: i64, tag_id: i64) -> bool {
        self.pairs.contains(&(customer_id, tag_id))
    }
}

fn check_sizes(limits: &Limits, customers: usize, tags: usize) -> AppResult<()> {
    if customers == 0 {
        return Err(AppError::validation("customerIds", "must name at least one customer"));
    }
    if tags == 0 {
        return Err(AppError::validation("tagIds", "must name at least one tag"));
    }
    if customers > limits.max_customers_per_tagging {
        return Err(AppError::LimitExceeded(format!(
            "at most {} customers per call; use bulkTag for more (or tagCustomers with asJob: true)",
            limits.max_customers_per_tagging
        )));
    }
    if tags > limits.max_tags_per_tagging {
        return Err(AppError::LimitExceeded(format!("at most {} tags per call", limits.max_tags_per_tagging)));
    }
    Ok(())
}

/// Loads the named customers inside the transaction, locking their rows
/// (on PostgreSQL) so that concurrent tagging of one customer serialises.
async fn lock_customers(
    txn: &DatabaseTransaction,
    principal: &Principal,
    ids: &[CustomerId],
) -> AppResult<Vec<customer::Model>> {
    let sorted: Vec<i64> = ids.iter().map(|c| c.0).collect();
    // A merged customer's tags are the kept one's: its tombstone takes none.
    let scope = Condition::all()
        .add(principal.scope(Action::CustomerRead).condition(customer::Column::OrgUnitId))
        .add(customer::Column::MergedIntoId.is_null());
    let found = lock_customer_rows(txn, &sorted, scope).await?;
    let by_id: HashMap<i64, customer::Model> = found.into_iter().map(|c| (c.id, c)).collect();
    ids.iter().map(|id| by_id.get(&id.0).cloned().ok_or_else(|| AppError::not_found("customer", id))).collect()
}

/// Locks the rows of the customers among `ids` that match `filter`, in id
/// order (so two transactions locking overlapping sets never wait on each
/// other in a cycle), and returns them by id. Tagbase's own writers (a
/// rule's scheduled run, an expiry, a deferred action) lock with no scope.
///
/// # Errors
/// Database errors.
pub(crate) async fn lock_customer_rows(
    txn: &DatabaseTransaction,
    ids: &[i64],
    filter: Condition,
) -> AppResult<Vec<customer::Model>> {
    lock_customer_rows_with(txn, ids, filter, false).await
}

/// As [`lock_customer_rows`]; with `skip_locked`, the rows another
/// transaction holds are left out instead of waited for (PostgreSQL's
/// `SKIP LOCKED`; SQLite has one writer and never skips).
///
/// # Errors
/// Database errors.
pub(crate) async fn lock_customer_rows_with(
    txn: &DatabaseTransaction,
    ids: &[i64],
    filter: Condition,
    skip_locked: bool,
) -> AppResult<Vec<customer::Model>> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::with_capacity(sorted.len());
    let backend = txn.get_database_backend();
    for chunk in sorted.chunks(ids_per_statement(backend)) {
        let query = customer::Entity::find()
            .filter(id_in(backend, customer::Column::Id, chunk))
            .filter(filter.clone())
            .order_by_asc(customer::Column::Id);
        let query = if skip_locked {
            query.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        } else {
            query.lock_exclusive()
        };
        out.extend(query.all(txn).await?);
    }
    Ok(out)
}

/// As [`lock_customer_rows`], reading only each locked customer's id and
/// org unit (what tagging needs): the rows are locked, not loaded.
///
/// # Errors
/// Database errors.
pub(crate) async fn lock_customer_units(
    txn: &DatabaseTransaction,
    ids: &[i64],
    filter: Condition,
) -> AppResult<Vec<Locked>> {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::with_capacity(sorted.len());
    let backend = txn.get_database_backend();
    for chunk in sorted.chunks(ids_per_statement(backend)) {
        let rows: Vec<(i64, i64)> = customer::Entity::find()
            .select_only()
            .columns([customer::Column::Id, customer::Column::OrgUnitId])
            .filter(id_in(backend, customer::Column::Id, chunk))
            .filter(filter.clone())
            .order_by_asc(customer::Column::Id)
            .lock_exclusive()
            .into_tuple()
            .all(txn)
            .await?;
        out.extend(rows.into_iter().map(|(id, org_unit_id)| Locked { id, org_unit_id }));
    }
    Ok(out)
}

/// A change tagbase makes itself, for a customer whose row the caller
/// locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SystemChange {
    pub customer_id: i64,
    pub tag_id: i64,
    pub op: TagOp,
    /// For an add: when the assignment lapses.
    pub expires_at: Option<DateTime<Utc>>,
}

/// What [`apply_system_changes`] wrote.
#[derive(Debug, Clone, Default)]
pub(crate) struct SystemOutcome {
    pub added: u32,
    pub removed: u32,
    /// Adds left out because the customer holds the most tags allowed.
    pub over_cap: u32,
    /// The customers with a change.
    pub customers: std::collections::BTreeSet<i64>,
}

/// Writes changes tagbase decides itself (a rule's scheduled run, a rule
/// action deferred by a modification lock, an expiry), with no person
/// acting: assignments and tag events with `source` and `source_ref`, in
/// set-based statements as every tagging call. The caller locked the
/// customers' rows and decided the changes against what they hold (an
/// exclusive group's replacement comes as its remove before its add, and
/// no pair is both added and removed); nothing is checked against a
/// caller's rights (a rule was checked when saved). An add that would pass
/// the per-customer cap is left out and counted.
///
/// # Errors
/// Database errors.
pub(crate) async fn apply_system_changes(
    txn: &DatabaseTransaction,
    limits: &Limits,
    source: TagSource,
    source_ref: Option<String>,
    changes: &[SystemChange],
) -> AppResult<SystemOutcome> {
    let mut outcome = SystemOutcome::default();
    if changes.is_empty() {
        return Ok(outcome);
    }
    let adding: Vec<i64> = {
        let mut ids: Vec<i64> = changes.iter().filter(|c| c.op == TagOp::Add).map(|c| c.customer_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let mut held = in_force_counts(txn, &adding).await?;
    let mut removals: Vec<(i64, i64)> = Vec::new();
    let mut additions: Vec<NewAssignment> = Vec::new();
    let mut events: Vec<NewEvent> = Vec::new();
    for change in changes {
        let count = held.entry(change.customer_id).or_insert(0);
        match change.op {
            TagOp::Remove => {
                removals.push((change.customer_id, change.tag_id));
                *count = count.saturating_sub(1);
                outcome.removed += 1;
            }
            TagOp::Add => {
                if *count >= limits.max_tags_per_customer {
                    outcome.over_cap += 1;
                    continue;
                }
                additions.push((change.customer_id, change.tag_id, change.expires_at));
                *count += 1;
                outcome.added += 1;
            }
        }
        events.push((change.customer_id, change.tag_id, change.op));
        outcome.customers.insert(change.customer_id);
    }
    let by = EventBy { actor: None, source, source_ref, at: Utc::now() };
    delete_assignments(txn, &removals).await?;
    insert_assignments(txn, &by, &additions).await?;
    insert_event_rows(txn, &by, &events).await?;
    Ok(outcome)
}

/// The named tags, visible to the caller, in the order given.
pub(crate) async fn named_tags(
    db: &impl ConnectionTrait,
    principal: &Principal,
    ids: &[TagId],
) -> AppResult<Vec<VisibleTag>> {
    let mut tags = tag_library::visible_tags(db, principal, ids).await?;
    ids.iter().map(|id| tags.remove(id).ok_or_else(|| AppError::not_found("tag", id))).collect()
}

/// `FORBIDDEN` unless the caller may put this tag on (or take it off) a
/// customer of the unit: a personal tag only by its owner; an enterprise
/// tag with `customer_tag:write` and the use of its visibility class there.
pub(crate) fn require_use(principal: &Principal, tag: &VisibleTag, org_unit_id: i64) -> AppResult<()> {
    match (&tag.tag.owner_staff_id, &tag.group) {
        (Some(owner), _) if *owner == principal.staff.id => principal.require(Action::PersonalTagManage, org_unit_id),
        (Some(_), _) => Err(AppError::Forbidden("only its owner uses a personal tag".to_owned())),
        (None, Some(group)) => {
            principal.require(Action::CustomerTagWrite, org_unit_id)?;
            principal.require_permission(&Permission::tag_class(&group.visibility_class, ClassAccess::Use), org_unit_id)
        }
        (None, None) => Err(AppError::not_found("tag", tag.tag.id)),
    }
}

/// Adds tags to customers.
///
/// # Errors
/// `NOT_FOUND` for customers or tags the caller cannot see; `FORBIDDEN`
/// without the right to tag a customer; `VALIDATION` for archived or merged
/// tags, tags outside the customer's library, or two tags of one exclusive
/// group; `LIMIT_EXCEEDED` when a customer would pass the cap or the call
/// is too large. Nothing is written on error.
#[tracing::instrument(skip(db, principal, limits, req), fields(staff = principal.staff.id, customers = req.customers.len(), tags = req.tags.len()))]
pub async fn apply_tags(
    db: &DatabaseConnection,
    principal: &Principal,
    limits: &Limits,
    req: TagRequest,
) -> AppResult<TaggingOutcome> {
    check_sizes(limits, req.customers.len(), req.tags.len())?;
    if req.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(AppError::validation("expiresAt", "must be in the future"));
    }
    if req.source_ref.as_ref().is_some_and(|r| r.chars().count() > 128) {
        return Err(AppError::validation("sourceRef", "must be at most 128 characters"));
    }
    let txn = db.begin().await?;
    let outcome = apply_tags_in(&txn, principal, limits, req, None, true).await?;
    txn.commit().await?;
    Ok(outcome)
}

/// Takes what every tagging transaction takes before it reads: the shared
/// side of the governance lock, then the named customers' rows, then the
/// named tags. With `as_of` (a bulk run), also what others changed on
/// these customers since then, read once their rows are locked: a
/// concurrent tagger of one of them has committed by then, or waits for
/// this transaction.
async fn begin_tagging(
    txn: &DatabaseTransaction,
    principal: &Principal,
    req: &TagRequest,
    as_of: Option<&LogPosition>,
) -> AppResult<(Vec<customer::Model>, Vec<VisibleTag>, Keep)> {
    share_event_log(txn).await?;
    let customers = lock_customers(txn, principal, &req.customers).await?;
    let tags = named_tags(txn, principal, &req.tags).await?;
    check_locks(txn, principal, &customers, &tags).await?;
    let keep = match as_of {
        Some(since) => {
            let ids: Vec<i64> = customers.iter().map(|c| c.id).collect();
            changed_since(txn, since, &ids, &tags).await?
        }
        None => Keep::default(),
    };
    Ok((customers, tags, keep))
}

/// [`apply_tags`] inside the caller's transaction (checks of the request's
/// own fields aside), leaving alone what others changed after `as_of`.
async fn apply_tags_in(
    txn: &DatabaseTransaction,
    principal: &Principal,
    limits: &Limits,
    req: TagRequest,
    as_of: Option<&LogPosition>,
    audited: bool,
) -> AppResult<TaggingOutcome> {
    let (customers, tags, keep) = begin_tagging(txn, principal, &req, as_of).await?;
    let locked: Vec<Locked> = customers.iter().map(Locked::of).collect();
    let by = req.by(principal);
    let mut outcome = add_to_locked(txn, principal, limits, &locked, &tags, &keep, req.expires_at, &by).await?;
    if audited {
        let customer_ids: Vec<i64> = locked.iter().map(|c| c.id).collect();
        audit::record(
            txn,
            batch_entry(principal, "customer.tag", &customers).with_detail(json!({
                "customerIds": customer_ids,
                "tagIds": tags.iter().map(|t| t.tag.id).collect::<Vec<_>>(),
                "added": outcome.added,
                "replaced": outcome.removed,
                "unchanged": outcome.unchanged,
                "kept": outcome.kept,
                "asOfEvent": keep.as_of,
                "source": req.source,
                "sourceRef": req.source_ref,
            })),
        )
        .await?;
    }
    outcome.customers = customers;
    Ok(outcome)
}

/// A customer whose row the transaction has locked: what tagging needs of
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Locked {
    pub id: i64,
    pub org_unit_id: i64,
}

impl Locked {
    fn of(customer: &customer::Model) -> Self {
        Self { id: customer.id, org_unit_id: customer.org_unit_id }
    }
}

/// Puts `tags` on customers whose rows the caller locked: the checks of
/// the tags (active, one per exclusive group) and of the caller's use of
/// them at each customer's unit, then the exclusive replacements, the
/// per-customer cap and alerts, and the writes (assignments and tag events
/// as set-based statements). `outcome.customers` is left empty.
///
/// # Errors
/// As [`apply_tags`]. Nothing is written on error.
#[allow(clippy::too_many_arguments)]
async fn add_to_locked(
    txn: &DatabaseTransaction,
    principal: &Principal,
    limits: &Limits,
    customers: &[Locked],
    tags: &[VisibleTag],
    keep: &Keep,
    expires_at: Option<DateTime<Utc>>,
    by: &EventBy,
) -> AppResult<TaggingOutcome> {
    let mut exclusive_seen: HashMap<i64, i64> = HashMap::new();
    for VisibleTag { tag, group } in tags {
        match tag.status {
            TagStatus::Active => {}
            TagStatus::Archived => {
                return Err(AppError::validation("tagIds", format!("tag {:?} is archived", tag.name)));
            }
            TagStatus::Merged => {
                return Err(AppError::validation(
                    "tagIds",
                    format!("tag {:?} was merged into tag {}", tag.name, tag.merged_into_id.unwrap_or_default()),
                ));
            }
        }
        if let Some(group) = group.as_ref().filter(|g| g.exclusive)
            && let Some(other) = exclusive_seen.insert(group.id, tag.id)
        {
            return Err(AppError::validation(
                "tagIds",
                format!("tags {other} and {} are both in the exclusive group {:?}", tag.id, group.name),
            ));
        }
    }
    // The rights and libraries depend on the unit alone: each unit once
    // (a bulk batch has thousands of customers in a few units).
    let mut checked: HashSet<i64> = HashSet::new();
    for c in customers.iter().filter(|c| checked.insert(c.org_unit_id)) {
        for named in tags {
            require_use(principal, named, c.org_unit_id)?;
            let VisibleTag { tag, group } = named;
            // An enterprise tag must come from the customer's effective
            // library (its unit's layer or a layer above).
            if let Some(group) = group
                && !principal.org.is_within(c.org_unit_id, group.org_unit_id)
            {
                return Err(AppError::validation(
                    "tagIds",
                    format!("tag {:?} is not in the tag library of customer {}'s org unit", tag.name, c.id),
                ));
            }
        }
    }

    let customer_ids: Vec<i64> = customers.iter().map(|c| c.id).collect();
    // Of the customers' assignments, only those the call may touch (the
    // tags named, and the members of the exclusive groups they are in)
    // are read; the rest only counts (in force, against the cap and the
    // alert), and is counted by the database.
    let exclusive_groups: Vec<i64> = exclusive_seen.keys().copied().collect();
    let (existing, counts) = held_and_counts(txn, &customer_ids, tags, &exclusive_groups).await?;
    let mut exclusive_members: HashMap<i64, i64> = HashMap::new();
    let mut retired: HashSet<i64> = HashSet::new();
    for row in existing.values().flatten() {
        if tag_library::is_retired(row.status) {
            retired.insert(row.tag_id);
        }
        if let Some(group) = row.group_id.filter(|g| exclusive_groups.contains(g)) {
            exclusive_members.insert(row.tag_id, group);
        }
    }

    let now = by.at;
    let mut outcome = TaggingOutcome::default();
    let mut removals: Vec<(i64, i64)> = Vec::new();
    let mut additions: Vec<NewAssignment> = Vec::new();
    let mut events: Vec<NewEvent> = Vec::new();
    // (customer, tags in force after the call) of those crossing the
    // alert threshold.
    let mut alerts: Vec<(i64, u32)> = Vec::new();
    for c in customers {
        let held: Vec<i64> = existing.get(&c.id).map(|a| a.iter().map(|a| a.tag_id).collect()).unwrap_or_default();
        let before = counts.get(&c.id).copied().unwrap_or(0);
        let mut after = before;
        for VisibleTag { tag, group } in tags {
            if keep.contains(c.id, tag.id) {
                outcome.kept += 1;
                continue;
            }
            if held.contains(&tag.id) {
                outcome.unchanged += 1;
                continue;
            }
            if let Some(group) = group.as_ref().filter(|g| g.exclusive) {
                for old in held.iter().filter(|t| exclusive_members.get(t) == Some(&group.id)) {
                    removals.push((c.id, *old));
                    events.push((c.id, *old, TagOp::Remove));
                    outcome.removed += 1;
                    if !retired.contains(old) {
                        after -= 1;
                    }
                }
            }
            let expires_at = expires_at.or_else(|| tag.ttl_seconds.map(|s| now + Duration::seconds(s)));
            additions.push((c.id, tag.id, expires_at));
            events.push((c.id, tag.id, TagOp::Add));
            outcome.added += 1;
            after += 1;
        }
        if after > limits.max_tags_per_customer {
            return Err(AppError::LimitExceeded(format!(
                "customer {} would hold more than {} tags",
                c.id, limits.max_tags_per_customer
            )));
        }
        if before <= limits.tag_alert_threshold && after > limits.tag_alert_threshold {
            alerts.push((c.id, after));
        }
    }
    outcome.alerts_raised = alerts.len() as u32;

    delete_assignments(txn, &removals).await?;
    insert_assignments(txn, by, &additions).await?;
    insert_event_rows(txn, by, &events).await?;
    insert_alerts(txn, limits.tag_alert_threshold, now, &alerts).await?;
    Ok(outcome)
}

/// Raises the tag-count alerts of customers that crossed `threshold`
/// ((customer, tags held after the call)): one statement over arrays on
/// PostgreSQL (a bulk batch raises thousands), multi-row statements of
/// [`CHUNK`] rows on SQLite.
async fn insert_alerts(
    txn: &DatabaseTransaction,
    threshold: u32,
    at: DateTime<Utc>,
    alerts: &[(i64, u32)],
) -> AppResult<()> {
    if alerts.is_empty() {
        return Ok(());
    }
    let threshold = i32::try_from(threshold).unwrap_or(i32::MAX);
    if txn.get_database_backend() == DbBackend::Postgres {
        let sql = "INSERT INTO tag_alert (customer_id, kind, tag_count, threshold, created_at) \
                   SELECT u.c, $3, u.n, $4, $5 FROM unnest($1::text::bigint[], $2::text::int[]) AS u(c, n)";
        let values: Vec<sea_orm::Value> = vec![
            pg_array(alerts.iter().map(|a| Some(a.0))).into(),
            pg_array(alerts.iter().map(|a| Some(a.1))).into(),
            AlertKind::TagCountThreshold.as_str().into(),
            threshold.into(),
            at.into(),
        ];
        txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
        return Ok(());
    }
    for chunk in alerts.chunks(CHUNK) {
        tag_alert::Entity::insert_many(chunk.iter().map(|(customer_id, held)| tag_alert::ActiveModel {
            id: NotSet,
            customer_id: Set(*customer_id),
            kind: Set(AlertKind::TagCountThreshold),
            tag_count: Set(i32::try_from(*held).unwrap_or(i32::MAX)),
            threshold: Set(threshold),
            created_at: Set(at),
            resolved_at: Set(None),
        }))
        .exec(txn)
        .await?;
    }
    Ok(())
}

/// Removes tags from customers. Tags a customer does not hold are left
/// alone (idempotent).
///
/// # Errors
/// As [`apply_tags`], except that archived tags may be removed.
#[tracing::instrument(skip(db, principal, limits), fields(staff = principal.staff.id))]
pub async fn remove_tags(
    db: &DatabaseConnection,
    principal: &Principal,
    limits: &Limits,
    customer_ids: Vec<CustomerId>,
    tag_ids: Vec<TagId>,
) -> AppResult<TaggingOutcome> {
    check_sizes(limits, customer_ids.len(), tag_ids.len())?;
    let txn = db.begin().await?;
    let req = TagRequest {
        customers: customer_ids,
        tags: tag_ids,
        expires_at: None,
        source: TagSource::Manual,
        source_ref: None,
    };
    let outcome = remove_tags_in(&txn, principal, req, None, true).await?;
    txn.commit().await?;
    Ok(outcome)
}

/// [`remove_tags`] inside the caller's transaction, leaving alone what
/// others changed after `as_of`.
async fn remove_tags_in(
    txn: &DatabaseTransaction,
    principal: &Principal,
    req: TagRequest,
    as_of: Option<&LogPosition>,
    audited: bool,
) -> AppResult<TaggingOutcome> {
    let (customers, tags, keep) = begin_tagging(txn, principal, &req, as_of).await?;
    let locked: Vec<Locked> = customers.iter().map(Locked::of).collect();
    let by = req.by(principal);
    let mut outcome = remove_from_locked(txn, principal, &locked, &tags, &keep, &by).await?;
    if audited {
        let ids: Vec<i64> = locked.iter().map(|c| c.id).collect();
        audit::record(
            txn,
            batch_entry(principal, "customer.untag", &customers).with_detail(json!({
                "customerIds": ids,
                "tagIds": tags.iter().map(|t| t.tag.id).collect::<Vec<_>>(),
                "removed": outcome.removed,
                "unchanged": outcome.unchanged,
                "kept": outcome.kept,
                "asOfEvent": keep.as_of,
                "source": req.source,
                "sourceRef": req.source_ref,
            })),
        )
        .await?;
    }
    outcome.customers = customers;
    Ok(outcome)
}

/// Takes `tags` off customers whose rows the caller locked (tags a
/// customer does not hold are left alone), after checking the caller's use
/// of each tag at each customer's unit. `outcome.customers` is left empty.
///
/// # Errors
/// `FORBIDDEN` without the use of a tag at a customer's unit; database
/// errors. Nothing is written on error.
async fn remove_from_locked(
    txn: &DatabaseTransaction,
    principal: &Principal,
    customers: &[Locked],
    tags: &[VisibleTag],
    keep: &Keep,
    by: &EventBy,
) -> AppResult<TaggingOutcome> {
    let units: BTreeSet<i64> = customers.iter().map(|c| c.org_unit_id).collect();
    for unit in units {
        for t in tags {
            require_use(principal, t, unit)?;
        }
    }
    let ids: Vec<i64> = customers.iter().map(|c| c.id).collect();
    let existing = relevant_assignments(txn, &ids, tags, &[]).await?;
    let mut outcome = TaggingOutcome::default();
    let mut removals = Vec::new();
    let mut events: Vec<NewEvent> = Vec::new();
    for c in customers {
        let held: HashSet<i64> = existing.get(&c.id).map(|a| a.iter().map(|a| a.tag_id).collect()).unwrap_or_default();
        for t in tags {
            if keep.contains(c.id, t.tag.id) {
                outcome.kept += 1;
            } else if held.contains(&t.tag.id) {
                removals.push((c.id, t.tag.id));
                events.push((c.id, t.tag.id, TagOp::Remove));
                outcome.removed += 1;
            } else {
                outcome.unchanged += 1;
            }
        }
    }
    delete_assignments(txn, &removals).await?;
    insert_event_rows(txn, by, &events).await?;
    Ok(outcome)
}

/// `LOCKED` when somebody else's modification lock covers one of these
/// customers' tags in the group of one of these tags.
async fn check_locks(
    txn: &DatabaseTransaction,
    principal: &Principal,
    customers: &[customer::Model],
    tags: &[VisibleTag],
) -> AppResult<()> {
    let mut groups: Vec<i64> = tags.iter().filter_map(|t| t.group.as_ref().map(|g| g.id)).collect();
    groups.sort_unstable();
    groups.dedup();
    let ids: Vec<i64> = customers.iter().map(|c| c.id).collect();
    locks::check_unlocked(txn, principal.staff.id, &groups, &ids).await
}

/// Adding or removing, for bulk tagging and its change requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BulkOp {
    Add,
    Remove,
}

/// A tagging call above the bulk threshold, as stored in a change request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkTagging {
    pub op: BulkOp,
    pub customer_ids: Vec<i64>,
    pub tag_ids: Vec<i64>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub source_ref: Option<String>,
}

impl BulkTagging {
    fn kind(&self) -> ChangeRequestKind {
        match self.op {
            BulkOp::Add => ChangeRequestKind::CustomerTag,
            BulkOp::Remove => ChangeRequestKind::CustomerUntag,
        }
    }

    fn request(&self, source: TagSource, source_ref: Option<String>) -> TagRequest {
        TagRequest {
            customers: self.customer_ids.iter().map(|c| CustomerId(*c)).collect(),
            tags: self.tag_ids.iter().map(|t| TagId(*t)).collect(),
            expires_at: self.expires_at,
            source,
            source_ref,
        }
    }
}

/// What a tagging call did: applied, or filed as a change request.
#[derive(Debug, Clone, Default)]
pub struct TaggingResult {
    pub applied: bool,
    pub outcome: TaggingOutcome,
    pub change_request: Option<change_request::Model>,
}

async fn run_in(
    txn: &DatabaseTransaction,
    principal: &Principal,
    limits: &Limits,
    bulk: &BulkTagging,
    source: TagSource,
    source_ref: Option<String>,
    as_of: Option<&LogPosition>,
) -> AppResult<TaggingOutcome> {
    match bulk.op {
        BulkOp::Add => apply_tags_in(txn, principal, limits, bulk.request(source, source_ref), as_of, true).await,
        BulkOp::Remove => remove_tags_in(txn, principal, bulk.request(source, source_ref), as_of, true).await,
    }
}

/// Tags or untags customers. Up to the bulk threshold the call applies at
/// once. Above it, a caller holding `customer_tag:bulk` for every customer
/// runs it under modification locks on the tags' groups, all or nothing
/// (one transaction); anybody else's call becomes a change request,
/// checked first as if it applied.
///
/// A bulk run takes effect as of the moment it begins: it takes its locks
/// before it reads any tag, so a concurrent edit of the same customers'
/// tags in those groups is either refused with `LOCKED` (while the locks
/// hold) or, when it landed between the call's start and its locks, kept
/// (counted in `kept`): never accepted and then overwritten.
///
/// # Errors
/// As [`apply_tags`] and [`remove_tags`]; `LOCKED` when another holder's
/// lock covers the change. Nothing is written on error.
#[tracing::instrument(skip(db, principal, limits, bulk), fields(staff = principal.staff.id, customers = bulk.customer_ids.len()))]
pub async fn tag_or_request(
    db: &DatabaseConnection,
    principal: &Principal,
    limits: &Limits,
    bulk: BulkTagging,
) -> AppResult<TaggingResult> {
    // Read first: everything committed after this point is contemporary
    // with the call and is not overwritten by it.
    let since = log_position(db, Log::TagEvents).await?;
    check_sizes(limits, bulk.customer_ids.len(), bulk.tag_ids.len())?;
    if bulk.op == BulkOp::Add {
        if bulk.expires_at.is_some_and(|at| at <= Utc::now()) {
            return Err(AppError::validation("expiresAt", "must be in the future"));
        }
        if bulk.source_ref.as_ref().is_some_and(|r| r.chars().count() > 128) {
            return Err(AppError::validation("sourceRef", "must be at most 128 characters"));
        }
    }
    if bulk.customer_ids.len() <= limits.bulk_threshold {
        let txn = db.begin().await?;
        let outcome = run_in(&txn, principal, limits, &bulk, TagSource::Manual, bulk.source_ref.clone(), None).await?;
        txn.commit().await?;
        return Ok(TaggingResult { applied: true, outcome, change_request: None });
    }
    super::customer::require_visible_ids(db, principal, &bulk.customer_ids).await?;
    let units = customer_units(db, &bulk.customer_ids).await?;
    if units.iter().all(|u| principal.may(Action::CustomerTagBulk, *u)) {
        let outcome = run_locked(db, principal, limits, &bulk, &since).await?;
        return Ok(TaggingResult { applied: true, outcome, change_request: None });
    }
    // Check the whole call as it would apply now, then file it.
    let txn = db.begin().await?;
    let dry = run_in(&txn, principal, limits, &bulk, TagSource::Bulk, bulk.source_ref.clone(), None).await?;
    txn.rollback().await?;
    let scope = principal
        .org
        .common_ancestor(dry.customers.iter().map(|c| c.org_unit_id))
        .ok_or_else(|| AppError::validation("customerIds", "no customers"))?;
    let txn = db.begin().await?;
    let new = NewRequest {
        kind: bulk.kind(),
        target: RequestTarget::Customers,
        base_versions: json!({}),
        payload: serde_json::to_value(&bulk).map_err(AppError::internal)?,
        scope,
        reason: Reason::parse(bulk.source_ref.as_deref(), "sourceRef")?,
    };
    let request = requests::file(&txn, principal, new).await?;
    txn.commit().await?;
    Ok(TaggingResult { applied: false, outcome: dry, change_request: Some(request) })
}

/// The org units of the named customers (visible ones: the caller checked).
async fn customer_units(db: &impl ConnectionTrait, ids: &[i64]) -> AppResult<HashSet<i64>> {
    let mut units = HashSet::new();
    for chunk in ids.chunks(CHUNK) {
        let rows: Vec<i64> = customer::Entity::find()
            .select_only()
            .column(customer::Column::OrgUnitId)
            .filter(customer::Column::Id.is_in(chunk.iter().copied()))
            .distinct()
            .into_tuple()
            .all(db)
            .await?;
        units.extend(rows);
    }
    Ok(units)
}

/// The (customer, tag) pairs of a bulk call whose customer's tags in the
/// tag's group (or of the tag itself, for a tag without group) changed
/// after `since` (whatever their sequence numbers). Read with the
/// customers' rows locked, so every such change has committed.
async fn changed_since(
    txn: &DatabaseTransaction,
    since: &LogPosition,
    customer_ids: &[i64],
    tags: &[VisibleTag],
) -> AppResult<Keep> {
    // Which call tags an event on a tag concerns: those sharing its group.
    let groups: HashSet<i64> = tags.iter().filter_map(|t| t.group.as_ref().map(|g| g.id)).collect();
    let mut concerns: HashMap<i64, Vec<i64>> = HashMap::new();
    if !groups.is_empty() {
        let members: Vec<(i64, Option<i64>)> = tag::Entity::find()
            .select_only()
            .columns([tag::Column::Id, tag::Column::GroupId])
            .filter(tag::Column::GroupId.is_in(groups))
            .into_tuple()
            .all(txn)
            .await?;
        for (member, group) in members {
            let same: Vec<i64> =
                tags.iter().filter(|t| t.group.as_ref().map(|g| g.id) == group).map(|t| t.tag.id).collect();
            concerns.insert(member, same);
        }
    }
    for t in tags.iter().filter(|t| t.group.is_none()) {
        concerns.insert(t.tag.id, vec![t.tag.id]);
    }
    let mut keep = Keep { as_of: Some(since.seq), pairs: HashSet::new() };
    for chunk in customer_ids.chunks(CHUNK) {
        let rows: Vec<(i64, i64)> = tag_event::Entity::find()
            .select_only()
            .columns([tag_event::Column::CustomerId, tag_event::Column::TagId])
            .filter(after(Log::TagEvents, since))
            .filter(tag_event::Column::CustomerId.is_in(chunk.iter().copied()))
            .filter(tag_event::Column::TagId.is_in(concerns.keys().copied()))
            .into_tuple()
            .all(txn)
            .await?;
        for (customer_id, tag_id) in rows {
            for t in concerns.get(&tag_id).into_iter().flatten() {
                keep.pairs.insert((customer_id, *t));
            }
        }
    }
    Ok(keep)
}

/// Runs a bulk call under modification locks on the tags' groups for these
/// customers. The locks are taken and committed first, so that nobody else
/// changes these customers' tags in those groups once the run reads them;
/// then the whole call applies in one transaction (all or nothing); then
/// the locks are released, also when the call fails (they expire on their
/// own if the process dies).
async fn run_locked(
    db: &DatabaseConnection,
    principal: &Principal,
    limits: &Limits,
    bulk: &BulkTagging,
    since: &LogPosition,
) -> AppResult<TaggingOutcome> {
    let ids: Vec<TagId> = bulk.tag_ids.iter().map(|t| TagId(*t)).collect();
    let tags = named_tags(db, principal, &ids).await?;
    let mut groups: Vec<&tag_group::Model> = tags.iter().filter_map(|t| t.group.as_ref()).collect();
    groups.sort_by_key(|g| g.id);
    groups.dedup_by_key(|g| g.id);
    let until = Utc::now() + Duration::seconds(limits.bulk_lock_seconds);
    let reason = format!(
        "bulk {} of {} customers{}",
        if bulk.op == BulkOp::Add { "tagging" } else { "untagging" },
        bulk.customer_ids.len(),
        bulk.source_ref.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
    );
    let txn = db.begin().await?;
    let mut locks = Vec::new();
    for group in &groups {
        let lock = locks::take(&txn, principal.staff_id(), group, Some(&bulk.customer_ids), &reason, until).await?;
        locks.push(lock);
    }
    txn.commit().await?;

    let run = async {
        let txn = db.begin().await?;
        let outcome =
            run_in(&txn, principal, limits, bulk, TagSource::Bulk, bulk.source_ref.clone(), Some(since)).await?;
        // A customer may have moved to a unit without bulk rights since.
        for c in &outcome.customers {
            principal.require(Action::CustomerTagBulk, c.org_unit_id)?;
        }
        txn.commit().await?;
        Ok::<_, AppError>(outcome)
    };
    let result = run.await;
    let txn = db.begin().await?;
    for (lock, group) in locks.iter().zip(&groups) {
        locks::give_back(&txn, principal.staff_id(), lock, group, Some(result.is_ok())).await?;
    }
    txn.commit().await?;
    result
}

/// Applies an approved bulk request inside the approval's transaction,
/// with the requester's rights.
///
/// # Errors
/// As [`apply_tags`].
pub async fn apply_approved(
    txn: &DatabaseTransaction,
    requester: &Principal,
    limits: &Limits,
    bulk: BulkTagging,
    request_id: i64,
) -> AppResult<TaggingOutcome> {
    let source_ref = Some(format!("change_request:{request_id}"));
    run_in(txn, requester, limits, &bulk, TagSource::Bulk, source_ref, None).await
}

/// One batch of a bulk job, inside the batch's transaction: takes `remove`
/// off and puts `add` on `customers` (source `BULK`, `source_ref` naming
/// the job), with the per-customer rules of [`apply_tags`] (exclusive
/// groups, cap, alerts) and one tag event per change. No audit row: the
/// job writes one with its counts when it ends. The caller locked the
/// customers' rows ([`lock_customer_units`]) and left out customers out of
/// scope or under somebody else's modification lock; `add` and `remove`
/// are the job's tags as its requester sees them.
///
/// # Errors
/// As [`apply_tags`] and [`remove_tags`], for the whole batch.
pub(crate) async fn apply_job_batch(
    txn: &DatabaseTransaction,
    principal: &Principal,
    limits: &Limits,
    customers: &[Locked],
    add: &[VisibleTag],
    remove: &[VisibleTag],
    source_ref: String,
) -> AppResult<TaggingOutcome> {
    let mut total = TaggingOutcome::default();
    if customers.is_empty() {
        return Ok(total);
    }
    let by = EventBy {
        actor: Some(principal.staff.id),
        source: TagSource::Bulk,
        source_ref: Some(source_ref),
        at: Utc::now(),
    };
    let keep = Keep::default();
    if !remove.is_empty() {
        let o = remove_from_locked(txn, principal, customers, remove, &keep, &by).await?;
        total.removed += o.removed;
        total.unchanged += o.unchanged;
    }
    if !add.is_empty() {
        let o = add_to_locked(txn, principal, limits, customers, add, &keep, None, &by).await?;
        total.added += o.added;
        total.removed += o.removed;
        total.unchanged += o.unchanged;
        total.alerts_raised += o.alerts_raised;
    }
    Ok(total)
}

/// Puts tags on the customers of an import batch, in the import's
/// transaction: as [`apply_tags`] (exclusive groups, cap, alerts, locks),
/// source `IMPORT`, no audit row of its own (the import writes one).
///
/// # Errors
/// As [`apply_tags`], for the whole batch.
pub(crate) async fn apply_import_batch(
    txn: &DatabaseTransaction,
    principal: &Principal,
    limits: &Limits,
    customers: Vec<CustomerId>,
    tags: &[TagId],
    source_ref: &str,
) -> AppResult<TaggingOutcome> {
    let request = TagRequest {
        customers,
        tags: tags.to_vec(),
        expires_at: None,
        source: TagSource::Import,
        source_ref: Some(source_ref.to_owned()),
    };
    apply_tags_in(txn, principal, limits, request, None, false).await
}

/// Cursors of a customer's tag history (newest first by sequence).
const HISTORY_ORDERING: &str = "tag_event.newest";

/// A customer's tag history, newest first: the add and remove events of
/// the tags the caller may see on that customer (as for its current tags),
/// one page of them (`first` after `after`, or `last` before `before`). A
/// merged tag's events stay under that tag; the merge's moves have source
/// `MERGE`.
///
/// Visibility is decided per tag, so the page is one keyset query over the
/// customer's events of the visible tags: three statements, however many
/// events the caller may not see.
///
/// # Errors
/// `VALIDATION` for a bad cursor or one of another list; database errors.
pub async fn visible_events_of(
    db: &impl ConnectionTrait,
    principal: &Principal,
    customer: &customer::Model,
    page: &PageArgs,
) -> AppResult<NewestFirst<tag_event::Model>> {
    let tags_of_customer = Query::select()
        .distinct()
        .column(tag_event::Column::TagId)
        .from(tag_event::Entity)
        .and_where(tag_event::Column::CustomerId.eq(customer.id))
        .to_owned();
    let tags = tag::Entity::find().filter(tag::Column::Id.in_subquery(tags_of_customer)).all(db).await?;
    let groups = tag_library::groups_by_id(db, tags.iter().filter_map(|t| t.group_id)).await?;
    let visible: Vec<i64> = tags
        .iter()
        .filter(|t| {
            let class = t.group_id.and_then(|g| groups.get(&g)).map(|g| g.visibility_class.as_str());
            on_customer_visible(principal, t.owner_staff_id, class, customer.org_unit_id)
        })
        .map(|t| t.id)
        .collect();
    let query = tag_event::Entity::find()
        .filter(tag_event::Column::CustomerId.eq(customer.id))
        .filter(tag_event::Column::TagId.is_in(visible));
    super::newest_first(db, query, tag_event::Column::Seq, |e| e.seq, HISTORY_ORDERING, page).await
}

/// One tag event the caller may see: of a customer in its scope, of a tag
/// it may see there (as in [`visible_events_of`]).
///
/// # Errors
/// `NOT_FOUND` for a missing event and for one the caller may not see alike.
pub async fn find_event(
    db: &impl ConnectionTrait,
    principal: &Principal,
    seq: EventSeq,
) -> AppResult<tag_event::Model> {
    let not_found = || AppError::not_found("tag event", seq);
    let event = tag_event::Entity::find_by_id(seq.0).one(db).await?.ok_or_else(not_found)?;
    let customer = super::customer::find_in_scope(db, principal, CustomerId(event.customer_id))
        .await
        .map_err(|e| if matches!(e, AppError::NotFound { .. }) { not_found() } else { e })?;
    let tag = tag::Entity::find_by_id(event.tag_id).one(db).await?.ok_or_else(not_found)?;
    let groups = tag_library::groups_by_id(db, tag.group_id).await?;
    let class = tag.group_id.and_then(|g| groups.get(&g)).map(|g| g.visibility_class.as_str());
    if !on_customer_visible(principal, tag.owner_staff_id, class, customer.org_unit_id) {
        return Err(not_found());
    }
    Ok(event)
}

/// An assignment with what deciding its visibility needs.
#[derive(Debug, FromQueryResult)]
struct TagVisibility {
    id: i64,
    owner_staff_id: Option<i64>,
    visibility_class: Option<String>,
}

/// The tags of the given customers that the caller may see, by customer,
/// oldest assignment first (tags no longer in force are left out): other
/// people's personal tags and tags of classes the caller may not read at
/// the customer's unit are left out here, so they never reach the API
/// layer.
///
/// Three single-table reads by id arrays (assignments, the customers'
/// units, the tags with their groups' classes) rather than one join: on
/// PostgreSQL at 1M customers, planning the join of `customer_tag` with
/// `tag` and `customer` took 3–3.6 ms and running it 2.2–3 ms for a page
/// of 20 customers, against about 1.5 ms for the three.
///
/// # Errors
/// Database errors.
pub async fn visible_assignments_of(
    db: &impl ConnectionTrait,
    principal: &Principal,
    customer_ids: &[i64],
) -> AppResult<BTreeMap<i64, Vec<customer_tag::Model>>> {
    let backend = db.get_database_backend();
    let mut rows: Vec<customer_tag::Model> = Vec::new();
    let mut unit_of: HashMap<i64, i64> = HashMap::new();
    for chunk in customer_ids.chunks(ids_per_statement(backend)) {
        rows.extend(
            customer_tag::Entity::find()
                .filter(id_in(backend, customer_tag::Column::CustomerId, chunk))
                .order_by_asc(customer_tag::Column::TaggedAt)
                .order_by_asc(customer_tag::Column::TagId)
                .all(db)
                .await?,
        );
        let units: Vec<(i64, i64)> = customer::Entity::find()
            .select_only()
            .column(customer::Column::Id)
            .column(customer::Column::OrgUnitId)
            .filter(id_in(backend, customer::Column::Id, chunk))
            .into_tuple()
            .all(db)
            .await?;
        unit_of.extend(units);
    }
    let mut tag_ids: Vec<i64> = rows.iter().map(|r| r.tag_id).collect();
    tag_ids.sort_unstable();
    tag_ids.dedup();
    // Tag → (owner, class), for tags in force only.
    let mut tags: HashMap<i64, (Option<i64>, Option<String>)> = HashMap::new();
    for chunk in tag_ids.chunks(ids_per_statement(backend)) {
        let query = Query::select()
            .column((tag::Entity, tag::Column::Id))
            .column((tag::Entity, tag::Column::OwnerStaffId))
            .column((tag_group::Entity, tag_group::Column::VisibilityClass))
            .from(tag::Entity)
            .left_join(
                tag_group::Entity,
                Expr::col((tag_group::Entity, tag_group::Column::Id)).equals((tag::Entity, tag::Column::GroupId)),
            )
            .and_where(id_in(backend, (tag::Entity, tag::Column::Id), chunk))
            .and_where(Expr::col((tag::Entity, tag::Column::Status)).is_in(tag_library::in_force()))
            .to_owned();
        let found = TagVisibility::find_by_statement(backend.build(&query)).all(db).await?;
        tags.extend(found.into_iter().map(|t| (t.id, (t.owner_staff_id, t.visibility_class))));
    }
    let mut out: BTreeMap<i64, Vec<customer_tag::Model>> = BTreeMap::new();
    for row in rows {
        let (Some((owner, class)), Some(unit)) = (tags.get(&row.tag_id), unit_of.get(&row.customer_id)) else {
            continue;
        };
        if on_customer_visible(principal, *owner, class.as_deref(), *unit) {
            out.entry(row.customer_id).or_default().push(row);
        }
    }
    Ok(out)
}

#[derive(Debug, FromQueryResult)]
struct CountRow {
    tag_id: i64,
    org_unit_id: i64,
    owner_staff_id: Option<i64>,
    visibility_class: Option<String>,
    holders: i64,
}

/// How many customers hold each tag, counting only customers the caller may
/// read, in units where it may see the tag's class (0 for an archived tag:
/// retired). One statement.
///
/// # Errors
/// Database errors.
pub async fn holder_counts(
    db: &impl ConnectionTrait,
    principal: &Principal,
    tag_ids: &[i64],
) -> AppResult<HashMap<i64, u64>> {
    let unit = (customer::Entity, customer::Column::OrgUnitId);
    let query = Query::select()
        .column((customer_tag::Entity, customer_tag::Column::TagId))
        .column(unit)
        .column((tag::Entity, tag::Column::OwnerStaffId))
        .column((tag_group::Entity, tag_group::Column::VisibilityClass))
        .expr_as(Expr::col((customer_tag::Entity, customer_tag::Column::CustomerId)).count(), "holders")
        .from(customer_tag::Entity)
        .inner_join(
            customer::Entity,
            Expr::col((customer::Entity, customer::Column::Id))
                .equals((customer_tag::Entity, customer_tag::Column::CustomerId)),
        )
        .inner_join(
            tag::Entity,
            Expr::col((tag::Entity, tag::Column::Id)).equals((customer_tag::Entity, customer_tag::Column::TagId)),
        )
        .left_join(
            tag_group::Entity,
            Expr::col((tag_group::Entity, tag_group::Column::Id)).equals((tag::Entity, tag::Column::GroupId)),
        )
        .and_where(Expr::col((customer_tag::Entity, customer_tag::Column::TagId)).is_in(tag_ids.iter().copied()))
        .and_where(Expr::col((tag::Entity, tag::Column::Status)).is_in(tag_library::in_force()))
        .and_where(Expr::col(unit).is_in(principal.scope(Action::CustomerRead).unit_ids()))
        .group_by_columns([
            (customer_tag::Entity, customer_tag::Column::TagId).into_column_ref(),
            unit.into_column_ref(),
            (tag::Entity, tag::Column::OwnerStaffId).into_column_ref(),
            (tag_group::Entity, tag_group::Column::VisibilityClass).into_column_ref(),
        ])
        .to_owned();
    let rows = CountRow::find_by_statement(db.get_database_backend().build(&query)).all(db).await?;
    let mut counts: HashMap<i64, u64> = tag_ids.iter().map(|t| (*t, 0)).collect();
    for row in rows {
        if on_customer_visible(principal, row.owner_staff_id, row.visibility_class.as_deref(), row.org_unit_id) {
            *counts.entry(row.tag_id).or_default() += row.holders as u64;
        }
    }
    Ok(counts)
}

/// An assignment a tagging call may touch, with its tag's group and status.
#[derive(Debug)]
struct HeldRow {
    tag_id: i64,
    group_id: Option<i64>,
    status: TagStatus,
}

/// [`relevant_assignments`] and [`in_force_counts`] together. On
/// PostgreSQL one statement reads both from one pass over the customers'
/// primary-key entries (the count reads them all anyway).
async fn held_and_counts(
    txn: &DatabaseTransaction,
    customer_ids: &[i64],
    tags: &[VisibleTag],
    groups: &[i64],
) -> AppResult<(HashMap<i64, Vec<HeldRow>>, HashMap<i64, u32>)> {
    if txn.get_database_backend() != DbBackend::Postgres || customer_ids.is_empty() {
        let held = relevant_assignments(txn, customer_ids, tags, groups).await?;
        return Ok((held, in_force_counts(txn, customer_ids).await?));
    }
    let concerned = concerned_tags(txn, tags, groups).await?;
    let sql = "SELECT ct.customer_id, \
                      count(*) FILTER (WHERE ct.tag_id <> ALL(ARRAY(SELECT id FROM tag WHERE status = $3))) AS held, \
                      coalesce(string_agg(ct.tag_id::text, ',') FILTER (WHERE ct.tag_id = ANY($2)), '') \
                        AS concerned \
               FROM customer_tag ct WHERE ct.customer_id = ANY($1) GROUP BY ct.customer_id";
    // True `bigint[]` parameters: a text one cast to `bigint[]` in the
    // filter is parsed again for every row read (~190,000 per 10,000
    // customers).
    let values: Vec<sea_orm::Value> = vec![
        customer_ids.to_vec().into(),
        concerned.keys().copied().collect::<Vec<i64>>().into(),
        TagStatus::Archived.as_str().into(),
    ];
    let rows = txn.query_all_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    let (mut held, mut counts) = (HashMap::new(), HashMap::new());
    for row in rows {
        let customer_id: i64 = row.try_get_by_index(0)?;
        let in_force: i64 = row.try_get_by_index(1)?;
        let listed: String = row.try_get_by_index(2)?;
        counts.insert(customer_id, u32::try_from(in_force).unwrap_or(u32::MAX));
        let rows: Vec<HeldRow> = listed
            .split(',')
            .filter_map(|t| t.parse::<i64>().ok())
            .filter_map(|tag_id| concerned.get(&tag_id).map(|&(group_id, status)| HeldRow { tag_id, group_id, status }))
            .collect();
        if !rows.is_empty() {
            held.insert(customer_id, rows);
        }
    }
    Ok((held, counts))
}

/// The tags a call concerns: the named ones and the members of the
/// exclusive `groups` (a handful), with their group and status.
async fn concerned_tags(
    txn: &DatabaseTransaction,
    tags: &[VisibleTag],
    groups: &[i64],
) -> AppResult<HashMap<i64, (Option<i64>, TagStatus)>> {
    let mut concerned: HashMap<i64, (Option<i64>, TagStatus)> =
        tags.iter().map(|t| (t.tag.id, (t.tag.group_id, t.tag.status))).collect();
    if !groups.is_empty() {
        let members: Vec<(i64, Option<i64>, TagStatus)> = tag::Entity::find()
            .select_only()
            .columns([tag::Column::Id, tag::Column::GroupId, tag::Column::Status])
            .filter(tag::Column::GroupId.is_in(groups.iter().copied()))
            .into_tuple()
            .all(txn)
            .await?;
        for (id, group_id, status) in members {
            concerned.insert(id, (group_id, status));
        }
    }
    Ok(concerned)
}

/// The customers' assignments of the `tags`, or of tags of the `groups`,
/// by customer (visibility aside: used for exclusivity, never shown).
async fn relevant_assignments(
    txn: &DatabaseTransaction,
    customer_ids: &[i64],
    tags: &[VisibleTag],
    groups: &[i64],
) -> AppResult<HashMap<i64, Vec<HeldRow>>> {
    let mut out: HashMap<i64, Vec<HeldRow>> = HashMap::new();
    if customer_ids.is_empty() {
        return Ok(out);
    }
    // The tags concerned first, so that the assignments are found by the
    // primary key (customer, tag), not by reading every assignment of the
    // customers (about 190,000 rows for 10,000 customers at 1M).
    let concerned = concerned_tags(txn, tags, groups).await?;
    let tag_ids: Vec<i64> = concerned.keys().copied().collect();
    let backend = txn.get_database_backend();
    for chunk in customer_ids.chunks(ids_per_statement(backend)) {
        let rows: Vec<(i64, i64)> = customer_tag::Entity::find()
            .select_only()
            .columns([customer_tag::Column::CustomerId, customer_tag::Column::TagId])
            .filter(id_in(backend, customer_tag::Column::CustomerId, chunk))
            .filter(id_in(backend, customer_tag::Column::TagId, &tag_ids))
            .into_tuple()
            .all(txn)
            .await?;
        for (customer_id, tag_id) in rows {
            let (group_id, status) = concerned[&tag_id];
            out.entry(customer_id).or_default().push(HeldRow { tag_id, group_id, status });
        }
    }
    Ok(out)
}

/// How many tags in force (not retired) each customer holds: what the cap
/// and the alert count. Customers holding none are left out.
async fn in_force_counts(txn: &DatabaseTransaction, customer_ids: &[i64]) -> AppResult<HashMap<i64, u32>> {
    let mut out = HashMap::new();
    if customer_ids.is_empty() {
        return Ok(out);
    }
    // Archived tags are few: leaving them out by id lets the count read
    // only the primary key (customer, tag), with no join to `tag` for each
    // of the ~19 assignments per customer.
    let archived = Query::select()
        .column(tag::Column::Id)
        .from(tag::Entity)
        .and_where(tag::Column::Status.eq(TagStatus::Archived.as_str()))
        .to_owned();
    let backend = txn.get_database_backend();
    for chunk in customer_ids.chunks(ids_per_statement(backend)) {
        let rows: Vec<(i64, i64)> = customer_tag::Entity::find()
            .select_only()
            .column(customer_tag::Column::CustomerId)
            .column_as(customer_tag::Column::TagId.count(), "held")
            .filter(id_in(backend, customer_tag::Column::CustomerId, chunk))
            .filter(customer_tag::Column::TagId.not_in_subquery(archived.clone()))
            .group_by(customer_tag::Column::CustomerId)
            .into_tuple()
            .all(txn)
            .await?;
        for (customer_id, held) in rows {
            out.insert(customer_id, u32::try_from(held).unwrap_or(u32::MAX));
        }
    }
    Ok(out)
}

/// An assignment to write: customer, tag, expiry (the rest is the call's).
type NewAssignment = (i64, i64, Option<DateTime<Utc>>);

/// Writes the assignments of one call: on PostgreSQL one statement over
/// arrays (`unnest`), on SQLite multi-row statements of [`CHUNK`] rows.
/// Never a statement per customer.
///
/// # Errors
/// `CONFLICT` when another transaction added one of them after this one
/// read (its customer was not locked: a merge); database errors.
async fn insert_assignments(txn: &DatabaseTransaction, by: &EventBy, rows: &[NewAssignment]) -> AppResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let conflict =
        |err: sea_orm::DbErr| on_constraint(err, |_| "these customers' tags changed meanwhile; retry".to_owned());
    if txn.get_database_backend() == DbBackend::Postgres {
        let sql = "INSERT INTO customer_tag \
                   (customer_id, tag_id, source, source_ref, tagged_by, tagged_at, expires_at) \
                   SELECT u.c, u.t, $4, $5, $6, $7, u.e \
                   FROM unnest($1::text::bigint[], $2::text::bigint[], $3::text::timestamptz[]) AS u(c, t, e)";
        let values: Vec<sea_orm::Value> = vec![
            pg_array(rows.iter().map(|r| Some(r.0))).into(),
            pg_array(rows.iter().map(|r| Some(r.1))).into(),
            pg_array(rows.iter().map(|r| r.2.map(pg_instant))).into(),
            by.source.as_str().into(),
            by.source_ref.clone().into(),
            by.actor.into(),
            by.at.into(),
        ];
        txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await.map_err(conflict)?;
        return Ok(());
    }
    for chunk in rows.chunks(CHUNK) {
        let models = chunk.iter().map(|(customer_id, tag_id, expires_at)| customer_tag::ActiveModel {
            customer_id: Set(*customer_id),
            tag_id: Set(*tag_id),
            source: Set(by.source),
            source_ref: Set(by.source_ref.clone()),
            tagged_by: Set(by.actor),
            tagged_at: Set(by.at),
            expires_at: Set(*expires_at),
        });
        customer_tag::Entity::insert_many(models).exec(txn).await.map_err(conflict)?;
    }
    Ok(())
}

/// Writes assignments each with its own source, explanation and expiry
/// (a rule's, per change): on PostgreSQL one statement over arrays
/// (`unnest`), elsewhere multi-row statements of [`CHUNK`] rows.
///
/// # Errors
/// Database errors.
pub(crate) async fn insert_assignment_rows(
    txn: &DatabaseTransaction,
    rows: Vec<customer_tag::ActiveModel>,
) -> AppResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        let columns: Option<Vec<_>> = rows
            .iter()
            .map(|r| {
                Some((
                    *r.customer_id.try_as_ref()?,
                    *r.tag_id.try_as_ref()?,
                    r.source.try_as_ref()?.as_str(),
                    r.source_ref.try_as_ref()?.clone(),
                    *r.tagged_by.try_as_ref()?,
                    *r.tagged_at.try_as_ref()?,
                    *r.expires_at.try_as_ref()?,
                ))
            })
            .collect();
        if let Some(columns) = columns {
            let sql = "INSERT INTO customer_tag \
                       (customer_id, tag_id, source, source_ref, tagged_by, tagged_at, expires_at) \
                       SELECT u.c, u.t, u.s, u.r, u.b, u.at, u.e \
                       FROM unnest($1::text::bigint[], $2::text::bigint[], $3::text::text[], $4::text::text[], \
                                   $5::text::bigint[], $6::text::timestamptz[], $7::text::timestamptz[]) \
                       AS u(c, t, s, r, b, at, e)";
            let values: Vec<sea_orm::Value> = vec![
                pg_array(columns.iter().map(|r| Some(r.0))).into(),
                pg_array(columns.iter().map(|r| Some(r.1))).into(),
                pg_array(columns.iter().map(|r| Some(r.2))).into(),
                pg_array(columns.iter().map(|r| r.3.as_deref())).into(),
                pg_array(columns.iter().map(|r| r.4)).into(),
                pg_array(columns.iter().map(|r| Some(pg_instant(r.5)))).into(),
                pg_array(columns.iter().map(|r| r.6.map(pg_instant))).into(),
            ];
            txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
            return Ok(());
        }
    }
    for chunk in rows.chunks(CHUNK) {
        customer_tag::Entity::insert_many(chunk.to_vec()).exec(txn).await?;
    }
    Ok(())
}

/// Deletes (customer, tag) assignments: one statement over arrays on
/// PostgreSQL, multi-row statements on SQLite.
pub(crate) async fn delete_assignments(txn: &DatabaseTransaction, pairs: &[(i64, i64)]) -> AppResult<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        let sql = "DELETE FROM customer_tag USING unnest($1::text::bigint[], $2::text::bigint[]) AS u(c, t) \
                   WHERE customer_tag.customer_id = u.c AND customer_tag.tag_id = u.t";
        let values: Vec<sea_orm::Value> =
            vec![pg_array(pairs.iter().map(|p| Some(p.0))).into(), pg_array(pairs.iter().map(|p| Some(p.1))).into()];
        txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
        return Ok(());
    }
    for chunk in pairs.chunks(CHUNK) {
        let cond = chunk.iter().fold(Condition::any(), |cond, (customer_id, tag_id)| {
            cond.add(
                Condition::all()
                    .add(customer_tag::Column::CustomerId.eq(*customer_id))
                    .add(customer_tag::Column::TagId.eq(*tag_id)),
            )
        });
        customer_tag::Entity::delete_many().filter(cond).exec(txn).await?;
    }
    Ok(())
}

/// The audit row of a tagging call: the customer as object when there is
/// one, the ids in the detail always.
/// The row is filed under the customers' lowest common unit, so that the
/// auditors of that unit see it.
fn batch_entry(principal: &Principal, action: &'static str, customers: &[customer::Model]) -> AuditEntry {
    let mut entry = AuditEntry::ok(principal.staff_id(), action, "customer", "");
    entry.object_id = match customers {
        [one] => Some(one.id.to_string()),
        _ => None,
    };
    entry.org_unit_id = principal.org.common_ancestor(customers.iter().map(|c| c.org_unit_id));
    entry
}
