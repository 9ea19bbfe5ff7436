use sea_orm::entity::prelude::*;

use crate::enums::AuditOutcome;

/// Append-only: nothing in tagbase updates or deletes a row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub occurred_at: DateTimeUtc,
    /// `None` for the system (seed, migrations, scheduled jobs).
    pub actor_staff_id: Option<i64>,
    pub action: String,
    pub object_kind: String,
    pub object_id: Option<String>,
    pub org_unit_id: Option<i64>,
    pub outcome: AuditOutcome,
    pub request_id: Option<String>,
    #[sea_orm(column_type = "Json")]
    pub detail: Json,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
