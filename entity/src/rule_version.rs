use sea_orm::entity::prelude::*;

use crate::enums::RuleStatus;

/// One version of a rule, as it was after a change.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rule_version")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub rule_id: i64,
    pub version: i32,
    /// `create`, `update`, `archive`, `enable`, `disable`, `rollback`.
    pub change: String,
    pub name: String,
    pub status: RuleStatus,
    #[sea_orm(column_type = "Text")]
    pub condition: String,
    #[sea_orm(column_type = "Json")]
    pub actions: Json,
    pub override_manual_removal: bool,
    pub priority: i32,
    pub schedule: Option<String>,
    pub changed_by: i64,
    pub changed_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
