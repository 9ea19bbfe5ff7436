//! The binary's commands, as a user runs them.

use std::process::Command;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use tagbase::auth::JwtKeys;
use tagbase::config::Settings;

use crate::helpers::{Backend, TestDb};

fn tagbase(db_url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tagbase"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .env_remove("TAGBASE_JWT_SECRET")
        .env("TAGBASE_LOG", "warn")
        .output()
        .expect("run tagbase")
}

async fn seed_then_token_without_any_configured_secret(backend: Backend) {
    let db = TestDb::new(backend).await;
    let seeded = tagbase(&db.url, &["seed-demo"]);
    assert!(seeded.status.success(), "{}", String::from_utf8_lossy(&seeded.stderr));
    let token = tagbase(&db.url, &["token", "--login", "sz01.sales", "--ttl", "30m"]);
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));
    let token = String::from_utf8(token.stdout).unwrap();
    // The server, with no secret configured either, accepts it: both use
    // the key stored in the database.
    let conn = tagbase::db::connect(&db.url).await.unwrap();
    let keys = JwtKeys::load(&conn, &Settings::for_database(db.url.clone())).await.unwrap();
    let staff = keys.verify(token.trim()).expect("token verifies");
    let expected = entity::staff::Entity::find()
        .filter(entity::staff::Column::Login.eq("sz01.sales"))
        .one(&conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(staff.0, expected.id);
    conn.close().await.unwrap();

    let unknown = tagbase(&db.url, &["token", "--login", "nobody"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no staff member with login \"nobody\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_then_token_without_any_configured_secret_on_sqlite() {
    seed_then_token_without_any_configured_secret(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_then_token_without_any_configured_secret_on_postgres() {
    seed_then_token_without_any_configured_secret(Backend::Postgres).await;
}

#[test]
fn export_schema_prints_the_sdl() {
    let out = Command::new(env!("CARGO_BIN_EXE_tagbase")).arg("export-schema").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), tagbase::graphql::sdl());
}

#[test]
fn bad_flags_exit_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_tagbase")).args(["token", "--ttl", "soon"]).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'soon' for '--ttl <TTL>'"));
}
