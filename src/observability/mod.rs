//! Observability of every request: Prometheus metrics, W3C trace context
//! (exported to an OpenTelemetry collector when one is configured), one
//! access-log line, and the request rate limits that share the same
//! middleware.
//!
//! The HTTP middleware ([`layer`]) wraps a request. Inside it, a per-request
//! [`Observation`] is reachable as a task-local, so that the steps around
//! GraphQL execution ([`GraphqlObserver`], [`note_operation`] and
//! [`record_response`]) can note the operation name, the staff member and
//! the outcome without threading them through the handler. Everything is written once, when the response leaves.

pub mod access_log;
pub mod metrics;
pub mod otel;
pub mod trace;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_graphql::{ServerError, ServerResult};
use axum::{
    Json,
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::authz::Principal;
use crate::config::Rate;
use crate::error::{AppError, ErrorCode};
use crate::rate_limit::{KeyedLimit, retry_after_secs};
use crate::state::AppState;
use trace::TraceContext;

/// Paths that are neither rate-limited nor logged at `info` (probes and
/// scrapes would drown the access log).
const QUIET_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];
const GRAPHQL_PATH: &str = "/graphql";

/// Whether a path is a probe or a scrape (see [`QUIET_PATHS`]).
pub fn is_quiet_path(path: &str) -> bool {
    QUIET_PATHS.contains(&path)
}

/// What one request's execution tells the middleware.
#[derive(Default)]
pub struct Observation {
    graphql: AtomicBool,
    operation: OnceLock<String>,
    /// The first error's code; unset means no error.
    outcome: OnceLock<String>,
    staff_id: OnceLock<i64>,
    /// Set when the per-staff limit refused the request.
    retry_after: OnceLock<Duration>,
}

tokio::task_local! {
    static CURRENT: Arc<Observation>;
}

fn current() -> Option<Arc<Observation>> {
    CURRENT.try_with(Arc::clone).ok()
}

/// The state of the middleware.
#[derive(Clone)]
pub struct HttpObserver {
    per_address: Arc<KeyedLimit<IpAddr>>,
}

impl HttpObserver {
    pub fn new(app: &AppState) -> Self {
        Self { per_address: Arc::new(KeyedLimit::new(app.settings.limits.rate_per_address)) }
    }
}

/// The observing middleware, for the router's layer list (with
/// `axum::middleware::from_fn_with_state`). It must sit inside the
/// request-id layer and outside the timeout and trace layers, so that it
/// sees timeouts and the trace span sees its trace context.
pub async fn observe(State(state): State<HttpObserver>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let trace = TraceContext::from_headers(req.headers());
    req.extensions_mut().insert(trace);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
    let quiet = QUIET_PATHS.contains(&path.as_str());
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let observation = Arc::new(Observation::default());

    let refused = match peer {
        Some(ip) if !quiet => state.per_address.check(&ip).err(),
        _ => None,
    };
    let mut response = match refused {
        Some(wait) => {
            metrics::record_rate_limited("address");
            let _ = observation.outcome.set(ErrorCode::LimitExceeded.as_str().to_owned());
            let message = format!("too many requests from this address; retry in {} s", retry_after_secs(wait));
            too_many_requests(&message, wait, &request_id)
        }
        None => CURRENT.scope(observation.clone(), next.run(req)).await,
    };
    if let Some(&wait) = observation.retry_after.get() {
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
    }
    response.headers_mut().insert(trace::TRACEPARENT, trace.header_value());

    let status = response.status();
    let outcome = observation.outcome.get().cloned().unwrap_or_else(|| outcome_of_status(status).to_owned());
    let graphql = observation.graphql.load(Ordering::Relaxed);
    // Refused before GraphQL ran (sign-in, body size, rate, timeout): still
    // a GraphQL request, whose error is counted here.
    let refused_before = !graphql && path == GRAPHQL_PATH && outcome != OK;
    if refused_before {
        metrics::record_error(&outcome);
    }
    let operation = observation.operation.get().map_or(metrics::ANONYMOUS, String::as_str);
    let elapsed = started.elapsed();
    if graphql || refused_before {
        metrics::record_graphql_request(operation, &outcome, elapsed.as_secs_f64());
    }
    if path != "/metrics" {
        metrics::record_http_response(status);
    }
    access_log::write(&access_log::Entry {
        method: method.as_str(),
        path: &path,
        operation: (graphql || refused_before).then_some(operation),
        status: status.as_u16(),
        outcome: &outcome,
        duration: elapsed,
        request_id: &request_id,
        trace_id: trace.trace_id,
        staff_id: observation.staff_id.get().copied(),
        quiet,
    });
    response
}

