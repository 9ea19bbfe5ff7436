//! Edits of the tag library (SPEC §4, §6): updating groups and tags,
//! archiving, restoring, merging and rolling back — each checked against
//! the version the caller read, each stored as a new version of its
//! object, and each either applied at once or turned into a change request,
//! as the policy decides for the caller and the layers the edit touches.
//!
//! * `tag_library:write` in every touched layer: the edit applies.
//! * otherwise `tag_library:propose` in a unit at or below the edit's scope
//!   (the highest touched layer): the edit is checked (applied in a
//!   transaction that is rolled back) and stored as a change request.
//! * otherwise `FORBIDDEN`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use entity::{
    change_request, customer, customer_tag,
    enums::{TagCategory, TagOp, TagSource, TagStatus},
    library_version, tag, tag_event, tag_group,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use super::audit::{self, AuditEntry};
use super::change_request::NewRequest;
use super::tag_library::{find_group, find_tag};
use crate::authz::{Action, OrgTree, Principal};
use crate::domain::{Aliases, Description, NamingPattern, StaffId, TagGroupId, TagId, TagName, VisibilityClass};
use crate::error::{AppError, AppResult, is_unique_violation};
use crate::store::event_log::{EventBy, insert_events, serialize_event_log};

/// `Some(None)` for an explicit `null` (clear the field), `None` when the
/// field is absent (keep it).
fn double_option<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Changes to a tag group; absent fields are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<TagCategory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "double_option")]
    pub naming_pattern: Option<Option<String>>,
}

/// Changes to a tag; absent fields are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TagChanges {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "double_option")]
    pub canonical_tag_id: Option<Option<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "double_option")]
    pub ttl_seconds: Option<Option<i64>>,
    /// Moves the tag to another group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<i64>,
    /// Only rollbacks set the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TagStatus>,
}

/// One edit of the library, as applied directly or stored in a change
/// request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "edit", rename_all = "camelCase")]
pub enum LibraryEdit {
    #[serde(rename_all = "camelCase")]
    UpdateTagGroup { group_id: i64, changes: GroupChanges },
    #[serde(rename_all = "camelCase")]
    UpdateTag { tag_id: i64, changes: TagChanges },
    #[serde(rename_all = "camelCase")]
    ArchiveTag { tag_id: i64 },
    #[serde(rename_all = "camelCase")]
    RestoreTag { tag_id: i64 },
    /// Merges `source_id` (B) into `target_id` (A).
    #[serde(rename_all = "camelCase")]
    MergeTags { target_id: i64, source_id: i64 },
    #[serde(rename_all = "camelCase")]
    RollbackTag { tag_id: i64, version: i32 },
    /// A new enterprise tag in a group.
    #[serde(rename_all = "camelCase")]
    CreateTag { group_id: i64, tag: NewTagSpec },
    /// A new tag group in a library layer.
    #[serde(rename_all = "camelCase")]
    CreateTagGroup { org_unit_id: i64, group: NewGroupSpec },
}

/// The group a `CreateTagGroup` edit creates.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NewGroupSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub category: TagCategory,
    pub visibility_class: String,
    #[serde(default)]
    pub exclusive: bool,
    #[serde(default)]
    pub naming_pattern: Option<String>,
}

/// The tag a `CreateTag` edit creates, as checked when it was submitted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NewTagSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub canonical_tag_id: Option<i64>,
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

impl LibraryEdit {
    /// The audit action and change-request kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UpdateTagGroup { .. } => "tag_group.update",
            Self::UpdateTag { .. } => "tag.update",
            Self::ArchiveTag { .. } => "tag.archive",
            Self::RestoreTag { .. } => "tag.restore",
            Self::MergeTags { .. } => "tag.merge",
            Self::RollbackTag { .. } => "tag.rollback",
            Self::CreateTag { .. } => "tag.create",
            Self::CreateTagGroup { .. } => "tag_group.create",
        }
    }

    /// The existing object the edit changes (none for creations).
    fn edited(&self) -> Option<(ObjectKind, i64)> {
        match self {
            Self::UpdateTagGroup { group_id, .. } => Some((ObjectKind::TagGroup, *group_id)),
            Self::UpdateTag { tag_id, .. }
            | Self::ArchiveTag { tag_id }
            | Self::RestoreTag { tag_id }
            | Self::RollbackTag { tag_id, .. } => Some((ObjectKind::Tag, *tag_id)),
            Self::MergeTags { target_id, .. } => Some((ObjectKind::Tag, *target_id)),
            Self::CreateTag { .. } | Self::CreateTagGroup { .. } => None,
        }
    }

    /// What a change request for the edit is about: the edited object, or
    /// the group a new tag goes to (nothing yet for a new group).
    fn request_target(&self) -> (ObjectKind, Option<i64>) {
        match (self, self.edited()) {
            (_, Some((kind, id))) => (kind, Some(id)),
            (Self::CreateTag { group_id, .. }, None) => (ObjectKind::TagGroup, Some(*group_id)),
            (_, None) => (ObjectKind::TagGroup, None),
        }
    }
}

/// The kinds of versioned objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectKind {
    Tag,
    TagGroup,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tag => "TAG",
            Self::TagGroup => "TAG_GROUP",
        }
    }

    fn key(self, id: i64) -> String {
        match self {
            Self::Tag => format!("tag:{id}"),
            Self::TagGroup => format!("tag_group:{id}"),
        }
    }
}

/// Versions of the objects an edit touches, by key (`tag:5`).
pub type Versions = BTreeMap<String, i32>;

/// The full state of a tag, as stored in each of its versions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TagState {
    pub group_id: Option<i64>,
    pub name: String,
    pub description: String,
    pub aliases: Vec<String>,
    pub canonical_tag_id: Option<i64>,
    pub ttl_seconds: Option<i64>,
    pub status: TagStatus,
    pub merged_into_id: Option<i64>,
}

impl From<&tag::Model> for TagState {
    fn from(t: &tag::Model) -> Self {
        Self {
            group_id: t.group_id,
            name: t.name.clone(),
            description: t.description.clone(),
            aliases: aliases_of(t),
            canonical_tag_id: t.canonical_tag_id,
            ttl_seconds: t.ttl_seconds,
            status: t.status,
            merged_into_id: t.merged_into_id,
        }
    }
}

