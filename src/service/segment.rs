//! Segments: resolving an expression in the caller's view and evaluating it
//! against the database, intersected with what the caller may see.
//!
//! This is the plain-SQL evaluation: the reference the in-memory bitmap
//! engine is checked against, and what answers until that engine is built.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, FixedOffset, Months, NaiveDate, Utc};
use entity::{
    customer, customer_tag,
    enums::{SegmentKind, TagCategory, TagOp, TagSource},
    segment, segment_member, segment_reference, tag, tag_event, tag_group,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    TransactionTrait,
    sea_query::{Alias, Expr, ExprTrait, Func, LikeExpr, Query, SimpleExpr},
};
use serde_json::json;

use super::audit::{self, AuditEntry};
use super::customer::{self as customer_service, CustomerFilter, CustomerOrder, Page, SegmentFilter, SortField};
use super::like_escape;
use super::tag_library::{self, VisibleTag};
use crate::authz::{Action, ClassAccess, CustomerField, Principal, Scope};
use crate::config::Limits;
use crate::domain::{Cursor, Description, OrgUnitId, PageArgs, TagGroupId, TagId, TagName};
use crate::error::{AppError, AppResult, is_foreign_key_violation, is_unique_violation};
use crate::segment::{self as language, PageKey, Range, Ref, RefKind, SegmentExpr};
use unicode_normalization::UnicodeNormalization;

/// An expression whose references are all ids the caller may see, with
/// what evaluating and printing it needs.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub expr: SegmentExpr,
    pub tags: HashMap<i64, VisibleTag>,
    pub groups: HashMap<i64, tag_group::Model>,
    /// Saved segments the expression refers to.
    pub segments: HashMap<i64, SavedRef>,
    /// For tags in `taggedBetween`: the tags merged into them (their
    /// taggings are the merged tag's history).
    pub merged_from: HashMap<i64, Vec<i64>>,
}

impl Resolved {
    /// A `taggedBetween` tag and the tags merged into it.
    pub fn tag_family(&self, tag_id: i64) -> Vec<i64> {
        let mut family = vec![tag_id];
        family.extend(self.merged_from.get(&tag_id).into_iter().flatten());
        family
    }
}

/// A saved segment named in an expression: a dynamic one is evaluated from
/// its own (resolved) expression, a static one from its member snapshot.
/// Both are resolved in the caller's view, so that a static segment over
/// tags the caller may not see is `NOT_FOUND` for it as a dynamic one is,
/// and its snapshot counts only where the caller may see every class the
/// expression reads.
#[derive(Debug, Clone)]
pub struct SavedRef {
    pub saved: segment::Model,
    pub inner: Box<Resolved>,
}

impl SavedRef {
    /// Evaluated from its member snapshot rather than its expression.
    pub fn is_static(&self) -> bool {
        self.saved.kind == SegmentKind::Static
    }
}

impl Resolved {
    /// The visibility classes of the tags and groups the expression reads,
    /// through the saved segments it uses.
    pub fn classes(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .tags
            .values()
            .filter_map(|t| t.group.as_ref().map(|g| g.visibility_class.clone()))
            .chain(self.groups.values().map(|g| g.visibility_class.clone()))
            .collect();
        for saved in self.segments.values() {
            out.extend(saved.inner.classes());
        }
        out
    }
}

impl Resolved {
    /// The canonical text, with names for ids where the name is unique to
    /// the caller (and `#id` where it is not, so that the text resolves
    /// back to the same tags). Looks the names up: only for callers that
    /// print, not on the evaluation path.
    ///
    /// # Errors
    /// Database errors.
    pub async fn text(
        &self,
        db: &impl ConnectionTrait,
        principal: &Principal,
        offset: FixedOffset,
    ) -> AppResult<String> {
        let mut ambiguous = HashSet::new();
        for (id, t) in &self.tags {
            if tags_named(db, principal, &t.tag.name).await?.len() > 1 {
                ambiguous.insert((RefKind::Tag, *id));
            }
        }
        for (id, g) in &self.groups {
            if groups_named(db, principal, &g.name).await?.len() > 1 {
                ambiguous.insert((RefKind::Group, *id));
            }
        }
        for (id, s) in &self.segments {
            if segments_named(db, principal, &s.saved.name).await?.len() > 1 {
                ambiguous.insert((RefKind::Segment, *id));
            }
        }
        Ok(self.text_with(offset, &ambiguous))
    }

