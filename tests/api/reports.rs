//! Governance reports: tag usage and zombie tags against brute-force
//! counts, probable duplicates merged through a change request, alerts
//! acknowledged and resolved (audited, scoped), report thresholds, and tags
//! at a past date replayed from the tag event log.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use entity::{
    audit_log, customer, customer_tag,
    enums::{TagOp, TagSource, TagStatus},
    modification_lock, tag, tag_event, tag_group,
};
use sea_orm::{ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde_json::{Value, json};

use crate::helpers::{TestApp, row_id};

const USAGE: &str = "query($u: ID!, $z: Boolean) { tagUsage(orgUnitId: $u, first: 500, filter: { zombie: $z }) {
    edges { node { tag { id name } holders scopeCustomers share lastTaggedAt taggedLast30Days taggedLast90Days
    bySource { source count } zombie } } pageInfo { hasNextPage } } }";
const ZOMBIES: &str = "query($u: ID!) { zombieTags(orgUnitId: $u) { tag { id } holders share } }";

/// What a brute-force count says of one tag among some customers.
#[derive(Debug, Default, Clone, PartialEq)]
struct Brute {
    holders: u64,
    last: Option<DateTime<Utc>>,
    last_30: u64,
    /// ADD events of the last 90 days.
    adds: u64,
    /// Holders by the source of their assignment.
    sources: BTreeMap<String, u64>,
}

/// Counts every tag of the unit's HQ layer by reading all rows (the admin
/// sees every class and every customer).
async fn brute_force(app: &TestApp, units: &[i64]) -> (u64, HashMap<i64, Brute>) {
    let customers: BTreeSet<i64> = customer::Entity::find()
        .filter(customer::Column::OrgUnitId.is_in(units.iter().copied()))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut out: HashMap<i64, Brute> = HashMap::new();
    for row in customer_tag::Entity::find().all(&app.db).await.unwrap() {
        if customers.contains(&row.customer_id) {
            let b = out.entry(row.tag_id).or_default();
            b.holders += 1;
            *b.sources.entry(row.source.as_str().to_owned()).or_default() += 1;
        }
    }
    let now = Utc::now();
    for e in tag_event::Entity::find().all(&app.db).await.unwrap() {
        if e.op != TagOp::Add || !customers.contains(&e.customer_id) {
            continue;
        }
        let b = out.entry(e.tag_id).or_default();
        if e.occurred_at >= now - Duration::days(90) {
            b.adds += 1;
        }
        b.last = b.last.max(Some(e.occurred_at));
        if e.occurred_at >= now - Duration::days(30) {
            b.last_30 += 1;
        }
    }
    (customers.len() as u64, out)
}

async fn hq_tags(app: &TestApp) -> Vec<tag::Model> {
    let groups: Vec<i64> = tag_group::Entity::find()
        .filter(tag_group::Column::OrgUnitId.eq(app.unit("hq")))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .collect();
    tag::Entity::find()
        .filter(tag::Column::GroupId.is_in(groups))
        .filter(tag::Column::Status.eq(TagStatus::Active))
        .all(&app.db)
        .await
        .unwrap()
}

fn usage_rows(res: &Value) -> Vec<Value> {
    res["tagUsage"]["edges"].as_array().unwrap().iter().map(|e| e["node"].clone()).collect()
}

/// Usage at HQ for the admin: every HQ tag, with holders, recency and
/// sources equal to counting the rows one by one.
async fn usage_counts_equal_a_brute_force_count(app: TestApp) {
    let all: Vec<i64> = ["hq", "north", "bj01", "tj01", "south", "sz01", "gz01"].iter().map(|u| app.unit(u)).collect();
    let (total, brute) = brute_force(&app, &all).await;
    let res = app.gql("admin", USAGE, json!({ "u": app.unit_id("hq") })).await;
    let rows = usage_rows(res.ok());
    let tags = hq_tags(&app).await;
    assert_eq!(rows.len(), tags.len());
    for row in &rows {
        let id = row_id(row["tag"]["id"].as_str().unwrap());
        let b = brute.get(&id).cloned().unwrap_or_default();
        assert_eq!(row["holders"], b.holders, "{row}");
        assert_eq!(row["scopeCustomers"], total);
        let share = row["share"].as_f64().unwrap();
        assert!((share - b.holders as f64 / total as f64).abs() < 1e-9, "{row}");
        assert_eq!(row["taggedLast30Days"], b.last_30, "{row}");
        // What put the tag on its holders now: one count per source, adding up to the holders.
        let by_source: BTreeMap<String, u64> = row["bySource"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["source"].as_str().unwrap().to_owned(), s["count"].as_u64().unwrap()))
            .collect();
        assert_eq!(by_source, b.sources, "{row}");
        assert_eq!(row["taggedLast90Days"], b.adds, "{row}");
        let last = row["lastTaggedAt"].as_str().map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc));
        assert_eq!(last.map(|t| t.timestamp()), b.last.map(|t| t.timestamp()), "{row}");
    }
    // Ordered by holders, most first.
    let counts: Vec<u64> = rows.iter().map(|r| r["holders"].as_u64().unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]));
    // A manual tagging shows at once, as MANUAL.
    let tag = app.tag_id("品类偏好", "童装").await;
    let customer = app.customers_of("sz01").await[0].clone();
    let before = rows.iter().find(|r| r["tag"]["id"] == tag.as_str()).unwrap().clone();
    app.gql(
        "admin",
        "mutation($c: [ID!]!, $t: [ID!]!) { untagCustomers(input: { customerIds: $c, tagIds: $t }) { applied } }",
        json!({ "c": [customer], "t": [tag] }),
    )
    .await
    .ok();
    app.gql(
        "admin",
        "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { applied } }",
        json!({ "c": [customer], "t": [tag] }),
    )
    .await
    .ok();
    let res = app.gql("admin", USAGE, json!({ "u": app.unit_id("hq") })).await;
    let after = usage_rows(res.ok()).into_iter().find(|r| r["tag"]["id"] == tag.as_str()).unwrap();
    assert_eq!(after["holders"], holders(&app, row_id(&tag)).await.len() as u64);
    assert_eq!(after["taggedLast30Days"].as_u64().unwrap(), before["taggedLast30Days"].as_u64().unwrap() + 1);
    let manual = after["bySource"].as_array().unwrap().iter().find(|s| s["source"] == "MANUAL").cloned();
    assert!(manual.is_some(), "{after}");
}

