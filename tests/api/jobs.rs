//! Bulk jobs: a segment or a list of customers tagged in batches, with
//! progress, cancellation, approval, modification locks, and exactly-once
//! batches across instances that die mid-run.
//!
//! Jobs are run by workers the tests drive (`Worker::run_next`), so each
//! step is deterministic; a worker told to halt after k batches stops dead,
//! as a killed process would (its lease held, nothing released).

use std::collections::BTreeSet;
use std::time::Duration;

use entity::{
    audit_log, customer_tag, enums::JobStatus, job, modification_lock, modification_lock_customer, tag_event,
};
use futures_util::StreamExt;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use tagbase::config::Limits;
use tagbase::service::jobs::{RunEnd, Worker};

use crate::helpers::{Backend, TestApp, row_id};

const BULK_TAG: &str = "mutation($input: BulkTagInput!) { bulkTag(input: $input) {
    id status total done added removed skipped changeRequest { id } } }";
const JOB: &str = "query($id: ID!) { job(id: $id) { id status finished total done added removed unchanged skipped
    errors { customerId code message } startedAt finishedAt } }";
const BATCH: usize = 4;

/// Runs each test on SQLite and PostgreSQL, with batches of [`BATCH`]
/// customers.
macro_rules! on_both_databases_in_batches {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    crate::helpers::within_deadline(async {
                        super::$name(super::spawn(crate::helpers::Backend::Sqlite).await).await
                    })
                    .await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    crate::helpers::within_deadline(async {
                        super::$name(super::spawn(crate::helpers::Backend::Postgres).await).await
                    })
                    .await;
                }
            }
        )+
    };
}

async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_configured(backend, |s| {
        s.limits.job_batch_size = BATCH;
        s.limits.job_progress_interval = Duration::from_millis(20);
        s.limits.max_customers_per_tagging = 5;
        s.limits.bulk_threshold = 3;
    })
    .await
}

/// A worker of an instance named `name` on the test's database.
fn worker(app: &TestApp, name: &str, configure: impl FnOnce(&mut Limits)) -> Worker {
    let mut limits = app.app.state.settings.limits.clone();
    configure(&mut limits);
    Worker {
        db: app.db.clone(),
        authz: app.app.state.authz.clone(),
        index: app.app.state.index.clone(),
        limits,
        instance: name.to_owned(),
    }
}

/// Files a job adding `tag` to `customers` as `login`; its id.
async fn job_adding(app: &TestApp, login: &str, customers: &[String], tag: &str) -> String {
    let input = json!({ "customers": { "customerIds": customers }, "add": [tag] });
    let created = app.gql(login, BULK_TAG, json!({ "input": input })).await;
    created.ok()["bulkTag"]["id"].as_str().unwrap().to_owned()
}

async fn job_of(app: &TestApp, login: &str, id: &str) -> Value {
    app.gql(login, JOB, json!({ "id": id })).await.ok()["job"].clone()
}

async fn holders(app: &TestApp, tag: &str) -> BTreeSet<i64> {
    customer_tag::Entity::find()
        .filter(customer_tag::Column::TagId.eq(row_id(tag)))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.customer_id)
        .collect()
}

fn ids(global: &[String]) -> BTreeSet<i64> {
    global.iter().map(|c| row_id(c)).collect()
}

async fn south_customers(app: &TestApp) -> Vec<String> {
    let mut all = app.customers_of("sz01").await;
    all.extend(app.customers_of("gz01").await);
    all
}

async fn events_of_job(app: &TestApp, job: &str) -> u64 {
    tag_event::Entity::find()
        .filter(tag_event::Column::SourceRef.eq(format!("job:{}", row_id(job))))
        .count(&app.db)
        .await
        .unwrap()
}

