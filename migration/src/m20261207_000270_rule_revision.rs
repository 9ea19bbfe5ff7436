//! One counter that changes, in the same transaction, with everything the
//! event path compiles its rules from: rules, tags, tag groups and the org
//! tree. `recordEvents` reads it once per batch (a primary-key read) and
//! compiles the rule sets of a unit again only when it moved: loading and
//! compiling the 2,000-tag bench library was 13% of the server's CPU per
//! batch. Triggers rather than calls in every writer, so that no write
//! path can forget it, as `sign_in_revision` does for sign-in. The row
//! also holds a random key of the database, so that one process serving
//! several databases (the tests do) never mixes their rule sets.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261207_000270_rule_revision"
    }
}

const WATCHED: &[&str] = &["rule", "tag", "tag_group", "org_unit"];
const EVENTS: &[&str] = &["INSERT", "UPDATE", "DELETE"];
const BUMP: &str = "UPDATE rule_revision SET revision = revision + 1 WHERE id = 1";

fn up_statements(backend: DbBackend) -> Vec<String> {
    let mut statements = Vec::new();
    match backend {
        DbBackend::Postgres => {
            statements.push(
                "CREATE TABLE rule_revision (id INTEGER PRIMARY KEY, revision BIGINT NOT NULL, \
                 database_key TEXT NOT NULL)"
                    .to_owned(),
            );
            statements.push(
                "INSERT INTO rule_revision (id, revision, database_key) VALUES (1, 1, gen_random_uuid()::text)"
                    .to_owned(),
            );
            statements.push(format!(
                "CREATE OR REPLACE FUNCTION tagbase_bump_rule_revision() RETURNS trigger AS $$
                 BEGIN {BUMP}; RETURN NULL; END;
                 $$ LANGUAGE plpgsql"
            ));
            for table in WATCHED {
                statements.push(format!(
                    "CREATE TRIGGER {table}_rule_revision AFTER {} OR TRUNCATE ON {table}
                     FOR EACH STATEMENT EXECUTE FUNCTION tagbase_bump_rule_revision()",
                    EVENTS.join(" OR ")
                ));
            }
        }
        _ => {
            statements.push(
                "CREATE TABLE rule_revision (id INTEGER PRIMARY KEY, revision BIGINT NOT NULL, \
                 database_key TEXT NOT NULL)"
                    .to_owned(),
            );
            statements.push(
                "INSERT INTO rule_revision (id, revision, database_key) VALUES (1, 1, lower(hex(randomblob(16))))"
                    .to_owned(),
            );
            for table in WATCHED {
                for event in EVENTS {
                    statements.push(format!(
                        "CREATE TRIGGER {table}_rule_revision_{} AFTER {event} ON {table} BEGIN {BUMP}; END",
                        event.to_lowercase()
                    ));
                }
            }
        }
    }
    statements
}

fn down_statements(backend: DbBackend) -> Vec<String> {
    let mut statements = Vec::new();
    match backend {
        DbBackend::Postgres => {
            for table in WATCHED {
                statements.push(format!("DROP TRIGGER IF EXISTS {table}_rule_revision ON {table}"));
            }
            statements.push("DROP FUNCTION IF EXISTS tagbase_bump_rule_revision()".to_owned());
        }
        _ => {
            for table in WATCHED {
                for event in EVENTS {
                    statements.push(format!("DROP TRIGGER IF EXISTS {table}_rule_revision_{}", event.to_lowercase()));
                }
            }
        }
    }
    statements.push("DROP TABLE IF EXISTS rule_revision".to_owned());
    statements
}

async fn run(m: &SchemaManager<'_>, statements: Vec<String>) -> Result<(), DbErr> {
    match m.get_database_backend() {
        DbBackend::Postgres | DbBackend::Sqlite => {}
        other => return Err(DbErr::Migration(format!("unsupported database: {other:?}"))),
    }
    for statement in statements {
        m.get_connection().execute_unprepared(&statement).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        run(m, up_statements(m.get_database_backend())).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        run(m, down_statements(m.get_database_backend())).await
    }
}
