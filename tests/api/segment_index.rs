//! The segment engine (the in-memory index), the plain SQL evaluation and a
//! brute-force evaluation in Rust agree: on random data and random
//! expressions of every node kind, nested, for every role, and again after
//! an index rebuild. Writes show at once on the instance that made them
//! and soon on the others.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeDelta, Utc};
use entity::{
    customer, customer_tag,
    enums::{Gender, SegmentKind, TagCategory, TagOp},
    org_unit, segment, segment_member, tag, tag_event, tag_group,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, IntoActiveModel};
use serde_json::json;
use tagbase::authz::{Action, ClassAccess, Principal};
use tagbase::segment::{Range, Ref, SegmentExpr};
use tagbase::service::{customer as customer_service, segment as segment_service};

use crate::helpers::TestApp;
use crate::on_both_databases;

/// The data, loaded once per comparison round, for the brute force.
struct World {
    customers: Vec<customer::Model>,
    holdings: HashMap<i64, HashSet<i64>>,
    /// ADD events: (tag, customer, when).
    adds: Vec<(i64, i64, DateTime<Utc>)>,
    tags: HashMap<i64, tag::Model>,
    groups: HashMap<i64, tag_group::Model>,
    unit_paths: HashMap<i64, String>,
    code_paths: HashMap<String, String>,
    segments: HashMap<i64, segment::Model>,
    snapshots: HashMap<i64, HashSet<i64>>,
}

impl World {
    async fn load(app: &TestApp) -> Self {
        let db = &app.db;
        let mut holdings: HashMap<i64, HashSet<i64>> = HashMap::new();
        for a in customer_tag::Entity::find().all(db).await.unwrap() {
            holdings.entry(a.customer_id).or_default().insert(a.tag_id);
        }
        let adds = tag_event::Entity::find()
            .all(db)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.op == TagOp::Add)
            .map(|e| (e.tag_id, e.customer_id, e.occurred_at))
            .collect();
        let units = org_unit::Entity::find().all(db).await.unwrap();
        let mut snapshots: HashMap<i64, HashSet<i64>> = HashMap::new();
        for m in segment_member::Entity::find().all(db).await.unwrap() {
            snapshots.entry(m.segment_id).or_default().insert(m.customer_id);
        }
        Self {
            customers: customer::Entity::find().all(db).await.unwrap(),
            holdings,
            adds,
            tags: tag::Entity::find().all(db).await.unwrap().into_iter().map(|t| (t.id, t)).collect(),
            groups: tag_group::Entity::find().all(db).await.unwrap().into_iter().map(|g| (g.id, g)).collect(),
            unit_paths: units.iter().map(|u| (u.id, u.path.clone())).collect(),
            code_paths: units.iter().map(|u| (u.code.clone(), u.path.clone())).collect(),
            segments: segment::Entity::find().all(db).await.unwrap().into_iter().map(|s| (s.id, s)).collect(),
            snapshots,
        }
    }

    /// Whether the caller sees the tag on this customer: a group's tag
    /// where its class is visible, a personal tag wherever.
    fn tag_visible(&self, who: &Principal, tag: i64, c: &customer::Model) -> bool {
        match self.tags[&tag].group_id {
            Some(g) => who.class_scope(&self.groups[&g].visibility_class, ClassAccess::Read).contains(c.org_unit_id),
            None => true,
        }
    }

    fn holds(&self, who: &Principal, c: &customer::Model, r: &Ref) -> bool {
        let Ref::Id(t) = r else { panic!("unresolved {r:?}") };
        self.holdings.get(&c.id).is_some_and(|h| h.contains(t)) && self.tag_visible(who, *t, c)
    }

    fn eval(&self, who: &Principal, today: NaiveDate, c: &customer::Model, e: &SegmentExpr) -> bool {
        let recur = |e: &SegmentExpr| self.eval(who, today, c, e);
        match e {
            SegmentExpr::And(items) => items.iter().all(recur),
            SegmentExpr::Or(items) => items.iter().any(recur),
            SegmentExpr::Not(inner) => !recur(inner),
            SegmentExpr::Tag(r) | SegmentExpr::Lifecycle(r) => self.holds(who, c, r),
            SegmentExpr::AnyTags(rs) => rs.iter().any(|r| self.holds(who, c, r)),
            SegmentExpr::AllTags(rs) => rs.iter().all(|r| self.holds(who, c, r)),
            SegmentExpr::Group(Ref::Id(g)) => {
                let class = &self.groups[g].visibility_class;
                who.class_scope(class, ClassAccess::Read).contains(c.org_unit_id)
                    && self.holdings.get(&c.id).is_some_and(|h| h.iter().any(|t| self.tags[t].group_id == Some(*g)))
            }
            SegmentExpr::TaggedBetween { tag: Ref::Id(t), from, to } => {
                self.tag_visible(who, *t, c)
                    && self.adds.iter().any(|(tag, cust, at)| tag == t && *cust == c.id && at >= from && at <= to)
            }
            SegmentExpr::City(v) => c.city.as_deref() == Some(v.as_str()),
            SegmentExpr::Channel(v) => c.channel.as_deref() == Some(v.as_str()),
            SegmentExpr::Gender(g) => c.gender == *g,
            SegmentExpr::OrgUnit(code) => self.unit_paths[&c.org_unit_id].starts_with(&self.code_paths[code]),
            SegmentExpr::Age(r) => c.birth_date.is_some_and(|b| {
                let mut age = i64::from(today.year() - b.year());
                if (today.month(), today.day()) < (b.month(), b.day()) {
                    age -= 1;
                }
                r.contains(age)
            }),
            SegmentExpr::Spend(r) => r.contains(c.total_spend_cents),
            SegmentExpr::Orders(r) => r.contains(i64::from(c.order_count)),
            SegmentExpr::LastOrderBefore(t) => c.last_order_at.is_some_and(|l| l < *t),
            SegmentExpr::LastOrderAfter(t) => c.last_order_at.is_some_and(|l| l > *t),
            SegmentExpr::AddedBefore(t) => c.added_at < *t,
            SegmentExpr::AddedAfter(t) => c.added_at > *t,
            SegmentExpr::Segment(Ref::Id(id)) => {
                let saved = &self.segments[id];
                match saved.kind {
                    SegmentKind::Static => self.snapshots.get(id).is_some_and(|m| m.contains(&c.id)),
                    SegmentKind::Dynamic => {
                        let utc = FixedOffset::east_opt(0).unwrap();
                        recur(&tagbase::segment::parse(&saved.expression, utc).unwrap())
                    }
                }
            }
            other => panic!("unresolved {other:?}"),
        }
    }

    /// The members the caller may see, by brute force.
    fn members(&self, who: &Principal, offset: FixedOffset, e: &SegmentExpr) -> BTreeSet<i64> {
        let today = Utc::now().with_timezone(&offset).date_naive();
        let readable = who.scope(Action::CustomerRead);
        self.customers
            .iter()
            .filter(|c| readable.contains(c.org_unit_id) && self.eval(who, today, c, e))
            .map(|c| c.id)
            .collect()
    }
}

