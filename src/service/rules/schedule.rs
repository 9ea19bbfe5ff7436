//! Scheduled rules: conditions that become true with time and no event
//! (`no order_paid for 180d` → 流失客户, value tiers from recency,
//! frequency and money) run on a schedule in the organisation's time
//! zone, not on events. Beside them, the sweeps of the same background
//! round: assignments whose `expiresAt` passed are taken off (source
//! `EXPIRY`), and rule actions a modification lock deferred are applied
//! once the lock ends (see [`super::deferred`]).
//!
//! - **Schedule.** `DAILY HH:MM` (organisation's time zone), checked when
//!   the rule is saved. A slot is one day's `HH:MM`; its key is the slot
//!   in the organisation's offset (`2026-12-02T03:00+08:00`).
//! - **Once per slot.** A run is a `rule_run` row, unique per (rule, slot):
//!   of several instances reaching for one slot, one inserts the row and
//!   runs it, the others find it taken. The runner holds a lease (`owner`,
//!   `lease_until`), renewed with every batch by a conditional update;
//!   when an instance dies mid-run, another takes the run over once the
//!   lease has run out, and judges every customer again (a customer
//!   already changed has nothing left to change).
//! - **Catch-up.** Each round runs the latest slot due (the latest
//!   `HH:MM` at or before now) when it has no run yet. After downtime the
//!   slots missed in between are not run one by one: the latest one is,
//!   judged as of now, which is what every missed one would have
//!   converged to. A rule enabled (or scheduled) today runs for today's
//!   slot at once if that slot has passed.
//! - **Judging.** The rule alone, for every customer of its unit's
//!   subtree, by the evaluator of the event-driven path
//!   ([`super::eval::fire`], no trigger) at the run's instant, in batches
//!   of [`BATCH`] customers: each batch one transaction that locks its
//!   customers' rows, reads their events, tags and manual removals in a
//!   few set-based statements, and writes through the tagging write path
//!   (source `RULE`, `sourceRef` `rule:<id>@v<version>/run:<run id>`). A
//!   modification lock defers a change as it does on the event path.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, FixedOffset, Utc};
use entity::{
    customer, customer_tag,
    enums::{RuleRunStatus, RuleStatus, TagOp, TagSource},
    rule, rule_deferred_action, rule_run, tag, tag_event,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use serde_json::json;

use super::deferred::{self, locks_in_force};
use super::eval::{Attributes, Facts, RuleSet, fire};
use super::explain::run_source_ref;
use super::facts::{Customers, attributes_of, events_in_range, held_in_range, manual_removals_in_range};
use super::library::{UnitLibrary, compile};
use crate::authz::OrgTree;
use crate::config::Limits;
use crate::domain::StaffId;
use crate::error::{AppError, AppResult, is_unique_violation};
use crate::segment::SegmentIndex;
use crate::service::audit::{self, AuditEntry};
use crate::service::tagging::{SystemChange, apply_system_changes, lock_customer_rows};
use crate::store::CHUNK;

/// Customers judged per transaction.
pub const BATCH: usize = 500;
/// Times a run is taken up (after its instance died) before it is failed.
pub const MAX_ATTEMPTS: i32 = 3;
/// How long a run's lease holds without renewal.
pub const LEASE_SECONDS: i64 = 60;

pub use super::slot::Schedule;

/// The key of a slot: the slot in the organisation's offset,
/// `2026-12-02T03:00+08:00`.
pub fn schedule_key(slot: DateTime<Utc>, offset: FixedOffset) -> String {
    slot.with_timezone(&offset).format("%Y-%m-%dT%H:%M%:z").to_string()
}

/// The background runner of scheduled rules and sweeps, one per instance.
#[derive(Clone)]
pub struct Scheduler {
    pub db: DatabaseConnection,
    /// This instance's segment index, caught up after each write (none in
    /// a command that serves nothing, such as `seed-demo`: a server's
    /// index follows the tag event log).
    pub index: Option<Arc<SegmentIndex>>,
    pub limits: Limits,
    pub offset: FixedOffset,
    /// This instance, as written in `rule_run.owner`.
    pub instance: String,
}

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    /// The runs this instance ran (to their end, or until it lost them).
    pub runs: Vec<rule_run::Model>,
    /// Assignments taken off because they expired.
    pub expired: u64,
    /// Deferred rule actions applied.
    pub deferred_applied: u64,
}

