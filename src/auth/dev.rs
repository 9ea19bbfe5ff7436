//! tagbase's own tokens (HS256, one key): development tokens printed by
//! `tagbase token`, and the access tokens of sessions, which carry the
//! session id (`sid`) and how the session was opened (`amr`).

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
    /// The session of an access token; absent on development tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    /// How the session was opened (`wecom`, `oidc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    amr: Option<String>,
}

/// What a valid tagbase token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnToken {
    pub staff_id: StaffId,
    pub issued_at: i64,
    pub expires_at: i64,
    /// `(session id, method)` for a session's access token; `None` for a
    /// development token.
    pub session: Option<(String, String)>,
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
        Ok(Self::from_secret(&secret, &settings.jwt_issuer, &settings.jwt_audience).with_leeway(settings.token_leeway))
    }

    /// The clock skew allowed on `exp` (whole seconds).
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        Arc::make_mut(&mut self.validation).leeway = leeway.as_secs();
        self
    }

    pub fn from_secret(secret: &[u8], issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = crate::config::Settings::DEFAULT_TOKEN_LEEWAY.as_secs();
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation: Arc::new(validation),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    /// Mints a development token for a staff member, valid for `ttl`.
    pub fn mint(&self, staff: &staff::Model, ttl: Duration) -> anyhow::Result<String> {
        let now = Utc::now().timestamp();
        self.encode(staff, now, now + i64::try_from(ttl.as_secs()).context("ttl too long")?, None)
    }

    /// Mints the access token of a session, valid until `expires_at` (Unix
    /// seconds).
    pub fn mint_session(
        &self,
        staff: &staff::Model,
        session_id: &str,
        method: &str,
        expires_at: i64,
    ) -> anyhow::Result<String> {
        self.encode(staff, Utc::now().timestamp(), expires_at, Some((session_id.to_owned(), method.to_owned())))
    }

    fn encode(
        &self,
        staff: &staff::Model,
        iat: i64,
        exp: i64,
        session: Option<(String, String)>,
    ) -> anyhow::Result<String> {
        let (sid, amr) = session.unzip();
        let claims = Claims {
            sub: staff.id.to_string(),
            login: staff.login.clone(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat,
            exp,
            sid,
            amr,
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }

    /// Checks a token and returns the staff id it was minted for.
    ///
    /// # Errors
    /// [`AppError::Unauthenticated`] for any bad token; the reason is logged,
    /// the caller gets a short hint.
    pub fn verify(&self, token: &str) -> AppResult<StaffId> {
        self.verify_token(token).map(|t| t.staff_id)
    }

    /// As [`verify`](Self::verify), with everything the token says.
    ///
    /// # Errors
    /// [`AppError::Unauthenticated`] for any bad token.
    pub fn verify_token(&self, token: &str) -> AppResult<OwnToken> {
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
        let claims = data.claims;
        let staff_id =
            claims.sub.parse().map(StaffId).map_err(|_| AppError::Unauthenticated("invalid token".to_owned()))?;
        let session = match (claims.sid, claims.amr) {
            (Some(sid), Some(amr)) => Some((sid, amr)),
            (None, None) => None,
            _ => return Err(AppError::Unauthenticated("invalid token".to_owned())),
        };
        Ok(OwnToken { staff_id, issued_at: claims.iat, expires_at: claims.exp, session })
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
            phone: None,
            email: None,
            signed_out_at: None,
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
            sid: None,
            amr: None,
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
