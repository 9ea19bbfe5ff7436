use sea_orm::entity::prelude::*;

use crate::enums::TagSource;

/// A tag on a customer, with its provenance. One row per (customer, tag).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "customer_tag")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub customer_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub tag_id: i64,
    pub source: TagSource,
    /// The rule, job or import that made the assignment.
    pub source_ref: Option<String>,
    pub tagged_by: Option<i64>,
    pub tagged_at: DateTimeUtc,
    pub expires_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
