//! W3C Trace Context (`traceparent`): an incoming trace is joined, a fresh
//! one is started when none (or an invalid one) came, and the response
//! carries the `traceparent` of this server's span.
//!
//! Parsed by hand: the header is one fixed-width line, and the context is
//! needed whether or not spans are exported (an OpenTelemetry propagator
//! would need the exporter's context machinery on every request).

use std::fmt;

use axum::http::{HeaderMap, HeaderValue, Request};
use rand::RngCore as _;
use tower_http::request_id::RequestId;

pub const TRACEPARENT: &str = "traceparent";

/// The trace a request belongs to and this server's span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The caller's span, when the trace was joined.
    pub parent_id: Option<u64>,
    /// This server's span (the response's `traceparent` names it).
    pub span_id: u64,
    pub flags: u8,
}

impl TraceContext {
    /// Joins the trace of a valid `traceparent` header, or starts one.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut rng = rand::rng();
        let span_id = nonzero_u64(&mut rng);
        match headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()).and_then(parse) {
            Some((trace_id, parent_id, flags)) => Self { trace_id, parent_id: Some(parent_id), span_id, flags },
            None => {
                let trace_id = loop {
                    let id = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
                    if id != 0 {
                        break id;
                    }
                };
                Self { trace_id, parent_id: None, span_id, flags: 0x01 }
            }
        }
    }

    /// The trace id as 32 lowercase hex digits, as logs show it.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The `traceparent` value naming this server's span.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.to_string()).expect("hex digits and dashes are a valid header value")
    }

    /// The context a request carries (set by the observing middleware).
    pub fn of<B>(req: &Request<B>) -> Option<&Self> {
        req.extensions().get::<Self>()
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

/// The span of one HTTP request (tower-http's `TraceLayer`): every log
/// line inside it carries the request id and the trace id.
pub fn request_span<B>(req: &Request<B>) -> tracing::Span {
    let request_id = req.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).unwrap_or("-");
    let trace = TraceContext::of(req);
    let trace_id = trace.map_or(0, |t| t.trace_id);
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %request_id,
        trace_id = %format_args!("{trace_id:032x}"),
    );
    if let Some(trace) = trace.filter(|_| super::otel::enabled()) {
        super::otel::start_request_span(&span, trace);
    }
    span
}

fn nonzero_u64(rng: &mut impl rand::RngCore) -> u64 {
    loop {
        let id = rng.next_u64();
        if id != 0 {
            return id;
        }
    }
}

/// `version-traceid-parentid-flags`, as Trace Context level 1 reads it:
/// lowercase hex, version `ff` invalid, all-zero ids invalid; a later
/// version may append fields after a dash, which are ignored.
fn parse(header: &str) -> Option<(u128, u64, u8)> {
    let header = header.trim();
    let bytes = header.as_bytes();
    if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let version = hex::<u8>(&header[0..2])?;
    match (version, bytes.len()) {
        (0xff, _) => return None,
        (0, len) if len != 55 => return None,
        (_, len) if len > 55 && bytes[55] != b'-' => return None,
        _ => {}
    }
    let trace_id = hex::<u128>(&header[3..35])?;
    let parent_id = hex::<u64>(&header[36..52])?;
    let flags = hex::<u8>(&header[53..55])?;
    (trace_id != 0 && parent_id != 0).then_some((trace_id, parent_id, flags))
}

trait FromHex: Sized {
    fn from_hex(digits: &str) -> Option<Self>;
}

macro_rules! from_hex {
    ($($t:ty),*) => {$(
        impl FromHex for $t {
            fn from_hex(digits: &str) -> Option<Self> {
                <$t>::from_str_radix(digits, 16).ok()
            }
        }
    )*};
}
from_hex!(u8, u64, u128);

/// Lowercase hex digits only (`from_str_radix` also takes uppercase and a
/// sign).
fn hex<T: FromHex>(digits: &str) -> Option<T> {
    digits.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)).then(|| T::from_hex(digits)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_joined() {
        let (trace, parent, flags) = parse(VALID).unwrap();
        assert_eq!(format!("{trace:032x}"), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(flags, 1);
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        let ctx = TraceContext::from_headers(&headers);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(ctx.span_id, parent, "the server's span is its own");
        assert!(ctx.to_string().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "garbage",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        let ctx = TraceContext::from_headers(&headers);
        assert_eq!(ctx.parent_id, None);
        assert_ne!(ctx.trace_id, 0);
    }

    #[test]
    fn later_versions_may_append_fields() {
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes").is_some());
    }
}
