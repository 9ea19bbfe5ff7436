//! Everyday screens from the in-memory index: a customer list's
//! `totalCount`, its pages, its ids (exports) and `Tag.customerCount`
//! answer exactly as the plain SQL path does, for random filters (org
//! unit, tags, lifecycle stage, spend, segment, search) and every kind of
//! caller (HQ, a region, a store, customer service, class visibility that
//! differs between a caller's units). The streamed CSV export gives what
//! the in-memory one gives, with the row count up front.

use std::collections::BTreeSet;

use entity::{customer, tag, tag_group};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sea_orm::EntityTrait;
use serde_json::json;
use tagbase::authz::Principal;
use tagbase::config::Limits;
use tagbase::domain::{OrgUnitId, PageArgs, TagId};
use tagbase::service::customer::{self as customer_service, CustomerFilter, CustomerOrder, SegmentFilter, SortField};
use tagbase::service::{listing, segment as segment_service, tagging};

use crate::helpers::TestApp;
use crate::{on_both_databases, on_both_databases_with};

const TAG: &str = "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }";
const CREATE: &str = "mutation($i: CreateCustomerInput!) { createCustomer(input: $i) { customer { id } } }";

/// Segments the random filters draw from (some name fields a caller may
/// not read: both paths must refuse them alike).
const SEGMENTS: &[&str] = &[
    "gender = FEMALE",
    "NOT city = \"北京\"",
    "spend >= 500000",
    "city = \"深圳\" OR channel = \"抖音\"",
    "orders <= 3 AND NOT gender = MALE",
];

const LOGINS: &[&str] = &["admin", "south.manager", "sz01.sales", "sz01.service", "hq.marketing", "bj01.sales"];

fn pick<T: Clone>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())].clone()
}

/// More customers and tag holdings than the demo's, written through the
/// API (so the index follows them at once), and a second role for
/// bj01.sales (customer service in gz01: value tags count in bj01 only).
async fn enlarge(app: &TestApp, rng: &mut ChaCha8Rng) -> Vec<i64> {
    app.bj01_sales_also_serves_gz01().await;
    for store in ["sz01", "bj01", "gz01"] {
        for i in 0..4 {
            let input = json!({ "orgUnitId": app.unit_id(store), "name": format!("加{store}{i}"),
                                "gender": pick(rng, &["FEMALE", "MALE", "UNKNOWN"]), "city": pick(rng, &["深圳", "北京"]) });
            app.gql("admin", CREATE, json!({ "i": input })).await.ok();
        }
    }
    let tags: Vec<i64> = tag::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.group_id.is_some())
        .map(|t| t.id)
        .collect();
    let ids: Vec<i64> = customer::Entity::find().all(&app.db).await.unwrap().into_iter().map(|c| c.id).collect();
    for _ in 0..25 {
        let who: BTreeSet<String> = (0..4).map(|_| pick(rng, &ids).to_string()).collect();
        // Some are refused (exclusive groups, approvals): fine.
        app.gql("admin", TAG, json!({ "c": who, "t": [pick(rng, &tags).to_string()] })).await;
    }
    tags
}

