//! Relay conventions: global ids and `node`/`nodes`, connections paged
//! both ways, and a described schema.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, no_vars};
use crate::on_both_databases;

const INTROSPECT: &str = "{ __schema { types { name kind description
    fields(includeDeprecated: true) { name description args { name description } }
    inputFields { name description }
    enumValues(includeDeprecated: true) { name description } } } }";

/// Every type, field, argument, input field and enum value of the schema
/// (the built-in `__*` types and scalars of GraphQL aside) says what it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_field_argument_and_enum_value_has_a_description() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let res = app.gql("admin", INTROSPECT, no_vars()).await;
    let described = |v: &Value| v["description"].as_str().is_some_and(|d| !d.trim().is_empty());
    let mut missing = Vec::new();
    for ty in res.ok()["__schema"]["types"].as_array().unwrap() {
        let name = ty["name"].as_str().unwrap();
        if name.starts_with("__") || ["ID", "String", "Int", "Float", "Boolean"].contains(&name) {
            continue;
        }
        if !described(ty) {
            missing.push(name.to_owned());
        }
        for field in ty["fields"].as_array().into_iter().flatten() {
            let field_name = format!("{name}.{}", field["name"].as_str().unwrap());
            if !described(field) {
                missing.push(field_name.clone());
            }
            for arg in field["args"].as_array().into_iter().flatten() {
                if !described(arg) {
                    missing.push(format!("{field_name}({})", arg["name"].as_str().unwrap()));
                }
            }
        }
        for item in ["inputFields", "enumValues"].iter().flat_map(|k| ty[*k].as_array().into_iter().flatten()) {
            if !described(item) {
                missing.push(format!("{name}.{}", item["name"].as_str().unwrap()));
            }
        }
    }
    assert!(missing.is_empty(), "{} without a description:\n{}", missing.len(), missing.join("\n"));
}

const CUSTOMER: &str = "query($id: ID!) { customer(id: $id) { id name orgUnit { id } owner { id } } }";
const NODE: &str = "query($id: ID!) { node(id: $id) { __typename id ... on Customer { name } } }";
const NODES: &str = "query($ids: [ID!]!) { nodes(ids: $ids) { __typename id } }";

/// `node` answers what the type's own query answers, for the same caller.
async fn a_node_is_refetched_with_the_scope_of_its_own_query(app: TestApp) {
    let own = app.customers_of("sz01").await[0].clone();
    let other = app.customers_of("bj01").await[0].clone();
    let customer = app.gql("sz01.sales", CUSTOMER, json!({ "id": own })).await;
    let customer = &customer.ok()["customer"];
    assert_eq!(customer["id"], own.as_str(), "responses carry the global id the helper computed");

    let node = app.gql("sz01.sales", NODE, json!({ "id": own })).await;
    assert_eq!(node.ok()["node"], json!({ "__typename": "Customer", "id": own, "name": customer["name"] }));
    // Ids of other types found on the way refetch as their type.
    for (id, typename) in [(&customer["orgUnit"]["id"], "OrgUnit"), (&customer["owner"]["id"], "Staff")] {
        let res = app.gql("sz01.sales", NODE, json!({ "id": id })).await;
        assert_eq!(res.ok()["node"]["__typename"], typename);
        assert_eq!(res.ok()["node"]["id"], *id);
    }

    // Out of scope: as `customer(id)`, NOT_FOUND and no data.
    let direct = app.gql("sz01.sales", CUSTOMER, json!({ "id": other })).await;
    assert_eq!(direct.code(), "NOT_FOUND");
    let node = app.gql("sz01.sales", NODE, json!({ "id": other })).await;
    assert_eq!(node.code(), "NOT_FOUND");
    assert!(node.0["data"]["node"].is_null());
    assert_eq!(node.message(), direct.message(), "indistinguishable from the type's own query");

    // `nodes`: in order, null where the caller may not see the object.
    let res = app.gql("sz01.sales", NODES, json!({ "ids": [own, other, customer["owner"]["id"]] })).await;
    let nodes = res.ok()["nodes"].as_array().unwrap().clone();
    assert_eq!(nodes[0]["id"], own.as_str());
    assert!(nodes[1].is_null());
    assert_eq!(nodes[2]["__typename"], "Staff");
}

