//! Governance of the tag library: versions of every tag and group, change
//! requests (审批), and modification locks (修改锁).

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261125_000003_governance"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ChangeRequest::Table)
                .col(big_pk_auto(ChangeRequest::Id))
                // `tag.update`, `tag.merge`, `customer.tag`, …
                .col(string_len(ChangeRequest::Kind, 32))
                .col(string_len(ChangeRequest::TargetKind, 16))
                .col(big_integer_null(ChangeRequest::TargetId))
                // The versions of every object the change touches, as read
                // by the requester: `{"tag:5": 3, "tag:9": 1}`.
                .col(json(ChangeRequest::BaseVersions))
                // The intended change, as the service that applies it reads it.
                .col(json(ChangeRequest::Payload))
                .col(big_integer(ChangeRequest::OrgUnitId))
                .col(big_integer(ChangeRequest::RequesterStaffId))
                .col(string_len(ChangeRequest::Reason, 500))
                .col(string_len(ChangeRequest::Status, 16))
                .col(big_integer_null(ChangeRequest::DecidedBy))
                .col(timestamp_with_time_zone_null(ChangeRequest::DecidedAt))
                .col(string_len_null(ChangeRequest::DecisionComment, 500))
                .col(timestamp_with_time_zone(ChangeRequest::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(ChangeRequest::Table, ChangeRequest::OrgUnitId)
                        .to(OrgUnit::Table, OrgUnit::Id),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(ChangeRequest::Table, ChangeRequest::RequesterStaffId)
                        .to(Staff::Table, Staff::Id),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(ChangeRequest::Table, ChangeRequest::DecidedBy)
                        .to(Staff::Table, Staff::Id),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_change_request_status")
                .table(ChangeRequest::Table)
                .col(ChangeRequest::Status)
                .col(ChangeRequest::Id)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(LibraryVersion::Table)
                .col(big_pk_auto(LibraryVersion::Id))
                .col(string_len(LibraryVersion::ObjectKind, 16))
                .col(big_integer(LibraryVersion::ObjectId))
                .col(integer(LibraryVersion::Version))
                // `create`, `update`, `archive`, `merge`, `rollback`, …
                .col(string_len(LibraryVersion::Action, 32))
                // The object's whole state after the change.
                .col(json(LibraryVersion::State))
                .col(big_integer_null(LibraryVersion::ChangedBy))
                .col(timestamp_with_time_zone(LibraryVersion::ChangedAt))
                .col(big_integer_null(LibraryVersion::ChangeRequestId))
                .foreign_key(
                    ForeignKey::create()
                        .from(LibraryVersion::Table, LibraryVersion::ChangedBy)
                        .to(Staff::Table, Staff::Id),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(LibraryVersion::Table, LibraryVersion::ChangeRequestId)
                        .to(ChangeRequest::Table, ChangeRequest::Id),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("uq_library_version")
                .table(LibraryVersion::Table)
                .col(LibraryVersion::ObjectKind)
                .col(LibraryVersion::ObjectId)
                .col(LibraryVersion::Version)
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(ModificationLock::Table)
                .col(big_pk_auto(ModificationLock::Id))
                .col(big_integer(ModificationLock::GroupId))
                .col(big_integer(ModificationLock::HolderStaffId))
                .col(string_len(ModificationLock::Reason, 500))
                // True: every customer's tags of the group; false: only the
                // customers listed in modification_lock_customer.
                .col(boolean(ModificationLock::WholeGroup))
                .col(timestamp_with_time_zone(ModificationLock::AcquiredAt))
                .col(timestamp_with_time_zone(ModificationLock::ExpiresAt))
                .col(timestamp_with_time_zone_null(ModificationLock::ReleasedAt))
                .col(big_integer_null(ModificationLock::ReleasedBy))
                .foreign_key(
                    ForeignKey::create()
                        .from(ModificationLock::Table, ModificationLock::GroupId)
                        .to(TagGroup::Table, TagGroup::Id),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(ModificationLock::Table, ModificationLock::HolderStaffId)
                        .to(Staff::Table, Staff::Id),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_modification_lock_group")
                .table(ModificationLock::Table)
                .col(ModificationLock::GroupId)
                .col(ModificationLock::ReleasedAt)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ModificationLockCustomer::Table)
                .col(big_integer(ModificationLockCustomer::LockId))
                .col(big_integer(ModificationLockCustomer::CustomerId))
                .primary_key(
                    Index::create().col(ModificationLockCustomer::LockId).col(ModificationLockCustomer::CustomerId),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(ModificationLockCustomer::Table, ModificationLockCustomer::LockId)
                        .to(ModificationLock::Table, ModificationLock::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(ModificationLockCustomer::Table, ModificationLockCustomer::CustomerId)
                        .to(Customer::Table, Customer::Id),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_modification_lock_customer")
                .table(ModificationLockCustomer::Table)
                .col(ModificationLockCustomer::CustomerId)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(ModificationLockCustomer::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(ModificationLock::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(LibraryVersion::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(ChangeRequest::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum ChangeRequest {
    Table,
    Id,
    Kind,
    TargetKind,
    TargetId,
    BaseVersions,
    Payload,
    OrgUnitId,
    RequesterStaffId,
    Reason,
    Status,
    DecidedBy,
    DecidedAt,
    DecisionComment,
    CreatedAt,
}

#[derive(DeriveIden)]
enum LibraryVersion {
    Table,
    Id,
    ObjectKind,
    ObjectId,
    Version,
    Action,
    State,
    ChangedBy,
    ChangedAt,
    ChangeRequestId,
}

#[derive(DeriveIden)]
enum ModificationLock {
    Table,
    Id,
    GroupId,
    HolderStaffId,
    Reason,
    WholeGroup,
    AcquiredAt,
    ExpiresAt,
    ReleasedAt,
    ReleasedBy,
}

#[derive(DeriveIden)]
enum ModificationLockCustomer {
    Table,
    LockId,
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

#[derive(DeriveIden)]
enum TagGroup {
    Table,
    Id,
}