/// A salesperson reads usage of its store only: counts over its store's
/// customers, tags of classes it may not read left out; HQ's report is
/// refused and another store's is unknown.
async fn a_salesperson_sees_only_their_scope(app: TestApp) {
    let sz01 = app.unit("sz01");
    let (total, brute) = brute_force(&app, &[sz01]).await;
    let res = app.gql("sz01.sales", USAGE, json!({ "u": app.unit_id("sz01") })).await;
    let rows = usage_rows(res.ok());
    assert!(!rows.is_empty());
    let names: BTreeSet<String> = rows.iter().map(|r| r["tag"]["name"].as_str().unwrap().to_owned()).collect();
    assert!(!names.contains("投诉记录"), "service tags are not the salesperson's");
    assert!(!names.contains("孕期"), "sensitive tags are not the salesperson's");
    assert!(!names.contains("北方肤质"), "another region's layer");
    for row in &rows {
        let id = row_id(row["tag"]["id"].as_str().unwrap());
        assert_eq!(row["scopeCustomers"], total);
        assert_eq!(row["holders"], brute.get(&id).map_or(0, |b| b.holders), "{row}");
    }
    let hq = app.gql("sz01.sales", USAGE, json!({ "u": app.unit_id("hq") })).await;
    assert_eq!(hq.code(), "FORBIDDEN");
    let other = app.gql("sz01.sales", USAGE, json!({ "u": app.unit_id("bj01") })).await;
    assert_eq!(other.code(), "NOT_FOUND");
    let service = app.gql("sz01.service", USAGE, json!({ "u": app.unit_id("sz01") })).await;
    assert_eq!(service.code(), "FORBIDDEN");
}

/// Zombie tags at the default 10%: exactly the tags a brute-force count
/// puts under 10% of HQ's customers or idle for 90 days; the usage filter
/// agrees, and a higher threshold set at HQ finds more.
async fn zombie_tags_at_ten_percent_are_the_brute_force_ones(app: TestApp) {
    let all: Vec<i64> = ["hq", "north", "bj01", "tj01", "south", "sz01", "gz01"].iter().map(|u| app.unit(u)).collect();
    let (total, brute) = brute_force(&app, &all).await;
    let now = Utc::now();
    let tags = hq_tags(&app).await;
    let at_ten: BTreeSet<i64> = tags
        .iter()
        .filter(|t| {
            let b = brute.get(&t.id).cloned().unwrap_or_default();
            let idle_since = b.last.unwrap_or(t.created_at).max(t.created_at);
            (b.holders as f64) < 0.10 * total as f64 || idle_since < now - Duration::days(90)
        })
        .map(|t| t.id)
        .collect();
    let res = app.gql("admin", ZOMBIES, json!({ "u": app.unit_id("hq") })).await;
    let found: BTreeSet<i64> =
        res.ok()["zombieTags"].as_array().unwrap().iter().map(|z| row_id(z["tag"]["id"].as_str().unwrap())).collect();
    assert_eq!(found, at_ten);
    assert!(!found.is_empty() && found.len() < tags.len(), "the demo has some zombies and some live tags");
    let filtered = app.gql("admin", USAGE, json!({ "u": app.unit_id("hq"), "z": true })).await;
    let filtered: BTreeSet<i64> =
        usage_rows(filtered.ok()).iter().map(|r| row_id(r["tag"]["id"].as_str().unwrap())).collect();
    assert_eq!(filtered, at_ten);

    // HQ raises its threshold to 30%; a store inherits it.
    let set = "mutation($u: ID!, $s: Float) { setReportSettings(input: { orgUnitId: $u, zombieShare: $s }) {
        zombieShare zombieIdleDays setAt { code } } }";
    let res = app.gql("admin", set, json!({ "u": app.unit_id("hq"), "s": 0.3 })).await;
    assert_eq!(res.ok()["setReportSettings"]["zombieShare"], 0.3);
    let q = "query($u: ID!) { reportSettings(orgUnitId: $u) { zombieShare zombieIdleDays setAt { code } } }";
    let inherited = app.gql("sz01.manager", q, json!({ "u": app.unit_id("sz01") })).await;
    assert_eq!(inherited.ok()["reportSettings"]["zombieShare"], 0.3);
    assert_eq!(inherited.ok()["reportSettings"]["setAt"]["code"], "hq");
    let res = app.gql("admin", ZOMBIES, json!({ "u": app.unit_id("hq") })).await;
    let at_thirty = res.ok()["zombieTags"].as_array().unwrap().len();
    assert!(at_thirty >= found.len());
    // Refusals change nothing.
    let before = app.snapshot().await;
    let bad = app.gql("admin", set, json!({ "u": app.unit_id("hq"), "s": 1.5 })).await;
    assert_eq!(bad.code(), "VALIDATION");
    let sales = app.gql("sz01.sales", set, json!({ "u": app.unit_id("sz01"), "s": 0.2 })).await;
    assert_eq!(sales.code(), "FORBIDDEN");
    assert_eq!(app.snapshot().await, before);
}

