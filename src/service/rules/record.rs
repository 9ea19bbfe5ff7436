//! `recordEvents`: customer events in, and the rules they trigger run in
//! the same transaction.
//!
//! **Per-item errors, good items kept.** A bad event in a batch (unknown
//! kind, bad time, unknown customer, a key reused for another event) is
//! reported with its index, code and message; the other events of the
//! batch are recorded. Connectors resend whole batches after a failure,
//! and every event is idempotent by its key, so resending the batch after
//! fixing the bad items records exactly what was missing. Errors of the
//! batch itself (too many events, no right to record anywhere) refuse the
//! whole call.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, FixedOffset, Utc};
use entity::{
    customer, customer_event, customer_identity, customer_tag,
    enums::{CustomerEventKind, RuleStatus, TagOp, TagSource},
    rule, rule_deferred_action, tag_event,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QuerySelect, TransactionTrait,
};
use serde_json::json;

use super::deferred::{locks_in_force, mark_done};
use super::eval::{CompiledRule, EventFact, Facts, Planned, RuleSet, fire};
use super::event::{CustomerRef, NewEvent, RawEvent};
use super::explain::{parse_source_ref, source_ref};
use super::facts::{
    Customers, attributes_of, events_in_range, held_among_with_counts, manual_removals_in_range, removed_by_people,
    tag_log_in_range,
};
use super::library::{UnitLibrary, compile};
use crate::authz::{Action, OrgTree, Principal};
use crate::config::Limits;
use crate::domain::CustomerId;
use crate::error::{AppError, AppResult};
use crate::service::audit::{self, AuditEntry};
use crate::store::event_log::{EventBy, insert_events, pg_array, pg_instant, share_event_log};
use crate::store::{CHUNK, id_in, ids_per_statement};

/// A refused event of a batch.
#[derive(Debug)]
pub struct ItemError {
    /// Its position in the batch, from 0.
    pub index: usize,
    pub error: AppError,
}

/// What happened to one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemResult {
    /// Recorded now, with its id.
    Recorded(i64),
    /// Its key was recorded before for the same event (id of that one):
    /// no second effect.
    Duplicate(i64),
    /// Refused; see the batch's errors.
    Refused,
}

/// What a `recordEvents` call did.
#[derive(Debug, Default)]
pub struct RecordOutcome {
    /// One per event, in the batch's order.
    pub results: Vec<ItemResult>,
    pub errors: Vec<ItemError>,
    /// Tags put on or taken off by rules.
    pub tag_changes: u32,
    /// Adds left out because a person had removed the tag.
    pub held_back: u32,
    /// Changes refused by a modification lock, kept to apply later.
    pub deferred: u32,
    /// Adds left out because the customer holds the most tags allowed.
    pub over_cap: u32,
    /// Errors already counted in an audit row (a batch recorded in two
    /// transactions writes two).
    audited_errors: usize,
}

impl RecordOutcome {
    pub fn recorded(&self) -> usize {
        self.results.iter().filter(|r| matches!(r, ItemResult::Recorded(_))).count()
    }

    pub fn duplicates(&self) -> usize {
        self.results.iter().filter(|r| matches!(r, ItemResult::Duplicate(_))).count()
    }
}

/// Records customer events and runs the rules they trigger, all in one
/// transaction with one audit row.
///
/// # Errors
/// `VALIDATION` for an empty batch; `LIMIT_EXCEEDED` for one larger than
/// the configured batch size; `FORBIDDEN` without `customer_event:write`
/// anywhere. Per-event problems are in [`RecordOutcome::errors`].
#[tracing::instrument(skip_all, fields(staff = principal.staff.id, events = raws.len()))]
pub async fn record_events(
    db: &DatabaseConnection,
    principal: &Principal,
    limits: &Limits,
    offset: FixedOffset,
    raws: Vec<RawEvent>,
) -> AppResult<RecordOutcome> {
    if raws.is_empty() {
        return Err(AppError::validation("events", "must hold at least one event"));
    }
    if raws.len() > limits.max_events_per_batch {
        return Err(AppError::LimitExceeded(format!(
            "at most {} events per call, this one has {}",
            limits.max_events_per_batch,
            raws.len()
        )));
    }
    if !principal.may_anywhere(Action::CustomerEventWrite) {
        return Err(AppError::Forbidden("you may not record customer events".to_owned()));
    }
    let now = Utc::now();
    let mut items: Vec<Result<NewEvent, AppError>> = raws.iter().map(|r| r.parse(now)).collect();
    let customers = resolve_customers(db, principal, &mut items).await?;

    let mut outcome = RecordOutcome { results: vec![ItemResult::Refused; items.len()], ..RecordOutcome::default() };
    let mut good: Vec<(usize, NewEvent)> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Ok(event) => good.push((index, event)),
            Err(error) => outcome.errors.push(ItemError { index, error }),
        }
    }
    // Concurrent batches for one customer run its rules one after the
    // other, each seeing the other's events and tags once it commits: a
    // batch locks its customers' rows. It does not wait for the customers
    // another call holds: the customers free now are recorded in one
    // transaction, the others (a few, when batches overlap) in a second
    // that waits for them. Waiting with the whole batch's locks held made
    // batches wait in chains, one after the other.
    let contended = record_part(db, principal, limits, offset, now, &customers, good, Wait::No, &mut outcome).await?;
    if !contended.is_empty() {
        record_part(db, principal, limits, offset, now, &customers, contended, Wait::Yes, &mut outcome).await?;
    }
    outcome.errors.sort_by_key(|e| e.index);
    Ok(outcome)
}

/// Whether a part of a batch waits for customers another call holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Records the events of the customers free now, and hands back the
    /// others.
    No,
    /// Waits for every customer.
    Yes,
}

