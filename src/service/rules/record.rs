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

use chrono::{DateTime, Duration, FixedOffset, Utc};
use entity::{
    customer, customer_event, customer_identity, customer_tag,
    enums::{RuleStatus, TagOp, TagSource},
    modification_lock, rule, rule_deferred_action, tag_event,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter,
    QueryOrder, TransactionTrait,
};
use serde_json::json;

use super::eval::{Attributes, EventFact, Facts, Planned, RuleSet, fire};
use super::event::{CustomerRef, NewEvent, RawEvent};
use super::explain::source_ref;
use super::library::{UnitLibrary, compile};
use crate::authz::{Action, OrgTree, Principal};
use crate::config::Limits;
use crate::domain::CustomerId;
use crate::error::{AppError, AppResult};
use crate::service::audit::{self, AuditEntry};
use crate::store::CHUNK;
use crate::store::customer_log::with_merged;
use crate::store::event_log::{EventBy, insert_events, share_event_log};

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

    let txn = db.begin().await?;
    share_event_log(&txn).await?;
    // Concurrent batches for one customer run its rules one after the
    // other, each seeing the other's events and tags once it commits. The
    // rows are locked in id order, and before any event is inserted: an
    // inserted event holds a key-share lock on its customer, which a later
    // `FOR UPDATE` of another batch would wait on in a cycle.
    let ids: Vec<i64> = customers.values().map(|c| c.id).collect();
    crate::service::tagging::lock_customer_rows(&txn, &ids, Condition::all()).await?;
    let mut outcome = RecordOutcome { results: vec![ItemResult::Refused; items.len()], ..RecordOutcome::default() };
    let keys: Vec<String> = items.iter().filter_map(|i| i.as_ref().ok().map(|e| e.key.clone())).collect();
    let mut known: HashMap<String, (String, i64)> = HashMap::new();
    for chunk in keys.chunks(CHUNK) {
        for row in customer_event::Entity::find()
            .filter(customer_event::Column::EventKey.is_in(chunk.iter().cloned()))
            .all(&txn)
            .await?
        {
            known.insert(row.event_key, (row.fingerprint, row.id));
        }
    }
    // Key → (fingerprint, index of the first event of the batch with it).
    let mut fresh: HashMap<String, (String, usize)> = HashMap::new();
    // Repeats inside the batch: (index, key of the first one).
    let mut repeats: Vec<(usize, String)> = Vec::new();
    let mut inserts = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        let event = match item {
            Ok(event) => event,
            Err(error) => {
                outcome.errors.push(ItemError { index, error });
                continue;
            }
        };
        let customer = &customers[&event.customer];
        let fingerprint = event.fingerprint(customer.id);
        let conflict = || AppError::Conflict(format!("event key {:?} was recorded for another event", event.key));
        if let Some((seen, id)) = known.get(&event.key) {
            if *seen == fingerprint {
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
        inserts.push(customer_event::ActiveModel {
            id: NotSet,
            customer_id: Set(customer.id),
            org_unit_id: Set(customer.org_unit_id),
            kind: Set(event.kind),
            event_key: Set(event.key.clone()),
            fingerprint: Set(fingerprint),
            payload: Set(event.payload.clone()),
            occurred_at: Set(event.occurred_at),
            recorded_at: Set(now),
            recorded_by: Set(principal.staff.id),
        });
    }
    let new_keys: Vec<String> = fresh.keys().cloned().collect();
    for chunk in inserts.chunks(CHUNK) {
        customer_event::Entity::insert_many(chunk.to_vec()).exec(&txn).await?;
    }
    let mut recorded: Vec<customer_event::Model> = Vec::new();
    for chunk in new_keys.chunks(CHUNK) {
        recorded.extend(
            customer_event::Entity::find()
                .filter(customer_event::Column::EventKey.is_in(chunk.iter().cloned()))
                .all(&txn)
                .await?,
        );
    }
    let id_of_key: HashMap<&str, i64> = recorded.iter().map(|e| (e.event_key.as_str(), e.id)).collect();
    for (key, (_, index)) in &fresh {
        outcome.results[*index] = ItemResult::Recorded(id_of_key[key.as_str()]);
    }
    for (index, key) in repeats {
        outcome.results[index] = ItemResult::Duplicate(id_of_key[key.as_str()]);
    }
    outcome.errors.sort_by_key(|e| e.index);

    let touched: Vec<&customer::Model> = {
        let ids: BTreeSet<i64> = recorded.iter().map(|e| e.customer_id).collect();
        let by_id: HashMap<i64, &customer::Model> = customers.values().map(|c| (c.id, c)).collect();
        ids.iter().filter_map(|id| by_id.get(id).copied()).collect()
    };
    let mut runner = Runner::new(principal, limits, offset, now);
    for customer in &touched {
        let mut new_events: Vec<&customer_event::Model> =
            recorded.iter().filter(|e| e.customer_id == customer.id).collect();
        new_events.sort_by_key(|e| (e.occurred_at, e.id));
        runner.run_for(&txn, customer, &new_events).await?;
    }
    outcome.tag_changes = runner.changes;
    outcome.held_back = runner.held_back;
    outcome.deferred = runner.deferred;
    outcome.over_cap = runner.over_cap;

    let mut entry = AuditEntry::ok(principal.staff_id(), "customer_event.record", "customer_event", "");
    entry.object_id = None;
    entry.org_unit_id = principal.org.common_ancestor(touched.iter().map(|c| c.org_unit_id));
    audit::record(
        &txn,
        entry.with_detail(json!({
            "recorded": outcome.recorded(),
            "duplicates": outcome.duplicates(),
            "refused": outcome.errors.len(),
            "customerIds": touched.iter().map(|c| c.id).collect::<Vec<_>>(),
            "tagChanges": outcome.tag_changes,
            "heldBack": outcome.held_back,
            "deferred": outcome.deferred,
        })),
    )
    .await?;
    txn.commit().await?;
    Ok(outcome)
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

/// The enabled rules that apply to customers of `unit` (its own and the
/// units' above), compiled against the unit's library and ordered.
/// `adjust` may change the rows first: a dry run puts its rule in.
///
/// # Errors
/// Database errors.
pub(super) async fn rule_set_of_unit(
    db: &impl ConnectionTrait,
    org: &OrgTree,
    unit: i64,
    adjust: impl FnOnce(&mut Vec<rule::Model>),
) -> AppResult<(RuleSet, UnitLibrary)> {
    let chain: Vec<i64> = org.ancestors_or_self(unit).iter().map(|u| u.id).collect();
    // Scheduled rules run on their schedule, not on events.
    let mut rows = rule::Entity::find()
        .filter(rule::Column::Status.eq(RuleStatus::Enabled))
        .filter(rule::Column::Schedule.is_null())
        .filter(rule::Column::OrgUnitId.is_in(chain))
        .all(db)
        .await?;
    adjust(&mut rows);
    // The unit's library holds the libraries of the units above it, so
    // one load resolves every rule that applies here.
    let library = UnitLibrary::load(db, org, unit).await?;
    let compiled: Vec<_> = rows.iter().filter_map(|r| compile(r, &library)).collect();
    let exclusive = library.exclusive_of(compiled.iter().flat_map(|r| r.actions.iter().map(|a| a.tag_id)));
    Ok((RuleSet::new(compiled, exclusive), library))
}

/// Runs the rules for the customers of one batch, remembering compiled
/// rule sets per org unit.
struct Runner<'a> {
    principal: &'a Principal,
    limits: &'a Limits,
    offset: FixedOffset,
    now: DateTime<Utc>,
    sets: HashMap<i64, (RuleSet, UnitLibrary)>,
    changes: u32,
    held_back: u32,
    deferred: u32,
    over_cap: u32,
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
        }
    }

    /// The enabled rules that apply to customers of `unit`, in order.
    async fn rule_set(&mut self, txn: &DatabaseTransaction, unit: i64) -> AppResult<()> {
        if self.sets.contains_key(&unit) {
            return Ok(());
        }
        let loaded = rule_set_of_unit(txn, &self.principal.org, unit, |_| {}).await?;
        self.sets.insert(unit, loaded);
        Ok(())
    }

    async fn run_for(
        &mut self,
        txn: &DatabaseTransaction,
        customer: &customer::Model,
        new_events: &[&customer_event::Model],
    ) -> AppResult<()> {
        self.rule_set(txn, customer.org_unit_id).await?;
        let (set, library) = &self.sets[&customer.org_unit_id];
        if set.rules.is_empty() || new_events.is_empty() {
            return Ok(());
        }
        let history: Vec<EventFact> = customer_event::Entity::find()
            .filter(customer_event::Column::CustomerId.in_subquery(with_merged(customer.id)))
            .order_by_asc(customer_event::Column::OccurredAt)
            .order_by_asc(customer_event::Column::Id)
            .all(txn)
            .await?
            .into_iter()
            .map(|e| EventFact { id: e.id, kind: e.kind, occurred_at: e.occurred_at, payload: e.payload })
            .collect();
        let attributes = attributes_of(customer);
        let held: BTreeSet<i64> = customer_tag::Entity::find()
            .filter(customer_tag::Column::CustomerId.eq(customer.id))
            .all(txn)
            .await?
            .into_iter()
            .map(|a| a.tag_id)
            .collect();
        let action_tags: BTreeSet<i64> = set.rules.iter().flat_map(|r| r.actions.iter().map(|a| a.tag_id)).collect();
        let manual_removals = manual_removals(txn, customer.id, &action_tags).await?;
        let mut facts =
            Facts { events: &history, attributes: &attributes, tags: held, manual_removals, offset: self.offset };
        let locked = locked_groups(txn, customer.id, self.now).await?;
        let mut tag_events = Vec::new();
        let mut deferred = Vec::new();
        for event in new_events {
            let Some(trigger) = history.iter().find(|e| e.id == event.id) else { continue };
            let firing = fire(set, &facts, Some(trigger), trigger.occurred_at);
            self.held_back += firing.held_back.len() as u32;
            let mut tags = facts.tags.clone();
            for change in firing.changes {
                let group = library.tags.get(&change.tag_id).map(|(_, g)| g.id);
                if let Some(lock_id) = group.and_then(|g| locked.get(&g)) {
                    deferred.push(deferred_action(&change, customer.id, event.id, *lock_id, self.now));
                    continue;
                }
                match change.op {
                    TagOp::Add => {
                        if tags.len() as u32 >= self.limits.max_tags_per_customer {
                            self.over_cap += 1;
                            continue;
                        }
                        let ttl = change
                            .ttl_seconds
                            .or_else(|| library.tags.get(&change.tag_id).and_then(|(t, _)| t.ttl_seconds));
                        customer_tag::Entity::insert(customer_tag::ActiveModel {
                            customer_id: Set(customer.id),
                            tag_id: Set(change.tag_id),
                            source: Set(TagSource::Rule),
                            source_ref: Set(Some(source_ref(change.rule_id, change.rule_version, event.id))),
                            tagged_by: Set(None),
                            tagged_at: Set(self.now),
                            expires_at: Set(ttl.map(|s| self.now + Duration::seconds(s))),
                        })
                        .exec(txn)
                        .await?;
                        tags.insert(change.tag_id);
                    }
                    TagOp::Remove => {
                        customer_tag::Entity::delete_many()
                            .filter(customer_tag::Column::CustomerId.eq(customer.id))
                            .filter(customer_tag::Column::TagId.eq(change.tag_id))
                            .exec(txn)
                            .await?;
                        tags.remove(&change.tag_id);
                    }
                }
                tag_events.push(rule_event(&change, customer.id, event.id, self.principal.staff.id, self.now));
                self.changes += 1;
            }
            facts.tags = tags;
        }
        self.deferred += deferred.len() as u32;
        if !deferred.is_empty() {
            rule_deferred_action::Entity::insert_many(deferred).exec(txn).await?;
        }
        insert_events(txn, tag_events).await?;
        Ok(())
    }
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

