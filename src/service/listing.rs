//! Customer lists from the in-memory segment index: the members of a
//! customer filter (scope, org unit, tags, lifecycle stage, spend range,
//! segment) as a bitmap, their count, their pages and their ids for
//! exports. Only what the index cannot answer goes to SQL: a search text,
//! an index still building, an expression needing what it has not loaded.
//! Either way the checks, the order, the cursors and the answers are those
//! of the SQL path in [`customer_service`], which stays callable (it is
//! the fallback, and the property tests compare the two).
//!
//! A bitmap is exact: the index follows the logs the SQL reads, applies
//! the caller's own writes at once and those of other instances within
//! about a second (see `docs/index-reads.md`).

use std::collections::HashMap;

use chrono::{DateTime, FixedOffset, Utc};
use entity::{customer, tag, tag_group};
use roaring::RoaringBitmap;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use super::customer::{self as customer_service, CustomerFilter, CustomerOrder, Page, SortField, search_text};
use crate::authz::visibility::{self, VisibleTag};
use crate::authz::{Action, Principal};
use crate::domain::tag::is_retired;
use crate::domain::{Cursor, PageArgs, TagId};
use crate::error::{AppError, AppResult};
use crate::segment::{PageKey, Range, Ref, Resolved, SegmentExpr, SegmentIndex};

/// The filter's parts other than the segment, as an expression the index
/// evaluates exactly as [`customer_service::filter_condition`] compiles
/// them: holders of a tag only where the caller sees its class, nobody for
/// a retired tag, an org unit with its subtree, spend with both ends
/// included.
fn filter_expr(principal: &Principal, filter: &CustomerFilter, tags: &HashMap<TagId, VisibleTag>) -> Resolved {
    let mut items: Vec<SegmentExpr> =
        filter.has_all_tags.iter().chain(&filter.lifecycle_stage).map(|t| SegmentExpr::Tag(Ref::Id(t.0))).collect();
    if !filter.has_any_tags.is_empty() {
        items.push(SegmentExpr::AnyTags(filter.has_any_tags.iter().map(|t| Ref::Id(t.0)).collect()));
    }
    if let Some(unit) = filter.org_unit.and_then(|u| principal.org.get(u.0)) {
        items.push(SegmentExpr::OrgUnit(unit.code.clone()));
    }
    if filter.total_spend_min.is_some() || filter.total_spend_max.is_some() {
        items.push(SegmentExpr::Spend(Range { min: filter.total_spend_min, max: filter.total_spend_max }));
    }
    Resolved {
        expr: SegmentExpr::And(items),
        tags: tags.iter().map(|(id, t)| (id.0, t.clone())).collect(),
        groups: HashMap::new(),
        segments: HashMap::new(),
        merged_from: HashMap::new(),
    }
}

/// The members of a filter the caller may see, from the index, the filter
/// checked already (`tags`: as [`customer_service::check_filter`] found
/// them). `None` when the index cannot answer and SQL must.
async fn members_checked(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    filter: &CustomerFilter,
    tags: &HashMap<TagId, VisibleTag>,
) -> AppResult<Option<RoaringBitmap>> {
    if search_text(filter).is_some() || !index.is_ready() {
        return Ok(None);
    }
    let utc = FixedOffset::east_opt(0).expect("UTC");
    let Some(mut members) = index.evaluate(principal, &filter_expr(principal, filter, tags), utc) else {
        return Ok(None);
    };
    if let Some(seg) = &filter.segment {
        index.prepare(db, &seg.resolved).await?;
        let Some(of_segment) = index.evaluate(principal, &seg.resolved, seg.offset) else { return Ok(None) };
        members &= of_segment;
    }
    Ok(Some(members))
}

/// The members of a filter that the caller may see, from the in-memory
/// index: `None` when the index cannot answer (a search text, not built
/// yet), and SQL must. The filter is checked as the SQL path checks it.
///
/// # Errors
/// The filter's refusals (`NOT_FOUND` tags and units, `FORBIDDEN_FIELD`);
/// database errors while loading what the expression needs (event
/// timelines, static snapshots).
pub async fn index_members(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    filter: &CustomerFilter,
) -> AppResult<Option<RoaringBitmap>> {
    if search_text(filter).is_some() || !index.is_ready() {
        return Ok(None);
    }
    let checked = customer_service::check_filter(db, principal, filter, None).await?;
    members_checked(db, index, principal, filter, &checked.tags).await
}

/// How many customers match the filter in the caller's scope (a list's
/// `totalCount`, a segment's count): the cardinality of the index's bitmap
/// when it can answer, a SQL count otherwise.
///
/// # Errors
/// As [`customer_service::count_in_scope`].
#[tracing::instrument(skip_all, fields(staff = principal.staff.id))]
pub async fn count_members(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    filter: &CustomerFilter,
) -> AppResult<u64> {
    if let Some(members) = index_members(db, index, principal, filter).await? {
        return Ok(members.len());
    }
    customer_service::count_in_scope(db, principal, filter).await
}

