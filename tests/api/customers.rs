//! Customers: scoping, paging, filters, creation and versioned updates.

use std::collections::HashSet;

use entity::audit_log;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

use crate::helpers::{TEST_CUSTOMERS_PER_STORE, TestApp, no_vars};
use crate::{on_both_databases, on_both_databases_with};

const COUNT: &str = "query($f: CustomerFilterInput) { customers(filter: $f) { totalCount } }";
const ONE: &str = "query($id: ID!) { customer(id: $id) { id name phone orgUnit { code } version } }";

async fn total(app: &TestApp, login: &str, filter: Value) -> u64 {
    app.gql(login, COUNT, json!({ "f": filter })).await.ok()["customers"]["totalCount"].as_u64().unwrap()
}

async fn store_sales_see_only_their_store(app: TestApp) {
    let per_store = TEST_CUSTOMERS_PER_STORE as u64;
    assert_eq!(total(&app, "sz01.sales", json!({})).await, per_store);
    assert_eq!(total(&app, "bj01.sales", json!({})).await, per_store);
    let other = &app.customers_of("bj01").await[0];
    let res = app.gql("sz01.sales", ONE, json!({ "id": other })).await;
    assert_eq!(res.code(), "NOT_FOUND");
    assert!(res.0["data"].is_null());
}

async fn region_managers_see_their_region_only(app: TestApp) {
    let per_store = TEST_CUSTOMERS_PER_STORE as u64;
    assert_eq!(total(&app, "south.manager", json!({})).await, 2 * per_store);
    assert_eq!(total(&app, "north.manager", json!({})).await, 2 * per_store);
    assert_eq!(total(&app, "admin", json!({})).await, 4 * per_store);
    assert_eq!(total(&app, "hq.auditor", json!({})).await, 4 * per_store);
    let south = app.gql("south.manager", COUNT, json!({ "f": { "orgUnitId": app.unit_id("sz01") } })).await;
    assert_eq!(south.ok()["customers"]["totalCount"], per_store);
    // Asking for another region's unit is NOT_FOUND, not an empty list.
    let north = app.gql("south.manager", COUNT, json!({ "f": { "orgUnitId": app.unit_id("bj01") } })).await;
    assert_eq!(north.code(), "NOT_FOUND");
}

async fn out_of_scope_and_missing_customers_look_the_same(app: TestApp) {
    let other = &app.customers_of("gz01").await[0];
    let out_of_scope = app.gql("sz01.sales", ONE, json!({ "id": other })).await;
    let missing_id = tagbase::domain::CustomerId(999_999).to_string();
    let missing = app.gql("sz01.sales", ONE, json!({ "id": missing_id })).await;
    assert_eq!(out_of_scope.code(), "NOT_FOUND");
    assert_eq!(missing.code(), "NOT_FOUND");
    assert_eq!(out_of_scope.message().replace(other, "X"), missing.message().replace(&missing_id, "X"));
}

async fn malformed_ids_are_validation_errors(app: TestApp) {
    for bad in ["abc", "-1", "0", "1 OR 1=1"] {
        let res = app.gql("admin", ONE, json!({ "id": bad })).await;
        assert_eq!(res.code(), "VALIDATION", "{bad}");
        assert_eq!(res.0["errors"][0]["extensions"]["field"], "id");
    }
}

async fn malformed_operations_are_validation_errors(app: TestApp) {
    for query in [
        "{ customers(first: \"ten\") { totalCount } }",
        "{ customers { noSuchField } }",
        "{ customers { totalCount ",
        "mutation { createCustomer(input: { name: \"no unit\" }) { customer { id } } }",
    ] {
        let res = app.gql("admin", query, no_vars()).await;
        let errors = res.0["errors"].as_array().unwrap_or_else(|| panic!("{query}: {}", res.0));
        assert!(errors.iter().all(|e| e["extensions"]["code"] == "VALIDATION"), "{query}: {}", res.0);
    }
}

