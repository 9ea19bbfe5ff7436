//! The sign-in endpoints, outside GraphQL because they work without a
//! bearer token:
//!
//! - `POST /auth/wecom` `{code}`: WeCom OAuth code → session;
//! - `POST /auth/oidc` `{token}`: a provider's ID or access token → session;
//! - `POST /auth/refresh` `{refreshToken}`: new access and refresh tokens;
//! - `POST /auth/sign-out` (bearer) `{everywhere?}`: ends this session, or
//!   every session and token of the caller.
//!
//! Errors have the GraphQL shape (`errors[].extensions.code`).

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use sea_orm::DatabaseConnection;
use serde::Deserialize;
use serde_json::json;

use super::{Auth, IDENTITY_OIDC, IDENTITY_WECOM, Tokens, member_by_identity, session, verify_bearer};
use crate::error::{AppError, ErrorCode};
use crate::service::staff as staff_service;

/// Sign-in requests are tiny.
const BODY_LIMIT: usize = 16 * 1024;

#[derive(Clone)]
struct RouteState {
    db: DatabaseConnection,
    auth: Auth,
}

/// The `/auth/*` routes.
pub fn router(db: DatabaseConnection, auth: Auth) -> Router {
    Router::new()
        .route("/auth/wecom", post(wecom))
        .route("/auth/oidc", post(oidc))
        .route("/auth/refresh", post(refresh))
        .route("/auth/sign-out", post(sign_out))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(RouteState { db, auth })
}

#[derive(Deserialize)]
struct CodeBody {
    code: String,
}

#[derive(Deserialize)]
struct TokenBody {
    token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefreshBody {
    refresh_token: String,
}

#[derive(Deserialize, Default)]
struct SignOutBody {
    #[serde(default)]
    everywhere: bool,
}

fn error(err: AppError) -> Response {
    let status = match err.code() {
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Validation => StatusCode::BAD_REQUEST,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let gql: async_graphql::Error = err.into();
    (status, Json(json!({ "errors": [{ "message": gql.message, "extensions": gql.extensions }] }))).into_response()
}

fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, AppError> {
    parsed.map(|Json(b)| b).map_err(|rejection| AppError::validation("body", rejection.body_text()))
}

fn tokens(tokens: Tokens) -> Response {
    let expires_in = (tokens.access_expires_at - chrono::Utc::now()).num_seconds().max(0);
    Json(json!({
        "tokenType": "Bearer",
        "accessToken": tokens.access_token,
        "expiresIn": expires_in,
        "refreshToken": tokens.refresh_token,
        "sessionId": tokens.session_id,
        "sessionExpiresAt": tokens.session_expires_at.to_rfc3339(),
    }))
    .into_response()
}

async fn wecom(State(state): State<RouteState>, parsed: Result<Json<CodeBody>, JsonRejection>) -> Response {
    let code = match body(parsed) {
        Ok(b) => b.code,
        Err(err) => return error(err),
    };
    let result = async {
        let client = state
            .auth
            .wecom
            .as_ref()
            .ok_or_else(|| AppError::Unauthenticated("WeCom sign-in is not configured".to_owned()))?;
        let userid = client.user_id(&code).await?;
        let member = member_by_identity(&state.db, IDENTITY_WECOM, &userid, None).await?;
        session::open(&state.db, &state.auth.keys, state.auth.lifetimes, &member, "wecom").await
    }
    .await;
    result.map_or_else(error, tokens)
}

async fn oidc(State(state): State<RouteState>, parsed: Result<Json<TokenBody>, JsonRejection>) -> Response {
    let token = match body(parsed) {
        Ok(b) => b.token,
        Err(err) => return error(err),
    };
    let result = async {
        let verifier = state
            .auth
            .oidc
            .as_ref()
            .ok_or_else(|| AppError::Unauthenticated("OIDC sign-in is not configured".to_owned()))?;
        let identity = verifier.verify(token.trim()).await?;
        let member = member_by_identity(&state.db, IDENTITY_OIDC, &identity.subject, Some(identity.issued_at)).await?;
        session::open(&state.db, &state.auth.keys, state.auth.lifetimes, &member, "oidc").await
    }
    .await;
    result.map_or_else(error, tokens)
}

async fn refresh(State(state): State<RouteState>, parsed: Result<Json<RefreshBody>, JsonRejection>) -> Response {
    let token = match body(parsed) {
        Ok(b) => b.refresh_token,
        Err(err) => return error(err),
    };
    session::refresh(&state.db, &state.auth.keys, state.auth.lifetimes, &token).await.map_or_else(error, tokens)
}

async fn sign_out(State(state): State<RouteState>, headers: HeaderMap, raw: axum::body::Bytes) -> Response {
    // The body is optional: an empty one signs out this session.
    let everywhere = if raw.is_empty() {
        false
    } else {
        match serde_json::from_slice::<SignOutBody>(&raw) {
            Ok(b) => b.everywhere,
            Err(err) => return error(AppError::validation("body", err.to_string())),
        }
    };
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let result = async {
        let (member, sign_in) = verify_bearer(&state.db, &state.auth, authorization).await?;
        if everywhere {
            staff_service::sign_out_everywhere(&state.db, &member).await
        } else if let Some(sid) = sign_in.session_id {
            Ok(u64::from(session::revoke(&state.db, &sid, session::RevokeReason::SignOut).await?))
        } else {
            Err(AppError::validation(
                "everywhere",
                "this token has no session to end; send {\"everywhere\": true} to refuse every token issued so far",
            ))
        }
    }
    .await;
    match result {
        Ok(revoked) => Json(json!({ "signedOut": true, "sessionsRevoked": revoked })).into_response(),
        Err(err) => error(err),
    }
}
