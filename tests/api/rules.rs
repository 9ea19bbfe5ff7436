//! Automatic tagging: customer events in (idempotent, per-item errors,
//! scope), rules saved and versioned (refused with positions), rules run
//! in the event's transaction, manual removals and locks respected, and
//! every automatic tag able to say why.

use chrono::{Duration, FixedOffset, TimeZone, Utc};
use entity::{customer_event, rule_deferred_action};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};
use tagbase::config::Limits;

use crate::helpers::{RECORD, TestApp, row_id};
use crate::{on_both_databases, on_both_databases_with};

const CREATE_RULE: &str = "mutation($i: CreateRuleInput!) { createRule(input: $i) { id name version status condition
    actions { op tag { name } ttlSeconds } } }";

const TAGS: &str = "query($id: ID!) { customer(id: $id) { tags { tag { name } source sourceRef
    why { text ruleVersion rule { name } event { kind } } } } }";

fn message(customer: &str, key: &str, text: &str) -> Value {
    json!({ "customerId": customer, "kind": "MESSAGE_RECEIVED", "key": key, "text": text,
        "occurredAt": Utc::now().to_rfc3339() })
}

async fn create_rule(app: &TestApp, login: &str, input: Value) -> crate::helpers::Gql {
    app.gql(login, CREATE_RULE, json!({ "i": input })).await
}

/// The 询价 keyword rule at HQ, enabled.
async fn inquiry_rule(app: &TestApp) -> String {
    let inquiry = app.tag_id("活动", "询价").await;
    let res = create_rule(
        app,
        "admin",
        json!({ "orgUnitId": app.unit_id("hq"), "name": "询价关键词", "condition": "message contains \"询价\"",
            "actions": [{ "op": "ADD", "tagId": inquiry }], "enabled": true }),
    )
    .await;
    res.ok()["createRule"]["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn tags_of(app: &TestApp, customer: &str) -> Vec<Value> {
    app.gql("sz01.manager", TAGS, json!({ "id": customer })).await.ok()["customer"]["tags"].as_array().unwrap().clone()
}

async fn a_message_with_the_keyword_tags_the_customer_at_once_and_says_why(mut app: TestApp) {
    let login = app.connector().await;
    inquiry_rule(&app).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let quiet = app.fresh_customer("sz01", "sz01.sales").await;
    let res = app
        .gql(
            login,
            RECORD,
            json!({ "e": [message(&customer, "wx-1", "你好，想询价一下"), message(&quiet, "wx-2", "你好")] }),
        )
        .await;
    let out = &res.ok()["recordEvents"];
    assert_eq!(out["recorded"], 2);
    assert_eq!(out["tagChanges"], 1);
    let tags = tags_of(&app, &customer).await;
    assert_eq!(tags.len(), 1);
    assert_eq!(tags[0]["tag"]["name"], "询价");
    assert_eq!(tags[0]["source"], "RULE");
    let why = &tags[0]["why"];
    assert_eq!(why["ruleVersion"], 1);
    assert_eq!(why["rule"]["name"], "询价关键词");
    assert_eq!(why["event"]["kind"], "MESSAGE_RECEIVED");
    let event_id = row_id(out["results"][0]["eventId"].as_str().unwrap());
    let text = why["text"].as_str().unwrap();
    assert!(text.starts_with("规则 询价关键词 v1: message at "), "{text}");
    assert!(text.ends_with(&format!("(+08:00), event #{event_id}")), "{text}");
    assert!(tags_of(&app, &quiet).await.is_empty());
    // Segments see the rule's tag at once.
    let preview = app
        .gql(
            "sz01.manager",
            "query($s: SegmentInput!) { segmentPreview(segment: $s) { customers(first: 100) { edges { node { id } } } } }",
            json!({ "s": { "text": "tag(\"询价\")" } }),
        )
        .await;
    let members: Vec<Value> = preview.ok()["segmentPreview"]["customers"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].clone())
        .collect();
    assert!(members.contains(&json!(customer)), "the segment index saw the rule's tag");
    assert!(!members.contains(&json!(quiet)));
}

