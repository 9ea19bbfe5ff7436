use sea_orm::entity::prelude::*;

/// A saved segment's expression uses another saved segment
/// (`segment(#id)`). The used segment cannot be deleted meanwhile.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "segment_reference")]
pub struct Model {
    /// The segment whose expression holds the reference.
    #[sea_orm(primary_key, auto_increment = false)]
    pub segment_id: i64,
    /// The segment it uses.
    #[sea_orm(primary_key, auto_increment = false)]
    pub used_segment_id: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
