//! The foundation schema: organisation, staff, customers, tag libraries,
//! assignments, the tag event log, the audit log, alerts, settings and the
//! Casbin rule table.
//!
//! Constraints carry what the spec says can never happen, so that a bug in
//! a service cannot write it either: one external id maps to one customer,
//! a tag name exists once per group (and once per owner for personal tags),
//! a customer holds a tag at most once.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000001_foundation"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(OrgUnit::Table)
                .col(big_pk_auto(OrgUnit::Id))
                .col(string_len_uniq(OrgUnit::Code, 32))
                .col(string_len(OrgUnit::Name, 64))
                .col(string_len(OrgUnit::Kind, 16))
                .col(big_integer_null(OrgUnit::ParentId))
                .col(string_len_uniq(OrgUnit::Path, 512))
                .col(timestamp_with_time_zone(OrgUnit::CreatedAt))
                .foreign_key(
                    ForeignKey::create().from(OrgUnit::Table, OrgUnit::ParentId).to(OrgUnit::Table, OrgUnit::Id),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Staff::Table)
                .col(big_pk_auto(Staff::Id))
                .col(string_len_uniq(Staff::Login, 64))
                .col(string_len(Staff::DisplayName, 64))
                .col(big_integer(Staff::HomeOrgUnitId))
                .col(boolean(Staff::Active))
                .col(timestamp_with_time_zone(Staff::CreatedAt))
                .foreign_key(
                    ForeignKey::create().from(Staff::Table, Staff::HomeOrgUnitId).to(OrgUnit::Table, OrgUnit::Id),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Customer::Table)
                .col(big_pk_auto(Customer::Id))
                .col(big_integer(Customer::OrgUnitId))
                .col(big_integer_null(Customer::OwnerStaffId))
                .col(string_len(Customer::Name, 100))
                .col(string_len_null(Customer::Phone, 20))
                .col(string_len(Customer::Gender, 16))
                .col(date_null(Customer::BirthDate))
                .col(string_len_null(Customer::City, 64))
                .col(string_len_null(Customer::Industry, 64))
                .col(string_len_null(Customer::Channel, 64))
                .col(big_integer(Customer::TotalSpendCents))
                .col(integer(Customer::OrderCount))
                .col(timestamp_with_time_zone_null(Customer::LastOrderAt))
                .col(timestamp_with_time_zone(Customer::AddedAt))
                .col(timestamp_with_time_zone(Customer::UpdatedAt))
                .col(integer(Customer::Version))
                .foreign_key(
                    ForeignKey::create().from(Customer::Table, Customer::OrgUnitId).to(OrgUnit::Table, OrgUnit::Id),
                )
                .foreign_key(
                    ForeignKey::create().from(Customer::Table, Customer::OwnerStaffId).to(Staff::Table, Staff::Id),
                )
                .to_owned(),
        )
        .await?;
        index(m, Customer::Table, "idx_customer_org_unit", &[Customer::OrgUnitId]).await?;
        index(m, Customer::Table, "idx_customer_phone", &[Customer::Phone]).await?;
        index(m, Customer::Table, "idx_customer_added", &[Customer::AddedAt, Customer::Id]).await?;

        m.create_table(
            Table::create()
                .table(CustomerIdentity::Table)
                .col(big_pk_auto(CustomerIdentity::Id))
                .col(big_integer(CustomerIdentity::CustomerId))
                .col(string_len(CustomerIdentity::Provider, 32))
                .col(string_len(CustomerIdentity::ExternalId, 128))
                .col(timestamp_with_time_zone(CustomerIdentity::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(CustomerIdentity::Table, CustomerIdentity::CustomerId)
                        .to(Customer::Table, Customer::Id),
                )
                .to_owned(),
        )
        .await?;
        unique(
            m,
            CustomerIdentity::Table,
            "uq_customer_identity_provider_external",
            &[CustomerIdentity::Provider, CustomerIdentity::ExternalId],
        )
        .await?;
        index(m, CustomerIdentity::Table, "idx_customer_identity_customer", &[CustomerIdentity::CustomerId]).await?;

        m.create_table(
            Table::create()
                .table(TagGroup::Table)
                .col(big_pk_auto(TagGroup::Id))
                .col(big_integer(TagGroup::OrgUnitId))
                .col(string_len(TagGroup::Name, 64))
                .col(string_len(TagGroup::Description, 500))
                .col(string_len(TagGroup::Category, 16))
                .col(string_len(TagGroup::VisibilityClass, 32))
                .col(boolean(TagGroup::Exclusive))
                .col(string_len_null(TagGroup::NamingPattern, 200))
                .col(integer(TagGroup::Version))
                .col(timestamp_with_time_zone(TagGroup::CreatedAt))
                .col(timestamp_with_time_zone(TagGroup::UpdatedAt))
                .foreign_key(
                    ForeignKey::create().from(TagGroup::Table, TagGroup::OrgUnitId).to(OrgUnit::Table, OrgUnit::Id),
                )
                .to_owned(),
        )
        .await?;
        unique(m, TagGroup::Table, "uq_tag_group_org_name", &[TagGroup::OrgUnitId, TagGroup::Name]).await?;

        m.create_table(
            Table::create()
                .table(Tag::Table)
                .col(big_pk_auto(Tag::Id))
                .col(big_integer_null(Tag::GroupId))
                .col(big_integer_null(Tag::OwnerStaffId))
                .col(string_len(Tag::Name, 64))
                .col(string_len(Tag::Description, 500))
                .col(string_len(Tag::Status, 16))
                .col(json(Tag::Aliases))
                .col(big_integer_null(Tag::CanonicalTagId))
                .col(big_integer_null(Tag::MergedIntoId))
                .col(big_integer_null(Tag::TtlSeconds))
                .col(integer(Tag::Version))
                .col(timestamp_with_time_zone(Tag::CreatedAt))
                .col(timestamp_with_time_zone(Tag::UpdatedAt))
                // A tag is either an enterprise tag (in a group) or a personal
                // tag (owned by one staff member), never both, never neither.
                .check(Expr::cust(
                    "(group_id IS NULL AND owner_staff_id IS NOT NULL) OR (group_id IS NOT NULL AND owner_staff_id IS NULL)",
                ))
                .foreign_key(ForeignKey::create().from(Tag::Table, Tag::GroupId).to(TagGroup::Table, TagGroup::Id))
                .foreign_key(ForeignKey::create().from(Tag::Table, Tag::OwnerStaffId).to(Staff::Table, Staff::Id))
                .foreign_key(ForeignKey::create().from(Tag::Table, Tag::CanonicalTagId).to(Tag::Table, Tag::Id))
                .foreign_key(ForeignKey::create().from(Tag::Table, Tag::MergedIntoId).to(Tag::Table, Tag::Id))
                .to_owned(),
        )
        .await?;
        // NULLs are distinct in unique indexes on both databases, so each
        // index only bites for its own kind of tag.
        unique(m, Tag::Table, "uq_tag_group_name", &[Tag::GroupId, Tag::Name]).await?;
        unique(m, Tag::Table, "uq_tag_owner_name", &[Tag::OwnerStaffId, Tag::Name]).await?;

        m.create_table(
            Table::create()
                .table(CustomerTag::Table)
                .col(big_integer(CustomerTag::CustomerId))
                .col(big_integer(CustomerTag::TagId))
                .col(string_len(CustomerTag::Source, 16))
                .col(string_len_null(CustomerTag::SourceRef, 128))
                .col(big_integer_null(CustomerTag::TaggedBy))
                .col(timestamp_with_time_zone(CustomerTag::TaggedAt))
                .col(timestamp_with_time_zone_null(CustomerTag::ExpiresAt))
                .primary_key(Index::create().col(CustomerTag::CustomerId).col(CustomerTag::TagId))
                .foreign_key(
                    ForeignKey::create()
                        .from(CustomerTag::Table, CustomerTag::CustomerId)
                        .to(Customer::Table, Customer::Id),
                )
                .foreign_key(ForeignKey::create().from(CustomerTag::Table, CustomerTag::TagId).to(Tag::Table, Tag::Id))
                .foreign_key(
                    ForeignKey::create().from(CustomerTag::Table, CustomerTag::TaggedBy).to(Staff::Table, Staff::Id),
                )
                .to_owned(),
        )
        .await?;
        index(m, CustomerTag::Table, "idx_customer_tag_tag", &[CustomerTag::TagId, CustomerTag::CustomerId]).await?;

        m.create_table(
            Table::create()
                .table(TagEvent::Table)
                .col(big_pk_auto(TagEvent::Seq))
                .col(big_integer(TagEvent::CustomerId))
                .col(big_integer(TagEvent::TagId))
                .col(string_len(TagEvent::Op, 8))
                .col(string_len(TagEvent::Source, 16))
                .col(string_len_null(TagEvent::SourceRef, 128))
                .col(big_integer_null(TagEvent::ActorStaffId))
                .col(timestamp_with_time_zone(TagEvent::OccurredAt))
                .foreign_key(
                    ForeignKey::create().from(TagEvent::Table, TagEvent::CustomerId).to(Customer::Table, Customer::Id),
                )
                .foreign_key(ForeignKey::create().from(TagEvent::Table, TagEvent::TagId).to(Tag::Table, Tag::Id))
                .to_owned(),
        )
        .await?;
        index(m, TagEvent::Table, "idx_tag_event_tag_time", &[TagEvent::TagId, TagEvent::OccurredAt]).await?;
        index(m, TagEvent::Table, "idx_tag_event_customer", &[TagEvent::CustomerId, TagEvent::Seq]).await?;

        m.create_table(
            Table::create()
                .table(AuditLog::Table)
                .col(big_pk_auto(AuditLog::Id))
                .col(timestamp_with_time_zone(AuditLog::OccurredAt))
                .col(big_integer_null(AuditLog::ActorStaffId))
                .col(string_len(AuditLog::Action, 64))
                .col(string_len(AuditLog::ObjectKind, 32))
                .col(string_len_null(AuditLog::ObjectId, 64))
                .col(big_integer_null(AuditLog::OrgUnitId))
                .col(string_len(AuditLog::Outcome, 16))
                .col(string_len_null(AuditLog::RequestId, 64))
                .col(json(AuditLog::Detail))
                .to_owned(),
        )
        .await?;
        index(m, AuditLog::Table, "idx_audit_log_time", &[AuditLog::OccurredAt]).await?;
        index(m, AuditLog::Table, "idx_audit_log_object", &[AuditLog::ObjectKind, AuditLog::ObjectId]).await?;

        m.create_table(
            Table::create()
                .table(TagAlert::Table)
                .col(big_pk_auto(TagAlert::Id))
                .col(big_integer(TagAlert::CustomerId))
                .col(string_len(TagAlert::Kind, 32))
                .col(integer(TagAlert::TagCount))
                .col(integer(TagAlert::Threshold))
                .col(timestamp_with_time_zone(TagAlert::CreatedAt))
                .col(timestamp_with_time_zone_null(TagAlert::ResolvedAt))
                .foreign_key(
                    ForeignKey::create().from(TagAlert::Table, TagAlert::CustomerId).to(Customer::Table, Customer::Id),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(AppSetting::Table)
                .col(string_len(AppSetting::Key, 64).primary_key())
                .col(text(AppSetting::Value))
                .col(timestamp_with_time_zone(AppSetting::UpdatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(CasbinRule::Table)
                .col(big_pk_auto(CasbinRule::Id))
                .col(string_len(CasbinRule::Ptype, 12))
                .col(string_len(CasbinRule::V0, 128))
                .col(string_len(CasbinRule::V1, 128))
                .col(string_len(CasbinRule::V2, 128))
                .col(string_len(CasbinRule::V3, 128))
                .col(string_len(CasbinRule::V4, 128))
                .col(string_len(CasbinRule::V5, 128))
                .to_owned(),
        )
        .await?;
        unique(
            m,
            CasbinRule::Table,
            "uq_casbin_rule",
            &[
                CasbinRule::Ptype,
                CasbinRule::V0,
                CasbinRule::V1,
                CasbinRule::V2,
                CasbinRule::V3,
                CasbinRule::V4,
                CasbinRule::V5,
            ],
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            CasbinRule::Table.into_iden(),
            AppSetting::Table.into_iden(),
            TagAlert::Table.into_iden(),
            AuditLog::Table.into_iden(),
            TagEvent::Table.into_iden(),
            CustomerTag::Table.into_iden(),
            Tag::Table.into_iden(),
            TagGroup::Table.into_iden(),
            CustomerIdentity::Table.into_iden(),
            Customer::Table.into_iden(),
            Staff::Table.into_iden(),
            OrgUnit::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

async fn index<T: Iden + Copy + 'static, C: Iden + Copy + 'static>(
    m: &SchemaManager<'_>,
    table: T,
    name: &str,
    cols: &[C],
) -> Result<(), DbErr> {
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for c in cols {
        stmt.col(*c);
    }
    m.create_index(stmt.to_owned()).await
}

async fn unique<T: Iden + Copy + 'static, C: Iden + Copy + 'static>(
    m: &SchemaManager<'_>,
    table: T,
    name: &str,
    cols: &[C],
) -> Result<(), DbErr> {
    let mut stmt = Index::create();
    stmt.name(name).table(table).unique();
    for c in cols {
        stmt.col(*c);
    }
    m.create_index(stmt.to_owned()).await
}

#[derive(DeriveIden, Clone, Copy)]
enum OrgUnit {
    Table,
    Id,
    Code,
    Name,
    Kind,
    ParentId,
    Path,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Staff {
    Table,
    Id,
    Login,
    DisplayName,
    HomeOrgUnitId,
    Active,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Customer {
    Table,
    Id,
    OrgUnitId,
    OwnerStaffId,
    Name,
    Phone,
    Gender,
    BirthDate,
    City,
    Industry,
    Channel,
    TotalSpendCents,
    OrderCount,
    LastOrderAt,
    AddedAt,
    UpdatedAt,
    Version,
}

#[derive(DeriveIden, Clone, Copy)]
enum CustomerIdentity {
    Table,
    Id,
    CustomerId,
    Provider,
    ExternalId,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum TagGroup {
    Table,
    Id,
    OrgUnitId,
    Name,
    Description,
    Category,
    VisibilityClass,
    Exclusive,
    NamingPattern,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Tag {
    Table,
    Id,
    GroupId,
    OwnerStaffId,
    Name,
    Description,
    Status,
    Aliases,
    CanonicalTagId,
    MergedIntoId,
    TtlSeconds,
    Version,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum CustomerTag {
    Table,
    CustomerId,
    TagId,
    Source,
    SourceRef,
    TaggedBy,
    TaggedAt,
    ExpiresAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum TagEvent {
    Table,
    Seq,
    CustomerId,
    TagId,
    Op,
    Source,
    SourceRef,
    ActorStaffId,
    OccurredAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum AuditLog {
    Table,
    Id,
    OccurredAt,
    ActorStaffId,
    Action,
    ObjectKind,
    ObjectId,
    OrgUnitId,
    Outcome,
    RequestId,
    Detail,
}

#[derive(DeriveIden, Clone, Copy)]
enum TagAlert {
    Table,
    Id,
    CustomerId,
    Kind,
    TagCount,
    Threshold,
    CreatedAt,
    ResolvedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum AppSetting {
    Table,
    Key,
    Value,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum CasbinRule {
    Table,
    Id,
    Ptype,
    V0,
    V1,
    V2,
    V3,
    V4,
    V5,
}
