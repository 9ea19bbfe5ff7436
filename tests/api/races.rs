//! Races and half-done work: bulk runs against single writers (the 4S-store
//! case under load), bulk calls that fail midway, concurrent policy edits,
//! approvers' previews against writers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use entity::enums::{Gender, TagOp, TagSource};
use entity::{audit_log, customer, customer_tag, modification_lock, tag_event};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde_json::{Value, json};
use tagbase::config::Limits;

use crate::helpers::{Backend, TestApp};
use crate::{on_both_databases, on_both_databases_with};

const TAG_CUSTOMERS: &str = "mutation($c: [ID!]!, $t: [ID!]!, $r: String) {
    tagCustomers(input: { customerIds: $c, tagIds: $t, sourceRef: $r }) { applied added removed unchanged kept } }";
const UNTAG_CUSTOMERS: &str = "mutation($c: [ID!]!, $t: [ID!]!) {
    untagCustomers(input: { customerIds: $c, tagIds: $t }) { applied removed } }";

/// Adds `n` customers to a store, directly in the database, and returns
/// their ids.
async fn add_customers(app: &TestApp, store: &str, n: usize) -> Vec<String> {
    let unit = app.unit(store);
    let now = Utc::now();
    let rows: Vec<customer::ActiveModel> = (0..n)
        .map(|i| customer::ActiveModel {
            id: NotSet,
            org_unit_id: Set(unit),
            owner_staff_id: Set(None),
            name: Set(format!("并发客户{store}-{i}")),
            phone: Set(None),
            gender: Set(Gender::Unknown),
            birth_date: Set(None),
            city: Set(None),
            industry: Set(None),
            channel: Set(None),
            total_spend_cents: Set(0),
            order_count: Set(0),
            last_order_at: Set(None),
            added_at: Set(now),
            updated_at: Set(now),
            version: Set(1),
        })
        .collect();
    for chunk in rows.chunks(200) {
        customer::Entity::insert_many(chunk.to_vec()).exec(&app.db).await.unwrap();
    }
    app.customers_of(store).await
}

async fn event_log_head(app: &TestApp) -> i64 {
    tag_event::Entity::find()
        .order_by_desc(tag_event::Column::Seq)
        .one(&app.db)
        .await
        .unwrap()
        .map_or(0, |e| e.seq)
}

/// The 4S-store case under parallel load: salespeople tag and untag their
/// customers' follow-up stage while two bulk holders run campaigns over the
/// same group. Every write is either refused with LOCKED or stays: no bulk
/// event changes a customer's stage after a salesperson's write that came
/// after the bulk call began.
async fn a_bulk_run_never_overwrites_a_write_it_accepted(app: TestApp) {
    let group = app.create_group("admin", "hq", "跟进阶段", "behavior", true).await;
    let stage_a = app.create_tag("admin", &group, "试驾预约").await;
    let stage_b = app.create_tag("admin", &group, "已完成交易").await;
    let sz01 = add_customers(&app, "sz01", 40).await;
    let bj01 = add_customers(&app, "bj01", 40).await;
    let mut everyone = sz01.clone();
    everyone.extend(bj01.iter().cloned());

    let deadline = Instant::now() + Duration::from_secs(120);
    let writer = |login: &'static str, customers: Vec<String>, seed: usize| {
        let app = &app;
        let (a, b) = (stage_a.clone(), stage_b.clone());
        async move {
            let mut accepted = 0;
            for i in 0..60 {
                if Instant::now() > deadline {
                    break;
                }
                let c = &customers[(i * 7 + seed) % customers.len()];
                let tag = if (i + seed) % 3 == 0 { &a } else { &b };
                let res = if i % 4 == 3 {
                    app.gql(login, UNTAG_CUSTOMERS, json!({ "c": [c], "t": [tag] })).await
                } else {
                    app.gql(login, TAG_CUSTOMERS, json!({ "c": [c], "t": [tag] })).await
                };
                if res.0.get("errors").is_some() {
                    assert_eq!(res.code(), "LOCKED", "a writer is refused only by a lock: {:#}", res.0);
                } else {
                    accepted += 1;
                }
            }
            accepted
        }
    };
    let runs = |login: &'static str, offset: usize| {
        let app = &app;
        let everyone = everyone.clone();
        let tags = [stage_a.clone(), stage_b.clone()];
        async move {
            let mut heads = Vec::new();
            for i in 0..3 {
                if Instant::now() > deadline {
                    break;
                }
                let run = format!("{login}-run-{i}");
                let head = event_log_head(app).await;
                let tag = &tags[(i + offset) % 2];
                let res = app.gql(login, TAG_CUSTOMERS, json!({ "c": everyone, "t": [tag], "r": run })).await;
                if res.0.get("errors").is_some() {
                    assert_eq!(res.code(), "LOCKED", "{:#}", res.0);
                } else {
                    assert_eq!(res.ok()["tagCustomers"]["applied"], true);
                    heads.push((run, head));
                }
            }
            heads
        }
    };
    let (w1, w2, w3, r1, r2) = tokio::join!(
        writer("sz01.sales", sz01.clone(), 0),
        writer("bj01.sales", bj01.clone(), 1),
        writer("sz01.sales", sz01.clone(), 2),
        runs("hq.marketing", 0),
        runs("admin", 1),
    );
    assert!(w1 + w2 + w3 > 0, "some writes landed");
    let applied: Vec<(String, i64)> = r1.into_iter().chain(r2).collect();
    assert!(!applied.is_empty(), "some runs applied");

    // Each applied run says in its audit row as of which event it applied.
    let rows = audit_log::Entity::find().filter(audit_log::Column::Action.eq("customer.tag")).all(&app.db).await.unwrap();
    let as_of: HashMap<String, i64> = rows
        .iter()
        .filter_map(|r| Some((r.detail["sourceRef"].as_str()?.to_owned(), r.detail["asOfEvent"].as_i64()?)))
        .collect();
    let group_tags = [stage_a.parse::<i64>().unwrap(), stage_b.parse::<i64>().unwrap()];
    let events = tag_event::Entity::find()
        .filter(tag_event::Column::TagId.is_in(group_tags))
        .order_by_asc(tag_event::Column::Seq)
        .all(&app.db)
        .await
        .unwrap();
    let mut last_manual: HashMap<i64, i64> = HashMap::new();
    let mut checked = 0;
    for e in &events {
        match e.source {
            TagSource::Manual => {
                last_manual.insert(e.customer_id, e.seq);
            }
            TagSource::Bulk => {
                let run = e.source_ref.clone().unwrap_or_default();
                let (_, head) = applied.iter().find(|(r, _)| *r == run).expect("events of applied runs only");
                let since = *as_of.get(&run).unwrap_or_else(|| panic!("run {run} has no asOfEvent in its audit row"));
                assert!(since >= *head, "run {run} applies as of event {since}, before the call was sent ({head})");
                if let Some(manual) = last_manual.get(&e.customer_id) {
                    assert!(
                        *manual <= since,
                        "run {run} changed customer {}'s stage ({:?} seq {}) after a salesperson's write (seq {manual}) \
                         that came after the run began (as of {since})",
                        e.customer_id,
                        e.op,
                        e.seq
                    );
                }
                checked += 1;
            }
            _ => {}
        }
    }
    assert!(checked > 0, "the runs changed stages");
    let open = modification_lock::Entity::find().filter(modification_lock::Column::ReleasedAt.is_null()).count(&app.db);
    assert_eq!(open.await.unwrap(), 0, "every run released its locks");
}

