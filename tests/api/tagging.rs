//! Tagging: idempotence, exclusive groups, caps and alerts, provenance,
//! and all-or-nothing writes.

use entity::{tag_alert, tag_event};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use tagbase::config::Limits;

use crate::helpers::{Backend, TestApp};
use crate::on_both_databases;

const TAG: &str = "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) {
    added removed unchanged customers { id } } }";
const UNTAG: &str = "mutation($c: [ID!]!, $t: [ID!]!) { untagCustomers(input: { customerIds: $c, tagIds: $t }) {
    added removed unchanged } }";
const TAGS_OF: &str = "query($id: ID!) { customer(id: $id) { lifecycleStage { name }
    tags { tag { id name group { name } } source taggedBy { login } taggedAt } } }";

async fn tags_of(app: &TestApp, login: &str, customer: &str) -> Vec<Value> {
    app.gql(login, TAGS_OF, json!({ "id": customer })).await.ok()["customer"]["tags"].as_array().unwrap().clone()
}

/// A customer of sz01 created fresh, so it holds no seeded tags.
async fn fresh_customer(app: &TestApp) -> String {
    let res = app
        .gql(
            "sz01.sales",
            "mutation($u: ID!) { createCustomer(input: { orgUnitId: $u, name: \"新客户\" }) { customer { id } } }",
            json!({ "u": app.unit_id("sz01") }),
        )
        .await;
    res.ok()["createCustomer"]["customer"]["id"].as_str().unwrap().to_owned()
}

async fn tagging_is_idempotent_and_records_provenance(app: TestApp) {
    let customer = fresh_customer(&app).await;
    let inquiry = app.tag_id("活动", "询价").await;
    let before = app.snapshot().await;
    let first = app.gql("sz01.sales", TAG, json!({ "c": [customer], "t": [inquiry] })).await;
    assert_eq!(first.ok()["tagCustomers"]["added"], 1);
    let after_first = app.snapshot().await;
    assert_eq!(after_first.assignments, before.assignments + 1);
    assert_eq!(after_first.events, before.events + 1);
    assert_eq!(after_first.audit, before.audit + 1);
    let second = app.gql("sz01.sales", TAG, json!({ "c": [customer], "t": [inquiry] })).await;
    assert_eq!(second.ok()["tagCustomers"]["added"], 0);
    assert_eq!(second.ok()["tagCustomers"]["unchanged"], 1);
    let after_second = app.snapshot().await;
    assert_eq!(after_second.assignments, after_first.assignments);
    assert_eq!(after_second.events, after_first.events, "a repeat writes no event");
    let tags = tags_of(&app, "sz01.manager", &customer).await;
    assert_eq!(tags.len(), 1);
    assert_eq!(tags[0]["tag"]["name"], "询价");
    assert_eq!(tags[0]["source"], "MANUAL");
    assert_eq!(tags[0]["taggedBy"]["login"], "sz01.sales");
}

async fn an_exclusive_group_keeps_one_tag_per_customer(app: TestApp) {
    let customer = fresh_customer(&app).await;
    let prospect = app.tag_id("客户阶段", "潜在客户").await;
    let paying = app.tag_id("客户阶段", "付费客户").await;
    app.gql("sz01.sales", TAG, json!({ "c": [customer], "t": [prospect] })).await.ok();
    let before = app.snapshot().await;
    let res = app.gql("sz01.sales", TAG, json!({ "c": [customer], "t": [paying] })).await;
    assert_eq!(res.ok()["tagCustomers"]["added"], 1);
    assert_eq!(res.ok()["tagCustomers"]["removed"], 1);
    let stage = app.gql("sz01.sales", TAGS_OF, json!({ "id": customer })).await;
    assert_eq!(stage.ok()["customer"]["lifecycleStage"]["name"], "付费客户");
    let names: Vec<Value> =
        tags_of(&app, "sz01.sales", &customer).await.iter().map(|t| t["tag"]["name"].clone()).collect();
    assert_eq!(names, vec![json!("付费客户")]);
    let after = app.snapshot().await;
    assert_eq!(after.assignments, before.assignments, "one replaced by one");
    assert_eq!(after.events, before.events + 2, "a REMOVE and an ADD");
    assert_eq!(after.audit, before.audit + 1, "as one change");
    let ops: Vec<String> = tag_event::Entity::find()
        .filter(tag_event::Column::CustomerId.eq(crate::helpers::row_id(&customer)))
        .order_by_asc(tag_event::Column::Seq)
        .all(&app.db)
        .await
        .unwrap()
        .iter()
        .map(|e| format!("{:?}:{}", e.op, e.tag_id))
        .collect();
    let (prospect_row, paying_row) = (crate::helpers::row_id(&prospect), crate::helpers::row_id(&paying));
    assert_eq!(ops, vec![format!("Add:{prospect_row}"), format!("Remove:{prospect_row}"), format!("Add:{paying_row}")]);
    // Two tags of one exclusive group in one call is an error.
    let both = app.gql("sz01.sales", TAG, json!({ "c": [customer], "t": [prospect, paying] })).await;
    assert_eq!(both.code(), "VALIDATION");
}

