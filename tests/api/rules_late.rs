//! Late events (docs/rules.md, "Late events"): an event that arrives after
//! events of its customer that happened later rewinds the rules' changes
//! of those events and replays them in the order they happened. What the
//! replay leaves alone: the counts of what was reported before (held-back
//! adds, deferred actions), and the tags a person or a scheduled run
//! changed after the replayed events were judged.

use chrono::{Duration, Utc};
use entity::{audit_log, modification_lock, rule_deferred_action};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, sea_query::Expr};
use serde_json::{Value, json};

use crate::helpers::{TestApp, message_at, order_paid, row_id};
use crate::on_both_databases;
use crate::rules_schedule::scheduler;

/// An event rule at HQ, enabled, with one action.
async fn event_rule(app: &TestApp, name: &str, condition: &str, op: &str, tag: &str, priority: i32) -> String {
    app.create_rule(json!({ "orgUnitId": app.unit_id("hq"), "name": name, "condition": condition,
        "actions": [{ "op": op, "tagId": tag }], "enabled": true, "priority": priority }))
        .await
}

fn group_joined(customer: &str, key: &str, at: chrono::DateTime<Utc>) -> Value {
    json!({ "customerId": customer, "kind": "GROUP_JOINED", "key": key, "group": "车友群",
        "occurredAt": at.to_rfc3339() })
}

async fn a_late_event_does_not_count_again_what_the_events_it_replays_held_back(mut app: TestApp) {
    let login = app.connector().await;
    let intent = app.tag_id("活动", "购车意向").await;
    event_rule(&app, "报价关键词", "message contains \"报价\"", "ADD", &intent, 0).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    app.tag_by_hand("sz01.sales", "tagCustomers", &[&customer], &[&intent]).await;
    app.tag_by_hand("sz01.sales", "untagCustomers", &[&customer], &[&intent]).await;
    let now = Utc::now();

    let first = app.record_events(login, vec![message_at(&customer, "m-2", "要报价", now - Duration::hours(1))]).await;
    assert_eq!((first["tagChanges"].clone(), first["heldBack"].clone()), (json!(0), json!(1)));
    // An earlier hello, sent late: "要报价" is judged again and held back
    // again, which the first call reported already.
    let late = app.record_events(login, vec![message_at(&customer, "m-1", "你好", now - Duration::hours(2))]).await;
    assert_eq!(late["tagChanges"], 0);
    assert_eq!(late["heldBack"], 0, "held back once, counted once: {late}");
    assert!(app.tag_names(&customer).await.is_empty());
}

/// Locks 活动 for the customers (as 市场部); returns the lock's id.
async fn lock_activity(app: &TestApp, customers: &[&str]) -> String {
    let lock = app
        .gql(
            "hq.marketing",
            "mutation($g: ID!, $c: [ID!]) { lockTagGroup(input: { groupId: $g, customerIds: $c, reason: \"活动\" }) { lock { id } } }",
            json!({ "g": app.group_id("活动").await, "c": customers }),
        )
        .await;
    lock.ok()["lockTagGroup"]["lock"]["id"].as_str().unwrap().to_owned()
}

async fn unlock(app: &TestApp, lock: &str) {
    app.gql("hq.marketing", "mutation($l: ID!) { unlockTagGroup(lockId: $l) { lock { id } } }", json!({ "l": lock }))
        .await
        .ok();
}

/// The customer's deferred actions, as (applied, op).
async fn deferrals(app: &TestApp, customer: &str) -> Vec<(bool, String)> {
    rule_deferred_action::Entity::find()
        .filter(rule_deferred_action::Column::CustomerId.eq(row_id(customer)))
        .order_by_asc(rule_deferred_action::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.applied_at.is_some(), a.op))
        .collect()
}

/// A replayed event whose rule still fires keeps the one action its first
/// judgement deferred, and the lock's release applies it.
async fn a_late_event_does_not_defer_again_what_the_events_it_replays_deferred(mut app: TestApp) {
    let login = app.connector().await;
    let intent = app.tag_id("活动", "购车意向").await;
    event_rule(&app, "报价关键词", "message contains \"报价\"", "ADD", &intent, 0).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let lock = lock_activity(&app, &[&customer]).await;
    let now = Utc::now();
    let first = app.record_events(login, vec![message_at(&customer, "m-2", "要报价", now - Duration::hours(1))]).await;
    assert_eq!(first["deferred"], 1);
    let late = app.record_events(login, vec![message_at(&customer, "m-1", "你好", now - Duration::hours(2))]).await;
    assert_eq!(late["deferred"], 0, "{late}");
    assert_eq!(rule_deferred_action::Entity::find().count(&app.db).await.unwrap(), 1);
    assert_eq!(deferrals(&app, &customer).await, vec![(false, "ADD".to_owned())], "still waiting for the lock");

    unlock(&app, &lock).await;
    assert_eq!(app.tag_names(&customer).await, vec!["购车意向"]);
    assert_eq!(deferrals(&app, &customer).await, vec![(true, "ADD".to_owned())]);
}

