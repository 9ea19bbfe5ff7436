//! `tagbase bench schedule`: a scheduled absence rule (`no order_paid for
//! 180d` → a tag) over every customer of the segment bench data, run in
//! process by the scheduler as a serving instance runs it. The first run
//! on a database tags every customer without a recent order (the bench
//! data has no events: all of them); later runs find nothing left to
//! change, which is the daily cost of a rule whose customers have
//! settled. Each timed run deletes the bench rule's earlier runs first,
//! so that its slot runs again; the tags it put on stay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use entity::{org_unit, rule, rule_run, staff, tag, tag_group};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, DbBackend, EntityTrait, QueryFilter};

use super::segments::{BenchSize, generate};
use crate::authz::OrgTree;
use crate::config::Settings;
use crate::domain::OrgUnitId;
use crate::service::rules::{eval, schedule::Scheduler, store};
use crate::startup::Application;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ScheduleBench {
    /// Timed runs.
    pub runs: usize,
    /// The bench data to generate or reuse.
    pub data: BenchSize,
}

const GROUP: &str = "压测定时";
const TAG: &str = "定时流失";
const RULE: &str = "bench 定时流失";

fn app_err(e: crate::error::AppError) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", e.code(), e.message())
}

/// The bench's tag (created once).
async fn bench_tag(db: &sea_orm::DatabaseConnection, root: i64) -> anyhow::Result<i64> {
    let now = Utc::now();
    let group = match tag_group::Entity::find()
        .filter(tag_group::Column::OrgUnitId.eq(root))
        .filter(tag_group::Column::Name.eq(GROUP))
        .one(db)
        .await?
    {
        Some(g) => g,
        None => {
            tag_group::ActiveModel {
                org_unit_id: Set(root),
                name: Set(GROUP.into()),
                description: Set(String::new()),
                category: Set(entity::enums::TagCategory::Lifecycle),
                visibility_class: Set("lifecycle".into()),
                exclusive: Set(false),
                naming_pattern: Set(None),
                version: Set(1),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            }
            .insert(db)
            .await?
        }
    };
    let found =
        tag::Entity::find().filter(tag::Column::GroupId.eq(group.id)).filter(tag::Column::Name.eq(TAG)).one(db).await?;
    Ok(match found {
        Some(t) => t.id,
        None => {
            tag::ActiveModel {
                group_id: Set(Some(group.id)),
                name: Set(TAG.into()),
                description: Set(String::new()),
                status: Set(entity::enums::TagStatus::Active),
                aliases: Set(serde_json::json!([])),
                version: Set(1),
                created_at: Set(now),
                updated_at: Set(now),
                ..Default::default()
            }
            .insert(db)
            .await?
            .id
        }
    })
}

/// Runs the benchmark and prints its table.
///
/// # Errors
/// A database that cannot be reached or seeded, a failed run.
pub async fn run(mut settings: Settings, bench: ScheduleBench) -> anyhow::Result<()> {
    settings.job_poll_interval = None;
    settings.schedule_interval = None;
    let app = Application::build(settings.clone()).await?;
    let db = app.state.db.clone();
    let generation_db = crate::db::connect_with(&settings.database_url, Duration::from_secs(3 * 3600)).await?;
    generate(&generation_db, &app.state.authz, bench.data).await?;
    generation_db.close().await?;
    let root = org_unit::Entity::find().filter(org_unit::Column::Code.eq("bench")).one(&db).await?.context("bench")?;
    let tag = bench_tag(&db, root.id).await?;
    let admin =
        staff::Entity::find().filter(staff::Column::Login.eq("bench.admin")).one(&db).await?.context("admin")?;
    app.state.authz.refresh().await.map_err(app_err)?;
    let principal = app.state.authz.principal(admin, Arc::new(OrgTree::load(&db).await?));
    let row = match rule::Entity::find()
        .filter(rule::Column::OrgUnitId.eq(root.id))
        .filter(rule::Column::Name.eq(RULE))
        .one(&db)
        .await?
    {
        Some(r) => r,
        None => {
            let draft = store::RuleDraft {
                org_unit: OrgUnitId(root.id),
                name: RULE.to_owned(),
                condition: "no order_paid for 180d".to_owned(),
                actions: vec![eval::Action { op: eval::ActionOp::Add, tag_id: tag, ttl_seconds: None }],
                override_manual_removal: false,
                priority: 0,
                enabled: true,
                schedule: Some("DAILY 00:00".to_owned()),
            };
            store::create_rule(&db, &principal, draft).await.map_err(app_err)?
        }
    };
    app.state.index.rebuild(&db).await?;
    let scheduler = Scheduler {
        db: db.clone(),
        index: Some(app.state.index.clone()),
        limits: settings.limits.clone(),
        offset: settings.utc_offset,
        instance: format!("bench-{}", uuid::Uuid::new_v4().simple()),
    };
    let database = if db.get_database_backend() == DbBackend::Postgres { "PostgreSQL" } else { "SQLite" };
    println!(
        "{database}: the scheduled rule `no order_paid for 180d` → {TAG} over every customer, in process, batches of \
         {} customers (lock, read, judge, write, tag events, index catch-up, audit).",
        crate::service::rules::schedule::BATCH
    );
    println!();
    println!("| run | customers judged | customers changed | seconds | customers/s |");
    println!("|---|---|---|---|---|");
    for n in 1..=bench.runs.max(1) {
        rule_run::Entity::delete_many().filter(rule_run::Column::RuleId.eq(row.id)).exec(&db).await?;
        let started = Instant::now();
        let run = scheduler.run_latest_slot(&row, Utc::now()).await.map_err(app_err)?.context("the slot ran")?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(run.error.is_none(), "the run failed: {:?}", run.error);
        println!(
            "| {n} | {} | {} | {seconds:.2} | {:.0} |",
            run.customers_scanned,
            run.customers_changed,
            run.customers_scanned as f64 / seconds.max(f64::EPSILON)
        );
    }
    Ok(())
}
