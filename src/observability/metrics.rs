//! Prometheus metrics: the recorder (installed once per process), the
//! series this server writes, and `/metrics` on its own listener or, when
//! the operator allows it, on the main listener behind a token.

use std::collections::HashSet;
use std::sync::{OnceLock, RwLock};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use entity::tag_event;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sea_orm::{ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, QuerySelect};
use serde_json::json;

use crate::auth;
use crate::authz::Action;
use crate::error::AppError;
use crate::state::AppState;

/// Latency buckets from 0.1 ms to 30 s (the request timeout).
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Distinct operation names kept as label values; later ones count as
/// `other`, so that clients cannot grow the series without bound.
pub const MAX_OPERATION_NAMES: usize = 200;
/// Longer names count as `other`.
pub const MAX_OPERATION_NAME_LEN: usize = 64;

pub const ANONYMOUS: &str = "anonymous";
pub const OTHER: &str = "other";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static OPERATIONS: OnceLock<RwLock<HashSet<String>>> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same
/// handle). `None` when another recorder was installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(err) => {
                    tracing::warn!(error = %err, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    describe_counter!("tagbase_graphql_requests_total", "GraphQL requests by operation name and outcome");
    describe_histogram!(
        "tagbase_graphql_request_duration_seconds",
        metrics::Unit::Seconds,
        "GraphQL request latency by operation name"
    );
    describe_counter!("tagbase_graphql_errors_total", "GraphQL errors by extensions.code");
    describe_counter!("tagbase_http_responses_total", "HTTP responses by status (metrics scrapes aside)");
    describe_counter!("tagbase_rate_limited_total", "Requests refused by a rate limit, by key (address, staff)");
    describe_gauge!("tagbase_db_pool_connections", "Database pool connections by state (idle, in_use)");
    describe_gauge!("tagbase_db_pool_max_connections", "Database pool size limit");
    describe_gauge!("tagbase_segment_index_ready", "1 once the segment index is built");
    describe_gauge!("tagbase_segment_index_bitmaps", "Bitmaps in the segment index (tags and org units)");
    describe_gauge!("tagbase_segment_index_customers", "Customers in the segment index");
    describe_gauge!("tagbase_segment_index_bytes", "Approximate memory of the segment index");
    describe_gauge!("tagbase_segment_index_applied_seq", "Last tag event applied by the segment index");
    describe_gauge!("tagbase_tag_event_log_max_seq", "Largest sequence number of the tag event log");
    describe_gauge!("tagbase_segment_index_lag_events", "Tag events written but not yet applied by the index");
}

/// The label value for an operation name: `anonymous` without one, the
/// name itself for the first [`MAX_OPERATION_NAMES`] names seen, `other`
/// beyond them or for names longer than [`MAX_OPERATION_NAME_LEN`].
pub fn operation_label(name: Option<&str>) -> String {
    let Some(name) = name.filter(|n| !n.is_empty()) else { return ANONYMOUS.to_owned() };
    if name.len() > MAX_OPERATION_NAME_LEN {
        return OTHER.to_owned();
    }
    let names = OPERATIONS.get_or_init(Default::default);
    if names.read().unwrap_or_else(|e| e.into_inner()).contains(name) {
        return name.to_owned();
    }
    let mut names = names.write().unwrap_or_else(|e| e.into_inner());
    if names.len() < MAX_OPERATION_NAMES {
        names.insert(name.to_owned());
        return name.to_owned();
    }
    if names.contains(name) { name.to_owned() } else { OTHER.to_owned() }
}

/// One GraphQL request done.
pub(super) fn record_graphql_request(operation: &str, outcome: &str, seconds: f64) {
    counter!("tagbase_graphql_requests_total", "operation" => operation.to_owned(), "outcome" => outcome.to_owned())
        .increment(1);
    histogram!("tagbase_graphql_request_duration_seconds", "operation" => operation.to_owned()).record(seconds);
}

pub(super) fn record_error(code: &str) {
    counter!("tagbase_graphql_errors_total", "code" => code.to_owned()).increment(1);
}

pub(super) fn record_http_response(status: StatusCode) {
    counter!("tagbase_http_responses_total", "status" => status.as_str().to_owned()).increment(1);
}

pub(super) fn record_rate_limited(key: &'static str) {
    counter!("tagbase_rate_limited_total", "key" => key).increment(1);
}

