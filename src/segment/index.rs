//! The in-memory segment index: one compressed bitmap (`roaring`) per tag
//! and per org unit, built from the database and kept current by following
//! the tag event log's sequence numbers. The database stays the source of
//! truth: the index can be dropped and rebuilt at any time.
//!
//! It answers expressions over tags, lifecycle stages, org units and
//! dynamic saved segments made of those; anything else (attributes, tag
//! history, static snapshots) is answered by SQL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use entity::{customer, customer_tag, enums::TagOp, tag, tag_event};
use roaring::RoaringBitmap;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

use super::{Ref, SegmentExpr};
use crate::authz::{Action, ClassAccess, Principal, Scope};
use crate::service::segment::Resolved;

/// Events read per round trip while catching up.
const EVENT_BATCH: u64 = 50_000;

#[derive(Default)]
struct State {
    tags: HashMap<i64, RoaringBitmap>,
    units: HashMap<i64, RoaringBitmap>,
    /// Tags of each group, from the tag rows seen so far. Tags cannot move
    /// between groups yet; when library edits add moves, the follower must
    /// re-read moved tags.
    group_tags: HashMap<i64, Vec<i64>>,
    last_seq: i64,
    last_customer: i64,
    last_tag: i64,
    /// Unions of unit bitmaps by unit set (a caller's universe, a class's
    /// units), reused until a customer is added.
    unions: HashMap<Vec<i64>, Arc<RoaringBitmap>>,
}

/// The index, shared by all requests of an instance.
#[derive(Default)]
pub struct SegmentIndex {
    state: RwLock<State>,
    ready: AtomicBool,
    /// Serialises catch-ups, so two never apply the same events.
    catching_up: tokio::sync::Mutex<()>,
}

fn id32(id: i64) -> Option<u32> {
    u32::try_from(id).ok()
}

