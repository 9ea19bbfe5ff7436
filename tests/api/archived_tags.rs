//! Archived tags are retired: gone from customers, counts, filters,
//! segments (SQL and index) and exports, with history kept and everything
//! back on restore; cross analysis counts it for nobody, and its
//! assignments count against neither the per-customer cap nor the alert.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::{on_both_databases, on_both_databases_with};

const CUSTOMER: &str = "query($id: ID!) { customer(id: $id) { tags { tag { id } taggedAt } tagEvents(first: 20) { edges { node { tag { id } op } } } } }";
const COUNT: &str = "query($id: ID!) { tag(id: $id) { status customerCount } }";
const FILTERED: &str = "query($t: [ID!]) { all: customers(filter: { hasAllTags: $t }) { totalCount }
    any: customers(filter: { hasAnyTags: $t }) { totalCount } }";
const PREVIEW: &str = "query($s: String!) { segmentPreview(segment: { text: $s }) { count csv } }";
const SEGMENT_LIST: &str = "query($s: String!) { customers(segment: { text: $s }) { totalCount } }";

struct Seen {
    tags: Vec<Value>,
    events: usize,
    count: u64,
    filtered: (u64, u64),
    previews: Vec<u64>,
    listed: Vec<u64>,
    csv_mentions: bool,
}

