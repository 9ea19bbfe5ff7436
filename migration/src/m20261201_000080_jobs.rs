//! Bulk tagging jobs: the job row (status, counts, the lease of the
//! instance running it) and the snapshot of the customers it tags, taken
//! once when the job is created.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000080_jobs"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Job::Table)
                .col(big_pk_auto(Job::Id))
                // `BULK_TAG`.
                .col(string_len(Job::Kind, 16))
                // QUEUED, AWAITING_APPROVAL, RUNNING, SUCCEEDED, FAILED, CANCELLED.
                .col(string_len(Job::Status, 24))
                .col(big_integer(Job::RequestedBy))
                // The customers' lowest common unit: who sees the job.
                .col(big_integer(Job::OrgUnitId))
                // Tags to add and remove, the reason, how the customers were named.
                .col(json(Job::Input))
                .col(big_integer(Job::Total))
                // Customers processed: snapshot ordinals below this are done.
                .col(big_integer(Job::Done))
                .col(big_integer(Job::Added))
                .col(big_integer(Job::Removed))
                .col(big_integer(Job::Unchanged))
                .col(big_integer(Job::Skipped))
                .col(json(Job::Errors))
                .col(big_integer_null(Job::ChangeRequestId))
                .col(boolean(Job::CancelRequested))
                // The modification locks the job holds (ids), once taken.
                .col(json(Job::LockIds))
                .col(string_len_null(Job::Owner, 64))
                .col(timestamp_with_time_zone_null(Job::LeaseUntil))
                .col(integer(Job::Attempts))
                .col(timestamp_with_time_zone(Job::CreatedAt))
                .col(timestamp_with_time_zone_null(Job::StartedAt))
                .col(timestamp_with_time_zone_null(Job::FinishedAt))
                .col(timestamp_with_time_zone(Job::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(Index::create().name("ix_job_status").table(Job::Table).col(Job::Status).to_owned()).await?;
        m.create_table(
            Table::create()
                .table(JobCustomer::Table)
                .col(big_integer(JobCustomer::JobId))
                .col(big_integer(JobCustomer::Ordinal))
                .col(big_integer(JobCustomer::CustomerId))
                .primary_key(Index::create().col(JobCustomer::JobId).col(JobCustomer::Ordinal))
                .foreign_key(ForeignKey::create().from(JobCustomer::Table, JobCustomer::JobId).to(Job::Table, Job::Id))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(JobCustomer::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(Job::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Job {
    Table,
    Id,
    Kind,
    Status,
    RequestedBy,
    OrgUnitId,
    Input,
    Total,
    Done,
    Added,
    Removed,
    Unchanged,
    Skipped,
    Errors,
    ChangeRequestId,
    CancelRequested,
    LockIds,
    Owner,
    LeaseUntil,
    Attempts,
    CreatedAt,
    StartedAt,
    FinishedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum JobCustomer {
    Table,
    JobId,
    Ordinal,
    CustomerId,
}