/// Tags among `tags` that a person took off the customer (by hand or in
/// bulk) and nobody put back since.
async fn manual_removals(
    txn: &DatabaseTransaction,
    customer_id: i64,
    tags: &BTreeSet<i64>,
) -> AppResult<BTreeSet<i64>> {
    if tags.is_empty() {
        return Ok(BTreeSet::new());
    }
    let events = tag_event::Entity::find()
        .filter(tag_event::Column::CustomerId.eq(customer_id))
        .filter(tag_event::Column::TagId.is_in(tags.iter().copied()))
        .order_by_desc(tag_event::Column::Seq)
        .all(txn)
        .await?;
    Ok(removed_by_people(&events))
}

/// The customer's attributes that conditions may test.
pub(super) fn attributes_of(customer: &customer::Model) -> Attributes {
    Attributes {
        city: customer.city.clone(),
        channel: customer.channel.clone(),
        gender: Some(customer.gender),
        spend_cents: customer.total_spend_cents,
        orders: i64::from(customer.order_count),
        birth_date: customer.birth_date,
    }
}

/// Of one customer's tag events, newest first: the tags whose latest
/// change was a person taking them off (by hand or in bulk).
pub(super) fn removed_by_people<'a>(newest_first: impl IntoIterator<Item = &'a tag_event::Model>) -> BTreeSet<i64> {
    let mut seen = HashSet::new();
    let mut out = BTreeSet::new();
    for e in newest_first {
        if seen.insert(e.tag_id) && e.op == TagOp::Remove && matches!(e.source, TagSource::Manual | TagSource::Bulk) {
            out.insert(e.tag_id);
        }
    }
    out
}

