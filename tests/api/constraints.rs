//! The constraint-to-error map (`store::constraint`) names each unique
//! constraint as each backend reports it: PostgreSQL by the constraint's
//! name, SQLite by its columns. These tests read the migrated schema, so a
//! migration that renames or reshapes a constraint fails here rather than
//! turning a clash into an internal error.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use tagbase::store::constraint::CONSTRAINTS;

use crate::helpers::TestApp;
use crate::on_both_databases;

/// The unique indexes of the schema as PostgreSQL names them.
async fn postgres_names(app: &TestApp) -> Vec<String> {
    let rows = app
        .db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()",
        ))
        .await
        .unwrap();
    rows.iter().map(|r| r.try_get::<String>("", "indexname").unwrap()).collect()
}

/// The unique indexes of a table as SQLite reports a clash on them:
/// `table.a, table.b`, in index order.
async fn sqlite_column_lists(app: &TestApp, table: &str) -> Vec<String> {
    let sql = |q: String| Statement::from_string(DbBackend::Sqlite, q);
    let indexes = app
        .db
        .query_all_raw(sql(format!("SELECT name FROM pragma_index_list('{table}') WHERE \"unique\" = 1")))
        .await
        .unwrap();
    let mut lists = Vec::new();
    for index in indexes {
        let name: String = index.try_get("", "name").unwrap();
        let columns = app
            .db
            .query_all_raw(sql(format!("SELECT name FROM pragma_index_info('{name}') ORDER BY seqno")))
            .await
            .unwrap();
        let columns: Vec<String> =
            columns.iter().map(|c| format!("{table}.{}", c.try_get::<String>("", "name").unwrap())).collect();
        lists.push(columns.join(", "));
    }
    lists
}

async fn every_mapped_constraint_exists_as_the_backend_reports_it(app: TestApp) {
    match app.db.get_database_backend() {
        DbBackend::Postgres => {
            let names = postgres_names(&app).await;
            for rule in CONSTRAINTS {
                assert!(names.iter().any(|n| n == rule.name), "no unique index {:?} in {names:?}", rule.name);
            }
        }
        _ => {
            for rule in CONSTRAINTS {
                let table = rule.sqlite_columns.split('.').next().unwrap();
                let lists = sqlite_column_lists(&app, table).await;
                assert!(
                    lists.iter().any(|l| l == rule.sqlite_columns),
                    "{:?}: SQLite reports {lists:?}, not {:?}",
                    rule.constraint,
                    rule.sqlite_columns
                );
            }
        }
    }
}

on_both_databases!(every_mapped_constraint_exists_as_the_backend_reports_it);
