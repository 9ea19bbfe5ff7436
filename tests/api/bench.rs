//! `tagbase bench api` runs end to end at a small size (figures are not
//! checked: timings belong to the bench, not to the tests), so that it
//! cannot rot; and it leaves the assignments as it found them.

use std::process::Command;

use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};

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

/// `tagbase bench bulk` generates its own small data set beside the demo's,
/// times jobs of each size, and leaves no holder of its two tags.
async fn the_bulk_bench_runs_jobs_of_each_size_and_removes_what_it_added(app: TestApp) {
    let out = Command::new(env!("CARGO_BIN_EXE_tagbase"))
        .args(["bench", "bulk", "--sizes", "12,30", "--customers", "40", "--tags", "5", "--tags-per-customer", "2"])
        .env("DATABASE_URL", app.app.state.settings.database_url.as_str())
        .env("TAGBASE_JWT_SECRET", TEST_JWT_SECRET)
        .env("TAGBASE_LOG", "warn")
        .output()
        .expect("run tagbase bench bulk");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for row in
        ["| 12 | add one tag |", "| 12 | exclusive move (A → B) |", "| 30 | add one tag |", "| 30 | exclusive move"]
    {
        assert!(stdout.contains(row), "no row {row:?} in\n{stdout}");
    }
    // The progress column ends at the job's size.
    assert!(
        stdout.lines().any(|l| l.starts_with("| 30 | add one tag |") && l.trim_end().ends_with("30 |")),
        "{stdout}"
    );
    let bench_customers = entity::customer::Entity::find()
        .filter(entity::customer::Column::Name.starts_with("压测"))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(bench_customers, 40, "the data it generated");
    let group = entity::tag_group::Entity::find()
        .filter(entity::tag_group::Column::Name.eq("压测批量"))
        .one(&app.db)
        .await
        .unwrap()
        .expect("the bench's exclusive group");
    let tags: Vec<i64> = entity::tag::Entity::find()
        .filter(entity::tag::Column::GroupId.eq(group.id))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(tags.len(), 2);
    let holders = entity::customer_tag::Entity::find()
        .filter(entity::customer_tag::Column::TagId.is_in(tags))
        .count(&app.db)
        .await;
    assert_eq!(holders.unwrap(), 0, "every tag the bench added it removed");
}

on_both_databases!(
    the_api_bench_runs_over_http_and_restores_the_assignments,
    the_bulk_bench_runs_jobs_of_each_size_and_removes_what_it_added
);
