//! Sign-in: bearer JWTs (HS256), checked for signature, expiry, issuer and
//! audience, and for a staff member that exists and is active *now*.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use chrono::Utc;
use entity::{app_setting, staff};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait};
use serde::{Deserialize, Serialize};

use crate::authz::{Authz, OrgTree, Principal};
use crate::config::Settings;
use crate::domain::StaffId;
use crate::error::{AppError, AppResult};

const GENERATED_SECRET_KEY: &str = "jwt_secret";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// Staff id.
    sub: String,
    /// Login, for people reading a token; never trusted.
    login: String,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
}

/// Keys and rules for minting and checking tokens.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Arc<Validation>,
    issuer: String,
    audience: String,
}

impl JwtKeys {
    /// Uses the configured secret or, when there is none, the one stored in
    /// the database (created on first use), so every command that mints
    /// tokens agrees with the server without any set-up.
    pub async fn load(db: &DatabaseConnection, settings: &Settings) -> anyhow::Result<Self> {
        let secret = match &settings.jwt_secret {
            Some(secret) if secret.len() >= 32 => secret.clone().into_bytes(),
            Some(_) => anyhow::bail!("TAGBASE_JWT_SECRET must be at least 32 bytes"),
            None => stored_secret(db).await?,
        };
        Ok(Self::from_secret(&secret, &settings.jwt_issuer, &settings.jwt_audience))
    }

    pub fn from_secret(secret: &[u8], issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation: Arc::new(validation),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    /// Mints a token for a staff member, valid for `ttl`.
    pub fn mint(&self, staff: &staff::Model, ttl: Duration) -> anyhow::Result<String> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: staff.id.to_string(),
            login: staff.login.clone(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            exp: now + i64::try_from(ttl.as_secs()).context("ttl too long")?,
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }

    /// Checks a token and returns the staff id it was minted for.
    ///
    /// # Errors
    /// [`AppError::Unauthenticated`] for any bad token; the reason is logged,
    /// the caller gets a short hint.
    pub fn verify(&self, token: &str) -> AppResult<StaffId> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            tracing::debug!(error = %err, "token refused");
            let hint = match err.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => "token not issued for this service",
                _ => "invalid token",
            };
            AppError::Unauthenticated(hint.to_owned())
        })?;
        data.claims.sub.parse().map(StaffId).map_err(|_| AppError::Unauthenticated("invalid token".to_owned()))
    }
}

async fn stored_secret(db: &DatabaseConnection) -> anyhow::Result<Vec<u8>> {
    let mut fresh = [0u8; 32];
    rand::rng().fill_bytes(&mut fresh);
    // Insert-if-absent, then read back: two processes starting at once
    // agree on whichever key landed first.
    app_setting::Entity::insert(app_setting::ActiveModel {
        key: Set(GENERATED_SECRET_KEY.to_owned()),
        value: Set(base64::engine::general_purpose::STANDARD.encode(fresh)),
        updated_at: Set(Utc::now()),
    })
    .on_conflict_do_nothing_on([app_setting::Column::Key])
    .exec(db)
    .await?;
    let stored = app_setting::Entity::find_by_id(GENERATED_SECRET_KEY.to_owned())
        .one(db)
        .await?
        .context("generated JWT key missing")?;
    Ok(base64::engine::general_purpose::STANDARD.decode(stored.value)?)
}

/// Turns an `Authorization` header into a [`Principal`].
///
/// # Errors
/// [`AppError::Unauthenticated`] when the header is missing or malformed,
/// the token is bad, or the staff member is unknown or deactivated.
pub async fn authenticate(
    db: &DatabaseConnection,
    keys: &JwtKeys,
    authz: &Authz,
    authorization: Option<&str>,
) -> AppResult<Principal> {
    let header = authorization.ok_or_else(|| AppError::Unauthenticated("missing bearer token".to_owned()))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AppError::Unauthenticated("expected `Authorization: Bearer <token>`".to_owned()))?;
    let staff_id = keys.verify(token)?;
    let staff = staff::Entity::find_by_id(staff_id.0)
        .one(db)
        .await?
        .filter(|s| s.active)
        .ok_or_else(|| AppError::Unauthenticated("unknown or deactivated staff member".to_owned()))?;
    authz.refresh().await?;
    let org = Arc::new(OrgTree::load(db).await?);
    Ok(authz.principal(staff, org))
}

#[cfg(test)]
mod tests {
    use super::*;
    use entity::staff;

    fn staff() -> staff::Model {
        staff::Model {
            id: 7,
            login: "sz01.sales".into(),
            display_name: "x".into(),
            home_org_unit_id: 1,
            active: true,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn a_minted_token_verifies_to_its_staff_member() {
        let keys = JwtKeys::from_secret(&[7; 32], "tagbase", "tagbase-api");
        let token = keys.mint(&staff(), Duration::from_secs(60)).unwrap();
        assert_eq!(keys.verify(&token).unwrap(), StaffId(7));
    }

    #[test]
    fn tokens_of_another_key_issuer_or_audience_are_refused() {
        let keys = JwtKeys::from_secret(&[7; 32], "tagbase", "tagbase-api");
        for other in [
            JwtKeys::from_secret(&[8; 32], "tagbase", "tagbase-api"),
            JwtKeys::from_secret(&[7; 32], "someone-else", "tagbase-api"),
            JwtKeys::from_secret(&[7; 32], "tagbase", "other-api"),
        ] {
            let token = other.mint(&staff(), Duration::from_secs(60)).unwrap();
            assert!(matches!(keys.verify(&token), Err(AppError::Unauthenticated(_))));
        }
    }

    #[test]
    fn expired_tokens_are_refused() {
        let keys = JwtKeys::from_secret(&[7; 32], "tagbase", "tagbase-api");
        let claims = Claims {
            sub: "7".into(),
            login: "x".into(),
            iss: "tagbase".into(),
            aud: "tagbase-api".into(),
            iat: 0,
            exp: Utc::now().timestamp() - 3600,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        let err = keys.verify(&token).unwrap_err();
        assert_eq!(err.message(), "token expired");
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        let keys = JwtKeys::from_secret(&[7; 32], "tagbase", "tagbase-api");
        let token = keys.mint(&staff(), Duration::from_secs(60)).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        parts[0] = &none_header;
        let forged = format!("{}.{}.", parts[0], parts[1]);
        assert!(keys.verify(&forged).is_err());
    }
}
