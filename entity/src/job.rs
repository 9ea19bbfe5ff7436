use sea_orm::entity::prelude::*;

use crate::enums::JobStatus;

/// A bulk job (bulk tagging): what it does, where it stands, and which
/// instance runs it until when (its lease).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "job")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `BULK_TAG` or `IMPORT_CUSTOMERS`.
    pub kind: String,
    pub status: JobStatus,
    pub requested_by: i64,
    /// The customers' lowest common unit.
    pub org_unit_id: i64,
    /// Tags to add and remove, the reason, how the customers were named.
    #[sea_orm(column_type = "Json")]
    pub input: Json,
    pub total: i64,
    /// Customers processed: snapshot ordinals below this are done.
    pub done: i64,
    pub added: i64,
    pub removed: i64,
    pub unchanged: i64,
    pub skipped: i64,
    /// An import job: customers created and updated.
    pub created: i64,
    pub updated: i64,
    /// `[{ "customerId", "code", "message" }]`, capped.
    #[sea_orm(column_type = "Json")]
    pub errors: Json,
    pub change_request_id: Option<i64>,
    pub cancel_requested: bool,
    /// Ids of the modification locks the job holds.
    #[sea_orm(column_type = "Json")]
    pub lock_ids: Json,
    /// The instance running the job, while its lease holds.
    pub owner: Option<String>,
    pub lease_until: Option<DateTimeUtc>,
    /// How many times an instance took the job up.
    pub attempts: i32,
    pub created_at: DateTimeUtc,
    pub started_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
