//! Governance of the library: edits with versions (and their history),
//! change requests and their decisions, and modification locks.

use async_graphql::{ComplexObject, Context, ID, InputObject, Json, MaybeUndefined, Object, Result, SimpleObject};
use entity::{
    change_request,
    enums::{ChangeRequestStatus, TagCategory},
    modification_lock,
};
use serde_json::Value;

use super::customer::patch;
use super::loaders::{GroupById, TagById};
use super::org::{OrgUnit, Staff, org_unit, staff_by_id};
use super::tag::{Tag, TagGroup, TagGroupPayload, TagPayload, caught_up};
use super::{DateTime, PageInfo, env, page_args};
use crate::domain::{
    ChangeRequestId, CustomerId, LockId, ObjectKey, OrgUnitId, Reason, StaffId, TagGroupId, TagId, parse_ids,
};
use crate::service::governance::approval;
use crate::service::governance::locks::{self, DEFAULT_LOCK_SECONDS, LockRequest};
use crate::service::governance::requests::{self, RequestFilter};
use crate::service::library::{self, EditContext, EditOutcome, GroupChanges, LibraryEdit, TagChanges, VersionEntry};
use crate::service::tag_library;
use crate::state::AppState;

/// A library edit or bulk tagging waiting for (or past) a decision.
pub struct ChangeRequest(pub change_request::Model);

/// A library edit or bulk tagging waiting for (or past) a decision.
#[Object]
impl ChangeRequest {
    /// Opaque global id (`node(id)` fetches the request again).
    pub async fn id(&self) -> ID {
        ChangeRequestId(self.0.id).into()
    }
    /// `tag.update`, `tag.merge`, `tag_group.update`, `customer.tag`, …
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    /// Where the request stands.
    async fn status(&self) -> ChangeRequestStatus {
        self.0.status
    }
    /// The intended change, as it will be applied; tags the caller may not
    /// see are left out, ids included.
    async fn change(&self, ctx: &Context<'_>) -> Result<Json<Value>> {
        let env = env(ctx);
        Ok(Json(requests::change_as_seen(env.db, env.principal, &self.0).await?))
    }
    /// What approving would change now, field by field (current value →
    /// proposed value), worked out by applying the edit in a transaction
    /// that is rolled back. Empty for bulk tagging and decided requests;
    /// `CONFLICT` when the target moved since (approving would mark the
    /// request STALE).
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    async fn diff(&self, ctx: &Context<'_>) -> Result<Vec<FieldChange>> {
        let env = env(ctx);
        Ok(field_changes(approval::preview(env.db, &self.0).await?))
    }