async fn the_same_key_twice_has_no_second_effect_and_another_event_under_it_is_a_conflict(mut app: TestApp) {
    let login = app.connector().await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let first = message(&customer, "wx-9", "你好");
    let res = app.gql(login, RECORD, json!({ "e": [first.clone(), first.clone()] })).await;
    let out = &res.ok()["recordEvents"];
    assert_eq!(out["recorded"], 1);
    assert_eq!(out["duplicates"], 1, "the same event twice in one batch");
    assert_eq!(out["results"][0]["eventId"], out["results"][1]["eventId"]);
    let before = customer_event::Entity::find().count(&app.db).await.unwrap();
    let again = app.gql(login, RECORD, json!({ "e": [first.clone()] })).await;
    assert_eq!(again.ok()["recordEvents"]["duplicates"], 1);
    assert_eq!(again.ok()["recordEvents"]["results"][0]["eventId"], out["results"][0]["eventId"]);
    let mut other = first.clone();
    other["text"] = json!("不同的内容");
    let conflict = app.gql(login, RECORD, json!({ "e": [other] })).await;
    let errors = &conflict.ok()["recordEvents"]["errors"];
    assert_eq!(errors[0]["index"], 0);
    assert_eq!(errors[0]["code"], "CONFLICT");
    assert_eq!(customer_event::Entity::find().count(&app.db).await.unwrap(), before, "nothing more recorded");
}

async fn bad_events_are_refused_one_by_one_and_the_good_ones_kept(mut app: TestApp) {
    let login = app.connector().await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let elsewhere = app.customers_of("bj01").await[0].clone();
    let now = Utc::now();
    let mut unknown_kind = message(&customer, "k1", "x");
    unknown_kind["kind"] = json!("MESSAGE_SENT");
    let mut future = message(&customer, "k2", "x");
    future["occurredAt"] = json!((now + Duration::hours(2)).to_rfc3339());
    let mut ancient = message(&customer, "k3", "x");
    ancient["occurredAt"] = json!("1970-01-01T00:00:00Z");
    let huge = message(&customer, "k4", &"询".repeat(5_000));
    let bad_json = json!({ "customerId": customer, "kind": "CUSTOM", "key": "k5", "name": "试驾",
        "properties": [1, 2], "occurredAt": now.to_rfc3339() });
    let foreign = message(&elsewhere, "k6", "x");
    let good = json!({ "customerId": customer, "kind": "ORDER_PAID", "key": "k7", "amount": 19900,
        "orderId": "SO-1", "occurredAt": now.to_rfc3339() });
    let res =
        app.gql(login, RECORD, json!({ "e": [unknown_kind, future, ancient, huge, bad_json, foreign, good] })).await;
    let out = &res.ok()["recordEvents"];
    let errors: Vec<(i64, String, Value)> = out["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_i64().unwrap(), e["code"].as_str().unwrap().to_owned(), e["field"].clone()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (0, "VALIDATION".into(), json!("kind")),
            (1, "VALIDATION".into(), json!("occurredAt")),
            (2, "VALIDATION".into(), json!("occurredAt")),
            (3, "VALIDATION".into(), json!("text")),
            (4, "VALIDATION".into(), json!("properties")),
            (5, "NOT_FOUND".into(), Value::Null),
        ]
    );
    assert_eq!(out["recorded"], 1);
    assert_eq!(out["results"][6]["outcome"], "RECORDED");
    let events = app
        .gql(
            "sz01.manager",
            "query($id: ID!) { customer(id: $id) { events { totalCount edges { node { kind amount orderId } } } } }",
            json!({ "id": customer }),
        )
        .await;
    let events = &events.ok()["customer"]["events"];
    assert_eq!(events["totalCount"], 1);
    assert_eq!(events["edges"][0]["node"], json!({ "kind": "ORDER_PAID", "amount": 19900, "orderId": "SO-1" }));
}

async fn an_oversized_batch_is_refused_whole(mut app: TestApp) {
    let login = app.connector().await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let events: Vec<Value> = (0..3).map(|i| message(&customer, &format!("b{i}"), "x")).collect();
    let res = app.gql(login, RECORD, json!({ "e": events })).await;
    assert_eq!(res.code(), "LIMIT_EXCEEDED");
    assert_eq!(customer_event::Entity::find().count(&app.db).await.unwrap(), 0);
}

