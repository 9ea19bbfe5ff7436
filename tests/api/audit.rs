//! The audit log (SPEC §9): what happened, by whom, filtered and paged;
//! scoped and masked for its reader; refused attempts recorded; rows that
//! nothing can change.

use entity::audit_log;
use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait};
use serde_json::{Value, json};

use crate::helpers::{Gql, TestApp};
use crate::on_both_databases;

const LOG: &str = "query($f: AuditLogFilter, $first: Int, $after: String) {
    auditLog(filter: $f, first: $first, after: $after) {
        totalCount pageInfo { hasNextPage endCursor }
        edges { node { id action objectKind objectId outcome occurredAt requestId detail
            actor { login } orgUnit { code } } } } }";

async fn log(app: &TestApp, login: &str, filter: Value) -> Gql {
    app.gql(login, LOG, json!({ "f": filter, "first": 100 })).await
}

fn rows(res: &Gql) -> Vec<Value> {
    res.ok()["auditLog"]["edges"].as_array().unwrap().iter().map(|e| e["node"].clone()).collect()
}

fn actions(res: &Gql) -> Vec<String> {
    rows(res).iter().map(|r| r["action"].as_str().unwrap().to_owned()).collect()
}

async fn set_phone(app: &TestApp, login: &str, customer: &str, phone: &str) {
    let version = app.gql(login, "query($id: ID!) { customer(id: $id) { version } }", json!({ "id": customer })).await;
    let version = version.ok()["customer"]["version"].clone();
    app.gql(
        login,
        "mutation($in: UpdateCustomerInput!) { updateCustomer(input: $in) { customer { id } } }",
        json!({ "in": { "id": customer, "version": version, "phone": phone, "city": "深圳" } }),
    )
    .await
    .ok();
}

