use sea_orm::entity::prelude::*;

use crate::enums::TagStatus;

/// An enterprise tag (`group_id` set) or a personal tag (`owner_staff_id`
/// set); a CHECK constraint keeps exactly one of the two.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tag")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub group_id: Option<i64>,
    pub owner_staff_id: Option<i64>,
    pub name: String,
    pub description: String,
    pub status: TagStatus,
    /// JSON array of strings (近义词).
    #[sea_orm(column_type = "Json")]
    pub aliases: Json,
    pub canonical_tag_id: Option<i64>,
    pub merged_into_id: Option<i64>,
    /// Assignments expire this many seconds after tagging, when set.
    pub ttl_seconds: Option<i64>,
    pub version: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