    fn text_with(&self, offset: FixedOffset, ambiguous: &HashSet<(RefKind, i64)>) -> String {
        let name_of = |kind: RefKind, id: i64| match kind {
            _ if ambiguous.contains(&(kind, id)) => None,
            RefKind::Tag => self.tags.get(&id).map(|t| t.tag.name.clone()),
            RefKind::Group => self.groups.get(&id).map(|g| g.name.clone()),
            RefKind::Segment => self.segments.get(&id).map(|s| s.saved.name.clone()),
        };
        language::print(&self.expr, &name_of, offset)
    }
}

/// Parses the text form.
///
/// # Errors
/// `VALIDATION` on field `segment.text`, with the column and what was
/// expected.
pub fn parse_text(text: &str, offset: FixedOffset) -> AppResult<SegmentExpr> {
    language::parse(text, offset).map_err(|e| AppError::validation("segment.text", e.to_string()))
}

fn ambiguous(kind: &str, name: &str, candidates: Vec<String>) -> AppError {
    AppError::validation(
        "segment",
        format!("{kind} name {name:?} is ambiguous: {}; write #<id> to pick one", candidates.join(", ")),
    )
}

/// Resolves names and ids in the caller's view.
///
/// # Errors
/// `NOT_FOUND` for references the caller cannot see (unknown and invisible
/// alike), `VALIDATION` for ambiguous names, an expression too large, a
/// lifecycle predicate on a tag outside the lifecycle group, or saved
/// segments that refer to each other in a cycle.
pub async fn resolve(
    db: &impl ConnectionTrait,
    principal: &Principal,
    limits: &Limits,
    expr: SegmentExpr,
) -> AppResult<Resolved> {
    resolve_within(db, principal, limits, expr, Vec::new()).await
}

/// [`resolve`], inside the saved segments in `stack` (to refuse cycles).
fn resolve_within<'a, C: ConnectionTrait>(
    db: &'a C,
    principal: &'a Principal,
    limits: &'a Limits,
    expr: SegmentExpr,
    stack: Vec<i64>,
) -> Pin<Box<dyn Future<Output = AppResult<Resolved>> + Send + 'a>> {
    Box::pin(async move {
        let mut resolved = resolve_references(db, principal, limits, expr).await?;
        let mut refs = Vec::new();
        resolved.expr.walk(&mut |e| {
            if let SegmentExpr::Segment(r) = e {
                refs.push(r.clone());
            }
        });
        let mut names = HashMap::new();
        for r in refs {
            let saved = find_saved(db, principal, &r).await?;
            if stack.contains(&saved.id) {
                return Err(AppError::validation(
                    "segment",
                    format!("segment {:?} refers to itself through segment(…)", saved.name),
                ));
            }
            let expr = parse_text(&saved.expression, FixedOffset::east_opt(0).expect("UTC"))?;
            let mut within = stack.clone();
            within.push(saved.id);
            let inner = Box::new(resolve_within(db, principal, limits, expr, within).await?);
            if let Ref::Name(n) = &r {
                names.insert(n.clone(), saved.id);
            }
            resolved.segments.insert(saved.id, SavedRef { saved, inner });
        }
        resolved.expr = name_segments(resolved.expr, &names);
        Ok(resolved)
    })
}

fn name_segments(expr: SegmentExpr, names: &HashMap<String, i64>) -> SegmentExpr {
    match expr {
        SegmentExpr::And(items) => SegmentExpr::And(items.into_iter().map(|e| name_segments(e, names)).collect()),
        SegmentExpr::Or(items) => SegmentExpr::Or(items.into_iter().map(|e| name_segments(e, names)).collect()),
        SegmentExpr::Not(inner) => SegmentExpr::Not(Box::new(name_segments(*inner, names))),
        SegmentExpr::Segment(Ref::Name(n)) => SegmentExpr::Segment(Ref::Id(names[&n])),
        other => other,
    }
}

