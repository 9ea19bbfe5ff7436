use sea_orm::entity::prelude::*;

/// A customer covered by a modification lock.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "modification_lock_customer")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub lock_id: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub customer_id: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
