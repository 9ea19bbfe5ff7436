//! Scheduled rules: a rule may carry a schedule (`DAILY 03:00`, in the
//! organisation's time zone), and each run of a scheduled rule is a
//! `rule_run` row. `UNIQUE (rule_id, schedule_key)` makes each slot run
//! once however many instances reach for it; `owner` and `lease_until`
//! let another instance take over a run whose instance died. A rule
//! action deferred by a modification lock during a scheduled run names
//! the run.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000090_rule_schedule"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        m.alter_table(Table::alter().table(Rule::Table).add_column(string_len_null(Rule::Schedule, 32)).to_owned())
            .await?;
        m.alter_table(
            Table::alter().table(RuleVersion::Table).add_column(string_len_null(RuleVersion::Schedule, 32)).to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(RuleDeferredAction::Table)
                .add_column(big_integer_null(RuleDeferredAction::RunId))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_rule_deferred_action_pending")
                .table(RuleDeferredAction::Table)
                .col(RuleDeferredAction::AppliedAt)
                .col(RuleDeferredAction::Id)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(RuleRun::Table)
                .col(big_pk_auto(RuleRun::Id))
                .col(big_integer(RuleRun::RuleId))
                .col(integer(RuleRun::RuleVersion))
                // The slot, in the organisation's offset: `2026-12-02T03:00+08:00`.
                .col(string_len(RuleRun::ScheduleKey, 40))
                // `RUNNING`, `SUCCEEDED`, `FAILED`.
                .col(string_len(RuleRun::Status, 16))
                .col(string_len_null(RuleRun::Owner, 64))
                .col(timestamp_with_time_zone_null(RuleRun::LeaseUntil))
                // The instant the rule was judged at.
                .col(timestamp_with_time_zone(RuleRun::EvaluatedAt))
                .col(timestamp_with_time_zone(RuleRun::StartedAt))
                .col(timestamp_with_time_zone_null(RuleRun::FinishedAt))
                .col(big_integer(RuleRun::CustomersScanned))
                .col(big_integer(RuleRun::CustomersChanged))
                .col(big_integer(RuleRun::TagChanges))
                .col(big_integer(RuleRun::Deferred))
                .col(big_integer(RuleRun::HeldBack))
                .col(integer(RuleRun::Attempts))
                .col(text_null(RuleRun::Error))
                .foreign_key(ForeignKey::create().from(RuleRun::Table, RuleRun::RuleId).to(Rule::Table, Rule::Id))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_rule_run_slot")
                .table(RuleRun::Table)
                .col(RuleRun::RuleId)
                .col(RuleRun::ScheduleKey)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_customer_tag_expires")
                .table(CustomerTag::Table)
                .col(CustomerTag::ExpiresAt)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name("ix_customer_tag_expires").table(CustomerTag::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(RuleRun::Table).to_owned()).await?;
        m.drop_index(Index::drop().name("ix_rule_deferred_action_pending").table(RuleDeferredAction::Table).to_owned())
            .await?;
        m.alter_table(
            Table::alter().table(RuleDeferredAction::Table).drop_column(RuleDeferredAction::RunId).to_owned(),
        )
        .await?;
        m.alter_table(Table::alter().table(RuleVersion::Table).drop_column(RuleVersion::Schedule).to_owned()).await?;
        m.alter_table(Table::alter().table(Rule::Table).drop_column(Rule::Schedule).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Rule {
    Table,
    Id,
    Schedule,
}

#[derive(DeriveIden)]
enum RuleVersion {
    Table,
    Schedule,
}

#[derive(DeriveIden)]
enum RuleDeferredAction {
    Table,
    Id,
    RunId,
    AppliedAt,
}

#[derive(DeriveIden)]
enum CustomerTag {
    Table,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum RuleRun {
    Table,
    Id,
    RuleId,
    RuleVersion,
    ScheduleKey,
    Status,
    Owner,
    LeaseUntil,
    EvaluatedAt,
    StartedAt,
    FinishedAt,
    CustomersScanned,
    CustomersChanged,
    TagChanges,
    Deferred,
    HeldBack,
    Attempts,
    Error,
}
