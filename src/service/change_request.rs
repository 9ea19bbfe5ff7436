//! Change requests (审批, SPEC §6): library edits and bulk tagging that the
//! policy does not let their author apply directly.
//!
//! A decision is one conditional transition out of `PENDING`, so of two
//! racing decisions one wins and the other gets `CONFLICT`. Approval
//! applies the change in the same transaction as the transition; when the
//! target moved past the version the request was made against, the request
//! is marked `STALE` instead and the approver gets `CONFLICT`.

use chrono::Utc;
use entity::{change_request, enums::ChangeRequestStatus, staff};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    PaginatorTrait, QueryFilter, TransactionTrait, sea_query::Expr,
};
use serde_json::json;

use super::audit::{self, AuditEntry};
use super::library_edit::{self, EditOutcome, LibraryEdit, Versions};
use super::tagging::{self, BulkTagging};
use crate::authz::{Action, Authz, Principal};
use crate::config::Limits;
use crate::domain::{OrgUnitId, PageArgs, StaffId};
use crate::error::{AppError, AppResult};

const ORDERING: &str = "change_request.newest";

/// A change to file for approval.
pub struct NewRequest {
    pub kind: &'static str,
    pub target_kind: &'static str,
    pub target_id: Option<i64>,
    pub base_versions: serde_json::Value,
    pub payload: serde_json::Value,
    /// The unit whose approvers decide.
    pub scope: i64,
    pub reason: String,
}

/// Files a pending request by the caller, with its audit row, in `txn`.
///
/// # Errors
/// Database errors.
pub async fn file(
    txn: &DatabaseTransaction,
    principal: &Principal,
    new: NewRequest,
) -> AppResult<change_request::Model> {
    let request = change_request::Entity::insert(change_request::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        kind: Set(new.kind.to_owned()),
        target_kind: Set(new.target_kind.to_owned()),
        target_id: Set(new.target_id),
        base_versions: Set(new.base_versions),
        payload: Set(new.payload),
        org_unit_id: Set(new.scope),
        requester_staff_id: Set(principal.staff.id),
        reason: Set(new.reason),
        status: Set(ChangeRequestStatus::Pending),
        decided_by: Set(None),
        decided_at: Set(None),
        decision_comment: Set(None),
        created_at: Set(Utc::now()),
    })
    .exec_with_returning(txn)
    .await?;
    audit::record(
        txn,
        AuditEntry::ok(principal.staff_id(), "change_request.create", "change_request", request.id)
            .in_unit(request.org_unit_id)
            .with_detail(
                json!({ "kind": request.kind, "change": request.payload, "baseVersions": request.base_versions }),
            ),
    )
    .await?;
    Ok(request)
}

/// Which requests to list.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    pub status: Option<ChangeRequestStatus>,
    /// Requests whose scope is this unit or a unit below it.
    pub scope: Option<OrgUnitId>,
    pub requester: Option<StaffId>,
}

/// A page of requests, newest first, with each row's cursor.
pub type RequestPage = super::NewestFirst<change_request::Model>;

/// The requests the caller may see: its own, and those in the units where
/// it approves or reads the audit log.
fn visible(principal: &Principal) -> Condition {
    Condition::any()
        .add(change_request::Column::RequesterStaffId.eq(principal.staff.id))
        .add(principal.scope(Action::ChangeRequestApprove).condition(change_request::Column::OrgUnitId))
        .add(principal.scope(Action::AuditLogRead).condition(change_request::Column::OrgUnitId))
}

fn filtered(principal: &Principal, filter: &RequestFilter) -> AppResult<Condition> {
    let mut cond = Condition::all().add(visible(principal));
    if let Some(status) = filter.status {
        cond = cond.add(change_request::Column::Status.eq(status));
    }
    if let Some(requester) = filter.requester {
        cond = cond.add(change_request::Column::RequesterStaffId.eq(requester.0));
    }
    if let Some(scope) = filter.scope {
        if principal.org.get(scope.0).is_none() {
            return Err(AppError::not_found("org unit", scope));
        }
        let units: Vec<i64> = principal.org.subtree(scope.0).map(|u| u.id).collect();
        cond = cond.add(change_request::Column::OrgUnitId.is_in(units));
    }
    Ok(cond)
}

