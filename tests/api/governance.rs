//! Governance (SPEC §4–§6): library edits with versions, direct or by
//! change request as the policy says; approving, rejecting, racing and
//! stale requests; merges and rollbacks; modification locks (the 4S-store
//! case) and bulk tagging by request.

use std::time::{Duration, Instant};

use entity::{customer_tag, modification_lock, tag_event};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use tagbase::config::Limits;

use crate::helpers::{Gql, TestApp};
use crate::{on_both_databases, on_both_databases_with};

const TAG: &str = "query($id: ID!) { tag(id: $id) { id name description status version aliases
    customerCount group { id name } mergedInto { id name } } }";
const REQUEST_FIELDS: &str = "id kind status reason change baseVersions scope { code } requester { login }
    decidedBy { login } decisionComment tag { name } tagGroup { name }";

fn update_tag() -> String {
    format!(
        "mutation($in: UpdateTagInput!) {{ updateTag(input: $in) {{ applied tag {{ name version description }}
        changeRequest {{ {REQUEST_FIELDS} }} }} }}"
    )
}

fn update_group() -> String {
    format!(
        "mutation($in: UpdateTagGroupInput!) {{ updateTagGroup(input: $in) {{ applied tagGroup {{ name version description }}
        changeRequest {{ {REQUEST_FIELDS} }} }} }}"
    )
}

async fn edit_tag(app: &TestApp, login: &str, input: Value) -> Gql {
    app.gql(login, &update_tag(), json!({ "in": input })).await
}

async fn edit_group(app: &TestApp, login: &str, input: Value) -> Gql {
    app.gql(login, &update_group(), json!({ "in": input })).await
}

fn approve() -> String {
    format!(
        "mutation($id: ID!, $c: String) {{ approveChangeRequest(id: $id, comment: $c) {{
        changeRequest {{ {REQUEST_FIELDS} }} tag {{ name version }} tagGroup {{ name version }} }} }}"
    )
}

fn reject() -> String {
    format!(
        "mutation($id: ID!, $r: String!) {{ rejectChangeRequest(id: $id, reason: $r) {{ changeRequest {{ {REQUEST_FIELDS} }} }} }}"
    )
}

fn cancel() -> String {
    format!("mutation($id: ID!) {{ cancelChangeRequest(id: $id) {{ changeRequest {{ {REQUEST_FIELDS} }} }} }}")
}

fn request_query() -> String {
    format!("query($id: ID!) {{ changeRequest(id: $id) {{ {REQUEST_FIELDS} }} }}")
}

const HISTORY: &str = "query($id: ID!) { tagHistory(tagId: $id) { version action state
    changes { field from to } changedBy { login } changeRequestId } }";
const TAG_CUSTOMERS: &str = "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) {
    applied added removed unchanged changeRequest { id kind status scope { code } } } }";
const PREVIEW: &str = "query($t: String!) { segmentPreview(segment: { text: $t }) { count } }";

async fn tag(app: &TestApp, login: &str, id: &str) -> Value {
    app.gql(login, TAG, json!({ "id": id })).await.ok()["tag"].clone()
}

async fn version_of(app: &TestApp, id: &str) -> i64 {
    tag(app, "admin", id).await["version"].as_i64().unwrap()
}

async fn group_version(app: &TestApp, id: &str) -> i64 {
    let res = app.gql("admin", "query($id: ID!) { tagGroup(id: $id) { version } }", json!({ "id": id })).await;
    res.ok()["tagGroup"]["version"].as_i64().unwrap()
}

async fn history(app: &TestApp, login: &str, id: &str) -> Vec<Value> {
    app.gql(login, HISTORY, json!({ "id": id })).await.ok()["tagHistory"].as_array().unwrap().clone()
}

async fn holders(app: &TestApp, tag_id: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = customer_tag::Entity::find()
        .filter(customer_tag::Column::TagId.eq(crate::helpers::row_id(tag_id)))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.customer_id)
        .collect();
    ids.sort_unstable();
    ids
}

fn request_of(res: &Gql, field: &str) -> Value {
    let payload = &res.ok()[field];
    assert_eq!(payload["applied"], false, "{payload:#}");
    payload["changeRequest"].clone()
}

/// A store group sales may see (behaviour class) with one tag, made by the
/// store manager directly: `(group id, tag id)`.
async fn store_tag(app: &TestApp) -> (String, String) {
    let group = app.create_group("sz01.manager", "sz01", "门店活动", "behavior", false).await;
    let tag = app.create_tag("sz01.manager", &group, "周末到店").await;
    (group, tag)
}

