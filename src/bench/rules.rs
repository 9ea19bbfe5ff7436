//! `tagbase bench rules`: automatic tagging under load, over real HTTP.
//!
//! Against DATABASE_URL (its customers: the generated data of `tagbase
//! bench segments`, or the demo data), with this binary serving it as a
//! child process (as `bench api` does):
//!
//! 1. 50 enabled rules of every kind at the staff member's home unit, on
//!    50 tags of a group of their own (found again on later runs).
//! 2. Ingest: `--connections` workers send `recordEvents` batches of
//!    `--batch` events (random kinds, customers and times within the last
//!    30 days) for `--events` events in all: events per second, batch p50
//!    and p99.
//! 3. Meanwhile a probe sends batches of the same size holding one
//!    message that a rule answers with a tag, and polls a segment count of
//!    that tag until it shows: the p99 of batch sent → tag visible to
//!    segments.
//! 4. A 30-day dry run of a count rule (`dryRunRule`), timed.
//! 5. The server's memory.
//!
//! Events are append-only: the events (and the tags rules put on) stay.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use chrono::Utc;
use entity::{org_unit, rule, staff, tag, tag_group};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::{Value, json};

use super::api::{Server, post};
use crate::auth::JwtKeys;
use crate::config::Settings;
use crate::domain::{CustomerId, OrgUnitId, RuleId, TagGroupId, TagId};

/// What to run.
#[derive(Debug, Clone)]
pub struct RulesBench {
    pub login: String,
    /// Customers the events are spread over (the first in scope by id).
    pub customers: u64,
    /// Events ingested in all.
    pub events: usize,
    /// Events per `recordEvents` call.
    pub batch: usize,
    /// Concurrent ingest workers.
    pub connections: usize,
    /// Probes of event → visible in a segment.
    pub probes: usize,
    pub server: Option<PathBuf>,
}

const GROUP: &str = "bench 规则";
const RULES: usize = 50;

/// Condition templates, one per kind; `{t}` is the previous rule's tag.
const KINDS: [&str; 10] = [
    r#"message contains "探针""#,
    r#"message matches "(报价|多少钱)""#,
    "count(click, 7d) >= 2",
    "streak(group_joined, 3d)",
    r#"message contains "在吗" AND no order_paid for 30d"#,
    "customer_added at 18:00–24:00",
    "spend >= 100000 AND count(order_paid, 30d) >= 1",
    "tag(#{t}) AND count(message, 7d) >= 2",
    r#"count(click where title contains "价格", 30d) >= 1"#,
    "count(form_submitted, 30d) >= 1 AND orders >= 1",
];

const RECORD: &str =
    "mutation($e: [CustomerEventInput!]!) { recordEvents(input: { events: $e }) { recorded errors { code message } } }";
const COUNT: &str = "query($t: String!) { segmentPreview(segment: { text: $t }) { count } }";

/// Runs the benchmark and prints its table.
///
/// # Errors
/// A server that does not start, a database without customers in scope,
/// a request that fails.
pub async fn run(settings: Settings, bench: RulesBench) -> anyhow::Result<()> {
    ensure!(bench.batch >= 1 && bench.connections >= 1, "batch and connections must be at least 1");
    let binary = match &bench.server {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("locating this binary")?,
    };
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(bench.connections + 1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(300))
        .build()?;
    let server = Server::start(&binary, &settings.database_url, &client).await?;
    let result = measure(&settings, &bench, &client, &server).await;
    let (rss_after, rss_peak) = server.memory();
    let rss_ready = server.rss_ready;
    server.shutdown(result.is_err()).await;
    let figures = result?;
    print_table(&settings, &bench, &figures, rss_ready, rss_after, rss_peak);
    Ok(())
}

struct Figures {
    customers: usize,
    rules: usize,
    events: usize,
    events_per_second: f64,
    batch_p50: Duration,
    batch_p99: Duration,
    visible_p50: Duration,
    visible_p99: Duration,
    dry_run: Duration,
    dry_run_timed_out: bool,
    dry_run_events: u64,
    dry_run_customers: u64,
}

