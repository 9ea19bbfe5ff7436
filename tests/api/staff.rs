//! Staff management: scoped by `staff:read` / `staff:manage`, audited,
//! and a deactivation that stops the member's next request on every
//! instance while its history stays.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use entity::{audit_log, customer, customer_tag, staff, staff_session};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::on_both_databases;
use crate::sign_in::{ProviderKey, TestProvider};

const CUSTOMERS: &str = "{ customers(first: 100) { totalCount edges { node { orgUnit { code } } } } }";

/// The store codes of the customers a response lists, and their count.
fn stores(res: &Value) -> (Vec<String>, u64) {
    let mut codes: Vec<String> = res["customers"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["orgUnit"]["code"].as_str().unwrap().to_owned())
        .collect();
    codes.sort();
    codes.dedup();
    (codes, res["customers"]["totalCount"].as_u64().unwrap())
}

async fn staff_id(app: &TestApp, login: &str) -> String {
    let res = app
        .gql(
            "admin",
            "query($s: String) { staff(search: $s, first: 5) { edges { node { id login } } } }",
            json!({ "s": login }),
        )
        .await;
    let edges = res.ok()["staff"]["edges"].as_array().unwrap().clone();
    edges.iter().find(|e| e["node"]["login"] == login).unwrap_or_else(|| panic!("no {login}"))["node"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

const DEACTIVATE: &str = "mutation($id: ID!, $to: ID) { deactivateStaff(input: { id: $id, reassignCustomersTo: $to }) {
    staff { login active } sessionsRevoked customersReassigned customersKept } }";

