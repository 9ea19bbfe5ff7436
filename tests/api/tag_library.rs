//! Tag libraries: layers, visibility, creation rules, personal tags.

use serde_json::json;

use crate::helpers::{TestApp, no_vars};
use crate::on_both_databases;

const LIBRARY: &str = "query($u: ID!) { tagLibrary(orgUnitId: $u) {
    layers { orgUnit { code } groups { name category exclusive tags { name } } }
    personalTags { name } } }";

async fn a_store_sees_hq_region_and_store_layers(app: TestApp) {
    let res = app.gql("sz01.sales", LIBRARY, json!({ "u": app.unit_id("sz01") })).await;
    let layers = res.ok()["tagLibrary"]["layers"].as_array().unwrap().clone();
    let codes: Vec<&str> = layers.iter().map(|l| l["orgUnit"]["code"].as_str().unwrap()).collect();
    assert_eq!(codes, vec!["hq", "south", "sz01"]);
    let region_groups: Vec<&str> =
        layers[1]["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(region_groups, vec!["华南区域标签"]);
    let lifecycle = layers[0]["groups"].as_array().unwrap().iter().find(|g| g["name"] == "客户阶段").unwrap();
    assert_eq!(lifecycle["exclusive"], true);
    assert_eq!(lifecycle["tags"].as_array().unwrap().len(), 4);
    let personal: Vec<&str> = res.ok()["tagLibrary"]["personalTags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(personal, vec!["急性子", "爱砍价"]);
}

async fn other_stores_and_regions_libraries_are_not_found(app: TestApp) {
    for unit in ["bj01", "gz01", "north", "hq"] {
        let res = app.gql("sz01.sales", LIBRARY, json!({ "u": app.unit_id(unit) })).await;
        assert_eq!(res.code(), "NOT_FOUND", "{unit}");
    }
    let north_group = app.group_id("华北区域标签").await;
    let res =
        app.gql("sz01.sales", "query($id: ID!) { tagGroup(id: $id) { name } }", json!({ "id": north_group })).await;
    assert_eq!(res.code(), "NOT_FOUND");
    let north_tag = app.tag_id("华北区域标签", "北方肤质").await;
    let res = app.gql("sz01.sales", "query($id: ID!) { tag(id: $id) { name } }", json!({ "id": north_tag })).await;
    assert_eq!(res.code(), "NOT_FOUND");
    // But an HQ tag is visible from a store.
    let hq_tag = app.tag_id("客户阶段", "付费客户").await;
    let res = app
        .gql("sz01.sales", "query($id: ID!) { tag(id: $id) { name group { name } } }", json!({ "id": hq_tag }))
        .await;
    assert_eq!(res.ok()["tag"]["group"]["name"], "客户阶段");
}

async fn regional_tags_roll_up_to_different_hq_tags(app: TestApp) {
    let q = "query($id: ID!) { tag(id: $id) { name canonicalTag { name } } }";
    let north = app.tag_id("华北区域标签", "黄金会员").await;
    let south = app.tag_id("华南区域标签", "黄金会员").await;
    let n = app.gql("admin", q, json!({ "id": north })).await;
    let s = app.gql("admin", q, json!({ "id": south })).await;
    assert_eq!(n.ok()["tag"]["canonicalTag"]["name"], "A级");
    assert_eq!(s.ok()["tag"]["canonicalTag"]["name"], "B级");
}

const CREATE_GROUP: &str = "mutation($i: CreateTagGroupInput!) { createTagGroup(input: $i) { applied
    tagGroup { id name orgUnit { code } } changeRequest { id kind scope { code } } } }";

