//! A merge moves the removed customer's events to the kept customer.
//!
//! `customer_event` stays append-only (no DELETE, no change of what was
//! recorded) with exactly one exception: an event's `customer_id` may move
//! to the customer its customer was merged into (`customer.merged_into_id`),
//! every other column unchanged. So the kept customer's rules, dry runs and
//! event listings read the merged history like any other, by its own id.
//!
//! Database-specific, as the triggers of `m20261201_000060` are: a trigger
//! condition on SQLite, the trigger function on PostgreSQL. Events left
//! under a merged customer by earlier merges are moved here (a chain of
//! merges one step at a time, as the trigger allows).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000120_merge_moves_events"
    }
}

// The whole row but `customer_id` unchanged (json compared as written, not
// only as jsonb), and `customer_id` now the merged-into customer.
const POSTGRES_UP: &[&str] = &["CREATE OR REPLACE FUNCTION tagbase_customer_event_append_only() RETURNS trigger AS $$
     BEGIN
       IF TG_OP = 'UPDATE'
          AND NEW.customer_id = (SELECT c.merged_into_id FROM customer c WHERE c.id = OLD.customer_id)
          AND to_jsonb(NEW) - 'customer_id' = to_jsonb(OLD) - 'customer_id'
          AND NEW.payload::text = OLD.payload::text
       THEN
         RETURN NEW;
       END IF;
       RAISE EXCEPTION 'customer_event is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
     END;
     $$ LANGUAGE plpgsql"];
const POSTGRES_DOWN: &[&str] =
    &["CREATE OR REPLACE FUNCTION tagbase_customer_event_append_only() RETURNS trigger AS $$
     BEGIN
       RAISE EXCEPTION 'customer_event is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
     END;
     $$ LANGUAGE plpgsql"];
// `IS` compares NULL-safely. A column added to `customer_event` later must
// be added here too (the migration adding it replaces this trigger).
const SQLITE_UP: &[&str] = &[
    "DROP TRIGGER IF EXISTS customer_event_no_update",
    "CREATE TRIGGER customer_event_no_update BEFORE UPDATE ON customer_event
     WHEN NOT (
       NEW.customer_id IS NOT NULL
       AND NEW.customer_id IS (SELECT c.merged_into_id FROM customer c WHERE c.id = OLD.customer_id)
       AND NEW.id IS OLD.id
       AND NEW.org_unit_id IS OLD.org_unit_id
       AND NEW.kind IS OLD.kind
       AND NEW.event_key IS OLD.event_key
       AND NEW.fingerprint IS OLD.fingerprint
       AND NEW.payload IS OLD.payload
       AND NEW.occurred_at IS OLD.occurred_at
       AND NEW.recorded_at IS OLD.recorded_at
       AND NEW.recorded_by IS OLD.recorded_by
     )
     BEGIN SELECT RAISE(ABORT, 'customer_event is append-only: UPDATE refused'); END",
];
const SQLITE_DOWN: &[&str] = &[
    "DROP TRIGGER IF EXISTS customer_event_no_update",
    "CREATE TRIGGER customer_event_no_update BEFORE UPDATE ON customer_event
     BEGIN SELECT RAISE(ABORT, 'customer_event is append-only: UPDATE refused'); END",
];

/// Moves events recorded under merged customers one merge step; repeated
/// until none is left for a chain of merges.
const MOVE_LEFT_BEHIND: &str = "UPDATE customer_event
     SET customer_id = (SELECT c.merged_into_id FROM customer c WHERE c.id = customer_event.customer_id)
     WHERE customer_id IN (SELECT c.id FROM customer c WHERE c.merged_into_id IS NOT NULL)";

async fn run(m: &SchemaManager<'_>, postgres: &[&str], sqlite: &[&str]) -> Result<(), DbErr> {
    let statements = match m.get_database_backend() {
        DbBackend::Postgres => postgres,
        DbBackend::Sqlite => sqlite,
        other => return Err(DbErr::Migration(format!("unsupported database: {other:?}"))),
    };
    for statement in statements {
        m.get_connection().execute_unprepared(statement).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        run(m, POSTGRES_UP, SQLITE_UP).await?;
        // A chain is at most as long as there are merged customers; in
        // practice one or two steps.
        while m.get_connection().execute_unprepared(MOVE_LEFT_BEHIND).await?.rows_affected() > 0 {}
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        run(m, POSTGRES_DOWN, SQLITE_DOWN).await
    }
}