/// Every kind of object a client meets refetches through `node`.
async fn every_object_with_an_id_is_a_node(app: TestApp) {
    let customer = app.customers_of("sz01").await[0].clone();
    let tag = app.tag_id("活动", "询价").await;
    let tagged = app
        .gql(
            "admin",
            "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }",
            json!({ "c": [customer], "t": [tag] }),
        )
        .await;
    assert_eq!(tagged.ok()["tagCustomers"]["added"], 1);
    let lock = app
        .gql(
            "admin",
            "mutation($g: ID!) { lockTagGroup(input: { groupId: $g, reason: \"盘点\" }) { lock { id } } }",
            json!({ "g": app.group_id("活动").await }),
        )
        .await;
    let saved = app
        .gql(
            "admin",
            "mutation($u: ID!) { saveSegment(input: { orgUnitId: $u, name: \"华南\", segment: { city: \"深圳\" } })
                { segment { id } } }",
            json!({ "u": app.unit_id("hq") }),
        )
        .await;
    let events = app
        .gql(
            "admin",
            "query($id: ID!) { customer(id: $id) { tagEvents { edges { node { id } } } } }",
            json!({ "id": customer }),
        )
        .await;
    let audit = app.gql("admin", "{ auditLog(first: 1) { edges { node { id } } } }", no_vars()).await;
    let ids = [
        ("Customer", json!(customer)),
        ("Tag", json!(tag)),
        ("TagGroup", json!(app.group_id("活动").await)),
        ("ModificationLock", lock.ok()["lockTagGroup"]["lock"]["id"].clone()),
        ("Segment", saved.ok()["saveSegment"]["segment"]["id"].clone()),
        ("TagEvent", events.ok()["customer"]["tagEvents"]["edges"][0]["node"]["id"].clone()),
        ("AuditLogEntry", audit.ok()["auditLog"]["edges"][0]["node"]["id"].clone()),
    ];
    let res = app.gql("admin", NODES, json!({ "ids": ids.iter().map(|(_, id)| id).collect::<Vec<_>>() })).await;
    let nodes = res.ok()["nodes"].as_array().unwrap().clone();
    for ((typename, id), node) in ids.iter().zip(&nodes) {
        assert_eq!((node["__typename"].as_str(), &node["id"]), (Some(*typename), id), "{typename}");
    }
    // A salesperson of another region sees none of the region-bound ones.
    let res = app.gql("bj01.sales", NODES, json!({ "ids": [ids[0].1, ids[5].1] })).await;
    assert_eq!(res.ok()["nodes"], json!([null, null]));
}

/// Old decimal ids still work as inputs; a global id of another type, or
/// anything else, is a VALIDATION error naming the argument.
async fn ids_in_inputs_are_global_or_decimal_of_the_right_type(app: TestApp) {
    let global = app.customers_of("sz01").await[0].clone();
    let row: i64 = {
        use sea_orm::EntityTrait;
        let customers = entity::customer::Entity::find().all(&app.db).await.unwrap();
        customers.iter().map(|c| c.id).find(|id| tagbase::domain::CustomerId(*id).to_string() == global).unwrap()
    };
    let by_row = app.gql("sz01.sales", CUSTOMER, json!({ "id": row.to_string() })).await;
    assert_eq!(by_row.ok()["customer"]["id"], global.as_str(), "decimal in, global out");

    let tag = app.tag_id("活动", "询价").await;
    let res = app.gql("sz01.sales", CUSTOMER, json!({ "id": tag })).await;
    assert_eq!(res.code(), "VALIDATION");
    assert_eq!(res.0["errors"][0]["extensions"]["field"], "id");
    for bad in ["", "Q3VzdG9tZXI6", "not an id", "-4"] {
        let res = app.gql("sz01.sales", NODE, json!({ "id": bad })).await;
        assert_eq!(res.code(), "VALIDATION", "{bad:?}");
    }
    // `node` needs a global id: a bare row id names no type.
    assert_eq!(app.gql("sz01.sales", NODE, json!({ "id": row.to_string() })).await.code(), "VALIDATION");
    // `nodes` is bounded like a page.
    let many: Vec<String> = (0..101).map(|_| global.clone()).collect();
    assert_eq!(app.gql("sz01.sales", NODES, json!({ "ids": many })).await.code(), "LIMIT_EXCEEDED");
}

/// Most pages a walk may take before the test gives up.
const MAX_PAGES: usize = 200;

