//! The HTTP surface: `/graphql` (POST executes, GET serves GraphiQL),
//! `/healthz`, `/readyz`; request ids, tracing and a body-size limit.

use std::sync::Arc;

use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tower_http::{
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

use crate::auth;
use crate::error::{AppError, ErrorCode};
use crate::graphql::{AppSchema, loaders_for_request};
use crate::observability;
use crate::request_id;
use crate::state::AppState;

#[derive(Clone)]
struct HttpState {
    app: AppState,
    schema: AppSchema,
}

/// The application's router.
pub fn router(app: AppState, schema: AppSchema) -> Router {
    let body_limit = app.settings.limits.max_body_bytes;
    let timeout = app.settings.limits.request_timeout;
    let graphql = Router::new()
        .route("/graphql", get(graphiql).post(graphql_handler))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyLimitLayer::new(body_limit));
    let observer = observability::HttpObserver::new(&app);
    Router::new()
        .merge(graphql)
        .route("/playground/{file}", get(crate::playground::asset))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(observability::metrics::main_listener_routes(app.clone()))
        .with_state(HttpState { app, schema })
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(observability::trace::request_span))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout))
        .layer(axum::middleware::from_fn_with_state(observer, observability::observe))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

async fn graphql_handler(State(state): State<HttpState>, headers: HeaderMap, req: GraphQLRequest) -> Response {
    let id = request_id_of(&headers);
    request_id::scope(id, async move {
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match execute(&state.app, &state.schema, authorization, req.into_inner()).await {
            Ok(response) => GraphQLResponse::from(response).into_response(),
            Err(err) => unauthenticated(err),
        }
    })
    .await
}

/// Signs the caller in and executes one GraphQL request as it. Used by the
/// HTTP handler and by in-process tests alike.
///
/// # Errors
/// [`AppError::Unauthenticated`] when sign-in fails (nothing is executed).
pub async fn execute(
    app: &AppState,
    schema: &AppSchema,
    authorization: Option<&str>,
    request: async_graphql::Request,
) -> Result<async_graphql::Response, AppError> {
    let principal = Arc::new(auth::authenticate(&app.db, &app.keys, &app.authz, authorization).await?);
    let loaders = loaders_for_request(app.db.clone(), principal.clone());
    let mut response = schema.execute(request.data(principal).data(loaders)).await;
    for error in &mut response.errors {
        give_code(error);
    }
    observability::record_response(&response);
    Ok(response)
}

/// Errors raised by async-graphql itself (parsing, validation, argument
/// coercion, limits) carry no code; give them one, so that every error a
/// client sees has `extensions.code`.
fn give_code(error: &mut async_graphql::ServerError) {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_some() {
        return;
    }
    let code = if error.message.contains("nested too deep")
        || error.message.contains("too complex")
        || error.message.contains("recursion depth")
        || error.message.contains("directives")
    {
        ErrorCode::LimitExceeded
    } else {
        ErrorCode::Validation
    };
    extensions.set("code", code.as_str());
    if let Some(id) = request_id::current() {
        extensions.set("requestId", id);
    }
}

/// A GraphQL-shaped error body with status 401 (or 500 when the sign-in
/// itself failed for an internal reason).
fn unauthenticated(err: AppError) -> Response {
    let status = match err {
        AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let gql: async_graphql::Error = err.into();
    let body = json!({
        "data": null,
        "errors": [{ "message": gql.message, "extensions": gql.extensions }],
    });
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

async fn graphiql() -> Response {
    crate::playground::page()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let index = if state.app.index.is_ready() { "ready" } else { "building" };
    match state.app.db.ping().await {
        Ok(()) if state.app.index.is_ready() => {
            (StatusCode::OK, Json(json!({ "status": "ready", "database": "ok", "segmentIndex": index })))
                .into_response()
        }
        Ok(()) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "database": "ok", "segmentIndex": index })),
        )
            .into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "not ready", "database": "unreachable" })))
                .into_response()
        }
    }
}
