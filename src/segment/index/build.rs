//! Building the index from the database: streamed in chunks, filled on
//! blocking threads, never holding all rows at once.
//!
//! On PostgreSQL, customers and assignments arrive as binary
//! `COPY … TO STDOUT` streams, read in parallel on connections that share
//! one snapshot (`pg_export_snapshot`), the log positions read in that same
//! snapshot; each stream is parsed and turned into bitmaps on a blocking
//! thread of its own while the next chunk is on the wire. On SQLite (small
//! databases, one connection), keyset pages in one read transaction.
//!
//! Memory stays at the index plus a few chunks in flight: the bitmaps are
//! filled as rows arrive, and their spare capacity is given back at the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use entity::{customer, customer_tag, enums::Gender, library_version};
use futures_util::TryStreamExt as _;
use roaring::RoaringBitmap;
use sea_orm::sqlx::{self, PgConnection, PgPool};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, Iterable as _,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use super::pg_copy::{BinaryCopy, Row};
use super::{Attributes, CustomerRow, NO_DAY, NO_TIME, SegmentIndex, State, customer_rows, id32, max_seq, nanos};
use crate::store::event_log::{Log, LogPosition, log_position};

/// Rows per chunk handed to the filling thread; on SQLite, rows per page.
pub(super) const REBUILD_PAGE: u64 = 50_000;

/// Chunks of a stream in flight between the connection and its filling
/// thread.
const CHUNKS_IN_FLIGHT: usize = 2;

/// How often a build logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

fn worker_failed(e: tokio::task::JoinError) -> DbErr {
    DbErr::Custom(format!("segment index worker: {e}"))
}

fn pg_error(e: sqlx::Error) -> DbErr {
    DbErr::Query(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(e)))
}

/// How far a build is, for `/readyz` and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildProgress {
    /// Customer and assignment rows read so far.
    pub rows_loaded: u64,
    /// The database's estimate of the rows to read, when it has one.
    pub rows_expected: Option<u64>,
    pub elapsed: Duration,
}

/// The live counters behind [`BuildProgress`].
#[derive(Default)]
pub(super) struct Progress {
    building: AtomicBool,
    loaded: AtomicU64,
    /// 0 while unknown.
    expected: AtomicU64,
    started: Mutex<Option<Instant>>,
}

impl Progress {
    fn started(&self) -> Option<Instant> {
        *self.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts counting; the build is over when the guard drops.
    fn begin(&self) -> ProgressGuard<'_> {
        self.loaded.store(0, Ordering::Relaxed);
        self.expected.store(0, Ordering::Relaxed);
        *self.started.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.building.store(true, Ordering::Release);
        ProgressGuard(self)
    }

    fn add(&self, rows: u64) {
        self.loaded.fetch_add(rows, Ordering::Relaxed);
    }

    fn expect(&self, rows: u64) {
        self.expected.store(rows, Ordering::Relaxed);
    }

    pub(super) fn get(&self) -> Option<BuildProgress> {
        if !self.building.load(Ordering::Acquire) {
            return None;
        }
        let expected = self.expected.load(Ordering::Relaxed);
        Some(BuildProgress {
            rows_loaded: self.loaded.load(Ordering::Relaxed),
            rows_expected: (expected > 0).then_some(expected),
            elapsed: self.started().map(|s| s.elapsed()).unwrap_or_default(),
        })
    }
}

struct ProgressGuard<'a>(&'a Progress);

impl Drop for ProgressGuard<'_> {
    fn drop(&mut self) {
        self.0.building.store(false, Ordering::Release);
    }
}

/// Aborts the progress logger when the build ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One customer's indexed values, borrowed from a COPY row or a page row.
pub(super) struct Values<'a> {
    pub(super) id: i64,
    pub(super) org_unit_id: i64,
    pub(super) gender: Gender,
    /// Days from the common era, [`NO_DAY`] for none.
    pub(super) birth_day: i32,
    pub(super) city: Option<&'a str>,
    pub(super) channel: Option<&'a str>,
    pub(super) spend: i64,
    pub(super) orders: i32,
    /// Nanoseconds, [`NO_TIME`] for none.
    pub(super) last_order: i64,
    pub(super) added: i64,
}

