//! Edits of the tag library: updating groups and tags, archiving,
//! restoring, merging, rolling back and creating — each checked against
//! the version the caller read, each stored as a new version of its object
//! (`store::library_version`), and each either applied at once or turned
//! into a change request, as the policy decides for the caller and the
//! layers the edit touches. This is the apply-or-propose rule:
//!
//! * `tag_library:write` in every touched layer: the edit applies.
//! * otherwise `tag_library:propose` in a unit at or below the edit's scope
//!   (the highest touched layer): the edit is checked (applied in a
//!   transaction that is rolled back) and stored as a change request.
//! * otherwise `FORBIDDEN`.
//!
//! One file per edit: [`update_group`], [`update_tag`], [`archive`],
//! [`restore`], [`merge`], [`rollback`], [`create_tag`], [`create_group`].
//! The edit model is in [`model`]; [`versions`] writes states as versions;
//! [`checks`] holds the rules several edits share. Approving a filed edit
//! comes back through [`apply`] (from `service::governance::approval`).

mod archive;
mod checks;
mod create_group;
mod create_tag;
mod merge;
mod model;
mod restore;
mod rollback;
mod update_group;
mod update_tag;
mod versions;

use std::collections::BTreeSet;

use chrono::Utc;
use entity::{tag, tag_group};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, TransactionTrait};
use serde_json::{Value, json};

use self::model::Author;
pub use self::model::{
    EditContext, EditOutcome, GroupChanges, GroupState, LibraryEdit, NewGroupSpec, NewTagSpec, TagChanges, TagState,
    aliases_of,
};
pub use self::versions::{group_history, tag_history};
use self::versions::{load_group, load_tag};
use crate::authz::{Action, Principal};
use crate::domain::{ChangeRequestId, ObjectKey, ObjectKind, Reason, StaffId, TagGroupId, TagId, Versions};
use crate::error::{AppError, AppResult};
use crate::service::audit::{self, AuditEntry};
use crate::service::governance::requests::{self, NewRequest};
use crate::service::tag_library::{find_group, find_tag};
use crate::store::event_log::serialize_event_log;
pub use crate::store::library_version::VersionEntry;

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
        versions.insert(ObjectKey::tag(TagId(t.id)), t.version);
        units.insert(g.org_unit_id);
    };
    match edit {
        LibraryEdit::UpdateTagGroup { group_id, .. } => {
            let group = find_group(db, principal, *group_id).await?;
            versions.insert(ObjectKey::tag_group(*group_id), group.version);
            units.insert(group.org_unit_id);
        }
        LibraryEdit::UpdateTag { tag_id, changes } => {
            let (t, g) = enterprise_tag(db, principal, *tag_id).await?;
            add_tag(&t, &g);
            if let Some(to) = changes.group_id.filter(|to| Some(to.0) != t.group_id) {
                let to = find_group(db, principal, to).await?;
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
            let state = versions::stored_tag_state(db, &t, *version).await?;
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
            if !principal.may_read_library_layer(org_unit_id.0) {
                return Err(AppError::not_found("org unit", org_unit_id.0));
            }
            units.insert(org_unit_id.0);
        }
        LibraryEdit::CreateTag { group_id, tag } => {
            let group = find_group(db, principal, *group_id).await?;
            units.insert(group.org_unit_id);
            if let Some(canonical) = tag.canonical_tag_id {
                // NOT_FOUND, like a missing tag, when the caller cannot see it.
                find_tag(db, principal, canonical).await?;
            }
        }
    }
    Ok(Plan { versions, units })
}

