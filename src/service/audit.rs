//! The append-only audit log. Rows are written in the same transaction as
//! the change they describe; nothing updates or deletes them.

use chrono::Utc;
use entity::{audit_log, enums::AuditOutcome};
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait};
use serde_json::Value;

use crate::domain::StaffId;
use crate::request_id;

/// One audit row to write.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub actor: Option<StaffId>,
    /// `customer.create`, `customer.tag`, `tag_group.create`, …
    pub action: &'static str,
    pub object_kind: &'static str,
    pub object_id: Option<String>,
    pub org_unit_id: Option<i64>,
    pub outcome: AuditOutcome,
    pub detail: Value,
}

impl AuditEntry {
    /// A successful change made by `actor`.
    pub fn ok(actor: StaffId, action: &'static str, object_kind: &'static str, object_id: impl ToString) -> Self {
        Self {
            actor: Some(actor),
            action,
            object_kind,
            object_id: Some(object_id.to_string()),
            org_unit_id: None,
            outcome: AuditOutcome::Ok,
            detail: Value::Null,
        }
    }

    pub fn in_unit(mut self, org_unit_id: i64) -> Self {
        self.org_unit_id = Some(org_unit_id);
        self
    }

    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// Appends one row; the request id comes from the current request.
///
/// # Errors
/// Database errors.
pub async fn record(conn: &impl ConnectionTrait, entry: AuditEntry) -> Result<(), DbErr> {
    audit_log::Entity::insert(audit_log::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        occurred_at: Set(Utc::now()),
        actor_staff_id: Set(entry.actor.map(|s| s.0)),
        action: Set(entry.action.to_owned()),
        object_kind: Set(entry.object_kind.to_owned()),
        object_id: Set(entry.object_id),
        org_unit_id: Set(entry.org_unit_id),
        outcome: Set(entry.outcome),
        request_id: Set(request_id::current()),
        detail: Set(entry.detail),
    })
    .exec(conn)
    .await?;
    Ok(())
}
