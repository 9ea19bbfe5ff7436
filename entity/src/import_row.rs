use sea_orm::entity::prelude::*;

/// One row of an import job's file, parsed and checked when the job was
/// created, at its place (`ordinal`, from 0) in the order the job imports.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "import_row")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub job_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub ordinal: i64,
    /// The row's line in the file (the header is line 1).
    pub line: i64,
    #[sea_orm(column_type = "Json")]
    pub payload: Json,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
