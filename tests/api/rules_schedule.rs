//! Scheduled rules (定时规则): a slot runs once however many instances
//! reach for it, missed slots are caught up with the latest one, runs are
//! visible with their counts and errors, value tiers come out as a
//! brute-force reading of the definitions says; expired assignments are
//! taken off unless a lock holds them; a rule action a lock deferred is
//! applied when the lock ends.

use chrono::{DateTime, Duration, Utc};
use entity::{
    customer, customer_tag,
    enums::{RuleRunStatus, TagSource},
    modification_lock, rule_deferred_action, rule_run, tag, tag_event,
};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, sea_query::Expr};
use serde_json::{Value, json};
use tagbase::service::rules::schedule::{Schedule, Scheduler, schedule_key};
use tagbase::startup::Application;

use crate::helpers::{TestApp, message_at, order_paid as order, row_id};
use crate::on_both_databases;

const CHURN: &str = "count(order_paid, 3650d) >= 1 AND no order_paid for 180d";

const TAGS: &str = "query($id: ID!) { customer(id: $id) { tags { tag { name } source sourceRef
    why { text ruleVersion run { number scheduleKey status } } } } }";

/// This instance's scheduler, as the background task builds it.
pub(crate) fn scheduler(app: &TestApp, instance: &Application, name: &str) -> Scheduler {
    Scheduler {
        db: app.db.clone(),
        index: Some(instance.state.index.clone()),
        limits: instance.state.settings.limits.clone(),
        offset: instance.state.settings.utc_offset,
        instance: name.to_owned(),
    }
}

async fn scheduled_rule(app: &TestApp, name: &str, condition: &str, actions: Value, schedule: &str) -> String {
    app.create_rule(json!({ "orgUnitId": app.unit_id("hq"), "name": name, "condition": condition,
        "actions": actions, "enabled": true, "schedule": schedule }))
        .await
}

async fn churn_rule(app: &TestApp) -> String {
    let churned = app.tag_id("客户阶段", "流失客户").await;
    scheduled_rule(app, "流失客户", CHURN, json!([{ "op": "MOVE", "tagId": churned }]), "DAILY 03:00").await
}

async fn tags_of(app: &TestApp, customer: &str) -> Vec<Value> {
    app.gql("admin", TAGS, json!({ "id": customer })).await.ok()["customer"]["tags"].as_array().unwrap().clone()
}

fn names(tags: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = tags.iter().map(|t| t["tag"]["name"].as_str().unwrap().to_owned()).collect();
    out.sort();
    out
}

async fn runs(app: &TestApp) -> Vec<rule_run::Model> {
    rule_run::Entity::find().all(&app.db).await.unwrap()
}

async fn a_slot_runs_exactly_once_with_two_instances(mut app: TestApp) {
    let login = app.connector().await;
    let rule = churn_rule(&app).await;
    let gone = app.fresh_customer("sz01", "sz01.sales").await;
    let recent = app.fresh_customer("sz01", "sz01.sales").await;
    let never = app.fresh_customer("sz01", "sz01.sales").await;
    let now = Utc::now();
    app.record_events(
        login,
        vec![order(&gone, "o-1", now - Duration::days(200), 100), order(&recent, "o-2", now - Duration::days(10), 100)],
    )
    .await;

    let second = app.second_instance().await;
    let (a, b) = (scheduler(&app, &app.app, "instance-a"), scheduler(&app, &second, "instance-b"));
    let (ran_a, ran_b) = tokio::join!(a.run_due(now), b.run_due(now));
    let ran: Vec<rule_run::Model> = ran_a.unwrap().into_iter().chain(ran_b.unwrap()).collect();
    assert_eq!(ran.len(), 1, "one instance runs the slot: {ran:?}");
    let stored = runs(&app).await;
    assert_eq!(stored.len(), 1);
    let run = &stored[0];
    assert_eq!(run.rule_id, row_id(&rule));
    assert_eq!(run.status, RuleRunStatus::Succeeded);
    assert_eq!(run.customers_changed, 1);
    assert_eq!(run.tag_changes, 1);
    assert!(run.error.is_none());
    let offset = app.app.state.settings.utc_offset;
    let slot = Schedule::parse("schedule", "DAILY 03:00").unwrap().latest_slot(offset, now);
    assert_eq!(run.schedule_key, schedule_key(slot, offset));

    // Both instances again, and again: the slot has run.
    for _ in 0..2 {
        let (x, y) = tokio::join!(a.run_due(now), b.run_due(now));
        assert!(x.unwrap().is_empty() && y.unwrap().is_empty());
    }
    assert_eq!(runs(&app).await.len(), 1);

    let tags = tags_of(&app, &gone).await;
    assert_eq!(names(&tags), vec!["流失客户"]);
    assert_eq!(tags[0]["source"], "RULE");
    let (date, time) = run.schedule_key.split_once('T').unwrap();
    assert_eq!(
        tags[0]["why"]["text"],
        format!("规则 流失客户 v1: scheduled run #{} at {date} {} (+08:00)", run.id, &time[..5])
    );
    assert_eq!(tags[0]["why"]["run"]["number"], run.id);
    assert!(tags_of(&app, &recent).await.is_empty());
    assert!(tags_of(&app, &never).await.is_empty());
    // One tag event, by no person.
    let events =
        tag_event::Entity::find().filter(tag_event::Column::CustomerId.eq(row_id(&gone))).all(&app.db).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].source, TagSource::Rule);
    assert!(events[0].actor_staff_id.is_none());
}

