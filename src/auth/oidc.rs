//! OpenID Connect sign-in: ID or access tokens (JWT) of a provider
//! configured by its issuer URL, verified against the provider's published
//! keys.
//!
//! Discovery (`<issuer>/.well-known/openid-configuration`) names the JWKS;
//! its keys are cached, fetched again after `jwks_refresh`, and at once
//! when a token names a key id the cache does not know (the provider
//! rotated its keys), at most once per `jwks_min_refetch` so that a flood
//! of forged key ids cannot turn tagbase into a load generator.
//!
//! Algorithms are pinned: RS256 and ES256 only, each only with a key of
//! its own type that the provider published for it. `alg: none`, HMAC
//! (which would let the public key serve as a shared secret) and keys the
//! provider never published are refused.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::config::OidcSettings;
use crate::error::{AppError, AppResult};

/// Algorithms an OIDC token may be signed with.
const ALLOWED: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

/// What a verified provider token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIdentity {
    /// The value of the configured claim.
    pub subject: String,
    pub issued_at: Option<i64>,
    pub expires_at: i64,
}

/// Verifies tokens of one provider. Shared by every request.
pub struct OidcVerifier {
    settings: OidcSettings,
    leeway: Duration,
    http: reqwest::Client,
    keys: RwLock<KeyCache>,
    /// Serialises fetches; holds when the last one started.
    fetching: Mutex<FetchState>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct FetchState {
    jwks_uri: Option<String>,
    last_attempt: Option<Instant>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl OidcVerifier {
    pub fn new(settings: OidcSettings, leeway: Duration, http: reqwest::Client) -> Self {
        Self {
            settings,
            leeway,
            http,
            keys: RwLock::new(KeyCache::default()),
            fetching: Mutex::new(FetchState::default()),
        }
    }

    /// Checks a token's signature, issuer, audience, expiry and not-before,
    /// and returns the configured claim.
    ///
    /// # Errors
    /// [`AppError::Unauthenticated`] for any token that does not verify;
    /// [`AppError::Internal`] never (an unreachable provider makes unknown
    /// keys stay unknown, and the token is refused).
    pub async fn verify(&self, token: &str) -> AppResult<OidcIdentity> {
        let refused = |why: &str| {
            tracing::debug!(reason = why, "OIDC token refused");
            AppError::Unauthenticated("invalid token".to_owned())
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused("malformed header"))?;
        if !ALLOWED.contains(&header.alg) {
            return Err(refused("algorithm not allowed"));
        }
        let kid = header.kid.ok_or_else(|| refused("no key id"))?;
        let key = match self.cached_key(&kid) {
            (Some(key), true) => Some(key),
            _ => {
                self.fetch_keys().await;
                self.cached_key(&kid).0
            }
        };
        let (alg, key) = key.ok_or_else(|| refused("key not published by the provider"))?;
        if alg != header.alg {
            return Err(refused("key published for another algorithm"));
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway.as_secs();
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            tracing::debug!(error = %err, "OIDC token refused");
            let hint = match err.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not yet valid",
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => "token not issued for this service",
                _ => "invalid token",
            };
            AppError::Unauthenticated(hint.to_owned())
        })?;
        let claims = data.claims;
        let subject = claims
            .get(&self.settings.claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| refused("configured claim missing"))?
            .to_owned();
        Ok(OidcIdentity {
            subject,
            issued_at: claims.get("iat").and_then(Value::as_i64),
            expires_at: claims.get("exp").and_then(Value::as_i64).unwrap_or_default(),
        })
    }

    /// The key of `kid` and whether the cache is younger than
    /// `jwks_refresh`. A stale key is still used when fetching fails.
    fn cached_key(&self, kid: &str) -> (Option<(Algorithm, DecodingKey)>, bool) {
        let cache = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let fresh = cache.fetched_at.is_some_and(|at| at.elapsed() < self.settings.jwks_refresh);
        (cache.keys.get(kid).cloned(), fresh)
    }