impl<'a> Values<'a> {
    pub(super) fn of(row: &'a CustomerRow) -> Self {
        use chrono::Datelike as _;
        Values {
            id: row.id,
            org_unit_id: row.org_unit_id,
            gender: row.gender,
            birth_day: row.birth_date.map_or(NO_DAY, |d| d.num_days_from_ce()),
            city: row.city.as_deref(),
            channel: row.channel.as_deref(),
            spend: row.total_spend_cents,
            orders: row.order_count,
            last_order: row.last_order_at.map_or(NO_TIME, nanos),
            added: nanos(row.added_at),
        }
    }
}

/// Microseconds since the epoch as [`nanos`] gives them: saturating
/// outside 1677–2262, above [`NO_TIME`].
fn nanos_of_micros(micros: i64) -> i64 {
    micros.checked_mul(1000).unwrap_or(if micros < 0 { NO_TIME + 1 } else { i64::MAX })
}

fn gender(text: &str) -> Result<Gender, String> {
    Gender::iter().find(|g| g.as_str() == text).ok_or_else(|| format!("unknown gender {text:?}"))
}

impl<'a> Values<'a> {
    fn of_copy(row: &'a Row<'_>) -> Result<Self, String> {
        Ok(Values {
            id: row.int8(0)?,
            org_unit_id: row.int8(1)?,
            gender: gender(row.text(2)?.ok_or("customer.gender is NULL")?)?,
            birth_day: row.date_days_from_ce(3)?.unwrap_or(NO_DAY),
            city: row.text(4)?,
            channel: row.text(5)?,
            spend: row.int8(6)?,
            orders: row.int4(7)?,
            last_order: row.timestamptz_unix_micros(8)?.map_or(NO_TIME, nanos_of_micros),
            added: nanos_of_micros(row.timestamptz_unix_micros(9)?.ok_or("customer.added_at is NULL")?),
        })
    }
}

impl Attributes {
    /// Stores the values of a customer, which must not have any yet (or
    /// whose value bitmaps were cleared).
    pub(super) fn fill(&mut self, bit: u32, v: &Values<'_>) {
        fn value_bitmap<'m>(map: &'m mut HashMap<String, RoaringBitmap>, value: &str) -> &'m mut RoaringBitmap {
            // No key allocated for a value already seen.
            if !map.contains_key(value) {
                map.insert(value.to_owned(), RoaringBitmap::new());
            }
            map.get_mut(value).expect("just inserted")
        }
        if let Some(city) = v.city {
            value_bitmap(&mut self.cities, city).insert(bit);
        }
        if let Some(channel) = v.channel {
            value_bitmap(&mut self.channels, channel).insert(bit);
        }
        self.genders.entry(v.gender).or_default().insert(bit);
        let i = bit as usize;
        if self.added.len() <= i {
            let len = i + 1;
            self.birth_day.resize(len, NO_DAY);
            self.spend.resize(len, 0);
            self.orders.resize(len, 0);
            self.last_order.resize(len, NO_TIME);
            self.added.resize(len, NO_TIME);
        }
        self.birth_day[i] = v.birth_day;
        self.spend[i] = v.spend;
        self.orders[i] = v.orders;
        self.last_order[i] = v.last_order;
        self.added[i] = v.added;
    }

    fn shrink_to_fit(&mut self) {
        self.birth_day.shrink_to_fit();
        self.spend.shrink_to_fit();
        self.orders.shrink_to_fit();
        self.last_order.shrink_to_fit();
        self.added.shrink_to_fit();
    }
}

/// What customer rows fill in a fresh index.
#[derive(Default)]
pub(super) struct Customers {
    units: HashMap<i64, RoaringBitmap>,
    known: RoaringBitmap,
    attributes: Attributes,
    last: i64,
}

impl Customers {
    pub(super) fn put(&mut self, v: &Values<'_>) {
        self.last = self.last.max(v.id);
        let Some(bit) = id32(v.id) else { return };
        if !self.known.insert(bit) {
            // The primary key rules this out; clear rather than mix.
            let a = &mut self.attributes;
            for b in a.cities.values_mut().chain(a.channels.values_mut()).chain(a.genders.values_mut()) {
                b.remove(bit);
            }
        }
        self.units.entry(v.org_unit_id).or_default().insert(bit);
        self.attributes.fill(bit, v);
    }
}

/// Tag ids below this are looked up in a vector rather than hashed: the
/// hot loop of a build runs once per assignment.
const DENSE_TAGS: usize = 1 << 16;

