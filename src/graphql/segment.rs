//! Segments in the API: the structured `@oneOf` input (or its text form)
//! and `segmentPreview`.

use async_graphql::{Context, ID, InputObject, OneofObject, Result, SimpleObject};
use entity::enums::{Gender, SegmentKind};

use super::customer::{CustomerConnection, CustomerOrderInput, customer_connection};
use super::loaders::TagById;
use super::org::{OrgUnit, Staff, org_unit, staff_by_id};
use super::tag::Tag;
use super::{DateTime, PageInfo, env, page_args};
use crate::domain::{Cursor, Description, OrgUnitId, Page, SegmentId, TagGroupId, TagId, TagName, parse_ids};
use crate::error::AppError;
use crate::segment::{Range, Ref, SegmentExpr};
use crate::service::customer::{CustomerFilter, SegmentFilter};
use crate::service::segment as service;
use crate::state::AppState;

/// One node of a segment expression: exactly one field is set. `text`
/// takes the text form (see docs/segment-language.md) anywhere in a tree.
#[derive(OneofObject)]
pub enum SegmentInput {
    /// The text form of an expression.
    Text(String),
    /// Every one of the parts holds.
    And(Vec<SegmentInput>),
    /// At least one of the parts holds.
    Or(Vec<SegmentInput>),
    /// The part does not hold.
    Not(Box<SegmentInput>),
    /// Holds the tag.
    Tag(ID),
    /// Holds at least one of the tags.
    AnyTags(Vec<ID>),
    /// Holds every one of the tags.
    AllTags(Vec<ID>),
    /// Holds any tag of the group.
    Group(ID),
    /// Was given the tag in the window (tag event log).
    TaggedBetween(TaggedBetweenInput),
    /// Lives in the city.
    City(String),
    /// Came through the channel.
    Channel(String),
    /// Has the gender.
    Gender(Gender),
    /// Holds this tag of the lifecycle group.
    Lifecycle(ID),
    /// Belongs to the org unit or one below it.
    OrgUnit(ID),
    /// Age in whole years.
    Age(IntRangeInput),
    /// Total spend in cents.
    Spend(IntRangeInput),
    /// Number of orders.
    Orders(IntRangeInput),
    /// Ordered last before then.
    LastOrderBefore(DateTime),
    /// Ordered last after then.
    LastOrderAfter(DateTime),
    /// Was added before then.
    AddedBefore(DateTime),
    /// Was added after then.
    AddedAfter(DateTime),
    /// Member of a saved segment.
    Segment(ID),
}

/// Was given a tag within a window of time.
#[derive(InputObject)]
pub struct TaggedBetweenInput {
    /// The tag.
    tag: ID,
    /// The window's start.
    from: DateTime,
    /// The window's end.
    to: DateTime,
}

/// An inclusive range; give at least one end.
#[derive(InputObject)]
pub struct IntRangeInput {
    /// The smallest value that matches.
    min: Option<i64>,
    /// The largest value that matches.
    max: Option<i64>,
}

fn range(input: IntRangeInput, field: &str) -> Result<Range<i64>, AppError> {
    match (input.min, input.max) {
        (None, None) => Err(AppError::validation(field, "give min, max or both")),
        (Some(a), Some(b)) if a > b => Err(AppError::validation(field, "min must not exceed max")),
        (min, max) => Ok(Range { min, max }),
    }
}

fn items(inputs: Vec<SegmentInput>, ctx: &Context<'_>, field: &str) -> Result<Vec<SegmentExpr>, AppError> {
    if inputs.is_empty() {
        return Err(AppError::validation(field, "needs at least one item"));
    }
    inputs.into_iter().map(|i| to_expr(i, ctx)).collect()
}

fn tag_ref(id: &ID, field: &str) -> Result<Ref, AppError> {
    TagId::parse(id, field).map(|t| Ref::Id(t.0))
}

fn tag_refs(ids: &[ID], field: &str) -> Result<Vec<Ref>, AppError> {
    if ids.is_empty() {
        return Err(AppError::validation(field, "needs at least one tag"));
    }
    ids.iter().map(|id| tag_ref(id, field)).collect()
}

