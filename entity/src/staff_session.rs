use sea_orm::entity::prelude::*;

/// A sign-in session opened by tagbase after an identity provider vouched
/// for the staff member. Its access tokens carry the id; a revoked session
/// refuses them on the next request.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "staff_session")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub staff_id: i64,
    /// `wecom` or `oidc`.
    pub method: String,
    pub created_at: DateTimeUtc,
    pub expires_at: DateTimeUtc,
    pub revoked_at: Option<DateTimeUtc>,
    /// `sign_out`, `sign_out_everywhere`, `deactivated`, `refresh_reuse`.
    pub revoked_reason: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
