//! `tagbase bench bulk`: bulk tagging jobs at 10k, 100k and 1M customers
//! on the segment bench data (PostgreSQL or SQLite): one tag added, then a move
//! inside an exclusive group, each timed from `bulkTag` to the job's end,
//! with the progress a `jobProgress` subscriber saw.
//!
//! The bench drives one worker in process (the instance's own background
//! worker is off), and removes what it added after each run (untimed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use entity::{org_unit, staff};
use futures_util::StreamExt;
use sea_orm::{ColumnTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::segments::{BenchSize, generate};
use crate::authz::{OrgTree, Principal};
use crate::config::Settings;
use crate::domain::{CustomerId, TagId};
use crate::service::jobs::{self, BulkTagRequest, Customers, RunEnd, Worker};
use crate::startup::Application;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BulkBench {
    /// Customers per job, e.g. 10000, 100000, 1000000.
    pub sizes: Vec<usize>,
    /// Timed runs per size and kind; the table shows median (min–max).
    pub runs: usize,
    /// The bench data to generate or reuse (customers at least the largest size).
    pub data: BenchSize,
}

fn app_err(e: crate::error::AppError) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", e.code(), e.message())
}

/// The exclusive group of the bench (created once) and its two tags.
async fn exclusive_tags(db: &sea_orm::DatabaseConnection, root: i64) -> anyhow::Result<(i64, i64)> {
    let group = super::ensure_group(db, root, "压测批量", true).await?;
    let a = super::ensure_tag(db, group.id, "批量A").await?;
    let b = super::ensure_tag(db, group.id, "批量B").await?;
    Ok((a.id, b.id))
}

/// One job, timed from its creation to its end, with the `done` values a
/// `jobProgress` subscriber received.
struct Timed {
    seconds: f64,
    changes: i64,
    progress: Vec<i64>,
}