async fn seen(app: &TestApp, tag: &str, name: &str, customer: &str, texts: &[String]) -> Seen {
    let c = app.gql("admin", CUSTOMER, json!({ "id": customer })).await;
    let tags: Vec<Value> =
        c.ok()["customer"]["tags"].as_array().unwrap().iter().filter(|t| t["tag"]["id"] == tag).cloned().collect();
    let events = c.ok()["customer"]["tagEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["node"]["tag"]["id"] == tag)
        .count();
    let count = app.gql("admin", COUNT, json!({ "id": tag })).await.ok()["tag"]["customerCount"].as_u64().unwrap();
    let f = app.gql("admin", FILTERED, json!({ "t": [tag] })).await;
    let filtered = (f.ok()["all"]["totalCount"].as_u64().unwrap(), f.ok()["any"]["totalCount"].as_u64().unwrap());
    let mut previews = Vec::new();
    let mut listed = Vec::new();
    let mut csv_mentions = false;
    for text in texts {
        let p = app.gql("admin", PREVIEW, json!({ "s": text })).await;
        previews.push(p.ok()["segmentPreview"]["count"].as_u64().unwrap());
        csv_mentions |= p.ok()["segmentPreview"]["csv"].as_str().unwrap().contains(name);
        let l = app.gql("admin", SEGMENT_LIST, json!({ "s": text })).await;
        listed.push(l.ok()["customers"]["totalCount"].as_u64().unwrap());
    }
    Seen { tags, events, count, filtered, previews, listed, csv_mentions }
}

async fn an_archived_tag_is_retired_everywhere_and_restored_intact(app: TestApp) {
    let group = app.create_group("admin", "hq", "退役测试组", "behavior", false).await;
    let tag = app.create_tag("admin", &group, "旧活动").await;
    let other = app.create_tag("admin", &group, "新活动").await;
    let customers = app.customers_of("sz01").await;
    let (two, rest) = customers.split_at(2);
    let tag_customers =
        "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }";
    app.gql("admin", tag_customers, json!({ "c": two, "t": [tag] })).await.ok();
    app.gql("admin", tag_customers, json!({ "c": [rest[0]], "t": [other] })).await.ok();
    // By id, as saved segments store them: by name, an archived tag is
    // NOT_FOUND (it has left the library).
    let (tag_row, other_row) = (
        crate::helpers::row_id(&app.tag_id("退役测试组", "旧活动").await),
        crate::helpers::row_id(&app.tag_id("退役测试组", "新活动").await),
    );
    let texts = [
        format!("tag(#{tag_row})"),
        format!("anyTag(#{tag_row}, #{other_row})"),
        "group(\"退役测试组\")".to_owned(),
        format!("NOT tag(#{tag_row}) AND group(\"退役测试组\")"),
    ];
    let before = seen(&app, &tag, "旧活动", &two[0], &texts).await;
    assert_eq!(before.tags.len(), 1);
    assert_eq!(before.events, 1);
    assert_eq!(before.count, 2);
    assert_eq!(before.filtered, (2, 2));
    assert_eq!(before.previews, [2, 3, 3, 1]);
    assert_eq!(before.listed, before.previews, "SQL and index agree");
    assert!(before.csv_mentions, "the export lists the tag");

    let archive = "mutation($id: ID!, $v: Int!) { archiveTag(input: { id: $id, expectedVersion: $v }) { tag { status version } } }";
    let res = app.gql("admin", archive, json!({ "id": tag, "v": 1 })).await;
    assert_eq!(res.ok()["archiveTag"]["tag"]["status"], "ARCHIVED");
    let version = res.ok()["archiveTag"]["tag"]["version"].clone();
    let archived = seen(&app, &tag, "旧活动", &two[0], &texts).await;
    assert!(archived.tags.is_empty(), "Customer.tags leaves it out");
    assert_eq!(archived.events, 1, "its history stays readable");
    assert_eq!(archived.count, 0);
    assert_eq!(archived.filtered, (0, 0), "a filter on it matches nobody");
    assert_eq!(archived.previews, [0, 1, 1, 1], "segments match nobody through it");
    assert_eq!(archived.listed, archived.previews, "SQL and index agree");
    assert!(!archived.csv_mentions, "exports leave it out");
    let by_name = app.gql("admin", PREVIEW, json!({ "s": "tag(\"旧活动\")" })).await;
    assert_eq!(by_name.code(), "NOT_FOUND", "a new query cannot name it");

    let restore =
        "mutation($id: ID!, $v: Int!) { restoreTag(input: { id: $id, expectedVersion: $v }) { tag { status } } }";
    let res = app.gql("admin", restore, json!({ "id": tag, "v": version })).await;
    assert_eq!(res.ok()["restoreTag"]["tag"]["status"], "ACTIVE");
    let restored = seen(&app, &tag, "旧活动", &two[0], &texts).await;
    assert_eq!(restored.tags, before.tags, "restore brings the assignment back intact");
    assert_eq!(
        (restored.count, restored.filtered, restored.previews.clone(), restored.listed.clone()),
        (before.count, before.filtered, before.previews.clone(), before.listed.clone())
    );
    assert!(restored.csv_mentions);
}

on_both_databases!(an_archived_tag_is_retired_everywhere_and_restored_intact);

const COOCCURRENCE: &str =
    "query($t: [ID!]!, $s: SegmentInput) { tagCooccurrence(tagIds: $t, segment: $s) { a { id } b { id } count } }";

/// The counts of a cross analysis by pair of tag ids (as the answer spells
/// them), on `instance`.
async fn crossed(
    app: &TestApp,
    instance: &tagbase::startup::Application,
    tags: &[&String],
    segment: Option<&str>,
) -> Vec<(String, String, u64)> {
    let vars = json!({ "t": tags, "s": segment.map(|text| json!({ "text": text })) });
    let res = app.gql_on(instance, "admin", COOCCURRENCE, vars).await;
    let mut pairs: Vec<(String, String, u64)> = res.ok()["tagCooccurrence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let (a, b) = (p["a"]["id"].as_str().unwrap().to_owned(), p["b"]["id"].as_str().unwrap().to_owned());
            (Ord::min(a.clone(), b.clone()), Ord::max(a, b), p["count"].as_u64().unwrap())
        })
        .collect();
    pairs.sort();
    pairs
}

