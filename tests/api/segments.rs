//! Segments through the API, checked against a brute-force evaluation in
//! Rust over the same data.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Datelike, FixedOffset, Utc};
use entity::{customer, customer_tag, enums::TagOp, org_unit, tag, tag_event};
use rand::{Rng, SeedableRng};
use sea_orm::EntityTrait;
use serde_json::json;
use tagbase::segment::{Range, Ref, SegmentExpr};

use crate::helpers::TestApp;
use crate::on_both_databases;

const PREVIEW: &str = "query($s: SegmentInput!) { segmentPreview(segment: $s) { text count customers(first: 100) { edges { node { id } } } } }";

/// Everything a brute-force evaluation needs, loaded once.
struct World {
    customers: Vec<customer::Model>,
    tags: HashMap<i64, HashSet<i64>>,
    events: Vec<tag_event::Model>,
    tag_groups: HashMap<i64, Option<i64>>,
    unit_paths: HashMap<i64, String>,
    unit_codes: HashMap<String, String>,
}

impl World {
    async fn load(app: &TestApp) -> Self {
        let customers = customer::Entity::find().all(&app.db).await.unwrap();
        let mut tags: HashMap<i64, HashSet<i64>> = HashMap::new();
        for a in customer_tag::Entity::find().all(&app.db).await.unwrap() {
            tags.entry(a.customer_id).or_default().insert(a.tag_id);
        }
        let events = tag_event::Entity::find().all(&app.db).await.unwrap();
        let tag_groups =
            tag::Entity::find().all(&app.db).await.unwrap().into_iter().map(|t| (t.id, t.group_id)).collect();
        let units = org_unit::Entity::find().all(&app.db).await.unwrap();
        let unit_paths = units.iter().map(|u| (u.id, u.path.clone())).collect();
        let unit_codes = units.iter().map(|u| (u.code.clone(), u.path.clone())).collect();
        Self { customers, tags, events, tag_groups, unit_paths, unit_codes }
    }

    fn holds(&self, c: &customer::Model, r: &Ref) -> bool {
        let Ref::Id(id) = r else { panic!("unresolved") };
        self.tags.get(&c.id).is_some_and(|t| t.contains(id))
    }

    /// The admin's view: everything visible.
    fn eval(&self, c: &customer::Model, e: &SegmentExpr, now: DateTime<Utc>) -> bool {
        let offset = FixedOffset::east_opt(8 * 3600).unwrap();
        let range = |r: &Range<i64>, v: i64| r.contains(v);
        match e {
            SegmentExpr::And(items) => items.iter().all(|i| self.eval(c, i, now)),
            SegmentExpr::Or(items) => items.iter().any(|i| self.eval(c, i, now)),
            SegmentExpr::Not(inner) => !self.eval(c, inner, now),
            SegmentExpr::Tag(r) | SegmentExpr::Lifecycle(r) => self.holds(c, r),
            SegmentExpr::AnyTags(rs) => rs.iter().any(|r| self.holds(c, r)),
            SegmentExpr::AllTags(rs) => rs.iter().all(|r| self.holds(c, r)),
            SegmentExpr::Group(Ref::Id(g)) => {
                self.tags.get(&c.id).is_some_and(|ts| ts.iter().any(|t| self.tag_groups.get(t) == Some(&Some(*g))))
            }
            SegmentExpr::TaggedBetween { tag: Ref::Id(t), from, to } => self.events.iter().any(|ev| {
                ev.customer_id == c.id
                    && ev.tag_id == *t
                    && ev.op == TagOp::Add
                    && ev.occurred_at >= *from
                    && ev.occurred_at <= *to
            }),
            SegmentExpr::City(v) => c.city.as_deref() == Some(v.as_str()),
            SegmentExpr::Channel(v) => c.channel.as_deref() == Some(v.as_str()),
            SegmentExpr::Gender(g) => c.gender == *g,
            SegmentExpr::OrgUnit(code) => self.unit_paths[&c.org_unit_id].starts_with(&self.unit_codes[code]),
            SegmentExpr::Age(r) => c.birth_date.is_some_and(|b| {
                let today = now.with_timezone(&offset).date_naive();
                let mut age = i64::from(today.year() - b.year());
                if (today.month(), today.day()) < (b.month(), b.day()) {
                    age -= 1;
                }
                range(r, age)
            }),
            SegmentExpr::Spend(r) => range(r, c.total_spend_cents),
            SegmentExpr::Orders(r) => range(r, i64::from(c.order_count)),
            SegmentExpr::LastOrderBefore(t) => c.last_order_at.is_some_and(|l| l < *t),
            SegmentExpr::LastOrderAfter(t) => c.last_order_at.is_some_and(|l| l > *t),
            SegmentExpr::AddedBefore(t) => c.added_at < *t,
            SegmentExpr::AddedAfter(t) => c.added_at > *t,
            other => panic!("not evaluated here: {other:?}"),
        }
    }