/// Members above this many are paged by SQL's own plan when the index
/// holds no column of the order's key (name, updated time): the database
/// then walks its index on the key and meets members soon, where below it
/// reading the members' keys by id is cheaper than evaluating the filter.
const AMONG_IDS_MAX: u64 = 100_000;

/// One page of a filter's members in `order`. When the in-memory index
/// answers, it gives the members: for keys it holds a column of (added
/// time, spend) it picks the page itself and only the page's rows are
/// read, by id; for the others (name, updated time) SQL orders the
/// members by id chunks ([`customer_service::list_among`]). Otherwise SQL
/// evaluates the whole filter. Either way the order (ties by id, in the
/// same direction), the cursors and the checks (guarded order keys, bad
/// cursors) are those of [`customer_service::list_in_scope`].
///
/// # Errors
/// As [`customer_service::list_in_scope`].
#[tracing::instrument(skip_all, fields(staff = principal.staff.id))]
pub async fn list_members(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    filter: &CustomerFilter,
    order: CustomerOrder,
    page: &PageArgs,
) -> AppResult<Page<customer::Model>> {
    let members = if index.is_ready() && search_text(filter).is_none() {
        // The same refusals as the SQL path (a guarded order key, a field
        // the expression may not read over the scope searched).
        let checked = customer_service::check_filter(db, principal, filter, Some(order)).await?;
        members_checked(db, index, principal, filter, &checked.tags).await?
    } else {
        None
    };
    let Some(members) = members else {
        return customer_service::list_in_scope(db, principal, filter, order, page).await;
    };
    let key = match order.field {
        SortField::AddedAt => PageKey::AddedAt,
        SortField::TotalSpend => PageKey::TotalSpend,
        SortField::UpdatedAt | SortField::Name if members.len() <= AMONG_IDS_MAX => {
            let ids: Vec<i64> = members.iter().map(i64::from).collect();
            return customer_service::list_among(db, principal, &ids, order, page).await;
        }
        SortField::UpdatedAt | SortField::Name => {
            return customer_service::list_in_scope(db, principal, filter, order, page).await;
        }
    };
    let start = page.decode_cursor(&order.tag())?.map(|c| page_start(&c, key, page.cursor_field())).transpose()?;
    // Backward: walk the reversed order from `before`, then reverse the page.
    let descending = order.descending != page.backward();
    let limit = usize::try_from(page.fetch()).unwrap_or(usize::MAX);
    let ids = index.page(&members, key, descending, start, limit);
    let mut rows: HashMap<i64, customer::Model> = customer::Entity::find()
        .filter(customer::Column::Id.is_in(ids.iter().copied()))
        .filter(principal.scope(Action::CustomerRead).condition(customer::Column::OrgUnitId))
        .all(db)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let rows = ids.iter().filter_map(|id| rows.remove(id)).collect();
    Ok(Page::from_walk(rows, page, |c| order.cursor_of(c)))
}

/// Ids of every customer matching the filter in the caller's scope, in id
/// order: the index's bitmap when it can answer, SQL otherwise.
///
/// # Errors
/// As [`customer_service::ids_in_scope`].
pub async fn member_ids(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    filter: &CustomerFilter,
) -> AppResult<RoaringBitmap> {
    if let Some(members) = index_members(db, index, principal, filter).await? {
        return Ok(members);
    }
    let ids = customer_service::ids_in_scope(db, principal, filter).await?;
    Ok(ids.into_iter().filter_map(|id| u32::try_from(id).ok()).collect())
}

/// A cursor as a position in the index's order.
fn page_start(cursor: &Cursor, key: PageKey, field: &str) -> AppResult<(i64, i64)> {
    let invalid = || AppError::validation(field, "is not a valid cursor");
    let value = match key {
        PageKey::AddedAt => crate::segment::page_key(
            DateTime::parse_from_rfc3339(&cursor.key).map_err(|_| invalid())?.with_timezone(&Utc),
        ),
        PageKey::TotalSpend => cursor.key.parse::<i64>().map_err(|_| invalid())?,
    };
    Ok((value, cursor.id))
}

/// `Tag.customerCount` from the index: how many customers the caller may
/// read hold the tag, counted only where it sees the tag (a personal tag:
/// everywhere for its owner, nowhere for others; an enterprise tag: in the
/// units where its class is visible), 0 for a retired tag: the count
/// [`holder_counts`](super::tagging::holder_counts) makes in SQL. `None`
/// when the index is not ready.
pub fn holder_count(
    index: &SegmentIndex,
    principal: &Principal,
    tag: &tag::Model,
    group: Option<&tag_group::Model>,
) -> Option<u64> {
    if !index.is_ready() {
        return None;
    }
    if is_retired(tag.status) {
        return Some(0);
    }
    match (tag.owner_staff_id, group) {
        (Some(owner), _) if visibility::personal_visible(principal, owner) => {
            index.holders_within(principal, tag.id, None)
        }
        (Some(_), _) | (None, None) => Some(0),
        (None, Some(group)) => {
            index.holders_within(principal, tag.id, Some(&*visibility::class_units(principal, &group.visibility_class)))
        }
    }
}