/// An enterprise tag the caller may see, with its group.
async fn enterprise_tag(
    db: &impl ConnectionTrait,
    principal: &Principal,
    id: TagId,
) -> AppResult<(tag::Model, tag_group::Model)> {
    let t = find_tag(db, principal, id).await?;
    let Some(group_id) = t.group_id else {
        return Err(AppError::validation("tagId", "personal tags are not part of the library; edit them directly"));
    };
    let g = tag_group::Entity::find_by_id(group_id).one(db).await?.ok_or_else(|| AppError::not_found("tag", id.0))?;
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

/// Applies a library edit or files it as a change request, as the policy
/// decides for the caller.
///
/// # Errors
/// `NOT_FOUND` for invisible objects, `CONFLICT` when an object moved past
/// the version the caller read (or a name clashes), `VALIDATION` for edits
/// that break the library's rules, `FORBIDDEN` when the caller may neither
/// edit nor propose.
#[tracing::instrument(skip(db, principal, ctx), fields(staff = principal.staff.id, edit = edit.kind().as_str()))]
pub async fn submit(
    db: &DatabaseConnection,
    principal: &Principal,
    edit: LibraryEdit,
    ctx: EditContext,
) -> AppResult<EditOutcome> {
    let reason = ctx.reason;
    let plan = plan(db, principal, &edit).await?;
    check_expected(&plan.versions, &ctx.expected)?;
    let scope = scope_of(principal, &plan.units)?;
    let direct = plan.units.iter().all(|u| principal.may(Action::TagLibraryWrite, *u));
    if direct {
        let txn = db.begin().await?;
        let outcome = apply(&txn, principal.staff_id(), &edit, &plan.versions, None, reason.as_ref()).await?;
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
        apply_unordered(&txn, principal.staff_id(), &edit, &plan.versions, None, reason.as_ref()).await?;
        txn.rollback().await?;
    }
    let txn = db.begin().await?;
    let new = NewRequest {
        kind: edit.kind(),
        target: edit.request_target(),
        base_versions: json!(plan.versions),
        payload: serde_json::to_value(&edit).map_err(AppError::internal)?,
        scope,
        reason,
    };
    let request = requests::file(&txn, principal, new).await?;
    txn.commit().await?;
    Ok(EditOutcome { applied: false, change_request: Some(request), ..Default::default() })
}

/// True when every object of `base` is still at that version.
///
/// # Errors
/// Database errors.
pub async fn still_current(txn: &impl ConnectionTrait, base: &Versions) -> AppResult<bool> {
    for (key, version) in base {
        let current = match key.kind {
            ObjectKind::Tag => tag::Entity::find_by_id(key.id).one(txn).await?.map(|t| t.version),
            ObjectKind::TagGroup => tag_group::Entity::find_by_id(key.id).one(txn).await?.map(|g| g.version),
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
    change_request: Option<ChangeRequestId>,
    reason: Option<&Reason>,
) -> AppResult<EditOutcome> {
    // Version rows commit in id order, like tag events: the segment index
    // follows them to re-read moved tags.
    serialize_event_log(txn).await?;
    apply_unordered(txn, actor, edit, base, change_request, reason).await
}

/// [`apply`] without the event-log writer lock, for transactions that are
/// rolled back (previews): their rows never commit, so they need no place
/// in the log's order, and a reader must not stall every writer.
async fn apply_unordered(
    txn: &DatabaseTransaction,
    actor: StaffId,
    edit: &LibraryEdit,
    base: &Versions,
    change_request: Option<ChangeRequestId>,
    reason: Option<&Reason>,
) -> AppResult<EditOutcome> {
    let by = Author { actor, change_request, at: Utc::now() };
    let tag = |t: tag::Model| EditOutcome { applied: true, tag: Some(t), ..Default::default() };
    let group = |g: tag_group::Model| EditOutcome { applied: true, group: Some(g), ..Default::default() };
    let outcome = match edit {
        LibraryEdit::UpdateTagGroup { group_id, changes } => {
            group(update_group::update_group(txn, &by, *group_id, changes, base).await?)
        }
        LibraryEdit::UpdateTag { tag_id, changes } => {
            tag(update_tag::update_tag(txn, &by, *tag_id, changes, base, "update").await?)
        }
        LibraryEdit::ArchiveTag { tag_id } => tag(archive::archive(txn, &by, *tag_id, base).await?),
        LibraryEdit::RestoreTag { tag_id } => tag(restore::restore(txn, &by, *tag_id, base).await?),
        LibraryEdit::RollbackTag { tag_id, version } => {
            tag(rollback::rollback(txn, &by, *tag_id, *version, base).await?)
        }
        LibraryEdit::MergeTags { target_id, source_id } => {
            tag(merge::merge(txn, &by, *target_id, *source_id, base).await?)
        }
        LibraryEdit::CreateTag { group_id, tag: spec } => tag(create_tag::create_tag(txn, &by, *group_id, spec).await?),
        LibraryEdit::CreateTagGroup { org_unit_id, group: spec } => {
            group(create_group::create_group(txn, &by, *org_unit_id, spec).await?)
        }
    };
    // The audit row is about the object as it now is (a created one too).
    let key = match (&outcome.tag, &outcome.group) {
        (Some(t), _) => ObjectKey::tag(TagId(t.id)),
        (None, Some(g)) => ObjectKey::tag_group(TagGroupId(g.id)),
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
    let mut entry = AuditEntry::ok(actor, edit.kind().as_str(), key.kind.key_prefix(), key.id).with_detail(json!({
        "visibilityClass": group.as_ref().map(|g| g.visibility_class.as_str()),
        "change": edit,
        "baseVersions": base,
        "changeRequestId": change_request.map(|r| r.0),
        "reason": reason.map_or("", Reason::as_str),
    }));
    entry.org_unit_id = unit;
    audit::record(txn, entry).await?;
    Ok(outcome)
}

/// What approving a pending edit filed as request `request` would change
/// now, field by field (`from` the object's current state, `to` the state
/// the edit makes): the edit is applied in a transaction that is rolled
/// back and does not take the event-log writer lock (a reader never makes
/// writers wait for it).
///
/// # Errors
/// `CONFLICT` when the target moved since the request was made (approving
/// would mark it `STALE`); the edit's own errors.
pub async fn preview(
    db: &DatabaseConnection,
    requester: StaffId,
    edit: &LibraryEdit,
    base: &Versions,
    request: ChangeRequestId,
    reason: Option<&Reason>,
) -> AppResult<Vec<(String, Value, Value)>> {
    let txn = db.begin().await?;
    if !still_current(&txn, base).await? {
        return Err(AppError::Conflict(format!(
            "the target of change request {} changed since it was made; approving would mark it STALE",
            request.0
        )));
    }
    let before = match edit.edited() {
        None => None,
        Some(ObjectKey { kind: ObjectKind::Tag, id }) => {
            Some(serde_json::to_value(TagState::from(&load_tag(&txn, TagId(id)).await?)))
        }
        Some(ObjectKey { kind: ObjectKind::TagGroup, id }) => {
            Some(serde_json::to_value(GroupState::from(&load_group(&txn, TagGroupId(id)).await?)))
        }
    }
    .transpose()
    .map_err(AppError::internal)?;
    let outcome = apply_unordered(&txn, requester, edit, base, Some(request), reason).await?;
    txn.rollback().await?;
    let after = match (&outcome.tag, &outcome.group) {
        (Some(t), _) => serde_json::to_value(TagState::from(t)),
        (None, Some(g)) => serde_json::to_value(GroupState::from(g)),
        (None, None) => return Ok(Vec::new()),
    }
    .map_err(AppError::internal)?;
    Ok(crate::store::library_version::diff(before.as_ref(), &after))
}
