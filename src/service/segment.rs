//! Segments (客群) as a service: saving, listing and deleting saved
//! segments, previewing and listing members (from the in-memory index when
//! it can answer, by SQL otherwise), and cross analysis. Resolution, the
//! SQL compiler and the index live in [`crate::segment`].

use std::collections::{HashMap, HashSet};

use chrono::{FixedOffset, Utc};
use entity::{customer, customer_tag, enums::SegmentKind, segment, segment_member, segment_reference};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    TransactionTrait,
    sea_query::{Alias, Expr, ExprTrait, Query},
};
use serde_json::json;

use super::audit::{self, AuditEntry};
use super::customer::{self as customer_service, CustomerFilter, SegmentFilter};
pub use super::listing::{count_members, index_members, list_members};
use crate::authz::visibility::{self, visible_tags};
use crate::authz::{Action, Principal};
use crate::config::Limits;
use crate::domain::tag::is_retired;
use crate::domain::{Description, OrgUnitId, TagId, TagName};
use crate::error::{AppError, AppResult, is_foreign_key_violation};
use crate::segment::resolve::{find_saved, saved_visible};
pub use crate::segment::sql::condition;
use crate::segment::{self as language, Ref};
pub use crate::segment::{Resolved, parse_text, resolve, resolve_saved};
use crate::store::constraint::on_constraint;

/// Input of [`save`].
#[derive(Debug, Clone)]
pub struct NewSegment {
    pub org_unit: OrgUnitId,
    pub name: TagName,
    pub description: Description,
    pub kind: SegmentKind,
    pub resolved: Resolved,
    /// The organisation's UTC offset: a static segment's members are
    /// evaluated with it, exactly as a preview of the same text is.
    pub offset: FixedOffset,
}

/// The stored form of an expression: every reference by id, dates in UTC.
fn stored_text(resolved: &Resolved) -> String {
    language::print(&resolved.expr, &|_, _| None, FixedOffset::east_opt(0).expect("UTC"))
}