/// A saved segment the caller may use, by id or name.
async fn find_saved(db: &impl ConnectionTrait, principal: &Principal, r: &Ref) -> AppResult<segment::Model> {
    let found: Vec<segment::Model> = match r {
        Ref::Id(id) => segment::Entity::find_by_id(*id).all(db).await?,
        Ref::Name(n) => return pick_saved(segments_named(db, principal, n).await?, r),
    }
    .into_iter()
    .filter(|s| saved_visible(principal, s))
    .collect();
    pick_saved(found, r)
}

/// The saved segments of that name the caller may use.
async fn segments_named(
    db: &impl ConnectionTrait,
    principal: &Principal,
    name: &str,
) -> AppResult<Vec<segment::Model>> {
    let name: String = name.nfc().collect();
    Ok(segment::Entity::find()
        .filter(segment::Column::Name.eq(name))
        .all(db)
        .await?
        .into_iter()
        .filter(|s| saved_visible(principal, s))
        .collect())
}

/// The tag groups of that name the caller may see.
async fn groups_named(
    db: &impl ConnectionTrait,
    principal: &Principal,
    name: &str,
) -> AppResult<Vec<tag_group::Model>> {
    let name: String = name.nfc().collect();
    Ok(tag_group::Entity::find()
        .filter(tag_group::Column::Name.eq(name))
        .all(db)
        .await?
        .into_iter()
        .filter(|g| tag_library::group_visible(principal, g, None))
        .collect())
}

/// The one segment `r` names, or why not.
fn pick_saved(found: Vec<segment::Model>, r: &Ref) -> AppResult<segment::Model> {
    match found.as_slice() {
        [] => Err(match r {
            Ref::Id(id) => AppError::not_found("segment", id),
            Ref::Name(n) => AppError::NotFound { kind: "segment", id: format!("{n:?}") },
        }),
        [one] => Ok(one.clone()),
        many => {
            let listed = many.iter().map(|s| format!("{} (#{})", s.name, s.id)).collect();
            Err(ambiguous("segment", &many[0].name, listed))
        }
    }
}

/// A saved segment is visible where its unit is one whose segments the
/// caller may read, or above one (an HQ segment is usable in a store).
pub fn saved_visible(principal: &Principal, saved: &segment::Model) -> bool {
    let Some(unit) = principal.org.get(saved.org_unit_id) else { return false };
    principal
        .scope(Action::SegmentRead)
        .unit_ids()
        .filter_map(|u| principal.org.get(u))
        .any(|u| u.path.starts_with(&unit.path))
}

