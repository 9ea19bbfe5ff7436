//! Races and half-done work: bulk runs against single writers (the 4S-store
//! case under load), bulk calls that fail midway, concurrent policy edits,
//! approvers' previews against writers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{FixedOffset, Months, NaiveDate, Timelike, Utc};
use entity::enums::{Gender, TagOp, TagSource};
use entity::{audit_log, casbin_rule, customer, customer_tag, modification_lock, tag_event};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, TransactionTrait,
};
use serde_json::{Value, json};
use tagbase::config::Limits;

use crate::helpers::TestApp;
use crate::{on_both_databases, on_both_databases_with};

const TAG_CUSTOMERS: &str = "mutation($c: [ID!]!, $t: [ID!]!, $r: String) {
    tagCustomers(input: { customerIds: $c, tagIds: $t, sourceRef: $r }) { applied added removed unchanged kept } }";
const UNTAG_CUSTOMERS: &str = "mutation($c: [ID!]!, $t: [ID!]!) {
    untagCustomers(input: { customerIds: $c, tagIds: $t }) { applied removed } }";

/// Adds `n` customers to a store, directly in the database, and returns
/// their ids.
async fn add_customers(app: &TestApp, store: &str, n: usize) -> Vec<String> {
    let unit = app.unit(store);
    let rows: Vec<customer::ActiveModel> =
        (0..n).map(|i| plain_customer(unit, format!("并发客户{store}-{i}"))).collect();
    for chunk in rows.chunks(200) {
        customer::Entity::insert_many(chunk.to_vec()).exec(&app.db).await.unwrap();
    }
    app.customers_of(store).await
}

async fn event_log_head(app: &TestApp) -> i64 {
    tag_event::Entity::find().order_by_desc(tag_event::Column::Seq).one(&app.db).await.unwrap().map_or(0, |e| e.seq)
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
                let tag = if (i + seed).is_multiple_of(3) { &a } else { &b };
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
    let rows =
        audit_log::Entity::find().filter(audit_log::Column::Action.eq("customer.tag")).all(&app.db).await.unwrap();
    let as_of: HashMap<String, i64> = rows
        .iter()
        .filter_map(|r| Some((r.detail["sourceRef"].as_str()?.to_owned(), r.detail["asOfEvent"].as_i64()?)))
        .collect();
    let group_tags = [crate::helpers::row_id(&stage_a), crate::helpers::row_id(&stage_b)];
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
    let tag_id: i64 = crate::helpers::row_id(&tag);

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

const GRANT: &str = "mutation($i: PermissionInput!) { grantPermission(input: $i) { changed } }";
const REVOKE: &str = "mutation($i: PermissionInput!) { revokePermission(input: $i) { changed } }";

fn policy_edit(role: &str) -> Value {
    json!({ "i": { "role": role, "object": "policy", "action": "edit" } })
}

async fn policy_editors(app: &TestApp) -> Vec<String> {
    let mut roles: Vec<String> = casbin_rule::Entity::find()
        .filter(casbin_rule::Column::Ptype.eq("p"))
        .filter(casbin_rule::Column::V1.eq("policy"))
        .filter(casbin_rule::Column::V2.eq("edit"))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.v0)
        .collect();
    roles.sort();
    roles
}