/// The full state of a tag group, as stored in each of its versions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupState {
    pub org_unit_id: i64,
    pub name: String,
    pub description: String,
    pub category: TagCategory,
    pub visibility_class: String,
    pub exclusive: bool,
    pub naming_pattern: Option<String>,
}

impl From<&tag_group::Model> for GroupState {
    fn from(g: &tag_group::Model) -> Self {
        Self {
            org_unit_id: g.org_unit_id,
            name: g.name.clone(),
            description: g.description.clone(),
            category: g.category,
            visibility_class: g.visibility_class.clone(),
            exclusive: g.exclusive,
            naming_pattern: g.naming_pattern.clone(),
        }
    }
}

pub use crate::domain::tag::aliases_of;

/// What an edit did: applied (with the objects as they now are) or turned
/// into a pending change request.
#[derive(Debug, Clone, Default)]
pub struct EditOutcome {
    pub applied: bool,
    pub tag: Option<tag::Model>,
    pub group: Option<tag_group::Model>,
    pub change_request: Option<change_request::Model>,
}

/// What the caller read and why it edits.
#[derive(Debug, Clone, Default)]
pub struct EditContext {
    /// The versions the caller read, by key; each must still be current.
    pub expected: Versions,
    pub reason: Option<String>,
}

/// What an edit touches: the current versions and the library layers.
struct Plan {
    versions: Versions,
    units: BTreeSet<i64>,
}

/// Loads what the edit touches (all of it visible to the caller) and the
/// layers it writes to.
async fn plan(db: &impl ConnectionTrait, principal: &Principal, edit: &LibraryEdit) -> AppResult<Plan> {
    let mut versions = Versions::new();
    let mut units = BTreeSet::new();
    let mut add_tag = |t: &tag::Model, g: &tag_group::Model| {
        versions.insert(ObjectKind::Tag.key(t.id), t.version);
        units.insert(g.org_unit_id);
    };
    match edit {
        LibraryEdit::UpdateTagGroup { group_id, .. } => {
            let group = find_group(db, principal, TagGroupId(*group_id)).await?;
            versions.insert(ObjectKind::TagGroup.key(group.id), group.version);
            units.insert(group.org_unit_id);
        }
        LibraryEdit::UpdateTag { tag_id, changes } => {
            let (t, g) = enterprise_tag(db, principal, *tag_id).await?;
            add_tag(&t, &g);
            if let Some(to) = changes.group_id.filter(|to| Some(*to) != t.group_id) {
                let to = find_group(db, principal, TagGroupId(to)).await?;
                units.insert(to.org_unit_id);
            }
        }
        LibraryEdit::ArchiveTag { tag_id } | LibraryEdit::RestoreTag { tag_id } => {
            let (t, g) = enterprise_tag(db, principal, *tag_id).await?;
            add_tag(&t, &g);
        }
        LibraryEdit::RollbackTag { tag_id, version } => {
            let (t, g) = enterprise_tag(db, principal, *tag_id).await?;
            add_tag(&t, &g);
            let state = stored_tag_state(db, &t, *version).await?;
            if let Some(to) = state.group_id.filter(|to| Some(*to) != t.group_id) {
                let to = find_group(db, principal, TagGroupId(to)).await?;
                units.insert(to.org_unit_id);
            }
        }
        LibraryEdit::MergeTags { target_id, source_id } => {
            let (a, ga) = enterprise_tag(db, principal, *target_id).await?;
            let (b, gb) = enterprise_tag(db, principal, *source_id).await?;
            add_tag(&a, &ga);
            add_tag(&b, &gb);
        }
        LibraryEdit::CreateTagGroup { org_unit_id, .. } => {
            if !principal.may_read_library_layer(*org_unit_id) {
                return Err(AppError::not_found("org unit", org_unit_id));
            }
            units.insert(*org_unit_id);
        }
        LibraryEdit::CreateTag { group_id, tag } => {
            let group = find_group(db, principal, TagGroupId(*group_id)).await?;
            units.insert(group.org_unit_id);
            if let Some(canonical) = tag.canonical_tag_id {
                // NOT_FOUND, like a missing tag, when the caller cannot see it.
                find_tag(db, principal, TagId(canonical)).await?;
            }
        }
    }
    Ok(Plan { versions, units })
}

/// An enterprise tag the caller may see, with its group.
async fn enterprise_tag(
    db: &impl ConnectionTrait,
    principal: &Principal,
    id: i64,
) -> AppResult<(tag::Model, tag_group::Model)> {
    let t = find_tag(db, principal, TagId(id)).await?;
    let Some(group_id) = t.group_id else {
        return Err(AppError::validation("tagId", "personal tags are not part of the library; edit them directly"));
    };
    let g = tag_group::Entity::find_by_id(group_id).one(db).await?.ok_or_else(|| AppError::not_found("tag", id))?;
    Ok((t, g))
}

fn check_expected(current: &Versions, expected: &Versions) -> AppResult<()> {
    for (key, read) in expected {
        match current.get(key) {
            None => return Err(AppError::validation("expectedVersion", format!("{key} is not part of this edit"))),
            Some(now) if now != read => {
                return Err(AppError::Conflict(format!(
                    "{key} is at version {now}, you read version {read}; reload and retry"
                )));
            }
            Some(_) => {}
        }
    }
    for key in current.keys() {
        if !expected.contains_key(key) {
            return Err(AppError::validation("expectedVersion", format!("give the version of {key} you read")));
        }
    }
    Ok(())
}

/// The unit whose approvers decide: the highest layer the edit touches
/// (the lowest common ancestor of the touched layers).
fn scope_of(principal: &Principal, units: &BTreeSet<i64>) -> AppResult<i64> {
    principal
        .org
        .common_ancestor(units.iter().copied())
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("touched layers share no ancestor")))
}

/// True when the caller may propose edits to the library of `scope`: it
/// holds `tag_library:propose` in that unit or in a unit below it.
fn may_propose(principal: &Principal, scope: i64) -> bool {
    principal.scope(Action::TagLibraryPropose).unit_ids().any(|u| principal.org.is_within(u, scope))
}

