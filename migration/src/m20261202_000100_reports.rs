//! Governance reports: the zombie and duplicate thresholds per org unit
//! (`report_setting`, inherited down the tree) and the alerts raised by
//! `refreshAlerts` (`governance_alert`), acknowledged and resolved by staff.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000100_reports"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ReportSetting::Table)
                // One row per unit that sets its own thresholds; units
                // without one inherit the nearest ancestor's.
                .col(big_integer(ReportSetting::OrgUnitId).primary_key())
                // Zombie: share of the scope's customers under this (0..1) …
                .col(double(ReportSetting::ZombieShare))
                // … or no tagging for this many days.
                .col(integer(ReportSetting::ZombieIdleDays))
                // Duplicates: holder overlap (Jaccard, 0..1) at or above this.
                .col(double(ReportSetting::DuplicateJaccard))
                // Duplicates: names at most this many edits apart.
                .col(integer(ReportSetting::DuplicateEditDistance))
                .col(big_integer(ReportSetting::UpdatedBy))
                .col(timestamp_with_time_zone(ReportSetting::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(GovernanceAlert::Table)
                .col(big_pk_auto(GovernanceAlert::Id))
                // TAG_OVERLOAD, ZOMBIE_TAG, DUPLICATE_TAGS, FAILED_RUN, STRANDED_LOCK.
                .col(string_len(GovernanceAlert::Kind, 24))
                // OPEN, ACKNOWLEDGED, RESOLVED.
                .col(string_len(GovernanceAlert::Status, 16))
                // Who sees the alert: readers of reports in this unit.
                .col(big_integer(GovernanceAlert::OrgUnitId))
                // What it is about: `tag:5`, `tags:3,7`, `customer:9`, `lock:4`.
                .col(string_len(GovernanceAlert::Subject, 128))
                // The subject while the alert is not resolved, NULL after:
                // the unique index keeps one live alert per subject (NULLs
                // are distinct on both databases).
                .col(string_len_null(GovernanceAlert::OpenKey, 160))
                .col(json(GovernanceAlert::Detail))
                .col(integer(GovernanceAlert::Version))
                .col(timestamp_with_time_zone(GovernanceAlert::CreatedAt))
                .col(timestamp_with_time_zone(GovernanceAlert::UpdatedAt))
                .col(big_integer_null(GovernanceAlert::AcknowledgedBy))
                .col(timestamp_with_time_zone_null(GovernanceAlert::AcknowledgedAt))
                .col(big_integer_null(GovernanceAlert::ResolvedBy))
                .col(timestamp_with_time_zone_null(GovernanceAlert::ResolvedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_governance_alert_open")
                .table(GovernanceAlert::Table)
                .col(GovernanceAlert::Kind)
                .col(GovernanceAlert::OpenKey)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_governance_alert_unit")
                .table(GovernanceAlert::Table)
                .col(GovernanceAlert::OrgUnitId)
                .col(GovernanceAlert::Status)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(GovernanceAlert::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(ReportSetting::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum ReportSetting {
    Table,
    OrgUnitId,
    ZombieShare,
    ZombieIdleDays,
    DuplicateJaccard,
    DuplicateEditDistance,
    UpdatedBy,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum GovernanceAlert {
    Table,
    Id,
    Kind,
    Status,
    OrgUnitId,
    Subject,
    OpenKey,
    Detail,
    Version,
    CreatedAt,
    UpdatedAt,
    AcknowledgedBy,
    AcknowledgedAt,
    ResolvedBy,
    ResolvedAt,
}