/// What the random expressions draw from.
struct Pool {
    tags: Vec<i64>,
    lifecycle: Vec<i64>,
    groups: Vec<i64>,
    units: Vec<String>,
    segments: Vec<i64>,
    cities: Vec<&'static str>,
    channels: Vec<String>,
    /// Instants found in the data (event, order and added times) and
    /// around them.
    instants: Vec<DateTime<Utc>>,
    /// Exact values, to hit the inclusive and exclusive bounds.
    event_times: HashMap<i64, Vec<DateTime<Utc>>>,
    last_orders: Vec<DateTime<Utc>>,
    added: Vec<DateTime<Utc>>,
}

impl Pool {
    /// An instant: often exactly one of `exact`, else any.
    fn instant(&self, rng: &mut ChaCha8Rng, exact: &[DateTime<Utc>]) -> DateTime<Utc> {
        if !exact.is_empty() && rng.random_bool(0.6) { pick(rng, exact) } else { pick(rng, &self.instants) }
    }
}

/// Every node kind a random expression may have (composites included).
const KINDS: usize = 20;

fn kind_of(e: &SegmentExpr) -> usize {
    match e {
        SegmentExpr::And(_) => 0,
        SegmentExpr::Or(_) => 1,
        SegmentExpr::Not(_) => 2,
        SegmentExpr::Tag(_) => 3,
        SegmentExpr::AnyTags(_) => 4,
        SegmentExpr::AllTags(_) => 5,
        SegmentExpr::Group(_) => 6,
        SegmentExpr::TaggedBetween { .. } => 7,
        SegmentExpr::City(_) => 8,
        SegmentExpr::Channel(_) => 9,
        SegmentExpr::Gender(_) => 10,
        SegmentExpr::Lifecycle(_) => 11,
        SegmentExpr::OrgUnit(_) => 12,
        SegmentExpr::Age(_) => 13,
        SegmentExpr::Spend(_) => 14,
        SegmentExpr::Orders(_) => 15,
        SegmentExpr::LastOrderBefore(_) | SegmentExpr::LastOrderAfter(_) => 16,
        SegmentExpr::AddedBefore(_) | SegmentExpr::AddedAfter(_) => 17,
        SegmentExpr::Segment(_) => 18,
    }
}