/// A store manager edits its own store's group directly; its edit of the
/// region's group becomes a request for the region, which the region
/// manager approves — applied as the requester's edit, with a version that
/// names the request.
async fn a_store_proposes_and_its_region_approves(app: TestApp) {
    // Direct: the store's own layer.
    let own = app.tag_id("门店专属", "特殊护理需求").await;
    let res = edit_tag(
        &app,
        "sz01.manager",
        json!({ "id": own, "expectedVersion": version_of(&app, &own).await, "description": "术后、孕产护理" }),
    )
    .await;
    let payload = &res.ok()["updateTag"];
    assert_eq!(payload["applied"], true);
    assert!(payload["changeRequest"].is_null());
    assert_eq!(payload["tag"]["description"], "术后、孕产护理");

    // By request: the region's layer.
    let regional = app.tag_id("华南区域标签", "南方气候").await;
    let before = version_of(&app, &regional).await;
    let res = edit_tag(
        &app,
        "sz01.manager",
        json!({ "id": regional, "expectedVersion": before, "name": "南方湿热气候",
                            "reason": "门店反馈：名称更准确" }),
    )
    .await;
    let request = request_of(&res, "updateTag");
    assert!(res.ok()["updateTag"]["tag"].is_null());
    assert_eq!(request["status"], "PENDING");
    assert_eq!(request["kind"], "tag.update");
    assert_eq!(request["scope"]["code"], "south");
    assert_eq!(request["requester"]["login"], "sz01.manager");
    assert_eq!(request["reason"], "门店反馈：名称更准确");
    assert_eq!(request["tag"]["name"], "南方气候");
    assert_eq!(request["baseVersions"][format!("tag:{}", crate::helpers::row_id(&regional))], before);
    let id = request["id"].as_str().unwrap().to_owned();
    assert_eq!(tag(&app, "admin", &regional).await["name"], "南方气候", "nothing applied yet");

    // Who sees it: the requester and the region's approvers (and HQ), not
    // the other region or the store's sales.
    for (login, visible) in [
        ("sz01.manager", true),
        ("south.manager", true),
        ("admin", true),
        ("north.manager", false),
        ("sz01.sales", false),
    ] {
        let res = app.gql(login, &request_query(), json!({ "id": id })).await;
        if visible {
            assert_eq!(res.ok()["changeRequest"]["status"], "PENDING", "{login}");
        } else {
            assert_eq!(res.code(), "NOT_FOUND", "{login}");
        }
    }
    let pending = app
        .gql(
            "south.manager",
            "query($s: ID) { changeRequests(status: PENDING, scopeId: $s) { totalCount edges { node { id } } } }",
            json!({ "s": app.unit_id("south") }),
        )
        .await;
    assert_eq!(pending.ok()["changeRequests"]["totalCount"], 1);
    assert_eq!(pending.ok()["changeRequests"]["edges"][0]["node"]["id"], id.as_str());

    // The approver sees what approving would change.
    let diff = app
        .gql(
            "south.manager",
            "query($id: ID!) { changeRequest(id: $id) { diff { field from to } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        diff.ok()["changeRequest"]["diff"],
        json!([{ "field": "name", "from": "南方气候", "to": "南方湿热气候" }])
    );
    assert_eq!(tag(&app, "admin", &regional).await["version"], before, "the preview wrote nothing");

    // Nobody approves their own request; a store approver is below the scope.
    let own = app.gql("sz01.manager", &approve(), json!({ "id": id })).await;
    assert_eq!(own.code(), "FORBIDDEN");

    let res = app.gql("south.manager", &approve(), json!({ "id": id, "c": "同意" })).await;
    let approved = &res.ok()["approveChangeRequest"];
    assert_eq!(approved["changeRequest"]["status"], "APPROVED");
    assert_eq!(approved["changeRequest"]["decidedBy"]["login"], "south.manager");
    assert_eq!(approved["changeRequest"]["decisionComment"], "同意");
    assert_eq!(approved["tag"]["name"], "南方湿热气候");
    assert_eq!(approved["tag"]["version"], before + 1);

    let versions = history(&app, "sz01.manager", &regional).await;
    let last = versions.first().unwrap(); // newest first
    assert_eq!(last["version"], before + 1);
    assert_eq!(last["changedBy"]["login"], "sz01.manager", "applied as the requester's edit");
    assert_eq!(last["changeRequestId"], id.as_str());
    assert_eq!(last["changes"], json!([{ "field": "name", "from": "南方气候", "to": "南方湿热气候" }]));
    assert_eq!(last["state"]["name"], "南方湿热气候");

    // A decided request stays decided.
    let again = app.gql("admin", &approve(), json!({ "id": id })).await;
    assert_eq!(again.code(), "CONFLICT");
    let again = app.gql("south.manager", &reject(), json!({ "id": id, "r": "晚了" })).await;
    assert_eq!(again.code(), "CONFLICT");
}

/// HQ rejects a region's proposal for an HQ group, with a reason; without
/// one the rejection is refused. The region cannot decide its own HQ-level
/// request's fate, and the requester cannot cancel a decided request.
async fn hq_rejects_with_a_reason(app: TestApp) {
    let group = app.group_id("资产状况").await;
    let before = group_version(&app, &group).await;
    let res = edit_group(
        &app,
        "south.manager",
        json!({ "id": group, "expectedVersion": before, "name": "资产与负债",
                            "reason": "区域想统一叫法" }),
    )
    .await;
    let request = request_of(&res, "updateTagGroup");
    assert_eq!(request["scope"]["code"], "hq");
    assert_eq!(request["kind"], "tag_group.update");
    let id = request["id"].as_str().unwrap().to_owned();

    // Region managers approve in their region, not at HQ.
    let res = app.gql("north.manager", &approve(), json!({ "id": id })).await;
    assert_eq!(res.code(), "NOT_FOUND", "not visible to another region");

    let snapshot = app.snapshot().await;
    for reason in ["", "   "] {
        let res = app.gql("admin", &reject(), json!({ "id": id, "r": reason })).await;
        assert_eq!(res.code(), "VALIDATION", "reason {reason:?}");
    }
    assert_eq!(app.snapshot().await, snapshot, "a refused rejection writes nothing");

    let res = app.gql("admin", &reject(), json!({ "id": id, "r": "总部口径不变：资产状况沿用" })).await;
    let rejected = &res.ok()["rejectChangeRequest"]["changeRequest"];
    assert_eq!(rejected["status"], "REJECTED");
    assert_eq!(rejected["decidedBy"]["login"], "admin");
    assert_eq!(rejected["decisionComment"], "总部口径不变：资产状况沿用");
    assert_eq!(group_version(&app, &group).await, before, "nothing applied");

    // The requester sees the reason, and cannot cancel what is decided.
    let seen = app.gql("south.manager", &request_query(), json!({ "id": id })).await;
    assert_eq!(seen.ok()["changeRequest"]["decisionComment"], "总部口径不变：资产状况沿用");
    assert_eq!(app.gql("south.manager", &cancel(), json!({ "id": id })).await.code(), "CONFLICT");
    let rejected = app.gql("south.manager", "{ changeRequests(status: REJECTED) { totalCount } }", json!({})).await;
    assert_eq!(rejected.ok()["changeRequests"]["totalCount"], 1);
}

/// Two approvers decide the same request at the same moment: one wins,
/// the other gets CONFLICT, and the change is applied exactly once.
async fn two_racing_approvers_give_one_winner(app: TestApp) {
    let (_, target) = store_tag(&app).await;
    let before = version_of(&app, &target).await;
    let res = edit_tag(
        &app,
        "sz01.sales",
        json!({ "id": target, "expectedVersion": before, "aliases": ["特护"], "reason": "顾客常这么说" }),
    )
    .await;
    let id = request_of(&res, "updateTag")["id"].as_str().unwrap().to_owned();
    assert_eq!(res.ok()["updateTag"]["changeRequest"]["scope"]["code"], "sz01");

    let approve = approve();
    let (a, b) = tokio::join!(
        app.gql("sz01.manager", &approve, json!({ "id": id })),
        app.gql("south.manager", &approve, json!({ "id": id })),
    );
    let outcomes = [&a, &b].map(|r| if r.0.get("errors").is_none() { "OK".to_owned() } else { r.code() });
    let mut sorted = outcomes.clone();
    sorted.sort();
    assert_eq!(sorted, ["CONFLICT".to_owned(), "OK".to_owned()], "{a:?} {b:?}");
    let after = tag(&app, "admin", &target).await;
    assert_eq!(after["version"], before + 1, "applied once");
    assert_eq!(after["aliases"], json!(["特护"]));
    let versions = history(&app, "admin", &target).await;
    assert_eq!(versions.iter().filter(|v| v["changeRequestId"] == id.as_str()).count(), 1);
    let winner = if outcomes[0] == "OK" { "sz01.manager" } else { "south.manager" };
    let decided = app.gql("admin", &request_query(), json!({ "id": id })).await;
    assert_eq!(decided.ok()["changeRequest"]["decidedBy"]["login"], winner);
}

