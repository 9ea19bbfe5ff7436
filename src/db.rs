//! Database connection and migrations.

use std::time::Duration;

use anyhow::Context as _;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};

/// Connects to SQLite or PostgreSQL, by URL.
///
/// SQLite gets one connection: writes serialise in-process instead of
/// failing with `database is locked`, and WAL mode lets other processes
/// (the CLI next to a running server) read meanwhile.
pub async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    connect_with(url, crate::config::Limits::default().request_timeout).await
}

/// As [`connect`], with PostgreSQL statements cut off after
/// `statement_timeout`: a request that times out drops its future, but
/// without this its query would go on running inside the server.
///
/// PostgreSQL connections also plan every prepared statement for its own
/// parameters (`plan_cache_mode = force_custom_plan`). Our hot statements
/// filter by an array of ids (`= ANY($1)`), and after five runs PostgreSQL
/// may switch a prepared statement to a generic plan that cannot see the
/// array's size: measured on 1M customers, the tag-cap count of a
/// 10,000-customer batch went from 0.27 s to over 9 s, scanning all 20M
/// assignments. Planning costs well under a millisecond per statement.
pub async fn connect_with(url: &str, statement_timeout: Duration) -> anyhow::Result<DatabaseConnection> {
    let url = sqlite_create_if_missing(url);
    let url = url.as_str();
    let mut options = ConnectOptions::new(url.to_owned());
    options.acquire_timeout(Duration::from_secs(10)).connect_timeout(Duration::from_secs(10)).sqlx_logging(false);
    if url.starts_with("sqlite:") {
        options.max_connections(1).min_connections(1);
    } else {
        let millis = statement_timeout.as_millis().max(1).to_string();
        let port = postgres_port(url);
        options
            .max_connections(16)
            .map_sqlx_postgres_opts(move |o| {
                o.options([("statement_timeout", millis.as_str()), ("plan_cache_mode", "force_custom_plan")])
            })
            .map_sqlx_postgres_pool_opts(move |o| {
                o.after_connect(move |_, _| {
                    Box::pin(async move {
                        nodelay::on_connections_to(port);
                        Ok(())
                    })
                })
            });
    }
    let db = Database::connect(options).await.with_context(|| format!("connecting to {}", redact(url)))?;
    if db.get_database_backend() == DbBackend::Sqlite {
        db.execute_unprepared("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;")
            .await
            .context("configuring SQLite")?;
    }
    Ok(db)
}

/// The TCP port a PostgreSQL URL connects to, as sqlx reads it.
fn postgres_port(url: &str) -> u16 {
    url.parse::<sea_orm::sqlx::postgres::PgConnectOptions>().map_or(5432, |o| o.get_port())
}

/// `TCP_NODELAY` on the connections to PostgreSQL.
///
/// sqlx 0.9.0 opens its TCP sockets without `TCP_NODELAY` (a regression:
/// sqlx issue #4335, fixed upstream by pull request #4336 but not yet
/// released). With Nagle's algorithm on, a message larger than one
/// segment (a multi-row insert, a bind of thousands of ids) keeps its
/// tail back until PostgreSQL acknowledges the rest, and PostgreSQL
/// delays that acknowledgement by 40 ms: measured in the server's
/// statement log, 45–48 ms between statements of one `recordEvents`
/// transaction whose statements ran in 4 ms, with both cores mostly idle.
/// sqlx offers no hook on its socket, so each new connection sets the
/// option on this process's TCP sockets connected to the database's port
/// (setting it twice, or on a socket that is not sqlx's, is harmless).
/// Written by hand until a sqlx release carries the fix; then this goes.
mod nodelay {
    /// Sets `TCP_NODELAY` on every TCP socket of this process whose peer
    /// port is `port`. Linux only (it lists `/proc/self/fd`); elsewhere a
    /// no-op.
    pub(super) fn on_connections_to(port: u16) {
        each_socket_to(port, |socket| {
            if !socket.tcp_nodelay().unwrap_or(true) {
                let _ = socket.set_tcp_nodelay(true);
            }
        });
    }

    /// Calls `f` on each TCP socket of this process whose peer port is
    /// `port`.
    pub(super) fn each_socket_to(port: u16, mut f: impl FnMut(socket2::SockRef<'_>)) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::{BorrowedFd, RawFd};
            let Ok(entries) = std::fs::read_dir("/proc/self/fd") else { return };
            for entry in entries.flatten() {
                let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else { continue };
                let is_socket = std::fs::read_link(entry.path())
                    .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
                if !is_socket {
                    continue;
                }
                // SAFETY: the descriptor is only borrowed for the calls in
                // `f`, never closed. Should it be closed and its number
                // reused meanwhile, the calls act on (or fail on) whatever
                // it then is: reading a socket's peer address and setting
                // TCP_NODELAY harm no descriptor.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                let socket = socket2::SockRef::from(&fd);
                if socket.peer_addr().ok().and_then(|a| a.as_socket()).is_some_and(|a| a.port() == port) {
                    f(socket);
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (port, &mut f);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod nodelay_tests {
    use sea_orm::ConnectionTrait;

    /// Every connection the pool opens to PostgreSQL has `TCP_NODELAY`
    /// (see [`super::nodelay`]); nothing else in this test binary
    /// connects to PostgreSQL.
    #[tokio::test]
    async fn connections_to_postgres_send_without_waiting_for_acknowledgements() {
        let url = std::env::var("TAGBASE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let db = super::connect(&url).await.expect("PostgreSQL for this test");
        let (a, b) = tokio::join!(db.execute_unprepared("SELECT pg_sleep(0.05)"), db.execute_unprepared("SELECT 1"));
        a.unwrap();
        b.unwrap();
        let (mut with, mut without) = (0, 0);
        super::nodelay::each_socket_to(super::postgres_port(&url), |socket| {
            if socket.tcp_nodelay().unwrap() {
                with += 1;
            } else {
                without += 1;
            }
        });
        assert!(with >= 2 && without == 0, "{with} sockets with TCP_NODELAY, {without} without");
    }
}

/// A SQLite URL without an open mode gets `mode=rwc`, so the file is
/// created when missing.
fn sqlite_create_if_missing(url: &str) -> String {
    if !url.starts_with("sqlite:") || url.contains("mode=") || url.contains(":memory:") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode=rwc")
}

/// Applies pending migrations.
pub async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    Migrator::up(db, None).await.context("running migrations")
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme + 3], &creds[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_files_are_created_when_missing() {
        assert_eq!(super::sqlite_create_if_missing("sqlite://a.db"), "sqlite://a.db?mode=rwc");
        assert_eq!(super::sqlite_create_if_missing("sqlite://a.db?mode=ro"), "sqlite://a.db?mode=ro");
        assert_eq!(super::sqlite_create_if_missing("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact("sqlite://tagbase.db?mode=rwc"), "sqlite://tagbase.db?mode=rwc");
    }
}
