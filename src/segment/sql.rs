//! The SQL compiler: a resolved expression, or a customer filter's tag
//! conditions, as a condition over `customer`. There is one answer to
//! "holds the tag" ([`holds_tag`]); customer filters and segments both use
//! it, so that they count the same customers.

use chrono::{DateTime, FixedOffset, Utc};
use entity::{
    customer, customer_tag,
    enums::{TagOp, TagSource},
    segment_member, tag, tag_event,
};
use sea_orm::{
    ColumnTrait, Condition,
    sea_query::{Expr, ExprTrait, Query, SimpleExpr},
};

use super::resolve::{Resolved, guarded_predicate};
use super::{AgeBounds, Range, Ref, SegmentExpr};
use crate::authz::visibility::{self, VisibleTag};
use crate::authz::{FieldRule, Principal, Scope};
use crate::domain::tag::{in_force, is_retired};
use crate::error::{AppError, AppResult};

/// The SQL condition of a resolved expression over `customer`, for a caller
/// searching `searched` (its readable units, possibly narrowed).
///
/// # Errors
/// `FORBIDDEN_FIELD` when a predicate reads a field the caller may not
/// read in full over the whole of `searched`.
pub fn condition(
    principal: &Principal,
    resolved: &Resolved,
    searched: &Scope,
    offset: FixedOffset,
    now: DateTime<Utc>,
) -> AppResult<Condition> {
    Compiler { principal, resolved, searched, offset, now }.compile(&resolved.expr)
}

struct Compiler<'a> {
    principal: &'a Principal,
    resolved: &'a Resolved,
    searched: &'a Scope,
    offset: FixedOffset,
    now: DateTime<Utc>,
}

/// Correlates a subquery's customer column with the customer row of the
/// outer query. Predicates over other tables are `EXISTS` subqueries, not
/// `id IN (…)`: PostgreSQL turns `NOT EXISTS` into an anti-join, whereas
/// `NOT (id IN (…))` over a million rows is evaluated row by row (a broad
/// segment ran for more than 45 minutes).
fn of_this_customer<C: sea_orm::sea_query::IntoColumnRef>(column: C) -> SimpleExpr {
    Expr::col(column).equals((customer::Entity, customer::Column::Id))
}

fn id_of(r: &Ref) -> i64 {
    match r {
        Ref::Id(id) => *id,
        Ref::Name(n) => unreachable!("unresolved tag {n}"),
    }
}

/// `cond`, limited to customers in units where the caller may see tags of
/// the class. Left alone when the class is visible over the whole scope
/// searched (which the query is limited to anyway): a bare `NOT EXISTS`
/// becomes an anti-join on PostgreSQL.
fn visible_in(principal: &Principal, searched: &Scope, cond: Condition, class: &str) -> Condition {
    let units = visibility::class_units(principal, class);
    if units.covers(searched) { cond } else { cond.add(units.condition(customer::Column::OrgUnitId)) }
}

/// Holds the tag (`tag`: the tag as the caller sees it), counted only in
/// units where the caller may see it, for a caller searching `searched`;
/// nobody holds a retired tag. The one "holds tag" of customer filters
/// (`hasAllTags`, `hasAnyTags`, `lifecycleStage`) and segments.
pub fn holds_tag(principal: &Principal, searched: &Scope, tag_id: i64, tag: Option<&VisibleTag>) -> Condition {
    let holders = Query::select()
        .expr(Expr::val(1))
        .from(customer_tag::Entity)
        .and_where(Expr::col((customer_tag::Entity, customer_tag::Column::TagId)).eq(tag_id))
        .and_where(of_this_customer((customer_tag::Entity, customer_tag::Column::CustomerId)))
        .to_owned();
    let mut held = Condition::all().add(Expr::exists(holders));
    if tag.is_some_and(|t| is_retired(t.tag.status)) {
        held = held.add(Expr::cust("1 = 0"));
    }
    // A personal tag (no group) is seen by its owner wherever it is.
    match tag.and_then(|t| t.group.as_ref()) {
        Some(group) => visible_in(principal, searched, held, &group.visibility_class),
        None => held,
    }
}