    /// For a rule's creation, edit or enabling: the rule's dry run over
    /// the 30 days before the request was filed (counted over the
    /// customers its requester reads; a scheduled rule's daily runs of
    /// those days); none for other requests.
    async fn rule_dry_run(&self) -> Option<super::rule_dryrun::RuleDryRun> {
        crate::service::rules::propose::dry_run_of(&self.0).map(super::rule_dryrun::RuleDryRun)
    }
    /// The rule the request is about, if any (and readable): none yet for
    /// a rule to be created.
    async fn rule(&self, ctx: &Context<'_>) -> Result<Option<super::rules::Rule>> {
        let ("RULE", Some(id)) = (self.0.target_kind.as_str(), self.0.target_id) else { return Ok(None) };
        let env = env(ctx);
        match crate::service::rules::store::find_rule(env.db, env.principal, crate::domain::RuleId(id)).await {
            Ok(row) => Ok(Some(super::rules::Rule(row))),
            Err(crate::error::AppError::NotFound { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }
    /// The versions of the touched objects the request was made against;
    /// approval fails (and marks the request STALE) if any moved.
    async fn base_versions(&self) -> Json<Value> {
        Json(self.0.base_versions.clone())
    }
    /// The tag the request is about, if any (and visible).
    async fn tag(&self, ctx: &Context<'_>) -> Result<Option<Tag>> {
        match (self.0.target_kind.as_str(), self.0.target_id) {
            ("TAG", Some(id)) => Ok(env(ctx).loaders.load_one(TagById(id)).await?.map(Tag)),
            _ => Ok(None),
        }
    }
    /// The tag group the request is about, if any (and visible).
    async fn tag_group(&self, ctx: &Context<'_>) -> Result<Option<TagGroup>> {
        match (self.0.target_kind.as_str(), self.0.target_id) {
            ("TAG_GROUP", Some(id)) => {
                let env = env(ctx);
                let group = env.loaders.load_one(GroupById(id)).await?;
                Ok(group.filter(|g| tag_library::group_visible(env.principal, g, None)).map(TagGroup))
            }
            _ => Ok(None),
        }
    }
    /// The unit whose approvers decide (they hold `change_request:approve`
    /// here or above).
    async fn scope(&self, ctx: &Context<'_>) -> Result<OrgUnit> {
        org_unit(ctx, self.0.org_unit_id)
    }
    /// Who filed it.
    async fn requester(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, Some(self.0.requester_staff_id)).await
    }
    /// The requester's reason.
    async fn reason(&self) -> &str {
        &self.0.reason
    }
    /// When it was filed.
    async fn created_at(&self) -> DateTime {
        self.0.created_at.into()
    }
    /// Who decided it.
    async fn decided_by(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, self.0.decided_by).await
    }
    /// When it was decided (or went stale, or was withdrawn).
    async fn decided_at(&self) -> Option<DateTime> {
        self.0.decided_at.map(DateTime)
    }
    /// The approver's comment or the rejection's reason.
    async fn decision_comment(&self) -> Option<&str> {
        self.0.decision_comment.as_deref()
    }
}

/// A change request in a page, with its cursor.
#[derive(SimpleObject)]
pub struct ChangeRequestEdge {
    /// Pass it as `after` or `before` to page from here.
    cursor: String,
    /// The request.
    node: ChangeRequest,
}

/// A page of change requests, newest first.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct ChangeRequestConnection {
    /// The requests of the page, newest first.
    edges: Vec<ChangeRequestEdge>,
    /// Where the page sits in the list.
    page_info: PageInfo,
    #[graphql(skip)]
    filter: RequestFilter,
}

#[ComplexObject]
impl ChangeRequestConnection {
    /// Requests matching the filter that the caller may see (all pages).
    async fn total_count(&self, ctx: &Context<'_>) -> Result<u64> {
        let env = env(ctx);
        Ok(requests::count(env.db, env.principal, &self.filter).await?)
    }
}

/// One field of a version that differs from the version before.
#[derive(SimpleObject)]
pub struct FieldChange {
    /// The field.
    field: String,
    /// Its value before.
    from: Json<Value>,
    /// Its value after.
    to: Json<Value>,
}

fn field_changes(changes: Vec<(String, Value, Value)>) -> Vec<FieldChange> {
    changes.into_iter().map(|(field, from, to)| FieldChange { field, from: Json(from), to: Json(to) }).collect()
}

/// One version of a tag or tag group.
pub struct LibraryVersion(VersionEntry);

/// One version of a tag or tag group.
#[Object]
impl LibraryVersion {
    /// The version number (1 for the first).
    async fn version(&self) -> i32 {
        self.0.version
    }
    /// `create`, `update`, `archive`, `restore`, `merge`, `rollback`.
    async fn action(&self) -> &str {
        &self.0.action
    }
    /// The whole state after the change.
    async fn state(&self) -> Json<Value> {
        Json(self.0.state.clone())
    }
    /// What differs from the version before.
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    async fn changes(&self) -> Vec<FieldChange> {
        field_changes(self.0.changes.clone())
    }
    /// Who made the change (none for data older than versioning).
    async fn changed_by(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, self.0.changed_by).await
    }
    /// When the change was made.
    async fn changed_at(&self) -> DateTime {
        self.0.changed_at.into()
    }
    /// The approved request that made the change, if one did.
    async fn change_request_id(&self) -> Option<ID> {
        self.0.change_request_id.map(|id| ChangeRequestId(id).into())
    }
}

/// A modification lock (修改锁) on a tag group.
pub struct ModificationLock(pub modification_lock::Model);

