//! The demo seed is deterministic and idempotent.

use entity::{customer, customer_tag, tag_event};
use sea_orm::{EntityTrait, QueryOrder};

use crate::helpers::TestApp;
use crate::on_both_databases;

/// Everything the seed writes about customers, in a comparable form.
async fn fingerprint(app: &TestApp) -> (Vec<String>, Vec<String>, usize) {
    let customers = customer::Entity::find()
        .order_by_asc(customer::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            format!(
                "{}|{}|{:?}|{:?}|{}|{:?}",
                c.name, c.org_unit_id, c.phone, c.birth_date, c.total_spend_cents, c.added_at
            )
        })
        .collect();
    let assignments = customer_tag::Entity::find()
        .order_by_asc(customer_tag::Column::CustomerId)
        .order_by_asc(customer_tag::Column::TagId)
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|a| format!("{}|{}|{:?}|{:?}", a.customer_id, a.tag_id, a.source, a.tagged_at))
        .collect();
    let events = tag_event::Entity::find().all(&app.db).await.unwrap().len();
    (customers, assignments, events)
}

async fn seeding_twice_leaves_the_same_data(app: TestApp) {
    let first = fingerprint(&app).await;
    let offset = app.app.state.settings.utc_offset;
    let report =
        tagbase::seed::seed_demo_sized(&app.db, &app.app.state.authz, crate::helpers::TEST_CUSTOMERS_PER_STORE, offset)
            .await
            .unwrap();
    assert_eq!(report.customers_created + report.customers_updated + report.assignments + report.role_bindings, 0);
    assert_eq!(fingerprint(&app).await, first);
    assert!(!first.1.is_empty(), "the demo customers carry tags");
}

async fn the_full_demo_has_two_thousand_customers_and_is_stable(app: TestApp) {
    let report =
        tagbase::seed::seed_demo(&app.db, &app.app.state.authz, app.app.state.settings.utc_offset).await.unwrap();
    assert_eq!(report.customers_created, 2000 - 4 * crate::helpers::TEST_CUSTOMERS_PER_STORE);
    let once = fingerprint(&app).await;
    assert_eq!(once.0.len(), 2000);
    let again =
        tagbase::seed::seed_demo(&app.db, &app.app.state.authz, app.app.state.settings.utc_offset).await.unwrap();
    assert_eq!(again.customers_created + again.customers_updated + again.assignments, 0);
    assert_eq!(fingerprint(&app).await, once);
}

on_both_databases!(seeding_twice_leaves_the_same_data, the_full_demo_has_two_thousand_customers_and_is_stable);
