//! Side doors: what a caller may not read must not leak through filters,
//! ordering, counts, lookups, nested edges or error messages; and the
//! policy can be changed at run time, taking effect everywhere at once.

use serde_json::{Value, json};

use crate::helpers::{TestApp, no_vars};
use crate::on_both_databases;

const COUNT: &str = "query($f: CustomerFilterInput) { customers(filter: $f) { totalCount } }";
const TAG: &str = "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }";

async fn customer_service_cannot_filter_or_sort_by_spend(app: TestApp) {
    let filter = app.gql("sz01.service", COUNT, json!({ "f": { "totalSpendMin": 100000 } })).await;
    assert_eq!(filter.code(), "FORBIDDEN_FIELD");
    assert_eq!(filter.0["errors"][0]["extensions"]["field"], "filter.totalSpendMin");
    let sort =
        app.gql("sz01.service", "{ customers(orderBy: { field: TOTAL_SPEND }) { totalCount } }", no_vars()).await;
    assert_eq!(sort.code(), "FORBIDDEN_FIELD");
    // A store manager may, and the answer is right.
    let all = app
        .gql("sz01.manager", "{ customers(first: 100, orderBy: { field: TOTAL_SPEND, direction: DESC }) { edges { node { totalSpend } } } }", no_vars())
        .await;
    let spends: Vec<i64> = all.ok()["customers"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["totalSpend"].as_i64().unwrap())
        .collect();
    assert!(spends.windows(2).all(|w| w[0] >= w[1]), "{spends:?}");
    let threshold = spends[spends.len() / 2];
    let rich = app.gql("sz01.manager", COUNT, json!({ "f": { "totalSpendMin": threshold } })).await;
    assert_eq!(
        rich.ok()["customers"]["totalCount"].as_u64().unwrap(),
        spends.iter().filter(|s| **s >= threshold).count() as u64
    );
}

async fn customer_service_cannot_learn_that_a_customer_has_a_value_tag(app: TestApp) {
    let customer = app.customers_of("sz01").await[0].clone();
    let tier = app.tag_id("消费等级", "S级").await;
    app.gql("sz01.manager", TAG, json!({ "c": [customer], "t": [tier] })).await.ok();
    // Not on the customer…
    let res = app
        .gql(
            "sz01.service",
            "query($id: ID!) { customer(id: $id) { tags { tag { name } } } }",
            json!({ "id": customer }),
        )
        .await;
    let names: Vec<String> = res.ok()["customer"]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tag"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!names.contains(&"S级".to_owned()), "{names:?}");
    // …nor by lookup, filter, group or library.
    let by_id = app.gql("sz01.service", "query($id: ID!) { tag(id: $id) { name } }", json!({ "id": tier })).await;
    assert_eq!(by_id.code(), "NOT_FOUND");
    let filter = app.gql("sz01.service", COUNT, json!({ "f": { "hasAnyTags": [tier] } })).await;
    assert_eq!(filter.code(), "NOT_FOUND");
    let missing = tagbase::domain::TagId(987_654).to_string();
    let unknown = app.gql("sz01.service", COUNT, json!({ "f": { "hasAnyTags": [missing] } })).await;
    assert_eq!(
        filter.message().replace(&tier, "X"),
        unknown.message().replace(&missing, "X"),
        "same answer as for a missing tag"
    );
    let group = app.group_id("消费等级").await;
    let by_group =
        app.gql("sz01.service", "query($id: ID!) { tagGroup(id: $id) { name } }", json!({ "id": group })).await;
    assert_eq!(by_group.code(), "NOT_FOUND");
    let library = app
        .gql(
            "sz01.service",
            "query($u: ID!) { tagLibrary(orgUnitId: $u) { groups { name visibilityClass } } }",
            json!({ "u": app.unit_id("sz01") }),
        )
        .await;
    let classes: Vec<String> = library.ok()["tagLibrary"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["visibilityClass"].as_str().unwrap().to_owned())
        .collect();
    assert!(classes.iter().all(|c| c == "basic" || c == "service"), "{classes:?}");
    // Nor by tagging with it.
    let tagging = app.gql("sz01.service", TAG, json!({ "c": [customer], "t": [tier] })).await;
    assert_eq!(tagging.code(), "NOT_FOUND");
    // Nor through a canonical-tag edge of a tag it cannot see anyway.
    let lifecycle = app
        .gql(
            "sz01.service",
            "query($id: ID!) { customer(id: $id) { lifecycleStage { name } } }",
            json!({ "id": customer }),
        )
        .await;
    assert!(lifecycle.ok()["customer"]["lifecycleStage"].is_null());
}