/// A modification lock (修改锁) on a tag group.
#[Object]
impl ModificationLock {
    /// Opaque global id; pass it to `unlockTagGroup`.
    pub async fn id(&self) -> ID {
        LockId(self.0.id).into()
    }
    /// The locked group.
    async fn tag_group(&self, ctx: &Context<'_>) -> Result<Option<TagGroup>> {
        Ok(env(ctx).loaders.load_one(GroupById(self.0.group_id)).await?.map(TagGroup))
    }
    /// Who holds it.
    async fn holder(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, Some(self.0.holder_staff_id)).await
    }
    /// Why it was taken (shown to everybody it refuses).
    async fn reason(&self) -> &str {
        &self.0.reason
    }
    /// True when it covers every customer's tags of the group.
    async fn whole_group(&self) -> bool {
        self.0.whole_group
    }
    /// When it was taken.
    async fn acquired_at(&self) -> DateTime {
        self.0.acquired_at.into()
    }
    /// It stops holding then, released or not.
    async fn expires_at(&self) -> DateTime {
        self.0.expires_at.into()
    }
    /// When it was released, if it was.
    async fn released_at(&self) -> Option<DateTime> {
        self.0.released_at.map(DateTime)
    }
}

#[derive(Default)]
pub struct GovernanceQuery;

#[Object]
impl GovernanceQuery {
    /// Change requests the caller may see: its own, and those it may decide
    /// or audit. Newest first.
    #[allow(clippy::too_many_arguments)]
    #[graphql(complexity = "super::limits::page_cost(first.or(last), child_complexity)")]
    async fn change_requests(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only requests in this state.")] status: Option<ChangeRequestStatus>,
        #[graphql(desc = "Only requests decided at this unit or below.")] scope_id: Option<ID>,
        #[graphql(desc = "Only requests of this staff member.")] requester_id: Option<ID>,
        #[graphql(desc = "Page forward: this many requests after `after`.")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "Page backward: this many requests before `before`.")] last: Option<i32>,
        #[graphql(desc = "Page backward from this cursor.")] before: Option<String>,
    ) -> Result<ChangeRequestConnection> {
        let env = env(ctx);
        let filter = RequestFilter {
            status,
            scope: scope_id.map(|id| OrgUnitId::parse(&id, "scopeId")).transpose()?,
            requester: requester_id.map(|id| StaffId::parse(&id, "requesterId")).transpose()?,
        };
        let page = page_args(ctx, first, after, last, before)?;
        let page = requests::list(env.db, env.principal, &filter, &page).await?;
        let page_info = PageInfo::of(&page);
        Ok(ChangeRequestConnection {
            edges: page
                .items
                .into_iter()
                .map(|(cursor, r)| ChangeRequestEdge { cursor, node: ChangeRequest(r) })
                .collect(),
            page_info,
            filter,
        })
    }

    /// A change request the caller may see; `NOT_FOUND` otherwise.
    async fn change_request(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The request's id.")] id: ID,
    ) -> Result<ChangeRequest> {
        let env = env(ctx);
        let id = ChangeRequestId::parse(&id, "id")?;
        Ok(ChangeRequest(requests::find(env.db, env.principal, id).await?))
    }

    /// Every version of a tag, newest first, with what each changed.
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    async fn tag_history(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The tag's id.")] tag_id: ID,
    ) -> Result<Vec<LibraryVersion>> {
        let env = env(ctx);
        let id = TagId::parse(&tag_id, "tagId")?;
        Ok(library::tag_history(env.db, env.principal, id).await?.into_iter().map(LibraryVersion).collect())
    }

    /// Every version of a tag group, newest first, with what each changed.
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    async fn tag_group_history(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The group's id.")] group_id: ID,
    ) -> Result<Vec<LibraryVersion>> {
        let env = env(ctx);
        let id = TagGroupId::parse(&group_id, "groupId")?;
        Ok(library::group_history(env.db, env.principal, id).await?.into_iter().map(LibraryVersion).collect())
    }

    /// The modification locks in force on a tag group.
    #[graphql(complexity = "super::limits::list_cost(super::limits::SMALL_LIST, child_complexity)")]
    async fn modification_locks(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The group's id.")] group_id: ID,
    ) -> Result<Vec<ModificationLock>> {
        let env = env(ctx);
        let id = TagGroupId::parse(&group_id, "groupId")?;
        Ok(locks::active_locks(env.db, env.principal, id).await?.into_iter().map(ModificationLock).collect())
    }
}

