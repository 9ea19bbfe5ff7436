//! Limits on documents: cost that grows with list sizes, aliases, root
//! fields, depth (introspection apart), one code per limit, and refusals
//! that happen before any database work.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tagbase::config::Limits;

use crate::helpers::{Gql, TestApp, no_vars};
use crate::{on_both_databases, on_both_databases_with};

const INTROSPECTION: &str = include_str!("../fixtures/introspection-query.graphql");

/// Statements a request runs, and its answer.
async fn counted(app: &TestApp, query: &str) -> (usize, Gql) {
    let before = app.statements();
    let res = app.gql("admin", query, no_vars()).await;
    (app.statements() - before, res)
}

/// Statements of a request that does nothing but sign in (the first
/// request of an application also loads what later ones reuse).
async fn sign_in_only(app: &TestApp) -> usize {
    counted(app, "{ __typename }").await.1.ok();
    let mut fewest = usize::MAX;
    for _ in 0..3 {
        let (n, res) = counted(app, "{ __typename }").await;
        res.ok();
        fewest = fewest.min(n);
    }
    fewest
}

/// Asserts the document is refused with `LIMIT_EXCEEDED` after signing in
/// and before anything else touched the database; returns the message.
async fn refused_before_any_database_work(app: &TestApp, query: &str) -> String {
    let baseline = sign_in_only(app).await;
    let started = Instant::now();
    // The fewest of three tries: the index follower's background rounds
    // share the counted connection pool and only ever add statements.
    let (mut statements, res) = counted(app, query).await;
    for _ in 0..2 {
        statements = statements.min(counted(app, query).await.0);
    }
    assert_eq!(res.code(), "LIMIT_EXCEEDED", "{:#}", res.0);
    assert!(res.0["data"].is_null(), "nothing may run: {:#}", res.0);
    assert_eq!(statements, baseline, "statements beyond sign-in were run");
    assert!(started.elapsed() < Duration::from_secs(15), "refusing three times took {:?}", started.elapsed());
    res.message()
}

fn aliased(n: usize, field: &str) -> String {
    format!("{{ {} }}", (0..n).map(|i| format!("a{i}: {field} ")).collect::<String>())
}

/// A query `depth` fields deep through `OrgUnit.parent`.
fn nested(depth: usize) -> String {
    let parents = depth - 4;
    format!("{{ me {{ staff {{ homeOrgUnit {{ {}name{} }} }} }} }}", "parent { ".repeat(parents), " }".repeat(parents))
}

async fn the_standard_introspection_query_is_answered_in_full(app: TestApp) {
    let res = app.gql("hq.auditor", INTROSPECTION, no_vars()).await;
    let schema = &res.ok()["__schema"];
    assert_eq!(schema["queryType"]["name"], "Query");
    assert_eq!(schema["mutationType"]["name"], "Mutation");
    let types = schema["types"].as_array().unwrap();
    let names: BTreeSet<&str> = types.iter().filter_map(|t| t["name"].as_str()).collect();
    // Every type of the committed SDL is there.
    let sdl = tagbase::graphql::sdl();
    for line in sdl.lines() {
        let mut words = line.split_whitespace();
        if let (Some("type" | "input" | "enum" | "scalar" | "interface" | "union"), Some(name)) =
            (words.next(), words.next())
        {
            assert!(names.contains(name), "introspection lacks {name}");
        }
    }
    // Every type reference ends in a named type: the nesting was enough.
    fn named(reference: &Value) -> bool {
        reference["name"].is_string() || (reference["ofType"].is_object() && named(&reference["ofType"]))
    }
    let mut references = 0;
    for t in types {
        for field in t["fields"].as_array().into_iter().flatten() {
            assert!(named(&field["type"]), "{} . {} has no named type", t["name"], field["name"]);
            references += 1;
        }
    }
    assert!(references > 100, "only {references} field types");
    let customer = types.iter().find(|t| t["name"] == "Customer").unwrap();
    assert!(customer["fields"].as_array().unwrap().iter().any(|f| f["name"] == "tags"));
}

async fn ordinary_queries_deeper_than_the_limit_are_refused(app: TestApp) {
    let ok = app.gql("admin", &nested(12), no_vars()).await;
    ok.ok();
    // Depth 13 (just over), 22, and far beyond the parser's own nesting
    // bound: one limit, one code, one message.
    for depth in [13, 22, 40, 200] {
        let message = refused_before_any_database_work(&app, &nested(depth)).await;
        assert_eq!(message, "Query is nested too deep.", "depth {depth}");
    }
    // A document that does not parse is not a limit.
    let res = app.gql("admin", "{ me { ", no_vars()).await;
    assert_eq!(res.code(), "VALIDATION");
}

async fn introspection_cannot_walk_the_type_graph_in_circles(app: TestApp) {
    let cycle = "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }";
    let message = refused_before_any_database_work(&app, cycle).await;
    assert!(message.contains("introspection may nest"), "{message}");
    let deep = format!("{{ __type(name: \"Customer\") {{ {}name{} }} }}", "ofType { ".repeat(20), " }".repeat(20));
    assert_eq!(refused_before_any_database_work(&app, &deep).await, "Query is nested too deep.");
}

