//! Dry run and backtest (试运行): what a rule would do if it were enabled,
//! worked out by replaying the recorded events of a window through the
//! same evaluator the event-driven path uses, in memory, writing nothing.
//!
//! **What is replayed.** The customers in scope with an event in the
//! window, from their *current* attributes and tags. Each event of the
//! window, oldest first (by `occurredAt`, then id), triggers the rules as
//! `recordEvents` would: every enabled rule that applies to the customer,
//! with the rule under test put in (replacing its live version, if any),
//! ordered as live, judged against the customer's whole history up to the
//! event. Only the changes the rule under test makes are reported; the
//! other rules run so that chains between rules come out as they would.
//!
//! **Exact for events that arrive in order.** Enabling the rule and
//! recording the same events (in order, on customers in the same state)
//! makes exactly the predicted changes. What a dry run cannot know is left
//! out: a modification lock taken later (its changes would be deferred).
//!
//! **Scheduled rules** are judged as their daily runs of the window would
//! judge (see [`dry_run_scheduled`]).
//!
//! **Scope.** The counts and the sample cover the customers of the rule's
//! unit and the units below it that the caller reads (`customer:read`):
//! a store manager's dry run of an HQ rule counts the store's customers.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Duration, FixedOffset, Utc};
use entity::{
    customer, customer_event,
    enums::{CustomerEventKind, RuleStatus, TagOp},
    rule, rule_version,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};

use super::eval::{Action, EventFact, Facts, RuleSet, fire};
use super::explain::sentence;
use super::facts::{
    Customers, attributes_of, events_in_range, held_among_with_counts, held_in_range, manual_removals_in_range,
};
use super::library::{UnitLibrary, compile};
use super::record::rule_sets_of_units;
use super::slot::Schedule;
use super::store::{find_rule, validate};
use crate::authz::{Action as Permit, Principal};
use crate::config::Limits;
use crate::domain::{OrgUnitId, RuleId};
use crate::error::{AppError, AppResult};
use crate::store::id_in;

/// Customers one dry run loads at a time.
const CUSTOMERS_PER_CHUNK: usize = 500;
/// Default and largest sample.
pub const DEFAULT_SAMPLE: usize = 20;
pub const MAX_SAMPLE: usize = 100;
/// The rule id an unsaved rule runs under (real ids start at 1).
const UNSAVED: i64 = 0;

/// An unsaved rule to try.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UnsavedRule {
    pub org_unit_id: i64,
    pub name: String,
    pub condition: String,
    pub actions: Vec<Action>,
    pub override_manual_removal: bool,
    pub priority: i32,
    /// `DAILY HH:MM` for a scheduled rule (which a dry run refuses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

/// The rule a dry run tries.
#[derive(Debug, Clone)]
pub enum Subject {
    /// A saved rule, at its current version or an earlier one.
    Saved { id: RuleId, version: Option<i32> },
    /// A rule not saved (yet).
    Unsaved(UnsavedRule),
    /// A rule as a proposed change would make it, checked already.
    Proposed(rule::Model),
}

/// A dry run's question.
#[derive(Debug, Clone)]
pub struct DryRunRequest {
    pub subject: Subject,
    /// Default: `to` minus 30 days.
    pub from: Option<DateTime<Utc>>,
    /// Default: now.
    pub to: Option<DateTime<Utc>>,
    /// Customers listed with their changes (default 20, at most 100).
    pub sample: Option<usize>,
}

/// One change the rule would make.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PredictedChange {
    pub tag_id: i64,
    pub op: TagOp,
    /// The triggering event (none for a scheduled rule's run).
    pub event_id: Option<i64>,
    pub event_kind: Option<CustomerEventKind>,
    /// When the event happened, or the instant a scheduled run judges.
    pub occurred_at: DateTime<Utc>,
    /// Worded as `CustomerTag.why` would word it.
    pub text: String,
}

/// A customer of the sample and the changes the rule would make there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SampleCustomer {
    pub customer_id: i64,
    pub changes: Vec<PredictedChange>,
}

/// A dry run's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DryRun {
    pub rule_id: Option<i64>,
    pub rule_name: String,
    pub rule_version: i32,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Events of the window replayed.
    pub events_replayed: u64,
    /// Customers with an event in the window.
    pub customers_replayed: u64,
    /// Customers the rule fires for: a change, or an add held back
    /// because a person had removed the tag.
    pub customers_matched: u64,
    /// Customers the rule would put a tag on.
    pub would_add: u64,
    /// Customers the rule would take a tag off.
    pub would_remove: u64,
    /// Adds held back because a person had removed the tag.
    pub held_back: u64,
    /// The first customers (by id) with a change.
    pub sample: Vec<SampleCustomer>,
    /// More customers changed than the sample shows.
    pub sample_truncated: bool,
}

