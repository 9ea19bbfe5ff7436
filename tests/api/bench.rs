//! `tagbase bench api` runs end to end at a small size (figures are not
//! checked: timings belong to the bench, not to the tests), so that it
//! cannot rot; and it leaves the assignments as it found them.

use std::process::Command;

use sea_orm::{EntityTrait, QueryOrder};

use crate::helpers::{TEST_JWT_SECRET, TestApp};
use crate::on_both_databases;

async fn assignments(app: &TestApp) -> Vec<(i64, i64)> {
    entity::customer_tag::Entity::find()
        .order_by_asc(entity::customer_tag::Column::CustomerId)
        .order_by_asc(entity::customer_tag::Column::TagId)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.customer_id, a.tag_id))
        .collect()
}

async fn the_api_bench_runs_over_http_and_restores_the_assignments(app: TestApp) {
    let before = assignments(&app).await;
    let out = Command::new(env!("CARGO_BIN_EXE_tagbase"))
        .args(["bench", "api", "--login", "admin", "--runs", "2", "--connections", "2", "--duration", "2s"])
        .args(["--bulk", "20"])
        .env("DATABASE_URL", app.app.state.settings.database_url.as_str())
        .env("TAGBASE_JWT_SECRET", TEST_JWT_SECRET)
        .env("TAGBASE_LOG", "warn")
        .output()
        .expect("run tagbase bench api");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for row in [
        "| segment count (`segmentPreview { count }`) |",
        "| segment count + first page of 50 |",
        "| customer page of 20 with tags |",
        "| single-customer tag/untag |",
        "| bulk assignments/s (20 customers per call",
        "| index build (server start → `/readyz`) |",
        "| server RSS peak (VmHWM) |",
    ] {
        assert!(stdout.contains(row), "no row {row:?} in\n{stdout}");
    }
    assert!(stdout.contains("2 run(s)"), "{stdout}");
    assert_eq!(assignments(&app).await, before, "every tag the bench added it removed");
}

on_both_databases!(the_api_bench_runs_over_http_and_restores_the_assignments);