async fn paging_walks_every_customer_once_in_every_order(app: TestApp) {
    let query = "query($after: String, $o: CustomerOrderInput) {
        customers(first: 5, after: $after, orderBy: $o) { edges { cursor node { id name addedAt } } pageInfo { hasNextPage endCursor } } }";
    for (field, direction) in [("ADDED_AT", "DESC"), ("NAME", "ASC"), ("UPDATED_AT", "ASC"), ("NAME", "DESC")] {
        let mut seen = Vec::new();
        let mut after = Value::Null;
        for pages in 1.. {
            assert!(pages <= 4 * TEST_CUSTOMERS_PER_STORE + 1, "paging by {field} {direction} never ends");
            let res = app
                .gql("admin", query, json!({ "after": after, "o": { "field": field, "direction": direction } }))
                .await;
            let page = &res.ok()["customers"];
            for edge in page["edges"].as_array().unwrap() {
                seen.push(edge["node"].clone());
            }
            if !page["pageInfo"]["hasNextPage"].as_bool().unwrap() {
                break;
            }
            after = page["pageInfo"]["endCursor"].clone();
        }
        let ids: HashSet<&str> = seen.iter().map(|n| n["id"].as_str().unwrap()).collect();
        assert_eq!(seen.len(), 4 * TEST_CUSTOMERS_PER_STORE, "{field} {direction}");
        assert_eq!(ids.len(), seen.len(), "no customer twice ({field} {direction})");
        if field == "NAME" {
            let names: Vec<&str> = seen.iter().map(|n| n["name"].as_str().unwrap()).collect();
            // Each page is sorted by the database; the walk as a whole must
            // be monotone too (names compared as the database does, so only
            // check that equal names are adjacent).
            let mut distinct = names.clone();
            distinct.dedup();
            let unique: HashSet<&str> = names.iter().copied().collect();
            assert_eq!(distinct.len(), unique.len(), "equal names are adjacent in {direction} order");
        }
        if field == "ADDED_AT" {
            let times: Vec<&str> = seen.iter().map(|n| n["addedAt"].as_str().unwrap()).collect();
            assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
        }
    }
}

async fn cursors_are_checked(app: TestApp) {
    let first = app.gql("admin", "{ customers(first: 1) { pageInfo { endCursor } } }", no_vars()).await;
    let cursor = first.ok()["customers"]["pageInfo"]["endCursor"].clone();
    let other_order = app
        .gql(
            "admin",
            "query($c: String) { customers(after: $c, orderBy: { field: NAME }) { totalCount } }",
            json!({ "c": cursor }),
        )
        .await;
    assert_eq!(other_order.code(), "VALIDATION");
    let garbage = app.gql("admin", "{ customers(after: \"%%%\") { totalCount } }", no_vars()).await;
    assert_eq!(garbage.code(), "VALIDATION");
}

async fn page_size_is_clamped(app: TestApp) {
    let all = app.gql("admin", "{ customers(first: 100000) { edges { cursor } } }", no_vars()).await;
    assert_eq!(all.ok()["customers"]["edges"].as_array().unwrap().len(), 4 * TEST_CUSTOMERS_PER_STORE);
    let negative = app.gql("admin", "{ customers(first: -1) { edges { cursor } } }", no_vars()).await;
    assert_eq!(negative.ok()["customers"]["edges"].as_array().unwrap().len(), 1);
}

async fn tag_filters_find_holders_of_all_or_any(app: TestApp) {
    let customers = app.customers_of("sz01").await;
    let mortgage = app.tag_id("资产状况", "房贷用户").await;
    let car = app.tag_id("资产状况", "有车一族").await;
    let tag = "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }";
    // Start from a clean slate for these two tags in sz01.
    app.gql(
        "sz01.sales",
        "mutation($c: [ID!]!, $t: [ID!]!) { untagCustomers(input: { customerIds: $c, tagIds: $t }) { removed } }",
        json!({ "c": customers, "t": [mortgage, car] }),
    )
    .await
    .ok();
    app.gql("sz01.sales", tag, json!({ "c": [customers[0], customers[1]], "t": [mortgage] })).await.ok();
    app.gql("sz01.sales", tag, json!({ "c": [customers[1], customers[2]], "t": [car] })).await.ok();
    let scope = json!({ "orgUnitId": app.unit_id("sz01") });
    let mut all = scope.clone();
    all["hasAllTags"] = json!([mortgage, car]);
    let mut any = scope.clone();
    any["hasAnyTags"] = json!([mortgage, car]);
    assert_eq!(total(&app, "sz01.sales", all).await, 1);
    assert_eq!(total(&app, "sz01.sales", any).await, 3);
}

