//! Dry runs (试运行): a rule replayed over the recorded events of a window
//! predicts exactly what enabling it then does, writes nothing, counts
//! only the customers the caller reads, and refuses bad questions with a
//! code.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::helpers::{TestApp, message_at as message, row_id};
use crate::on_both_databases;
use crate::rules::tags_of;

const DRY_RUN: &str = "query($i: DryRunRuleInput!) { dryRunRule(input: $i) {
    ruleId ruleName ruleVersion eventsReplayed customersReplayed customersMatched wouldAdd wouldRemove heldBack
    sampleTruncated sample { customerId customer { name } changes { op tag { name } eventKind eventId text } } } }";

/// 价格 asked twice within three days: the 询价 tag.
const CONDITION: &str = r#"message contains "价格" AND count(message, 3d) >= 2"#;

async fn price_rule(app: &TestApp, enabled: bool) -> String {
    let inquiry = app.tag_id("活动", "询价").await;
    app.create_rule(json!({ "orgUnitId": app.unit_id("hq"), "name": "价格咨询", "condition": CONDITION,
        "actions": [{ "op": "ADD", "tagId": inquiry }], "enabled": enabled }))
        .await
}

/// Each customer's messages, as (text, how long ago).
fn histories(now: DateTime<Utc>) -> Vec<Vec<(&'static str, DateTime<Utc>)>> {
    vec![
        // Asks the price a day after a hello: tagged.
        vec![("你好", now - Duration::days(2)), ("价格多少", now - Duration::days(1))],
        // Asks once: not tagged.
        vec![("价格", now - Duration::days(1))],
        // Asked twice nine days ago, inside the window: tagged.
        vec![("价格", now - Duration::days(10)), ("价格？", now - Duration::days(9))],
        // The newest message is a hello: not tagged.
        vec![("价格", now - Duration::days(5)), ("你好", now - Duration::hours(1))],
        // Two messages just under three days apart: tagged.
        vec![("价格", now - Duration::days(3) + Duration::minutes(1)), ("价格", now - Duration::hours(2))],
    ]
}

async fn record_histories(app: &TestApp, customers: &[String], prefix: &str, now: DateTime<Utc>) {
    let mut events = Vec::new();
    for (i, (customer, history)) in customers.iter().zip(histories(now)).enumerate() {
        for (j, (text, at)) in history.into_iter().enumerate() {
            events.push(message(customer, &format!("{prefix}-{i}-{j}"), text, at));
        }
    }
    app.record_events("admin", events).await;
}

async fn a_dry_run_predicts_exactly_what_enabling_the_rule_then_does(app: TestApp) {
    let rule = price_rule(&app, false).await;
    let now = Utc::now();
    let before = app.fresh_customers(5).await;
    record_histories(&app, &before, "a", now).await;
    let untouched = app.snapshot().await;

    let res = app.gql("sz01.manager", DRY_RUN, json!({ "i": { "ruleId": rule } })).await;
    let run = &res.ok()["dryRunRule"];
    assert!(app.snapshot().await == untouched, "a dry run writes nothing");
    assert_eq!(run["ruleName"], "价格咨询");
    assert_eq!(run["ruleVersion"], 1);
    assert_eq!(run["eventsReplayed"], 9);
    assert_eq!(run["customersReplayed"], 5);
    assert_eq!(run["wouldAdd"], 3);
    assert_eq!(run["wouldRemove"], 0);
    assert_eq!(run["sampleTruncated"], false);
    let predicted: BTreeSet<usize> = run["sample"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| before.iter().position(|c| json!(c) == s["customerId"]).unwrap())
        .collect();
    assert_eq!(predicted, BTreeSet::from([0, 2, 4]));
    let first = &run["sample"][0];
    assert_eq!(first["customer"]["name"], "新客户");
    assert_eq!(first["changes"][0]["op"], "ADD");
    assert_eq!(first["changes"][0]["tag"]["name"], "询价");
    let text = first["changes"][0]["text"].as_str().unwrap();
    let event = row_id(first["changes"][0]["eventId"].as_str().unwrap());
    assert!(text.starts_with("规则 价格咨询 v1: message at "), "{text}");
    assert!(text.ends_with(&format!("(+08:00), event #{event}")), "{text}");

    // Enabled, the rule does exactly that to customers with the same events.
    app.gql("admin", "mutation($id: ID!) { enableRule(id: $id) { status } }", json!({ "id": rule })).await.ok();
    let after = app.fresh_customers(5).await;
    record_histories(&app, &after, "b", now).await;
    let mut tagged = BTreeSet::new();
    for (i, customer) in after.iter().enumerate() {
        let tags = tags_of(&app, customer).await;
        if !tags.is_empty() {
            assert_eq!(tags[0]["tag"]["name"], "询价");
            assert!(tags[0]["why"]["text"].as_str().unwrap().starts_with("规则 价格咨询 v2: message at "));
            tagged.insert(i);
        }
    }
    assert_eq!(tagged, predicted);
}

