//! The tag event log: every add and remove of a tag on a customer.
//! Segment indexes (this instance's and the others') follow it, and so does
//! the customer change log's follower (same technique, see [`LogPosition`]).
//!
//! Writers do not wait for each other: on PostgreSQL sequence numbers may
//! commit out of order, so followers read by transaction snapshot, not by
//! sequence number alone (docs/write-path.md tells why and how).

use chrono::{DateTime, Utc};
use entity::{
    enums::{TagOp, TagSource},
    tag_event,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, FromQueryResult, Statement, Value,
    sea_query::{Alias, Expr, ExprTrait, SimpleExpr},
};

use crate::error::AppResult;

/// Key of the PostgreSQL advisory lock between tagging and governance
/// writes ("tagbase" in ASCII).
const EVENT_LOG_LOCK: i64 = 0x0074_6167_6261_7365;

/// Excludes every tagging writer until the end of the transaction: for the
/// rare governance writes whose checks tagging relies on (a modification
/// lock coming into force, a merge or another library edit, whose version
/// rows the segment index follows by id). Taggers take the same lock in
/// shared mode ([`share_event_log`]), so such a write waits for the
/// taggers in flight and the next ones wait for it. Taggers never wait
/// for each other. SQLite writes one transaction at a time anyway.
///
/// # Errors
/// Database errors.
pub(crate) async fn serialize_event_log(txn: &DatabaseTransaction) -> AppResult<()> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({EVENT_LOG_LOCK})")).await?;
    }
    Ok(())
}

/// Taken by every tagging transaction before it reads: shared with other
/// taggers, exclusive of [`serialize_event_log`]. So a tagger sees a
/// modification lock, a merge or an archive either fully committed or not
/// begun, as when every writer was serialised.
///
/// # Errors
/// Database errors.
pub(crate) async fn share_event_log(txn: &DatabaseTransaction) -> AppResult<()> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock_shared({EVENT_LOG_LOCK})")).await?;
    }
    Ok(())
}

/// Who, how and when, shared by the events of one call.
pub(crate) struct EventBy {
    /// The person acting; `None` when tagbase itself acts (a rule's
    /// scheduled run, an expiry).
    pub actor: Option<i64>,
    pub source: TagSource,
    pub source_ref: Option<String>,
    pub at: DateTime<Utc>,
}

impl EventBy {
    pub(crate) fn event(&self, customer_id: i64, tag_id: i64, op: TagOp) -> tag_event::ActiveModel {
        tag_event::ActiveModel {
            seq: NotSet,
            customer_id: Set(customer_id),
            tag_id: Set(tag_id),
            op: Set(op),
            source: Set(self.source),
            source_ref: Set(self.source_ref.clone()),
            actor_staff_id: Set(self.actor),
            occurred_at: Set(self.at),
        }
    }
}

/// Inserts tag events, in the order given: on PostgreSQL one statement
/// over arrays (`unnest`: a fixed seven parameters, where a multi-row
/// insert binds seven per event and PostgreSQL parses each), elsewhere
/// multi-row statements of [`super::CHUNK`] rows.
///
/// # Errors
/// Database errors.
pub(crate) async fn insert_events(txn: &DatabaseTransaction, events: Vec<tag_event::ActiveModel>) -> AppResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        let columns: Option<Vec<_>> = events
            .iter()
            .map(|e| {
                Some((
                    *e.customer_id.try_as_ref()?,
                    *e.tag_id.try_as_ref()?,
                    e.op.try_as_ref()?.as_str(),
                    e.source.try_as_ref()?.as_str(),
                    e.source_ref.try_as_ref()?.clone(),
                    *e.actor_staff_id.try_as_ref()?,
                    *e.occurred_at.try_as_ref()?,
                ))
            })
            .collect();
        if let Some(rows) = columns {
            let sql = "INSERT INTO tag_event \
                       (customer_id, tag_id, op, source, source_ref, actor_staff_id, occurred_at) \
                       SELECT u.c, u.t, u.o, u.s, u.r, u.a, u.at \
                       FROM unnest($1::text::bigint[], $2::text::bigint[], $3::text::text[], $4::text::text[], \
                                   $5::text::text[], $6::text::bigint[], $7::text::timestamptz[]) \
                       WITH ORDINALITY AS u(c, t, o, s, r, a, at, n) ORDER BY u.n";
            let values: Vec<Value> = vec![
                pg_array(rows.iter().map(|r| Some(r.0))).into(),
                pg_array(rows.iter().map(|r| Some(r.1))).into(),
                pg_array(rows.iter().map(|r| Some(r.2))).into(),
                pg_array(rows.iter().map(|r| Some(r.3))).into(),
                pg_array(rows.iter().map(|r| r.4.as_deref())).into(),
                pg_array(rows.iter().map(|r| r.5)).into(),
                pg_array(rows.iter().map(|r| Some(pg_instant(r.6)))).into(),
            ];
            txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
            return Ok(());
        }
    }
    for chunk in events.chunks(super::CHUNK) {
        tag_event::Entity::insert_many(chunk.to_vec()).exec(txn).await?;
    }
    Ok(())
}