fn pick<T: Clone>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())].clone()
}

fn range(rng: &mut ChaCha8Rng, lo: i64, hi: i64) -> Range<i64> {
    let a = rng.random_range(lo..hi);
    let b = rng.random_range(a..=hi);
    match rng.random_range(0..3) {
        0 => Range { min: Some(a), max: None },
        1 => Range { min: None, max: Some(b) },
        _ => Range { min: Some(a), max: Some(b) },
    }
}

fn random_expr(rng: &mut ChaCha8Rng, pool: &Pool, depth: usize) -> SegmentExpr {
    if depth > 0 && rng.random_bool(0.55) {
        let items =
            |rng: &mut ChaCha8Rng| (0..rng.random_range(2..4)).map(|_| random_expr(rng, pool, depth - 1)).collect();
        return match rng.random_range(0..3) {
            0 => SegmentExpr::Not(Box::new(random_expr(rng, pool, depth - 1))),
            1 => SegmentExpr::And(items(rng)),
            _ => SegmentExpr::Or(items(rng)),
        };
    }
    let tag = |rng: &mut ChaCha8Rng| Ref::Id(pick(rng, &pool.tags));
    match rng.random_range(3..KINDS) {
        3 => SegmentExpr::Tag(tag(rng)),
        4 => SegmentExpr::AnyTags(vec![tag(rng), tag(rng), tag(rng)]),
        5 => SegmentExpr::AllTags(vec![tag(rng), tag(rng)]),
        6 => SegmentExpr::Group(Ref::Id(pick(rng, &pool.groups))),
        7 => {
            let tag = pick(rng, &pool.tags);
            let times = pool.event_times.get(&tag).map(Vec::as_slice).unwrap_or_default();
            let (a, b) = (pool.instant(rng, times), pool.instant(rng, times));
            SegmentExpr::TaggedBetween { tag: Ref::Id(tag), from: a.min(b), to: a.max(b) }
        }
        8 => SegmentExpr::City(pick(rng, &pool.cities).to_owned()),
        9 => SegmentExpr::Channel(pick(rng, &pool.channels)),
        10 => SegmentExpr::Gender(pick(rng, &[Gender::Female, Gender::Male, Gender::Unknown])),
        11 => SegmentExpr::Lifecycle(Ref::Id(pick(rng, &pool.lifecycle))),
        12 => SegmentExpr::OrgUnit(pick(rng, &pool.units)),
        13 => SegmentExpr::Age(range(rng, 15, 70)),
        14 => SegmentExpr::Spend(range(rng, 0, 2_000_000)),
        15 => SegmentExpr::Orders(range(rng, 0, 30)),
        16 if rng.random_bool(0.5) => SegmentExpr::LastOrderBefore(pool.instant(rng, &pool.last_orders)),
        16 => SegmentExpr::LastOrderAfter(pool.instant(rng, &pool.last_orders)),
        17 if rng.random_bool(0.5) => SegmentExpr::AddedBefore(pool.instant(rng, &pool.added)),
        17 => SegmentExpr::AddedAfter(pool.instant(rng, &pool.added)),
        _ => SegmentExpr::Segment(Ref::Id(pick(rng, &pool.segments))),
    }
}

const UPDATE: &str = "mutation($i: UpdateCustomerInput!) { updateCustomer(input: $i) { customer { id } } }";
const CREATE: &str = "mutation($i: CreateCustomerInput!) { createCustomer(input: $i) { customer { id } } }";
const TAG: &str = "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }";
const UNTAG: &str =
    "mutation($c: [ID!]!, $t: [ID!]!) { untagCustomers(input: { customerIds: $c, tagIds: $t }) { removed } }";
const SAVE: &str = "mutation($i: SaveSegmentInput!) { saveSegment(input: $i) { segment { id } } }";
const CITIES: [&str; 5] = ["深圳", "北京", "广州", "上海", "佛山"];