/// A proposal, its approval and a customer edit, read back by the HQ
/// auditor: each step one row, with who, what and where, and filters by
/// actor, action (exact and prefix), object, scope and time, paged.
async fn the_log_shows_what_happened(app: TestApp) {
    let started = chrono::Utc::now();
    let regional = app.tag_id("华南区域标签", "南方气候").await;
    let version = app.gql("admin", "query($id: ID!) { tag(id: $id) { version } }", json!({ "id": regional })).await;
    let proposal = app
        .gql(
            "sz01.manager",
            "mutation($in: UpdateTagInput!) { updateTag(input: $in) { changeRequest { id } } }",
            json!({ "in": { "id": regional, "expectedVersion": version.ok()["tag"]["version"], "name": "南方湿热气候",
                            "reason": "更准确" } }),
        )
        .await;
    let request = proposal.ok()["updateTag"]["changeRequest"]["id"].as_str().unwrap().to_owned();
    app.gql(
        "south.manager",
        "mutation($id: ID!) { approveChangeRequest(id: $id, comment: \"同意\") { changeRequest { status } } }",
        json!({ "id": request }),
    )
    .await
    .ok();
    let customer = app.customers_of("sz01").await[0].clone();
    set_phone(&app, "sz01.sales", &customer, "13900001111").await;

    let since = log(&app, "hq.auditor", json!({ "from": started })).await;
    assert_eq!(
        actions(&since),
        ["customer.update", "tag.update", "change_request.approve", "change_request.create"],
        "newest first"
    );
    assert_eq!(since.ok()["auditLog"]["totalCount"], 4);
    let rows = rows(&since);
    let [update, edit, approval, filed] = [&rows[0], &rows[1], &rows[2], &rows[3]];
    assert_eq!(update["actor"]["login"], "sz01.sales");
    assert_eq!(update["orgUnit"]["code"], "sz01");
    assert_eq!(update["objectKind"], "customer");
    assert_eq!(update["objectId"], customer.as_str());
    assert_eq!(update["detail"]["changes"]["city"]["to"], "深圳");
    assert_eq!(filed["actor"]["login"], "sz01.manager");
    assert_eq!(filed["orgUnit"]["code"], "south", "filed for the deciding unit");
    assert_eq!(filed["detail"]["kind"], "tag.update");
    assert_eq!(approval["actor"]["login"], "south.manager");
    assert_eq!(approval["objectId"], request.as_str());
    assert_eq!(approval["detail"]["comment"], "同意");
    assert_eq!(edit["actor"]["login"], "sz01.manager", "the change is the requester's");
    assert_eq!(edit["objectId"], regional.as_str());
    assert_eq!(edit["detail"]["changeRequestId"], crate::helpers::row_id(&request));
    assert_eq!(edit["detail"]["change"]["changes"]["name"], "南方湿热气候");
    assert!(rows.iter().all(|r| r["outcome"] == "OK" && r["requestId"].is_string()));

    // Filters.
    let manager = app.staff("sz01.manager").id.to_string();
    let by_actor = log(&app, "hq.auditor", json!({ "from": started, "actorId": manager })).await;
    assert_eq!(actions(&by_actor), ["tag.update", "change_request.create"]);
    let prefix = log(&app, "hq.auditor", json!({ "from": started, "action": "change_request." })).await;
    assert_eq!(actions(&prefix), ["change_request.approve", "change_request.create"]);
    let star = log(&app, "hq.auditor", json!({ "from": started, "action": "change_request.c*" })).await;
    assert_eq!(actions(&star), ["change_request.create"]);
    let exact = log(&app, "hq.auditor", json!({ "action": "tag.update" })).await;
    assert_eq!(actions(&exact), ["tag.update"]);
    let object = log(&app, "hq.auditor", json!({ "objectKind": "customer", "objectId": customer })).await;
    assert_eq!(actions(&object), ["customer.update"]);
    let south = log(&app, "hq.auditor", json!({ "from": started, "scopeId": app.unit_id("south") })).await;
    assert_eq!(south.ok()["auditLog"]["totalCount"], 4, "sz01 is in the south");
    let north = log(&app, "hq.auditor", json!({ "from": started, "scopeId": app.unit_id("north") })).await;
    assert_eq!(north.ok()["auditLog"]["totalCount"], 0);
    let later = log(&app, "hq.auditor", json!({ "from": chrono::Utc::now() + chrono::Duration::hours(1) })).await;
    assert_eq!(later.ok()["auditLog"]["totalCount"], 0);
    let before = log(&app, "hq.auditor", json!({ "to": started, "action": "tag.update" })).await;
    assert_eq!(before.ok()["auditLog"]["totalCount"], 0);
    let backwards =
        log(&app, "hq.auditor", json!({ "from": started, "to": started - chrono::Duration::hours(1) })).await;
    assert_eq!(backwards.code(), "VALIDATION");

    // Paging: two pages of two, no row twice.
    let page = |after: Option<String>| {
        let app = &app;
        async move { app.gql("hq.auditor", LOG, json!({ "f": { "from": started }, "first": 2, "after": after })).await }
    };
    let first = page(None).await;
    assert_eq!(first.ok()["auditLog"]["pageInfo"]["hasNextPage"], true);
    let cursor = first.ok()["auditLog"]["pageInfo"]["endCursor"].as_str().unwrap().to_owned();
    let second = page(Some(cursor)).await;
    assert_eq!(second.ok()["auditLog"]["pageInfo"]["hasNextPage"], false);
    let mut both = actions(&first);
    both.extend(actions(&second));
    assert_eq!(both, actions(&since));
}