/// An event to write: customer, tag, add or remove (the rest is the
/// call's [`EventBy`]).
pub(crate) type NewEvent = (i64, i64, TagOp);

/// Writes the events of one call: on PostgreSQL one statement over arrays
/// (`unnest`, in the order given), on SQLite multi-row statements of
/// [`super::CHUNK`] rows. Never a statement per customer.
///
/// # Errors
/// Database errors.
pub(crate) async fn insert_event_rows(txn: &DatabaseTransaction, by: &EventBy, rows: &[NewEvent]) -> AppResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        let sql = "INSERT INTO tag_event \
                   (customer_id, tag_id, op, source, source_ref, actor_staff_id, occurred_at) \
                   SELECT u.c, u.t, u.o, $4, $5, $6, $7 \
                   FROM unnest($1::text::bigint[], $2::text::bigint[], $3::text::text[]) \
                   WITH ORDINALITY AS u(c, t, o, n) ORDER BY u.n";
        let values: Vec<Value> = vec![
            pg_array(rows.iter().map(|r| Some(r.0))).into(),
            pg_array(rows.iter().map(|r| Some(r.1))).into(),
            pg_array(rows.iter().map(|r| Some(r.2.as_str()))).into(),
            by.source.as_str().into(),
            by.source_ref.clone().into(),
            by.actor.into(),
            by.at.into(),
        ];
        txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
        return Ok(());
    }
    insert_events(txn, rows.iter().map(|(c, t, op)| by.event(*c, *t, *op)).collect()).await
}

/// A PostgreSQL array literal (`{"1","2",NULL}`) of the given elements,
/// each quoted: sent as one text parameter and cast in SQL, so that a call
/// of any size is one statement with a fixed number of parameters.
pub(crate) fn pg_array<T: ToString>(items: impl IntoIterator<Item = Option<T>>) -> String {
    let mut out = String::from("{");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            None => out.push_str("NULL"),
            Some(v) => {
                out.push('"');
                for ch in v.to_string().chars() {
                    if ch == '"' || ch == '\\' {
                        out.push('\\');
                    }
                    out.push(ch);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    out
}

/// An instant as PostgreSQL reads it, to the microsecond (truncated, as
/// bound parameters are).
pub(crate) fn pg_instant(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A place in a log (the tag event log or the customer change log): what
/// a reader has seen, so that it can ask for what committed since.
///
/// On SQLite one transaction writes at a time, so sequence numbers commit
/// in order and the newest one read is the place. On PostgreSQL a
/// transaction may commit sequence number 101 after another committed 102,
/// so the place is a transaction snapshot (`pg_current_snapshot()`): what
/// a reader has seen is exactly the rows of the transactions visible in it,
/// and what came since is the rows of transactions that were not (each row
/// records its writer's `txid`). No late commit is skipped, whatever its
/// sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogPosition {
    /// The newest sequence number seen (on PostgreSQL, for reports only).
    pub seq: i64,
    /// PostgreSQL: the snapshot, as `pg_snapshot` text.
    pub snapshot: Option<String>,
}

/// The logs that [`LogPosition`] places apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Log {
    TagEvents,
    CustomerChanges,
}

impl Log {
    fn table(self) -> &'static str {
        match self {
            Log::TagEvents => "tag_event",
            Log::CustomerChanges => "customer_change",
        }
    }
}

#[derive(FromQueryResult)]
struct Head {
    seq: i64,
    snapshot: Option<String>,
}

