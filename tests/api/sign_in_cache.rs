//! Sign-in served from the per-revision cache: a caller costs one
//! statement while nothing it is built from changes, and any change (a
//! role, a session, an org unit), by whatever path it is written, applies
//! on the next request on every instance.

use serde_json::json;

use crate::helpers::{TestApp, no_vars};
use crate::on_both_databases;

const WHO: &str = "{ __typename }";

async fn a_signed_in_caller_costs_one_statement_while_nothing_changes(app: TestApp) {
    app.gql("sz01.sales", WHO, no_vars()).await.ok();
    let before = app.statements();
    app.gql("sz01.sales", WHO, no_vars()).await.ok();
    assert_eq!(app.statements() - before, 1, "only the sign-in revision is read");
    assert!(!app.app.state.auth.cache.is_empty());
}

async fn a_role_change_applies_on_the_next_request_on_every_instance(app: TestApp) {
    let other = app.second_instance().await;
    let customer = app.customers_of("sz01").await[0].clone();
    let read = "query($id: ID!) { customer(id: $id) { id } }";
    // Both instances have the caller cached without the role.
    for on in [&app.app, &other] {
        assert_eq!(app.gql_on(on, "bj01.sales", read, json!({ "id": customer })).await.code(), "NOT_FOUND");
    }
    let binding = json!({ "i": { "staffId": app.staff("bj01.sales").id.to_string(), "role": "sales", "orgUnitId": app.unit_id("sz01") } });
    let assign = "mutation($i: RoleBindingInput!) { assignRole(input: $i) { changed } }";
    assert_eq!(app.gql("admin", assign, binding).await.ok()["assignRole"]["changed"], true);
    for on in [&app.app, &other] {
        let res = app.gql_on(on, "bj01.sales", read, json!({ "id": customer })).await;
        assert_eq!(res.ok()["customer"]["id"], customer, "the new role applies at once");
    }
}

async fn a_revoked_session_is_refused_on_the_next_request_on_every_instance(app: TestApp) {
    let other = app.second_instance().await;
    let auth = &app.app.state.auth;
    let member = app.staff("sz01.sales");
    let tokens =
        tagbase::auth::session::open(&app.db, &auth.keys, auth.lifetimes, member, "wecom").await.expect("session");
    for on in [&app.app, &other] {
        assert!(app.gql_bearer(on, &tokens.access_token, WHO, no_vars()).await.is_ok());
    }
    // Revoked behind both instances' backs, as an operator's script or a
    // third instance would.
    let revoked = tagbase::auth::session::revoke(&app.db, &tokens.session_id, tagbase::auth::RevokeReason::SignOut)
        .await
        .unwrap();
    assert!(revoked);
    for on in [&app.app, &other] {
        assert_eq!(
            app.gql_bearer(on, &tokens.access_token, WHO, no_vars()).await.err().as_deref(),
            Some("UNAUTHENTICATED")
        );
    }
}

async fn a_deactivated_member_written_by_sql_is_refused_on_the_next_request(app: TestApp) {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
    app.gql("sz01.sales", WHO, no_vars()).await.ok();
    entity::staff::Entity::update_many()
        .col_expr(entity::staff::Column::Active, Expr::value(false))
        .filter(entity::staff::Column::Login.eq("sz01.sales"))
        .exec(&app.db)
        .await
        .unwrap();
    let token = app.token("sz01.sales");
    assert_eq!(app.gql_bearer(&app.app, &token, WHO, no_vars()).await.err().as_deref(), Some("UNAUTHENTICATED"));
}

on_both_databases!(
    a_signed_in_caller_costs_one_statement_while_nothing_changes,
    a_role_change_applies_on_the_next_request_on_every_instance,
    a_revoked_session_is_refused_on_the_next_request_on_every_instance,
    a_deactivated_member_written_by_sql_is_refused_on_the_next_request,
);