/// Random changes to the demo data: spend and orders written behind the
/// application's back (then a rebuild), then attribute updates, new
/// customers and tag changes through the API (followed by the index at
/// once), and a static and a dynamic saved segment.
async fn randomise(app: &TestApp, rng: &mut ChaCha8Rng, group_tags: &[i64]) {
    let customers = customer::Entity::find().all(&app.db).await.unwrap();
    let now = Utc::now();
    for c in &customers {
        if rng.random_bool(0.5) {
            continue;
        }
        let mut row = c.clone().into_active_model();
        row.total_spend_cents = Set(rng.random_range(0..2_000_000));
        row.order_count = Set(rng.random_range(0..30));
        row.last_order_at =
            Set(rng.random_bool(0.7).then(|| now - TimeDelta::milliseconds(rng.random_range(0..400 * 86_400_000))));
        // Unknown values, which no predicate matches (and `NOT` does).
        if rng.random_bool(0.2) {
            row.birth_date = Set(None);
        }
        if rng.random_bool(0.15) {
            row.city = Set(None);
        }
        if rng.random_bool(0.15) {
            row.channel = Set(None);
        }
        row.update(&app.db).await.unwrap();
    }
    app.app.state.index.rebuild(&app.db).await.unwrap();
    let ids: Vec<i64> = customers.iter().map(|c| c.id).collect();
    for _ in 0..12 {
        let c = customer::Entity::find_by_id(pick(rng, &ids)).one(&app.db).await.unwrap().unwrap();
        let birth = NaiveDate::from_ymd_opt(rng.random_range(1950..2008), rng.random_range(1..13), 28).unwrap();
        let mut input = json!({ "id": c.id.to_string(), "version": c.version });
        match rng.random_range(0..4) {
            0 => input["city"] = if rng.random_bool(0.3) { json!(null) } else { json!(pick(rng, &CITIES)) },
            1 => input["channel"] = if rng.random_bool(0.3) { json!(null) } else { json!("抖音") },
            2 => input["gender"] = json!(pick(rng, &["FEMALE", "MALE", "UNKNOWN"])),
            _ => input["birthDate"] = if rng.random_bool(0.3) { json!(null) } else { json!(birth.to_string()) },
        }
        app.gql("admin", UPDATE, json!({ "i": input })).await.ok();
    }
    for store in ["sz01", "bj01", "gz01"] {
        let input = json!({ "orgUnitId": app.unit_id(store), "name": format!("随机{store}"), "gender": "FEMALE",
                            "city": pick(rng, &CITIES), "channel": "抖音", "birthDate": "1990-01-28" });
        app.gql("admin", CREATE, json!({ "i": input })).await.ok();
    }
    let ids: Vec<i64> = customer::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id.to_string().parse().unwrap())
        .collect();
    for _ in 0..10 {
        let who: Vec<String> =
            (0..3).map(|_| pick(rng, &ids).to_string()).collect::<BTreeSet<_>>().into_iter().collect();
        let tags = vec![pick(rng, group_tags).to_string()];
        let mutation = if rng.random_bool(0.6) { TAG } else { UNTAG };
        // Some of these are refused (exclusive groups, approvals): fine.
        app.gql("admin", mutation, json!({ "c": who, "t": tags })).await;
    }
    let hq = app.unit_id("hq");
    for (name, kind, text) in [
        ("随机快照", "STATIC", "gender = FEMALE OR spend >= 500000"),
        ("随机动态", "DYNAMIC", "city = \"深圳\" AND NOT orders <= 3"),
    ] {
        let input = json!({ "orgUnitId": hq, "name": name, "kind": kind, "segment": { "text": text } });
        app.gql("admin", SAVE, json!({ "i": input })).await.ok();
    }
}

fn pool(world: &World) -> Pool {
    let mut tags: Vec<i64> = world.tags.values().filter(|t| t.group_id.is_some()).map(|t| t.id).collect();
    tags.sort();
    let lifecycle_groups: HashSet<i64> =
        world.groups.values().filter(|g| g.category == TagCategory::Lifecycle).map(|g| g.id).collect();
    let lifecycle = tags
        .iter()
        .copied()
        .filter(|t| world.tags[t].group_id.is_some_and(|g| lifecycle_groups.contains(&g)))
        .collect();
    let mut groups: Vec<i64> = world.groups.keys().copied().collect();
    groups.sort();
    let mut units: Vec<String> = world.code_paths.keys().cloned().collect();
    units.sort();
    let mut segments: Vec<i64> = world.segments.keys().copied().collect();
    segments.sort();
    let mut channels: Vec<String> = world.customers.iter().filter_map(|c| c.channel.clone()).collect();
    channels.sort();
    channels.dedup();
    channels.push("不存在".into());
    let mut instants: Vec<DateTime<Utc>> = world.adds.iter().map(|(_, _, at)| *at).collect();
    instants.extend(world.customers.iter().filter_map(|c| c.last_order_at));
    instants.extend(world.customers.iter().map(|c| c.added_at));
    let around: Vec<DateTime<Utc>> =
        instants.iter().flat_map(|t| [*t - TimeDelta::days(3), *t + TimeDelta::milliseconds(1)]).collect();
    instants.extend(around);
    instants.sort();
    instants.dedup();
    let mut event_times: HashMap<i64, Vec<DateTime<Utc>>> = HashMap::new();
    for (tag, _, at) in &world.adds {
        event_times.entry(*tag).or_default().push(*at);
    }
    let last_orders = world.customers.iter().filter_map(|c| c.last_order_at).collect();
    let added = world.customers.iter().map(|c| c.added_at).collect();
    Pool {
        tags,
        lifecycle,
        groups,
        units,
        segments,
        cities: CITIES.to_vec(),
        channels,
        instants,
        event_times,
        last_orders,
        added,
    }
}