fn parse_version(raw: i32, field: &str) -> Result<i32> {
    if raw < 1 {
        return Err(crate::error::AppError::validation(field, "versions start at 1").into());
    }
    Ok(raw)
}

/// An edit of a tag group; absent fields stay as they are.
#[derive(InputObject)]
pub struct UpdateTagGroupInput {
    /// The group's id.
    id: ID,
    /// The version you read; a newer one means somebody changed it since
    /// (`CONFLICT`).
    expected_version: i32,
    /// A new name.
    name: Option<String>,
    /// A new description.
    description: Option<String>,
    /// A new category.
    category: Option<TagCategory>,
    /// A new visibility class.
    visibility_class: Option<String>,
    /// Whether a customer may hold only one tag of the group.
    exclusive: Option<bool>,
    /// `null` removes the pattern.
    naming_pattern: MaybeUndefined<String>,
    /// Why: shown to approvers when the edit needs approval.
    reason: Option<String>,
}

/// An edit of a tag; absent fields stay as they are.
#[derive(InputObject)]
pub struct UpdateTagInput {
    /// The tag's id.
    id: ID,
    /// The version you read.
    expected_version: i32,
    /// A new name.
    name: Option<String>,
    /// A new description.
    description: Option<String>,
    /// The new synonyms (replacing the old ones).
    aliases: Option<Vec<String>>,
    /// `null` removes the canonical tag.
    canonical_tag_id: MaybeUndefined<ID>,
    /// `null` removes the TTL.
    ttl_seconds: MaybeUndefined<i64>,
    /// Moves the tag to this group (its holders must be in the group's
    /// library).
    group_id: Option<ID>,
    /// Why: shown to approvers when the edit needs approval.
    reason: Option<String>,
}

/// A tag to archive or restore.
#[derive(InputObject)]
pub struct TagStatusInput {
    /// The tag's id.
    id: ID,
    /// The version you read.
    expected_version: i32,
    /// Why: shown to approvers when the change needs approval.
    reason: Option<String>,
}

/// Two tags to merge: B into A.
#[derive(InputObject)]
pub struct MergeTagsInput {
    /// A: the tag that stays.
    target_tag_id: ID,
    /// The version of A you read.
    target_expected_version: i32,
    /// B: the tag merged into A; it becomes A's alias and is left MERGED.
    source_tag_id: ID,
    /// The version of B you read.
    source_expected_version: i32,
    /// Why: shown to approvers when the merge needs approval.
    reason: Option<String>,
}

/// A tag and the version to restore.
#[derive(InputObject)]
pub struct RollbackTagInput {
    /// The tag's id.
    id: ID,
    /// The version to restore.
    version: i32,
    /// The version you read (the current one).
    expected_version: i32,
    /// Why: shown to approvers when the rollback needs approval.
    reason: Option<String>,
}

/// A lock to take on a tag group.
#[derive(InputObject)]
pub struct LockTagGroupInput {
    /// The group to lock.
    group_id: ID,
    /// Leave out to lock every customer's tags of the group.
    customer_ids: Option<Vec<ID>>,
    /// Shown to everybody the lock refuses.
    reason: String,
    /// How long it holds at most (default 30 minutes, at most a day).
    duration_seconds: Option<i64>,
}

/// The change request.
#[derive(SimpleObject)]
pub struct ChangeRequestPayload {
    /// The request as it now is.
    change_request: ChangeRequest,
}

/// The result of approving: the request, and the objects as they now are.
#[derive(SimpleObject)]
pub struct ApprovalPayload {
    /// The request, now approved.
    change_request: ChangeRequest,
    /// The tag as it now is, for a tag edit.
    tag: Option<Tag>,
    /// The group as it now is, for a group edit.
    tag_group: Option<TagGroup>,
}

/// The lock.
#[derive(SimpleObject)]
pub struct ModificationLockPayload {
    /// The lock.
    lock: ModificationLock,
}

/// What the caller read of one object, and why it edits.
fn expected(key: ObjectKey, version: i32, reason: Option<&str>) -> Result<EditContext> {
    Ok(EditContext {
        expected: [(key, parse_version(version, "expectedVersion")?)].into(),
        reason: Reason::parse(reason, "reason")?,
    })
}