/// Records the events `items` (index in the batch, event) in one
/// transaction with one audit row, and runs the rules they trigger. With
/// [`Wait::No`], the events of customers another call holds are handed
/// back unrecorded.
#[allow(clippy::too_many_arguments)]
async fn record_part(
    db: &DatabaseConnection,
    principal: &Principal,
    limits: &Limits,
    offset: FixedOffset,
    now: DateTime<Utc>,
    customers: &HashMap<CustomerRef, customer::Model>,
    items: Vec<(usize, NewEvent)>,
    wait: Wait,
    outcome: &mut RecordOutcome,
) -> AppResult<Vec<(usize, NewEvent)>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let txn = db.begin().await?;
    share_event_log(&txn).await?;
    // The rows are locked in id order, and before any event is inserted:
    // an inserted event holds a key-share lock on its customer, which a
    // later `FOR UPDATE` of another batch would wait on in a cycle.
    let ids: BTreeSet<i64> = items.iter().map(|(_, e)| customers[&e.customer].id).collect();
    let ids: Vec<i64> = ids.into_iter().collect();
    let live = Condition::all().add(customer::Column::MergedIntoId.is_null());
    let locked = crate::service::tagging::lock_customer_rows_with(&txn, &ids, live, wait == Wait::No).await?;
    let mut items = items;
    let mut contended = Vec::new();
    if locked.len() < ids.len() {
        if wait == Wait::Yes {
            // Merged between the lookup and the lock: its events belong to
            // the kept customer now, which the resent batch finds.
            return Err(AppError::Conflict(
                "a customer of the batch was merged meanwhile; send the batch again".to_owned(),
            ));
        }
        // Held by another call (or merged meanwhile: the waiting part
        // finds out).
        let got: HashSet<i64> = locked.iter().map(|c| c.id).collect();
        let (mine, theirs) = items.into_iter().partition(|(_, e)| got.contains(&customers[&e.customer].id));
        items = mine;
        contended = theirs;
        if items.is_empty() {
            return Ok(contended);
        }
    }
    let before = (outcome.recorded(), outcome.duplicates(), outcome.audited_errors);
    let (changes, held_back, deferred, over_cap) =
        (outcome.tag_changes, outcome.held_back, outcome.deferred, outcome.over_cap);
    let keys: Vec<String> = items.iter().map(|(_, e)| e.key.clone()).collect();
    let mut known: HashMap<String, (String, i64, i64)> = HashMap::new();
    for chunk in keys.chunks(CHUNK) {
        for row in customer_event::Entity::find()
            .filter(customer_event::Column::EventKey.is_in(chunk.iter().cloned()))
            .all(&txn)
            .await?
        {
            known.insert(row.event_key, (row.fingerprint, row.id, row.customer_id));
        }
    }
    // Key → (fingerprint, index of the first event of the batch with it).
    let mut fresh: HashMap<String, (String, usize)> = HashMap::new();
    // Repeats inside the batch: (index, key of the first one).
    let mut repeats: Vec<(usize, String)> = Vec::new();
    let mut inserts = Vec::new();
    for (index, event) in items {
        let customer = &customers[&event.customer];
        let fingerprint = event.fingerprint(customer.id);
        let conflict = || AppError::Conflict(format!("event key {:?} was recorded for another event", event.key));
        if let Some((seen, id, stored_for)) = known.get(&event.key) {
            // An event recorded before a merge moved here keeps the
            // fingerprint it was recorded with, for the removed customer.
            let same = *seen == fingerprint
                || (*stored_for == customer.id
                    && merged_into(&txn, customer.id).await?.iter().any(|m| *seen == event.fingerprint(*m)));
            if same {
                outcome.results[index] = ItemResult::Duplicate(*id);
            } else {
                outcome.errors.push(ItemError { index, error: conflict() });
            }
            continue;
        }
        if let Some((seen, _)) = fresh.get(&event.key) {
            if *seen == fingerprint {
                repeats.push((index, event.key.clone()));
            } else {
                outcome.errors.push(ItemError { index, error: conflict() });
            }
            continue;
        }
        fresh.insert(event.key.clone(), (fingerprint.clone(), index));
        inserts.push(customer_event::Model {
            id: 0,
            customer_id: customer.id,
            org_unit_id: customer.org_unit_id,
            kind: event.kind,
            event_key: event.key.clone(),
            fingerprint,
            payload: event.payload.clone(),
            occurred_at: event.occurred_at,
            recorded_at: now,
            recorded_by: principal.staff.id,
        });
    }
    let recorded = insert_customer_events(&txn, inserts).await?;
    let id_of_key: HashMap<&str, i64> = recorded.iter().map(|e| (e.event_key.as_str(), e.id)).collect();
    for (key, (_, index)) in &fresh {
        outcome.results[*index] = ItemResult::Recorded(id_of_key[key.as_str()]);
    }
    for (index, key) in repeats {
        outcome.results[index] = ItemResult::Duplicate(id_of_key[key.as_str()]);
    }

    let touched: Vec<&customer::Model> = {
        let ids: BTreeSet<i64> = recorded.iter().map(|e| e.customer_id).collect();
        let by_id: HashMap<i64, &customer::Model> = customers.values().map(|c| (c.id, c)).collect();
        ids.iter().filter_map(|id| by_id.get(id).copied()).collect()
    };
    let mut runner = Runner::new(principal, limits, offset, now);
    runner.run_batch(&txn, &touched, &recorded).await?;
    outcome.tag_changes += runner.changes;
    outcome.held_back += runner.held_back;
    outcome.deferred += runner.deferred;
    outcome.over_cap += runner.over_cap;

    let mut entry = AuditEntry::ok(principal.staff_id(), "customer_event.record", "customer_event", "");
    entry.object_id = None;
    entry.org_unit_id = principal.org.common_ancestor(touched.iter().map(|c| c.org_unit_id));
    audit::record(
        &txn,
        entry.with_detail(json!({
            "recorded": outcome.recorded() - before.0,
            "duplicates": outcome.duplicates() - before.1,
            "refused": outcome.errors.len() - before.2,
            "customerIds": touched.iter().map(|c| c.id).collect::<Vec<_>>(),
            "tagChanges": outcome.tag_changes - changes,
            "heldBack": outcome.held_back - held_back,
            "deferred": outcome.deferred - deferred,
            "overCap": outcome.over_cap - over_cap,
            // Pending deferred actions of replayed events that a late
            // event's replay no longer decides, closed without a change.
            "deferredClosed": runner.closed,
        })),
    )
    .await?;
    txn.commit().await?;
    outcome.audited_errors = outcome.errors.len();
    Ok(contended)
}

