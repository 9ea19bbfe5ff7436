//! `tagbase bench reports`: the governance reports on the segment bench
//! data (PostgreSQL): `tagUsage` with holders from the index and from SQL
//! (as while the index builds), with and without its `bySource` counts,
//! `zombieTags`, `duplicateTags`, a customer's `tagsAt` and
//! `segmentPreview(asOf)` for one tag.
//!
//! The bench data has no tag events of its own (it is loaded with COPY
//! into `customer_tag`): the first run writes one ADD event per bench
//! assignment, spread over the year before its tagging time, so that the
//! recency statements read a log of realistic size and age. Later runs
//! reuse them. Each run clears the daily roll-up of ADD events, times
//! `zombieTags` on the log alone and the first fold of the whole log, then
//! the reports on the roll-up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Utc;
use entity::{customer, org_unit, staff, tag, tag_group};
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, Statement};

use super::segments::{BenchSize, generate};
use crate::authz::OrgTree;
use crate::config::Settings;
use crate::domain::{CustomerId, OrgUnitId, PageArgs, PageSize};
use crate::segment::{Ref, Resolved, SegmentExpr, SegmentIndex};
use crate::service::reports::{duplicates, rollup, time_travel, usage, zombie};
use crate::startup::Application;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ReportsBench {
    /// Timed runs per case; the table shows median (min–max).
    pub runs: usize,
    /// The bench data to generate or reuse.
    pub data: BenchSize,
}

fn app_err(e: crate::error::AppError) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", e.code(), e.message())
}

/// Median, min and max of the runs of one case, in milliseconds.
async fn timed<F, Fut, T>(runs: usize, mut f: F) -> anyhow::Result<(String, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        last = Some(f().await?);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let cell = format!("{median:.1} ms ({:.1}–{:.1})", times[0], times[times.len() - 1]);
    Ok((cell, last.expect("at least one run")))
}

/// One ADD event per bench assignment without one, in the year before
/// its tagging time.
async fn backfill_events(db: &sea_orm::DatabaseConnection, root_path: &str) -> anyhow::Result<u64> {
    // Statistics of the fresh data first.
    db.execute_unprepared("ANALYZE customer_tag, customer, org_unit, tag_event").await?;
    // The events already there are read once, before the insert: a plan
    // that probed `tag_event` itself per assignment would rescan the rows
    // this very statement adds (quadratic: 250,000 events in 38 minutes).
    let sql = "WITH have AS MATERIALIZED (SELECT customer_id, tag_id FROM tag_event)
        INSERT INTO tag_event (customer_id, tag_id, op, source, source_ref, actor_staff_id, occurred_at)
        SELECT ct.customer_id, ct.tag_id, 'ADD', ct.source, 'bench', NULL,
               ct.tagged_at - random() * interval '365 days'
        FROM customer_tag ct
        JOIN customer c ON c.id = ct.customer_id
        JOIN org_unit u ON u.id = c.org_unit_id
        WHERE u.path LIKE $1
          AND NOT EXISTS (SELECT 1 FROM have e WHERE e.customer_id = ct.customer_id AND e.tag_id = ct.tag_id)";
    let done = db
        .execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, [format!("{root_path}%").into()]))
        .await?;
    Ok(done.rows_affected())
}