async fn a_tag_counts_only_customers_where_its_class_is_visible(app: TestApp) {
    // bj01.sales also serves gz01 customers as customer service: value
    // tags are visible in bj01, not in gz01.
    app.bj01_sales_also_serves_gz01().await;
    let tier = app.tag_id("消费等级", "A级").await;
    let bj = app.customers_of("bj01").await;
    let gz = app.customers_of("gz01").await;
    app.gql("admin", TAG, json!({ "c": [bj[0], bj[1], gz[0], gz[1], gz[2]], "t": [tier] })).await.ok();
    let holders =
        app.gql("admin", COUNT, json!({ "f": { "hasAllTags": [tier], "orgUnitId": app.unit_id("gz01") } })).await;
    assert!(holders.ok()["customers"]["totalCount"].as_u64().unwrap() >= 3);
    let seen = app.gql("bj01.sales", COUNT, json!({ "f": { "hasAllTags": [tier] } })).await;
    let in_bj =
        app.gql("admin", COUNT, json!({ "f": { "hasAllTags": [tier], "orgUnitId": app.unit_id("bj01") } })).await;
    assert_eq!(
        seen.ok()["customers"]["totalCount"],
        in_bj.ok()["customers"]["totalCount"],
        "gz01 holders are not counted"
    );
    // The gz01 customers are readable, but without their value tags.
    let q = "query($id: ID!) { customer(id: $id) { tags { tag { id } } } }";
    let tags = app.gql("bj01.sales", q, json!({ "id": gz[0] })).await;
    assert!(tags.ok()["customer"]["tags"].as_array().unwrap().iter().all(|t| t["tag"]["id"] != json!(tier)));
}

/// Holders of a tag by the admin's count, in a unit or everywhere.
async fn holders(app: &TestApp, tag: &str, unit: Option<&str>) -> u64 {
    let mut filter = json!({ "hasAllTags": [tag] });
    if let Some(unit) = unit {
        filter["orgUnitId"] = json!(app.unit_id(unit));
    }
    app.gql("admin", COUNT, json!({ "f": filter })).await.ok()["customers"]["totalCount"].as_u64().unwrap()
}

async fn an_hq_tags_customer_count_seen_from_a_store_counts_that_store_only(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let sz = app.customers_of("sz01").await;
    let gz = app.customers_of("gz01").await;
    app.gql("admin", TAG, json!({ "c": [sz[0], sz[1], gz[0], gz[1], gz[2]], "t": [inquiry] })).await.ok();
    let q = "query($id: ID!) { tag(id: $id) { customerCount } }";
    let from_store = app.gql("sz01.sales", q, json!({ "id": inquiry })).await;
    assert_eq!(from_store.ok()["tag"]["customerCount"].as_u64().unwrap(), holders(&app, &inquiry, Some("sz01")).await);
    let from_region = app.gql("south.manager", q, json!({ "id": inquiry })).await;
    assert_eq!(
        from_region.ok()["tag"]["customerCount"].as_u64().unwrap(),
        holders(&app, &inquiry, Some("south")).await
    );
    let from_hq = app.gql("admin", q, json!({ "id": inquiry })).await;
    assert_eq!(from_hq.ok()["tag"]["customerCount"].as_u64().unwrap(), holders(&app, &inquiry, None).await);
    assert!(holders(&app, &inquiry, None).await > holders(&app, &inquiry, Some("sz01")).await);
    // Counts through the library edge are scoped the same way.
    let library = app
        .gql(
            "sz01.sales",
            "query($u: ID!) { tagLibrary(orgUnitId: $u) { groups { name tags { id customerCount } } } }",
            json!({ "u": app.unit_id("sz01") }),
        )
        .await;
    let in_library = library.ok()["tagLibrary"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["tags"].as_array().unwrap().iter())
        .find(|t| t["id"] == json!(inquiry))
        .unwrap()["customerCount"]
        .as_u64()
        .unwrap();
    assert_eq!(in_library, holders(&app, &inquiry, Some("sz01")).await);
}