async fn timed_job(
    app: &Application,
    worker: &Worker,
    principal: &Principal,
    token: &str,
    request: BulkTagRequest,
) -> anyhow::Result<Timed> {
    let state = &app.state;
    let started = Instant::now();
    let job = jobs::submit_bulk_tag(&state.db, &state.index, principal, &state.settings.limits, request)
        .await
        .map_err(app_err)?;
    let subscription = async_graphql::Request::new("subscription($id: ID!) { jobProgress(jobId: $id) { done } }")
        .variables(async_graphql::Variables::from_json(
            serde_json::json!({ "id": crate::domain::JobId(job.id).to_string() }),
        ));
    let auth = format!("Bearer {token}");
    let mut stream =
        crate::http::execute_stream(state, &app.schema, Some(&auth), subscription).await.map_err(app_err)?;
    let subscriber = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(response) = stream.next().await {
            let value = serde_json::to_value(response).unwrap_or_default();
            if let Some(done) = value["data"]["jobProgress"]["done"].as_i64() {
                seen.push(done);
            }
        }
        seen
    });
    let end = worker.run_next().await.map_err(app_err)?;
    let seconds = started.elapsed().as_secs_f64();
    if end != Some(RunEnd::Finished(entity::enums::JobStatus::Succeeded)) {
        bail!("job {} ended {end:?}", job.id);
    }
    let progress = subscriber.await?;
    let row = entity::job::Entity::find_by_id(job.id).one(&state.db).await?.context("the job")?;
    Ok(Timed { seconds, changes: row.added + row.removed, progress })
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
/// Database errors.
pub async fn run(mut settings: Settings, bench: BulkBench) -> anyhow::Result<()> {
    settings.job_poll_interval = None;
    // The bench builds the index itself (below) and the worker catches it
    // up after each batch: no background build running beside the first
    // timed jobs.
    settings.index_follow_interval = None;
    let app = Application::build(settings.clone()).await?;
    let db = app.state.db.clone();
    let backend = if db.get_database_backend() == DbBackend::Postgres { "PostgreSQL" } else { "SQLite" };
    let largest = bench.sizes.iter().copied().max().context("no sizes")?;
    let data = BenchSize { customers: bench.data.customers.max(largest as i64), ..bench.data };
    let generation_db = crate::db::connect_with(&settings.database_url, Duration::from_secs(3 * 3600)).await?;
    generate(&generation_db, &app.state.authz, data).await?;
    generation_db.close().await?;
    let root = org_unit::Entity::find().filter(org_unit::Column::Code.eq("bench")).one(&db).await?.context("bench")?;
    let (a, b) = exclusive_tags(&db, root.id).await?;
    let admin =
        staff::Entity::find().filter(staff::Column::Login.eq("bench.admin")).one(&db).await?.context("admin")?;
    app.state.authz.refresh().await.map_err(app_err)?;
    let principal = app.state.authz.principal(admin.clone(), Arc::new(OrgTree::load(&db).await?));
    let token = app.state.keys.mint(&admin, Duration::from_secs(3600))?;
    app.state.index.rebuild(&db).await?;
    let worker = Worker {
        db: db.clone(),
        authz: app.state.authz.clone(),
        index: app.state.index.clone(),
        limits: settings.limits.clone(),
        instance: format!("bench-{}", uuid::Uuid::new_v4().simple()),
    };
    let stores: Vec<i64> = org_unit::Entity::find()
        .select_only()
        .column(org_unit::Column::Id)
        .filter(org_unit::Column::ParentId.eq(root.id))
        .into_tuple()
        .all(&db)
        .await?;
    println!(
        "Bulk jobs on {backend}, batches of {} customers, {} run(s) per row; seconds from `bulkTag` to the job's end \
         (snapshot, locks, writes, tag events, index catch-up, audit): median (min–max).",
        settings.limits.job_batch_size, bench.runs
    );
    println!();
    println!(
        "| customers | kind | seconds | assignments changed/s | progress seen by a `jobProgress` subscriber (done) |"
    );
    println!("|---|---|---|---|---|");
    for &size in &bench.sizes {
        let ids: Vec<i64> = entity::customer::Entity::find()
            .select_only()
            .column(entity::customer::Column::Id)
            .filter(entity::customer::Column::OrgUnitId.is_in(stores.clone()))
            .order_by_asc(entity::customer::Column::Id)
            .limit(size as u64)
            .into_tuple()
            .all(&db)
            .await?;
        let customers = || Customers::Ids(ids.iter().map(|c| CustomerId(*c)).collect());
        let job = |add: Vec<i64>, remove: Vec<i64>| BulkTagRequest {
            customers: customers(),
            add: add.into_iter().map(TagId).collect(),
            remove: remove.into_iter().map(TagId).collect(),
            reason: None,
        };
        let (mut add_s, mut move_s) = (Vec::new(), Vec::new());
        let (mut add_rate, mut move_rate) = (Vec::new(), Vec::new());
        let (mut add_seen, mut move_seen) = (Vec::new(), Vec::new());
        for _ in 0..bench.runs {
            // Untimed: start from customers holding neither tag.
            timed_job(&app, &worker, &principal, &token, job(vec![], vec![a, b])).await?;
            let added = timed_job(&app, &worker, &principal, &token, job(vec![a], vec![])).await?;
            add_s.push(added.seconds);
            add_rate.push(added.changes as f64 / added.seconds);
            add_seen = added.progress;
            let moved = timed_job(&app, &worker, &principal, &token, job(vec![b], vec![])).await?;
            move_s.push(moved.seconds);
            move_rate.push(moved.changes as f64 / moved.seconds);
            move_seen = moved.progress;
            timed_job(&app, &worker, &principal, &token, job(vec![], vec![b])).await?;
        }
        let seen = |s: &[i64]| s.iter().map(i64::to_string).collect::<Vec<_>>().join(" → ");
        println!(
            "| {} | add one tag | {} | {} | {} |",
            ids.len(),
            spread(&mut add_s),
            spread(&mut add_rate),
            seen(&add_seen)
        );
        println!(
            "| {} | exclusive move (A → B) | {} | {} | {} |",
            ids.len(),
            spread(&mut move_s),
            spread(&mut move_rate),
            seen(&move_seen)
        );
    }
    Ok(())
}