/// A random customer filter for `principal`: any mix of org unit, tags,
/// lifecycle stage, spend range, segment and (rarely) search text.
async fn random_filter(
    app: &TestApp,
    rng: &mut ChaCha8Rng,
    principal: &Principal,
    tags: &[i64],
    lifecycle: &[i64],
) -> CustomerFilter {
    let state = &app.app.state;
    let units = ["hq", "south", "sz01", "bj01", "gz01"];
    let mut filter = CustomerFilter::default();
    if rng.random_bool(0.3) {
        filter.org_unit = Some(OrgUnitId(app.unit(pick(rng, &units))));
    }
    for _ in 0..rng.random_range(0..3) {
        filter.has_all_tags.push(TagId(pick(rng, tags)));
    }
    if rng.random_bool(0.4) {
        for _ in 0..rng.random_range(1..4) {
            filter.has_any_tags.push(TagId(pick(rng, tags)));
        }
    }
    if rng.random_bool(0.25) {
        // Sometimes a tag that is no lifecycle stage: refused both ways.
        let stage = if rng.random_bool(0.8) { pick(rng, lifecycle) } else { pick(rng, tags) };
        filter.lifecycle_stage = Some(TagId(stage));
    }
    if rng.random_bool(0.2) {
        filter.total_spend_min = Some(rng.random_range(0..300_000));
    }
    if rng.random_bool(0.15) {
        filter.total_spend_max = Some(rng.random_range(0..2_000_000));
    }
    if rng.random_bool(0.08) {
        filter.search = Some(pick(rng, &["加", "sz", "1"]).to_owned());
    }
    if rng.random_bool(0.5) {
        let offset = state.settings.utc_offset;
        let expr = segment_service::parse_text(pick(rng, SEGMENTS), offset).unwrap();
        if let Ok(resolved) = segment_service::resolve(&state.db, principal, &state.settings.limits, expr).await {
            filter.segment = Some(SegmentFilter { resolved, offset });
        }
    }
    filter
}

/// Every page of a filter's customers, 5 a page, from the index path or
/// the SQL one (ids and cursors), or the refusal's code.
async fn all_pages(
    app: &TestApp,
    principal: &Principal,
    filter: &CustomerFilter,
    order: CustomerOrder,
    from_index: bool,
) -> Result<Vec<(String, i64)>, String> {
    let state = &app.app.state;
    let mut cursor: Option<String> = None;
    let mut out = Vec::new();
    for _ in 0..1_000 {
        let args = PageArgs::parse(Some(5), cursor.clone(), None, None, &state.settings.limits).unwrap();
        let page = if from_index {
            listing::list_members(&state.db, &state.index, principal, filter, order, &args).await
        } else {
            customer_service::list_in_scope(&state.db, principal, filter, order, &args).await
        }
        .map_err(|e| e.code().to_string())?;
        out.extend(page.items.iter().map(|(cursor, c)| (cursor.clone(), c.id)));
        cursor = page.end_cursor();
        if !page.has_next_page {
            return Ok(out);
        }
    }
    panic!("pages never end");
}

async fn lifecycle_tags(app: &TestApp) -> Vec<i64> {
    let groups: BTreeSet<i64> = tag_group::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .filter(|g| g.category == entity::enums::TagCategory::Lifecycle)
        .map(|g| g.id)
        .collect();
    tag::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.group_id.is_some_and(|g| groups.contains(&g)))
        .map(|t| t.id)
        .collect()
}

async fn counts_ids_and_pages_from_the_index_match_sql_for_random_filters(app: TestApp) {
    let mut rng = ChaCha8Rng::seed_from_u64(20261201);
    let tags = enlarge(&app, &mut rng).await;
    let lifecycle = lifecycle_tags(&app).await;
    assert!(!lifecycle.is_empty(), "the demo has lifecycle stages");
    let state = &app.app.state;
    assert!(state.index.is_ready());
    let (mut answered, mut refused, mut sizes) = (0, 0, BTreeSet::new());
    for login in LOGINS {
        let principal = app.principal_of(login).await;
        for round in 0..30 {
            let filter = random_filter(&app, &mut rng, &principal, &tags, &lifecycle).await;
            let by_sql = customer_service::count_in_scope(&state.db, &principal, &filter).await;
            let by_index = listing::count_members(&state.db, &state.index, &principal, &filter).await;
            let (by_sql, by_index) = (by_sql.map_err(|e| e.code()), by_index.map_err(|e| e.code()));
            assert_eq!(by_index, by_sql, "{login} round {round}: totalCount of {filter:?}");
            let Ok(count) = by_sql else {
                refused += 1;
                continue;
            };
            sizes.insert(count);
            // The index answers every filter without a search text.
            let members = listing::index_members(&state.db, &state.index, &principal, &filter).await.unwrap();
            assert_eq!(members.is_some(), filter.search.is_none(), "{login}: the index answered {filter:?}");
            answered += u32::from(members.is_some());
            let sql_ids = customer_service::ids_in_scope(&state.db, &principal, &filter).await.unwrap();
            let index_ids: Vec<i64> = listing::member_ids(&state.db, &state.index, &principal, &filter)
                .await
                .unwrap()
                .iter()
                .map(i64::from)
                .collect();
            assert_eq!(index_ids, sql_ids, "{login} round {round}: ids of {filter:?}");
            let field = pick(&mut rng, &[SortField::AddedAt, SortField::TotalSpend, SortField::Name]);
            let order = CustomerOrder { field, descending: rng.random_bool(0.5) };
            assert_eq!(
                all_pages(&app, &principal, &filter, order, true).await,
                all_pages(&app, &principal, &filter, order, false).await,
                "{login} round {round}: pages of {filter:?} in {order:?}"
            );
        }
    }
    assert!(answered > 60, "only {answered} filters were answered by the index");
    assert!(refused > 3, "refusals were compared too ({refused})");
    assert!(sizes.len() > 8, "the filters select different sets: {sizes:?}");
}