/// A request whose target changed since it was made cannot be approved:
/// the approver gets CONFLICT and the request is marked STALE; the newer
/// change stays.
async fn an_edit_overtaken_by_another_goes_stale(app: TestApp) {
    let (_, target) = store_tag(&app).await;
    let v1 = version_of(&app, &target).await;
    let res = edit_tag(&app, "sz01.sales", json!({ "id": target, "expectedVersion": v1, "name": "周末来店" })).await;
    let id = request_of(&res, "updateTag")["id"].as_str().unwrap().to_owned();
    // Meanwhile the manager edits the tag directly.
    let direct =
        edit_tag(&app, "sz01.manager", json!({ "id": target, "expectedVersion": v1, "description": "需要单独服务" }))
            .await;
    assert_eq!(direct.ok()["updateTag"]["applied"], true);

    let diff = app
        .gql("south.manager", "query($id: ID!) { changeRequest(id: $id) { diff { field } } }", json!({ "id": id }))
        .await;
    assert_eq!(diff.code(), "CONFLICT", "the preview says the target moved");
    let res = app.gql("south.manager", &approve(), json!({ "id": id })).await;
    assert_eq!(res.code(), "CONFLICT");
    let stale = app.gql("sz01.sales", &request_query(), json!({ "id": id })).await;
    assert_eq!(stale.ok()["changeRequest"]["status"], "STALE");
    let now = tag(&app, "admin", &target).await;
    assert_eq!(now["name"], "周末到店");
    assert_eq!(now["description"], "需要单独服务");
    assert_eq!(now["version"], v1 + 1);
    let listed = app.gql("sz01.manager", "{ changeRequests(status: STALE) { totalCount } }", json!({})).await;
    assert_eq!(listed.ok()["changeRequests"]["totalCount"], 1);
}

/// An edit against a version that is no longer current is refused with
/// CONFLICT and writes nothing, directly and when proposing.
async fn a_stale_expected_version_is_a_conflict(app: TestApp) {
    let target = app.tag_id("活动", "询价").await;
    let v = version_of(&app, &target).await;
    let ok = edit_tag(&app, "admin", json!({ "id": target, "expectedVersion": v, "name": "询价客户" })).await;
    assert_eq!(ok.ok()["updateTag"]["tag"]["version"], v + 1);
    let snapshot = app.snapshot().await;
    let res = edit_tag(&app, "admin", json!({ "id": target, "expectedVersion": v, "name": "问价" })).await;
    assert_eq!(res.code(), "CONFLICT");
    let res = edit_tag(&app, "sz01.sales", json!({ "id": target, "expectedVersion": v, "name": "问价" })).await;
    assert_eq!(res.code(), "CONFLICT", "a proposal is checked against the current version too");
    assert_eq!(app.snapshot().await, snapshot);
    let listed = app.gql("admin", "{ changeRequests { totalCount } }", json!({})).await;
    assert_eq!(listed.ok()["changeRequests"]["totalCount"], 0);
    // A caller with neither write nor propose rights is refused outright.
    let res = edit_tag(&app, "hq.auditor", json!({ "id": target, "expectedVersion": v + 1, "name": "问价" })).await;
    assert_eq!(res.code(), "FORBIDDEN");
}

/// Only the requester cancels; a cancelled request cannot be approved.
async fn only_the_requester_cancels(app: TestApp) {
    let (_, target) = store_tag(&app).await;
    let v = version_of(&app, &target).await;
    let res = edit_tag(&app, "sz01.sales", json!({ "id": target, "expectedVersion": v, "ttlSeconds": 86400 })).await;
    let id = request_of(&res, "updateTag")["id"].as_str().unwrap().to_owned();
    assert_eq!(app.gql("sz01.manager", &cancel(), json!({ "id": id })).await.code(), "FORBIDDEN");
    let res = app.gql("sz01.sales", &cancel(), json!({ "id": id })).await;
    assert_eq!(res.ok()["cancelChangeRequest"]["changeRequest"]["status"], "CANCELLED");
    assert_eq!(app.gql("sz01.manager", &approve(), json!({ "id": id })).await.code(), "CONFLICT");
    assert_eq!(version_of(&app, &target).await, v);
}