async fn a_job_from_a_segment_tags_exactly_its_snapshot(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let south = ids(&south_customers(&app).await);
    let before: BTreeSet<i64> = holders(&app, &inquiry).await;
    let expected_new: BTreeSet<i64> = south.difference(&before).copied().collect();
    assert!(expected_new.len() > BATCH, "several batches");
    let input =
        json!({ "customers": { "segment": { "not": { "tag": inquiry } } }, "add": [inquiry], "reason": "春季活动" });
    let created = app.gql("south.manager", BULK_TAG, json!({ "input": input })).await;
    let created = &created.ok()["bulkTag"];
    assert_eq!(created["status"], "QUEUED");
    assert_eq!(created["total"], expected_new.len());
    assert_eq!(created["done"], 0);
    let id = created["id"].as_str().unwrap().to_owned();

    let end = worker(&app, "a", |_| {}).run_next().await.unwrap();
    assert_eq!(end, Some(RunEnd::Finished(JobStatus::Succeeded)));
    let done = job_of(&app, "south.manager", &id).await;
    assert_eq!(done["status"], "SUCCEEDED");
    assert_eq!(done["finished"], true);
    assert_eq!(done["done"], expected_new.len());
    assert_eq!(done["added"], expected_new.len());
    assert_eq!(done["skipped"], 0);
    assert!(done["startedAt"].is_string() && done["finishedAt"].is_string());
    let after = holders(&app, &inquiry).await;
    assert_eq!(after, before.union(&south).copied().collect::<BTreeSet<_>>(), "exactly the expected holders");
    assert_eq!(events_of_job(&app, &id).await, expected_new.len() as u64, "one tag event per change");
    // One audit row for the job's end, with its counts.
    let rows = audit_log::Entity::find()
        .filter(audit_log::Column::Action.eq("customer.bulk_tag"))
        .filter(audit_log::Column::ObjectId.eq(row_id(&id).to_string()))
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].detail["added"], expected_new.len());
    assert_eq!(rows[0].detail["status"], "SUCCEEDED");
    // Its locks are released.
    let open = modification_lock::Entity::find()
        .filter(modification_lock::Column::ReleasedAt.is_null())
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(open, 0);
    // The segment index follows: the segment is empty now.
    let count = app
        .gql(
            "south.manager",
            "query($t: ID!) { customers(segment: { not: { tag: $t } }) { totalCount } }",
            json!({ "t": inquiry }),
        )
        .await;
    assert_eq!(count.ok()["customers"]["totalCount"], 0);
}

async fn a_job_moves_customers_inside_an_exclusive_group(app: TestApp) {
    let prospect = app.tag_id("客户阶段", "潜在客户").await;
    let paying = app.tag_id("客户阶段", "付费客户").await;
    let customers = app.customers_of("sz01").await;
    let w = worker(&app, "a", |_| {});
    let first_id = job_adding(&app, "south.manager", &customers, &prospect).await;
    assert_eq!(w.run_next().await.unwrap(), Some(RunEnd::Finished(JobStatus::Succeeded)));
    let stage_holders = |p: BTreeSet<i64>| p.intersection(&ids(&customers)).count();
    assert_eq!(stage_holders(holders(&app, &prospect).await), customers.len());
    let id = job_adding(&app, "south.manager", &customers, &paying).await;
    assert_ne!(id, first_id);
    assert_eq!(w.run_next().await.unwrap(), Some(RunEnd::Finished(JobStatus::Succeeded)));
    let done = job_of(&app, "south.manager", &id).await;
    assert_eq!(done["added"], customers.len());
    assert_eq!(done["removed"], customers.len(), "each move replaces the old stage");
    assert_eq!(stage_holders(holders(&app, &prospect).await), 0);
    assert_eq!(stage_holders(holders(&app, &paying).await), customers.len());
    assert_eq!(events_of_job(&app, &id).await, 2 * customers.len() as u64, "a REMOVE and an ADD each");
}

