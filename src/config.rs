//! Typed settings. Every tunable lives here (with its environment variable
//! and CLI flag in `cli.rs`); nothing else in the code base hard-codes them.

use std::net::SocketAddr;

use chrono::FixedOffset;
use std::time::Duration;

/// Settings of a running tagbase.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub listen: SocketAddr,
    /// HMAC key for tokens. `None`: use (or create) the key stored in the
    /// database, so a fresh demo needs no set-up.
    pub jwt_secret: Option<String>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// The organisation's time zone, as a fixed UTC offset (China keeps no
    /// daylight saving time): dates in segments are midnight there.
    pub utc_offset: FixedOffset,
    /// How often the segment index reads the tag event log for other
    /// instances' writes (this instance's own show at once). `None`: no
    /// background follower; the index is built and caught up only when
    /// asked (tests that count statements use this).
    pub index_follow_interval: Option<Duration>,
    /// Where Prometheus scrapes `/metrics` without a token. `None`: no
    /// metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Also serve `/metrics` on the main listener, to a bearer token of a
    /// staff member holding `audit_log:read` somewhere.
    pub metrics_on_main: bool,
    pub limits: Limits,
}

/// Limits of the API and of the data (SPEC §5, §10).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body on `/graphql`.
    pub max_body_bytes: usize,
    pub max_query_depth: usize,
    pub max_query_complexity: usize,
    pub max_recursive_depth: usize,
    /// Directives one operation may use.
    pub max_directives: usize,
    /// Page size used when `first` is not given.
    pub default_page_size: u32,
    /// `first` is clamped to this.
    pub max_page_size: u32,
    /// Hard cap of tags one customer may hold.
    pub max_tags_per_customer: u32,
    /// Crossing this count raises an alert for review.
    pub tag_alert_threshold: u32,
    /// Customers one `tagCustomers`/`untagCustomers` call may touch; larger
    /// runs are bulk jobs.
    pub max_customers_per_tagging: usize,
    /// Tags one tagging call may name.
    pub max_tags_per_tagging: usize,
    /// A tagging call naming more customers than this is a bulk operation:
    /// it runs under modification locks for callers with
    /// `customer_tag:bulk`, and becomes a change request for others.
    pub bulk_threshold: usize,
    /// Customers per transaction of a bulk run.
    pub bulk_batch_size: usize,
    /// How long a bulk run's locks hold at most (they are released when
    /// the run ends).
    pub bulk_lock_seconds: i64,
    /// Nodes one segment expression may have.
    pub max_segment_nodes: usize,
    /// Rows one CSV export may have.
    pub max_export_rows: usize,
    /// How long a request may run before it is cut off.
    pub request_timeout: Duration,
    /// Requests per client address (health, readiness and metrics aside).
    pub rate_per_address: Rate,
    /// Requests per signed-in staff member.
    pub rate_per_staff: Rate,
}

/// A request rate: a steady rate per second and a burst allowance.
/// A rate of 0 turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    pub const OFF: Rate = Rate { per_second: 0, burst: 0 };

    /// `per_second` with a burst of twice that.
    pub const fn per_second(per_second: u32) -> Self {
        Self { per_second, burst: per_second.saturating_mul(2) }
    }

    pub fn is_off(self) -> bool {
        self.per_second == 0
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_query_depth: 12,
            max_query_complexity: 5_000,
            max_recursive_depth: 32,
            max_directives: 16,
            default_page_size: 20,
            max_page_size: 100,
            max_tags_per_customer: 200,
            tag_alert_threshold: 20,
            max_customers_per_tagging: 1_000,
            max_tags_per_tagging: 50,
            bulk_threshold: 200,
            bulk_batch_size: 200,
            bulk_lock_seconds: 15 * 60,
            max_segment_nodes: 500,
            max_export_rows: 100_000,
            request_timeout: Duration::from_secs(30),
            // Generous: a whole office behind one NAT address, and a busy
            // integration signed in as one staff member, stay under them.
            rate_per_address: Rate { per_second: 1_000, burst: 2_000 },
            rate_per_staff: Rate { per_second: 200, burst: 400 },
        }
    }
}

impl Settings {
    pub const DEFAULT_DATABASE_URL: &'static str = "sqlite://tagbase.db?mode=rwc";
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
    pub const DEFAULT_ISSUER: &'static str = "tagbase";
    pub const DEFAULT_AUDIENCE: &'static str = "tagbase-api";

    /// Asia/Shanghai.
    pub fn default_utc_offset() -> FixedOffset {
        FixedOffset::east_opt(8 * 3600).expect("valid offset")
    }

    /// Settings for a given database with every other value at its default.
    pub fn for_database(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            listen: Self::DEFAULT_LISTEN.parse().expect("default listen address parses"),
            jwt_secret: None,
            jwt_issuer: Self::DEFAULT_ISSUER.to_owned(),
            jwt_audience: Self::DEFAULT_AUDIENCE.to_owned(),
            utc_offset: Self::default_utc_offset(),
            index_follow_interval: Some(Duration::from_millis(250)),
            metrics_listen: None,
            metrics_on_main: false,
            limits: Limits::default(),
        }
    }
}