/// A request's payload as the caller may see it: the tags of classes it may
/// not see at the request's unit, and others' personal tags, left out (a
/// reader of the audit log sees requests it does not approve).
///
/// # Errors
/// Database errors.
pub async fn change_as_seen(
    db: &impl ConnectionTrait,
    principal: &Principal,
    request: &change_request::Model,
) -> AppResult<serde_json::Value> {
    audit::without_unseen_tags(db, principal, Some(request.org_unit_id), request.payload.clone()).await
}

/// A page of the requests the caller may see.
///
/// # Errors
/// `VALIDATION` for a bad cursor, `NOT_FOUND` for an unknown scope.
pub async fn list(
    db: &impl ConnectionTrait,
    principal: &Principal,
    filter: &RequestFilter,
    page: &PageArgs,
) -> AppResult<RequestPage> {
    let query = change_request::Entity::find().filter(filtered(principal, filter)?);
    super::newest_first(db, query, change_request::Column::Id, |r| r.id, ORDERING, page).await
}

/// How many requests match (all pages).
///
/// # Errors
/// As [`list`].
pub async fn count(db: &impl ConnectionTrait, principal: &Principal, filter: &RequestFilter) -> AppResult<u64> {
    Ok(change_request::Entity::find().filter(filtered(principal, filter)?).count(db).await?)
}

/// A request the caller may see.
///
/// # Errors
/// `NOT_FOUND` for missing and invisible requests alike.
pub async fn find(db: &impl ConnectionTrait, principal: &Principal, id: i64) -> AppResult<change_request::Model> {
    change_request::Entity::find_by_id(id)
        .filter(visible(principal))
        .one(db)
        .await?
        .ok_or_else(|| AppError::not_found("change request", id))
}

fn comment_of(raw: Option<&str>, field: &str, required: bool) -> AppResult<Option<String>> {
    let text = raw.map(str::trim).filter(|t| !t.is_empty());
    match text {
        None if required => Err(AppError::validation(field, "is required")),
        Some(t) if t.chars().count() > 500 => Err(AppError::validation(field, "must be at most 500 characters")),
        other => Ok(other.map(str::to_owned)),
    }
}

/// Moves a pending request to `status`, as one conditional update.
///
/// # Errors
/// `CONFLICT` when the request is no longer pending (somebody decided it
/// first).
async fn transition(
    txn: &DatabaseTransaction,
    request: &change_request::Model,
    status: ChangeRequestStatus,
    by: StaffId,
    comment: Option<String>,
) -> AppResult<()> {
    let result = change_request::Entity::update_many()
        .col_expr(change_request::Column::Status, Expr::value(status.as_str()))
        .col_expr(change_request::Column::DecidedBy, Expr::value(by.0))
        .col_expr(change_request::Column::DecidedAt, Expr::value(Utc::now()))
        .col_expr(change_request::Column::DecisionComment, Expr::value(comment))
        .filter(change_request::Column::Id.eq(request.id))
        .filter(change_request::Column::Status.eq(ChangeRequestStatus::Pending))
        .exec(txn)
        .await?;
    if result.rows_affected == 1 {
        Ok(())
    } else {
        let now = change_request::Entity::find_by_id(request.id).one(txn).await?.map(|r| r.status);
        Err(AppError::Conflict(format!(
            "change request {} is no longer pending ({})",
            request.id,
            now.map_or("gone", |s| s.as_str())
        )))
    }
}

async fn record_decision(
    txn: &DatabaseTransaction,
    by: StaffId,
    action: &'static str,
    request: &change_request::Model,
    comment: Option<&str>,
) -> AppResult<()> {
    audit::record(
        txn,
        AuditEntry::ok(by, action, "change_request", request.id)
            .in_unit(request.org_unit_id)
            .with_detail(json!({ "kind": request.kind, "requester": request.requester_staff_id, "comment": comment })),
    )
    .await?;
    Ok(())
}

/// The request's change, parsed.
enum Change {
    Library(LibraryEdit, Versions),
    Tagging(BulkTagging),
}

