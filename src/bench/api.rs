//! `tagbase bench api`: the API over real HTTP, as a client sees it.
//!
//! The server is this same binary, started as a child process (`serve`,
//! with the rate limits off); the client is this process, with its own
//! runtime and a keep-alive HTTP/1.1 connection pool of one connection
//! per concurrent worker. For each case the workers send requests back to
//! back for a fixed time and the table shows requests per second, the
//! median and the 99th percentile. Each run starts a fresh server, so the
//! time from start to `/readyz` (the segment index build) and the
//! server's resident memory are measured per run too; with several runs
//! every cell shows the median and the spread (min–max).
//!
//! It works on any database holding customers and tags (the generated
//! data of `tagbase bench segments`, or the demo data) and leaves the
//! assignments as it found them: every tag it adds it removes again.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use entity::{org_unit, staff};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, Statement, Value as DbValue,
};
use serde_json::{Value, json};

use crate::auth::JwtKeys;
use crate::config::Settings;

/// What to run.
#[derive(Debug, Clone)]
pub struct ApiBench {
    /// The staff member the requests run as (its scope is what is read).
    pub login: String,
    pub runs: usize,
    /// Concurrent workers, one keep-alive connection each.
    pub connections: usize,
    /// How long each case is measured (after a short warm-up).
    pub duration: Duration,
    /// Customers per bulk tagging call.
    pub bulk: usize,
    /// Bulk calls per run.
    pub bulk_calls: usize,
    /// The server binary; this one when not given.
    pub server: Option<PathBuf>,
    /// Only the cases whose name contains this (e.g. `page` while a
    /// profiler watches the server); the others show as `–`.
    pub only: Option<String>,
}

