//! The customer change log the segment index follows: one row per created
//! or updated customer, in commit order (like `tag_event`), so that every
//! instance's index sees attribute changes without rescanning customers.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261125_000010_segment_engine"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(CustomerChange::Table)
                .col(big_pk_auto(CustomerChange::Seq))
                .col(big_integer(CustomerChange::CustomerId))
                .col(timestamp_with_time_zone(CustomerChange::ChangedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(CustomerChange::Table, CustomerChange::CustomerId)
                        .to(Customer::Table, Customer::Id),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(CustomerChange::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum CustomerChange {
    Table,
    Seq,
    CustomerId,
    ChangedAt,
}

#[derive(DeriveIden)]
enum Customer {
    Table,
    Id,
}