async fn the_integration_role_records_events_and_does_nothing_else(mut app: TestApp) {
    let login = app.connector().await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let read = app.gql(login, "query($id: ID!) { customer(id: $id) { name } }", json!({ "id": customer })).await;
    assert_eq!(read.code(), "NOT_FOUND");
    let rules =
        app.gql(login, "query($u: ID!) { rules(orgUnitId: $u) { name } }", json!({ "u": app.unit_id("sz01") })).await;
    assert_eq!(rules.code(), "NOT_FOUND");
    let inquiry = app.tag_id("活动", "询价").await;
    let tag = app
        .gql(
            login,
            "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }",
            json!({ "c": [customer], "t": [inquiry] }),
        )
        .await;
    assert_eq!(tag.code(), "NOT_FOUND");
    // Staff without `customer_event:write` record nothing.
    let sales = app.gql("sz01.sales", RECORD, json!({ "e": [message(&customer, "s1", "x")] })).await;
    assert_eq!(sales.code(), "FORBIDDEN");
    assert_eq!(customer_event::Entity::find().count(&app.db).await.unwrap(), 0);
    // By external id (a WeCom external_userid).
    app.gql(
        "sz01.sales",
        "mutation($u: ID!) { createCustomer(input: { orgUnitId: $u, name: \"企微客户\", externalIds: [{ provider: \"wecom\", externalId: \"wmABC\" }] }) { customer { id } } }",
        json!({ "u": app.unit_id("sz01") }),
    )
    .await
    .ok();
    let by_external = json!({ "externalId": { "provider": "wecom", "externalId": "wmABC" }, "kind": "GROUP_JOINED",
        "key": "g1", "group": "宝妈群", "occurredAt": Utc::now().to_rfc3339() });
    let res = app.gql(login, RECORD, json!({ "e": [by_external] })).await;
    assert_eq!(res.ok()["recordEvents"]["recorded"], 1);
    let unknown = json!({ "externalId": { "provider": "wecom", "externalId": "wmNOPE" }, "kind": "GROUP_JOINED",
        "key": "g2", "occurredAt": Utc::now().to_rfc3339() });
    let res = app.gql(login, RECORD, json!({ "e": [unknown] })).await;
    assert_eq!(res.ok()["recordEvents"]["errors"][0]["code"], "NOT_FOUND");
    // Events of another store's customer are outside the connector's scope.
    let elsewhere = app.customers_of("bj01").await[0].clone();
    let res = app.gql(login, RECORD, json!({ "e": [message(&elsewhere, "o1", "x")] })).await;
    assert_eq!(res.ok()["recordEvents"]["errors"][0]["code"], "NOT_FOUND");
}

async fn customer_events_are_read_with_the_customers_visibility(mut app: TestApp) {
    let login = app.connector().await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    app.gql(login, RECORD, json!({ "e": [message(&customer, "v1", "你好")] })).await.ok();
    let q =
        "query($id: ID!) { customer(id: $id) { events(first: 10) { totalCount edges { node { kind text key } } } } }";
    let own = app.gql("sz01.sales", q, json!({ "id": customer })).await;
    assert_eq!(
        own.ok()["customer"]["events"]["edges"][0]["node"],
        json!({ "kind": "MESSAGE_RECEIVED", "text": "你好", "key": "v1" })
    );
    let other_store = app.gql("bj01.sales", q, json!({ "id": customer })).await;
    assert_eq!(other_store.code(), "NOT_FOUND");
}

async fn an_orders_amount_is_guarded_as_the_customers_spend(mut app: TestApp) {
    let login = app.connector().await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let order = json!({ "customerId": customer, "kind": "ORDER_PAID", "key": "o1", "amount": 19900,
        "orderId": "SO-9", "occurredAt": Utc::now().to_rfc3339() });
    app.gql(login, RECORD, json!({ "e": [order] })).await.ok();
    let q = "query($id: ID!) { customer(id: $id) { events(first: 10) { edges { node { kind amount orderId } } } } }";
    // Sales read spend in their store: the amount is there.
    let sales = app.gql("sz01.sales", q, json!({ "id": customer })).await;
    assert_eq!(
        sales.ok()["customer"]["events"]["edges"][0]["node"],
        json!({ "kind": "ORDER_PAID", "amount": 19900, "orderId": "SO-9" })
    );
    // Customer service may not read spend: the amount is null with
    // FORBIDDEN_FIELD at its path, the rest of the event is there.
    let service = app.gql("sz01.service", q, json!({ "id": customer })).await;
    assert_eq!(service.code(), "FORBIDDEN_FIELD");
    assert_eq!(
        service.0["data"]["customer"]["events"]["edges"][0]["node"],
        json!({ "kind": "ORDER_PAID", "amount": null, "orderId": "SO-9" })
    );
}

