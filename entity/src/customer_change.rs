use sea_orm::entity::prelude::*;

/// Append-only log of customer creations and updates, in commit order;
/// segment indexes follow it to keep attribute predicates current.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "customer_change")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub customer_id: i64,
    pub changed_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