/// Archiving zombie tags goes through the library-edit rules: directly
/// for HQ, refused for a tag that is not a zombie (nothing changes).
async fn zombie_tags_are_archived_through_library_edits(app: TestApp) {
    let res = app.gql("admin", ZOMBIES, json!({ "u": app.unit_id("hq") })).await;
    let zombie = res.ok()["zombieTags"][0]["tag"]["id"].as_str().unwrap().to_owned();
    let live = app.tag_id("客户阶段", "付费客户").await;
    let archive = "mutation($u: ID!, $t: [ID!]!) { archiveZombieTags(input: { orgUnitId: $u, tagIds: $t,
        reason: \"nobody uses it\" }) { applied tag { status } changeRequest { id } } }";
    let before = app.snapshot().await;
    let refused = app.gql("admin", archive, json!({ "u": app.unit_id("hq"), "t": [zombie.clone(), live] })).await;
    assert_eq!(refused.code(), "VALIDATION");
    assert_eq!(app.snapshot().await, before);
    let res = app.gql("admin", archive, json!({ "u": app.unit_id("hq"), "t": [zombie.clone()] })).await;
    assert_eq!(res.ok()["archiveZombieTags"][0]["applied"], true);
    assert_eq!(res.ok()["archiveZombieTags"][0]["tag"]["status"], "ARCHIVED");
    let again = app.gql("admin", ZOMBIES, json!({ "u": app.unit_id("hq") })).await;
    assert!(again.ok()["zombieTags"].as_array().unwrap().iter().all(|z| z["tag"]["id"] != zombie.as_str()));
}

const DUPLICATES: &str = "query($u: ID!) { duplicateTags(orgUnitId: $u) { a { tag { id name } } b { tag { id name } }
    reasons siblingScopes canonical { id name version } merges { target { id } source { id version } } note } }";

fn gold_pair(res: &Value, north: &str, south: &str) -> Value {
    res["duplicateTags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            let ids = [p["a"]["tag"]["id"].as_str().unwrap(), p["b"]["tag"]["id"].as_str().unwrap()];
            ids.contains(&north) && ids.contains(&south)
        })
        .cloned()
        .unwrap_or_else(|| panic!("no pair for 黄金会员: {res:#}"))
}

/// HQ finds that the two regions' 黄金会员 are one idea. With no tag above
/// both the pair says so; once HQ has one, the pair proposes merging both
/// into it, and the north region's merge goes through a change request
/// that HQ approves.
async fn gold_members_of_two_regions_are_found_and_merged_through_a_request(app: TestApp) {
    let north = app.tag_id("华北区域标签", "黄金会员").await;
    let south = app.tag_id("华南区域标签", "黄金会员").await;
    let res = app.gql("admin", DUPLICATES, json!({ "u": app.unit_id("hq") })).await;
    let pair = gold_pair(res.ok(), &north, &south);
    assert!(pair["reasons"].as_array().unwrap().contains(&json!("SAME_NAME")), "{pair}");
    assert_eq!(pair["siblingScopes"], true);
    assert!(pair["canonical"].is_null());
    assert!(pair["note"].as_str().unwrap().contains("总部"), "{pair}");
    // A region manager does not see the other region's layer.
    let res = app.gql("north.manager", DUPLICATES, json!({ "u": app.unit_id("north") })).await;
    let pairs = res.ok()["duplicateTags"].as_array().unwrap();
    assert!(pairs.iter().all(|p| p["a"]["tag"]["id"] != south.as_str() && p["b"]["tag"]["id"] != south.as_str()));

    // HQ creates the canonical tag.
    let group = app.create_group("admin", "hq", "会员等级", "interest", false).await;
    let gold = app.create_tag("admin", &group, "黄金会员").await;
    let res = app.gql("admin", DUPLICATES, json!({ "u": app.unit_id("hq") })).await;
    let pair = gold_pair(res.ok(), &north, &south);
    assert_eq!(pair["canonical"]["id"], gold.as_str());
    let merges = pair["merges"].as_array().unwrap();
    assert_eq!(merges.len(), 2);
    let north_merge = merges.iter().find(|m| m["source"]["id"] == north.as_str()).unwrap();
    assert_eq!(north_merge["target"]["id"], gold.as_str());

    let north_holders: BTreeSet<i64> = holders(&app, row_id(&north)).await;
    assert!(!north_holders.is_empty());
    let merge = "mutation($in: MergeDuplicateTagsInput!) { mergeDuplicateTags(input: $in) {
        applied changeRequest { id kind status scope { code } } } }";
    let input = json!({ "in": { "canonicalTagId": gold, "canonicalExpectedVersion": pair["canonical"]["version"],
        "sources": [{ "tagId": north, "expectedVersion": north_merge["source"]["version"] }],
        "reason": "两区黄金会员是同一概念" } });
    let res = app.gql("north.manager", merge, input).await;
    let filed = &res.ok()["mergeDuplicateTags"][0];
    assert_eq!(filed["applied"], false);
    assert_eq!(filed["changeRequest"]["kind"], "tag.merge");
    assert_eq!(filed["changeRequest"]["scope"]["code"], "hq");
    assert_eq!(holders(&app, row_id(&north)).await, north_holders, "nothing moves before approval");

    let approve = "mutation($id: ID!) { approveChangeRequest(id: $id) { changeRequest { status } tag { id } } }";
    let res = app.gql("admin", approve, json!({ "id": filed["changeRequest"]["id"] })).await;
    assert_eq!(res.ok()["approveChangeRequest"]["changeRequest"]["status"], "APPROVED");
    let merged = tag::Entity::find_by_id(row_id(&north)).one(&app.db).await.unwrap().unwrap();
    assert_eq!(merged.status, TagStatus::Merged);
    assert_eq!(merged.merged_into_id, Some(row_id(&gold)));
    assert_eq!(holders(&app, row_id(&gold)).await, north_holders);
    // The pair is gone; the south tag now pairs with HQ's.
    let res = app.gql("admin", DUPLICATES, json!({ "u": app.unit_id("hq") })).await;
    let pairs = res.ok()["duplicateTags"].as_array().unwrap();
    assert!(pairs.iter().all(|p| p["a"]["tag"]["id"] != north.as_str() && p["b"]["tag"]["id"] != north.as_str()));
    let south_pair = gold_pair(res.ok(), &gold, &south);
    assert_eq!(south_pair["canonical"]["id"], gold.as_str());
}

