//! `tagbase bench import`: a CSV file of 100,000 customers (GBK, as Excel
//! in China writes it) imported into a demo store on PostgreSQL, as the
//! API does it: parsed, checked, queued as an import job and run by a
//! worker in process, in set-based batches. Then the same file again
//! (every row found by its external id, nothing written but the checks).
//!
//! Each run uses fresh external ids, so the first import of a run creates
//! every customer. The demo organisation is seeded if missing.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use entity::{enums::JobStatus, org_unit, staff};
use sea_orm::{ColumnTrait, DbBackend, EntityTrait, QueryFilter};

use crate::authz::{OrgTree, Principal};
use crate::config::Settings;
use crate::domain::OrgUnitId;
use crate::service::import::{self, Encoding, ImportReport, ImportRequest};
use crate::service::jobs::{RunEnd, Worker};
use crate::startup::Application;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ImportBench {
    /// Rows per file.
    pub rows: usize,
    /// Timed runs; cells show median (min–max).
    pub runs: usize,
}

/// A demo-like file of `rows` customers with external ids under `prefix`, in GBK.
pub fn sample_file(rows: usize, prefix: &str) -> Vec<u8> {
    let cities = ["深圳", "广州", "北京", "上海", "杭州"];
    let mut text = String::from("姓名,手机,性别,生日,城市,渠道,unionid,订单系统ID\n");
    for i in 0..rows {
        let gender = if i % 2 == 0 { "男" } else { "女" };
        text.push_str(&format!(
            "客户{i},1{:010},{gender},19{:02}-{:02}-{:02},{},导入测试,{prefix}-u{i},{prefix}-o{i}\n",
            3_000_000_000u64 + i as u64,
            50 + i % 50,
            1 + i % 12,
            1 + i % 28,
            cities[i % cities.len()],
        ));
    }
    encoding_rs::GBK.encode(&text).0.into_owned()
}

/// Imports a file as `principal` and, when it became a job, runs the job
/// to its end with `worker` (which also runs any job queued before it).
///
/// # Errors
/// The import's errors; a job that does not succeed.
pub async fn import_and_wait(
    app: &Application,
    worker: &Worker,
    principal: &Principal,
    req: ImportRequest,
    mut progress: impl FnMut(&entity::job::Model),
) -> anyhow::Result<ImportReport> {
    let mut report = import::import_customers(&app.state.db, principal, &app.state.settings.limits, req)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", e.code(), e.message()))?;
    let Some(job) = report.job.clone() else { return Ok(report) };
    loop {
        let end = worker.run_next().await.map_err(|e| anyhow::anyhow!("{}: {}", e.code(), e.message()))?;
        let row = entity::job::Entity::find_by_id(job.id).one(&app.state.db).await?.context("the import job")?;
        progress(&row);
        if crate::service::jobs::is_finished(row.status) {
            if row.status != JobStatus::Succeeded {
                bail!("import job {} ended {}: {}", row.id, row.status.as_str(), row.errors);
            }
            report.created = row.created as u64;
            report.updated = row.updated as u64;
            report.unchanged = row.unchanged as u64;
            report.skipped = row.skipped as u64;
            report.tags_added = row.added as u64;
            report.job = Some(row);
            return Ok(report);
        }
        if end.is_none() || end == Some(RunEnd::Halted) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

fn spread(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    if values.len() == 1 {
        return format!("{median:.2}");
    }
    format!("{median:.2} ({:.2}–{:.2})", values[0], values[values.len() - 1])
}

/// Runs the benchmark and prints the table.
///
/// # Errors
/// A database that is not PostgreSQL, and database errors.
pub async fn run(mut settings: Settings, bench: ImportBench) -> anyhow::Result<()> {
    settings.job_poll_interval = None;
    settings.limits.max_import_rows = settings.limits.max_import_rows.max(bench.rows);
    let app = Application::build(settings.clone()).await?;
    let db = app.state.db.clone();
    if db.get_database_backend() != DbBackend::Postgres {
        bail!("the import benchmark runs on PostgreSQL: set DATABASE_URL=postgres://…");
    }
    if org_unit::Entity::find().filter(org_unit::Column::Code.eq("sz01")).one(&db).await?.is_none() {
        crate::seed::seed_demo(&db, &app.state.authz, settings.utc_offset).await?;
    }
    let store = org_unit::Entity::find().filter(org_unit::Column::Code.eq("sz01")).one(&db).await?.context("sz01")?;
    let admin = staff::Entity::find().filter(staff::Column::Login.eq("admin")).one(&db).await?.context("admin")?;
    app.state.authz.refresh().await.map_err(|e| anyhow::anyhow!(e.message()))?;
    let principal = app.state.authz.principal(admin, Arc::new(OrgTree::load(&db).await?));
    let worker = Worker {
        db: db.clone(),
        authz: app.state.authz.clone(),
        index: app.state.index.clone(),
        limits: settings.limits.clone(),
        instance: format!("bench-{}", uuid::Uuid::new_v4().simple()),
    };
    println!(
        "Customer import on PostgreSQL: a GBK CSV of {} rows into one store, as a job in batches of {} rows \
         (parse, checks, identity lookup, multi-row inserts/updates over arrays, change log, audit); \
         {} run(s), seconds: median (min–max).",
        bench.rows, settings.limits.job_batch_size, bench.runs
    );
    println!();
    println!("| file | rows | seconds | rows/s | created | updated | unchanged |");
    println!("|---|---|---|---|---|---|---|");
    let (mut first, mut again) = (Vec::new(), Vec::new());
    let mut counts = Vec::new();
    for _ in 0..bench.runs {
        let prefix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let bytes = sample_file(bench.rows, &prefix);
        let req = || ImportRequest {
            bytes: bytes.clone(),
            encoding: Encoding::Gbk,
            dry_run: false,
            org_unit: OrgUnitId(store.id),
            tags: Vec::new(),
        };
        let started = Instant::now();
        let created = import_and_wait(&app, &worker, &principal, req(), |_| {}).await?;
        first.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        let repeated = import_and_wait(&app, &worker, &principal, req(), |_| {}).await?;
        again.push(started.elapsed().as_secs_f64());
        counts.push((created, repeated));
    }
    let (created, repeated) = counts.last().context("no runs")?;
    let rate = |s: &[f64]| {
        let mut r: Vec<f64> = s.iter().map(|s| bench.rows as f64 / s).collect();
        spread(&mut r)
    };
    println!(
        "| new customers | {} | {} | {} | {} | {} | {} |",
        bench.rows,
        spread(&mut first.clone()),
        rate(&first),
        created.created,
        created.updated,
        created.unchanged
    );
    println!(
        "| the same file again | {} | {} | {} | {} | {} | {} |",
        bench.rows,
        spread(&mut again.clone()),
        rate(&again),
        repeated.created,
        repeated.updated,
        repeated.unchanged
    );
    Ok(())
}