async fn a_salesperson_added_moved_and_deactivated_by_the_region_manager(app: TestApp) {
    let key = ProviderKey::es256("idp-1");
    let provider = TestProvider::start(&[&key]).await;
    let (a, b) = (
        app.instance_with(|s| s.oidc = Some(provider.settings())).await,
        app.instance_with(|s| s.oidc = Some(provider.settings())).await,
    );

    // The south region's manager adds a salesperson to sz01.
    let created = app
        .gql(
            "south.manager",
            "mutation($u: ID!) { createStaff(input: { login: \"sz01.newhire\", displayName: \"南山销售-新人\",
                homeOrgUnitId: $u, oidcSubject: \"idp|4711\", phone: \"13800138000\", email: \"xin@example.com\" })
                { staff { id login active homeOrgUnit { code } phone email identities { kind value } } } }",
            json!({ "u": app.unit_id("sz01") }),
        )
        .await;
    let member = created.ok()["createStaff"]["staff"].clone();
    assert_eq!(member["homeOrgUnit"]["code"], "sz01");
    assert_eq!(member["identities"], json!([{ "kind": "oidc_sub", "value": "idp|4711" }]));
    let id = member["id"].as_str().unwrap().to_owned();
    app.gql(
        "south.manager",
        "mutation($s: ID!, $u: ID!) { assignRole(input: { staffId: $s, role: \"sales\", orgUnitId: $u }) { changed } }",
        json!({ "s": id, "u": app.unit_id("sz01") }),
    )
    .await
    .ok();

    // They sign in through the identity provider and see sz01's customers.
    let token = key.sign(&provider.claims("idp|4711"));
    let res = app.gql_bearer(&a, &token, CUSTOMERS, json!({})).await.expect("signed in");
    let (codes, total) = stores(res.ok());
    assert_eq!(codes, ["sz01"]);
    assert!(total > 0);
    // Linked to a subject, the member is not reachable by its login.
    let by_login = key.sign(&provider.claims("sz01.newhire"));
    assert_eq!(app.gql_bearer(&a, &by_login, CUSTOMERS, json!({})).await.err().as_deref(), Some("UNAUTHENTICATED"));
    // History of their own: a customer they add.
    let added = app
        .gql_bearer(
            &a,
            &token,
            "mutation($u: ID!) { createCustomer(input: { orgUnitId: $u, name: \"新客户-王\" }) { customer { id owner { login } } } }",
            json!({ "u": app.unit_id("sz01") }),
        )
        .await
        .unwrap();
    let customer_id = added.ok()["createCustomer"]["customer"]["id"].as_str().unwrap().to_owned();
    assert_eq!(added.ok()["createCustomer"]["customer"]["owner"]["login"], "sz01.newhire");

    // Moved to gz01: from the next request on, gz01's customers instead.
    let moved = app
        .gql(
            "south.manager",
            "mutation($id: ID!, $u: ID!) { updateStaff(input: { id: $id, homeOrgUnitId: $u }) { staff { homeOrgUnit { code } } } }",
            json!({ "id": id, "u": app.unit_id("gz01") }),
        )
        .await;
    assert_eq!(moved.ok()["updateStaff"]["staff"]["homeOrgUnit"]["code"], "gz01");
    for instance in [&a, &b] {
        let res = app.gql_bearer(instance, &token, CUSTOMERS, json!({})).await.unwrap();
        assert_eq!(stores(res.ok()).0, ["gz01"]);
    }

    // Deactivated: the next request on either instance is refused.
    let audit_before = audit_log::Entity::find().count(&app.db).await.unwrap();
    let done = app.gql("south.manager", DEACTIVATE, json!({ "id": id })).await;
    let payload = &done.ok()["deactivateStaff"];
    assert_eq!(payload["staff"]["active"], false);
    assert_eq!(payload["customersKept"], 1);
    for instance in [&a, &b] {
        assert_eq!(
            app.gql_bearer(instance, &token, CUSTOMERS, json!({})).await.err().as_deref(),
            Some("UNAUTHENTICATED")
        );
    }
    let fresh = key.sign(&provider.claims("idp|4711"));
    assert_eq!(app.gql_bearer(&b, &fresh, CUSTOMERS, json!({})).await.err().as_deref(), Some("UNAUTHENTICATED"));

    // Their history stays: the customer (still theirs, flagged by the
    // inactive owner), their audit rows, the deactivation's own row.
    let seen = app
        .gql(
            "south.manager",
            "query($id: ID!) { customer(id: $id) { owner { login active } } }",
            json!({ "id": customer_id }),
        )
        .await;
    assert_eq!(seen.ok()["customer"]["owner"], json!({ "login": "sz01.newhire", "active": false }));
    let member_row =
        staff::Entity::find().filter(staff::Column::Login.eq("sz01.newhire")).one(&app.db).await.unwrap().unwrap();
    let theirs = audit_log::Entity::find()
        .filter(audit_log::Column::ActorStaffId.eq(member_row.id))
        .count(&app.db)
        .await
        .unwrap();
    assert!(theirs >= 1, "the customer they created is in the audit log");
    assert_eq!(audit_log::Entity::find().count(&app.db).await.unwrap(), audit_before + 1);
    let row = audit_log::Entity::find()
        .filter(audit_log::Column::Action.eq("staff.deactivate"))
        .filter(audit_log::Column::ObjectId.eq(member_row.id.to_string()))
        .one(&app.db)
        .await
        .unwrap();
    assert!(row.is_some(), "the deactivation is audited");
}

