use sea_orm::entity::prelude::*;

/// A rule action that a modification lock refused: kept to be applied
/// when the lock ends (`applied_at` then set).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rule_deferred_action")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub rule_id: i64,
    pub rule_version: i32,
    pub customer_id: i64,
    pub tag_id: i64,
    /// `ADD` or `REMOVE`.
    pub op: String,
    pub ttl_seconds: Option<i64>,
    /// The customer event that triggered the rule.
    pub event_id: Option<i64>,
    pub lock_id: i64,
    /// The scheduled run that decided the action (`event_id` is then none).
    pub run_id: Option<i64>,
    pub created_at: DateTimeUtc,
    pub applied_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