    fn members(&self, e: &SegmentExpr) -> usize {
        let now = Utc::now();
        self.customers.iter().filter(|c| self.eval(c, e, now)).count()
    }
}

async fn preview_count(app: &TestApp, login: &str, segment: serde_json::Value) -> (u64, String) {
    let res = app.gql(login, PREVIEW, json!({ "s": segment })).await;
    let p = &res.ok()["segmentPreview"];
    (p["count"].as_u64().unwrap(), p["text"].as_str().unwrap().to_owned())
}

async fn the_articles_segment_matches_a_brute_force_count(app: TestApp) {
    let text = r#"tag("房贷用户") AND tag("有车一族") AND NOT tag("流失客户") AND city = "深圳""#;
    let (count, canonical) = preview_count(&app, "admin", json!({ "text": text })).await;
    assert_eq!(canonical, text);
    let world = World::load(&app).await;
    let ids = [
        app.tag_id("资产状况", "房贷用户").await,
        app.tag_id("资产状况", "有车一族").await,
        app.tag_id("客户阶段", "流失客户").await,
    ];
    let id = |s: &str| Ref::Id(crate::helpers::row_id(s));
    let expr = SegmentExpr::And(vec![
        SegmentExpr::Tag(id(&ids[0])),
        SegmentExpr::Tag(id(&ids[1])),
        SegmentExpr::Not(Box::new(SegmentExpr::Tag(id(&ids[2])))),
        SegmentExpr::City("深圳".into()),
    ]);
    assert_eq!(count as usize, world.members(&expr));
    // The structured form gives the same answer and the same text.
    let structured = json!({ "and": [
        { "tag": ids[0] }, { "tag": ids[1] }, { "not": { "tag": ids[2] } }, { "city": "深圳" } ] });
    assert_eq!(preview_count(&app, "admin", structured).await, (count, text.to_owned()));
}

async fn segments_only_count_what_the_caller_may_see(app: TestApp) {
    let text = json!({ "text": "gender = FEMALE" });
    let (all, _) = preview_count(&app, "admin", text.clone()).await;
    let (store, _) = preview_count(&app, "sz01.sales", text.clone()).await;
    let world = World::load(&app).await;
    let sz01 = app.unit("sz01");
    let expected =
        world.customers.iter().filter(|c| c.org_unit_id == sz01 && c.gender == entity::enums::Gender::Female).count();
    assert_eq!(store as usize, expected);
    assert!(all > store);
    let res = app.gql("sz01.service", PREVIEW, json!({ "s": { "text": "spend >= 100" } })).await;
    assert_eq!(res.code(), "FORBIDDEN_FIELD");
    let res = app.gql("sz01.service", PREVIEW, json!({ "s": { "text": "tag(\"S级\")" } })).await;
    assert_eq!(res.code(), "NOT_FOUND");
    let res = app.gql("sz01.sales", PREVIEW, json!({ "s": { "text": "orgUnit = \"bj01\"" } })).await;
    assert_eq!(res.code(), "NOT_FOUND");
}

async fn ambiguous_names_list_their_candidates(app: TestApp) {
    let res = app.gql("admin", PREVIEW, json!({ "s": { "text": "tag(\"黄金会员\")" } })).await;
    assert_eq!(res.code(), "VALIDATION");
    let north = app.tag_id("华北区域标签", "黄金会员").await;
    let south = app.tag_id("华南区域标签", "黄金会员").await;
    let message = res.message();
    // The text form names objects by row id (`#42`).
    let (north_row, south_row) = (crate::helpers::row_id(&north), crate::helpers::row_id(&south));
    assert!(message.contains(&format!("#{north_row}")) && message.contains(&format!("#{south_row}")), "{message}");
    // From a south store only one is visible: no ambiguity.
    let (_, text) = preview_count(&app, "sz01.sales", json!({ "text": "tag(\"黄金会员\")" })).await;
    assert_eq!(text, "tag(\"黄金会员\")");
    let (by_id, _) = preview_count(&app, "admin", json!({ "text": format!("tag(#{north_row})") })).await;
    let world = World::load(&app).await;
    assert_eq!(by_id as usize, world.members(&SegmentExpr::Tag(Ref::Id(crate::helpers::row_id(&north)))));
}

