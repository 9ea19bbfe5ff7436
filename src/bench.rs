//! `tagbase bench segments`: generates (or reuses) a large data set on
//! PostgreSQL and prints one table comparing the segment index with plain
//! SQL, through the service and through the GraphQL API.
//!
//! The data lives in an org tree of its own (`bench` and ten stores), so
//! it can share a database with anything else; it is generated server-side
//! with `generate_series`, which loads millions of rows in minutes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Utc;
use entity::{org_unit, staff, tag_group};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter,
};

use crate::authz::OrgTree;
use crate::config::Settings;
use crate::domain::StaffId;
use crate::segment::SegmentIndex;
use crate::service::{customer, segment};
use crate::startup::Application;

/// Size of the generated data.
#[derive(Debug, Clone, Copy)]
pub struct BenchSize {
    pub customers: i64,
    pub tags: i64,
    pub tags_per_customer: i64,
}

const STORES: i64 = 10;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

async fn timed<F, Fut, T>(runs: usize, mut f: F) -> anyhow::Result<(Duration, Duration, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        last = Some(f().await?);
        times.push(started.elapsed());
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99), last.expect("at least one run")))
}

/// Creates the bench org tree, staff, tag group and tags if missing; then
/// customers and assignments up to the wanted size. Returns the first tag
/// id.
async fn generate(db: &DatabaseConnection, authz: &crate::authz::Authz, size: BenchSize) -> anyhow::Result<i64> {
    let now = Utc::now();
    let root = match org_unit::Entity::find().filter(org_unit::Column::Code.eq("bench")).one(db).await? {
        Some(u) => u,
        None => {
            org_unit::ActiveModel {
                code: Set("bench".into()),
                name: Set("压测总部".into()),
                kind: Set(entity::enums::OrgUnitKind::Hq),
                parent_id: Set(None),
                path: Set("bench/".into()),
                created_at: Set(now),
                ..Default::default()
            }
            .insert(db)
            .await?
        }
    };
    let mut stores = Vec::new();
    for i in 0..STORES {
        let code = format!("bench_s{i:02}");
        let unit = match org_unit::Entity::find().filter(org_unit::Column::Code.eq(code.as_str())).one(db).await? {
            Some(u) => u,
            None => {
                org_unit::ActiveModel {
                    code: Set(code.clone()),
                    name: Set(format!("压测门店{i:02}")),
                    kind: Set(entity::enums::OrgUnitKind::Store),
                    parent_id: Set(Some(root.id)),
                    path: Set(format!("bench/{code}/")),
                    created_at: Set(now),
                    ..Default::default()
                }
                .insert(db)
                .await?
            }
        };
        stores.push(unit.id);
    }
    let admin = match staff::Entity::find().filter(staff::Column::Login.eq("bench.admin")).one(db).await? {
        Some(s) => s,
        None => {
            staff::ActiveModel {
                login: Set("bench.admin".into()),
                display_name: Set("压测管理员".into()),
                home_org_unit_id: Set(root.id),
                active: Set(true),
                created_at: Set(now),
                ..Default::default()
            }
            .insert(db)
            .await?
        }
    };
    authz.assign_role(StaffId(admin.id), "hq_admin", &root.path).await?;
    let group = match tag_group::Entity::find().filter(tag_group::Column::OrgUnitId.eq(root.id)).one(db).await? {
        Some(g) => g,
        None => {
            tag_group::ActiveModel {
                org_unit_id: Set(root.id),
                name: Set("压测标签".into()),
                description: Set(String::new()),
                category: Set(entity::enums::TagCategory::Interest),
                visibility_class: Set("interest".into()),
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
    let exec = |sql: String| async move {
        db.execute_unprepared(&sql).await.with_context(|| sql.chars().take(120).collect::<String>())
    };
    exec(format!(
        "INSERT INTO tag (group_id, name, description, status, aliases, version, created_at, updated_at)
         SELECT {g}, 'b' || lpad(i::text, 4, '0'), '', 'ACTIVE', '[]', 1, now(), now()
         FROM generate_series(0, {n} - 1) i ON CONFLICT DO NOTHING",
        g = group.id,
        n = size.tags
    ))
    .await?;
    let first_tag: i64 = db
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT min(id) AS m FROM tag WHERE group_id = {}", group.id),
        ))
        .await?
        .context("no bench tags")?
        .try_get("", "m")?;
    let units = stores.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let have: i64 = db
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT count(*) AS n FROM customer WHERE org_unit_id IN ({units})"),
        ))
        .await?
        .context("count")?
        .try_get("", "n")?;
    if have < size.customers {
        eprintln!(
            "generating {} customers and about {} assignments…",
            size.customers - have,
            (size.customers - have) * size.tags_per_customer
        );
        let store_array = format!("ARRAY[{units}]");
        exec(format!(
            "INSERT INTO customer (org_unit_id, name, gender, city, total_spend_cents, order_count, added_at, updated_at, version)
             SELECT ({store_array})[1 + (i % {STORES})], '压测' || i, CASE WHEN i % 2 = 0 THEN 'FEMALE' ELSE 'MALE' END,
                    '深圳', (i % 100000) * 100, i % 30, now() - (i % 700) * interval '1 day', now(), 1
             FROM generate_series({from}, {to}) i",
            from = have + 1,
            to = size.customers
        ))
        .await?;
        // Zipf-like popularity: low tag numbers are far more common.
        exec(format!(
            "INSERT INTO customer_tag (customer_id, tag_id, source, tagged_at)
             SELECT c.id, {first_tag} + floor({n} * power(random(), 3))::bigint, 'IMPORT', now()
             FROM customer c CROSS JOIN generate_series(1, {k})
             WHERE c.org_unit_id IN ({units}) AND NOT EXISTS (SELECT 1 FROM customer_tag x WHERE x.customer_id = c.id)
             ON CONFLICT DO NOTHING",
            n = size.tags,
            k = size.tags_per_customer
        ))
        .await?;
        exec("ANALYZE customer; ANALYZE customer_tag;".into()).await?;
    }
    Ok(first_tag)
}