async fn cross_analysis_counts_an_archived_tag_for_nobody(app: TestApp) {
    let group = app.create_group("admin", "hq", "退役交叉组", "behavior", false).await;
    let old = app.create_tag("admin", &group, "旧交叉").await;
    let kept = app.create_tag("admin", &group, "新交叉").await;
    let customers = app.customers_of("sz01").await;
    let tag_customers =
        "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }";
    app.gql("admin", tag_customers, json!({ "c": customers[..2], "t": [old, kept] })).await.ok();
    app.gql("admin", tag_customers, json!({ "c": [customers[2]], "t": [kept] })).await.ok();
    // This instance never builds its segment index: it answers from SQL.
    let sql = app.instance_with(|_| {}).await;
    assert!(!sql.state.index.is_ready());
    let segment = "group(\"退役交叉组\")";
    let all_paths = || async {
        let mut seen = Vec::new();
        for instance in [&app.app, &sql] {
            for segment in [None, Some(segment)] {
                seen.push(crossed(&app, instance, &[&old, &kept], segment).await);
            }
        }
        seen
    };
    let expect = |with_old: u64| {
        let pair = (Ord::min(old.clone(), kept.clone()), Ord::max(old.clone(), kept.clone()));
        let mut pairs =
            vec![(old.clone(), old.clone(), with_old), (pair.0, pair.1, with_old), (kept.clone(), kept.clone(), 3)];
        pairs.sort();
        vec![pairs; 4]
    };
    assert_eq!(all_paths().await, expect(2), "index and SQL, with and without a segment");

    let archive =
        "mutation($id: ID!, $v: Int!) { archiveTag(input: { id: $id, expectedVersion: $v }) { tag { version } } }";
    let res = app.gql("admin", archive, json!({ "id": old, "v": 1 })).await;
    let version = res.ok()["archiveTag"]["tag"]["version"].clone();
    assert_eq!(all_paths().await, expect(0), "by id, an archived tag matches nobody");

    let restore =
        "mutation($id: ID!, $v: Int!) { restoreTag(input: { id: $id, expectedVersion: $v }) { tag { status } } }";
    app.gql("admin", restore, json!({ "id": old, "v": version })).await.ok();
    assert_eq!(all_paths().await, expect(2), "restored, it counts again");
}

on_both_databases!(cross_analysis_counts_an_archived_tag_for_nobody);

const TAG: &str = "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) {
    added removed } }";

/// Limits of this test: a customer holds at most 3 tags, and passing 2
/// raises an alert.
async fn an_archived_tag_counts_against_neither_the_cap_nor_the_alert(app: TestApp) {
    let plain = app.create_group("admin", "hq", "退役上限组", "behavior", false).await;
    let exclusive = app.create_group("admin", "hq", "退役互斥组", "behavior", true).await;
    let mut tags = Vec::new();
    for name in ["偏好一", "偏好二", "偏好三"] {
        tags.push(app.create_tag("admin", &plain, name).await);
    }
    let old = app.create_tag("admin", &exclusive, "旧等级").await;
    let new = app.create_tag("admin", &exclusive, "新等级").await;
    let res = app
        .gql(
            "admin",
            "mutation($u: ID!) { createCustomer(input: { orgUnitId: $u, name: \"退役客户\" }) { customer { id } } }",
            json!({ "u": app.unit_id("sz01") }),
        )
        .await;
    let customer = res.ok()["createCustomer"]["customer"]["id"].as_str().unwrap().to_owned();
    let db = &app.db;
    let id = crate::helpers::row_id(&customer);
    let alerts_of = || async move {
        entity::tag_alert::Entity::find()
            .filter(entity::tag_alert::Column::CustomerId.eq(id))
            .all(db)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.tag_count)
            .collect::<Vec<_>>()
    };
    app.gql("admin", TAG, json!({ "c": [customer], "t": [old, tags[0]] })).await.ok();
    let archive = "mutation($id: ID!) { archiveTag(input: { id: $id, expectedVersion: 1 }) { tag { status } } }";
    app.gql("admin", archive, json!({ "id": old })).await.ok();

    // One tag in force: a second does not pass the alert threshold …
    app.gql("admin", TAG, json!({ "c": [customer], "t": [tags[1]] })).await.ok();
    assert_eq!(alerts_of().await, Vec::<i32>::new(), "the archived tag is not counted");
    // … a third does, and stays within the cap.
    let res = app.gql("admin", TAG, json!({ "c": [customer], "t": [tags[2]] })).await;
    assert_eq!(res.ok()["tagCustomers"]["added"], 1, "within the cap of 3");
    assert_eq!(alerts_of().await, vec![3]);
    // Replacing the archived tag of an exclusive group frees no room: it
    // was not counted.
    let before = app.snapshot().await;
    let res = app.gql("admin", TAG, json!({ "c": [customer], "t": [new] })).await;
    assert_eq!(res.code(), "LIMIT_EXCEEDED");
    assert_eq!(app.snapshot().await, before, "nothing written");
}

on_both_databases_with!(
    an_archived_tag_counts_against_neither_the_cap_nor_the_alert =>
        tagbase::config::Limits { max_tags_per_customer: 3, tag_alert_threshold: 2, ..tagbase::config::Limits::default() }
);
