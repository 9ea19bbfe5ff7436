//! Through the real router on a real port: sign-in, health, limits.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tagbase::config::Limits;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};

use crate::helpers::TestApp;
use crate::on_both_databases;

pub struct Running {
    pub base: String,
    pub client: reqwest::Client,
    pub app: TestApp,
}

pub async fn start(app: TestApp) -> Running {
    let router = app.app.router();
    start_with(app, router).await
}

/// Serves `router` (built on `app`'s database) on a port of its own.
pub async fn start_with(app: TestApp, router: axum::Router) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Running { base, client: reqwest::Client::new(), app }
}

impl Running {
    pub fn url(&self) -> String {
        format!("{}/graphql", self.base)
    }

    pub async fn post(&self, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let mut req = self.client.post(format!("{}/graphql", self.base)).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

pub fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"].as_str().unwrap_or("")
}

async fn requests_without_a_valid_token_are_unauthenticated(app: TestApp) {
    let deactivated = app.staff("bj01.sales").id;
    let foreign_keys =
        tagbase::auth::JwtKeys::from_secret(b"another-secret-another-secret-123", "tagbase", "tagbase-api");
    let foreign = foreign_keys.mint(app.staff("admin"), std::time::Duration::from_secs(60)).unwrap();
    let deactivated_token = app.token("bj01.sales");
    entity::staff::Entity::update_many()
        .col_expr(entity::staff::Column::Active, Expr::value(false))
        .filter(entity::staff::Column::Id.eq(deactivated))
        .exec(&app.db)
        .await
        .unwrap();
    let server = start(app).await;
    let query = json!({ "query": "{ me { staff { login } } }" });
    for token in [None, Some("garbage"), Some(foreign.as_str()), Some(deactivated_token.as_str())] {
        let (status, body) = server.post(token, query.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        assert_eq!(code(&body), "UNAUTHENTICATED", "{body}");
        assert!(body["data"].is_null());
    }
    // Even introspection needs a token.
    let (status, _) = server.post(None, json!({ "query": "{ __schema { queryType { name } } }" })).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn a_valid_token_reaches_the_api(app: TestApp) {
    let token = app.token("sz01.manager");
    let server = start(app).await;
    let (status, body) = server.post(Some(&token), json!({ "query": "{ me { staff { login } } }" })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["me"]["staff"]["login"], "sz01.manager");
}

async fn health_and_readiness_answer(app: TestApp) {
    // Ready once the segment index is built (the app builds it in the
    // background; build it here so the test does not race it).
    app.app.state.index.rebuild(&app.db).await.unwrap();
    let server = start(app).await;
    let health = server.client.get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = server.client.get(format!("{}/readyz", server.base)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let body = ready.json::<Value>().await.unwrap();
    assert_eq!((body["database"].as_str(), body["segmentIndex"].as_str()), (Some("ok"), Some("ready")));
    // Every response carries a request id.
    assert!(health.headers().contains_key("x-request-id"));
}

/// An instance whose segment index is not built yet is not ready: 503,
/// saying the index is building, until its build has run.
async fn readiness_waits_for_the_segment_index(app: TestApp) {
    let instance = app.instance_with(|_| {}).await;
    let index = instance.state.index.clone();
    let db = app.db.clone();
    let server = start_with(app, instance.router()).await;
    let ready = server.client.get(format!("{}/readyz", server.base)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = ready.json::<Value>().await.unwrap();
    assert_eq!(
        body,
        json!({ "status": "not ready", "reason": "index building", "database": "ok", "segmentIndex": "building" })
    );
    index.rebuild(&db).await.unwrap();
    let ready = server.client.get(format!("{}/readyz", server.base)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.json::<Value>().await.unwrap()["segmentIndex"], "ready");
}

async fn get_serves_the_playground_to_browsers_only(app: TestApp) {
    let token = app.token("admin");
    let server = start(app).await;
    let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
    let res = server.client.get(server.url()).header("accept", browser).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let body = res.text().await.unwrap();
    assert!(body.contains("graphiql"), "a browser gets GraphiQL");
    // Anything else asking by GET gets the query executed.
    let res =
        server.client.get(format!("{}?query=%7B__typename%7D", server.url())).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({ "data": { "__typename": "Query" } }));
}

async fn oversized_bodies_are_refused(app: TestApp) {
    let token = app.token("admin");
    let limit = Limits::default().max_body_bytes;
    let server = start(app).await;
    let huge = format!("{{ me {{ staff {{ login }} }} }} #{}", "x".repeat(limit));
    let res = server
        .client
        .post(format!("{}/graphql", server.base))
        .bearer_auth(&token)
        .json(&json!({ "query": huge }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = res.json().await.unwrap();
    assert_eq!(code(&body), "LIMIT_EXCEEDED", "{body}");
}

async fn too_deep_queries_are_refused(app: TestApp) {
    let token = app.token("admin");
    let server = start(app).await;
    let deep = "{ me { staff { homeOrgUnit { parent { parent { parent { parent { parent { parent { parent { parent { parent { parent { parent { name } } } } } } } } } } } } } } }";
    let (_, body) = server.post(Some(&token), json!({ "query": deep })).await;
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("nested too deep"), "{body}");
    assert_eq!(code(&body), "LIMIT_EXCEEDED");
    assert!(body["data"].is_null());
}

async fn alias_floods_are_refused_as_too_complex(app: TestApp) {
    let token = app.token("admin");
    let server = start(app).await;
    let aliases: String = (0..2000).map(|i| format!("a{i}: me {{ staff {{ login }} }} ")).collect();
    let (_, body) = server.post(Some(&token), json!({ "query": format!("{{ {aliases} }}") })).await;
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("too many"), "{body}");
    assert_eq!(code(&body), "LIMIT_EXCEEDED");
    assert!(body["data"].is_null());
}

async fn slow_requests_time_out(backend: crate::helpers::Backend) {
    // A zero timeout: any request that waits on the database runs out.
    let limits = Limits { request_timeout: std::time::Duration::ZERO, ..Limits::default() };
    let app = TestApp::spawn_with(backend, limits).await;
    let token = app.token("admin");
    // The request must wait on the database whatever the machine's speed:
    // a transaction holds the audit log (PostgreSQL) or the only pooled
    // connection (SQLite) until the answer is in.
    let blocker = {
        use sea_orm::{ConnectionTrait, DbBackend, TransactionTrait};
        let txn = app.db.begin().await.unwrap();
        if app.db.get_database_backend() == DbBackend::Postgres {
            txn.execute_unprepared("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE").await.unwrap();
        }
        txn
    };
    let server = start(app).await;
    let res = server
        .client
        .post(server.url())
        .bearer_auth(&token)
        .header("x-request-id", "slow-1")
        // The audit log is read from the database (customer counts may come
        // from the in-memory index without waiting at all).
        .json(&json!({ "query": "{ auditLog(first: 1) { totalCount } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    assert_eq!(res.headers()["x-request-id"], "slow-1");
    let body: Value = res.json().await.unwrap();
    assert_eq!(code(&body), "TIMEOUT", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["requestId"], "slow-1");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("request timeout"), "{body}");
    blocker.rollback().await.unwrap();
}

mod slow_requests_time_out {
    use crate::helpers::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::slow_requests_time_out(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::slow_requests_time_out(Backend::Postgres).await;
    }
}

async fn errors_carry_the_request_id(app: TestApp) {
    let token = app.token("admin");
    let server = start(app).await;
    let res = server
        .client
        .post(format!("{}/graphql", server.base))
        .bearer_auth(&token)
        .header("x-request-id", "req-42")
        .json(&json!({ "query": "{ customer(id: \"abc\") { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "req-42");
    let body: Value = res.json().await.unwrap();
    assert_eq!(code(&body), "VALIDATION");
    assert_eq!(body["errors"][0]["extensions"]["requestId"], "req-42");
    assert_eq!(body["errors"][0]["extensions"]["field"], "id");
}

on_both_databases!(
    requests_without_a_valid_token_are_unauthenticated,
    a_valid_token_reaches_the_api,
    health_and_readiness_answer,
    readiness_waits_for_the_segment_index,
    get_serves_the_playground_to_browsers_only,
    oversized_bodies_are_refused,
    too_deep_queries_are_refused,
    alias_floods_are_refused_as_too_complex,
    errors_carry_the_request_id,
);

/// A timed-out request drops its future; PostgreSQL must not go on running
/// its query. (SQLite runs in-process and stops with the future.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_statements_are_cut_off_at_the_request_timeout() {
    use sea_orm::ConnectionTrait;
    let test_db = crate::helpers::TestDb::new(crate::helpers::Backend::Postgres).await;
    let db = tagbase::db::connect_with(&test_db.url, std::time::Duration::from_millis(200)).await.unwrap();
    let slow = db.execute_unprepared("SELECT pg_sleep(5)").await.expect_err("the statement is cancelled");
    assert!(format!("{slow}").contains("statement timeout"), "{slow}");
    db.close().await.unwrap();
}