/// Runs the bench and prints its table.
///
/// # Errors
/// A database that is not PostgreSQL; database and service errors.
pub async fn run(mut settings: Settings, bench: ReportsBench) -> anyhow::Result<()> {
    settings.job_poll_interval = None;
    // Folded below, where the table times it.
    settings.rollup_interval = None;
    let app = Application::build(settings.clone()).await?;
    let db = app.state.db.clone();
    if db.get_database_backend() != DbBackend::Postgres {
        bail!("the reports benchmark runs on PostgreSQL: set DATABASE_URL=postgres://…");
    }
    let generation_db = crate::db::connect_with(&settings.database_url, Duration::from_secs(3 * 3600)).await?;
    generate(&generation_db, &app.state.authz, bench.data).await?;
    let root = org_unit::Entity::find().filter(org_unit::Column::Code.eq("bench")).one(&db).await?.context("root")?;
    eprintln!("writing the bench assignments' ADD events (first run only)…");
    let written = backfill_events(&generation_db, &root.path).await?;
    eprintln!("{written} events written");
    generation_db.close().await?;
    let admin =
        staff::Entity::find().filter(staff::Column::Login.eq("bench.admin")).one(&db).await?.context("admin")?;
    app.state.authz.refresh().await.map_err(app_err)?;
    let principal = app.state.authz.principal(admin, Arc::new(OrgTree::load(&db).await?));
    let index = &app.state.index;
    index.rebuild(&db).await?;
    let building = SegmentIndex::new();
    let unit = OrgUnitId(root.id);
    let page = PageArgs::forward(PageSize::parse(Some(100), &settings.limits).map_err(app_err)?);
    let runs = bench.runs;

    println!(
        "Governance reports at the bench root, {} customers × {} tags × ≤{} each; {runs} runs, median (min–max).",
        bench.data.customers, bench.data.tags, bench.data.tags_per_customer
    );
    println!();
    println!("| report | time | answer |");
    println!("|---|---|---|");
    // The daily roll-up is derived from the log: cleared, so that every
    // run times the reports on the log alone, then the first fold, then
    // the reports on the roll-up.
    for sql in ["DELETE FROM tag_add_day", "UPDATE tag_add_rollup SET seq = 0, snapshot = NULL"] {
        db.execute_unprepared(sql).await?;
    }
    let (cell, zombies) =
        timed(1, || async { Ok(zombie::zombie_tags(&db, index, &principal, unit).await.map_err(app_err)?.len()) })
            .await?;
    println!(
        "| zombieTags, recency from the log (before the roll-up's first fold; one run) | {cell} | {zombies} tags |"
    );
    let (cell, folded) = timed(1, || async { rollup::fold(&db).await.map_err(app_err) }).await?;
    println!("| first fold of the whole log into the daily roll-up (one run) | {cell} | {folded} (tag, day) rows |");
    let (cell, rows) = timed(runs, || async {
        let p = usage::tag_usage(&db, index, &principal, unit, Default::default(), Default::default(), &page)
            .await
            .map_err(app_err)?;
        Ok(p.items.len())
    })
    .await?;
    println!("| tagUsage, first 100 (holders from the index) | {cell} | {rows} rows |");
    let (cell, sources) = timed(runs, || async {
        let p = usage::tag_usage(&db, index, &principal, unit, Default::default(), Default::default(), &page)
            .await
            .map_err(app_err)?;
        let tags: Vec<(i64, Option<String>)> =
            p.items.iter().map(|(_, u)| (u.tag.id, Some(u.group.visibility_class.clone()))).collect();
        let by = usage::holders_by_source(&db, &principal, unit.0, &tags).await.map_err(app_err)?;
        Ok(by.values().map(Vec::len).sum::<usize>())
    })
    .await?;
    println!("| tagUsage, first 100, with bySource (holders by source) | {cell} | {sources} (tag, source) counts |");
    let (cell, rows) = timed(runs, || async {
        let p = usage::tag_usage(&db, &building, &principal, unit, Default::default(), Default::default(), &page)
            .await
            .map_err(app_err)?;
        Ok(p.items.len())
    })
    .await?;
    println!("| tagUsage, first 100 (holders by SQL, index building) | {cell} | {rows} rows |");
    let (cell, zombies) =
        timed(runs, || async { Ok(zombie::zombie_tags(&db, index, &principal, unit).await.map_err(app_err)?.len()) })
            .await?;
    println!("| zombieTags | {cell} | {zombies} tags |");
    let (cell, pairs) = timed(runs, || async {
        Ok(duplicates::duplicate_tags(&db, index, &principal, unit).await.map_err(app_err)?.len())
    })
    .await?;
    println!("| duplicateTags | {cell} | {pairs} pairs |");

    let customer = customer::Entity::find()
        .filter(customer::Column::OrgUnitId.is_in(principal.org.subtree(root.id).map(|u| u.id)))
        .order_by_asc(customer::Column::Id)
        .one(&db)
        .await?
        .context("a bench customer")?;
    let at = Utc::now() - chrono::Duration::days(30);
    let (cell, held) = timed(runs, || async {
        Ok(time_travel::tags_at(&db, &principal, CustomerId(customer.id), at).await.map_err(app_err)?.len())
    })
    .await?;
    println!("| Customer.tagsAt (30 days ago) | {cell} | {held} tags |");

    let group = tag_group::Entity::find().filter(tag_group::Column::OrgUnitId.eq(root.id)).one(&db).await?;
    let first_tag = tag::Entity::find()
        .filter(tag::Column::GroupId.is_in(group.map(|g| g.id)))
        .order_by_asc(tag::Column::Id)
        .one(&db)
        .await?
        .context("a bench tag")?;
    let visible = crate::authz::visibility::visible_tags(&db, &principal, &[crate::domain::TagId(first_tag.id)])
        .await
        .map_err(app_err)?;
    let resolved = Resolved {
        expr: SegmentExpr::Tag(Ref::Id(first_tag.id)),
        tags: visible.into_iter().map(|(id, t)| (id.0, t)).collect(),
        groups: Default::default(),
        segments: Default::default(),
        merged_from: Default::default(),
    };
    let (cell, members) = timed(runs, || async {
        Ok(time_travel::members_as_of(&db, index, &principal, &resolved, settings.utc_offset, at)
            .await
            .map_err(app_err)?
            .len())
    })
    .await?;
    println!("| segmentPreview(asOf: 30 days ago) count, one tag | {cell} | {members} members |");
    Ok(())
}