async fn filtering_by_someone_elses_personal_tag_is_not_found(app: TestApp) {
    let created = app
        .gql("bj01.sales", "mutation { createPersonalTag(input: { name: \"只在北京\" }) { tag { id } } }", no_vars())
        .await;
    let tag = created.ok()["createPersonalTag"]["tag"]["id"].clone();
    let res = app.gql("admin", COUNT, json!({ "f": { "hasAnyTags": [tag] } })).await;
    assert_eq!(res.code(), "NOT_FOUND");
    let unknown = app.gql("admin", COUNT, json!({ "f": { "hasAllTags": ["987654"] } })).await;
    assert_eq!(unknown.code(), "NOT_FOUND");
}

async fn search_finds_by_name_part_and_whole_phone(app: TestApp) {
    let created = app
        .gql(
            "sz01.sales",
            "mutation($u: ID!) { createCustomer(input: { orgUnitId: $u, name: \"欧阳娜娜\", phone: \"+86 139-0000-1234\" }) { customer { id phone } } }",
            json!({ "u": app.unit_id("sz01") }),
        )
        .await;
    let customer = created.ok()["createCustomer"]["customer"].clone();
    assert_eq!(customer["phone"], "13900001234", "phone is normalised");
    let by_name =
        app.gql("sz01.sales", "{ customers(filter: { search: \"欧阳\" }) { edges { node { id } } } }", no_vars()).await;
    assert_eq!(by_name.ok()["customers"]["edges"][0]["node"]["id"], customer["id"]);
    let by_phone =
        app.gql("sz01.sales", "{ customers(filter: { search: \"139 0000 1234\" }) { totalCount } }", no_vars()).await;
    assert_eq!(by_phone.ok()["customers"]["totalCount"], 1);
    let wildcard = app.gql("sz01.sales", "{ customers(filter: { search: \"%\" }) { totalCount } }", no_vars()).await;
    assert_eq!(wildcard.ok()["customers"]["totalCount"], 0, "% is a literal, not a wildcard");
}

const CREATE: &str = "mutation($i: CreateCustomerInput!) { createCustomer(input: $i) {
    customer { id name phone gender city version owner { login } orgUnit { code } externalIds { provider externalId } }
    possibleDuplicates { id } } }";

async fn sales_create_customers_in_their_store_only(app: TestApp) {
    let before = app.snapshot().await;
    let res = app
        .gql(
            "sz01.sales",
            CREATE,
            json!({ "i": { "orgUnitId": app.unit_id("sz01"), "name": " 周杰 ", "gender": "MALE", "city": "深圳",
                "externalIds": [{ "provider": "wecom", "externalId": "wm-001" }] } }),
        )
        .await;
    let customer = &res.ok()["createCustomer"]["customer"];
    assert_eq!(customer["name"], "周杰");
    assert_eq!(customer["version"], 1);
    assert_eq!(customer["owner"]["login"], "sz01.sales");
    assert_eq!(customer["orgUnit"]["code"], "sz01");
    assert_eq!(customer["externalIds"][0]["externalId"], "wm-001");
    let after = app.snapshot().await;
    assert_eq!(after.customers, before.customers + 1);
    assert_eq!(after.audit, before.audit + 1, "creation is audited");

    let elsewhere =
        app.gql("sz01.sales", CREATE, json!({ "i": { "orgUnitId": app.unit_id("bj01"), "name": "越界" } })).await;
    assert_eq!(elsewhere.code(), "NOT_FOUND");
    // Customer service reads but may not create.
    let service =
        app.gql("sz01.service", CREATE, json!({ "i": { "orgUnitId": app.unit_id("sz01"), "name": "客服建的" } })).await;
    assert_eq!(service.code(), "FORBIDDEN");
    assert_eq!(app.snapshot().await, after, "refused creations change nothing");
}