async fn holders(app: &TestApp, tag_id: i64) -> BTreeSet<i64> {
    customer_tag::Entity::find()
        .filter(customer_tag::Column::TagId.eq(tag_id))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.customer_id)
        .collect()
}

const ALERTS: &str = "query($k: GovernanceAlertKind, $s: AlertStatus) { alerts(kind: $k, status: $s, first: 100) {
    edges { node { id kind status subject orgUnit { code } acknowledgedBy { login } resolvedBy { login } } } } }";
const REFRESH: &str = "mutation($u: ID!) { refreshAlerts(orgUnitId: $u) { raised resolved open } }";

fn alert_nodes(res: &Value) -> Vec<Value> {
    res["alerts"]["edges"].as_array().unwrap().iter().map(|e| e["node"].clone()).collect()
}

/// Alerts: a refresh raises each condition once; acknowledging and
/// resolving are audited conditional transitions; a store sees its own
/// alerts only and cannot touch HQ's.
async fn alerts_are_acknowledged_resolved_audited_and_scoped(app: TestApp) {
    // A lock of the store's group left past its expiry.
    let group = row_id(&app.group_id("门店专属").await);
    let lock = modification_lock::Entity::insert(modification_lock::ActiveModel {
        id: NotSet,
        group_id: Set(group),
        holder_staff_id: Set(app.staff("sz01.manager").id),
        reason: Set("活动".to_owned()),
        whole_group: Set(true),
        acquired_at: Set(Utc::now() - Duration::days(2)),
        expires_at: Set(Utc::now() - Duration::hours(1)),
        released_at: Set(None),
        released_by: Set(None),
        job_id: Set(None),
    })
    .exec(&app.db)
    .await
    .unwrap()
    .last_insert_id;
    let res = app.gql("admin", REFRESH, json!({ "u": app.unit_id("hq") })).await;
    let first = res.ok()["refreshAlerts"].clone();
    assert!(first["raised"].as_u64().unwrap() > 0, "{first}");
    let again = app.gql("admin", REFRESH, json!({ "u": app.unit_id("hq") })).await;
    assert_eq!(again.ok()["refreshAlerts"]["raised"], 0, "a second refresh raises nothing new");
    assert_eq!(again.ok()["refreshAlerts"]["open"], first["open"]);

    let res = app.gql("admin", ALERTS, json!({ "k": "ZOMBIE_TAG" })).await;
    let zombies = alert_nodes(res.ok());
    assert!(!zombies.is_empty());
    assert!(zombies.iter().all(|a| a["kind"] == "ZOMBIE_TAG" && a["orgUnit"]["code"] == "hq"));
    let alert = zombies[0]["id"].as_str().unwrap().to_owned();
    let stranded = alert_nodes(app.gql("sz01.manager", ALERTS, json!({ "k": "STRANDED_LOCK" })).await.ok());
    assert_eq!(stranded.len(), 1, "{stranded:?}");
    assert_eq!(stranded[0]["subject"], format!("lock:{lock}"));
    assert_eq!(stranded[0]["orgUnit"]["code"], "sz01");

    // A store: its own refresh, its own alerts; HQ's are unknown to it.
    let res = app.gql("sz01.manager", REFRESH, json!({ "u": app.unit_id("sz01") })).await;
    res.ok();
    let seen = alert_nodes(app.gql("sz01.manager", ALERTS, json!({})).await.ok());
    assert!(seen.iter().all(|a| a["orgUnit"]["code"] == "sz01"), "{seen:?}");
    let sales = alert_nodes(app.gql("sz01.sales", ALERTS, json!({})).await.ok());
    assert!(sales.iter().all(|a| a["orgUnit"]["code"] == "sz01"));
    let ack = "mutation($id: ID!) { acknowledgeAlert(id: $id) { status acknowledgedBy { login } } }";
    let resolve = "mutation($id: ID!) { resolveAlert(id: $id) { status resolvedBy { login } } }";
    let before = app.snapshot().await;
    assert_eq!(app.gql("sz01.manager", ack, json!({ "id": alert })).await.code(), "NOT_FOUND");
    if let Some(own) = seen.first() {
        // Sales read the store's alerts but may not manage them.
        assert_eq!(app.gql("sz01.sales", ack, json!({ "id": own["id"] })).await.code(), "FORBIDDEN");
    }
    assert_eq!(app.snapshot().await, before);

    let res = app.gql("admin", ack, json!({ "id": alert })).await;
    assert_eq!(res.ok()["acknowledgeAlert"]["status"], "ACKNOWLEDGED");
    assert_eq!(res.ok()["acknowledgeAlert"]["acknowledgedBy"]["login"], "admin");
    assert_eq!(app.gql("admin", ack, json!({ "id": alert })).await.code(), "CONFLICT");
    let res = app.gql("admin", resolve, json!({ "id": alert })).await;
    assert_eq!(res.ok()["resolveAlert"]["status"], "RESOLVED");
    assert_eq!(app.gql("admin", resolve, json!({ "id": alert })).await.code(), "CONFLICT");
    let id = row_id(&alert).to_string();
    let audited: Vec<String> = audit_log::Entity::find()
        .filter(audit_log::Column::ObjectKind.eq("governance_alert"))
        .filter(audit_log::Column::ObjectId.eq(id))
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert!(audited.contains(&"alert.acknowledge".to_owned()) && audited.contains(&"alert.resolve".to_owned()));
    // The condition still holds: the next refresh raises it again, once.
    let res = app.gql("admin", REFRESH, json!({ "u": app.unit_id("hq") })).await;
    assert_eq!(res.ok()["refreshAlerts"]["raised"], 1);
}