async fn resolve_references(
    db: &impl ConnectionTrait,
    principal: &Principal,
    limits: &Limits,
    expr: SegmentExpr,
) -> AppResult<Resolved> {
    let mut nodes = 0;
    expr.walk(&mut |_| nodes += 1);
    if nodes > limits.max_segment_nodes || expr.depth() > language::text::MAX_DEPTH {
        return Err(AppError::LimitExceeded(format!(
            "a segment may have at most {} nodes and {} levels of nesting",
            limits.max_segment_nodes,
            language::text::MAX_DEPTH
        )));
    }
    // Tags by name (or alias), among those the caller may see.
    let mut names: Vec<String> = Vec::new();
    let mut ids: Vec<TagId> = Vec::new();
    for r in expr.tags() {
        match r {
            Ref::Name(n) if !names.contains(n) => names.push(n.clone()),
            Ref::Id(id) => ids.push(TagId(*id)),
            Ref::Name(_) => {}
        }
    }
    let mut tags: HashMap<i64, VisibleTag> =
        tag_library::visible_tags(db, principal, &ids).await?.into_iter().map(|(id, t)| (id.0, t)).collect();
    let mut by_name: HashMap<String, i64> = HashMap::new();
    for name in &names {
        let candidates = tags_named(db, principal, name).await?;
        match candidates.as_slice() {
            [] => return Err(AppError::NotFound { kind: "tag", id: format!("{name:?}") }),
            [one] => {
                by_name.insert(name.clone(), one.tag.id);
                tags.insert(one.tag.id, one.clone());
            }
            many => {
                let listed = many
                    .iter()
                    .map(|t| {
                        let place = t.group.as_ref().map(|g| g.name.as_str()).unwrap_or("personal");
                        format!("{} ({place}, #{})", t.tag.name, t.tag.id)
                    })
                    .collect();
                return Err(ambiguous("tag", name, listed));
            }
        }
    }
    // Groups.
    let mut groups: HashMap<i64, tag_group::Model> = HashMap::new();
    let mut group_names: HashMap<String, i64> = HashMap::new();
    let mut group_refs = Vec::new();
    expr.walk(&mut |e| {
        if let SegmentExpr::Group(r) = e {
            group_refs.push(r.clone());
        }
    });
    for r in group_refs {
        match r {
            Ref::Id(id) => {
                let group = tag_library::find_group(db, principal, TagGroupId(id)).await?;
                groups.insert(group.id, group);
            }
            Ref::Name(name) => {
                let found = groups_named(db, principal, &name).await?;
                match found.as_slice() {
                    [] => return Err(AppError::NotFound { kind: "tag group", id: format!("{name:?}") }),
                    [one] => {
                        group_names.insert(name.clone(), one.id);
                        groups.insert(one.id, one.clone());
                    }
                    many => {
                        let listed = many
                            .iter()
                            .map(|g| {
                                let unit = principal.org.get(g.org_unit_id).map(|u| u.name.as_str()).unwrap_or("?");
                                format!("{} ({unit}, #{})", g.name, g.id)
                            })
                            .collect();
                        return Err(ambiguous("tag group", &name, listed));
                    }
                }
            }
        }
    }
    require_fields(principal, &expr)?;
    let expr = rewrite(expr, &by_name, &group_names, principal, &tags)?;
    let mut merged_from = HashMap::new();
    let mut between = Vec::new();
    expr.walk(&mut |e| {
        if let SegmentExpr::TaggedBetween { tag: Ref::Id(id), .. } = e {
            between.push(*id);
        }
    });
    for id in between {
        let family = super::library::merged_family(db, id).await?;
        if family.len() > 1 {
            merged_from.insert(id, family[1..].to_vec());
        }
    }
    Ok(Resolved { expr, tags, groups, segments: HashMap::new(), merged_from })
}

/// Predicates on guarded fields need the field readable in full wherever
/// the caller reads customers.
fn require_fields(principal: &Principal, expr: &SegmentExpr) -> AppResult<()> {
    let everywhere = principal.scope(Action::CustomerRead);
    let mut refused = None;
    expr.walk(&mut |e| {
        let needs = match e {
            SegmentExpr::Age(_) => Some((CustomerField::BirthDate, "age")),
            SegmentExpr::Spend(_) => Some((CustomerField::TotalSpend, "spend")),
            SegmentExpr::Orders(_) => Some((CustomerField::TotalSpend, "orders")),
            SegmentExpr::LastOrderBefore(_) | SegmentExpr::LastOrderAfter(_) => {
                Some((CustomerField::TotalSpend, "lastOrder"))
            }
            _ => None,
        };
        if let Some((field, name)) = needs
            && refused.is_none()
            && !principal.field_scope(field).covers(&everywhere)
        {
            refused = Some(AppError::ForbiddenField { field: format!("segment.{name}") });
        }
    });
    refused.map_or(Ok(()), Err)
}

