//! What the realtime hub reads: tag events with what visibility needs to
//! know about each (the customer's unit, the tag's owner and class), the
//! sign-in revision, and recently filed or decided change requests.
//!
//! Tag events are read as the segment index reads them ([`after`]): by
//! transaction snapshot on PostgreSQL, so that an event committed late,
//! with a sequence number below others already read, is still read.

use chrono::{DateTime, Utc};
use entity::{
    change_request, customer,
    enums::{TagOp, TagSource},
    tag, tag_event, tag_group,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, Statement,
    sea_query::{Expr, ExprTrait, JoinType, Order, Query, SelectStatement},
};

use super::event_log::{Log, LogPosition, after};
use crate::error::{AppError, AppResult};

/// One add or remove of a tag, with what decides who may see it.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct TagChangeRow {
    pub seq: i64,
    pub customer_id: i64,
    pub tag_id: i64,
    pub op: TagOp,
    pub source: TagSource,
    pub occurred_at: DateTime<Utc>,
    /// The customer's unit (now).
    pub org_unit_id: i64,
    /// Set for personal tags.
    pub owner_staff_id: Option<i64>,
    /// The visibility class of an enterprise tag's group.
    pub visibility_class: Option<String>,
}

fn joined() -> SelectStatement {
    let mut q = Query::select();
    q.columns([
        (tag_event::Entity, tag_event::Column::Seq),
        (tag_event::Entity, tag_event::Column::CustomerId),
        (tag_event::Entity, tag_event::Column::TagId),
        (tag_event::Entity, tag_event::Column::Op),
        (tag_event::Entity, tag_event::Column::Source),
        (tag_event::Entity, tag_event::Column::OccurredAt),
    ])
    .column((customer::Entity, customer::Column::OrgUnitId))
    .column((tag::Entity, tag::Column::OwnerStaffId))
    .column((tag_group::Entity, tag_group::Column::VisibilityClass))
    .from(tag_event::Entity)
    .join(
        JoinType::InnerJoin,
        customer::Entity,
        Expr::col((customer::Entity, customer::Column::Id)).equals((tag_event::Entity, tag_event::Column::CustomerId)),
    )
    .join(
        JoinType::InnerJoin,
        tag::Entity,
        Expr::col((tag::Entity, tag::Column::Id)).equals((tag_event::Entity, tag_event::Column::TagId)),
    )
    .join(
        JoinType::LeftJoin,
        tag_group::Entity,
        Expr::col((tag_group::Entity, tag_group::Column::Id)).equals((tag::Entity, tag::Column::GroupId)),
    )
    .order_by((tag_event::Entity, tag_event::Column::Seq), Order::Asc);
    q
}

/// Tag events written after `from` (committed since, whatever their
/// sequence numbers) with sequence numbers above `page`, oldest first, at
/// most `limit`: call in a transaction whose snapshot ends the reading.
///
/// # Errors
/// Database errors.
pub async fn changes_after(
    db: &impl ConnectionTrait,
    from: &LogPosition,
    page: i64,
    limit: u64,
) -> AppResult<Vec<TagChangeRow>> {
    let mut q = joined();
    q.and_where(after(Log::TagEvents, from))
        .and_where(Expr::col((tag_event::Entity, tag_event::Column::Seq)).gt(page))
        .limit(limit);
    let stmt = db.get_database_backend().build(&q);
    Ok(TagChangeRow::find_by_statement(stmt).all(db).await?)
}

/// Tag events with sequence numbers in `(above, to]` on customers of
/// `units`, oldest first, at most `limit`: a replay, below a point the
/// hub has declared complete.
///
/// # Errors
/// Database errors.
pub async fn changes_between(
    db: &impl ConnectionTrait,
    above: i64,
    to: i64,
    units: &[i64],
    limit: u64,
) -> AppResult<Vec<TagChangeRow>> {
    let mut q = joined();
    q.and_where(Expr::col((tag_event::Entity, tag_event::Column::Seq)).gt(above))
        .and_where(Expr::col((tag_event::Entity, tag_event::Column::Seq)).lte(to))
        .and_where(Expr::col((customer::Entity, customer::Column::OrgUnitId)).is_in(units.iter().copied()))
        .limit(limit);
    let stmt = db.get_database_backend().build(&q);
    Ok(TagChangeRow::find_by_statement(stmt).all(db).await?)
}

/// The highest sequence number in the tag event log (0 when empty).
///
/// # Errors
/// Database errors.
pub async fn newest_seq(db: &impl ConnectionTrait) -> AppResult<i64> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COALESCE(MAX(seq), 0) AS seq FROM tag_event",
        ))
        .await?;
    Ok(row.map(|r| r.try_get::<i64>("", "seq")).transpose()?.unwrap_or(0))
}

/// The sign-in revision (see `auth::cache`): it moves with every change to
/// staff, sessions, identities, the org tree and the policy.
///
/// # Errors
/// Database errors, and a database without the counter's row.
pub async fn sign_in_revision(db: &impl ConnectionTrait) -> AppResult<i64> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT revision FROM sign_in_revision WHERE id = 1",
        ))
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("sign_in_revision has no row")))?;
    Ok(row.try_get::<i64>("", "revision")?)
}

/// Change requests filed or decided at or after `since`.
///
/// # Errors
/// Database errors.
pub async fn requests_touched_since(
    db: &impl ConnectionTrait,
    since: DateTime<Utc>,
) -> AppResult<Vec<change_request::Model>> {
    Ok(change_request::Entity::find()
        .filter(change_request::Column::CreatedAt.gte(since).or(change_request::Column::DecidedAt.gte(since)))
        .all(db)
        .await?)
}