/// The staff member's token, home unit and customers.
async fn setup(settings: &Settings, bench: &RulesBench) -> anyhow::Result<(String, i64, Vec<i64>)> {
    let db = crate::db::connect(&settings.database_url).await?;
    let member = staff::Entity::find()
        .filter(staff::Column::Login.eq(bench.login.as_str()))
        .one(&db)
        .await?
        .with_context(|| format!("no staff member {:?} (`--login`)", bench.login))?;
    let home = org_unit::Entity::find_by_id(member.home_org_unit_id).one(&db).await?.context("home unit")?;
    let token = JwtKeys::load(&db, settings).await?.mint(&member, Duration::from_secs(6 * 3600))?;
    let units: Vec<i64> = org_unit::Entity::find()
        .filter(org_unit::Column::Path.starts_with(home.path.as_str()))
        .all(&db)
        .await?
        .into_iter()
        .map(|u| u.id)
        .collect();
    let customers: Vec<i64> = entity::customer::Entity::find()
        .select_only()
        .column(entity::customer::Column::Id)
        .filter(entity::customer::Column::OrgUnitId.is_in(units))
        .order_by_asc(entity::customer::Column::Id)
        .limit(bench.customers)
        .into_tuple()
        .all(&db)
        .await?;
    ensure!(!customers.is_empty(), "no customers under {} (generate data with `tagbase bench segments`)", home.path);
    db.close().await.ok();
    Ok((token, home.id, customers))
}

/// The bench's 50 rules and their tags, created on the first run.
async fn rules(
    settings: &Settings,
    client: &reqwest::Client,
    url: &str,
    token: &str,
    unit: i64,
) -> anyhow::Result<(Vec<i64>, Vec<i64>)> {
    let db = crate::db::connect(&settings.database_url).await?;
    let group = match tag_group::Entity::find()
        .filter(tag_group::Column::OrgUnitId.eq(unit))
        .filter(tag_group::Column::Name.eq(GROUP))
        .one(&db)
        .await?
    {
        Some(g) => g.id,
        None => {
            let answer = post(
                client,
                url,
                token,
                &json!({
                "query": "mutation($u: ID!, $n: String!) { createTagGroup(input: { orgUnitId: $u, name: $n,
                    category: BEHAVIOR, visibilityClass: \"behavior\", exclusive: false }) { tagGroup { id } } }",
                "variables": { "u": OrgUnitId(unit).to_string(), "n": GROUP } }),
            )
            .await?;
            global_id(&answer["data"]["createTagGroup"]["tagGroup"]["id"], |r| Ok(TagGroupId::parse(r, "id")?.0))?
        }
    };
    let mut tags = Vec::new();
    let mut rule_ids = Vec::new();
    for i in 0..RULES {
        let name = format!("bench 标签 {i:02}");
        let existing = tag::Entity::find()
            .filter(tag::Column::GroupId.eq(group))
            .filter(tag::Column::Name.eq(name.as_str()))
            .one(&db)
            .await?;
        let tag = match existing {
            Some(t) => t.id,
            None => {
                let answer = post(client, url, token, &json!({
                    "query": "mutation($g: ID!, $n: String!) { createTag(input: { groupId: $g, name: $n }) { tag { id } } }",
                    "variables": { "g": TagGroupId(group).to_string(), "n": name } }))
                .await?;
                global_id(&answer["data"]["createTag"]["tag"]["id"], |r| Ok(TagId::parse(r, "id")?.0))?
            }
        };
        let rule_name = format!("bench 规则 {i:02}");
        let existing = rule::Entity::find()
            .filter(rule::Column::OrgUnitId.eq(unit))
            .filter(rule::Column::Name.eq(rule_name.as_str()))
            .one(&db)
            .await?;
        let id = match existing {
            Some(r) => r.id,
            None => {
                let previous = tags.last().copied().unwrap_or(tag);
                let condition = KINDS[i % KINDS.len()].replace("{t}", &previous.to_string());
                let answer = post(
                    client,
                    url,
                    token,
                    &json!({
                    "query": "mutation($i: CreateRuleInput!) { createRule(input: $i) { id } }",
                    "variables": { "i": { "orgUnitId": OrgUnitId(unit).to_string(), "name": rule_name,
                        "condition": condition, "actions": [{ "op": "ADD", "tagId": TagId(tag).to_string() }],
                        "enabled": true, "priority": i } } }),
                )
                .await?;
                global_id(&answer["data"]["createRule"]["id"], |r| Ok(RuleId::parse(r, "id")?.0))?
            }
        };
        tags.push(tag);
        rule_ids.push(id);
    }
    db.close().await.ok();
    Ok((tags, rule_ids))
}

fn global_id(value: &Value, parse: impl Fn(&str) -> crate::error::AppResult<i64>) -> anyhow::Result<i64> {
    let raw = value.as_str().context("an id in the answer")?;
    parse(raw).map_err(|e| anyhow::anyhow!(e.message()))
}

