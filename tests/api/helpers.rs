//! Test harness: a fresh database per test, the real application built on
//! it, demo staff and library, and helpers to run GraphQL as a given staff
//! member.
//!
//! Fresh databases are cheap: each test process migrates and seeds one
//! template per backend (and per organisation time zone, which the demo
//! segments depend on) once, and every test copies it, in the manner of
//! crates.io's `crates_io_test_db`: PostgreSQL copies with
//! `CREATE DATABASE … TEMPLATE`, SQLite with a file copy.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use chrono::FixedOffset;
use entity::{customer, org_unit, staff, tag, tag_group};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    QueryFilter, Statement,
};
use serde_json::{Value, json};
use tagbase::config::{Limits, Settings};
use tagbase::startup::Application;
use tokio::sync::OnceCell;

/// The PostgreSQL server tests create their databases on. Override with
/// `TAGBASE_TEST_POSTGRES_URL` (a URL of any existing database there).
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const TEST_JWT_SECRET: &str = "test-secret-test-secret-test-secret!";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
                    $crate::helpers::within_deadline(async {
                        super::$name($crate::helpers::TestApp::spawn($crate::helpers::Backend::Sqlite).await).await
                    })
                    .await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    $crate::helpers::within_deadline(async {
                        super::$name($crate::helpers::TestApp::spawn($crate::helpers::Backend::Postgres).await).await
                    })
                    .await;
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
                    $crate::helpers::within_deadline(async {
                        let app = $crate::helpers::TestApp::spawn_with($crate::helpers::Backend::Sqlite, $limits).await;
                        super::$name(app).await
                    })
                    .await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    $crate::helpers::within_deadline(async {
                        let app = $crate::helpers::TestApp::spawn_with($crate::helpers::Backend::Postgres, $limits).await;
                        super::$name(app).await
                    })
                    .await;
                }
            }
        )+
    };
}

/// How long one database test may run before it fails instead of hanging
/// the whole run (the slowest take seconds; this is for a wait that never
/// ends).
pub const TEST_DEADLINE: Duration = Duration::from_secs(300);

/// Runs a test body, failing it when it outlasts [`TEST_DEADLINE`]. The
/// body's future is boxed: a large test's state machine would otherwise
/// sit on the test thread's stack (2 MiB) and overflow it in debug builds.
pub async fn within_deadline<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_DEADLINE, Box::pin(test)).await.unwrap_or_else(|_| {
        panic!("the test did not finish within {TEST_DEADLINE:?}: something it waits for never happens")
    })
}

/// A database that exists for one test only.
pub struct TestDb {
    pub url: String,
    /// PostgreSQL: (server URL, database name) to drop afterwards.
    drop_pg: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// An empty database: nothing migrated, nothing seeded.
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                Self { url, drop_pg: None, _dir: Some(dir) }
            }
            Backend::Postgres => Self::postgres(None).await,
        }
    }

    /// A migrated database holding the test demo data (seeded for the
    /// organisation time zone `offset`), copied from this process's template.
    pub async fn seeded(backend: Backend, offset: FixedOffset) -> Self {
        match template(backend, offset).await {
            Template::Sqlite(bytes) => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("test.db");
                std::fs::write(&path, bytes.as_slice()).expect("copy the SQLite template");
                Self { url: format!("sqlite://{}?mode=rwc", path.display()), drop_pg: None, _dir: Some(dir) }
            }
            Template::Postgres(name) => Self::postgres(Some(&name)).await,
        }
    }

    /// A database of this run on the PostgreSQL server, empty or a copy of
    /// `template`.
    async fn postgres(template: Option<&str>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let server = pg_server();
        let run = pg_run(&server).await;
        let name = format!("tagbase_test_{run:08x}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let create = match template {
            Some(template) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""),
            None => format!("CREATE DATABASE \"{name}\""),
        };
        let admin = Database::connect(server.as_str()).await.unwrap_or_else(|e| needs_postgres(&server, e));
        admin.execute_unprepared(&create).await.expect("create test database");
        admin.close().await.ok();
        Self { url: pg_url(&server, &name), drop_pg: Some((server, name)), _dir: None }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Dropped here rather than queued for later: PostgreSQL checkpoints
        // for each DROP DATABASE, and a queue would not keep up with the
        // tests; what it left at exit would fall to the next run.
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

