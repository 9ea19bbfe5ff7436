use sea_orm::entity::prelude::*;

use crate::enums::ChangeRequestStatus;

/// A library edit (or bulk tagging) waiting for, or past, an approver's
/// decision (SPEC §6).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "change_request")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `tag.update`, `tag.merge`, `tag_group.update`, `customer.tag`, …
    pub kind: String,
    /// `TAG`, `TAG_GROUP`, `CUSTOMER`.
    pub target_kind: String,
    pub target_id: Option<i64>,
    /// Versions of the touched objects as the requester read them:
    /// `{"tag:5": 3}`.
    #[sea_orm(column_type = "Json")]
    pub base_versions: Json,
    /// The intended change.
    #[sea_orm(column_type = "Json")]
    pub payload: Json,
    /// The scope of the request: approvers hold `change_request:approve`
    /// here or above.
    pub org_unit_id: i64,
    pub requester_staff_id: i64,
    pub reason: String,
    pub status: ChangeRequestStatus,
    pub decided_by: Option<i64>,
    pub decided_at: Option<DateTimeUtc>,
    pub decision_comment: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
