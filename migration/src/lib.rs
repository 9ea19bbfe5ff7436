//! Database migrations of tagbase.
//!
//! Every migration here must run unchanged on SQLite (the embedded default)
//! and PostgreSQL (production): only portable column types, no
//! database-specific SQL — except where no portable form exists (the
//! audit log's append-only triggers), which then says so and speaks both.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_foundation;
mod m20261123_000002_segments;
mod m20261125_000003_governance;
mod m20261125_000010_segment_engine;
mod m20261126_000020_audit_append_only;
mod m20261201_000030_hardening;
mod m20261201_000040_staff_sign_in;
mod m20261201_000050_log_txid;
mod m20261201_000060_automatic_tagging;
mod m20261201_000070_sign_in_revision;
mod m20261201_000080_jobs;
mod m20261202_000090_rule_schedule;
mod m20261202_000100_reports;
mod m20261202_000110_customer_data;
mod m20261202_000120_merge_moves_events;
mod m20261202_000150_expiring_assignments;
mod m20261203_000120_job_locks;
mod m20261204_000200_lean_assignment_index;
mod m20261204_000210_assignment_writes_without_fk_checks;
mod m20261204_000220_job_snapshot_without_fk_checks;
mod m20261204_000230_tag_event_adds;
mod m20261205_000240_actor_and_alert_writes_without_fk_checks;
mod m20261206_000250_manual_removals;
mod m20261207_000260_event_writes_without_fk_checks;
mod m20261207_000270_rule_revision;
mod m20261208_000280_tag_add_days;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_foundation::Migration),
            Box::new(m20261123_000002_segments::Migration),
            Box::new(m20261125_000003_governance::Migration),
            Box::new(m20261125_000010_segment_engine::Migration),
            Box::new(m20261126_000020_audit_append_only::Migration),
            Box::new(m20261201_000030_hardening::Migration),
            Box::new(m20261201_000040_staff_sign_in::Migration),
            Box::new(m20261201_000050_log_txid::Migration),
            Box::new(m20261201_000060_automatic_tagging::Migration),
            Box::new(m20261201_000070_sign_in_revision::Migration),
            Box::new(m20261201_000080_jobs::Migration),
            Box::new(m20261202_000090_rule_schedule::Migration),
            Box::new(m20261202_000100_reports::Migration),
            Box::new(m20261202_000110_customer_data::Migration),
            Box::new(m20261202_000120_merge_moves_events::Migration),
            Box::new(m20261202_000150_expiring_assignments::Migration),
            Box::new(m20261203_000120_job_locks::Migration),
            Box::new(m20261204_000200_lean_assignment_index::Migration),
            Box::new(m20261204_000210_assignment_writes_without_fk_checks::Migration),
            Box::new(m20261204_000220_job_snapshot_without_fk_checks::Migration),
            Box::new(m20261204_000230_tag_event_adds::Migration),
            Box::new(m20261205_000240_actor_and_alert_writes_without_fk_checks::Migration),
            Box::new(m20261206_000250_manual_removals::Migration),
            Box::new(m20261207_000260_event_writes_without_fk_checks::Migration),
            Box::new(m20261207_000270_rule_revision::Migration),
            Box::new(m20261208_000280_tag_add_days::Migration),
        ]
    }
}
