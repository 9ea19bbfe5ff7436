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
use entity::{org_unit, staff};
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
pub(crate) async fn generate(
    db: &DatabaseConnection,
    authz: &crate::authz::Authz,
    size: BenchSize,
) -> anyhow::Result<i64> {
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
    let group = super::ensure_group(db, root.id, "压测标签", false).await?;
    let backend = db.get_database_backend();
    let sqlite = backend == DbBackend::Sqlite;
    let exec = |sql: String| async move {
        db.execute_unprepared(&sql).await.with_context(|| sql.chars().take(120).collect::<String>())
    };
    let scalar = |sql: String| async move {
        db.query_one_raw(sea_orm::Statement::from_string(backend, sql.clone()))
            .await?
            .with_context(|| sql.chars().take(120).collect::<String>())
    };
    // PostgreSQL counts with generate_series; SQLite with a recursive CTE
    // (`series(i)`), and writes times as the text SeaORM reads.
    let series = |from: i64, to: i64| {
        if sqlite {
            format!("WITH RECURSIVE series(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM series WHERE i < {to}) ")
        } else {
            String::new()
        }
    };
    let series_from = |from: i64, to: i64| {
        if sqlite { "series".to_owned() } else { format!("generate_series({from}, {to}) AS series(i)") }
    };
    let now_sql = if sqlite { "strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now')" } else { "now()" };
    let tag_name = if sqlite { "printf('b%04d', i)" } else { "'b' || lpad(i::text, 4, '0')" };
    exec(format!(
        "{with}INSERT INTO tag (group_id, name, description, status, aliases, version, created_at, updated_at)
         SELECT {g}, {tag_name}, '', 'ACTIVE', '[]', 1, {now_sql}, {now_sql}
         FROM {from} WHERE true ON CONFLICT DO NOTHING",
        with = series(0, size.tags - 1),
        from = series_from(0, size.tags - 1),
        g = group.id,
    ))
    .await?;
    let first_tag: i64 =
        scalar(format!("SELECT min(id) AS m FROM tag WHERE group_id = {}", group.id)).await?.try_get("", "m")?;
    let units = stores.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
    let have: i64 =
        scalar(format!("SELECT count(*) AS n FROM customer WHERE org_unit_id IN ({units})")).await?.try_get("", "n")?;
    if have < size.customers {
        eprintln!("generating {} customers…", size.customers - have);
        let store = format!(
            "CASE i % {STORES} {} END",
            stores.iter().enumerate().map(|(k, id)| format!("WHEN {k} THEN {id}")).collect::<Vec<_>>().join(" ")
        );
        let added = if sqlite {
            "strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now', '-' || (i % 700) || ' days')"
        } else {
            "now() - (i % 700) * interval '1 day'"
        };
        exec(format!(
            "{with}INSERT INTO customer (org_unit_id, name, gender, city, total_spend_cents, order_count, added_at, updated_at, version)
             SELECT {store}, '压测' || i, CASE WHEN i % 2 = 0 THEN 'FEMALE' ELSE 'MALE' END,
                    '深圳', (i % 100000) * 100, i % 30, {added}, {now_sql}, 1
             FROM {from}",
            with = series(have + 1, size.customers),
            from = series_from(have + 1, size.customers),
        ))
        .await?;
    }
    // Assignments for every bench customer without any (so an interrupted
    // run resumes where it stopped).
    let untagged: bool = scalar(format!(
        "SELECT EXISTS (SELECT 1 FROM customer c WHERE c.org_unit_id IN ({units})
           AND NOT EXISTS (SELECT 1 FROM customer_tag x WHERE x.customer_id = c.id)) AS u"
    ))
    .await?
    .try_get("", "u")?;
    if untagged {
        eprintln!("generating about {} assignments…", size.customers * size.tags_per_customer);
        // Zipf-like popularity: low tag numbers are far more common.
        let (pick, tagged_at) = if sqlite {
            // random() is a 64-bit integer: a uniform u in [0, 1) cubed.
            let u = "((abs(random()) % 1000000) / 1000000.0)";
            (format!("CAST({{n}} * {u} * {u} * {u} AS INTEGER)"), now_sql.to_owned())
        } else {
            ("floor({n} * power(random(), 3))::bigint".to_owned(), "now()".to_owned())
        };
        let pick = pick.replace("{n}", &size.tags.to_string());
        exec(format!(
            "{with}INSERT INTO customer_tag (customer_id, tag_id, source, tagged_at)
             SELECT c.id, {first_tag} + {pick}, 'IMPORT', {tagged_at}
             FROM customer c CROSS JOIN {from}
             WHERE c.org_unit_id IN ({units}) AND NOT EXISTS (SELECT 1 FROM customer_tag x WHERE x.customer_id = c.id)
             ON CONFLICT DO NOTHING",
            with = series(1, size.tags_per_customer),
            from = series_from(1, size.tags_per_customer),
        ))
        .await?;
        // Every table the generator wrote: the planner must know there are
        // thousands of tags, or it joins from the tag table first.
        exec("ANALYZE".into()).await?;
    }
    Ok(first_tag)
}