/// Inserts the events (their `id` is ignored) and answers them with their
/// ids: on PostgreSQL one statement over arrays (`unnest`, nine
/// parameters, where a multi-row insert binds ten per event and reads
/// every column back), elsewhere multi-row statements of [`CHUNK`] rows.
async fn insert_customer_events(
    txn: &DatabaseTransaction,
    mut events: Vec<customer_event::Model>,
) -> AppResult<Vec<customer_event::Model>> {
    if events.is_empty() {
        return Ok(events);
    }
    if txn.get_database_backend() != DbBackend::Postgres {
        let mut recorded = Vec::with_capacity(events.len());
        for chunk in events.chunks(CHUNK) {
            let rows = chunk.iter().map(|e| {
                let mut row = sea_orm::IntoActiveModel::into_active_model(e.clone());
                row.id = NotSet;
                row
            });
            recorded.extend(customer_event::Entity::insert_many(rows).exec_with_returning(txn).await?);
        }
        return Ok(recorded);
    }
    let (recorded_at, recorded_by) = (events[0].recorded_at, events[0].recorded_by);
    let sql = "INSERT INTO customer_event \
               (customer_id, org_unit_id, kind, event_key, fingerprint, payload, occurred_at, recorded_at, recorded_by) \
               SELECT u.c, u.unit, u.k, u.key, u.f, u.p, u.o, $8, $9 \
               FROM unnest($1::text::bigint[], $2::text::bigint[], $3::text::text[], $4::text::text[], \
                           $5::text::text[], $6::text::json[], $7::text::timestamptz[]) \
               WITH ORDINALITY AS u(c, unit, k, key, f, p, o, n) ORDER BY u.n \
               RETURNING id, event_key";
    let values: Vec<sea_orm::Value> = vec![
        pg_array(events.iter().map(|e| Some(e.customer_id))).into(),
        pg_array(events.iter().map(|e| Some(e.org_unit_id))).into(),
        pg_array(events.iter().map(|e| Some(e.kind.as_str()))).into(),
        pg_array(events.iter().map(|e| Some(e.event_key.as_str()))).into(),
        pg_array(events.iter().map(|e| Some(e.fingerprint.as_str()))).into(),
        pg_array(events.iter().map(|e| Some(e.payload.to_string()))).into(),
        pg_array(events.iter().map(|e| Some(pg_instant(e.occurred_at)))).into(),
        recorded_at.into(),
        recorded_by.into(),
    ];
    let rows = txn.query_all_raw(sea_orm::Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    let mut ids: HashMap<String, i64> = HashMap::with_capacity(rows.len());
    for row in rows {
        ids.insert(row.try_get("", "event_key")?, row.try_get("", "id")?);
    }
    for event in &mut events {
        event.id = *ids
            .get(&event.event_key)
            .ok_or_else(|| AppError::Internal(anyhow::anyhow!("event {:?} was not inserted", event.event_key)))?;
    }
    Ok(events)
}

/// The customers merged into `customer_id`, directly or through a chain
/// of merges.
async fn merged_into(txn: &DatabaseTransaction, customer_id: i64) -> AppResult<Vec<i64>> {
    let mut out = Vec::new();
    let mut frontier = vec![customer_id];
    while !frontier.is_empty() {
        frontier = customer::Entity::find()
            .select_only()
            .column(customer::Column::Id)
            .filter(customer::Column::MergedIntoId.is_in(frontier))
            .into_tuple::<i64>()
            .all(txn)
            .await?;
        out.extend(frontier.iter().copied());
    }
    Ok(out)
}

/// Looks up the customers the events name; an event whose customer does
/// not exist or is outside the caller's `customer_event:write` scope
/// becomes a `NOT_FOUND` item error (the two cannot be told apart).
async fn resolve_customers(
    db: &DatabaseConnection,
    principal: &Principal,
    items: &mut [Result<NewEvent, AppError>],
) -> AppResult<HashMap<CustomerRef, customer::Model>> {
    let mut ids: BTreeSet<i64> = BTreeSet::new();
    let mut externals: BTreeSet<(String, String)> = BTreeSet::new();
    for event in items.iter().flatten() {
        match &event.customer {
            CustomerRef::Id(id) => {
                ids.insert(id.0);
            }
            CustomerRef::External { provider, external_id } => {
                externals.insert((provider.clone(), external_id.clone()));
            }
        }
    }
    let mut external_ids: HashMap<(String, String), i64> = HashMap::new();
    let externals: Vec<(String, String)> = externals.into_iter().collect();
    for chunk in externals.chunks(CHUNK / 2) {
        let cond = chunk.iter().fold(Condition::any(), |cond, (provider, external_id)| {
            cond.add(
                Condition::all()
                    .add(customer_identity::Column::Provider.eq(provider.as_str()))
                    .add(customer_identity::Column::ExternalId.eq(external_id.as_str())),
            )
        });
        for row in customer_identity::Entity::find().filter(cond).all(db).await? {
            ids.insert(row.customer_id);
            external_ids.insert((row.provider, row.external_id), row.customer_id);
        }
    }
    let scope = principal.scope(Action::CustomerEventWrite);
    let mut by_id: HashMap<i64, customer::Model> = HashMap::new();
    let ids: Vec<i64> = ids.into_iter().collect();
    for chunk in ids.chunks(CHUNK) {
        for row in customer::Entity::find()
            .filter(customer::Column::Id.is_in(chunk.iter().copied()))
            .filter(scope.condition(customer::Column::OrgUnitId))
            .all(db)
            .await?
        {
            by_id.insert(row.id, row);
        }
    }
    // Events naming a merged customer go to the one it was merged into
    // (when that one is in scope too).
    let kept: BTreeSet<i64> = by_id.values().filter_map(|c| c.merged_into_id).collect();
    if !kept.is_empty() {
        let rows = customer::Entity::find()
            .filter(customer::Column::Id.is_in(kept))
            .filter(scope.condition(customer::Column::OrgUnitId))
            .filter(customer::Column::MergedIntoId.is_null())
            .all(db)
            .await?;
        let kept: HashMap<i64, customer::Model> = rows.into_iter().map(|c| (c.id, c)).collect();
        by_id = by_id
            .into_iter()
            .filter_map(|(id, c)| match c.merged_into_id {
                None => Some((id, c)),
                Some(k) => kept.get(&k).map(|k| (id, k.clone())),
            })
            .collect();
    }
    let mut out = HashMap::new();
    for item in items.iter_mut() {
        let Ok(event) = item else { continue };
        let found = match &event.customer {
            CustomerRef::Id(id) => by_id.get(&id.0),
            CustomerRef::External { provider, external_id } => {
                external_ids.get(&(provider.clone(), external_id.clone())).and_then(|id| by_id.get(id))
            }
        };
        match found {
            Some(customer) => {
                out.insert(event.customer.clone(), customer.clone());
            }
            None => {
                let shown = match &event.customer {
                    CustomerRef::Id(id) => id.to_string(),
                    CustomerRef::External { provider, external_id } => format!("{provider}:{external_id}"),
                };
                *item = Err(AppError::not_found("customer", shown));
            }
        }
    }
    Ok(out)
}

/// The enabled rules that apply to customers of each of `units` (each
/// unit's own and the units' above), ordered, each compiled against its
/// own unit's library (where its tags are named), with the union of those
/// libraries (the tags their actions change). Units with the same rules
/// share one set: one statement for the rules and one library load per
/// unit holding rules, however many units the batch touches. `adjust` may
/// change the rows first: a dry run puts its rule in.
///
/// # Errors
/// Database errors.
pub(super) async fn rule_sets_of_units(
    db: &impl ConnectionTrait,
    org: &OrgTree,
    units: &BTreeSet<i64>,
    adjust: impl FnOnce(&mut Vec<rule::Model>),
) -> AppResult<HashMap<i64, Arc<(RuleSet, UnitLibrary)>>> {
    let chains: HashMap<i64, BTreeSet<i64>> =
        units.iter().map(|u| (*u, org.ancestors_or_self(*u).iter().map(|a| a.id).collect())).collect();
    let all: BTreeSet<i64> = chains.values().flatten().copied().collect();
    // Scheduled rules run on their schedule, not on events.
    let mut rows = rule::Entity::find()
        .filter(rule::Column::Status.eq(RuleStatus::Enabled))
        .filter(rule::Column::Schedule.is_null())
        .filter(rule::Column::OrgUnitId.is_in(all))
        .all(db)
        .await?;
    adjust(&mut rows);
    rows.sort_by_key(|r| r.id);
    let mut libraries: HashMap<i64, UnitLibrary> = HashMap::new();
    for unit in rows.iter().map(|r| r.org_unit_id).collect::<BTreeSet<_>>() {
        libraries.insert(unit, UnitLibrary::load(db, org, unit).await?);
    }
    let compiled: HashMap<i64, CompiledRule> =
        rows.iter().filter_map(|r| Some((r.id, compile(r, libraries.get(&r.org_unit_id)?)?))).collect();
    let mut shared: HashMap<Vec<i64>, Arc<(RuleSet, UnitLibrary)>> = HashMap::new();
    let mut out = HashMap::new();
    for (unit, chain) in &chains {
        let applying: Vec<&rule::Model> = rows.iter().filter(|r| chain.contains(&r.org_unit_id)).collect();
        let key: Vec<i64> = applying.iter().map(|r| r.id).collect();
        let set = shared
            .entry(key)
            .or_insert_with(|| {
                let mut tags = HashMap::new();
                for rule_unit in applying.iter().map(|r| r.org_unit_id).collect::<BTreeSet<_>>() {
                    if let Some(library) = libraries.get(&rule_unit) {
                        tags.extend(library.tags.iter().map(|(id, t)| (*id, t.clone())));
                    }
                }
                let library = UnitLibrary { tags };
                let rules: Vec<CompiledRule> = applying.iter().filter_map(|r| compiled.get(&r.id).cloned()).collect();
                let exclusive = library.exclusive_of(rules.iter().flat_map(|r| r.actions.iter().map(|a| a.tag_id)));
                Arc::new((RuleSet::new(rules, exclusive), library))
            })
            .clone();
        out.insert(*unit, set);
    }
    Ok(out)
}

/// Rule sets compiled by this process: database key → (rule revision,
/// unit → its rule set).
type CompiledSets = HashMap<String, (i64, HashMap<i64, Arc<(RuleSet, UnitLibrary)>>)>;

static COMPILED: std::sync::LazyLock<std::sync::Mutex<CompiledSets>> = std::sync::LazyLock::new(Default::default);

/// As [`rule_sets_of_units`] (no rule adjusted), compiled once per rule
/// revision: the counter `rule_revision` moves with every change to rules,
/// tags, tag groups and the org tree (by trigger, in the changing
/// transaction), so a batch reads one row and compiles only the units it
/// has not met at that revision. The row's database key, with the
/// database's name and oid (its file on SQLite), keeps the rule sets of
/// several databases served by one process apart.
///
/// # Errors
/// Database errors.
async fn cached_rule_sets(
    txn: &DatabaseTransaction,
    org: &OrgTree,
    units: &BTreeSet<i64>,
) -> AppResult<HashMap<i64, Arc<(RuleSet, UnitLibrary)>>> {
    let backend = txn.get_database_backend();
    // A copied database (a template, a file copy: the tests make theirs
    // so) carries the same key: the database's own name and oid, or its
    // file, tell copies apart.
    let sql = if backend == DbBackend::Postgres {
        "SELECT database_key || '/' || current_database() || '/' || \
         (SELECT oid FROM pg_database WHERE datname = current_database())::text, revision \
         FROM rule_revision WHERE id = 1"
    } else {
        "SELECT database_key || '/' || coalesce((SELECT file FROM pragma_database_list WHERE name = 'main'), ''), \
         revision FROM rule_revision WHERE id = 1"
    };
    let row = txn
        .query_one_raw(sea_orm::Statement::from_string(backend, sql))
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("rule_revision has no row")))?;
    let key: String = row.try_get_by_index(0)?;
    let revision: i64 = row.try_get_by_index(1)?;
    let mut out = HashMap::new();
    let missing: BTreeSet<i64> = {
        let compiled = COMPILED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = compiled.get(&key).filter(|(at, _)| *at == revision).map(|(_, sets)| sets);
        units
            .iter()
            .copied()
            .filter(|unit| match known.and_then(|sets| sets.get(unit)) {
                Some(set) => {
                    out.insert(*unit, Arc::clone(set));
                    false
                }
                None => true,
            })
            .collect()
    };
    if missing.is_empty() {
        return Ok(out);
    }
    let loaded = rule_sets_of_units(txn, org, &missing, |_| {}).await?;
    let mut compiled = COMPILED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // A process serves one database (tests serve many, one after the other).
    if compiled.len() >= 64 && !compiled.contains_key(&key) {
        compiled.clear();
    }
    let entry = compiled.entry(key).or_insert_with(|| (revision, HashMap::new()));
    if entry.0 < revision {
        *entry = (revision, HashMap::new());
    }
    if entry.0 == revision {
        entry.1.extend(loaded.iter().map(|(unit, set)| (*unit, Arc::clone(set))));
    }
    out.extend(loaded);
    Ok(out)
}