/// A late order breaks the rule of a message judged before it under a
/// lock: in order, the message would have found the order and deferred
/// nothing. The action its first judgement deferred is closed without a
/// change, so releasing the lock puts nothing on.
async fn a_late_event_closes_the_deferred_action_of_an_event_whose_rule_no_longer_fires(mut app: TestApp) {
    let login = app.connector().await;
    let intent = app.tag_id("活动", "购车意向").await;
    event_rule(&app, "在吗无单", "message contains \"在吗\" AND no order_paid for 2d", "ADD", &intent, 0).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let ordered = app.fresh_customer("sz01", "sz01.sales").await;
    let lock = lock_activity(&app, &[&customer, &ordered]).await;
    let now = Utc::now();

    let first = app.record_events(login, vec![message_at(&customer, "m-1", "在吗", now - Duration::days(1))]).await;
    assert_eq!(first["deferred"], 1, "{first}");
    // An order a day before the message, late: the message's rule no
    // longer holds.
    let late = app.record_events(login, vec![order_paid(&customer, "o-1", now - Duration::days(2), 100)]).await;
    assert_eq!((late["tagChanges"].clone(), late["deferred"].clone()), (json!(0), json!(0)), "{late}");
    assert_eq!(deferrals(&app, &customer).await, vec![(true, "ADD".to_owned())], "closed by the replay");
    // The call's audit entry names it.
    let closed = rule_deferred_action::Entity::find().one(&app.db).await.unwrap().unwrap().id;
    let audit = audit_log::Entity::find()
        .filter(audit_log::Column::Action.eq("customer_event.record"))
        .order_by_desc(audit_log::Column::Id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(audit.detail["deferredClosed"], json!([closed]), "{}", audit.detail);

    unlock(&app, &lock).await;
    assert!(app.tag_names(&customer).await.is_empty(), "nothing was left to apply");
    assert_eq!(deferrals(&app, &customer).await, vec![(true, "ADD".to_owned())]);

    // The same events in order, on another customer under the same lock:
    // nothing is deferred, nothing put on.
    app.record_events(login, vec![order_paid(&ordered, "p-1", now - Duration::days(2), 100)]).await;
    let message = app.record_events(login, vec![message_at(&ordered, "p-2", "在吗", now - Duration::days(1))]).await;
    assert_eq!(message["deferred"], 0, "{message}");
    assert!(app.tag_names(&ordered).await.is_empty());
}

/// The same when the lock has run out before the late event arrives but
/// the scheduler has not applied the action yet: no lock is in force, and
/// the replay still closes the action, so the next round applies nothing.
async fn a_late_event_closes_a_deferred_action_whose_lock_ran_out_but_is_not_yet_applied(mut app: TestApp) {
    let login = app.connector().await;
    let intent = app.tag_id("活动", "购车意向").await;
    event_rule(&app, "在吗无单", "message contains \"在吗\" AND no order_paid for 2d", "ADD", &intent, 0).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    lock_activity(&app, &[&customer]).await;
    let now = Utc::now();
    let first = app.record_events(login, vec![message_at(&customer, "m-1", "在吗", now - Duration::days(1))]).await;
    assert_eq!(first["deferred"], 1, "{first}");
    modification_lock::Entity::update_many()
        .col_expr(modification_lock::Column::ExpiresAt, Expr::value(Utc::now() - Duration::seconds(1)))
        .exec(&app.db)
        .await
        .unwrap();

    let late = app.record_events(login, vec![order_paid(&customer, "o-1", now - Duration::days(2), 100)]).await;
    assert_eq!((late["tagChanges"].clone(), late["deferred"].clone()), (json!(0), json!(0)), "{late}");
    assert_eq!(deferrals(&app, &customer).await, vec![(true, "ADD".to_owned())], "closed by the replay");
    let round = scheduler(&app, &app.app, "instance-a").round(Utc::now()).await.unwrap();
    assert_eq!(round.deferred_applied, 0);
    assert!(app.tag_names(&customer).await.is_empty());
}

/// A rule that reads no event runs on every event, of any kind: a late
/// event replays those runs too, so the customer ends as in order.
async fn a_late_event_replays_what_a_rule_reading_no_event_did_on_an_event_of_another_kind(mut app: TestApp) {
    let login = app.connector().await;
    let drive = app.tag_id("活动", "试驾预约").await;
    // Runs first (priority 0): puts 试驾预约 on at every event.
    event_rule(&app, "一律试驾", "orders >= 0", "ADD", &drive, 0).await;
    // Then takes it off on "退订".
    event_rule(&app, "退订", "message contains \"退订\"", "REMOVE", &drive, 1).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let now = Utc::now();

    app.record_events(login, vec![group_joined(&customer, "g-1", now - Duration::hours(1))]).await;
    assert_eq!(app.tag_names(&customer).await, vec!["试驾预约"]);
    // "退订" happened before the group join: in order, it takes the tag
    // off and the join puts it back.
    app.record_events(login, vec![message_at(&customer, "m-1", "退订", now - Duration::hours(2))]).await;
    assert_eq!(app.tag_names(&customer).await, vec!["试驾预约"], "as if the events had come in order");

    // The same events recorded in order, on another customer, agree.
    let ordered = app.fresh_customer("sz01", "sz01.sales").await;
    app.record_events(login, vec![message_at(&ordered, "o-1", "退订", now - Duration::hours(2))]).await;
    app.record_events(login, vec![group_joined(&ordered, "o-2", now - Duration::hours(1))]).await;
    assert_eq!(app.tag_names(&ordered).await, vec!["试驾预约"]);
}

/// A person who put a tag on after the rules judged an event keeps it,
/// however a late event makes the replay judge that event.
async fn a_persons_change_since_wins_over_a_late_events_replay(mut app: TestApp) {
    let login = app.connector().await;
    let intent = app.tag_id("活动", "购车意向").await;
    event_rule(&app, "退订两次", "message contains \"退订\" AND count(message, 1d) >= 2", "REMOVE", &intent, 0).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let now = Utc::now();
    app.record_events(login, vec![message_at(&customer, "m-2", "退订", now - Duration::hours(1))]).await;
    app.tag_by_hand("sz01.sales", "tagCustomers", &[&customer], &[&intent]).await;

    // An earlier message arrives late: "退订" now counts two messages, and
    // its replay would take 购车意向 off; the person's later add stands.
    let late = app.record_events(login, vec![message_at(&customer, "m-1", "你好", now - Duration::hours(2))]).await;
    assert_eq!(late["tagChanges"], 0, "{late}");
    assert_eq!(app.tag_names(&customer).await, vec!["购车意向"]);

    // A new event is judged after the person's change: the rule applies.
    app.record_events(login, vec![message_at(&customer, "m-3", "退订", now - Duration::minutes(30))]).await;
    assert!(app.tag_names(&customer).await.is_empty());
}

/// The same in an exclusive group: a person's move to another stage after
/// an event was judged stays, and the replayed rule's move (which would
/// take that stage off) is left out whole.
async fn a_persons_move_since_stays_when_a_replayed_rule_would_move_the_group(mut app: TestApp) {
    let login = app.connector().await;
    let churned = app.tag_id("客户阶段", "流失客户").await;
    let paying = app.tag_id("客户阶段", "付费客户").await;
    event_rule(&app, "退订两次", "message contains \"退订\" AND count(message, 1d) >= 2", "MOVE", &churned, 0).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let now = Utc::now();
    app.record_events(login, vec![message_at(&customer, "m-2", "退订", now - Duration::hours(1))]).await;
    app.tag_by_hand("sz01.sales", "tagCustomers", &[&customer], &[&paying]).await;

    let late = app.record_events(login, vec![message_at(&customer, "m-1", "你好", now - Duration::hours(2))]).await;
    assert_eq!(late["tagChanges"], 0, "{late}");
    assert_eq!(app.tag_names(&customer).await, vec!["付费客户"]);
    // A new event moves the customer, as the rule says.
    app.record_events(login, vec![message_at(&customer, "m-3", "退订", now - Duration::minutes(30))]).await;
    assert_eq!(app.tag_names(&customer).await, vec!["流失客户"]);
}

/// A scheduled run's change after an event was judged stays through that
/// event's replay.
async fn a_scheduled_runs_change_since_stays_through_a_late_events_replay(mut app: TestApp) {
    let login = app.connector().await;
    let intent = app.tag_id("活动", "购车意向").await;
    event_rule(&app, "报价关键词", "message contains \"报价\"", "ADD", &intent, 0).await;
    let review = app
        .create_rule(json!({ "orgUnitId": app.unit_id("hq"), "name": "意向复核", "condition": "tag(\"购车意向\")",
        "actions": [{ "op": "REMOVE", "tagId": intent }], "enabled": true, "schedule": "DAILY 00:00" }))
        .await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let now = Utc::now();
    app.record_events(login, vec![message_at(&customer, "m-2", "要报价", now - Duration::hours(1))]).await;
    assert_eq!(app.tag_names(&customer).await, vec!["购车意向"]);
    let ran = scheduler(&app, &app.app, "instance-a").run_due(Utc::now()).await.unwrap();
    // (Demo customers holding 购车意向 lose it too.)
    let ours = ran.iter().find(|r| r.rule_id == row_id(&review)).expect("the review ran");
    assert!(ours.customers_changed >= 1);
    assert!(app.tag_names(&customer).await.is_empty());

    let late = app.record_events(login, vec![message_at(&customer, "m-1", "你好", now - Duration::hours(2))]).await;
    assert_eq!(late["tagChanges"], 0, "{late}");
    assert!(app.tag_names(&customer).await.is_empty(), "the run's removal stays");
    let events = app
        .gql(
            "admin",
            "query($id: ID!) { customer(id: $id) { tagEvents(first: 10) { edges { node { op source } } } } }",
            json!({ "id": customer }),
        )
        .await;
    assert_eq!(events.ok()["customer"]["tagEvents"]["edges"].as_array().unwrap().len(), 2, "added, removed by the run");
}

/// Two late events in a row. The first moves a tag's add to an earlier
/// event (the log says: added for m-3, taken off and put on again for
/// m-1). The second, between them, must not rewind the add for m-3 that
/// the log has already replaced: the tag was held since m-1, and an order
/// after m-1 does not take it off (found by rules_property).
async fn a_late_event_does_not_rewind_a_change_an_earlier_replay_replaced(mut app: TestApp) {
    let login = app.connector().await;
    let intent = app.tag_id("活动", "购车意向").await;
    event_rule(&app, "在吗无单", "message contains \"在吗\" AND no order_paid for 2d", "ADD", &intent, 0).await;
    let customer = app.fresh_customer("sz01", "sz01.sales").await;
    let now = Utc::now();

    // m-3 (one day ago): no order in the two days before, the tag goes on.
    let first = app.record_events(login, vec![message_at(&customer, "m-3", "在吗", now - Duration::days(1))]).await;
    assert_eq!(first["tagChanges"], 1, "{first}");
    // m-1 (five days ago), late: the tag is on since m-1 now.
    app.record_events(login, vec![message_at(&customer, "m-1", "在吗", now - Duration::days(5))]).await;
    assert_eq!(app.tag_names(&customer).await, vec!["购车意向"]);
    // An order two days ago, late: m-3 would not put the tag on any more,
    // but m-1, before the order, did, and the rule never takes it off.
    let order = app.record_events(login, vec![order_paid(&customer, "o-2", now - Duration::days(2), 100)]).await;
    assert_eq!(order["tagChanges"], 0, "{order}");
    assert_eq!(app.tag_names(&customer).await, vec!["购车意向"]);
}

on_both_databases!(
    a_late_event_does_not_count_again_what_the_events_it_replays_held_back,
    a_late_event_does_not_defer_again_what_the_events_it_replays_deferred,
    a_late_event_closes_the_deferred_action_of_an_event_whose_rule_no_longer_fires,
    a_late_event_closes_a_deferred_action_whose_lock_ran_out_but_is_not_yet_applied,
    a_late_event_replays_what_a_rule_reading_no_event_did_on_an_event_of_another_kind,
    a_persons_change_since_wins_over_a_late_events_replay,
    a_persons_move_since_stays_when_a_replayed_rule_would_move_the_group,
    a_scheduled_runs_change_since_stays_through_a_late_events_replay,
    a_late_event_does_not_rewind_a_change_an_earlier_replay_replaced,
);
