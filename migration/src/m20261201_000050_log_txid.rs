//! The logs' commit horizon: on PostgreSQL every tag event and customer
//! change records the id of the transaction that wrote it (`txid`, the
//! 64-bit `pg_current_xact_id()` filled in by the column default), so that followers read the logs by
//! transaction snapshots instead of by sequence number and writers no longer
//! take a global lock (see docs/write-path.md). Existing rows get the
//! migration's own transaction id: committed, like them.
//!
//! SQLite has one writer at a time, so its sequence numbers commit in order
//! and it needs no such column. `xid8` and its functions have no portable
//! form, so this migration speaks PostgreSQL only.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000050_log_txid"
    }
}

const POSTGRES_UP: &[&str] = &[
    // A stable default: PostgreSQL stores it once for the existing rows
    // instead of rewriting the table. `bigint`, not `xid8`: the planner
    // estimates ranges of a bigint from its statistics (and so reads a
    // follower's few new rows through the index), not those of an xid8.
    "ALTER TABLE tag_event ADD COLUMN txid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint)",
    "CREATE INDEX ix_tag_event_txid ON tag_event (txid)",
    "ALTER TABLE customer_change ADD COLUMN txid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint)",
    "CREATE INDEX ix_customer_change_txid ON customer_change (txid)",
];

const POSTGRES_DOWN: &[&str] = &[
    "DROP INDEX IF EXISTS ix_customer_change_txid",
    "ALTER TABLE customer_change DROP COLUMN IF EXISTS txid",
    "DROP INDEX IF EXISTS ix_tag_event_txid",
    "ALTER TABLE tag_event DROP COLUMN IF EXISTS txid",
];

async fn run(m: &SchemaManager<'_>, statements: &[&str]) -> Result<(), DbErr> {
    if m.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let db = m.get_connection();
    for sql in statements {
        db.execute_unprepared(sql).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        run(m, POSTGRES_UP).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        run(m, POSTGRES_DOWN).await
    }
}
