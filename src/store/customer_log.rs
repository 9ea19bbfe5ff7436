//! The customer change log: one row per customer created or changed, so
//! that segment indexes pick up new attributes. Followed like the tag
//! event log, by transaction snapshot on PostgreSQL (see
//! [`super::event_log::LogPosition`]), so writers take no lock for it.

use chrono::Utc;
use entity::customer_change;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    DatabaseTransaction, EntityTrait,
};

use crate::error::AppResult;

/// Records, inside the writing transaction, that a customer was created or
/// changed, so that segment indexes (this instance's and the others')
/// pick up its attributes once the transaction commits.
///
/// # Errors
/// Database errors.
pub(crate) async fn log_customer_change(txn: &DatabaseTransaction, customer_id: i64) -> AppResult<()> {
    customer_change::Entity::insert(customer_change::ActiveModel {
        seq: NotSet,
        customer_id: Set(customer_id),
        changed_at: Set(Utc::now()),
    })
    .exec(txn)
    .await?;
    Ok(())
}