/// The structured input as an expression (names and ids unresolved).
fn to_expr(input: SegmentInput, ctx: &Context<'_>) -> Result<SegmentExpr, AppError> {
    let offset = ctx.data_unchecked::<AppState>().settings.utc_offset;
    Ok(match input {
        SegmentInput::Text(text) => service::parse_text(&text, offset)?,
        SegmentInput::And(list) => {
            let mut list = items(list, ctx, "segment.and")?;
            if list.len() == 1 { list.remove(0) } else { SegmentExpr::And(list) }
        }
        SegmentInput::Or(list) => {
            let mut list = items(list, ctx, "segment.or")?;
            if list.len() == 1 { list.remove(0) } else { SegmentExpr::Or(list) }
        }
        SegmentInput::Not(inner) => SegmentExpr::Not(Box::new(to_expr(*inner, ctx)?)),
        SegmentInput::Tag(id) => SegmentExpr::Tag(tag_ref(&id, "segment.tag")?),
        SegmentInput::AnyTags(ids) => SegmentExpr::AnyTags(tag_refs(&ids, "segment.anyTags")?),
        SegmentInput::AllTags(ids) => SegmentExpr::AllTags(tag_refs(&ids, "segment.allTags")?),
        SegmentInput::Group(id) => SegmentExpr::Group(Ref::Id(TagGroupId::parse(&id, "segment.group")?.0)),
        SegmentInput::TaggedBetween(t) => {
            if t.from > t.to {
                return Err(AppError::validation("segment.taggedBetween", "from must not be after to"));
            }
            SegmentExpr::TaggedBetween {
                tag: tag_ref(&t.tag, "segment.taggedBetween.tag")?,
                from: t.from.0,
                to: t.to.0,
            }
        }
        SegmentInput::City(city) => SegmentExpr::City(city.trim().to_owned()),
        SegmentInput::Channel(channel) => SegmentExpr::Channel(channel.trim().to_owned()),
        SegmentInput::Gender(g) => SegmentExpr::Gender(g),
        SegmentInput::Lifecycle(id) => SegmentExpr::Lifecycle(tag_ref(&id, "segment.lifecycle")?),
        SegmentInput::OrgUnit(id) => {
            let id = OrgUnitId::parse(&id, "segment.orgUnit")?;
            let principal = env(ctx).principal;
            let unit = principal
                .org
                .get(id.0)
                .filter(|u| principal.visible_units().contains(&u.id))
                .ok_or_else(|| AppError::not_found("org unit", id))?;
            SegmentExpr::OrgUnit(unit.code.clone())
        }
        SegmentInput::Age(r) => SegmentExpr::Age(range(r, "segment.age")?),
        SegmentInput::Spend(r) => SegmentExpr::Spend(range(r, "segment.spend")?),
        SegmentInput::Orders(r) => SegmentExpr::Orders(range(r, "segment.orders")?),
        SegmentInput::LastOrderBefore(t) => SegmentExpr::LastOrderBefore(t.0),
        SegmentInput::LastOrderAfter(t) => SegmentExpr::LastOrderAfter(t.0),
        SegmentInput::AddedBefore(t) => SegmentExpr::AddedBefore(t.0),
        SegmentInput::AddedAfter(t) => SegmentExpr::AddedAfter(t.0),
        SegmentInput::Segment(id) => SegmentExpr::Segment(Ref::Id(SegmentId::parse(&id, "segment.segment")?.0)),
    })
}

/// Resolves a segment input in the caller's view.
pub(crate) async fn resolve_segment(ctx: &Context<'_>, input: SegmentInput) -> Result<SegmentFilter> {
    let env = env(ctx);
    let offset = ctx.data_unchecked::<AppState>().settings.utc_offset;
    let expr = to_expr(input, ctx)?;
    let resolved = service::resolve(env.db, env.principal, env.limits, expr).await?;
    Ok(SegmentFilter { resolved, offset })
}

pub struct SegmentPreview {
    filter: CustomerFilter,
    /// Tags as they were at this instant (`asOf`).
    as_of: Option<chrono::DateTime<chrono::Utc>>,
}

impl SegmentPreview {
    /// `VALIDATION` on a field that does not travel in time.
    fn now_only(&self, field: &str) -> Result<()> {
        match self.as_of {
            Some(_) => {
                Err(AppError::validation("asOf", format!("`{field}` is not answered as of a date; ask `count`")).into())
            }
            None => Ok(()),
        }
    }
}

/// A segment evaluated now, for the caller.
#[async_graphql::Object]
impl SegmentPreview {
    /// The canonical text form of the expression.
    async fn text(&self, ctx: &Context<'_>) -> Result<String> {
        let env = env(ctx);
        let seg = self.filter.segment.as_ref().expect("a preview has a segment");
        Ok(seg.resolved.text(env.db, env.principal, seg.offset).await?)
    }

