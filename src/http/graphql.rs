//! `/graphql` as the GraphQL-over-HTTP specification says: POST executes
//! a JSON request (or a batch: a JSON array of them); GET executes queries
//! given as `?query=&variables=&operationName=&extensions=` (mutations
//! answer 405), and serves the playground to browsers asking for HTML.
//!
//! The request is read here rather than by async-graphql-axum's extractor:
//! its rejections are plain-text Rust debug output with no code, an
//! oversize chunked body becomes 400 rather than 413, and its GET parser
//! drops `operationName`.

use async_graphql::{BatchRequest, Request, Variables};
use axum::{
    body::Bytes,
    extract::{FromRequest, Query, State},
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::Value;

use super::read_only::OverGet;
use super::reply::{self, Media, Refusal, wants_html};
use super::{HttpState, execute_as, request_id_of, sign_in};
use crate::config::Limits;
use crate::error::ErrorCode;
use crate::request_id;

/// `GET /graphql`.
pub(super) async fn get(State(state): State<HttpState>, headers: HeaderMap, uri: Uri) -> Response {
    if wants_html(&headers) {
        return super::graphiql().await.into_response();
    }
    let media = Media::negotiate(&headers);
    request_id::scope(request_id_of(&headers), async move {
        match request_from_uri(&uri) {
            Ok(request) => single(&state, &headers, media, request.data(OverGet)).await,
            Err(refusal) => refusal.respond(media),
        }
    })
    .await
}

/// `POST /graphql`.
pub(super) async fn post(State(state): State<HttpState>, request: axum::extract::Request) -> Response {
    let headers = request.headers().clone();
    let media = Media::negotiate(&headers);
    request_id::scope(request_id_of(&headers), async move {
        match read_body(&state.app.settings.limits, request).await {
            Ok(BatchRequest::Single(request)) => single(&state, &headers, media, request).await,
            Ok(BatchRequest::Batch(requests)) => batch(&state, &headers, media, requests).await,
            Err(refusal) => refusal.respond(media),
        }
    })
    .await
}

/// Any other method on `/graphql`.
pub(super) async fn other_method(headers: HeaderMap) -> Response {
    Refusal::method_not_allowed("GET, POST", "/graphql takes POST (and GET for queries)")
        .respond(Media::negotiate(&headers))
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

async fn single(state: &HttpState, headers: &HeaderMap, media: Media, request: Request) -> Response {
    let caller = match sign_in(&state.app, authorization(headers)).await {
        Ok(caller) => caller,
        Err(err) => return Refusal::sign_in(err).respond(media),
    };
    reply::single(media, execute_as(&state.app, &state.schema, &caller, request).await)
}

/// One sign-in for the whole batch; then each operation runs on its own
/// (its own limits, its own DataLoaders), one after the other so that a
/// batch cannot take more of the database at once than a request does.
async fn batch(state: &HttpState, headers: &HeaderMap, media: Media, requests: Vec<Request>) -> Response {
    let caller = match sign_in(&state.app, authorization(headers)).await {
        Ok(caller) => caller,
        Err(err) => return Refusal::sign_in(err).respond(media),
    };
    let mut responses = Vec::with_capacity(requests.len());
    for request in requests {
        responses.push(execute_as(&state.app, &state.schema, &caller, request).await);
    }
    reply::batch(media, responses)
}

/// The GET parameters, each JSON-encoded but `query` and `operationName`.
#[derive(Deserialize)]
struct GetParams {
    query: Option<String>,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
    variables: Option<String>,
    extensions: Option<String>,
}

fn request_from_uri(uri: &Uri) -> Result<Request, Refusal> {
    let Query(params) = Query::<GetParams>::try_from_uri(uri).map_err(|r| Refusal::bad_request(r.body_text()))?;
    let mut request = Request::new(params.query.unwrap_or_default());
    request.operation_name = params.operation_name.filter(|name| !name.is_empty());
    if let Some(raw) = params.variables.as_deref().filter(|raw| !raw.is_empty()) {
        request.variables = serde_json::from_str::<Option<Variables>>(raw)
            .map_err(|e| Refusal::bad_request(format!("`variables` is not a JSON object: {e}")))?
            .unwrap_or_default();
    }
    if let Some(raw) = params.extensions.as_deref().filter(|raw| !raw.is_empty()) {
        request.extensions = serde_json::from_str(raw)
            .map_err(|e| Refusal::bad_request(format!("`extensions` is not a JSON object: {e}")))?;
    }
    if request.query.trim().is_empty() && !request.extensions.0.contains_key("persistedQuery") {
        return Err(Refusal::bad_request(
            "GET /graphql needs ?query=… (or a persisted query hash); a browser asking for HTML gets the playground",
        ));
    }
    Ok(request)
}

/// Reads a POST body: JSON only, at most `max_body_bytes` (declared or
/// streamed), one request or a batch of at most `max_batch`.
async fn read_body(limits: &Limits, request: axum::extract::Request) -> Result<BatchRequest, Refusal> {
    if let Some(content_type) = request.headers().get(header::CONTENT_TYPE) {
        let content_type = content_type.to_str().unwrap_or_default();
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::BadRequest,
                format!("send the request as application/json, not {content_type:?}"),
            ));
        }
    }
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::LimitExceeded,
            format!("the request body is larger than {} bytes", limits.max_body_bytes),
        )
    };
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limits.max_body_bytes as u64) {
        return Err(too_large());
    }
    // The route's `DefaultBodyLimit` bounds a chunked body as it streams.
    let body = Bytes::from_request(request, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            Refusal::bad_request(format!("cannot read the request body: {}", rejection.body_text()))
        }
    })?;
    parse_body(&body, limits.max_batch)
}