const OK: &str = "ok";

/// The outcome of a response that no GraphQL execution described.
fn outcome_of_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=399 => OK,
        401 => ErrorCode::Unauthenticated.as_str(),
        403 => ErrorCode::Forbidden.as_str(),
        404 => ErrorCode::NotFound.as_str(),
        408 => "TIMEOUT",
        413 | 429 => ErrorCode::LimitExceeded.as_str(),
        400..=499 => ErrorCode::Validation.as_str(),
        _ => ErrorCode::Internal.as_str(),
    }
}

/// 429 with `Retry-After` and a GraphQL-shaped `LIMIT_EXCEEDED` error.
fn too_many_requests(message: &str, wait: Duration, request_id: &str) -> Response {
    let body = json!({
        "data": null,
        "errors": [{
            "message": message,
            "extensions": { "code": ErrorCode::LimitExceeded.as_str(), "requestId": request_id },
        }],
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
    response
}

/// Notes a GraphQL response's errors (after every error got its code):
/// one count per error code, and the first code as the request's outcome.
/// Does nothing outside the HTTP middleware (in-process execution).
pub fn record_response(response: &async_graphql::Response) {
    let Some(observation) = current() else { return };
    observation.graphql.store(true, Ordering::Relaxed);
    for error in &response.errors {
        let code = code_label(error);
        metrics::record_error(code);
        let _ = observation.outcome.set(code.to_owned());
    }
}

/// The error's `extensions.code` as a label: codes are written by the
/// server, but anything that does not look like one counts as `OTHER`.
fn code_label(error: &ServerError) -> &str {
    let code = error.extensions.as_ref().and_then(|e| e.get("code")).and_then(|v| match v {
        async_graphql::Value::String(s) => Some(s.as_str()),
        async_graphql::Value::Enum(e) => Some(e.as_str()),
        _ => None,
    });
    match code {
        Some(c) if !c.is_empty() && c.len() <= 40 && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') => c,
        _ => "OTHER",
    }
}

/// The per-staff rate limit, applied right after sign-in, before anything
/// else of a GraphQL request runs; it also notes the staff member.
pub struct GraphqlObserver {
    per_staff: KeyedLimit<i64>,
}

impl GraphqlObserver {
    /// A limit of `per_staff` for each staff member.
    pub fn new(per_staff: Rate) -> Self {
        Self { per_staff: KeyedLimit::new(per_staff) }
    }

    /// Notes the staff member and takes one request from their allowance.
    /// Does nothing outside the HTTP middleware (in-process execution,
    /// WebSocket operations).
    ///
    /// # Errors
    /// `LIMIT_EXCEEDED` when the staff member is over the limit (the
    /// middleware then answers 429 with `Retry-After`).
    pub fn admit(&self, principal: &Principal) -> ServerResult<()> {
        let Some(observation) = current() else { return Ok(()) };
        let staff = principal.staff_id().0;
        let _ = observation.staff_id.set(staff);
        if let Err(wait) = self.per_staff.check(&staff) {
            metrics::record_rate_limited("staff");
            let _ = observation.retry_after.set(wait);
            let message = format!("too many requests from this staff member; retry in {} s", retry_after_secs(wait));
            let err: async_graphql::Error = AppError::LimitExceeded(message).into();
            let mut server_error = ServerError::new(err.message, None);
            server_error.extensions = err.extensions;
            return Err(server_error);
        }
        Ok(())
    }
}

/// Notes the name of the operation that executed (only of documents that
/// parsed and validated, so that a label never comes from a document the
/// server refused). Does nothing outside the HTTP middleware.
pub fn note_operation(operation_name: Option<&str>) {
    if let Some(observation) = current() {
        let _ = observation.operation.set(metrics::operation_label(operation_name));
    }
}

/// True when the log filter enables async-graphql's per-field spans
/// (`TAGBASE_LOG=info,async_graphql=debug`). They cost a large share of a
/// request's CPU, so the schema adds them only then.
pub fn field_spans_enabled() -> bool {
    tracing::enabled!(target: "async_graphql::graphql", tracing::Level::DEBUG)
}