/// Where `log` stands now, as seen by `db`'s next statement: read it before
/// reading what it covers (a rebuild, the start of a bulk call), so that
/// everything committed later is after it. Inside a PostgreSQL
/// `REPEATABLE READ` transaction it is the transaction's own snapshot.
///
/// # Errors
/// Database errors.
pub async fn log_position(db: &impl ConnectionTrait, log: Log) -> AppResult<LogPosition> {
    let backend = db.get_database_backend();
    let table = log.table();
    let sql = match backend {
        DbBackend::Postgres => {
            format!("SELECT COALESCE(MAX(seq), 0) AS seq, pg_current_snapshot()::text AS snapshot FROM {table}")
        }
        _ => format!("SELECT COALESCE(MAX(seq), 0) AS seq, NULL AS snapshot FROM {table}"),
    };
    let head = Head::find_by_statement(Statement::from_string(backend, sql)).one(db).await?;
    Ok(head.map(|h| LogPosition { seq: h.seq, snapshot: h.snapshot }).unwrap_or_default())
}

/// Rows of `log` written after `from`: committed since, whatever their
/// sequence numbers. For `WHERE` clauses on that log's table. (The
/// snapshot form is PostgreSQL's own SQL, with its numbered placeholders.)
#[must_use]
pub fn after(log: Log, from: &LogPosition) -> SimpleExpr {
    let table = log.table();
    match &from.snapshot {
        // The lower bound is written out, not bound: so the planner sees
        // how few rows it selects and walks the `txid` index.
        Some(snapshot) => Expr::cust_with_values(
            format!(
                "({table}.txid >= {} AND NOT pg_visible_in_snapshot({table}.txid::text::xid8, $1::pg_snapshot))",
                snapshot_xmin(snapshot)
            ),
            [snapshot.clone()],
        ),
        None => Expr::col((Alias::new(table), Alias::new("seq"))).gt(from.seq),
    }
}

/// The oldest transaction still running in a `pg_snapshot` text
/// (`xmin:xmax:xip…`): every transaction below it had ended. 0 (all rows)
/// if the text is not one, which PostgreSQL never gives.
fn snapshot_xmin(snapshot: &str) -> u64 {
    snapshot.split(':').next().and_then(|x| x.parse().ok()).unwrap_or(0)
}

/// The transactions (PostgreSQL virtual transaction ids) holding the
/// event-log lock of this database now, in either mode: every transaction
/// that draws tag event sequence numbers holds it from before it draws them
/// until it ends ([`share_event_log`], [`serialize_event_log`]). Empty on
/// SQLite, where one transaction writes at a time.
///
/// # Errors
/// Database errors.
pub async fn event_log_writers(db: &impl ConnectionTrait) -> AppResult<std::collections::HashSet<String>> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(std::collections::HashSet::new());
    }
    // A bigint advisory key shows as its high half (classid) and low half
    // (objid), with objsubid 1.
    let sql = format!(
        "SELECT DISTINCT virtualtransaction AS vxid FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND classid = {} AND objid = {} \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        EVENT_LOG_LOCK >> 32,
        EVENT_LOG_LOCK & 0xffff_ffff
    );
    let rows = db.query_all_raw(Statement::from_string(DbBackend::Postgres, sql)).await?;
    rows.iter().map(|r| Ok(r.try_get::<String>("", "vxid")?)).collect()
}

/// Rows of `log` a reader at `at` has seen: the complement of [`after`].
#[must_use]
pub fn seen_at(log: Log, at: &LogPosition) -> SimpleExpr {
    let table = log.table();
    match &at.snapshot {
        Some(snapshot) => {
            let sql = format!("pg_visible_in_snapshot({table}.txid::text::xid8, $1::pg_snapshot)");
            Expr::cust_with_values(sql, [snapshot.clone()])
        }
        None => Expr::col((Alias::new(table), Alias::new("seq"))).lte(at.seq),
    }
}

#[cfg(test)]
mod tests {
    use super::{pg_array, snapshot_xmin};

    #[test]
    fn the_oldest_running_transaction_is_the_first_field_of_a_snapshot() {
        assert_eq!(snapshot_xmin("126733:127236:126733,126846"), 126_733);
        assert_eq!(snapshot_xmin("9:9:"), 9);
        assert_eq!(snapshot_xmin("nonsense"), 0);
    }

    #[test]
    fn array_literals_quote_every_element_and_escape_quotes_and_backslashes() {
        assert_eq!(pg_array([Some(1), None, Some(3)]), r#"{"1",NULL,"3"}"#);
        assert_eq!(pg_array([Some(r#"a"b\c,{d}"#)]), r#"{"a\"b\\c,{d}"}"#);
        assert_eq!(pg_array::<i64>([]), "{}");
    }
}
