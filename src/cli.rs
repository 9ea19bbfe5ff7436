//! The command line: `serve`, `migrate`, `seed-demo`, `token`,
//! `export-schema`. Every setting is a flag with a matching environment
//! variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use chrono::FixedOffset;
use clap::{Args, Parser, Subcommand, ValueEnum};
use entity::staff;
use opentelemetry_sdk::trace::SdkTracer;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::auth::JwtKeys;
use crate::authz::Authz;
use crate::config::{Limits, OidcSettings, Rate, Settings, WeComSettings};
use crate::observability::otel::Telemetry;
use crate::service::tag_library;
use crate::startup::Application;
use crate::{db, graphql, seed};

#[derive(Debug, Parser)]
#[command(name = "tagbase", version, about = "Customer-tag management backend (GraphQL)")]
pub struct Cli {
    /// Database URL: `sqlite://file.db` (created when missing) or
    /// `postgres://user@host/db`.
    #[arg(long, env = "DATABASE_URL", default_value = Settings::DEFAULT_DATABASE_URL, global = true)]
    database_url: String,

    /// HMAC key for tokens (at least 32 bytes). Unset: a random key is
    /// created in the database on first start and used by every command.
    #[arg(long, env = "TAGBASE_JWT_SECRET", hide_env_values = true, global = true)]
    jwt_secret: Option<String>,

    /// Clock skew allowed on token expiry and not-before, e.g. `5s`.
    #[arg(long, env = "TAGBASE_TOKEN_LEEWAY", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
    token_leeway: Duration,

    /// Accept development tokens printed by `tagbase token`. Set to `false`
    /// in production.
    #[arg(long, env = "TAGBASE_DEV_TOKENS", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    dev_tokens: bool,

    /// Lifetime of a session's access tokens.
    #[arg(long, env = "TAGBASE_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = humantime::parse_duration, global = true)]
    access_token_ttl: Duration,

    /// A session ends this long after sign-in, refreshed or not.
    #[arg(long, env = "TAGBASE_SESSION_TTL", default_value = "7d", value_parser = humantime::parse_duration, global = true)]
    session_ttl: Duration,

    /// Issuer URL of an OpenID Connect provider; unset: OIDC sign-in off.
    #[arg(long, env = "TAGBASE_OIDC_ISSUER", global = true)]
    oidc_issuer: Option<String>,

    /// The audience OIDC tokens must carry (client id or resource).
    #[arg(long, env = "TAGBASE_OIDC_AUDIENCE", default_value = "tagbase-api", global = true)]
    oidc_audience: String,

    /// The claim naming the staff member: `sub`, `preferred_username`,
    /// `email`, … (matched against `oidc_sub` identities, then logins).
    #[arg(long, env = "TAGBASE_OIDC_CLAIM", default_value = "sub", global = true)]
    oidc_claim: String,

    /// How often the provider's keys are fetched again.
    #[arg(long, env = "TAGBASE_OIDC_JWKS_REFRESH", default_value = "1h", value_parser = humantime::parse_duration, global = true)]
    oidc_jwks_refresh: Duration,

    /// Least time between two fetches caused by tokens with unknown keys.
    #[arg(long, env = "TAGBASE_OIDC_JWKS_MIN_REFETCH", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    oidc_jwks_min_refetch: Duration,

    /// WeCom API base URL.
    #[arg(long, env = "TAGBASE_WECOM_BASE_URL", default_value = "https://qyapi.weixin.qq.com", global = true)]
    wecom_base_url: String,

    /// WeCom corp id; with the secret, turns WeCom sign-in on.
    #[arg(long, env = "TAGBASE_WECOM_CORP_ID", global = true)]
    wecom_corp_id: Option<String>,

    /// WeCom application secret (corpsecret).
    #[arg(long, env = "TAGBASE_WECOM_CORP_SECRET", hide_env_values = true, global = true)]
    wecom_corp_secret: Option<String>,

    /// Log filter, e.g. `info` or `tagbase=debug,info`.
    #[arg(long, env = "TAGBASE_LOG", default_value = "info", global = true)]
    log: String,

    #[arg(long, env = "TAGBASE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    /// The organisation's time zone as a UTC offset; dates in segments are
    /// midnight there.
    #[arg(long, env = "TAGBASE_UTC_OFFSET", default_value = "+08:00", value_parser = parse_offset, global = true)]
    utc_offset: FixedOffset,

