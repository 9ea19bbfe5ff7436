//! A page of customers with tags, groups, owners and taggers costs the same
//! number of SQL statements whatever its size.

use serde_json::json;

use crate::helpers::TestApp;
use crate::on_both_databases;

const PAGE: &str = "query($n: Int) { customers(first: $n, filter: { search: \"同款\" }) { totalCount edges { node {
    id name owner { login } orgUnit { code } lifecycleStage { name } externalIds { provider }
    tags { source taggedBy { login } tag { name canonicalTag { name } group { name category orgUnit { code } } } } } } } }";

/// The fewest statements of three loads of a page of `n` (work the
/// application does in the background shares the counted pool and only
/// ever adds).
async fn statements_for(app: &TestApp, n: i64) -> usize {
    let mut fewest = usize::MAX;
    for _ in 0..3 {
        let before = app.statements();
        let res = app.gql("admin", PAGE, json!({ "n": n })).await;
        let edges = res.ok()["customers"]["edges"].as_array().unwrap().len();
        assert_eq!(edges as i64, n);
        fewest = fewest.min(app.statements() - before);
    }
    fewest
}

/// 24 customers shaped alike: same kinds of tags, owners, external ids.
async fn alike_customers(app: &TestApp) {
    let mut ids = Vec::new();
    for i in 0..24 {
        let res = app
            .gql(
                "sz01.manager",
                "mutation($i: CreateCustomerInput!) { createCustomer(input: $i) { customer { id } } }",
                json!({ "i": { "orgUnitId": app.unit_id("sz01"), "name": format!("同款{i}"),
                    "externalIds": [{ "provider": "wecom", "externalId": format!("same-{i}") }] } }),
            )
            .await;
        ids.push(res.ok()["createCustomer"]["customer"]["id"].clone());
    }
    let tags = [
        app.tag_id("华南区域标签", "黄金会员").await,
        app.tag_id("客户阶段", "付费客户").await,
        app.tag_id("服务需求", "投诉记录").await,
    ];
    app.gql(
        "sz01.manager",
        "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }",
        json!({ "c": ids, "t": tags }),
    )
    .await
    .ok();
}

async fn a_page_of_customers_costs_a_constant_number_of_statements(app: TestApp) {
    alike_customers(&app).await;
    // The caller's first request builds its cached sign-in; count from the next.
    statements_for(&app, 1).await;
    let small = statements_for(&app, 2).await;
    let large = statements_for(&app, 24).await;
    assert_eq!(small, large, "statements for 2 and for 24 customers");
    assert!(large <= 14, "a page costs {large} statements");
}

on_both_databases!(a_page_of_customers_costs_a_constant_number_of_statements);
