//! The in-memory segment index: the engine that answers segment
//! expressions without SQL. The database stays the source of truth: the
//! index can be dropped and rebuilt at any time and gives the same answers
//! as the SQL compiler in [`super::sql`], node kind for node kind.
//!
//! What it holds:
//! - one compressed bitmap (`roaring`) per tag and per org unit, kept
//!   current by following the tag event log's sequence numbers;
//! - customer attributes, kept current by following the customer change
//!   log (`customer_change`, written with every create and update) and new
//!   customer ids: a bitmap per distinct city, channel and gender, and
//!   compact columns indexed by customer id for birth date, spend, order
//!   count, last order and added time (a sentinel stands for NULL);
//! - loaded on first use by [`SegmentIndex::prepare`]: the ADD events of a
//!   tag sorted by time (for `taggedBetween`), and the member snapshot of a
//!   static saved segment (immutable once saved).
//!
//! It answers every node kind. The caller's visibility is applied exactly
//! as the SQL does: the result is intersected with the units it may read,
//! a tag counts only in units where its class is visible, and predicates on
//! guarded fields have been refused (`FORBIDDEN_FIELD`) while resolving.
//! It also picks member pages in the customer lists' keyset order by
//! added time or spend ([`SegmentIndex::page`]), so that only the page's
//! rows are read from the database.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use entity::{
    customer, customer_change,
    enums::{Gender, TagOp, TagSource, TagStatus},
    library_version, segment_member, tag, tag_event,
};
use roaring::RoaringBitmap;
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, FromQueryResult,
    IsolationLevel, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

mod build;
mod pg_copy;

pub use build::BuildProgress;

use super::{AgeBounds, Range, Ref, Resolved, SegmentExpr};
use crate::authz::visibility::{class_units as units_seeing_class, tag_units};
use crate::authz::{Action, Principal, Scope};
use crate::domain::tag::is_retired;
use crate::store::event_log::{Log, LogPosition, after, log_position, seen_at};

fn app_to_db(e: crate::error::AppError) -> DbErr {
    DbErr::Custom(format!("reading a log position: {e:?}"))
}

/// Log rows read per round trip while catching up.
const EVENT_BATCH: u64 = 50_000;

/// Column value standing for NULL (and for "no such customer").
const NO_DAY: i32 = i32::MIN;
const NO_TIME: i64 = i64::MIN;

/// A customer's attributes as the index reads them.
#[derive(Debug, FromQueryResult)]
struct CustomerRow {
    id: i64,
    org_unit_id: i64,
    gender: Gender,
    birth_date: Option<NaiveDate>,
    city: Option<String>,
    channel: Option<String>,
    total_spend_cents: i64,
    order_count: i32,
    last_order_at: Option<DateTime<Utc>>,
    added_at: DateTime<Utc>,
}

/// A query selecting [`CustomerRow`]s.
fn customer_rows() -> sea_orm::Select<customer::Entity> {
    customer::Entity::find()
        .select_only()
        .columns([
            customer::Column::Id,
            customer::Column::OrgUnitId,
            customer::Column::Gender,
            customer::Column::BirthDate,
            customer::Column::City,
            customer::Column::Channel,
            customer::Column::TotalSpendCents,
            customer::Column::OrderCount,
            customer::Column::LastOrderAt,
            customer::Column::AddedAt,
        ])
        // Tombstones of merged customers are members of nothing.
        .filter(customer::Column::MergedIntoId.is_null())
}

/// An instant as nanoseconds since the epoch, saturating outside
/// 1677–2262 (above [`NO_TIME`], which means NULL).
fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 { NO_TIME + 1 } else { i64::MAX })
}

/// Customer attributes that predicates read, by customer id.
#[derive(Default)]
struct Attributes {
    cities: HashMap<String, RoaringBitmap>,
    channels: HashMap<String, RoaringBitmap>,
    genders: HashMap<Gender, RoaringBitmap>,
    /// Days from the common era; [`NO_DAY`] for none.
    birth_day: Vec<i32>,
    spend: Vec<i64>,
    orders: Vec<i32>,
    /// Nanoseconds; [`NO_TIME`] for none.
    last_order: Vec<i64>,
    added: Vec<i64>,
}

impl Attributes {
    /// Stores a customer's values; `known` says whether it had some before
    /// (whose value bitmaps must then be cleared first).
    fn set(&mut self, bit: u32, row: &CustomerRow, known: bool) {
        if known {
            for b in self.cities.values_mut().chain(self.channels.values_mut()).chain(self.genders.values_mut()) {
                b.remove(bit);
            }
        }
        self.fill(bit, &build::Values::of(row));
    }

    fn bytes(&self) -> usize {
        let bitmaps: usize = self
            .cities
            .values()
            .chain(self.channels.values())
            .chain(self.genders.values())
            .map(RoaringBitmap::serialized_size)
            .sum();
        bitmaps + self.added.len() * (4 + 8 + 4 + 8 + 8)
    }
}

/// The ADD events of one tag, sorted by time: who was given it when.
#[derive(Default)]
struct Timeline {
    times: Vec<i64>,
    customers: Vec<u32>,
}

impl Timeline {
    fn insert(&mut self, time: i64, customer: u32) {
        let at = self.times.partition_point(|t| *t <= time);
        self.times.insert(at, time);
        self.customers.insert(at, customer);
    }

    /// Customers given the tag between the two instants, both included.
    fn between(&self, from: i64, to: i64) -> RoaringBitmap {
        let start = self.times.partition_point(|t| *t < from);
        let end = self.times.partition_point(|t| *t <= to);
        self.customers.get(start..end.max(start)).unwrap_or_default().iter().copied().collect()
    }
}

/// The member snapshot of a static segment, tied to the segment row it was
/// read for (ids can be reused after a delete on SQLite).
struct Snapshot {
    created_at: DateTime<Utc>,
    members: RoaringBitmap,
}