/// The ids the API answers name objects in segment texts too (`#` and the
/// global id); one of another type is refused at its column.
async fn global_ids_name_objects_in_segment_texts(app: TestApp) {
    let north = app.tag_id("华北区域标签", "黄金会员").await;
    let group = app.group_id("华北区域标签").await;
    let row = crate::helpers::row_id(&north);
    let (by_global, text) = preview_count(&app, "admin", json!({ "text": format!("tag(#{north})") })).await;
    let (by_row, _) = preview_count(&app, "admin", json!({ "text": format!("tag(#{row})") })).await;
    assert_eq!(by_global, by_row);
    assert!(by_global > 0);
    assert_eq!(text, format!("tag(#{row})"), "the canonical text keeps row ids (an ambiguous name prints as one)");
    let (in_group, _) = preview_count(&app, "admin", json!({ "text": format!("group(#{group})") })).await;
    assert!(in_group >= by_global);

    let res = app.gql("admin", PREVIEW, json!({ "s": { "text": format!("city = \"深圳\" OR tag(#{group})") } })).await;
    assert_eq!(res.code(), "VALIDATION");
    assert_eq!(res.0["errors"][0]["extensions"]["field"], "segment.text");
    assert!(
        res.message().contains(&format!(
            "at column 20: expected the id of a tag: `#` and its row id or its global id, found the global id of a TagGroup (`#{group}`)"
        )),
        "{}",
        res.message()
    );
}

async fn parse_errors_say_where_and_what_was_expected(app: TestApp) {
    let res = app.gql("admin", PREVIEW, json!({ "s": { "text": "tag(\"房贷用户\") AND tag(\"有车一族\" AND" } })).await;
    assert_eq!(res.code(), "VALIDATION");
    assert_eq!(res.0["errors"][0]["extensions"]["field"], "segment.text");
    assert!(res.message().contains("at column 28: expected `)`, found `AND`"), "{}", res.message());
    let empty = app.gql("admin", PREVIEW, json!({ "s": { "and": [] } })).await;
    assert_eq!(empty.code(), "VALIDATION");
    let two = app.gql("admin", PREVIEW, json!({ "s": { "city": "深圳", "gender": "MALE" } })).await;
    assert_eq!(two.code(), "VALIDATION", "exactly one field per node");
}

async fn tagged_six_months_ago_and_this_month(app: TestApp) {
    let text = "taggedBetween(\"购车意向\", \"2026-04-15\", \"2026-05-20\") AND taggedBetween(\"资金需求\", \"2026-10-10\", \"2026-11-01\")";
    let (count, canonical) = preview_count(&app, "admin", json!({ "text": text })).await;
    assert_eq!(canonical, text);
    let world = World::load(&app).await;
    let expr = tagbase::segment::parse(text, FixedOffset::east_opt(8 * 3600).unwrap()).unwrap();
    let car = crate::helpers::row_id(&app.tag_id("活动", "购车意向").await);
    let money = crate::helpers::row_id(&app.tag_id("活动", "资金需求").await);
    let SegmentExpr::And(items) = expr else { panic!() };
    let resolved: Vec<SegmentExpr> = items
        .into_iter()
        .zip([car, money])
        .map(|(e, id)| match e {
            SegmentExpr::TaggedBetween { from, to, .. } => SegmentExpr::TaggedBetween { tag: Ref::Id(id), from, to },
            other => other,
        })
        .collect();
    assert_eq!(count as usize, world.members(&SegmentExpr::And(resolved)));
}