/// The first of last month, midnight UTC.
fn first_of_last_month(now: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if now.month() == 1 { (now.year() - 1, 12) } else { (now.year(), now.month() - 1) };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).unwrap()
}

async fn insert_event(app: &TestApp, customer: i64, tag: i64, op: TagOp, at: DateTime<Utc>) {
    tag_event::Entity::insert(tag_event::ActiveModel {
        seq: NotSet,
        customer_id: Set(customer),
        tag_id: Set(tag),
        op: Set(op),
        source: Set(TagSource::Manual),
        source_ref: Set(None),
        actor_staff_id: Set(None),
        occurred_at: Set(at),
    })
    .exec(&app.db)
    .await
    .unwrap();
}

/// A customer's tags on the first of last month are exactly those its
/// events up to that instant leave (an event at the instant included);
/// adds and removes since do not count. A segment's count as of that date
/// equals replaying every holder's events by hand.
async fn tags_at_the_first_of_last_month_are_exact(app: TestApp) {
    let at = first_of_last_month(Utc::now());
    let customer = row_id(&app.customers_of("sz01").await[0]);
    let a = row_id(&app.tag_id("品类偏好", "童装").await);
    let b = row_id(&app.tag_id("品类偏好", "美妆护肤").await);
    let c = row_id(&app.tag_id("活动", "询价").await);
    let d = row_id(&app.tag_id("资产状况", "有车一族").await);
    let service = row_id(&app.tag_id("服务需求", "投诉记录").await);
    // Whatever the seed gave this customer before, these decide the four tags.
    for tag in [a, b, c, d, service] {
        insert_event(&app, customer, tag, TagOp::Remove, at - Duration::days(20)).await;
    }
    insert_event(&app, customer, a, TagOp::Add, at - Duration::days(10)).await;
    insert_event(&app, customer, b, TagOp::Add, at - Duration::days(5)).await;
    insert_event(&app, customer, service, TagOp::Add, at - Duration::days(5)).await;
    insert_event(&app, customer, a, TagOp::Remove, at - Duration::days(1)).await;
    insert_event(&app, customer, d, TagOp::Add, at).await;
    insert_event(&app, customer, c, TagOp::Add, at + Duration::days(1)).await;
    insert_event(&app, customer, b, TagOp::Remove, at + Duration::days(2)).await;
    // And today, through the API.
    let cid = tagbase::domain::CustomerId(customer).to_string();
    app.gql(
        "admin",
        "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { applied } }",
        json!({ "c": [cid], "t": [tagbase::domain::TagId(a).to_string()] }),
    )
    .await
    .ok();

    // Expected: every event of this customer up to `at`, replayed by hand.
    let mut held: BTreeMap<i64, bool> = BTreeMap::new();
    let mut events =
        tag_event::Entity::find().filter(tag_event::Column::CustomerId.eq(customer)).all(&app.db).await.unwrap();
    events.sort_by_key(|e| e.seq);
    for e in events.iter().filter(|e| e.occurred_at <= at) {
        held.insert(e.tag_id, e.op == TagOp::Add);
    }
    let expected: BTreeSet<i64> = held.iter().filter(|(_, h)| **h).map(|(t, _)| *t).collect();
    assert!(expected.contains(&b) && expected.contains(&d) && !expected.contains(&a) && !expected.contains(&c));

    let q = "query($id: ID!, $at: DateTime!) { customer(id: $id) { tagsAt(at: $at) { tag { id } taggedAt source } } }";
    let res = app.gql("admin", q, json!({ "id": cid, "at": at.to_rfc3339() })).await;
    let got: BTreeSet<i64> = res.ok()["customer"]["tagsAt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| row_id(t["tag"]["id"].as_str().unwrap()))
        .collect();
    assert_eq!(got, expected);
    // The salesperson does not see the service tag it held then.
    let res = app.gql("sz01.sales", q, json!({ "id": cid, "at": at.to_rfc3339() })).await;
    let seen: BTreeSet<i64> = res.ok()["customer"]["tagsAt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| row_id(t["tag"]["id"].as_str().unwrap()))
        .collect();
    assert!(expected.contains(&service) && !seen.contains(&service));
    assert_eq!(seen, expected.iter().copied().filter(|t| *t != service).collect());
    // Another store's salesperson: unknown customer.
    assert_eq!(app.gql("bj01.sales", q, json!({ "id": cid, "at": at.to_rfc3339() })).await.code(), "NOT_FOUND");

    // A segment as of the date: holders of 美妆护肤 then, by hand.
    let mut by_customer: BTreeMap<i64, bool> = BTreeMap::new();
    let mut all = tag_event::Entity::find().filter(tag_event::Column::TagId.eq(b)).all(&app.db).await.unwrap();
    all.sort_by_key(|e| e.seq);
    for e in all.iter().filter(|e| e.occurred_at <= at) {
        by_customer.insert(e.customer_id, e.op == TagOp::Add);
    }
    let then = by_customer.values().filter(|h| **h).count() as u64;
    let preview = "query($s: SegmentInput!, $at: DateTime) { segmentPreview(segment: $s, asOf: $at) { count } }";
    let seg = json!({ "tag": tagbase::domain::TagId(b).to_string() });
    let res = app.gql("admin", preview, json!({ "s": seg, "at": at.to_rfc3339() })).await;
    assert_eq!(res.ok()["segmentPreview"]["count"], then);
    let now = app.gql("admin", preview, json!({ "s": seg, "at": null })).await;
    let current = holders(&app, b).await.len() as u64;
    assert_eq!(now.ok()["segmentPreview"]["count"], current);
}

const PAGED_USAGE: &str = "query($u: ID!, $after: String, $o: TagUsageOrderInput) {
    tagUsage(orgUnitId: $u, first: 7, after: $after, orderBy: $o) {
    edges { node { tag { id } holders scopeCustomers lastTaggedAt taggedLast30Days taggedLast90Days zombie } }
    pageInfo { hasNextPage endCursor } } }";

/// Every row of `tagUsage` at a unit, page by page (7 a page).
async fn all_pages(app: &TestApp, login: &str, unit: &str, order: Value) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut after = Value::Null;
    loop {
        let res = app.gql(login, PAGED_USAGE, json!({ "u": app.unit_id(unit), "after": after, "o": order })).await;
        let page = &res.ok()["tagUsage"];
        rows.extend(page["edges"].as_array().unwrap().iter().map(|e| e["node"].clone()));
        if page["pageInfo"]["hasNextPage"] != true {
            return rows;
        }
        after = page["pageInfo"]["endCursor"].clone();
    }
}