async fn bad_rules_are_refused_at_save_time_with_positions(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let base = |condition: &str| {
        json!({ "orgUnitId": app.unit_id("sz01"), "name": "r", "condition": condition,
            "actions": [{ "op": "ADD", "tagId": inquiry }] })
    };
    let res = create_rule(&app, "sz01.manager", base("message contains 询价")).await;
    assert_eq!(res.code(), "VALIDATION");
    assert!(res.message().contains("at column 18"), "{}", res.message());
    let res = create_rule(&app, "sz01.manager", base("tag(\"没有这个标签\") AND message contains \"x\"")).await;
    assert_eq!(res.code(), "VALIDATION");
    assert!(res.message().contains("at column 5") && res.message().contains("没有这个标签"), "{}", res.message());
    // A tag of another region's library.
    let north_gold = app.tag_id("华北区域标签", "黄金会员").await;
    let mut foreign = base("message contains \"x\"");
    foreign["actions"] = json!([{ "op": "ADD", "tagId": north_gold }]);
    let res = create_rule(&app, "sz01.manager", foreign).await;
    assert_eq!(res.code(), "VALIDATION");
    assert!(res.message().contains("actions[0].tagId"), "{}", res.message());
    // A tag of a class the caller may not use (marketing: not `sensitive`).
    let sensitive = app.tag_id("健康关注", "孕期").await;
    let mut forbidden = base("message contains \"x\"");
    forbidden["orgUnitId"] = json!(app.unit_id("hq"));
    forbidden["actions"] = json!([{ "op": "ADD", "tagId": sensitive }]);
    assert_eq!(create_rule(&app, "hq.marketing", forbidden).await.code(), "FORBIDDEN");
    // MOVE needs an exclusive group.
    let mut not_exclusive = base("message contains \"x\"");
    not_exclusive["actions"] = json!([{ "op": "MOVE", "tagId": inquiry }]);
    assert_eq!(create_rule(&app, "sz01.manager", not_exclusive).await.code(), "VALIDATION");
    // Rules that feed each other loop.
    let evening = app.tag_id("活动", "晚间咨询").await;
    let mut a = base("tag(\"询价\")");
    a["name"] = json!("a");
    a["enabled"] = json!(true);
    a["actions"] = json!([{ "op": "ADD", "tagId": evening }]);
    create_rule(&app, "sz01.manager", a).await.ok();
    let mut b = base("tag(\"晚间咨询\")");
    b["name"] = json!("b");
    b["enabled"] = json!(true);
    b["actions"] = json!([{ "op": "REMOVE", "tagId": inquiry }]);
    let res = create_rule(&app, "sz01.manager", b).await;
    assert_eq!(res.code(), "VALIDATION");
    assert!(res.message().contains("loop"), "{}", res.message());
    // Sales read rules but do not write them.
    assert_eq!(create_rule(&app, "sz01.sales", base("message contains \"x\"")).await.code(), "FORBIDDEN");
}