async fn missed_slots_are_caught_up_with_the_latest_one_judged_as_of_now(mut app: TestApp) {
    let login = app.connector().await;
    churn_rule(&app).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let now = Utc::now();
    // 182 days ago: not yet 180 days three days ago, churned today.
    app.record_events(login, vec![order(&customer, "o-1", now - Duration::days(182), 100)]).await;
    let scheduler = scheduler(&app, &app.app, "instance-a");

    let before = scheduler.run_due(now - Duration::days(3)).await.unwrap();
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].customers_changed, 0);
    assert!(tags_of(&app, &customer).await.is_empty());

    // The server was down for three days: one run, for the latest slot.
    let after = scheduler.run_due(now).await.unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].customers_changed, 1);
    assert_eq!(after[0].evaluated_at.timestamp(), now.timestamp());
    let offset = app.app.state.settings.utc_offset;
    let daily = Schedule::parse("schedule", "DAILY 03:00").unwrap();
    let keys: Vec<String> = runs(&app).await.into_iter().map(|r| r.schedule_key).collect();
    assert_eq!(
        keys,
        vec![
            schedule_key(daily.latest_slot(offset, now - Duration::days(3)), offset),
            schedule_key(daily.latest_slot(offset, now), offset)
        ]
    );
    assert_eq!(app.tag_names(&customer).await, vec!["流失客户"]);
    assert!(scheduler.run_due(now).await.unwrap().is_empty());
}

/// The five tiers of 消费等级, recomputed daily from recency (an order
/// in the last 90 days), frequency (orders) and money (spend).
fn tier_rules() -> Vec<(&'static str, &'static str)> {
    vec![
        ("S级", "count(order_paid, 90d) >= 1 AND spend >= 500000 AND orders >= 5"),
        ("A级", "count(order_paid, 90d) >= 1 AND spend >= 100000 AND NOT (spend >= 500000 AND orders >= 5)"),
        ("B级", "count(order_paid, 90d) >= 1 AND spend < 100000"),
        ("C级", "count(order_paid, 365d) >= 1 AND NOT count(order_paid, 90d) >= 1"),
        ("D级", "count(order_paid, 3650d) >= 1 AND no order_paid for 365d"),
    ]
}

/// The tier the definitions give, worked out by hand.
fn expected_tier(spend: i64, orders: i32, order_days_ago: &[i64]) -> Option<&'static str> {
    let newest = order_days_ago.iter().min()?;
    Some(if *newest < 90 {
        if spend >= 500_000 && orders >= 5 {
            "S级"
        } else if spend >= 100_000 {
            "A级"
        } else {
            "B级"
        }
    } else if *newest < 365 {
        "C级"
    } else {
        "D级"
    })
}

async fn value_tiers_are_recomputed_as_a_brute_force_reading_says(mut app: TestApp) {
    let login = app.connector().await;
    for (tier, condition) in tier_rules() {
        let tag = app.tag_id("消费等级", tier).await;
        scheduled_rule(
            &app,
            &format!("消费等级 {tier}"),
            condition,
            json!([{ "op": "MOVE", "tagId": tag }]),
            "DAILY 02:30",
        )
        .await;
    }
    let now = Utc::now();
    let spends = [0, 50_000, 100_000, 499_999, 500_000, 2_000_000];
    let order_counts = [0, 4, 5, 12];
    let histories: [&[i64]; 6] = [&[], &[10], &[89, 400], &[91], &[364, 30], &[366, 800]];
    let mut cases = Vec::new();
    let mut events = Vec::new();
    for (i, history) in histories.iter().enumerate() {
        for (j, spend) in spends.iter().enumerate() {
            let orders = order_counts[(i + j) % order_counts.len()];
            let customer = app.fresh_customer("sz01", "sz01.sales").await;
            customer::Entity::update_many()
                .col_expr(customer::Column::TotalSpendCents, Expr::value(*spend))
                .col_expr(customer::Column::OrderCount, Expr::value(orders))
                .filter(customer::Column::Id.eq(row_id(&customer)))
                .exec(&app.db)
                .await
                .unwrap();
            for (k, days) in history.iter().enumerate() {
                events.push(order(&customer, &format!("t-{i}-{j}-{k}"), now - Duration::days(*days), 100));
            }
            cases.push((customer, *spend, orders, *history));
        }
    }
    app.record_events(login, events).await;
    // A customer in a tier the definitions no longer give is moved.
    let (stale, ..) = &cases[7];
    app.gql(
        "admin",
        "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }",
        json!({ "c": [stale], "t": [app.tag_id("消费等级", "D级").await] }),
    )
    .await
    .ok();

    let ran = scheduler(&app, &app.app, "instance-a").run_due(now).await.unwrap();
    assert_eq!(ran.len(), 5);
    assert!(ran.iter().all(|r| r.status == RuleRunStatus::Succeeded), "{ran:?}");
    for (customer, spend, orders, history) in &cases {
        let tiers: Vec<String> = names(&tags_of(&app, customer).await);
        let want: Vec<String> = expected_tier(*spend, *orders, history).map(str::to_owned).into_iter().collect();
        assert_eq!(tiers, want, "spend {spend}, orders {orders}, orders {history:?} days ago");
    }
}

