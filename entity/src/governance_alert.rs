use sea_orm::entity::prelude::*;

use crate::enums::{AlertStatus, GovernanceAlertKind};

/// A condition of the library or the customer base that needs somebody:
/// raised by a refresh, acknowledged and resolved by staff (or resolved by
/// a refresh once the condition is gone).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "governance_alert")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub kind: GovernanceAlertKind,
    pub status: AlertStatus,
    pub org_unit_id: i64,
    /// `tag:5`, `tags:3,7`, `customer:9`, `lock:4`.
    pub subject: String,
    /// The subject while not resolved (one live alert per subject).
    pub open_key: Option<String>,
    #[sea_orm(column_type = "Json")]
    pub detail: Json,
    pub version: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub acknowledged_by: Option<i64>,
    pub acknowledged_at: Option<DateTimeUtc>,
    pub resolved_by: Option<i64>,
    pub resolved_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