/// Reads the gauges that describe state rather than events: the pool,
/// the segment index and how far it is behind the event log.
async fn refresh_gauges(app: &AppState) {
    if let Some((size, idle, max)) = pool_use(&app.db) {
        gauge!("tagbase_db_pool_connections", "state" => "idle").set(f64::from(idle));
        gauge!("tagbase_db_pool_connections", "state" => "in_use").set(f64::from(size.saturating_sub(idle)));
        gauge!("tagbase_db_pool_max_connections").set(f64::from(max));
    }
    let index = app.index.stats();
    gauge!("tagbase_segment_index_ready").set(if app.index.is_ready() { 1.0 } else { 0.0 });
    gauge!("tagbase_segment_index_bitmaps").set(index.bitmaps as f64);
    gauge!("tagbase_segment_index_customers").set(index.customers as f64);
    gauge!("tagbase_segment_index_bytes").set(index.bytes as f64);
    gauge!("tagbase_segment_index_applied_seq").set(index.applied_seq as f64);
    match log_max_seq(&app.db).await {
        Ok(max) => {
            gauge!("tagbase_tag_event_log_max_seq").set(max as f64);
            gauge!("tagbase_segment_index_lag_events").set(max.saturating_sub(index.applied_seq).max(0) as f64);
        }
        Err(err) => tracing::warn!(error = %err, "reading the tag event log position for metrics failed"),
    }
}

/// (open connections, idle connections, limit) of the sqlx pool under
/// sea-orm.
fn pool_use(db: &DatabaseConnection) -> Option<(u32, u32, u32)> {
    let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = db.get_postgres_connection_pool();
            Some((pool.size(), clamp(pool.num_idle()), pool.options().get_max_connections()))
        }
        DbBackend::Sqlite => {
            let pool = db.get_sqlite_connection_pool();
            Some((pool.size(), clamp(pool.num_idle()), pool.options().get_max_connections()))
        }
        _ => None,
    }
}

async fn log_max_seq(db: &DatabaseConnection) -> Result<i64, sea_orm::DbErr> {
    Ok(tag_event::Entity::find()
        .select_only()
        .column_as(tag_event::Column::Seq.max(), "m")
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten()
        .unwrap_or(0))
}

async fn render(app: &AppState) -> Response {
    refresh_gauges(app).await;
    let body = install().map(|handle| {
        handle.run_upkeep();
        handle.render()
    });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body.unwrap_or_default()).into_response()
}

/// `/metrics` without a token, for the operator's metrics listener.
pub fn listener_router(app: AppState) -> Router {
    Router::new()
        .route("/metrics", get(|State(app): State<AppState>| async move { render(&app).await }))
        .with_state(app)
}

/// `/metrics` on the main listener when the settings allow it, for bearer
/// tokens of staff holding `audit_log:read` somewhere; no route otherwise.
pub fn main_listener_routes<S: Clone + Send + Sync + 'static>(app: AppState) -> Router<S> {
    if !app.settings.metrics_on_main {
        return Router::new();
    }
    Router::new().route("/metrics", get(guarded)).with_state(app)
}

async fn guarded(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match auth::authenticate(&app.db, &app.keys, &app.authz, authorization).await {
        Ok(principal) if principal.may_anywhere(Action::AuditLogRead) => render(&app).await,
        Ok(_) => refusal(StatusCode::FORBIDDEN, AppError::Forbidden("metrics need audit_log:read".to_owned())),
        Err(err @ AppError::Unauthenticated(_)) => refusal(StatusCode::UNAUTHORIZED, err),
        Err(err) => refusal(StatusCode::INTERNAL_SERVER_ERROR, err),
    }
}

fn refusal(status: StatusCode, err: AppError) -> Response {
    let code = err.code();
    (status, Json(json!({ "errors": [{ "message": err.public_message(), "extensions": { "code": code.as_str() } }] })))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_labels_are_bounded() {
        assert_eq!(operation_label(None), ANONYMOUS);
        assert_eq!(operation_label(Some("")), ANONYMOUS);
        assert_eq!(operation_label(Some(&"x".repeat(MAX_OPERATION_NAME_LEN + 1))), OTHER);
        assert_eq!(operation_label(Some("LabelTestKnown")), "LabelTestKnown");
        for i in 0..MAX_OPERATION_NAMES {
            operation_label(Some(&format!("LabelTestFill{i}")));
        }
        assert_eq!(operation_label(Some("LabelTestOneTooMany")), OTHER);
        assert_eq!(operation_label(Some("LabelTestKnown")), "LabelTestKnown", "names seen before keep their label");
    }
}
