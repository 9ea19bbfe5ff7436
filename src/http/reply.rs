//! What `/graphql` answers: the media type the client asked for, the status
//! codes of the GraphQL-over-HTTP specification for it, and GraphQL-shaped
//! refusals (`{"errors":[{"message","extensions":{"code"}}]}`) for requests
//! refused before execution.

use async_graphql::{ErrorExtensionValues, ServerError};
use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;

use crate::error::{AppError, ErrorCode};
use crate::request_id;

/// The response media type, negotiated from `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Media {
    /// `application/graphql-response+json`: request errors get 4xx.
    GraphQLResponseJson,
    /// `application/json` (also for no `Accept`, `*/*`, or nothing we
    /// serve): 200 for every well-formed request.
    Json,
}

impl Media {
    pub(super) fn negotiate(headers: &HeaderMap) -> Self {
        let (mut graphql, mut json) = (0.0_f32, 0.0_f32);
        for (media, q) in accepted(headers) {
            match media.as_str() {
                "application/graphql-response+json" => graphql = graphql.max(q),
                "application/json" => json = json.max(q),
                _ => {}
            }
        }
        if graphql > 0.0 && graphql >= json { Self::GraphQLResponseJson } else { Self::Json }
    }

    fn content_type(self) -> HeaderValue {
        match self {
            Self::GraphQLResponseJson => HeaderValue::from_static("application/graphql-response+json; charset=utf-8"),
            Self::Json => HeaderValue::from_static("application/json; charset=utf-8"),
        }
    }
}

/// True when the client (a browser) asks for HTML.
pub(super) fn wants_html(headers: &HeaderMap) -> bool {
    accepted(headers).any(|(media, q)| media == "text/html" && q > 0.0)
}

/// The media ranges of `Accept` with their quality (1 when not given).
fn accepted(headers: &HeaderMap) -> impl Iterator<Item = (String, f32)> + '_ {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let q =
            parts.filter_map(|p| p.trim().strip_prefix("q=")).find_map(|q| q.trim().parse::<f32>().ok()).unwrap_or(1.0);
        (media, q)
    })
}

/// A GraphQL error with a code (and the current request id).
pub(super) fn server_error(code: ErrorCode, message: impl Into<String>) -> ServerError {
    let mut error = ServerError::new(message, None);
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", code.as_str());
    if let Some(id) = request_id::current() {
        extensions.set("requestId", id);
    }
    error.extensions = Some(extensions);
    error
}

/// A request refused before any GraphQL execution.
pub(super) struct Refusal {
    status: StatusCode,
    /// Boxed: refusals travel in `Result`s, which stay small this way.
    error: Box<ServerError>,
    allow: Option<&'static str>,
}