/// Pages a connection whole, `size` at a time, forward (`first`/`after`)
/// and backward (`last`/`before`), checking `pageInfo` on every page;
/// the node ids in list order, both ways. `query` takes `$first`, `$after`,
/// `$last`, `$before` and selects `edges { cursor node { id } } pageInfo
/// { hasNextPage hasPreviousPage startCursor endCursor }` at `path`.
async fn page_both_ways(
    app: &TestApp,
    login: &str,
    query: &str,
    path: &[&str],
    vars: Value,
    size: i64,
) -> (Vec<String>, Vec<String>) {
    let connection = |res: &crate::helpers::Gql| path.iter().fold(res.ok().clone(), |v, key| v[*key].clone());
    let ids_of = |conn: &Value| -> Vec<String> {
        let edges = conn["edges"].as_array().unwrap();
        let info = &conn["pageInfo"];
        assert_eq!(info["startCursor"], edges.first().map_or(Value::Null, |e| e["cursor"].clone()));
        assert_eq!(info["endCursor"], edges.last().map_or(Value::Null, |e| e["cursor"].clone()));
        edges.iter().map(|e| e["node"]["id"].as_str().unwrap().to_owned()).collect()
    };
    let with = |extra: Value| {
        let mut v = vars.clone();
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    };

    let mut forward = Vec::new();
    let mut after: Option<String> = None;
    for page in 0.. {
        assert!(page < MAX_PAGES, "forward paging does not end");
        let res = app.gql(login, query, with(json!({ "first": size, "after": after }))).await;
        let conn = connection(&res);
        let ids = ids_of(&conn);
        assert_eq!(conn["pageInfo"]["hasPreviousPage"], after.is_some(), "forward page {page}");
        forward.extend(ids.clone());
        if conn["pageInfo"]["hasNextPage"] == false {
            break;
        }
        assert_eq!(ids.len() as i64, size, "a page followed by more is full");
        after = conn["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }

    let mut backward: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    for page in 0.. {
        assert!(page < MAX_PAGES, "backward paging does not end");
        let res = app.gql(login, query, with(json!({ "last": size, "before": before }))).await;
        let conn = connection(&res);
        let mut ids = ids_of(&conn);
        assert_eq!(conn["pageInfo"]["hasNextPage"], before.is_some(), "backward page {page}");
        ids.extend(backward);
        backward = ids;
        if conn["pageInfo"]["hasPreviousPage"] == false {
            break;
        }
        before = conn["pageInfo"]["startCursor"].as_str().map(str::to_owned);
    }
    (forward, backward)
}

/// Both walks found the same `expected` items in the same order.
fn assert_same_walks((forward, backward): (Vec<String>, Vec<String>), expected: usize) {
    assert_eq!(forward.len(), expected, "every item once");
    assert_eq!(forward, backward, "backward paging gives the forward order");
    let unique: std::collections::HashSet<_> = forward.iter().collect();
    assert_eq!(unique.len(), expected, "no repeats");
}

const PAGE_ARGS: &str = "$first: Int, $after: String, $last: Int, $before: String";
const PAGE_FIELDS: &str = "edges { cursor node { id } } pageInfo { hasNextPage hasPreviousPage startCursor endCursor }";

async fn customers_page_both_ways_in_every_order(app: TestApp) {
    let q = format!(
        "query({PAGE_ARGS}, $o: CustomerOrderInput) {{ customers(first: $first, after: $after, last: $last,
            before: $before, orderBy: $o) {{ {PAGE_FIELDS} }} }}"
    );
    for order in [json!(null), json!({ "field": "NAME", "direction": "ASC" }), json!({ "field": "UPDATED_AT" })] {
        let walks = page_both_ways(&app, "admin", &q, &["customers"], json!({ "o": order }), 5).await;
        assert_same_walks(walks, 4 * crate::helpers::TEST_CUSTOMERS_PER_STORE);
    }
}

async fn segment_members_page_both_ways(app: TestApp) {
    let q = format!(
        "query({PAGE_ARGS}, $o: CustomerOrderInput) {{ segmentPreview(segment: {{ orgUnit: \"{}\" }}) {{
            customers(first: $first, after: $after, last: $last, before: $before, orderBy: $o) {{ {PAGE_FIELDS} }} }} }}",
        app.unit_id("south")
    );
    // Added time and spend are paged from the index; name by SQL.
    for order in [json!(null), json!({ "field": "ADDED_AT", "direction": "ASC" }), json!({ "field": "NAME" })] {
        let walks = page_both_ways(&app, "admin", &q, &["segmentPreview", "customers"], json!({ "o": order }), 4).await;
        assert_same_walks(walks, 2 * crate::helpers::TEST_CUSTOMERS_PER_STORE);
    }
}

