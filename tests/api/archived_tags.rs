//! Archived tags are retired: gone from customers, counts, filters,
//! segments (SQL and index) and exports, with history kept and everything
//! back on restore.

use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::on_both_databases;

const CUSTOMER: &str =
    "query($id: ID!) { customer(id: $id) { tags { tag { id } taggedAt } tagEvents(first: 20) { tag { id } op } } }";
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
    let events = c.ok()["customer"]["tagEvents"].as_array().unwrap().iter().filter(|e| e["tag"]["id"] == tag).count();
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