async fn aliases_find_their_tag(app: TestApp) {
    let group = app.group_id("教育需求").await;
    app.gql(
        "admin",
        "mutation($g: ID!) { createTag(input: { groupId: $g, name: \"择校咨询\", aliases: [\"选学校\"] }) { applied } }",
        json!({ "g": group }),
    )
    .await
    .ok();
    let (_, text) = preview_count(&app, "admin", json!({ "text": "tag(\"选学校\")" })).await;
    assert_eq!(text, "tag(\"择校咨询\")", "printed by its name");
}

/// Random expressions over the demo data: the SQL evaluation agrees with
/// the brute-force one.
async fn random_segments_agree_with_brute_force(app: TestApp) {
    let world = World::load(&app).await;
    let mut tag_ids: Vec<i64> = world.tag_groups.iter().filter(|(_, g)| g.is_some()).map(|(t, _)| *t).collect();
    tag_ids.sort();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let cities = ["深圳", "北京", "广州", "上海", "杭州"];
    fn random_input(
        rng: &mut rand_chacha::ChaCha8Rng,
        tags: &[i64],
        cities: &[&str],
        depth: usize,
    ) -> serde_json::Value {
        let tag = |rng: &mut rand_chacha::ChaCha8Rng| tags[rng.random_range(0..tags.len())].to_string();
        let leaf = rng.random_range(0..9);
        if depth > 0 && rng.random_bool(0.5) {
            return match rng.random_range(0..3) {
                0 => json!({ "not": random_input(rng, tags, cities, depth - 1) }),
                1 => {
                    json!({ "and": (0..rng.random_range(2..4)).map(|_| random_input(rng, tags, cities, depth - 1)).collect::<Vec<_>>() })
                }
                _ => {
                    json!({ "or": (0..rng.random_range(2..4)).map(|_| random_input(rng, tags, cities, depth - 1)).collect::<Vec<_>>() })
                }
            };
        }
        match leaf {
            0 | 1 => json!({ "tag": tag(rng) }),
            2 => json!({ "anyTags": [tag(rng), tag(rng)] }),
            3 => json!({ "allTags": [tag(rng), tag(rng)] }),
            4 => json!({ "city": cities[rng.random_range(0..cities.len())] }),
            5 => {
                let gender = ["FEMALE", "MALE"][rng.random_range(0..2)];
                json!({ "gender": gender })
            }
            6 => json!({ "age": { "min": rng.random_range(18..40), "max": rng.random_range(40..70) } }),
            7 => json!({ "spend": { "min": rng.random_range(0..2_000_000) } }),
            _ => json!({ "text": format!("added > \"2025-{:02}-01\"", rng.random_range(1..13)) }),
        }
    }
    let offset = FixedOffset::east_opt(8 * 3600).unwrap();
    let mut sizes = HashSet::new();
    for _ in 0..25 {
        let input = random_input(&mut rng, &tag_ids, &cities, 3);
        let (count, text) = preview_count(&app, "admin", input.clone()).await;
        let expr = tagbase::segment::parse(&text, offset).unwrap();
        let resolved = resolve_names(&app, expr).await;
        assert_eq!(count as usize, world.members(&resolved), "{text}");
        sizes.insert(count);
    }
    assert!(sizes.len() >= 5, "the expressions select different sets: {sizes:?}");
}

/// Replaces tag names of the admin's (unambiguous) view by ids.
async fn resolve_names(app: &TestApp, e: SegmentExpr) -> SegmentExpr {
    let tags = tag::Entity::find().all(&app.db).await.unwrap();
    fn walk(e: SegmentExpr, tags: &[tag::Model]) -> SegmentExpr {
        let id = |r: Ref| match r {
            Ref::Name(n) => {
                let found: Vec<&tag::Model> = tags.iter().filter(|t| t.name == n && t.group_id.is_some()).collect();
                assert_eq!(found.len(), 1, "{n}");
                Ref::Id(found[0].id)
            }
            other => other,
        };
        match e {
            SegmentExpr::And(items) => SegmentExpr::And(items.into_iter().map(|i| walk(i, tags)).collect()),
            SegmentExpr::Or(items) => SegmentExpr::Or(items.into_iter().map(|i| walk(i, tags)).collect()),
            SegmentExpr::Not(inner) => SegmentExpr::Not(Box::new(walk(*inner, tags))),
            SegmentExpr::Tag(r) => SegmentExpr::Tag(id(r)),
            SegmentExpr::AnyTags(rs) => SegmentExpr::AnyTags(rs.into_iter().map(id).collect()),
            SegmentExpr::AllTags(rs) => SegmentExpr::AllTags(rs.into_iter().map(id).collect()),
            other => other,
        }
    }
    walk(e, &tags)
}