/// One expression as seen by one caller: its engine, SQL and brute-force
/// members, or `None` when it is not valid for that caller.
async fn evaluate_three_ways(
    app: &TestApp,
    world: &World,
    principal: &Principal,
    expr: &SegmentExpr,
) -> Option<(Option<BTreeSet<i64>>, BTreeSet<i64>, BTreeSet<i64>, SegmentExpr)> {
    let state = &app.app.state;
    let offset = state.settings.utc_offset;
    let text = tagbase::segment::print(expr, &|_, _| None, offset);
    let parsed = segment_service::parse_text(&text, offset).unwrap_or_else(|e| panic!("{text}: {}", e.message()));
    let resolved = segment_service::resolve(&state.db, principal, &state.settings.limits, parsed).await.ok()?;
    state.index.prepare(&state.db, &resolved).await.unwrap();
    let engine = state.index.evaluate(principal, &resolved, offset).map(|b| b.iter().map(i64::from).collect());
    let filter = customer_service::CustomerFilter {
        segment: Some(customer_service::SegmentFilter { resolved: resolved.clone(), offset }),
        ..Default::default()
    };
    let sql = customer_service::ids_in_scope(&state.db, principal, &filter).await.ok()?.into_iter().collect();
    let brute = world.members(principal, offset, &resolved.expr);
    Some((engine, sql, brute, resolved.expr))
}

