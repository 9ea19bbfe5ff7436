//! Deciding change requests: who may approve, reject or cancel, and what
//! approving runs.
//!
//! A decision is one conditional transition out of `PENDING`
//! (`store::change_request::transition`), so of two racing decisions one
//! wins and the other gets `CONFLICT`. Approval applies the change in the
//! same transaction as the transition; when the target moved past the
//! version the request was made against, the request is marked `STALE`
//! instead and the approver gets `CONFLICT`.
//!
//! [`change_of`] is the one place where a request's kind meets the service
//! that applies it: library edits go to `service::library`, bulk tagging
//! to `service::tagging`, rule changes to `service::rules::propose`,
//! customer merges to `service::merge`.

use entity::{change_request, enums::ChangeRequestStatus, staff};
use sea_orm::{DatabaseConnection, DatabaseTransaction, EntityTrait, TransactionTrait};
use serde_json::{Value, json};

use super::requests::{ChangeRequestKind, find};
use crate::authz::{Action, Authz, Principal};
use crate::config::Limits;
use crate::domain::{ChangeRequestId, Reason, StaffId, Versions};
use crate::error::{AppError, AppResult};
use crate::service::audit::{self, AuditEntry};
use crate::service::jobs;
use crate::service::library::{self, EditOutcome, LibraryEdit};
use crate::service::merge;
use crate::service::rules::propose;
use crate::service::tagging::{self, BulkTagging};
use crate::store::change_request::transition;

