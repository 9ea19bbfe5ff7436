//! What the rules judge customers on, read for many customers at once: their
//! events, the tags they hold, and their tag events (for manual removals
//! and for rewinding). The event path, the scheduler and dry runs all read
//! through here, so the three judge on the same facts read the same way.
//!
//! A read covers [`Customers`]: a list of ids (a batch, a locked set), in
//! statements of [`ids_per_statement`] ids each, or every id in a range
//! (a sweep over a unit's customers in id order), in one statement.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::{
    customer, customer_event, customer_tag,
    enums::{CustomerEventKind, TagOp, TagSource},
    tag_event,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
    sea_query::{Alias, Expr, ExprTrait, IntoColumnRef, Query, SimpleExpr},
};

use super::eval::{Attributes, EventFact};
use crate::error::AppResult;
use crate::store::{id_in, ids_per_statement};

/// The customers a read covers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Customers<'a> {
    /// These ids.
    Ids(&'a [i64]),
    /// Every id from the first to the last, both included.
    Range(i64, i64),
}

impl Customers<'_> {
    /// One filter on `column` per statement the read takes.
    fn filters<C>(self, db: &impl ConnectionTrait, column: C) -> Vec<SimpleExpr>
    where
        C: ColumnTrait + IntoColumnRef + Copy,
    {
        match self {
            Self::Ids(ids) => ids
                .chunks(ids_per_statement(db.get_database_backend()))
                .map(|chunk| id_in(db.get_database_backend(), column, chunk))
                .collect(),
            Self::Range(first, last) => vec![column.between(first, last)],
        }
    }
}

/// An event's customer, id, kind, time, payload and recording time.
type EventColumns = (i64, i64, CustomerEventKind, DateTime<Utc>, serde_json::Value, DateTime<Utc>);

/// The customers' events, oldest first (by `occurredAt`, then id) by
/// customer: of `kinds` (every kind for `None`; nothing for none), and up
/// to `up_to` when given.
///
/// # Errors
/// Database errors.
pub(crate) async fn events_in_range(
    db: &impl ConnectionTrait,
    customers: Customers<'_>,
    kinds: Option<&[CustomerEventKind]>,
    up_to: Option<DateTime<Utc>>,
) -> AppResult<HashMap<i64, Vec<EventFact>>> {
    let mut out: HashMap<i64, Vec<EventFact>> = HashMap::new();
    if kinds.is_some_and(<[_]>::is_empty) {
        return Ok(out);
    }
    for filter in customers.filters(db, customer_event::Column::CustomerId) {
        let mut query = customer_event::Entity::find().filter(filter);
        if let Some(kinds) = kinds {
            query = query.filter(customer_event::Column::Kind.is_in(kinds.iter().copied()));
        }
        if let Some(at) = up_to {
            query = query.filter(customer_event::Column::OccurredAt.lte(at));
        }
        // The columns the rules judge on: not the key, fingerprint or
        // recorder (about 110 bytes of each row).
        let rows: Vec<EventColumns> = query
            .select_only()
            .columns([
                customer_event::Column::CustomerId,
                customer_event::Column::Id,
                customer_event::Column::Kind,
                customer_event::Column::OccurredAt,
                customer_event::Column::Payload,
                customer_event::Column::RecordedAt,
            ])
            .order_by_asc(customer_event::Column::CustomerId)
            .order_by_asc(customer_event::Column::OccurredAt)
            .order_by_asc(customer_event::Column::Id)
            .into_tuple()
            .all(db)
            .await?;
        for (customer_id, id, kind, occurred_at, payload, recorded_at) in rows {
            out.entry(customer_id).or_default().push(EventFact { id, kind, occurred_at, payload, recorded_at });
        }
    }
    Ok(out)
}

/// The tags the customers hold, by customer: among `tags` (every tag for
/// `None`; nothing for none).
///
/// # Errors
/// Database errors.
pub(crate) async fn held_in_range(
    db: &impl ConnectionTrait,
    customers: Customers<'_>,
    tags: Option<&BTreeSet<i64>>,
) -> AppResult<HashMap<i64, BTreeSet<i64>>> {
    let mut out: HashMap<i64, BTreeSet<i64>> = HashMap::new();
    if tags.is_some_and(BTreeSet::is_empty) {
        return Ok(out);
    }
    for filter in customers.filters(db, customer_tag::Column::CustomerId) {
        let mut query = customer_tag::Entity::find()
            .select_only()
            .column(customer_tag::Column::CustomerId)
            .column(customer_tag::Column::TagId)
            .filter(filter);
        if let Some(tags) = tags {
            query = query.filter(customer_tag::Column::TagId.is_in(tags.iter().copied()));
        }
        for (customer, tag) in query.into_tuple::<(i64, i64)>().all(db).await? {
            out.entry(customer).or_default().insert(tag);
        }
    }
    Ok(out)
}