async fn engine_sql_and_brute_force_agree_on_random_data_and_expressions(app: TestApp) {
    // bj01.sales also serves gz01 as customer service: value tags count
    // in bj01 only, a case where class visibility differs by unit.
    app.bj01_sales_also_serves_gz01().await;
    let mut rng = ChaCha8Rng::seed_from_u64(20261125);
    let group_tags: Vec<i64> =
        World::load(&app).await.tags.values().filter(|t| t.group_id.is_some()).map(|t| t.id).collect();
    randomise(&app, &mut rng, &group_tags).await;
    let world = World::load(&app).await;
    let pool = pool(&world);
    assert!(pool.segments.len() >= 2 && !pool.lifecycle.is_empty(), "the data has saved segments and lifecycle tags");
    let logins = ["admin", "south.manager", "sz01.sales", "sz01.service", "hq.marketing", "bj01.sales"];
    let mut principals = Vec::new();
    for login in logins {
        principals.push((login, app.principal_of(login).await));
    }
    let mut checked: Vec<(usize, SegmentExpr, BTreeSet<i64>)> = Vec::new();
    let mut kinds = BTreeSet::new();
    let mut sizes = BTreeSet::new();
    for (who, (login, principal)) in principals.iter().enumerate() {
        // The caller whose tag visibility differs between its units gets
        // the most expressions.
        let rounds = if *login == "bj01.sales" { 90 } else { 35 };
        for _ in 0..rounds {
            let expr = random_expr(&mut rng, &pool, 3);
            let Some((engine, sql, brute, resolved)) = evaluate_three_ways(&app, &world, principal, &expr).await else {
                continue;
            };
            let engine = engine.unwrap_or_else(|| panic!("the engine answers every node kind: {expr:?}"));
            assert_eq!(sql, brute, "{login}: SQL and brute force differ on {expr:?}");
            assert_eq!(engine, sql, "{login}: the engine and SQL differ on {expr:?}");
            resolved.walk(&mut |e| {
                kinds.insert(kind_of(e));
            });
            sizes.insert(sql.len());
            checked.push((who, resolved, sql));
        }
    }
    assert_eq!(kinds.len(), KINDS - 1, "every node kind was compared: {kinds:?}");
    assert!(checked.len() > 80, "only {} expressions were valid", checked.len());
    assert!(sizes.len() > 10, "the expressions select different sets: {sizes:?}");
    // Cross analysis: the index's pairwise counts equal the SQL's, with and
    // without a segment, for every caller (a fresh index is not ready, so
    // it makes the service answer by SQL).
    let state = &app.app.state;
    let offset = state.settings.utc_offset;
    let unready = tagbase::segment::SegmentIndex::new();
    let mut compared = 0;
    for (who, (login, principal)) in principals.iter().enumerate() {
        for round in 0..8 {
            let k = rng.random_range(1..6);
            let tags: Vec<tagbase::domain::TagId> =
                (0..k).map(|_| tagbase::domain::TagId(group_tags[rng.random_range(0..group_tags.len())])).collect();
            let mut filter = customer_service::CustomerFilter::default();
            if round % 2 == 1
                && let Some((_, expr, _)) = checked.iter().filter(|(w, _, _)| *w == who).nth(round)
            {
                let text = tagbase::segment::print(expr, &|_, _| None, offset);
                let parsed = segment_service::parse_text(&text, offset).unwrap();
                let resolved =
                    segment_service::resolve(&state.db, principal, &state.settings.limits, parsed).await.unwrap();
                filter.segment = Some(customer_service::SegmentFilter { resolved, offset });
            }
            let limits = &state.settings.limits;
            let by_index =
                segment_service::cooccurrence(&state.db, &state.index, principal, limits, &tags, &filter).await;
            let by_sql = segment_service::cooccurrence(&state.db, &unready, principal, limits, &tags, &filter).await;
            match (by_index, by_sql) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(
                        a,
                        b,
                        "{login}: cross analysis of {tags:?} differs (segment: {})",
                        filter.segment.is_some()
                    );
                    compared += 1;
                }
                (Err(a), Err(b)) => assert_eq!(a.code(), b.code(), "{login}"),
                (a, b) => panic!("{login}: the index answered {a:?}, SQL {b:?}"),
            }
        }
    }
    assert!(compared > 10, "only {compared} cross analyses compared");

    // Dropped and rebuilt: the same answers.
    state.index.rebuild(&app.db).await.unwrap();
    for (who, resolved_expr, expected) in &checked {
        let (login, principal) = &principals[*who];
        let offset = state.settings.utc_offset;
        let text = tagbase::segment::print(resolved_expr, &|_, _| None, offset);
        let parsed = segment_service::parse_text(&text, offset).unwrap();
        let resolved = segment_service::resolve(&state.db, principal, &state.settings.limits, parsed).await.unwrap();
        state.index.prepare(&state.db, &resolved).await.unwrap();
        let engine: BTreeSet<i64> =
            state.index.evaluate(principal, &resolved, offset).unwrap().iter().map(i64::from).collect();
        assert_eq!(&engine, expected, "{login}, after a rebuild: {text}");
    }
}

/// The SQL fallback negates correlated `EXISTS` subqueries, never
/// `id IN (subquery)`, which PostgreSQL evaluates row by row at scale.
async fn negated_predicates_compile_to_not_exists(app: TestApp) {
    use sea_orm::{DbBackend, QueryFilter, QueryTrait};
    let state = &app.app.state;
    let principal = app.principal_of("admin").await;
    let tag = app.tag_id("活动", "试驾预约").await;
    let group = app.group_id("活动").await;
    let saved = app
        .gql("admin", SAVE, json!({ "i": { "orgUnitId": app.unit_id("hq"), "name": "快照", "kind": "STATIC", "segment": { "text": "gender = MALE" } } }))
        .await;
    let saved = saved.ok()["saveSegment"]["segment"]["id"].as_str().unwrap().to_owned();
    // The text form names objects by row id (`#42`).
    let (tag, group, saved) =
        (crate::helpers::row_id(&tag), crate::helpers::row_id(&group), crate::helpers::row_id(&saved));
    let text = format!(
        "NOT tag(#{tag}) AND NOT group(#{group}) AND NOT taggedBetween(#{tag}, \"2026-01-01\", \"2026-12-31\") AND NOT segment(#{saved})"
    );
    let offset = state.settings.utc_offset;
    let expr = segment_service::parse_text(&text, offset).unwrap();
    let resolved = segment_service::resolve(&state.db, &principal, &state.settings.limits, expr).await.unwrap();
    let searched = principal.scope(Action::CustomerRead);
    let cond = segment_service::condition(&principal, &resolved, &searched, offset, Utc::now()).unwrap();
    let sql = customer::Entity::find().filter(cond).build(DbBackend::Postgres).to_string();
    assert_eq!(sql.matches("NOT EXISTS").count(), 4, "{sql}");
    assert!(!sql.contains(" IN (SELECT"), "{sql}");
}