/// Why a run stopped before its end.
enum Stop {
    /// Another instance holds the run now.
    Lost,
    Failed(AppError),
}

impl From<AppError> for Stop {
    fn from(err: AppError) -> Self {
        Self::Failed(err)
    }
}

impl From<sea_orm::DbErr> for Stop {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Failed(err.into())
    }
}

/// What one batch changed.
#[derive(Debug, Default)]
struct Counts {
    scanned: i64,
    customers_changed: i64,
    tag_changes: i64,
    deferred: i64,
    held_back: i64,
}

impl Scheduler {
    /// Runs a round every `interval`, until the process ends.
    pub fn spawn(self, interval: StdDuration) {
        tokio::spawn(async move {
            loop {
                if let Err(err) = self.round(Utc::now()).await {
                    tracing::warn!(error = ?err, "rule scheduler");
                }
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// One round at `now` (the scheduler's clock: tests pass theirs): the
    /// scheduled rules' due slots, then expired assignments, then deferred
    /// actions whose lock ended.
    ///
    /// # Errors
    /// Database errors outside a run (a run's own error fails that run).
    #[tracing::instrument(skip(self), fields(instance = %self.instance))]
    pub async fn round(&self, now: DateTime<Utc>) -> AppResult<Round> {
        let runs = self.run_due(now).await?;
        let expired = expire_assignments(&self.db, &self.limits, now).await?;
        let deferred_applied = deferred::apply_pending(&self.db, &self.limits, now).await?;
        if expired + deferred_applied > 0 {
            self.catch_up().await;
        }
        Ok(Round { runs, expired, deferred_applied })
    }

    /// Runs the latest due slot of every enabled scheduled rule that has
    /// no run yet (or whose run's instance stopped renewing its lease).
    ///
    /// # Errors
    /// Database errors outside a run.
    pub async fn run_due(&self, now: DateTime<Utc>) -> AppResult<Vec<rule_run::Model>> {
        let rules = rule::Entity::find()
            .filter(rule::Column::Status.eq(RuleStatus::Enabled))
            .filter(rule::Column::Schedule.is_not_null())
            .order_by_asc(rule::Column::Id)
            .all(&self.db)
            .await?;
        let mut out = Vec::new();
        for row in rules {
            out.extend(self.run_latest_slot(&row, now).await?);
        }
        Ok(out)
    }

    /// Runs a scheduled rule's latest slot at or before `now`, unless it
    /// has a run already (or another instance holds it); `None` then.
    ///
    /// # Errors
    /// Database errors outside the run.
    pub async fn run_latest_slot(&self, row: &rule::Model, now: DateTime<Utc>) -> AppResult<Option<rule_run::Model>> {
        let Some(schedule) = row.schedule.as_deref().and_then(|s| Schedule::parse("schedule", s).ok()) else {
            tracing::warn!(rule = row.id, "stored schedule does not parse; skipped");
            return Ok(None);
        };
        let key = schedule_key(schedule.latest_slot(self.offset, now), self.offset);
        let Some(run) = self.claim(row, &key, now).await? else { return Ok(None) };
        tracing::info!(rule = row.id, run = run.id, slot = %key, attempt = run.attempts, "scheduled rule run");
        Ok(Some(self.execute(row, run, now).await?))
    }

    /// This instance's segment index sees the round's changes at once.
    async fn catch_up(&self) {
        if let Some(index) = &self.index
            && let Err(err) = index.catch_up(&self.db).await
        {
            tracing::warn!(error = %err, "segment index catch-up failed");
        }
    }

    fn lease_end(&self) -> DateTime<Utc> {
        Utc::now() + Duration::seconds(LEASE_SECONDS)
    }

    /// The run of a slot, by inserting it (unique per rule and slot) or by
    /// taking over one whose lease ran out; `None` when another instance
    /// has it or it ended.
    async fn claim(&self, row: &rule::Model, key: &str, now: DateTime<Utc>) -> AppResult<Option<rule_run::Model>> {
        // Most rounds find the slot run already: a read, no failing insert.
        let existing = rule_run::Entity::find()
            .filter(rule_run::Column::RuleId.eq(row.id))
            .filter(rule_run::Column::ScheduleKey.eq(key))
            .one(&self.db)
            .await?;
        if existing
            .is_some_and(|r| r.status != RuleRunStatus::Running || r.lease_until.is_some_and(|l| l >= Utc::now()))
        {
            return Ok(None);
        }
        let inserted = rule_run::Entity::insert(rule_run::ActiveModel {
            id: NotSet,
            rule_id: Set(row.id),
            rule_version: Set(row.version),
            schedule_key: Set(key.to_owned()),
            status: Set(RuleRunStatus::Running),
            owner: Set(Some(self.instance.clone())),
            lease_until: Set(Some(self.lease_end())),
            evaluated_at: Set(now),
            started_at: Set(Utc::now()),
            finished_at: Set(None),
            customers_scanned: Set(0),
            customers_changed: Set(0),
            tag_changes: Set(0),
            deferred: Set(0),
            held_back: Set(0),
            attempts: Set(1),
            error: Set(None),
        })
        .exec(&self.db)
        .await;
        match inserted {
            Ok(res) => return Ok(rule_run::Entity::find_by_id(res.last_insert_id).one(&self.db).await?),
            Err(err) if is_unique_violation(&err) => {}
            Err(err) => return Err(err.into()),
        }
        // Taken: run it only if its instance stopped renewing the lease.
        let taken = rule_run::Entity::update_many()
            .col_expr(rule_run::Column::Owner, Expr::value(self.instance.clone()))
            .col_expr(rule_run::Column::LeaseUntil, Expr::value(self.lease_end()))
            .col_expr(rule_run::Column::Attempts, Expr::col(rule_run::Column::Attempts).add(1))
            .col_expr(rule_run::Column::RuleVersion, Expr::value(row.version))
            .col_expr(rule_run::Column::EvaluatedAt, Expr::value(now))
            // Every customer is judged again; changes already made stay counted.
            .col_expr(rule_run::Column::CustomersScanned, Expr::value(0i64))
            .filter(rule_run::Column::RuleId.eq(row.id))
            .filter(rule_run::Column::ScheduleKey.eq(key))
            .filter(rule_run::Column::Status.eq(RuleRunStatus::Running))
            .filter(rule_run::Column::LeaseUntil.lt(Utc::now()))
            .exec(&self.db)
            .await?;
        if taken.rows_affected != 1 {
            return Ok(None);
        }
        Ok(rule_run::Entity::find()
            .filter(rule_run::Column::RuleId.eq(row.id))
            .filter(rule_run::Column::ScheduleKey.eq(key))
            .one(&self.db)
            .await?)
    }

    /// Runs a claimed run to its end and records how it ended.
    async fn execute(&self, row: &rule::Model, run: rule_run::Model, now: DateTime<Utc>) -> AppResult<rule_run::Model> {
        let result = if run.attempts > MAX_ATTEMPTS {
            Err(Stop::Failed(AppError::Conflict(format!("taken up {} times without finishing", run.attempts - 1))))
        } else {
            self.judge(row, &run, now).await
        };
        let (status, error) = match result {
            Ok(()) => (RuleRunStatus::Succeeded, None),
            Err(Stop::Lost) => {
                tracing::warn!(run = run.id, "scheduled run taken over by another instance");
                return Ok(rule_run::Entity::find_by_id(run.id).one(&self.db).await?.unwrap_or(run));
            }
            Err(Stop::Failed(err)) => {
                tracing::error!(run = run.id, error = ?err, "scheduled rule run failed");
                (RuleRunStatus::Failed, Some(format!("{}: {}", err.code().as_str(), err.message())))
            }
        };
        // The run's end and its one audit row (no person acted), if the
        // run is still this instance's.
        let txn = self.db.begin().await?;
        let ended = rule_run::Entity::update_many()
            .col_expr(rule_run::Column::Status, Expr::value(status.as_str()))
            .col_expr(rule_run::Column::FinishedAt, Expr::value(Utc::now()))
            .col_expr(rule_run::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .col_expr(rule_run::Column::Error, Expr::value(error))
            .filter(rule_run::Column::Id.eq(run.id))
            .filter(rule_run::Column::Owner.eq(self.instance.clone()))
            .filter(rule_run::Column::Status.eq(RuleRunStatus::Running))
            .exec(&txn)
            .await?;
        if ended.rows_affected == 1
            && let Some(done) = rule_run::Entity::find_by_id(run.id).one(&txn).await?
        {
            let mut entry = AuditEntry::ok(StaffId(row.created_by), "rule.run", "rule", row.id)
                .in_unit(row.org_unit_id)
                .with_detail(json!({
                    "run": done.id,
                    "version": done.rule_version,
                    "slot": done.schedule_key,
                    "status": done.status,
                    "customersScanned": done.customers_scanned,
                    "customersChanged": done.customers_changed,
                    "tagChanges": done.tag_changes,
                    "deferred": done.deferred,
                    "error": done.error,
                }));
            entry.actor = None;
            audit::record(&txn, entry).await?;
        }
        txn.commit().await?;
        self.catch_up().await;
        Ok(rule_run::Entity::find_by_id(run.id).one(&self.db).await?.unwrap_or(run))
    }

    /// Judges every customer of the rule's subtree, batch by batch.
    async fn judge(&self, row: &rule::Model, run: &rule_run::Model, now: DateTime<Utc>) -> Result<(), Stop> {
        let org = OrgTree::load(&self.db).await?;
        let library = UnitLibrary::load(&self.db, &org, row.org_unit_id).await?;
        let compiled = compile(row, &library).ok_or_else(|| {
            AppError::validation("condition", "the rule no longer compiles: a tag it names was archived or renamed")
        })?;
        if let Some((i, action)) =
            compiled.actions.iter().enumerate().find(|(_, a)| !library.tags.contains_key(&a.tag_id))
        {
            return Err(Stop::Failed(AppError::validation(
                format!("actions[{i}].tagId"),
                format!("tag {} is no longer an active tag of this unit's tag library", action.tag_id),
            )));
        }
        let exclusive = library.exclusive_of(compiled.actions.iter().map(|a| a.tag_id));
        let set = RuleSet::new(vec![compiled], exclusive);
        let units: Vec<i64> = org.subtree(row.org_unit_id).map(|u| u.id).collect();
        let job =
            Batch { set: &set, library: &library, units: &units, run, now, offset: self.offset, limits: &self.limits };
        // 1. A read-only sweep over the subtree, a range of customers per
        //    few statements, judges every customer on what it reads
        //    without locks: customers the rule would change (or whose add
        //    a person's removal may hold back) are the candidates.
        let candidates = self.sweep(&set, &units, run, now).await?;
        // 2. The candidates, batch by batch, each batch one transaction
        //    that locks their rows and judges them again on what it reads
        //    then (a customer changed meanwhile is judged as it is now).
        for chunk in candidates.chunks(batch_size(&self.db)) {
            let txn = self.db.begin().await?;
            let mut counts = job.run(&txn, chunk).await?;
            counts.scanned = 0;
            self.renew(&txn, run, &counts).await?;
            txn.commit().await?;
        }
        Ok(())
    }

    /// The lease, renewed with a batch's counts, only while the run is ours.
    async fn renew(&self, db: &impl ConnectionTrait, run: &rule_run::Model, counts: &Counts) -> Result<(), Stop> {
        let renewed = rule_run::Entity::update_many()
            .col_expr(rule_run::Column::LeaseUntil, Expr::value(self.lease_end()))
            .col_expr(
                rule_run::Column::CustomersScanned,
                Expr::col(rule_run::Column::CustomersScanned).add(counts.scanned),
            )
            .col_expr(
                rule_run::Column::CustomersChanged,
                Expr::col(rule_run::Column::CustomersChanged).add(counts.customers_changed),
            )
            .col_expr(rule_run::Column::TagChanges, Expr::col(rule_run::Column::TagChanges).add(counts.tag_changes))
            .col_expr(rule_run::Column::Deferred, Expr::col(rule_run::Column::Deferred).add(counts.deferred))
            .col_expr(rule_run::Column::HeldBack, Expr::col(rule_run::Column::HeldBack).add(counts.held_back))
            .filter(rule_run::Column::Id.eq(run.id))
            .filter(rule_run::Column::Owner.eq(self.instance.clone()))
            .filter(rule_run::Column::Status.eq(RuleRunStatus::Running))
            .exec(db)
            .await?;
        if renewed.rows_affected != 1 {
            return Err(Stop::Lost);
        }
        Ok(())
    }

    /// Judges every customer of the subtree without locks, a range of
    /// customer ids at a time (their events of the condition's kinds and
    /// their assignments of the tags it reads and changes, each one
    /// statement over the range), and returns the customers the rule
    /// would change. Customers a person ever took one of the rule's tags
    /// off are candidates whatever the sweep says: the locked batch
    /// decides whether the removal holds the add back.
    async fn sweep(
        &self,
        set: &RuleSet,
        units: &[i64],
        run: &rule_run::Model,
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>, Stop> {
        let rule = &set.rules[0];
        let kinds = rule.condition.event_kinds();
        let action_tags: BTreeSet<i64> = rule.actions.iter().flat_map(|a| set.exclusive.affected(a)).collect();
        let mut relevant: BTreeSet<i64> = rule.reads();
        relevant.extend(action_tags.iter().copied());
        let reads_attributes = reads_attributes(&rule.condition);
        let removed_once = removed_by_people_ever(&self.db, &action_tags).await?;
        let range = if self.db.get_database_backend() == DbBackend::Postgres { 20_000 } else { BATCH };
        let mut candidates = Vec::new();
        let mut after = 0i64;
        let empty = Vec::new();
        loop {
            let customers: Vec<(i64, Attributes)> = if reads_attributes {
                customer::Entity::find()
                    .filter(customer::Column::OrgUnitId.is_in(units.iter().copied()))
                    .filter(customer::Column::Id.gt(after))
                    .order_by_asc(customer::Column::Id)
                    .limit(range as u64)
                    .all(&self.db)
                    .await?
                    .iter()
                    .map(|c| (c.id, attributes_of(c)))
                    .collect()
            } else {
                customer::Entity::find()
                    .select_only()
                    .column(customer::Column::Id)
                    .filter(customer::Column::OrgUnitId.is_in(units.iter().copied()))
                    .filter(customer::Column::Id.gt(after))
                    .order_by_asc(customer::Column::Id)
                    .limit(range as u64)
                    .into_tuple::<i64>()
                    .all(&self.db)
                    .await?
                    .into_iter()
                    .map(|id| (id, Attributes::default()))
                    .collect()
            };
            let (Some((first, _)), Some((last, _))) = (customers.first(), customers.last()) else {
                return Ok(candidates);
            };
            let (first, last) = (*first, *last);
            after = last;
            let range = Customers::Range(first, last);
            let events = events_in_range(&self.db, range, Some(&kinds), Some(now)).await?;
            let mut held = held_in_range(&self.db, range, Some(&relevant)).await?;
            for (id, attributes) in &customers {
                if removed_once.contains(id) {
                    candidates.push(*id);
                    continue;
                }
                let facts = Facts {
                    events: events.get(id).unwrap_or(&empty),
                    attributes,
                    tags: held.remove(id).unwrap_or_default(),
                    manual_removals: BTreeSet::new(),
                    offset: self.offset,
                };
                if !fire(set, &facts, None, now).changes.is_empty() {
                    candidates.push(*id);
                }
            }
            self.renew(&self.db, run, &Counts { scanned: customers.len() as i64, ..Counts::default() }).await?;
        }
    }
}

/// Customers judged per locked transaction: 500 (SQLite), 5,000 on
/// PostgreSQL (its statements take the ids as one array).
fn batch_size(db: &impl ConnectionTrait) -> usize {
    if db.get_database_backend() == DbBackend::Postgres { 10 * BATCH } else { BATCH }
}

/// Does the condition read the customer's attributes?
fn reads_attributes(condition: &super::condition::Condition) -> bool {
    use super::condition::Condition as C;
    let mut reads = false;
    condition.walk(&mut |c| {
        if matches!(c, C::City(_) | C::Channel(_) | C::Gender(_) | C::Number(..)) {
            reads = true;
        }
    });
    reads
}

/// Customers a person (by hand or in bulk) ever took one of `tags` off.
async fn removed_by_people_ever(db: &impl ConnectionTrait, tags: &BTreeSet<i64>) -> AppResult<HashSet<i64>> {
    if tags.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<i64> = tag_event::Entity::find()
        .select_only()
        .column(tag_event::Column::CustomerId)
        .distinct()
        .filter(tag_event::Column::TagId.is_in(tags.iter().copied()))
        .filter(tag_event::Column::Op.eq(TagOp::Remove))
        .filter(tag_event::Column::Source.is_in([TagSource::Manual, TagSource::Bulk]))
        .into_tuple()
        .all(db)
        .await?;
    Ok(ids.into_iter().collect())
}

/// One run's judging of a batch of customers.
struct Batch<'a> {
    set: &'a RuleSet,
    library: &'a UnitLibrary,
    units: &'a [i64],
    run: &'a rule_run::Model,
    now: DateTime<Utc>,
    offset: FixedOffset,
    limits: &'a Limits,
}

impl Batch<'_> {
    async fn run(&self, txn: &DatabaseTransaction, ids: &[i64]) -> AppResult<Counts> {
        crate::store::event_log::share_event_log(txn).await?;
        let in_subtree = Condition::all().add(customer::Column::OrgUnitId.is_in(self.units.iter().copied()));
        let customers = lock_customer_rows(txn, ids, in_subtree).await?;
        let ids: Vec<i64> = customers.iter().map(|c| c.id).collect();
        let rule = &self.set.rules[0];
        let action_tags: BTreeSet<i64> =
            rule.actions.iter().flat_map(|a| self.set.exclusive.affected(a)).collect::<BTreeSet<_>>();
        let mut relevant: BTreeSet<i64> = rule.reads();
        relevant.extend(action_tags.iter().copied());

        let batch = Customers::Ids(&ids);
        let events = events_in_range(txn, batch, Some(&rule.condition.event_kinds()), Some(self.now)).await?;
        let held = held_in_range(txn, batch, Some(&relevant)).await?;
        let removed = manual_removals_in_range(txn, batch, &action_tags).await?;
        let groups: BTreeSet<i64> =
            action_tags.iter().filter_map(|t| self.library.tags.get(t).map(|(_, g)| g.id)).collect();
        let locked = locks_in_force(txn, &ids, &groups).await?;

        let source_ref = run_source_ref(rule.id, rule.version, self.run.id);
        let mut counts = Counts { scanned: customers.len() as i64, ..Counts::default() };
        let mut changes: Vec<SystemChange> = Vec::new();
        let mut deferrals: Vec<rule_deferred_action::ActiveModel> = Vec::new();
        let empty = Vec::new();
        let wrote = Utc::now();
        for customer in &customers {
            let attributes = attributes_of(customer);
            let facts = Facts {
                events: events.get(&customer.id).unwrap_or(&empty),
                attributes: &attributes,
                tags: held.get(&customer.id).cloned().unwrap_or_default(),
                manual_removals: removed.get(&customer.id).cloned().unwrap_or_default(),
                offset: self.offset,
            };
            let firing = fire(self.set, &facts, None, self.now);
            counts.held_back += firing.held_back.len() as i64;
            for change in firing.changes {
                let group = self.library.tags.get(&change.tag_id).map(|(_, g)| g.id);
                if let Some(lock_id) = group.and_then(|g| locked.get(&(customer.id, g))) {
                    deferrals.push(rule_deferred_action::ActiveModel {
                        id: NotSet,
                        rule_id: Set(change.rule_id),
                        rule_version: Set(change.rule_version),
                        customer_id: Set(customer.id),
                        tag_id: Set(change.tag_id),
                        op: Set(change.op.as_str().to_owned()),
                        ttl_seconds: Set(change.ttl_seconds),
                        event_id: Set(None),
                        lock_id: Set(*lock_id),
                        run_id: Set(Some(self.run.id)),
                        created_at: Set(wrote),
                        applied_at: Set(None),
                    });
                    continue;
                }
                let ttl = change
                    .ttl_seconds
                    .or_else(|| self.library.tags.get(&change.tag_id).and_then(|(t, _)| t.ttl_seconds));
                changes.push(SystemChange {
                    customer_id: customer.id,
                    tag_id: change.tag_id,
                    op: change.op,
                    expires_at: (change.op == TagOp::Add).then(|| ttl.map(|s| wrote + Duration::seconds(s))).flatten(),
                });
            }
        }
        counts.deferred = deferrals.len() as i64;
        for chunk in deferrals.chunks(CHUNK) {
            rule_deferred_action::Entity::insert_many(chunk.to_vec()).exec(txn).await?;
        }
        let outcome = apply_system_changes(txn, self.limits, TagSource::Rule, Some(source_ref), &changes).await?;
        counts.tag_changes = i64::from(outcome.added + outcome.removed);
        counts.customers_changed = outcome.customers.len() as i64;
        Ok(counts)
    }
}

/// The runs of a rule the caller may read, newest first.
///
/// # Errors
/// `NOT_FOUND` for a rule the caller may not read; `VALIDATION` for a bad
/// cursor.
pub async fn runs_of(
    db: &impl ConnectionTrait,
    principal: &crate::authz::Principal,
    rule_id: crate::domain::RuleId,
    page: &crate::domain::PageArgs,
) -> AppResult<crate::service::NewestFirst<rule_run::Model>> {
    let row = super::store::find_rule(db, principal, rule_id).await?;
    let query = rule_run::Entity::find().filter(rule_run::Column::RuleId.eq(row.id));
    crate::service::newest_first(db, query, rule_run::Column::Id, |r| r.id, "rule_run", page).await
}

/// Takes off the assignments whose `expiresAt` is at or before `now`
/// (tag events with source `EXPIRY`), in batches of customers, each a
/// transaction that locks its customers' rows. An assignment under a
/// modification lock in force stays until the lock ends (a later round
/// takes it off). Returns how many were taken off.
///
/// # Errors
/// Database errors.
#[tracing::instrument(skip(db, limits))]
pub async fn expire_assignments(db: &DatabaseConnection, limits: &Limits, now: DateTime<Utc>) -> AppResult<u64> {
    let mut total = 0u64;
    let mut after = 0i64;
    loop {
        let ids: Vec<i64> = customer_tag::Entity::find()
            .select_only()
            .column(customer_tag::Column::CustomerId)
            .distinct()
            .filter(customer_tag::Column::ExpiresAt.lte(now))
            .filter(customer_tag::Column::CustomerId.gt(after))
            .order_by_asc(customer_tag::Column::CustomerId)
            .limit(BATCH as u64)
            .into_tuple()
            .all(db)
            .await?;
        let Some(last) = ids.last().copied() else { return Ok(total) };
        after = last;
        let txn = db.begin().await?;
        crate::store::event_log::share_event_log(&txn).await?;
        lock_customer_rows(&txn, &ids, Condition::all()).await?;
        let mut expired: Vec<(i64, i64)> = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let rows: Vec<(i64, i64)> = customer_tag::Entity::find()
                .select_only()
                .column(customer_tag::Column::CustomerId)
                .column(customer_tag::Column::TagId)
                .filter(customer_tag::Column::CustomerId.is_in(chunk.iter().copied()))
                .filter(customer_tag::Column::ExpiresAt.lte(now))
                .order_by_asc(customer_tag::Column::CustomerId)
                .order_by_asc(customer_tag::Column::TagId)
                .into_tuple()
                .all(&txn)
                .await?;
            expired.extend(rows);
        }
        let tag_ids: BTreeSet<i64> = expired.iter().map(|(_, t)| *t).collect();
        let group_of: HashMap<i64, i64> = tag::Entity::find()
            .filter(tag::Column::Id.is_in(tag_ids.iter().copied()))
            .all(&txn)
            .await?
            .into_iter()
            .filter_map(|t| Some((t.id, t.group_id?)))
            .collect();
        let groups: BTreeSet<i64> = group_of.values().copied().collect();
        let locked = locks_in_force(&txn, &ids, &groups).await?;
        let changes: Vec<SystemChange> = expired
            .into_iter()
            .filter(|(c, t)| group_of.get(t).is_none_or(|g| !locked.contains_key(&(*c, *g))))
            .map(|(customer_id, tag_id)| SystemChange { customer_id, tag_id, op: TagOp::Remove, expires_at: None })
            .collect();
        let outcome =
            apply_system_changes(&txn, limits, TagSource::Expiry, Some("expiry".to_owned()), &changes).await?;
        txn.commit().await?;
        total += u64::from(outcome.removed);
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn shanghai() -> FixedOffset {
        FixedOffset::east_opt(8 * 3600).unwrap()
    }

    #[test]
    fn schedules_parse_to_their_canonical_text_and_bad_ones_are_refused() {
        assert_eq!(Schedule::parse("schedule", "DAILY 03:00").unwrap().text(), "DAILY 03:00");
        assert_eq!(Schedule::parse("schedule", " daily  7:05 ").unwrap().text(), "DAILY 07:05");
        for bad in
            ["", "DAILY", "DAILY 24:00", "DAILY 03:60", "WEEKLY 03:00", "DAILY 3", "DAILY 03:00 x", "DAILY 003:00"]
        {
            let err = Schedule::parse("schedule", bad).unwrap_err();
            assert!(err.message().contains("DAILY HH:MM"), "{bad}: {}", err.message());
        }
    }

    #[test]
    fn the_latest_slot_is_read_in_the_organisations_time_zone() {
        let daily = Schedule::parse("s", "DAILY 03:00").unwrap();
        let local = |d, h, m| shanghai().with_ymd_and_hms(2026, 12, d, h, m, 0).unwrap().to_utc();
        // 02:59 local: yesterday's slot; 03:00: today's.
        assert_eq!(daily.latest_slot(shanghai(), local(2, 2, 59)), local(1, 3, 0));
        assert_eq!(daily.latest_slot(shanghai(), local(2, 3, 0)), local(2, 3, 0));
        // 00:30 local is the previous UTC day: still the local date's slot.
        let midnight = Schedule::parse("s", "DAILY 00:15").unwrap();
        assert_eq!(midnight.latest_slot(shanghai(), local(2, 0, 30)), local(2, 0, 15));
        assert_eq!(schedule_key(local(2, 3, 0), shanghai()), "2026-12-02T03:00+08:00");
    }
}
