//! Sign-in. A request's bearer token is one of:
//!
//! - a **development token** (HS256, printed by `tagbase token`), accepted
//!   unless `TAGBASE_DEV_TOKENS=false`;
//! - a **session access token** (HS256, same key, carrying a session id),
//!   issued by `POST /auth/wecom` or `POST /auth/oidc` and renewed by
//!   `POST /auth/refresh`; its session must be live;
//! - an **OIDC token** (RS256/ES256) of the configured provider.
//!
//! Whatever the kind, the staff member it names must exist and be active
//! *now*, and the token must be newer than the member's last "sign out
//! everywhere". The signature is checked on every request; what the
//! database says about the caller is kept in a [`SignInCache`] for as long
//! as none of it changes (one primary-key read per request tells).

mod cache;
mod dev;
pub mod oidc;
pub mod routes;
pub mod session;
pub mod wecom;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{staff, staff_identity};
use jsonwebtoken::Algorithm;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

pub use cache::{SignInCache, read_revision};
pub use dev::{JwtKeys, OwnToken};
pub use oidc::OidcVerifier;
pub use session::{Lifetimes, RevokeReason, Tokens};
pub use wecom::WeComClient;

use crate::authz::{Authz, Principal};
use crate::config::Settings;
use crate::error::{AppError, AppResult};

/// Identity kinds of `staff_identity`.
pub use crate::store::session::{IDENTITY_OIDC, IDENTITY_WECOM};

/// Timeout of every call to an identity provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);

/// How the caller of a request signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInMethod {
    DevToken,
    Oidc,
    WeCom,
}

impl SignInMethod {
    fn of_session(method: &str) -> Self {
        if method == "wecom" { Self::WeCom } else { Self::Oidc }
    }
}

/// The sign-in behind a request, for `me`.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub method: SignInMethod,
    /// Set for session access tokens.
    pub session_id: Option<String>,
    /// When the bearer token expires.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A signed-in caller.
pub struct Authenticated {
    pub principal: Arc<Principal>,
    pub sign_in: SignIn,
}

/// Everything sign-in needs, shared by every request.
#[derive(Clone)]
pub struct Auth {
    pub keys: JwtKeys,
    pub oidc: Option<Arc<OidcVerifier>>,
    pub wecom: Option<Arc<WeComClient>>,
    pub dev_tokens: bool,
    pub lifetimes: Lifetimes,
    /// Callers of this instance, by token, at the current sign-in revision.
    pub cache: Arc<SignInCache>,
}

impl Auth {
    /// # Errors
    /// When the HTTP client for the identity providers cannot be built.
    pub fn new(keys: JwtKeys, settings: &Settings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().timeout(PROVIDER_TIMEOUT).build()?;
        Ok(Self {
            keys,
            oidc: settings
                .oidc
                .clone()
                .map(|oidc| Arc::new(OidcVerifier::new(oidc, settings.token_leeway, http.clone()))),
            wecom: settings.wecom.clone().map(|wecom| Arc::new(WeComClient::new(wecom, http))),
            dev_tokens: settings.dev_tokens,
            lifetimes: Lifetimes { access: settings.access_token_ttl, session: settings.session_ttl },
            cache: Arc::default(),
        })
    }
}

fn bearer(authorization: Option<&str>) -> AppResult<&str> {
    let header = authorization.ok_or_else(|| AppError::Unauthenticated("missing bearer token".to_owned()))?;
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AppError::Unauthenticated("expected `Authorization: Bearer <token>`".to_owned()))
}

fn gone() -> AppError {
    AppError::Unauthenticated("unknown or deactivated staff member".to_owned())
}

/// The active staff member a token names. A token tagbase cannot revoke
/// one by one (dev and OIDC tokens: `issued_at` given) must be newer than
/// the member's last "sign out everywhere"; sessions are revoked instead.
async fn active_member(db: &DatabaseConnection, id: i64, unrevocable: Option<Option<i64>>) -> AppResult<staff::Model> {
    let member = staff::Entity::find_by_id(id).one(db).await?.filter(|s| s.active).ok_or_else(gone)?;
    if let (Some(out), Some(issued_at)) = (member.signed_out_at, unrevocable)
        && issued_at.is_none_or(|iat| iat <= out.timestamp())
    {
        return Err(AppError::Unauthenticated("signed out; sign in again".to_owned()));
    }
    Ok(member)
}

