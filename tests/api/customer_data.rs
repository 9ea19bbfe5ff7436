//! Customer data: identities by source (one identity, one customer),
//! `customerByIdentity` in scope, CSV import (GBK, dry run, idempotent,
//! as a job), and merging two records of one person.

use base64::Engine as _;
use chrono::{Duration, Utc};
use entity::{audit_log, customer, customer_event, customer_identity, customer_tag, enums::JobStatus, tag_event};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, sea_query::Expr,
};
use serde_json::{Value, json};
use tagbase::service::jobs::{RunEnd, Worker};

use crate::helpers::{RECORD, TestApp, message_at, row_id};
use crate::rules::tags_of;

const IMPORT: &str = "mutation($i: ImportCustomersInput!) { importCustomers(input: $i) {
    dryRun sha256 encoding rows created updated unchanged skipped tagsAdded
    issues { line column code message } job { id status total done } } }";
const BY_IDENTITY: &str = "query($s: IdentitySource!, $v: String!, $c: String) {
    customerByIdentity(source: $s, value: $v, corpId: $c) { id name identities { source corpId value } } }";
const ADD_IDENTITY: &str = "mutation($id: ID!, $s: IdentitySource!, $v: String!, $c: String) {
    addCustomerIdentity(customerId: $id, identity: { source: $s, value: $v, corpId: $c }) {
    id identities { source corpId provider value } } }";
const MERGE: &str = "mutation($k: ID!, $r: ID!) { mergeCustomers(keep: $k, remove: $r, reason: \"同一人\") {
    customer { id tags { tag { name } } } changeRequest { id status kind } tagsMoved tagsDropped eventsMoved identitiesMoved } }";
const CUSTOMER: &str = "query($id: ID!) { customer(id: $id) { id name tags { tag { name } source }
    events(first: 20) { edges { node { id } } } identities { source value } tagEvents(first: 50) { edges { node { op } } } } }";

/// A CSV as Excel in China saves it: GBK. Lines 3 (phone), 4 (no name),
/// 5 (gender and date) and 7 (an id already on line 2) are bad.
const FILE: &str = "姓名,手机,性别,生日,城市,unionid,订单系统ID\n\
    王小明,13800138001,男,1990-01-02,深圳,u-1001,o-1\n\
    李小红,12345,女,,深圳,u-1002,o-2\n\
    ,13800138003,,,,u-1003,\n\
    张大山,,未说,2999-01-01,,u-1004,\n\
    赵小燕,13800138005,女,1985/06/30,广州,u-1005,\n\
    钱多多,,,,,u-1001,o-6\n\
    孙悟空,,男,,,,o-7\n";

fn gbk(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(encoding_rs::GBK.encode(text).0)
}

async fn import(app: &TestApp, login: &str, file: &str, dry_run: bool, tags: Vec<String>) -> Value {
    let res = app
        .gql(
            login,
            IMPORT,
            json!({ "i": { "csvBase64": gbk(file), "encoding": "AUTO", "dryRun": dry_run,
                "orgUnitId": app.unit_id("sz01"), "tagIds": tags } }),
        )
        .await;
    res.ok()["importCustomers"].clone()
}

async fn identities(app: &TestApp, provider: &str) -> Vec<(String, i64)> {
    let mut rows: Vec<(String, i64)> = customer_identity::Entity::find()
        .filter(customer_identity::Column::Provider.eq(provider))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.external_id, r.customer_id))
        .collect();
    rows.sort();
    rows
}

