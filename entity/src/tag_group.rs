use sea_orm::entity::prelude::*;

use crate::enums::TagCategory;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tag_group")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The layer the group belongs to (HQ, region or store).
    pub org_unit_id: i64,
    pub name: String,
    pub description: String,
    pub category: TagCategory,
    /// Policies grant visibility classes to roles (`service`, `value`, …).
    pub visibility_class: String,
    /// A customer holds at most one tag of an exclusive group.
    pub exclusive: bool,
    /// Regular expression every tag name in the group must match.
    pub naming_pattern: Option<String>,
    pub version: i32,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
