//! `GET /export/customers.csv`: a CSV export as a streamed download.
//!
//! The members are found (from the in-memory index when it can answer)
//! and counted before the first byte, then rows are read and written a
//! page at a time: no whole export in memory, and the request timeout,
//! which covers the time to the response's head, never cuts a long
//! download. `X-Total-Rows` gives the row count up front, so that a front
//! end shows progress as rows arrive (one line a row after the header).
//!
//! Query parameters (all optional, combined with AND): `segment` (a
//! segment in the text form), `segmentId` (a saved segment's id),
//! `orgUnitId` (a unit and its subtree). Errors before the first byte are
//! GraphQL-shaped JSON with a code and a status; an error after it ends
//! the stream early (the client sees a truncated body, short of
//! `X-Total-Rows`) and is logged.

use std::sync::Arc;

use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::StreamExt as _;
use serde::Deserialize;

use super::reply::{Media, Refusal};
use super::{HttpState, request_id_of, sign_in};
use crate::authz::Principal;
use crate::domain::{OrgUnitId, SegmentId};
use crate::error::AppResult;
use crate::request_id;
use crate::service::customer::{CustomerFilter, SegmentFilter};
use crate::service::{export, segment as segment_service};
use crate::state::AppState;

/// The query string of an export.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ExportParams {
    segment: Option<String>,
    segment_id: Option<String>,
    org_unit_id: Option<String>,
}

/// `GET /export/customers.csv`.
pub(super) async fn customers_csv(
    State(state): State<HttpState>,
    headers: HeaderMap,
    params: Result<Query<ExportParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let media = Media::negotiate(&headers);
    let request_id = request_id_of(&headers);
    request_id::scope(request_id.clone(), async move {
        let Ok(Query(params)) = params else {
            return Refusal::bad_request("the query string takes segment, segmentId and orgUnitId").respond(media);
        };
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let caller = match sign_in(&state.app, authorization).await {
            Ok(caller) => caller,
            Err(err) => return Refusal::sign_in(err).respond(media),
        };
        match start(&state.app, caller.principal, &params).await {
            Ok(export) => streamed(state.app, export, request_id),
            Err(err) => Refusal::of(err).respond(media),
        }
    })
    .await
}

/// The filter the parameters ask for, resolved in the caller's view.
async fn filter_of(app: &AppState, principal: &Principal, params: &ExportParams) -> AppResult<CustomerFilter> {
    let limits = &app.settings.limits;
    let offset = app.settings.utc_offset;
    let mut filter = CustomerFilter {
        org_unit: params.org_unit_id.as_deref().map(|id| OrgUnitId::parse(id, "orgUnitId")).transpose()?,
        ..CustomerFilter::default()
    };
    let mut parts = Vec::new();
    if let Some(id) = params.segment_id.as_deref() {
        let id = SegmentId::parse(id, "segmentId")?;
        let saved = segment_service::find(&app.db, principal, id.0).await?;
        parts.push(segment_service::resolve_saved(&app.db, principal, limits, &saved).await?);
    }
    if let Some(text) = params.segment.as_deref() {
        let expr = segment_service::parse_text(text, offset)?;
        parts.push(segment_service::resolve(&app.db, principal, limits, expr).await?);
    }
    filter.segment = match parts.len() {
        0 => None,
        1 => Some(SegmentFilter { resolved: parts.remove(0), offset }),
        _ => {
            // Both: their conjunction, each evaluated on its own terms.
            let second = parts.pop().expect("two parts");
            let mut first = parts.pop().expect("two parts");
            first.expr = crate::segment::SegmentExpr::And(vec![first.expr, second.expr]);
            first.tags.extend(second.tags);
            first.groups.extend(second.groups);
            first.segments.extend(second.segments);
            first.merged_from.extend(second.merged_from);
            Some(SegmentFilter { resolved: first, offset })
        }
    };
    Ok(filter)
}

async fn start(app: &AppState, principal: Arc<Principal>, params: &ExportParams) -> AppResult<export::CsvExport> {
    let filter = filter_of(app, &principal, params).await?;
    let max = app.settings.limits.max_streamed_export_rows;
    export::start_export(&app.db, &app.index, principal, &filter, max).await
}

/// The streamed response: the header line, then a chunk per page of rows.
fn streamed(app: AppState, export: export::CsvExport, request_id: String) -> Response {
    let total = export.total_rows();
    let head = Bytes::from(export.head());
    let started = std::time::Instant::now();
    let pages = futures_util::stream::unfold(Some(export), move |state| {
        let db = app.db.clone();
        let request_id = request_id.clone();
        async move {
            let mut export = state?;
            match export.next_chunk(&db).await {
                Ok(Some(chunk)) => {
                    let done = export.rows_done();
                    if done % (export::PAGE * 25) < export::PAGE {
                        tracing::info!(%request_id, rows = done, total, "export progress");
                    }
                    Some((Ok(Bytes::from(chunk)), Some(export)))
                }
                Ok(None) => {
                    tracing::info!(%request_id, rows = total, elapsed_ms = started.elapsed().as_millis() as u64, "export done");
                    None
                }
                Err(err) => {
                    tracing::error!(%request_id, rows = export.rows_done(), total, error = %err.public_message(), "export cut short");
                    Some((Err(std::io::Error::other(err.message())), None))
                }
            }
        }
    });
    // Fused: the body may be polled again after its end, which `unfold`
    // alone does not allow.
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(head) }).chain(pages).fuse();
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"customers.csv\""));
    headers.insert("x-total-rows", HeaderValue::from(total));
    *response.status_mut() = StatusCode::OK;
    response
}