async fn runs_are_visible_with_their_counts_and_errors(mut app: TestApp) {
    let login = app.connector().await;
    let rule = churn_rule(&app).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let now = Utc::now();
    app.record_events(login, vec![order(&customer, "o-1", now - Duration::days(300), 100)]).await;
    scheduler(&app, &app.app, "instance-a").run_due(now).await.unwrap();

    const RUNS: &str = "query($r: ID!) { ruleRuns(ruleId: $r, first: 10) { edges { node { number ruleVersion
        scheduleKey status customersScanned customersChanged tagChanges deferred heldBack attempts error why
        finishedAt rule { name schedule } } } } }";
    let res = app.gql("admin", RUNS, json!({ "r": rule })).await;
    let edges = res.ok()["ruleRuns"]["edges"].as_array().unwrap().clone();
    assert_eq!(edges.len(), 1);
    let run = &edges[0]["node"];
    assert_eq!(run["status"], "SUCCEEDED");
    assert_eq!(run["ruleVersion"], 1);
    assert_eq!(run["customersChanged"], 1);
    assert_eq!(run["tagChanges"], 1);
    assert_eq!(run["error"], Value::Null);
    assert!(run["finishedAt"].is_string());
    let scanned = customer::Entity::find().count(&app.db).await.unwrap();
    assert_eq!(run["customersScanned"], scanned, "every customer below HQ is judged");
    assert_eq!(run["rule"]["schedule"], "DAILY 03:00");
    assert!(run["why"].as_str().unwrap().starts_with("规则 流失客户 v1: scheduled run #"));
    let on_rule = app
        .gql(
            "admin",
            "query($r: ID!) { rule(id: $r) { runs(first: 5) { edges { node { number } } } } }",
            json!({ "r": rule }),
        )
        .await;
    assert_eq!(on_rule.ok()["rule"]["runs"]["edges"][0]["node"]["number"], run["number"]);
    // Without `rule:read`: as a missing rule.
    let hidden = app.gql(login, RUNS, json!({ "r": rule })).await;
    assert_eq!(hidden.code(), "NOT_FOUND");

    // A rule whose tag was archived since it was saved fails its run, with the error.
    tag::Entity::update_many()
        .col_expr(tag::Column::Status, Expr::value("ARCHIVED"))
        .filter(tag::Column::Id.eq(row_id(&app.tag_id("客户阶段", "流失客户").await)))
        .exec(&app.db)
        .await
        .unwrap();
    let failed = scheduler(&app, &app.app, "instance-a").run_due(now + Duration::days(1)).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].status, RuleRunStatus::Failed);
    let res = app.gql("admin", RUNS, json!({ "r": rule })).await;
    let newest = &res.ok()["ruleRuns"]["edges"][0]["node"];
    assert_eq!(newest["status"], "FAILED");
    assert!(newest["error"].as_str().unwrap().starts_with("VALIDATION: "), "{newest}");
    // Each run's end is in the audit log, by no person.
    let audited = entity::audit_log::Entity::find()
        .filter(entity::audit_log::Column::Action.eq("rule.run"))
        .all(&app.db)
        .await
        .unwrap();
    assert_eq!(audited.len(), 2);

    // The failed run is a FAILED_RUN alert at the rule's unit, until a
    // later run succeeds.
    const REFRESH: &str = "mutation($u: ID!) { refreshAlerts(orgUnitId: $u) { raised resolved } }";
    const ALERTS: &str = "query($s: AlertStatus) { alerts(kind: FAILED_RUN, status: $s, first: 10) {
        edges { node { subject status orgUnit { code } } } } }";
    app.gql("admin", REFRESH, json!({ "u": app.unit_id("hq") })).await.ok();
    let open = app.gql("admin", ALERTS, json!({ "s": "OPEN" })).await;
    let open = open.ok()["alerts"]["edges"].as_array().unwrap().clone();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["node"]["subject"], format!("rule:{}", row_id(&rule)));
    assert_eq!(open[0]["node"]["orgUnit"]["code"], "hq");
    tag::Entity::update_many()
        .col_expr(tag::Column::Status, Expr::value("ACTIVE"))
        .filter(tag::Column::Id.eq(row_id(&app.tag_id("客户阶段", "流失客户").await)))
        .exec(&app.db)
        .await
        .unwrap();
    let next = scheduler(&app, &app.app, "instance-a").run_due(now + Duration::days(2)).await.unwrap();
    assert_eq!(next[0].status, RuleRunStatus::Succeeded);
    app.gql("admin", REFRESH, json!({ "u": app.unit_id("hq") })).await.ok();
    let still_open = app.gql("admin", ALERTS, json!({ "s": "OPEN" })).await;
    assert_eq!(still_open.ok()["alerts"]["edges"], json!([]));
    let resolved = app.gql("admin", ALERTS, json!({ "s": "RESOLVED" })).await;
    assert_eq!(resolved.ok()["alerts"]["edges"][0]["node"]["subject"], format!("rule:{}", row_id(&rule)));
    assert!(audited.iter().all(|a| a.actor_staff_id.is_none()));
}

