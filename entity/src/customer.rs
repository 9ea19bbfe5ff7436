use sea_orm::entity::prelude::*;

use crate::enums::Gender;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "customer")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub org_unit_id: i64,
    pub owner_staff_id: Option<i64>,
    pub name: String,
    /// Normalised (digits, optional leading `+`); masking is the API's job.
    pub phone: Option<String>,
    pub gender: Gender,
    pub birth_date: Option<Date>,
    pub city: Option<String>,
    pub industry: Option<String>,
    pub channel: Option<String>,
    pub total_spend_cents: i64,
    pub order_count: i32,
    pub last_order_at: Option<DateTimeUtc>,
    pub added_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Optimistic concurrency: every update is `WHERE version = <read>`.
    pub version: i32,
    /// Set when this customer was merged into another: a tombstone, which
    /// lists and segments leave out and reads of its id redirect from.
    pub merged_into_id: Option<i64>,
    pub merged_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