const ASSIGN: &str = "mutation($i: RoleBindingInput!) { assignRole(input: $i) { changed } }";
const REVOKE: &str = "mutation($i: RoleBindingInput!) { revokeRole(input: $i) { changed } }";

async fn region_managers_assign_store_roles_in_their_region_only(app: TestApp) {
    let newcomer = app.staff("bj01.sales").id.to_string();
    let binding =
        |role: &str, unit: &str| json!({ "i": { "staffId": newcomer, "role": role, "orgUnitId": app.unit_id(unit) } });
    let before = app.snapshot().await;
    for (role, unit, code) in [
        ("hq_admin", "sz01", "FORBIDDEN"),
        ("region_manager", "south", "FORBIDDEN"),
        ("sales", "bj01", "NOT_FOUND"),
        ("sales", "hq", "FORBIDDEN"),
        ("no_such_role", "sz01", "VALIDATION"),
        ("Sales!", "sz01", "VALIDATION"),
    ] {
        let res = app.gql("south.manager", ASSIGN, binding(role, unit)).await;
        assert_eq!(res.code(), code, "{role} at {unit}");
    }
    let store_manager = app.gql("sz01.manager", ASSIGN, binding("sales", "sz01")).await;
    assert_eq!(store_manager.code(), "FORBIDDEN", "store managers assign no roles");
    assert_eq!(app.snapshot().await, before, "refused assignments change nothing");

    // bj01.sales cannot see sz01 customers until the binding lands.
    let sz = app.customers_of("sz01").await[0].clone();
    let read = "query($id: ID!) { customer(id: $id) { id } }";
    assert_eq!(app.gql("bj01.sales", read, json!({ "id": sz })).await.code(), "NOT_FOUND");
    let res = app.gql("south.manager", ASSIGN, binding("sales", "sz01")).await;
    assert_eq!(res.ok()["assignRole"]["changed"], true);
    assert_eq!(app.snapshot().await.audit, before.audit + 1, "the assignment is audited");
    app.gql("bj01.sales", read, json!({ "id": sz })).await.ok();
    let again = app.gql("south.manager", ASSIGN, binding("sales", "sz01")).await;
    assert_eq!(again.ok()["assignRole"]["changed"], false);
    let revoked = app.gql("south.manager", REVOKE, binding("sales", "sz01")).await;
    assert_eq!(revoked.ok()["revokeRole"]["changed"], true);
    assert_eq!(app.gql("bj01.sales", read, json!({ "id": sz })).await.code(), "NOT_FOUND", "gone on the next request");
}

const GRANT: &str = "mutation($i: PermissionInput!) { grantPermission(input: $i) { changed } }";
const REVOKE_PERMISSION: &str = "mutation($i: PermissionInput!) { revokePermission(input: $i) { changed } }";

async fn a_granted_permission_applies_on_the_next_request_on_every_instance(app: TestApp) {
    let other = app.second_instance().await;
    let customer = app.customers_of("sz01").await[0].clone();
    let q = "query($id: ID!) { customer(id: $id) { totalSpend } }";
    let before = app.gql_on(&other, "sz01.service", q, json!({ "id": customer })).await;
    assert_eq!(before.code(), "FORBIDDEN_FIELD");
    let grant = json!({ "i": { "role": "customer_service", "object": "customer.totalSpend", "action": "read" } });
    assert_eq!(app.gql("admin", GRANT, grant.clone()).await.ok()["grantPermission"]["changed"], true);
    let after = app.gql_on(&other, "sz01.service", q, json!({ "id": customer })).await;
    assert!(after.ok()["customer"]["totalSpend"].is_i64(), "the other instance applies it at once");
    app.gql("admin", REVOKE_PERMISSION, grant).await.ok();
    let revoked = app.gql_on(&other, "sz01.service", q, json!({ "id": customer })).await;
    assert_eq!(revoked.code(), "FORBIDDEN_FIELD");
}

async fn only_policy_editors_change_permissions_and_one_always_remains(app: TestApp) {
    let before = app.snapshot().await;
    let grant = json!({ "i": { "role": "sales", "object": "customer.totalSpend", "action": "read" } });
    assert_eq!(app.gql("south.manager", GRANT, grant).await.code(), "FORBIDDEN");
    let typo = json!({ "i": { "role": "sales", "object": "customer.totalspend", "action": "read" } });
    assert_eq!(app.gql("admin", GRANT, typo).await.code(), "VALIDATION");
    let last = json!({ "i": { "role": "hq_admin", "object": "policy", "action": "edit" } });
    assert_eq!(app.gql("admin", REVOKE_PERMISSION, last).await.code(), "CONFLICT");
    assert_eq!(app.snapshot().await, before);
}

