//! Staff management and sign-in: contact details and a sign-out mark on
//! `staff`, the identities that map an identity provider's user to a staff
//! member, and tagbase's own sessions with their refresh tokens.

use sea_orm_migration::{prelude::*, schema::*};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000040_staff_sign_in"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite cannot add several at once.
        for column in [
            string_len_null(Staff::Phone, 32),
            string_len_null(Staff::Email, 254),
            // Tokens issued before this instant (dev and OIDC tokens, which
            // tagbase cannot revoke one by one) are refused: "sign out
            // everywhere".
            timestamp_with_time_zone_null(Staff::SignedOutAt),
        ] {
            m.alter_table(Table::alter().table(Staff::Table).add_column(column).to_owned()).await?;
        }

        m.create_table(
            Table::create()
                .table(StaffIdentity::Table)
                .col(big_pk_auto(StaffIdentity::Id))
                .col(big_integer(StaffIdentity::StaffId))
                // `oidc_sub` or `wecom_userid`.
                .col(string_len(StaffIdentity::Kind, 32))
                .col(string_len(StaffIdentity::Value, 255))
                .col(timestamp_with_time_zone(StaffIdentity::CreatedAt))
                .foreign_key(
                    ForeignKey::create().from(StaffIdentity::Table, StaffIdentity::StaffId).to(Staff::Table, Staff::Id),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_staff_identity_kind_value")
                .table(StaffIdentity::Table)
                .col(StaffIdentity::Kind)
                .col(StaffIdentity::Value)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_staff_identity_staff_kind")
                .table(StaffIdentity::Table)
                .col(StaffIdentity::StaffId)
                .col(StaffIdentity::Kind)
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(StaffSession::Table)
                // A random id, carried by the session's access tokens.
                .col(string_len(StaffSession::Id, 64).primary_key())
                .col(big_integer(StaffSession::StaffId))
                // `wecom` or `oidc`: how the session was opened.
                .col(string_len(StaffSession::Method, 16))
                .col(timestamp_with_time_zone(StaffSession::CreatedAt))
                // The session ends here at the latest, refreshed or not.
                .col(timestamp_with_time_zone(StaffSession::ExpiresAt))
                .col(timestamp_with_time_zone_null(StaffSession::RevokedAt))
                .col(string_len_null(StaffSession::RevokedReason, 32))
                .foreign_key(
                    ForeignKey::create().from(StaffSession::Table, StaffSession::StaffId).to(Staff::Table, Staff::Id),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_staff_session_staff")
                .table(StaffSession::Table)
                .col(StaffSession::StaffId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(StaffRefreshToken::Table)
                // SHA-256 of the token, hex: the token itself is never stored.
                .col(string_len(StaffRefreshToken::TokenHash, 64).primary_key())
                .col(string_len(StaffRefreshToken::SessionId, 64))
                .col(timestamp_with_time_zone(StaffRefreshToken::IssuedAt))
                // Set when the token is exchanged; a second exchange is a
                // replay and revokes the session.
                .col(timestamp_with_time_zone_null(StaffRefreshToken::UsedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(StaffRefreshToken::Table, StaffRefreshToken::SessionId)
                        .to(StaffSession::Table, StaffSession::Id),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(StaffRefreshToken::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(StaffSession::Table).to_owned()).await?;
        m.drop_table(Table::drop().table(StaffIdentity::Table).to_owned()).await?;
        for column in [Staff::Phone, Staff::Email, Staff::SignedOutAt] {
            m.alter_table(Table::alter().table(Staff::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Staff {
    Table,
    Id,
    Phone,
    Email,
    SignedOutAt,
}

#[derive(DeriveIden)]
enum StaffIdentity {
    Table,
    Id,
    StaffId,
    Kind,
    Value,
    CreatedAt,
}

#[derive(DeriveIden)]
enum StaffSession {
    Table,
    Id,
    StaffId,
    Method,
    CreatedAt,
    ExpiresAt,
    RevokedAt,
    RevokedReason,
}

#[derive(DeriveIden)]
enum StaffRefreshToken {
    Table,
    TokenHash,
    SessionId,
    IssuedAt,
    UsedAt,
}