/// Two editors revoke each other's last `policy:edit` at the same time:
/// exactly one wins, the other gets CONFLICT, and one editor remains.
async fn two_concurrent_revokes_leave_one_policy_editor(app: TestApp) {
    assert_eq!(app.gql("admin", GRANT, policy_edit("auditor")).await.ok()["grantPermission"]["changed"], true);
    assert_eq!(app.gql("admin", GRANT, policy_edit("marketing")).await.ok()["grantPermission"]["changed"], true);
    assert_eq!(app.gql("admin", REVOKE, policy_edit("hq_admin")).await.ok()["revokePermission"]["changed"], true);
    for round in 0..5 {
        assert_eq!(policy_editors(&app).await, ["auditor", "marketing"], "round {round}");
        let (a, m) = tokio::join!(
            app.gql("hq.auditor", REVOKE, policy_edit("auditor")),
            app.gql("hq.marketing", REVOKE, policy_edit("marketing")),
        );
        let won: Vec<bool> = [&a, &m]
            .iter()
            .map(|res| {
                if res.0.get("errors").is_some() {
                    assert_eq!(res.code(), "CONFLICT", "{:#}", res.0);
                    false
                } else {
                    assert_eq!(res.ok()["revokePermission"]["changed"], true);
                    true
                }
            })
            .collect();
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "exactly one revoke wins: {a:?} {m:?}");
        let left = policy_editors(&app).await;
        assert_eq!(left.len(), 1, "one editor remains: {left:?}");
        // The remaining editor gives the other role its right back.
        let (login, other) =
            if left[0] == "auditor" { ("hq.auditor", "marketing") } else { ("hq.marketing", "auditor") };
        app.gql(login, GRANT, policy_edit(other)).await.ok();
    }
}

/// An approver's preview of a pending edit (`changeRequest { diff }`) does
/// not wait for the tag-event writer lock: a reader cannot stall writers,
/// nor be stalled by a long one.
async fn a_change_request_preview_does_not_take_the_writer_lock(app: TestApp) {
    let regional = app.tag_id("华南区域标签", "南方气候").await;
    let version = app.gql("admin", "query($id: ID!) { tag(id: $id) { version } }", json!({ "id": regional })).await;
    let version = version.ok()["tag"]["version"].clone();
    let res = app
        .gql(
            "sz01.manager",
            "mutation($in: UpdateTagInput!) { updateTag(input: $in) { applied changeRequest { id } } }",
            json!({ "in": { "id": regional, "expectedVersion": version, "name": "南方湿热气候" } }),
        )
        .await;
    assert_eq!(res.ok()["updateTag"]["applied"], false);
    let id = res.ok()["updateTag"]["changeRequest"]["id"].as_str().unwrap().to_owned();

    // A writer in the middle of a long transaction holds the event-log lock
    // (PostgreSQL; SQLite has one writer at a time and no such lock).
    let writer = match app.db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            let txn = app.db.begin().await.unwrap();
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(32758193958515557)").await.unwrap();
            Some(txn)
        }
        _ => None,
    };
    let diff = tokio::time::timeout(
        Duration::from_secs(10),
        app.gql(
            "south.manager",
            "query($id: ID!) { changeRequest(id: $id) { diff { field from to } } }",
            json!({ "id": id }),
        ),
    )
    .await
    .expect("the preview answered while a writer held the event-log lock");
    if let Some(txn) = writer {
        txn.rollback().await.unwrap();
    }
    let changes = diff.ok()["changeRequest"]["diff"].as_array().unwrap().clone();
    let name = changes.iter().find(|c| c["field"] == "name").expect("the name changes");
    assert_eq!(name["from"], "南方气候");
    assert_eq!(name["to"], "南方湿热气候");
}

on_both_databases!(
    two_concurrent_revokes_leave_one_policy_editor,
    a_change_request_preview_does_not_take_the_writer_lock
);

/// A fixed offset whose date differs from UTC's right now: +12:00 in the
/// afternoon (UTC), -12:00 in the morning.
fn offset_apart_from_utc() -> FixedOffset {
    if Utc::now().hour() >= 12 {
        FixedOffset::east_opt(12 * 3600).unwrap()
    } else {
        FixedOffset::west_opt(12 * 3600).unwrap()
    }
}

/// A customer row with nothing but a unit and a name, added now.
fn plain_customer(unit: i64, name: String) -> customer::ActiveModel {
    let now = Utc::now();
    customer::ActiveModel {
        id: NotSet,
        org_unit_id: Set(unit),
        owner_staff_id: Set(None),
        name: Set(name),
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
        merged_into_id: Set(None),
        merged_at: Set(None),
    }
}

