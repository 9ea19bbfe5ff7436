//! Assignments with an expiry, indexed apart: the scheduler's expiry round
//! looks for `expires_at <= now` customer by customer, and without this
//! index PostgreSQL walks every assignment (20M rows at 1M customers: past
//! the statement timeout, so nothing ever expired there). Few assignments
//! expire, so the partial index is small; both databases use it for any
//! `expires_at` comparison, which implies `IS NOT NULL`.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261202_000150_expiring_assignments"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS ix_customer_tag_expiring ON customer_tag (customer_id, expires_at) \
                 WHERE expires_at IS NOT NULL",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection().execute_unprepared("DROP INDEX IF EXISTS ix_customer_tag_expiring").await?;
        Ok(())
    }
}