async fn schedules_are_checked_at_save_time(app: TestApp) {
    let churned = app.tag_id("客户阶段", "流失客户").await;
    let create = |schedule: &str| {
        json!({ "i": { "orgUnitId": app.unit_id("hq"), "name": "流失", "condition": CHURN,
            "actions": [{ "op": "MOVE", "tagId": churned }], "schedule": schedule } })
    };
    const CREATE: &str = "mutation($i: CreateRuleInput!) { createRule(input: $i) { id schedule } }";
    for bad in ["WEEKLY 03:00", "DAILY 25:00", "03:00"] {
        let res = app.gql("admin", CREATE, create(bad)).await;
        assert_eq!(res.code(), "VALIDATION", "{bad}");
        assert!(res.message().contains("schedule"), "{}", res.message());
    }
    assert_eq!(entity::rule::Entity::find().count(&app.db).await.unwrap(), 0);
    let res = app.gql("admin", CREATE, create("daily 3:00")).await;
    assert_eq!(res.ok()["createRule"]["schedule"], "DAILY 03:00");
    let id = res.ok()["createRule"]["id"].as_str().unwrap().to_owned();

    // Taking the schedule away makes it an event rule again, with a version.
    let res = app
        .gql(
            "admin",
            "mutation($r: ID!) { updateRule(input: { id: $r, schedule: null }) { version schedule } }",
            json!({ "r": id }),
        )
        .await;
    assert_eq!(res.ok()["updateRule"]["schedule"], Value::Null);
    assert_eq!(res.ok()["updateRule"]["version"], 2);
    let history =
        app.gql("admin", "query($r: ID!) { ruleHistory(ruleId: $r) { version schedule } }", json!({ "r": id })).await;
    assert_eq!(history.ok()["ruleHistory"][1]["schedule"], "DAILY 03:00");
}

async fn expired_assignments_are_taken_off_unless_a_lock_holds_them(app: TestApp) {
    let a = app.fresh_customer("sz01", "sz01.sales").await;
    let b = app.fresh_customer("sz01", "sz01.sales").await;
    let inquiry = app.tag_id("活动", "询价").await;
    let soon = Utc::now() + Duration::hours(1);
    app.gql(
        "admin",
        "mutation($c: [ID!]!, $t: [ID!]!, $e: DateTime) { tagCustomers(input: { customerIds: $c, tagIds: $t, expiresAt: $e }) { added } }",
        json!({ "c": [a, b], "t": [inquiry], "e": soon.to_rfc3339() }),
    )
    .await
    .ok();
    let lock = app
        .gql(
            "hq.marketing",
            "mutation($g: ID!, $c: [ID!]) { lockTagGroup(input: { groupId: $g, customerIds: $c, reason: \"活动\" }) { lock { id } } }",
            json!({ "g": app.group_id("活动").await, "c": [b] }),
        )
        .await;
    let lock = lock.ok()["lockTagGroup"]["lock"]["id"].as_str().unwrap().to_owned();
    let scheduler = scheduler(&app, &app.app, "instance-a");

    // Not yet expired: nothing happens.
    assert_eq!(scheduler.round(Utc::now()).await.unwrap().expired, 0);
    let later = soon + Duration::minutes(1);
    assert_eq!(scheduler.round(later).await.unwrap().expired, 1);
    assert!(tags_of(&app, &a).await.is_empty());
    assert_eq!(app.tag_names(&b).await, vec!["询价"], "the lock holds it");
    let expiry =
        tag_event::Entity::find().filter(tag_event::Column::Source.eq(TagSource::Expiry)).all(&app.db).await.unwrap();
    assert_eq!(expiry.len(), 1);
    assert_eq!(expiry[0].customer_id, row_id(&a));
    assert!(expiry[0].actor_staff_id.is_none());

    app.gql("hq.marketing", "mutation($l: ID!) { unlockTagGroup(lockId: $l) { lock { id } } }", json!({ "l": lock }))
        .await
        .ok();
    assert_eq!(scheduler.round(later).await.unwrap().expired, 1);
    assert!(tags_of(&app, &b).await.is_empty());
    assert_eq!(
        customer_tag::Entity::find()
            .filter(customer_tag::Column::ExpiresAt.is_not_null())
            .count(&app.db)
            .await
            .unwrap(),
        0
    );
}

