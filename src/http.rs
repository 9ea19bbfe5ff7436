//! The HTTP surface: `/graphql` (GraphQL over HTTP, see [`graphql`]),
//! `/export/customers.csv` (a streamed CSV download, see [`export`]),
//! `/auth/*` (sign-in, see `auth::routes`), `/healthz`, `/readyz`; CORS for the listed origins, compression, request
//! ids, tracing, a body-size limit and the request timeout.

mod export;
mod graphql;
mod persisted;
mod read_only;
mod reply;
mod steps;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::{
    BoxError, Json, Router,
    error_handling::HandleErrorLayer,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use tower_http::{
    classify::{
        ClassifiedResponse, ClassifyResponse, MakeClassifier, NeverClassifyEos, ServerErrorsAsFailures,
        ServerErrorsFailureClass,
    },
    compression::CompressionLayer,
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

pub use persisted::{PersistedQueries, TrustedDocuments};
pub use steps::RequestSteps;

use crate::auth;
use crate::authz::Principal;
use crate::error::{AppError, ErrorCode};
use crate::graphql::{AppSchema, loaders_for_request};
use crate::observability;
use crate::request_id;
use crate::segment::BuildProgress;
use crate::state::AppState;

use reply::{Media, Refusal};

#[derive(Clone)]
struct HttpState {
    app: AppState,
    schema: AppSchema,
}

/// The application's router.
pub fn router(app: AppState, schema: AppSchema) -> Router {
    let body_limit = app.settings.limits.max_body_bytes;
    let timeout = app.settings.limits.request_timeout;
    let cors = cors_layer(&app.settings.cors_origins);
    let graphql = Router::new()
        .route("/graphql", get(graphql::get).post(graphql::post).fallback(graphql::other_method))
        .route("/graphql/ws", get(ws::upgrade))
        .layer(DefaultBodyLimit::max(body_limit));
    let observer = observability::HttpObserver::new(&app);
    let sign_in = auth::routes::router(app.db.clone(), app.auth.clone());
    let router = Router::new()
        .merge(graphql)
        .route("/playground/{file}", get(crate::playground::asset))
        .route("/export/customers.csv", get(export::customers_csv))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(observability::metrics::main_listener_routes(app.clone()))
        .with_state(HttpState { app, schema })
        .merge(sign_in)
        // tower's timeout drops the request's future; the error handler
        // turns the elapsed error into a GraphQL-shaped 504.
        .layer(
            tower::ServiceBuilder::new()
                .layer(HandleErrorLayer::new(move |headers: HeaderMap, err: BoxError| timed_out(headers, err, timeout)))
                .layer(tower::timeout::TimeoutLayer::new(timeout)),
        )
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new(ProbesAreAnswers).make_span_with(observability::trace::request_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        // Outside the timeout and the trace span: it sees every answer (504
        // included) and hands the trace context to the span.
        .layer(axum::middleware::from_fn_with_state(observer, observability::observe))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    // Outermost, so that refusals (401, 413, 504) reach the page's script
    // too. No listed origin: no layer, no CORS header at all.
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for the operator's origins: bearer tokens (no cookies), so no
/// credentials; the request id is readable by the page.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| match HeaderValue::from_str(origin) {
            Ok(value) => Some(value),
            Err(_) => {
                tracing::warn!(%origin, "ignoring a CORS origin that is not a valid header value");
                None
            }
        })
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .expose_headers([HeaderName::from_static("x-request-id")])
            .max_age(Duration::from_secs(3600)),
    )
}

async fn timed_out(headers: HeaderMap, err: BoxError, timeout: Duration) -> Response {
    let media = Media::negotiate(&headers);
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if err.is::<tower::timeout::error::Elapsed>() {
        tracing::warn!(
            request_id = request_id.as_deref().unwrap_or("-"),
            ?timeout,
            "request timed out and was cancelled"
        );
        let message = format!(
            "the request ran past the request timeout ({}) and was cancelled",
            humantime::format_duration(timeout)
        );
        Refusal::new(StatusCode::GATEWAY_TIMEOUT, ErrorCode::Timeout, message)
            .with_request_id(request_id)
            .respond(media)
    } else {
        tracing::error!(request_id = request_id.as_deref().unwrap_or("-"), error = %err, "request failed in a middleware");
        Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "internal error")
            .with_request_id(request_id)
            .respond(media)
    }
}

fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
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
    let caller = sign_in(app, authorization).await?;
    Ok(execute_as(app, schema, &caller, request).await)
}

/// Signs the caller in and executes a subscription as it: the stream of
/// responses (in-process tests read `jobProgress` through it).
///
/// # Errors
/// [`AppError::Unauthenticated`] when sign-in fails (nothing is executed).
pub async fn execute_stream(
    app: &AppState,
    schema: &AppSchema,
    authorization: Option<&str>,
    request: async_graphql::Request,
) -> Result<futures_util::stream::BoxStream<'static, async_graphql::Response>, AppError> {
    let caller = sign_in(app, authorization).await?;
    let loaders = loaders_for_request(app.db.clone(), caller.principal.clone());
    let request = request.data(caller.principal.clone()).data(caller.sign_in.clone()).data(loaders);
    Ok(steps::execute_stream(app.clone(), schema.clone(), caller.principal, request))
}

/// A signed-in caller: who, and how they signed in.
pub(crate) struct Caller {
    principal: Arc<Principal>,
    sign_in: auth::SignIn,
}