/// The PostgreSQL server tests create their databases on.
fn pg_server() -> String {
    std::env::var("TAGBASE_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// The URL of database `name` on `server`.
fn pg_url(server: &str, name: &str) -> String {
    let base = server.rsplit_once('/').map(|(b, _)| b).unwrap_or(server);
    format!("{base}/{name}")
}

fn needs_postgres(server: &str, e: impl fmt::Display) -> ! {
    panic!("PostgreSQL at {server} is needed for the postgres tests: {e}")
}

/// A migrated and seeded database that tests copy.
#[derive(Clone)]
enum Template {
    /// The bytes of the SQLite file (its WAL checkpointed into it).
    Sqlite(Arc<Vec<u8>>),
    /// The name of the PostgreSQL template database.
    Postgres(String),
}

/// This process's template for `backend` and `offset`, built by the first
/// test that asks; the others wait for it.
async fn template(backend: Backend, offset: FixedOffset) -> Template {
    type Cells = HashMap<(Backend, i32), Arc<OnceCell<Template>>>;
    static TEMPLATES: LazyLock<Mutex<Cells>> = LazyLock::new(Mutex::default);
    let cell = TEMPLATES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((backend, offset.local_minus_utc()))
        .or_default()
        .clone();
    cell.get_or_init(|| build_template(backend, offset)).await.clone()
}

async fn build_template(backend: Backend, offset: FixedOffset) -> Template {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("template.db");
            let db = tagbase::db::connect(&format!("sqlite://{}?mode=rwc", path.display())).await.expect("connect");
            fill_template(&db, offset).await;
            // The whole database into the one file a test copies.
            db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)").await.expect("checkpoint the template");
            db.close().await.expect("close the template");
            Template::Sqlite(Arc::new(std::fs::read(&path).expect("read the template")))
        }
        Backend::Postgres => {
            let server = pg_server();
            let run = pg_run(&server).await;
            let minutes = offset.local_minus_utc() / 60;
            let zone = if minutes < 0 { format!("m{}", -minutes) } else { format!("p{minutes}") };
            let name = format!("tagbase_tpl_{run:08x}_{zone}");
            let admin = Database::connect(server.as_str()).await.unwrap_or_else(|e| needs_postgres(&server, e));
            admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.expect("create the template");
            admin.close().await.ok();
            let db = tagbase::db::connect(&pg_url(&server, &name)).await.expect("connect to the template");
            fill_template(&db, offset).await;
            // Copying needs the template to have no sessions.
            db.close().await.expect("close the template");
            Template::Postgres(name)
        }
    }
}

/// What every test starts from: the schema, the default policy and the
/// demo organisation, staff, library and customers.
async fn fill_template(db: &DatabaseConnection, offset: FixedOffset) {
    tagbase::db::migrate(db).await.expect("migrate");
    let authz = tagbase::authz::Authz::load(db).await.expect("load the policy");
    tagbase::seed::seed_demo_sized(db, &authz, TEST_CUSTOMERS_PER_STORE, offset).await.expect("seed");
}

/// The first key of the advisory lock that marks a test run alive.
const RUN_LOCK_CLASS: i32 = 0x7467_6273;

/// This process's run on the PostgreSQL server. Its databases are named
/// `tagbase_tpl_<run>_…` (templates) and `tagbase_test_<run>_…` (tests),
/// and a session of a thread of its own holds the advisory lock
/// `(RUN_LOCK_CLASS, run)` until the process ends. The first call also
/// drops the databases of runs nobody holds any more: templates (which
/// nothing else drops) and the test databases of runs that were killed.
async fn pg_run(server: &str) -> u32 {
    static RUN: OnceCell<u32> = OnceCell::const_new();
    *RUN.get_or_init(|| async {
        let run = claim_run(server).await;
        if let Err(e) = drop_dead_runs(server, run).await {
            eprintln!("could not drop the databases of earlier test runs: {e}");
        }
        run
    })
    .await
}

