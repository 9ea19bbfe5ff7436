//! The command line: `serve`, `migrate`, `seed-demo`, `token`,
//! `export-schema`. Every setting is a flag with a matching environment
//! variable.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use chrono::FixedOffset;
use clap::{Parser, Subcommand, ValueEnum};
use entity::staff;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tracing_subscriber::EnvFilter;

use crate::auth::JwtKeys;
use crate::authz::Authz;
use crate::config::{Limits, Rate, Settings};
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

    /// Log filter, e.g. `info` or `tagbase=debug,info`.
    #[arg(long, env = "TAGBASE_LOG", default_value = "info", global = true)]
    log: String,

    #[arg(long, env = "TAGBASE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    /// The organisation's time zone as a UTC offset; dates in segments are
    /// midnight there.
    #[arg(long, env = "TAGBASE_UTC_OFFSET", default_value = "+08:00", value_parser = parse_offset, global = true)]
    utc_offset: FixedOffset,

    #[command(subcommand)]
    command: Command,
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
    /// Inspect the stored policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Benchmarks (print a table; never part of the tests).
    #[command(subcommand)]
    Bench(BenchCommand),
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
    init_tracing(&cli.log, cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_offset(raw: &str) -> Result<FixedOffset, String> {
    raw.parse::<FixedOffset>().map_err(|_| format!("{raw:?} is not a UTC offset such as +08:00"))
}

fn init_tracing(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = |listen: Option<SocketAddr>| Settings {
        database_url: cli.database_url.clone(),
        listen: listen.unwrap_or_else(|| Settings::DEFAULT_LISTEN.parse().expect("default address")),
        jwt_secret: cli.jwt_secret.clone(),
        jwt_issuer: Settings::DEFAULT_ISSUER.to_owned(),
        jwt_audience: Settings::DEFAULT_AUDIENCE.to_owned(),
        utc_offset: cli.utc_offset,
        index_follow_interval: Some(std::time::Duration::from_millis(250)),
        metrics_listen: None,
        metrics_on_main: false,
        limits: Limits::default(),
    };
    match cli.command {
        Command::Serve {
            listen,
            demo,
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
            let app = Application::build(settings).await?;
            if demo {
                let report = seed::seed_demo(&app.state.db, &app.state.authz).await?;
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
            let report = seed::seed_demo(&app.state.db, &app.state.authz).await?;
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