/// The rule under test as a row, the way the live path reads rules.
async fn subject_row(db: &impl ConnectionTrait, principal: &Principal, subject: &Subject) -> AppResult<rule::Model> {
    match subject {
        Subject::Saved { id, version } => {
            let mut row = find_rule(db, principal, *id).await?;
            if let Some(v) = version.filter(|v| *v != row.version) {
                let old = rule_version::Entity::find()
                    .filter(rule_version::Column::RuleId.eq(row.id))
                    .filter(rule_version::Column::Version.eq(v))
                    .one(db)
                    .await?
                    .ok_or_else(|| AppError::not_found("rule version", v))?;
                row = rule::Model {
                    name: old.name,
                    version: old.version,
                    condition: old.condition,
                    actions: old.actions,
                    override_manual_removal: old.override_manual_removal,
                    priority: old.priority,
                    schedule: old.schedule,
                    ..row
                };
            }
            Ok(row)
        }
        Subject::Proposed(row) => Ok(row.clone()),
        Subject::Unsaved(draft) => {
            let unit = draft.org_unit_id;
            if principal.org.get(unit).is_none() || !principal.may(Permit::RuleRead, unit) {
                return Err(AppError::not_found("org unit", OrgUnitId(unit)));
            }
            validate(db, principal, unit, UNSAVED, &draft.condition, &draft.actions).await?;
            let now = Utc::now();
            Ok(rule::Model {
                id: UNSAVED,
                org_unit_id: unit,
                name: draft.name.trim().to_owned(),
                status: RuleStatus::Enabled,
                version: 0,
                condition: draft.condition.trim().to_owned(),
                actions: serde_json::to_value(&draft.actions).unwrap_or_default(),
                override_manual_removal: draft.override_manual_removal,
                priority: draft.priority,
                schedule: super::store::check_schedule(draft.schedule.as_deref())?,
                created_by: principal.staff.id,
                created_at: now,
                updated_at: now,
            })
        }
    }
}

/// Replays the window's events for the rule and says what it would do.
///
/// # Errors
/// `NOT_FOUND` for a rule, version or unit the caller may not read;
/// `VALIDATION` for an unsaved rule that would not save, a window that
/// ends before it starts, a sample out of range; `LIMIT_EXCEEDED` for a
/// window longer than the configured days.
#[tracing::instrument(skip_all, fields(staff = principal.staff.id))]
pub async fn dry_run(
    db: &DatabaseConnection,
    principal: &Principal,
    limits: &Limits,
    offset: FixedOffset,
    request: DryRunRequest,
) -> AppResult<DryRun> {
    let to = request.to.unwrap_or_else(Utc::now);
    let from = request.from.unwrap_or(to - Duration::days(30));
    if from >= to {
        return Err(AppError::validation("from", "must be before `to`"));
    }
    if to - from > Duration::days(limits.max_dry_run_days) {
        return Err(AppError::LimitExceeded(format!("a dry run covers at most {} days", limits.max_dry_run_days)));
    }
    let sample_size = request.sample.unwrap_or(DEFAULT_SAMPLE);
    if sample_size > MAX_SAMPLE {
        return Err(AppError::validation("sample", format!("at most {MAX_SAMPLE}")));
    }
    let candidate = subject_row(db, principal, &request.subject).await?;
    let readable = principal.scope(Permit::CustomerRead);
    let units: BTreeSet<i64> =
        principal.org.subtree(candidate.org_unit_id).map(|u| u.id).filter(|u| readable.contains(*u)).collect();
    let empty = DryRun {
        rule_id: (candidate.id != UNSAVED).then_some(candidate.id),
        rule_name: candidate.name.clone(),
        rule_version: candidate.version,
        from,
        to,
        events_replayed: 0,
        customers_replayed: 0,
        customers_matched: 0,
        would_add: 0,
        would_remove: 0,
        held_back: 0,
        sample: Vec::new(),
        sample_truncated: false,
    };
    if candidate.schedule.is_some() {
        return dry_run_scheduled(db, principal, &candidate, &units, offset, empty, sample_size).await;
    }

    let customer_ids: Vec<i64> = customer_event::Entity::find()
        .select_only()
        .column(customer_event::Column::CustomerId)
        .distinct()
        .filter(customer_event::Column::OccurredAt.gte(from))
        .filter(customer_event::Column::OccurredAt.lte(to))
        .order_by_asc(customer_event::Column::CustomerId)
        .into_tuple()
        .all(db)
        .await?;

    // Every unit's rule set up front (units with the same rules share
    // one): then the tags the chunks read are known before the first.
    let candidate_row = candidate.clone();
    let sets = rule_sets_of_units(db, &principal.org, &units, move |rows| {
        rows.retain(|r| r.id != candidate_row.id);
        rows.push(candidate_row);
    })
    .await?;
    let action_tags: BTreeSet<i64> =
        sets.values().flat_map(|e| e.0.rules.iter().flat_map(|r| r.actions.iter().map(|a| a.tag_id))).collect();
    // The tags the rules read or may change (with the other tags of an
    // add's exclusive group); the others only count towards the cap.
    let relevant: BTreeSet<i64> = sets
        .values()
        .flat_map(|e| {
            let set = &e.0;
            set.rules.iter().flat_map(move |r| {
                r.reads().into_iter().chain(r.actions.iter().flat_map(move |a| set.exclusive.affected(a)))
            })
        })
        .collect();
    let reads = Arc::new(ChunkReads { units, to, relevant, action_tags });
    let mut replay = Replay {
        candidate: &candidate,
        offset,
        max_tags: limits.max_tags_per_customer,
        from,
        sets,
        sample_size,
        answer: empty,
    };
    let per = if db.get_database_backend() == DbBackend::Postgres { 10_000 } else { CUSTOMERS_PER_CHUNK };
    // Each chunk's reads run on a task of their own while the chunk
    // before is replayed here: the database and the replay work side by
    // side (on PostgreSQL the reads of a chunk also run side by side, each
    // on its connection).
    let mut chunks = customer_ids.chunks(per).map(<[i64]>::to_vec);
    let fetch = |ids: Vec<i64>| tokio::spawn(read_chunk(db.clone(), Arc::clone(&reads), ids));
    let mut next = chunks.next().map(fetch);
    while let Some(pending) = next.take() {
        let data = pending.await.map_err(AppError::internal)??;
        next = chunks.next().map(fetch);
        replay.chunk(data);
    }
    Ok(replay.answer)
}

