//! Typed settings. Every tunable lives here (with its environment variable
//! and CLI flag in `cli.rs`); nothing else in the code base hard-codes them.

use std::net::SocketAddr;
use std::path::PathBuf;

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
    /// Clock skew allowed when checking a token's `exp` and `nbf` (any
    /// kind of token): a token is still accepted this long after it
    /// expired, and this long before it becomes valid.
    pub token_leeway: Duration,
    /// Accept HS256 tokens printed by `tagbase token` (no session behind
    /// them). Turn off in production; sessions and OIDC tokens still work.
    pub dev_tokens: bool,
    /// Lifetime of the access tokens of a session (WeCom or OIDC sign-in).
    pub access_token_ttl: Duration,
    /// A session (and its refresh tokens) ends this long after sign-in.
    pub session_ttl: Duration,
    /// Sign-in through an OpenID Connect provider; `None`: off.
    pub oidc: Option<OidcSettings>,
    /// Sign-in through WeCom (企业微信) OAuth; `None`: off.
    pub wecom: Option<WeComSettings>,
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
    /// Browser origins (`scheme://host[:port]`) granted CORS access. Empty:
    /// same-origin only, no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// A trusted-documents manifest (JSON map of SHA-256 hex → document).
    /// Set: only those operations run, and automatic persisted queries no
    /// longer register new ones.
    pub trusted_documents: Option<PathBuf>,
    /// How often this instance looks for bulk jobs to run (queued ones,
    /// and those whose instance stopped renewing its lease). `None`: this
    /// instance runs no jobs (others do).
    pub job_poll_interval: Option<Duration>,
    /// How often this instance runs a scheduler round: the scheduled
    /// rules' due slots (each slot runs once across instances), the expiry
    /// of assignments, and rule actions deferred by a lock that ended.
    /// `None`: this instance runs no rounds (others do; tests call them).
    pub schedule_interval: Option<Duration>,
    /// How often this instance folds new ADD events into the daily
    /// roll-up the usage reports read (one folder at a time per
    /// database). `None`: this instance does not fold (others do; the
    /// reports stay exact either way, reading what is not folded yet from
    /// the log).
    pub rollup_interval: Option<Duration>,
    pub limits: Limits,
}

/// An OpenID Connect provider whose ID or access tokens sign staff in.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The issuer URL; discovery is read from
    /// `<issuer>/.well-known/openid-configuration`, and tokens must carry
    /// exactly this `iss`.
    pub issuer: String,
    /// The `aud` tokens must name (a client id or an API's resource URI).
    pub audience: String,
    /// The claim whose value names the staff member: matched against
    /// identities of kind `oidc_sub`, then against logins.
    pub claim: String,
    /// The provider's keys are fetched again after this long.
    pub jwks_refresh: Duration,
    /// A token signed by an unknown key makes tagbase fetch the keys again
    /// (the provider rotated them), at most once per this interval.
    pub jwks_min_refetch: Duration,
}

impl OidcSettings {
    pub const DEFAULT_CLAIM: &'static str = "sub";

    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            claim: Self::DEFAULT_CLAIM.to_owned(),
            jwks_refresh: Duration::from_secs(3600),
            jwks_min_refetch: Duration::from_secs(10),
        }
    }
}

/// WeCom (企业微信) OAuth: the corp whose members sign in.
#[derive(Clone)]
pub struct WeComSettings {
    /// `https://qyapi.weixin.qq.com` in production.
    pub base_url: String,
    pub corp_id: String,
    pub corp_secret: String,
}

impl WeComSettings {
    pub const DEFAULT_BASE_URL: &'static str = "https://qyapi.weixin.qq.com";
}

impl std::fmt::Debug for WeComSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeComSettings")
            .field("base_url", &self.base_url)
            .field("corp_id", &self.corp_id)
            .finish_non_exhaustive()
    }
}

