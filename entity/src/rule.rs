use sea_orm::entity::prelude::*;

use crate::enums::RuleStatus;

/// An automatic-tagging rule (自动打标规则): IF `condition` THEN `actions`,
/// for the customers of its unit's subtree. The row is the current
/// version; `rule_version` keeps every version.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rule")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub org_unit_id: i64,
    pub name: String,
    pub status: RuleStatus,
    pub version: i32,
    /// The condition in the rule language (canonical text).
    #[sea_orm(column_type = "Text")]
    pub condition: String,
    /// `[{"op": "ADD", "tagId": 5, "ttlSeconds": 86400}, …]`.
    #[sea_orm(column_type = "Json")]
    pub actions: Json,
    /// Re-add a tag that a person removed from the customer.
    pub override_manual_removal: bool,
    /// Lower runs first among rules that do not depend on each other.
    pub priority: i32,
    /// When a scheduled rule runs (`DAILY 03:00`, organisation's time
    /// zone); `None`: the rule runs on events.
    pub schedule: Option<String>,
    pub created_by: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