impl Refusal {
    pub(super) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, error: Box::new(server_error(code, message)), allow: None }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// 405 with `Allow: <allow>`.
    pub(super) fn method_not_allowed(allow: &'static str, message: impl Into<String>) -> Self {
        Self { allow: Some(allow), ..Self::new(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed, message) }
    }

    /// A failed sign-in: 401 (500 when it failed for an internal reason).
    pub(super) fn sign_in(err: AppError) -> Self {
        let status = match err {
            AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let gql: async_graphql::Error = err.into();
        let mut error = ServerError::new(gql.message, None);
        error.extensions = gql.extensions;
        Self { status, error: Box::new(error), allow: None }
    }

    /// A service's refusal, with the status its code calls for.
    pub(super) fn of(err: AppError) -> Self {
        let status = match err.code() {
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::ForbiddenField => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Validation => StatusCode::BAD_REQUEST,
            ErrorCode::LimitExceeded => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Conflict | ErrorCode::Locked => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, err.code(), err.public_message())
    }

    /// Sets `extensions.requestId` (for refusals made outside the request's
    /// scope, where [`request_id::current`] knows nothing).
    pub(super) fn with_request_id(mut self, id: Option<String>) -> Self {
        if let (Some(id), Some(extensions)) = (id, self.error.extensions.as_mut()) {
            extensions.set("requestId", id);
        }
        self
    }

    pub(super) fn respond(self, media: Media) -> Response {
        #[derive(Serialize)]
        struct Errors<'a> {
            errors: [&'a ServerError; 1],
        }
        let mut response = encoded(self.status, media, &Errors { errors: [&*self.error] });
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(allow) = self.allow {
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// The answer to one operation. A response refused before execution
/// (parse, validation, limits, persisted queries: no data, no error with a
/// path) has no `data` entry and, for `application/graphql-response+json`,
/// a 4xx status; an executed one is 200 whatever its field errors.
pub(super) fn single(media: Media, response: async_graphql::Response) -> Response {
    let refused = refused_code(&response);
    let status = match refused {
        Some(code) => status_before_execution(media, code),
        None => StatusCode::OK,
    };
    let body = body_of(&response, refused.is_some());
    let mut reply = encoded(status, media, &body);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        reply.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    reply.headers_mut().extend(response.http_headers);
    reply
}

/// The answer to a batch: 200, one entry per operation, in order.
pub(super) fn batch(media: Media, responses: Vec<async_graphql::Response>) -> Response {
    let bodies: Vec<Value> = responses.iter().map(|r| body_of(r, refused_code(r).is_some())).collect();
    encoded(StatusCode::OK, media, &bodies)
}

/// The code of the first error when the operation never executed.
fn refused_code(response: &async_graphql::Response) -> Option<&str> {
    let refused = matches!(response.data, async_graphql::Value::Null)
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty());
    if !refused {
        return None;
    }
    let code = response.errors[0].extensions.as_ref().and_then(|e| match e.get("code") {
        Some(async_graphql::Value::String(code)) => Some(code.as_str()),
        _ => None,
    });
    Some(code.unwrap_or_default())
}

fn status_before_execution(media: Media, code: &str) -> StatusCode {
    if code == ErrorCode::MethodNotAllowed.as_str() {
        return StatusCode::METHOD_NOT_ALLOWED;
    }
    if media == Media::Json {
        return StatusCode::OK;
    }
    if code == ErrorCode::PersistedQueryNotFound.as_str() {
        StatusCode::NOT_FOUND
    } else if code == ErrorCode::PersistedQueryNotInList.as_str() {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::BAD_REQUEST
    }
}

fn body_of(response: &async_graphql::Response, refused: bool) -> Value {
    let mut body = serde_json::to_value(response).unwrap_or_else(|err| {
        tracing::error!(error = %err, "cannot encode a GraphQL response");
        serde_json::json!({ "errors": [{ "message": "internal error", "extensions": { "code": "INTERNAL" } }] })
    });
    if refused && let Value::Object(fields) = &mut body {
        // The spec: an error before execution means no `data` entry.
        fields.remove("data");
    }
    body
}

fn encoded(status: StatusCode, media: Media, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, media.content_type())], bytes).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode a response body");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};

    use super::{Media, wants_html};

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn accept_headers_pick_the_media_type() {
        assert_eq!(Media::negotiate(&HeaderMap::new()), Media::Json);
        assert_eq!(Media::negotiate(&accept("*/*")), Media::Json);
        assert_eq!(Media::negotiate(&accept("application/json")), Media::Json);
        assert_eq!(Media::negotiate(&accept("application/graphql-response+json")), Media::GraphQLResponseJson);
        // Apollo Client 4 and urql.
        assert_eq!(
            Media::negotiate(&accept("application/graphql-response+json,application/json;q=0.9")),
            Media::GraphQLResponseJson
        );
        assert_eq!(Media::negotiate(&accept("application/graphql-response+json;q=0.5, application/json")), Media::Json);
        assert_eq!(Media::negotiate(&accept("application/graphql-response+json;q=0")), Media::Json);
    }

    #[test]
    fn only_browsers_asking_for_html_get_the_playground() {
        assert!(wants_html(&accept("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8")));
        assert!(!wants_html(&accept("application/graphql-response+json, application/json, multipart/mixed")));
        assert!(!wants_html(&accept("*/*")));
        assert!(!wants_html(&HeaderMap::new()));
    }
}