/// One case's figures for one run.
#[derive(Debug, Clone, Copy)]
struct Load {
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

/// One run's figures.
#[derive(Debug, Clone)]
struct RunFigures {
    ready: Duration,
    cases: Vec<Load>,
    bulk_per_second: f64,
    rss_ready: u64,
    rss_after: u64,
    rss_peak: u64,
}

/// What the requests are about, found once in the database.
struct Subject {
    token: String,
    customers: u64,
    segment: String,
    probe_tag: i64,
    /// Customers in scope without the probe tag: the write cases tag them
    /// and untag them again.
    untagged: Vec<i64>,
}

const PAGE_WITH_TAGS: &str = "{ customers(first: 20) { edges { node { id name tags { tag { id name } } } } } }";
const COUNT: &str = "query($t: String!) { segmentPreview(segment: { text: $t }) { count } }";
const COUNT_AND_PAGE: &str = "query($t: String!) { segmentPreview(segment: { text: $t }) { count \
     customers(first: 50) { edges { node { id } } } } }";
const TAG: &str = "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) \
     { applied added } }";
const UNTAG: &str = "mutation($c: [ID!]!, $t: [ID!]!) { untagCustomers(input: { customerIds: $c, tagIds: $t }) \
     { applied removed } }";

const CASES: [&str; 4] = [
    "segment count (`segmentPreview { count }`)",
    "segment count + first page of 50",
    "customer page of 20 with tags",
    "single-customer tag/untag",
];

/// Runs the benchmark and prints its tables.
///
/// # Errors
/// A server that does not start or become ready, a database without
/// customers or tags in the staff member's scope, a request that fails.
pub async fn run(settings: Settings, bench: ApiBench) -> anyhow::Result<()> {
    ensure!(bench.runs >= 1 && bench.connections >= 1, "runs and connections must be at least 1");
    let binary = match &bench.server {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("locating this binary")?,
    };
    let client = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(bench.connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    let mut subject = None;
    let mut runs = Vec::new();
    for run in 1..=bench.runs {
        let server = Server::start(&binary, &settings.database_url, &client).await?;
        eprintln!("run {run}/{}: server ready after {:.2} s", bench.runs, server.ready.as_secs_f64());
        if subject.is_none() {
            subject = Some(find_subject(&settings, &bench.login).await?);
        }
        let subject = subject.as_ref().expect("found above");
        let figures = measure(&client, &server, subject, &bench).await;
        let figures = server.stop(figures).await?;
        runs.push(figures);
    }
    let subject = subject.expect("at least one run");
    print_tables(&settings, &bench, &subject, &runs);
    Ok(())
}

/// The server as a child process (also `bench rules`'s).
pub(super) struct Server {
    child: tokio::process::Child,
    pub(super) base: String,
    pub(super) ready: Duration,
    pub(super) rss_ready: u64,
    log: PathBuf,
}

impl Server {
    pub(super) async fn start(binary: &PathBuf, database_url: &str, client: &reqwest::Client) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::env::temp_dir().join(format!("tagbase-bench-server-{}-{port}.log", std::process::id()));
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let started = Instant::now();
        let child = tokio::process::Command::new(binary)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("DATABASE_URL", database_url)
            .env("TAGBASE_RATE_PER_IP", "0")
            .env("TAGBASE_RATE_PER_STAFF", "0")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut server =
            Self { child, base: format!("http://127.0.0.1:{port}"), ready: Duration::ZERO, rss_ready: 0, log };
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("the server exited ({status}) before it was ready; its log: {}", server.log.display());
            }
            let ready = client.get(format!("{}/readyz", server.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            ensure!(started.elapsed() < Duration::from_secs(600), "the server was not ready after 10 minutes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.ready = started.elapsed();
        server.rss_ready = server.memory().0;
        Ok(server)
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// (resident now, resident at its highest), in bytes, from
    /// `/proc/<pid>/status` (zeros where there is no `/proc`).
    pub(super) fn memory(&self) -> (u64, u64) {
        let Some(status) = self.pid().and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        else {
            return (0, 0);
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |kib| kib * 1024)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Stops the server; its log is kept when `failed`.
    pub(super) async fn shutdown(mut self, failed: bool) {
        self.child.start_kill().ok();
        self.child.wait().await.ok();
        if failed {
            eprintln!("the server's log: {}", self.log.display());
        } else {
            std::fs::remove_file(&self.log).ok();
        }
    }

    /// Adds the memory figures, stops the server, and returns the run's
    /// figures (or the measurement's error, with the server's log).
    async fn stop(mut self, figures: anyhow::Result<RunFigures>) -> anyhow::Result<RunFigures> {
        let (rss_after, rss_peak) = self.memory();
        self.child.start_kill().ok();
        self.child.wait().await.ok();
        let mut figures = figures.with_context(|| format!("the server's log: {}", self.log.display()))?;
        figures.rss_after = rss_after;
        figures.rss_peak = rss_peak;
        std::fs::remove_file(&self.log).ok();
        Ok(figures)
    }
}

async fn scalar_i64(db: &DatabaseConnection, sql: &str, values: Vec<DbValue>) -> anyhow::Result<Vec<i64>> {
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(db.get_database_backend(), sql, values))
        .await
        .context("setup")?;
    rows.iter().map(|r| r.try_get_by_index::<i64>(0).map_err(Into::into)).collect()
}

/// The staff member's token, and the tags and customers the cases use.
async fn find_subject(settings: &Settings, login: &str) -> anyhow::Result<Subject> {
    let db = crate::db::connect(&settings.database_url).await?;
    let member = staff::Entity::find()
        .filter(staff::Column::Login.eq(login))
        .one(&db)
        .await?
        .with_context(|| format!("no staff member {login:?} (`--login`)"))?;
    let home = org_unit::Entity::find_by_id(member.home_org_unit_id).one(&db).await?.context("home unit")?;
    let keys = JwtKeys::load(&db, settings).await?;
    let token = keys.mint(&member, Duration::from_secs(6 * 3600))?;
    let pg = db.get_database_backend() == DbBackend::Postgres;
    let p = |i: usize| if pg { format!("${i}") } else { "?".to_owned() };
    let subtree = format!("{}%", home.path);
    // A sample of the customers in scope (the first by id) tells which
    // tags are common there, without counting millions of assignments.
    let sample = format!(
        "SELECT c.id FROM customer c JOIN org_unit o ON o.id = c.org_unit_id WHERE o.path LIKE {} ORDER BY c.id LIMIT 2000",
        p(1)
    );
    let common = scalar_i64(
        &db,
        &format!(
            "SELECT x.tag_id FROM customer_tag x JOIN tag t ON t.id = x.tag_id
             WHERE t.status = 'ACTIVE' AND x.customer_id IN ({sample})
             GROUP BY x.tag_id ORDER BY count(*) DESC, x.tag_id LIMIT 3"
        ),
        vec![subtree.clone().into()],
    )
    .await?;
    let segment = match common.as_slice() {
        [a, b, c] => format!("anyTag(#{a}, #{b}) AND NOT tag(#{c})"),
        [a, b] => format!("anyTag(#{a}, #{b})"),
        [a] => format!("tag(#{a})"),
        _ => bail!("no tagged customers under {} (generate data with `tagbase bench segments`)", home.path),
    };
    // The write cases use a tag of a non-exclusive group (adding it
    // replaces nothing, so removing it restores the customer exactly):
    // the rarest such tag in the sample.
    let probe = scalar_i64(
        &db,
        &format!(
            "SELECT x.tag_id FROM customer_tag x JOIN tag t ON t.id = x.tag_id JOIN tag_group g ON g.id = t.group_id
             WHERE t.status = 'ACTIVE' AND g.exclusive = {} AND x.customer_id IN ({sample})
             GROUP BY x.tag_id ORDER BY count(*), x.tag_id LIMIT 1",
            if pg { "false" } else { "0" }
        ),
        vec![subtree.clone().into()],
    )
    .await?;
    let probe_tag = *probe.first().context("no tag of a non-exclusive group in use")?;
    let untagged = scalar_i64(
        &db,
        &format!(
            "SELECT c.id FROM customer c JOIN org_unit o ON o.id = c.org_unit_id WHERE o.path LIKE {}
             AND NOT EXISTS (SELECT 1 FROM customer_tag x WHERE x.customer_id = c.id AND x.tag_id = {})
             ORDER BY c.id LIMIT 4000",
            p(1),
            p(2)
        ),
        vec![subtree.clone().into(), probe_tag.into()],
    )
    .await?;
    ensure!(!untagged.is_empty(), "every customer in scope has tag {probe_tag}");
    let customers = scalar_i64(
        &db,
        &format!("SELECT count(*) FROM customer c JOIN org_unit o ON o.id = c.org_unit_id WHERE o.path LIKE {}", p(1)),
        vec![subtree.into()],
    )
    .await?;
    db.close().await.ok();
    Ok(Subject { token, customers: customers.first().copied().unwrap_or(0) as u64, segment, probe_tag, untagged })
}

/// Sends one GraphQL request; a [`Refused`] error when the answer is not a
/// success.
pub(super) async fn post(client: &reqwest::Client, url: &str, token: &str, body: &Value) -> anyhow::Result<Value> {
    let response = client.post(url).bearer_auth(token).json(body).send().await?;
    let status = response.status();
    let answer: Value = response.json().await?;
    if !status.is_success() || answer.get("errors").is_some() {
        return Err(Refused { status, answer }.into());
    }
    Ok(answer)
}

/// A GraphQL answer that was not a success: its HTTP status and body.
#[derive(Debug)]
pub(super) struct Refused {
    pub status: reqwest::StatusCode,
    pub answer: Value,
}

impl Refused {
    /// The code of the first error (`extensions.code`), if any.
    pub fn code(&self) -> Option<&str> {
        self.answer["errors"][0]["extensions"]["code"].as_str()
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.answer)
    }
}

impl std::error::Error for Refused {}

/// Makes the body of a worker's next request.
type NextBody = Box<dyn FnMut() -> Value + Send>;

/// Runs the workers for the warm-up, then for `duration`, and returns the
/// figures of the measured part.
async fn load(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    bodies: Vec<NextBody>,
    duration: Duration,
) -> anyhow::Result<Load> {
    let warm_up = (duration / 5).min(Duration::from_secs(1));
    let start = Instant::now() + warm_up;
    let end = start + duration;
    let workers: Vec<_> = bodies
        .into_iter()
        .map(|mut next| {
            let (client, url, token) = (client.clone(), url.to_owned(), token.to_owned());
            tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    post(&client, &url, &token, &next()).await?;
                    if sent >= start {
                        times.push(sent.elapsed());
                    }
                }
                anyhow::Ok(times)
            })
        })
        .collect();
    let mut times = Vec::new();
    for worker in workers {
        times.extend(worker.await??);
    }
    ensure!(!times.is_empty(), "no request completed within {duration:?}");
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(Load { per_second: times.len() as f64 / duration.as_secs_f64(), p50: at(0.5), p99: at(0.99) })
}

