//! The tag event log: every add and remove of a tag on a customer, in
//! commit order. Segment indexes (this instance's and the others') follow it
//! by sequence number, so writers must make sequence numbers commit in
//! order; [`serialize_event_log`] is how they do it today.

use chrono::{DateTime, Utc};
use entity::{
    enums::{TagOp, TagSource},
    tag_event,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QuerySelect,
};

use crate::error::AppResult;

/// Key of the PostgreSQL advisory lock that orders tag-event writers.
const EVENT_LOG_LOCK: i64 = 0x0074_6167_6261_7365; // "tagbase" in ASCII

/// Makes tag-event sequence numbers commit in order. PostgreSQL hands out
/// sequence values at insert time, so without this a transaction could
/// commit seq 101 after another committed 102, and an index that already
/// read past 102 would never see 101. The lock is held to the end of the
/// transaction. SQLite writes one transaction at a time anyway.
/// # Errors
/// Database errors.
pub(crate) async fn serialize_event_log(txn: &DatabaseTransaction) -> AppResult<()> {
    if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({EVENT_LOG_LOCK})")).await?;
    }
    Ok(())
}

/// Who, how and when, shared by the events of one call.
pub(crate) struct EventBy {
    pub actor: i64,
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
            actor_staff_id: Set(Some(self.actor)),
            occurred_at: Set(self.at),
        }
    }
}

/// Inserts tag events in multi-row statements.
///
/// # Errors
/// Database errors.
pub(crate) async fn insert_events(txn: &DatabaseTransaction, events: Vec<tag_event::ActiveModel>) -> AppResult<()> {
    for chunk in events.chunks(super::CHUNK) {
        tag_event::Entity::insert_many(chunk.to_vec()).exec(txn).await?;
    }
    Ok(())
}

/// The sequence number of the newest committed tag event (0 for none).
pub(crate) async fn event_log_head(db: &impl ConnectionTrait) -> AppResult<i64> {
    let head: Option<Option<i64>> = tag_event::Entity::find()
        .select_only()
        .column_as(tag_event::Column::Seq.max(), "head")
        .into_tuple()
        .one(db)
        .await?;
    Ok(head.flatten().unwrap_or(0))
}