fn reason_of(raw: Option<&str>) -> AppResult<String> {
    let reason = raw.map(str::trim).unwrap_or_default();
    if reason.chars().count() > 500 {
        return Err(AppError::validation("reason", "must be at most 500 characters"));
    }
    Ok(reason.to_owned())
}

/// Applies a library edit or files it as a change request, as the policy
/// decides for the caller.
///
/// # Errors
/// `NOT_FOUND` for invisible objects, `CONFLICT` when an object moved past
/// the version the caller read (or a name clashes), `VALIDATION` for edits
/// that break the library's rules, `FORBIDDEN` when the caller may neither
/// edit nor propose.
#[tracing::instrument(skip(db, principal, ctx), fields(staff = principal.staff.id, edit = edit.kind()))]
pub async fn submit(
    db: &DatabaseConnection,
    principal: &Principal,
    edit: LibraryEdit,
    ctx: EditContext,
) -> AppResult<EditOutcome> {
    let reason = reason_of(ctx.reason.as_deref())?;
    let plan = plan(db, principal, &edit).await?;
    check_expected(&plan.versions, &ctx.expected)?;
    let scope = scope_of(principal, &plan.units)?;
    let direct = plan.units.iter().all(|u| principal.may(Action::TagLibraryWrite, *u));
    if direct {
        let txn = db.begin().await?;
        let outcome = apply(&txn, principal.staff_id(), &edit, &plan.versions, None, &reason).await?;
        txn.commit().await?;
        return Ok(outcome);
    }
    if !may_propose(principal, scope) {
        return Err(AppError::Forbidden(format!(
            "you may not edit the tag library of {}",
            principal.org.get(scope).map_or_else(|| scope.to_string(), |u| u.name.clone())
        )));
    }
    // Check the edit as it would apply now, then throw the result away.
    {
        let txn = db.begin().await?;
        apply_unordered(&txn, principal.staff_id(), &edit, &plan.versions, None, &reason).await?;
        txn.rollback().await?;
    }
    let (target_kind, target_id) = edit.request_target();
    let txn = db.begin().await?;
    let new = NewRequest {
        kind: edit.kind(),
        target_kind: target_kind.as_str(),
        target_id,
        base_versions: json!(plan.versions),
        payload: serde_json::to_value(&edit).map_err(AppError::internal)?,
        scope,
        reason,
    };
    let request = super::change_request::file(&txn, principal, new).await?;
    txn.commit().await?;
    Ok(EditOutcome { applied: false, change_request: Some(request), ..Default::default() })
}

