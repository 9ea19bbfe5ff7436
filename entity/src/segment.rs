use sea_orm::entity::prelude::*;

use crate::enums::SegmentKind;

/// A saved segment (客群), scoped to an org unit.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "segment")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub org_unit_id: i64,
    pub name: String,
    pub description: String,
    pub kind: SegmentKind,
    /// Text form with every reference as `#id`.
    pub expression: String,
    pub owner_staff_id: i64,
    /// Static segments: members when saved.
    pub member_count: Option<i32>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