async fn a_window_and_a_version_choose_what_is_replayed(app: TestApp) {
    let rule = price_rule(&app, false).await;
    let now = Utc::now();
    let old = app.fresh_customer("sz01", "sz01.sales").await;
    app.record_events(
        "admin",
        vec![
            message(&old, "o1", "价格", now - Duration::days(40)),
            message(&old, "o2", "价格", now - Duration::days(39)),
        ],
    )
    .await;
    let last_30 = app.gql("admin", DRY_RUN, json!({ "i": { "ruleId": rule } })).await;
    assert_eq!(last_30.ok()["dryRunRule"]["wouldAdd"], 0, "the default window is the last 30 days");
    let from = (now - Duration::days(45)).to_rfc3339();
    let last_45 = app.gql("admin", DRY_RUN, json!({ "i": { "ruleId": rule, "from": from } })).await;
    assert_eq!(last_45.ok()["dryRunRule"]["wouldAdd"], 1);
    // Version 2 asks for three messages; version 1 can still be tried.
    app.gql(
        "admin",
        "mutation($i: UpdateRuleInput!) { updateRule(input: $i) { version } }",
        json!({ "i": { "id": rule, "condition": r#"message contains "价格" AND count(message, 3d) >= 3"# } }),
    )
    .await
    .ok();
    let v2 = app.gql("admin", DRY_RUN, json!({ "i": { "ruleId": rule, "from": from } })).await;
    assert_eq!(v2.ok()["dryRunRule"]["ruleVersion"], 2);
    assert_eq!(v2.ok()["dryRunRule"]["wouldAdd"], 0);
    let v1 = app.gql("admin", DRY_RUN, json!({ "i": { "ruleId": rule, "version": 1, "from": from } })).await;
    assert_eq!(v1.ok()["dryRunRule"]["ruleVersion"], 1);
    assert_eq!(v1.ok()["dryRunRule"]["wouldAdd"], 1);
}

async fn an_unsaved_rule_is_dry_run_and_counts_only_customers_the_caller_reads(app: TestApp) {
    let now = Utc::now();
    let here = app.fresh_customer("sz01", "sz01.sales").await;
    let there = app.fresh_customer("bj01", "bj01.sales").await;
    let events: Vec<Value> = [&here, &there]
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            [
                message(c, &format!("u{i}a"), "价格", now - Duration::hours(5)),
                message(c, &format!("u{i}b"), "价格", now - Duration::hours(4)),
            ]
        })
        .collect();
    app.record_events("admin", events).await;
    let inquiry = app.tag_id("活动", "询价").await;
    let unsaved = json!({ "rule": { "orgUnitId": app.unit_id("hq"), "name": "草稿", "condition": CONDITION,
        "actions": [{ "op": "ADD", "tagId": inquiry }] } });
    let hq = app.gql("admin", DRY_RUN, json!({ "i": unsaved })).await;
    assert_eq!(hq.ok()["dryRunRule"]["wouldAdd"], 2);
    assert_eq!(hq.ok()["dryRunRule"]["ruleId"], Value::Null);
    assert!(hq.ok()["dryRunRule"]["sample"][0]["changes"][0]["text"].as_str().unwrap().starts_with("规则 草稿 v0: "));
    // The same rule saved at HQ, tried by the Shenzhen store's manager.
    let rule = price_rule(&app, false).await;
    let store = app.gql("sz01.manager", DRY_RUN, json!({ "i": { "ruleId": rule } })).await;
    assert_eq!(store.ok()["dryRunRule"]["wouldAdd"], 1, "the Beijing customer is not counted for Shenzhen");
    assert_eq!(store.ok()["dryRunRule"]["sample"][0]["customerId"], json!(here));
    let res = app.gql("sz01.service", DRY_RUN, json!({ "i": { "ruleId": rule } })).await;
    assert_eq!(res.code(), "NOT_FOUND", "customer service reads no rules");
}

async fn bad_dry_runs_are_refused_with_a_code(app: TestApp) {
    let rule = price_rule(&app, false).await;
    let inquiry = app.tag_id("活动", "询价").await;
    let hq = app.unit_id("hq");
    let now = Utc::now();
    let cases = [
        (json!({}), "VALIDATION"),
        (json!({ "ruleId": rule, "rule": { "orgUnitId": hq, "condition": "x", "actions": [] } }), "VALIDATION"),
        (
            json!({ "rule": { "orgUnitId": hq, "condition": "message contains", "actions": [{ "op": "ADD", "tagId": inquiry }] } }),
            "VALIDATION",
        ),
        (
            json!({ "ruleId": rule, "from": now.to_rfc3339(), "to": (now - Duration::days(1)).to_rfc3339() }),
            "VALIDATION",
        ),
        (json!({ "ruleId": rule, "from": (now - Duration::days(91)).to_rfc3339() }), "LIMIT_EXCEEDED"),
        (json!({ "ruleId": rule, "sample": 1000 }), "VALIDATION"),
        (json!({ "ruleId": rule, "version": 7 }), "NOT_FOUND"),
    ];
    for (input, code) in cases {
        let res = app.gql("admin", DRY_RUN, json!({ "i": input })).await;
        assert_eq!(res.code(), code, "{input}");
    }
}

async fn every_automatic_change_says_why_on_the_assignment_and_on_the_tag_event(app: TestApp) {
    price_rule(&app, true).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let now = Utc::now();
    let res = app
        .record_events(
            "admin",
            vec![
                message(&customer, "w1", "价格", now - Duration::hours(2)),
                message(&customer, "w2", "价格呢", now - Duration::hours(1)),
            ],
        )
        .await;
    let trigger = row_id(res["results"][1]["eventId"].as_str().unwrap());
    let evening = app.tag_id("活动", "晚间咨询").await;
    app.gql(
        "sz01.sales",
        "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }",
        json!({ "c": [customer], "t": [evening] }),
    )
    .await
    .ok();
    let read = app
        .gql(
            "sz01.manager",
            "query($id: ID!) { customer(id: $id) { tags { tag { name } why { text } }
                tagEvents(first: 10) { edges { node { tag { name } source why { text ruleVersion event { id kind } } } } } } }",
            json!({ "id": customer }),
        )
        .await;
    let c = &read.ok()["customer"];
    let events = c["tagEvents"]["edges"].as_array().unwrap();
    let by_rule = events.iter().map(|e| &e["node"]).find(|n| n["source"] == "RULE").unwrap();
    let text = by_rule["why"]["text"].as_str().unwrap();
    assert!(text.starts_with("规则 价格咨询 v1: message at "), "{text}");
    assert!(text.ends_with(&format!("(+08:00), event #{trigger}")), "{text}");
    assert_eq!(by_rule["why"]["ruleVersion"], 1);
    assert_eq!(by_rule["why"]["event"]["kind"], "MESSAGE_RECEIVED");
    let tag = c["tags"].as_array().unwrap().iter().find(|t| t["tag"]["name"] == "询价").unwrap();
    assert_eq!(tag["why"]["text"], json!(text), "the assignment and its event say the same");
    let by_hand = events.iter().map(|e| &e["node"]).find(|n| n["source"] == "MANUAL").unwrap();
    assert_eq!(by_hand["why"], Value::Null, "no rule made it");
}