    /// Members the caller may see (as of `asOf` when given: tags replayed
    /// from the tag event log, other fields as they are now).
    async fn count(&self, ctx: &Context<'_>) -> Result<u64> {
        if let Some(at) = self.as_of {
            let env = env(ctx);
            let seg = self.filter.segment.as_ref().expect("a preview has a segment");
            let index = &ctx.data_unchecked::<AppState>().index;
            let members = crate::service::reports::time_travel::members_as_of(
                env.db,
                index,
                env.principal,
                &seg.resolved,
                seg.offset,
                at,
            )
            .await?;
            return Ok(members.len());
        }
        members_count(ctx, &self.filter).await
    }

    /// The members as CSV: only the columns the caller may read, masked
    /// or left empty per customer as the field rules say. Audited.
    async fn csv(&self, ctx: &Context<'_>) -> Result<String> {
        self.now_only("csv")?;
        members_csv(ctx, &self.filter).await
    }

    /// A page of the members.
    #[allow(clippy::too_many_arguments)]
    #[graphql(complexity = "super::limits::page_cost(first.or(last), child_complexity)")]
    async fn customers(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page forward: this many members after `after`.")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "Page backward: this many members before `before`.")] last: Option<i32>,
        #[graphql(desc = "Page backward from this cursor.")] before: Option<String>,
        #[graphql(desc = "The order (default: newest added first).")] order_by: Option<CustomerOrderInput>,
    ) -> Result<CustomerConnection> {
        self.now_only("customers")?;
        let page = page_args(ctx, first, after, last, before)?;
        customer_connection(ctx, self.filter.clone(), order_by, &page).await
    }
}

/// How many customers hold both tags (`a` = `b`: hold the tag).
#[derive(SimpleObject)]
pub struct TagPairCount {
    /// One tag.
    a: Tag,
    /// The other tag (the same as `a` for the tag's own count).
    b: Tag,
    /// Customers the caller may see holding both.
    count: u64,
}

#[derive(Default)]
pub struct SegmentQuery;

#[async_graphql::Object]
impl SegmentQuery {
    /// Cross analysis (交叉分析): for every pair of the tags, how many
    /// customers hold both — among a segment's members when one is given —
    /// counting only what the caller may see.
    #[graphql(
        complexity = "super::limits::list_cost(tag_ids.len().saturating_mul(tag_ids.len()) / 2, child_complexity)"
    )]
    async fn tag_cooccurrence(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The tags to cross (every pair of them).")] tag_ids: Vec<ID>,
        #[graphql(desc = "Count among this segment's members only.")] segment: Option<SegmentInput>,
    ) -> Result<Vec<TagPairCount>> {
        let env = env(ctx);
        let ids = parse_ids(&tag_ids, "tagIds", TagId::parse)?;
        let mut filter = CustomerFilter::default();
        if let Some(segment) = segment {
            filter.segment = Some(resolve_segment(ctx, segment).await?);
        }
        let index = &ctx.data_unchecked::<AppState>().index;
        let pairs = service::cooccurrence(env.db, index, env.principal, env.limits, &ids, &filter).await?;
        let tags = env.loaders.load_many(ids.iter().map(|t| TagById(t.0))).await?;
        let tag = |id: i64| tags.get(&TagById(id)).cloned().map(Tag).ok_or_else(|| AppError::not_found("tag", id));
        pairs.into_iter().map(|(a, b, count)| Ok(TagPairCount { a: tag(a)?, b: tag(b)?, count })).collect()
    }

    /// Evaluates a segment without saving it: its canonical text, member
    /// count and members, all limited to what the caller may see.
    async fn segment_preview(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The expression to evaluate.")] segment: SegmentInput,
        #[graphql(desc = "Evaluate with the tags customers held at this instant (replayed from the tag \
                          event log; other fields as they are now). Answers `count` and `text`.")]
        as_of: Option<DateTime>,
    ) -> Result<SegmentPreview> {
        let seg = resolve_segment(ctx, segment).await?;
        Ok(SegmentPreview {
            filter: CustomerFilter { segment: Some(seg), ..Default::default() },
            as_of: as_of.map(|t| t.0),
        })
    }
}

/// A saved segment (客群).
pub struct Segment(pub entity::segment::Model, tokio::sync::OnceCell<CustomerFilter>);

impl Segment {
    pub(crate) fn new(model: entity::segment::Model) -> Self {
        Self(model, tokio::sync::OnceCell::new())
    }
}