async fn add_shanghai_customer(app: &TestApp, name: &str, born: NaiveDate) {
    customer::ActiveModel {
        gender: Set(Gender::Female),
        birth_date: Set(Some(born)),
        city: Set(Some("上海".to_owned())),
        ..plain_customer(app.unit("sz01"), name.to_owned())
    }
    .insert(&app.db)
    .await
    .unwrap();
}

/// A static segment keeps exactly the members its preview shows, dates
/// read in the organisation's time zone: a customer whose 28th birthday is
/// today there (but not in UTC, or the other way round) is in both or in
/// neither.
async fn a_static_segment_keeps_the_members_of_its_preview(app: TestApp) {
    let offset = app.app.state.settings.utc_offset;
    let local_today = Utc::now().with_timezone(&offset).date_naive();
    let utc_today = Utc::now().date_naive();
    assert_ne!(local_today, utc_today, "the test runs where the two dates differ");
    let born = local_today.max(utc_today).checked_sub_months(Months::new(28 * 12)).unwrap();
    add_shanghai_customer(&app, "今天生日", born).await;
    add_shanghai_customer(&app, "上月生日", born.checked_sub_months(Months::new(1)).unwrap()).await;
    app.app.state.index.rebuild(&app.db).await.unwrap();

    let text = "age = 28 AND city = \"上海\"";
    let preview = app
        .gql("admin", "query($t: String!) { segmentPreview(segment: { text: $t }) { count } }", json!({ "t": text }))
        .await;
    let previewed = preview.ok()["segmentPreview"]["count"].as_u64().unwrap();
    assert!(previewed >= 1, "the customer born a month earlier is 28 either way");
    let saved = app
        .gql(
            "admin",
            "mutation($i: SaveSegmentInput!) { saveSegment(input: $i) { segment { count snapshotSize } } }",
            json!({ "i": { "orgUnitId": app.unit_id("hq"), "name": "二十八岁上海", "kind": "STATIC",
                           "segment": { "text": text } } }),
        )
        .await;
    let segment = &saved.ok()["saveSegment"]["segment"];
    assert_eq!(segment["snapshotSize"].as_u64(), Some(previewed), "the snapshot keeps the preview's members");
    assert_eq!(segment["count"].as_u64(), Some(previewed));
}

mod a_static_segment_keeps_the_members_of_its_preview {
    use crate::helpers::{Backend, TestApp};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let app = TestApp::spawn_configured(Backend::Sqlite, |s| s.utc_offset = super::offset_apart_from_utc()).await;
        super::a_static_segment_keeps_the_members_of_its_preview(app).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let app = TestApp::spawn_configured(Backend::Postgres, |s| s.utc_offset = super::offset_apart_from_utc()).await;
        super::a_static_segment_keeps_the_members_of_its_preview(app).await;
    }
}