const PROPOSE: &str = "mutation($i: ProposeRuleInput!) { proposeRule(input: $i) { id kind status
    rule { name } ruleDryRun { ruleName wouldAdd sample { customerId changes { text } } } } }";

const APPROVE: &str = "mutation($id: ID!) { approveChangeRequest(id: $id) { changeRequest { status } } }";

const RULES_OF: &str = "query($u: ID!) { rules(orgUnitId: $u) { name status version } }";

async fn a_proposed_rule_shows_its_dry_run_and_approving_applies_it(app: TestApp) {
    let now = Utc::now();
    let asked = app.fresh_customer("sz01", "sz01.sales").await;
    app.record_events(
        "admin",
        vec![
            message(&asked, "p1", "价格", now - Duration::hours(3)),
            message(&asked, "p2", "价格呢", now - Duration::hours(2)),
        ],
    )
    .await;
    let inquiry = app.tag_id("活动", "询价").await;
    let rule = json!({ "orgUnitId": app.unit_id("sz01"), "name": "门店价格咨询", "condition": CONDITION,
        "actions": [{ "op": "ADD", "tagId": inquiry }], "enabled": true });
    let direct = app
        .gql("sz01.sales", "mutation($i: CreateRuleInput!) { createRule(input: $i) { id } }", json!({ "i": rule }))
        .await;
    assert_eq!(direct.code(), "FORBIDDEN", "sales may only propose rules");

    let res = app.gql("sz01.sales", PROPOSE, json!({ "i": { "create": rule, "reason": "询价客户跟进" } })).await;
    let request = &res.ok()["proposeRule"];
    assert_eq!(request["kind"], "rule.create");
    assert_eq!(request["status"], "PENDING");
    assert_eq!(request["rule"], Value::Null);
    let run = &request["ruleDryRun"];
    assert_eq!(run["ruleName"], "门店价格咨询");
    assert_eq!(run["wouldAdd"], 1);
    assert_eq!(run["sample"][0]["customerId"], json!(asked));
    assert!(run["sample"][0]["changes"][0]["text"].as_str().unwrap().starts_with("规则 门店价格咨询 v0: message at "));
    let rules = app.gql("sz01.manager", RULES_OF, json!({ "u": app.unit_id("sz01") })).await;
    assert_eq!(rules.ok()["rules"], json!([]), "nothing applied before approval");
    let seen = app
        .gql(
            "sz01.manager",
            "query($id: ID!) { changeRequest(id: $id) { ruleDryRun { wouldAdd sample { customer { name } } } } }",
            json!({ "id": request["id"] }),
        )
        .await;
    assert_eq!(seen.ok()["changeRequest"]["ruleDryRun"]["wouldAdd"], 1, "the approver sees the dry run");
    assert_eq!(seen.ok()["changeRequest"]["ruleDryRun"]["sample"][0]["customer"]["name"], "新客户");

    let approved = app.gql("sz01.manager", APPROVE, json!({ "id": request["id"] })).await;
    assert_eq!(approved.ok()["approveChangeRequest"]["changeRequest"]["status"], "APPROVED");
    let rules = app.gql("sz01.manager", RULES_OF, json!({ "u": app.unit_id("sz01") })).await;
    assert_eq!(rules.ok()["rules"], json!([{ "name": "门店价格咨询", "status": "ENABLED", "version": 1 }]));
    // The rule now fires as its dry run said it would.
    let next = app.fresh_customer("sz01", "sz01.sales").await;
    app.record_events(
        "admin",
        vec![
            message(&next, "q1", "价格", now - Duration::hours(3)),
            message(&next, "q2", "价格呢", now - Duration::hours(2)),
        ],
    )
    .await;
    let tags = tags_of(&app, &next).await;
    assert_eq!(tags[0]["tag"]["name"], "询价");
    assert!(tags[0]["why"]["text"].as_str().unwrap().starts_with("规则 门店价格咨询 v1: message at "));
}