/// Visible tags whose name, or one of whose aliases, is `name`.
async fn tags_named(db: &impl ConnectionTrait, principal: &Principal, name: &str) -> AppResult<Vec<VisibleTag>> {
    // Names are stored in NFC; a decomposed spelling in a text finds them.
    let name: String = name.nfc().collect();
    let name = name.as_str();
    let alias_pattern = format!("%{}%", like_escape(&serde_json::to_string(name).unwrap_or_default()));
    let aliases_text = Func::cast_as(Expr::col((tag::Entity, tag::Column::Aliases)), "TEXT");
    let found = tag::Entity::find()
        .filter(
            Condition::any()
                .add(tag::Column::Name.eq(name))
                .add(Expr::expr(aliases_text).like(LikeExpr::new(alias_pattern).escape('\\'))),
        )
        .filter(tag::Column::Status.eq(entity::enums::TagStatus::Active))
        .all(db)
        .await?;
    let found: Vec<tag::Model> = found
        .into_iter()
        .filter(|t| t.name == name || super::library::aliases_of(t).iter().any(|a| a == name))
        .collect();
    let groups = tag_library::groups_by_id(db, found.iter().filter_map(|t| t.group_id)).await?;
    Ok(found
        .into_iter()
        .map(|tag| VisibleTag { group: tag.group_id.and_then(|g| groups.get(&g).cloned()), tag })
        .filter(|v| tag_library::tag_visible(principal, &v.tag, v.group.as_ref(), None))
        .collect())
}

/// Replaces names by ids and checks what only resolution can check.
fn rewrite(
    expr: SegmentExpr,
    tags: &HashMap<String, i64>,
    groups: &HashMap<String, i64>,
    principal: &Principal,
    resolved: &HashMap<i64, VisibleTag>,
) -> AppResult<SegmentExpr> {
    let tag = |r: Ref| match r {
        Ref::Name(n) => Ref::Id(tags[&n]),
        id => id,
    };
    let all = |items: Vec<SegmentExpr>| -> AppResult<Vec<SegmentExpr>> {
        items.into_iter().map(|e| rewrite(e, tags, groups, principal, resolved)).collect()
    };
    Ok(match expr {
        SegmentExpr::And(items) => SegmentExpr::And(all(items)?),
        SegmentExpr::Or(items) => SegmentExpr::Or(all(items)?),
        SegmentExpr::Not(inner) => SegmentExpr::Not(Box::new(rewrite(*inner, tags, groups, principal, resolved)?)),
        SegmentExpr::Tag(r) => SegmentExpr::Tag(tag(r)),
        SegmentExpr::AnyTags(rs) => SegmentExpr::AnyTags(rs.into_iter().map(tag).collect()),
        SegmentExpr::AllTags(rs) => SegmentExpr::AllTags(rs.into_iter().map(tag).collect()),
        SegmentExpr::TaggedBetween { tag: r, from, to } => SegmentExpr::TaggedBetween { tag: tag(r), from, to },
        SegmentExpr::Group(Ref::Name(n)) => SegmentExpr::Group(Ref::Id(groups[&n])),
        SegmentExpr::Lifecycle(r) => {
            let r = tag(r);
            let Ref::Id(id) = r else { unreachable!("resolved above") };
            let is_lifecycle =
                resolved.get(&id).and_then(|t| t.group.as_ref()).is_some_and(|g| g.category == TagCategory::Lifecycle);
            if !is_lifecycle {
                return Err(AppError::validation("segment", format!("tag #{id} is not a lifecycle stage")));
            }
            SegmentExpr::Lifecycle(Ref::Id(id))
        }
        SegmentExpr::OrgUnit(code) => {
            let known = principal.org.by_code(&code).filter(|u| principal.visible_units().contains(&u.id));
            if known.is_none() {
                return Err(AppError::NotFound { kind: "org unit", id: format!("{code:?}") });
            }
            SegmentExpr::OrgUnit(code)
        }
        other => other,
    })
}

/// An age range as birth-date bounds on a given day: the one definition
/// of age that SQL and the in-memory index share. A bound too far back to
/// compute is left open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgeBounds {
    /// At least `min` years old: born on or before today, `min` years ago.
    pub born_on_or_before: Option<NaiveDate>,
    /// At most `max`: born after today, `max + 1` years ago.
    pub born_after: Option<NaiveDate>,
}

impl AgeBounds {
    pub fn new(range: &Range<i64>, today: NaiveDate) -> Self {
        let years_ago = |years: i64| {
            u32::try_from(years.clamp(0, 200) * 12).ok().and_then(|m| today.checked_sub_months(Months::new(m)))
        };
        Self {
            born_on_or_before: range.min.and_then(years_ago),
            born_after: range.max.and_then(|max| years_ago(max + 1)),
        }
    }

