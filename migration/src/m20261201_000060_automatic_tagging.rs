//! Automatic tagging: the append-only log of customer events (what
//! connectors report: messages, clicks, group joins, orders …), rules with
//! their versions, and the rule actions a modification lock refused.

use sea_orm_migration::sea_orm::DbBackend;
use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000060_automatic_tagging"
    }
}

// Customer events are facts reported by other systems: once recorded they
// are never changed or deleted (a correction is a new event).
const POSTGRES_UP: &[&str] = &[
    "CREATE OR REPLACE FUNCTION tagbase_customer_event_append_only() RETURNS trigger AS $$
     BEGIN
       RAISE EXCEPTION 'customer_event is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
     END;
     $$ LANGUAGE plpgsql",
    "CREATE TRIGGER customer_event_append_only BEFORE UPDATE OR DELETE ON customer_event
     FOR EACH ROW EXECUTE FUNCTION tagbase_customer_event_append_only()",
];
const POSTGRES_DOWN: &[&str] = &[
    "DROP TRIGGER IF EXISTS customer_event_append_only ON customer_event",
    "DROP FUNCTION IF EXISTS tagbase_customer_event_append_only()",
];
const SQLITE_UP: &[&str] = &[
    "CREATE TRIGGER customer_event_no_update BEFORE UPDATE ON customer_event
     BEGIN SELECT RAISE(ABORT, 'customer_event is append-only: UPDATE refused'); END",
    "CREATE TRIGGER customer_event_no_delete BEFORE DELETE ON customer_event
     BEGIN SELECT RAISE(ABORT, 'customer_event is append-only: DELETE refused'); END",
];
const SQLITE_DOWN: &[&str] =
    &["DROP TRIGGER IF EXISTS customer_event_no_update", "DROP TRIGGER IF EXISTS customer_event_no_delete"];

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
        m.create_table(
            Table::create()
                .table(CustomerEvent::Table)
                .col(big_pk_auto(CustomerEvent::Id))
                .col(big_integer(CustomerEvent::CustomerId))
                // The customer's unit when the event was recorded.
                .col(big_integer(CustomerEvent::OrgUnitId))
                .col(string_len(CustomerEvent::Kind, 16))
                // The connector's key: one key, one event.
                .col(string_len(CustomerEvent::EventKey, 128))
                // SHA-256 of the event as given, to tell a repeat from a
                // different event under the same key.
                .col(string_len(CustomerEvent::Fingerprint, 64))
                .col(json(CustomerEvent::Payload))
                .col(timestamp_with_time_zone(CustomerEvent::OccurredAt))
                .col(timestamp_with_time_zone(CustomerEvent::RecordedAt))
                .col(big_integer(CustomerEvent::RecordedBy))
                .foreign_key(
                    ForeignKey::create()
                        .from(CustomerEvent::Table, CustomerEvent::CustomerId)
                        .to(Customer::Table, Customer::Id),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_customer_event_key")
                .table(CustomerEvent::Table)
                .col(CustomerEvent::EventKey)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_customer_event_customer_time")
                .table(CustomerEvent::Table)
                .col(CustomerEvent::CustomerId)
                .col(CustomerEvent::OccurredAt)
                .to_owned(),
        )
        .await?;
        run(m, POSTGRES_UP, SQLITE_UP).await?;

        m.create_table(
            Table::create()
                .table(Rule::Table)
                .col(big_pk_auto(Rule::Id))
                .col(big_integer(Rule::OrgUnitId))
                .col(string_len(Rule::Name, 64))
                .col(string_len(Rule::Status, 16))
                .col(integer(Rule::Version))
                .col(text(Rule::Condition))
                .col(json(Rule::Actions))
                .col(boolean(Rule::OverrideManualRemoval))
                .col(integer(Rule::Priority))
                .col(big_integer(Rule::CreatedBy))
                .col(timestamp_with_time_zone(Rule::CreatedAt))
                .col(timestamp_with_time_zone(Rule::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_rule_unit_name")
                .table(Rule::Table)
                .col(Rule::OrgUnitId)
                .col(Rule::Name)
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(RuleVersion::Table)
                .col(big_pk_auto(RuleVersion::Id))
                .col(big_integer(RuleVersion::RuleId))
                .col(integer(RuleVersion::Version))
                // `create`, `update`, `archive`, `enable`, `disable`, `rollback`.
                .col(string_len(RuleVersion::Change, 16))
                .col(string_len(RuleVersion::Name, 64))
                .col(string_len(RuleVersion::Status, 16))
                .col(text(RuleVersion::Condition))
                .col(json(RuleVersion::Actions))
                .col(boolean(RuleVersion::OverrideManualRemoval))
                .col(integer(RuleVersion::Priority))
                .col(big_integer(RuleVersion::ChangedBy))
                .col(timestamp_with_time_zone(RuleVersion::ChangedAt))
                .foreign_key(
                    ForeignKey::create().from(RuleVersion::Table, RuleVersion::RuleId).to(Rule::Table, Rule::Id),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_rule_version")
                .table(RuleVersion::Table)
                .col(RuleVersion::RuleId)
                .col(RuleVersion::Version)
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(RuleDeferredAction::Table)
                .col(big_pk_auto(RuleDeferredAction::Id))
                .col(big_integer(RuleDeferredAction::RuleId))
                .col(integer(RuleDeferredAction::RuleVersion))
                .col(big_integer(RuleDeferredAction::CustomerId))
                .col(big_integer(RuleDeferredAction::TagId))
                .col(string_len(RuleDeferredAction::Op, 16))
                .col(big_integer_null(RuleDeferredAction::TtlSeconds))
                .col(big_integer_null(RuleDeferredAction::EventId))
                .col(big_integer(RuleDeferredAction::LockId))
                .col(timestamp_with_time_zone(RuleDeferredAction::CreatedAt))
                .col(timestamp_with_time_zone_null(RuleDeferredAction::AppliedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_rule_deferred_action_lock")
                .table(RuleDeferredAction::Table)
                .col(RuleDeferredAction::LockId)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(RuleDeferredAction::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(RuleVersion::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(Rule::Table).to_owned()).await?;
        run(m, POSTGRES_DOWN, SQLITE_DOWN).await?;
        m.drop_table(Table::drop().table(CustomerEvent::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Customer {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum CustomerEvent {
    Table,
    Id,
    CustomerId,
    OrgUnitId,
    Kind,
    EventKey,
    Fingerprint,
    Payload,
    OccurredAt,
    RecordedAt,
    RecordedBy,
}

#[derive(DeriveIden)]
enum Rule {
    Table,
    Id,
    OrgUnitId,
    Name,
    Status,
    Version,
    Condition,
    Actions,
    OverrideManualRemoval,
    Priority,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RuleVersion {
    Table,
    Id,
    RuleId,
    Version,
    Change,
    Name,
    Status,
    Condition,
    Actions,
    OverrideManualRemoval,
    Priority,
    ChangedBy,
    ChangedAt,
}

#[derive(DeriveIden)]
enum RuleDeferredAction {
    Table,
    Id,
    RuleId,
    RuleVersion,
    CustomerId,
    TagId,
    Op,
    TtlSeconds,
    EventId,
    LockId,
    CreatedAt,
    AppliedAt,
}