/// Runs the rules for the customers of one batch, remembering compiled
/// rule sets per org unit. Set-based: the batch's customers' events,
/// tags, manual removals and locks are read in a few statements for the
/// whole batch, the rules run in memory, and the changes are written in
/// multi-row statements.
struct Runner<'a> {
    principal: &'a Principal,
    limits: &'a Limits,
    offset: FixedOffset,
    now: DateTime<Utc>,
    sets: HashMap<i64, Arc<(RuleSet, UnitLibrary)>>,
    changes: u32,
    held_back: u32,
    deferred: u32,
    over_cap: u32,
    /// Pending deferred actions a late event's replay closed.
    closed: Vec<i64>,
}

/// The last change a batch makes to one (customer, tag).
enum Last {
    Added(customer_tag::ActiveModel),
    Removed,
}

impl<'a> Runner<'a> {
    fn new(principal: &'a Principal, limits: &'a Limits, offset: FixedOffset, now: DateTime<Utc>) -> Self {
        Self {
            principal,
            limits,
            offset,
            now,
            sets: HashMap::new(),
            changes: 0,
            held_back: 0,
            deferred: 0,
            over_cap: 0,
            closed: Vec::new(),
        }
    }

    /// Runs the rules for every customer of the batch on its new events.
    async fn run_batch(
        &mut self,
        txn: &DatabaseTransaction,
        touched: &[&customer::Model],
        recorded: &[customer_event::Model],
    ) -> AppResult<()> {
        let units: BTreeSet<i64> = touched.iter().map(|c| c.org_unit_id).collect();
        self.sets = cached_rule_sets(txn, &self.principal.org, &units).await?;
        let customers: Vec<&customer::Model> =
            touched.iter().copied().filter(|c| !self.sets[&c.org_unit_id].0.rules.is_empty()).collect();
        if customers.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = customers.iter().map(|c| c.id).collect();
        let units: BTreeSet<i64> = customers.iter().map(|c| c.org_unit_id).collect();
        let rules = || units.iter().flat_map(|u| self.sets[u].0.rules.iter());
        let mut kinds: Vec<CustomerEventKind> = rules().flat_map(|r| r.condition.event_kinds()).collect();
        kinds.sort_by_key(|k| k.as_str());
        kinds.dedup();
        // A rule that looks at no event runs on every event: then events
        // of every kind are read (a late one of any kind replays them).
        let any_kind = rules().any(|r| r.condition.event_kinds().is_empty());
        // The tags the rules may change: their actions' and, for an add,
        // the other tags of its exclusive group.
        let action_tags: BTreeSet<i64> = units
            .iter()
            .flat_map(|u| {
                let set = &self.sets[u].0;
                set.rules.iter().flat_map(move |r| r.actions.iter().flat_map(move |a| set.exclusive.affected(a)))
            })
            .collect();
        let groups: BTreeSet<i64> = units
            .iter()
            .flat_map(|u| {
                let library = &self.sets[u].1;
                action_tags.iter().filter_map(|t| library.tags.get(t).map(|(_, g)| g.id))
            })
            .collect();

        // A merged customer's events count as the kept customer's.
        let mut owner: HashMap<i64, i64> = ids.iter().map(|id| (*id, *id)).collect();
        let backend = txn.get_database_backend();
        for chunk in ids.chunks(ids_per_statement(backend)) {
            let merged: Vec<(i64, Option<i64>)> = customer::Entity::find()
                .select_only()
                .column(customer::Column::Id)
                .column(customer::Column::MergedIntoId)
                .filter(id_in(backend, customer::Column::MergedIntoId, chunk))
                .into_tuple()
                .all(txn)
                .await?;
            for (id, into) in merged {
                if let Some(into) = into {
                    owner.insert(id, into);
                }
            }
        }
        let mut history: HashMap<i64, Vec<EventFact>> = HashMap::new();
        let all: Vec<i64> = owner.keys().copied().collect();
        let read_kinds = (!any_kind).then_some(kinds.as_slice());
        for (customer, events) in events_in_range(txn, Customers::Ids(&all), read_kinds, None).await? {
            history.entry(owner[&customer]).or_default().extend(events);
        }
        if owner.len() > ids.len() {
            for events in history.values_mut() {
                events.sort_by_key(|e| (e.occurred_at, e.id));
            }
        }
        // The tags the rules read or may change, per customer, and how
        // many it holds in all (the tag cap counts every tag).
        let relevant: BTreeSet<i64> = units
            .iter()
            .flat_map(|u| self.sets[u].0.rules.iter().flat_map(|r| r.reads()))
            .chain(action_tags.iter().copied())
            .collect();
        let mut held = held_among_with_counts(txn, &ids, &relevant).await?;
        let locked = locks_in_force(txn, &ids, &groups).await?;

        let mut new_events: HashMap<i64, Vec<&customer_event::Model>> = HashMap::new();
        for e in recorded {
            new_events.entry(e.customer_id).or_default().push(e);
        }
        for mine in new_events.values_mut() {
            mine.sort_by_key(|e| (e.occurred_at, e.id));
        }
        // Each customer's late event, if any (one that happened before
        // events evaluated in earlier batches), and the events its replay
        // judges again.
        let empty = Vec::new();
        let mut lates: HashMap<i64, &customer_event::Model> = HashMap::new();
        let mut replayed: HashMap<i64, HashSet<i64>> = HashMap::new();
        for customer in &customers {
            let Some(mine) = new_events.get(&customer.id) else { continue };
            let events = history.get(&customer.id).unwrap_or(&empty);
            let new_ids: HashSet<i64> = mine.iter().map(|e| e.id).collect();
            let Some(late) = late_event(mine, events, &new_ids, |k| any_kind || kinds.contains(&k)) else { continue };
            lates.insert(customer.id, late);
            replayed.insert(
                customer.id,
                events
                    .iter()
                    .filter(|e| !new_ids.contains(&e.id) && e.occurred_at > late.occurred_at)
                    .map(|e| e.id)
                    .collect(),
            );
        }
        let pending = pending_deferrals(txn, &replayed).await?;
        // A late event rewinds from the customer's tag log; the others
        // need only people's removals, from their partial index.
        let late_ids: Vec<i64> = lates.keys().copied().collect();
        let removals = tag_log_in_range(txn, Customers::Ids(&late_ids), &action_tags).await?;
        let punctual: Vec<i64> = ids.iter().copied().filter(|id| !lates.contains_key(id)).collect();
        let mut removed = manual_removals_in_range(txn, Customers::Ids(&punctual), &action_tags).await?;
        let mut tag_events = Vec::new();
        let mut deferred = Vec::new();
        // (customer, tag) → its last change, and whether it was held before.
        let mut last: BTreeMap<(i64, i64), (bool, Last)> = BTreeMap::new();
        for customer in customers {
            let Some(mine) = new_events.remove(&customer.id) else { continue };
            let entry = Arc::clone(&self.sets[&customer.org_unit_id]);
            let (set, library) = &*entry;
            let attributes = attributes_of(customer);
            let (before, count) = held.remove(&customer.id).unwrap_or_default();
            // Tags no rule here reads or changes: they count towards the cap.
            let others = count.saturating_sub(u32::try_from(before.len()).unwrap_or(u32::MAX));
            let events = history.get(&customer.id).unwrap_or(&empty);
            let log: &[tag_event::Model] = removals.get(&customer.id).map_or(&[], Vec::as_slice);
            let manual_removals = if lates.contains_key(&customer.id) {
                removed_by_people(log)
            } else {
                removed.remove(&customer.id).unwrap_or_default()
            };
            let mut facts =
                Facts { events, attributes: &attributes, tags: before.clone(), manual_removals, offset: self.offset };
            // (event, kind, when it happened, when it counts as judged):
            // the batch's own events are judged now.
            let mut triggers: Vec<(i64, CustomerEventKind, DateTime<Utc>, DateTime<Utc>)> =
                mine.iter().map(|e| (e.id, e.kind, e.occurred_at, self.now)).collect();
            // A late event (one that happened before events evaluated in
            // earlier batches): the rules' changes triggered by those
            // later events are rewound, and every event from the late one
            // on is evaluated again in the order they happened, so that
            // the customer ends as if the events had come in order. An
            // event no rule runs on changes nothing and rewinds nothing.
            let new_ids: HashSet<i64> = mine.iter().map(|e| e.id).collect();
            let late = lates.get(&customer.id).copied();
            // Tag → the rule's rewound change that made its state (rule,
            // version, triggering event).
            let mut rewound: HashMap<i64, (i64, i32, i64)> = HashMap::new();
            // Tag → the newest change to it that no event's rule made (a
            // person's, a scheduled run's, an expiry's): a replayed event
            // judged before then does not change that tag.
            let mut outside: HashMap<i64, DateTime<Utc>> = HashMap::new();
            if let Some(late) = late {
                let time_of: HashMap<i64, DateTime<Utc>> = events.iter().map(|e| (e.id, e.occurred_at)).collect();
                let mut kept: Vec<&tag_event::Model> = Vec::new();
                // Newest first, a tag's changes are rewound up to its
                // newest change that stays: that one made the state the
                // older ones had led to (a rule's change for an event
                // before the late one, a replay's own writes, or any
                // change no event's rule made), so none older is undone.
                let mut settled: HashSet<i64> = HashSet::new();
                for e in log {
                    let by_rule = (e.source == TagSource::Rule)
                        .then(|| e.source_ref.as_deref().and_then(parse_source_ref))
                        .flatten()
                        .and_then(|r| r.event_id.map(|id| (r, id)));
                    let Some((rule_ref, event_id)) = by_rule else {
                        outside.entry(e.tag_id).or_insert(e.occurred_at);
                        settled.insert(e.tag_id);
                        kept.push(e);
                        continue;
                    };
                    let rewind =
                        !settled.contains(&e.tag_id) && time_of.get(&event_id).is_some_and(|at| *at > late.occurred_at);
                    if !rewind {
                        settled.insert(e.tag_id);
                        kept.push(e);
                        continue;
                    }
                    match e.op {
                        TagOp::Add => facts.tags.remove(&e.tag_id),
                        TagOp::Remove => facts.tags.insert(e.tag_id),
                    };
                    rewound.entry(e.tag_id).or_insert((rule_ref.rule_id, rule_ref.version, event_id));
                }
                // A person's removal the rewind uncovered holds adds back.
                facts.manual_removals = removed_by_people(kept);
                // The events the pre-pass found this late event replays.
                let again = &replayed[&customer.id];
                for e in events.iter().filter(|e| again.contains(&e.id)) {
                    triggers.push((e.id, e.kind, e.occurred_at, e.recorded_at));
                }
                triggers.sort_by_key(|(id, _, at, _)| (*at, *id));
                // In order, an event is judged no later than any event
                // that happened after it was.
                let mut judged = self.now;
                for trigger in triggers.iter_mut().rev() {
                    judged = judged.min(trigger.3);
                    trigger.3 = judged;
                }
            }
            // (change, triggering event), in order.
            let mut steps: Vec<(Planned, i64)> = Vec::new();
            // The pending deferred actions of the replayed events, and
            // those the replay decides again.
            let waiting = pending.get(&customer.id);
            let mut decided: HashSet<(i64, i64, i64, TagOp)> = HashSet::new();
            for (id, kind, occurred_at, judged) in triggers {
                let trigger =
                    EventFact { id, kind, occurred_at, payload: serde_json::Value::Null, recorded_at: judged };
                let firing = fire(set, &facts, Some(&trigger), occurred_at);
                // A replayed event's held-back adds were counted when it
                // was recorded.
                let own = new_ids.contains(&id);
                if own {
                    self.held_back += firing.held_back.len() as u32;
                }
                // Tags changed from outside since this event was judged
                // stay as they are, and so does an exclusive group whose
                // held tag stays.
                let stays = |tag: i64| outside.get(&tag).is_some_and(|at| *at >= judged);
                let kept_held: BTreeSet<i64> = firing
                    .changes
                    .iter()
                    .filter(|c| c.op == TagOp::Remove && stays(c.tag_id))
                    .map(|c| c.tag_id)
                    .collect();
                let mut tags = facts.tags.clone();
                for change in firing.changes {
                    let action = (id, change.rule_id, change.tag_id, change.op);
                    if !own {
                        decided.insert(action);
                    }
                    if stays(change.tag_id)
                        || (change.op == TagOp::Add
                            && set.exclusive.siblings(change.tag_id).any(|t| kept_held.contains(&t)))
                    {
                        continue;
                    }
                    let group = library.tags.get(&change.tag_id).map(|(_, g)| g.id);
                    if let Some(lock_id) = group.and_then(|g| locked.get(&(customer.id, g))) {
                        if own || !waiting.is_some_and(|w| w.contains_key(&action)) {
                            deferred.push(deferred_action(&change, customer.id, id, *lock_id, self.now));
                        }
                        continue;
                    }
                    match change.op {
                        TagOp::Add => {
                            if tags.len() as u32 + others >= self.limits.max_tags_per_customer {
                                self.over_cap += u32::from(own);
                                continue;
                            }
                            tags.insert(change.tag_id);
                        }
                        TagOp::Remove => {
                            tags.remove(&change.tag_id);
                        }
                    }
                    steps.push((change, id));
                }
                facts.tags = tags;
            }
            // A replayed event's action deferred by its first judgement,
            // which the replay no longer decides (the late event broke the
            // rule's condition, or changed what it does): in order it
            // would never have been deferred, so it is closed without a
            // change, even when its lock has ended and a scheduler round
            // has yet to apply it.
            for (action, rows) in waiting.into_iter().flatten() {
                if !decided.contains(action) {
                    self.closed.extend(rows);
                }
            }
            if let Some(late) = late {
                // Only the net effect is written: what the customer holds
                // now against what the replay ends with.
                // A tag held before and after, put on again by another
                // event than the one that put it on, is written anew
                // (taken off, put on) so that it says why it is there.
                let mut net: Vec<(Planned, i64)> = Vec::new();
                let after = &facts.tags;
                let undo = |tag: i64, op: TagOp| {
                    rewound.get(&tag).map(|(rule_id, rule_version, _)| {
                        let planned = Planned {
                            rule_id: *rule_id,
                            rule_version: *rule_version,
                            tag_id: tag,
                            op,
                            ttl_seconds: None,
                        };
                        (planned, late.id)
                    })
                };
                for tag in before.union(after).copied() {
                    let step = steps.iter().rev().find(|(c, _)| c.tag_id == tag).cloned();
                    match (before.contains(&tag), after.contains(&tag)) {
                        (true, false) => net.extend(step.or_else(|| undo(tag, TagOp::Remove))),
                        (false, true) => net.extend(step.or_else(|| undo(tag, TagOp::Add))),
                        (true, true) => {
                            if let (Some((rule_id, _, event_id)), Some((change, by))) = (rewound.get(&tag), step)
                                && change.op == TagOp::Add
                                && (change.rule_id, by) != (*rule_id, *event_id)
                            {
                                net.extend(undo(tag, TagOp::Remove));
                                net.push((change, by));
                            }
                        }
                        (false, false) => {}
                    }
                }
                steps = net;
            }
            for (change, event_id) in steps {
                let was_held = before.contains(&change.tag_id);
                match change.op {
                    TagOp::Add => {
                        let ttl = change
                            .ttl_seconds
                            .or_else(|| library.tags.get(&change.tag_id).and_then(|(t, _)| t.ttl_seconds));
                        let row = customer_tag::ActiveModel {
                            customer_id: Set(customer.id),
                            tag_id: Set(change.tag_id),
                            source: Set(TagSource::Rule),
                            source_ref: Set(Some(source_ref(change.rule_id, change.rule_version, event_id))),
                            tagged_by: Set(None),
                            tagged_at: Set(self.now),
                            expires_at: Set(ttl.map(|s| self.now + Duration::seconds(s))),
                        };
                        last.insert((customer.id, change.tag_id), (was_held, Last::Added(row)));
                    }
                    TagOp::Remove => {
                        last.insert((customer.id, change.tag_id), (was_held, Last::Removed));
                    }
                }
                tag_events.push(rule_event(&change, customer.id, event_id, self.principal.staff.id, self.now));
                self.changes += 1;
            }
        }
        // Net effect per (customer, tag): what was held and changed goes
        // (a tag taken off and put back is written anew, with the
        // explanation of its last add), what is added last goes on.
        let mut removed: Vec<(i64, i64)> = Vec::new();
        let mut added: Vec<customer_tag::ActiveModel> = Vec::new();
        for (pair, (was_held, change)) in last {
            if was_held {
                removed.push(pair);
            }
            if let Last::Added(row) = change {
                added.push(row);
            }
        }
        crate::service::tagging::delete_assignments(txn, &removed).await?;
        crate::service::tagging::insert_assignment_rows(txn, added).await?;
        self.deferred += deferred.len() as u32;
        for chunk in deferred.chunks(CHUNK) {
            rule_deferred_action::Entity::insert_many(chunk.to_vec()).exec(txn).await?;
        }
        mark_done(txn, &self.closed, self.now).await?;
        insert_events(txn, tag_events).await?;
        Ok(())
    }
}

