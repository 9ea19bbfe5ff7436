//! Tag libraries, tags, personal tags, and tagging.

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use entity::{
    customer_tag,
    enums::{TagCategory, TagOp, TagSource, TagStatus},
    tag as tag_entity, tag_event, tag_group,
};

use super::customer::Customer;
use super::governance::ChangeRequest;
use super::governance::{submit, tag_payload};
use super::jobs::Job;
use super::loaders::{ActiveTagsOfGroup, GroupById, HoldersOfTag, TagById};
use super::org::{OrgUnit, Staff, org_unit, staff_by_id};
use super::{DateTime, env};
use crate::domain::{CustomerId, Description, EventSeq, OrgUnitId, Reason, TagGroupId, TagId, TagName, parse_ids};
use crate::error::AppError;
use crate::service::jobs;
use crate::service::library::{self, EditContext, LibraryEdit, NewGroupSpec, NewTagSpec};
use crate::service::tag_library;
use crate::service::tagging::{self, BulkOp, BulkTagging, TaggingResult};
use crate::state::AppState;

/// Whose a tag is.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
pub enum TagKind {
    /// Part of a tag group of the enterprise library.
    Enterprise,
    /// A private note of one staff member (个人标签).
    Personal,
}

/// A tag: enterprise (in a group) or personal (seen only by its owner).
pub struct Tag(pub tag_entity::Model);

/// A tag: enterprise (in a group) or personal (seen only by its owner).
#[Object]
impl Tag {
    /// Opaque global id (`node(id)` fetches the tag again).
    pub async fn id(&self) -> ID {
        TagId(self.0.id).into()
    }
    /// The tag's name, unique in its library layer.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// What the tag means, for the people who use it.
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// Enterprise (in a group) or personal.
    async fn kind(&self) -> TagKind {
        if self.0.owner_staff_id.is_some() { TagKind::Personal } else { TagKind::Enterprise }
    }
    /// Active, archived or merged.
    async fn status(&self) -> TagStatus {
        self.0.status
    }
    /// Synonyms (近义词).
    async fn aliases(&self) -> Vec<String> {
        library::aliases_of(&self.0)
    }
    /// Assignments of this tag expire this many seconds after tagging.
    async fn ttl_seconds(&self) -> Option<i64> {
        self.0.ttl_seconds
    }
    /// Grows with every edit; send it back as `expectedVersion`.
    async fn version(&self) -> i32 {
        self.0.version
    }
    /// Customers holding the tag, among those the caller may read (a store
    /// sees its own customers' count of an HQ tag, not HQ's).
    async fn customer_count(&self, ctx: &Context<'_>) -> Result<u64> {
        let env = env(ctx);
        let index = &ctx.data_unchecked::<crate::state::AppState>().index;
        if index.is_ready() {
            let group = match self.0.group_id {
                Some(id) => env.loaders.load_one(GroupById(id)).await?,
                None => None,
            };
            if let Some(count) = crate::service::listing::holder_count(index, env.principal, &self.0, group.as_ref()) {
                return Ok(count);
            }
        }
        Ok(env.loaders.load_one(HoldersOfTag(self.0.id)).await?.unwrap_or_default())
    }
    /// The group of an enterprise tag.
    async fn group(&self, ctx: &Context<'_>) -> Result<Option<TagGroup>> {
        match self.0.group_id {
            None => Ok(None),
            Some(id) => Ok(env(ctx).loaders.load_one(GroupById(id)).await?.map(TagGroup)),
        }
    }
    /// The owner of a personal tag (always the caller: nobody else sees it).
    async fn owner(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, self.0.owner_staff_id).await
    }
    /// The HQ tag this one rolls up to in statistics.
    async fn canonical_tag(&self, ctx: &Context<'_>) -> Result<Option<Tag>> {
        load_tag(ctx, self.0.canonical_tag_id).await
    }
    /// For a `MERGED` tag, the tag it was merged into.
    async fn merged_into(&self, ctx: &Context<'_>) -> Result<Option<Tag>> {
        load_tag(ctx, self.0.merged_into_id).await
    }
}