/// Archiving a tag while a 1,000-customer call runs: the call is all or
/// nothing. Either it applied to every customer (and the archive came
/// after), or it answered an error and wrote nothing: no assignment, event
/// or tagging audit row.
async fn a_bulk_call_that_fails_midway_writes_nothing(app: TestApp) {
    let group = app.create_group("admin", "hq", "活动批量", "behavior", false).await;
    let tag = app.create_tag("admin", &group, "春季活动").await;
    let mut customers = add_customers(&app, "sz01", 500).await;
    customers.extend(add_customers(&app, "gz01", 500 - crate::helpers::TEST_CUSTOMERS_PER_STORE).await);
    customers.truncate(1_000);
    assert_eq!(customers.len(), 1_000);
    let tag_id: i64 = tag.parse().unwrap();

    let db = app.db.clone();
    let archive = async {
        // Archive once the run holds its locks, that is while it runs.
        let deadline = Instant::now() + Duration::from_secs(60);
        while modification_lock::Entity::find().count(&db).await.unwrap() == 0 {
            assert!(Instant::now() < deadline, "the run never took its lock");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        app.gql(
            "admin",
            "mutation($id: ID!) { archiveTag(input: { id: $id, expectedVersion: 1 }) { tag { status } } }",
            json!({ "id": tag }),
        )
        .await
    };
    let run = app.gql("admin", TAG_CUSTOMERS, json!({ "c": customers, "t": [tag], "r": "春季" }));
    let (run, archived) = tokio::join!(run, archive);
    assert_eq!(archived.ok()["archiveTag"]["tag"]["status"], "ARCHIVED");

    let assignments = customer_tag::Entity::find().filter(customer_tag::Column::TagId.eq(tag_id)).count(&app.db);
    let assignments = assignments.await.unwrap();
    let events = tag_event::Entity::find()
        .filter(tag_event::Column::TagId.eq(tag_id))
        .filter(tag_event::Column::Op.eq(TagOp::Add))
        .count(&app.db)
        .await
        .unwrap();
    let audit_rows = audit_log::Entity::find()
        .filter(audit_log::Column::Action.eq("customer.tag"))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.detail["sourceRef"] == "春季")
        .count();
    if run.0.get("errors").is_some() {
        assert_eq!(run.code(), "VALIDATION", "{:#}", run.0);
        assert_eq!((assignments, events, audit_rows), (0, 0, 0), "a failed call wrote nothing");
    } else {
        assert_eq!(run.ok()["tagCustomers"]["added"], 1_000);
        assert_eq!((assignments, events, audit_rows), (1_000, 1_000, 1), "an applied call wrote everything");
    }
    let unlocked = audit_log::Entity::find().filter(audit_log::Column::Action.eq("tag_group.unlock")).all(&app.db);
    let unlocked = unlocked.await.unwrap();
    assert_eq!(unlocked.len(), 1);
    assert_eq!(
        unlocked[0].detail["completed"],
        run.0.get("errors").is_none(),
        "the unlock row says whether the run completed"
    );
}

on_both_databases_with!(
    a_bulk_run_never_overwrites_a_write_it_accepted => Limits { bulk_threshold: 4, ..Limits::default() },
);

on_both_databases!(a_bulk_call_that_fails_midway_writes_nothing);