/// The staff member an identity provider's user is: by identity of `kind`,
/// else (for OIDC) by login. Active members only; `unrevocable` as in
/// [`active_member`].
///
/// # Errors
/// [`AppError::Unauthenticated`] for an unknown or deactivated person.
pub async fn member_by_identity(
    db: &DatabaseConnection,
    kind: &str,
    value: &str,
    unrevocable: Option<Option<i64>>,
) -> AppResult<staff::Model> {
    let linked = staff_identity::Entity::find()
        .filter(staff_identity::Column::Kind.eq(kind))
        .filter(staff_identity::Column::Value.eq(value))
        .one(db)
        .await?;
    let id = match linked {
        Some(identity) => identity.staff_id,
        None if kind == IDENTITY_OIDC => {
            let member =
                staff::Entity::find().filter(staff::Column::Login.eq(value)).one(db).await?.ok_or_else(gone)?;
            // A member linked to a provider subject signs in only as that
            // subject, never by a token whose claim happens to be its login.
            let linked_elsewhere = staff_identity::Entity::find()
                .filter(staff_identity::Column::StaffId.eq(member.id))
                .filter(staff_identity::Column::Kind.eq(IDENTITY_OIDC))
                .one(db)
                .await?
                .is_some();
            if linked_elsewhere {
                return Err(gone());
            }
            member.id
        }
        None => return Err(gone()),
    };
    active_member(db, id, unrevocable).await
}

/// A token whose signature, expiry and audience checked out.
enum Verified {
    Own(OwnToken),
    Oidc(oidc::OidcIdentity),
}

/// Checks a token's signature and claims, with no database read.
async fn verify_signature(auth: &Auth, token: &str) -> AppResult<Verified> {
    let header = jsonwebtoken::decode_header(token).map_err(|err| {
        tracing::debug!(error = %err, "token refused");
        AppError::Unauthenticated("invalid token".to_owned())
    })?;
    if header.alg == Algorithm::HS256 {
        return Ok(Verified::Own(auth.keys.verify_token(token)?));
    }
    let oidc = auth.oidc.as_ref().ok_or_else(|| AppError::Unauthenticated("invalid token".to_owned()))?;
    Ok(Verified::Oidc(oidc.verify(token).await?))
}

/// The staff member a verified token names, as the database says now; with
/// the end of its session for session tokens.
async fn member_of(
    db: &DatabaseConnection,
    auth: &Auth,
    verified: Verified,
) -> AppResult<(staff::Model, SignIn, Option<DateTime<Utc>>)> {
    match verified {
        Verified::Own(own) => {
            let expires_at = DateTime::from_timestamp(own.expires_at, 0);
            let unrevocable = own.session.is_none().then_some(Some(own.issued_at));
            let member = active_member(db, own.staff_id.0, unrevocable).await?;
            match own.session {
                None if auth.dev_tokens => {
                    Ok((member, SignIn { method: SignInMethod::DevToken, session_id: None, expires_at }, None))
                }
                None => Err(AppError::Unauthenticated("development tokens are turned off".to_owned())),
                Some((sid, method)) => {
                    let session = session::live(db, &sid, member.id).await?;
                    let method = SignInMethod::of_session(&method);
                    Ok((member, SignIn { method, session_id: Some(sid), expires_at }, Some(session.expires_at)))
                }
            }
        }
        Verified::Oidc(identity) => {
            let member = member_by_identity(db, IDENTITY_OIDC, &identity.subject, Some(identity.issued_at)).await?;
            let expires_at = DateTime::from_timestamp(identity.expires_at, 0);
            Ok((member, SignIn { method: SignInMethod::Oidc, session_id: None, expires_at }, None))
        }
    }
}

/// Verifies a bearer token of any kind and returns its staff member, read
/// from the database (no cache).
///
/// # Errors
/// [`AppError::Unauthenticated`] for a missing or bad token, a dev token
/// while they are off, an ended session, an unknown or deactivated member.
pub async fn verify_bearer(
    db: &DatabaseConnection,
    auth: &Auth,
    authorization: Option<&str>,
) -> AppResult<(staff::Model, SignIn)> {
    let verified = verify_signature(auth, bearer(authorization)?).await?;
    let (member, sign_in, _) = member_of(db, auth, verified).await?;
    Ok((member, sign_in))
}

/// Turns an `Authorization` header into a [`Principal`] and its sign-in.
/// The token is verified every time; the caller is reused from
/// [`Auth::cache`] while the sign-in revision stays where it was when it
/// was built (see [`SignInCache`]).
///
/// # Errors
/// As [`verify_bearer`].
pub async fn authenticate(
    db: &DatabaseConnection,
    auth: &Auth,
    authz: &Authz,
    authorization: Option<&str>,
) -> AppResult<Authenticated> {
    let token = bearer(authorization)?;
    let verified = verify_signature(auth, token).await?;
    // Read before anything the caller is built from: a change committed
    // after this read moves the counter past it, so what is built below is
    // never kept beyond the change.
    let revision = read_revision(db).await?;
    if let Some(cached) = auth.cache.caller(token, revision) {
        return Ok(Authenticated { principal: cached.principal, sign_in: cached.sign_in });
    }
    let (staff, sign_in, session_ends) = member_of(db, auth, verified).await?;
    authz.refresh().await?;
    let org = auth.cache.org(db, revision).await?;
    let principal = Arc::new(authz.principal(staff, org));
    auth.cache.keep(
        token,
        revision,
        cache::CachedCaller { principal: principal.clone(), sign_in: sign_in.clone(), session_ends },
    );
    Ok(Authenticated { principal, sign_in })
}