async fn staff_management_stays_within_the_managers_scope(app: TestApp) {
    // sz01.service also audits at HQ: beyond the south manager's reach.
    app.app
        .state
        .authz
        .assign_role(tagbase::domain::StaffId(app.staff("sz01.service").id), "auditor", "hq/")
        .await
        .unwrap();
    let ids = [
        ("admin", staff_id(&app, "admin").await),
        ("north", staff_id(&app, "north.manager").await),
        ("service", staff_id(&app, "sz01.service").await),
        ("self", staff_id(&app, "south.manager").await),
        ("sz01.sales", staff_id(&app, "sz01.sales").await),
    ];
    let id = |name: &str| ids.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    let rename = "mutation($id: ID!) { updateStaff(input: { id: $id, displayName: \"改名\" }) { staff { id } } }";
    let create = "mutation($u: ID!) { createStaff(input: { login: \"x.new\", displayName: \"x\", homeOrgUnitId: $u }) { staff { id } } }";
    let staff_before = staff::Entity::find().all(&app.db).await.unwrap();
    let snapshot = app.snapshot().await;

    let cases: Vec<(&str, &str, &str, Value, &str)> = vec![
        ("a region manager cannot see HQ staff", "south.manager", rename, json!({ "id": id("admin") }), "NOT_FOUND"),
        (
            "a region manager cannot see another region's staff",
            "south.manager",
            rename,
            json!({ "id": id("north") }),
            "NOT_FOUND",
        ),
        (
            "a region manager cannot add staff at HQ",
            "south.manager",
            create,
            json!({ "u": app.unit_id("hq") }),
            "FORBIDDEN",
        ),
        (
            "a region manager cannot add staff to another region",
            "south.manager",
            create,
            json!({ "u": app.unit_id("bj01") }),
            "NOT_FOUND",
        ),
        (
            "a region manager cannot manage someone with a role at HQ",
            "south.manager",
            DEACTIVATE,
            json!({ "id": id("service") }),
            "FORBIDDEN",
        ),
        ("nobody deactivates themselves", "south.manager", DEACTIVATE, json!({ "id": id("self") }), "VALIDATION"),
        (
            "a store manager reads staff but does not manage them",
            "sz01.manager",
            create,
            json!({ "u": app.unit_id("sz01") }),
            "FORBIDDEN",
        ),
        (
            "a store manager cannot deactivate",
            "sz01.manager",
            DEACTIVATE,
            json!({ "id": id("sz01.sales") }),
            "FORBIDDEN",
        ),
        (
            "a salesperson cannot see colleagues",
            "sz01.sales",
            "query($id: ID!) { staffMember(id: $id) { login } }",
            json!({ "id": id("service") }),
            "NOT_FOUND",
        ),
        (
            "customers go only to someone who can see them",
            "south.manager",
            DEACTIVATE,
            json!({ "id": id("sz01.sales"), "to": id("north") }),
            "NOT_FOUND",
        ),
    ];
    for (case, login, query, vars, expected) in cases {
        let res = app.gql(login, query, vars).await;
        assert_eq!(res.code(), expected, "{case}: {:#}", res.0);
    }
    assert_eq!(staff::Entity::find().all(&app.db).await.unwrap(), staff_before, "no staff row changed");
    assert_eq!(app.snapshot().await, snapshot, "nothing else changed");

    // The list is scoped too, and filters.
    let list = |login: &'static str, args: String| {
        let app = &app;
        async move {
            let res = app
                .gql(
                    login,
                    &format!(
                        "{{ staff({args}first: 100) {{ edges {{ node {{ login active homeOrgUnit {{ path }} }} }} }} }}"
                    ),
                    json!({}),
                )
                .await;
            res.ok()["staff"]["edges"].as_array().unwrap().iter().map(|e| e["node"].clone()).collect::<Vec<_>>()
        }
    };
    let south = list("south.manager", String::new()).await;
    assert!(south.iter().all(|n| n["homeOrgUnit"]["path"].as_str().unwrap().starts_with("hq/south/")), "{south:?}");
    assert!(south.iter().any(|n| n["login"] == "sz01.sales"));
    assert!(list("sz01.sales", String::new()).await.is_empty(), "sales holds no staff:read");
    let former = list("admin", "active: false, ".into()).await;
    assert_eq!(former.iter().map(|n| n["login"].as_str().unwrap()).collect::<Vec<_>>(), [tagbase::seed::FORMER_SALES]);
    let searched = list("admin", "search: \"SZ01.\", ".into()).await;
    assert!(!searched.is_empty() && searched.iter().all(|n| n["login"].as_str().unwrap().starts_with("sz01.")));
    let in_store = list("admin", format!("orgUnitId: \"{}\", ", app.unit_id("bj01"))).await;
    assert_eq!(in_store.iter().map(|n| n["login"].as_str().unwrap()).collect::<Vec<_>>(), ["bj01.sales"]);
}