/// Recency, holders and zombies over a random event log equal a
/// brute-force count, for callers with the whole base (HQ's admin), a
/// region, a subtree of HQ and one store (where classes hide some tags);
/// with random thresholds; read whole, page by page in holder order (each
/// page's recency asked for its rows only), in recency order, as the
/// zombie report and as its filter; and with the holders counted by SQL
/// (a segment index that is not ready). Events sit on either side of the
/// 30- and 90-day marks, and removed taggings count as taggings. Half the
/// log is folded into the daily roll-up before the other half is written,
/// so the whole-base answers read the folded days, the days the marks
/// cut and the events after the fold.
async fn usage_and_zombies_equal_brute_force_over_a_random_log(app: TestApp) {
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;
    use tagbase::authz::visibility::on_customer_visible;
    use tagbase::domain::{OrgUnitId, PageArgs, PageSize};
    use tagbase::service::reports::{usage, zombie};

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261203);
    let now = Utc::now();
    // Tags a year old, so that an idle tag is idle by its events.
    tag::Entity::update_many()
        .col_expr(tag::Column::CreatedAt, sea_orm::sea_query::Expr::value(now - Duration::days(365)))
        .exec(&app.db)
        .await
        .unwrap();
    let tags: Vec<tag::Model> =
        tag::Entity::find().filter(tag::Column::Status.eq(TagStatus::Active)).all(&app.db).await.unwrap();
    let customers: Vec<customer::Model> = customer::Entity::find().all(&app.db).await.unwrap();
    let held: HashSet<(i64, i64)> = customer_tag::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.customer_id, r.tag_id))
        .collect();
    let hour = Duration::hours(1);
    for i in 0..400 {
        // Half the log folded into the daily roll-up, half read after it.
        if i == 200 {
            tagbase::service::reports::rollup::fold(&app.db).await.unwrap();
        }
        let c = customers[rng.random_range(0..customers.len())].id;
        let t = tags[rng.random_range(0..tags.len())].id;
        let side = if rng.random_bool(0.5) { hour } else { -hour };
        let at = match rng.random_range(0..8) {
            0 => now - Duration::days(30) + side,
            1 => now - Duration::days(90) + side,
            _ => now - Duration::minutes(rng.random_range(90..200 * 24 * 60)),
        };
        // The log stays true to the assignments (the index follows it):
        // a holder is given the tag again; anybody else is given it and
        // has it taken away.
        insert_event(&app, c, t, TagOp::Add, at).await;
        if !held.contains(&(c, t)) {
            insert_event(&app, c, t, TagOp::Remove, at + Duration::minutes(1)).await;
        }
    }
    let share = rng.random_range(5..60) as f64 / 100.0;
    let idle = rng.random_range(20..120);
    let set = "mutation($u: ID!, $s: Float, $d: Int) {
        setReportSettings(input: { orgUnitId: $u, zombieShare: $s, zombieIdleDays: $d }) { zombieShare } }";
    app.gql("admin", set, json!({ "u": app.unit_id("hq"), "s": share, "d": idle })).await.ok();

    let assignments = customer_tag::Entity::find().all(&app.db).await.unwrap();
    let events = tag_event::Entity::find().all(&app.db).await.unwrap();
    let class_of: HashMap<i64, String> =
        tag_group::Entity::find().all(&app.db).await.unwrap().into_iter().map(|g| (g.id, g.visibility_class)).collect();
    let tag_class: HashMap<i64, String> =
        tags.iter().filter_map(|t| Some((t.id, class_of.get(&t.group_id?)?.clone()))).collect();
    let created: HashMap<i64, DateTime<Utc>> = tags.iter().map(|t| (t.id, t.created_at)).collect();
    let state = &app.app.state;
    let unready = tagbase::segment::SegmentIndex::new();
    let cases: &[(&str, &str, &[&str])] = &[
        ("admin", "hq", &["hq", "north", "bj01", "tj01", "south", "sz01", "gz01"]),
        ("admin", "north", &["north", "bj01", "tj01"]),
        ("admin", "south", &["south", "sz01", "gz01"]),
        ("south.manager", "south", &["south", "sz01", "gz01"]),
        ("sz01.sales", "sz01", &["sz01"]),
    ];
    let mut zombies_seen = (0, 0);
    let mut duplicates_seen = 0;
    for (login, unit, units) in cases {
        let principal = app.principal_of(login).await;
        let units: HashSet<i64> = units.iter().map(|u| app.unit(u)).collect();
        let unit_of: HashMap<i64, i64> =
            customers.iter().filter(|c| units.contains(&c.org_unit_id)).map(|c| (c.id, c.org_unit_id)).collect();
        let seen = |customer: i64, tag: i64| {
            unit_of
                .get(&customer)
                .is_some_and(|u| on_customer_visible(&principal, None, tag_class.get(&tag).map(String::as_str), *u))
        };
        let asked = Utc::now();
        let mut brute: HashMap<i64, Brute> = HashMap::new();
        for a in assignments.iter().filter(|a| seen(a.customer_id, a.tag_id)) {
            brute.entry(a.tag_id).or_default().holders += 1;
        }
        for e in events.iter().filter(|e| e.op == TagOp::Add && seen(e.customer_id, e.tag_id)) {
            let b = brute.entry(e.tag_id).or_default();
            b.last = b.last.max(Some(e.occurred_at));
            b.last_30 += u64::from(e.occurred_at >= asked - Duration::days(30));
            b.adds += u64::from(e.occurred_at >= asked - Duration::days(90));
        }
        let total = unit_of.len() as u64;
        let is_zombie = |id: i64| {
            let b = brute.get(&id).cloned().unwrap_or_default();
            let since = b.last.unwrap_or(created[&id]).max(created[&id]);
            let held = if total == 0 { 0.0 } else { b.holders as f64 / total as f64 };
            held < share || since < asked - Duration::days(idle)
        };
        let check = |row: &Value, how: &str| {
            let id = row_id(row["tag"]["id"].as_str().unwrap());
            let b = brute.get(&id).cloned().unwrap_or_default();
            let at = format!("{login} at {unit}, {how}: {row}");
            assert_eq!(row["holders"], b.holders, "{at}");
            assert_eq!(row["scopeCustomers"], total, "{at}");
            assert_eq!(row["taggedLast30Days"], b.last_30, "{at}");
            assert_eq!(row["taggedLast90Days"], b.adds, "{at}");
            let last = row["lastTaggedAt"].as_str().map(|t| DateTime::parse_from_rfc3339(t).unwrap().timestamp());
            assert_eq!(last, b.last.map(|t| t.timestamp()), "{at}");
            assert_eq!(row["zombie"], is_zombie(id), "{at}");
            id
        };
        let whole = usage_rows(app.gql(login, USAGE, json!({ "u": app.unit_id(unit) })).await.ok());
        assert!(!whole.is_empty(), "{login} at {unit}");
        let ids: BTreeSet<i64> = whole.iter().map(|r| check(r, "whole")).collect();
        let expected: BTreeSet<i64> = ids.iter().copied().filter(|t| is_zombie(*t)).collect();
        zombies_seen.0 += expected.len();
        zombies_seen.1 += ids.len() - expected.len();
        for order in [
            json!({ "field": "HOLDERS" }),
            json!({ "field": "NAME", "direction": "ASC" }),
            json!({ "field": "LAST_TAGGED" }),
        ] {
            let paged = all_pages(&app, login, unit, order.clone()).await;
            let paged: BTreeSet<i64> = paged.iter().map(|r| check(r, &format!("paged by {order}"))).collect();
            assert_eq!(paged, ids, "{login} at {unit} by {order}");
        }
        let res = app.gql(login, ZOMBIES, json!({ "u": app.unit_id(unit) })).await;
        let found: BTreeSet<i64> = res.ok()["zombieTags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|z| row_id(z["tag"]["id"].as_str().unwrap()))
            .collect();
        assert_eq!(found, expected, "{login} at {unit}: zombie report");
        for z in [true, false] {
            let res = app.gql(login, USAGE, json!({ "u": app.unit_id(unit), "z": z })).await;
            let filtered: BTreeSet<i64> = usage_rows(res.ok()).iter().map(|r| check(r, "filtered")).collect();
            let want: BTreeSet<i64> = ids.iter().copied().filter(|t| expected.contains(t) == z).collect();
            assert_eq!(filtered, want, "{login} at {unit}: filter zombie {z}");
        }
        // Holders by SQL, as while the index builds.
        let page = PageArgs::forward(PageSize::parse(Some(500), &state.settings.limits).unwrap());
        let unit_id = OrgUnitId(app.unit(unit));
        let by_sql =
            usage::tag_usage(&state.db, &unready, &principal, unit_id, Default::default(), Default::default(), &page)
                .await
                .unwrap();
        assert_eq!(by_sql.items.len(), ids.len(), "{login} at {unit}: by SQL");
        for (_, u) in &by_sql.items {
            let b = brute.get(&u.tag.id).cloned().unwrap_or_default();
            assert_eq!((u.holders, u.tagged_last_30_days, u.tagged_last_90_days), (b.holders, b.last_30, b.adds));
            assert_eq!(u.zombie, is_zombie(u.tag.id), "{login} at {unit}: tag {} by SQL", u.tag.id);
        }
        let by_sql: BTreeSet<i64> = zombie::zombie_tags(&state.db, &unready, &principal, unit_id)
            .await
            .unwrap()
            .iter()
            .map(|z| z.tag.id)
            .collect();
        assert_eq!(by_sql, expected, "{login} at {unit}: zombie report by SQL");
        // The tags of duplicate pairs carry their usage too (asked for theirs only).
        let pairs = "query($u: ID!) { duplicateTags(orgUnitId: $u) {
            a { tag { id } holders scopeCustomers lastTaggedAt taggedLast30Days taggedLast90Days zombie }
            b { tag { id } holders scopeCustomers lastTaggedAt taggedLast30Days taggedLast90Days zombie } } }";
        let res = app.gql(login, pairs, json!({ "u": app.unit_id(unit) })).await;
        for pair in res.ok()["duplicateTags"].as_array().unwrap() {
            check(&pair["a"], "duplicate pair");
            check(&pair["b"], "duplicate pair");
            duplicates_seen += 1;
        }
    }
    assert!(duplicates_seen > 0, "the demo has duplicate pairs");
    assert!(zombies_seen.0 > 0 && zombies_seen.1 > 0, "some zombies and some live tags: {zombies_seen:?}");
}

