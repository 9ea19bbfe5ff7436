//! Staff sessions and sign-in identities as rows: what services (a
//! deactivation, "sign out everywhere") and sign-in (`crate::auth`) both
//! write. Tokens, cookies and providers stay in `crate::auth`.

use chrono::Utc;
use entity::staff_session;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, sea_query::Expr};

use crate::error::AppResult;

/// The kind of a staff identity from an OpenID Connect provider (its `sub`).
pub const IDENTITY_OIDC: &str = "oidc_sub";
/// The kind of a staff identity from WeCom (its `userid`).
pub const IDENTITY_WECOM: &str = "wecom_userid";

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    SignOut,
    SignOutEverywhere,
    Deactivated,
    RefreshReuse,
}

impl RevokeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SignOut => "sign_out",
            Self::SignOutEverywhere => "sign_out_everywhere",
            Self::Deactivated => "deactivated",
            Self::RefreshReuse => "refresh_reuse",
        }
    }
}

/// Revokes one session. Returns whether it was live.
///
/// # Errors
/// Database errors.
pub async fn revoke(conn: &impl ConnectionTrait, id: &str, reason: RevokeReason) -> AppResult<bool> {
    let result = staff_session::Entity::update_many()
        .col_expr(staff_session::Column::RevokedAt, Expr::value(Utc::now()))
        .col_expr(staff_session::Column::RevokedReason, Expr::value(reason.as_str()))
        .filter(staff_session::Column::Id.eq(id))
        .filter(staff_session::Column::RevokedAt.is_null())
        .exec(conn)
        .await?;
    Ok(result.rows_affected > 0)
}

/// Revokes every live session of a staff member. Returns how many.
///
/// # Errors
/// Database errors.
pub async fn revoke_all(conn: &impl ConnectionTrait, staff_id: i64, reason: RevokeReason) -> AppResult<u64> {
    let result = staff_session::Entity::update_many()
        .col_expr(staff_session::Column::RevokedAt, Expr::value(Utc::now()))
        .col_expr(staff_session::Column::RevokedReason, Expr::value(reason.as_str()))
        .filter(staff_session::Column::StaffId.eq(staff_id))
        .filter(staff_session::Column::RevokedAt.is_null())
        .exec(conn)
        .await?;
    Ok(result.rows_affected)
}
