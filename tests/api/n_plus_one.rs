//! A page of customers with tags, groups, owners and taggers costs the same
//! number of SQL statements whatever its size.

use serde_json::json;

use crate::helpers::TestApp;
use crate::on_both_databases;

const PAGE: &str = "query($n: Int) { customers(first: $n) { totalCount edges { node {
    id name owner { login } orgUnit { code } lifecycleStage { name } externalIds { provider }
    tags { source taggedBy { login } tag { name canonicalTag { name } group { name category orgUnit { code } } } } } } } }";

async fn statements_for(app: &TestApp, n: i64) -> usize {
    let before = app.statements();
    let res = app.gql("admin", PAGE, json!({ "n": n })).await;
    let edges = res.ok()["customers"]["edges"].as_array().unwrap().len();
    assert_eq!(edges as i64, n);
    app.statements() - before
}

async fn a_page_of_customers_costs_a_constant_number_of_statements(app: TestApp) {
    // Warm up (policy load, first-use settings) so both runs are alike.
    statements_for(&app, 1).await;
    let small = statements_for(&app, 2).await;
    let large = statements_for(&app, 24).await;
    assert_eq!(small, large, "statements for 2 and for 24 customers");
    assert!(large <= 12, "a page costs {large} statements");
}

on_both_databases!(a_page_of_customers_costs_a_constant_number_of_statements);