async fn a_deferred_action_is_applied_when_its_lock_ends(mut app: TestApp) {
    let login = app.connector().await;
    let inquiry = app.tag_id("活动", "询价").await;
    app.create_rule(
        json!({ "orgUnitId": app.unit_id("hq"), "name": "询价关键词", "condition": "message contains \"询价\"",
        "actions": [{ "op": "ADD", "tagId": inquiry }], "enabled": true }),
    )
    .await;
    let released = app.fresh_customer("sz01", "sz01.sales").await;
    let expired = app.fresh_customer("sz01", "sz01.sales").await;
    const LOCK: &str = "mutation($g: ID!, $c: [ID!]) { lockTagGroup(input: { groupId: $g, customerIds: $c, reason: \"活动\" }) { lock { id } } }";
    let group = app.group_id("活动").await;
    let lock_a = app.gql("hq.marketing", LOCK, json!({ "g": group, "c": [released] })).await;
    let lock_a = lock_a.ok()["lockTagGroup"]["lock"]["id"].as_str().unwrap().to_owned();
    app.gql("hq.marketing", LOCK, json!({ "g": group, "c": [expired] })).await.ok();
    let message = |c: &str, key: &str| message_at(c, key, "想询价", Utc::now());
    let res = app.record_events(login, vec![message(&released, "m-1"), message(&expired, "m-2")]).await;
    assert_eq!(res["deferred"], 2);
    assert!(tags_of(&app, &released).await.is_empty());

    // Released by hand: applied at once, explained by its event.
    app.gql("hq.marketing", "mutation($l: ID!) { unlockTagGroup(lockId: $l) { lock { id } } }", json!({ "l": lock_a }))
        .await
        .ok();
    let tags = tags_of(&app, &released).await;
    assert_eq!(names(&tags), vec!["询价"]);
    assert!(tags[0]["why"]["text"].as_str().unwrap().starts_with("规则 询价关键词 v1: message at "), "{tags:?}");
    assert!(tags_of(&app, &expired).await.is_empty(), "its lock still holds");

    // The other lock runs out: the next round applies its action, once.
    modification_lock::Entity::update_many()
        .col_expr(modification_lock::Column::ExpiresAt, Expr::value(Utc::now() - Duration::seconds(1)))
        .exec(&app.db)
        .await
        .unwrap();
    let scheduler = scheduler(&app, &app.app, "instance-a");
    assert_eq!(scheduler.round(Utc::now()).await.unwrap().deferred_applied, 1);
    assert_eq!(app.tag_names(&expired).await, vec!["询价"]);
    assert_eq!(scheduler.round(Utc::now()).await.unwrap().deferred_applied, 0);
    let pending = rule_deferred_action::Entity::find()
        .filter(rule_deferred_action::Column::AppliedAt.is_null())
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(pending, 0);
}

async fn a_scheduled_change_under_a_lock_is_deferred_and_applied_after(mut app: TestApp) {
    let login = app.connector().await;
    churn_rule(&app).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let now = Utc::now();
    app.record_events(login, vec![order(&customer, "o-1", now - Duration::days(400), 100)]).await;
    let lock = app
        .gql(
            "admin",
            "mutation($g: ID!, $c: [ID!]) { lockTagGroup(input: { groupId: $g, customerIds: $c, reason: \"盘点\" }) { lock { id } } }",
            json!({ "g": app.group_id("客户阶段").await, "c": [customer] }),
        )
        .await;
    let lock = lock.ok()["lockTagGroup"]["lock"]["id"].as_str().unwrap().to_owned();
    let ran = scheduler(&app, &app.app, "instance-a").run_due(now).await.unwrap();
    assert_eq!((ran[0].deferred, ran[0].tag_changes), (1, 0));
    assert!(tags_of(&app, &customer).await.is_empty());
    let kept = rule_deferred_action::Entity::find().all(&app.db).await.unwrap();
    assert_eq!(kept[0].run_id, Some(ran[0].id));

    app.gql("admin", "mutation($l: ID!) { unlockTagGroup(lockId: $l) { lock { id } } }", json!({ "l": lock }))
        .await
        .ok();
    let tags = tags_of(&app, &customer).await;
    assert_eq!(names(&tags), vec!["流失客户"]);
    assert_eq!(tags[0]["why"]["run"]["number"], ran[0].id);
}

async fn a_run_whose_instance_died_is_taken_over_once_its_lease_runs_out(mut app: TestApp) {
    let login = app.connector().await;
    let rule = churn_rule(&app).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let now = Utc::now();
    app.record_events(login, vec![order(&customer, "o-1", now - Duration::days(200), 100)]).await;
    let offset = app.app.state.settings.utc_offset;
    let key = schedule_key(Schedule::parse("s", "DAILY 03:00").unwrap().latest_slot(offset, now), offset);
    // An instance took the slot and died: its lease still holds for a while.
    let dead = rule_run::ActiveModel {
        rule_id: sea_orm::ActiveValue::Set(row_id(&rule)),
        rule_version: sea_orm::ActiveValue::Set(1),
        schedule_key: sea_orm::ActiveValue::Set(key.clone()),
        status: sea_orm::ActiveValue::Set(RuleRunStatus::Running),
        owner: sea_orm::ActiveValue::Set(Some("dead-instance".to_owned())),
        lease_until: sea_orm::ActiveValue::Set(Some(Utc::now() + Duration::seconds(30))),
        evaluated_at: sea_orm::ActiveValue::Set(now),
        started_at: sea_orm::ActiveValue::Set(now),
        finished_at: sea_orm::ActiveValue::Set(None),
        customers_scanned: sea_orm::ActiveValue::Set(0),
        customers_changed: sea_orm::ActiveValue::Set(0),
        tag_changes: sea_orm::ActiveValue::Set(0),
        deferred: sea_orm::ActiveValue::Set(0),
        held_back: sea_orm::ActiveValue::Set(0),
        attempts: sea_orm::ActiveValue::Set(1),
        error: sea_orm::ActiveValue::Set(None),
        ..Default::default()
    };
    rule_run::Entity::insert(dead).exec(&app.db).await.unwrap();
    let scheduler = scheduler(&app, &app.app, "instance-b");
    assert!(scheduler.run_due(now).await.unwrap().is_empty(), "the lease holds");
    assert!(tags_of(&app, &customer).await.is_empty());

    rule_run::Entity::update_many()
        .col_expr(rule_run::Column::LeaseUntil, Expr::value(Utc::now() - Duration::seconds(1)))
        .exec(&app.db)
        .await
        .unwrap();
    let ran = scheduler.run_due(now).await.unwrap();
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].schedule_key, key);
    assert_eq!(ran[0].attempts, 2);
    assert_eq!(ran[0].owner.as_deref(), Some("instance-b"));
    assert_eq!(ran[0].status, RuleRunStatus::Succeeded);
    assert_eq!(runs(&app).await.len(), 1);
    assert_eq!(app.tag_names(&customer).await, vec!["流失客户"]);
}

