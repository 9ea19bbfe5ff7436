//! The write path without a global lock: writers do not wait for each
//! other, and yet no follower of the logs (another instance's segment
//! index) ever misses or reorders a committed change. A transaction that
//! took a sequence number first and commits last is the case to get right.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;
use entity::enums::{TagOp, TagSource};
use entity::{customer, customer_tag, tag, tag_event};
use roaring::RoaringBitmap;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, TransactionTrait,
};
use serde_json::{Value, json};
use tagbase::segment::SegmentIndex;
use tagbase::startup::Application;

use crate::helpers::{Backend, TestApp};
use crate::on_both_databases;

const TAG: &str = "mutation($c: [ID!]!, $t: [ID!]!) {
    tagCustomers(input: { customerIds: $c, tagIds: $t }) { applied } }";
const UNTAG: &str = "mutation($c: [ID!]!, $t: [ID!]!) {
    untagCustomers(input: { customerIds: $c, tagIds: $t }) { applied } }";
const MERGE: &str = "mutation($in: MergeTagsInput!) { mergeTags(input: $in) { applied } }";

/// What a fresh build of the index finds in the database now.
async fn fresh_holders(db: &DatabaseConnection) -> BTreeMap<i64, RoaringBitmap> {
    let fresh = SegmentIndex::new();
    fresh.rebuild(db).await.expect("fresh build");
    fresh.tag_holders()
}

/// The assignments in the database, by tag.
async fn stored_holders(db: &DatabaseConnection) -> BTreeMap<i64, RoaringBitmap> {
    let mut out: BTreeMap<i64, RoaringBitmap> = BTreeMap::new();
    for row in customer_tag::Entity::find().all(db).await.unwrap() {
        out.entry(row.tag_id).or_default().insert(u32::try_from(row.customer_id).unwrap());
    }
    out
}

/// Writes an assignment and its event, as a tagger does, in `txn`.
async fn assign(txn: &sea_orm::DatabaseTransaction, customer_id: i64, tag_id: i64) -> i64 {
    let now = Utc::now();
    customer_tag::Entity::insert(customer_tag::ActiveModel {
        customer_id: Set(customer_id),
        tag_id: Set(tag_id),
        source: Set(TagSource::Manual),
        source_ref: Set(None),
        tagged_by: Set(None),
        tagged_at: Set(now),
        expires_at: Set(None),
    })
    .exec(txn)
    .await
    .unwrap();
    let event = tag_event::Entity::insert(tag_event::ActiveModel {
        seq: NotSet,
        customer_id: Set(customer_id),
        tag_id: Set(tag_id),
        op: Set(TagOp::Add),
        source: Set(TagSource::Manual),
        source_ref: Set(None),
        actor_staff_id: Set(None),
        occurred_at: Set(now),
    })
    .exec(txn)
    .await
    .unwrap();
    event.last_insert_id
}

/// PostgreSQL hands out sequence numbers at insert time: the transaction
/// that took the lower one may commit after another committed a higher
/// one and after a follower read that. The follower still applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_applies_a_transaction_that_commits_after_a_later_sequence_number() {
    let app = TestApp::spawn(Backend::Postgres).await;
    let follower = app.instance_with(|_| {}).await;
    let index = &follower.state.index;
    index.rebuild(&app.db).await.unwrap();
    let tag = tag::Entity::find().order_by_asc(tag::Column::Id).one(&app.db).await.unwrap().unwrap();
    let held: Vec<i64> = customer_tag::Entity::find()
        .filter(customer_tag::Column::TagId.eq(tag.id))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.customer_id)
        .collect();
    let free: Vec<i64> = customer::Entity::find()
        .filter(customer::Column::Id.is_not_in(held))
        .order_by_asc(customer::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .take(2)
        .collect();
    let (early, late) = (free[0], free[1]);

    let slow = app.db.begin().await.unwrap();
    let low = assign(&slow, early, tag.id).await;
    let fast = app.db.begin().await.unwrap();
    let high = assign(&fast, late, tag.id).await;
    assert!(low < high);
    fast.commit().await.unwrap();
    index.catch_up(&app.db).await.unwrap();
    let holders = index.tag_holders();
    assert!(holders[&tag.id].contains(late as u32), "the committed change is applied");
    assert!(!holders[&tag.id].contains(early as u32), "the one in flight is not, yet");

    slow.commit().await.unwrap();
    index.catch_up(&app.db).await.unwrap();
    assert!(index.tag_holders()[&tag.id].contains(early as u32), "the late commit is applied, not skipped");
    assert_eq!(index.tag_holders(), fresh_holders(&app.db).await);
}