/// A pool of exactly one session that is never recycled, for session-level
/// advisory locks.
async fn one_session(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None::<Duration>)
        .max_lifetime(None::<Duration>)
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    Database::connect(options).await
}

async fn try_lock_run(session: &DatabaseConnection, run: u32) -> Result<bool, DbErr> {
    let sql = format!("SELECT pg_try_advisory_lock({RUN_LOCK_CLASS}, {}) AS held", run as i32);
    let row = session.query_one_raw(Statement::from_string(DbBackend::Postgres, sql)).await?;
    row.expect("one row").try_get("", "held")
}

/// Picks a run id nobody holds and holds it for the life of the process,
/// on a thread with a runtime of its own (each test's runtime ends with
/// the test).
async fn claim_run(server: &str) -> u32 {
    for _ in 0..8 {
        let run = rand::random::<u32>();
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let url = server.to_owned();
        std::thread::Builder::new()
            .name(format!("test-run-{run:08x}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                rt.block_on(async move {
                    let claimed = async {
                        let session = one_session(&url).await?;
                        let held = try_lock_run(&session, run).await?;
                        Ok::<_, DbErr>((session, held))
                    };
                    match claimed.await {
                        Ok((_session, true)) => {
                            let _ = held_tx.send(Ok(true));
                            // Keep the session, and with it the lock, until
                            // the process exits.
                            std::future::pending::<()>().await;
                        }
                        Ok((_, false)) => {
                            let _ = held_tx.send(Ok(false));
                        }
                        Err(e) => {
                            let _ = held_tx.send(Err(e.to_string()));
                        }
                    }
                });
            })
            .expect("spawn the run's lock holder");
        match held_rx.await.expect("the lock holder answers") {
            Ok(true) => return run,
            Ok(false) => continue,
            Err(e) => needs_postgres(server, e),
        }
    }
    panic!("no free test run id after 8 tries")
}

/// The run a database of the tests belongs to, from its name.
fn run_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("tagbase_tpl_").or_else(|| name.strip_prefix("tagbase_test_"))?;
    let (run, _) = rest.split_once('_')?;
    (run.len() == 8).then(|| u32::from_str_radix(run, 16).ok()).flatten()
}

/// Drops the databases of every other run whose lock is free (its process
/// has ended), holding that lock meanwhile so that the run id is not
/// claimed again half-way.
async fn drop_dead_runs(server: &str, ours: u32) -> Result<(), DbErr> {
    let session = one_session(server).await?;
    let sql =
        r"SELECT datname FROM pg_database WHERE datname LIKE 'tagbase\_tpl\_%' OR datname LIKE 'tagbase\_test\_%'";
    let mut runs: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for row in session.query_all_raw(Statement::from_string(DbBackend::Postgres, sql)).await? {
        let name: String = row.try_get("", "datname")?;
        if let Some(run) = run_of(&name).filter(|run| *run != ours) {
            runs.entry(run).or_default().push(name);
        }
    }
    for (run, names) in runs {
        if try_lock_run(&session, run).await? {
            for name in names {
                session.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await?;
            }
            let unlock = format!("SELECT pg_advisory_unlock({RUN_LOCK_CLASS}, {})", run as i32);
            session.execute_unprepared(&unlock).await?;
        }
    }
    session.close().await
}

