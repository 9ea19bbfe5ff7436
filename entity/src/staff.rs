use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "staff")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub login: String,
    pub display_name: String,
    pub home_org_unit_id: i64,
    /// Deactivated staff keep their history but can no longer sign in, even
    /// with a token minted before.
    pub active: bool,
    pub created_at: DateTimeUtc,
    pub phone: Option<String>,
    pub email: Option<String>,
    /// "Sign out everywhere": tokens issued before this are refused.
    pub signed_out_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