async fn measure(
    client: &reqwest::Client,
    server: &Server,
    subject: &Subject,
    bench: &ApiBench,
) -> anyhow::Result<RunFigures> {
    let url = format!("{}/graphql", server.base);
    let token = subject.token.as_str();
    let same = |body: Value| -> Vec<NextBody> {
        (0..bench.connections)
            .map(|_| {
                let body = body.clone();
                Box::new(move || body.clone()) as NextBody
            })
            .collect()
    };
    let count = json!({ "query": COUNT, "variables": { "t": subject.segment } });
    let count_and_page = json!({ "query": COUNT_AND_PAGE, "variables": { "t": subject.segment } });
    let page = json!({ "query": PAGE_WITH_TAGS });
    let wanted = |name: &str| bench.only.as_deref().is_none_or(|only| name.contains(only));
    let skipped = Load { per_second: f64::NAN, p50: Duration::ZERO, p99: Duration::ZERO };
    let mut cases = Vec::new();
    for (name, body) in CASES.iter().zip([count, count_and_page, page]) {
        cases.push(if wanted(name) { load(client, &url, token, same(body), bench.duration).await? } else { skipped });
    }
    // Tag then untag, each worker on customers of its own, so no two
    // requests wait on the same customer.
    let tag = subject.probe_tag;
    let singles: Vec<NextBody> = (0..bench.connections)
        .map(|w| {
            let mine: Vec<i64> = subject.untagged.iter().copied().skip(w).step_by(bench.connections).collect();
            let mut step = 0usize;
            Box::new(move || {
                let customer = mine[(step / 2) % mine.len()];
                let query = if step.is_multiple_of(2) { TAG } else { UNTAG };
                step += 1;
                json!({ "query": query, "variables": { "c": [customer], "t": [tag] } })
            }) as NextBody
        })
        .collect();
    ensure!(subject.untagged.len() >= bench.connections, "fewer customers without the probe tag than connections");
    if wanted(CASES[3]) {
        let singles = load(client, &url, token, singles, bench.duration).await;
        // Whatever the outcome, untag every customer the workers may have
        // left tagged (a request cut off by the end of the case included).
        restore(client, &url, token, subject).await?;
        cases.push(singles?);
    } else {
        cases.push(skipped);
    }
    let bulk_per_second =
        if wanted("bulk tagging") { bulk(client, &url, token, subject, bench).await? } else { f64::NAN };
    Ok(RunFigures {
        ready: server.ready,
        cases,
        bulk_per_second,
        rss_ready: server.rss_ready,
        rss_after: 0,
        rss_peak: 0,
    })
}

