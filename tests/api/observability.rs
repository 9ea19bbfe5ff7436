//! Metrics, trace context, the access log and the rate limits, through the
//! real router (on a real port where the peer address matters).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tagbase::config::{Limits, Rate, Settings};
use tagbase::startup::Application;

use crate::helpers::{TEST_JWT_SECRET, TestApp};
use crate::{on_both_databases, on_both_databases_with};

/// The application on a real port, with peer addresses (as `serve` does),
/// and its metrics listener on another.
struct Running {
    base: String,
    metrics: String,
    client: reqwest::Client,
}

async fn serve_on_port(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    base
}

async fn start(app: &Application) -> Running {
    Running {
        base: serve_on_port(app.router()).await,
        metrics: serve_on_port(app.metrics_router()).await,
        client: reqwest::Client::new(),
    }
}

impl Running {
    async fn post(&self, token: Option<&str>, body: Value) -> reqwest::Response {
        let mut req = self.client.post(format!("{}/graphql", self.base)).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send().await.unwrap()
    }

    async fn scrape(&self) -> String {
        let res = self.client.get(format!("{}/metrics", self.metrics)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.text().await.unwrap()
    }
}

/// The value of the series `name` whose labels include every pair given
/// (0 when there is none).
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(key, _)| {
            let (metric, rest) = key.split_once('{').unwrap_or((key, ""));
            metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"].as_str().unwrap_or("")
}

async fn metrics_listener_exposes_the_named_series(app: TestApp) {
    let token = app.token("sz01.manager");
    let server = start(&app.app).await;
    let before = server.scrape().await;
    // Series are process-wide and tests run in parallel: a name of our own.
    let name = format!("ObserveProbe{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let probe = json!({ "query": format!("query {name} {{ me {{ staff {{ login }} }} }}") });

    for _ in 0..3 {
        let res = server.post(Some(&token), probe.clone()).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = server.post(Some(&token), json!({ "query": "{ noSuchField }" })).await;
    assert_eq!(code(&res.json::<Value>().await.unwrap()), "VALIDATION");
    let res = server.post(None, probe.clone()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    let after = server.scrape().await;
    let ok = [("operation", name.as_str()), ("outcome", "ok")];
    assert_eq!(series(&after, "tagbase_graphql_requests_total", &ok), 3.0, "{after}");
    // Process-wide counters: other tests run meanwhile, so compare growth.
    for code in ["VALIDATION", "UNAUTHENTICATED"] {
        let grown = series(&after, "tagbase_graphql_errors_total", &[("code", code)])
            - series(&before, "tagbase_graphql_errors_total", &[("code", code)]);
        assert!(grown >= 1.0, "{code} errors counted: {after}");
    }
    let invalid = [("operation", "anonymous"), ("outcome", "VALIDATION")];
    assert!(series(&after, "tagbase_graphql_requests_total", &invalid) >= 1.0, "{after}");
    let latency = [("operation", name.as_str()), ("le", "30")];
    assert_eq!(series(&after, "tagbase_graphql_request_duration_seconds_bucket", &latency), 3.0, "{after}");
    assert!(
        after.contains(&format!(
            "tagbase_graphql_request_duration_seconds_bucket{{operation=\"{name}\",le=\"0.0001\"}}"
        ))
    );
    for gauge in [
        "tagbase_db_pool_max_connections",
        "tagbase_segment_index_customers",
        "tagbase_segment_index_bitmaps",
        "tagbase_segment_index_bytes",
    ] {
        assert!(series(&after, gauge, &[]) > 0.0, "{gauge}: {after}");
    }
    assert!(series(&after, "tagbase_db_pool_connections", &[("state", "idle")]) >= 0.0);
    assert!(after.contains("tagbase_segment_index_lag_events "), "{after}");
    assert!(after.contains("tagbase_tag_event_log_max_seq "), "{after}");

    // Not on the main listener unless the operator allows it.
    let main = server.client.get(format!("{}/metrics", server.base)).send().await.unwrap();
    assert_eq!(main.status(), StatusCode::NOT_FOUND);
}

async fn the_index_lag_shows_events_not_yet_applied(app: TestApp) {
    let server = start(&app.app).await;
    let scrape = server.scrape().await;
    assert_eq!(series(&scrape, "tagbase_segment_index_lag_events", &[]), 0.0, "{scrape}");
    // A write behind the index's back (as another instance's would be),
    // with no follower running in tests.
    let sz01 = app.customers_of("sz01").await;
    let tag = app.tag_id("活动", "询价").await;
    let other = app.second_instance().await;
    let res = app
        .gql_on(
            &other,
            "admin",
            "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }",
            json!({ "c": [sz01[0]], "t": [tag] }),
        )
        .await;
    res.ok();
    let scrape = server.scrape().await;
    assert!(series(&scrape, "tagbase_segment_index_lag_events", &[]) >= 1.0, "{scrape}");
    app.app.state.index.catch_up(&app.db).await.unwrap();
    let scrape = server.scrape().await;
    assert_eq!(series(&scrape, "tagbase_segment_index_lag_events", &[]), 0.0, "{scrape}");
}

async fn metrics_on_the_main_listener_need_audit_log_read(app: TestApp) {
    let mut settings = Settings::for_database(app.app.state.settings.database_url.clone());
    settings.jwt_secret = Some(TEST_JWT_SECRET.to_owned());
    settings.index_follow_interval = None;
    settings.metrics_on_main = true;
    let instance = Application::with_database(settings, app.db.clone()).await.unwrap();
    let server = start(&instance).await;
    let url = format!("{}/metrics", server.base);
    let res = server.client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(code(&res.json().await.unwrap()), "UNAUTHENTICATED");
    let res = server.client.get(&url).bearer_auth(app.token("sz01.sales")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(code(&res.json().await.unwrap()), "FORBIDDEN");
    let res = server.client.get(&url).bearer_auth(app.token("hq.auditor")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("tagbase_segment_index_customers"));
}

async fn traceparent_is_joined_and_a_fresh_one_is_started(app: TestApp) {
    let token = app.token("sz01.manager");
    let server = start(&app.app).await;
    let query = json!({ "query": "{ me { staff { login } } }" });
    let joined = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut seen = Vec::new();
    for incoming in [Some(joined), None, Some("00-not-a-trace-01")] {
        let mut req = server.client.post(format!("{}/graphql", server.base)).bearer_auth(&token).json(&query);
        if let Some(value) = incoming {
            req = req.header("traceparent", value);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let header = res.headers()["traceparent"].to_str().unwrap().to_owned();
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4, "{header}");
        assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16), "{header}");
        assert_ne!(parts[2], "00f067aa0ba902b7", "the server answers with its own span");
        seen.push(parts[1].to_owned());
    }
    assert_eq!(seen[0], "4bf92f3577b34da6a3ce929d0e0e4736", "an incoming trace is joined");
    assert_ne!(seen[1], seen[0]);
    assert_ne!(seen[2], seen[0]);
    assert_ne!(seen[2], seen[1], "an invalid traceparent starts a fresh trace");
}

/// Log lines written while `f` runs on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

async fn the_access_log_and_every_request_line_carry_the_trace_id(app: TestApp) {
    use tower::ServiceExt as _;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("info,tagbase::auth=debug")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let token = app.token("sz01.manager");
    let staff_id = app.staff("sz01.manager").id;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let request = |token: &str| {
        axum::http::Request::post("/graphql")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
            .body(axum::body::Body::from(r#"{"query":"query WhoAmI { me { staff { login } } }"}"#))
            .unwrap()
    };
    // The router runs on this thread (no spawn), so the thread's default
    // subscriber sees every line.
    let guard = tracing::subscriber::set_default(subscriber);
    // Other tests register subscribers on their threads at the same time;
    // a registration that began before ours can store callsite interests
    // computed without ours after ours stored its own (once, in CI: no
    // access line captured). Computed again now, with ours in place.
    tracing::callsite::rebuild_interest_cache();
    let ok = app.app.router().oneshot(request(&token)).await.unwrap();
    let refused = app.app.router().oneshot(request("not-a-token")).await.unwrap();
    drop(guard);
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let request_id = ok.headers()["x-request-id"].to_str().unwrap().to_owned();
    let logs = captured.text();
    let _ = std::io::stderr().flush();

    let access: Vec<&str> = logs.lines().filter(|l| l.contains("tagbase::access")).collect();
    assert_eq!(access.len(), 2, "one access line per request:\n{logs}");
    let line = access[0];
    for field in [
        "method=POST".to_owned(),
        "path=/graphql".to_owned(),
        "operation=WhoAmI".to_owned(),
        "status=200".to_owned(),
        "outcome=ok".to_owned(),
        "duration_ms=".to_owned(),
        format!("request_id={request_id}"),
        format!("trace_id={trace}"),
        format!("staff_id={staff_id}"),
    ] {
        assert!(line.contains(&field), "{field} missing from {line}");
    }
    assert!(access[1].contains("status=401") && access[1].contains("outcome=UNAUTHENTICATED"), "{}", access[1]);
    assert!(access[1].contains("staff_id=-"), "{}", access[1]);
    assert!(!logs.contains(&token) && !logs.contains("not-a-token") && !logs.contains("Bearer"), "{logs}");
    // A line written inside the request (the refused token, at debug)
    // carries the trace id through the request's span.
    let inner = logs.lines().find(|l| l.contains("token refused")).unwrap_or_else(|| panic!("{logs}"));
    assert!(inner.contains(&format!("trace_id={trace}")), "{inner}");
    // No per-field spans at info.
    assert!(!logs.contains("async_graphql::graphql"), "{logs}");
}

async fn requests_over_the_address_rate_get_429(app: TestApp) {
    let server = start(&app.app).await;
    let query = json!({ "query": "{ __typename }" });
    // Without a token: the address limit comes before sign-in.
    for _ in 0..2 {
        assert_eq!(server.post(None, query.clone()).await.status(), StatusCode::UNAUTHORIZED);
    }
    let res = server.post(None, query.clone()).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(code(&body), "LIMIT_EXCEEDED", "{body}");
    assert!(body["data"].is_null());
    // Probes and scrapes are never limited.
    for _ in 0..5 {
        let health = server.client.get(format!("{}/healthz", server.base)).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }
    let scrape = server.scrape().await;
    assert!(series(&scrape, "tagbase_rate_limited_total", &[("key", "address")]) >= 1.0, "{scrape}");
}

async fn requests_over_the_staff_rate_get_429_and_other_staff_are_served(app: TestApp) {
    let server = start(&app.app).await;
    let query = json!({ "query": "{ me { staff { login } } }" });
    let busy = app.token("sz01.sales");
    for _ in 0..2 {
        assert_eq!(server.post(Some(&busy), query.clone()).await.status(), StatusCode::OK);
    }
    let res = server.post(Some(&busy), query.clone()).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(code(&body), "LIMIT_EXCEEDED", "{body}");
    assert!(body["data"].is_null(), "{body}");
    let other = server.post(Some(&app.token("sz01.manager")), query.clone()).await;
    assert_eq!(other.status(), StatusCode::OK);
    let other: Value = other.json().await.unwrap();
    assert_eq!(other["data"]["me"]["staff"]["login"], "sz01.manager");
}

on_both_databases!(
    metrics_listener_exposes_the_named_series,
    the_index_lag_shows_events_not_yet_applied,
    metrics_on_the_main_listener_need_audit_log_read,
    traceparent_is_joined_and_a_fresh_one_is_started,
    the_access_log_and_every_request_line_carry_the_trace_id,
);

on_both_databases_with!(
    requests_over_the_address_rate_get_429 => Limits {
        rate_per_address: Rate { per_second: 1, burst: 2 },
        ..Limits::default()
    },
    requests_over_the_staff_rate_get_429_and_other_staff_are_served => Limits {
        rate_per_staff: Rate { per_second: 1, burst: 2 },
        ..Limits::default()
    },
);
