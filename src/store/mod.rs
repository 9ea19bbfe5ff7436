//! What the indexes and audits follow: the logs that record changes in
//! commit order (tag events, customer changes, library versions), the
//! change-request rows, and the map from broken constraints to errors.
//! Services write through here; segment indexes read from here. Nothing
//! here decides who may do what: that is `service`'s business.

pub mod change_request;
pub mod constraint;
pub mod customer_log;
pub mod event_log;
pub mod library_version;
pub mod live;
pub mod session;

/// Rows per multi-row statement: well under SQLite's bound-parameter limit.
pub(crate) const CHUNK: usize = 500;

/// Ids per statement when a statement filters by a list of ids (with
/// [`id_in`]): all of them on PostgreSQL (one array parameter), [`CHUNK`]
/// on SQLite (one bound parameter each).
pub(crate) fn ids_per_statement(backend: sea_orm::DbBackend) -> usize {
    if backend == sea_orm::DbBackend::Postgres { usize::MAX } else { CHUNK }
}

/// `column = ANY($ids)` on PostgreSQL, `column IN (…)` on SQLite: the
/// filter of every statement that reads by a list of ids (customers of a
/// batch, a snapshot, a lock). PostgreSQL gets one `bigint[]` parameter:
/// it plans `= ANY(array)` as index probes, where it plans
/// `IN (…10,000 values…)` as a (parallel) scan of the whole table (1–5 s
/// at 19M assignments, against 0.1–0.3 s), and the statement has a fixed
/// number of parameters however many ids. On SQLite, callers chunk the
/// ids by [`ids_per_statement`].
pub(crate) fn id_in(
    backend: sea_orm::DbBackend,
    column: impl sea_orm::sea_query::IntoColumnRef,
    ids: &[i64],
) -> sea_orm::sea_query::SimpleExpr {
    use sea_orm::sea_query::{Expr, ExprTrait};
    if backend == sea_orm::DbBackend::Postgres {
        // A true `bigint[]` parameter, not text cast to one: planned for
        // its value (every connection forces custom plans), it is a
        // constant, so PostgreSQL estimates its length and hashes it. Text
        // cast to `bigint[]` is evaluated at run time and searched element
        // by element: with a customer table whose statistics were stale
        // after an import, a 10,000-id lock ran as a sequential scan doing
        // 10,000 comparisons per row, over a minute per batch.
        Expr::cust_with_exprs("$1 = ANY($2)", [Expr::col(column), Expr::val(ids.to_vec())])
    } else {
        Expr::col(column).is_in(ids.iter().copied())
    }
}

/// A page of rows newest first (by id), each with its cursor.
pub type NewestFirst<M> = crate::domain::Page<M>;

/// Pages `query` newest first by its id column: `first` rows after the
/// `after` cursor, or `last` rows before the `before` cursor (walked
/// oldest first, then put back newest first). Cursors are made for
/// `ordering`.
///
/// # Errors
/// `VALIDATION` for a cursor of another ordering or a bad one; database
/// errors.
pub(crate) async fn newest_first<E, C>(
    db: &C,
    query: sea_orm::Select<E>,
    id: E::Column,
    id_of: impl Fn(&E::Model) -> i64,
    ordering: &str,
    page: &crate::domain::PageArgs,
) -> crate::error::AppResult<NewestFirst<E::Model>>
where
    E: sea_orm::EntityTrait,
    C: sea_orm::ConnectionTrait,
{
    use sea_orm::{ColumnTrait, QueryFilter, QueryOrder, QuerySelect};

    let mut query = query;
    if let Some(cursor) = page.decode_cursor(ordering)? {
        query = query.filter(if page.backward() { id.gt(cursor.id) } else { id.lt(cursor.id) });
    }
    let query = if page.backward() { query.order_by_asc(id) } else { query.order_by_desc(id) };
    let rows = query.limit(page.fetch()).all(db).await?;
    Ok(crate::domain::Page::from_walk(rows, page, |row| crate::domain::Cursor {
        ordering: ordering.to_owned(),
        key: String::new(),
        id: id_of(row),
    }))
}

/// Escapes `%`, `_` and the escape character itself for a `LIKE` pattern.
pub fn like_escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