async fn rules_keep_their_versions_and_roll_back(app: TestApp) {
    let id = inquiry_rule(&app).await;
    let update = "mutation($i: UpdateRuleInput!) { updateRule(input: $i) { version condition } }";
    let res = app
        .gql("admin", update, json!({ "i": { "id": id, "version": 1, "condition": "message contains \"报价\"" } }))
        .await;
    assert_eq!(res.ok()["updateRule"]["version"], 2);
    let stale = app
        .gql("admin", update, json!({ "i": { "id": id, "version": 1, "condition": "message contains \"x\"" } }))
        .await;
    assert_eq!(stale.code(), "CONFLICT");
    let off =
        app.gql("admin", "mutation($id: ID!) { disableRule(id: $id) { status version } }", json!({ "id": id })).await;
    assert_eq!(off.ok()["disableRule"], json!({ "status": "DISABLED", "version": 3 }));
    let back = app
        .gql(
            "admin",
            "mutation($id: ID!) { rollbackRule(id: $id, toVersion: 1) { version status condition } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(
        back.ok()["rollbackRule"],
        json!({ "version": 4, "status": "DISABLED", "condition": "message contains \"询价\"" })
    );
    let history =
        app.gql("admin", "query($id: ID!) { ruleHistory(ruleId: $id) { version change } }", json!({ "id": id })).await;
    let changes: Vec<Value> =
        history.ok()["ruleHistory"].as_array().unwrap().iter().map(|v| v["change"].clone()).collect();
    assert_eq!(changes, vec![json!("rollback"), json!("disable"), json!("update"), json!("create")]);
    let archived =
        app.gql("admin", "mutation($id: ID!) { archiveRule(id: $id) { status } }", json!({ "id": id })).await;
    assert_eq!(archived.ok()["archiveRule"]["status"], "ARCHIVED");
    let again = app.gql("admin", "mutation($id: ID!) { enableRule(id: $id) { status } }", json!({ "id": id })).await;
    assert_eq!(again.code(), "VALIDATION");
    // Store staff see the HQ rule among the rules of their store.
    let listed = app
        .gql(
            "sz01.sales",
            "query($u: ID!) { rules(orgUnitId: $u, includeArchived: true) { name status } }",
            json!({ "u": app.unit_id("sz01") }),
        )
        .await;
    assert_eq!(listed.ok()["rules"], json!([{ "name": "询价关键词", "status": "ARCHIVED" }]));
}

async fn a_rule_does_not_put_back_a_tag_a_person_removed(mut app: TestApp) {
    let login = app.connector().await;
    inquiry_rule(&app).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    app.gql(login, RECORD, json!({ "e": [message(&customer, "m1", "询价")] })).await.ok();
    let inquiry = app.tag_id("活动", "询价").await;
    app.gql(
        "sz01.sales",
        "mutation($c: [ID!]!, $t: [ID!]!) { untagCustomers(input: { customerIds: $c, tagIds: $t }) { removed } }",
        json!({ "c": [customer], "t": [inquiry] }),
    )
    .await
    .ok();
    let res = app.gql(login, RECORD, json!({ "e": [message(&customer, "m2", "再次询价")] })).await;
    assert_eq!(res.ok()["recordEvents"]["tagChanges"], 0);
    assert_eq!(res.ok()["recordEvents"]["heldBack"], 1);
    assert!(tags_of(&app, &customer).await.is_empty());
}

async fn a_locked_group_defers_the_rules_change(mut app: TestApp) {
    let login = app.connector().await;
    inquiry_rule(&app).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let group = app.group_id("活动").await;
    app.gql(
        "hq.marketing",
        "mutation($g: ID!, $c: [ID!]) { lockTagGroup(input: { groupId: $g, customerIds: $c, reason: \"活动\" }) { lock { id } } }",
        json!({ "g": group, "c": [customer] }),
    )
    .await
    .ok();
    let res = app.gql(login, RECORD, json!({ "e": [message(&customer, "l1", "询价")] })).await;
    assert_eq!(res.ok()["recordEvents"]["recorded"], 1);
    assert_eq!(res.ok()["recordEvents"]["deferred"], 1);
    assert!(tags_of(&app, &customer).await.is_empty());
    let kept = rule_deferred_action::Entity::find().all(&app.db).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].customer_id, row_id(&customer));
    assert!(kept[0].applied_at.is_none());
}

async fn customers_added_at_17_59_and_18_01_get_different_tags(mut app: TestApp) {
    let login = app.connector().await;
    let evening = app.tag_id("活动", "晚间咨询").await;
    create_rule(
        &app,
        "admin",
        json!({ "orgUnitId": app.unit_id("hq"), "name": "晚间咨询", "condition": "customer_added at 18:00–24:00",
            "actions": [{ "op": "ADD", "tagId": evening }], "enabled": true }),
    )
    .await
    .ok();
    let shanghai = FixedOffset::east_opt(8 * 3600).unwrap();
    let today = Utc::now().with_timezone(&shanghai).date_naive() - chrono::Days::new(1);
    let at = |h, m| shanghai.from_local_datetime(&today.and_hms_opt(h, m, 0).unwrap()).unwrap().to_rfc3339();
    let early = app.fresh_customer("sz01", "sz01.sales").await;
    let late = app.fresh_customer("sz01", "sz01.sales").await;
    let added = |c: &str, key: &str, when: String| json!({ "customerId": c, "kind": "CUSTOMER_ADDED", "key": key, "channel": "抖音广告", "occurredAt": when });
    let res =
        app.gql(login, RECORD, json!({ "e": [added(&early, "a1", at(17, 59)), added(&late, "a2", at(18, 1))] })).await;
    assert_eq!(res.ok()["recordEvents"]["tagChanges"], 1);
    assert!(tags_of(&app, &early).await.is_empty());
    let tags = tags_of(&app, &late).await;
    assert_eq!(tags[0]["tag"]["name"], "晚间咨询");
    assert!(tags[0]["why"]["text"].as_str().unwrap().contains("customer_added at 18:01 (+08:00)"));
}

