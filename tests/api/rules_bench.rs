//! `tagbase bench rules` runs end to end at a small size (figures are not
//! checked: timings belong to the bench, not to the tests), so that it
//! cannot rot; and a second run finds its rules again.

use std::process::Command;

use entity::rule;
use sea_orm::{EntityTrait, PaginatorTrait};

use crate::helpers::{TEST_JWT_SECRET, TestApp};
use crate::on_both_databases;

fn bench(app: &TestApp) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tagbase"))
        .args(["bench", "rules", "--login", "admin", "--customers", "40", "--events", "300"])
        .args(["--batch", "50", "--connections", "2", "--probes", "3"])
        .env("DATABASE_URL", app.app.state.settings.database_url.as_str())
        .env("TAGBASE_JWT_SECRET", TEST_JWT_SECRET)
        .env("TAGBASE_LOG", "warn")
        .output()
        .expect("run tagbase bench rules");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

async fn the_rules_bench_runs_over_http_at_a_small_size(app: TestApp) {
    let stdout = bench(&app);
    for row in [
        "| ingest through the API, events/s (the probes' batches included) |",
        "| `recordEvents` batch p50 / p99 |",
        "| batch sent → tag visible to segments, p50 / p99 (3 probes) |",
        "| scheduled absence rule over all customers | see `tagbase bench schedule` |",
        "| 30-day dry run (",
        "| server RSS once ready / after / peak (VmHWM) |",
    ] {
        assert!(stdout.contains(row), "no row {row:?} in\n{stdout}");
    }
    assert!(stdout.contains("50 enabled rules"), "{stdout}");
    assert_eq!(rule::Entity::find().count(&app.db).await.unwrap(), 50);
    bench(&app);
    assert_eq!(rule::Entity::find().count(&app.db).await.unwrap(), 50, "the second run reuses the rules");
}

on_both_databases!(the_rules_bench_runs_over_http_at_a_small_size);