    /// How often a serving instance runs a scheduler round (scheduled
    /// rules' due slots, expiry, deferred rule actions); `0s`: never (other
    /// instances do).
    #[arg(long, env = "TAGBASE_SCHEDULE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    schedule_interval: std::time::Duration,

    #[command(flatten)]
    limits: LimitArgs,
    /// Whole-number phone searches per minute for a staff member who sees
    /// phones only masked (audited; beyond it, LIMIT_EXCEEDED).
    #[arg(long, env = "TAGBASE_PHONE_SEARCHES_PER_MINUTE", default_value_t = Limits::default().phone_searches_per_minute, global = true)]
    phone_searches_per_minute: u32,

    #[command(subcommand)]
    command: Command,
}

/// Bounds on GraphQL documents (the others keep their defaults).
#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Cost a document may have: each field 1, each list the rows it may
    /// return times the cost of its selection.
    #[arg(long, env = "TAGBASE_MAX_QUERY_COMPLEXITY", default_value_t = Limits::default().max_query_complexity, global = true)]
    max_query_complexity: usize,
    /// Aliased fields a document may have.
    #[arg(long, env = "TAGBASE_MAX_ALIASES", default_value_t = Limits::default().max_aliases, global = true)]
    max_aliases: usize,
    /// Top-level fields an operation may have.
    #[arg(long, env = "TAGBASE_MAX_ROOT_FIELDS", default_value_t = Limits::default().max_root_fields, global = true)]
    max_root_fields: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate the database, then serve the API.
    Serve {
        #[arg(long, env = "TAGBASE_LISTEN", default_value = Settings::DEFAULT_LISTEN)]
        listen: SocketAddr,
        /// Load the demo data (as `seed-demo`) before serving.
        #[arg(long)]
        demo: bool,
        /// Address of a second listener that serves Prometheus `/metrics`
        /// without a token, e.g. `127.0.0.1:9090`. Unset: none.
        #[arg(long, env = "TAGBASE_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Also serve `/metrics` on the main listener, to bearer tokens of
        /// staff holding `audit_log:read`.
        #[arg(long, env = "TAGBASE_METRICS_ON_MAIN", default_value_t = false)]
        metrics_on_main: bool,
        /// Requests per second per client address (0: no limit).
        #[arg(long, env = "TAGBASE_RATE_PER_IP", default_value_t = Limits::default().rate_per_address.per_second)]
        rate_per_ip: u32,
        /// Burst allowance per client address.
        #[arg(long, env = "TAGBASE_RATE_PER_IP_BURST", default_value_t = Limits::default().rate_per_address.burst)]
        rate_per_ip_burst: u32,
        /// Requests per second per signed-in staff member (0: no limit).
        #[arg(long, env = "TAGBASE_RATE_PER_STAFF", default_value_t = Limits::default().rate_per_staff.per_second)]
        rate_per_staff: u32,
        /// Burst allowance per staff member.
        #[arg(long, env = "TAGBASE_RATE_PER_STAFF_BURST", default_value_t = Limits::default().rate_per_staff.burst)]
        rate_per_staff_burst: u32,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Apply pending migrations and exit.
    Migrate,
    /// Load the demo organisation, staff, tag library and customers
    /// (deterministic; running it again changes nothing).
    SeedDemo,
    /// Print a signed token for a staff member.
    Token {
        #[arg(long)]
        login: String,
        /// How long the token is valid, e.g. `8h`, `30m`, `7d`.
        #[arg(long, default_value = "8h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Print the GraphQL schema (SDL).
    ExportSchema,
    /// Import a CSV file of customers (UTF-8 or GBK) into an org unit, as
    /// `importCustomers` does, acting as a staff member. Prints the row
    /// report; a large file runs as a job, which this command works on
    /// until it ends.
    ImportCustomers {
        /// The CSV file.
        file: PathBuf,
        /// The org unit's code (e.g. `sz01`).
        #[arg(long)]
        org_unit: String,
        /// The staff member the import runs as (its rights apply).
        #[arg(long = "as", default_value = "admin")]
        login: String,
        /// Check everything and print the report; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// The file's encoding.
        #[arg(long, value_enum, default_value_t = CsvEncoding::Auto)]
        encoding: CsvEncoding,
        /// Tags to put on every imported customer (global ids), repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Inspect the stored policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Benchmarks (print a table; never part of the tests).
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Settings of the HTTP edge (browsers, mobile clients).
#[derive(Debug, Args)]
struct HttpArgs {
    /// Browser origins allowed to call the API (CORS), comma-separated, e.g.
    /// `http://localhost:5173,https://admin.example.com`. None: same-origin
    /// only.
    #[arg(long, env = "TAGBASE_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    cors_origins: Vec<String>,
    /// A trusted-documents manifest (JSON map of SHA-256 hex → document):
    /// only those operations run.
    #[arg(long, env = "TAGBASE_TRUSTED_DOCUMENTS")]
    trusted_documents: Option<PathBuf>,
    /// Operations one batched request may hold.
    #[arg(long, env = "TAGBASE_MAX_BATCH", default_value_t = Limits::default().max_batch)]
    max_batch: usize,
    /// Customer events one `recordEvents` call may carry.
    #[arg(long, env = "TAGBASE_MAX_EVENTS_PER_BATCH", default_value_t = Limits::default().max_events_per_batch)]
    max_events_per_batch: usize,
    /// How long a request may run before it is cancelled (504, `TIMEOUT`),
    /// e.g. `30s`; also PostgreSQL's `statement_timeout`.
    #[arg(long, env = "TAGBASE_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The segment index against plain SQL on PostgreSQL (DATABASE_URL),
    /// on generated data that is reused by later runs.
    Segments {
        #[arg(long, default_value_t = 1_000_000)]
        customers: i64,
        #[arg(long, default_value_t = 2_000)]
        tags: i64,
        #[arg(long, default_value_t = 20)]
        tags_per_customer: i64,
        /// Timed runs per measurement.
        #[arg(long, default_value_t = 200)]
        runs: usize,
    },
    /// The API over real HTTP with keep-alive: this binary serves
    /// DATABASE_URL as a child process (rate limits off) and this process
    /// loads it; prints requests/s, p50 and p99 per case, write-path
    /// figures, index build time and the server's memory.
    Api {
        /// The staff member the requests run as.
        #[arg(long, default_value = "bench.admin")]
        login: String,
        /// Runs, each with a fresh server; cells show median (min–max).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Concurrent connections.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// How long each case is measured, e.g. `10s`.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Customers per bulk tagging call.
        #[arg(long, default_value_t = 1_000)]
        bulk: usize,
        /// The server binary (default: this one).
        #[arg(long)]
        server: Option<PathBuf>,
        /// Only the cases whose name contains this text (`page`, `count`,
        /// `tag/untag`, `bulk`), e.g. while a profiler watches the server.
        #[arg(long)]
        only: Option<String>,
    },
    /// Automatic tagging over real HTTP on DATABASE_URL: 50 enabled rules
    /// of every kind, `recordEvents` ingest (events/s), batch → tag
    /// visible to segments (p99), a 30-day dry run, the server's memory.
    Rules {
        /// The staff member the requests run as (records events, writes rules).
        #[arg(long, default_value = "bench.admin")]
        login: String,
        /// Customers the events are spread over.
        #[arg(long, default_value_t = 1_000_000)]
        customers: u64,
        /// Events ingested in all.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Events per `recordEvents` call.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Concurrent ingest connections.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Probes of batch → tag visible to segments.
        #[arg(long, default_value_t = 100)]
        probes: usize,
        /// The server binary (default: this one).
        #[arg(long)]
        server: Option<PathBuf>,
    },
    /// The governance reports on PostgreSQL (DATABASE_URL), on the segment
    /// bench data: tagUsage (index and SQL holders), zombieTags,
    /// duplicateTags, tagsAt and segmentPreview(asOf).
    Reports {
        /// Timed runs per report; cells show median (min–max).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Bench customers to generate.
        #[arg(long, default_value_t = 1_000_000)]
        customers: i64,
        /// Bench tags to generate.
        #[arg(long, default_value_t = 2_000)]
        tags: i64,
        /// Bench tags per customer.
        #[arg(long, default_value_t = 20)]
        tags_per_customer: i64,
    },
    /// Customer import on PostgreSQL (DATABASE_URL; the demo organisation
    /// is seeded if missing): a GBK CSV imported as a job, then again.
    Import {
        /// Rows per file.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Timed runs; cells show median (min–max).
        #[arg(long, default_value_t = 1)]
        runs: usize,
    },
    /// Bulk tagging jobs on PostgreSQL (DATABASE_URL), on the segment
    /// bench data: one tag added, then a move inside an exclusive group,
    /// per size; prints seconds, assignments/s and the progress a
    /// `jobProgress` subscriber saw.
    Bulk {
        /// Customers per job, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        sizes: Vec<usize>,
        /// Timed runs per size; cells show median (min–max).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Bench customers to generate (at least the largest size).
        #[arg(long, default_value_t = 1_000_000)]
        customers: i64,
        /// Bench tags to generate.
        #[arg(long, default_value_t = 2_000)]
        tags: i64,
        /// Bench tags per customer.
        #[arg(long, default_value_t = 20)]
        tags_per_customer: i64,
    },
    /// A scheduled absence rule (`no order_paid for 180d`) over every
    /// customer of the segment bench data (DATABASE_URL), run in process
    /// by the scheduler; prints customers judged and changed, and seconds.
    Schedule {
        /// Timed runs (the first on a database tags; later ones only judge).
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// Bench customers to generate.
        #[arg(long, default_value_t = 1_000_000)]
        customers: i64,
        /// Bench tags to generate.
        #[arg(long, default_value_t = 2_000)]
        tags: i64,
        /// Bench tags per customer.
        #[arg(long, default_value_t = 20)]
        tags_per_customer: i64,
    },
}

/// The encoding of an imported CSV file.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum CsvEncoding {
    Utf8,
    Gbk,
    Auto,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Print the permission matrix (role × action / field / tag class) as
    /// Markdown.
    Table,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // The exporter's batch task runs on the runtime.
    let telemetry = match runtime.block_on(async { Telemetry::from_env() }) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(&cli.log, cli.log_format, telemetry.as_ref().map(Telemetry::tracer));
    let outcome = runtime.block_on(run(cli));
    if let Some(telemetry) = telemetry {
        runtime.block_on(telemetry.shutdown());
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, no path.
fn parse_origin(raw: &str) -> Result<String, String> {
    let origin = raw.trim().trim_end_matches('/');
    let valid = match origin.split_once("://") {
        Some((scheme, host)) => {
            matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains(['/', '?', '#', ' ', '*'])
        }
        None => false,
    };
    if valid { Ok(origin.to_owned()) } else { Err(format!("{raw:?} is not an origin such as http://localhost:5173")) }
}

fn parse_offset(raw: &str) -> Result<FixedOffset, String> {
    raw.parse::<FixedOffset>().map_err(|_| format!("{raw:?} is not a UTC offset such as +08:00"))
}

/// Logs to stderr, and spans to OpenTelemetry when `tracer` is given; the
/// log filter applies to both.
fn init_tracing(filter: &str, format: LogFormat, tracer: Option<SdkTracer>) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(logs).with(span_export(&tracer)).init(),
        LogFormat::Json => registry.with(logs.json()).with(span_export(&tracer)).init(),
    }
}

fn span_export<S>(tracer: &Option<SdkTracer>) -> Option<tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracer.clone().map(|t| tracing_opentelemetry::layer().with_tracer(t))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings =
        |listen: Option<SocketAddr>| Settings {
            database_url: cli.database_url.clone(),
            listen: listen.unwrap_or_else(|| Settings::DEFAULT_LISTEN.parse().expect("default address")),
            jwt_secret: cli.jwt_secret.clone(),
            jwt_issuer: Settings::DEFAULT_ISSUER.to_owned(),
            jwt_audience: Settings::DEFAULT_AUDIENCE.to_owned(),
            token_leeway: cli.token_leeway,
            dev_tokens: cli.dev_tokens,
            access_token_ttl: cli.access_token_ttl,
            session_ttl: cli.session_ttl,
            oidc: cli.oidc_issuer.clone().map(|issuer| OidcSettings {
                claim: cli.oidc_claim.clone(),
                jwks_refresh: cli.oidc_jwks_refresh,
                jwks_min_refetch: cli.oidc_jwks_min_refetch,
                ..OidcSettings::new(issuer, cli.oidc_audience.clone())
            }),
            wecom: cli.wecom_corp_id.clone().zip(cli.wecom_corp_secret.clone()).map(|(corp_id, corp_secret)| {
                WeComSettings { base_url: cli.wecom_base_url.clone(), corp_id, corp_secret }
            }),
            utc_offset: cli.utc_offset,
            index_follow_interval: Some(std::time::Duration::from_millis(250)),
            metrics_listen: None,
            metrics_on_main: false,
            cors_origins: Vec::new(),
            trusted_documents: None,
            job_poll_interval: Some(std::time::Duration::from_millis(500)),
            schedule_interval: Some(cli.schedule_interval).filter(|d| !d.is_zero()),
            rollup_interval: Some(std::time::Duration::from_secs(5)),
            limits: Limits {
                max_query_complexity: cli.limits.max_query_complexity,
                max_aliases: cli.limits.max_aliases,
                max_root_fields: cli.limits.max_root_fields,
                phone_searches_per_minute: cli.phone_searches_per_minute,
                ..Limits::default()
            },
        };
    match cli.command {
        Command::Serve {
            listen,
            demo,
            http,
            metrics_listen,
            metrics_on_main,
            rate_per_ip,
            rate_per_ip_burst,
            rate_per_staff,
            rate_per_staff_burst,
        } => {
            let mut settings = settings(Some(listen));
            settings.metrics_listen = metrics_listen;
            settings.metrics_on_main = metrics_on_main;
            settings.limits.rate_per_address = Rate { per_second: rate_per_ip, burst: rate_per_ip_burst };
            settings.limits.rate_per_staff = Rate { per_second: rate_per_staff, burst: rate_per_staff_burst };
            settings.cors_origins = http.cors_origins;
            settings.trusted_documents = http.trusted_documents;
            settings.limits.max_batch = http.max_batch;
            settings.limits.max_events_per_batch = http.max_events_per_batch;
            settings.limits.request_timeout = http.request_timeout;
            let app = Application::build(settings).await?;
            if demo {
                let report = seed::seed_demo(&app.state.db, &app.state.authz, app.state.settings.utc_offset).await?;
                tracing::info!(%report, "demo data loaded");
            }
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
            app.serve(listener).await
        }
        Command::Migrate => {
            let db = db::connect(&cli.database_url).await?;
            db::migrate(&db).await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::SeedDemo => {
            let app = Application::build(settings(None)).await?;
            let report = seed::seed_demo(&app.state.db, &app.state.authz, app.state.settings.utc_offset).await?;
            eprintln!("demo data loaded: {report}");
            Ok(())
        }
        Command::Token { login, ttl } => {
            let settings = settings(None);
            let db = db::connect(&settings.database_url).await?;
            db::migrate(&db).await?;
            let staff =
                staff::Entity::find().filter(staff::Column::Login.eq(login.as_str())).one(&db).await?.with_context(
                    || format!("no staff member with login {login:?} (run `tagbase seed-demo` for the demo staff)"),
                )?;
            anyhow::ensure!(staff.active, "staff member {login:?} is deactivated");
            let keys = JwtKeys::load(&db, &settings).await?;
            println!("{}", keys.mint(&staff, ttl)?);
            Ok(())
        }
        Command::ExportSchema => {
            print!("{}", graphql::sdl());
            Ok(())
        }
        Command::Bench(BenchCommand::Segments { customers, tags, tags_per_customer, runs }) => {
            let size = crate::bench::BenchSize { customers, tags, tags_per_customer };
            crate::bench::run(settings(None), size, runs).await
        }
        Command::Bench(BenchCommand::Bulk { sizes, runs, customers, tags, tags_per_customer }) => {
            let data = crate::bench::BenchSize { customers, tags, tags_per_customer };
            crate::bench::bulk::run(settings(None), crate::bench::bulk::BulkBench { sizes, runs, data }).await
        }
        Command::Bench(BenchCommand::Reports { runs, customers, tags, tags_per_customer }) => {
            let data = crate::bench::BenchSize { customers, tags, tags_per_customer };
            crate::bench::reports::run(settings(None), crate::bench::reports::ReportsBench { runs, data }).await
        }
        Command::Bench(BenchCommand::Api { login, runs, connections, duration, bulk, server, only }) => {
            let bench =
                crate::bench::api::ApiBench { login, runs, connections, duration, bulk, bulk_calls: 3, server, only };
            crate::bench::api::run(settings(None), bench).await
        }
        Command::Bench(BenchCommand::Schedule { runs, customers, tags, tags_per_customer }) => {
            let data = crate::bench::BenchSize { customers, tags, tags_per_customer };
            crate::bench::schedule::run(settings(None), crate::bench::schedule::ScheduleBench { runs, data }).await
        }
        Command::Bench(BenchCommand::Rules { login, customers, events, batch, connections, probes, server }) => {
            let bench =
                crate::bench::rules::RulesBench { login, customers, events, batch, connections, probes, server };
            crate::bench::rules::run(settings(None), bench).await
        }
        Command::Bench(BenchCommand::Import { rows, runs }) => {
            crate::bench::import::run(settings(None), crate::bench::import::ImportBench { rows, runs }).await
        }
        Command::ImportCustomers { file, org_unit, login, dry_run, encoding, tags } => {
            let mut settings = settings(None);
            settings.job_poll_interval = None;
            import_customers(settings, ImportArgs { file, org_unit, login, dry_run, encoding, tags }).await
        }
        Command::Policy(PolicyCommand::Table) => {
            let db = db::connect(&cli.database_url).await?;
            db::migrate(&db).await?;
            let authz = Authz::load(&db).await?;
            let classes = tag_library::visibility_classes(&db).await.map_err(|e| anyhow::anyhow!(e.message()))?;
            print!("{}", authz.table(&classes));
            Ok(())
        }
    }
}

struct ImportArgs {
    file: PathBuf,
    org_unit: String,
    login: String,
    dry_run: bool,
    encoding: CsvEncoding,
    tags: Vec<String>,
}

/// `tagbase import-customers`: the import as the staff member, its report
/// printed, its job (if the file is large) run here to its end.
async fn import_customers(settings: Settings, args: ImportArgs) -> anyhow::Result<()> {
    use crate::domain::{OrgUnitId, TagId};
    use crate::service::import::{Encoding, ImportRequest};
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let app = Application::build(settings.clone()).await?;
    let db = app.state.db.clone();
    let unit = entity::org_unit::Entity::find()
        .filter(entity::org_unit::Column::Code.eq(args.org_unit.as_str()))
        .one(&db)
        .await?
        .with_context(|| format!("no org unit with code {:?}", args.org_unit))?;
    let member = staff::Entity::find()
        .filter(staff::Column::Login.eq(args.login.as_str()))
        .one(&db)
        .await?
        .filter(|s| s.active)
        .with_context(|| format!("no active staff member with login {:?}", args.login))?;
    let principal = app.state.authz.principal(member, std::sync::Arc::new(crate::authz::OrgTree::load(&db).await?));
    let tags = args
        .tags
        .iter()
        .map(|t| TagId::parse(t, "tag"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!(e.message()))?;
    let req = ImportRequest {
        bytes,
        encoding: match args.encoding {
            CsvEncoding::Utf8 => Encoding::Utf8,
            CsvEncoding::Gbk => Encoding::Gbk,
            CsvEncoding::Auto => Encoding::Auto,
        },
        dry_run: args.dry_run,
        org_unit: OrgUnitId(unit.id),
        tags,
    };
    let worker = crate::service::jobs::Worker {
        db: db.clone(),
        authz: app.state.authz.clone(),
        index: app.state.index.clone(),
        limits: settings.limits.clone(),
        instance: format!("cli-{}", uuid::Uuid::new_v4().simple()),
    };
    let report = crate::bench::import::import_and_wait(&app, &worker, &principal, req, |job| {
        eprintln!("job {}: {} / {} rows", crate::domain::JobId(job.id), job.done, job.total);
    })
    .await?;
    println!(
        "{}{} rows ({}, sha256 {}): {} created, {} updated, {} unchanged, {} skipped, {} tags added",
        if report.dry_run { "dry run: " } else { "" },
        report.rows,
        report.encoding,
        report.sha256,
        report.created,
        report.updated,
        report.unchanged,
        report.skipped,
        report.tags_added
    );
    for issue in &report.issues {
        println!("line {}\t{}\t{}\t{}", issue.line, issue.column.as_deref().unwrap_or("-"), issue.code, issue.message);
    }
    Ok(())
}