fn issues(report: &Value) -> Vec<(i64, Option<String>, String)> {
    report["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["line"].as_i64().unwrap(),
                i["column"].as_str().map(str::to_owned),
                i["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn a_gbk_file_with_bad_rows_dry_runs_then_imports_the_rest_exactly_once(app: TestApp) {
    let tag = app.tag_id("渠道来源", "线下展会").await;
    let before = app.snapshot().await;
    let dry = import(&app, "sz01.manager", FILE, true, vec![tag.clone()]).await;
    assert_eq!(dry["dryRun"], true);
    assert_eq!(dry["encoding"], "GBK");
    assert_eq!(dry["rows"], 7);
    assert_eq!(dry["created"], 3, "{dry}");
    assert_eq!(dry["skipped"], 4);
    let expected: Vec<(i64, Option<String>, String)> = vec![
        (3, Some("手机".into()), "INVALID_PHONE".into()),
        (4, Some("姓名".into()), "MISSING_VALUE".into()),
        (5, Some("性别".into()), "INVALID_VALUE".into()),
        (5, Some("生日".into()), "INVALID_DATE".into()),
        (7, Some("unionid".into()), "DUPLICATE_ID".into()),
    ];
    assert_eq!(issues(&dry), expected);
    assert_eq!(app.snapshot().await, before, "a dry run writes nothing");

    let real = import(&app, "sz01.manager", FILE, false, vec![tag.clone()]).await;
    assert_eq!(
        (real["created"].as_i64(), real["updated"].as_i64(), real["skipped"].as_i64()),
        (Some(3), Some(0), Some(4))
    );
    assert_eq!(real["tagsAdded"], 3);
    assert_eq!(issues(&real), expected);
    assert_eq!(real["sha256"], dry["sha256"]);
    let unionids = identities(&app, "unionid").await;
    assert_eq!(unionids.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>(), ["u-1001", "u-1005"]);
    let orders = identities(&app, "order_system").await;
    assert_eq!(orders.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>(), ["o-1", "o-7"]);
    let ming = customer::Entity::find_by_id(unionids[0].1).one(&app.db).await.unwrap().unwrap();
    assert_eq!(
        (ming.name.as_str(), ming.phone.as_deref(), ming.city.as_deref()),
        ("王小明", Some("13800138001"), Some("深圳"))
    );
    assert_eq!(ming.org_unit_id, app.unit("sz01"));
    let imported: Vec<i64> = unionids.iter().chain(&orders).map(|(_, c)| *c).collect();
    let tagged = customer_tag::Entity::find()
        .filter(customer_tag::Column::TagId.eq(row_id(&tag)))
        .filter(customer_tag::Column::Source.eq("IMPORT"))
        .filter(customer_tag::Column::CustomerId.is_in(imported))
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(tagged, 3);

    // The same file again: nobody new, nothing changed.
    let customers = customer::Entity::find().count(&app.db).await.unwrap();
    let again = import(&app, "sz01.manager", FILE, false, vec![tag]).await;
    assert_eq!(
        (again["created"].as_i64(), again["updated"].as_i64(), again["unchanged"].as_i64()),
        (Some(0), Some(0), Some(3))
    );
    assert_eq!(again["tagsAdded"], 0);
    assert_eq!(customer::Entity::find().count(&app.db).await.unwrap(), customers);
    assert_eq!(identities(&app, "unionid").await, unionids);

    // A corrected row updates its customer.
    let fixed = import(&app, "sz01.manager", "姓名,手机,unionid\n赵小燕,13800138009,u-1005\n", false, vec![]).await;
    assert_eq!((fixed["created"].as_i64(), fixed["updated"].as_i64()), (Some(0), Some(1)));
    let yan = customer::Entity::find_by_id(unionids[1].1).one(&app.db).await.unwrap().unwrap();
    assert_eq!((yan.phone.as_deref(), yan.city.as_deref()), (Some("13800138009"), Some("广州")));

    let audited =
        audit_log::Entity::find().filter(audit_log::Column::Action.eq("customer.import")).all(&app.db).await.unwrap();
    assert_eq!(audited.len(), 3);
    assert_eq!(audited[0].detail["sha256"], dry["sha256"]);
}

async fn an_identity_belongs_to_exactly_one_customer(app: TestApp) {
    let ids = app.customers_of("sz01").await;
    let res = app.gql("sz01.sales", ADD_IDENTITY, json!({ "id": ids[0], "s": "UNIONID", "v": "oUn-1" })).await;
    let shown = &res.ok()["addCustomerIdentity"]["identities"];
    assert!(shown.as_array().unwrap().iter().any(|i| i["source"] == "UNIONID" && i["value"] == "oUn-1"), "{shown}");
    let before = app.snapshot().await;
    let res = app.gql("sz01.sales", ADD_IDENTITY, json!({ "id": ids[1], "s": "UNIONID", "v": "oUn-1" })).await;
    assert_eq!(res.code(), "CONFLICT");
    assert!(app.snapshot().await.tables["customer_identity"] == before.tables["customer_identity"]);
    // The database itself refuses a second holder.
    let direct = customer_identity::ActiveModel {
        customer_id: Set(row_id(&ids[1])),
        provider: Set("unionid".into()),
        external_id: Set("oUn-1".into()),
        created_at: Set(chrono::Utc::now()),
        ..Default::default()
    }
    .insert(&app.db)
    .await;
    assert!(direct.is_err());
    // A WeCom external_userid is per corp: another corp may hold the same one.
    let a = app.gql("sz01.sales", ADD_IDENTITY, json!({ "id": ids[0], "s": "WECOM", "v": "wmX", "c": "ww01" })).await;
    a.ok();
    let b = app.gql("sz01.sales", ADD_IDENTITY, json!({ "id": ids[1], "s": "WECOM", "v": "wmX", "c": "ww02" })).await;
    let shown = &b.ok()["addCustomerIdentity"]["identities"];
    assert!(shown.as_array().unwrap().iter().any(|i| i["provider"] == "wecom:ww02" && i["corpId"] == "ww02"));
    let c = app.gql("sz01.sales", ADD_IDENTITY, json!({ "id": ids[1], "s": "WECOM", "v": "wmX", "c": "ww01" })).await;
    assert_eq!(c.code(), "CONFLICT");
}

async fn customer_by_identity_is_scoped_like_every_read(app: TestApp) {
    let ids = app.customers_of("sz01").await;
    app.gql("admin", ADD_IDENTITY, json!({ "id": ids[2], "s": "ORDER_SYSTEM", "v": "ord-77" })).await.ok();
    let found = app.gql("sz01.sales", BY_IDENTITY, json!({ "s": "ORDER_SYSTEM", "v": "ord-77" })).await;
    assert_eq!(found.ok()["customerByIdentity"]["id"], ids[2]);
    let elsewhere = app.gql("bj01.sales", BY_IDENTITY, json!({ "s": "ORDER_SYSTEM", "v": "ord-77" })).await;
    let unknown = app.gql("bj01.sales", BY_IDENTITY, json!({ "s": "ORDER_SYSTEM", "v": "ord-78" })).await;
    assert_eq!(elsewhere.code(), "NOT_FOUND");
    assert_eq!(unknown.code(), "NOT_FOUND");
    assert_eq!(elsewhere.message().replace("ord-77", "ord-78"), unknown.message());
    // A phone identity is shown as the phone is: masked to a store manager.
    app.gql("admin", ADD_IDENTITY, json!({ "id": ids[2], "s": "PHONE", "v": "13912345678" })).await.ok();
    let masked = app.gql("sz01.manager", BY_IDENTITY, json!({ "s": "PHONE", "v": "139 1234 5678" })).await;
    let shown = &masked.ok()["customerByIdentity"]["identities"];
    let phone = shown.as_array().unwrap().iter().find(|i| i["source"] == "PHONE").unwrap();
    assert_ne!(phone["value"], "13912345678");
}

/// `admin` tags a customer.
async fn tag(app: &TestApp, customer: &str, tags: &[&str]) {
    let res = app
        .gql(
            "admin",
            "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }",
            json!({ "c": [customer], "t": tags }),
        )
        .await;
    res.ok();
}

async fn two_records_of_one_person(app: &TestApp) -> (String, String) {
    let ids = app.customers_of("sz01").await;
    let (keep, remove) = (ids[0].clone(), ids[1].clone());
    for c in [&keep, &remove] {
        customer_tag::Entity::delete_many()
            .filter(customer_tag::Column::CustomerId.eq(row_id(c)))
            .exec(&app.db)
            .await
            .unwrap();
    }
    let expo = app.tag_id("渠道来源", "线下展会").await;
    let referral = app.tag_id("渠道来源", "老带新").await;
    let a = app.tag_id("消费等级", "A级").await;
    let b = app.tag_id("消费等级", "B级").await;
    tag(app, &keep, &[&expo, &a]).await;
    tag(app, &remove, &[&expo, &referral, &b]).await;
    let event = json!({ "customerId": remove, "kind": "MESSAGE_RECEIVED", "key": "merge-evt-1", "text": "你好",
        "occurredAt": chrono::Utc::now().to_rfc3339() });
    let res = app
        .gql(
            "admin",
            "mutation($e: [CustomerEventInput!]!) { recordEvents(input: { events: $e }) { recorded } }",
            json!({ "e": [event] }),
        )
        .await;
    assert_eq!(res.ok()["recordEvents"]["recorded"], 1);
    app.gql("admin", ADD_IDENTITY, json!({ "id": remove, "s": "UNIONID", "v": "o-same-person" })).await.ok();
    (keep, remove)
}

fn names(customer: &Value) -> Vec<String> {
    let mut names: Vec<String> =
        customer["tags"].as_array().unwrap().iter().map(|t| t["tag"]["name"].as_str().unwrap().to_owned()).collect();
    names.sort();
    names
}

async fn two_records_of_one_person_merge_without_losing_a_tag_or_an_event(app: TestApp) {
    let (keep, remove) = two_records_of_one_person(&app).await;
    let before = app.gql("admin", CUSTOMER, json!({ "id": keep })).await.ok()["customer"].clone();
    let removed_before = app.gql("admin", CUSTOMER, json!({ "id": remove })).await.ok()["customer"].clone();
    let count = |v: &Value, f: &str| v[f]["edges"].as_array().unwrap().len();
    let total = "query { customers(filter: { orgUnitId: \"__\" }) { totalCount } }".replace("__", &app.unit_id("sz01"));
    let listed = app.gql("admin", &total, json!({})).await.ok()["customers"]["totalCount"].as_i64().unwrap();

    let res = app.gql("admin", MERGE, json!({ "k": keep, "r": remove })).await;
    let merged = &res.ok()["mergeCustomers"];
    assert!(merged["changeRequest"].is_null());
    // The kept customer's tag wins in the exclusive group (A级 over B级).
    assert_eq!(names(&merged["customer"]), ["A级", "线下展会", "老带新"]);
    assert_eq!(merged["tagsDropped"].as_array().unwrap().len(), 2);
    assert_eq!(merged["eventsMoved"], 1);
    // Its demo id and its unionid.
    assert_eq!(merged["identitiesMoved"], 2);

    let after = app.gql("admin", CUSTOMER, json!({ "id": keep })).await.ok()["customer"].clone();
    assert_eq!(count(&after, "events"), count(&before, "events") + count(&removed_before, "events"));
    assert!(count(&after, "tagEvents") > count(&before, "tagEvents") + count(&removed_before, "tagEvents"));
    assert!(after["identities"].as_array().unwrap().iter().any(|i| i["value"] == "o-same-person"));

    // The tombstone: its id reads as the kept customer, everywhere.
    let redirected = app.gql("admin", CUSTOMER, json!({ "id": remove })).await;
    assert_eq!(redirected.ok()["customer"]["id"], keep);
    let node = app.gql("admin", "query($id: ID!) { node(id: $id) { id } }", json!({ "id": remove })).await;
    assert_eq!(node.ok()["node"]["id"], keep);
    let by_identity = app.gql("admin", BY_IDENTITY, json!({ "s": "UNIONID", "v": "o-same-person" })).await;
    assert_eq!(by_identity.ok()["customerByIdentity"]["id"], keep);
    let tomb = customer::Entity::find_by_id(row_id(&remove)).one(&app.db).await.unwrap().unwrap();
    assert_eq!(tomb.merged_into_id, Some(row_id(&keep)));
    assert!(tomb.merged_at.is_some());
    assert_eq!(
        customer_tag::Entity::find().filter(customer_tag::Column::CustomerId.eq(tomb.id)).count(&app.db).await.unwrap(),
        0
    );

    // Lists and the index leave the tombstone out.
    let now_listed = app.gql("admin", &total, json!({})).await.ok()["customers"]["totalCount"].as_i64().unwrap();
    assert_eq!(now_listed, listed - 1);
    let referral = app.tag_id("渠道来源", "老带新").await;
    let holders = app
        .gql(
            "admin",
            "query($t: ID!) { customers(first: 100, filter: { hasAllTags: [$t] }) { totalCount edges { node { id } } } }",
            json!({ "t": referral }),
        )
        .await;
    let held: Vec<&str> = holders.ok()["customers"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap())
        .collect();
    assert!(held.contains(&keep.as_str()) && !held.contains(&remove.as_str()), "{held:?}");
    let merge_events =
        tag_event::Entity::find().filter(tag_event::Column::Source.eq("MERGE")).count(&app.db).await.unwrap();
    assert!(merge_events >= 3);
    let audited =
        audit_log::Entity::find().filter(audit_log::Column::Action.eq("customer.merge")).all(&app.db).await.unwrap();
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].detail["remove"], row_id(&remove));

    // A tombstone is merged into nothing again.
    let again = app.gql("admin", MERGE, json!({ "k": keep, "r": remove })).await;
    assert_eq!(again.code(), "NOT_FOUND");
}