async fn recorded_events_cannot_be_changed_or_deleted(mut app: TestApp) {
    use sea_orm::{QueryFilter, sea_query::Expr};
    let login = app.connector().await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    app.gql(login, RECORD, json!({ "e": [message(&customer, "ao1", "你好")] })).await.ok();
    let update = customer_event::Entity::update_many()
        .col_expr(customer_event::Column::EventKey, Expr::value("changed"))
        .filter(sea_orm::ColumnTrait::eq(&customer_event::Column::EventKey, "ao1"))
        .exec(&app.db)
        .await;
    assert!(update.is_err(), "the database refuses an UPDATE");
    let delete = customer_event::Entity::delete_many().exec(&app.db).await;
    assert!(delete.is_err(), "the database refuses a DELETE");
    assert_eq!(customer_event::Entity::find().count(&app.db).await.unwrap(), 1);
}

/// The full demo carries the articles' rules and events that made each
/// enabled one fire on some customers, and only on those.
async fn the_demo_rules_have_fired_on_some_customers(app: TestApp) {
    tagbase::seed::seed_demo(&app.db, &app.app.state.authz, app.app.state.settings.utc_offset).await.unwrap();
    let rules = app
        .gql("admin", "query($u: ID!) { rules(orgUnitId: $u) { name status } }", json!({ "u": app.unit_id("hq") }))
        .await;
    assert_eq!(rules.ok()["rules"].as_array().unwrap().len(), 12);
    let by_rule: Vec<(String, i64)> = entity::customer_tag::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|a| a.source_ref.and_then(|r| tagbase::service::rules::explain::parse_source_ref(&r)))
        .map(|r| (r.rule_id.to_string(), r.event_id.unwrap_or_default()))
        .collect();
    let rule_ids: Vec<i64> = entity::rule::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.status == entity::enums::RuleStatus::Enabled)
        .map(|r| r.id)
        .collect();
    assert_eq!(rule_ids.len(), 11, "5 event rules, 流失客户 and the 5 spend tiers on their schedule");
    for id in rule_ids {
        let fired = by_rule.iter().filter(|(r, _)| *r == id.to_string()).count();
        // Each event pattern hits one in twenty customers (100 of 2,000),
        // orders one in ten; the scheduled rules ran once in the seed.
        assert!((1..=400).contains(&fired), "rule {id} fired on {fired} customers");
    }
    let runs = entity::rule_run::Entity::find().all(&app.db).await.unwrap();
    assert_eq!(runs.len(), 6);
    assert!(runs.iter().all(|r| r.status == entity::enums::RuleRunStatus::Succeeded && r.customers_changed > 0));
    // Seeding again records nothing new.
    let before = customer_event::Entity::find().count(&app.db).await.unwrap();
    tagbase::seed::seed_demo(&app.db, &app.app.state.authz, app.app.state.settings.utc_offset).await.unwrap();
    assert_eq!(customer_event::Entity::find().count(&app.db).await.unwrap(), before);
    // Nor does it put a seeded stage or tier back beside the one a rule moved to.
    use sea_orm::{ColumnTrait, QueryFilter};
    for group in ["客户阶段", "消费等级"] {
        let group = entity::tag_group::Entity::find()
            .filter(entity::tag_group::Column::Name.eq(group))
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        let members: Vec<i64> = entity::tag::Entity::find()
            .filter(entity::tag::Column::GroupId.eq(group.id))
            .all(&app.db)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        let mut per_customer = std::collections::HashMap::<i64, usize>::new();
        for a in entity::customer_tag::Entity::find()
            .filter(entity::customer_tag::Column::TagId.is_in(members))
            .all(&app.db)
            .await
            .unwrap()
        {
            *per_customer.entry(a.customer_id).or_default() += 1;
        }
        assert!(per_customer.values().all(|n| *n == 1), "{}: a customer holds two tags", group.name);
    }
}

