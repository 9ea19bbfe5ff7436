//! One access-log line per request, target `tagbase::access`: at `info`,
//! except health probes and metrics scrapes (at `debug`). It names the
//! staff member by id and never carries a header value, so no token.

use std::time::Duration;

pub const TARGET: &str = "tagbase::access";

/// What the line says.
pub struct Entry<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The GraphQL operation's label (`anonymous`, `other`), for GraphQL
    /// requests.
    pub operation: Option<&'a str>,
    pub status: u16,
    /// `ok` or the first error's code.
    pub outcome: &'a str,
    pub duration: Duration,
    pub request_id: &'a str,
    pub trace_id: u128,
    pub staff_id: Option<i64>,
    /// Probes and scrapes: logged at `debug`.
    pub quiet: bool,
}

pub fn write(e: &Entry<'_>) {
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                target: TARGET,
                $level,
                method = %e.method,
                path = %e.path,
                operation = %e.operation.unwrap_or("-"),
                status = e.status,
                outcome = %e.outcome,
                duration_ms = (e.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
                request_id = %e.request_id,
                trace_id = %format_args!("{:032x}", e.trace_id),
                staff_id = %StaffId(e.staff_id),
                "request"
            )
        };
    }
    if e.quiet {
        line!(tracing::Level::DEBUG);
    } else {
        line!(tracing::Level::INFO);
    }
}

/// A staff id, or `-` before sign-in.
struct StaffId(Option<i64>);

impl std::fmt::Display for StaffId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => write!(f, "{id}"),
            None => f.write_str("-"),
        }
    }
}