/// Removes the probe tag from every customer the write cases use.
async fn restore(client: &reqwest::Client, url: &str, token: &str, subject: &Subject) -> anyhow::Result<()> {
    // Chunks below the bulk threshold: plain calls, no change requests.
    for chunk in subject.untagged.chunks(100) {
        post(client, url, token, &json!({ "query": UNTAG, "variables": { "c": chunk, "t": [subject.probe_tag] } }))
            .await?;
    }
    Ok(())
}

/// Bulk tagging calls: assignments per second of the tagging call (each
/// followed by an untagging call that is not timed).
async fn bulk(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    subject: &Subject,
    bench: &ApiBench,
) -> anyhow::Result<f64> {
    let customers = &subject.untagged[..bench.bulk.min(subject.untagged.len())];
    let variables = json!({ "c": customers, "t": [subject.probe_tag] });
    let mut rates = Vec::new();
    for _ in 0..bench.bulk_calls {
        let started = Instant::now();
        let answer = post(client, url, token, &json!({ "query": TAG, "variables": variables })).await;
        let took = started.elapsed();
        let untagged = post(client, url, token, &json!({ "query": UNTAG, "variables": variables })).await;
        let answer = answer?;
        untagged?;
        let payload = &answer["data"]["tagCustomers"];
        ensure!(payload["applied"] == true, "the bulk call was not applied (a change request?): {answer}");
        ensure!(payload["added"] == customers.len(), "the bulk call added {} of {}", payload["added"], customers.len());
        rates.push(customers.len() as f64 / took.as_secs_f64());
    }
    Ok(median(&mut rates))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// `median (min–max)` of the runs, or the single value.
fn spread(values: &[f64], show: impl Fn(f64) -> String) -> String {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return "–".to_owned();
    }
    let mid = median(&mut sorted);
    match (sorted.first(), sorted.last()) {
        (Some(lo), Some(hi)) if sorted.len() > 1 => format!("{} ({}–{})", show(mid), show(*lo), show(*hi)),
        _ => show(mid),
    }
}