/// What every chunk of a dry run reads by.
struct ChunkReads {
    /// The units whose customers are replayed.
    units: BTreeSet<i64>,
    to: DateTime<Utc>,
    relevant: BTreeSet<i64>,
    action_tags: BTreeSet<i64>,
}

/// A chunk's customers (those of the units) and their facts.
struct ChunkData {
    customers: Vec<customer::Model>,
    events: HashMap<i64, Vec<EventFact>>,
    tags: HashMap<i64, (BTreeSet<i64>, u32)>,
    removals: HashMap<i64, BTreeSet<i64>>,
}

/// Reads one chunk of customers' facts: four independent statements, run
/// side by side (each takes a connection of the pool).
async fn read_chunk(db: DatabaseConnection, reads: Arc<ChunkReads>, ids: Vec<i64>) -> AppResult<ChunkData> {
    let customers = async {
        AppResult::Ok(
            customer::Entity::find()
                .filter(id_in(db.get_database_backend(), customer::Column::Id, &ids))
                .filter(customer::Column::OrgUnitId.is_in(reads.units.iter().copied()))
                .order_by_asc(customer::Column::Id)
                .all(&db)
                .await?,
        )
    };
    let (customers, events, tags, removals) = tokio::join!(
        customers,
        events_in_range(&db, Customers::Ids(&ids), None, Some(reads.to)),
        held_among_with_counts(&db, &ids, &reads.relevant),
        manual_removals_in_range(&db, Customers::Ids(&ids), &reads.action_tags),
    );
    Ok(ChunkData { customers: customers?, events: events?, tags: tags?, removals: removals? })
}

struct Replay<'a> {
    candidate: &'a rule::Model,
    offset: FixedOffset,
    max_tags: u32,
    from: DateTime<Utc>,
    /// Rule sets (with the candidate put in) per org unit.
    sets: HashMap<i64, Arc<(RuleSet, UnitLibrary)>>,
    sample_size: usize,
    answer: DryRun,
}