/// How long the plain-SQL side may run per statement: long enough for any
/// sane plan at 1M customers, short enough that a pathological one is cut
/// off (and reported) rather than running for an hour.
const SQL_TIMEOUT: Duration = Duration::from_secs(600);

/// How long one data-generation statement may run.
const GENERATION_TIMEOUT: Duration = Duration::from_secs(3 * 3600);

/// Members a page holds in the API and in the engine measurement.
const PAGE: i32 = 50;

/// The API's default order of customer lists: newest first.
const API_ORDER: customer::CustomerOrder =
    customer::CustomerOrder { field: customer::SortField::AddedAt, descending: true };

fn anyhow_app(e: crate::error::AppError) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", e.code(), e.message())
}

/// Count and first page through the engine, as the API asks for them (in
/// [`API_ORDER`]).
fn engine_page(
    index: &SegmentIndex,
    principal: &crate::authz::Principal,
    resolved: &segment::Resolved,
    offset: chrono::FixedOffset,
) -> anyhow::Result<(u64, Vec<i64>)> {
    let members = index.evaluate(principal, resolved, offset).context("index not ready")?;
    let page = index.page(&members, crate::segment::PageKey::AddedAt, true, None, PAGE as usize);
    Ok((members.len(), page))
}

/// Count and first page by plain SQL (the service's own evaluation).
async fn sql_page(
    db: &DatabaseConnection,
    principal: &crate::authz::Principal,
    filter: &customer::CustomerFilter,
    limits: &crate::config::Limits,
) -> anyhow::Result<(u64, Vec<i64>)> {
    let count = customer::count_in_scope(db, principal, filter).await.map_err(anyhow_app)?;
    let first = crate::domain::PageSize::parse(Some(PAGE), limits).map_err(anyhow_app)?;
    let page = crate::domain::PageArgs::forward(first);
    let page = customer::list_in_scope(db, principal, filter, API_ORDER, &page).await.map_err(anyhow_app)?;
    Ok((count, page.items.into_iter().map(|(_, c)| c.id).collect()))
}