/// A tiny deterministic generator: the same writes on every run.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Codes a racing writer may meet and that leave nothing half-done.
fn refused_cleanly(res: &Value) -> bool {
    let code = res["errors"][0]["extensions"]["code"].as_str().unwrap_or_default();
    matches!(code, "LOCKED" | "CONFLICT" | "VALIDATION")
}

/// Many writers on two instances of one database (tag, untag, moves
/// within an exclusive group, a merge), while a third instance follows the
/// logs as fast as it can: at the end its index, and those of the writing
/// instances, equal a fresh build and the stored assignments.
async fn concurrent_writers_leave_every_follower_equal_to_a_fresh_build(app: TestApp) {
    let exclusive = app.create_group("admin", "hq", "压测阶段", "behavior", true).await;
    let stages = [
        app.create_tag("admin", &exclusive, "阶段一").await,
        app.create_tag("admin", &exclusive, "阶段二").await,
        app.create_tag("admin", &exclusive, "阶段三").await,
    ];
    let open = app.create_group("admin", "hq", "压测兴趣", "behavior", false).await;
    let interests = [app.create_tag("admin", &open, "兴趣甲").await, app.create_tag("admin", &open, "兴趣乙").await];
    let mut customers = app.customers_of("sz01").await;
    for store in ["bj01", "gz01", "tj01"] {
        customers.extend(app.customers_of(store).await);
    }

    let second = app.instance_with(|_| {}).await;
    let follower = app.instance_with(|_| {}).await;
    for instance in [&app.app, &second, &follower] {
        instance.state.index.rebuild(&app.db).await.unwrap();
    }
    let writing = Arc::new(AtomicBool::new(true));
    let follow = {
        let (index, db, writing) = (follower.state.index.clone(), app.db.clone(), writing.clone());
        tokio::spawn(async move {
            let mut rounds = 0_u32;
            while writing.load(Ordering::Acquire) {
                index.catch_up(&db).await.expect("follower catch-up");
                rounds += 1;
                tokio::task::yield_now().await;
            }
            rounds
        })
    };

    let instances: [&Application; 2] = [&app.app, &second];
    let writer = |seed: u64| {
        let (app, customers, stages, interests, instances) = (&app, &customers, &stages, &interests, instances);
        async move {
            let mut dice = Dice(seed);
            for step in 0..50 {
                let instance = instances[(step + seed as usize) % 2];
                let mut picked: Vec<String> =
                    (0..1 + dice.below(3)).map(|_| customers[dice.below(customers.len())].clone()).collect();
                picked.sort();
                picked.dedup();
                let (query, tag) = match dice.below(4) {
                    0 => (TAG, &interests[dice.below(2)]),
                    1 => (UNTAG, &interests[dice.below(2)]),
                    2 => (TAG, &stages[dice.below(3)]),
                    _ => (UNTAG, &stages[dice.below(3)]),
                };
                let res = app.gql_on(instance, "admin", query, json!({ "c": picked, "t": [tag] })).await;
                assert!(res.0["errors"].is_null() || refused_cleanly(&res.0), "writer {seed}: {}", res.0);
            }
        }
    };
    let merge = async {
        tokio::task::yield_now().await;
        let app = &app;
        let version = |id: String| async move {
            let res = app.gql("admin", "query($id: ID!) { tag(id: $id) { version } }", json!({ "id": id })).await;
            res.ok()["tag"]["version"].as_i64().unwrap()
        };
        let input = json!({ "in": {
            "targetTagId": interests[0], "targetExpectedVersion": version(interests[0].clone()).await,
            "sourceTagId": interests[1], "sourceExpectedVersion": version(interests[1].clone()).await,
            "reason": "压测：两个兴趣并为一个" } });
        let res = app.gql_on(&second, "admin", MERGE, input).await;
        assert!(res.0["errors"].is_null() || refused_cleanly(&res.0), "merge: {}", res.0);
    };
    // Boxed: nine in-process GraphQL calls side by side are too large a
    // future for the test thread's stack in a debug build.
    let w = |seed| Box::pin(writer(seed));
    tokio::join!(w(1), w(2), w(3), w(4), w(5), w(6), w(7), w(8), Box::pin(merge));
    writing.store(false, Ordering::Release);
    assert!(follow.await.unwrap() > 0, "the follower read while the writers wrote");

    let stored = stored_holders(&app.db).await;
    assert_eq!(fresh_holders(&app.db).await, stored, "a fresh build reads what is stored");
    for (name, instance) in [("follower", &follower), ("first", &app.app), ("second", &second)] {
        instance.state.index.catch_up(&app.db).await.unwrap();
        assert_eq!(instance.state.index.tag_holders(), stored, "the {name} instance's index");
    }
}