/// True when every object of `base` is still at that version.
///
/// # Errors
/// Database errors.
pub async fn still_current(txn: &impl ConnectionTrait, base: &Versions) -> AppResult<bool> {
    for (key, version) in base {
        let current = match key.split_once(':') {
            Some(("tag", id)) => {
                let id: i64 = id.parse().map_err(AppError::internal)?;
                tag::Entity::find_by_id(id).one(txn).await?.map(|t| t.version)
            }
            Some(("tag_group", id)) => {
                let id: i64 = id.parse().map_err(AppError::internal)?;
                tag_group::Entity::find_by_id(id).one(txn).await?.map(|g| g.version)
            }
            _ => return Err(AppError::internal(anyhow::anyhow!("unknown versioned object {key}"))),
        };
        if current != Some(*version) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Applies an edit inside `txn`: every object must still be at its `base`
/// version. Writes the new versions and the audit row.
///
/// # Errors
/// As [`submit`].
pub async fn apply(
    txn: &DatabaseTransaction,
    actor: StaffId,
    edit: &LibraryEdit,
    base: &Versions,
    change_request_id: Option<i64>,
    reason: &str,
) -> AppResult<EditOutcome> {
    // Version rows commit in id order, like tag events: the segment index
    // follows them to re-read moved tags.
    serialize_event_log(txn).await?;
    apply_unordered(txn, actor, edit, base, change_request_id, reason).await
}

/// [`apply`] without the event-log writer lock, for transactions that are
/// rolled back (previews): their rows never commit, so they need no place
/// in the log's order, and a reader must not stall every writer.
async fn apply_unordered(
    txn: &DatabaseTransaction,
    actor: StaffId,
    edit: &LibraryEdit,
    base: &Versions,
    change_request_id: Option<i64>,
    reason: &str,
) -> AppResult<EditOutcome> {
    let by = Author { actor, change_request_id, at: Utc::now() };
    let outcome = match edit {
        LibraryEdit::UpdateTagGroup { group_id, changes } => {
            let group = update_group(txn, &by, *group_id, changes, base).await?;
            EditOutcome { applied: true, group: Some(group), ..Default::default() }
        }
        LibraryEdit::UpdateTag { tag_id, changes } => {
            let t = update_tag(txn, &by, *tag_id, changes, base, "update").await?;
            EditOutcome { applied: true, tag: Some(t), ..Default::default() }
        }
        LibraryEdit::ArchiveTag { tag_id } => {
            let t = set_status(txn, &by, *tag_id, TagStatus::Active, TagStatus::Archived, base, "archive").await?;
            EditOutcome { applied: true, tag: Some(t), ..Default::default() }
        }
        LibraryEdit::RestoreTag { tag_id } => {
            let t = set_status(txn, &by, *tag_id, TagStatus::Archived, TagStatus::Active, base, "restore").await?;
            EditOutcome { applied: true, tag: Some(t), ..Default::default() }
        }
        LibraryEdit::RollbackTag { tag_id, version } => {
            let current = load_tag(txn, *tag_id).await?;
            let state = stored_tag_state(txn, &current, *version).await?;
            let changes = TagChanges {
                name: Some(state.name),
                description: Some(state.description),
                aliases: Some(state.aliases),
                canonical_tag_id: Some(state.canonical_tag_id),
                ttl_seconds: Some(state.ttl_seconds),
                group_id: state.group_id,
                status: Some(state.status),
            };
            let t = update_tag(txn, &by, *tag_id, &changes, base, "rollback").await?;
            EditOutcome { applied: true, tag: Some(t), ..Default::default() }
        }
        LibraryEdit::MergeTags { target_id, source_id } => {
            let t = merge(txn, &by, *target_id, *source_id, base).await?;
            EditOutcome { applied: true, tag: Some(t), ..Default::default() }
        }
        LibraryEdit::CreateTag { group_id, tag } => {
            let t = create_tag(txn, &by, *group_id, tag).await?;
            EditOutcome { applied: true, tag: Some(t), ..Default::default() }
        }
        LibraryEdit::CreateTagGroup { org_unit_id, group } => {
            let g = create_group(txn, &by, *org_unit_id, group).await?;
            EditOutcome { applied: true, group: Some(g), ..Default::default() }
        }
    };
    // The audit row is about the object as it now is (a created one too).
    let (kind, id) = match (&outcome.tag, &outcome.group) {
        (Some(t), _) => (ObjectKind::Tag, t.id),
        (None, Some(g)) => (ObjectKind::TagGroup, g.id),
        (None, None) => return Err(AppError::internal(anyhow::anyhow!("an applied edit returns its object"))),
    };
    let group = match (&outcome.group, &outcome.tag) {
        (Some(g), _) => Some(g.clone()),
        (None, Some(t)) => match t.group_id {
            Some(g) => tag_group::Entity::find_by_id(g).one(txn).await?,
            None => None,
        },
        _ => None,
    };
    let unit = group.as_ref().map(|g| g.org_unit_id);
    // The class lets the audit log hide the row's values from readers who
    // may not see tags of that class.
    let mut entry = AuditEntry::ok(actor, edit.kind(), if kind == ObjectKind::Tag { "tag" } else { "tag_group" }, id)
        .with_detail(json!({
            "visibilityClass": group.as_ref().map(|g| g.visibility_class.as_str()),
            "change": edit,
            "baseVersions": base,
            "changeRequestId": change_request_id,
            "reason": reason,
        }));
    entry.org_unit_id = unit;
    audit::record(txn, entry).await?;
    Ok(outcome)
}

/// Who made a change, through which request, when.
struct Author {
    actor: StaffId,
    change_request_id: Option<i64>,
    at: DateTime<Utc>,
}

async fn load_tag(txn: &impl ConnectionTrait, id: i64) -> AppResult<tag::Model> {
    tag::Entity::find_by_id(id).one(txn).await?.ok_or_else(|| AppError::not_found("tag", id))
}

async fn load_group(txn: &impl ConnectionTrait, id: i64) -> AppResult<tag_group::Model> {
    tag_group::Entity::find_by_id(id).one(txn).await?.ok_or_else(|| AppError::not_found("tag group", id))
}

fn base_of(base: &Versions, kind: ObjectKind, id: i64) -> AppResult<i32> {
    base.get(&kind.key(id)).copied().ok_or_else(|| AppError::internal(anyhow::anyhow!("no base version for {id}")))
}

fn stale(kind: ObjectKind, id: i64) -> AppError {
    AppError::Conflict(format!("{} changed meanwhile; reload and retry", kind.key(id)))
}

/// The state of a tag at `version`: a stored version, or the current one.
async fn stored_tag_state(db: &impl ConnectionTrait, current: &tag::Model, version: i32) -> AppResult<TagState> {
    if version == current.version {
        return Ok(TagState::from(current));
    }
    let row = library_version::Entity::find()
        .filter(library_version::Column::ObjectKind.eq(ObjectKind::Tag.as_str()))
        .filter(library_version::Column::ObjectId.eq(current.id))
        .filter(library_version::Column::Version.eq(version))
        .one(db)
        .await?
        .ok_or_else(|| {
            AppError::validation("version", format!("tag {} has no stored version {version}", current.id))
        })?;
    serde_json::from_value(row.state).map_err(AppError::internal)
}

/// Stores the state an object had before its first recorded change (data
/// that predates versioning, such as seeded libraries).
async fn ensure_recorded(
    txn: &impl ConnectionTrait,
    kind: ObjectKind,
    id: i64,
    version: i32,
    state: Value,
    at: DateTime<Utc>,
) -> AppResult<()> {
    let found = library_version::Entity::find()
        .filter(library_version::Column::ObjectKind.eq(kind.as_str()))
        .filter(library_version::Column::ObjectId.eq(id))
        .filter(library_version::Column::Version.eq(version))
        .count(txn)
        .await?;
    if found == 0 {
        insert_version(txn, kind, id, version, "create", state, None, None, at).await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn insert_version(
    txn: &impl ConnectionTrait,
    kind: ObjectKind,
    id: i64,
    version: i32,
    action: &str,
    state: Value,
    changed_by: Option<i64>,
    change_request_id: Option<i64>,
    at: DateTime<Utc>,
) -> AppResult<()> {
    library_version::Entity::insert(library_version::ActiveModel {
        id: NotSet,
        object_kind: Set(kind.as_str().to_owned()),
        object_id: Set(id),
        version: Set(version),
        action: Set(action.to_owned()),
        state: Set(state),
        changed_by: Set(changed_by),
        changed_at: Set(at),
        change_request_id: Set(change_request_id),
    })
    .exec(txn)
    .await?;
    Ok(())
}

/// Records the first version of an object `by` created.
async fn record_created(
    txn: &impl ConnectionTrait,
    by: &Author,
    kind: ObjectKind,
    id: i64,
    state: impl Serialize,
) -> AppResult<()> {
    let state = serde_json::to_value(state).map_err(AppError::internal)?;
    insert_version(txn, kind, id, 1, "create", state, Some(by.actor.0), by.change_request_id, by.at).await
}

/// Writes a tag's new state if it is still at `base`, and its version.
async fn write_tag(
    txn: &DatabaseTransaction,
    by: &Author,
    before: &tag::Model,
    after: TagState,
    base: i32,
    action: &str,
) -> AppResult<tag::Model> {
    ensure_recorded(
        txn,
        ObjectKind::Tag,
        before.id,
        before.version,
        serde_json::to_value(TagState::from(before)).map_err(AppError::internal)?,
        before.updated_at,
    )
    .await?;
    let result = tag::Entity::update_many()
        .col_expr(tag::Column::GroupId, Expr::value(after.group_id))
        .col_expr(tag::Column::Name, Expr::value(after.name.clone()))
        .col_expr(tag::Column::Description, Expr::value(after.description.clone()))
        .col_expr(tag::Column::Aliases, Expr::value(json!(after.aliases)))
        .col_expr(tag::Column::CanonicalTagId, Expr::value(after.canonical_tag_id))
        .col_expr(tag::Column::TtlSeconds, Expr::value(after.ttl_seconds))
        .col_expr(tag::Column::Status, Expr::value(after.status.as_str()))
        .col_expr(tag::Column::MergedIntoId, Expr::value(after.merged_into_id))
        .col_expr(tag::Column::Version, Expr::col(tag::Column::Version).add(1))
        .col_expr(tag::Column::UpdatedAt, Expr::value(by.at))
        .filter(tag::Column::Id.eq(before.id))
        .filter(tag::Column::Version.eq(base))
        .exec(txn)
        .await;
    let result = match result {
        Err(err) if is_unique_violation(&err) => {
            return Err(AppError::Conflict(format!("the group already has a tag named {:?}", after.name)));
        }
        other => other?,
    };
    if result.rows_affected != 1 {
        return Err(stale(ObjectKind::Tag, before.id));
    }
    let state = serde_json::to_value(&after).map_err(AppError::internal)?;
    insert_version(
        txn,
        ObjectKind::Tag,
        before.id,
        base + 1,
        action,
        state,
        Some(by.actor.0),
        by.change_request_id,
        by.at,
    )
    .await?;
    load_tag(txn, before.id).await
}

async fn set_status(
    txn: &DatabaseTransaction,
    by: &Author,
    id: i64,
    from: TagStatus,
    to: TagStatus,
    base: &Versions,
    action: &str,
) -> AppResult<tag::Model> {
    let before = load_tag(txn, id).await?;
    if before.status != from {
        return Err(AppError::validation(
            "id",
            format!("tag {:?} is {}, not {}", before.name, before.status.as_str(), from.as_str()),
        ));
    }
    let after = TagState { status: to, ..TagState::from(&before) };
    write_tag(txn, by, &before, after, base_of(base, ObjectKind::Tag, id)?, action).await
}

/// Customers holding a tag.
async fn holders(txn: &impl ConnectionTrait, tag_id: i64) -> AppResult<Vec<i64>> {
    Ok(customer_tag::Entity::find()
        .select_only()
        .column(customer_tag::Column::CustomerId)
        .filter(customer_tag::Column::TagId.eq(tag_id))
        .order_by_asc(customer_tag::Column::CustomerId)
        .into_tuple()
        .all(txn)
        .await?)
}

/// Customers holding more than one of the given tags, at most a few.
async fn holding_several(txn: &impl ConnectionTrait, tag_ids: &[i64]) -> AppResult<Option<i64>> {
    if tag_ids.len() < 2 {
        return Ok(None);
    }
    let rows: Vec<(i64, i64)> = customer_tag::Entity::find()
        .select_only()
        .column(customer_tag::Column::CustomerId)
        .column_as(customer_tag::Column::TagId.count(), "n")
        .filter(customer_tag::Column::TagId.is_in(tag_ids.iter().copied()))
        .group_by(customer_tag::Column::CustomerId)
        .having(customer_tag::Column::TagId.count().gt(1))
        .limit(1)
        .into_tuple()
        .all(txn)
        .await?;
    Ok(rows.first().map(|(c, _)| *c))
}

async fn update_tag(
    txn: &DatabaseTransaction,
    by: &Author,
    id: i64,
    changes: &TagChanges,
    base: &Versions,
    action: &str,
) -> AppResult<tag::Model> {
    let before = load_tag(txn, id).await?;
    if before.status == TagStatus::Merged {
        return Err(AppError::validation(
            "id",
            format!("tag {:?} was merged; edit the tag it was merged into", before.name),
        ));
    }
    let mut after = TagState::from(&before);
    let group_id =
        changes.group_id.or(before.group_id).ok_or_else(|| AppError::validation("id", "not an enterprise tag"))?;
    let group = load_group(txn, group_id).await?;
    if let Some(name) = &changes.name {
        after.name = TagName::parse(name, "name")?.into_inner();
    }
    if let Some(description) = &changes.description {
        after.description = Description::parse(Some(description), "description")?.into_inner();
    }
    if let Some(aliases) = &changes.aliases {
        after.aliases = Aliases::parse(aliases, "aliases")?.into_vec();
    }
    if let Some(ttl) = changes.ttl_seconds {
        super::tag_library::check_ttl(ttl)?;
        after.ttl_seconds = ttl;
    }
    if let Some(status) = changes.status {
        if status == TagStatus::Merged {
            return Err(AppError::validation("version", "a tag cannot be rolled back into a merged state"));
        }
        after.status = status;
    }
    if let Some(pattern) = &group.naming_pattern {
        NamingPattern::parse(pattern, "namingPattern")?.check(&TagName::parse(&after.name, "name")?, "name")?;
    }
    if Some(group.id) != before.group_id {
        check_move(txn, &before, &group, None).await?;
        after.group_id = Some(group.id);
    }
    if let Some(canonical) = changes.canonical_tag_id {
        if let Some(canonical) = canonical {
            check_canonical(txn, canonical, &group, id).await?;
        }
        after.canonical_tag_id = canonical;
    }
    if after == TagState::from(&before) {
        return Err(AppError::validation("input", "the edit changes nothing"));
    }
    write_tag(txn, by, &before, after, base_of(base, ObjectKind::Tag, id)?, action).await
}

/// A moved tag's holders must all be within the new group's library, and
/// an exclusive target group must not end up with two tags on a customer
/// (when merging into `merging_into`, holding it and the moved tag is fine:
/// the customer keeps one).
async fn check_move(
    txn: &impl ConnectionTrait,
    t: &tag::Model,
    to: &tag_group::Model,
    merging_into: Option<i64>,
) -> AppResult<()> {
    let holder_units: Vec<i64> = customer::Entity::find()
        .select_only()
        .column(customer::Column::OrgUnitId)
        .filter(
            customer::Column::Id.in_subquery(
                sea_orm::sea_query::Query::select()
                    .column(customer_tag::Column::CustomerId)
                    .from(customer_tag::Entity)
                    .and_where(customer_tag::Column::TagId.eq(t.id))
                    .to_owned(),
            ),
        )
        .distinct()
        .into_tuple()
        .all(txn)
        .await?;
    if !holder_units.is_empty() {
        let org = OrgTree::load(txn).await?;
        if let Some(outside) = holder_units.into_iter().find(|u| !org.is_within(*u, to.org_unit_id)) {
            let path = org.get(outside).map_or_else(|| outside.to_string(), |u| u.path.clone());
            return Err(AppError::validation(
                "groupId",
                format!("customers of {path} hold the tag, and {:?} is not in their library", to.name),
            ));
        }
    }
    if to.exclusive {
        let mut ids: Vec<i64> = tag::Entity::find()
            .select_only()
            .column(tag::Column::Id)
            .filter(tag::Column::GroupId.eq(to.id))
            .into_tuple()
            .all(txn)
            .await?;
        ids.retain(|id| Some(*id) != merging_into);
        ids.push(t.id);
        ids.dedup();
        if let Some(customer) = holding_several(txn, &ids).await? {
            return Err(AppError::validation(
                "groupId",
                format!("{:?} is exclusive and customer {customer} would hold two of its tags", to.name),
            ));
        }
    }
    Ok(())
}

async fn check_canonical(
    txn: &impl ConnectionTrait,
    canonical: i64,
    group: &tag_group::Model,
    id: i64,
) -> AppResult<()> {
    let invalid =
        || AppError::validation("canonicalTagId", "must be an active enterprise tag of a higher library layer");
    if canonical == id {
        return Err(invalid());
    }
    let c = tag::Entity::find_by_id(canonical).one(txn).await?.ok_or_else(invalid)?;
    let cg = match c.group_id {
        Some(g) => load_group(txn, g).await?,
        None => return Err(invalid()),
    };
    let higher_layer =
        cg.org_unit_id != group.org_unit_id && OrgTree::load(txn).await?.is_within(group.org_unit_id, cg.org_unit_id);
    if c.status != TagStatus::Active || !higher_layer {
        return Err(invalid());
    }
    Ok(())
}

async fn update_group(
    txn: &DatabaseTransaction,
    by: &Author,
    id: i64,
    changes: &GroupChanges,
    base: &Versions,
) -> AppResult<tag_group::Model> {
    let before = load_group(txn, id).await?;
    let mut after = GroupState::from(&before);
    if let Some(name) = &changes.name {
        after.name = TagName::parse(name, "name")?.into_inner();
    }
    if let Some(description) = &changes.description {
        after.description = Description::parse(Some(description), "description")?.into_inner();
    }
    if let Some(category) = changes.category {
        after.category = category;
    }
    if let Some(class) = &changes.visibility_class {
        after.visibility_class = VisibilityClass::parse(class, "visibilityClass")?.into_inner();
    }
    if let Some(exclusive) = changes.exclusive {
        after.exclusive = exclusive;
    }
    if let Some(pattern) = &changes.naming_pattern {
        after.naming_pattern = pattern
            .as_deref()
            .map(|p| NamingPattern::parse(p, "namingPattern"))
            .transpose()?
            .map(|p| p.as_str().to_owned());
    }
    if after == GroupState::from(&before) {
        return Err(AppError::validation("input", "the edit changes nothing"));
    }
    let tags = tag::Entity::find().filter(tag::Column::GroupId.eq(id)).all(txn).await?;
    if let Some(pattern) = after.naming_pattern.as_deref().filter(|_| after.naming_pattern != before.naming_pattern) {
        let pattern = NamingPattern::parse(pattern, "namingPattern")?;
        for t in tags.iter().filter(|t| t.status != TagStatus::Merged) {
            pattern.check(&TagName::parse(&t.name, "namingPattern")?, "namingPattern").map_err(|_| {
                AppError::validation("namingPattern", format!("the group's tag {:?} does not match it", t.name))
            })?;
        }
    }
    if after.exclusive && !before.exclusive {
        let ids: Vec<i64> = tags.iter().map(|t| t.id).collect();
        if let Some(customer) = holding_several(txn, &ids).await? {
            return Err(AppError::validation(
                "exclusive",
                format!("customer {customer} holds several tags of the group; untag first"),
            ));
        }
    }
    ensure_recorded(
        txn,
        ObjectKind::TagGroup,
        before.id,
        before.version,
        serde_json::to_value(GroupState::from(&before)).map_err(AppError::internal)?,
        before.updated_at,
    )
    .await?;
    let base = base_of(base, ObjectKind::TagGroup, id)?;
    let result = tag_group::Entity::update_many()
        .col_expr(tag_group::Column::Name, Expr::value(after.name.clone()))
        .col_expr(tag_group::Column::Description, Expr::value(after.description.clone()))
        .col_expr(tag_group::Column::Category, Expr::value(after.category.as_str()))
        .col_expr(tag_group::Column::VisibilityClass, Expr::value(after.visibility_class.clone()))
        .col_expr(tag_group::Column::Exclusive, Expr::value(after.exclusive))
        .col_expr(tag_group::Column::NamingPattern, Expr::value(after.naming_pattern.clone()))
        .col_expr(tag_group::Column::Version, Expr::col(tag_group::Column::Version).add(1))
        .col_expr(tag_group::Column::UpdatedAt, Expr::value(by.at))
        .filter(tag_group::Column::Id.eq(id))
        .filter(tag_group::Column::Version.eq(base))
        .exec(txn)
        .await;
    let result = match result {
        Err(err) if is_unique_violation(&err) => {
            return Err(AppError::Conflict(format!("this library layer already has a group named {:?}", after.name)));
        }
        other => other?,
    };
    if result.rows_affected != 1 {
        return Err(stale(ObjectKind::TagGroup, id));
    }
    let state = serde_json::to_value(&after).map_err(AppError::internal)?;
    insert_version(
        txn,
        ObjectKind::TagGroup,
        id,
        base + 1,
        "update",
        state,
        Some(by.actor.0),
        by.change_request_id,
        by.at,
    )
    .await?;
    load_group(txn, id).await
}

/// Creates an enterprise tag with its first version, checking what holds
/// whoever applies it: the group is active, the name fits its pattern and
/// is free, the TTL is in range, the canonical tag is an active tag of a
/// higher layer.
async fn create_tag(txn: &DatabaseTransaction, by: &Author, group_id: i64, spec: &NewTagSpec) -> AppResult<tag::Model> {
    let group = load_group(txn, group_id).await?;
    let name = TagName::parse(&spec.name, "name")?;
    if let Some(pattern) = &group.naming_pattern {
        NamingPattern::parse(pattern, "namingPattern")?.check(&name, "name")?;
    }
    let description = Description::parse(Some(&spec.description), "description")?;
    let aliases = Aliases::parse(&spec.aliases, "aliases")?;
    super::tag_library::check_ttl(spec.ttl_seconds)?;
    if let Some(canonical) = spec.canonical_tag_id {
        check_canonical(txn, canonical, &group, 0).await?;
    }
    let now = by.at;
    let inserted = tag::Entity::insert(tag::ActiveModel {
        id: NotSet,
        group_id: Set(Some(group.id)),
        owner_staff_id: Set(None),
        name: Set(name.as_str().to_owned()),
        description: Set(description.into_inner()),
        aliases: Set(aliases.into_json()),
        canonical_tag_id: Set(spec.canonical_tag_id),
        ttl_seconds: Set(spec.ttl_seconds),
        status: Set(TagStatus::Active),
        merged_into_id: Set(None),
        version: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec_with_returning(txn)
    .await;
    let created = match inserted {
        Err(err) if is_unique_violation(&err) => {
            return Err(AppError::Conflict(format!(
                "tag group {:?} already has a tag named {:?}",
                group.name, spec.name
            )));
        }
        other => other?,
    };
    record_created(txn, by, ObjectKind::Tag, created.id, TagState::from(&created)).await?;
    Ok(created)
}

/// Creates a tag group with its first version.
async fn create_group(
    txn: &DatabaseTransaction,
    by: &Author,
    org_unit_id: i64,
    spec: &NewGroupSpec,
) -> AppResult<tag_group::Model> {
    let name = TagName::parse(&spec.name, "name")?;
    let description = Description::parse(Some(&spec.description), "description")?;
    let class = VisibilityClass::parse(&spec.visibility_class, "visibilityClass")?;
    let pattern = spec.naming_pattern.as_deref().map(|p| NamingPattern::parse(p, "namingPattern")).transpose()?;
    let inserted = tag_group::Entity::insert(tag_group::ActiveModel {
        id: NotSet,
        org_unit_id: Set(org_unit_id),
        name: Set(name.as_str().to_owned()),
        description: Set(description.into_inner()),
        category: Set(spec.category),
        visibility_class: Set(class.into_inner()),
        exclusive: Set(spec.exclusive),
        naming_pattern: Set(pattern.map(|p| p.as_str().to_owned())),
        version: Set(1),
        created_at: Set(by.at),
        updated_at: Set(by.at),
    })
    .exec_with_returning(txn)
    .await;
    let created = match inserted {
        Err(err) if is_unique_violation(&err) => {
            return Err(AppError::Conflict(format!(
                "this library layer already has a tag group named {:?}",
                name.as_str()
            )));
        }
        other => other?,
    };
    record_created(txn, by, ObjectKind::TagGroup, created.id, GroupState::from(&created)).await?;
    Ok(created)
}

/// Merges tag B (`source`) into tag A (`target`): B's assignments move to
/// A (a customer holding both keeps one), the move is written to the tag
/// event log (REMOVE B, ADD A, source MERGE) so every index follows, B
/// becomes an alias of A and is left MERGED pointing to A. B's earlier
/// events stay as they were (the log is append-only); history queries of
/// A include the tags merged into it.
async fn merge(
    txn: &DatabaseTransaction,
    by: &Author,
    target: i64,
    source: i64,
    base: &Versions,
) -> AppResult<tag::Model> {
    if target == source {
        return Err(AppError::validation("sourceTagId", "a tag cannot be merged into itself"));
    }
    let a = load_tag(txn, target).await?;
    let b = load_tag(txn, source).await?;
    if a.status != TagStatus::Active {
        return Err(AppError::validation("targetTagId", format!("tag {:?} is {}", a.name, a.status.as_str())));
    }
    if b.status == TagStatus::Merged {
        return Err(AppError::validation("sourceTagId", format!("tag {:?} was already merged", b.name)));
    }
    let group_a =
        load_group(txn, a.group_id.ok_or_else(|| AppError::validation("targetTagId", "not an enterprise tag"))?)
            .await?;
    check_move(txn, &b, &group_a, Some(a.id)).await.map_err(|err| match err {
        AppError::Validation { message, .. } => AppError::validation("sourceTagId", message),
        other => other,
    })?;

    let held_b = holders(txn, b.id).await?;
    let held_a: HashSet<i64> = holders(txn, a.id).await?.into_iter().collect();
    let (both, only_b): (Vec<i64>, Vec<i64>) = held_b.iter().partition(|c| held_a.contains(c));
    for chunk in both.chunks(500) {
        customer_tag::Entity::delete_many()
            .filter(customer_tag::Column::TagId.eq(b.id))
            .filter(customer_tag::Column::CustomerId.is_in(chunk.iter().copied()))
            .exec(txn)
            .await?;
    }
    customer_tag::Entity::update_many()
        .col_expr(customer_tag::Column::TagId, Expr::value(a.id))
        .filter(customer_tag::Column::TagId.eq(b.id))
        .exec(txn)
        .await?;
    let by_merge = EventBy {
        actor: by.actor.0,
        source: TagSource::Merge,
        source_ref: Some(format!("merge:{}->{}", b.id, a.id)),
        at: by.at,
    };
    let event = |customer_id: i64, tag_id: i64, op: TagOp| by_merge.event(customer_id, tag_id, op);
    let mut events: Vec<tag_event::ActiveModel> = held_b.iter().map(|c| event(*c, b.id, TagOp::Remove)).collect();
    events.extend(only_b.iter().map(|c| event(*c, a.id, TagOp::Add)));
    insert_events(txn, events).await?;

    let b_after = TagState { status: TagStatus::Merged, merged_into_id: Some(a.id), ..TagState::from(&b) };
    write_tag(txn, by, &b, b_after, base_of(base, ObjectKind::Tag, b.id)?, "merge").await?;
    // Tags that rolled up to B roll up to A now (each a new version of its
    // own, so their history says why).
    let rolled_up = tag::Entity::find().filter(tag::Column::CanonicalTagId.eq(b.id)).all(txn).await?;
    for dependent in rolled_up {
        let after = TagState { canonical_tag_id: Some(a.id), ..TagState::from(&dependent) };
        write_tag(txn, by, &dependent, after, dependent.version, "merge").await?;
    }
    let mut a_after = TagState::from(&a);
    for alias in std::iter::once(b.name.clone()).chain(aliases_of(&b)) {
        if alias != a.name && !a_after.aliases.contains(&alias) {
            a_after.aliases.push(alias);
        }
    }
    write_tag(txn, by, &a, a_after, base_of(base, ObjectKind::Tag, a.id)?, "merge").await
}

/// One stored version of a tag or group, with what changed from the
/// version before it.
#[derive(Debug, Clone)]
pub struct VersionEntry {
    pub version: i32,
    pub action: String,
    pub state: Value,
    pub changed_by: Option<i64>,
    pub changed_at: DateTime<Utc>,
    pub change_request_id: Option<i64>,
    /// `(field, before, after)`.
    pub changes: Vec<(String, Value, Value)>,
}

fn diff(before: Option<&Value>, after: &Value) -> Vec<(String, Value, Value)> {
    let empty = serde_json::Map::new();
    let before = before.and_then(Value::as_object).unwrap_or(&empty);
    let Some(after) = after.as_object() else { return Vec::new() };
    after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), before.get(k).cloned().unwrap_or(Value::Null), v.clone()))
        .collect()
}

/// What approving a pending library-edit request would change now, field
/// by field (`from` the object's current state, `to` the state the edit
/// makes): the edit is applied in a transaction that is rolled back and
/// does not take the event-log writer lock (a reader never makes writers
/// wait for it). Empty for bulk tagging and for decided requests.
///
/// # Errors
/// `CONFLICT` when the target moved since the request was made (approving
/// would mark it `STALE`); the edit's own errors.
pub async fn preview(
    db: &DatabaseConnection,
    request: &change_request::Model,
) -> AppResult<Vec<(String, Value, Value)>> {
    if request.kind.starts_with("customer.") || request.status != entity::enums::ChangeRequestStatus::Pending {
        return Ok(Vec::new());
    }
    let edit: LibraryEdit = serde_json::from_value(request.payload.clone()).map_err(AppError::internal)?;
    let base: Versions = serde_json::from_value(request.base_versions.clone()).map_err(AppError::internal)?;
    let txn = db.begin().await?;
    if !still_current(&txn, &base).await? {
        return Err(AppError::Conflict(format!(
            "the target of change request {} changed since it was made; approving would mark it STALE",
            request.id
        )));
    }
    let before = match edit.edited() {
        None => None,
        Some((ObjectKind::Tag, id)) => Some(serde_json::to_value(TagState::from(&load_tag(&txn, id).await?))),
        Some((ObjectKind::TagGroup, id)) => Some(serde_json::to_value(GroupState::from(&load_group(&txn, id).await?))),
    }
    .transpose()
    .map_err(AppError::internal)?;
    let requester = StaffId(request.requester_staff_id);
    let outcome = apply_unordered(&txn, requester, &edit, &base, Some(request.id), &request.reason).await?;
    txn.rollback().await?;
    let after = match (&outcome.tag, &outcome.group) {
        (Some(t), _) => serde_json::to_value(TagState::from(t)),
        (None, Some(g)) => serde_json::to_value(GroupState::from(g)),
        (None, None) => return Ok(Vec::new()),
    }
    .map_err(AppError::internal)?;
    Ok(diff(before.as_ref(), &after))
}

/// The versions of a tag or group, newest first. Objects created before
/// versioning show their current state as their first version.
///
/// # Errors
/// Database errors.
pub async fn history(
    db: &impl ConnectionTrait,
    kind: ObjectKind,
    id: i64,
    current_version: i32,
    current_state: Value,
    updated_at: DateTime<Utc>,
) -> AppResult<Vec<VersionEntry>> {
    let rows = library_version::Entity::find()
        .filter(library_version::Column::ObjectKind.eq(kind.as_str()))
        .filter(library_version::Column::ObjectId.eq(id))
        .order_by_asc(library_version::Column::Version)
        .all(db)
        .await?;
    let mut entries: Vec<VersionEntry> = Vec::with_capacity(rows.len() + 1);
    let mut previous: Option<Value> = None;
    for row in rows {
        entries.push(VersionEntry {
            version: row.version,
            action: row.action,
            changes: diff(previous.as_ref(), &row.state),
            state: row.state.clone(),
            changed_by: row.changed_by,
            changed_at: row.changed_at,
            change_request_id: row.change_request_id,
        });
        previous = Some(row.state);
    }
    if entries.last().is_none_or(|e| e.version < current_version) {
        entries.push(VersionEntry {
            version: current_version,
            action: "create".to_owned(),
            changes: diff(previous.as_ref(), &current_state),
            state: current_state,
            changed_by: None,
            changed_at: updated_at,
            change_request_id: None,
        });
    }
    entries.reverse();
    Ok(entries)
}

/// The history of a tag the caller may see.
///
/// # Errors
/// `NOT_FOUND` for invisible tags.
pub async fn tag_history(db: &impl ConnectionTrait, principal: &Principal, id: TagId) -> AppResult<Vec<VersionEntry>> {
    let t = find_tag(db, principal, id).await?;
    let state = serde_json::to_value(TagState::from(&t)).map_err(AppError::internal)?;
    history(db, ObjectKind::Tag, t.id, t.version, state, t.updated_at).await
}

/// The history of a tag group the caller may see.
///
/// # Errors
/// `NOT_FOUND` for invisible groups.
pub async fn group_history(
    db: &impl ConnectionTrait,
    principal: &Principal,
    id: TagGroupId,
) -> AppResult<Vec<VersionEntry>> {
    let g = find_group(db, principal, id).await?;
    let state = serde_json::to_value(GroupState::from(&g)).map_err(AppError::internal)?;
    history(db, ObjectKind::TagGroup, g.id, g.version, state, g.updated_at).await
}