async fn a_proposed_enable_goes_stale_when_the_rule_changes_first(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let created = app
        .gql(
            "sz01.manager",
            "mutation($i: CreateRuleInput!) { createRule(input: $i) { id version } }",
            json!({ "i": { "orgUnitId": app.unit_id("sz01"), "name": "门店价格咨询", "condition": CONDITION,
                "actions": [{ "op": "ADD", "tagId": inquiry }] } }),
        )
        .await;
    let rule = created.ok()["createRule"]["id"].as_str().unwrap().to_owned();
    let res = app.gql("sz01.sales", PROPOSE, json!({ "i": { "enable": rule, "version": 1 } })).await;
    let request = res.ok()["proposeRule"].clone();
    assert_eq!(request["kind"], "rule.enable");
    assert_eq!(request["rule"]["name"], "门店价格咨询");
    assert_eq!(request["ruleDryRun"]["wouldAdd"], 0);
    app.gql(
        "sz01.manager",
        "mutation($i: UpdateRuleInput!) { updateRule(input: $i) { version } }",
        json!({ "i": { "id": rule, "priority": 5 } }),
    )
    .await
    .ok();
    let before = app.snapshot().await;
    let approved = app.gql("sz01.manager", APPROVE, json!({ "id": request["id"] })).await;
    assert_eq!(approved.code(), "CONFLICT");
    let status = app.gql("sz01.manager", "query($id: ID!) { rule(id: $id) { status } }", json!({ "id": rule })).await;
    assert_eq!(status.ok()["rule"]["status"], "DISABLED");
    let request_now = app
        .gql("sz01.manager", "query($id: ID!) { changeRequest(id: $id) { status } }", json!({ "id": request["id"] }))
        .await;
    assert_eq!(request_now.ok()["changeRequest"]["status"], "STALE");
    assert!(app.snapshot().await != before, "the request moved to STALE");
}