on_both_databases!(concurrent_writers_leave_every_follower_equal_to_a_fresh_build);

/// Every PostgreSQL connection of the pool plans a prepared statement for
/// its own parameters: with a generic plan PostgreSQL cannot see the size
/// of an `= ANY($1)` array, and a batch's tag-cap count scanned every
/// assignment. Several transactions at once, so several connections answer.
async fn every_postgres_connection_plans_for_its_parameters(app: TestApp) {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    if app.db.get_database_backend() != DbBackend::Postgres {
        return;
    }
    let show = || async {
        let txn = app.db.begin().await.unwrap();
        let row = txn
            .query_one_raw(Statement::from_string(DbBackend::Postgres, "SHOW plan_cache_mode"))
            .await
            .unwrap()
            .expect("one row");
        let mode: String = row.try_get("", "plan_cache_mode").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        txn.commit().await.unwrap();
        mode
    };
    let modes = futures_util::future::join_all((0..4).map(|_| show())).await;
    assert_eq!(modes, vec!["force_custom_plan"; 4]);
}

on_both_databases!(every_postgres_connection_plans_for_its_parameters);

/// Customers, tags, jobs and staff are never deleted (a customer is
/// merged, a tag archived or merged, a job kept as the account of a bulk
/// run, a staff member deactivated): assignments, tag events, alerts and
/// job snapshots refer to them without a
/// per-row foreign-key check on PostgreSQL, so the database refuses the
/// delete itself, whoever connects.
async fn customers_and_tags_are_never_deleted(app: TestApp) {
    use sea_orm::ConnectionTrait;
    let customer = app.customers_of("sz01").await[0].clone();
    let tag = app.tag_id("华南区域标签", "南方气候").await;
    let job = app
        .gql(
            "admin",
            "mutation($c: [ID!]!, $t: [ID!]!) { bulkTag(input: { customers: { customerIds: $c }, add: $t }) { id } }",
            json!({ "c": [customer], "t": [tag] }),
        )
        .await;
    job.ok();
    for sql in [
        format!("DELETE FROM customer WHERE id = {}", crate::helpers::row_id(&customer)),
        format!("DELETE FROM tag WHERE id = {}", crate::helpers::row_id(&tag)),
        "DELETE FROM job".to_owned(),
        "DELETE FROM staff WHERE login = 'admin'".to_owned(),
    ] {
        let err = app.db.execute_unprepared(&sql).await.expect_err(&sql);
        assert!(err.to_string().contains("are never deleted"), "{sql}: {err}");
    }
    let res = app.gql("admin", "query($id: ID!) { customer(id: $id) { id } }", json!({ "id": customer })).await;
    assert_eq!(res.ok()["customer"]["id"], json!(customer));
}

on_both_databases!(customers_and_tags_are_never_deleted);