/// Waits until `probe` on the follower gives `want`; the time since
/// `written`.
async fn seen_by(
    follower: &SegmentIndex,
    principal: &crate::authz::Principal,
    resolved: &segment::Resolved,
    offset: chrono::FixedOffset,
    want: u64,
    written: Instant,
) -> anyhow::Result<Duration> {
    loop {
        if follower.evaluate(principal, resolved, offset).map(|b| b.len()) == Some(want) {
            return Ok(written.elapsed());
        }
        anyhow::ensure!(written.elapsed() < Duration::from_secs(10), "the follower never saw the write");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
    let sql_db = crate::db::connect_with(&settings.database_url, SQL_TIMEOUT).await?;
    // Generating tens of millions of rows takes minutes: not under the
    // request timeout the application's connections carry.
    let generation_db = crate::db::connect_with(&settings.database_url, GENERATION_TIMEOUT).await?;
    let first_tag = generate(&generation_db, &app.state.authz, size).await?;
    generation_db.close().await?;
    let index = SegmentIndex::new();
    let started = Instant::now();
    index.rebuild(&db).await?;
    let build = started.elapsed();
    let bench_admin =
        staff::Entity::find().filter(staff::Column::Login.eq("bench.admin")).one(&db).await?.context("bench admin")?;
    app.state.authz.refresh().await.map_err(|e| anyhow::anyhow!(e.message()))?;
    let principal = app.state.authz.principal(bench_admin.clone(), Arc::new(OrgTree::load(&db).await?));
    let token = app.state.keys.mint(&bench_admin, Duration::from_secs(3600))?;
    let offset = settings.utc_offset;
    let t = |n: i64| first_tag + n.min(size.tags - 1);
    let year_ago = (Utc::now() - chrono::TimeDelta::days(365)).format("%Y-%m-%d");
    let cases = [
        ("selective", format!("tag(#{}) AND tag(#{})", t(1500), t(1900))),
        ("medium", format!("tag(#{}) AND NOT tag(#{})", t(40), t(300))),
        ("broad", format!("anyTag(#{}, #{}) AND NOT tag(#{})", t(2), t(3), t(0))),
        ("attributes", format!("tag(#{}) AND gender = FEMALE AND spend >= 100000 AND added > \"{year_ago}\"", t(10))),
    ];
    println!(
        "Count + first page of {PAGE} (newest first, the API default), {} customers × {} tags × ≤{} each; {runs} runs.",
        size.customers, size.tags, size.tags_per_customer
    );
    println!();
    println!(
        "| expression | members | engine median | engine p99 | API median | API p99 | SQL median | SQL / engine | SQL / API |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // Warm the API instance's own index first.
    app.state.index.rebuild(&db).await?;
    for (label, text) in &cases {
        let expr = segment::parse_text(text, offset).map_err(anyhow_app)?;
        let resolved = segment::resolve(&db, &principal, &settings.limits, expr).await.map_err(anyhow_app)?;
        index.prepare(&db, &resolved).await?;
        let (e50, e99, engine) = timed(runs, || async { engine_page(&index, &principal, &resolved, offset) }).await?;
        let query = format!(
            "{{ segmentPreview(segment: {{ text: {} }}) {{ count customers(first: {PAGE}) {{ edges {{ node {{ id }} }} }} }} }}",
            serde_json::to_string(text).expect("json string")
        );
        let bearer = format!("Bearer {token}");
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
            segment: Some(customer::SegmentFilter { resolved: resolved.clone(), offset }),
            ..Default::default()
        };
        let sql_runs = runs.clamp(1, 3);
        let sql = timed(sql_runs, || sql_page(&sql_db, &principal, &filter, &settings.limits)).await;
        let (sql_cell, ratios) = match sql {
            Ok((s50, _, sql)) => {
                anyhow::ensure!(sql.0 == engine.0, "{label}: SQL counts {}, the engine {}", sql.0, engine.0);
                anyhow::ensure!(sql.1 == engine.1, "{label}: SQL and the engine differ on the first page");
                let ratio = |d: Duration| format!("{:.0}×", s50.as_secs_f64() / d.as_secs_f64().max(1e-9));
                (ms(s50), format!("{} | {}", ratio(e50), ratio(a50)))
            }
            Err(err) => {
                eprintln!("{label}: SQL failed: {err:#}");
                (format!("> {} s (cut off)", SQL_TIMEOUT.as_secs()), "— | —".to_owned())
            }
        };
        println!(
            "| {label}: `{text}` | {} | {} | {} | {} | {} | {sql_cell} | {ratios} |",
            engine.0,
            ms(e50),
            ms(e99),
            ms(a50),
            ms(a99),
        );
    }
    // Cross analysis (交叉分析) of five tags, popular to rare, over the
    // caller's whole scope: the index's pairwise intersections against the
    // SQL self-join (a fresh index is not ready, so the service uses SQL).
    let cross: Vec<crate::domain::TagId> =
        [t(2), t(3), t(10), t(40), t(300)].into_iter().map(crate::domain::TagId).collect();
    let everyone = customer::CustomerFilter::default();
    let (x50, x99, by_index) = timed(runs, || async {
        segment::cooccurrence(&db, &index, &principal, &settings.limits, &cross, &everyone).await.map_err(anyhow_app)
    })
    .await?;
    let unready = SegmentIndex::new();
    let by_sql = timed(1, || async {
        segment::cooccurrence(&sql_db, &unready, &principal, &settings.limits, &cross, &everyone)
            .await
            .map_err(anyhow_app)
    })
    .await;
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| cross analysis of 5 tags (15 pairs), whole scope: index median / p99 | {} / {} |", ms(x50), ms(x99));
    match by_sql {
        Ok((sql, _, pairs)) => {
            anyhow::ensure!(pairs == by_index, "cross analysis: SQL and the index differ");
            println!(
                "| the same by plain SQL (one run) | {} ({:.0}×) |",
                ms(sql),
                sql.as_secs_f64() / x50.as_secs_f64().max(1e-9)
            );
        }
        Err(err) => println!("| the same by plain SQL | failed: {err:#} |"),
    }
    println!("| index build (from PostgreSQL) | {:.2} s |", build.as_secs_f64());
    println!(
        "| index memory (bitmaps, attribute columns, added-time order) | {:.1} MiB |",
        index.memory_bytes() as f64 / (1024.0 * 1024.0)
    );
    // Writes on one instance, seen by another following the logs.
    let follower = SegmentIndex::new();
    follower.spawn_follower(db.clone(), settings.index_follow_interval.unwrap_or(Duration::from_millis(250)));
    while !follower.is_ready() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (tag_delay, attribute_delay) =
        cross_instance_delays(&db, &follower, &principal, &settings, t(size.tags - 1)).await?;
    println!("| tag write → visible on a second instance | {} |", ms(tag_delay));
    println!("| attribute write → visible on a second instance | {} |", ms(attribute_delay));
    Ok(())
}

/// The delays until a tag write and a customer update made through the
/// services show on a second instance's index.
async fn cross_instance_delays(
    db: &DatabaseConnection,
    follower: &SegmentIndex,
    principal: &crate::authz::Principal,
    settings: &Settings,
    probe_tag: i64,
) -> anyhow::Result<(Duration, Duration)> {
    let offset = settings.utc_offset;
    let resolve = |text: String| async move {
        let expr = segment::parse_text(&text, offset).map_err(anyhow_app)?;
        segment::resolve(db, principal, &settings.limits, expr).await.map_err(anyhow_app)
    };
    let one = |sql: String| async move {
        let row = db.query_one_raw(sea_orm::Statement::from_string(DbBackend::Postgres, sql)).await?;
        anyhow::Ok(row.context("no bench customer left to change")?.try_get::<i64>("", "id")?)
    };
    let bench_units = "SELECT id FROM org_unit WHERE path LIKE 'bench/%'";
    // A tag.
    let tagged = resolve(format!("tag(#{probe_tag})")).await?;
    let before = follower.evaluate(principal, &tagged, offset).context("follower not ready")?.len();
    let target = one(format!(
        "SELECT min(id) AS id FROM customer c WHERE org_unit_id IN ({bench_units})
         AND NOT EXISTS (SELECT 1 FROM customer_tag x WHERE x.customer_id = c.id AND x.tag_id = {probe_tag})"
    ))
    .await?;
    let written = Instant::now();
    crate::service::tagging::apply_tags(
        db,
        principal,
        &settings.limits,
        crate::service::tagging::TagRequest {
            customers: vec![crate::domain::CustomerId(target)],
            tags: vec![crate::domain::TagId(probe_tag)],
            expires_at: None,
            source: entity::enums::TagSource::Api,
            source_ref: Some("bench".into()),
        },
    )
    .await
    .map_err(anyhow_app)?;
    let tag_delay = seen_by(follower, principal, &tagged, offset, before + 1, written).await?;
    // An attribute (the customer change log).
    let moved = resolve("city = \"广州\"".to_owned()).await?;
    let before = follower.evaluate(principal, &moved, offset).context("follower not ready")?.len();
    let target =
        one(format!("SELECT min(id) AS id FROM customer WHERE org_unit_id IN ({bench_units}) AND city = '深圳'"))
            .await?;
    let version: i32 =
        customer::find_in_scope(db, principal, crate::domain::CustomerId(target)).await.map_err(anyhow_app)?.version;
    let written = Instant::now();
    customer::update(
        db,
        principal,
        customer::CustomerPatch {
            id: crate::domain::CustomerId(target),
            version,
            name: None,
            phone: None,
            gender: None,
            birth_date: None,
            city: Some(crate::domain::OptionalText::parse(Some("广州"), "city").map_err(anyhow_app)?),
            industry: None,
            channel: None,
        },
    )
    .await
    .map_err(anyhow_app)?;
    let attribute_delay = seen_by(follower, principal, &moved, offset, before + 1, written).await?;
    Ok((tag_delay, attribute_delay))
}