/// Groups and segments that share a name in different units print by id,
/// so that every canonical text parses back to the same members: random
/// expressions over them, printed and fed back, give the same count and
/// the same text.
async fn colliding_group_and_segment_names_print_by_id_and_round_trip(app: TestApp) {
    let groups = [
        app.create_group("admin", "hq", "验收同名组", "basic", false).await,
        app.create_group("admin", "bj01", "验收同名组", "basic", false).await,
    ];
    let tags = [
        app.create_tag("admin", &groups[0], "同名组标签一").await,
        app.create_tag("admin", &groups[1], "同名组标签二").await,
    ];
    let tag = "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }";
    let (sz01, bj01) = (app.customers_of("sz01").await, app.customers_of("bj01").await);
    app.gql("admin", tag, json!({ "c": sz01[..3], "t": [tags[0]] })).await.ok();
    app.gql("admin", tag, json!({ "c": bj01[..1], "t": [tags[1]] })).await.ok();
    let mut segments = Vec::new();
    for (unit, kind, text) in [("hq", "DYNAMIC", "city = \"深圳\""), ("sz01", "STATIC", "gender = FEMALE")] {
        let res = app
            .gql(
                "admin",
                SAVE,
                json!({ "i": { "orgUnitId": app.unit_id(unit), "name": "验收同名分群", "kind": kind, "segment": { "text": text } } }),
            )
            .await;
        segments.push(res.ok()["saveSegment"]["segment"]["id"].as_str().unwrap().to_owned());
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    fn leaf(
        rng: &mut rand_chacha::ChaCha8Rng,
        groups: &[String],
        segments: &[String],
        depth: usize,
    ) -> serde_json::Value {
        if depth > 0 && rng.random_bool(0.5) {
            let items: Vec<_> = (0..rng.random_range(2..4)).map(|_| leaf(rng, groups, segments, depth - 1)).collect();
            return match rng.random_range(0..3) {
                0 => json!({ "not": items[0] }),
                1 => json!({ "and": items }),
                _ => json!({ "or": items }),
            };
        }
        match rng.random_range(0..3) {
            0 => json!({ "group": groups[rng.random_range(0..2)] }),
            1 => json!({ "segment": segments[rng.random_range(0..2)] }),
            _ => json!({ "city": "深圳" }),
        }
    }
    let mut sizes = HashSet::new();
    for _ in 0..20 {
        let input = leaf(&mut rng, &groups, &segments, 2);
        let (count, text) = preview_count(&app, "admin", input.clone()).await;
        assert!(!text.contains("验收同名"), "an ambiguous name is printed: {text}");
        assert_eq!(preview_count(&app, "admin", json!({ "text": text })).await, (count, text.clone()), "{input}");
        sizes.insert(count);
    }
    assert!(sizes.len() >= 3, "the expressions select different sets: {sizes:?}");
    // A name that is unique to the reader still prints by name.
    let (_, text) = preview_count(&app, "sz01.sales", json!({ "group": groups[0] })).await;
    assert_eq!(text, "group(\"验收同名组\")");
}

on_both_databases!(
    colliding_group_and_segment_names_print_by_id_and_round_trip,
    the_articles_segment_matches_a_brute_force_count,
    segments_only_count_what_the_caller_may_see,
    ambiguous_names_list_their_candidates,
    parse_errors_say_where_and_what_was_expected,
    global_ids_name_objects_in_segment_texts,
    tagged_six_months_ago_and_this_month,
    aliases_find_their_tag,
    random_segments_agree_with_brute_force,
);

const SAVE: &str =
    "mutation($i: SaveSegmentInput!) { saveSegment(input: $i) { segment { id name kind text count snapshotSize } } }";
const SEGMENT: &str =
    "query($id: ID!) { segment(id: $id) { name text count customers(first: 5) { edges { node { id } } } } }";

async fn saved_segments_are_shared_downwards_and_counted_per_caller(app: TestApp) {
    let mothers_day = r#"gender = FEMALE AND anyTag("孩子0-3岁", "孩子3-6岁") AND tag("本地居民")"#;
    let res = app
        .gql(
            "hq.marketing",
            SAVE,
            json!({ "i": { "orgUnitId": app.unit_id("hq"), "name": "母亲节", "segment": { "text": mothers_day } } }),
        )
        .await;
    let saved = res.ok()["saveSegment"]["segment"].clone();
    assert_eq!(saved["text"], mothers_day);
    assert_eq!(saved["kind"], "DYNAMIC");
    let id = saved["id"].clone();
    // A store's salesperson uses the HQ segment, counted in its own store.
    let (store_count, _) = preview_count(&app, "sz01.sales", json!({ "text": mothers_day })).await;
    let seen = app.gql("sz01.sales", SEGMENT, json!({ "id": id })).await;
    assert_eq!(seen.ok()["segment"]["count"].as_u64().unwrap(), store_count);
    let listed =
        app.gql("sz01.sales", "{ segments { totalCount edges { node { name } } } }", serde_json::Value::Null).await;
    let names: Vec<&str> = listed.ok()["segments"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"母亲节") && names.contains(&"母亲节促销"), "{names:?}");
    // Customer service may not use segments at all.
    assert_eq!(app.gql("sz01.service", SEGMENT, json!({ "id": id })).await.code(), "NOT_FOUND");
    // Composition: a segment inside another expression.
    let (nested, text) =
        preview_count(&app, "admin", json!({ "text": "segment(\"母亲节\") AND city = \"深圳\"" })).await;
    assert_eq!(text, "segment(\"母亲节\") AND city = \"深圳\"");
    let (inlined, _) =
        preview_count(&app, "admin", json!({ "text": format!("({mothers_day}) AND city = \"深圳\"") })).await;
    assert_eq!(nested, inlined);
    // The same name twice in one unit is a conflict; a salesperson cannot save.
    let again = app
        .gql("hq.marketing", SAVE, json!({ "i": { "orgUnitId": app.unit_id("hq"), "name": "母亲节", "segment": { "text": "gender = FEMALE" } } }))
        .await;
    assert_eq!(again.code(), "CONFLICT");
    let sales = app
        .gql("sz01.sales", SAVE, json!({ "i": { "orgUnitId": app.unit_id("sz01"), "name": "我的", "segment": { "text": "gender = FEMALE" } } }))
        .await;
    assert_eq!(sales.code(), "FORBIDDEN");
}