/// Saves a segment; a static one keeps the members the caller sees now.
///
/// # Errors
/// `NOT_FOUND` for a unit the caller cannot see, `FORBIDDEN` without
/// `segment:write` there, `CONFLICT` when the unit has a segment of that
/// name.
#[tracing::instrument(skip(db, principal, input), fields(staff = principal.staff.id))]
pub async fn save(db: &DatabaseConnection, principal: &Principal, input: NewSegment) -> AppResult<segment::Model> {
    if !principal.visible_units().contains(&input.org_unit.0) {
        return Err(AppError::not_found("org unit", input.org_unit));
    }
    principal.require(Action::SegmentWrite, input.org_unit.0)?;
    let members = match input.kind {
        SegmentKind::Static => {
            let filter = CustomerFilter {
                segment: Some(SegmentFilter { resolved: input.resolved.clone(), offset: input.offset }),
                ..Default::default()
            };
            Some(customer_service::ids_in_scope(db, principal, &filter).await?)
        }
        SegmentKind::Dynamic => None,
    };
    let now = Utc::now();
    let txn = db.begin().await?;
    let inserted = segment::Entity::insert(segment::ActiveModel {
        id: NotSet,
        org_unit_id: Set(input.org_unit.0),
        name: Set(input.name.as_str().to_owned()),
        description: Set(input.description.into_inner()),
        kind: Set(input.kind),
        expression: Set(stored_text(&input.resolved)),
        owner_staff_id: Set(principal.staff.id),
        member_count: Set(members.as_ref().map(|m| m.len() as i32)),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec_with_returning(&txn)
    .await;
    let saved = inserted.map_err(|e| {
        on_constraint(e, |_| format!("this org unit already has a segment named {:?}", input.name.as_str()))
    })?;
    for chunk in members.as_deref().unwrap_or_default().chunks(500) {
        let rows =
            chunk.iter().map(|c| segment_member::ActiveModel { segment_id: Set(saved.id), customer_id: Set(*c) });
        segment_member::Entity::insert_many(rows).exec(&txn).await?;
    }
    // The segments it uses, as rows with foreign keys: a delete racing
    // this save either fails here or finds the rows and is refused.
    let used = input
        .resolved
        .segments
        .keys()
        .map(|used| segment_reference::ActiveModel { segment_id: Set(saved.id), used_segment_id: Set(*used) });
    if !input.resolved.segments.is_empty() {
        match segment_reference::Entity::insert_many(used).exec(&txn).await {
            Err(err) if is_foreign_key_violation(&err) => {
                return Err(AppError::Conflict("a segment it uses was deleted meanwhile".to_owned()));
            }
            other => {
                other?;
            }
        }
    }
    audit::record(
        &txn,
        AuditEntry::ok(principal.staff_id(), "segment.save", "segment", saved.id)
            .in_unit(saved.org_unit_id)
            .with_detail(json!({ "name": saved.name, "kind": saved.kind, "members": saved.member_count })),
    )
    .await?;
    txn.commit().await?;
    Ok(saved)
}

/// A saved segment the caller may see.
///
/// # Errors
/// `NOT_FOUND` for missing and invisible segments alike.
pub async fn find(db: &impl ConnectionTrait, principal: &Principal, id: i64) -> AppResult<segment::Model> {
    find_saved(db, principal, &Ref::Id(id)).await
}

/// Saved segments the caller may see, oldest first.
///
/// # Errors
/// Database errors.
pub async fn list(db: &impl ConnectionTrait, principal: &Principal) -> AppResult<Vec<segment::Model>> {
    let mut units = HashSet::new();
    for unit in principal.scope(Action::SegmentRead).unit_ids() {
        units.extend(principal.org.ancestors_or_self(unit).iter().map(|u| u.id));
    }
    Ok(segment::Entity::find()
        .filter(segment::Column::OrgUnitId.is_in(units))
        .order_by_asc(segment::Column::Id)
        .all(db)
        .await?)
}

/// Deletes a saved segment no other segment refers to.
///
/// # Errors
/// `NOT_FOUND`, `FORBIDDEN` without `segment:write` at its unit, `CONFLICT`
/// when another segment uses it.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn delete(db: &DatabaseConnection, principal: &Principal, id: i64) -> AppResult<()> {
    let saved = find(db, principal, id).await?;
    principal.require(Action::SegmentWrite, saved.org_unit_id)?;
    let txn = db.begin().await?;
    let in_use = |user: Option<segment::Model>| {
        let name = match user {
            Some(user) if saved_visible(principal, &user) => format!("{:?}", user.name),
            _ => "another segment".to_owned(),
        };
        AppError::Conflict(format!("segment {:?} is used by {name}", saved.name))
    };
    let user = segment_reference::Entity::find()
        .filter(segment_reference::Column::UsedSegmentId.eq(id))
        .filter(segment_reference::Column::SegmentId.ne(id))
        .one(&txn)
        .await?;
    if let Some(user) = user {
        return Err(in_use(segment::Entity::find_by_id(user.segment_id).one(&txn).await?));
    }
    segment_member::Entity::delete_many().filter(segment_member::Column::SegmentId.eq(id)).exec(&txn).await?;
    // A save that began using it after the check above holds its reference
    // row: the foreign key refuses the delete.
    match segment::Entity::delete_by_id(id).exec(&txn).await {
        Err(err) if is_foreign_key_violation(&err) => return Err(in_use(None)),
        other => {
            other?;
        }
    }
    audit::record(
        &txn,
        AuditEntry::ok(principal.staff_id(), "segment.delete", "segment", id)
            .in_unit(saved.org_unit_id)
            .with_detail(json!({ "name": saved.name })),
    )
    .await?;
    txn.commit().await?;
    Ok(())
}

#[derive(Debug, FromQueryResult)]
struct PairRow {
    a: i64,
    b: i64,
    org_unit_id: i64,
    holders: i64,
}

/// How many customers hold each pair of tags (a tag with itself: how many
/// hold it), among the customers matching `filter` in the caller's view,
/// counting a tag only where its class is visible (cross analysis, 交叉分析).
///
/// # Errors
/// `NOT_FOUND` for tags the caller cannot see, `LIMIT_EXCEEDED` for more
/// than `max_tags_per_tagging` tags, and the filter's own errors.
pub async fn cooccurrence(
    db: &DatabaseConnection,
    index: &crate::segment::SegmentIndex,
    principal: &Principal,
    limits: &Limits,
    tag_ids: &[TagId],
    filter: &CustomerFilter,
) -> AppResult<Vec<(i64, i64, u64)>> {
    if tag_ids.is_empty() {
        return Err(AppError::validation("tagIds", "name at least one tag"));
    }
    if tag_ids.len() > limits.max_tags_per_tagging {
        return Err(AppError::LimitExceeded(format!("at most {} tags per analysis", limits.max_tags_per_tagging)));
    }
    let tags = visible_tags(db, principal, tag_ids).await?;
    // An archived tag is retired: named by id, it matches nobody (its pairs
    // count 0), as in filters and segments.
    let live: Vec<TagId> =
        tag_ids.iter().copied().filter(|t| !tags.get(t).is_some_and(|v| is_retired(v.tag.status))).collect();
    // From the index when it can answer: a few bitmap intersections.
    if let Some(members) = index_members(db, index, principal, filter).await? {
        let classes: Vec<(i64, Option<&str>)> = live
            .iter()
            .map(|t| (t.0, tags.get(t).and_then(|v| v.group.as_ref()).map(|g| g.visibility_class.as_str())))
            .collect();
        if let Some(pairs) = index.cooccurrence(principal, Some(&members), &classes) {
            return Ok(every_pair(tag_ids, pairs));
        }
    }
    let cond = customer_service::filter_condition(db, principal, filter, None).await?;
    let ids: Vec<i64> = live.iter().map(|t| t.0).collect();
    let (a, b) = (Alias::new("a"), Alias::new("b"));
    let query = Query::select()
        .expr_as(Expr::col((a.clone(), customer_tag::Column::TagId)), Alias::new("a"))
        .expr_as(Expr::col((b.clone(), customer_tag::Column::TagId)), Alias::new("b"))
        .column((customer::Entity, customer::Column::OrgUnitId))
        .expr_as(Expr::col((customer::Entity, customer::Column::Id)).count(), Alias::new("holders"))
        .from_as(customer_tag::Entity, a.clone())
        .join_as(
            sea_orm::JoinType::InnerJoin,
            customer_tag::Entity,
            b.clone(),
            Expr::col((b.clone(), customer_tag::Column::CustomerId))
                .equals((a.clone(), customer_tag::Column::CustomerId)),
        )
        .inner_join(
            customer::Entity,
            Expr::col((customer::Entity, customer::Column::Id)).equals((a.clone(), customer_tag::Column::CustomerId)),
        )
        .and_where(Expr::col((a.clone(), customer_tag::Column::TagId)).is_in(ids.clone()))
        .and_where(Expr::col((b.clone(), customer_tag::Column::TagId)).is_in(ids.clone()))
        .and_where(
            Expr::col((a.clone(), customer_tag::Column::TagId))
                .lte(Expr::col((b.clone(), customer_tag::Column::TagId))),
        )
        .cond_where(cond)
        .group_by_col((a.clone(), customer_tag::Column::TagId))
        .group_by_col((b.clone(), customer_tag::Column::TagId))
        .group_by_col((customer::Entity, customer::Column::OrgUnitId))
        .to_owned();
    let rows = PairRow::find_by_statement(db.get_database_backend().build(&query)).all(db).await?;
    let visible_at = |tag: i64, unit: i64| {
        let group = tags.get(&TagId(tag)).and_then(|t| t.group.as_ref());
        visibility::tag_units(principal, group).is_none_or(|units| units.contains(unit))
    };
    let mut counts: HashMap<(i64, i64), u64> = HashMap::new();
    for row in rows {
        if visible_at(row.a, row.org_unit_id) && visible_at(row.b, row.org_unit_id) {
            *counts.entry((row.a, row.b)).or_default() += row.holders as u64;
        }
    }
    Ok(every_pair(tag_ids, counts.into_iter().map(|((x, y), n)| (x, y, n))))
}

/// Every pair of `tag_ids` (a tag with itself included, smaller id first,
/// sorted), with its count from `counted` and 0 where it has none.
fn every_pair(tag_ids: &[TagId], counted: impl IntoIterator<Item = (i64, i64, u64)>) -> Vec<(i64, i64, u64)> {
    let mut counts: HashMap<(i64, i64), u64> = HashMap::new();
    for (i, x) in tag_ids.iter().enumerate() {
        for y in &tag_ids[i..] {
            counts.insert((Ord::min(x.0, y.0), Ord::max(x.0, y.0)), 0);
        }
    }
    for (x, y, n) in counted {
        counts.insert((x, y), n);
    }
    let mut out: Vec<(i64, i64, u64)> = counts.into_iter().map(|((x, y), n)| (x, y, n)).collect();
    out.sort_unstable();
    out
}
