use sea_orm::entity::prelude::*;

/// A modification lock (修改锁) on a tag group: while it holds, only its
/// holder changes the covered customers' tags of that group.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "modification_lock")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub group_id: i64,
    pub holder_staff_id: i64,
    pub reason: String,
    /// Every customer (true) or the listed ones (false): listed in
    /// `modification_lock_customer`, or, for a bulk job's lock, the job's
    /// snapshot (`job_customer` of [`Self::job_id`]).
    pub whole_group: bool,
    pub acquired_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    pub released_at: Option<DateTimeUtc>,
    pub released_by: Option<i64>,
    /// A bulk job's lock: it covers the customers of that job's snapshot.
    pub job_id: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