/// The statements one `recordEvents` call runs for `n` customers, each
/// in one of the given stores, each sent a message the rule answers.
async fn statements_for_batch(app: &TestApp, n: usize, stores: &[&str], round: &str) -> usize {
    let mut customers = Vec::new();
    for i in 0..n {
        customers.push(app.fresh_customer(stores[i % stores.len()], "admin").await);
    }
    let events: Vec<Value> =
        customers.iter().enumerate().map(|(i, c)| message(c, &format!("{round}-{i}"), "想询价")).collect();
    // Counted between quiet moments: a call's tag changes reach this
    // instance's segment index by a catch-up that may still be running
    // when the call answers, and its statements are not the batch's.
    let before = settled_statements(app).await;
    let res = app.gql("admin", RECORD, json!({ "e": events })).await;
    let spent = settled_statements(app).await - before;
    assert_eq!(res.ok()["recordEvents"]["tagChanges"], n);
    spent
}

/// The statement count once nothing has run for 100 ms.
async fn settled_statements(app: &TestApp) -> usize {
    let mut last = app.statements();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = app.statements();
        if now == last {
            return now;
        }
        last = now;
    }
}

async fn a_batch_costs_the_same_statements_whatever_its_customers_and_units(app: TestApp) {
    inquiry_rule(&app).await;
    // The caller's first request builds its cached sign-in, and the rule
    // sets of the stores are compiled once per rule revision: count from
    // the next.
    statements_for_batch(&app, 3, &["sz01", "gz01", "bj01"], "warm").await;
    let small = statements_for_batch(&app, 2, &["sz01"], "small").await;
    let large = statements_for_batch(&app, 24, &["sz01", "gz01", "bj01"], "large").await;
    // The segment index's catch-up after the commit is shared between
    // concurrent callers and takes 0–2 statements more or less from one
    // call to the next (seen: 23 and 25 for the same batch); a statement
    // per customer or per unit would add at least 22 here.
    assert!(
        large <= small + 2 && small <= large + 2,
        "statements for 2 customers in one store ({small}), then 24 in three ({large})"
    );
}

/// Concurrent batches that share customers: each customer's rules still
/// run one batch after the other. Six batches, each with one message for
/// each of five shared customers and one of its own, sent at once; a rule
/// fires on the third message in a week. Every event is recorded once,
/// and each shared customer gets the tag exactly once (had two batches
/// judged a customer side by side, neither seeing the other's message,
/// the counts would have come out wrong or the tag been put on twice).
async fn concurrent_batches_sharing_customers_judge_each_customer_in_turn(mut app: TestApp) {
    let login = app.connector().await;
    let tag = app.tag_id("活动", "购车意向").await;
    app.create_rule(
        json!({ "orgUnitId": app.unit_id("hq"), "name": "三条消息", "condition": "count(message, 7d) >= 3",
        "actions": [{ "op": "ADD", "tagId": tag }], "enabled": true, "priority": 0 }),
    )
    .await;
    let shared = app.fresh_customers(5).await;
    let own = app.fresh_customers(6).await;
    // One time for all: whichever batch commits first, none is late.
    let at = Utc::now() - Duration::minutes(1);
    let batch = |b: usize| -> Vec<Value> {
        let mut events: Vec<Value> = shared
            .iter()
            .enumerate()
            .map(|(i, c)| crate::helpers::message_at(c, &format!("c-{b}-{i}"), "你好", at))
            .collect();
        events.push(crate::helpers::message_at(&own[b], &format!("c-{b}-own"), "你好", at));
        events
    };
    let answers = futures_util::future::join_all((0..6).map(|b| app.record_events(login, batch(b)))).await;
    for answer in &answers {
        assert_eq!(answer["recorded"], 6, "{answer}");
    }
    let changes: u64 = answers.iter().map(|a| a["tagChanges"].as_u64().unwrap()).sum();
    assert_eq!(changes, 5, "one add per shared customer, none for the others: {answers:?}");
    for customer in &shared {
        assert_eq!(app.tag_names(customer).await, ["购车意向"], "{customer}");
        let adds = entity::tag_event::Entity::find()
            .filter(entity::tag_event::Column::CustomerId.eq(row_id(customer)))
            .filter(entity::tag_event::Column::TagId.eq(row_id(&tag)))
            .count(&app.db)
            .await
            .unwrap();
        assert_eq!(adds, 1, "{customer}");
        let events = customer_event::Entity::find()
            .filter(customer_event::Column::CustomerId.eq(row_id(customer)))
            .count(&app.db);
        assert_eq!(events.await.unwrap(), 6);
    }
    for customer in &own {
        assert!(app.tag_names(customer).await.is_empty());
    }
}