#[derive(Default)]
struct State {
    tags: HashMap<i64, RoaringBitmap>,
    units: HashMap<i64, RoaringBitmap>,
    /// Every customer the index holds.
    known: RoaringBitmap,
    attributes: Attributes,
    /// Loaded on first use, then followed.
    timelines: HashMap<i64, Timeline>,
    /// Loaded on first use; never change.
    snapshots: HashMap<i64, Snapshot>,
    /// Tags of each group, from the tag rows seen so far; a tag's new
    /// version (a move is one) makes the follower re-read its group.
    group_tags: HashMap<i64, Vec<i64>>,
    /// Where the tag event log has been read to.
    events: LogPosition,
    /// The last tag version (`library_version.id`) followed.
    last_version: i64,
    /// Customers in (added time, id) order as of the last build, for pages
    /// of large segments: walking it and testing membership finds the
    /// newest 50 of 40,000 members without looking at the other 39,950.
    /// Each with its added time at the build.
    by_added: Vec<(i64, u32)>,
    /// Customers put since (or whose added time changed): not in
    /// `by_added`'s order, so every page considers all of them.
    added_since: RoaringBitmap,
    /// Where the customer change log has been read to.
    changes: LogPosition,
    last_customer: i64,
    last_tag: i64,
    /// PostgreSQL keeps instants to the microsecond and truncates the
    /// bounds it is given; SQLite keeps what it is given.
    micros: bool,
    /// Unions of unit bitmaps by unit set (a caller's universe, a class's
    /// units), reused until a customer is added.
    unions: HashMap<Vec<i64>, Arc<RoaringBitmap>>,
}

impl State {
    /// Adds a customer, or refreshes the attributes of one already held.
    /// Customers do not move between org units.
    fn put(&mut self, row: &CustomerRow) {
        let Some(bit) = id32(row.id) else { return };
        let known = self.known.contains(bit);
        if self.attributes.added.get(bit as usize).copied() != Some(nanos(row.added_at)) {
            self.added_since.insert(bit);
        }
        if !known {
            self.units.entry(row.org_unit_id).or_default().insert(bit);
            self.known.insert(bit);
            self.unions.clear();
        }
        self.attributes.set(bit, row, known);
    }

    /// Drops a customer merged into `kept`: out of every bitmap, and in a
    /// static segment's snapshot the kept customer takes its place (the
    /// database's `segment_member` rows moved the same way).
    fn forget(&mut self, customer: i64, kept: i64) {
        let Some(bit) = id32(customer) else { return };
        if !self.known.remove(bit) {
            return;
        }
        for b in self.units.values_mut().chain(self.tags.values_mut()) {
            b.remove(bit);
        }
        let a = &mut self.attributes;
        for b in a.cities.values_mut().chain(a.channels.values_mut()).chain(a.genders.values_mut()) {
            b.remove(bit);
        }
        self.added_since.remove(bit);
        for snapshot in self.snapshots.values_mut() {
            if snapshot.members.remove(bit)
                && let Some(kept) = id32(kept)
            {
                snapshot.members.insert(kept);
            }
        }
        self.unions.clear();
    }

    /// An instant given in an expression, as the database compares it.
    fn bound(&self, t: DateTime<Utc>) -> i64 {
        let n = nanos(t);
        if self.micros { n.div_euclid(1000).saturating_mul(1000) } else { n }
    }
}

/// What [`SegmentIndex::stats`] reports.
#[derive(Debug, Clone, Copy)]
pub struct IndexStats {
    /// Tag and org-unit bitmaps.
    pub bitmaps: usize,
    pub customers: u64,
    /// As [`SegmentIndex::memory_bytes`].
    pub bytes: usize,
    /// The last tag event applied.
    pub applied_seq: i64,
}

/// The index, shared by all requests of an instance.
#[derive(Default)]
pub struct SegmentIndex {
    state: RwLock<State>,
    ready: AtomicBool,
    /// Serialises catch-ups and loads, so two never apply the same events.
    catching_up: tokio::sync::Mutex<()>,
    /// Catch-ups asked for, and the latest of them a finished catch-up
    /// covered: concurrent writers share one catch-up (see
    /// [`SegmentIndex::catch_up`]).
    catch_ups_asked: AtomicU64,
    catch_ups_covered: AtomicU64,
    /// How far a running build is (shared with its progress logger).
    progress: Arc<build::Progress>,
}

fn id32(id: i64) -> Option<u32> {
    u32::try_from(id).ok()
}

/// The largest sequence number of a log, 0 when empty.
async fn max_seq<E: EntityTrait>(db: &impl ConnectionTrait, seq: E::Column) -> Result<i64, DbErr>
where
    E::Column: ColumnTrait,
{
    Ok(E::find()
        .select_only()
        .column_as(seq.max(), "m")
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten()
        .unwrap_or(0))
}