async fn a_merge_without_the_merge_right_goes_through_a_change_request(app: TestApp) {
    let (keep, remove) = two_records_of_one_person(&app).await;
    let before = app.snapshot().await;
    let res = app.gql("sz01.sales", MERGE, json!({ "k": keep, "r": remove })).await;
    let filed = &res.ok()["mergeCustomers"];
    assert!(filed["customer"].is_null());
    assert_eq!(filed["changeRequest"]["status"], "PENDING");
    let after = app.snapshot().await;
    assert!(after.tables["customer"] == before.tables["customer"], "customer changed");
    assert!(after.tables["customer_tag"] == before.tables["customer_tag"], "customer_tag changed");
    let id = filed["changeRequest"]["id"].as_str().unwrap();
    let approved = app
        .gql(
            "sz01.manager",
            "mutation($id: ID!) { approveChangeRequest(id: $id, comment: \"同意\") { changeRequest { status } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(approved.ok()["approveChangeRequest"]["changeRequest"]["status"], "APPROVED");
    let tomb = customer::Entity::find_by_id(row_id(&remove)).one(&app.db).await.unwrap().unwrap();
    assert_eq!(tomb.merged_into_id, Some(row_id(&keep)));
    let kept = app.gql("sz01.sales", CUSTOMER, json!({ "id": remove })).await;
    assert_eq!(kept.ok()["customer"]["id"], keep);
}

async fn a_merge_is_scope_checked_on_both_customers(app: TestApp) {
    let mine = app.customers_of("sz01").await;
    let theirs = app.customers_of("bj01").await;
    let before = app.snapshot().await;
    for (k, r) in [(&mine[0], &theirs[0]), (&theirs[0], &mine[0])] {
        let res = app.gql("sz01.manager", MERGE, json!({ "k": k, "r": r })).await;
        assert_eq!(res.code(), "NOT_FOUND");
    }
    let res = app.gql("sz01.service", MERGE, json!({ "k": mine[0], "r": mine[1] })).await;
    assert_eq!(res.code(), "FORBIDDEN");
    let after = app.snapshot().await;
    assert_eq!(after.customers, before.customers);
    assert!(after.tables["customer"] == before.tables["customer"], "customer changed");
    assert!(after.tables["change_request"] == before.tables["change_request"], "change_request changed");
}

async fn events_under(app: &TestApp, customer: &str) -> u64 {
    customer_event::Entity::find()
        .filter(customer_event::Column::CustomerId.eq(row_id(customer)))
        .count(&app.db)
        .await
        .unwrap()
}

/// The removed customer's events move to the kept one: its rules (a count
/// and a streak over the merged history), a dry run and its event list
/// see them under its own id, and a connector resending an event recorded
/// before the merge gets a duplicate, not a conflict.
async fn a_merge_moves_customer_events_and_rules_see_the_merged_history(app: TestApp) {
    let now = Utc::now();
    let keep = app.fresh_customer("sz01", "sz01.sales").await;
    let remove = app.fresh_customer("sz01", "sz01.sales").await;
    let inquiry = app.tag_id("活动", "询价").await;
    // Three messages in 30 days, one on each of the last two days.
    let condition = "count(message, 30d) >= 3 AND streak(message, 2d)";
    app.gql(
        "admin",
        "mutation($i: CreateRuleInput!) { createRule(input: $i) { id } }",
        json!({ "i": { "orgUnitId": app.unit_id("hq"), "name": "常联系", "condition": condition,
            "actions": [{ "op": "ADD", "tagId": inquiry }], "enabled": true } }),
    )
    .await
    .ok();
    let earlier = [
        message_at(&remove, "mv-1", "你好", now - Duration::days(1)),
        message_at(&remove, "mv-2", "在吗", now - Duration::hours(2)),
    ];
    let res = app.gql("admin", RECORD, json!({ "e": earlier })).await;
    assert_eq!(res.ok()["recordEvents"]["recorded"], 2);
    assert!(tags_of(&app, &remove).await.is_empty(), "two messages are not three");

    let merged = app.gql("admin", MERGE, json!({ "k": keep, "r": remove })).await;
    assert_eq!(merged.ok()["mergeCustomers"]["eventsMoved"], 2);
    assert_eq!(events_under(&app, &remove).await, 0);
    assert_eq!(events_under(&app, &keep).await, 2);
    let listed = app.gql("admin", CUSTOMER, json!({ "id": keep })).await;
    assert_eq!(listed.ok()["customer"]["events"]["edges"].as_array().unwrap().len(), 2);

    // A dry run replays the merged history as the kept customer's.
    let dry = app
        .gql(
            "admin",
            "query($i: DryRunRuleInput!) { dryRunRule(input: $i) { wouldAdd sample { customerId } } }",
            json!({ "i": { "rule": { "orgUnitId": app.unit_id("hq"), "name": "草稿",
                "condition": "count(message, 30d) >= 2", "actions": [{ "op": "ADD", "tagId": inquiry }] } } }),
        )
        .await;
    let samples: Vec<Value> =
        dry.ok()["dryRunRule"]["sample"].as_array().unwrap().iter().map(|s| s["customerId"].clone()).collect();
    assert!(samples.contains(&json!(keep)) && !samples.contains(&json!(remove)), "{samples:?}");

    // The third message, today, to the kept customer: count and streak hold.
    let res = app.gql("admin", RECORD, json!({ "e": [message_at(&keep, "mv-3", "好的", now)] })).await;
    assert_eq!(res.ok()["recordEvents"]["tagChanges"], 1);
    let tags = tags_of(&app, &keep).await;
    assert_eq!(tags.len(), 1);
    assert_eq!(tags[0]["tag"]["name"], "询价");

    // A resend of an event recorded before the merge, naming the removed id.
    let resend = app.gql("admin", RECORD, json!({ "e": [earlier[0].clone()] })).await;
    assert_eq!(resend.ok()["recordEvents"]["duplicates"], 1, "{:?}", resend.ok());
    assert_eq!(resend.ok()["recordEvents"]["errors"], json!([]));
    assert_eq!(events_under(&app, &keep).await, 3);
}

/// The customer event log stays append-only: the one change the database
/// lets through is moving an event to the customer its customer was merged
/// into, nothing else changed with it.
async fn customer_events_refuse_every_change_but_the_move_of_a_merge(app: TestApp) {
    let keep = app.fresh_customer("sz01", "sz01.sales").await;
    let remove = app.fresh_customer("sz01", "sz01.sales").await;
    let other = app.fresh_customer("sz01", "sz01.sales").await;
    let res = app.gql("admin", RECORD, json!({ "e": [message_at(&keep, "ao-1", "你好", Utc::now())] })).await;
    let event = row_id(res.ok()["recordEvents"]["results"][0]["eventId"].as_str().unwrap());
    let by_id = |id: i64| customer_event::Entity::update_many().filter(customer_event::Column::Id.eq(id));
    // A live customer's event: no change at all, not even its customer.
    assert!(by_id(event).col_expr(customer_event::Column::EventKey, Expr::value("x")).exec(&app.db).await.is_err());
    assert!(
        by_id(event)
            .col_expr(customer_event::Column::CustomerId, Expr::value(row_id(&other)))
            .exec(&app.db)
            .await
            .is_err()
    );
    assert!(customer_event::Entity::delete_by_id(event).exec(&app.db).await.is_err());

    // An event left under a tombstone (as merges before this rule left them).
    app.gql("admin", MERGE, json!({ "k": keep, "r": remove })).await.ok();
    let stray = customer_event::Entity::find_by_id(event).one(&app.db).await.unwrap().unwrap();
    let stray = customer_event::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        customer_id: Set(row_id(&remove)),
        event_key: Set("ao-stray".to_owned()),
        ..stray.into()
    }
    .insert(&app.db)
    .await
    .unwrap();
    assert_eq!(events_under(&app, &remove).await, 1);
    let to = |id: &str| Expr::value(row_id(id));
    // Elsewhere than the kept customer: refused.
    assert!(by_id(stray.id).col_expr(customer_event::Column::CustomerId, to(&other)).exec(&app.db).await.is_err());
    // To the kept customer but with another change: refused.
    let with_key = by_id(stray.id)
        .col_expr(customer_event::Column::CustomerId, to(&keep))
        .col_expr(customer_event::Column::EventKey, Expr::value("ao-changed"));
    assert!(with_key.exec(&app.db).await.is_err());
    let with_unit = by_id(stray.id)
        .col_expr(customer_event::Column::CustomerId, to(&keep))
        .col_expr(customer_event::Column::OrgUnitId, Expr::value(app.unit("bj01")));
    assert!(with_unit.exec(&app.db).await.is_err());
    assert!(customer_event::Entity::delete_by_id(stray.id).exec(&app.db).await.is_err());
    assert_eq!(customer_event::Entity::find_by_id(stray.id).one(&app.db).await.unwrap().unwrap(), stray);
    // The move itself.
    let moved = by_id(stray.id).col_expr(customer_event::Column::CustomerId, to(&keep)).exec(&app.db).await.unwrap();
    assert_eq!(moved.rows_affected, 1);
    let after = customer_event::Entity::find_by_id(stray.id).one(&app.db).await.unwrap().unwrap();
    assert_eq!(after, customer_event::Model { customer_id: row_id(&keep), ..stray });
    // And once there, it stays.
    assert!(by_id(stray.id).col_expr(customer_event::Column::CustomerId, to(&remove)).exec(&app.db).await.is_err());
}