/// A saved segment (客群).
#[async_graphql::Object]
impl Segment {
    /// Opaque global id (`node(id)` fetches the segment again).
    pub async fn id(&self) -> ID {
        SegmentId(self.0.id).into()
    }
    /// The segment's name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// What the segment is for.
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// Dynamic or static.
    async fn kind(&self) -> SegmentKind {
        self.0.kind
    }
    /// Where the segment lives (who may see and use it).
    async fn org_unit(&self, ctx: &Context<'_>) -> Result<OrgUnit> {
        org_unit(ctx, self.0.org_unit_id)
    }
    /// Who saved it.
    async fn owner(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, Some(self.0.owner_staff_id)).await
    }
    /// Members of a static segment's snapshot that the caller may see (in
    /// its scope, where it may see every class the expression reads); null
    /// for a dynamic segment.
    async fn snapshot_size(&self, ctx: &Context<'_>) -> Result<Option<u64>> {
        if self.0.kind != SegmentKind::Static {
            return Ok(None);
        }
        Ok(Some(members_count(ctx, self.filter(ctx).await?).await?))
    }
    /// When it was saved.
    async fn created_at(&self) -> DateTime {
        self.0.created_at.into()
    }
    /// The expression's canonical text, in the caller's view.
    async fn text(&self, ctx: &Context<'_>) -> Result<String> {
        let env = env(ctx);
        let offset = ctx.data_unchecked::<AppState>().settings.utc_offset;
        let expr = service::parse_text(&self.0.expression, chrono::FixedOffset::east_opt(0).expect("UTC"))?;
        let resolved = service::resolve(env.db, env.principal, env.limits, expr).await?;
        Ok(resolved.text(env.db, env.principal, offset).await?)
    }
    /// The members as CSV (see `SegmentPreview.csv`). Audited.
    async fn csv(&self, ctx: &Context<'_>) -> Result<String> {
        members_csv(ctx, self.filter(ctx).await?).await
    }

    /// Members the caller may see (a static segment: of its snapshot).
    async fn count(&self, ctx: &Context<'_>) -> Result<u64> {
        members_count(ctx, self.filter(ctx).await?).await
    }
    /// A page of the members the caller may see.
    #[allow(clippy::too_many_arguments)]
    #[graphql(complexity = "super::limits::page_cost(first.or(last), child_complexity)")]
    async fn customers(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page forward: this many members after `after`.")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "Page backward: this many members before `before`.")] last: Option<i32>,
        #[graphql(desc = "Page backward from this cursor.")] before: Option<String>,
        #[graphql(desc = "The order (default: newest added first).")] order_by: Option<CustomerOrderInput>,
    ) -> Result<CustomerConnection> {
        let page = page_args(ctx, first, after, last, before)?;
        let filter = self.filter(ctx).await?.clone();
        customer_connection(ctx, filter, order_by, &page).await
    }
}

impl Segment {
    /// The saved segment resolved in the caller's view, once per object
    /// however many of its fields are selected.
    async fn filter(&self, ctx: &Context<'_>) -> Result<&CustomerFilter> {
        self.1
            .get_or_try_init(|| async {
                let env = env(ctx);
                let offset = ctx.data_unchecked::<AppState>().settings.utc_offset;
                let resolved = service::resolve_saved(env.db, env.principal, env.limits, &self.0).await?;
                Ok::<_, async_graphql::Error>(CustomerFilter {
                    segment: Some(SegmentFilter { resolved, offset }),
                    ..Default::default()
                })
            })
            .await
    }
}

/// Members of a filter the caller may see: from the index when it can
/// answer (shared by `SegmentPreview` and `Segment`).
async fn members_count(ctx: &Context<'_>, filter: &CustomerFilter) -> Result<u64> {
    let env = env(ctx);
    let index = &ctx.data_unchecked::<AppState>().index;
    Ok(service::count_members(env.db, index, env.principal, filter).await?)
}

/// Members of a filter as CSV (audited).
async fn members_csv(ctx: &Context<'_>, filter: &CustomerFilter) -> Result<String> {
    let env = env(ctx);
    let index = &ctx.data_unchecked::<AppState>().index;
    let principal = ctx.data_unchecked::<std::sync::Arc<crate::authz::Principal>>().clone();
    Ok(crate::service::export::customers_csv(env.db, index, principal, env.limits, filter).await?.0)
}

/// A saved segment in a page, with its cursor.
#[derive(SimpleObject)]
pub struct SegmentEdge {
    /// Pass it as `after` or `before` to page from here.
    cursor: String,
    /// The segment.
    node: Segment,
}

