use sea_orm::entity::prelude::*;

use crate::enums::RuleRunStatus;

/// One run of a scheduled rule for one slot of its schedule. A slot runs
/// once: `(rule_id, schedule_key)` is unique.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rule_run")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub rule_id: i64,
    /// The rule's version the run judged with.
    pub rule_version: i32,
    /// The slot, in the organisation's offset: `2026-12-02T03:00+08:00`.
    pub schedule_key: String,
    pub status: RuleRunStatus,
    /// The instance running it, while its lease holds.
    pub owner: Option<String>,
    pub lease_until: Option<DateTimeUtc>,
    /// The instant the rule was judged at.
    pub evaluated_at: DateTimeUtc,
    pub started_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
    pub customers_scanned: i64,
    pub customers_changed: i64,
    pub tag_changes: i64,
    pub deferred: i64,
    pub held_back: i64,
    /// How many times an instance took the run up.
    pub attempts: i32,
    #[sea_orm(column_type = "Text", nullable)]
    pub error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