/// Limits of the API and of the data (SPEC §5, §10).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body on `/graphql`.
    pub max_body_bytes: usize,
    /// Fields nested in a query (introspection apart).
    pub max_query_depth: usize,
    /// Fields nested under `__schema`/`__type`, counted from the root: the
    /// standard introspection query of graphql-js needs 15; tools that
    /// follow `ofType` further get some room (introspection lists have
    /// their own bound, see `graphql::limits`).
    pub max_introspection_depth: usize,
    /// Cost of a document: each field 1, each list the rows it may return
    /// times the cost of its selection (see `graphql::limits`).
    pub max_query_complexity: usize,
    /// Selection sets nested, fragments included.
    pub max_recursive_depth: usize,
    /// Aliased fields in one document, fragments expanded.
    pub max_aliases: usize,
    /// Top-level fields of one operation.
    pub max_root_fields: usize,
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
    /// How long a bulk run's locks hold at most (they are released when
    /// the run ends).
    pub bulk_lock_seconds: i64,
    /// Nodes one segment expression may have.
    pub max_segment_nodes: usize,
    /// Rows one CSV export held in memory (the GraphQL `csv` fields) may have.
    pub max_export_rows: usize,
    /// Rows one streamed CSV export (`GET /export/customers.csv`) may have;
    /// it holds one page of rows at a time, so this is a brake on what one
    /// download may take out, not a memory bound.
    pub max_streamed_export_rows: usize,
    /// How long a request may run before it is cut off.
    pub request_timeout: Duration,
    /// Requests per client address (health, readiness and metrics aside).
    pub rate_per_address: Rate,
    /// Requests per signed-in staff member.
    pub rate_per_staff: Rate,
    /// Operations one batched request (a JSON array) may hold.
    pub max_batch: usize,
    /// Automatic persisted queries this instance remembers (least recently
    /// used ones are forgotten first).
    pub persisted_query_cache: usize,
    /// Searches by a whole phone number one staff member who sees phones
    /// only masked may run per minute (each is audited as a sensitive
    /// read); beyond it, `LIMIT_EXCEEDED`. Readers who see phones in full
    /// are not limited.
    pub phone_searches_per_minute: u32,
    /// Customer events one `recordEvents` call may carry.
    pub max_events_per_batch: usize,
    /// Longest window a rule's dry run replays, in days.
    pub max_dry_run_days: i64,
    /// Customers one bulk job may tag (its snapshot).
    pub max_customers_per_job: usize,
    /// Data rows above which a real `importCustomers` runs as a job.
    pub import_job_rows: usize,
    /// Data rows one import file may have.
    pub max_import_rows: usize,
    /// Customers a job processes per transaction: each batch commits its
    /// writes and the job's checkpoint together.
    pub job_batch_size: usize,
    /// How long an instance owns a job it runs without renewing its lease
    /// (renewed at every batch); another instance takes the job over after
    /// that.
    pub job_lease: Duration,
    /// How often `jobProgress` reads the job row.
    pub job_progress_interval: Duration,
    /// Times a job is taken up (after crashes) before it is marked failed.
    pub job_max_attempts: i32,
    /// WebSocket connections (`/graphql/ws`) one staff member may hold open
    /// on one instance; one more is closed with 4429.
    pub max_ws_connections_per_staff: usize,
    /// Subscriptions one WebSocket connection may run at once; one more
    /// is answered with an `error` message (`LIMIT_EXCEEDED`).
    pub max_subscriptions_per_connection: usize,
    /// Tag changes one `tagChanges` subscriber may have waiting to be sent;
    /// a subscriber that falls this far behind is cut off with
    /// `SLOW_CONSUMER` and the position to resume from, rather than
    /// holding memory without bound.
    pub subscription_buffer: usize,
    /// Sequence numbers a `tagChanges` resume (`afterSeq`) may go back;
    /// further back answers `RESYNC_REQUIRED`.
    pub max_replay_events: i64,
    /// How long a WebSocket may stay open without `connection_init`
    /// (closed with 4408 after it).
    pub ws_init_timeout: Duration,
    /// How often the realtime hub reads the tag event log (and the
    /// sign-in revision and change requests): at most 250 ms, so that a
    /// change reaches subscribers on every instance within a second.
    pub realtime_poll_interval: Duration,
    /// Fault injection for tests: the worker stops dead after this many
    /// batches of a job, as if the process were killed (no release, no
    /// status change).
    pub job_halt_after_batches: Option<u32>,
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
            max_introspection_depth: 20,
            max_query_complexity: 20_000,
            max_recursive_depth: 32,
            max_aliases: 50,
            max_root_fields: 20,
            max_directives: 16,
            default_page_size: 20,
            max_page_size: 100,
            max_tags_per_customer: 200,
            tag_alert_threshold: 20,
            max_customers_per_tagging: 1_000,
            max_tags_per_tagging: 50,
            bulk_threshold: 200,
            bulk_lock_seconds: 15 * 60,
            max_segment_nodes: 500,
            max_export_rows: 100_000,
            max_streamed_export_rows: 2_000_000,
            request_timeout: Duration::from_secs(30),
            // Generous: a whole office behind one NAT address, and a busy
            // integration signed in as one staff member, stay under them.
            rate_per_address: Rate { per_second: 1_000, burst: 2_000 },
            rate_per_staff: Rate { per_second: 200, burst: 400 },
            max_batch: 10,
            persisted_query_cache: 1_000,
            phone_searches_per_minute: 20,
            max_events_per_batch: 1_000,
            max_dry_run_days: 90,
            max_customers_per_job: 2_000_000,
            import_job_rows: 2_000,
            max_import_rows: 1_000_000,
            job_batch_size: 10_000,
            job_lease: Duration::from_secs(30),
            job_progress_interval: Duration::from_millis(250),
            job_max_attempts: 5,
            job_halt_after_batches: None,
            max_ws_connections_per_staff: 8,
            max_subscriptions_per_connection: 20,
            subscription_buffer: 20_000,
            max_replay_events: 1_000_000,
            ws_init_timeout: Duration::from_secs(10),
            realtime_poll_interval: Duration::from_millis(200),
        }
    }
}

impl Settings {
    pub const DEFAULT_DATABASE_URL: &'static str = "sqlite://tagbase.db?mode=rwc";
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
    pub const DEFAULT_ISSUER: &'static str = "tagbase";
    pub const DEFAULT_AUDIENCE: &'static str = "tagbase-api";
    pub const DEFAULT_TOKEN_LEEWAY: Duration = Duration::from_secs(5);
    pub const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
    pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

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
            token_leeway: Self::DEFAULT_TOKEN_LEEWAY,
            dev_tokens: true,
            access_token_ttl: Self::DEFAULT_ACCESS_TOKEN_TTL,
            session_ttl: Self::DEFAULT_SESSION_TTL,
            oidc: None,
            wecom: None,
            utc_offset: Self::default_utc_offset(),
            index_follow_interval: Some(Duration::from_millis(250)),
            metrics_listen: None,
            metrics_on_main: false,
            cors_origins: Vec::new(),
            trusted_documents: None,
            job_poll_interval: Some(Duration::from_millis(500)),
            schedule_interval: Some(Duration::from_secs(30)),
            rollup_interval: Some(Duration::from_secs(5)),
            limits: Limits::default(),
        }
    }
}