async fn a_static_segment_keeps_its_snapshot(app: TestApp) {
    let inquiry = app.tag_id("活动", "询价").await;
    let text = "tag(\"询价\")";
    let save = |name: &str, kind: &str| json!({ "i": { "orgUnitId": app.unit_id("sz01"), "name": name, "kind": kind, "segment": { "text": text } } });
    let frozen = app.gql("sz01.manager", SAVE, save("询价快照", "STATIC")).await;
    let frozen = frozen.ok()["saveSegment"]["segment"].clone();
    let live = app.gql("sz01.manager", SAVE, save("询价实时", "DYNAMIC")).await;
    let live = live.ok()["saveSegment"]["segment"].clone();
    assert_eq!(frozen["count"], live["count"]);
    assert_eq!(frozen["snapshotSize"], frozen["count"]);
    // Tag every sz01 customer: the dynamic segment grows, the static does not.
    let customers = app.customers_of("sz01").await;
    app.gql(
        "sz01.manager",
        "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }",
        json!({ "c": customers, "t": [inquiry] }),
    )
    .await
    .ok();
    let count = |id: serde_json::Value| {
        let app = &app;
        async move { app.gql("sz01.manager", SEGMENT, json!({ "id": id })).await.ok()["segment"]["count"].as_u64().unwrap() }
    };
    assert_eq!(count(live["id"].clone()).await, customers.len() as u64);
    assert_eq!(count(frozen["id"].clone()).await, frozen["count"].as_u64().unwrap());
}