/// Runs the benchmark and prints the table.
///
/// # Errors
/// A database that is not PostgreSQL, and database errors.
pub async fn run(settings: Settings, size: BenchSize, runs: usize) -> anyhow::Result<()> {
    let app = Application::build(settings.clone()).await?;
    let db = app.state.db.clone();
    if db.get_database_backend() != DbBackend::Postgres {
        bail!("the segment benchmark runs on PostgreSQL: set DATABASE_URL=postgres://…");
    }
    let first_tag = generate(&db, &app.state.authz, size).await?;
    let index = SegmentIndex::new();
    let started = Instant::now();
    index.rebuild(&db).await?;
    let build = started.elapsed();
    let bench_admin =
        staff::Entity::find().filter(staff::Column::Login.eq("bench.admin")).one(&db).await?.context("bench admin")?;
    app.state.authz.refresh().await.map_err(|e| anyhow::anyhow!(e.message()))?;
    let principal = app.state.authz.principal(bench_admin.clone(), Arc::new(OrgTree::load(&db).await?));
    let token = app.state.keys.mint(&bench_admin, Duration::from_secs(3600))?;
    let t = |n: i64| first_tag + n;
    let cases = [
        ("selective", format!("tag(#{}) AND tag(#{})", t(1500), t(1900))),
        ("medium", format!("tag(#{}) AND NOT tag(#{})", t(40), t(300))),
        ("broad", format!("anyTag(#{}, #{}) AND NOT tag(#{})", t(2), t(3), t(0))),
    ];
    println!(
        "| expression | members | engine median | engine p99 | API median | API p99 | SQL median | SQL / engine |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (label, text) in &cases {
        let expr = segment::parse_text(text, settings.utc_offset).map_err(|e| anyhow::anyhow!(e.message()))?;
        let resolved = segment::resolve(&db, &principal, &settings.limits, expr)
            .await
            .map_err(|e| anyhow::anyhow!(e.message()))?;
        index.prepare(&db, &resolved).await?;
        let (e50, e99, members) = timed(runs, || async {
            let bitmap = index.evaluate(&principal, &resolved, settings.utc_offset).context("index not ready")?;
            let page: Vec<u32> = bitmap.iter().take(50).collect();
            Ok((bitmap.len(), page.len()))
        })
        .await?;
        let query = format!(
            "{{ segmentPreview(segment: {{ text: {} }}) {{ count }} }}",
            serde_json::to_string(text).expect("json string")
        );
        let bearer = format!("Bearer {token}");
        // Warm the API instance's own index first.
        app.state.index.rebuild(&db).await?;
        let (a50, a99, _) = timed(runs, || async {
            let res = crate::http::execute(
                &app.state,
                &app.schema,
                Some(&bearer),
                async_graphql::Request::new(query.clone()),
            )
            .await
            .map_err(|e| anyhow::anyhow!(e.message()))?;
            anyhow::ensure!(res.errors.is_empty(), "{:?}", res.errors);
            Ok(())
        })
        .await?;
        let filter = customer::CustomerFilter {
            segment: Some(customer::SegmentFilter { resolved: resolved.clone(), offset: settings.utc_offset }),
            ..Default::default()
        };
        let sql_runs = runs.clamp(1, 3);
        let (s50, _, sql_count) = timed(sql_runs, || async {
            customer::count_in_scope(&db, &principal, &filter).await.map_err(|e| anyhow::anyhow!(e.message()))
        })
        .await?;
        anyhow::ensure!(sql_count == members.0, "{label}: SQL counts {sql_count}, the index {}", members.0);
        println!(
            "| {label}: `{text}` | {} | {} | {} | {} | {} | {} | {:.0}× |",
            members.0,
            ms(e50),
            ms(e99),
            ms(a50),
            ms(a99),
            ms(s50),
            s50.as_secs_f64() / e50.as_secs_f64().max(1e-9)
        );
    }
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| index build (from PostgreSQL) | {:.2} s |", build.as_secs_f64());
    println!("| index memory (bitmaps) | {:.1} MiB |", index.memory_bytes() as f64 / (1024.0 * 1024.0));
    // A write on one instance, seen by another following the log.
    let follower = SegmentIndex::new();
    follower.spawn_follower(db.clone(), settings.index_follow_interval.unwrap_or(Duration::from_millis(250)));
    while !follower.is_ready() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let probe = format!("tag(#{})", t(size.tags - 1));
    let expr = segment::parse_text(&probe, settings.utc_offset).map_err(|e| anyhow::anyhow!(e.message()))?;
    let resolved =
        segment::resolve(&db, &principal, &settings.limits, expr).await.map_err(|e| anyhow::anyhow!(e.message()))?;
    let before = follower.evaluate(&principal, &resolved, settings.utc_offset).context("follower not ready")?.len();
    let target: i64 = db
        .query_one_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT min(id) AS id FROM customer c WHERE org_unit_id IN (SELECT id FROM org_unit WHERE path LIKE 'bench/%')
                 AND NOT EXISTS (SELECT 1 FROM customer_tag x WHERE x.customer_id = c.id AND x.tag_id = {})",
                t(size.tags - 1)
            ),
        ))
        .await?
        .context("a customer without the probe tag")?
        .try_get("", "id")?;
    let written = Instant::now();
    crate::service::tagging::apply_tags(
        &db,
        &principal,
        &settings.limits,
        crate::service::tagging::TagRequest {
            customers: vec![crate::domain::CustomerId(target)],
            tags: vec![crate::domain::TagId(t(size.tags - 1))],
            expires_at: None,
            source: entity::enums::TagSource::Api,
            source_ref: Some("bench".into()),
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!(e.message()))?;
    loop {
        if follower.evaluate(&principal, &resolved, settings.utc_offset).map(|b| b.len()) == Some(before + 1) {
            break;
        }
        anyhow::ensure!(written.elapsed() < Duration::from_secs(10), "the follower never saw the write");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("| write → visible on a second instance | {} |", ms(written.elapsed()));
    Ok(())
}