async fn an_external_id_maps_to_one_customer(app: TestApp) {
    let input = |name: &str| {
        json!({ "i": { "orgUnitId": app.unit_id("sz01"), "name": name, "phone": "13800138000",
            "externalIds": [{ "provider": "wecom", "externalId": "wm-dup" }] } })
    };
    app.gql("sz01.sales", CREATE, input("第一位")).await.ok();
    let before = app.snapshot().await;
    let dup = app.gql("sz01.sales", CREATE, input("第二位")).await;
    assert_eq!(dup.code(), "CONFLICT");
    assert_eq!(app.snapshot().await, before, "nothing half-written");
    // Same phone, different external id: created, with a duplicate hint.
    let mut other = input("第三位");
    other["i"]["externalIds"][0]["externalId"] = json!("wm-other");
    let res = app.gql("sz01.sales", CREATE, other).await;
    assert_eq!(res.ok()["createCustomer"]["possibleDuplicates"].as_array().unwrap().len(), 1);
}

async fn bad_customer_input_is_refused_with_the_field(app: TestApp) {
    let before = app.snapshot().await;
    let long_name = "名".repeat(101);
    for (input, field) in [
        (json!({ "name": long_name }), "name"),
        (json!({ "name": "   " }), "name"),
        (json!({ "name": "甲", "phone": "call me" }), "phone"),
        (json!({ "name": "甲", "birthDate": "2999-01-01" }), "birthDate"),
        (json!({ "name": "甲", "city": "城".repeat(65) }), "city"),
        (json!({ "name": "甲", "externalIds": [{ "provider": "We Com", "externalId": "x" }] }), "externalIds"),
    ] {
        let mut input = input;
        input["orgUnitId"] = json!(app.unit_id("sz01"));
        let res = app.gql("sz01.sales", CREATE, json!({ "i": input })).await;
        assert_eq!(res.code(), "VALIDATION", "{input}");
        assert_eq!(res.0["errors"][0]["extensions"]["field"], field, "{input}");
    }
    assert_eq!(app.snapshot().await, before);
}

const UPDATE: &str =
    "mutation($i: UpdateCustomerInput!) { updateCustomer(input: $i) { customer { id name city phone version } } }";

async fn updates_need_the_version_that_was_read(app: TestApp) {
    let id = app.customers_of("sz01").await[0].clone();
    let read = app.gql("sz01.manager", ONE, json!({ "id": id })).await;
    let version = read.ok()["customer"]["version"].as_i64().unwrap();
    let first = app
        .gql("sz01.sales", UPDATE, json!({ "i": { "id": id, "version": version, "name": "改名一", "city": null } }))
        .await;
    let updated = &first.ok()["updateCustomer"]["customer"];
    assert_eq!(updated["name"], "改名一");
    assert!(updated["city"].is_null(), "null clears a field");
    assert_eq!(updated["version"], version + 1);
    let before = app.snapshot().await;
    let stale =
        app.gql("sz01.manager", UPDATE, json!({ "i": { "id": id, "version": version, "name": "改名二" } })).await;
    assert_eq!(stale.code(), "CONFLICT");
    let now = app.gql("admin", ONE, json!({ "id": id })).await;
    assert_eq!(now.ok()["customer"]["name"], "改名一", "the stale write lost nothing");
    assert_eq!(app.snapshot().await, before);
}

async fn updates_outside_the_scope_or_without_the_right_are_refused(app: TestApp) {
    let sz = app.customers_of("sz01").await[0].clone();
    let bj = app.customers_of("bj01").await[0].clone();
    let res = app.gql("sz01.sales", UPDATE, json!({ "i": { "id": bj, "version": 1, "name": "x" } })).await;
    assert_eq!(res.code(), "NOT_FOUND");
    let res = app.gql("sz01.service", UPDATE, json!({ "i": { "id": sz, "version": 1, "name": "x" } })).await;
    assert_eq!(res.code(), "FORBIDDEN");
    let res = app.gql("sz01.sales", UPDATE, json!({ "i": { "id": sz, "version": 1 } })).await;
    assert_eq!(res.code(), "VALIDATION", "an empty patch is an error");
}