/// The tag bitmaps of a fresh index.
#[derive(Default)]
pub(super) struct Assignments {
    dense: Vec<RoaringBitmap>,
    sparse: HashMap<i64, RoaringBitmap>,
}

impl Assignments {
    pub(super) fn put(&mut self, customer: i64, tag: i64) {
        let Some(bit) = id32(customer) else { return };
        match usize::try_from(tag) {
            Ok(i) if i < DENSE_TAGS => {
                if self.dense.len() <= i {
                    self.dense.resize_with(i + 1, RoaringBitmap::new);
                }
                self.dense[i].insert(bit);
            }
            _ => {
                self.sparse.entry(tag).or_default().insert(bit);
            }
        }
    }

    /// Adds the assignments of another part of the table.
    fn merge(&mut self, other: Assignments) {
        if self.dense.len() < other.dense.len() {
            self.dense.resize_with(other.dense.len(), RoaringBitmap::new);
        }
        for (mine, theirs) in self.dense.iter_mut().zip(other.dense) {
            *mine |= theirs;
        }
        for (tag, theirs) in other.sparse {
            *self.sparse.entry(tag).or_default() |= theirs;
        }
    }

    /// Tag id → holders, for every tag with at least one, each bitmap
    /// without spare capacity (a clone allocates exactly what it holds).
    fn into_map(self) -> HashMap<i64, RoaringBitmap> {
        let dense = self.dense.into_iter().enumerate().map(|(i, b)| (i as i64, b));
        dense.chain(self.sparse).filter(|(_, b)| !b.is_empty()).map(|(tag, b)| (tag, b.clone())).collect()
    }
}

/// Log positions the loaded rows are consistent with: everything after
/// them is applied by the catch-up that follows a build (applying an event
/// or a change twice is harmless).
struct Positions {
    events: LogPosition,
    changes: LogPosition,
    last_version: i64,
}

/// Everything a build read, before it becomes a [`State`].
struct Loaded {
    positions: Positions,
    micros: bool,
    customers: Customers,
    assignments: Assignments,
}

impl Loaded {
    /// The fresh index: the added-time order sorted, spare capacity given
    /// back.
    fn into_state(self) -> State {
        let Loaded { positions, micros, customers, assignments } = self;
        let Customers { units, known, mut attributes, last } = customers;
        attributes.shrink_to_fit();
        let added = &attributes.added;
        let mut by_added: Vec<(i64, u32)> = Vec::with_capacity(known.len() as usize);
        by_added.extend(known.iter().map(|bit| (added[bit as usize], bit)));
        by_added.sort_unstable();
        State {
            tags: assignments.into_map(),
            units,
            known,
            attributes,
            by_added,
            events: positions.events,
            changes: positions.changes,
            last_version: positions.last_version,
            last_customer: last,
            micros,
            ..State::default()
        }
    }
}

impl SegmentIndex {
    /// Drops everything and loads it again from the database.
    ///
    /// # Errors
    /// Database errors; the old index stays in place.
    pub async fn rebuild(&self, outer: &DatabaseConnection) -> Result<(), DbErr> {
        self.rebuild_in_pages(outer, REBUILD_PAGE).await
    }

    /// [`rebuild`](Self::rebuild), handing rows to the filling threads
    /// `page` at a time (on SQLite, reading keyset pages of that size), so
    /// that memory holds a few chunks besides the index itself.
    ///
    /// # Errors
    /// Database errors; the old index stays in place.
    pub async fn rebuild_in_pages(&self, outer: &DatabaseConnection, page: u64) -> Result<(), DbErr> {
        let page = page.max(1);
        let guard = self.catching_up.lock().await;
        let _building = self.progress.begin();
        let _logger = AbortOnDrop(tokio::spawn(log_progress(Arc::clone(&self.progress))));
        let loaded = match outer.get_database_backend() {
            DbBackend::Postgres => load_postgres(outer.get_postgres_connection_pool(), page, &self.progress).await?,
            _ => load_in_pages(outer, page, &self.progress).await?,
        };
        let (customers, rows) = (loaded.customers.known.len(), self.progress.loaded.load(Ordering::Relaxed));
        let fresh = tokio::task::spawn_blocking(move || loaded.into_state()).await.map_err(worker_failed)?;
        let old = std::mem::replace(&mut *self.write(), fresh);
        // Freed outside the lock, off the async workers.
        tokio::task::spawn_blocking(move || drop(old));
        drop(guard);
        self.catch_up(outer).await?;
        self.ready.store(true, Ordering::Release);
        let elapsed = self.progress.started().map(|s| s.elapsed()).unwrap_or_default();
        tracing::info!(
            customers,
            rows,
            bytes = self.memory_bytes(),
            elapsed_ms = elapsed.as_millis() as u64,
            "segment index built"
        );
        Ok(())
    }
}

