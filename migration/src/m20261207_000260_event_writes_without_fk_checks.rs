//! Customer events written without a per-row foreign-key check on
//! PostgreSQL, as assignments and tag events already are (see
//! `m20261204_000210_assignment_writes_without_fk_checks`).
//!
//! `recordEvents` locks the rows of a batch's customers (`FOR UPDATE`)
//! before it inserts their events, so the check proved again, one trigger
//! call per event, what the writer had just locked. Measured on the 1M
//! bench data (`EXPLAIN ANALYZE`, 500 events for random customers): the
//! insert took 76.5 ms, 43.4 ms of it in the check. What the constraint
//! also guarded, that the customer could later disappear, is guarded by
//! the trigger that refuses any `DELETE` on `customer`. SQLite keeps its
//! foreign key (one writer at a time; a table rebuild would be needed to
//! drop it).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000260_event_writes_without_fk_checks"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == DbBackend::Postgres {
            m.get_connection()
                .execute_unprepared(
                    "ALTER TABLE customer_event DROP CONSTRAINT IF EXISTS customer_event_customer_id_fkey",
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        if m.get_database_backend() == DbBackend::Postgres {
            m.get_connection()
                .execute_unprepared(
                    "ALTER TABLE customer_event ADD CONSTRAINT customer_event_customer_id_fkey \
                     FOREIGN KEY (customer_id) REFERENCES customer(id)",
                )
                .await?;
        }
        Ok(())
    }
}
