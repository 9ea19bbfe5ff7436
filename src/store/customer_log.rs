//! The customer change log: one row per customer created or changed, in
//! commit order, so that segment indexes pick up new attributes.

use chrono::Utc;
use entity::customer_change;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ConnectionTrait, DatabaseTransaction, EntityTrait,
};

use crate::error::AppResult;

/// Key of the PostgreSQL advisory lock that orders customer-change writers
/// (see [`log_customer_change`]).
const CUSTOMER_CHANGE_LOCK: i64 = 0x0074_6167_6375_7374; // "tagcust"

/// Records, inside the writing transaction, that a customer was created or
/// changed, so that segment indexes (this instance's and the others')
/// pick up its attributes. As for tag events, PostgreSQL writers take an
/// advisory lock to the end of the transaction so that sequence numbers
/// commit in order and a follower never reads past one still to commit.
///
/// # Errors
/// Database errors.
pub(crate) async fn log_customer_change(txn: &DatabaseTransaction, customer_id: i64) -> AppResult<()> {
    if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({CUSTOMER_CHANGE_LOCK})")).await?;
    }
    customer_change::Entity::insert(customer_change::ActiveModel {
        seq: NotSet,
        customer_id: Set(customer_id),
        changed_at: Set(Utc::now()),
    })
    .exec(txn)
    .await?;
    Ok(())
}
