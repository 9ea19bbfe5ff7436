//! Benchmarks: tables printed by `tagbase bench …`, never part of the
//! tests' assertions on time.
//!
//! - [`segments`]: the segment index against plain SQL, in process.
//! - [`bulk`]: bulk tagging jobs at 10k–1M customers, in process.
//! - [`import`]: a 100,000-row GBK customer import, as a job, in process.
//! - [`api`]: the API over real HTTP, from a separate client, against a
//!   server started as a child process.
//! - [`reports`]: the governance reports (tag usage, zombies, duplicates,
//!   tags at a date), in process.
//! - [`rules`]: automatic tagging over HTTP: ingest, event → segment
//!   latency, a 30-day dry run, memory.
//! - [`schedule`]: a scheduled absence rule over every customer, in
//!   process.

pub mod api;
pub mod bulk;
pub mod import;
pub mod reports;
pub mod rules;
pub mod schedule;
pub mod segments;

pub use segments::{BenchSize, run};

use chrono::Utc;
use entity::{tag, tag_group};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

/// The bench's tag group `name` at `unit`, created when missing (found by
/// unit and name, so the benches' groups never stand in for each other).
pub(crate) async fn ensure_group(
    db: &DatabaseConnection,
    unit: i64,
    name: &str,
    exclusive: bool,
) -> anyhow::Result<tag_group::Model> {
    let found = tag_group::Entity::find()
        .filter(tag_group::Column::OrgUnitId.eq(unit))
        .filter(tag_group::Column::Name.eq(name))
        .one(db)
        .await?;
    if let Some(group) = found {
        return Ok(group);
    }
    let now = Utc::now();
    Ok(tag_group::ActiveModel {
        org_unit_id: Set(unit),
        name: Set(name.into()),
        description: Set(String::new()),
        category: Set(entity::enums::TagCategory::Interest),
        visibility_class: Set("interest".into()),
        exclusive: Set(exclusive),
        naming_pattern: Set(None),
        version: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await?)
}

/// The active tag `name` of `group`, created when missing.
pub(crate) async fn ensure_tag(db: &DatabaseConnection, group: i64, name: &str) -> anyhow::Result<tag::Model> {
    let found =
        tag::Entity::find().filter(tag::Column::GroupId.eq(group)).filter(tag::Column::Name.eq(name)).one(db).await?;
    if let Some(tag) = found {
        return Ok(tag);
    }
    let now = Utc::now();
    Ok(tag::ActiveModel {
        group_id: Set(Some(group)),
        name: Set(name.into()),
        description: Set(String::new()),
        status: Set(entity::enums::TagStatus::Active),
        aliases: Set(serde_json::json!([])),
        version: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
    .insert(db)
    .await?)
}