/// Who reads the log: the auditor and HQ admin; not sales, not a region
/// manager (the policy gives them no `audit_log:read`). A reader bound
/// lower sees only its units' rows.
async fn readers_are_scoped(app: TestApp) {
    let started = chrono::Utc::now();
    set_phone(&app, "sz01.sales", &app.customers_of("sz01").await[0], "13900001111").await;
    set_phone(&app, "bj01.sales", &app.customers_of("bj01").await[0], "13900002222").await;
    for login in ["sz01.sales", "south.manager", "sz01.manager"] {
        assert_eq!(log(&app, login, json!({})).await.code(), "FORBIDDEN", "{login}");
    }
    for login in ["hq.auditor", "admin"] {
        let all = log(&app, login, json!({ "from": started })).await;
        assert_eq!(all.ok()["auditLog"]["totalCount"], 2, "{login}");
    }
    // An auditor of the north region only.
    let bind = app
        .gql(
            "admin",
            "mutation($i: RoleBindingInput!) { assignRole(input: $i) { changed } }",
            json!({ "i": { "staffId": app.staff("north.manager").id.to_string(), "role": "auditor",
                           "orgUnitId": app.unit_id("north") } }),
        )
        .await;
    bind.ok();
    let north = log(&app, "north.manager", json!({ "from": started, "action": "customer.update" })).await;
    let seen = rows(&north);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["orgUnit"]["code"], "bj01");
    // Rows of HQ's own units and system-wide rows stay out of its reach.
    let everything = log(&app, "north.manager", json!({})).await;
    assert!(
        rows(&everything)
            .iter()
            .all(|r| ["north", "bj01", "tj01"].contains(&r["orgUnit"]["code"].as_str().unwrap_or("none")))
    );
    let hq = log(&app, "north.manager", json!({ "scopeId": app.unit_id("hq") })).await;
    assert!(rows(&hq).iter().all(|r| r["orgUnit"]["code"] != "hq"));
}

/// Values a reader may not see are masked in the log as everywhere: the
/// phone by the reader's field rule, rows about tags of a class it may not
/// see, and other people's personal tag names.
async fn guarded_values_are_masked(app: TestApp) {
    let started = chrono::Utc::now();
    let customer = app.customers_of("sz01").await[0].clone();
    set_phone(&app, "sz01.sales", &customer, "13900001111").await;
    let filter = json!({ "from": started, "action": "customer.update" });
    let full = log(&app, "admin", filter.clone()).await;
    assert_eq!(rows(&full)[0]["detail"]["changes"]["phone"]["to"], "13900001111");
    let masked = log(&app, "hq.auditor", filter.clone()).await;
    assert_eq!(rows(&masked)[0]["detail"]["changes"]["phone"]["to"], "139****1111", "auditors read phones masked");
    assert_eq!(rows(&masked)[0]["detail"]["changes"]["city"]["to"], "深圳", "unguarded values stay");

    // Customer service reads its store's log (granted here), phones masked,
    // never the sensitive class, never others' personal tags.
    app.gql(
        "admin",
        "mutation { grantPermission(input: { role: \"customer_service\", object: \"audit_log\", action: \"read\" }) { changed } }",
        json!({}),
    )
    .await
    .ok();
    let group = app.create_group("sz01.manager", "sz01", "门店健康", "sensitive", false).await;
    app.gql("sz01.sales", "mutation { createPersonalTag(input: { name: \"爱喝茶\" }) { tag { id } } }", json!({}))
        .await
        .ok();
    let service = log(&app, "sz01.service", json!({ "from": started })).await;
    let seen = rows(&service);
    let phone = seen.iter().find(|r| r["action"] == "customer.update").unwrap();
    assert_eq!(phone["detail"]["changes"]["phone"]["to"], "139****1111");
    let sensitive = seen.iter().find(|r| r["action"] == "tag_group.create").unwrap();
    assert_eq!(sensitive["objectId"], group.as_str());
    assert_eq!(sensitive["detail"], json!({ "visibilityClass": "sensitive", "hidden": "***" }));
    // Somebody else's personal tag: the row says nothing of it, id included.
    let personal = seen.iter().find(|r| r["action"] == "tag.create").unwrap();
    assert_eq!(personal["detail"], json!({ "hidden": "***" }));
    assert!(personal["objectId"].is_null(), "{personal}");
    // The store manager's own view of the same rows (it sees the class).
    let admin = log(&app, "admin", json!({ "from": started, "action": "tag_group.create" })).await;
    assert_eq!(rows(&admin)[0]["detail"]["change"]["group"]["name"], "门店健康");
}

