//! One counter that changes, in the same transaction, with everything a
//! signed-in caller is built from: staff rows, session revocations,
//! provider identities, the org tree and the stored policy. The sign-in
//! cache reads it once per request (a primary-key read) instead of the
//! staff row, the session, the policy revision and the whole org tree, and
//! rebuilds a caller only when it moved. Triggers rather than calls in
//! every writer, so that no write path (a service, the seed, an
//! operator's SQL) can forget it. Triggers have no portable form, so this
//! migration speaks each backend's dialect.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261201_000070_sign_in_revision"
    }
}

/// (table, events): a new session cannot be in any cache, so inserting one
/// does not count; everything else does.
const WATCHED: &[(&str, &[&str])] = &[
    ("staff", &["INSERT", "UPDATE", "DELETE"]),
    ("staff_session", &["UPDATE", "DELETE"]),
    ("staff_identity", &["INSERT", "UPDATE", "DELETE"]),
    ("org_unit", &["INSERT", "UPDATE", "DELETE"]),
    ("casbin_rule", &["INSERT", "UPDATE", "DELETE"]),
];

const CREATE_TABLE: &str = "CREATE TABLE sign_in_revision (id INTEGER PRIMARY KEY, revision BIGINT NOT NULL)";
const FIRST_ROW: &str = "INSERT INTO sign_in_revision (id, revision) VALUES (1, 1)";
const BUMP: &str = "UPDATE sign_in_revision SET revision = revision + 1 WHERE id = 1";

fn up_statements(backend: DbBackend) -> Vec<String> {
    let mut statements = vec![CREATE_TABLE.to_owned(), FIRST_ROW.to_owned()];
    match backend {
        DbBackend::Postgres => {
            statements.push(format!(
                "CREATE OR REPLACE FUNCTION tagbase_bump_sign_in_revision() RETURNS trigger AS $$
                 BEGIN {BUMP}; RETURN NULL; END;
                 $$ LANGUAGE plpgsql"
            ));
            // Once per statement: a bulk revocation bumps once.
            for (table, events) in WATCHED {
                statements.push(format!(
                    "CREATE TRIGGER {table}_sign_in_revision AFTER {} OR TRUNCATE ON {table}
                     FOR EACH STATEMENT EXECUTE FUNCTION tagbase_bump_sign_in_revision()",
                    events.join(" OR ")
                ));
            }
        }
        _ => {
            for (table, events) in WATCHED {
                for event in *events {
                    statements.push(format!(
                        "CREATE TRIGGER {table}_sign_in_revision_{} AFTER {event} ON {table} BEGIN {BUMP}; END",
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
            for (table, _) in WATCHED {
                statements.push(format!("DROP TRIGGER IF EXISTS {table}_sign_in_revision ON {table}"));
            }
            statements.push("DROP FUNCTION IF EXISTS tagbase_bump_sign_in_revision()".to_owned());
        }
        _ => {
            for (table, events) in WATCHED {
                for event in *events {
                    statements
                        .push(format!("DROP TRIGGER IF EXISTS {table}_sign_in_revision_{}", event.to_lowercase()));
                }
            }
        }
    }
    statements.push("DROP TABLE IF EXISTS sign_in_revision".to_owned());
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