/// The application on a fresh copy of the template, with the demo
/// organisation, staff and tag library and a few demo customers per store.
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
        let mut settings = Settings::for_database(String::new());
        settings.jwt_secret = Some(TEST_JWT_SECRET.to_owned());
        // No job worker unless the test asks (its polling would show in
        // statement counts).
        settings.job_poll_interval = None;
        // No scheduler rounds unless the test runs them (with its clock).
        settings.schedule_interval = None;
        // No background fold of the report roll-up (tests fold when they
        // mean to; statement counts stay exact).
        settings.rollup_interval = None;
        configure(&mut settings);
        // No background follower: statement counts stay exact, and the
        // index is caught up below and after every write made through the
        // API.
        settings.index_follow_interval = None;
        // The demo segments are stored in the organisation's time zone: the
        // copy comes from a template seeded for the one configured.
        let test_db = TestDb::seeded(backend, settings.utc_offset).await;
        settings.database_url = test_db.url.clone();
        let mut db = tagbase::db::connect(&test_db.url).await.expect("connect");
        let statements = Arc::new(AtomicUsize::new(0));
        let counter = statements.clone();
        db.set_metric_callback(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let app = Application::with_database(settings, db.clone()).await.expect("build app");
        // The data came with the copy: build the segment index now rather
        // than at the follower's next round, so tests see the index the way
        // a caller after its own write does.
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

    /// The principal `login` signs in as (scopes, field rules), as a
    /// request would build it.
    pub async fn principal_of(&self, login: &str) -> Arc<tagbase::authz::Principal> {
        let state = &self.app.state;
        let bearer = format!("Bearer {}", self.token(login));
        tagbase::auth::authenticate(&state.db, &state.auth, &state.authz, Some(&bearer)).await.unwrap().principal
    }

    /// Gives bj01.sales a second role, customer service in gz01: value tags
    /// are visible to it in bj01 and not in gz01, the case where class
    /// visibility differs by unit.
    pub async fn bj01_sales_also_serves_gz01(&self) {
        let member = self.staff("bj01.sales");
        self.app
            .state
            .authz
            .assign_role(tagbase::domain::StaffId(member.id), "customer_service", "hq/south/gz01/")
            .await
            .unwrap();
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
        settings.job_poll_interval = None;
        settings.schedule_interval = None;
        settings.rollup_interval = None;
        Application::with_database(settings, self.db.clone()).await.expect("second instance")
    }

    /// Another instance on the same database with settings of the test's
    /// choosing (OIDC, WeCom, leeway, dev tokens, …).
    pub async fn instance_with(&self, configure: impl FnOnce(&mut Settings)) -> Application {
        let mut settings = Settings::for_database(self._test_db.url.clone());
        settings.jwt_secret = Some(TEST_JWT_SECRET.to_owned());
        settings.index_follow_interval = None;
        settings.job_poll_interval = None;
        settings.schedule_interval = None;
        settings.rollup_interval = None;
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

    /// Every row of every application table, to prove a refused write
    /// changed nothing: the tables are read from the database's catalog, so
    /// a new table is covered without a word here. Of the audit log only
    /// the rows of changes made count, since refused attempts are audited
    /// (as `DENIED` rows) by design.
    pub async fn snapshot(&self) -> Snapshot {
        let mut tables = BTreeMap::new();
        for table in application_tables(&self.db).await {
            let rows = table_rows(&self.db, &table).await;
            tables.insert(table, TableState::of(rows));
        }
        Snapshot::of(tables)
    }
}

/// `recordEvents`, with the counts and per-item answers the rules tests read.
pub const RECORD: &str = "mutation($e: [CustomerEventInput!]!) { recordEvents(input: { events: $e }) {
    recorded duplicates tagChanges heldBack deferred
    results { index outcome eventId } errors { index code field message } } }";