async fn progress_is_streamed_until_the_job_ends(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let customers = south_customers(&app).await;
    let id = job_adding(&app, "south.manager", &customers, &inquiry).await;
    let request = async_graphql::Request::new(
        "subscription($id: ID!) { jobProgress(jobId: $id) { status done total added finished } }",
    )
    .variables(async_graphql::Variables::from_json(json!({ "id": id })));
    let auth = format!("Bearer {}", app.token("south.manager"));
    let mut stream = tagbase::http::execute_stream(&app.app.state, &app.app.schema, Some(&auth), request)
        .await
        .unwrap_or_else(|e| panic!("sign-in failed: {}", e.message()));
    let first = stream.next().await.expect("a first snapshot");
    let first = serde_json::to_value(first).unwrap();
    assert_eq!(first["data"]["jobProgress"]["status"], "QUEUED");
    let w = worker(&app, "a", |_| {});
    let run = tokio::spawn(async move { w.run_next().await });
    let mut seen = Vec::new();
    while let Some(item) = stream.next().await {
        let item = serde_json::to_value(item).unwrap();
        assert!(item.get("errors").is_none(), "{item}");
        seen.push(item["data"]["jobProgress"].clone());
    }
    run.await.unwrap().unwrap();
    let last = seen.last().expect("the finished job");
    assert_eq!(last["status"], "SUCCEEDED");
    assert_eq!(last["finished"], true);
    assert_eq!(last["done"], customers.len());
    let done: Vec<i64> = seen.iter().map(|s| s["done"].as_i64().unwrap()).collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "progress never goes back: {done:?}");
    // Somebody who may not see the job is refused at once.
    let request = async_graphql::Request::new("subscription($id: ID!) { jobProgress(jobId: $id) { done } }")
        .variables(async_graphql::Variables::from_json(json!({ "id": id })));
    let auth = format!("Bearer {}", app.token("bj01.sales"));
    let mut refused = tagbase::http::execute_stream(&app.app.state, &app.app.schema, Some(&auth), request)
        .await
        .unwrap_or_else(|e| panic!("sign-in failed: {}", e.message()));
    let refused = serde_json::to_value(refused.next().await.unwrap()).unwrap();
    assert_eq!(refused["errors"][0]["extensions"]["code"], "NOT_FOUND");
}

async fn a_job_resumes_on_another_instance_after_its_instance_dies(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let customers = south_customers(&app).await;
    let before = holders(&app, &inquiry).await;
    let id = job_adding(&app, "south.manager", &customers, &inquiry).await;
    // Instance a dies after two batches: its lease held, its locks kept.
    let a = worker(&app, "a", |l| {
        l.job_halt_after_batches = Some(2);
        l.job_lease = Duration::from_millis(300);
    });
    assert_eq!(a.run_next().await.unwrap(), Some(RunEnd::Halted));
    let halfway = job_of(&app, "south.manager", &id).await;
    assert_eq!(halfway["status"], "RUNNING");
    assert_eq!(halfway["done"], 2 * BATCH, "two whole batches, never half of one");
    let applied_so_far = halfway["added"].as_u64().unwrap();
    assert_eq!(events_of_job(&app, &id).await, applied_so_far, "the counts say exactly what was applied");
    let b = worker(&app, "b", |_| {});
    // Only one instance runs a job: b waits while a's lease holds.
    assert_eq!(b.run_next().await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.run_next().await.unwrap(), Some(RunEnd::Finished(JobStatus::Succeeded)));
    let done = job_of(&app, "south.manager", &id).await;
    assert_eq!(done["status"], "SUCCEEDED");
    assert_eq!(done["done"], customers.len());
    let expected: BTreeSet<i64> = before.union(&ids(&customers)).copied().collect();
    assert_eq!(holders(&app, &inquiry).await, expected);
    let added = done["added"].as_u64().unwrap();
    assert_eq!(added as usize, ids(&customers).difference(&before).count());
    assert_eq!(events_of_job(&app, &id).await, added, "no batch applied twice");
    let row = job::Entity::find_by_id(row_id(&id)).one(&app.db).await.unwrap().unwrap();
    assert_eq!(row.attempts, 2);
    assert_eq!(row.owner.as_deref(), Some("b"));
    let open = modification_lock::Entity::find()
        .filter(modification_lock::Column::ReleasedAt.is_null())
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(open, 0, "the locks were handed on, then released");
}

