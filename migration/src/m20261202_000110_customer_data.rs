//! Customer data: merged customers become tombstones (`merged_into_id`,
//! `merged_at` on `customer`), imports run as jobs whose rows wait in
//! `import_row`, and a job counts the customers it created and updated.
//!
//! One external id maps to one customer already: the foundation's unique
//! index `uq_customer_identity_provider_external` on
//! `customer_identity (provider, external_id)`. A WeCom identity carries
//! its corp in the provider (`wecom:<corp>`), so the same `external_userid`
//! may exist once per corp.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000110_customer_data"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite cannot add several at once.
        for column in [
            // The customer this one was merged into; set once, never cleared.
            big_integer_null(Customer::MergedIntoId),
            timestamp_with_time_zone_null(Customer::MergedAt),
        ] {
            m.alter_table(Table::alter().table(Customer::Table).add_column(column).to_owned()).await?;
        }
        m.create_index(
            Index::create()
                .name("idx_customer_merged_into")
                .table(Customer::Table)
                .col(Customer::MergedIntoId)
                .to_owned(),
        )
        .await?;
        for column in [
            // An import job: customers created and updated (tags added are `added`).
            big_integer(Job::Created).default(0).to_owned(),
            big_integer(Job::Updated).default(0).to_owned(),
        ] {
            m.alter_table(Table::alter().table(Job::Table).add_column(column).to_owned()).await?;
        }
        m.create_table(
            Table::create()
                .table(ImportRow::Table)
                .col(big_integer(ImportRow::JobId))
                .col(big_integer(ImportRow::Ordinal))
                // The row's line in the file (1 is the header).
                .col(big_integer(ImportRow::Line))
                // The row, parsed and checked when the job was created.
                .col(json(ImportRow::Payload))
                .primary_key(Index::create().col(ImportRow::JobId).col(ImportRow::Ordinal))
                .foreign_key(ForeignKey::create().from(ImportRow::Table, ImportRow::JobId).to(Job::Table, Job::Id))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(ImportRow::Table).to_owned()).await?;
        for column in [Job::Created, Job::Updated] {
            m.alter_table(Table::alter().table(Job::Table).drop_column(column).to_owned()).await?;
        }
        m.drop_index(Index::drop().name("idx_customer_merged_into").table(Customer::Table).to_owned()).await?;
        for column in [Customer::MergedIntoId, Customer::MergedAt] {
            m.alter_table(Table::alter().table(Customer::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Customer {
    Table,
    MergedIntoId,
    MergedAt,
}

#[derive(DeriveIden)]
enum Job {
    Table,
    Id,
    Created,
    Updated,
}

#[derive(DeriveIden)]
enum ImportRow {
    Table,
    JobId,
    Ordinal,
    Line,
    Payload,
}