/// Set-up shared by the rules tests (events, rules, dry runs, schedules).
impl TestApp {
    /// A connector's account: the `integration` role at store sz01, which
    /// records events and does nothing else.
    pub async fn connector(&mut self) -> &'static str {
        let login = "sz01.connector";
        let member = staff::ActiveModel {
            login: sea_orm::ActiveValue::Set(login.to_owned()),
            display_name: sea_orm::ActiveValue::Set("企微连接器".to_owned()),
            home_org_unit_id: sea_orm::ActiveValue::Set(self.unit("sz01")),
            active: sea_orm::ActiveValue::Set(true),
            created_at: sea_orm::ActiveValue::Set(chrono::Utc::now()),
            ..Default::default()
        };
        let member = sea_orm::ActiveModelTrait::insert(member, &self.db).await.unwrap();
        self.app
            .state
            .authz
            .assign_role(tagbase::domain::StaffId(member.id), "integration", "hq/south/sz01/")
            .await
            .unwrap();
        self.register(member);
        login
    }

    /// A new customer of `store` (named 新客户), created by `login`.
    pub async fn fresh_customer(&self, store: &str, login: &str) -> String {
        let res = self
            .gql(
                login,
                "mutation($u: ID!) { createCustomer(input: { orgUnitId: $u, name: \"新客户\" }) { customer { id } } }",
                json!({ "u": self.unit_id(store) }),
            )
            .await;
        res.ok()["createCustomer"]["customer"]["id"].as_str().unwrap().to_owned()
    }

    /// `n` new customers of store sz01.
    pub async fn fresh_customers(&self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.fresh_customer("sz01", "sz01.sales").await);
        }
        out
    }

    /// Creates a rule as admin (directly) and returns its id; `input` is
    /// a `CreateRuleInput`.
    pub async fn create_rule(&self, input: Value) -> String {
        let res = self
            .gql("admin", "mutation($i: CreateRuleInput!) { createRule(input: $i) { id } }", json!({ "i": input }))
            .await;
        res.ok()["createRule"]["id"].as_str().unwrap().to_owned()
    }

    /// Records events as `login`, every one of which must be accepted, and
    /// returns the `recordEvents` answer.
    pub async fn record_events(&self, login: &str, events: Vec<Value>) -> Value {
        let res = self.gql(login, RECORD, json!({ "e": events })).await;
        let answer = res.ok()["recordEvents"].clone();
        assert_eq!(answer["errors"], json!([]), "{answer}");
        answer
    }

    /// Puts tags on customers (`tagCustomers`) or takes them off
    /// (`untagCustomers`) as `login`, as a person does.
    pub async fn tag_by_hand(&self, login: &str, op: &str, customers: &[&str], tags: &[&str]) {
        let mutation = format!(
            "mutation($c: [ID!]!, $t: [ID!]!) {{ {op}(input: {{ customerIds: $c, tagIds: $t }}) {{ __typename }} }}"
        );
        self.gql(login, &mutation, json!({ "c": customers, "t": tags })).await.ok();
    }

    /// The names of the tags a customer holds, sorted.
    pub async fn tag_names(&self, customer: &str) -> Vec<String> {
        let res = self
            .gql("admin", "query($id: ID!) { customer(id: $id) { tags { tag { name } } } }", json!({ "id": customer }))
            .await;
        let mut out: Vec<String> = res.ok()["customer"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["tag"]["name"].as_str().unwrap().to_owned())
            .collect();
        out.sort();
        out
    }
}

/// A `MESSAGE_RECEIVED` event.
pub fn message_at(customer: &str, key: &str, text: &str, at: chrono::DateTime<chrono::Utc>) -> Value {
    json!({ "customerId": customer, "kind": "MESSAGE_RECEIVED", "key": key, "text": text,
        "occurredAt": at.to_rfc3339() })
}

/// An `ORDER_PAID` event.
pub fn order_paid(customer: &str, key: &str, at: chrono::DateTime<chrono::Utc>, amount: i64) -> Value {
    json!({ "customerId": customer, "kind": "ORDER_PAID", "key": key, "amount": amount,
        "occurredAt": at.to_rfc3339() })
}

/// Tables that are bookkeeping of the migrations, not of the application.
const MIGRATION_TABLES: &[&str] = &["seaql_migrations"];

/// Rows of a table that a snapshot leaves out: (table, the rows it keeps).
const SNAPSHOT_ONLY: &[(&str, &str)] = &[("audit_log", "outcome = 'OK'")];

async fn application_tables(db: &DatabaseConnection) -> Vec<String> {
    let backend = db.get_database_backend();
    let sql = match backend {
        // sqlite_sequence and the like are SQLite's own.
        DbBackend::Sqlite => {
            r"SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\'"
        }
        _ => "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema()",
    };
    let rows = db.query_all_raw(Statement::from_string(backend, sql)).await.expect("list the tables");
    let mut tables: Vec<String> = rows
        .iter()
        .map(|row| row.try_get::<String>("", "name").expect("table name"))
        .filter(|name| !MIGRATION_TABLES.contains(&name.as_str()))
        .collect();
    tables.sort();
    assert!(tables.iter().any(|t| t == "customer"), "the catalog lists the application tables: {tables:?}");
    tables
}