impl Replay<'_> {
    fn chunk(&mut self, mut data: ChunkData) {
        for customer in &data.customers {
            let history = data.events.remove(&customer.id).unwrap_or_default();
            let (held, count) = data.tags.remove(&customer.id).unwrap_or_default();
            let others = count.saturating_sub(u32::try_from(held.len()).unwrap_or(u32::MAX));
            let removed = data.removals.remove(&customer.id).unwrap_or_default();
            self.customer(customer, &history, held, others, removed);
        }
    }

    /// Replays one customer's events of the window, as `recordEvents`
    /// applies a batch: each event fires the rules on the tags the earlier
    /// ones left, an add beyond the tag cap is left out.
    fn customer(
        &mut self,
        customer: &customer::Model,
        history: &[EventFact],
        held: BTreeSet<i64>,
        others: u32,
        manual_removals: BTreeSet<i64>,
    ) {
        let Some(entry) = self.sets.get(&customer.org_unit_id).cloned() else { return };
        let set = &entry.0;
        let attributes = attributes_of(customer);
        let mut facts =
            Facts { events: history, attributes: &attributes, tags: held, manual_removals, offset: self.offset };
        let mut changes = Vec::new();
        let mut held_back = 0u64;
        let mut replayed = 0u64;
        for trigger in history.iter().filter(|e| e.occurred_at >= self.from) {
            replayed += 1;
            let firing = fire(set, &facts, Some(trigger), trigger.occurred_at);
            held_back += firing.held_back.iter().filter(|p| p.rule_id == self.candidate.id).count() as u64;
            let mut tags = facts.tags.clone();
            for change in firing.changes {
                match change.op {
                    TagOp::Add => {
                        if tags.len() as u32 + others >= self.max_tags {
                            continue;
                        }
                        tags.insert(change.tag_id);
                    }
                    TagOp::Remove => {
                        tags.remove(&change.tag_id);
                    }
                }
                if change.rule_id == self.candidate.id {
                    let trigger_ref = (trigger.kind, trigger.occurred_at, trigger.id);
                    changes.push(PredictedChange {
                        tag_id: change.tag_id,
                        op: change.op,
                        event_id: Some(trigger.id),
                        event_kind: Some(trigger.kind),
                        occurred_at: trigger.occurred_at,
                        text: sentence(&self.candidate.name, self.candidate.version, Some(trigger_ref), self.offset),
                    });
                }
            }
            facts.tags = tags;
        }
        let answer = &mut self.answer;
        answer.events_replayed += replayed;
        answer.customers_replayed += 1;
        answer.held_back += held_back;
        if changes.is_empty() && held_back == 0 {
            return;
        }
        answer.customers_matched += 1;
        if changes.iter().any(|c| c.op == TagOp::Add) {
            answer.would_add += 1;
        }
        if changes.iter().any(|c| c.op == TagOp::Remove) {
            answer.would_remove += 1;
        }
        if changes.is_empty() {
            return;
        }
        if answer.sample.len() < self.sample_size {
            answer.sample.push(SampleCustomer { customer_id: customer.id, changes });
        } else {
            answer.sample_truncated = true;
        }
    }
}