/// A cheap deterministic generator (the figures need no better).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below.max(1)
    }
}

/// A random event of a random kind for a random customer.
fn event(rng: &mut Lcg, customers: &[i64], key: String) -> Value {
    let customer = CustomerId(customers[rng.next(customers.len() as u64) as usize]).to_string();
    let at = Utc::now() - chrono::Duration::seconds(rng.next(30 * 86_400 - 60) as i64 + 60);
    let mut e = json!({ "customerId": customer, "key": key, "occurredAt": at.to_rfc3339() });
    match rng.next(6) {
        0 => {
            e["kind"] = json!("MESSAGE_RECEIVED");
            e["text"] = json!(["在吗", "多少钱", "你好", "报价单"][rng.next(4) as usize]);
        }
        1 => {
            e["kind"] = json!("LINK_CLICKED");
            e["url"] = json!("https://example.com/p");
            e["title"] = json!(["价格表", "产品介绍"][rng.next(2) as usize]);
        }
        2 => {
            e["kind"] = json!("GROUP_JOINED");
            e["group"] = json!("车友群");
        }
        3 => {
            e["kind"] = json!("ORDER_PAID");
            e["amount"] = json!(rng.next(500_000) as i64 + 100);
        }
        4 => {
            e["kind"] = json!("FORM_SUBMITTED");
            e["form"] = json!("试驾预约");
        }
        _ => e["kind"] = json!("CUSTOMER_ADDED"),
    }
    e
}