impl SegmentIndex {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// True once the first build finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// How far the running build is; `None` when none runs.
    pub fn build_progress(&self) -> Option<BuildProgress> {
        self.progress.get()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the tag events, customer changes and new customers written
    /// since the last call. Cheap when nothing changed (a handful of
    /// indexed queries in one read-only transaction).
    ///
    /// The logs are read in one snapshot (PostgreSQL: `REPEATABLE READ`),
    /// from the place the last call left them to that snapshot: every row
    /// of every transaction committed in between, in sequence order, even
    /// one whose sequence number is below rows read before (writers do not
    /// wait for each other; see docs/write-path.md).
    ///
    /// # Errors
    /// Database errors.
    ///
    /// Concurrent callers share the work: a call is answered by any
    /// catch-up whose snapshot began after the call began (so after the
    /// caller's own commit), not necessarily its own. Under many writers
    /// each waits for at most the running catch-up and the next one,
    /// instead of one catch-up each in a queue.
    pub async fn catch_up(&self, outer: &DatabaseConnection) -> Result<(), DbErr> {
        let ticket = self.catch_ups_asked.fetch_add(1, Ordering::AcqRel) + 1;
        let _guard = self.catching_up.lock().await;
        if self.catch_ups_covered.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        // Every call with a ticket up to here began before this snapshot.
        let covers = self.catch_ups_asked.load(Ordering::Acquire);
        self.catch_up_locked(outer).await?;
        self.catch_ups_covered.fetch_max(covers, Ordering::AcqRel);
        Ok(())
    }

    /// [`SegmentIndex::catch_up`]'s work, under the catch-up lock.
    async fn catch_up_locked(&self, outer: &DatabaseConnection) -> Result<(), DbErr> {
        let txn = if outer.get_database_backend() == DbBackend::Postgres {
            outer.begin_with_config(Some(IsolationLevel::RepeatableRead), Some(AccessMode::ReadOnly)).await?
        } else {
            outer.begin().await?
        };
        let db = &txn;
        // The snapshot this reading ends at: its first statement fixes it.
        let to = log_position(db, Log::TagEvents).await.map_err(app_to_db)?;
        let (from_events, from_changes) = {
            let s = self.read();
            (s.events.clone(), s.changes.clone())
        };
        // Sequence numbers within the reading, for pages.
        let (mut event_page, mut change_page) = (0_i64, 0_i64);
        loop {
            let (last_customer, last_tag, last_version) = {
                let s = self.read();
                (s.last_customer, s.last_tag, s.last_version)
            };
            let events = tag_event::Entity::find()
                .filter(after(Log::TagEvents, &from_events))
                .filter(tag_event::Column::Seq.gt(event_page))
                .order_by_asc(tag_event::Column::Seq)
                .limit(EVENT_BATCH)
                .all(db)
                .await?;
            let changes: Vec<(i64, i64)> = customer_change::Entity::find()
                .select_only()
                .columns([customer_change::Column::Seq, customer_change::Column::CustomerId])
                .filter(after(Log::CustomerChanges, &from_changes))
                .filter(customer_change::Column::Seq.gt(change_page))
                .order_by_asc(customer_change::Column::Seq)
                .limit(EVENT_BATCH)
                .into_tuple()
                .all(db)
                .await?;
            // New customers (bulk loads write no change rows), and the
            // current rows of changed ones, read after their change rows.
            let changed: HashSet<i64> = changes.iter().map(|(_, c)| *c).collect();
            let mut rows = customer_rows()
                .filter(customer::Column::Id.gt(last_customer))
                .order_by_asc(customer::Column::Id)
                .into_model::<CustomerRow>()
                .all(db)
                .await?;
            let older: Vec<i64> = changed.into_iter().filter(|c| *c <= last_customer).collect();
            let mut merged: Vec<(i64, i64)> = Vec::new();
            for chunk in older.chunks(1000) {
                rows.extend(
                    customer_rows()
                        .filter(customer::Column::Id.is_in(chunk.iter().copied()))
                        .into_model::<CustomerRow>()
                        .all(db)
                        .await?,
                );
                let tombstones: Vec<(i64, Option<i64>)> = customer::Entity::find()
                    .select_only()
                    .columns([customer::Column::Id, customer::Column::MergedIntoId])
                    .filter(customer::Column::Id.is_in(chunk.iter().copied()))
                    .filter(customer::Column::MergedIntoId.is_not_null())
                    .into_tuple()
                    .all(db)
                    .await?;
                merged.extend(tombstones.into_iter().filter_map(|(id, kept)| Some((id, kept?))));
            }
            let new_tags: Vec<(i64, Option<i64>, TagStatus)> = tag::Entity::find()
                .select_only()
                .columns([tag::Column::Id, tag::Column::GroupId, tag::Column::Status])
                .filter(tag::Column::Id.gt(last_tag))
                .order_by_asc(tag::Column::Id)
                .into_tuple()
                .all(db)
                .await?;
            // Tags with new versions since: their group may have changed.
            let versions: Vec<(i64, i64)> = library_version::Entity::find()
                .select_only()
                .columns([library_version::Column::Id, library_version::Column::ObjectId])
                .filter(library_version::Column::Id.gt(last_version))
                .filter(library_version::Column::ObjectKind.eq(TAG_VERSION))
                .order_by_asc(library_version::Column::Id)
                .limit(EVENT_BATCH)
                .into_tuple()
                .all(db)
                .await?;
            // A retired tag counts for no group.
            let revised: Vec<(i64, Option<i64>, TagStatus)> = if versions.is_empty() {
                Vec::new()
            } else {
                tag::Entity::find()
                    .select_only()
                    .columns([tag::Column::Id, tag::Column::GroupId, tag::Column::Status])
                    .filter(tag::Column::Id.is_in(versions.iter().map(|(_, t)| *t).filter(|t| *t <= last_tag)))
                    .into_tuple()
                    .all(db)
                    .await?
            };
            let more = events.len() as u64 == EVENT_BATCH
                || changes.len() as u64 == EVENT_BATCH
                || versions.len() as u64 == EVENT_BATCH;
            let done = {
                let mut s = self.write();
                for (id, group, status) in revised {
                    for members in s.group_tags.values_mut() {
                        members.retain(|t| *t != id);
                    }
                    if let Some(group) = group.filter(|_| !is_retired(status)) {
                        s.group_tags.entry(group).or_default().push(id);
                    }
                }
                if let Some((id, _)) = versions.last() {
                    s.last_version = *id;
                }
                for (id, group, status) in new_tags {
                    if let Some(group) = group.filter(|_| !is_retired(status)) {
                        s.group_tags.entry(group).or_default().push(id);
                    }
                    s.last_tag = s.last_tag.max(id);
                }
                for row in &rows {
                    s.put(row);
                    s.last_customer = s.last_customer.max(row.id);
                }
                for (id, kept) in &merged {
                    s.forget(*id, *kept);
                }
                if let Some((seq, _)) = changes.last() {
                    change_page = *seq;
                    s.changes.seq = s.changes.seq.max(*seq);
                }
                if let Some(e) = events.last() {
                    event_page = e.seq;
                }
                for e in events {
                    apply_event(&mut s, &e);
                }
                if !more {
                    // Everything the snapshot shows is applied: it is the place
                    // the next reading starts from.
                    if to.snapshot.is_some() {
                        s.events.snapshot.clone_from(&to.snapshot);
                        s.changes.snapshot.clone_from(&to.snapshot);
                    }
                }
                !more
            };
            if done {
                txn.commit().await?;
                return Ok(());
            }
        }
    }

    /// Loads what an expression needs beyond what the index always holds:
    /// the event timelines of tags in `taggedBetween` and the snapshots of
    /// static segments. Runs no statement when they are loaded already.
    ///
    /// # Errors
    /// Database errors.
    pub async fn prepare(&self, db: &impl ConnectionTrait, resolved: &Resolved) -> Result<(), DbErr> {
        let mut timelines = HashSet::new();
        let mut snapshots = HashMap::new();
        needs(resolved, &mut timelines, &mut snapshots);
        {
            let s = self.read();
            timelines.retain(|t| !s.timelines.contains_key(t));
            snapshots.retain(|id, created| s.snapshots.get(id).is_none_or(|snap| snap.created_at != *created));
        }
        if timelines.is_empty() && snapshots.is_empty() {
            return Ok(());
        }
        // Under the catch-up lock: a timeline read up to the applied place
        // continued by the next catch-up, with nothing lost or doubled.
        let _guard = self.catching_up.lock().await;
        let applied = self.read().events.clone();
        for tag_id in timelines {
            let events: Vec<(i64, DateTime<Utc>)> = tag_event::Entity::find()
                .select_only()
                .columns([tag_event::Column::CustomerId, tag_event::Column::OccurredAt])
                .filter(tag_event::Column::TagId.eq(tag_id))
                .filter(tag_event::Column::Op.eq(TagOp::Add))
                .filter(tag_event::Column::Source.ne(TagSource::Merge))
                .filter(seen_at(Log::TagEvents, &applied))
                .into_tuple()
                .all(db)
                .await?;
            // Sorted here, by instant: SQLite would sort its text form.
            let mut events: Vec<(i64, u32)> =
                events.into_iter().filter_map(|(customer, at)| Some((nanos(at), id32(customer)?))).collect();
            events.sort_unstable();
            let timeline = Timeline {
                times: events.iter().map(|(t, _)| *t).collect(),
                customers: events.iter().map(|(_, c)| *c).collect(),
            };
            self.write().timelines.insert(tag_id, timeline);
        }
        for (segment_id, created_at) in snapshots {
            let members: Vec<i64> = segment_member::Entity::find()
                .select_only()
                .column(segment_member::Column::CustomerId)
                .filter(segment_member::Column::SegmentId.eq(segment_id))
                .into_tuple()
                .all(db)
                .await?;
            let members = members.into_iter().filter_map(id32).collect();
            self.write().snapshots.insert(segment_id, Snapshot { created_at, members });
        }
        Ok(())
    }

    /// Builds the index in the background, then follows the logs every
    /// `interval`, so that writes of other instances show within about
    /// that time. `/healthz` answers meanwhile; `/readyz` waits for it.
    pub fn spawn_follower(self: &Arc<Self>, db: DatabaseConnection, interval: Duration) {
        let index = Arc::clone(self);
        tokio::spawn(async move {
            while let Err(err) = index.rebuild(&db).await {
                tracing::error!(error = %err, "building the segment index failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            tracing::info!("segment index ready");
            loop {
                tokio::time::sleep(interval).await;
                if let Err(err) = index.catch_up(&db).await {
                    tracing::warn!(error = %err, "following the tag event log failed");
                }
            }
        });
    }

    /// Every tag's holders as the index has them (tags held by nobody left
    /// out), by tag id: to check a follower against a fresh build.
    pub fn tag_holders(&self) -> std::collections::BTreeMap<i64, RoaringBitmap> {
        let s = self.read();
        s.tags.iter().filter(|(_, b)| !b.is_empty()).map(|(t, b)| (*t, b.clone())).collect()
    }

    /// Sizes and log position, for metrics.
    pub fn stats(&self) -> IndexStats {
        let bytes = self.memory_bytes();
        let s = self.read();
        IndexStats { bitmaps: s.tags.len() + s.units.len(), customers: s.known.len(), bytes, applied_seq: s.events.seq }
    }

    /// Bytes the index takes: bitmaps (serialized size, close to the heap
    /// size), attribute columns, timelines and snapshots.
    pub fn memory_bytes(&self) -> usize {
        let s = self.read();
        let bitmaps: usize = s.tags.values().chain(s.units.values()).map(RoaringBitmap::serialized_size).sum();
        let timelines: usize = s.timelines.values().map(|t| t.times.len() * 12).sum();
        let snapshots: usize = s.snapshots.values().map(|s| s.members.serialized_size()).sum();
        let order = s.by_added.len() * std::mem::size_of::<(i64, u32)>() + s.added_since.serialized_size();
        bitmaps + s.attributes.bytes() + timelines + snapshots + order
    }

    /// The members of a resolved expression that the caller may see, with
    /// dates read in `offset` (as the SQL evaluation does); `None` when the
    /// index is not ready or lacks what [`prepare`](Self::prepare) loads.
    pub fn evaluate(&self, principal: &Principal, resolved: &Resolved, offset: FixedOffset) -> Option<RoaringBitmap> {
        if !self.is_ready() {
            return None;
        }
        let read_scope = principal.scope(Action::CustomerRead);
        let universe = self.union_of(read_scope.unit_ids());
        let s = self.read();
        let today = Utc::now().with_timezone(&offset).date_naive();
        let evaluator =
            Evaluator { s: &s, principal, read_scope: &read_scope, universe: &universe, today, as_of: None };
        let members = evaluator.eval(resolved, &resolved.expr)?;
        Some(members & universe.as_ref())
    }

    /// As [`evaluate`](Self::evaluate), with the holders of tags as they
    /// were at a past instant (`holders`, replayed from the tag event log
    /// by the caller) in place of the current ones: tags and groups read
    /// `holders` (a tag missing from it was held by nobody); every other
    /// predicate reads the customers as they are now.
    pub fn evaluate_as_of(
        &self,
        principal: &Principal,
        resolved: &Resolved,
        offset: FixedOffset,
        holders: &HashMap<i64, RoaringBitmap>,
    ) -> Option<RoaringBitmap> {
        if !self.is_ready() {
            return None;
        }
        let read_scope = principal.scope(Action::CustomerRead);
        let universe = self.union_of(read_scope.unit_ids());
        let s = self.read();
        let today = Utc::now().with_timezone(&offset).date_naive();
        let evaluator =
            Evaluator { s: &s, principal, read_scope: &read_scope, universe: &universe, today, as_of: Some(holders) };
        let members = evaluator.eval(resolved, &resolved.expr)?;
        Some(members & universe.as_ref())
    }

    /// The tags of each group, as the index follows them (for replaying a
    /// group's holders at a past instant).
    pub fn tags_of_group(&self, group_id: i64) -> Vec<i64> {
        self.read().group_tags.get(&group_id).cloned().unwrap_or_default()
    }

    /// Cross analysis: for every pair of the tags (a tag with itself
    /// included), how many customers hold both — among `members` when
    /// given, always among those the caller may read, each tag counted only
    /// where the caller sees its visibility class (`None` for personal
    /// tags: seen by their owner wherever they are). `None` when the index
    /// is not ready.
    pub fn cooccurrence(
        &self,
        principal: &Principal,
        members: Option<&RoaringBitmap>,
        tags: &[(i64, Option<&str>)],
    ) -> Option<Vec<(i64, i64, u64)>> {
        if !self.is_ready() {
            return None;
        }
        let read_scope = principal.scope(Action::CustomerRead);
        let universe = self.union_of(read_scope.unit_ids());
        let base = match members {
            Some(m) => m & universe.as_ref(),
            None => universe.as_ref().clone(),
        };
        let s = self.read();
        let holders: Vec<(i64, RoaringBitmap)> = tags
            .iter()
            .map(|(id, class)| {
                let mut held = s.tags.get(id).map_or_else(RoaringBitmap::new, |b| b & &base);
                if let Some(units) = class.and_then(|c| class_units(&s, principal, &read_scope, c)) {
                    held &= units;
                }
                (*id, held)
            })
            .collect();
        let mut out = Vec::new();
        for (i, (a, ha)) in holders.iter().enumerate() {
            for (b, hb) in &holders[i..] {
                let (x, y) = (Ord::min(*a, *b), Ord::max(*a, *b));
                out.push((x, y, ha.intersection_len(hb)));
            }
        }
        out.sort_unstable();
        out.dedup();
        Some(out)
    }

    /// How many customers the caller may read hold the tag, counting only
    /// customers of `units` when given (where the caller sees the tag's
    /// class); `None` when the index is not ready.
    pub fn holders_within(&self, principal: &Principal, tag_id: i64, units: Option<&Scope>) -> Option<u64> {
        if !self.is_ready() {
            return None;
        }
        let read_scope = principal.scope(Action::CustomerRead);
        let universe = self.union_of(read_scope.unit_ids());
        let seen = units.filter(|u| !u.covers(&read_scope)).map(|u| self.union_of(u.unit_ids()));
        let s = self.read();
        let Some(holders) = s.tags.get(&tag_id) else { return Some(0) };
        Some(match seen {
            Some(seen) => (holders & universe.as_ref()).intersection_len(&seen),
            None => holders.intersection_len(&universe),
        })
    }

    /// The customers of a set of org units as the index holds them; `None`
    /// when the index is not ready. Reports use it as the base their
    /// holders are counted in (a caller's scope within an org subtree).
    pub fn customers_of_units(&self, units: impl Iterator<Item = i64>) -> Option<Arc<RoaringBitmap>> {
        if !self.is_ready() {
            return None;
        }
        Some(self.union_of(units))
    }

    /// The holders of each tag among `base`, each counted only among the
    /// customers of its `units` when given (where the caller sees the
    /// tag's class); `None` when the index is not ready.
    pub fn holders_among(
        &self,
        base: &RoaringBitmap,
        tags: &[(i64, Option<Arc<Scope>>)],
    ) -> Option<HashMap<i64, RoaringBitmap>> {
        if !self.is_ready() {
            return None;
        }
        let seen: Vec<Option<Arc<RoaringBitmap>>> =
            tags.iter().map(|(_, units)| units.as_ref().map(|u| self.union_of(u.unit_ids()))).collect();
        let s = self.read();
        Some(
            tags.iter()
                .zip(seen)
                .map(|((id, _), seen)| {
                    let mut held = s.tags.get(id).map_or_else(RoaringBitmap::new, |b| b & base);
                    if let Some(seen) = seen {
                        held &= seen.as_ref();
                    }
                    (*id, held)
                })
                .collect(),
        )
    }

    /// Ids of the first `limit` members in the order of a key the index
    /// holds, ties broken by id, strictly after `after` (a key as
    /// [`page_key`] gives it, and an id): the keyset order of customer
    /// lists, ascending or descending. One pass over the members.
    pub fn page(
        &self,
        members: &RoaringBitmap,
        key: PageKey,
        descending: bool,
        after: Option<(i64, i64)>,
        limit: usize,
    ) -> Vec<i64> {
        let s = self.read();
        if key == PageKey::AddedAt && walking_pays(members.len(), s.by_added.len(), limit) {
            return s.page_by_added(members, descending, after, limit);
        }
        let column: &[i64] = match key {
            PageKey::AddedAt => &s.attributes.added,
            PageKey::TotalSpend => &s.attributes.spend,
        };
        let positions =
            members.iter().map(|bit| (column.get(bit as usize).copied().unwrap_or(NO_TIME), i64::from(bit)));
        if descending {
            let after = after.map(std::cmp::Reverse);
            let found = smallest(positions.map(std::cmp::Reverse).filter(|p| after.is_none_or(|a| *p > a)), limit);
            found.into_iter().map(|std::cmp::Reverse((_, id))| id).collect()
        } else {
            smallest(positions.filter(|p| after.is_none_or(|a| *p > a)), limit).into_iter().map(|(_, id)| id).collect()
        }
    }

    /// The customers of a set of units, cached until a customer is added.
    fn union_of(&self, units: impl Iterator<Item = i64>) -> Arc<RoaringBitmap> {
        let mut key: Vec<i64> = units.collect();
        key.sort_unstable();
        if let Some(hit) = self.read().unions.get(&key) {
            return Arc::clone(hit);
        }
        let mut s = self.write();
        let union = Arc::new(union_of_units(&s, key.iter().copied()));
        s.unions.insert(key, Arc::clone(&union));
        union
    }
}

/// True when walking the whole order until `limit` members turn up is
/// expected to look at fewer customers than the members are (a walk meets
/// a member every `customers / members` steps).
fn walking_pays(members: u64, customers: usize, limit: usize) -> bool {
    let members = members as f64;
    members > 0.0 && (limit as f64) * (customers as f64) / members * 4.0 < members
}

impl State {
    /// [`SegmentIndex::page`] by added time, walking `by_added` from the
    /// right end and testing membership, merged with the customers put
    /// since the order was built (each considered, there are few).
    fn page_by_added(
        &self,
        members: &RoaringBitmap,
        descending: bool,
        after: Option<(i64, i64)>,
        limit: usize,
    ) -> Vec<i64> {
        let added = &self.attributes.added;
        let key = |bit: u32| (added.get(bit as usize).copied().unwrap_or(NO_TIME), i64::from(bit));
        let past = |k: (i64, i64)| match after {
            None => true,
            Some(a) if descending => k < a,
            Some(a) => k > a,
        };
        // Members put since the build: ordered here.
        let recent: Vec<(i64, i64)> = {
            let mut recent: Vec<(i64, i64)> =
                (members & &self.added_since).iter().map(key).filter(|k| past(*k)).collect();
            recent.sort_unstable();
            if descending {
                recent.reverse();
            }
            recent
        };
        // The ordered walk, from where `after` points, skipping customers
        // whose place in the order is stale.
        let start = after.map(|a| self.by_added.partition_point(|(t, bit)| (*t, i64::from(*bit)) < a));
        let fresh = |(_, bit): &&(i64, u32)| members.contains(*bit) && !self.added_since.contains(*bit);
        let as_key = |(t, bit): &(i64, u32)| (*t, i64::from(*bit));
        let walked: Box<dyn Iterator<Item = (i64, i64)>> = if descending {
            let end = start.unwrap_or(self.by_added.len());
            Box::new(self.by_added[..end].iter().rev().filter(fresh).map(as_key).filter(|k| past(*k)))
        } else {
            let from = start.unwrap_or(0);
            Box::new(self.by_added[from..].iter().filter(fresh).map(as_key).filter(|k| past(*k)))
        };
        // Merge the two ordered streams.
        let mut out = Vec::with_capacity(limit);
        let mut walked = walked.peekable();
        let mut recent = recent.into_iter().peekable();
        while out.len() < limit {
            let next = match (walked.peek(), recent.peek()) {
                (None, None) => break,
                (Some(_), None) => walked.next(),
                (None, Some(_)) => recent.next(),
                (Some(w), Some(r)) => {
                    if (*w < *r) != descending {
                        walked.next()
                    } else {
                        recent.next()
                    }
                }
            };
            if let Some((_, id)) = next {
                out.push(id);
            }
        }
        out
    }
}

/// A key of customer lists that the index holds a column of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKey {
    AddedAt,
    TotalSpend,
}

/// An added time as [`SegmentIndex::page`] compares it.
pub fn page_key(t: DateTime<Utc>) -> i64 {
    nanos(t)
}

/// The `limit` smallest items, in order (a bounded max-heap).
fn smallest<K: Ord>(items: impl Iterator<Item = K>, limit: usize) -> Vec<K> {
    let mut heap = std::collections::BinaryHeap::with_capacity(limit + 1);
    for item in items {
        if heap.len() < limit {
            heap.push(item);
        } else if heap.peek().is_some_and(|top| item < *top) {
            heap.pop();
            heap.push(item);
        }
    }
    heap.into_sorted_vec()
}

/// `library_version.object_kind` of tag versions.
const TAG_VERSION: &str = "TAG";

fn apply_event(s: &mut State, e: &tag_event::Model) {
    if let Some(bit) = id32(e.customer_id) {
        let bitmap = s.tags.entry(e.tag_id).or_default();
        match e.op {
            TagOp::Add => bitmap.insert(bit),
            TagOp::Remove => bitmap.remove(bit),
        };
        // A merge's moves are not taggings: a timeline holds when
        // customers were tagged.
        if e.op == TagOp::Add
            && e.source != TagSource::Merge
            && let Some(timeline) = s.timelines.get_mut(&e.tag_id)
        {
            timeline.insert(nanos(e.occurred_at), bit);
        }
    }
    // On SQLite the newest sequence number applied is the place itself.
    s.events.seq = s.events.seq.max(e.seq);
}

/// Tags whose timelines and static segments whose snapshots an expression
/// needs, through the dynamic segments it uses.
fn needs(resolved: &Resolved, timelines: &mut HashSet<i64>, snapshots: &mut HashMap<i64, DateTime<Utc>>) {
    resolved.expr.walk(&mut |e| match e {
        SegmentExpr::TaggedBetween { tag: Ref::Id(id), .. } => {
            timelines.extend(resolved.tag_family(*id));
        }
        SegmentExpr::Segment(Ref::Id(id)) => match resolved.segments.get(id) {
            Some(saved) if saved.is_static() => {
                snapshots.insert(saved.saved.id, saved.saved.created_at);
            }
            Some(saved) => needs(&saved.inner, timelines, snapshots),
            None => {}
        },
        _ => {}
    });
}

fn union_of_units(s: &State, units: impl Iterator<Item = i64>) -> RoaringBitmap {
    let mut out = RoaringBitmap::new();
    for unit in units {
        if let Some(b) = s.units.get(&unit) {
            out |= b;
        }
    }
    out
}

struct Evaluator<'a> {
    s: &'a State,
    principal: &'a Principal,
    read_scope: &'a Scope,
    universe: &'a RoaringBitmap,
    /// Today in the expression's time zone (for ages).
    today: NaiveDate,
    /// Holders as of a past instant, replacing the current ones
    /// ([`SegmentIndex::evaluate_as_of`]).
    as_of: Option<&'a HashMap<i64, RoaringBitmap>>,
}

/// Customers of the units where the caller may see the class; `None` when
/// that covers all it may read anyway (results are intersected with its
/// universe at the end), which spares a union on the hot path.
fn class_units(s: &State, principal: &Principal, read_scope: &Scope, class: &str) -> Option<RoaringBitmap> {
    let classes = units_seeing_class(principal, class);
    if classes.covers(read_scope) {
        return None;
    }
    Some(union_of_units(s, classes.unit_ids()))
}

/// A scanned predicate, ready to test customers against.
enum Test<'e> {
    Age(AgeBounds),
    Spend(&'e Range<i64>),
    Orders(&'e Range<i64>),
    LastOrderBefore(i64),
    LastOrderAfter(i64),
    AddedBefore(i64),
    AddedAfter(i64),
}

/// A predicate answered by testing each candidate's column value.
fn is_scan(e: &SegmentExpr) -> bool {
    matches!(
        e,
        SegmentExpr::Age(_)
            | SegmentExpr::Spend(_)
            | SegmentExpr::Orders(_)
            | SegmentExpr::LastOrderBefore(_)
            | SegmentExpr::LastOrderAfter(_)
            | SegmentExpr::AddedBefore(_)
            | SegmentExpr::AddedAfter(_)
    )
}

impl Evaluator<'_> {
    /// Customers of the units where the caller may see the class; `None`
    /// when that covers all it may read anyway (the result is intersected
    /// with its universe at the end), which spares a union on the hot path.
    fn class_units(&self, class: &str) -> Option<RoaringBitmap> {
        class_units(self.s, self.principal, self.read_scope, class)
    }

    /// `members`, limited to where the caller may see the tag (see
    /// [`tag_units`]).
    fn where_tag_visible(&self, resolved: &Resolved, tag: i64, members: RoaringBitmap) -> RoaringBitmap {
        let group = resolved.tags.get(&tag).and_then(|t| t.group.as_ref());
        match tag_units(self.principal, group) {
            Some(units) if !units.covers(self.read_scope) => members & union_of_units(self.s, units.unit_ids()),
            _ => members,
        }
    }

    /// Holders of the tag, where the caller may see it.
    fn holds(&self, resolved: &Resolved, r: &Ref) -> Option<RoaringBitmap> {
        let Ref::Id(id) = r else { return None };
        if let Some(past) = self.as_of {
            // A tag retired since was held then.
            let holders = past.get(id).cloned().unwrap_or_default();
            return Some(self.where_tag_visible(resolved, *id, holders));
        }
        if resolved.tags.get(id).is_some_and(|t| is_retired(t.tag.status)) {
            return Some(RoaringBitmap::new());
        }
        let holders = self.s.tags.get(id).cloned().unwrap_or_default();
        Some(self.where_tag_visible(resolved, *id, holders))
    }

    /// A scanned predicate with its bounds worked out once.
    fn test_of<'e>(&self, e: &'e SegmentExpr) -> Option<Test<'e>> {
        Some(match e {
            SegmentExpr::Age(r) => Test::Age(AgeBounds::new(r, self.today)),
            SegmentExpr::Spend(r) => Test::Spend(r),
            SegmentExpr::Orders(r) => Test::Orders(r),
            SegmentExpr::LastOrderBefore(t) => Test::LastOrderBefore(self.s.bound(*t)),
            SegmentExpr::LastOrderAfter(t) => Test::LastOrderAfter(self.s.bound(*t)),
            SegmentExpr::AddedBefore(t) => Test::AddedBefore(self.s.bound(*t)),
            SegmentExpr::AddedAfter(t) => Test::AddedAfter(self.s.bound(*t)),
            _ => return None,
        })
    }

    /// Whether customer `i` passes a test. Mirrors the SQL: a NULL value
    /// never matches, so `NOT` stays two-valued.
    fn passes(&self, test: &Test<'_>, i: usize) -> bool {
        let a = &self.s.attributes;
        let time = |column: &[i64]| column.get(i).copied().filter(|v| *v != NO_TIME);
        match test {
            Test::Age(bounds) => {
                let day = a.birth_day.get(i).copied().filter(|d| *d != NO_DAY);
                bounds.contains(day.and_then(NaiveDate::from_num_days_from_ce_opt))
            }
            Test::Spend(r) => a.spend.get(i).is_some_and(|v| r.contains(*v)),
            Test::Orders(r) => a.orders.get(i).is_some_and(|v| r.contains(i64::from(*v))),
            Test::LastOrderBefore(t) => time(&a.last_order).is_some_and(|v| v < *t),
            Test::LastOrderAfter(t) => time(&a.last_order).is_some_and(|v| v > *t),
            Test::AddedBefore(t) => time(&a.added).is_some_and(|v| v < *t),
            Test::AddedAfter(t) => time(&a.added).is_some_and(|v| v > *t),
        }
    }

    /// The candidates that pass every test, in one pass (candidates come
    /// in order: appending beats inserting one by one).
    fn scan_all(&self, tests: &[Test<'_>], candidates: &RoaringBitmap) -> RoaringBitmap {
        RoaringBitmap::from_sorted_iter(
            candidates.iter().filter(|bit| tests.iter().all(|t| self.passes(t, *bit as usize))),
        )
        .expect("a bitmap iterates in order")
    }

    /// The candidates for which a scanned predicate holds.
    fn scan(&self, e: &SegmentExpr, candidates: &RoaringBitmap) -> RoaringBitmap {
        match self.test_of(e) {
            Some(test) => self.scan_all(&[test], candidates),
            None => RoaringBitmap::new(),
        }
    }

    /// Members of an `and`: the bitmap items intersected first, then the
    /// scanned predicates tested on what is left.
    fn all_of(&self, resolved: &Resolved, items: &[SegmentExpr]) -> Option<RoaringBitmap> {
        let mut acc: Option<RoaringBitmap> = None;
        for item in items.iter().filter(|i| !is_scan(i)) {
            let members = self.eval(resolved, item)?;
            acc = Some(match acc {
                Some(a) => a & members,
                None => members,
            });
        }
        let acc = acc.unwrap_or_else(|| self.universe.clone());
        let tests: Vec<Test<'_>> = items.iter().filter_map(|i| self.test_of(i)).collect();
        if tests.is_empty() {
            return Some(acc);
        }
        Some(self.scan_all(&tests, &acc))
    }

    fn value_bitmap(map: &HashMap<String, RoaringBitmap>, value: &str) -> RoaringBitmap {
        map.get(value).cloned().unwrap_or_default()
    }

    fn eval(&self, resolved: &Resolved, e: &SegmentExpr) -> Option<RoaringBitmap> {
        Some(match e {
            SegmentExpr::And(items) => self.all_of(resolved, items)?,
            SegmentExpr::Or(items) => {
                let mut acc = RoaringBitmap::new();
                for item in items {
                    acc |= self.eval(resolved, item)?;
                }
                acc
            }
            SegmentExpr::Not(inner) => self.universe - self.eval(resolved, inner)?,
            SegmentExpr::Tag(r) | SegmentExpr::Lifecycle(r) => self.holds(resolved, r)?,
            SegmentExpr::AnyTags(rs) => {
                let mut acc = RoaringBitmap::new();
                for r in rs {
                    acc |= self.holds(resolved, r)?;
                }
                acc
            }
            SegmentExpr::AllTags(rs) => {
                let mut acc = self.holds(resolved, rs.first()?)?;
                for r in &rs[1..] {
                    acc &= self.holds(resolved, r)?;
                }
                acc
            }
            SegmentExpr::OrgUnit(code) => {
                let unit = self.principal.org.by_code(code)?;
                union_of_units(self.s, self.principal.org.subtree(unit.id).map(|u| u.id))
            }
            SegmentExpr::Group(Ref::Id(id)) => {
                let group = resolved.groups.get(id)?;
                let mut holders = RoaringBitmap::new();
                for tag in self.s.group_tags.get(id).into_iter().flatten() {
                    let held = match self.as_of {
                        Some(past) => past.get(tag),
                        None => self.s.tags.get(tag),
                    };
                    if let Some(b) = held {
                        holders |= b;
                    }
                }
                match self.class_units(&group.visibility_class) {
                    Some(units) => holders & units,
                    None => holders,
                }
            }
            SegmentExpr::TaggedBetween { tag: Ref::Id(id), from, to } => {
                let (from, to) = (self.s.bound(*from), self.s.bound(*to));
                let mut given = RoaringBitmap::new();
                for member in resolved.tag_family(*id) {
                    given |= self.s.timelines.get(&member)?.between(from, to);
                }
                self.where_tag_visible(resolved, *id, given)
            }
            SegmentExpr::City(city) => Self::value_bitmap(&self.s.attributes.cities, city),
            SegmentExpr::Channel(channel) => Self::value_bitmap(&self.s.attributes.channels, channel),
            SegmentExpr::Gender(g) => self.s.attributes.genders.get(g).cloned().unwrap_or_default(),
            e if is_scan(e) => self.scan(e, self.universe),
            SegmentExpr::Segment(Ref::Id(id)) => {
                let saved = resolved.segments.get(id)?;
                if !saved.is_static() {
                    return self.eval(&saved.inner, &saved.inner.expr);
                }
                let snapshot = self.s.snapshots.get(id)?;
                if snapshot.created_at != saved.saved.created_at {
                    return None;
                }
                // Where the caller may see every class the expression read.
                let mut members = snapshot.members.clone();
                for class in saved.inner.classes() {
                    if let Some(units) = self.class_units(&class) {
                        members &= units;
                    }
                }
                members
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use roaring::RoaringBitmap;

    use super::{NO_TIME, State, smallest};

    /// The plain answer: every member's key, the `limit` first in order.
    fn reference(
        state: &State,
        members: &RoaringBitmap,
        descending: bool,
        after: Option<(i64, i64)>,
        limit: usize,
    ) -> Vec<i64> {
        let keys =
            members.iter().map(|b| (state.attributes.added.get(b as usize).copied().unwrap_or(NO_TIME), i64::from(b)));
        if descending {
            let after = after.map(std::cmp::Reverse);
            smallest(keys.map(std::cmp::Reverse).filter(|k| after.is_none_or(|a| *k > a)), limit)
                .into_iter()
                .map(|std::cmp::Reverse((_, id))| id)
                .collect()
        } else {
            smallest(keys.filter(|k| after.is_none_or(|a| *k > a)), limit).into_iter().map(|(_, id)| id).collect()
        }
    }

    #[test]
    fn walking_the_added_order_pages_like_sorting_the_members() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for round in 0..200 {
            let n: u32 = rng.random_range(1..3000);
            let mut state = State::default();
            // Few distinct times, so ties are common and ids break them.
            state.attributes.added = (0..n).map(|_| i64::from(rng.random_range(0..50)) * 1000).collect();
            state.known = (0..n).collect();
            let added = &state.attributes.added;
            let mut order: Vec<(i64, u32)> = state.known.iter().map(|b| (added[b as usize], b)).collect();
            order.sort_unstable();
            state.by_added = order;
            // Customers added or moved since the build.
            for _ in 0..rng.random_range(0..20) {
                let bit = rng.random_range(0..n + 50);
                let i = bit as usize;
                if state.attributes.added.len() <= i {
                    state.attributes.added.resize(i + 1, NO_TIME);
                }
                state.attributes.added[i] = i64::from(rng.random_range(0..60)) * 1000;
                state.known.insert(bit);
                state.added_since.insert(bit);
            }
            let density = rng.random_range(0.01..1.0);
            let members: RoaringBitmap = state.known.iter().filter(|_| rng.random_bool(density)).collect();
            let descending = rng.random_bool(0.5);
            let limit = rng.random_range(1..60);
            let after = match rng.random_range(0..3) {
                0 => None,
                1 => members
                    .iter()
                    .nth(rng.random_range(0..members.len().max(1)) as usize)
                    .map(|b| (state.attributes.added[b as usize], i64::from(b))),
                _ => Some((i64::from(rng.random_range(0..60)) * 1000, i64::from(rng.random_range(0..n)))),
            };
            assert_eq!(
                state.page_by_added(&members, descending, after, limit),
                reference(&state, &members, descending, after, limit),
                "round {round}: n {n}, {} members, descending {descending}, after {after:?}, limit {limit}",
                members.len()
            );
        }
    }
}