async fn proposals_are_refused_as_the_direct_change_would_be(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let rule = |unit: &str, condition: &str| {
        json!({ "create": { "orgUnitId": app.unit_id(unit), "name": "草稿", "condition": condition,
            "actions": [{ "op": "ADD", "tagId": inquiry }] } })
    };
    let before = app.snapshot().await;
    let cases = [
        ("sz01.service", rule("sz01", CONDITION), "FORBIDDEN"),
        ("sz01.sales", rule("hq", CONDITION), "FORBIDDEN"),
        ("sz01.sales", rule("sz01", "message contains"), "VALIDATION"),
        ("sz01.sales", json!({}), "VALIDATION"),
    ];
    for (login, input, code) in cases {
        let res = app.gql(login, PROPOSE, json!({ "i": input })).await;
        assert_eq!(res.code(), code, "{login} {input}");
    }
    assert!(app.snapshot().await == before, "no request filed");
}

/// The per-customer cap counts every tag a customer holds, also those no
/// rule reads: a customer already at the cap is not predicted to get the
/// rule's tag, and enabling the rule then leaves it out too.
async fn a_dry_run_leaves_out_an_add_beyond_the_cap_counting_tags_no_rule_reads(app: TestApp) {
    let rule = price_rule(&app, false).await;
    let now = Utc::now();
    let customers = app.fresh_customers(5).await;
    // Customer 0 holds two tags the rule never reads: the cap (2).
    let (car, test_drive) = (app.tag_id("资产状况", "有车一族").await, app.tag_id("活动", "试驾预约").await);
    app.tag_by_hand("admin", "tagCustomers", &[customers[0].as_str()], &[car.as_str(), test_drive.as_str()]).await;
    record_histories(&app, &customers, "cap", now).await;
    let res = app.gql("sz01.manager", DRY_RUN, json!({ "i": { "ruleId": rule } })).await;
    let run = &res.ok()["dryRunRule"];
    assert_eq!(run["wouldAdd"], 2, "{run}");
    let predicted: BTreeSet<usize> = run["sample"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| customers.iter().position(|c| json!(c) == s["customerId"]).unwrap())
        .collect();
    assert_eq!(predicted, BTreeSet::from([2, 4]));
}