    /// Fetches discovery (when not known yet) and the key set, unless the
    /// last attempt was less than `jwks_min_refetch` ago. Failures are
    /// logged; the old keys stay in use.
    async fn fetch_keys(&self) {
        let mut state = self.fetching.lock().await;
        if state.last_attempt.is_some_and(|at| at.elapsed() < self.settings.jwks_min_refetch) {
            return;
        }
        state.last_attempt = Some(Instant::now());
        match self.download(&mut state).await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), issuer = %self.settings.issuer, "OIDC signing keys fetched");
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) =
                    KeyCache { keys, fetched_at: Some(Instant::now()) };
            }
            Err(err) => {
                // Discover again next time: the provider may have moved its keys.
                state.jwks_uri = None;
                tracing::warn!(error = %format!("{err:#}"), issuer = %self.settings.issuer, "cannot fetch OIDC signing keys");
            }
        }
    }

    async fn download(&self, state: &mut FetchState) -> anyhow::Result<HashMap<String, (Algorithm, DecodingKey)>> {
        let jwks_uri = match &state.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let url = format!("{}/.well-known/openid-configuration", self.settings.issuer.trim_end_matches('/'));
                let discovery: Discovery = self.http.get(&url).send().await?.error_for_status()?.json().await?;
                anyhow::ensure!(
                    discovery.issuer == self.settings.issuer,
                    "discovery names issuer {:?}, configured {:?}",
                    discovery.issuer,
                    self.settings.issuer
                );
                state.jwks_uri = Some(discovery.jwks_uri.clone());
                discovery.jwks_uri
            }
        };
        let set: JwkSet = self.http.get(&jwks_uri).send().await?.error_for_status()?.json().await?;
        Ok(set.keys.iter().filter_map(usable_key).collect())
    }
}

/// A published signing key tagbase accepts, by key id, with the one
/// algorithm it may verify. Encryption keys, keys without an id, and keys
/// of other types or curves are left out.
fn usable_key(jwk: &Jwk) -> Option<(String, (Algorithm, DecodingKey))> {
    let kid = jwk.common.key_id.clone()?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    // A key published for another algorithm (`RS384`, `PS256`, …) is not
    // used for this one.
    if let Some(declared) = jwk.common.key_algorithm {
        let same = matches!(
            (declared, alg),
            (KeyAlgorithm::RS256, Algorithm::RS256) | (KeyAlgorithm::ES256, Algorithm::ES256)
        );
        if !same {
            return None;
        }
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, (alg, key)))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::Jwk;
    use serde_json::json;

    use super::usable_key;

    fn jwk(value: serde_json::Value) -> Jwk {
        serde_json::from_value(value).unwrap()
    }

    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    #[test]
    fn only_signing_keys_of_the_pinned_algorithms_are_kept() {
        let ec = |extra: serde_json::Value| {
            let mut key = json!({ "kty": "EC", "crv": "P-256", "x": X, "y": Y, "kid": "k" });
            key.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            jwk(key)
        };
        assert_eq!(usable_key(&ec(json!({}))).map(|(_, (alg, _))| alg), Some(jsonwebtoken::Algorithm::ES256));
        assert_eq!(usable_key(&ec(json!({ "alg": "ES256", "use": "sig" }))).map(|(k, _)| k), Some("k".into()));
        assert!(usable_key(&ec(json!({ "use": "enc" }))).is_none(), "encryption keys");
        assert!(usable_key(&ec(json!({ "alg": "ES384" }))).is_none(), "published for another algorithm");
        let mut no_kid = ec(json!({}));
        no_kid.common.key_id = None;
        assert!(usable_key(&no_kid).is_none(), "no key id");
        let hmac = jwk(json!({ "kty": "oct", "k": "c2VjcmV0", "kid": "h", "alg": "HS256" }));
        assert!(usable_key(&hmac).is_none(), "symmetric keys are never accepted");
    }
}
