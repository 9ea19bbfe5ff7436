use sea_orm::entity::prelude::*;

use crate::enums::{TagOp, TagSource};

/// Append-only log of every add and remove. `seq` is monotonic; segment
/// indexes follow it.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tag_event")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub customer_id: i64,
    pub tag_id: i64,
    pub op: TagOp,
    pub source: TagSource,
    pub source_ref: Option<String>,
    pub actor_staff_id: Option<i64>,
    pub occurred_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