/// Rows about tags the reader may not see lose them, ids included: a
/// reader without the value class does not learn that 有车一族 was put on a
/// customer, and an auditor does not learn who carries somebody else's
/// personal tag.
async fn tag_ids_the_reader_may_not_see_are_hidden(app: TestApp) {
    let started = chrono::Utc::now();
    app.gql(
        "admin",
        "mutation { grantPermission(input: { role: \"customer_service\", object: \"audit_log\", action: \"read\" }) { changed } }",
        json!({}),
    )
    .await
    .ok();
    let car = app.tag_id("资产状况", "有车一族").await;
    let industry = app.tag_id("行业", "汽车行业").await;
    let personal = app
        .gql("sz01.sales", "mutation { createPersonalTag(input: { name: \"爱喝茶\" }) { tag { id } } }", json!({}))
        .await;
    let personal = personal.ok()["createPersonalTag"]["tag"]["id"].as_str().unwrap().to_owned();
    let customers = app.customers_of("sz01").await;
    let tag = "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }";
    for (who, tags) in [(&customers[..2], vec![car.clone()]), (&customers[2..4], vec![car.clone(), industry.clone()])] {
        app.gql("sz01.sales", tag, json!({ "c": who, "t": tags })).await.ok();
    }
    app.gql("sz01.sales", tag, json!({ "c": &customers[4..5], "t": [personal] })).await.ok();
    let filter = json!({ "from": started, "action": "customer.tag" });
    let details = |res: &Gql| rows(res).iter().rev().map(|r| r["detail"].clone()).collect::<Vec<_>>();
    let admin = details(&log(&app, "admin", filter.clone()).await);
    assert_eq!(admin.len(), 3);
    assert!(admin[0]["tagIds"].as_array().unwrap().len() == 1 && admin[1]["tagIds"].as_array().unwrap().len() == 2);
    let service = details(&log(&app, "sz01.service", filter.clone()).await);
    assert_eq!(service[0], json!({ "hidden": "***" }), "only a value tag: nothing of it");
    let industry_id: Value =
        admin[1]["tagIds"].as_array().unwrap().iter().find(|id| **id != admin[0]["tagIds"][0]).unwrap().clone();
    assert_eq!(service[1]["tagIds"], json!([industry_id]), "the value tag is gone, the basic one stays");
    assert_eq!(service[2], json!({ "hidden": "***" }), "somebody else's personal tag");
    let auditor = details(&log(&app, "hq.auditor", filter.clone()).await);
    assert_eq!(auditor[0]["tagIds"], admin[0]["tagIds"], "the auditor sees the value class");
    assert_eq!(auditor[2], json!({ "hidden": "***" }), "but not who carries a personal tag");
    assert_eq!(admin[2], json!({ "hidden": "***" }), "nor does HQ without personal_tag:read_all");
    // The row itself keeps everything: hiding is per reader.
    let stored = audit_log::Entity::find().all(&app.db).await.unwrap();
    assert!(stored.iter().any(
        |r| r.action == "customer.tag" && r.detail["customerIds"] == json!([crate::helpers::row_id(&customers[4])])
    ));
}

/// A refused mutation leaves a DENIED row naming who tried what and why;
/// nothing else is written. A lock's refusal names the lock.
async fn refused_mutations_are_logged(app: TestApp) {
    let group = app.group_id("活动").await;
    let customer = app.customers_of("sz01").await[0].clone();
    let before = app.snapshot().await;
    let res = app
        .gql(
            "sz01.sales",
            "mutation($g: ID!) { lockTagGroup(input: { groupId: $g, reason: \"我来锁\" }) { lock { id } } }",
            json!({ "g": group }),
        )
        .await;
    assert_eq!(res.code(), "FORBIDDEN");
    assert_eq!(app.snapshot().await, before, "no change, no OK row");
    let denied = log(&app, "hq.auditor", json!({ "outcome": "DENIED" })).await;
    let seen = rows(&denied);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["action"], "mutation.lockTagGroup");
    assert_eq!(seen[0]["actor"]["login"], "sz01.sales");
    assert_eq!(seen[0]["orgUnit"]["code"], "sz01");
    assert_eq!(seen[0]["detail"]["code"], "FORBIDDEN");

    // Refused by a lock.
    let lock = app
        .gql(
            "hq.marketing",
            "mutation($g: ID!, $c: [ID!]) { lockTagGroup(input: { groupId: $g, customerIds: $c, reason: \"活动\" }) { lock { id } } }",
            json!({ "g": group, "c": [customer] }),
        )
        .await;
    let lock_id = lock.ok()["lockTagGroup"]["lock"]["id"].as_str().unwrap().to_owned();
    let tag = app.tag_id("活动", "已完成交易").await;
    let res = app
        .gql(
            "sz01.sales",
            "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }",
            json!({ "c": [customer], "t": [tag] }),
        )
        .await;
    assert_eq!(res.code(), "LOCKED");
    let denied = log(&app, "hq.auditor", json!({ "outcome": "DENIED", "action": "mutation.tagCustomers" })).await;
    let seen = rows(&denied);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["detail"]["code"], "LOCKED");
    assert_eq!(seen[0]["detail"]["lockId"], lock_id.as_str());

    // A refused read is not a change attempt: no row.
    let _ = log(&app, "sz01.sales", json!({})).await;
    let denied = log(&app, "hq.auditor", json!({ "outcome": "DENIED" })).await;
    assert_eq!(denied.ok()["auditLog"]["totalCount"], 2);
}