/// Logs the build's progress every [`PROGRESS_EVERY`], at `info`.
async fn log_progress(progress: Arc<Progress>) {
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(p) = progress.get() else { return };
        tracing::info!(
            rows_loaded = p.rows_loaded,
            rows_expected = p.rows_expected,
            elapsed_s = p.elapsed.as_secs(),
            "building the segment index"
        );
    }
}

/// The customer columns of the index, as a binary COPY.
const CUSTOMERS_COPY: &str = "COPY (SELECT id, org_unit_id, gender, birth_date, city, channel, total_spend_cents, \
     order_count, last_order_at, added_at FROM customer WHERE merged_into_id IS NULL) TO STDOUT (FORMAT binary)";

/// Assignments are read in this many parallel streams, each a range of
/// the table's blocks: the server's side of a COPY costs more than ours.
const ASSIGNMENT_STREAMS: i64 = 2;

/// The assignments stored in blocks `from..to` (`to` open when `None`), as
/// a binary COPY: in the table's physical order (no sort, and mostly
/// ascending customer ids, which bitmaps append cheaply). PostgreSQL 14+
/// reads just those blocks (a TID range scan).
fn assignments_copy(from: i64, to: Option<i64>) -> String {
    let to = to.map(|to| format!(" AND ctid < '({to},0)'::tid")).unwrap_or_default();
    format!(
        "COPY (SELECT customer_id, tag_id FROM customer_tag WHERE ctid >= '({from},0)'::tid{to}) TO STDOUT (FORMAT binary)"
    )
}

/// A read-only transaction whose snapshot other connections can share.
const BEGIN_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

/// Reads the index's rows from PostgreSQL: the customers and the
/// assignments as two binary COPY streams on two connections sharing one
/// snapshot, each filled on its own blocking thread.
async fn load_postgres(pool: &PgPool, page: u64, progress: &Progress) -> Result<Loaded, DbErr> {
    let mut lead = pool.begin_with(BEGIN_SNAPSHOT).await.map_err(pg_error)?;
    // Loading millions of rows may take longer than a request may.
    sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *lead).await.map_err(pg_error)?;
    // The log positions are read in the snapshot the rows are read in (see
    // `store::event_log`): every transaction that snapshot does not see is
    // applied by the catch-up after the build.
    #[allow(clippy::type_complexity)]
    let (snapshot, log_snapshot, last_seq, last_change, last_version, expected, blocks): (
        String,
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT pg_export_snapshot(), pg_current_snapshot()::text,
                (SELECT coalesce(max(seq), 0)::int8 FROM tag_event),
                (SELECT coalesce(max(seq), 0)::int8 FROM customer_change),
                (SELECT coalesce(max(id), 0)::int8 FROM library_version),
                (SELECT coalesce(sum(greatest(reltuples, 0)), 0)::int8 FROM pg_class
                  WHERE oid IN ('customer'::regclass, 'customer_tag'::regclass)),
                pg_relation_size('customer_tag') / current_setting('block_size')::int8",
    )
    .fetch_one(&mut *lead)
    .await
    .map_err(pg_error)?;
    progress.expect(u64::try_from(expected).unwrap_or(0));
    if !snapshot.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(DbErr::Custom(format!("unexpected snapshot id {snapshot:?}")));
    }
    // The assignment streams: block ranges, the last one open (the table
    // may have grown since its size was read; the snapshot decides).
    let per_stream = (blocks / ASSIGNMENT_STREAMS).max(1);
    let mut ranges: Vec<(i64, Option<i64>)> =
        (0..ASSIGNMENT_STREAMS).map(|i| (i * per_stream, Some((i + 1) * per_stream))).collect();
    if let Some(last) = ranges.last_mut() {
        last.1 = None;
    }
    let mut streams = Vec::new();
    for (from, to) in ranges {
        let mut txn = pool.begin_with(BEGIN_SNAPSHOT).await.map_err(pg_error)?;
        sqlx::query(sqlx::AssertSqlSafe(format!("SET TRANSACTION SNAPSHOT '{snapshot}'")))
            .execute(&mut *txn)
            .await
            .map_err(pg_error)?;
        sqlx::query("SET LOCAL statement_timeout = 0").execute(&mut *txn).await.map_err(pg_error)?;
        streams.push((txn, assignments_copy(from, to)));
    }
    let customers = copy_into(&mut lead, CUSTOMERS_COPY.to_owned(), page, progress, Customers::default(), |c, row| {
        c.put(&Values::of_copy(row)?);
        Ok(())
    });
    let assignments = futures_util::future::try_join_all(streams.iter_mut().map(|(txn, statement)| {
        copy_into(txn, statement.clone(), page, progress, Assignments::default(), |a, row| {
            a.put(row.int8(0)?, row.int8(1)?);
            Ok(())
        })
    }));
    let (customers, parts) = tokio::try_join!(customers, assignments)?;
    for (txn, _) in streams {
        txn.commit().await.map_err(pg_error)?;
    }
    lead.commit().await.map_err(pg_error)?;
    let assignments = tokio::task::spawn_blocking(move || {
        let mut parts = parts.into_iter();
        let mut all = parts.next().unwrap_or_default();
        for part in parts {
            all.merge(part);
        }
        all
    })
    .await
    .map_err(worker_failed)?;
    let positions = Positions {
        events: LogPosition { seq: last_seq, snapshot: Some(log_snapshot.clone()) },
        changes: LogPosition { seq: last_change, snapshot: Some(log_snapshot) },
        last_version,
    };
    Ok(Loaded { positions, micros: true, customers, assignments })
}