pub(super) fn tag_payload(outcome: EditOutcome) -> TagPayload {
    TagPayload::new(outcome.applied, outcome.tag.map(Tag), outcome.change_request.map(ChangeRequest))
}

/// Submits a library edit as the caller; catches the segment index up when
/// it applied.
pub(super) async fn submit(ctx: &Context<'_>, edit: LibraryEdit, edit_ctx: EditContext) -> Result<EditOutcome> {
    let env = env(ctx);
    let outcome = library::submit(env.db, env.principal, edit, edit_ctx).await?;
    if outcome.applied {
        caught_up(ctx).await;
    }
    Ok(outcome)
}

#[derive(Default)]
pub struct GovernanceMutation;

#[Object]
impl GovernanceMutation {
    /// Edits a tag group: applies at once or becomes a change request, as
    /// the policy decides.
    async fn update_tag_group(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The group, the version read, and the changes.")] input: UpdateTagGroupInput,
    ) -> Result<TagGroupPayload> {
        let id = TagGroupId::parse(&input.id, "id")?;
        let changes = GroupChanges {
            name: input.name,
            description: input.description,
            category: input.category,
            visibility_class: input.visibility_class,
            exclusive: input.exclusive,
            naming_pattern: patch(input.naming_pattern),
        };
        let edit_ctx = expected(ObjectKey::tag_group(id), input.expected_version, input.reason.as_deref())?;
        let outcome = submit(ctx, LibraryEdit::UpdateTagGroup { group_id: id, changes }, edit_ctx).await?;
        Ok(TagGroupPayload::new(
            outcome.applied,
            outcome.group.map(TagGroup),
            outcome.change_request.map(ChangeRequest),
        ))
    }

    /// Edits a tag (rename, description, aliases, canonical tag, TTL, move
    /// to another group).
    async fn update_tag(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The tag, the version read, and the changes.")] input: UpdateTagInput,
    ) -> Result<TagPayload> {
        let id = TagId::parse(&input.id, "id")?;
        let changes = TagChanges {
            name: input.name,
            description: input.description,
            aliases: input.aliases,
            canonical_tag_id: patch(input.canonical_tag_id)
                .map(|t| t.map(|t| TagId::parse(&t, "canonicalTagId")).transpose())
                .transpose()?,
            ttl_seconds: patch(input.ttl_seconds),
            group_id: input.group_id.map(|g| TagGroupId::parse(&g, "groupId")).transpose()?,
            status: None,
        };
        let edit_ctx = expected(ObjectKey::tag(id), input.expected_version, input.reason.as_deref())?;
        Ok(tag_payload(submit(ctx, LibraryEdit::UpdateTag { tag_id: id, changes }, edit_ctx).await?))
    }

    /// Archives a tag: it leaves every list and cannot be assigned; its
    /// assignments and history stay.
    async fn archive_tag(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The tag and the version read.")] input: TagStatusInput,
    ) -> Result<TagPayload> {
        let id = TagId::parse(&input.id, "id")?;
        let edit_ctx = expected(ObjectKey::tag(id), input.expected_version, input.reason.as_deref())?;
        Ok(tag_payload(submit(ctx, LibraryEdit::ArchiveTag { tag_id: id }, edit_ctx).await?))
    }

    /// Restores an archived tag.
    async fn restore_tag(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The tag and the version read.")] input: TagStatusInput,
    ) -> Result<TagPayload> {
        let id = TagId::parse(&input.id, "id")?;
        let edit_ctx = expected(ObjectKey::tag(id), input.expected_version, input.reason.as_deref())?;
        Ok(tag_payload(submit(ctx, LibraryEdit::RestoreTag { tag_id: id }, edit_ctx).await?))
    }

    /// Merges tag B into tag A: B's assignments move to A (a customer with
    /// both keeps one), B becomes an alias of A and is left MERGED.
    async fn merge_tags(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The two tags and the versions read.")] input: MergeTagsInput,
    ) -> Result<TagPayload> {
        let a = TagId::parse(&input.target_tag_id, "targetTagId")?;
        let b = TagId::parse(&input.source_tag_id, "sourceTagId")?;
        let edit_ctx = EditContext {
            expected: [
                (ObjectKey::tag(a), parse_version(input.target_expected_version, "targetExpectedVersion")?),
                (ObjectKey::tag(b), parse_version(input.source_expected_version, "sourceExpectedVersion")?),
            ]
            .into(),
            reason: Reason::parse(input.reason.as_deref(), "reason")?,
        };
        Ok(tag_payload(submit(ctx, LibraryEdit::MergeTags { target_id: a, source_id: b }, edit_ctx).await?))
    }