/// A scheduled rule's dry run: what each of its daily runs in the window
/// would do, the way the scheduler judges: the rule alone, for every
/// customer of its unit's subtree (those the caller reads), on the events
/// of its condition's kinds, the tags it reads and changes, and the manual
/// removals. The window's slots run in order, each judged at its instant
/// on the tags the runs before it left, starting from the current ones;
/// the latest slot (at or before `to`) is judged at `to`, as enabling the
/// rule then runs it at once.
async fn dry_run_scheduled(
    db: &impl ConnectionTrait,
    principal: &Principal,
    candidate: &rule::Model,
    units: &BTreeSet<i64>,
    offset: FixedOffset,
    mut answer: DryRun,
    sample_size: usize,
) -> AppResult<DryRun> {
    let to = answer.to;
    let schedule = Schedule::parse("schedule", candidate.schedule.as_deref().unwrap_or_default())?;
    let instants = run_instants(schedule, offset, answer.from, to);
    let library = UnitLibrary::load(db, &principal.org, candidate.org_unit_id).await?;
    let compiled = compile(candidate, &library).ok_or_else(|| {
        AppError::validation("condition", "the rule no longer compiles: a tag it names was archived or renamed")
    })?;
    let exclusive = library.exclusive_of(compiled.actions.iter().map(|a| a.tag_id));
    let set = RuleSet::new(vec![compiled], exclusive);
    let rule = &set.rules[0];
    let kinds = rule.condition.event_kinds();
    let action_tags: BTreeSet<i64> = rule.actions.iter().flat_map(|a| set.exclusive.affected(a)).collect();
    let mut relevant: BTreeSet<i64> = rule.reads();
    relevant.extend(action_tags.iter().copied());
    let units: Vec<i64> = units.iter().copied().collect();
    let per_range = if db.get_database_backend() == DbBackend::Postgres { 20_000 } else { CUSTOMERS_PER_CHUNK };
    let texts: Vec<String> = instants
        .iter()
        .map(|at| {
            format!(
                "{}: scheduled run at {} ({offset})",
                sentence(&candidate.name, candidate.version, None, offset),
                at.with_timezone(&offset).format("%Y-%m-%d %H:%M")
            )
        })
        .collect();
    let mut after = 0i64;
    let empty = Vec::new();
    loop {
        let customers: Vec<customer::Model> = customer::Entity::find()
            .filter(customer::Column::OrgUnitId.is_in(units.iter().copied()))
            .filter(customer::Column::Id.gt(after))
            .order_by_asc(customer::Column::Id)
            .limit(per_range as u64)
            .all(db)
            .await?;
        let (Some(first), Some(last)) = (customers.first().map(|c| c.id), customers.last().map(|c| c.id)) else {
            return Ok(answer);
        };
        after = last;
        let range = Customers::Range(first, last);
        let events = events_in_range(db, range, Some(&kinds), Some(to)).await?;
        answer.events_replayed += events.values().map(|e| e.len() as u64).sum::<u64>();
        let mut held = held_in_range(db, range, Some(&relevant)).await?;
        let mut removals = manual_removals_in_range(db, range, &action_tags).await?;
        for customer in &customers {
            let attributes = attributes_of(customer);
            let mut facts = Facts {
                events: events.get(&customer.id).unwrap_or(&empty),
                attributes: &attributes,
                tags: held.remove(&customer.id).unwrap_or_default(),
                manual_removals: removals.remove(&customer.id).unwrap_or_default(),
                offset,
            };
            let mut changes: Vec<PredictedChange> = Vec::new();
            // Each add held back once, however many runs hold it back.
            let mut held_back: BTreeSet<i64> = BTreeSet::new();
            for (at, text) in instants.iter().zip(&texts) {
                let firing = fire(&set, &facts, None, *at);
                held_back.extend(firing.held_back.iter().map(|p| p.tag_id));
                changes.extend(firing.changes.iter().map(|c| PredictedChange {
                    tag_id: c.tag_id,
                    op: c.op,
                    event_id: None,
                    event_kind: None,
                    occurred_at: *at,
                    text: text.clone(),
                }));
                facts.tags = firing.tags;
            }
            answer.customers_replayed += 1;
            answer.held_back += held_back.len() as u64;
            if changes.is_empty() && held_back.is_empty() {
                continue;
            }
            answer.customers_matched += 1;
            if changes.iter().any(|c| c.op == TagOp::Add) {
                answer.would_add += 1;
            }
            if changes.iter().any(|c| c.op == TagOp::Remove) {
                answer.would_remove += 1;
            }
            if changes.is_empty() {
                continue;
            }
            if answer.sample.len() < sample_size {
                answer.sample.push(SampleCustomer { customer_id: customer.id, changes });
            } else {
                answer.sample_truncated = true;
            }
        }
    }
}

/// The instants a scheduled rule's runs of the window judge at, oldest
/// first: each slot after `from` and before the latest one at or before
/// `to`, then `to` itself (for that latest slot).
fn run_instants(schedule: Schedule, offset: FixedOffset, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let mut out = vec![to];
    let mut slot = schedule.latest_slot(offset, to) - Duration::days(1);
    while slot > from {
        out.push(slot);
        slot -= Duration::days(1);
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_scheduled_dry_run_judges_each_slot_of_the_window_and_the_latest_at_its_end() {
        let shanghai = FixedOffset::east_opt(8 * 3600).unwrap();
        let local = |d, h, m| shanghai.with_ymd_and_hms(2026, 12, d, h, m, 0).unwrap().to_utc();
        let daily = Schedule::parse("s", "DAILY 03:00").unwrap();
        // 1 Dec 12:00 to 4 Dec 10:00: the slots of 2 and 3 Dec, then the
        // latest (4 Dec 03:00) judged at 10:00.
        assert_eq!(
            run_instants(daily, shanghai, local(1, 12, 0), local(4, 10, 0)),
            vec![local(2, 3, 0), local(3, 3, 0), local(4, 10, 0)]
        );
        // A window with no slot in it: the latest slot, judged at its end.
        assert_eq!(run_instants(daily, shanghai, local(4, 4, 0), local(4, 10, 0)), vec![local(4, 10, 0)]);
        // A slot exactly at `from` is not in the window.
        assert_eq!(run_instants(daily, shanghai, local(3, 3, 0), local(4, 3, 0)), vec![local(4, 3, 0)]);
    }
}
