//! Resolution: an expression's names and ids become the tags, groups and
//! saved segments the caller may see (unknown and invisible alike are
//! `NOT_FOUND`), saved-segment references are expanded (cycles refused),
//! and predicates on guarded fields are checked against the field rules.
//! The result, [`Resolved`], is what the SQL compiler ([`super::sql`]) and
//! the in-memory index both evaluate.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;

use chrono::FixedOffset;
use entity::{enums::SegmentKind, segment, tag, tag_group};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, ExprTrait, Func, LikeExpr},
};
use unicode_normalization::UnicodeNormalization;

use super::{Ref, RefKind, SegmentExpr};
use crate::authz::visibility::{self, VisibleTag};
use crate::authz::{Action, FieldRule, Principal};
use crate::config::Limits;
use crate::domain::tag::{aliases_of, is_lifecycle_group};
use crate::domain::{TagGroupId, TagId};
use crate::error::{AppError, AppResult};
use crate::store::like_escape;

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
        super::print(&self.expr, &name_of, offset)
    }
}

/// Parses the text form.
///
/// # Errors
/// `VALIDATION` on field `segment.text`, with the column and what was
/// expected.
pub fn parse_text(text: &str, offset: FixedOffset) -> AppResult<SegmentExpr> {
    super::parse(text, offset).map_err(|e| AppError::validation("segment.text", e.to_string()))
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
///
/// # Errors
/// `NOT_FOUND` for missing and invisible segments alike, `VALIDATION`
/// for an ambiguous name.
pub async fn find_saved(db: &impl ConnectionTrait, principal: &Principal, r: &Ref) -> AppResult<segment::Model> {
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
        .filter(|g| visibility::group_visible(principal, g, None))
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
    if nodes > limits.max_segment_nodes || expr.depth() > super::text::MAX_DEPTH {
        return Err(AppError::LimitExceeded(format!(
            "a segment may have at most {} nodes and {} levels of nesting",
            limits.max_segment_nodes,
            super::text::MAX_DEPTH
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
        visibility::visible_tags(db, principal, &ids).await?.into_iter().map(|(id, t)| (id.0, t)).collect();
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
                let group = visibility::find_group(db, principal, TagGroupId(id)).await?;
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
        let family = merged_family(db, id).await?;
        if family.len() > 1 {
            merged_from.insert(id, family[1..].to_vec());
        }
    }
    Ok(Resolved { expr, tags, groups, segments: HashMap::new(), merged_from })
}

/// The field rule a predicate reads, with the predicate's name (for the
/// `FORBIDDEN_FIELD` error's `segment.<name>`): the one mapping from
/// segment predicates to [`FIELD_RULES`](crate::authz::FIELD_RULES), used
/// while resolving and while compiling to SQL.
pub(crate) fn guarded_predicate(e: &SegmentExpr) -> Option<(&'static str, &'static FieldRule)> {
    let name = e.predicate()?;
    FieldRule::by_segment(name).map(|rule| (name, rule))
}

/// Predicates on guarded fields need the field readable in full wherever
/// the caller reads customers.
fn require_fields(principal: &Principal, expr: &SegmentExpr) -> AppResult<()> {
    let everywhere = principal.scope(Action::CustomerRead);
    let mut refused = None;
    expr.walk(&mut |e| {
        if let Some((name, rule)) = guarded_predicate(e)
            && refused.is_none()
            && !principal.field_scope(rule.field).covers(&everywhere)
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
    let found: Vec<tag::Model> =
        found.into_iter().filter(|t| t.name == name || aliases_of(t).iter().any(|a| a == name)).collect();
    visibility::visible_of(db, principal, found).await
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
            let is_lifecycle = resolved
                .get(&id)
                .and_then(|t| t.group.as_ref())
                .is_some_and(|g| is_lifecycle_group(g, principal.org.get(g.org_unit_id)));
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

/// The tags merged into `tag_id`, directly or through other merges, and
/// the tag itself: the tags whose history is the tag's history.
///
/// # Errors
/// Database errors.
pub async fn merged_family(db: &impl ConnectionTrait, tag_id: i64) -> AppResult<Vec<i64>> {
    let mut family = vec![tag_id];
    let mut frontier = vec![tag_id];
    while !frontier.is_empty() {
        let next: Vec<i64> = tag::Entity::find()
            .select_only()
            .column(tag::Column::Id)
            .filter(tag::Column::MergedIntoId.is_in(frontier.iter().copied()))
            .into_tuple()
            .all(db)
            .await?;
        frontier = next.into_iter().filter(|t| !family.contains(t)).collect();
        family.extend(&frontier);
    }
    Ok(family)
}