/// 升学咨询 merged into 小升初需求: every holder of either holds 小升初需求
/// once, 升学咨询 is left MERGED as its alias, its event history stays, and
/// segments find its past taggings under the tag it became.
async fn a_merge_keeps_every_customers_history(app: TestApp) {
    let a = app.tag_id("教育需求", "小升初需求").await;
    let b = app.tag_id("教育需求", "升学咨询").await;
    let customers = app.customers_of("sz01").await;
    // c0 holds only B, c1 both, c2 only A (on top of whatever the seed gave).
    app.gql("admin", TAG_CUSTOMERS, json!({ "c": [customers[0], customers[1]], "t": [b] })).await.ok();
    app.gql("admin", TAG_CUSTOMERS, json!({ "c": [customers[1], customers[2]], "t": [a] })).await.ok();
    let union: Vec<i64> = {
        let mut u = holders(&app, &a).await;
        u.extend(holders(&app, &b).await);
        u.sort_unstable();
        u.dedup();
        u
    };
    let b_events_before = tag_event::Entity::find()
        .filter(tag_event::Column::TagId.eq(crate::helpers::row_id(&b)))
        .count(&app.db)
        .await
        .unwrap();
    // The text form names objects by row id (`#42`).
    let (a_row, b_row) = (crate::helpers::row_id(&a), crate::helpers::row_id(&b));
    let earlier =
        app.gql("admin", PREVIEW, json!({ "t": format!("taggedBetween(#{b_row}, \"2000-01-01\", \"2100-01-01\")") }));
    let b_tagged_ever = earlier.await.ok()["segmentPreview"]["count"].as_i64().unwrap();
    assert!(b_tagged_ever >= 2);
    let either = format!(
        "taggedBetween(#{a_row}, \"2000-01-01\", \"2100-01-01\") OR taggedBetween(#{b_row}, \"2000-01-01\", \"2100-01-01\")"
    );
    let either = app.gql("admin", PREVIEW, json!({ "t": either })).await;
    let a_or_b_tagged_ever = either.ok()["segmentPreview"]["count"].as_i64().unwrap();
    let merging_at = chrono::Utc::now();

    let res = app
        .gql(
            "admin",
            "mutation($in: MergeTagsInput!) { mergeTags(input: $in) { applied tag { name aliases version customerCount } } }",
            json!({ "in": { "targetTagId": a, "targetExpectedVersion": version_of(&app, &a).await,
                            "sourceTagId": b, "sourceExpectedVersion": version_of(&app, &b).await,
                            "reason": "同一需求，两个叫法" } }),
        )
        .await;
    let merged = &res.ok()["mergeTags"];
    assert_eq!(merged["applied"], true);
    assert!(merged["tag"]["aliases"].as_array().unwrap().contains(&json!("升学咨询")));
    assert_eq!(merged["tag"]["customerCount"], union.len(), "nobody counted twice");
    assert_eq!(holders(&app, &a).await, union);
    assert!(holders(&app, &b).await.is_empty());

    let source = tag(&app, "admin", &b).await;
    assert_eq!(source["status"], "MERGED");
    assert_eq!(source["mergedInto"]["name"], "小升初需求");
    // The old history is kept, and the move is recorded as events.
    let b_events_after = tag_event::Entity::find()
        .filter(tag_event::Column::TagId.eq(crate::helpers::row_id(&b)))
        .count(&app.db)
        .await
        .unwrap();
    assert!(b_events_after > b_events_before, "the move adds REMOVE events, deletes nothing");
    // The old name finds the merged tag; its past taggings count under it.
    let by_name = app.gql("admin", PREVIEW, json!({ "t": "tag(\"升学咨询\")" })).await;
    assert_eq!(by_name.ok()["segmentPreview"]["count"], union.len());
    // Taggings before the merge: A's own and B's, each customer once.
    let before_merge = format!("taggedBetween(#{a_row}, \"2000-01-01\", \"{}\")", merging_at.to_rfc3339());
    let past = app.gql("admin", PREVIEW, json!({ "t": before_merge })).await;
    assert_eq!(past.ok()["segmentPreview"]["count"], a_or_b_tagged_ever, "B's taggings are A's history now");
    // The merge itself tags nobody.
    let since = format!("taggedBetween(#{a_row}, \"{}\", \"2100-01-01\")", merging_at.to_rfc3339());
    let since = app.gql("admin", PREVIEW, json!({ "t": since })).await;
    assert_eq!(since.ok()["segmentPreview"]["count"], 0);
    // The customer's own history still shows the taggings with 升学咨询
    // (now MERGED into 小升初需求) and the merge's move.
    let events = app
        .gql(
            "admin",
            "query($id: ID!) { customer(id: $id) { tagEvents(first: 100) { edges { node { id op source
                actor { login } tag { name status mergedInto { name } } } } } } }",
            json!({ "id": customers[0] }),
        )
        .await;
    let events: Vec<Value> =
        events.ok()["customer"]["tagEvents"]["edges"].as_array().unwrap().iter().map(|e| e["node"].clone()).collect();
    let of = |name: &str, op: &str, source: &str| {
        events.iter().any(|e| e["tag"]["name"] == name && e["op"] == op && e["source"] == source)
    };
    assert!(of("升学咨询", "ADD", "MANUAL"), "the original tagging: {events:#?}");
    assert!(of("升学咨询", "REMOVE", "MERGE") && of("小升初需求", "ADD", "MERGE"), "the move: {events:#?}");
    let merged = events.iter().find(|e| e["tag"]["name"] == "升学咨询").unwrap();
    assert_eq!(merged["tag"]["status"], "MERGED");
    assert_eq!(merged["tag"]["mergedInto"]["name"], "小升初需求");
    let ids: Vec<i64> = events.iter().map(|e| crate::helpers::row_id(e["id"].as_str().unwrap())).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first");
    // What a role that cannot see the class sees.
    let service = app
        .gql(
            "sz01.service",
            "query($id: ID!) { customer(id: $id) { tagEvents(first: 100) { edges { node { tag { name } } } } } }",
            json!({ "id": customers[0] }),
        )
        .await;
    let seen: Vec<Value> = service.ok()["customer"]["tagEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["tag"]["name"].clone())
        .collect();
    assert!(
        !seen.contains(&json!("升学咨询")) && !seen.contains(&json!("小升初需求")),
        "interest tags are hidden: {seen:?}"
    );

    // A merged tag is not used any more.
    let res = app.gql("admin", TAG_CUSTOMERS, json!({ "c": [customers[3]], "t": [b] })).await;
    assert_eq!(res.code(), "VALIDATION");
    let versions = history(&app, "admin", &a).await;
    assert_eq!(versions[0]["action"], "merge");
}

/// Customers holding any tag of a group, from the tables.
async fn group_holders(app: &TestApp, group: &str) -> usize {
    let tags: Vec<i64> = entity::tag::Entity::find()
        .filter(entity::tag::Column::GroupId.eq(crate::helpers::row_id(group)))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    let mut customers: Vec<i64> = customer_tag::Entity::find()
        .filter(customer_tag::Column::TagId.is_in(tags))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.customer_id)
        .collect();
    customers.sort_unstable();
    customers.dedup();
    customers.len()
}

/// A tag moved to another group counts in its new group at once (the
/// segment index follows the move without a rebuild), and the history
/// records the move.
async fn a_moved_tag_counts_in_its_new_group(app: TestApp) {
    let target = app.tag_id("活动", "晚间咨询").await;
    let (from, to) = (app.group_id("活动").await, app.group_id("服务需求").await);
    let customers = app.customers_of("sz01").await;
    // Holders that only the moved tag puts in the group.
    app.gql("admin", TAG_CUSTOMERS, json!({ "c": customers, "t": [target] })).await.ok();
    let count = |group: &str| {
        let app = &app;
        let text = format!("group(#{})", crate::helpers::row_id(group));
        async move { app.gql("admin", PREVIEW, json!({ "t": text })).await.ok()["segmentPreview"]["count"].clone() }
    };
    assert_eq!(count(&from).await, group_holders(&app, &from).await);
    let res = edit_tag(
        &app,
        "admin",
        json!({ "id": target, "expectedVersion": version_of(&app, &target).await, "groupId": to }),
    )
    .await;
    assert_eq!(res.ok()["updateTag"]["applied"], true);
    assert_eq!(tag(&app, "admin", &target).await["group"]["id"], to.as_str());
    let (now_from, now_to) = (group_holders(&app, &from).await, group_holders(&app, &to).await);
    assert_eq!(count(&to).await, now_to, "the new group counts the moved tag's holders");
    assert_eq!(count(&from).await, now_from, "the old group no longer does");
    // The same after a rebuild from the database.
    app.app.state.index.rebuild(&app.db).await.unwrap();
    assert_eq!(count(&to).await, now_to);
    let moved = &history(&app, "admin", &target).await[0];
    let group_change = moved["changes"].as_array().unwrap().iter().find(|c| c["field"] == "groupId").cloned();
    assert!(group_change.is_some(), "{moved:#}");
}