async fn phones_are_masked_for_roles_without_the_right(app: TestApp) {
    let id = app.customers_of("sz01").await[0].clone();
    let full = app.gql("sz01.sales", ONE, json!({ "id": id })).await.ok()["customer"]["phone"].clone();
    let masked = app.gql("sz01.service", ONE, json!({ "id": id })).await.ok()["customer"]["phone"].clone();
    let full = full.as_str().unwrap();
    assert_eq!(full.len(), 11);
    assert_eq!(masked, format!("{}****{}", &full[..3], &full[7..]));
}

on_both_databases!(
    store_sales_see_only_their_store,
    region_managers_see_their_region_only,
    out_of_scope_and_missing_customers_look_the_same,
    malformed_ids_are_validation_errors,
    malformed_operations_are_validation_errors,
    paging_walks_every_customer_once_in_every_order,
    cursors_are_checked,
    page_size_is_clamped,
    tag_filters_find_holders_of_all_or_any,
    filtering_by_someone_elses_personal_tag_is_not_found,
    search_finds_by_name_part_and_whole_phone,
    sales_create_customers_in_their_store_only,
    an_external_id_maps_to_one_customer,
    bad_customer_input_is_refused_with_the_field,
    updates_need_the_version_that_was_read,
    updates_outside_the_scope_or_without_the_right_are_refused,
    phones_are_masked_for_roles_without_the_right,
);

/// A reader who sees phones only masked may still find a caller by the
/// whole number, but each such search is audited (the number masked) and
/// they are rate-limited per staff member; full readers are not.
async fn masked_readers_phone_searches_are_audited_and_rate_limited(app: TestApp) {
    let id = app.customers_of("sz01").await[0].clone();
    let phone = app.gql("sz01.sales", ONE, json!({ "id": id })).await.ok()["customer"]["phone"].clone();
    let phone = phone.as_str().expect("the demo customer has a phone").to_owned();
    let search = |login: &'static str, text: String| {
        let app = &app;
        async move { app.gql(login, COUNT, json!({ "f": { "search": text } })).await }
    };
    let searches = || audit_log::Entity::find().filter(audit_log::Column::Action.eq("customer.phone_search"));
    for _ in 0..3 {
        let found = search("sz01.service", phone.clone()).await;
        assert_eq!(found.ok()["customers"]["totalCount"], 1);
    }
    // A name search is no phone search.
    search("sz01.service", "张".into()).await.ok();
    let rows = searches().all(&app.db).await.unwrap();
    assert_eq!(rows.len(), 3);
    let service = app.staff("sz01.service").id;
    for row in &rows {
        assert_eq!(row.actor_staff_id, Some(service));
        assert_eq!(row.org_unit_id, Some(app.unit("sz01")));
        assert!(!row.detail.to_string().contains(&phone), "the number is not stored in clear: {}", row.detail);
        assert_eq!(row.detail["phone"], format!("{}****{}", &phone[..3], &phone[7..]));
    }
    let refused = search("sz01.service", phone.clone()).await;
    assert_eq!(refused.code(), "LIMIT_EXCEEDED");
    assert_eq!(searches().count(&app.db).await.unwrap(), 3, "a refused search reads nothing");
    // Somebody who sees phones in full is neither limited nor audited.
    for _ in 0..5 {
        assert_eq!(search("sz01.sales", phone.clone()).await.ok()["customers"]["totalCount"], 1);
    }
    assert_eq!(searches().count(&app.db).await.unwrap(), 3);
}

on_both_databases_with!(
    masked_readers_phone_searches_are_audited_and_rate_limited =>
        tagbase::config::Limits { phone_searches_per_minute: 3, ..Default::default() }
);