    /// Whether a birth date is in the range (no birth date: never).
    pub fn contains(&self, birth_date: Option<NaiveDate>) -> bool {
        birth_date.is_some_and(|b| {
            self.born_on_or_before.is_none_or(|latest| b <= latest)
                && self.born_after.is_none_or(|earliest| b > earliest)
        })
    }
}

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

impl Compiler<'_> {
    fn require(&self, field: CustomerField, predicate: &str) -> AppResult<()> {
        if self.principal.field_scope(field).covers(self.searched) {
            Ok(())
        } else {
            Err(AppError::ForbiddenField { field: format!("segment.{predicate}") })
        }
    }

    /// `cond`, limited to customers in units where the caller may see the
    /// class. Left alone when the class is visible over the whole scope
    /// searched (which the query is limited to anyway): a bare `NOT EXISTS`
    /// becomes an anti-join on PostgreSQL.
    fn visible_in(&self, cond: Condition, class: &str) -> Condition {
        let classes = self.principal.class_scope(class, ClassAccess::Read);
        if classes.covers(self.searched) { cond } else { cond.add(classes.condition(customer::Column::OrgUnitId)) }
    }

    /// Holds the tag, counted only where the caller may see it.
    fn holds(&self, tag_id: i64) -> Condition {
        let holders = Query::select()
            .expr(Expr::val(1))
            .from(customer_tag::Entity)
            .and_where(Expr::col((customer_tag::Entity, customer_tag::Column::TagId)).eq(tag_id))
            .and_where(of_this_customer((customer_tag::Entity, customer_tag::Column::CustomerId)))
            .to_owned();
        let mut held = Condition::all().add(Expr::exists(holders));
        if self.resolved.tags.get(&tag_id).is_some_and(|t| tag_library::is_retired(t.tag.status)) {
            held = held.add(Expr::cust("1 = 0"));
        }
        // A personal tag (no group) is seen by its owner wherever it is.
        match self.resolved.tags.get(&tag_id).and_then(|t| t.group.as_ref()) {
            Some(group) => self.visible_in(held, &group.visibility_class),
            None => held,
        }
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
                    .and_where(Expr::col((tag::Entity, tag::Column::Status)).is_in(tag_library::in_force()))
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
                self.require(CustomerField::BirthDate, "age")?;
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
            SegmentExpr::Spend(r) => {
                self.require(CustomerField::TotalSpend, "spend")?;
                Self::range(customer::Column::TotalSpendCents, r)
            }
            SegmentExpr::Orders(r) => {
                self.require(CustomerField::TotalSpend, "orders")?;
                Self::range(customer::Column::OrderCount, r)
            }
            SegmentExpr::LastOrderBefore(t) => {
                self.require(CustomerField::TotalSpend, "lastOrder")?;
                Self::known(customer::Column::LastOrderAt, customer::Column::LastOrderAt.lt(*t))
            }
            SegmentExpr::LastOrderAfter(t) => {
                self.require(CustomerField::TotalSpend, "lastOrder")?;
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
    let saved = match inserted {
        Err(err) if is_unique_violation(&err) => {
            return Err(AppError::Conflict(format!(
                "this org unit already has a segment named {:?}",
                input.name.as_str()
            )));
        }
        other => other?,
    };
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

/// Re-resolves a saved segment in the caller's view.
///
/// # Errors
/// As [`resolve`]: a segment using tags the caller may not see is
/// `NOT_FOUND` for it.
pub async fn resolve_saved(
    db: &impl ConnectionTrait,
    principal: &Principal,
    limits: &Limits,
    saved: &segment::Model,
) -> AppResult<Resolved> {
    resolve(db, principal, limits, SegmentExpr::Segment(Ref::Id(saved.id))).await
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
    let tags = tag_library::visible_tags(db, principal, tag_ids).await?;
    // An archived tag is retired: named by id, it matches nobody (its pairs
    // count 0), as in filters and segments.
    let live: Vec<TagId> = tag_ids
        .iter()
        .copied()
        .filter(|t| !tags.get(t).is_some_and(|v| tag_library::is_retired(v.tag.status)))
        .collect();
    // From the index when it can answer: a few bitmap intersections.
    let members = index_members(db, index, principal, filter).await?;
    if members.is_some() || (filter.segment.is_none() && segment_only(filter)) {
        let classes: Vec<(i64, Option<&str>)> = live
            .iter()
            .map(|t| (t.0, tags.get(t).and_then(|v| v.group.as_ref()).map(|g| g.visibility_class.as_str())))
            .collect();
        if let Some(pairs) = index.cooccurrence(principal, members.as_ref(), &classes) {
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
    let visible_at = |tag: i64, unit: i64| match tags.get(&TagId(tag)).and_then(|t| t.group.as_ref()) {
        Some(group) => principal.class_scope(&group.visibility_class, ClassAccess::Read).contains(unit),
        None => true,
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

/// True when the filter asks for nothing but (at most) a segment.
fn segment_only(filter: &CustomerFilter) -> bool {
    filter.org_unit.is_none()
        && filter.search.is_none()
        && filter.has_all_tags.is_empty()
        && filter.has_any_tags.is_empty()
        && filter.lifecycle_stage.is_none()
        && filter.total_spend_min.is_none()
        && filter.total_spend_max.is_none()
}

/// The members of a filter that the caller may see, from the in-memory
/// index: `None` when the filter holds more than a segment or the index
/// cannot answer (not built yet), and SQL must.
///
/// # Errors
/// Database errors while loading what the expression needs (event
/// timelines, static snapshots).
pub async fn index_members(
    db: &DatabaseConnection,
    index: &crate::segment::SegmentIndex,
    principal: &Principal,
    filter: &CustomerFilter,
) -> AppResult<Option<roaring::RoaringBitmap>> {
    let Some(seg) = &filter.segment else { return Ok(None) };
    if !segment_only(filter) || !index.is_ready() {
        return Ok(None);
    }
    index.prepare(db, &seg.resolved).await?;
    Ok(index.evaluate(principal, &seg.resolved, seg.offset))
}

/// Members of a segment filter the caller may see: from the in-memory index
/// when it can answer, by SQL otherwise.
///
/// # Errors
/// As [`customer_service::count_in_scope`].
pub async fn count_members(
    db: &DatabaseConnection,
    index: &crate::segment::SegmentIndex,
    principal: &Principal,
    filter: &CustomerFilter,
) -> AppResult<u64> {
    if let Some(members) = index_members(db, index, principal, filter).await? {
        return Ok(members.len());
    }
    customer_service::count_in_scope(db, principal, filter).await
}

/// One page of a filter's members in `order`. When the in-memory index
/// answers and holds the order's key (added time, spend), the page is
/// picked from the members' bitmap and only its rows are read, by id;
/// otherwise SQL evaluates the whole filter. Either way the order (ties by
/// id, in the same direction), the cursors and the checks (guarded order
/// keys, bad cursors) are those of [`customer_service::list_in_scope`].
///
/// # Errors
/// As [`customer_service::list_in_scope`].
pub async fn list_members(
    db: &DatabaseConnection,
    index: &crate::segment::SegmentIndex,
    principal: &Principal,
    filter: &CustomerFilter,
    order: CustomerOrder,
    page: &PageArgs,
) -> AppResult<Page<customer::Model>> {
    let key = match order.field {
        SortField::AddedAt => Some(PageKey::AddedAt),
        SortField::TotalSpend => Some(PageKey::TotalSpend),
        SortField::UpdatedAt | SortField::Name => None,
    };
    let members = match key {
        Some(_) => index_members(db, index, principal, filter).await?,
        None => None,
    };
    let (Some(key), Some(members)) = (key, members) else {
        return customer_service::list_in_scope(db, principal, filter, order, page).await;
    };
    // The same refusals as the SQL path (a guarded order key, a field the
    // expression may not read over the scope searched).
    customer_service::filter_condition(db, principal, filter, Some(order)).await?;
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