async fn a_scheduled_rule_does_not_run_on_events_and_proposals_carry_the_schedule(mut app: TestApp) {
    let login = app.connector().await;
    let inquiry = app.tag_id("活动", "询价").await;
    scheduled_rule(
        &app,
        "夜间询价",
        "message contains \"询价\"",
        json!([{ "op": "ADD", "tagId": inquiry }]),
        "DAILY 23:00",
    )
    .await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let res = app.record_events(login, vec![message_at(&customer, "m-1", "想询价", Utc::now())]).await;
    assert_eq!(res["tagChanges"], 0, "the schedule runs it, not the event");
    assert!(tags_of(&app, &customer).await.is_empty());
    scheduler(&app, &app.app, "instance-a").run_due(Utc::now()).await.unwrap();
    assert_eq!(app.tag_names(&customer).await, vec!["询价"]);

    // Proposed by a salesperson: the request carries the rule's scheduled
    // dry run, as `dryRunRule` of the same rule answers; the schedule
    // applies on approval.
    let churned = app.tag_id("客户阶段", "流失客户").await;
    let gone = app.fresh_customer("sz01", "sz01.sales").await;
    app.record_events(login, vec![order(&gone, "o-gone", Utc::now() - Duration::days(400), 100)]).await;
    let rule = json!({ "orgUnitId": app.unit_id("sz01"), "name": "门店流失", "condition": CHURN,
        "actions": [{ "op": "MOVE", "tagId": churned }], "enabled": true, "schedule": "DAILY 04:00" });
    let res = app
        .gql(
            "sz01.sales",
            "mutation($i: ProposeRuleInput!) { proposeRule(input: $i) { id kind
                ruleDryRun { ruleName wouldAdd sample { customerId changes { eventId text } } } } }",
            json!({ "i": { "create": rule, "reason": "流失预警" } }),
        )
        .await;
    let request = res.ok()["proposeRule"].clone();
    assert_eq!(request["kind"], "rule.create");
    let carried = &request["ruleDryRun"];
    assert_eq!(carried["ruleName"], "门店流失");
    assert!(carried["wouldAdd"].as_u64().unwrap() >= 1, "{carried}");
    let unsaved = json!({ "orgUnitId": app.unit_id("sz01"), "name": "门店流失", "condition": CHURN,
        "actions": [{ "op": "MOVE", "tagId": churned }], "schedule": "DAILY 04:00" });
    let direct = app
        .gql(
            "sz01.sales",
            "query($i: DryRunRuleInput!) { dryRunRule(input: $i) { wouldAdd } }",
            json!({ "i": { "rule": unsaved } }),
        )
        .await;
    assert_eq!(carried["wouldAdd"], direct.ok()["dryRunRule"]["wouldAdd"]);
    let ours =
        carried["sample"].as_array().unwrap().iter().find(|s| s["customerId"] == json!(gone)).expect("in the sample");
    assert_eq!(ours["changes"][0]["eventId"], Value::Null);
    assert!(ours["changes"][0]["text"].as_str().unwrap().starts_with("规则 门店流失 v0: scheduled run at "), "{ours}");
    let approved = app
        .gql(
            "sz01.manager",
            "mutation($id: ID!) { approveChangeRequest(id: $id) { changeRequest { status } } }",
            json!({ "id": request["id"] }),
        )
        .await;
    assert_eq!(approved.ok()["approveChangeRequest"]["changeRequest"]["status"], "APPROVED");
    let rules = app
        .gql(
            "sz01.manager",
            "query($u: ID!) { rules(orgUnitId: $u) { name schedule } }",
            json!({ "u": app.unit_id("sz01") }),
        )
        .await;
    let rules = rules.ok()["rules"].as_array().unwrap().clone();
    assert!(rules.contains(&json!({ "name": "门店流失", "schedule": "DAILY 04:00" })), "{rules:?}");
}

const DRY_RUN: &str = "query($r: ID!) { dryRunRule(input: { ruleId: $r }) { customersReplayed customersMatched
    wouldAdd wouldRemove heldBack sampleTruncated
    sample { customer { id } changes { op tag { name } eventId text } } } }";

/// The customers holding `tag` by a rule's run, with the change.
async fn ruled(app: &TestApp, tag: i64) -> Vec<i64> {
    let mut out: Vec<i64> = customer_tag::Entity::find()
        .filter(customer_tag::Column::TagId.eq(tag))
        .filter(customer_tag::Column::Source.eq(TagSource::Rule))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.customer_id)
        .collect();
    out.sort_unstable();
    out
}