/// Every page of a segment's members, walking the cursors: from the
/// index (`list_members`) or by SQL (`list_in_scope`). Walks forward, then
/// backward from the end, and asserts both give the same list.
async fn all_pages(
    app: &TestApp,
    principal: &Principal,
    filter: &customer_service::CustomerFilter,
    order: customer_service::CustomerOrder,
    from_index: bool,
) -> Result<Vec<(String, i64)>, String> {
    let forward = walk(app, principal, filter, order, from_index, false).await?;
    let backward = walk(app, principal, filter, order, from_index, true).await?;
    assert_eq!(backward, forward, "backward paging gives the forward list ({order:?}, index: {from_index})");
    Ok(forward)
}

/// One walk of [`all_pages`], 4 a page, in the list's order.
async fn walk(
    app: &TestApp,
    principal: &Principal,
    filter: &customer_service::CustomerFilter,
    order: customer_service::CustomerOrder,
    from_index: bool,
    backward: bool,
) -> Result<Vec<(String, i64)>, String> {
    let state = &app.app.state;
    let limits = &state.settings.limits;
    let mut cursor: Option<String> = None;
    let mut out: Vec<(String, i64)> = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10_000, "member pages never end");
        let args = if backward {
            tagbase::domain::PageArgs::parse(None, None, Some(4), cursor.clone(), limits)
        } else {
            tagbase::domain::PageArgs::parse(Some(4), cursor.clone(), None, None, limits)
        }
        .unwrap();
        let page = if from_index {
            segment_service::list_members(&state.db, &state.index, principal, filter, order, &args).await
        } else {
            customer_service::list_in_scope(&state.db, principal, filter, order, &args).await
        }
        .map_err(|e| e.code().to_string())?;
        let items: Vec<(String, i64)> = page.items.iter().map(|(cursor, c)| (cursor.clone(), c.id)).collect();
        if backward {
            assert_eq!(page.has_next_page, cursor.is_some());
            cursor = page.start_cursor();
            out.splice(0..0, items);
            if !page.has_previous_page {
                return Ok(out);
            }
        } else {
            assert_eq!(page.has_previous_page, cursor.is_some());
            cursor = page.end_cursor();
            out.extend(items);
            if !page.has_next_page {
                return Ok(out);
            }
        }
    }
}

async fn member_pages_from_the_index_match_sql_in_every_order(app: TestApp) {
    use customer_service::{CustomerOrder, SortField};
    let state = &app.app.state;
    let offset = state.settings.utc_offset;
    for login in ["admin", "sz01.sales", "sz01.service"] {
        let principal = app.principal_of(login).await;
        let expr = segment_service::parse_text("NOT city = \"北京\"", offset).unwrap();
        let resolved = segment_service::resolve(&state.db, &principal, &state.settings.limits, expr).await.unwrap();
        let filter = customer_service::CustomerFilter {
            segment: Some(customer_service::SegmentFilter { resolved, offset }),
            ..Default::default()
        };
        for field in [SortField::AddedAt, SortField::TotalSpend, SortField::Name, SortField::UpdatedAt] {
            for descending in [false, true] {
                let order = CustomerOrder { field, descending };
                let by_sql = all_pages(&app, &principal, &filter, order, false).await;
                let by_index = all_pages(&app, &principal, &filter, order, true).await;
                assert_eq!(by_index, by_sql, "{login}, {order:?}");
                if let Ok(pages) = &by_sql {
                    assert!(pages.len() > 4, "several pages");
                }
            }
        }
    }
    // The page comes from the index: a customer written behind the
    // application's back shows in SQL only, until the index catches up.
    let principal = app.principal_of("admin").await;
    let expr = segment_service::parse_text("gender = FEMALE", offset).unwrap();
    let resolved = segment_service::resolve(&state.db, &principal, &state.settings.limits, expr).await.unwrap();
    let filter = customer_service::CustomerFilter {
        segment: Some(customer_service::SegmentFilter { resolved, offset }),
        ..Default::default()
    };
    let order = CustomerOrder { field: SortField::AddedAt, descending: true };
    let mut newcomer = customer::Entity::find().one(&app.db).await.unwrap().unwrap().into_active_model();
    newcomer.id = sea_orm::ActiveValue::NotSet;
    newcomer.gender = Set(Gender::Female);
    newcomer.added_at = Set(Utc::now());
    let newcomer = newcomer.insert(&app.db).await.unwrap();
    let newest = |pages: Vec<(String, i64)>| pages[0].1;
    assert_eq!(newest(all_pages(&app, &principal, &filter, order, false).await.unwrap()), newcomer.id);
    assert_ne!(newest(all_pages(&app, &principal, &filter, order, true).await.unwrap()), newcomer.id);
    state.index.catch_up(&app.db).await.unwrap();
    assert_eq!(newest(all_pages(&app, &principal, &filter, order, true).await.unwrap()), newcomer.id);
}