async fn load_tag(ctx: &Context<'_>, id: Option<i64>) -> Result<Option<Tag>> {
    match id {
        None => Ok(None),
        Some(id) => Ok(env(ctx).loaders.load_one(TagById(id)).await?.map(Tag)),
    }
}

/// A tag group (标签组) of one library layer.
pub struct TagGroup(pub tag_group::Model);

/// A tag group (标签组) of one library layer.
#[Object]
impl TagGroup {
    /// Opaque global id (`node(id)` fetches the group again).
    pub async fn id(&self) -> ID {
        TagGroupId(self.0.id).into()
    }
    /// The group's name, unique in its library layer.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// What the group is for.
    async fn description(&self) -> &str {
        &self.0.description
    }
    /// The group's category.
    async fn category(&self) -> TagCategory {
        self.0.category
    }
    /// Policies grant visibility classes to roles.
    async fn visibility_class(&self) -> &str {
        &self.0.visibility_class
    }
    /// A customer holds at most one tag of an exclusive group.
    async fn exclusive(&self) -> bool {
        self.0.exclusive
    }
    /// Every tag name in the group must match this regular expression.
    async fn naming_pattern(&self) -> Option<&str> {
        self.0.naming_pattern.as_deref()
    }
    /// Grows with every edit; send it back as `expectedVersion`.
    async fn version(&self) -> i32 {
        self.0.version
    }
    /// The library layer (org unit) the group belongs to.
    async fn org_unit(&self, ctx: &Context<'_>) -> Result<OrgUnit> {
        org_unit(ctx, self.0.org_unit_id)
    }
    /// Active tags of the group.
    #[graphql(complexity = "super::limits::list_cost(super::limits::TAGS_PER_GROUP, child_complexity)")]
    async fn tags(&self, ctx: &Context<'_>) -> Result<Vec<Tag>> {
        let tags = env(ctx).loaders.load_one(ActiveTagsOfGroup(self.0.id)).await?.unwrap_or_default();
        Ok(tags.into_iter().map(Tag).collect())
    }
}

/// A tag on a customer, with where it came from.
pub struct CustomerTag(pub customer_tag::Model);

/// A tag on a customer, with where it came from.
#[Object]
impl CustomerTag {
    /// The tag.
    async fn tag(&self, ctx: &Context<'_>) -> Result<Tag> {
        load_tag(ctx, Some(self.0.tag_id)).await?.ok_or_else(|| AppError::not_found("tag", self.0.tag_id).into())
    }
    /// Where the assignment came from.
    async fn source(&self) -> TagSource {
        self.0.source
    }
    /// The rule, job or import behind the assignment.
    async fn source_ref(&self) -> Option<&str> {
        self.0.source_ref.as_deref()
    }
    /// When the tag was put on.
    async fn tagged_at(&self) -> DateTime {
        self.0.tagged_at.into()
    }
    /// Who put it on; none for rules, jobs and imports.
    async fn tagged_by(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, self.0.tagged_by).await
    }
    /// When the assignment lapses, if it does.
    async fn expires_at(&self) -> Option<DateTime> {
        self.0.expires_at.map(DateTime)
    }
    /// Why a rule put the tag on (none when no rule did).
    async fn why(&self, ctx: &Context<'_>) -> Result<Option<super::rules::TagExplanation>> {
        super::rules::why(ctx, self.0.customer_id, self.0.source, self.0.source_ref.as_deref()).await
    }
}

/// One add or remove of a tag on a customer (the append-only tag event).
pub struct TagEvent(pub tag_event::Model);

/// A tag event in a page, with its cursor.
#[derive(SimpleObject)]
pub struct TagEventEdge {
    /// Pass it as `after` or `before` to page from here.
    pub cursor: String,
    /// The event.
    pub node: TagEvent,
}

/// A page of a customer's tag history, newest first.
#[derive(SimpleObject)]
pub struct TagEventConnection {
    /// The page's events with their cursors.
    pub edges: Vec<TagEventEdge>,
    /// Where the page stands in the whole history.
    pub page_info: super::PageInfo,
}