/// Streams a binary COPY into `sink`: the connection's messages are
/// gathered into chunks of `page` rows, and a blocking thread parses each
/// chunk and hands its rows to `put` while the next one arrives.
async fn copy_into<S: Send + 'static>(
    conn: &mut PgConnection,
    statement: String,
    page: u64,
    progress: &Progress,
    sink: S,
    mut put: impl FnMut(&mut S, &Row<'_>) -> Result<(), String> + Send + 'static,
) -> Result<S, DbErr> {
    let (chunks, mut arriving) = tokio::sync::mpsc::channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let filler = tokio::task::spawn_blocking(move || {
        let mut sink = sink;
        let mut reader = BinaryCopy::default();
        while let Some(chunk) = arriving.blocking_recv() {
            reader.feed(&chunk, |row| put(&mut sink, row))?;
        }
        reader.finish()?;
        Ok::<S, String>(sink)
    });
    let sql = statement.as_str();
    let streamed = async move {
        let mut stream = conn.copy_out_raw(sql).await.map_err(pg_error)?;
        let mut chunk = Vec::new();
        let mut rows = 0;
        // PostgreSQL sends one message per row.
        while let Some(message) = stream.try_next().await.map_err(pg_error)? {
            chunk.extend_from_slice(&message);
            rows += 1;
            if rows == page {
                progress.add(rows);
                rows = 0;
                let capacity = chunk.capacity();
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(capacity));
                if chunks.send(full).await.is_err() {
                    // The filler stopped; its error says why.
                    return Ok(());
                }
            }
        }
        progress.add(rows);
        let _ = chunks.send(chunk).await;
        Ok::<(), DbErr>(())
    }
    .await;
    let filled = filler.await.map_err(worker_failed)?;
    streamed?;
    filled.map_err(|e| DbErr::Custom(format!("reading `{statement}`: {e}")))
}