/// Tags that rolled up to a merged tag roll up to the tag it became.
async fn a_merge_repoints_the_tags_rolling_up_to_it(app: TestApp) {
    let (a, b) = (app.tag_id("消费等级", "A级").await, app.tag_id("消费等级", "B级").await);
    let south = app.tag_id("华南区域标签", "黄金会员").await;
    let before = version_of(&app, &south).await;
    let res = app
        .gql(
            "admin",
            "mutation($in: MergeTagsInput!) { mergeTags(input: $in) { applied } }",
            json!({ "in": { "targetTagId": a, "targetExpectedVersion": version_of(&app, &a).await,
                            "sourceTagId": b, "sourceExpectedVersion": version_of(&app, &b).await } }),
        )
        .await;
    assert_eq!(res.ok()["mergeTags"]["applied"], true);
    let q = "query($id: ID!) { tag(id: $id) { version canonicalTag { name } } }";
    let now = app.gql("admin", q, json!({ "id": south })).await;
    assert_eq!(now.ok()["tag"]["canonicalTag"]["name"], "A级");
    assert_eq!(now.ok()["tag"]["version"], before + 1);
    let versions = history(&app, "admin", &south).await;
    assert_eq!(versions[0]["action"], "merge");
    assert_eq!(versions[0]["changes"][0]["field"], "canonicalTagId");
}

/// Merging into a tag of an exclusive group is refused when it would give
/// a customer two tags of that group; nothing changes.
async fn a_merge_keeps_exclusive_groups_exclusive(app: TestApp) {
    let (target, grade) = (app.tag_id("消费等级", "S级").await, app.tag_id("消费等级", "C级").await);
    let gold = app.tag_id("华南区域标签", "黄金会员").await;
    let customer = app.customers_of("sz01").await[0].clone();
    app.gql("admin", TAG_CUSTOMERS, json!({ "c": [customer], "t": [gold, grade] })).await.ok();
    let before = app.snapshot().await;
    let res = app
        .gql(
            "admin",
            "mutation($in: MergeTagsInput!) { mergeTags(input: $in) { applied } }",
            json!({ "in": { "targetTagId": target, "targetExpectedVersion": version_of(&app, &target).await,
                            "sourceTagId": gold, "sourceExpectedVersion": version_of(&app, &gold).await } }),
        )
        .await;
    assert_eq!(res.code(), "VALIDATION");
    assert!(res.message().contains("exclusive"), "{}", res.message());
    assert_eq!(app.snapshot().await, before);
    assert_eq!(tag(&app, "admin", &gold).await["status"], "ACTIVE");
}

/// A salesperson suggests a new tag for HQ's library: a request for HQ,
/// created as the salesperson's tag when HQ approves. A name already taken
/// is refused at once; a role without `propose` is refused.
async fn a_salesperson_proposes_a_new_tag(app: TestApp) {
    let group = app.group_id("活动").await;
    let create = "mutation($g: ID!, $n: String!) { createTag(input: { groupId: $g, name: $n, aliases: [\"看车\"],
        reason: \"门店常见需求\" }) { applied tag { id } changeRequest { id kind status scope { code } } } }";
    let res = app.gql("sz01.sales", create, json!({ "g": group, "n": "到店看车" })).await;
    let request = request_of(&res, "createTag");
    assert_eq!(request["kind"], "tag.create");
    assert_eq!(request["scope"]["code"], "hq");
    let preview = app.gql("admin", PREVIEW, json!({ "t": "tag(\"到店看车\")" })).await;
    assert_eq!(preview.code(), "NOT_FOUND", "not created before approval");

    let dup = app.gql("sz01.sales", create, json!({ "g": group, "n": "询价" })).await;
    assert_eq!(dup.code(), "CONFLICT");
    let service = app.gql("sz01.service", create, json!({ "g": app.group_id("服务需求").await, "n": "新服务" })).await;
    assert_eq!(service.code(), "FORBIDDEN");

    let id = request["id"].as_str().unwrap();
    let diff = app
        .gql("admin", "query($id: ID!) { changeRequest(id: $id) { diff { field from to } } }", json!({ "id": id }))
        .await;
    let diff = diff.ok()["changeRequest"]["diff"].as_array().unwrap().clone();
    let name = diff.iter().find(|c| c["field"] == "name").unwrap();
    assert_eq!((&name["from"], &name["to"]), (&json!(null), &json!("到店看车")));
    let res = app.gql("admin", &approve(), json!({ "id": id })).await;
    let created = &res.ok()["approveChangeRequest"]["tag"];
    assert_eq!(created["name"], "到店看车");
    assert_eq!(created["version"], 1);
    let tag_id = app.tag_id("活动", "到店看车").await;
    let versions = history(&app, "admin", &tag_id).await;
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0]["action"], "create");
    assert_eq!(versions[0]["changedBy"]["login"], "sz01.sales");
    assert_eq!(versions[0]["changeRequestId"], id);
    // Usable at once, by its alias too.
    let customer = app.customers_of("sz01").await[0].clone();
    app.gql("sz01.sales", TAG_CUSTOMERS, json!({ "c": [customer], "t": [tag_id] })).await.ok();
    let preview = app.gql("sz01.sales", PREVIEW, json!({ "t": "tag(\"看车\")" })).await;
    assert_eq!(preview.ok()["segmentPreview"]["count"], 1);
}