/// Of the customers (ids), the tags among `tags` each holds, with how many
/// tags it holds in all (the tag cap counts every tag); customers with no
/// tag are left out.
///
/// On PostgreSQL one grouped statement answers a row per customer: a
/// dry run's chunk of 10,000 customers holds about 190,000 assignments,
/// and decoding each as a row cost more than reading it.
///
/// # Errors
/// Database errors.
pub(crate) async fn held_among_with_counts(
    db: &impl ConnectionTrait,
    ids: &[i64],
    tags: &BTreeSet<i64>,
) -> AppResult<HashMap<i64, (BTreeSet<i64>, u32)>> {
    let mut out: HashMap<i64, (BTreeSet<i64>, u32)> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    if db.get_database_backend() != DbBackend::Postgres {
        for (customer, held) in held_in_range(db, Customers::Ids(ids), None).await? {
            let count = u32::try_from(held.len()).unwrap_or(u32::MAX);
            out.insert(customer, (held.into_iter().filter(|t| tags.contains(t)).collect(), count));
        }
        return Ok(out);
    }
    let sql = "SELECT customer_id, count(*), \
                      coalesce(string_agg(tag_id::text, ',') FILTER (WHERE tag_id = ANY($2)), '') \
               FROM customer_tag WHERE customer_id = ANY($1) GROUP BY customer_id";
    // True `bigint[]` parameters: text cast to `bigint[]` in the filter is
    // parsed again for every row read.
    let values: Vec<sea_orm::Value> = vec![ids.to_vec().into(), tags.iter().copied().collect::<Vec<i64>>().into()];
    for row in db.query_all_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await? {
        let customer: i64 = row.try_get_by_index(0)?;
        let count: i64 = row.try_get_by_index(1)?;
        let listed: String = row.try_get_by_index(2)?;
        let held = listed.split(',').filter_map(|t| t.parse::<i64>().ok()).collect();
        out.insert(customer, (held, u32::try_from(count).unwrap_or(u32::MAX)));
    }
    Ok(out)
}

/// The customers' tag events of `tags`, newest first, by customer (none
/// for no tags).
///
/// # Errors
/// Database errors.
pub(crate) async fn tag_log_in_range(
    db: &impl ConnectionTrait,
    customers: Customers<'_>,
    tags: &BTreeSet<i64>,
) -> AppResult<HashMap<i64, Vec<tag_event::Model>>> {
    let mut out: HashMap<i64, Vec<tag_event::Model>> = HashMap::new();
    if tags.is_empty() {
        return Ok(out);
    }
    // Named customers are read by the (customer, seq) index alone and
    // their events of other tags dropped here: with the tags in the
    // statement, PostgreSQL may walk the (tag, time) index instead when
    // its statistics predate the tags' events (a rule's new tag): 478 ms
    // against 8 ms for 500 customers at 1M, in `bench rules`.
    let by_id = matches!(customers, Customers::Ids(_));
    for filter in customers.filters(db, tag_event::Column::CustomerId) {
        let mut query = tag_event::Entity::find().filter(filter);
        if !by_id {
            query = query.filter(tag_event::Column::TagId.is_in(tags.iter().copied()));
        }
        for e in query.order_by_desc(tag_event::Column::Seq).all(db).await? {
            if tags.contains(&e.tag_id) {
                out.entry(e.customer_id).or_default().push(e);
            }
        }
    }
    Ok(out)
}

/// Of `tags`, those a person took off each customer (and nobody put back
/// since), by customer; customers with none are left out.
///
/// Read from the partial index of people's removals
/// (`ix_tag_event_manual_removals`): each such removal of the customers
/// and tags with no later event of its (customer, tag), found by the
/// `(customer_id, seq)` index. The same answer as [`removed_by_people`]
/// over the customers' whole log, without reading it (a dry run's chunk of
/// 10,000 customers read about 220,000 log rows for a few removals).
///
/// # Errors
/// Database errors.
pub(crate) async fn manual_removals_in_range(
    db: &impl ConnectionTrait,
    customers: Customers<'_>,
    tags: &BTreeSet<i64>,
) -> AppResult<HashMap<i64, BTreeSet<i64>>> {
    let mut out: HashMap<i64, BTreeSet<i64>> = HashMap::new();
    if tags.is_empty() {
        return Ok(out);
    }
    let later = Alias::new("later");
    let newer = Query::select()
        .expr(Expr::val(1))
        .from_as(tag_event::Entity, later.clone())
        .and_where(
            Expr::col((later.clone(), tag_event::Column::CustomerId))
                .equals((tag_event::Entity, tag_event::Column::CustomerId)),
        )
        .and_where(
            Expr::col((later.clone(), tag_event::Column::TagId)).equals((tag_event::Entity, tag_event::Column::TagId)),
        )
        .and_where(
            Expr::col((later, tag_event::Column::Seq)).gt(Expr::col((tag_event::Entity, tag_event::Column::Seq))),
        )
        .to_owned();
    for filter in customers.filters(db, tag_event::Column::CustomerId) {
        let rows: Vec<(i64, i64)> = tag_event::Entity::find()
            .select_only()
            .column(tag_event::Column::CustomerId)
            .column(tag_event::Column::TagId)
            .filter(filter)
            .filter(tag_event::Column::TagId.is_in(tags.iter().copied()))
            // Literals, as the partial index is written: any plan may use it.
            .filter(Expr::cust("tag_event.op = 'REMOVE' AND tag_event.source IN ('MANUAL', 'BULK')"))
            .filter(Expr::exists(newer.clone()).not())
            .into_tuple()
            .all(db)
            .await?;
        for (customer, tag) in rows {
            out.entry(customer).or_default().insert(tag);
        }
    }
    Ok(out)
}

/// The customer's attributes that conditions may test.
pub(crate) fn attributes_of(customer: &customer::Model) -> Attributes {
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
pub(crate) fn removed_by_people<'a>(newest_first: impl IntoIterator<Item = &'a tag_event::Model>) -> BTreeSet<i64> {
    let mut seen = HashSet::new();
    let mut out = BTreeSet::new();
    for e in newest_first {
        if seen.insert(e.tag_id) && e.op == TagOp::Remove && matches!(e.source, TagSource::Manual | TagSource::Bulk) {
            out.insert(e.tag_id);
        }
    }
    out
}