/// Reads the index's rows in keyset pages of `page` rows, in one read
/// transaction (SQLite, or any backend without COPY), filling on a blocking
/// thread between pages.
async fn load_in_pages(outer: &DatabaseConnection, page: u64, progress: &Progress) -> Result<Loaded, DbErr> {
    let txn = outer.begin().await?;
    let micros = txn.get_database_backend() == DbBackend::Postgres;
    let db = &txn;
    let app_to_db = |e: crate::error::AppError| DbErr::Custom(format!("reading a log position: {e:?}"));
    let positions = Positions {
        events: log_position(db, Log::TagEvents).await.map_err(app_to_db)?,
        changes: log_position(db, Log::CustomerChanges).await.map_err(app_to_db)?,
        last_version: max_seq::<library_version::Entity>(db, library_version::Column::Id).await?,
    };
    let mut customers = Customers::default();
    let mut after = i64::MIN;
    loop {
        let rows = customer_rows()
            .filter(customer::Column::Id.gt(after))
            .order_by_asc(customer::Column::Id)
            .limit(page)
            .into_model::<CustomerRow>()
            .all(db)
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        let full = rows.len() as u64 == page;
        progress.add(rows.len() as u64);
        customers = tokio::task::spawn_blocking(move || {
            for row in &rows {
                customers.put(&Values::of(row));
            }
            customers
        })
        .await
        .map_err(worker_failed)?;
        if !full {
            break;
        }
    }
    // Assignments in primary-key order, from the last (customer, tag).
    let mut assignments = Assignments::default();
    let mut after: Option<(i64, i64)> = None;
    loop {
        let mut query = customer_tag::Entity::find()
            .select_only()
            .columns([customer_tag::Column::CustomerId, customer_tag::Column::TagId]);
        if let Some((customer, tag)) = after {
            query = query.filter(
                Condition::any().add(customer_tag::Column::CustomerId.gt(customer)).add(
                    Condition::all()
                        .add(customer_tag::Column::CustomerId.eq(customer))
                        .add(customer_tag::Column::TagId.gt(tag)),
                ),
            );
        }
        let rows: Vec<(i64, i64)> = query
            .order_by_asc(customer_tag::Column::CustomerId)
            .order_by_asc(customer_tag::Column::TagId)
            .limit(page)
            .into_tuple()
            .all(db)
            .await?;
        let Some(last) = rows.last() else { break };
        after = Some(*last);
        let full = rows.len() as u64 == page;
        progress.add(rows.len() as u64);
        assignments = tokio::task::spawn_blocking(move || {
            for (customer, tag) in rows {
                assignments.put(customer, tag);
            }
            assignments
        })
        .await
        .map_err(worker_failed)?;
        if !full {
            break;
        }
    }
    txn.commit().await?;
    Ok(Loaded { positions, micros, customers, assignments })
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, NaiveDate};
    use entity::enums::Gender;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use sea_orm::Iterable as _;

    use super::super::pg_copy::BinaryCopy;
    use super::super::pg_copy::tests::{Value, encode};
    use super::{Assignments, Customers, Loaded, Positions, Values};
    use crate::segment::index::{CustomerRow, State};

    const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

    fn random_customers(rng: &mut ChaCha8Rng) -> Vec<CustomerRow> {
        let cities = ["深圳", "广州", "Zürich"];
        let mut id = 0;
        (0..rng.random_range(0..300))
            .map(|_| {
                id += rng.random_range(1..40);
                // Microseconds, as PostgreSQL keeps them, some far outside
                // what nanoseconds hold.
                let instant = |rng: &mut ChaCha8Rng| {
                    let micros = if rng.random_bool(0.05) {
                        rng.random_range(-20_000_000_000_000_000..20_000_000_000_000_000)
                    } else {
                        rng.random_range(0..2_000_000_000_000_000)
                    };
                    DateTime::from_timestamp_micros(micros).unwrap()
                };
                let last_order_at = rng.random_bool(0.7).then(|| instant(&mut *rng));
                let added_at = instant(&mut *rng);
                CustomerRow {
                    id,
                    org_unit_id: rng.random_range(1..6),
                    gender: Gender::iter().nth(rng.random_range(0..3)).unwrap(),
                    birth_date: rng
                        .random_bool(0.8)
                        .then(|| NaiveDate::from_num_days_from_ce_opt(rng.random_range(-1000..800_000)).unwrap()),
                    city: rng.random_bool(0.7).then(|| cities[rng.random_range(0..3)].to_owned()),
                    channel: rng.random_bool(0.5).then(|| format!("c{}", rng.random_range(0..4))),
                    total_spend_cents: rng.random(),
                    order_count: rng.random(),
                    last_order_at,
                    added_at,
                }
            })
            .collect()
    }

    /// The rows as PostgreSQL's binary COPY of them.
    fn copy_of(rows: &[CustomerRow]) -> Vec<u8> {
        let micros = |t: DateTime<chrono::Utc>| Value::Int8(t.timestamp_micros() - PG_EPOCH_UNIX_MICROS);
        let text = |s: &Option<String>| s.clone().map_or(Value::Null, Value::Text);
        encode(
            &rows
                .iter()
                .map(|r| {
                    vec![
                        Value::Int8(r.id),
                        Value::Int8(r.org_unit_id),
                        Value::Text(r.gender.as_str().to_owned()),
                        r.birth_date.map_or(Value::Null, |d| {
                            Value::Int4(
                                (d - NaiveDate::from_ymd_opt(2000, 1, 1).unwrap()).num_days().try_into().unwrap(),
                            )
                        }),
                        text(&r.city),
                        text(&r.channel),
                        Value::Int8(r.total_spend_cents),
                        Value::Int4(r.order_count),
                        r.last_order_at.map_or(Value::Null, micros),
                        micros(r.added_at),
                    ]
                })
                .collect::<Vec<_>>(),
        )
    }

    /// Feeds `stream` to `put` in pieces of `piece` bytes.
    fn read_in_pieces(stream: &[u8], piece: usize, mut put: impl FnMut(&super::Row<'_>)) {
        let mut reader = BinaryCopy::default();
        for chunk in stream.chunks(piece) {
            reader
                .feed(chunk, |row| {
                    put(row);
                    Ok(())
                })
                .unwrap();
        }
        reader.finish().unwrap();
    }

    /// The index as the row-at-a-time path puts customers and tags.
    fn one_row_at_a_time(customers: &[CustomerRow], assignments: &[(i64, i64)]) -> State {
        let mut s = State::default();
        for row in customers {
            s.put(row);
            s.last_customer = s.last_customer.max(row.id);
        }
        for (customer, tag) in assignments {
            if let Ok(bit) = u32::try_from(*customer) {
                s.tags.entry(*tag).or_default().insert(bit);
            }
        }
        let added = &s.attributes.added;
        s.by_added = s.known.iter().map(|bit| (added[bit as usize], bit)).collect();
        s.by_added.sort_unstable();
        s.added_since.clear();
        s
    }

    fn assert_same(a: &State, b: &State, context: &str) {
        assert_eq!(a.tags, b.tags, "{context}: tags");
        assert_eq!(a.units, b.units, "{context}: units");
        assert_eq!(a.known, b.known, "{context}: known");
        assert_eq!(a.last_customer, b.last_customer, "{context}: last customer");
        assert_eq!(a.by_added, b.by_added, "{context}: added order");
        let (x, y) = (&a.attributes, &b.attributes);
        assert_eq!(x.cities, y.cities, "{context}: cities");
        assert_eq!(x.channels, y.channels, "{context}: channels");
        assert_eq!(x.genders, y.genders, "{context}: genders");
        assert_eq!(x.birth_day, y.birth_day, "{context}: birth days");
        assert_eq!(x.spend, y.spend, "{context}: spend");
        assert_eq!(x.orders, y.orders, "{context}: orders");
        assert_eq!(x.last_order, y.last_order, "{context}: last order");
        assert_eq!(x.added, y.added, "{context}: added");
    }

    #[test]
    fn a_streamed_build_in_any_chunk_size_equals_putting_rows_one_at_a_time() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for round in 0..60 {
            let customers = random_customers(&mut rng);
            let mut assignments: Vec<(i64, i64)> = (0..rng.random_range(0..2_000))
                .map(|_| {
                    let customer = rng.random_range(1..13_000);
                    // A few tag ids too large for the dense table.
                    let tag = if rng.random_bool(0.02) {
                        rng.random_range(1 << 20..1 << 40)
                    } else {
                        rng.random_range(1..300)
                    };
                    (customer, tag)
                })
                .collect();
            assignments.sort_unstable();
            assignments.dedup();
            let expected = one_row_at_a_time(&customers, &assignments);
            let customer_copy = copy_of(&customers);
            let assignment_copy =
                encode(&assignments.iter().map(|(c, t)| vec![Value::Int8(*c), Value::Int8(*t)]).collect::<Vec<_>>());
            for piece in [1, 7, 64, 4096, usize::MAX] {
                let mut built = Customers::default();
                read_in_pieces(&customer_copy, piece, |row| built.put(&Values::of_copy(row).unwrap()));
                let mut tags = Assignments::default();
                read_in_pieces(&assignment_copy, piece, |row| tags.put(row.int8(0).unwrap(), row.int8(1).unwrap()));
                let loaded = Loaded {
                    positions: Positions {
                        events: crate::store::event_log::LogPosition::default(),
                        changes: crate::store::event_log::LogPosition::default(),
                        last_version: 0,
                    },
                    micros: true,
                    customers: built,
                    assignments: tags,
                };
                assert_same(&loaded.into_state(), &expected, &format!("round {round}, pieces of {piece} bytes"));
            }
        }
    }
}