/// A group edit that would break what the group promises is refused: an
/// exclusive group whose customers hold several of its tags, a naming
/// pattern its tags do not match. A valid edit is a version with its diff.
async fn group_edits_keep_their_promises(app: TestApp) {
    let group = app.group_id("活动").await;
    let customer = app.customers_of("sz01").await[0].clone();
    let (a, b) = (app.tag_id("活动", "询价").await, app.tag_id("活动", "晚间咨询").await);
    app.gql("admin", TAG_CUSTOMERS, json!({ "c": [customer], "t": [a, b] })).await.ok();
    let v = group_version(&app, &group).await;
    let before = app.snapshot().await;
    let res = edit_group(&app, "admin", json!({ "id": group, "expectedVersion": v, "exclusive": true })).await;
    assert_eq!(res.code(), "VALIDATION");
    assert_eq!(res.0["errors"][0]["extensions"]["field"], "exclusive");
    let res = edit_group(&app, "admin", json!({ "id": group, "expectedVersion": v, "namingPattern": "^活动_" })).await;
    assert_eq!(res.code(), "VALIDATION");
    assert_eq!(res.0["errors"][0]["extensions"]["field"], "namingPattern");
    let res = edit_group(&app, "admin", json!({ "id": group, "expectedVersion": v })).await;
    assert_eq!(res.code(), "VALIDATION", "an edit that changes nothing");
    assert_eq!(app.snapshot().await, before);

    let res = edit_group(
        &app,
        "admin",
        json!({ "id": group, "expectedVersion": v, "description": "门店与线上活动", "visibilityClass": "interest" }),
    )
    .await;
    assert_eq!(res.ok()["updateTagGroup"]["tagGroup"]["version"], v + 1);
    let history = app
        .gql(
            "hq.auditor",
            "query($id: ID!) { tagGroupHistory(groupId: $id) { version action changes { field from to } changedBy { login } } }",
            json!({ "id": group }),
        )
        .await;
    let versions = history.ok()["tagGroupHistory"].as_array().unwrap().clone();
    assert_eq!(versions[0]["version"], v + 1);
    assert_eq!(versions[0]["changedBy"]["login"], "admin");
    let mut fields: Vec<&str> =
        versions[0]["changes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
    fields.sort();
    assert_eq!(fields, ["description", "visibilityClass"]);
    assert_eq!(versions.last().unwrap()["version"], 1, "the state before versioning is kept as the first version");
}

/// A renamed tag is restored by rolling back to the version before the
/// rename; the rollback is a new version, and the old name works again.
async fn a_rollback_restores_a_renamed_tag(app: TestApp) {
    let target = app.tag_id("活动", "晚间咨询").await;
    let v1 = version_of(&app, &target).await;
    let holders_before = holders(&app, &target).await;
    edit_tag(&app, "admin", json!({ "id": target, "expectedVersion": v1, "name": "夜间咨询" })).await.ok();
    edit_tag(
        &app,
        "admin",
        json!({ "id": target, "expectedVersion": v1 + 1, "description": "22点后咨询", "aliases": ["夜猫子"] }),
    )
    .await
    .ok();
    let renamed = app.gql("admin", PREVIEW, json!({ "t": "tag(\"晚间咨询\")" })).await;
    assert_eq!(renamed.code(), "NOT_FOUND", "the old name is gone");

    let res = app
        .gql(
            "admin",
            "mutation($in: RollbackTagInput!) { rollbackTag(input: $in) { applied tag { name description aliases version } } }",
            json!({ "in": { "id": target, "version": v1, "expectedVersion": v1 + 2, "reason": "改名未经门店确认" } }),
        )
        .await;
    let restored = &res.ok()["rollbackTag"]["tag"];
    assert_eq!(restored["name"], "晚间咨询");
    assert_eq!(restored["description"], tag(&app, "admin", &target).await["description"]);
    assert_eq!(restored["aliases"], json!([]));
    assert_eq!(restored["version"], v1 + 3);
    assert_eq!(holders(&app, &target).await, holders_before, "assignments untouched");

    let versions = history(&app, "hq.auditor", &target).await;
    let actions: Vec<&str> = versions.iter().map(|v| v["action"].as_str().unwrap()).collect();
    assert_eq!(&actions[..3], ["rollback", "update", "update"]);
    let rollback = &versions[0];
    let fields: Vec<&str> =
        rollback["changes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"name") && fields.contains(&"aliases"), "{fields:?}");
    let name = rollback["changes"].as_array().unwrap().iter().find(|c| c["field"] == "name").unwrap();
    assert_eq!(name["from"], "夜间咨询");
    assert_eq!(name["to"], "晚间咨询");
    let by_name = app.gql("admin", PREVIEW, json!({ "t": "tag(\"晚间咨询\")" })).await;
    assert_eq!(by_name.ok()["segmentPreview"]["count"], holders_before.len());

    // A store's sales cannot roll back an HQ tag directly: it proposes.
    let res = app
        .gql(
            "sz01.sales",
            "mutation($in: RollbackTagInput!) { rollbackTag(input: $in) { applied changeRequest { kind scope { code } } } }",
            json!({ "in": { "id": target, "version": v1 + 1, "expectedVersion": v1 + 3 } }),
        )
        .await;
    assert_eq!(res.ok()["rollbackTag"]["applied"], false);
    assert_eq!(res.ok()["rollbackTag"]["changeRequest"]["kind"], "tag.rollback");
    assert_eq!(res.ok()["rollbackTag"]["changeRequest"]["scope"]["code"], "hq");
}

/// Archiving takes a tag out of use and restoring brings it back; both are
/// versions.
async fn archive_and_restore_are_versions(app: TestApp) {
    let target = app.tag_id("服务需求", "催单").await;
    let v = version_of(&app, &target).await;
    let status = "mutation($in: TagStatusInput!) { archiveTag(input: $in) { applied tag { status version } } }";
    let res = app.gql("admin", status, json!({ "in": { "id": target, "expectedVersion": v } })).await;
    assert_eq!(res.ok()["archiveTag"]["tag"]["status"], "ARCHIVED");
    let customer = app.customers_of("sz01").await[0].clone();
    let res = app.gql("sz01.service", TAG_CUSTOMERS, json!({ "c": [customer], "t": [target] })).await;
    assert_eq!(res.code(), "VALIDATION", "an archived tag is not assigned");
    let restore = status.replace("archiveTag", "restoreTag");
    let res = app.gql("admin", &restore, json!({ "in": { "id": target, "expectedVersion": v + 1 } })).await;
    assert_eq!(res.ok()["restoreTag"]["tag"]["status"], "ACTIVE");
    let res = app.gql("sz01.service", TAG_CUSTOMERS, json!({ "c": [customer], "t": [target] })).await;
    assert_eq!(res.ok()["tagCustomers"]["applied"], true);
    let actions: Vec<String> =
        history(&app, "admin", &target).await.iter().map(|v| v["action"].as_str().unwrap().to_owned()).collect();
    assert_eq!(&actions[..2], ["restore", "archive"]);
}

/// An exclusive follow-up group at HQ, as a 4S store uses it: a customer
/// is in one stage.
async fn follow_up_group(app: &TestApp) -> (String, String, String) {
    let group = app.create_group("admin", "hq", "跟进阶段", "behavior", true).await;
    let test_drive = app.create_tag("admin", &group, "试驾预约").await;
    let closed = app.create_tag("admin", &group, "已完成交易").await;
    (group, test_drive, closed)
}

async fn stage_of(app: &TestApp, customer: &str, group: &str) -> Vec<String> {
    let res = app
        .gql(
            "admin",
            "query($id: ID!) { customer(id: $id) { tags { tag { name group { id } } } } }",
            json!({ "id": customer }),
        )
        .await;
    res.ok()["customer"]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["tag"]["group"]["id"] == group)
        .map(|t| t["tag"]["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The 4S-store case (SPEC §5): while marketing holds the follow-up group
/// for a campaign, a salesperson's 已完成交易 is refused with LOCKED (who,
/// why, until when) instead of being overwritten by the campaign's
/// 试驾预约; after the release the salesperson's retry lands and stays.
async fn a_modification_lock_refuses_instead_of_overwriting(app: TestApp) {
    let (group, test_drive, closed) = follow_up_group(&app).await;
    let customers = app.customers_of("sz01").await;
    let x = customers[0].clone();
    let res = app
        .gql(
            "hq.marketing",
            "mutation($in: LockTagGroupInput!) { lockTagGroup(input: $in) { lock { id holder { login } wholeGroup expiresAt } } }",
            json!({ "in": { "groupId": group, "customerIds": customers, "reason": "试驾季活动批量打标", "durationSeconds": 600 } }),
        )
        .await;
    let lock = res.ok()["lockTagGroup"]["lock"].clone();
    assert_eq!(lock["holder"]["login"], "hq.marketing");
    assert_eq!(lock["wholeGroup"], false);
    let lock_id = lock["id"].as_str().unwrap().to_owned();

    // The salesperson is refused, and told by whom, why and until when.
    let snapshot = app.snapshot().await;
    let refused = app.gql("sz01.sales", TAG_CUSTOMERS, json!({ "c": [x], "t": [closed] })).await;
    assert_eq!(refused.code(), "LOCKED");
    let ext = &refused.0["errors"][0]["extensions"];
    assert_eq!(ext["lockId"], lock_id.as_str());
    assert!(ext["holder"].as_str().unwrap().contains("hq.marketing"), "{ext}");
    assert_eq!(ext["reason"], "试驾季活动批量打标");
    assert!(ext["until"].as_str().is_some());
    assert_eq!(app.snapshot().await, snapshot, "nothing written");
    // Untagging and other groups: untagging the locked group is refused
    // too; another group is free.
    let untag = app
        .gql(
            "sz01.sales",
            "mutation($c: [ID!]!, $t: [ID!]!) { untagCustomers(input: { customerIds: $c, tagIds: $t }) { removed } }",
            json!({ "c": [x], "t": [test_drive] }),
        )
        .await;
    assert_eq!(untag.code(), "LOCKED");
    let other = app.tag_id("活动", "询价").await;
    app.gql("sz01.sales", TAG_CUSTOMERS, json!({ "c": [x], "t": [other] })).await.ok();
    // A customer the lock does not name is free.
    let outside = app.customers_of("gz01").await[0].clone();
    app.gql("south.manager", TAG_CUSTOMERS, json!({ "c": [outside], "t": [closed] })).await.ok();

    // The holder's campaign runs.
    let run = app.gql("hq.marketing", TAG_CUSTOMERS, json!({ "c": customers, "t": [test_drive] })).await;
    assert_eq!(run.ok()["tagCustomers"]["added"], customers.len());
    // Others cannot release it; the holder does.
    let unlock = "mutation($id: ID!) { unlockTagGroup(lockId: $id) { lock { releasedAt } } }";
    assert_eq!(app.gql("sz01.sales", unlock, json!({ "id": lock_id })).await.code(), "FORBIDDEN");
    let released = app.gql("hq.marketing", unlock, json!({ "id": lock_id })).await;
    assert!(released.ok()["unlockTagGroup"]["lock"]["releasedAt"].is_string());
    assert_eq!(app.gql("hq.marketing", unlock, json!({ "id": lock_id })).await.code(), "CONFLICT");

    // The retry lands, and the salesperson's stage is the one that stays.
    let retry = app.gql("sz01.sales", TAG_CUSTOMERS, json!({ "c": [x], "t": [closed] })).await;
    assert_eq!(retry.ok()["tagCustomers"]["added"], 1);
    assert_eq!(stage_of(&app, &x, &group).await, ["已完成交易"]);
    for other in &customers[1..] {
        assert_eq!(stage_of(&app, other, &group).await, ["试驾预约"]);
    }
    let locks =
        app.gql("admin", "query($g: ID!) { modificationLocks(groupId: $g) { id } }", json!({ "g": group })).await;
    assert_eq!(locks.ok()["modificationLocks"], json!([]));
}

/// A bulk run above the threshold takes the locks itself;
/// a salesperson tagging one of its customers meanwhile retries on
/// LOCKED, and the salesperson's later 已完成交易 is what stays.
async fn a_bulk_run_holds_its_lock_while_a_salesperson_retries(app: TestApp) {
    let (group, test_drive, closed) = follow_up_group(&app).await;
    let mut customers = app.customers_of("gz01").await;
    customers.extend(app.customers_of("sz01").await);
    // The salesperson's customer comes last in the run.
    let x = customers.last().unwrap().clone();

    let db = app.db.clone();
    let watcher = async {
        // Wait until the run has taken its lock (held, or already released:
        // lock rows stay, so this wait always ends), then try as the
        // salesperson until it lands.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let taken = modification_lock::Entity::find().count(&db).await.unwrap();
            if taken > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the bulk run never took its lock");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        loop {
            let res = app.gql("sz01.sales", TAG_CUSTOMERS, json!({ "c": [x], "t": [closed] })).await;
            if res.0.get("errors").is_none() {
                return;
            }
            assert_eq!(res.code(), "LOCKED");
            assert!(Instant::now() < deadline, "the salesperson's retries were still LOCKED after a minute");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let run = app.gql("hq.marketing", TAG_CUSTOMERS, json!({ "c": customers, "t": [test_drive] }));
    let (run, ()) = tokio::join!(run, watcher);
    assert_eq!(run.ok()["tagCustomers"]["applied"], true);
    assert_eq!(run.ok()["tagCustomers"]["added"], customers.len());
    assert_eq!(stage_of(&app, &x, &group).await, ["已完成交易"], "the salesperson's stage was not overwritten");
    // In the event log the salesperson's ADD comes after the run's ADD.
    let events: Vec<i64> = tag_event::Entity::find()
        .filter(tag_event::Column::CustomerId.eq(crate::helpers::row_id(&x)))
        .filter(tag_event::Column::TagId.is_in([crate::helpers::row_id(&test_drive), crate::helpers::row_id(&closed)]))
        .order_by_asc(tag_event::Column::Seq)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.tag_id)
        .collect();
    let closed_id = crate::helpers::row_id(&closed);
    assert_eq!(events.last(), Some(&closed_id), "{events:?}");
    assert_eq!(
        modification_lock::Entity::find()
            .filter(modification_lock::Column::ReleasedAt.is_null())
            .count(&app.db)
            .await
            .unwrap(),
        0,
        "the run released its locks"
    );
}

/// A lock nobody releases stops holding when it expires.
async fn a_forgotten_lock_expires(app: TestApp) {
    let group = app.group_id("活动").await;
    let customer = app.customers_of("sz01").await[0].clone();
    app.gql(
        "hq.marketing",
        "mutation($g: ID!, $c: [ID!]) { lockTagGroup(input: { groupId: $g, customerIds: $c, reason: \"短锁\",
            durationSeconds: 1 }) { lock { id } } }",
        json!({ "g": group, "c": [customer] }),
    )
    .await
    .ok();
    let closed = app.tag_id("活动", "已完成交易").await;
    let res = app.gql("sz01.sales", TAG_CUSTOMERS, json!({ "c": [customer], "t": [closed] })).await;
    assert_eq!(res.code(), "LOCKED");
    // Waiting for the expiry (not timing anything).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let res = app.gql("sz01.sales", TAG_CUSTOMERS, json!({ "c": [customer], "t": [closed] })).await;
    assert_eq!(res.ok()["tagCustomers"]["applied"], true);
    let locks =
        app.gql("admin", "query($g: ID!) { modificationLocks(groupId: $g) { id } }", json!({ "g": group })).await;
    assert_eq!(locks.ok()["modificationLocks"], json!([]));
    // Bad lock requests are refused with the field named.
    for (input, field) in [
        (json!({ "groupId": group, "reason": " " }), "reason"),
        (json!({ "groupId": group, "reason": "x", "durationSeconds": 0 }), "durationSeconds"),
        (json!({ "groupId": group, "reason": "x", "customerIds": [] }), "customerIds"),
    ] {
        let res = app
            .gql(
                "hq.marketing",
                "mutation($in: LockTagGroupInput!) { lockTagGroup(input: $in) { lock { id } } }",
                json!({ "in": input }),
            )
            .await;
        assert_eq!(res.code(), "VALIDATION");
        assert_eq!(res.0["errors"][0]["extensions"]["field"], field);
    }
}

/// Bulk tagging above the threshold by a role without `customer_tag:bulk`
/// becomes a request for the customers' common unit; approving applies it
/// as the requester's tagging.
async fn bulk_tagging_without_bulk_rights_becomes_a_request(app: TestApp) {
    let customers = app.customers_of("sz01").await;
    let inquiry = app.tag_id("活动", "询价").await;
    let before = app.snapshot().await;
    let res = app.gql("sz01.sales", TAG_CUSTOMERS, json!({ "c": customers, "t": [inquiry] })).await;
    let payload = &res.ok()["tagCustomers"];
    assert_eq!(payload["applied"], false);
    let would_add = payload["added"].as_i64().unwrap();
    assert_eq!(would_add + payload["unchanged"].as_i64().unwrap(), customers.len() as i64);
    let request = &payload["changeRequest"];
    assert_eq!(request["kind"], "customer.tag");
    assert_eq!(request["scope"]["code"], "sz01");
    let after = app.snapshot().await;
    assert_eq!(after.assignments, before.assignments, "nothing tagged yet");

    let id = request["id"].as_str().unwrap().to_owned();
    let res = app.gql("sz01.manager", &approve(), json!({ "id": id })).await;
    assert_eq!(res.ok()["approveChangeRequest"]["changeRequest"]["status"], "APPROVED");
    assert_eq!(
        holders(&app, &inquiry)
            .await
            .iter()
            .filter(|c| customers.contains(&tagbase::domain::CustomerId(**c).to_string()))
            .count(),
        customers.len()
    );
    let after = app.snapshot().await;
    assert_eq!(after.assignments, before.assignments + would_add as u64);
    let tagged_by = app
        .gql(
            "sz01.manager",
            "query($id: ID!) { customer(id: $id) { tags { tag { id } taggedBy { login } source } } }",
            json!({ "id": customers[0] }),
        )
        .await;
    let row = tagged_by.ok()["customer"]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tag"]["id"] == inquiry.as_str())
        .cloned()
        .unwrap();
    assert_eq!(row["taggedBy"]["login"], "sz01.sales", "applied as the requester's tagging");

    // Small calls stay direct.
    let two = &customers[..2];
    let res =
        app.gql("sz01.sales", TAG_CUSTOMERS, json!({ "c": two, "t": [app.tag_id("活动", "晚间咨询").await] })).await;
    assert_eq!(res.ok()["tagCustomers"]["applied"], true);
}

/// A request's payload names tags only to readers who may see them: a
/// reader of the store's audit log without the value class does not learn
/// that a value tag is about to be put on customers.
async fn request_payloads_leave_out_tags_the_reader_may_not_see(app: TestApp) {
    app.gql(
        "admin",
        "mutation { grantPermission(input: { role: \"customer_service\", object: \"audit_log\", action: \"read\" }) { changed } }",
        json!({}),
    )
    .await
    .ok();
    let customers = app.customers_of("sz01").await;
    let car = app.tag_id("资产状况", "有车一族").await;
    let res = app.gql("sz01.sales", TAG_CUSTOMERS, json!({ "c": customers, "t": [car] })).await;
    assert_eq!(res.ok()["tagCustomers"]["applied"], false);
    let q = "{ changeRequests(status: PENDING) { edges { node { kind change } } } }";
    let seen = |res: &Gql| res.ok()["changeRequests"]["edges"][0]["node"]["change"].clone();
    let manager = seen(&app.gql("sz01.manager", q, json!({})).await);
    assert_eq!(manager["tagIds"].as_array().unwrap().len(), 1, "{manager}");
    let service = seen(&app.gql("sz01.service", q, json!({})).await);
    assert_eq!(service, json!({ "hidden": "***" }));
}

on_both_databases_with!(
    request_payloads_leave_out_tags_the_reader_may_not_see => Limits { bulk_threshold: 3, ..Limits::default() },
    a_bulk_run_holds_its_lock_while_a_salesperson_retries => Limits { bulk_threshold: 4, ..Limits::default() },
    bulk_tagging_without_bulk_rights_becomes_a_request => Limits { bulk_threshold: 3, ..Limits::default() },
);

on_both_databases!(
    a_store_proposes_and_its_region_approves,
    hq_rejects_with_a_reason,
    two_racing_approvers_give_one_winner,
    an_edit_overtaken_by_another_goes_stale,
    a_stale_expected_version_is_a_conflict,
    only_the_requester_cancels,
    a_merge_keeps_every_customers_history,
    a_rollback_restores_a_renamed_tag,
    a_moved_tag_counts_in_its_new_group,
    a_merge_repoints_the_tags_rolling_up_to_it,
    a_merge_keeps_exclusive_groups_exclusive,
    a_salesperson_proposes_a_new_tag,
    group_edits_keep_their_promises,
    archive_and_restore_are_versions,
    a_modification_lock_refuses_instead_of_overwriting,
    a_forgotten_lock_expires,
);