/// Every row of `table` as text, whole.
async fn table_rows(db: &DatabaseConnection, table: &str) -> Vec<String> {
    let backend = db.get_database_backend();
    let filter =
        SNAPSHOT_ONLY.iter().find(|(t, _)| *t == table).map(|(_, keep)| format!(" WHERE {keep}")).unwrap_or_default();
    let row_text = match backend {
        DbBackend::Sqlite => {
            let columns = db
                .query_all_raw(Statement::from_string(
                    backend,
                    format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
                ))
                .await
                .expect("list the columns");
            columns
                .iter()
                .map(|c| format!("quote(\"{}\")", c.try_get::<String>("", "name").expect("column name")))
                .collect::<Vec<_>>()
                .join(" || ',' || ")
        }
        _ => "t::text".to_owned(),
    };
    let sql = format!("SELECT {row_text} AS r FROM \"{table}\" t{filter}");
    let rows =
        db.query_all_raw(Statement::from_string(backend, sql)).await.unwrap_or_else(|e| panic!("read {table}: {e}"));
    rows.iter().map(|row| row.try_get::<String>("", "r").expect("row text")).collect()
}

/// A table at one moment: its row count and a digest of its rows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TableState {
    pub rows: u64,
    digest: u64,
}

impl TableState {
    fn of(mut rows: Vec<String>) -> Self {
        // Rows in no particular order: a digest of the sorted rows.
        rows.sort();
        let mut hasher = DefaultHasher::new();
        rows.hash(&mut hasher);
        Self { rows: rows.len() as u64, digest: hasher.finish() }
    }
}

/// Every application table at one moment (see [`TestApp::snapshot`]),
/// with the row counts tests compare by name.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub customers: u64,
    pub assignments: u64,
    pub events: u64,
    /// Rows of changes made (refused attempts add `DENIED` rows).
    pub audit: u64,
    pub tags: u64,
    pub groups: u64,
    pub tables: BTreeMap<String, TableState>,
}

impl Snapshot {
    fn of(tables: BTreeMap<String, TableState>) -> Self {
        let rows = |table: &str| tables.get(table).unwrap_or_else(|| panic!("no table {table}")).rows;
        Self {
            customers: rows("customer"),
            assignments: rows("customer_tag"),
            events: rows("tag_event"),
            audit: rows("audit_log"),
            tags: rows("tag"),
            groups: rows("tag_group"),
            tables: tables.clone(),
        }
    }
}

/// One line per table, so that a failed comparison shows which changed.
impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Snapshot {{")?;
        for (table, state) in &self.tables {
            writeln!(f, "    {table}: {} rows, digest {:016x}", state.rows, state.digest)?;
        }
        write!(f, "}}")
    }
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

/// The "nothing changed" snapshot sees a row added to a table that no test
/// names, and a row changed in place where no count moves.
async fn the_snapshot_sees_every_table_and_changes_in_place(app: TestApp) {
    let before = app.snapshot().await;
    app.db
        .execute_unprepared("INSERT INTO app_setting (key, value, updated_at) VALUES ('probe', 'x', CURRENT_TIMESTAMP)")
        .await
        .unwrap();
    let added = app.snapshot().await;
    assert_ne!(added, before, "a new setting shows");
    assert_eq!(added.tables["app_setting"].rows, before.tables["app_setting"].rows + 1);
    app.db.execute_unprepared("UPDATE tag SET name = name || '*' WHERE id = (SELECT MIN(id) FROM tag)").await.unwrap();
    let renamed = app.snapshot().await;
    assert_eq!(renamed.tags, added.tags, "as many tags as before");
    assert_ne!(renamed, added, "a tag renamed in place shows");
}

crate::on_both_databases!(the_snapshot_sees_every_table_and_changes_in_place);