async fn change_requests_audit_log_and_segments_page_both_ways(app: TestApp) {
    let group = app.group_id("活动").await;
    for n in 0..5 {
        let res = app
            .gql(
                "sz01.sales",
                "mutation($g: ID!, $n: String!) { createTag(input: { groupId: $g, name: $n }) { applied } }",
                json!({ "g": group, "n": format!("提议{n}") }),
            )
            .await;
        assert_eq!(res.ok()["createTag"]["applied"], false);
        let res = app
            .gql(
                "admin",
                "mutation($u: ID!, $n: String!) { saveSegment(input: { orgUnitId: $u, name: $n,
                    segment: { city: \"深圳\" } }) { segment { id } } }",
                json!({ "u": app.unit_id("hq"), "n": format!("客群{n}") }),
            )
            .await;
        res.ok();
    }
    let q = format!(
        "query({PAGE_ARGS}) {{ changeRequests(first: $first, after: $after, last: $last, before: $before) {{
            totalCount {PAGE_FIELDS} }} }}"
    );
    let total = app.gql("admin", &q, json!({})).await.ok()["changeRequests"]["totalCount"].as_u64().unwrap();
    assert!(total >= 5);
    let walks = page_both_ways(&app, "admin", &q, &["changeRequests"], json!({}), 2).await;
    assert_same_walks(walks, total as usize);

    let q = format!(
        "query({PAGE_ARGS}) {{ auditLog(first: $first, after: $after, last: $last, before: $before) {{
            totalCount {PAGE_FIELDS} }} }}"
    );
    let total = app.gql("admin", &q, json!({})).await.ok()["auditLog"]["totalCount"].as_u64().unwrap();
    assert!(total >= 10);
    let walks = page_both_ways(&app, "admin", &q, &["auditLog"], json!({}), 3).await;
    assert_same_walks(walks, total as usize);

    let q = format!(
        "query({PAGE_ARGS}) {{ segments(first: $first, after: $after, last: $last, before: $before) {{
            totalCount {PAGE_FIELDS} }} }}"
    );
    let total = app.gql("admin", &q, json!({})).await.ok()["segments"]["totalCount"].as_u64().unwrap();
    assert!(total >= 5);
    let walks = page_both_ways(&app, "admin", &q, &["segments"], json!({}), 2).await;
    assert_same_walks(walks, total as usize);
}

async fn mixing_forward_and_backward_paging_is_a_validation_error(app: TestApp) {
    for args in ["first: 2, last: 2", "after: \"x\", before: \"y\"", "first: 2, before: \"y\""] {
        let res = app.gql("admin", &format!("{{ customers({args}) {{ totalCount }} }}"), no_vars()).await;
        assert_eq!(res.code(), "VALIDATION", "{args}");
    }
    let res = app.gql("admin", "{ auditLog(last: 2, before: \"garbage\") { totalCount } }", no_vars()).await;
    assert_eq!(res.code(), "VALIDATION");
    assert_eq!(res.0["errors"][0]["extensions"]["field"], "before");
}

const STAFF_MEMBER: &str = "query($id: ID!) { staffMember(id: $id) { id login } }";
const STAFF_NODE: &str = "query($id: ID!) { node(id: $id) { __typename id ... on Staff { login } } }";

/// `node` reads a staff member with the rule of `staffMember`: the caller
/// itself, or `staff:read` at the member's home unit. A colleague in the
/// same store, whose unit the salesperson can see, is still `NOT_FOUND`.
async fn a_staff_member_out_of_scope_is_not_found_through_node_as_through_staff_member(app: TestApp) {
    let staff_id = |login: &str| tagbase::domain::StaffId(app.staff(login).id).to_string();
    for (caller, member, visible) in [
        ("sz01.sales", "sz01.sales", true),
        ("sz01.sales", "sz01.manager", false),
        ("sz01.sales", "south.manager", false),
        ("sz01.manager", "sz01.sales", true),
        ("south.manager", "sz01.sales", true),
        ("north.manager", "sz01.sales", false),
    ] {
        let id = staff_id(member);
        let direct = app.gql(caller, STAFF_MEMBER, json!({ "id": id })).await;
        let node = app.gql(caller, STAFF_NODE, json!({ "id": id })).await;
        let nodes = app.gql(caller, NODES, json!({ "ids": [id] })).await;
        if visible {
            assert_eq!(direct.ok()["staffMember"]["login"], member, "{caller} reads {member}");
            assert_eq!(node.ok()["node"], json!({ "__typename": "Staff", "id": id, "login": member }));
            assert_eq!(nodes.ok()["nodes"][0]["id"], id.as_str());
        } else {
            assert_eq!(direct.code(), "NOT_FOUND", "{caller} reads {member}");
            assert_eq!(node.code(), "NOT_FOUND", "{caller} refetches {member}");
            assert_eq!(node.message(), direct.message(), "indistinguishable from `staffMember`");
            assert!(node.0["data"]["node"].is_null());
            assert_eq!(nodes.ok()["nodes"], json!([null]));
        }
    }
}