async fn the_index_follows_writes_and_falls_back_to_sql_while_it_builds(app: TestApp) {
    let state = &app.app.state;
    let principal = app.principal_of("sz01.sales").await;
    let tag = app.tag_id("活动", "试驾预约").await;
    let filter = CustomerFilter { has_all_tags: vec![TagId(crate::helpers::row_id(&tag))], ..Default::default() };
    let count = || listing::count_members(&state.db, &state.index, &principal, &filter);
    let before = count().await.unwrap();
    let added = app.gql("sz01.sales", TAG, json!({ "c": app.customers_of("sz01").await, "t": [tag] })).await;
    let added = added.ok()["tagCustomers"]["added"].as_u64().unwrap();
    assert!(added > 0);
    assert_eq!(count().await.unwrap(), before + added, "the caller's own write counts at once");
    // The GraphQL totalCount is that count.
    let q = "query($t: [ID!]) { customers(filter: { hasAllTags: $t }) { totalCount } }";
    let res = app.gql("sz01.sales", q, json!({ "t": [tag] })).await;
    assert_eq!(res.ok()["customers"]["totalCount"].as_u64(), Some(before + added));
    // An instance whose index is still building answers by SQL, alike.
    let other = app.instance_with(|_| {}).await;
    assert!(!other.state.index.is_ready());
    assert!(listing::index_members(&state.db, &other.state.index, &principal, &filter).await.unwrap().is_none());
    let res = app.gql_on(&other, "sz01.sales", q, json!({ "t": [tag] })).await;
    assert_eq!(res.ok()["customers"]["totalCount"].as_u64(), Some(before + added));
}

async fn tag_customer_counts_from_the_index_match_sql_for_every_caller(app: TestApp) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    enlarge(&app, &mut rng).await;
    // An archived tag counts nobody.
    let archived = tag::Entity::find().all(&app.db).await.unwrap().into_iter().find(|t| t.group_id.is_some()).unwrap();
    let mut row: tag::ActiveModel = archived.clone().into();
    row.status = sea_orm::ActiveValue::Set(entity::enums::TagStatus::Archived);
    sea_orm::ActiveModelTrait::update(row, &app.db).await.unwrap();
    let state = &app.app.state;
    let all_tags = tag::Entity::find().all(&app.db).await.unwrap();
    let groups: std::collections::HashMap<i64, tag_group::Model> =
        tag_group::Entity::find().all(&app.db).await.unwrap().into_iter().map(|g| (g.id, g)).collect();
    let ids: Vec<i64> = all_tags.iter().map(|t| t.id).collect();
    let mut nonzero = 0;
    for login in LOGINS {
        let principal = app.principal_of(login).await;
        let by_sql = tagging::holder_counts(&state.db, &principal, &ids).await.unwrap();
        for t in &all_tags {
            let group = t.group_id.and_then(|g| groups.get(&g));
            let by_index = listing::holder_count(&state.index, &principal, t, group);
            assert_eq!(by_index, Some(by_sql[&t.id]), "{login}: tag {} ({})", t.id, t.name);
            nonzero += usize::from(by_sql[&t.id] > 0);
        }
        assert_eq!(by_sql[&archived.id], 0);
    }
    assert!(nonzero > 20, "counts were compared on held tags ({nonzero})");
    // Through the API: a store sees its own customers' count of an HQ tag.
    let tag = app.tag_id("活动", "试驾预约").await;
    let q = "query($id: ID!) { node(id: $id) { ... on Tag { customerCount } } }";
    for login in ["admin", "sz01.sales"] {
        let principal = app.principal_of(login).await;
        let sql = tagging::holder_counts(&state.db, &principal, &[crate::helpers::row_id(&tag)]).await.unwrap();
        let res = app.gql(login, q, json!({ "id": tag })).await;
        assert_eq!(res.ok()["node"]["customerCount"].as_u64(), sql.values().next().copied(), "{login}");
    }
}