/// One add or remove of a tag on a customer (the append-only tag event).
#[Object]
impl TagEvent {
    /// Opaque global id, unique across types.
    pub async fn id(&self) -> ID {
        EventSeq(self.0.seq).into()
    }
    /// The tag as it is now (a merged tag shows `MERGED` and `mergedInto`).
    async fn tag(&self, ctx: &Context<'_>) -> Result<Tag> {
        load_tag(ctx, Some(self.0.tag_id)).await?.ok_or_else(|| AppError::not_found("tag", self.0.tag_id).into())
    }
    /// Put on or taken off.
    async fn op(&self) -> TagOp {
        self.0.op
    }
    /// Where the change came from.
    async fn source(&self) -> TagSource {
        self.0.source
    }
    /// The rule, job, import, request or merge behind it.
    async fn source_ref(&self) -> Option<&str> {
        self.0.source_ref.as_deref()
    }
    /// Who did it; none for rules, jobs and imports.
    async fn actor(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, self.0.actor_staff_id).await
    }
    /// When it happened.
    async fn occurred_at(&self) -> DateTime {
        self.0.occurred_at.into()
    }
    /// Why a rule made the change (none when no rule did).
    async fn why(&self, ctx: &Context<'_>) -> Result<Option<super::rules::TagExplanation>> {
        super::rules::why(ctx, self.0.customer_id, self.0.source, self.0.source_ref.as_deref()).await
    }
}

/// One layer of an effective library.
#[derive(SimpleObject)]
pub struct TagLibraryLayer {
    /// The unit whose layer it is.
    org_unit: OrgUnit,
    /// The layer's groups the caller may see.
    #[graphql(complexity = "super::limits::list_cost(super::limits::GROUPS_PER_LIBRARY, child_complexity)")]
    groups: Vec<TagGroup>,
}

/// The effective tag library (标签库) of an org unit: HQ + region + store
/// layers, root first, and the caller's personal tags.
pub struct TagLibrary {
    org_unit: OrgUnit,
    layers: Vec<TagLibraryLayer>,
}

/// The effective tag library (标签库) of an org unit: HQ + region + store
/// layers, root first, and the caller's personal tags.
#[Object]
impl TagLibrary {
    /// The unit whose effective library it is.
    async fn org_unit(&self) -> &OrgUnit {
        &self.org_unit
    }
    /// Its layers, root first.
    #[graphql(complexity = "super::limits::list_cost(super::limits::LIBRARY_LAYERS, child_complexity)")]
    async fn layers(&self) -> &[TagLibraryLayer] {
        &self.layers
    }
    /// Every group of every layer, root layer first.
    #[graphql(complexity = "super::limits::list_cost(super::limits::GROUPS_PER_LIBRARY, child_complexity)")]
    async fn groups(&self) -> Vec<TagGroup> {
        self.layers.iter().flat_map(|l| l.groups.iter().map(|g| TagGroup(g.0.clone()))).collect()
    }
    /// The caller's own personal tags.
    #[graphql(complexity = "super::limits::list_cost(super::limits::TAGS_PER_GROUP, child_complexity)")]
    async fn personal_tags(&self, ctx: &Context<'_>) -> Result<Vec<Tag>> {
        let env = env(ctx);
        Ok(tag_library::personal_tags(env.db, env.principal).await?.into_iter().map(Tag).collect())
    }
}

#[derive(Default)]
pub struct TagQuery;

#[Object]
impl TagQuery {
    /// The effective library of an org unit the caller may read.
    async fn tag_library(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The org unit whose library to read.")] org_unit_id: ID,
    ) -> Result<TagLibrary> {
        let env = env(ctx);
        let unit = OrgUnitId::parse(&org_unit_id, "orgUnitId")?;
        let library = tag_library::library_for(env.db, env.principal, unit).await?;
        let look = ctx.look_ahead();
        if look.field("layers").field("groups").field("tags").exists() || look.field("groups").field("tags").exists() {
            let groups: Vec<ActiveTagsOfGroup> =
                library.layers.iter().flat_map(|l| &l.groups).map(|g| ActiveTagsOfGroup(g.id)).collect();
            env.loaders.load_many(groups).await?;
        }
        Ok(TagLibrary {
            org_unit: OrgUnit(library.org_unit),
            layers: library
                .layers
                .into_iter()
                .map(|l| TagLibraryLayer {
                    org_unit: OrgUnit(l.org_unit),
                    groups: l.groups.into_iter().map(TagGroup).collect(),
                })
                .collect(),
        })
    }