async fn alias_bombs_are_refused_before_any_database_work(app: TestApp) {
    // At the root, the root-field limit (20) comes before the alias limit
    // (50); either way the answer is LIMIT_EXCEEDED.
    let typenames = aliased(10_000, "__typename");
    assert!(refused_before_any_database_work(&app, &typenames).await.starts_with("too many"));
    let pages = aliased(250, "customers(first: 100) { edges { node { id name tags { tag { name } } } } }");
    assert!(refused_before_any_database_work(&app, &pages).await.starts_with("too many"));
    let typenames = format!("{{ me {} }}", aliased(10_000, "__typename"));
    assert!(refused_before_any_database_work(&app, &typenames).await.contains("too many aliases"));
    let nested = format!("{{ me {{ staff {{ {} }} }} }}", (0..51).map(|i| format!("a{i}: login ")).collect::<String>());
    assert!(refused_before_any_database_work(&app, &nested).await.contains("too many aliases"));
    // Up to the limit, aliases work.
    let fifty = app.gql("admin", &format!("{{ me {} }}", aliased(50, "__typename")), no_vars()).await;
    assert_eq!(fifty.ok()["me"]["a49"], "Me");
}

/// With the alias and root-field limits out of the way, the cost alone refuses many pages.
async fn cost_grows_with_page_sizes(app: TestApp) {
    let pages = aliased(250, "customers(first: 100) { edges { node { id name } } }");
    assert_eq!(refused_before_any_database_work(&app, &pages).await, "Query is too complex.");
    let counts = aliased(250, "customers(first: 100) { totalCount }");
    assert_eq!(refused_before_any_database_work(&app, &counts).await, "Query is too complex.");
    // The same selection under `first: 1` is cheap, and one full page of
    // customers with their tags is fine.
    let small = app.gql("admin", &aliased(100, "customers(first: 1) { edges { node { id } } }"), no_vars()).await;
    assert_eq!(small.ok()["a99"]["edges"].as_array().unwrap().len(), 1);
    let page = "{ customers(first: 60) { edges { node { id name tags { source tag { name group { name } } } } } } }";
    assert!(!app.gql("admin", page, no_vars()).await.ok()["customers"]["edges"].as_array().unwrap().is_empty());
    // A customer's tags count 20 rows each: 100 customers with a large
    // selection under their tags is over.
    let heavy = "{ customers(first: 100) { edges { node { id tags { source sourceRef taggedAt expiresAt
        taggedBy { login displayName } tag { id name group { name category orgUnit { code } } } } } } } }";
    assert_eq!(app.gql("admin", heavy, no_vars()).await.code(), "LIMIT_EXCEEDED");
}

async fn root_fields_are_limited(app: TestApp) {
    let many = format!("{{ {} }}", "me { staff { login } } ".repeat(21));
    assert!(refused_before_any_database_work(&app, &many).await.contains("too many root fields"));
    let twenty = app.gql("admin", &format!("{{ {} }}", "me { staff { login } } ".repeat(20)), no_vars()).await;
    assert_eq!(twenty.ok()["me"]["staff"]["login"], "admin");
}

async fn fragment_bombs_are_refused_at_once(app: TestApp) {
    // Each fragment spreads the next ten times: 10^12 fields once expanded.
    let mut bomb = String::from("{ me { ...F0 } }");
    for i in 0..12 {
        bomb += &format!(" fragment F{i} on Me {{ {} }}", format!("...F{} ", i + 1).repeat(10));
    }
    bomb += " fragment F12 on Me { __typename }";
    assert_eq!(refused_before_any_database_work(&app, &bomb).await, "Query is too complex.");
}

async fn first_below_one_is_clamped_to_one(app: TestApp) {
    for first in [-1, 0, i32::MIN] {
        let res = app
            .gql("admin", "query($n: Int) { customers(first: $n) { edges { node { id } } } }", json!({ "n": first }))
            .await;
        assert_eq!(res.ok()["customers"]["edges"].as_array().unwrap().len(), 1, "first: {first}");
    }
}

/// Every operation shown in README.md and docs/ fits the limits (its
/// placeholders may fail otherwise, but never on a limit).
async fn documented_operations_fit_the_limits(app: TestApp) {
    let mut operations = Vec::new();
    for doc in ["README.md", "docs/governance.md", "docs/segment-language.md", "docs/permissions.md"] {
        let text = std::fs::read_to_string(doc).unwrap();
        for block in text.split("```graphql").skip(1) {
            let block = block.split("```").next().unwrap();
            operations.extend(split_operations(block));
        }
    }
    assert!(operations.len() >= 10, "found {} operations", operations.len());
    for operation in operations {
        let res = app.gql("admin", &operation, no_vars()).await;
        let codes: Vec<&str> =
            res.0["errors"].as_array().into_iter().flatten().filter_map(|e| e["extensions"]["code"].as_str()).collect();
        assert!(!codes.contains(&"LIMIT_EXCEEDED"), "{operation}\n{:#}", res.0);
    }
}

/// The operations of a block of examples: comments dropped, split where
/// the braces close.
fn split_operations(block: &str) -> Vec<String> {
    let text: String = block.lines().map(|l| l.split('#').next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
    let mut operations = Vec::new();
    let (mut depth, mut current, mut in_string) = (0usize, String::new(), false);
    for c in text.chars() {
        current.push(c);
        match c {
            '"' => in_string = !in_string,
            '{' if !in_string => depth += 1,
            '}' if !in_string => {
                depth -= 1;
                if depth == 0 {
                    operations.push(std::mem::take(&mut current).trim().to_owned());
                }
            }
            _ => {}
        }
    }
    operations
}

on_both_databases!(
    the_standard_introspection_query_is_answered_in_full,
    ordinary_queries_deeper_than_the_limit_are_refused,
    introspection_cannot_walk_the_type_graph_in_circles,
    alias_bombs_are_refused_before_any_database_work,
    root_fields_are_limited,
    fragment_bombs_are_refused_at_once,
    first_below_one_is_clamped_to_one,
    documented_operations_fit_the_limits,
);

on_both_databases_with!(
    cost_grows_with_page_sizes => Limits { max_aliases: 1_000, max_root_fields: 1_000, ..Limits::default() },
);