async fn a_cancelled_job_stops_between_batches_with_an_exact_account(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let customers = south_customers(&app).await;
    let id = job_adding(&app, "south.manager", &customers, &inquiry).await;
    let a = worker(&app, "a", |l| {
        l.job_halt_after_batches = Some(1);
        l.job_lease = Duration::from_millis(200);
    });
    assert_eq!(a.run_next().await.unwrap(), Some(RunEnd::Halted));
    let cancel = "mutation($id: ID!) { cancelJob(id: $id) { status cancelRequested done } }";
    // Somebody else without approval rights may not cancel it.
    let refused = app.gql("sz01.sales", cancel, json!({ "id": id })).await;
    assert_eq!(refused.code(), "NOT_FOUND");
    let asked = app.gql("south.manager", cancel, json!({ "id": id })).await;
    assert_eq!(asked.ok()["cancelJob"]["status"], "RUNNING");
    assert_eq!(asked.ok()["cancelJob"]["cancelRequested"], true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = worker(&app, "b", |_| {});
    assert_eq!(b.run_next().await.unwrap(), Some(RunEnd::Finished(JobStatus::Cancelled)));
    let done = job_of(&app, "south.manager", &id).await;
    assert_eq!(done["status"], "CANCELLED");
    assert_eq!(done["done"], BATCH);
    assert_eq!(events_of_job(&app, &id).await, done["added"].as_u64().unwrap());
    let again = app.gql("south.manager", cancel, json!({ "id": id })).await;
    assert_eq!(again.code(), "CONFLICT");
}

async fn a_job_beyond_the_callers_bulk_rights_waits_for_approval(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let customers = app.customers_of("sz01").await;
    let created = app
        .gql(
            "sz01.manager",
            BULK_TAG,
            json!({ "input": { "customers": { "customerIds": customers }, "add": [inquiry] } }),
        )
        .await;
    let created = &created.ok()["bulkTag"];
    assert_eq!(created["status"], "AWAITING_APPROVAL");
    let id = created["id"].as_str().unwrap().to_owned();
    let request = created["changeRequest"]["id"].as_str().unwrap().to_owned();
    let w = worker(&app, "a", |_| {});
    assert_eq!(w.run_next().await.unwrap(), None, "not before it is approved");
    let approve = "mutation($id: ID!) { approveChangeRequest(id: $id) { changeRequest { status } } }";
    let approved = app.gql("south.manager", approve, json!({ "id": request })).await;
    assert_eq!(approved.ok()["approveChangeRequest"]["changeRequest"]["status"], "APPROVED");
    assert_eq!(job_of(&app, "sz01.manager", &id).await["status"], "QUEUED");
    assert_eq!(w.run_next().await.unwrap(), Some(RunEnd::Finished(JobStatus::Succeeded)));
    let expected = ids(&customers);
    assert!(expected.is_subset(&holders(&app, &inquiry).await));
}

async fn locked_customers_are_skipped_and_reported(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let group = app.group_id("活动").await;
    let customers = app.customers_of("sz01").await;
    let locked = &customers[..2];
    let lock = app
        .gql(
            "admin",
            "mutation($g: ID!, $c: [ID!]) { lockTagGroup(input: { groupId: $g, customerIds: $c, reason: \"盘点\" }) { lock { id } } }",
            json!({ "g": group, "c": locked }),
        )
        .await;
    lock.ok();
    let before = holders(&app, &inquiry).await;
    let id = job_adding(&app, "south.manager", &customers, &inquiry).await;
    assert_eq!(worker(&app, "a", |_| {}).run_next().await.unwrap(), Some(RunEnd::Finished(JobStatus::Succeeded)));
    let done = job_of(&app, "south.manager", &id).await;
    assert_eq!(done["skipped"], 2);
    assert_eq!(done["done"], customers.len());
    let reported: BTreeSet<String> = done["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["code"] == "LOCKED")
        .map(|e| e["customerId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reported, locked.iter().cloned().collect());
    let after = holders(&app, &inquiry).await;
    for c in locked {
        assert_eq!(after.contains(&row_id(c)), before.contains(&row_id(c)), "a locked customer is left alone");
    }
    for c in &customers[2..] {
        assert!(after.contains(&row_id(c)));
    }
}

/// A running job's lock names the job and covers its snapshot (no copy of
/// its customers): somebody else tagging a snapshot customer in the group
/// is refused with `LOCKED`, a customer outside the snapshot is free, and
/// after the job ends the retry lands.
async fn a_running_jobs_lock_covers_its_snapshot_and_nothing_else(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let all = app.customers_of("sz01").await;
    assert!(all.len() > BATCH + 1, "a customer past the first batch, and one outside the job");
    let (outside, snapshot) = all.split_last().unwrap();
    let id = job_adding(&app, "south.manager", snapshot, &inquiry).await;
    let a = worker(&app, "a", |l| {
        l.job_halt_after_batches = Some(1);
        l.job_lease = Duration::from_millis(200);
    });
    assert_eq!(a.run_next().await.unwrap(), Some(RunEnd::Halted));
    let locks = modification_lock::Entity::find()
        .filter(modification_lock::Column::ReleasedAt.is_null())
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(locks.len(), 1);
    assert_eq!(locks[0].job_id, Some(row_id(&id)), "the lock names the job");
    let listed = modification_lock_customer::Entity::find()
        .filter(modification_lock_customer::Column::LockId.eq(locks[0].id))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(listed, 0, "the snapshot is not copied");
    const TAG: &str =
        "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }";
    let pending = &snapshot[BATCH];
    let refused = app.gql("sz01.sales", TAG, json!({ "c": [pending], "t": [inquiry] })).await;
    assert_eq!(refused.code(), "LOCKED");
    app.gql("sz01.sales", TAG, json!({ "c": [outside], "t": [inquiry] })).await.ok();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = worker(&app, "b", |_| {});
    assert_eq!(b.run_next().await.unwrap(), Some(RunEnd::Finished(JobStatus::Succeeded)));
    let done = job_of(&app, "south.manager", &id).await;
    assert_eq!(done["done"], snapshot.len());
    assert_eq!(done["skipped"], 0);
    let untag =
        "mutation($c: [ID!]!, $t: [ID!]!) { untagCustomers(input: { customerIds: $c, tagIds: $t }) { removed } }";
    let after = app.gql("sz01.sales", untag, json!({ "c": [pending], "t": [inquiry] })).await;
    assert_eq!(after.ok()["untagCustomers"]["removed"], 1, "the lock ended with the job");
}

async fn tag_customers_over_its_limit_points_to_bulk_tag_and_becomes_a_job_with_one_flag(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let customers = south_customers(&app).await;
    assert!(customers.len() > 5);
    let tag = "mutation($c: [ID!]!, $t: [ID!]!, $j: Boolean! = false) { tagCustomers(input: { customerIds: $c, tagIds: $t, asJob: $j }) {
        applied added job { id status total } } }";
    let before = app.snapshot().await;
    let refused = app.gql("south.manager", tag, json!({ "c": customers, "t": [inquiry] })).await;
    assert_eq!(refused.code(), "LIMIT_EXCEEDED");
    assert!(refused.message().contains("bulkTag"), "{}", refused.message());
    assert_eq!(app.snapshot().await.assignments, before.assignments);
    let job = app.gql("south.manager", tag, json!({ "c": customers, "t": [inquiry], "j": true })).await;
    let payload = &job.ok()["tagCustomers"];
    assert_eq!(payload["applied"], false);
    assert_eq!(payload["job"]["status"], "QUEUED");
    assert_eq!(payload["job"]["total"], customers.len());
    assert_eq!(worker(&app, "a", |_| {}).run_next().await.unwrap(), Some(RunEnd::Finished(JobStatus::Succeeded)));
    assert!(ids(&customers).is_subset(&holders(&app, &inquiry).await));
    // Small calls keep their contract: applied at once, no job.
    let small = app.gql("south.manager", tag, json!({ "c": customers[..2], "t": [inquiry], "j": true })).await;
    assert_eq!(small.ok()["tagCustomers"]["applied"], true);
    assert!(small.ok()["tagCustomers"]["job"].is_null());
}

async fn a_store_manager_cannot_bulk_tag_another_stores_customers(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let others = app.customers_of("bj01").await;
    let before = app.snapshot().await;
    let refused = app
        .gql("sz01.manager", BULK_TAG, json!({ "input": { "customers": { "customerIds": others }, "add": [inquiry] } }))
        .await;
    assert_eq!(refused.code(), "NOT_FOUND");
    assert_eq!(job::Entity::find().count(&app.db).await.unwrap(), 0);
    assert_eq!(app.snapshot().await.assignments, before.assignments);
    // From a segment, its scope bounds the snapshot: only its own store.
    let created = app
        .gql(
            "sz01.manager",
            BULK_TAG,
            json!({ "input": { "customers": { "segment": { "not": { "tag": inquiry } } }, "add": [inquiry] } }),
        )
        .await;
    let total = created.ok()["bulkTag"]["total"].as_u64().unwrap();
    assert!(total as usize <= app.customers_of("sz01").await.len());
    // Nobody else's job is visible to it.
    let listed = app.gql("bj01.sales", "{ jobs(first: 10) { edges { node { id } } } }", json!({})).await;
    assert_eq!(listed.ok()["jobs"]["edges"], json!([]));
}

async fn bad_requests_are_refused_and_write_nothing(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let prospect = app.tag_id("客户阶段", "潜在客户").await;
    let paying = app.tag_id("客户阶段", "付费客户").await;
    let customers = app.customers_of("sz01").await;
    let cases = [
        (json!({ "customers": { "customerIds": customers } }), "VALIDATION"),
        (json!({ "customers": { "customerIds": customers }, "add": [inquiry], "remove": [inquiry] }), "VALIDATION"),
        (json!({ "customers": { "customerIds": customers }, "add": [prospect, paying] }), "VALIDATION"),
        (json!({ "customers": { "customerIds": [] }, "add": [inquiry] }), "VALIDATION"),
    ];
    for (input, code) in cases {
        let res = app.gql("south.manager", BULK_TAG, json!({ "input": input })).await;
        assert_eq!(res.code(), code, "{input}");
    }
    assert_eq!(job::Entity::find().count(&app.db).await.unwrap(), 0);
}

/// Batches that run side by side (two at a time on PostgreSQL) commit in
/// snapshot order: when the first batch fails, the batch prepared beside
/// it, which would have succeeded on its own, rolls back with it, and the
/// job's account says exactly what was applied: nothing.
async fn a_batch_never_commits_before_the_one_before_it(app: TestApp) {
    use sea_orm::{ActiveValue::Set, QueryOrder};
    let inquiry = app.tag_id("活动", "询价").await;
    let before = holders(&app, &inquiry).await;
    let mut lacking: Vec<String> =
        south_customers(&app).await.into_iter().filter(|c| !before.contains(&row_id(c))).collect();
    lacking.sort_by_key(|c| row_id(c));
    let customers: Vec<String> = lacking.into_iter().take(2 * BATCH).collect();
    assert_eq!(customers.len(), 2 * BATCH, "two batches of customers lacking the tag");
    // The first customer of the snapshot is given the most tags of them
    // all; the cap is set to its count, so its batch alone fails.
    let held = |c: i64| customer_tag::Entity::find().filter(customer_tag::Column::CustomerId.eq(c)).count(&app.db);
    let mut most = 0;
    for c in &customers[1..] {
        most = most.max(held(row_id(c)).await.unwrap());
    }
    let first = row_id(&customers[0]);
    let spare: Vec<i64> = entity::tag::Entity::find()
        .filter(entity::tag::Column::Status.eq(entity::enums::TagStatus::Active))
        .filter(entity::tag::Column::Id.ne(row_id(&inquiry)))
        .order_by_asc(entity::tag::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    let mut spare = spare.into_iter();
    while held(first).await.unwrap() <= most {
        let tag_id = spare.next().expect("enough tags to make the first customer the heaviest");
        let exists = customer_tag::Entity::find_by_id((first, tag_id)).one(&app.db).await.unwrap().is_some();
        if !exists {
            customer_tag::Entity::insert(customer_tag::ActiveModel {
                customer_id: Set(first),
                tag_id: Set(tag_id),
                source: Set(entity::enums::TagSource::Manual),
                source_ref: Set(None),
                tagged_by: Set(None),
                tagged_at: Set(chrono::Utc::now()),
                expires_at: Set(None),
            })
            .exec(&app.db)
            .await
            .unwrap();
        }
    }
    let cap = u32::try_from(held(first).await.unwrap()).unwrap();
    let id = job_adding(&app, "south.manager", &customers, &inquiry).await;
    let a = worker(&app, "a", |l| l.max_tags_per_customer = cap);
    assert_eq!(a.run_next().await.unwrap(), Some(RunEnd::Finished(JobStatus::Failed)));
    let failed = job_of(&app, "south.manager", &id).await;
    assert_eq!(failed["done"], 0, "{failed}");
    assert_eq!(failed["added"], 0, "{failed}");
    assert_eq!(failed["errors"][0]["code"], "LIMIT_EXCEEDED", "{failed}");
    assert_eq!(events_of_job(&app, &id).await, 0, "the second batch rolled back with the first");
    assert_eq!(holders(&app, &inquiry).await, before);
}

on_both_databases_in_batches!(
    a_batch_never_commits_before_the_one_before_it,
    a_job_from_a_segment_tags_exactly_its_snapshot,
    a_job_moves_customers_inside_an_exclusive_group,
    progress_is_streamed_until_the_job_ends,
    a_job_resumes_on_another_instance_after_its_instance_dies,
    a_cancelled_job_stops_between_batches_with_an_exact_account,
    a_job_beyond_the_callers_bulk_rights_waits_for_approval,
    locked_customers_are_skipped_and_reported,
    a_running_jobs_lock_covers_its_snapshot_and_nothing_else,
    tag_customers_over_its_limit_points_to_bulk_tag_and_becomes_a_job_with_one_flag,
    a_store_manager_cannot_bulk_tag_another_stores_customers,
    bad_requests_are_refused_and_write_nothing,
);

/// `tagbase bench bulk` runs end to end at a small size on PostgreSQL (the
/// figures are the bench's business, not the test's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulk_bench_runs_and_prints_its_table() {
    crate::helpers::within_deadline(async {
        let app = TestApp::spawn(Backend::Postgres).await;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tagbase"))
            .args(["bench", "bulk", "--sizes", "30,60", "--runs", "2", "--customers", "80", "--tags", "10"])
            .args(["--tags-per-customer", "2"])
            .env("DATABASE_URL", app.app.state.settings.database_url.as_str())
            .env("TAGBASE_JWT_SECRET", crate::helpers::TEST_JWT_SECRET)
            .env("TAGBASE_LOG", "warn")
            .output()
            .expect("run tagbase bench bulk");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        for row in ["| 30 | add one tag |", "| 30 | exclusive move (A → B) |", "| 60 | add one tag |", "2 run(s)"] {
            assert!(stdout.contains(row), "no {row:?} in\n{stdout}");
        }
    })
    .await;
}
