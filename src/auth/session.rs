//! tagbase's own sessions, opened after an identity provider vouched for a
//! staff member: short-lived access tokens (HS256, carrying the session
//! id) and refresh tokens stored as SHA-256, each exchanged once.
//!
//! Every request with a session's access token reads the session row, so a
//! revoked session (sign-out, sign-out everywhere, deactivation, a replayed
//! refresh token) is refused on the next request on every instance.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use entity::{staff, staff_refresh_token, staff_session};
use rand::RngCore as _;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait,
    sea_query::Expr,
};
use sha2::{Digest, Sha256};

use super::JwtKeys;
use crate::error::{AppError, AppResult};

pub use crate::store::session::{RevokeReason, revoke, revoke_all};

/// What a sign-in or a refresh hands the client.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub session_id: String,
    /// When the access token expires.
    pub access_expires_at: DateTime<Utc>,
    /// When the session ends, refreshed or not.
    pub session_expires_at: DateTime<Utc>,
}

/// Lifetimes of sessions and their access tokens.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub access: std::time::Duration,
    pub session: std::time::Duration,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn chrono_duration(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Opens a session for an active staff member.
///
/// # Errors
/// Database errors.
#[tracing::instrument(skip(db, keys, member), fields(staff = member.id))]
pub async fn open(
    db: &DatabaseConnection,
    keys: &JwtKeys,
    lifetimes: Lifetimes,
    member: &staff::Model,
    method: &str,
) -> AppResult<Tokens> {
    let now = Utc::now();
    let session = staff_session::Model {
        id: uuid::Uuid::new_v4().simple().to_string(),
        staff_id: member.id,
        method: method.to_owned(),
        created_at: now,
        expires_at: now + chrono_duration(lifetimes.session),
        revoked_at: None,
        revoked_reason: None,
    };
    let txn = db.begin().await?;
    staff_session::Entity::insert(staff_session::ActiveModel::from(session.clone())).exec(&txn).await?;
    let tokens = issue(&txn, keys, lifetimes, member, &session).await?;
    txn.commit().await?;
    Ok(tokens)
}

async fn issue(
    conn: &impl ConnectionTrait,
    keys: &JwtKeys,
    lifetimes: Lifetimes,
    member: &staff::Model,
    session: &staff_session::Model,
) -> AppResult<Tokens> {
    let now = Utc::now();
    let refresh_token = random_token();
    staff_refresh_token::Entity::insert(staff_refresh_token::ActiveModel {
        token_hash: Set(hash(&refresh_token)),
        session_id: Set(session.id.clone()),
        issued_at: Set(now),
        used_at: Set(None),
    })
    .exec(conn)
    .await?;
    let access_expires_at = (now + chrono_duration(lifetimes.access)).min(session.expires_at);
    let access_token = keys
        .mint_session(member, &session.id, &session.method, access_expires_at.timestamp())
        .map_err(AppError::internal)?;
    Ok(Tokens {
        access_token,
        refresh_token,
        session_id: session.id.clone(),
        access_expires_at,
        session_expires_at: session.expires_at,
    })
}

/// Exchanges a refresh token for a new access token and a new refresh
/// token. A refresh token that was exchanged before is a replay (stolen,
/// or sent twice): the whole session is revoked.
///
/// # Errors
/// [`AppError::Unauthenticated`] for an unknown, used or expired refresh
/// token, a revoked session, or a deactivated staff member.
#[tracing::instrument(skip_all)]
pub async fn refresh(db: &DatabaseConnection, keys: &JwtKeys, lifetimes: Lifetimes, token: &str) -> AppResult<Tokens> {
    let refused = || AppError::Unauthenticated("invalid or expired refresh token".to_owned());
    let token_hash = hash(token.trim());
    let stored = staff_refresh_token::Entity::find_by_id(token_hash.clone()).one(db).await?.ok_or_else(refused)?;
    let now = Utc::now();
    // Claim the token: exactly one exchange wins, even when two race.
    let claimed = staff_refresh_token::Entity::update_many()
        .col_expr(staff_refresh_token::Column::UsedAt, Expr::value(now))
        .filter(staff_refresh_token::Column::TokenHash.eq(token_hash.as_str()))
        .filter(staff_refresh_token::Column::UsedAt.is_null())
        .exec(db)
        .await?
        .rows_affected
        == 1;
    if !claimed {
        tracing::warn!(session = %stored.session_id, "a used refresh token was presented again; revoking the session");
        revoke(db, &stored.session_id, RevokeReason::RefreshReuse).await?;
        return Err(refused());
    }
    let session = staff_session::Entity::find_by_id(stored.session_id.clone())
        .one(db)
        .await?
        .filter(|s| s.revoked_at.is_none() && s.expires_at > now)
        .ok_or_else(refused)?;
    let member = staff::Entity::find_by_id(session.staff_id).one(db).await?.filter(|m| m.active).ok_or_else(refused)?;
    issue(db, keys, lifetimes, &member, &session).await
}

/// The live session `id` of `staff_id`.
///
/// # Errors
/// [`AppError::Unauthenticated`] when the session is unknown, belongs to
/// somebody else, was revoked or has ended.
pub async fn live(db: &DatabaseConnection, id: &str, staff_id: i64) -> AppResult<staff_session::Model> {
    staff_session::Entity::find_by_id(id.to_owned())
        .one(db)
        .await?
        .filter(|s| s.staff_id == staff_id && s.revoked_at.is_none() && s.expires_at > Utc::now())
        .ok_or_else(|| AppError::Unauthenticated("session ended; sign in again".to_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn refresh_tokens_are_random_and_stored_only_as_their_hash() {
        let (a, b) = (super::random_token(), super::random_token());
        assert_ne!(a, b);
        assert_eq!(super::hash(&a).len(), 64);
        assert_ne!(super::hash(&a), a);
    }
}