/// A pending action of a rule, as (event, rule, tag, op).
type RuleAction = (i64, i64, i64, TagOp);

/// The deferred actions still waiting to be applied (their lock in force,
/// or ended and not yet applied by a scheduler round) of the events a
/// late event replays, per customer: action → its rows. A replay does not
/// defer such an action twice, and closes one it no longer decides. Read
/// only when the batch has a late event that replays events: one
/// statement (chunks of customers on SQLite).
async fn pending_deferrals(
    txn: &DatabaseTransaction,
    replayed: &HashMap<i64, HashSet<i64>>,
) -> AppResult<HashMap<i64, HashMap<RuleAction, Vec<i64>>>> {
    let mut out: HashMap<i64, HashMap<RuleAction, Vec<i64>>> = HashMap::new();
    let customers: BTreeSet<i64> = replayed.iter().filter(|(_, events)| !events.is_empty()).map(|(c, _)| *c).collect();
    let customers: Vec<i64> = customers.into_iter().collect();
    let backend = txn.get_database_backend();
    for chunk in customers.chunks(ids_per_statement(backend)) {
        for row in rule_deferred_action::Entity::find()
            .filter(id_in(backend, rule_deferred_action::Column::CustomerId, chunk))
            .filter(rule_deferred_action::Column::AppliedAt.is_null())
            .filter(rule_deferred_action::Column::EventId.is_not_null())
            .all(txn)
            .await?
        {
            let Some(event) = row.event_id else { continue };
            if !replayed.get(&row.customer_id).is_some_and(|events| events.contains(&event)) {
                continue;
            }
            let op = if row.op == TagOp::Remove.as_str() { TagOp::Remove } else { TagOp::Add };
            out.entry(row.customer_id)
                .or_default()
                .entry((event, row.rule_id, row.tag_id, op))
                .or_default()
                .push(row.id);
        }
    }
    Ok(out)
}

