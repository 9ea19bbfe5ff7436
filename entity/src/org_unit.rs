use sea_orm::entity::prelude::*;

use crate::enums::OrgUnitKind;

/// A node of the organisation tree. `path` is materialised as the codes from
/// the root down, each followed by `/` (`hq/south/sz01/`), so "is in the
/// subtree of" is a prefix test and Casbin's `keyMatch` can use it directly.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "org_unit")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub code: String,
    pub name: String,
    pub kind: OrgUnitKind,
    pub parent_id: Option<i64>,
    #[sea_orm(unique)]
    pub path: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