    /// A tag group the caller may see; `NOT_FOUND` otherwise.
    async fn tag_group(&self, ctx: &Context<'_>, #[graphql(desc = "The group's id.")] id: ID) -> Result<TagGroup> {
        let env = env(ctx);
        let id = TagGroupId::parse(&id, "id")?;
        Ok(TagGroup(tag_library::find_group(env.db, env.principal, id).await?))
    }

    /// A tag the caller may see; `NOT_FOUND` otherwise.
    async fn tag(&self, ctx: &Context<'_>, #[graphql(desc = "The tag's id.")] id: ID) -> Result<Tag> {
        let env = env(ctx);
        let id = TagId::parse(&id, "id")?;
        Ok(Tag(tag_library::find_tag(env.db, env.principal, id).await?))
    }
}

/// A new tag group.
#[derive(InputObject)]
pub struct CreateTagGroupInput {
    /// The library layer: an HQ, region or store unit.
    org_unit_id: ID,
    /// The group's name, unique in the layer.
    name: String,
    /// What the group is for.
    description: Option<String>,
    /// The group's category.
    category: TagCategory,
    /// `basic`, `service`, `value`, `sensitive`, … (policies grant classes).
    visibility_class: String,
    /// A customer holds at most one tag of the group.
    #[graphql(default)]
    exclusive: bool,
    /// A regular expression every tag name of the group must match.
    naming_pattern: Option<String>,
    /// Why: shown to approvers when the new group needs approval.
    reason: Option<String>,
}

/// Result of a library edit: `applied` with the object when the change took
/// effect, or the pending `changeRequest` when it needs approval.
#[derive(SimpleObject)]
pub struct TagGroupPayload {
    /// True when the change took effect now.
    applied: bool,
    /// The group as it now is, when applied.
    tag_group: Option<TagGroup>,
    /// The request waiting for approval, when not applied.
    change_request: Option<ChangeRequest>,
}

impl TagGroupPayload {
    pub(crate) fn new(applied: bool, tag_group: Option<TagGroup>, change_request: Option<ChangeRequest>) -> Self {
        Self { applied, tag_group, change_request }
    }
}

/// A new enterprise tag.
#[derive(InputObject)]
pub struct CreateTagInput {
    /// The group the tag joins.
    group_id: ID,
    /// The tag's name, unique in the library layer.
    name: String,
    /// What the tag means.
    description: Option<String>,
    /// Synonyms (近义词).
    #[graphql(default)]
    aliases: Vec<String>,
    /// An active tag of a higher layer this tag rolls up to.
    canonical_tag_id: Option<ID>,
    /// Assignments expire this many seconds after tagging.
    ttl_seconds: Option<i64>,
    /// Why: shown to approvers when the new tag needs approval.
    reason: Option<String>,
}

/// Result of a library edit: `applied` with the tag when the change took
/// effect, or the pending `changeRequest` when it needs approval.
#[derive(SimpleObject)]
pub struct TagPayload {
    /// True when the change took effect now.
    applied: bool,
    /// The tag as it now is, when applied.
    tag: Option<Tag>,
    /// The request waiting for approval, when not applied.
    change_request: Option<ChangeRequest>,
}

impl TagPayload {
    pub(crate) fn new(applied: bool, tag: Option<Tag>, change_request: Option<ChangeRequest>) -> Self {
        Self { applied, tag, change_request }
    }
}

/// A new personal tag.
#[derive(InputObject)]
pub struct CreatePersonalTagInput {
    /// The tag's name, unique among the caller's personal tags.
    name: String,
    /// What the tag means to the caller.
    description: Option<String>,
}

/// Tags to put on customers.
#[derive(InputObject)]
pub struct TagCustomersInput {
    /// The customers (in the caller's scope).
    customer_ids: Vec<ID>,
    /// The tags (the caller may use them).
    tag_ids: Vec<ID>,
    /// Overrides the tags' own TTL.
    expires_at: Option<DateTime>,
    /// A reference to what prompted the change (a ticket, a campaign).
    source_ref: Option<String>,
    /// Above the bulk threshold, run the call as a background job instead
    /// (`job` in the payload; see `bulkTag`), with no upper limit but the
    /// job's.
    #[graphql(default)]
    as_job: bool,
}