fn percentile(times: &mut [Duration], q: f64) -> Duration {
    times.sort();
    times.get(((times.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or_default()
}

async fn record(client: &reqwest::Client, url: &str, token: &str, events: Vec<Value>) -> anyhow::Result<()> {
    let answer = post(client, url, token, &json!({ "query": RECORD, "variables": { "e": events } })).await?;
    let errors = &answer["data"]["recordEvents"]["errors"];
    ensure!(errors.as_array().is_some_and(Vec::is_empty), "events refused: {errors}");
    Ok(())
}

async fn measure(
    settings: &Settings,
    bench: &RulesBench,
    client: &reqwest::Client,
    server: &Server,
) -> anyhow::Result<Figures> {
    let url = format!("{}/graphql", server.base);
    let (token, unit, customers) = setup(settings, bench).await?;
    let (tags, rule_ids) = rules(settings, client, &url, &token, unit).await?;
    let stamp = Utc::now().timestamp_micros();
    let batches = bench.events.div_ceil(bench.batch);
    let started = Instant::now();
    let workers: Vec<_> = (0..bench.connections)
        .map(|w| {
            let (client, url, token, customers) = (client.clone(), url.clone(), token.clone(), customers.clone());
            let (batch, total, step) = (bench.batch, bench.events, bench.connections);
            tokio::spawn(async move {
                let mut rng = Lcg(stamp as u64 ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let mut times = Vec::new();
                for b in (w..batches).step_by(step) {
                    let size = batch.min(total - b * batch);
                    let events =
                        (0..size).map(|i| event(&mut rng, &customers, format!("bench-{stamp}-{b}-{i}"))).collect();
                    let sent = Instant::now();
                    record(&client, &url, &token, events).await?;
                    times.push(sent.elapsed());
                }
                anyhow::Ok(times)
            })
        })
        .collect();
    // The probe: one message answered by rule 0's tag in a batch of the
    // usual size, then a segment count of the tag until it grows.
    let probe_segment = format!("tag(#{})", tags[0]);
    let probed = untagged(settings, &customers, tags[0], bench.probes).await?;
    let mut visible = Vec::new();
    let mut rng = Lcg(stamp as u64);
    for (p, fresh) in probed.iter().enumerate() {
        let before = count(client, &url, &token, &probe_segment).await?;
        let mut events: Vec<Value> =
            (1..bench.batch).map(|i| event(&mut rng, &customers, format!("probe-{stamp}-{p}-{i}"))).collect();
        events.push(json!({ "customerId": CustomerId(*fresh).to_string(), "kind": "MESSAGE_RECEIVED",
            "key": format!("probe-{stamp}-{p}"), "text": "探针", "occurredAt": Utc::now().to_rfc3339() }));
        let sent = Instant::now();
        record(client, &url, &token, events).await?;
        loop {
            let now = count(client, &url, &token, &probe_segment).await?;
            if now > before {
                visible.push(sent.elapsed());
                break;
            }
            ensure!(sent.elapsed() < Duration::from_secs(60), "probe {p}: the tag did not show in a minute");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut batch_times = Vec::new();
    for worker in workers {
        batch_times.extend(worker.await??);
    }
    let ingest = started.elapsed();
    let dry = Instant::now();
    let answer = post(
        client,
        &url,
        &token,
        &json!({
        "query": "query($r: ID!) { dryRunRule(input: { ruleId: $r }) { eventsReplayed customersReplayed wouldAdd } }",
        "variables": { "r": RuleId(rule_ids[2]).to_string() } }),
    )
    .await;
    let dry_run = dry.elapsed();
    // A dry run past the server's request timeout is a figure too (the
    // table says so); any other failure ends the bench.
    let answer = match answer {
        Ok(answer) => Some(answer),
        Err(e) if e.downcast_ref::<super::api::Refused>().and_then(super::api::Refused::code) == Some("TIMEOUT") => {
            None
        }
        Err(e) => return Err(e),
    };
    let run = answer.as_ref().map_or(&Value::Null, |a| &a["data"]["dryRunRule"]);
    Ok(Figures {
        customers: customers.len(),
        rules: rule_ids.len(),
        events: bench.events,
        // The probes' batches are recorded events too.
        events_per_second: (bench.events + probed.len() * bench.batch) as f64 / ingest.as_secs_f64(),
        batch_p50: percentile(&mut batch_times, 0.5),
        batch_p99: percentile(&mut batch_times, 0.99),
        visible_p50: percentile(&mut visible, 0.5),
        visible_p99: percentile(&mut visible, 0.99),
        dry_run,
        dry_run_timed_out: answer.is_none(),
        dry_run_events: run["eventsReplayed"].as_u64().unwrap_or(0),
        dry_run_customers: run["customersReplayed"].as_u64().unwrap_or(0),
    })
}

/// Up to `n` of the customers without the probe's tag.
async fn untagged(settings: &Settings, customers: &[i64], tag: i64, n: usize) -> anyhow::Result<Vec<i64>> {
    let db = crate::db::connect(&settings.database_url).await?;
    let holders: std::collections::HashSet<i64> = entity::customer_tag::Entity::find()
        .select_only()
        .column(entity::customer_tag::Column::CustomerId)
        .filter(entity::customer_tag::Column::TagId.eq(tag))
        .into_tuple()
        .all(&db)
        .await?
        .into_iter()
        .collect();
    db.close().await.ok();
    Ok(customers.iter().copied().filter(|c| !holders.contains(c)).take(n).collect())
}

async fn count(client: &reqwest::Client, url: &str, token: &str, segment: &str) -> anyhow::Result<u64> {
    let answer = post(client, url, token, &json!({ "query": COUNT, "variables": { "t": segment } })).await?;
    answer["data"]["segmentPreview"]["count"].as_u64().context("a count")
}

fn print_table(settings: &Settings, bench: &RulesBench, f: &Figures, rss_ready: u64, rss_after: u64, rss_peak: u64) {
    let database = if settings.database_url.starts_with("postgres") { "PostgreSQL" } else { "SQLite" };
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0));
    println!(
        "{database}, {} customers, {} enabled rules of {} kinds; {} events in batches of {}, {} connections \
         (HTTP/1.1 keep-alive); server: this binary as a child process; {cores} cores shared by both.",
        f.customers,
        f.rules,
        KINDS.len(),
        f.events,
        bench.batch,
        bench.connections
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| ingest through the API, events/s (the probes' batches included) | {:.0} |", f.events_per_second);
    println!("| `recordEvents` batch p50 / p99 | {} / {} |", ms(f.batch_p50), ms(f.batch_p99));
    println!(
        "| batch sent → tag visible to segments, p50 / p99 ({} probes) | {} / {} |",
        bench.probes,
        ms(f.visible_p50),
        ms(f.visible_p99)
    );
    println!("| scheduled absence rule over all customers | see `tagbase bench schedule` |");
    if f.dry_run_timed_out {
        println!(
            "| 30-day dry run | over the request timeout: cancelled after {:.2} s (`TIMEOUT`) |",
            f.dry_run.as_secs_f64()
        );
    } else {
        println!(
            "| 30-day dry run ({} events, {} customers replayed) | {:.2} s |",
            f.dry_run_events,
            f.dry_run_customers,
            f.dry_run.as_secs_f64()
        );
    }
    println!(
        "| server RSS once ready / after / peak (VmHWM) | {} / {} / {} |",
        mib(rss_ready),
        mib(rss_after),
        mib(rss_peak)
    );
}