async fn store_managers_create_groups_in_their_store_only(app: TestApp) {
    let input = |unit: &str, name: &str| json!({ "i": { "orgUnitId": app.unit_id(unit), "name": name, "category": "SERVICE", "visibilityClass": "service" } });
    let res = app.gql("sz01.manager", CREATE_GROUP, input("sz01", "到店偏好")).await;
    assert_eq!(res.ok()["createTagGroup"]["applied"], true);
    assert_eq!(res.ok()["createTagGroup"]["tagGroup"]["orgUnit"]["code"], "sz01");
    let before = app.snapshot().await;
    // The region layer is visible to the store manager but not writable:
    // the group becomes a request for the region.
    let res = app.gql("sz01.manager", CREATE_GROUP, input("south", "区域新组")).await;
    assert_eq!(res.ok()["createTagGroup"]["applied"], false);
    assert!(res.ok()["createTagGroup"]["tagGroup"].is_null());
    let proposal = res.ok()["createTagGroup"]["changeRequest"].clone();
    assert_eq!(proposal["kind"], "tag_group.create");
    assert_eq!(proposal["scope"]["code"], "south");
    assert_eq!(app.snapshot().await.groups, before.groups);
    let res = app.gql("sz01.manager", CREATE_GROUP, input("bj01", "别家")).await;
    assert_eq!(res.code(), "NOT_FOUND");
    let res = app.gql("sz01.service", CREATE_GROUP, input("sz01", "客服建组")).await;
    assert_eq!(res.code(), "FORBIDDEN", "customer service neither writes nor proposes");
    let before = app.snapshot().await;
    let res = app.gql("sz01.manager", CREATE_GROUP, input("sz01", " 到店偏好 ")).await;
    assert_eq!(res.code(), "CONFLICT", "names are unique per layer after trimming");
    let res = app
        .gql(
            "sz01.manager",
            CREATE_GROUP,
            json!({ "i": { "orgUnitId": app.unit_id("sz01"), "name": "坏模式", "category": "BASIC",
                "visibilityClass": "basic", "namingPattern": "([" } }),
        )
        .await;
    assert_eq!(res.code(), "VALIDATION");
    assert_eq!(app.snapshot().await, before, "refused edits change nothing");
    // The region manager approves the store's proposal: the group is made,
    // as the store manager's.
    let res = app
        .gql(
            "south.manager",
            "mutation($id: ID!) { approveChangeRequest(id: $id) { tagGroup { name orgUnit { code } } } }",
            json!({ "id": proposal["id"] }),
        )
        .await;
    assert_eq!(res.ok()["approveChangeRequest"]["tagGroup"]["orgUnit"]["code"], "south");
    // And may write its region's layer itself.
    let res = app.gql("south.manager", CREATE_GROUP, input("south", "区域新组2")).await;
    assert_eq!(res.ok()["createTagGroup"]["tagGroup"]["orgUnit"]["code"], "south");
}

const CREATE_TAG: &str = "mutation($i: CreateTagInput!) { createTag(input: $i) { applied tag { id name aliases ttlSeconds group { name } } } }";

async fn tags_obey_their_groups_naming_pattern_and_uniqueness(app: TestApp) {
    let age = app.group_id("年龄").await;
    let ok = app.gql("admin", CREATE_TAG, json!({ "i": { "groupId": age, "name": "年龄_61-70" } })).await;
    assert_eq!(ok.ok()["createTag"]["tag"]["group"]["name"], "年龄");
    let before = app.snapshot().await;
    let bad = app.gql("admin", CREATE_TAG, json!({ "i": { "groupId": age, "name": "老年人" } })).await;
    assert_eq!(bad.code(), "VALIDATION");
    let dup = app.gql("admin", CREATE_TAG, json!({ "i": { "groupId": age, "name": "年龄_61-70" } })).await;
    assert_eq!(dup.code(), "CONFLICT");
    let long = app.gql("admin", CREATE_TAG, json!({ "i": { "groupId": age, "name": "年".repeat(65) } })).await;
    assert_eq!(long.code(), "VALIDATION");
    let ttl =
        app.gql("admin", CREATE_TAG, json!({ "i": { "groupId": age, "name": "年龄_1-2", "ttlSeconds": -5 } })).await;
    assert_eq!(ttl.code(), "VALIDATION");
    let unknown = app.gql("admin", CREATE_TAG, json!({ "i": { "groupId": "424242", "name": "x" } })).await;
    assert_eq!(unknown.code(), "NOT_FOUND");
    assert_eq!(app.snapshot().await, before);
}

async fn a_campaign_tag_carries_aliases_and_a_ttl(app: TestApp) {
    let group = app.group_id("活动").await;
    let res = app
        .gql(
            "admin",
            CREATE_TAG,
            json!({ "i": { "groupId": group, "name": "双11活动", "aliases": ["双十一", "双十一", "光棍节"], "ttlSeconds": 604800 } }),
        )
        .await;
    let tag = &res.ok()["createTag"]["tag"];
    assert_eq!(tag["aliases"], json!(["双十一", "光棍节"]));
    assert_eq!(tag["ttlSeconds"], 604800);
}