/// Tags to take off customers.
#[derive(InputObject)]
pub struct UntagCustomersInput {
    /// The customers (in the caller's scope).
    customer_ids: Vec<ID>,
    /// The tags (the caller may use them).
    tag_ids: Vec<ID>,
    /// Above the bulk threshold, run the call as a background job instead.
    #[graphql(default)]
    as_job: bool,
}

/// What a tagging call changed. A call above the bulk threshold by a caller
/// without `customer_tag:bulk` is not applied (`applied: false`): it
/// becomes a `changeRequest`, and the counts say what it would change.
#[derive(SimpleObject)]
pub struct TaggingPayload {
    /// True when the change took effect now.
    applied: bool,
    /// The request waiting for approval, when not applied.
    change_request: Option<ChangeRequest>,
    /// The customers as they now are (empty when not applied).
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    customers: Vec<Customer>,
    /// Assignments added.
    added: u32,
    /// Assignments removed (by untagging, or replaced in an exclusive group).
    removed: u32,
    /// Requested changes that were already in place.
    unchanged: u32,
    /// Requested changes a bulk run left out because somebody else changed
    /// those customers' tags of that group after the call began (their edit stays).
    kept: u32,
    /// The background job the call became (`asJob` above the bulk threshold).
    job: Option<Job>,
}

impl From<TaggingResult> for TaggingPayload {
    fn from(r: TaggingResult) -> Self {
        let o = r.outcome;
        Self {
            applied: r.applied,
            change_request: r.change_request.map(ChangeRequest),
            customers: if r.applied { o.customers.into_iter().map(Customer).collect() } else { Vec::new() },
            added: o.added,
            removed: o.removed,
            unchanged: o.unchanged,
            kept: o.kept,
            job: None,
        }
    }
}

/// Brings this instance's segment index up to date after a write, so the
/// writer sees its own change at once. A failure only delays it until the
/// follower's next round; the write itself has committed.
pub(crate) async fn caught_up(ctx: &Context<'_>) {
    let state = ctx.data_unchecked::<AppState>();
    if let Err(err) = state.index.catch_up(&state.db).await {
        tracing::warn!(error = %err, "segment index catch-up failed");
    }
}

/// A tagging call turned into a bulk job (`asJob`): the payload names the
/// job, which applies nothing yet.
async fn as_job(ctx: &Context<'_>, bulk: BulkTagging) -> Result<TaggingPayload> {
    let env = env(ctx);
    let tags: Vec<TagId> = bulk.tag_ids.iter().map(|t| TagId(*t)).collect();
    let (add, remove) = if bulk.op == BulkOp::Add { (tags, Vec::new()) } else { (Vec::new(), tags) };
    let request = jobs::BulkTagRequest {
        customers: jobs::Customers::Ids(bulk.customer_ids.iter().map(|c| CustomerId(*c)).collect()),
        add,
        remove,
        reason: Reason::parse(bulk.source_ref.as_deref(), "sourceRef")?,
    };
    let index = &ctx.data_unchecked::<AppState>().index;
    let job = jobs::submit_bulk_tag(env.db, index, env.principal, env.limits, request).await?;
    Ok(TaggingPayload {
        applied: false,
        change_request: None,
        customers: Vec::new(),
        added: 0,
        removed: 0,
        unchanged: 0,
        kept: 0,
        job: Some(Job(job)),
    })
}

#[derive(Default)]
pub struct TagMutation;

#[Object]
impl TagMutation {
    /// Creates a tag group: at once, or as a change request when the
    /// policy asks for approval.
    async fn create_tag_group(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The new group.")] input: CreateTagGroupInput,
    ) -> Result<TagGroupPayload> {
        let org_unit = OrgUnitId::parse(&input.org_unit_id, "orgUnitId")?;
        // Names, class and pattern are checked where the edit applies.
        let spec = NewGroupSpec {
            name: input.name,
            description: input.description.unwrap_or_default(),
            category: input.category,
            visibility_class: input.visibility_class,
            exclusive: input.exclusive,
            naming_pattern: input.naming_pattern,
        };
        let edit = LibraryEdit::CreateTagGroup { org_unit_id: org_unit, group: spec };
        let reason = Reason::parse(input.reason.as_deref(), "reason")?;
        let outcome = submit(ctx, edit, EditContext { expected: Default::default(), reason }).await?;
        Ok(TagGroupPayload::new(
            outcome.applied,
            outcome.group.map(TagGroup),
            outcome.change_request.map(ChangeRequest),
        ))
    }