async fn a_segment_in_use_cannot_be_deleted(app: TestApp) {
    let save = |name: &str, text: &str| json!({ "i": { "orgUnitId": app.unit_id("hq"), "name": name, "segment": { "text": text } } });
    let base = app.gql("hq.marketing", SAVE, save("女性", "gender = FEMALE")).await;
    let base_id = base.ok()["saveSegment"]["segment"]["id"].clone();
    let user = app.gql("hq.marketing", SAVE, save("深圳女性", "segment(\"女性\") AND city = \"深圳\"")).await;
    let user_id = user.ok()["saveSegment"]["segment"]["id"].clone();
    const DELETE: &str = "mutation($id: ID!) { deleteSegment(id: $id) { deletedId } }";
    let before = app.snapshot().await;
    assert_eq!(app.gql("hq.marketing", DELETE, json!({ "id": base_id })).await.code(), "CONFLICT");
    assert_eq!(app.gql("sz01.sales", DELETE, json!({ "id": user_id })).await.code(), "FORBIDDEN");
    assert_eq!(app.snapshot().await, before);
    app.gql("hq.marketing", DELETE, json!({ "id": user_id })).await.ok();
    app.gql("hq.marketing", DELETE, json!({ "id": base_id })).await.ok();
    assert_eq!(app.gql("hq.marketing", SEGMENT, json!({ "id": base_id })).await.code(), "NOT_FOUND");
}

on_both_databases!(
    saved_segments_are_shared_downwards_and_counted_per_caller,
    a_static_segment_keeps_its_snapshot,
    a_segment_in_use_cannot_be_deleted,
);