/// The demo segment 购车后资金需求 bounds its dates at the organisation's
/// midnight: its text shows plain dates, not UTC midnight in local time.
async fn the_demo_segment_bounds_dates_at_the_organisations_midnight(app: TestApp) {
    let res = app.gql("hq.marketing", "{ segments(first: 50) { edges { node { name text } } } }", json!({})).await;
    let text = res.ok()["segments"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"]["name"] == "购车后资金需求")
        .map(|e| e["node"]["text"].as_str().unwrap().to_owned())
        .expect("the demo segment");
    for date in ["\"2026-04-15\"", "\"2026-05-20\"", "\"2026-10-10\"", "\"2026-11-01\""] {
        assert!(text.contains(date), "{date} in {text}");
    }
}

on_both_databases!(the_demo_segment_bounds_dates_at_the_organisations_midnight);

async fn preview_counts(app: &TestApp, texts: &[&str]) -> Vec<u64> {
    let mut out = Vec::new();
    for text in texts {
        let q = "query($s: String!) { segmentPreview(segment: { text: $s }) { count } }";
        out.push(app.gql("admin", q, json!({ "s": text })).await.ok()["segmentPreview"]["count"].as_u64().unwrap());
    }
    out
}

/// The index rebuild reads customers and assignments in chunks of 7 rows
/// here (keyset pages on SQLite, COPY streams handed over 7 rows at a time
/// on PostgreSQL) and ends with the index a one-shot load gives.
async fn the_index_rebuilds_in_pages_to_the_same_answers(app: TestApp) {
    let texts =
        ["city = \"深圳\"", "tag(\"有车一族\") OR tag(\"本地居民\")", "NOT group(\"家庭情况\")", "gender = FEMALE"];
    let whole = preview_counts(&app, &texts).await;
    let customers = customer::Entity::find().count(&app.db).await.unwrap();
    let assignments = customer_tag::Entity::find().count(&app.db).await.unwrap();
    assert!(customers > 7 && assignments > 7, "more rows than one page");
    let before = app.statements();
    app.app.state.index.rebuild_in_pages(&app.db, 7).await.unwrap();
    let statements = (app.statements() - before) as u64;
    // PostgreSQL streams through COPY, beside the counted statements.
    if app.db.get_database_backend() == sea_orm::DbBackend::Sqlite {
        assert!(statements >= (customers + assignments) / 7, "read in pages: {statements} statements");
    }
    assert_eq!(preview_counts(&app, &texts).await, whole);
}

on_both_databases!(the_index_rebuilds_in_pages_to_the_same_answers);

const SAVE_SEGMENT: &str = "mutation($i: SaveSegmentInput!) { saveSegment(input: $i) { segment { id } } }";
const DELETE_SEGMENT: &str = "mutation($id: ID!) { deleteSegment(id: $id) { deletedId } }";

/// A segment being saved with `segment(#id)` and the deletion of that
/// segment race: one of them wins; never both, so no saved segment is left
/// referring to a deleted one.
async fn deleting_a_segment_while_another_starts_using_it_leaves_no_dangling_reference(app: TestApp) {
    let hq = app.unit_id("hq");
    for round in 0..8 {
        let base = format!("底座{round}");
        let res = app
            .gql(
                "admin",
                SAVE_SEGMENT,
                json!({ "i": { "orgUnitId": hq, "name": base, "segment": { "text": "gender = FEMALE" } } }),
            )
            .await;
        let base_id = res.ok()["saveSegment"]["segment"]["id"].as_str().unwrap().to_owned();
        let user = json!({ "i": { "orgUnitId": hq, "name": format!("使用者{round}"),
                                  "segment": { "text": format!("segment(\"{base}\") AND city = \"深圳\"") } } });
        let (saved, deleted) = tokio::join!(
            app.gql("hq.marketing", SAVE_SEGMENT, user),
            app.gql("admin", DELETE_SEGMENT, json!({ "id": base_id })),
        );
        let saved_ok = saved.0.get("errors").is_none();
        let deleted_ok = deleted.0.get("errors").is_none();
        assert!(saved_ok != deleted_ok, "exactly one wins (round {round}): {saved:?} {deleted:?}");
        if !saved_ok {
            assert!(["NOT_FOUND", "CONFLICT"].contains(&saved.code().as_str()), "{saved:?}");
        }
        if !deleted_ok {
            assert_eq!(deleted.code(), "CONFLICT");
        }
    }
    // No stored expression refers to a missing segment.
    let all = entity::segment::Entity::find().all(&app.db).await.unwrap();
    let ids: Vec<i64> = all.iter().map(|s| s.id).collect();
    for s in &all {
        for (at, _) in s.expression.match_indices("segment(#") {
            let digits: String = s.expression[at + 9..].chars().take_while(char::is_ascii_digit).collect();
            assert!(ids.contains(&digits.parse().unwrap()), "{:?} refers to a deleted segment", s.expression);
        }
    }
}

on_both_databases!(deleting_a_segment_while_another_starts_using_it_leaves_no_dangling_reference);