fn change_of(request: &change_request::Model) -> AppResult<Change> {
    if request.kind.starts_with("customer.") {
        let bulk: BulkTagging = serde_json::from_value(request.payload.clone()).map_err(AppError::internal)?;
        return Ok(Change::Tagging(bulk));
    }
    let edit: LibraryEdit = serde_json::from_value(request.payload.clone()).map_err(AppError::internal)?;
    let base: Versions = serde_json::from_value(request.base_versions.clone()).map_err(AppError::internal)?;
    Ok(Change::Library(edit, base))
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
    id: i64,
    comment: Option<&str>,
) -> AppResult<Approval> {
    let comment = comment_of(comment, "comment", false)?;
    let request = find(db, principal, id).await?;
    require_decider(principal, &request)?;
    let change = change_of(&request)?;
    let txn = db.begin().await?;
    if let Change::Library(_, base) = &change
        && !library_edit::still_current(&txn, base).await?
    {
        transition(&txn, &request, ChangeRequestStatus::Stale, principal.staff_id(), comment.clone()).await?;
        record_decision(&txn, principal.staff_id(), "change_request.stale", &request, comment.as_deref()).await?;
        txn.commit().await?;
        return Err(AppError::Conflict(format!(
            "the target of change request {id} changed since it was made; the request is now STALE"
        )));
    }
    transition(&txn, &request, ChangeRequestStatus::Approved, principal.staff_id(), comment.clone()).await?;
    record_decision(&txn, principal.staff_id(), "change_request.approve", &request, comment.as_deref()).await?;
    let outcome = match change {
        Change::Library(edit, base) => {
            library_edit::apply(
                &txn,
                StaffId(request.requester_staff_id),
                &edit,
                &base,
                Some(request.id),
                &request.reason,
            )
            .await?
        }
        Change::Tagging(bulk) => {
            let requester = requester_principal(&txn, authz, principal, &request).await?;
            tagging::apply_approved(&txn, &requester, limits, bulk, request.id).await?;
            EditOutcome { applied: true, ..Default::default() }
        }
    };
    txn.commit().await?;
    let request = find(db, principal, id).await?;
    Ok(Approval { request, outcome })
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

fn require_decider(principal: &Principal, request: &change_request::Model) -> AppResult<()> {
    if request.requester_staff_id == principal.staff.id {
        return Err(AppError::Forbidden("nobody approves or rejects their own change request".to_owned()));
    }
    principal.require(Action::ChangeRequestApprove, request.org_unit_id)
}

/// Rejects a pending request; the reason is required.
///
/// # Errors
/// As [`approve`]; `VALIDATION` without a reason.
#[tracing::instrument(skip(db, principal, reason), fields(staff = principal.staff.id))]
pub async fn reject(
    db: &DatabaseConnection,
    principal: &Principal,
    id: i64,
    reason: Option<&str>,
) -> AppResult<change_request::Model> {
    let reason = comment_of(reason, "reason", true)?;
    let request = find(db, principal, id).await?;
    require_decider(principal, &request)?;
    let txn = db.begin().await?;
    transition(&txn, &request, ChangeRequestStatus::Rejected, principal.staff_id(), reason.clone()).await?;
    record_decision(&txn, principal.staff_id(), "change_request.reject", &request, reason.as_deref()).await?;
    txn.commit().await?;
    find(db, principal, id).await
}

/// Withdraws a pending request: its requester only.
///
/// # Errors
/// `NOT_FOUND`, `FORBIDDEN` for others' requests, `CONFLICT` when decided.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn cancel(db: &DatabaseConnection, principal: &Principal, id: i64) -> AppResult<change_request::Model> {
    let request = find(db, principal, id).await?;
    if request.requester_staff_id != principal.staff.id {
        return Err(AppError::Forbidden("only its requester cancels a change request".to_owned()));
    }
    let txn = db.begin().await?;
    transition(&txn, &request, ChangeRequestStatus::Cancelled, principal.staff_id(), None).await?;
    record_decision(&txn, principal.staff_id(), "change_request.cancel", &request, None).await?;
    txn.commit().await?;
    find(db, principal, id).await
}