async fn a_scheduled_dry_run_predicts_exactly_what_its_run_then_does(mut app: TestApp) {
    let login = app.connector().await;
    let churned = app.tag_id("客户阶段", "流失客户").await;
    let prospect = app.tag_id("客户阶段", "潜在客户").await;
    let rule = app
        .create_rule(json!({ "orgUnitId": app.unit_id("hq"), "name": "流失客户", "condition": CHURN,
            "actions": [{ "op": "MOVE", "tagId": churned }], "schedule": "DAILY 03:00" }))
        .await;
    let customers = app.fresh_customers(6).await;
    let [gone, staged, recent, _never, removed, already] = customers.clone().try_into().unwrap();
    let now = Utc::now();
    app.record_events(
        login,
        vec![
            order(&gone, "o-1", now - Duration::days(200), 100),
            order(&staged, "o-2", now - Duration::days(181), 100),
            order(&recent, "o-3", now - Duration::days(179), 100),
            order(&removed, "o-4", now - Duration::days(300), 100),
            order(&already, "o-5", now - Duration::days(900), 100),
        ],
    )
    .await;
    for (c, t, op) in [
        (&staged, &prospect, "tagCustomers"),
        (&removed, &churned, "tagCustomers"),
        (&removed, &churned, "untagCustomers"),
        (&already, &churned, "tagCustomers"),
    ] {
        app.tag_by_hand("admin", op, &[c], &[t]).await;
    }

    let dry = app.gql("admin", DRY_RUN, json!({ "r": rule })).await;
    let dry = dry.ok()["dryRunRule"].clone();
    assert_eq!(dry["wouldAdd"], 2, "{dry}");
    assert_eq!(dry["wouldRemove"], 1, "the move takes 潜在客户 off: {dry}");
    assert_eq!(dry["heldBack"], 1, "a person took 流失客户 off: {dry}");
    assert_eq!(dry["customersMatched"], 3);
    let predicted: Vec<i64> =
        dry["sample"].as_array().unwrap().iter().map(|s| row_id(s["customer"]["id"].as_str().unwrap())).collect();
    assert_eq!(predicted, vec![row_id(&gone), row_id(&staged)]);
    let staged_changes = &dry["sample"][1]["changes"];
    assert_eq!(staged_changes[0]["op"], "REMOVE");
    assert_eq!(staged_changes[0]["tag"]["name"], "潜在客户");
    assert_eq!(staged_changes[1]["op"], "ADD");
    assert_eq!(staged_changes[1]["eventId"], Value::Null);
    assert!(staged_changes[1]["text"].as_str().unwrap().starts_with("规则 流失客户 v1: scheduled run at "), "{dry}");

    // Enabled, the rule runs its slot at once: exactly what was predicted.
    app.gql("admin", "mutation($id: ID!) { enableRule(id: $id) { status } }", json!({ "id": rule })).await.ok();
    let ran = scheduler(&app, &app.app, "instance-a").run_due(Utc::now()).await.unwrap();
    assert_eq!(ran.len(), 1);
    assert_eq!(ran[0].customers_changed, 2);
    assert_eq!(ran[0].tag_changes, 3);
    assert_eq!(ran[0].held_back, 1);
    // Of this test's customers (the demo's own 流失客户 rule tagged others).
    let ours: Vec<i64> = customers.iter().map(|c| row_id(c)).collect();
    let mut now_ruled = ruled(&app, row_id(&churned)).await;
    now_ruled.retain(|c| ours.contains(c));
    assert_eq!(now_ruled, predicted);
    assert_eq!(app.tag_names(&staged).await, vec!["流失客户"]);
    assert!(tags_of(&app, &removed).await.is_empty());

    // Settled: a dry run now predicts nothing more, and the next run does nothing.
    let dry = app.gql("admin", DRY_RUN, json!({ "r": rule })).await;
    assert_eq!(dry.ok()["dryRunRule"]["wouldAdd"], 0);
    assert!(dry.ok()["dryRunRule"]["customersReplayed"].as_u64().unwrap() >= customers.len() as u64);
}

/// Over a week, a scheduled dry run judges each daily run: a customer
/// the rule held for on one day of the week (and no longer today) is
/// predicted, at that day's slot, and the runs then do exactly that.
async fn a_scheduled_dry_run_predicts_what_each_daily_run_of_its_window_does(mut app: TestApp) {
    let login = app.connector().await;
    let funds = app.tag_id("活动", "资金需求").await;
    let offset = app.app.state.settings.utc_offset;
    let now = Utc::now();
    // Every day at the minute an hour ago.
    let schedule = format!("DAILY {}", (now - Duration::hours(1)).with_timezone(&offset).format("%H:%M"));
    let rule = app
        .create_rule(
            json!({ "orgUnitId": app.unit_id("hq"), "name": "近期下单", "condition": "count(order_paid, 2d) >= 1",
            "actions": [{ "op": "ADD", "tagId": funds }], "schedule": schedule }),
        )
        .await;
    let [last_week, today, never]: [String; 3] = app.fresh_customers(3).await.try_into().unwrap();
    app.record_events(
        login,
        vec![
            order(&last_week, "o-1", now - Duration::days(5), 100),
            order(&today, "o-2", now - Duration::hours(2), 100),
        ],
    )
    .await;
    let latest = Schedule::parse("schedule", &schedule).unwrap().latest_slot(offset, now);

    let from = (now - Duration::days(7)).to_rfc3339();
    let dry = app
        .gql(
            "admin",
            "query($r: ID!, $f: DateTime, $t: DateTime) { dryRunRule(input: { ruleId: $r, from: $f, to: $t }) {
                wouldAdd sample { customerId changes { op occurredAt } } } }",
            json!({ "r": rule, "f": from, "t": now.to_rfc3339() }),
        )
        .await;
    let dry = dry.ok()["dryRunRule"].clone();
    assert_eq!(dry["wouldAdd"], 2, "{dry}");
    let when = |c: &str| {
        let s = dry["sample"].as_array().unwrap().iter().find(|s| s["customerId"] == json!(c)).expect("predicted");
        s["changes"][0]["occurredAt"].as_str().unwrap().parse::<DateTime<Utc>>().unwrap()
    };
    // The order five days ago was under two days old at the slot four days ago.
    assert_eq!(when(&last_week), latest - Duration::days(4));
    assert_eq!(when(&today).timestamp(), now.timestamp(), "the latest slot, judged at the window's end");

    // Enabled a week ago, the daily runs would have done exactly that.
    app.gql("admin", "mutation($id: ID!) { enableRule(id: $id) { status } }", json!({ "id": rule })).await.ok();
    let scheduler = scheduler(&app, &app.app, "instance-a");
    // (The demo's own rules put tiers and 已完成交易 on these customers.)
    let holds = async |c: &str| app.tag_names(c).await.iter().any(|t| t == "资金需求");
    for k in (1..=6).rev() {
        scheduler.run_due(latest - Duration::days(k)).await.unwrap();
        assert_eq!(holds(&last_week).await, k <= 4, "after the run {k} days ago");
    }
    scheduler.run_due(now).await.unwrap();
    assert!(holds(&last_week).await);
    assert!(holds(&today).await);
    assert!(!holds(&never).await);
}