    /// Creates a tag: at once, or as a change request when the policy asks
    /// for approval.
    async fn create_tag(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The new tag.")] input: CreateTagInput,
    ) -> Result<TagPayload> {
        let group = TagGroupId::parse(&input.group_id, "groupId")?;
        // Name, aliases and the rest are checked where the edit applies.
        let spec = NewTagSpec {
            name: input.name,
            description: input.description.unwrap_or_default(),
            aliases: input.aliases,
            canonical_tag_id: input.canonical_tag_id.map(|id| TagId::parse(&id, "canonicalTagId")).transpose()?,
            ttl_seconds: input.ttl_seconds,
        };
        let edit = LibraryEdit::CreateTag { group_id: group, tag: spec };
        let reason = Reason::parse(input.reason.as_deref(), "reason")?;
        let outcome = submit(ctx, edit, EditContext { expected: Default::default(), reason }).await?;
        Ok(tag_payload(outcome))
    }

    /// Creates a personal tag, seen and used only by the caller.
    async fn create_personal_tag(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The new personal tag.")] input: CreatePersonalTagInput,
    ) -> Result<TagPayload> {
        let env = env(ctx);
        let name = TagName::parse(&input.name, "name")?;
        let description = Description::parse(input.description.as_deref(), "description")?;
        let tag = tag_library::create_personal_tag(env.db, env.principal, name, description).await?;
        Ok(TagPayload::new(true, Some(Tag(tag)), None))
    }

    /// Adds tags to customers: idempotent, all or nothing. Above the bulk
    /// threshold: runs under modification locks, or becomes a change
    /// request (see `TaggingPayload`).
    async fn tag_customers(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The customers and the tags.")] input: TagCustomersInput,
    ) -> Result<TaggingPayload> {
        let env = env(ctx);
        let bulk = BulkTagging {
            op: BulkOp::Add,
            customer_ids: parse_ids(&input.customer_ids, "customerIds", CustomerId::parse)?
                .into_iter()
                .map(|c| c.0)
                .collect(),
            tag_ids: parse_ids(&input.tag_ids, "tagIds", TagId::parse)?.into_iter().map(|t| t.0).collect(),
            expires_at: input.expires_at.map(|t| t.0),
            source_ref: input.source_ref,
        };
        if input.as_job && bulk.customer_ids.len() > env.limits.bulk_threshold {
            if bulk.expires_at.is_some() {
                return Err(AppError::validation("expiresAt", "a job uses the tags' own TTL; leave it out").into());
            }
            return as_job(ctx, bulk).await;
        }
        let result = tagging::tag_or_request(env.db, env.principal, env.limits, bulk).await?;
        caught_up(ctx).await;
        Ok(result.into())
    }

    /// Removes tags from customers: idempotent, all or nothing; bulk calls
    /// as `tagCustomers`.
    async fn untag_customers(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The customers and the tags.")] input: UntagCustomersInput,
    ) -> Result<TaggingPayload> {
        let env = env(ctx);
        let bulk = BulkTagging {
            op: BulkOp::Remove,
            customer_ids: parse_ids(&input.customer_ids, "customerIds", CustomerId::parse)?
                .into_iter()
                .map(|c| c.0)
                .collect(),
            tag_ids: parse_ids(&input.tag_ids, "tagIds", TagId::parse)?.into_iter().map(|t| t.0).collect(),
            expires_at: None,
            source_ref: None,
        };
        if input.as_job && bulk.customer_ids.len() > env.limits.bulk_threshold {
            return as_job(ctx, bulk).await;
        }
        let result = tagging::tag_or_request(env.db, env.principal, env.limits, bulk).await?;
        caught_up(ctx).await;
        Ok(result.into())
    }
}
