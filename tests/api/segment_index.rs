//! The in-memory segment index agrees with SQL for every role, shows a
//! write at once on the instance that made it and soon on the others, and
//! gives the same answers after a rebuild.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::json;
use tagbase::service::{customer, segment};

use crate::helpers::TestApp;
use crate::on_both_databases;

/// Engine and SQL counts of a text expression for `login`, or `None` when
/// the expression is not valid for that caller.
async fn both_counts(app: &TestApp, login: &str, text: &str) -> Option<(Option<u64>, u64)> {
    let state = &app.app.state;
    let bearer = format!("Bearer {}", app.token(login));
    let principal = tagbase::auth::authenticate(&state.db, &state.keys, &state.authz, Some(&bearer)).await.ok()?;
    let expr = segment::parse_text(text, state.settings.utc_offset).ok()?;
    let resolved = segment::resolve(&state.db, &principal, &state.settings.limits, expr).await.ok()?;
    let engine = state.index.evaluate(&principal, &resolved).map(|b| b.len());
    let filter = customer::CustomerFilter {
        segment: Some(customer::SegmentFilter { resolved, offset: state.settings.utc_offset }),
        ..Default::default()
    };
    let sql = customer::count_in_scope(&state.db, &principal, &filter).await.ok()?;
    Some((engine, sql))
}

fn random_text(rng: &mut rand_chacha::ChaCha8Rng, tags: &[String], groups: &[String], depth: usize) -> String {
    if depth > 0 && rng.random_bool(0.5) {
        let a = random_text(rng, tags, groups, depth - 1);
        let b = random_text(rng, tags, groups, depth - 1);
        return match rng.random_range(0..3) {
            0 => format!("NOT ({a})"),
            1 => format!("({a}) AND ({b})"),
            _ => format!("({a}) OR ({b})"),
        };
    }
    let tag = |rng: &mut rand_chacha::ChaCha8Rng| format!("#{}", tags[rng.random_range(0..tags.len())]);
    match rng.random_range(0..6) {
        0 => format!("group(#{})", groups[rng.random_range(0..groups.len())]),
        1 => format!("tag({})", tag(rng)),
        2 => format!("anyTag({}, {})", tag(rng), tag(rng)),
        3 => format!("allTags({}, {})", tag(rng), tag(rng)),
        _ => ["orgUnit = \"south\"", "orgUnit = \"sz01\"", "orgUnit = \"north\""][rng.random_range(0..3)].to_owned(),
    }
}

async fn the_index_and_sql_agree_for_every_role(app: TestApp) {
    // bj01.sales also serves gz01 as customer service: value tags count
    // in bj01 only, a case where class visibility differs by unit.
    let member = app.staff("bj01.sales").clone();
    app.app
        .state
        .authz
        .assign_role(tagbase::domain::StaffId(member.id), "customer_service", "hq/south/gz01/")
        .await
        .unwrap();
    app.app.state.index.rebuild(&app.db).await.unwrap();
    let tags: Vec<String> = {
        let all = entity::tag::Entity::find();
        use sea_orm::EntityTrait;
        all.all(&app.db).await.unwrap().into_iter().map(|t| t.id.to_string()).collect()
    };
    let groups: Vec<String> = {
        use sea_orm::EntityTrait;
        entity::tag_group::Entity::find().all(&app.db).await.unwrap().into_iter().map(|g| g.id.to_string()).collect()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut compared = 0;
    for login in ["admin", "south.manager", "sz01.sales", "sz01.service", "hq.marketing", "bj01.sales"] {
        for _ in 0..30 {
            let text = random_text(&mut rng, &tags, &groups, 3);
            let Some((engine, sql)) = both_counts(&app, login, &text).await else { continue };
            let engine = engine.unwrap_or_else(|| panic!("the index answers tag expressions: {text}"));
            assert_eq!(engine, sql, "{login}: {text}");
            compared += 1;
        }
    }
    assert!(compared > 60, "only {compared} expressions were valid");
    // After a rebuild: the same answers.
    let text = format!("tag(#{}) OR NOT tag(#{})", tags[3], tags[7]);
    let before = both_counts(&app, "admin", &text).await.unwrap();
    app.app.state.index.rebuild(&app.db).await.unwrap();
    assert_eq!(both_counts(&app, "admin", &text).await.unwrap(), before);
    // Attribute predicates are SQL's.
    let (engine, _) = both_counts(&app, "admin", "city = \"深圳\"").await.unwrap();
    assert_eq!(engine, None);
}

const TAG: &str = "mutation($c: [ID!]!, $t: [ID!]!) { tagCustomers(input: { customerIds: $c, tagIds: $t }) { added } }";
const PREVIEW: &str = "query($s: SegmentInput!) { segmentPreview(segment: $s) { count } }";

async fn a_write_shows_at_once_here_and_soon_on_other_instances(app: TestApp) {
    app.app.state.index.rebuild(&app.db).await.unwrap();
    let other = app.second_instance().await;
    other.state.index.rebuild(&app.db).await.unwrap();
    let tag = app.tag_id("活动", "试驾预约").await;
    let text = json!({ "s": { "text": format!("tag(#{tag})") } });
    let count_here =
        || async { app.gql("admin", PREVIEW, text.clone()).await.ok()["segmentPreview"]["count"].as_u64().unwrap() };
    let before = count_here().await;
    let customers = app.customers_of("gz01").await;
    let added = app.gql("admin", TAG, json!({ "c": customers, "t": [tag] })).await;
    let added = added.ok()["tagCustomers"]["added"].as_u64().unwrap();
    assert!(added > 0);
    assert_eq!(count_here().await, before + added, "at once on the writing instance");
    let started = Instant::now();
    loop {
        let there =
            app.gql_on(&other, "admin", PREVIEW, text.clone()).await.ok()["segmentPreview"]["count"].as_u64().unwrap();
        if there == before + added {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "the other instance never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both_databases!(the_index_and_sql_agree_for_every_role, a_write_shows_at_once_here_and_soon_on_other_instances);