async fn personal_tags_stay_private_unless_read_all_is_granted(app: TestApp) {
    let customer = app.customers_of("sz01").await[0].clone();
    let created = app
        .gql("sz01.sales", "mutation { createPersonalTag(input: { name: \"私房话\" }) { tag { id } } }", no_vars())
        .await;
    let tag = created.ok()["createPersonalTag"]["tag"]["id"].clone();
    app.gql("sz01.sales", TAG, json!({ "c": [customer], "t": [tag] })).await.ok();
    let q = "query($id: ID!) { customer(id: $id) { tags { tag { id } } } }";
    let sees = |res: &crate::helpers::Gql| {
        res.ok()["customer"]["tags"].as_array().unwrap().iter().any(|t| t["tag"]["id"] == tag)
    };
    assert!(!sees(&app.gql("admin", q, json!({ "id": customer })).await), "not even the admin");
    let grant = json!({ "i": { "role": "hq_admin", "object": "personal_tag", "action": "read_all" } });
    app.gql("admin", GRANT, grant).await.ok();
    assert!(sees(&app.gql("admin", q, json!({ "id": customer })).await), "with personal_tag:read_all");
    // Seeing is not using.
    let untag = app
        .gql(
            "admin",
            "mutation($c: [ID!]!, $t: [ID!]!) { untagCustomers(input: { customerIds: $c, tagIds: $t }) { removed } }",
            json!({ "c": [customer], "t": [tag] }),
        )
        .await;
    assert_eq!(untag.code(), "FORBIDDEN");
}

async fn me_tells_the_ui_what_it_may_do(app: TestApp) {
    let res = app
        .gql("sz01.service", "{ me { permissions { orgUnit { code } actions fields { field access } tagClasses { class read use } assignableRoles } } }", no_vars())
        .await;
    let units = res.ok()["me"]["permissions"].as_array().unwrap().clone();
    assert_eq!(units.len(), 1);
    let unit = &units[0];
    assert_eq!(unit["orgUnit"]["code"], "sz01");
    let actions: Vec<&str> = unit["actions"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(actions.contains(&"customer:read") && !actions.contains(&"customer:create"), "{actions:?}");
    let fields: Vec<(String, String)> = unit["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["field"].as_str().unwrap().to_owned(), f["access"].as_str().unwrap().to_owned()))
        .collect();
    assert!(fields.contains(&("phone".into(), "MASKED".into())));
    assert!(!fields.iter().any(|(f, _)| f == "totalSpend"), "{fields:?}");
    let classes: Vec<&Value> = unit["tagClasses"].as_array().unwrap().iter().collect();
    let service = classes.iter().find(|c| c["class"] == "service").unwrap();
    assert_eq!((service["read"].clone(), service["use"].clone()), (json!(true), json!(true)));
    let basic = classes.iter().find(|c| c["class"] == "basic").unwrap();
    assert_eq!((basic["read"].clone(), basic["use"].clone()), (json!(true), json!(false)));
    assert!(!classes.iter().any(|c| c["class"] == "value"));
    assert_eq!(unit["assignableRoles"], json!([]));
}

on_both_databases!(
    customer_service_cannot_filter_or_sort_by_spend,
    customer_service_cannot_learn_that_a_customer_has_a_value_tag,
    a_tag_counts_only_customers_where_its_class_is_visible,
    an_hq_tags_customer_count_seen_from_a_store_counts_that_store_only,
    region_managers_assign_store_roles_in_their_region_only,
    a_granted_permission_applies_on_the_next_request_on_every_instance,
    only_policy_editors_change_permissions_and_one_always_remains,
    personal_tags_stay_private_unless_read_all_is_granted,
    me_tells_the_ui_what_it_may_do,
);

#[tokio::test]
async fn the_committed_permission_table_is_current() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/permissions.md")).unwrap();
    let generated = tagbase::authz::default_policy_table(&tagbase::seed::demo_visibility_classes()).await.unwrap();
    assert!(committed == generated, "docs/permissions.md is stale: regenerate it with `tagbase policy table`");
}