impl SegmentIndex {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// True once the first build finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Drops everything and loads it again from the database.
    ///
    /// # Errors
    /// Database errors; the old index stays in place.
    pub async fn rebuild(&self, outer: &DatabaseConnection) -> Result<(), DbErr> {
        let _guard = self.catching_up.lock().await;
        // One read-only transaction: a consistent snapshot, and no statement
        // timeout (loading millions of assignments may take longer than a
        // request may).
        let txn = outer.begin().await?;
        if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
            txn.execute_unprepared("SET LOCAL statement_timeout = 0").await?;
        }
        let db = &txn;
        // The event position first: everything after it is applied later,
        // and applying an event twice is harmless.
        let last_seq: i64 = tag_event::Entity::find()
            .select_only()
            .column_as(tag_event::Column::Seq.max(), "m")
            .into_tuple::<Option<i64>>()
            .one(db)
            .await?
            .flatten()
            .unwrap_or(0);
        let mut fresh = State { last_seq, ..State::default() };
        let customers: Vec<(i64, i64)> = customer::Entity::find()
            .select_only()
            .columns([customer::Column::Id, customer::Column::OrgUnitId])
            .order_by_asc(customer::Column::Id)
            .into_tuple()
            .all(db)
            .await?;
        for (id, unit) in customers {
            if let Some(bit) = id32(id) {
                fresh.units.entry(unit).or_default().insert(bit);
            }
            fresh.last_customer = fresh.last_customer.max(id);
        }
        let assignments: Vec<(i64, i64)> = customer_tag::Entity::find()
            .select_only()
            .columns([customer_tag::Column::TagId, customer_tag::Column::CustomerId])
            .into_tuple()
            .all(db)
            .await?;
        for (tag, customer) in assignments {
            if let Some(bit) = id32(customer) {
                fresh.tags.entry(tag).or_default().insert(bit);
            }
        }
        txn.commit().await?;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        drop(_guard);
        self.catch_up(outer).await?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Applies the tag events and new customers written since the last
    /// call. Cheap when nothing changed (two indexed queries).
    ///
    /// # Errors
    /// Database errors.
    pub async fn catch_up(&self, db: &impl ConnectionTrait) -> Result<(), DbErr> {
        let _guard = self.catching_up.lock().await;
        loop {
            let (last_seq, last_customer) = {
                let s = self.state.read().unwrap_or_else(|e| e.into_inner());
                (s.last_seq, s.last_customer)
            };
            let events = tag_event::Entity::find()
                .filter(tag_event::Column::Seq.gt(last_seq))
                .order_by_asc(tag_event::Column::Seq)
                .limit(EVENT_BATCH)
                .all(db)
                .await?;
            let customers: Vec<(i64, i64)> = customer::Entity::find()
                .select_only()
                .columns([customer::Column::Id, customer::Column::OrgUnitId])
                .filter(customer::Column::Id.gt(last_customer))
                .order_by_asc(customer::Column::Id)
                .into_tuple()
                .all(db)
                .await?;
            let last_tag = self.state.read().unwrap_or_else(|e| e.into_inner()).last_tag;
            let new_tags: Vec<(i64, Option<i64>)> = tag::Entity::find()
                .select_only()
                .columns([tag::Column::Id, tag::Column::GroupId])
                .filter(tag::Column::Id.gt(last_tag))
                .order_by_asc(tag::Column::Id)
                .into_tuple()
                .all(db)
                .await?;
            let more = events.len() as u64 == EVENT_BATCH;
            let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
            for (id, group) in new_tags {
                if let Some(group) = group {
                    s.group_tags.entry(group).or_default().push(id);
                }
                s.last_tag = s.last_tag.max(id);
            }
            if !customers.is_empty() {
                s.unions.clear();
            }
            for (id, unit) in customers {
                if let Some(bit) = id32(id) {
                    s.units.entry(unit).or_default().insert(bit);
                }
                s.last_customer = s.last_customer.max(id);
            }
            for e in events {
                if let Some(bit) = id32(e.customer_id) {
                    let bitmap = s.tags.entry(e.tag_id).or_default();
                    match e.op {
                        TagOp::Add => bitmap.insert(bit),
                        TagOp::Remove => bitmap.remove(bit),
                    };
                }
                s.last_seq = e.seq;
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Builds the index in the background, then follows the log every
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

    /// Bytes the bitmaps take (serialized size, close to the heap size).
    pub fn memory_bytes(&self) -> usize {
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        s.tags.values().chain(s.units.values()).map(RoaringBitmap::serialized_size).sum()
    }

    /// The members of a resolved expression that the caller may see, or
    /// `None` when the expression needs more than the index holds (or the
    /// index is not ready).
    pub fn evaluate(&self, principal: &Principal, resolved: &Resolved) -> Option<RoaringBitmap> {
        if !self.is_ready() {
            return None;
        }
        let read_scope = principal.scope(Action::CustomerRead);
        let universe = self.union_of(read_scope.unit_ids());
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        let evaluator = Evaluator { s: &s, principal, read_scope: &read_scope, universe: &universe };
        let members = evaluator.eval(resolved, &resolved.expr)?;
        Some(members & universe.as_ref())
    }

    /// The customers of a set of units, cached until a customer is added.
    fn union_of(&self, units: impl Iterator<Item = i64>) -> Arc<RoaringBitmap> {
        let mut key: Vec<i64> = units.collect();
        key.sort_unstable();
        if let Some(hit) = self.state.read().unwrap_or_else(|e| e.into_inner()).unions.get(&key) {
            return Arc::clone(hit);
        }
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        let union = Arc::new(union_of_units(&s, key.iter().copied()));
        s.unions.insert(key, Arc::clone(&union));
        union
    }
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
}

impl Evaluator<'_> {
    /// Customers of the units where the caller may see the class; `None`
    /// when that covers all it may read anyway (the result is intersected
    /// with its universe at the end), which spares a union on the hot path.
    fn class_units(&self, class: &str) -> Option<RoaringBitmap> {
        let classes = self.principal.class_scope(class, ClassAccess::Read);
        if classes.covers(self.read_scope) {
            return None;
        }
        Some(union_of_units(self.s, classes.unit_ids()))
    }

    /// Holders of the tag, where the caller may see it.
    fn holds(&self, resolved: &Resolved, r: &Ref) -> Option<RoaringBitmap> {
        let Ref::Id(id) = r else { return None };
        let holders = self.s.tags.get(id).cloned().unwrap_or_default();
        match resolved.tags.get(id).and_then(|t| t.group.as_ref()).and_then(|g| self.class_units(&g.visibility_class)) {
            Some(units) => Some(holders & units),
            None => Some(holders),
        }
    }

    fn eval(&self, resolved: &Resolved, e: &SegmentExpr) -> Option<RoaringBitmap> {
        Some(match e {
            SegmentExpr::And(items) => {
                let mut acc = self.eval(resolved, &items[0])?;
                for item in &items[1..] {
                    acc &= self.eval(resolved, item)?;
                }
                acc
            }
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
                let mut acc = self.holds(resolved, &rs[0])?;
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
                    if let Some(b) = self.s.tags.get(tag) {
                        holders |= b;
                    }
                }
                match self.class_units(&group.visibility_class) {
                    Some(units) => holders & units,
                    None => holders,
                }
            }
            SegmentExpr::Segment(Ref::Id(id)) => {
                let inner = resolved.segments.get(id)?.inner.as_ref()?;
                self.eval(inner, &inner.expr)?
            }
            _ => return None,
        })
    }
}