fn per_second(v: f64) -> String {
    format!("{v:.0}")
}

fn millis(v: f64) -> String {
    format!("{v:.1} ms")
}

fn mib(v: f64) -> String {
    format!("{:.0} MiB", v / (1024.0 * 1024.0))
}

fn print_tables(settings: &Settings, bench: &ApiBench, subject: &Subject, runs: &[RunFigures]) {
    let database = if settings.database_url.starts_with("postgres") { "PostgreSQL" } else { "SQLite" };
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    println!(
        "{database}, {} customers in scope of `{}`; {} connections (HTTP/1.1 keep-alive), {:.0} s per case, {} run(s); \
         server: this binary as a child process, client: this process; {cores} cores shared by both.",
        subject.customers,
        bench.login,
        bench.connections,
        bench.duration.as_secs_f64(),
        runs.len()
    );
    println!("Segment: `{}`.", subject.segment);
    println!();
    println!("| case | requests/s | p50 | p99 |");
    println!("|---|---|---|---|");
    for (i, name) in CASES.iter().enumerate() {
        let of = |f: fn(&Load) -> f64| runs.iter().map(|r| f(&r.cases[i])).collect::<Vec<_>>();
        println!(
            "| {name} | {} | {} | {} |",
            spread(&of(|l| l.per_second), per_second),
            spread(&of(|l| if l.per_second.is_nan() { f64::NAN } else { l.p50.as_secs_f64() * 1000.0 }), millis),
            spread(&of(|l| if l.per_second.is_nan() { f64::NAN } else { l.p99.as_secs_f64() * 1000.0 }), millis),
        );
    }
    let of = |f: fn(&RunFigures) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| single tag ops/s ({} connections, one customer and one tag per call) | {} |",
        bench.connections,
        spread(&runs.iter().map(|r| r.cases[3].per_second).collect::<Vec<_>>(), per_second)
    );
    println!(
        "| bulk assignments/s ({} customers per call, one call at a time) | {} |",
        bench.bulk.min(subject.untagged.len()),
        spread(&of(|r| r.bulk_per_second), per_second)
    );
    println!(
        "| index build (server start → `/readyz`) | {} |",
        spread(&of(|r| r.ready.as_secs_f64()), |s| format!("{s:.2} s"))
    );
    println!("| server RSS once ready | {} |", spread(&of(|r| r.rss_ready as f64), mib));
    println!("| server RSS after the load (steady) | {} |", spread(&of(|r| r.rss_after as f64), mib));
    println!("| server RSS peak (VmHWM) | {} |", spread(&of(|r| r.rss_peak as f64), mib));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_code_of_its_first_error() {
        let timeout = Refused {
            status: reqwest::StatusCode::GATEWAY_TIMEOUT,
            answer: serde_json::json!({ "errors": [{ "message": "the request took longer than 30 s",
                "extensions": { "code": "TIMEOUT" } }] }),
        };
        assert_eq!(timeout.code(), Some("TIMEOUT"));
        let wrapped: anyhow::Error = timeout.into();
        assert_eq!(wrapped.downcast_ref::<Refused>().and_then(Refused::code), Some("TIMEOUT"));
        // A message that merely mentions the word is no timeout.
        let other = Refused {
            status: reqwest::StatusCode::OK,
            answer: serde_json::json!({ "errors": [{ "message": "TIMEOUT in a name",
                "extensions": { "code": "VALIDATION" } }] }),
        };
        assert_eq!(other.code(), Some("VALIDATION"));
    }
}