async fn the_demo_segments_evaluate_as_their_text_does(app: TestApp) {
    let listed = app
        .gql("hq.marketing", "{ segments(first: 50) { edges { node { name text count } } } }", serde_json::Value::Null)
        .await;
    let edges = listed.ok()["segments"]["edges"].as_array().unwrap().clone();
    let names: Vec<&str> = edges.iter().map(|e| e["node"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["母亲节促销", "房贷有车深圳客户", "高价值客户", "购车后资金需求"]);
    for edge in &edges {
        let node = &edge["node"];
        let (count, text) = preview_count(&app, "hq.marketing", json!({ "text": node["text"] })).await;
        assert_eq!(text, node["text"].as_str().unwrap());
        assert_eq!(count, node["count"].as_u64().unwrap(), "{}", node["name"]);
    }
    assert_eq!(edges[0]["node"]["text"], r#"gender = FEMALE AND tag("孩子3-6岁") AND tag("本地居民")"#);
}

on_both_databases!(the_demo_segments_evaluate_as_their_text_does);

async fn cross_analysis_counts_pairs_inside_a_segment(app: TestApp) {
    let mortgage = app.tag_id("资产状况", "房贷用户").await;
    let car = app.tag_id("资产状况", "有车一族").await;
    // Every sz01 customer (most live in 深圳) holds both.
    app.gql(
        "admin",
        "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }",
        json!({ "c": app.customers_of("sz01").await, "t": [mortgage, car] }),
    )
    .await
    .ok();
    let q =
        "query($t: [ID!]!, $s: SegmentInput) { tagCooccurrence(tagIds: $t, segment: $s) { a { id } b { id } count } }";
    let res = app.gql("admin", q, json!({ "t": [mortgage, car], "s": { "text": "city = \"深圳\"" } })).await;
    let pairs = res.ok()["tagCooccurrence"].as_array().unwrap().clone();
    assert_eq!(pairs.len(), 3, "two diagonals and one pair");
    let world = World::load(&app).await;
    let (m, c): (i64, i64) = (crate::helpers::row_id(&mortgage), crate::helpers::row_id(&car));
    let expected = |x: i64, y: i64| {
        world
            .customers
            .iter()
            .filter(|cu| cu.city.as_deref() == Some("深圳"))
            .filter(|cu| world.tags.get(&cu.id).is_some_and(|t| t.contains(&x) && t.contains(&y)))
            .count() as u64
    };
    for pair in &pairs {
        let a: i64 = crate::helpers::row_id(pair["a"]["id"].as_str().unwrap());
        let b: i64 = crate::helpers::row_id(pair["b"]["id"].as_str().unwrap());
        assert_eq!(pair["count"].as_u64().unwrap(), expected(a, b), "{a} × {b}");
    }
    assert!(expected(m, m) > 0 && expected(m, c) > 0, "the demo has such customers");
    let hidden = app.gql("sz01.service", q, json!({ "t": [mortgage, car] })).await;
    assert_eq!(hidden.code(), "NOT_FOUND");
}

on_both_databases!(cross_analysis_counts_pairs_inside_a_segment);

async fn exports_carry_only_what_the_caller_may_read(app: TestApp) {
    let q = "query($s: SegmentInput!) { segmentPreview(segment: $s) { count csv } }";
    let all = json!({ "s": { "text": "added > \"2000-01-01\"" } });
    let before = app.snapshot().await;
    let service = app.gql("sz01.service", q, all.clone()).await;
    let csv = service.ok()["segmentPreview"]["csv"].as_str().unwrap().to_owned();
    assert_eq!(app.snapshot().await.audit, before.audit + 1, "the export is audited");
    let mut lines = csv.trim_start_matches('\u{feff}').lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert!(header.contains(&"phone") && !header.contains(&"totalSpendCents"), "{header:?}");
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len() as u64, service.ok()["segmentPreview"]["count"].as_u64().unwrap());
    let phone_col = header.iter().position(|h| *h == "phone").unwrap();
    for row in &rows {
        let phone = row.split(',').nth(phone_col).unwrap();
        assert!(phone.is_empty() || phone.contains("****"), "masked: {row}");
    }
    // No value tags in a customer-service export.
    let value_tags = ["S级", "A级", "B级", "C级", "D级", "房贷用户", "有车一族"];
    assert!(!rows.iter().any(|r| value_tags.iter().any(|t| r.contains(t))), "{csv}");
    let sales = app.gql("sz01.sales", q, all).await;
    let csv = sales.ok()["segmentPreview"]["csv"].as_str().unwrap().to_owned();
    let header = csv.trim_start_matches('\u{feff}').lines().next().unwrap().to_owned();
    assert!(header.contains("totalSpendCents"), "{header}");
}

on_both_databases!(exports_carry_only_what_the_caller_may_read);

/// A static segment is checked for the caller as a dynamic one is: one over
/// a tag of a class the caller may not see is `NOT_FOUND`, and its count
/// and snapshot size are the members the caller may see, not the saver's.
async fn static_segments_count_only_what_the_caller_may_see(app: TestApp) {
    let save = |name: &str, text: &str| json!({ "i": { "orgUnitId": app.unit_id("hq"), "name": name, "kind": "STATIC", "segment": { "text": text } } });
    let complaints = app.gql("admin", SAVE, save("投诉快照", "tag(\"投诉记录\")")).await;
    let complaints = complaints.ok()["saveSegment"]["segment"].clone();
    assert!(complaints["count"].as_u64().unwrap() > 0, "the demo has complaints");
    let q =
        "query($id: ID!) { segment(id: $id) { count snapshotSize customers(first: 100) { edges { node { id } } } } }";
    // The same dynamic expression is NOT_FOUND for the store's salesperson.
    let dynamic = app.gql("sz01.sales", PREVIEW, json!({ "s": { "text": "tag(\"投诉记录\")" } })).await;
    assert_eq!(dynamic.code(), "NOT_FOUND");
    // As for a dynamic one: every number and member list is NOT_FOUND.
    let hidden = app.gql("sz01.sales", q, json!({ "id": complaints["id"] })).await;
    let errors = hidden.0["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "{:#}", hidden.0);
    assert!(errors.iter().all(|e| e["extensions"]["code"] == "NOT_FOUND"), "{:#}", hidden.0);
    assert!(hidden.0["data"]["segment"].is_null(), "{:#}", hidden.0);
    let used = app.gql("sz01.sales", PREVIEW, json!({ "s": { "segment": complaints["id"] } })).await;
    assert_eq!(used.code(), "NOT_FOUND");
    // A static segment the salesperson may use counts its own store only.
    let women = app.gql("admin", SAVE, save("女性快照", "gender = FEMALE")).await;
    let women = women.ok()["saveSegment"]["segment"].clone();
    let (store, _) = preview_count(&app, "sz01.sales", json!({ "text": "gender = FEMALE" })).await;
    assert!(store > 0 && store < women["snapshotSize"].as_u64().unwrap(), "{store} {women}");
    let seen = app.gql("sz01.sales", q, json!({ "id": women["id"] })).await;
    let seen = &seen.ok()["segment"];
    assert_eq!(seen["count"].as_u64().unwrap(), store);
    assert_eq!(seen["snapshotSize"].as_u64().unwrap(), store);
    assert_eq!(seen["customers"]["edges"].as_array().unwrap().len() as u64, store);
}

on_both_databases!(static_segments_count_only_what_the_caller_may_see);