impl Compiler<'_> {
    fn require(&self, rule: &FieldRule, predicate: &str) -> AppResult<()> {
        if self.principal.field_scope(rule.field).covers(self.searched) {
            Ok(())
        } else {
            Err(AppError::ForbiddenField { field: format!("segment.{predicate}") })
        }
    }

    fn visible_in(&self, cond: Condition, class: &str) -> Condition {
        visible_in(self.principal, self.searched, cond, class)
    }

    /// Holds the tag, counted only where the caller may see it.
    fn holds(&self, tag_id: i64) -> Condition {
        holds_tag(self.principal, self.searched, tag_id, self.resolved.tags.get(&tag_id))
    }

    fn range(column: customer::Column, r: &Range<i64>) -> Condition {
        let mut cond = Condition::all();
        if let Some(min) = r.min {
            cond = cond.add(column.gte(min));
        }
        if let Some(max) = r.max {
            cond = cond.add(column.lte(max));
        }
        cond
    }

    /// A comparison on a nullable column: false (not unknown) on NULL, so
    /// that `NOT` behaves as in two-valued logic.
    fn known(column: customer::Column, cmp: SimpleExpr) -> Condition {
        Condition::all().add(column.is_not_null()).add(cmp)
    }

    fn compile(&self, expr: &SegmentExpr) -> AppResult<Condition> {
        if let Some((name, rule)) = guarded_predicate(expr) {
            self.require(rule, name)?;
        }
        Ok(match expr {
            SegmentExpr::And(items) => {
                items.iter().try_fold(Condition::all(), |c, e| Ok::<_, AppError>(c.add(self.compile(e)?)))?
            }
            SegmentExpr::Or(items) => {
                items.iter().try_fold(Condition::any(), |c, e| Ok::<_, AppError>(c.add(self.compile(e)?)))?
            }
            SegmentExpr::Not(inner) => self.compile(inner)?.not(),
            SegmentExpr::Tag(r) | SegmentExpr::Lifecycle(r) => self.holds(id_of(r)),
            SegmentExpr::AnyTags(rs) => rs.iter().fold(Condition::any(), |c, r| c.add(self.holds(id_of(r)))),
            SegmentExpr::AllTags(rs) => rs.iter().fold(Condition::all(), |c, r| c.add(self.holds(id_of(r)))),
            SegmentExpr::Group(r) => {
                let group = &self.resolved.groups[&id_of(r)];
                let members = Query::select()
                    .expr(Expr::val(1))
                    .from(customer_tag::Entity)
                    .inner_join(
                        tag::Entity,
                        Expr::col((tag::Entity, tag::Column::Id))
                            .equals((customer_tag::Entity, customer_tag::Column::TagId)),
                    )
                    .and_where(Expr::col((tag::Entity, tag::Column::GroupId)).eq(group.id))
                    .and_where(Expr::col((tag::Entity, tag::Column::Status)).is_in(in_force()))
                    .and_where(of_this_customer((customer_tag::Entity, customer_tag::Column::CustomerId)))
                    .to_owned();
                self.visible_in(Condition::all().add(Expr::exists(members)), &group.visibility_class)
            }
            SegmentExpr::TaggedBetween { tag: r, from, to } => {
                let tag_id = id_of(r);
                // The taggings of the tag and of the tags merged into it; the
                // merge's own moves are not taggings.
                let added = Query::select()
                    .expr(Expr::val(1))
                    .from(tag_event::Entity)
                    .and_where(
                        Expr::col((tag_event::Entity, tag_event::Column::TagId))
                            .is_in(self.resolved.tag_family(tag_id)),
                    )
                    .and_where(Expr::col((tag_event::Entity, tag_event::Column::Op)).eq(TagOp::Add))
                    .and_where(Expr::col((tag_event::Entity, tag_event::Column::Source)).ne(TagSource::Merge))
                    .and_where(Expr::col((tag_event::Entity, tag_event::Column::OccurredAt)).gte(*from))
                    .and_where(Expr::col((tag_event::Entity, tag_event::Column::OccurredAt)).lte(*to))
                    .and_where(of_this_customer((tag_event::Entity, tag_event::Column::CustomerId)))
                    .to_owned();
                let given = Condition::all().add(Expr::exists(added));
                match self.resolved.tags.get(&tag_id).and_then(|t| t.group.as_ref()) {
                    Some(group) => self.visible_in(given, &group.visibility_class),
                    None => given,
                }
            }
            SegmentExpr::City(city) => Self::known(customer::Column::City, customer::Column::City.eq(city.as_str())),
            SegmentExpr::Channel(channel) => {
                Self::known(customer::Column::Channel, customer::Column::Channel.eq(channel.as_str()))
            }
            SegmentExpr::Gender(g) => Condition::all().add(customer::Column::Gender.eq(*g)),
            SegmentExpr::OrgUnit(code) => {
                let unit = self.principal.org.by_code(code).map(|u| u.id).unwrap_or_default();
                Condition::all().add(customer::Column::OrgUnitId.is_in(self.principal.org.subtree(unit).map(|u| u.id)))
            }
            SegmentExpr::Age(r) => {
                let bounds = AgeBounds::new(r, self.now.with_timezone(&self.offset).date_naive());
                let mut cond = Condition::all().add(customer::Column::BirthDate.is_not_null());
                if let Some(latest) = bounds.born_on_or_before {
                    cond = cond.add(customer::Column::BirthDate.lte(latest));
                }
                if let Some(earliest) = bounds.born_after {
                    cond = cond.add(customer::Column::BirthDate.gt(earliest));
                }
                cond
            }
            SegmentExpr::Spend(r) => Self::range(customer::Column::TotalSpendCents, r),
            SegmentExpr::Orders(r) => Self::range(customer::Column::OrderCount, r),
            SegmentExpr::LastOrderBefore(t) => {
                Self::known(customer::Column::LastOrderAt, customer::Column::LastOrderAt.lt(*t))
            }
            SegmentExpr::LastOrderAfter(t) => {
                Self::known(customer::Column::LastOrderAt, customer::Column::LastOrderAt.gt(*t))
            }
            SegmentExpr::AddedBefore(t) => Condition::all().add(customer::Column::AddedAt.lt(*t)),
            SegmentExpr::AddedAfter(t) => Condition::all().add(customer::Column::AddedAt.gt(*t)),
            SegmentExpr::Segment(r) => {
                let saved = &self.resolved.segments[&id_of(r)];
                if !saved.is_static() {
                    let inner = &saved.inner;
                    return Compiler { resolved: inner, ..*self }.compile(&inner.expr);
                }
                // Snapshot members, where the caller may see what the
                // expression read when they were taken.
                let members = Condition::all().add(Expr::exists(
                    Query::select()
                        .expr(Expr::val(1))
                        .from(segment_member::Entity)
                        .and_where(
                            Expr::col((segment_member::Entity, segment_member::Column::SegmentId)).eq(saved.saved.id),
                        )
                        .and_where(of_this_customer((segment_member::Entity, segment_member::Column::CustomerId)))
                        .to_owned(),
                ));
                saved.inner.classes().iter().fold(members, |cond, class| self.visible_in(cond, class))
            }
        })
    }
}