async fn unknown_or_foreign_tags_and_customers_write_nothing(app: TestApp) {
    let customer = fresh_customer(&app).await;
    let inquiry = app.tag_id("活动", "询价").await;
    let north_tag = app.tag_id("华北区域标签", "北方肤质").await;
    let bj_customer = app.customers_of("bj01").await[0].clone();
    let before = app.snapshot().await;
    let cases = [
        (json!({ "c": [customer], "t": [inquiry, "99999"] }), "NOT_FOUND"),
        (json!({ "c": [customer, "99999"], "t": [inquiry] }), "NOT_FOUND"),
        (json!({ "c": [customer, bj_customer], "t": [inquiry] }), "NOT_FOUND"),
        (json!({ "c": [customer], "t": [north_tag] }), "NOT_FOUND"),
        (json!({ "c": [customer], "t": ["x"] }), "VALIDATION"),
        (json!({ "c": [], "t": [inquiry] }), "VALIDATION"),
    ];
    for (vars, code) in cases {
        let res = app.gql("sz01.sales", TAG, vars.clone()).await;
        assert_eq!(res.code(), code, "{vars}");
    }
    // HQ sees the north tag, but it is not in a south store's library.
    let res = app.gql("admin", TAG, json!({ "c": [customer], "t": [north_tag] })).await;
    assert_eq!(res.code(), "VALIDATION");
    // Auditors read but never tag.
    let res = app.gql("hq.auditor", TAG, json!({ "c": [customer], "t": [inquiry] })).await;
    assert_eq!(res.code(), "FORBIDDEN");
    assert_eq!(app.snapshot().await, before, "nothing half-written");
}

async fn the_tag_cap_refuses_the_whole_call(app: TestApp) {
    let customer = fresh_customer(&app).await;
    let mut prefs = Vec::new();
    for name in ["母婴用品", "童装", "美妆护肤", "运动户外", "数码家电", "生鲜食品"] {
        prefs.push(app.tag_id("品类偏好", name).await);
    }
    // Limits of this test: cap 5, alert above 3. The alert is recorded for
    // review, not told to the tagger (the count includes tags it may not
    // see).
    let db = &app.db;
    let id: i64 = crate::helpers::row_id(&customer);
    let alerts_of =
        || async move { tag_alert::Entity::find().filter(tag_alert::Column::CustomerId.eq(id)).all(db).await.unwrap() };
    app.gql("sz01.sales", TAG, json!({ "c": [customer], "t": prefs[..3] })).await.ok();
    assert!(alerts_of().await.is_empty());
    app.gql("sz01.sales", TAG, json!({ "c": [customer], "t": [prefs[3]] })).await.ok();
    let alerts = alerts_of().await;
    assert_eq!(alerts.len(), 1, "crossing 3 raises an alert");
    assert_eq!(alerts[0].tag_count, 4);
    let before = app.snapshot().await;
    let res = app.gql("sz01.sales", TAG, json!({ "c": [customer], "t": [prefs[4], prefs[5]] })).await;
    assert_eq!(res.code(), "LIMIT_EXCEEDED");
    assert_eq!(app.snapshot().await, before, "neither tag was added");
    app.gql("sz01.sales", TAG, json!({ "c": [customer], "t": [prefs[4]] })).await.ok();
    assert_eq!(tag_alert::Entity::find().count(&app.db).await.unwrap(), 1, "already above the threshold");
}

async fn the_tag_cap_refuses_the_whole_call_with_small_limits(backend: Backend) {
    let limits = Limits { max_tags_per_customer: 5, tag_alert_threshold: 3, ..Limits::default() };
    the_tag_cap_refuses_the_whole_call(TestApp::spawn_with(backend, limits).await).await;
}

async fn untagging_is_idempotent(app: TestApp) {
    let customer = fresh_customer(&app).await;
    let inquiry = app.tag_id("活动", "询价").await;
    app.gql("sz01.sales", TAG, json!({ "c": [customer], "t": [inquiry] })).await.ok();
    let first = app.gql("sz01.sales", UNTAG, json!({ "c": [customer], "t": [inquiry] })).await;
    assert_eq!(first.ok()["untagCustomers"]["removed"], 1);
    let before = app.snapshot().await;
    let second = app.gql("sz01.sales", UNTAG, json!({ "c": [customer], "t": [inquiry] })).await;
    assert_eq!(second.ok()["untagCustomers"]["removed"], 0);
    assert_eq!(second.ok()["untagCustomers"]["unchanged"], 1);
    let after = app.snapshot().await;
    assert_eq!((after.assignments, after.events), (before.assignments, before.events));
    assert!(tags_of(&app, "sz01.sales", &customer).await.is_empty());
}

async fn oversized_tagging_calls_are_limit_errors(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let many: Vec<String> = (1..=1001).map(|i| i.to_string()).collect();
    let res = app.gql("admin", TAG, json!({ "c": many, "t": [inquiry] })).await;
    assert_eq!(res.code(), "LIMIT_EXCEEDED");
}

on_both_databases!(
    tagging_is_idempotent_and_records_provenance,
    an_exclusive_group_keeps_one_tag_per_customer,
    unknown_or_foreign_tags_and_customers_write_nothing,
    untagging_is_idempotent,
    oversized_tagging_calls_are_limit_errors,
);

mod the_tag_cap_refuses_the_whole_call {
    use crate::helpers::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::the_tag_cap_refuses_the_whole_call_with_small_limits(Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::the_tag_cap_refuses_the_whole_call_with_small_limits(Backend::Postgres).await;
    }
}