    /// Restores an earlier version of a tag (itself an edit: it may need
    /// approval).
    async fn rollback_tag(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The tag, the version to restore, and the version read.")] input: RollbackTagInput,
    ) -> Result<TagPayload> {
        let id = TagId::parse(&input.id, "id")?;
        let version = parse_version(input.version, "version")?;
        let edit_ctx = expected(ObjectKey::tag(id), input.expected_version, input.reason.as_deref())?;
        Ok(tag_payload(submit(ctx, LibraryEdit::RollbackTag { tag_id: id, version }, edit_ctx).await?))
    }

    /// Approves a pending request and applies its change atomically.
    async fn approve_change_request(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The request's id.")] id: ID,
        #[graphql(desc = "A comment kept with the decision.")] comment: Option<String>,
    ) -> Result<ApprovalPayload> {
        let env = env(ctx);
        let state = ctx.data_unchecked::<AppState>();
        let id = ChangeRequestId::parse(&id, "id")?;
        let approval =
            approval::approve(env.db, &state.authz, env.principal, env.limits, id, comment.as_deref()).await?;
        caught_up(ctx).await;
        Ok(ApprovalPayload {
            change_request: ChangeRequest(approval.request),
            tag: approval.outcome.tag.map(Tag),
            tag_group: approval.outcome.group.map(TagGroup),
        })
    }

    /// Rejects a pending request; the reason is required.
    async fn reject_change_request(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The request's id.")] id: ID,
        #[graphql(desc = "Why it is rejected (shown to the requester).")] reason: String,
    ) -> Result<ChangeRequestPayload> {
        let env = env(ctx);
        let id = ChangeRequestId::parse(&id, "id")?;
        let request = approval::reject(env.db, env.principal, id, Some(&reason)).await?;
        Ok(ChangeRequestPayload { change_request: ChangeRequest(request) })
    }

    /// Withdraws one's own pending request.
    async fn cancel_change_request(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The request's id.")] id: ID,
    ) -> Result<ChangeRequestPayload> {
        let env = env(ctx);
        let id = ChangeRequestId::parse(&id, "id")?;
        let request = approval::cancel(env.db, env.principal, id).await?;
        Ok(ChangeRequestPayload { change_request: ChangeRequest(request) })
    }

    /// Takes a modification lock by hand: until it is released or expires,
    /// only the holder changes the covered customers' tags of the group.
    async fn lock_tag_group(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The group, the customers, the reason and the duration.")] input: LockTagGroupInput,
    ) -> Result<ModificationLockPayload> {
        let env = env(ctx);
        let req = LockRequest {
            group: TagGroupId::parse(&input.group_id, "groupId")?,
            customers: input.customer_ids.map(|ids| parse_ids(&ids, "customerIds", CustomerId::parse)).transpose()?,
            reason: input.reason,
            seconds: input.duration_seconds.unwrap_or(DEFAULT_LOCK_SECONDS),
        };
        Ok(ModificationLockPayload { lock: ModificationLock(locks::lock_group(env.db, env.principal, req).await?) })
    }

    /// Releases a lock: its holder, or anybody who may lock the group.
    async fn unlock_tag_group(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The lock's id.")] lock_id: ID,
    ) -> Result<ModificationLockPayload> {
        let env = env(ctx);
        let id = LockId::parse(&lock_id, "lockId")?;
        let lock = locks::unlock(env.db, env.principal, id).await?;
        // The rule actions the lock deferred apply now (should that fail,
        // the scheduler's next round applies them).
        if let Err(err) = crate::service::rules::deferred::apply_pending(env.db, env.limits, chrono::Utc::now()).await {
            tracing::warn!(error = ?err, lock = lock.id, "deferred rule actions left for the next scheduler round");
        }
        // Deferred rule actions may have applied: seen by segments at once.
        super::tag::caught_up(ctx).await;
        Ok(ModificationLockPayload { lock: ModificationLock(lock) })
    }
}