/// The event path compiles rule sets once per rule revision: every change
/// to a rule, a tag or the org tree is seen by the very next batch. A rule
/// fires, is edited, disabled, enabled again, and its tag is renamed.
async fn the_next_batch_sees_every_change_to_rules_and_tags(mut app: TestApp) {
    let login = app.connector().await;
    let id = inquiry_rule(&app).await;
    let names = |c: &str| {
        let app = &app;
        let c = c.to_owned();
        async move { app.tag_names(&c).await }
    };
    let customers = app.fresh_customers(5).await;
    let first = app.record_events(login, vec![message(&customers[0], "v-0", "想询价")]).await;
    assert_eq!(first["tagChanges"], 1);
    assert_eq!(names(&customers[0]).await, ["询价"]);
    let update = "mutation($i: UpdateRuleInput!) { updateRule(input: $i) { version } }";
    app.gql("admin", update, json!({ "i": { "id": id, "version": 1, "condition": "message contains \"报价\"" } }))
        .await
        .ok();
    app.record_events(login, vec![message(&customers[1], "v-1", "想询价")]).await;
    assert!(names(&customers[1]).await.is_empty(), "the old condition no longer fires");
    app.record_events(login, vec![message(&customers[2], "v-2", "要报价")]).await;
    assert_eq!(names(&customers[2]).await, ["询价"], "the new one does");
    app.gql("admin", "mutation($id: ID!) { disableRule(id: $id) { status } }", json!({ "id": id })).await.ok();
    app.record_events(login, vec![message(&customers[3], "v-3", "要报价")]).await;
    assert!(names(&customers[3]).await.is_empty(), "a disabled rule does not fire");
    app.gql("admin", "mutation($id: ID!) { enableRule(id: $id) { status } }", json!({ "id": id })).await.ok();
    let tag = app.tag_id("活动", "询价").await;
    let read = app.gql("admin", "query($t: ID!) { tag(id: $t) { version } }", json!({ "t": tag })).await;
    let version = read.ok()["tag"]["version"].clone();
    let rename = app
        .gql(
            "admin",
            "mutation($i: UpdateTagInput!) { updateTag(input: $i) { tag { name } } }",
            json!({ "i": { "id": tag, "expectedVersion": version, "name": "询价客户" } }),
        )
        .await;
    assert_eq!(rename.ok()["updateTag"]["tag"]["name"], "询价客户");
    app.record_events(login, vec![message(&customers[4], "v-4", "要报价")]).await;
    assert_eq!(names(&customers[4]).await, ["询价客户"], "enabled again, with its tag's new name");
}

on_both_databases!(
    the_next_batch_sees_every_change_to_rules_and_tags,
    concurrent_batches_sharing_customers_judge_each_customer_in_turn,
    a_batch_costs_the_same_statements_whatever_its_customers_and_units,
    recorded_events_cannot_be_changed_or_deleted,
    the_demo_rules_have_fired_on_some_customers,
    a_message_with_the_keyword_tags_the_customer_at_once_and_says_why,
    the_same_key_twice_has_no_second_effect_and_another_event_under_it_is_a_conflict,
    bad_events_are_refused_one_by_one_and_the_good_ones_kept,
    the_integration_role_records_events_and_does_nothing_else,
    customer_events_are_read_with_the_customers_visibility,
    an_orders_amount_is_guarded_as_the_customers_spend,
    bad_rules_are_refused_at_save_time_with_positions,
    rules_keep_their_versions_and_roll_back,
    a_rule_does_not_put_back_a_tag_a_person_removed,
    a_locked_group_defers_the_rules_change,
    customers_added_at_17_59_and_18_01_get_different_tags,
);

on_both_databases_with!(an_oversized_batch_is_refused_whole => Limits { max_events_per_batch: 2, ..Limits::default() });