/// The daily roll-up holds, per tag and UTC day, exactly the ADD events of
/// the log, however the log is split between folds: a second fold with
/// nothing new writes nothing, and on PostgreSQL an event whose
/// transaction commits after a fold that began later is folded by the
/// next fold, not skipped (its sequence number is below what was folded).
async fn the_roll_up_folds_every_add_once(app: TestApp) {
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
    use tagbase::service::reports::rollup::fold;

    let tags = hq_tags(&app).await;
    let customers: Vec<customer::Model> = customer::Entity::find().all(&app.db).await.unwrap();
    let now = Utc::now();
    let mut n = 0_i64;
    let mut event = |op: TagOp| {
        n += 1;
        let at = now - Duration::minutes(n * 977) + Duration::seconds(n % 7);
        (customers[(n as usize * 7) % customers.len()].id, tags[(n as usize * 3) % tags.len()].id, op, at)
    };
    for i in 0..60 {
        let (c, t, op, at) = event(if i % 5 == 0 { TagOp::Remove } else { TagOp::Add });
        insert_event(&app, c, t, op, at).await;
    }
    fold(&app.db).await.unwrap();
    assert_eq!(fold(&app.db).await.unwrap(), 0, "nothing new, nothing folded");
    // A writer that drew its sequence number first and commits last.
    let late = app.db.begin().await.unwrap();
    let (c, t, op, at) = event(TagOp::Add);
    tag_event::Entity::insert(tag_event::ActiveModel {
        seq: NotSet,
        customer_id: Set(c),
        tag_id: Set(t),
        op: Set(op),
        source: Set(TagSource::Manual),
        source_ref: Set(None),
        actor_staff_id: Set(None),
        occurred_at: Set(at),
    })
    .exec(&late)
    .await
    .unwrap();
    if app.db.get_database_backend() == DbBackend::Postgres {
        // Others write and fold while it is open.
        for _ in 0..10 {
            let (c, t, op, at) = event(TagOp::Add);
            insert_event(&app, c, t, op, at).await;
        }
        fold(&app.db).await.unwrap();
    }
    late.commit().await.unwrap();
    for _ in 0..10 {
        let (c, t, op, at) = event(TagOp::Add);
        insert_event(&app, c, t, op, at).await;
    }
    fold(&app.db).await.unwrap();

    let mut want: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for e in tag_event::Entity::find().filter(tag_event::Column::Op.eq(TagOp::Add)).all(&app.db).await.unwrap() {
        *want.entry((e.tag_id, e.occurred_at.timestamp().div_euclid(86_400))).or_default() += 1;
    }
    let backend = app.db.get_database_backend();
    let sql = if backend == DbBackend::Postgres {
        "SELECT tag_id, CAST(day AS BIGINT) AS day, adds FROM tag_add_day"
    } else {
        "SELECT tag_id, day, adds FROM tag_add_day"
    };
    let rows = app.db.query_all_raw(Statement::from_string(backend, sql)).await.unwrap();
    let got: BTreeMap<(i64, i64), i64> = rows
        .iter()
        .map(|r| {
            let key = (r.try_get::<i64>("", "tag_id").unwrap(), r.try_get::<i64>("", "day").unwrap());
            (key, r.try_get::<i64>("", "adds").unwrap())
        })
        .collect();
    assert!(want.len() > 20, "events over many days: {}", want.len());
    assert_eq!(got, want);
}

crate::on_both_databases!(
    the_roll_up_folds_every_add_once,
    usage_counts_equal_a_brute_force_count,
    a_salesperson_sees_only_their_scope,
    zombie_tags_at_ten_percent_are_the_brute_force_ones,
    zombie_tags_are_archived_through_library_edits,
    gold_members_of_two_regions_are_found_and_merged_through_a_request,
    alerts_are_acknowledged_resolved_audited_and_scoped,
    tags_at_the_first_of_last_month_are_exact,
    usage_and_zombies_equal_brute_force_over_a_random_log,
);
