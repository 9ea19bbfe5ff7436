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
        .await?;
        grant_new_permissions(m).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(GovernanceAlert::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(ReportSetting::Table).to_owned()).await
    }
}

/// The default grants of the permissions this migration brings, as in
/// `policies/policy.csv`.
const NEW_GRANTS: &[(&str, &str, &str)] = &[
    ("hq_admin", "report", "read"),
    ("hq_admin", "report", "configure"),
    ("hq_admin", "alert", "manage"),
    ("region_manager", "report", "read"),
    ("region_manager", "report", "configure"),
    ("region_manager", "alert", "manage"),
    ("store_manager", "report", "read"),
    ("store_manager", "alert", "manage"),
    ("sales", "report", "read"),
    ("marketing", "report", "read"),
    ("auditor", "report", "read"),
];

/// A database whose policy was stored before these permissions existed
/// gets their default grants, for the default roles it still has (an
/// empty policy is seeded whole from `policy.csv` at start-up instead).
async fn grant_new_permissions(m: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = m.get_connection();
    let roles = Query::select()
        .distinct()
        .column(CasbinRule::V0)
        .from(CasbinRule::Table)
        .and_where(Expr::col(CasbinRule::Ptype).eq("p"))
        .to_owned();
    let present: Vec<String> =
        db.query_all(&roles).await?.into_iter().filter_map(|row| row.try_get::<String>("", "v0").ok()).collect();
    for (role, object, action) in NEW_GRANTS.iter().filter(|(r, _, _)| present.iter().any(|p| p == r)) {
        let insert = Query::insert()
            .into_table(CasbinRule::Table)
            .columns([
                CasbinRule::Ptype,
                CasbinRule::V0,
                CasbinRule::V1,
                CasbinRule::V2,
                CasbinRule::V3,
                CasbinRule::V4,
                CasbinRule::V5,
            ])
            .values_panic([
                "p".into(),
                (*role).into(),
                (*object).into(),
                (*action).into(),
                "".into(),
                "".into(),
                "".into(),
            ])
            .on_conflict(OnConflict::new().do_nothing().to_owned())
            .to_owned();
        db.execute(&insert).await?;
    }
    Ok(())
}

#[derive(DeriveIden)]
enum CasbinRule {
    Table,
    Ptype,
    V0,
    V1,
    V2,
    V3,
    V4,
    V5,
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
