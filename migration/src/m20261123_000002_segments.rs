//! Saved segments (客群) and the member snapshots of static ones.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000002_segments"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Segment::Table)
                .col(big_pk_auto(Segment::Id))
                .col(big_integer(Segment::OrgUnitId))
                .col(string_len(Segment::Name, 64))
                .col(string_len(Segment::Description, 500))
                .col(string_len(Segment::Kind, 16))
                // The expression with every reference as #id, so renames
                // never change what a segment means.
                .col(text(Segment::Expression))
                .col(big_integer(Segment::OwnerStaffId))
                .col(integer_null(Segment::MemberCount))
                .col(timestamp_with_time_zone(Segment::CreatedAt))
                .col(timestamp_with_time_zone(Segment::UpdatedAt))
                .foreign_key(
                    ForeignKey::create().from(Segment::Table, Segment::OrgUnitId).to(OrgUnit::Table, OrgUnit::Id),
                )
                .foreign_key(
                    ForeignKey::create().from(Segment::Table, Segment::OwnerStaffId).to(Staff::Table, Staff::Id),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("uq_segment_org_name")
                .table(Segment::Table)
                .col(Segment::OrgUnitId)
                .col(Segment::Name)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(SegmentMember::Table)
                .col(big_integer(SegmentMember::SegmentId))
                .col(big_integer(SegmentMember::CustomerId))
                .primary_key(Index::create().col(SegmentMember::SegmentId).col(SegmentMember::CustomerId))
                .foreign_key(
                    ForeignKey::create()
                        .from(SegmentMember::Table, SegmentMember::SegmentId)
                        .to(Segment::Table, Segment::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(SegmentMember::Table, SegmentMember::CustomerId)
                        .to(Customer::Table, Customer::Id),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(SegmentMember::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(Segment::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Segment {
    Table,
    Id,
    OrgUnitId,
    Name,
    Description,
    Kind,
    Expression,
    OwnerStaffId,
    MemberCount,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SegmentMember {
    Table,
    SegmentId,
    CustomerId,
}

#[derive(DeriveIden)]
enum OrgUnit {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Staff {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Customer {
    Table,
    Id,
}
