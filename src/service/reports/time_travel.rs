//! Tags at a date: what a customer held, and who a segment's members were,
//! at a past instant, replayed from the tag event log (append-only: every
//! add and remove, merges included, with its time). Exact for tags: the
//! log is the history the tables are the result of.
//!
//! Cost: a customer's tags at a date read that customer's events up to
//! the instant (one indexed statement, a few dozen rows). A segment as of
//! a date reads every event of the tags the expression names up to the
//! instant — proportional to how often those tags were ever given and
//! taken (a tag held by 100,000 customers: some 100,000 rows, about a
//! second on PostgreSQL) — then evaluates the expression on the index with
//! those holders. Only tags travel in time: customer attributes (spend,
//! city, …) are read as they are now, and `taggedBetween` reads its own
//! timeline.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, FixedOffset, Utc};
use entity::{
    enums::{TagOp, TagSource},
    tag, tag_event, tag_group,
};
use roaring::RoaringBitmap;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::authz::Principal;
use crate::authz::visibility::on_customer_visible;
use crate::domain::CustomerId;
use crate::error::{AppError, AppResult};
use crate::segment::{Resolved, SegmentIndex};
use crate::service::customer::find_in_scope;
use crate::store::CHUNK;

/// A tag a customer held at an instant.
#[derive(Debug, Clone)]
pub struct TagAt {
    pub tag: tag::Model,
    pub group: Option<tag_group::Model>,
    /// When it was last given before the instant.
    pub tagged_at: DateTime<Utc>,
    pub source: TagSource,
}

/// The tags a customer held at `at` that the caller may see on it, by tag
/// name: its events up to `at` replayed in log order.
///
/// # Errors
/// `NOT_FOUND` for a customer outside the caller's scope; database errors.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn tags_at(
    db: &DatabaseConnection,
    principal: &Principal,
    customer: CustomerId,
    at: DateTime<Utc>,
) -> AppResult<Vec<TagAt>> {
    let found = find_in_scope(db, principal, customer).await?;
    let events = tag_event::Entity::find()
        .filter(tag_event::Column::CustomerId.eq(found.id))
        .filter(tag_event::Column::OccurredAt.lte(at))
        .order_by_asc(tag_event::Column::Seq)
        .all(db)
        .await?;
    let mut held: BTreeMap<i64, (DateTime<Utc>, TagSource)> = BTreeMap::new();
    for e in events {
        match e.op {
            TagOp::Add => {
                held.insert(e.tag_id, (e.occurred_at, e.source));
            }
            TagOp::Remove => {
                held.remove(&e.tag_id);
            }
        }
    }
    let tags = tag::Entity::find().filter(tag::Column::Id.is_in(held.keys().copied())).all(db).await?;
    let groups: HashMap<i64, tag_group::Model> = tag_group::Entity::find()
        .filter(tag_group::Column::Id.is_in(tags.iter().filter_map(|t| t.group_id)))
        .all(db)
        .await?
        .into_iter()
        .map(|g| (g.id, g))
        .collect();
    let mut out: Vec<TagAt> = tags
        .into_iter()
        .filter_map(|t| {
            let group = t.group_id.and_then(|g| groups.get(&g)).cloned();
            let class = group.as_ref().map(|g| g.visibility_class.as_str());
            if !on_customer_visible(principal, t.owner_staff_id, class, found.org_unit_id) {
                return None;
            }
            let (tagged_at, source) = *held.get(&t.id)?;
            Some(TagAt { tag: t, group, tagged_at, source })
        })
        .collect();
    out.sort_by(|a, b| a.tag.name.cmp(&b.tag.name).then(a.tag.id.cmp(&b.tag.id)));
    Ok(out)
}

/// The holders of the tags at `at`: their events up to it replayed in log
/// order.
///
/// # Errors
/// Database errors.
pub async fn holders_at(
    db: &DatabaseConnection,
    tag_ids: &[i64],
    at: DateTime<Utc>,
) -> AppResult<HashMap<i64, RoaringBitmap>> {
    let mut out: HashMap<i64, RoaringBitmap> = tag_ids.iter().map(|t| (*t, RoaringBitmap::new())).collect();
    for chunk in tag_ids.chunks(CHUNK) {
        let rows: Vec<(i64, i64, TagOp)> = tag_event::Entity::find()
            .select_only()
            .columns([tag_event::Column::CustomerId, tag_event::Column::TagId, tag_event::Column::Op])
            .filter(tag_event::Column::TagId.is_in(chunk.iter().copied()))
            .filter(tag_event::Column::OccurredAt.lte(at))
            .order_by_asc(tag_event::Column::Seq)
            .into_tuple()
            .all(db)
            .await?;
        for (customer, tag_id, op) in rows {
            let (Ok(bit), Some(held)) = (u32::try_from(customer), out.get_mut(&tag_id)) else { continue };
            match op {
                TagOp::Add => held.insert(bit),
                TagOp::Remove => held.remove(bit),
            };
        }
    }
    Ok(out)
}

/// The members of a resolved expression the caller may see, with tags as
/// they were at `at`.
///
/// # Errors
/// `VALIDATION` for an expression naming a saved segment (its members at a
/// date are not kept); `CONFLICT` while the index builds; database errors.
#[tracing::instrument(skip_all, fields(staff = principal.staff.id))]
pub async fn members_as_of(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    resolved: &Resolved,
    offset: FixedOffset,
    at: DateTime<Utc>,
) -> AppResult<RoaringBitmap> {
    if !resolved.segments.is_empty() {
        return Err(AppError::validation("asOf", "does not apply to expressions naming saved segments"));
    }
    if !index.is_ready() {
        return Err(AppError::Conflict("the segment index is still building; retry shortly".to_owned()));
    }
    index.prepare(db, resolved).await?;
    let mut tag_ids: Vec<i64> = resolved.tags.keys().copied().collect();
    for group in resolved.groups.keys() {
        tag_ids.extend(index.tags_of_group(*group));
    }
    tag_ids.sort_unstable();
    tag_ids.dedup();
    let holders = holders_at(db, &tag_ids, at).await?;
    index
        .evaluate_as_of(principal, resolved, offset, &holders)
        .ok_or_else(|| AppError::Conflict("the segment index cannot answer this expression yet; retry".to_owned()))
}