async fn the_streamed_export_gives_the_in_memory_csv_with_its_row_count_up_front(app: TestApp) {
    let token = app.token("sz01.service");
    let q = "query($s: SegmentInput!) { segmentPreview(segment: $s) { count csv } }";
    let segment = "NOT city = \"北京\"";
    let res = app.gql("sz01.service", q, json!({ "s": { "text": segment } })).await;
    let count = res.ok()["segmentPreview"]["count"].as_u64().unwrap();
    let csv = res.ok()["segmentPreview"]["csv"].as_str().unwrap().to_owned();
    assert!(count > 0);
    let running = crate::http::start(app).await;
    let url = format!("{}/export/customers.csv", running.base);
    let res = running.client.get(&url).query(&[("segment", segment)]).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    assert_eq!(res.headers()["x-total-rows"].to_str().unwrap(), count.to_string());
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let body = res.text().await.unwrap();
    assert_eq!(body, csv, "the streamed export is the in-memory one");
    assert_eq!(body.lines().count() as u64, count + 1, "a header and a line a row");
    // With an org unit: fewer rows, each of that unit's subtree.
    let res = running
        .client
        .get(&url)
        .query(&[("orgUnitId", running.app.unit_id("sz01"))])
        .bearer_auth(running.app.token("admin"))
        .send()
        .await
        .unwrap();
    let rows: u64 = res.headers()["x-total-rows"].to_str().unwrap().parse().unwrap();
    let body = res.text().await.unwrap();
    assert!(rows > 0 && body.lines().skip(1).all(|l| l.contains("sz01")), "{body}");
    // Every export is audited, with its rows.
    let audits = entity::audit_log::Entity::find().all(&running.app.db).await.unwrap();
    let exports: Vec<_> = audits.iter().filter(|a| a.action == "customer.export").collect();
    assert_eq!(exports.len(), 3);
    // Refusals before the first byte: a code and a status.
    let res = running.client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::UNAUTHORIZED);
    let res = running.client.get(&url).query(&[("segment", "city = ")]).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::BAD_REQUEST);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(crate::http::code(&body), "VALIDATION");
    let res = running.client.get(&url).query(&[("segmentId", "999999")]).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::NOT_FOUND);
}

async fn a_streamed_export_above_its_maximum_is_refused_and_not_audited(app: TestApp) {
    let token = app.token("admin");
    let running = crate::http::start(app).await;
    let url = format!("{}/export/customers.csv", running.base);
    let res = running.client.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(crate::http::code(&body), "LIMIT_EXCEEDED");
    let audits = entity::audit_log::Entity::find().all(&running.app.db).await.unwrap();
    assert!(audits.iter().all(|a| a.action != "customer.export"));
}

on_both_databases!(
    counts_ids_and_pages_from_the_index_match_sql_for_random_filters,
    the_index_follows_writes_and_falls_back_to_sql_while_it_builds,
    tag_customer_counts_from_the_index_match_sql_for_every_caller,
    the_streamed_export_gives_the_in_memory_csv_with_its_row_count_up_front
);

on_both_databases_with!(
    a_streamed_export_above_its_maximum_is_refused_and_not_audited =>
        Limits { max_streamed_export_rows: 3, ..Limits::default() }
);