async fn personal_tags_are_seen_only_by_their_owner(app: TestApp) {
    let mine = app
        .gql(
            "sz01.sales",
            "mutation { createPersonalTag(input: { name: \"回头客\" }) { tag { id kind owner { login } } } }",
            no_vars(),
        )
        .await;
    let tag = mine.ok()["createPersonalTag"]["tag"].clone();
    assert_eq!(tag["kind"], "PERSONAL");
    assert_eq!(tag["owner"]["login"], "sz01.sales");
    // Another person may use the same name: no clash is revealed.
    let theirs = app
        .gql("sz01.manager", "mutation { createPersonalTag(input: { name: \"回头客\" }) { tag { id } } }", no_vars())
        .await;
    assert!(theirs.ok()["createPersonalTag"]["tag"]["id"].is_string());
    let again = app
        .gql("sz01.sales", "mutation { createPersonalTag(input: { name: \"回头客\" }) { tag { id } } }", no_vars())
        .await;
    assert_eq!(again.code(), "CONFLICT");
    for login in ["sz01.manager", "admin", "south.manager"] {
        let res = app.gql(login, "query($id: ID!) { tag(id: $id) { name } }", json!({ "id": tag["id"] })).await;
        assert_eq!(res.code(), "NOT_FOUND", "{login}");
    }
    // Tagged on a customer, it shows for the owner only.
    let customer = app.customers_of("sz01").await[0].clone();
    app.gql(
        "sz01.sales",
        "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }",
        json!({ "c": [customer], "t": [tag["id"]] }),
    )
    .await
    .ok();
    let q = "query($id: ID!) { customer(id: $id) { tags { tag { id } } } }";
    let has = |res: &crate::helpers::Gql| {
        res.ok()["customer"]["tags"].as_array().unwrap().iter().any(|t| t["tag"]["id"] == tag["id"])
    };
    assert!(has(&app.gql("sz01.sales", q, json!({ "id": customer })).await));
    assert!(!has(&app.gql("sz01.manager", q, json!({ "id": customer })).await));
    assert!(!has(&app.gql("admin", q, json!({ "id": customer })).await));
    // Nobody else can put it on or take it off.
    let res = app
        .gql(
            "sz01.manager",
            "mutation($c: [ID!]!, $t: [ID!]!) { untagCustomers(input: { customerIds: $c, tagIds: $t }) { removed } }",
            json!({ "c": [customer], "t": [tag["id"]] }),
        )
        .await;
    assert_eq!(res.code(), "NOT_FOUND");
}

/// NFC and NFD spellings of `Café` are one name; bidi overrides and
/// invisible characters are refused on every named write.
async fn names_are_normalised_and_spoofing_characters_refused(app: TestApp) {
    let age = app.group_id("活动").await;
    let ok = app.gql("admin", CREATE_TAG, json!({ "i": { "groupId": age, "name": "Caf\u{E9}" } })).await;
    assert_eq!(ok.ok()["createTag"]["tag"]["name"], "Caf\u{E9}");
    let before = app.snapshot().await;
    let nfd = app.gql("admin", CREATE_TAG, json!({ "i": { "groupId": age, "name": "Cafe\u{301}" } })).await;
    assert_eq!(nfd.code(), "CONFLICT", "{:#}", nfd.0);
    for spoof in ["VIP\u{202E}pihc", "高\u{200B}价值", "\u{3164}", "a\u{2066}b\u{2069}"] {
        let tag = app.gql("admin", CREATE_TAG, json!({ "i": { "groupId": age, "name": spoof } })).await;
        assert_eq!(tag.code(), "VALIDATION", "{spoof:?}");
        assert_eq!(tag.0["errors"][0]["extensions"]["field"], "name", "{spoof:?}");
        let alias = app
            .gql("admin", CREATE_TAG, json!({ "i": { "groupId": age, "name": "别名测试", "aliases": [spoof] } }))
            .await;
        assert_eq!(alias.code(), "VALIDATION", "{spoof:?}");
        let group = app
            .gql(
                "admin",
                CREATE_GROUP,
                json!({ "i": { "orgUnitId": app.unit_id("hq"), "name": spoof, "category": "BEHAVIOR", "visibilityClass": "basic" } }),
            )
            .await;
        assert_eq!(group.code(), "VALIDATION", "{spoof:?}");
        let customer = app
            .gql(
                "admin",
                "mutation($u: ID!, $n: String!) { createCustomer(input: { orgUnitId: $u, name: $n }) { customer { id } } }",
                json!({ "u": app.unit_id("sz01"), "n": spoof }),
            )
            .await;
        assert_eq!(customer.code(), "VALIDATION", "{spoof:?}");
        assert_eq!(customer.0["errors"][0]["extensions"]["field"], "name", "{spoof:?}");
    }
    assert_eq!(app.snapshot().await, before);
}

on_both_databases!(
    names_are_normalised_and_spoofing_characters_refused,
    a_store_sees_hq_region_and_store_layers,
    other_stores_and_regions_libraries_are_not_found,
    regional_tags_roll_up_to_different_hq_tags,
    store_managers_create_groups_in_their_store_only,
    tags_obey_their_groups_naming_pattern_and_uniqueness,
    a_campaign_tag_carries_aliases_and_a_ttl,
    personal_tags_are_seen_only_by_their_owner,
);
