//! Test harness: a fresh database per test (SQLite file or a uniquely named
//! PostgreSQL database), the real application built on it, demo staff and
//! library, and helpers to run GraphQL as a given staff member.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use entity::enums::AuditOutcome;
use entity::{audit_log, customer, customer_tag, org_unit, staff, tag, tag_event, tag_group};
use sea_orm::{ColumnTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use tagbase::config::{Limits, Settings};
use tagbase::startup::Application;

/// The PostgreSQL server tests create their databases on. Override with
/// `TAGBASE_TEST_POSTGRES_URL` (a URL of any existing database there).
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const TEST_JWT_SECRET: &str = "test-secret-test-secret-test-secret!";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each listed `async fn name(app: TestApp)` on SQLite and PostgreSQL,
/// as tests `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::helpers::TestApp::spawn($crate::helpers::Backend::Sqlite).await).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::helpers::TestApp::spawn($crate::helpers::Backend::Postgres).await).await;
                }
            }
        )+
    };
}

/// As [`on_both_databases`], with the application built with these limits:
/// `on_both_databases_with!(name => Limits { .. })`.
#[macro_export]
macro_rules! on_both_databases_with {
    ($($name:ident => $limits:expr),+ $(,)?) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let app = $crate::helpers::TestApp::spawn_with($crate::helpers::Backend::Sqlite, $limits).await;
                    super::$name(app).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let app = $crate::helpers::TestApp::spawn_with($crate::helpers::Backend::Postgres, $limits).await;
                    super::$name(app).await;
                }
            }
        )+
    };
}