/// Saved segments, oldest first.
#[derive(SimpleObject)]
pub struct SegmentConnection {
    /// The segments of the page, oldest first.
    edges: Vec<SegmentEdge>,
    /// Where the page sits in the list.
    page_info: PageInfo,
    /// Saved segments the caller may see (all pages).
    total_count: u64,
}

/// A segment to save.
#[derive(InputObject)]
pub struct SaveSegmentInput {
    /// Where the segment lives (who may see and use it).
    org_unit_id: ID,
    /// The segment's name, unique in the unit.
    name: String,
    /// What the segment is for.
    description: Option<String>,
    /// Dynamic (re-evaluated on use) or static (members kept now).
    #[graphql(default_with = "SegmentKind::Dynamic")]
    kind: SegmentKind,
    /// The expression.
    segment: SegmentInput,
}

/// The saved segment.
#[derive(SimpleObject)]
pub struct SaveSegmentPayload {
    /// The segment as saved.
    segment: Segment,
}

/// What was deleted.
#[derive(SimpleObject)]
pub struct DeleteSegmentPayload {
    /// The deleted segment's id.
    deleted_id: ID,
}

#[derive(Default)]
pub struct SegmentSavedQuery;

#[async_graphql::Object]
impl SegmentSavedQuery {
    /// A saved segment the caller may see; `NOT_FOUND` otherwise.
    async fn segment(&self, ctx: &Context<'_>, #[graphql(desc = "The segment's id.")] id: ID) -> Result<Segment> {
        let env = env(ctx);
        let id = SegmentId::parse(&id, "id")?.0;
        Ok(Segment::new(service::find(env.db, env.principal, id).await?))
    }

    /// Saved segments the caller may see (its units' and those above).
    #[graphql(complexity = "super::limits::page_cost(first.or(last), child_complexity)")]
    async fn segments(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page forward: this many segments after `after`.")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "Page backward: this many segments before `before`.")] last: Option<i32>,
        #[graphql(desc = "Page backward from this cursor.")] before: Option<String>,
    ) -> Result<SegmentConnection> {
        const ORDERING: &str = "SEGMENT_ID";
        let env = env(ctx);
        let args = page_args(ctx, first, after, last, before)?;
        // Few per caller: listed whole (oldest first), paged here.
        let all = service::list(env.db, env.principal).await?;
        let total_count = all.len() as u64;
        let cursor = args.decode_cursor(ORDERING)?.map(|c| c.id);
        let walk: Vec<_> = if args.backward() {
            all.into_iter().rev().filter(|s| cursor.is_none_or(|c| s.id < c)).take(args.fetch() as usize).collect()
        } else {
            all.into_iter().filter(|s| cursor.is_none_or(|c| s.id > c)).take(args.fetch() as usize).collect()
        };
        let page = Page::from_walk(walk, &args, |s| Cursor { ordering: ORDERING.into(), key: String::new(), id: s.id });
        let page_info = PageInfo::of(&page);
        let edges = page.items.into_iter().map(|(cursor, s)| SegmentEdge { cursor, node: Segment::new(s) }).collect();
        Ok(SegmentConnection { edges, page_info, total_count })
    }
}

#[derive(Default)]
pub struct SegmentMutation;

#[async_graphql::Object]
impl SegmentMutation {
    /// Saves a segment: dynamic (re-evaluated on use) or static (keeps the
    /// members the caller sees now).
    async fn save_segment(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The segment to save.")] input: SaveSegmentInput,
    ) -> Result<SaveSegmentPayload> {
        let env = env(ctx);
        let seg = resolve_segment(ctx, input.segment).await?;
        let new = service::NewSegment {
            org_unit: OrgUnitId::parse(&input.org_unit_id, "orgUnitId")?,
            name: TagName::parse(&input.name, "name")?,
            description: Description::parse(input.description.as_deref(), "description")?,
            kind: input.kind,
            resolved: seg.resolved,
            offset: seg.offset,
        };
        Ok(SaveSegmentPayload { segment: Segment::new(service::save(env.db, env.principal, new).await?) })
    }

    /// Deletes a saved segment that no other segment uses.
    async fn delete_segment(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The segment's id.")] id: ID,
    ) -> Result<DeleteSegmentPayload> {
        let env = env(ctx);
        let segment_id = SegmentId::parse(&id, "id")?;
        service::delete(env.db, env.principal, segment_id.0).await?;
        Ok(DeleteSegmentPayload { deleted_id: segment_id.into() })
    }
}
