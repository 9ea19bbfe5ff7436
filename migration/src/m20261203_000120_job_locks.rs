//! A bulk job's modification lock covers "the customers of job N" without
//! copying them: `modification_lock.job_id` names the job, and the lock
//! covers that job's snapshot (`job_customer`). Copying a 100,000-customer
//! snapshot into `modification_lock_customer` cost ~1.5 s per lock;
//! naming the job costs nothing. `ix_job_customer_customer` answers "is
//! customer C in job N" for the lock checks.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261203_000120_job_locks"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(ModificationLock::Table)
                .add_column(big_integer_null(ModificationLock::JobId))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_job_customer_customer")
                .table(JobCustomer::Table)
                .col(JobCustomer::JobId)
                .col(JobCustomer::CustomerId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name("ix_job_customer_customer").table(JobCustomer::Table).to_owned()).await?;
        m.alter_table(Table::alter().table(ModificationLock::Table).drop_column(ModificationLock::JobId).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ModificationLock {
    Table,
    JobId,
}

#[derive(DeriveIden)]
enum JobCustomer {
    Table,
    JobId,
    CustomerId,
}
