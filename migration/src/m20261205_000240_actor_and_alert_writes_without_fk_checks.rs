//! The last per-row foreign-key checks of the bulk write path, gone on
//! PostgreSQL: `customer_tag.tagged_by` (the staff member who tagged) and
//! `tag_alert.customer_id`. Measured on the 1M bench data (`EXPLAIN
//! ANALYZE`, an insert of 10,000 assignments): 44 ms of 239 ms were the
//! 10,000 calls of the check that the tagging staff member exists, the
//! one whose principal the transaction acts as. A bulk batch of 10,000
//! customers crossing the tag-count alert threshold paid the same for its
//! alerts' customers, whose rows the batch had just locked.
//!
//! What the constraints also guarded is guarded directly: customers are
//! never deleted (a trigger since `m20261204_000210`), and now staff are
//! never deleted either (they are deactivated; their name stays on every
//! change they made), refused by a trigger on both databases. SQLite keeps
//! its foreign keys.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261205_000240_actor_and_alert_writes_without_fk_checks"
    }
}

const REFUSAL: &str = "staff are never deleted: deactivate a staff member instead";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        if m.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(&format!(
                "ALTER TABLE customer_tag DROP CONSTRAINT IF EXISTS customer_tag_tagged_by_fkey;
                 ALTER TABLE tag_alert DROP CONSTRAINT IF EXISTS tag_alert_customer_id_fkey;
                 CREATE OR REPLACE FUNCTION tagbase_staff_never_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN RAISE EXCEPTION '{REFUSAL}' USING ERRCODE = 'restrict_violation'; END $$;
                 CREATE TRIGGER staff_never_deleted BEFORE DELETE ON staff
                   FOR EACH STATEMENT EXECUTE FUNCTION tagbase_staff_never_deleted();"
            ))
            .await?;
        } else {
            db.execute_unprepared(&format!(
                "CREATE TRIGGER staff_never_deleted BEFORE DELETE ON staff BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        if m.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared(
                "DROP TRIGGER IF EXISTS staff_never_deleted ON staff;
                 DROP FUNCTION IF EXISTS tagbase_staff_never_deleted();
                 ALTER TABLE customer_tag
                   ADD CONSTRAINT customer_tag_tagged_by_fkey FOREIGN KEY (tagged_by) REFERENCES staff(id);
                 ALTER TABLE tag_alert
                   ADD CONSTRAINT tag_alert_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES customer(id);",
            )
            .await?;
        } else {
            db.execute_unprepared("DROP TRIGGER IF EXISTS staff_never_deleted").await?;
        }
        Ok(())
    }
}