async fn deactivation_hands_customers_on_and_keeps_history(app: TestApp) {
    let sales = app.staff("sz01.sales").id;
    let heir = app.staff("sz01.manager").id;
    let owned = customer::Entity::find().filter(customer::Column::OwnerStaffId.eq(sales)).count(&app.db).await.unwrap();
    assert!(owned > 0);
    let tagged_by =
        customer_tag::Entity::find().filter(customer_tag::Column::TaggedBy.eq(sales)).count(&app.db).await.unwrap();
    let acted =
        audit_log::Entity::find().filter(audit_log::Column::ActorStaffId.eq(sales)).count(&app.db).await.unwrap();
    let auth = &app.app.state.auth;
    let session = tagbase::auth::session::open(&app.db, &auth.keys, auth.lifetimes, app.staff("sz01.sales"), "wecom")
        .await
        .unwrap();

    let res = app
        .gql(
            "south.manager",
            DEACTIVATE,
            json!({ "id": staff_id(&app, "sz01.sales").await, "to": staff_id(&app, "sz01.manager").await }),
        )
        .await;
    let payload = &res.ok()["deactivateStaff"];
    assert_eq!(payload["customersReassigned"].as_u64(), Some(owned));
    assert_eq!(payload["customersKept"], 0);
    assert_eq!(payload["sessionsRevoked"], 1);
    assert_eq!(
        customer::Entity::find().filter(customer::Column::OwnerStaffId.eq(heir)).count(&app.db).await.unwrap(),
        owned
    );
    let row = staff_session::Entity::find_by_id(session.session_id.clone()).one(&app.db).await.unwrap().unwrap();
    assert_eq!(row.revoked_reason.as_deref(), Some("deactivated"));
    // Tags they put on and their audit rows are untouched.
    assert_eq!(
        customer_tag::Entity::find().filter(customer_tag::Column::TaggedBy.eq(sales)).count(&app.db).await.unwrap(),
        tagged_by
    );
    assert_eq!(
        audit_log::Entity::find().filter(audit_log::Column::ActorStaffId.eq(sales)).count(&app.db).await.unwrap(),
        acted
    );
    // Twice is a conflict; reactivation brings them back, but not old tokens.
    let again = app.gql("south.manager", DEACTIVATE, json!({ "id": staff_id(&app, "sz01.sales").await })).await;
    assert_eq!(again.code(), "CONFLICT");
    let old_token = app.token("sz01.sales");
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new second for the new token's iat
    let back = app
        .gql(
            "south.manager",
            "mutation($id: ID!) { reactivateStaff(id: $id) { staff { active } } }",
            json!({ "id": staff_id(&app, "sz01.sales").await }),
        )
        .await;
    assert_eq!(back.ok()["reactivateStaff"]["staff"]["active"], true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        app.gql_bearer(&app.app, &old_token, "{ me { staff { login } } }", json!({})).await.err().as_deref(),
        Some("UNAUTHENTICATED")
    );
    assert!(app.gql_bearer(&app.app, &app.token("sz01.sales"), "{ me { staff { login } } }", json!({})).await.is_ok());
}

async fn a_deactivation_racing_requests_stops_every_request_that_starts_after_it(app: TestApp) {
    let other = app.second_instance().await;
    let token = app.token("sz01.sales");
    let target = staff_id(&app, "sz01.sales").await;
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(20);
    let hammer = |instance: &'static str| {
        let (app, other, token, stop) = (&app, &other, &token, &stop);
        async move {
            let on = if instance == "a" { &app.app } else { other };
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                let started = Instant::now();
                let ok = app.gql_bearer(on, token, "{ customers(first: 5) { totalCount } }", json!({})).await.is_ok();
                seen.push((started, ok));
            }
            seen
        }
    };
    let deactivate = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let res = app.gql("south.manager", DEACTIVATE, json!({ "id": target })).await;
        assert_eq!(res.ok()["deactivateStaff"]["staff"]["active"], false);
        let committed = Instant::now();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        committed
    };
    let (a, b, committed) = tokio::join!(hammer("a"), hammer("b"), deactivate);
    for (name, seen) in [("a", a), ("b", b)] {
        assert!(seen.iter().any(|(at, ok)| *ok && *at < committed), "instance {name} served the member before");
        let after: Vec<_> = seen.iter().filter(|(at, _)| *at > committed).collect();
        assert!(!after.is_empty(), "instance {name} was asked after the deactivation");
        assert!(
            after.iter().all(|(_, ok)| !ok),
            "instance {name} served a request that started after the deactivation"
        );
    }
}

on_both_databases!(
    a_salesperson_added_moved_and_deactivated_by_the_region_manager,
    staff_management_stays_within_the_managers_scope,
    deactivation_hands_customers_on_and_keeps_history,
    a_deactivation_racing_requests_stops_every_request_that_starts_after_it,
);