/// A customer's late event: the first of its new events (in the order
/// they happened) that a rule reads and that happened before an event
/// evaluated in an earlier batch. An event no rule runs on changes
/// nothing and rewinds nothing.
fn late_event<'m>(
    mine: &[&'m customer_event::Model],
    events: &[EventFact],
    new_ids: &HashSet<i64>,
    read: impl Fn(CustomerEventKind) -> bool,
) -> Option<&'m customer_event::Model> {
    let newest_before = events.iter().filter(|e| !new_ids.contains(&e.id)).map(|e| e.occurred_at).max()?;
    mine.iter().find(|e| e.occurred_at < newest_before && read(e.kind)).copied()
}

/// The tag event of a rule's change: source `RULE`, no acting person.
fn rule_event(
    change: &Planned,
    customer_id: i64,
    event_id: i64,
    recorder: i64,
    at: DateTime<Utc>,
) -> tag_event::ActiveModel {
    let by = EventBy {
        actor: Some(recorder),
        source: TagSource::Rule,
        source_ref: Some(source_ref(change.rule_id, change.rule_version, event_id)),
        at,
    };
    let mut event = by.event(customer_id, change.tag_id, change.op);
    event.actor_staff_id = Set(None);
    event
}

fn deferred_action(
    change: &Planned,
    customer_id: i64,
    event_id: i64,
    lock_id: i64,
    at: DateTime<Utc>,
) -> rule_deferred_action::ActiveModel {
    rule_deferred_action::ActiveModel {
        id: NotSet,
        rule_id: Set(change.rule_id),
        rule_version: Set(change.rule_version),
        customer_id: Set(customer_id),
        tag_id: Set(change.tag_id),
        op: Set(change.op.as_str().to_owned()),
        ttl_seconds: Set(change.ttl_seconds),
        event_id: Set(Some(event_id)),
        lock_id: Set(lock_id),
        run_id: Set(None),
        created_at: Set(at),
        applied_at: Set(None),
    }
}

/// A customer's events the caller may see, newest recorded first: those of
/// a customer the caller reads (the customer was read in scope).
///
/// # Errors
/// `VALIDATION` for a bad cursor; database errors.
pub async fn events_of(
    db: &impl ConnectionTrait,
    principal: &Principal,
    customer: &customer::Model,
    page: &crate::domain::PageArgs,
) -> AppResult<crate::service::NewestFirst<customer_event::Model>> {
    if !principal.may(Action::CustomerRead, customer.org_unit_id) {
        return Err(AppError::not_found("customer", CustomerId(customer.id)));
    }
    // A merge moved the removed customer's events here.
    let query = customer_event::Entity::find().filter(customer_event::Column::CustomerId.eq(customer.id));
    crate::service::newest_first(db, query, customer_event::Column::Id, |e| e.id, "customer_event", page).await
}

/// How many events a customer has.
///
/// # Errors
/// Database errors.
pub async fn count_events_of(db: &impl ConnectionTrait, customer_id: i64) -> AppResult<u64> {
    use sea_orm::PaginatorTrait;
    Ok(customer_event::Entity::find().filter(customer_event::Column::CustomerId.eq(customer_id)).count(db).await?)
}