async fn sign_in(app: &AppState, authorization: Option<&str>) -> Result<Caller, AppError> {
    let signed_in = auth::authenticate(&app.db, &app.auth, &app.authz, authorization).await?;
    Ok(Caller { principal: signed_in.principal, sign_in: signed_in.sign_in })
}

/// Executes one operation as a signed-in caller, with its own DataLoaders
/// (each operation of a batch gets fresh ones, as a request would).
async fn execute_as(
    app: &AppState,
    schema: &AppSchema,
    caller: &Caller,
    request: async_graphql::Request,
) -> async_graphql::Response {
    let loaders = loaders_for_request(app.db.clone(), caller.principal.clone());
    let request = request.data(caller.principal.clone()).data(caller.sign_in.clone()).data(loaders);
    let mut response = steps::execute(app, schema, &caller.principal, request).await;
    for error in &mut response.errors {
        give_code(error);
    }
    observability::record_response(&response);
    response
}

/// Errors raised by async-graphql itself (parsing, validation, argument
/// coercion, limits, persisted queries) carry no code; give them one, so
/// that every error a client sees has `extensions.code`.
fn give_code(error: &mut async_graphql::ServerError) {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_some() {
        return;
    }
    let code = if error.message == "PersistedQueryNotFound" {
        // The message itself is what Apollo's and urql's links look for.
        ErrorCode::PersistedQueryNotFound
    } else if error.message.starts_with("Invalid \"PersistedQuery\"")
        || error.message.starts_with("Only the \"PersistedQuery\"")
        || error.message == "provided sha does not match query"
    {
        ErrorCode::BadRequest
    } else if error.message.contains("nested too deep")
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

/// The playground, for browsers (`GET /graphql` asking for HTML): an
/// offline GraphiQL built into the binary.
async fn graphiql() -> Response {
    crate::playground::page()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let database = match state.app.db.ping().await {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            false
        }
    };
    let index = &state.app.index;
    let (status, body) = readiness(database, index.is_ready(), index.build_progress());
    (status, Json(body)).into_response()
}

/// `/readyz`'s answer: 200 once the database answers and the segment index
/// is built; 503 before, saying why, with the build's progress while it
/// runs (the build logs its own progress; a probe logs nothing).
fn readiness(database: bool, index_ready: bool, progress: Option<BuildProgress>) -> (StatusCode, serde_json::Value) {
    if !database {
        return (StatusCode::SERVICE_UNAVAILABLE, json!({ "status": "not ready", "database": "unreachable" }));
    }
    if index_ready {
        return (StatusCode::OK, json!({ "status": "ready", "database": "ok", "segmentIndex": "ready" }));
    }
    let mut body = json!({
        "status": "not ready",
        "reason": "index building",
        "database": "ok",
        "segmentIndex": "building",
    });
    if let Some(p) = progress {
        body["progress"] = json!({
            "rowsLoaded": p.rows_loaded,
            "rowsExpected": p.rows_expected,
            "elapsedSeconds": p.elapsed.as_secs(),
        });
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

/// Classifies responses for the trace layer: a 5xx is a failure (logged
/// at `error`), except the answers of probes and scrapes, whose 503 before
/// the index is built is an answer, not a failure of the server.
#[derive(Clone, Copy)]
struct ProbesAreAnswers;

impl MakeClassifier for ProbesAreAnswers {
    type Classifier = ProbeOrServerErrors;
    type FailureClass = ServerErrorsFailureClass;
    type ClassifyEos = NeverClassifyEos<ServerErrorsFailureClass>;

    fn make_classifier<B>(&self, req: &axum::http::Request<B>) -> Self::Classifier {
        ProbeOrServerErrors { probe: observability::is_quiet_path(req.uri().path()) }
    }
}

#[derive(Clone, Copy)]
struct ProbeOrServerErrors {
    probe: bool,
}

impl ClassifyResponse for ProbeOrServerErrors {
    type FailureClass = ServerErrorsFailureClass;
    type ClassifyEos = NeverClassifyEos<ServerErrorsFailureClass>;

    fn classify_response<B>(self, res: &Response<B>) -> ClassifiedResponse<Self::FailureClass, Self::ClassifyEos> {
        if self.probe {
            ClassifiedResponse::Ready(Ok(()))
        } else {
            ServerErrorsAsFailures::new().classify_response(res)
        }
    }

    fn classify_error<E: std::fmt::Display + 'static>(self, error: &E) -> Self::FailureClass {
        ServerErrorsAsFailures::new().classify_error(error)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;
    use serde_json::json;

    use super::readiness;
    use crate::segment::BuildProgress;

    #[test]
    fn readiness_while_the_index_builds_says_so_with_its_progress() {
        let progress =
            BuildProgress { rows_loaded: 1_500, rows_expected: Some(20_000), elapsed: Duration::from_secs(3) };
        assert_eq!(
            readiness(true, false, Some(progress)),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({
                    "status": "not ready", "reason": "index building", "database": "ok", "segmentIndex": "building",
                    "progress": { "rowsLoaded": 1_500, "rowsExpected": 20_000, "elapsedSeconds": 3 },
                })
            )
        );
        let unknown = BuildProgress { rows_expected: None, ..progress };
        assert_eq!(readiness(true, false, Some(unknown)).1["progress"]["rowsExpected"], json!(null));
    }

    #[test]
    fn readiness_is_ok_only_with_the_database_and_the_index() {
        assert_eq!(readiness(true, true, None).0, StatusCode::OK);
        assert_eq!(readiness(false, true, None).1["database"], "unreachable");
        assert_eq!(readiness(false, true, None).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(readiness(true, false, None).1["segmentIndex"], "building");
    }
}