fn parse_body(body: &[u8], max_batch: usize) -> Result<BatchRequest, Refusal> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::bad_request(format!("the request body is not valid JSON: {e}")))?;
    match value {
        Value::Object(_) => parse_request(value, None).map(BatchRequest::Single),
        Value::Array(items) if items.is_empty() => Err(Refusal::bad_request("an empty batch")),
        Value::Array(items) if items.len() > max_batch => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::LimitExceeded,
            format!("a batch may hold at most {max_batch} operations, this one holds {}", items.len()),
        )),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| parse_request(item, Some(index)))
            .collect::<Result<Vec<_>, _>>()
            .map(BatchRequest::Batch),
        _ => Err(Refusal::bad_request(
            "the request body must be a JSON object with a `query` (or an array of them: a batch)",
        )),
    }
}

fn parse_request(value: Value, index: Option<usize>) -> Result<Request, Refusal> {
    let at = index.map(|i| format!("batch entry {i}: ")).unwrap_or_default();
    if !value.is_object() {
        return Err(Refusal::bad_request(format!("{at}not a JSON object")));
    }
    let request: Request =
        serde_json::from_value(value).map_err(|e| Refusal::bad_request(format!("{at}not a GraphQL request: {e}")))?;
    if request.query.trim().is_empty() && !request.extensions.0.contains_key("persistedQuery") {
        return Err(Refusal::bad_request(format!("{at}no `query`")));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use async_graphql::BatchRequest;

    use super::parse_body;

    fn refusal_of(body: &str) -> String {
        match parse_body(body.as_bytes(), 3) {
            Ok(_) => panic!("{body} should be refused"),
            Err(refusal) => {
                let response = refusal.respond(super::Media::Json);
                assert!(response.status().is_client_error());
                format!("{}", response.status().as_u16())
            }
        }
    }

    #[test]
    fn bodies_that_are_not_graphql_requests_are_refused() {
        for body in [
            "",
            "{",
            "[]",
            "null",
            "42",
            "\"{ a }\"",
            "[1]",
            "{\"query\": 1}",
            "{}",
            "{\"query\": \"{ a }\", \"variables\": {\"n\": 1e309}}",
        ] {
            assert_eq!(refusal_of(body), "400", "{body}");
        }
    }

    #[test]
    fn batches_are_arrays_of_requests_up_to_the_limit() {
        let batch = parse_body(br#"[{"query":"{ a }"},{"query":"{ b }"}]"#, 3).ok().unwrap();
        assert!(matches!(batch, BatchRequest::Batch(ref requests) if requests.len() == 2));
        assert_eq!(refusal_of(r#"[{"query":"{a}"},{"query":"{a}"},{"query":"{a}"},{"query":"{a}"}]"#), "400");
        let single = parse_body(br#"{"query":"{ a }","variables":null,"operationName":null}"#, 3).ok().unwrap();
        assert!(matches!(single, BatchRequest::Single(_)));
    }
}
