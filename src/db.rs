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
        options.max_connections(16).map_sqlx_postgres_opts(move |o| {
            o.options([("statement_timeout", millis.as_str()), ("plan_cache_mode", "force_custom_plan")])
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