/// A rule does not put back a tag a person took off: the dry run holds
/// back the add where the newest change of the tag was a person's (by hand
/// or in bulk) removal, and not where a rule's change came after it, as
/// the event path then does.
async fn a_dry_run_holds_back_only_where_a_persons_removal_is_the_newest_change(app: TestApp) {
    use entity::enums::{TagOp, TagSource};
    use sea_orm::{ActiveValue::Set, EntityTrait};

    let rule = price_rule(&app, false).await;
    let inquiry = row_id(&app.tag_id("活动", "询价").await);
    let now = Utc::now();
    let customers = app.fresh_customers(5).await;
    record_histories(&app, &customers, "rm", now).await;
    // Customers 0, 2 and 4 are the ones the rule tags (see `histories`).
    let logs: [(usize, &[(TagOp, TagSource)]); 3] = [
        (0, &[(TagOp::Add, TagSource::Manual), (TagOp::Remove, TagSource::Manual)]),
        (
            2,
            &[
                (TagOp::Add, TagSource::Manual),
                (TagOp::Remove, TagSource::Manual),
                (TagOp::Add, TagSource::Rule),
                (TagOp::Remove, TagSource::Rule),
            ],
        ),
        (4, &[(TagOp::Add, TagSource::Bulk), (TagOp::Remove, TagSource::Bulk)]),
    ];
    for (i, log) in logs {
        for (op, source) in log {
            entity::tag_event::Entity::insert(entity::tag_event::ActiveModel {
                customer_id: Set(row_id(&customers[i])),
                tag_id: Set(inquiry),
                op: Set(*op),
                source: Set(*source),
                occurred_at: Set(now - Duration::days(20)),
                ..Default::default()
            })
            .exec(&app.db)
            .await
            .unwrap();
        }
    }
    let res = app.gql("sz01.manager", DRY_RUN, json!({ "i": { "ruleId": rule } })).await;
    let run = &res.ok()["dryRunRule"];
    assert_eq!((run["wouldAdd"].clone(), run["heldBack"].clone()), (json!(1), json!(2)), "{run}");
    assert_eq!(run["sample"][0]["customerId"], json!(customers[2]), "{run}");

    // Enabled, the event path holds back the same adds.
    app.gql("admin", "mutation($id: ID!) { enableRule(id: $id) { status } }", json!({ "id": rule })).await.ok();
    let mut events = Vec::new();
    for i in [0, 2, 4] {
        for j in 0..2 {
            events.push(message(&customers[i], &format!("rm-again-{i}-{j}"), "价格", now - Duration::minutes(j)));
        }
    }
    app.record_events("admin", events).await;
    let tagged: Vec<usize> = {
        let mut out = Vec::new();
        for i in [0, 2, 4] {
            if !tags_of(&app, &customers[i]).await.is_empty() {
                out.push(i);
            }
        }
        out
    };
    assert_eq!(tagged, vec![2]);
}

on_both_databases!(
    a_dry_run_predicts_exactly_what_enabling_the_rule_then_does,
    a_dry_run_holds_back_only_where_a_persons_removal_is_the_newest_change,
    a_window_and_a_version_choose_what_is_replayed,
    an_unsaved_rule_is_dry_run_and_counts_only_customers_the_caller_reads,
    bad_dry_runs_are_refused_with_a_code,
    every_automatic_change_says_why_on_the_assignment_and_on_the_tag_event,
    a_proposed_rule_shows_its_dry_run_and_approving_applies_it,
    a_proposed_enable_goes_stale_when_the_rule_changes_first,
    proposals_are_refused_as_the_direct_change_would_be,
);

crate::on_both_databases_with!(
    a_dry_run_leaves_out_an_add_beyond_the_cap_counting_tags_no_rule_reads =>
        tagbase::config::Limits { max_tags_per_customer: 2, ..tagbase::config::Limits::default() }
);