async fn a_large_import_runs_as_a_job_with_progress(app: TestApp) {
    let file: String = std::iter::once("姓名,unionid\n".to_owned())
        .chain((1..=5).map(|i| format!("客户{i},job-u-{i}\n")))
        .chain(std::iter::once("坏行,\n".to_owned()))
        .collect();
    let report = import(&app, "sz01.manager", &file, false, vec![]).await;
    let job = &report["job"];
    assert_eq!(job["status"], "QUEUED");
    assert_eq!(job["total"], 5);
    assert_eq!(report["skipped"], 1);
    let worker = Worker {
        db: app.db.clone(),
        authz: app.app.state.authz.clone(),
        index: app.app.state.index.clone(),
        limits: app.app.state.settings.limits.clone(),
        instance: "test".to_owned(),
    };
    assert_eq!(worker.run_next().await.unwrap(), Some(RunEnd::Finished(JobStatus::Succeeded)));
    let done = app
        .gql(
            "sz01.manager",
            "query($id: ID!) { job(id: $id) { kind status total done created updated skipped errors { line code } } }",
            json!({ "id": job["id"] }),
        )
        .await;
    let done = &done.ok()["job"];
    assert_eq!(done["kind"], "IMPORT_CUSTOMERS");
    assert_eq!(
        (done["done"].as_i64(), done["created"].as_i64(), done["skipped"].as_i64()),
        (Some(5), Some(5), Some(1))
    );
    assert_eq!(done["errors"][0]["line"], 7);
    assert_eq!(identities(&app, "unionid").await.len(), 5);
    let audited =
        audit_log::Entity::find().filter(audit_log::Column::Action.eq("customer.import")).all(&app.db).await.unwrap();
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0].detail["sha256"], report["sha256"]);
    assert_eq!(audited[0].detail["created"], 5);
}

crate::on_both_databases!(
    a_gbk_file_with_bad_rows_dry_runs_then_imports_the_rest_exactly_once,
    an_identity_belongs_to_exactly_one_customer,
    customer_by_identity_is_scoped_like_every_read,
    two_records_of_one_person_merge_without_losing_a_tag_or_an_event,
    a_merge_without_the_merge_right_goes_through_a_change_request,
    a_merge_is_scope_checked_on_both_customers,
    a_merge_moves_customer_events_and_rules_see_the_merged_history,
    customer_events_refuse_every_change_but_the_move_of_a_merge,
);

crate::on_both_databases_with!(
    a_large_import_runs_as_a_job_with_progress => tagbase::config::Limits {
        import_job_rows: 2,
        job_batch_size: 2,
        ..tagbase::config::Limits::default()
    },
);