async fn a_deferred_action_of_a_rule_disabled_or_archived_since_is_not_applied(mut app: TestApp) {
    let login = app.connector().await;
    let inquiry = app.tag_id("活动", "询价").await;
    let mut rules = Vec::new();
    for (name, text) in [("询价甲", "询价"), ("询价乙", "报价"), ("询价丙", "价格")] {
        rules.push(
            app.create_rule(json!({ "orgUnitId": app.unit_id("hq"), "name": name,
                "condition": format!("message contains \"{text}\""),
                "actions": [{ "op": "ADD", "tagId": inquiry }], "enabled": true }))
                .await,
        );
    }
    let disabled = app.fresh_customer("sz01", "sz01.sales").await;
    let archived = app.fresh_customer("sz01", "sz01.sales").await;
    let kept = app.fresh_customer("sz01", "sz01.sales").await;
    const LOCK: &str = "mutation($g: ID!, $c: [ID!]) { lockTagGroup(input: { groupId: $g, customerIds: $c, reason: \"活动\" }) { lock { id } } }";
    let lock = app
        .gql("hq.marketing", LOCK, json!({ "g": app.group_id("活动").await, "c": [disabled, archived, kept] }))
        .await;
    let lock = lock.ok()["lockTagGroup"]["lock"]["id"].as_str().unwrap().to_owned();
    let message = |c: &str, key: &str, text: &str| message_at(c, key, text, Utc::now());
    let res = app
        .record_events(
            login,
            vec![
                message(&disabled, "m-1", "想询价"),
                message(&archived, "m-2", "要报价"),
                message(&kept, "m-3", "价格多少"),
            ],
        )
        .await;
    assert_eq!(res["deferred"], 3);

    // While the lock holds, the first rule is disabled and the second archived.
    app.gql("admin", "mutation($id: ID!) { disableRule(id: $id) { status } }", json!({ "id": rules[0] })).await.ok();
    app.gql("admin", "mutation($id: ID!) { archiveRule(id: $id) { status } }", json!({ "id": rules[1] })).await.ok();
    app.gql("hq.marketing", "mutation($l: ID!) { unlockTagGroup(lockId: $l) { lock { id } } }", json!({ "l": lock }))
        .await
        .ok();
    assert!(tags_of(&app, &disabled).await.is_empty(), "its rule was disabled since");
    assert!(tags_of(&app, &archived).await.is_empty(), "its rule was archived since");
    assert_eq!(app.tag_names(&kept).await, vec!["询价"]);
    // All three are closed: re-enabling the rule does not bring its old action back.
    app.gql("admin", "mutation($id: ID!) { enableRule(id: $id) { status } }", json!({ "id": rules[0] })).await.ok();
    assert_eq!(scheduler(&app, &app.app, "instance-a").round(Utc::now()).await.unwrap().deferred_applied, 0);
    assert!(tags_of(&app, &disabled).await.is_empty());
    let pending = rule_deferred_action::Entity::find()
        .filter(rule_deferred_action::Column::AppliedAt.is_null())
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(pending, 0);
}

on_both_databases!(
    a_deferred_action_of_a_rule_disabled_or_archived_since_is_not_applied,
    a_scheduled_dry_run_predicts_exactly_what_its_run_then_does,
    a_scheduled_dry_run_predicts_what_each_daily_run_of_its_window_does,
    a_run_whose_instance_died_is_taken_over_once_its_lease_runs_out,
    a_scheduled_rule_does_not_run_on_events_and_proposals_carry_the_schedule,
    a_slot_runs_exactly_once_with_two_instances,
    missed_slots_are_caught_up_with_the_latest_one_judged_as_of_now,
    value_tiers_are_recomputed_as_a_brute_force_reading_says,
    runs_are_visible_with_their_counts_and_errors,
    schedules_are_checked_at_save_time,
    expired_assignments_are_taken_off_unless_a_lock_holds_them,
    a_deferred_action_is_applied_when_its_lock_ends,
    a_scheduled_change_under_a_lock_is_deferred_and_applied_after,
);