/// Tag groups under a modification lock in force that covers the customer,
/// with the lock's id. Rules hold no lock, so every lock stops them.
async fn locked_groups(
    txn: &DatabaseTransaction,
    customer_id: i64,
    now: DateTime<Utc>,
) -> AppResult<BTreeMap<i64, i64>> {
    let locks = modification_lock::Entity::find()
        .filter(modification_lock::Column::ReleasedAt.is_null())
        .filter(modification_lock::Column::ExpiresAt.gt(now))
        .order_by_asc(modification_lock::Column::Id)
        .all(txn)
        .await?;
    let group_of: BTreeMap<i64, i64> = locks.iter().map(|l| (l.id, l.group_id)).collect();
    let mut out = BTreeMap::new();
    for (lock, _) in crate::service::governance::locks::coverage(txn, &locks, &[customer_id]).await? {
        out.entry(group_of[&lock]).or_insert(lock);
    }
    Ok(out)
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
    // A merged customer's events read as the kept customer's.
    let query =
        customer_event::Entity::find().filter(customer_event::Column::CustomerId.in_subquery(with_merged(customer.id)));
    crate::service::newest_first(db, query, customer_event::Column::Id, |e| e.id, "customer_event", page).await
}

/// How many events a customer has.
///
/// # Errors
/// Database errors.
pub async fn count_events_of(db: &impl ConnectionTrait, customer_id: i64) -> AppResult<u64> {
    use sea_orm::PaginatorTrait;
    Ok(customer_event::Entity::find()
        .filter(customer_event::Column::CustomerId.in_subquery(with_merged(customer_id)))
        .count(db)
        .await?)
}