/// A customer's tag history pages both ways like every connection, and
/// leaves out, on every page, the events of tags the caller may not see.
async fn tag_events_page_both_ways_without_the_events_the_caller_may_not_see(app: TestApp) {
    let customer = app.customers_of("sz01").await[0].clone();
    let tags = [
        app.tag_id("活动", "询价").await,
        app.tag_id("教育需求", "升学咨询").await,
        app.tag_id("教育需求", "小升初需求").await,
    ];
    for op in ["tagCustomers", "untagCustomers", "tagCustomers"] {
        let res = app
            .gql(
                "admin",
                &format!("mutation($c: [ID!]!, $t: [ID!]!) {{ {op}(input: {{ customerIds: $c, tagIds: $t }}) {{ __typename }} }}"),
                json!({ "c": [customer], "t": tags }),
            )
            .await;
        res.ok();
    }
    let everything = app
        .gql(
            "admin",
            "query($id: ID!) { customer(id: $id) { tagEvents(first: 100) { edges { node { id tag { id } } } } } }",
            json!({ "id": customer }),
        )
        .await;
    let events: Vec<(String, String)> = everything.ok()["customer"]["tagEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["node"]["id"].as_str().unwrap().to_owned(), e["node"]["tag"]["id"].as_str().unwrap().to_owned()))
        .collect();
    assert!(events.len() >= 6, "each tag taken off and put on again: {events:?}");
    let q = format!(
        "query({PAGE_ARGS}, $id: ID!) {{ customer(id: $id) {{
            tagEvents(first: $first, after: $after, last: $last, before: $before) {{ {PAGE_FIELDS} }} }} }}"
    );
    let path = ["customer", "tagEvents"];
    let walks = page_both_ways(&app, "admin", &q, &path, json!({ "id": customer }), 2).await;
    assert_eq!(walks.0, events.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), "newest first, as one page");
    assert_same_walks(walks, events.len());

    // Customer service sees only some classes (not interest, 教育需求):
    // its pages skip the others' events wherever they fall.
    let seen = app
        .gql(
            "sz01.service",
            "query($id: ID!) { customer(id: $id) { tagEvents(first: 100) { edges { node { id tag { id } } } } } }",
            json!({ "id": customer }),
        )
        .await;
    let visible: Vec<(String, String)> = seen.ok()["customer"]["tagEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["node"]["id"].as_str().unwrap().to_owned(), e["node"]["tag"]["id"].as_str().unwrap().to_owned()))
        .collect();
    assert!(!visible.is_empty() && visible.len() < events.len(), "{visible:?}");
    assert!(visible.iter().all(|(_, tag)| *tag != tags[1] && *tag != tags[2]), "no interest tag: {visible:?}");
    let in_order: Vec<&(String, String)> = events.iter().filter(|e| visible.contains(e)).collect();
    assert_eq!(in_order.len(), visible.len(), "a subset of what admin sees, in the same order");
    let visible: Vec<String> = visible.into_iter().map(|(id, _)| id).collect();
    let walks = page_both_ways(&app, "sz01.service", &q, &path, json!({ "id": customer }), 2).await;
    assert_eq!(walks.0, visible);
    assert_same_walks(walks, visible.len());

    // Old-style paging by an event id is refused, not misread as a cursor.
    let res = app
        .gql(
            "admin",
            "query($id: ID!, $b: String) { customer(id: $id) { tagEvents(last: 1, before: $b) { edges { cursor } } } }",
            json!({ "id": customer, "b": events[0].0 }),
        )
        .await;
    assert_eq!(res.code(), "VALIDATION");
    assert_eq!(res.0["errors"][0]["extensions"]["field"], "before");
}

on_both_databases!(
    a_node_is_refetched_with_the_scope_of_its_own_query,
    every_object_with_an_id_is_a_node,
    ids_in_inputs_are_global_or_decimal_of_the_right_type,
    customers_page_both_ways_in_every_order,
    segment_members_page_both_ways,
    change_requests_audit_log_and_segments_page_both_ways,
    mixing_forward_and_backward_paging_is_a_validation_error,
    a_staff_member_out_of_scope_is_not_found_through_node_as_through_staff_member,
    tag_events_page_both_ways_without_the_events_the_caller_may_not_see,
);