const PREVIEW: &str = "query($s: SegmentInput!) { segmentPreview(segment: $s) { count } }";
const UPDATE_CITY: &str = "mutation($id: ID!, $v: Int!) { updateCustomer(input: { id: $id, version: $v, city: \"拉萨\" }) { customer { id } } }";

async fn count_on(app: &TestApp, instance: &tagbase::startup::Application, text: &str) -> u64 {
    let res = app.gql_on(instance, "admin", PREVIEW, json!({ "s": { "text": text } })).await;
    res.ok()["segmentPreview"]["count"].as_u64().unwrap()
}

async fn a_write_shows_at_once_here_and_soon_on_other_instances(app: TestApp) {
    app.app.state.index.rebuild(&app.db).await.unwrap();
    let other = app.second_instance().await;
    other.state.index.rebuild(&app.db).await.unwrap();
    let tag = app.tag_id("活动", "试驾预约").await;
    let tagged = format!("tag(#{})", crate::helpers::row_id(&tag));
    let before = count_on(&app, &app.app, &tagged).await;
    let customers = app.customers_of("gz01").await;
    let added = app.gql("admin", TAG, json!({ "c": customers, "t": [tag] })).await;
    let added = added.ok()["tagCustomers"]["added"].as_u64().unwrap();
    assert!(added > 0);
    assert_eq!(count_on(&app, &app.app, &tagged).await, before + added, "a tag at once on the writing instance");
    // An attribute change.
    let in_lhasa = "city = \"拉萨\"";
    assert_eq!(count_on(&app, &app.app, in_lhasa).await, 0);
    let moved = customer::Entity::find_by_id(crate::helpers::row_id(&app.customers_of("bj01").await[0]))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    app.gql("admin", UPDATE_CITY, json!({ "id": moved.id.to_string(), "v": moved.version })).await.ok();
    assert_eq!(count_on(&app, &app.app, in_lhasa).await, 1, "an attribute change at once on the writing instance");
    let started = Instant::now();
    loop {
        let there = (count_on(&app, &other, &tagged).await, count_on(&app, &other, in_lhasa).await);
        if there == (before + added, 1) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the other instance never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const MEMBERS: &str = "query($s: SegmentInput!) { customers(segment: $s, first: 100) { edges { node { id } } } }";

/// Concurrent writers share catch-ups; each still sees its own change the
/// moment its call returns, on the instance that made it.
async fn concurrent_writers_each_see_their_own_change_at_once(app: TestApp) {
    app.app.state.index.rebuild(&app.db).await.unwrap();
    let tag = app.tag_id("活动", "试驾预约").await;
    let customers = app.customers_of("gz01").await;
    app.gql("admin", UNTAG, json!({ "c": customers, "t": [tag] })).await.ok();
    let writers = customers.iter().take(12).cloned().map(|customer| {
        let (app, tag) = (&app, tag.clone());
        async move {
            let added = app.gql("admin", TAG, json!({ "c": [customer.clone()], "t": [tag.clone()] })).await;
            assert_eq!(added.ok()["tagCustomers"]["added"], 1);
            // Read through the index at once: the writer's own change is there.
            let text = format!("tag(#{})", crate::helpers::row_id(&tag));
            let members = app.gql("admin", MEMBERS, json!({ "s": { "text": text } })).await;
            let members = members.ok()["customers"]["edges"].as_array().unwrap().clone();
            let seen = members.iter().any(|e| e["node"]["id"] == customer.as_str());
            (customer, seen)
        }
    });
    for (customer, seen) in futures_util::future::join_all(writers).await {
        assert!(seen, "customer {customer} tagged, and a member by the segment index when the call returned");
    }
}

on_both_databases!(
    engine_sql_and_brute_force_agree_on_random_data_and_expressions,
    negated_predicates_compile_to_not_exists,
    member_pages_from_the_index_match_sql_in_every_order,
    a_write_shows_at_once_here_and_soon_on_other_instances,
    concurrent_writers_each_see_their_own_change_at_once
);