/// A refused field is filed under its field name, not the alias it was
/// asked under, through a fragment too: one row per refused field.
async fn refused_aliased_mutations_are_logged_under_the_field_name(app: TestApp) {
    let group = app.group_id("活动").await;
    let before = app.snapshot().await;
    let res = app
        .gql(
            "sz01.sales",
            "mutation($g: ID!) { first: lockTagGroup(input: { groupId: $g, reason: \"一\" }) { lock { id } } ...Again }
             fragment Again on Mutation { again: lockTagGroup(input: { groupId: $g, reason: \"二\" }) { lock { id } } }",
            json!({ "g": group }),
        )
        .await;
    let errors: Vec<(Value, Value)> = res.0["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].clone(), e["extensions"]["code"].clone()))
        .collect();
    assert_eq!(errors, [(json!(["first"]), json!("FORBIDDEN")), (json!(["again"]), json!("FORBIDDEN"))]);
    assert_eq!(app.snapshot().await, before, "no change, no OK row");
    let denied = log(&app, "hq.auditor", json!({ "outcome": "DENIED" })).await;
    let seen = rows(&denied);
    assert_eq!(seen.len(), 2);
    for row in &seen {
        assert_eq!(row["action"], "mutation.lockTagGroup");
        assert_eq!(row["actor"]["login"], "sz01.sales");
        assert_eq!(row["orgUnit"]["code"], "sz01");
        assert_eq!(row["detail"]["code"], "FORBIDDEN");
    }
}

/// Rows cannot be changed or removed, through the API (there is no such
/// mutation) or behind its back (the database refuses).
async fn rows_are_append_only(app: TestApp) {
    let sdl = tagbase::graphql::sdl();
    let mutations = sdl.split("type Mutation {").nth(1).unwrap().split("\n}").next().unwrap();
    // Descriptions may say a mutation is audited; names and arguments may
    // not name the audit log.
    let without_descriptions: String =
        mutations.split("\"\"\"").enumerate().filter(|(i, _)| i % 2 == 0).map(|(_, part)| part).collect();
    assert!(without_descriptions.contains("tagCustomers"), "the mutations were read");
    assert!(!without_descriptions.to_lowercase().contains("audit"), "no mutation touches the audit log");
    set_phone(&app, "sz01.sales", &app.customers_of("sz01").await[0], "13900001111").await;
    let count = audit_log::Entity::find().count(&app.db).await.unwrap();
    assert!(count > 0);
    for statement in [
        "UPDATE audit_log SET action = 'forged'",
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE id = (SELECT MIN(id) FROM audit_log)",
    ] {
        let refused = app.db.execute_unprepared(statement).await;
        let err = refused.expect_err(statement).to_string();
        assert!(err.contains("append-only"), "{statement}: {err}");
    }
    assert_eq!(audit_log::Entity::find().count(&app.db).await.unwrap(), count);
    let forged = log(&app, "admin", json!({ "action": "forged" })).await;
    assert_eq!(forged.ok()["auditLog"]["totalCount"], 0);
}

on_both_databases!(
    the_log_shows_what_happened,
    readers_are_scoped,
    guarded_values_are_masked,
    refused_mutations_are_logged,
    refused_aliased_mutations_are_logged_under_the_field_name,
    rows_are_append_only,
    tag_ids_the_reader_may_not_see_are_hidden,
);
