use sea_orm::entity::prelude::*;

/// One version of a tag or tag group: its whole state after a change.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "library_version")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `TAG` or `TAG_GROUP`.
    pub object_kind: String,
    pub object_id: i64,
    pub version: i32,
    /// `create`, `update`, `archive`, `restore`, `merge`, `rollback`, …
    pub action: String,
    #[sea_orm(column_type = "Json")]
    pub state: Json,
    /// `None` for state found without a recorded author (seeded data).
    pub changed_by: Option<i64>,
    pub changed_at: DateTimeUtc,
    pub change_request_id: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