/// A database that exists for one test only.
pub struct TestDb {
    pub url: String,
    /// PostgreSQL: (server URL, database name) to drop afterwards.
    drop_pg: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                Self { url, drop_pg: None, _dir: Some(dir) }
            }
            Backend::Postgres => {
                let server = std::env::var("TAGBASE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
                let name = format!("tagbase_test_{}", uuid::Uuid::new_v4().simple());
                let admin = Database::connect(server.as_str())
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at {server} is needed for the postgres tests: {e}"));
                admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.expect("create test database");
                admin.close().await.ok();
                let base = server.rsplit_once('/').map(|(b, _)| b).unwrap_or(&server);
                Self { url: format!("{base}/{name}"), drop_pg: Some((server.clone(), name)), _dir: None }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((server, name)) = self.drop_pg.take() {
            // Drop runs inside the test's runtime: use a runtime of our own
            // on another thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async {
                    if let Ok(admin) = Database::connect(server.as_str()).await {
                        let _ =
                            admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
                        let _ = admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}

/// The application on a fresh database, with the demo organisation, staff
/// and tag library and a few demo customers per store.
pub struct TestApp {
    pub app: Application,
    pub db: DatabaseConnection,
    statements: Arc<AtomicUsize>,
    staff: HashMap<String, staff::Model>,
    units: HashMap<String, i64>,
    _test_db: TestDb,
}

/// Demo customers per store in tests.
pub const TEST_CUSTOMERS_PER_STORE: usize = 6;

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, Limits::default()).await
    }

    pub async fn spawn_with(backend: Backend, limits: Limits) -> Self {
        Self::spawn_configured(backend, |settings| settings.limits = limits).await
    }

    /// As [`spawn`](Self::spawn), with settings changed by `configure`.
    pub async fn spawn_configured(backend: Backend, configure: impl FnOnce(&mut Settings)) -> Self {
        let test_db = TestDb::new(backend).await;
        let mut db = tagbase::db::connect(&test_db.url).await.expect("connect");
        let statements = Arc::new(AtomicUsize::new(0));
        let counter = statements.clone();
        db.set_metric_callback(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        tagbase::db::migrate(&db).await.expect("migrate");
        let mut settings = Settings::for_database(test_db.url.clone());
        settings.jwt_secret = Some(TEST_JWT_SECRET.to_owned());
        configure(&mut settings);
        // No background follower: statement counts stay exact, and the
        // index is caught up after the seed below and after every write
        // made through the API.
        settings.index_follow_interval = None;
        let app = Application::with_database(settings, db.clone()).await.expect("build app");
        let offset = app.state.settings.utc_offset;
        tagbase::seed::seed_demo_sized(&db, &app.state.authz, TEST_CUSTOMERS_PER_STORE, offset).await.expect("seed");
        // The seed wrote behind the application's back: bring its segment
        // index up to date now rather than at the follower's next round, so
        // tests see the index the way a caller after its own write does.
        app.state.index.rebuild(&db).await.expect("segment index");
        let staff = staff::Entity::find().all(&db).await.unwrap().into_iter().map(|s| (s.login.clone(), s)).collect();
        let units = org_unit::Entity::find().all(&db).await.unwrap().into_iter().map(|u| (u.code, u.id)).collect();
        Self { app, db, statements, staff, units, _test_db: test_db }
    }

    pub fn staff(&self, login: &str) -> &staff::Model {
        self.staff.get(login).unwrap_or_else(|| panic!("no demo staff {login}"))
    }

    /// Makes a staff member created by a test known to [`gql`](Self::gql).
    pub fn register(&mut self, member: staff::Model) {
        self.staff.insert(member.login.clone(), member);
    }

    pub fn unit(&self, code: &str) -> i64 {
        self.units[code]
    }

    /// The global id of an org unit, as the API shows it.
    pub fn unit_id(&self, code: &str) -> String {
        tagbase::domain::OrgUnitId(self.unit(code)).to_string()
    }

    pub fn token(&self, login: &str) -> String {
        self.app.state.keys.mint(self.staff(login), Duration::from_secs(3600)).expect("mint")
    }

    /// Runs a GraphQL operation in process, signed in as `login`.
    pub async fn gql(&self, login: &str, query: &str, variables: Value) -> Gql {
        self.gql_on(&self.app, login, query, variables).await
    }

    /// As [`gql`](Self::gql), on another instance of the application
    /// (sharing this database).
    pub async fn gql_on(&self, instance: &Application, login: &str, query: &str, variables: Value) -> Gql {
        let request = async_graphql::Request::new(query).variables(async_graphql::Variables::from_json(variables));
        let auth = format!("Bearer {}", self.token(login));
        // As the HTTP layer does: every request runs under a request id.
        let request_id = format!("test-{}", uuid::Uuid::new_v4().simple());
        let response = tagbase::request_id::scope(
            request_id,
            tagbase::http::execute(&instance.state, &instance.schema, Some(&auth), request),
        )
        .await
        .unwrap_or_else(|e| panic!("sign-in failed: {}", e.message()));
        Gql(serde_json::to_value(response).expect("response json"))
    }

    /// A second instance of the application on the same database, as a
    /// second server behind a load balancer would be.
    pub async fn second_instance(&self) -> Application {
        let mut settings = Settings::for_database(self._test_db.url.clone());
        settings.jwt_secret = Some(TEST_JWT_SECRET.to_owned());
        Application::with_database(settings, self.db.clone()).await.expect("second instance")
    }

    /// Another instance on the same database with settings of the test's
    /// choosing (OIDC, WeCom, leeway, dev tokens, …).
    pub async fn instance_with(&self, configure: impl FnOnce(&mut Settings)) -> Application {
        let mut settings = Settings::for_database(self._test_db.url.clone());
        settings.jwt_secret = Some(TEST_JWT_SECRET.to_owned());
        settings.index_follow_interval = None;
        configure(&mut settings);
        Application::with_database(settings, self.db.clone()).await.expect("instance")
    }

    /// Runs a GraphQL operation on `instance` with a raw bearer token:
    /// `Err(code)` when sign-in refuses it.
    pub async fn gql_bearer(
        &self,
        instance: &Application,
        bearer: &str,
        query: &str,
        variables: Value,
    ) -> Result<Gql, String> {
        let request = async_graphql::Request::new(query).variables(async_graphql::Variables::from_json(variables));
        let auth = format!("Bearer {bearer}");
        let request_id = format!("test-{}", uuid::Uuid::new_v4().simple());
        tagbase::request_id::scope(
            request_id,
            tagbase::http::execute(&instance.state, &instance.schema, Some(&auth), request),
        )
        .await
        .map(|response| Gql(serde_json::to_value(response).expect("response json")))
        .map_err(|e| e.code().as_str().to_owned())
    }

    /// Number of SQL statements run so far (through this connection).
    pub fn statements(&self) -> usize {
        self.statements.load(Ordering::SeqCst)
    }

    /// The id of an enterprise tag by group and name.
    pub async fn tag_id(&self, group: &str, name: &str) -> String {
        let group = tag_group::Entity::find()
            .filter(tag_group::Column::Name.eq(group))
            .one(&self.db)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no group {group}"));
        let tag = tag::Entity::find()
            .filter(tag::Column::GroupId.eq(group.id))
            .filter(tag::Column::Name.eq(name))
            .one(&self.db)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no tag {name}"));
        tagbase::domain::TagId(tag.id).to_string()
    }

    pub async fn group_id(&self, name: &str) -> String {
        let group = tag_group::Entity::find()
            .filter(tag_group::Column::Name.eq(name))
            .one(&self.db)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no group {name}"));
        tagbase::domain::TagGroupId(group.id).to_string()
    }

    /// Creates a tag group as `login` (directly: it must hold
    /// `tag_library:write` there) and returns its id.
    pub async fn create_group(&self, login: &str, unit: &str, name: &str, class: &str, exclusive: bool) -> String {
        let res = self
            .gql(
                login,
                "mutation($u: ID!, $n: String!, $c: String!, $x: Boolean!) { createTagGroup(input: { orgUnitId: $u,
                    name: $n, category: BEHAVIOR, visibilityClass: $c, exclusive: $x }) { tagGroup { id } } }",
                json!({ "u": self.unit_id(unit), "n": name, "c": class, "x": exclusive }),
            )
            .await;
        res.ok()["createTagGroup"]["tagGroup"]["id"].as_str().expect("created directly").to_owned()
    }

    /// Creates a tag in a group as `login` (directly) and returns its id.
    pub async fn create_tag(&self, login: &str, group: &str, name: &str) -> String {
        let res = self
            .gql(
                login,
                "mutation($g: ID!, $n: String!) { createTag(input: { groupId: $g, name: $n }) { tag { id } } }",
                json!({ "g": group, "n": name }),
            )
            .await;
        res.ok()["createTag"]["tag"]["id"].as_str().expect("created directly").to_owned()
    }

    /// Ids of the demo customers of a store.
    pub async fn customers_of(&self, store: &str) -> Vec<String> {
        let mut ids: Vec<i64> = customer::Entity::find()
            .filter(customer::Column::OrgUnitId.eq(self.unit(store)))
            .all(&self.db)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        ids.sort();
        ids.into_iter().map(|i| tagbase::domain::CustomerId(i).to_string()).collect()
    }

    /// Row counts of the tables a write touches, to prove a refused write
    /// changed nothing.
    pub async fn snapshot(&self) -> Snapshot {
        Snapshot {
            customers: customer::Entity::find().count(&self.db).await.unwrap(),
            assignments: customer_tag::Entity::find().count(&self.db).await.unwrap(),
            events: tag_event::Entity::find().count(&self.db).await.unwrap(),
            audit: audit_log::Entity::find()
                .filter(audit_log::Column::Outcome.eq(AuditOutcome::Ok))
                .count(&self.db)
                .await
                .unwrap(),
            tags: tag::Entity::find().count(&self.db).await.unwrap(),
            groups: tag_group::Entity::find().count(&self.db).await.unwrap(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub customers: u64,
    pub assignments: u64,
    pub events: u64,
    /// Rows of changes made (refused attempts add `DENIED` rows).
    pub audit: u64,
    pub tags: u64,
    pub groups: u64,
}

/// A GraphQL response.
#[derive(Debug, Clone)]
pub struct Gql(pub Value);

impl Gql {
    /// `data`, asserting there were no errors.
    pub fn ok(&self) -> &Value {
        assert!(self.0.get("errors").is_none(), "unexpected errors: {:#}", self.0);
        &self.0["data"]
    }

    /// The code of the only error, asserting there is one.
    pub fn code(&self) -> String {
        let errors = self.0["errors"].as_array().unwrap_or_else(|| panic!("expected an error: {:#}", self.0));
        assert_eq!(errors.len(), 1, "expected one error: {:#}", self.0);
        errors[0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("error without code: {:#}", self.0))
            .to_owned()
    }

    pub fn message(&self) -> String {
        self.0["errors"][0]["message"].as_str().unwrap_or_default().to_owned()
    }
}

/// The database row id inside a global id from a response, for tests
/// that look at the database behind the API.
pub fn row_id(global: &str) -> i64 {
    tagbase::domain::decode_global(global).unwrap_or_else(|| panic!("{global:?} is not a global id")).1
}

pub fn no_vars() -> Value {
    json!({})
}