/// The request's change, parsed for the service that applies it.
enum Change {
    Library(LibraryEdit, Versions),
    Tagging(BulkTagging),
    /// A rule's creation, edit or enabling (`service::rules::propose`).
    Rule,
    /// A bulk job waiting for approval to run.
    Job(i64),
    /// Two customers to merge (`service::merge`).
    Merge,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobPayload {
    job_id: i64,
}

fn parse<T: serde::de::DeserializeOwned>(value: &Value) -> AppResult<T> {
    serde_json::from_value(value.clone()).map_err(AppError::internal)
}

/// Dispatches a request by its kind to the change it carries.
fn change_of(request: &change_request::Model) -> AppResult<Change> {
    use ChangeRequestKind as K;
    match ChangeRequestKind::of(request)? {
        K::TagGroupUpdate
        | K::TagUpdate
        | K::TagArchive
        | K::TagRestore
        | K::TagMerge
        | K::TagRollback
        | K::TagCreate
        | K::TagGroupCreate => Ok(Change::Library(parse(&request.payload)?, parse(&request.base_versions)?)),
        K::CustomerTag | K::CustomerUntag => Ok(Change::Tagging(parse(&request.payload)?)),
        K::RuleCreate | K::RuleUpdate | K::RuleEnable => Ok(Change::Rule),
        K::BulkJob => Ok(Change::Job(parse::<JobPayload>(&request.payload)?.job_id)),
        K::CustomerMerge => Ok(Change::Merge),
    }
}

/// Who may decide a request: not its requester, and only with
/// `change_request:approve` at the request's scope (or above).
///
/// # Errors
/// `FORBIDDEN` otherwise.
pub fn require_decider(principal: &Principal, request: &change_request::Model) -> AppResult<()> {
    if request.requester_staff_id == principal.staff.id {
        return Err(AppError::Forbidden("nobody approves or rejects their own change request".to_owned()));
    }
    principal.require(Action::ChangeRequestApprove, request.org_unit_id)
}

async fn record_decision(
    txn: &DatabaseTransaction,
    by: StaffId,
    action: &'static str,
    request: &change_request::Model,
    comment: Option<&Reason>,
) -> AppResult<()> {
    let comment = comment.map(Reason::as_str);
    audit::record(
        txn,
        AuditEntry::ok(by, action, "change_request", request.id)
            .in_unit(request.org_unit_id)
            .with_detail(json!({ "kind": request.kind, "requester": request.requester_staff_id, "comment": comment })),
    )
    .await?;
    Ok(())
}

/// What approving did.
pub struct Approval {
    pub request: change_request::Model,
    pub outcome: EditOutcome,
}

/// Approves a pending request and applies its change, in one transaction.
///
/// # Errors
/// `NOT_FOUND` for invisible requests; `FORBIDDEN` for one's own request or
/// without `change_request:approve` in its scope; `CONFLICT` when it was
/// decided meanwhile, or when its target changed since (the request is then
/// marked `STALE`); the change's own errors (nothing is written then).
#[tracing::instrument(skip(db, authz, principal, limits, comment), fields(staff = principal.staff.id))]
pub async fn approve(
    db: &DatabaseConnection,
    authz: &Authz,
    principal: &Principal,
    limits: &Limits,
    id: ChangeRequestId,
    comment: Option<&str>,
) -> AppResult<Approval> {
    let comment = Reason::parse(comment, "comment")?;
    let request = find(db, principal, id).await?;
    require_decider(principal, &request)?;
    let change = change_of(&request)?;
    let by = principal.staff_id();
    let txn = db.begin().await?;
    let current = match &change {
        Change::Library(_, base) => library::still_current(&txn, base).await?,
        Change::Rule => propose::still_current(&txn, &request).await?,
        Change::Merge => merge::still_current(&txn, &request).await?,
        Change::Tagging(_) | Change::Job(_) => true,
    };
    if !current {
        transition(&txn, id, ChangeRequestStatus::Stale, by, comment.as_ref()).await?;
        record_decision(&txn, by, "change_request.stale", &request, comment.as_ref()).await?;
        txn.commit().await?;
        return Err(AppError::Conflict(format!(
            "the target of change request {} changed since it was made; the request is now STALE",
            id.0
        )));
    }
    transition(&txn, id, ChangeRequestStatus::Approved, by, comment.as_ref()).await?;
    record_decision(&txn, by, "change_request.approve", &request, comment.as_ref()).await?;
    let outcome = match change {
        Change::Library(edit, base) => {
            let reason = Reason::parse(Some(&request.reason), "reason")?;
            let requester = StaffId(request.requester_staff_id);
            library::apply(&txn, requester, &edit, &base, Some(id), reason.as_ref()).await?
        }
        Change::Tagging(bulk) => {
            let requester = requester_principal(&txn, authz, principal, &request).await?;
            tagging::apply_approved(&txn, &requester, limits, bulk, request.id).await?;
            EditOutcome { applied: true, ..Default::default() }
        }
        Change::Rule => {
            let requester = requester_principal(&txn, authz, principal, &request).await?;
            propose::apply_approved(&txn, &requester, &request).await?;
            EditOutcome { applied: true, ..Default::default() }
        }
        Change::Job(job_id) => {
            jobs::approved(&txn, job_id).await?;
            EditOutcome { applied: true, ..Default::default() }
        }
        Change::Merge => {
            let requester = requester_principal(&txn, authz, principal, &request).await?;
            merge::apply_approved(&txn, &requester, &request).await?;
            EditOutcome { applied: true, ..Default::default() }
        }
    };
    txn.commit().await?;
    let request = find(db, principal, id).await?;
    Ok(Approval { request, outcome })
}

/// What approving a pending library-edit request would change now, field
/// by field (`from` the object's current state, `to` the state the edit
/// makes). Empty for bulk tagging and for decided requests.
///
/// # Errors
/// `CONFLICT` when the target moved since the request was made (approving
/// would mark it `STALE`); the edit's own errors.
pub async fn preview(
    db: &DatabaseConnection,
    request: &change_request::Model,
) -> AppResult<Vec<(String, Value, Value)>> {
    if request.status != ChangeRequestStatus::Pending {
        return Ok(Vec::new());
    }
    match change_of(request)? {
        Change::Tagging(_) | Change::Rule | Change::Job(_) | Change::Merge => Ok(Vec::new()),
        Change::Library(edit, base) => {
            let reason = Reason::parse(Some(&request.reason), "reason")?;
            let requester = StaffId(request.requester_staff_id);
            library::preview(db, requester, &edit, &base, ChangeRequestId(request.id), reason.as_ref()).await
        }
    }
}

/// The requester, with the permissions it holds now: an approved bulk
/// tagging runs with the requester's rights, only the size limit waived.
async fn requester_principal(
    txn: &DatabaseTransaction,
    authz: &Authz,
    approver: &Principal,
    request: &change_request::Model,
) -> AppResult<Principal> {
    let staff = staff::Entity::find_by_id(request.requester_staff_id)
        .one(txn)
        .await?
        .filter(|s| s.active)
        .ok_or_else(|| AppError::validation("id", "the requester is no longer active; reject the request"))?;
    Ok(authz.principal(staff, approver.org.clone()))
}

/// Rejects a pending request; the reason is required.
///
/// # Errors
/// As [`approve`]; `VALIDATION` without a reason.
#[tracing::instrument(skip(db, principal, reason), fields(staff = principal.staff.id))]
pub async fn reject(
    db: &DatabaseConnection,
    principal: &Principal,
    id: ChangeRequestId,
    reason: Option<&str>,
) -> AppResult<change_request::Model> {
    let reason = Reason::parse_required(reason, "reason", "is required")?;
    let request = find(db, principal, id).await?;
    require_decider(principal, &request)?;
    let txn = db.begin().await?;
    transition(&txn, id, ChangeRequestStatus::Rejected, principal.staff_id(), Some(&reason)).await?;
    record_decision(&txn, principal.staff_id(), "change_request.reject", &request, Some(&reason)).await?;
    if let Change::Job(job_id) = change_of(&request)? {
        jobs::declined(&txn, job_id, principal.staff_id()).await?;
    }
    txn.commit().await?;
    find(db, principal, id).await
}

/// Withdraws a pending request: its requester only.
///
/// # Errors
/// `NOT_FOUND`, `FORBIDDEN` for others' requests, `CONFLICT` when decided.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn cancel(
    db: &DatabaseConnection,
    principal: &Principal,
    id: ChangeRequestId,
) -> AppResult<change_request::Model> {
    let request = find(db, principal, id).await?;
    if request.requester_staff_id != principal.staff.id {
        return Err(AppError::Forbidden("only its requester cancels a change request".to_owned()));
    }
    let txn = db.begin().await?;
    transition(&txn, id, ChangeRequestStatus::Cancelled, principal.staff_id(), None).await?;
    record_decision(&txn, principal.staff_id(), "change_request.cancel", &request, None).await?;
    if let Change::Job(job_id) = change_of(&request)? {
        jobs::declined(&txn, job_id, principal.staff_id()).await?;
    }
    txn.commit().await?;
    find(db, principal, id).await
}
