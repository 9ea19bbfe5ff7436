#[test]
fn committed_schema_graphql_matches_the_exported_sdl() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql is committed at the repository root");
    let exported = tagbase::graphql::sdl();
    assert!(
        committed == exported,
        "schema.graphql is stale: run `cargo run -- export-schema > schema.graphql` and commit it"
    );
}
