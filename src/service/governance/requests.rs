//! Filing and reading change requests: library edits and bulk tagging that
//! the policy does not let their author apply directly. The services that
//! propose changes file through here; approving them is
//! [`approval`](super::approval)'s business.

use entity::change_request;
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction};
use serde_json::json;

use crate::authz::{Action, Principal};
use crate::domain::{ChangeRequestId, OrgUnitId, PageArgs, StaffId};
use crate::error::{AppError, AppResult};
use crate::service::audit::{self, AuditEntry};
use crate::store::change_request as rows;
pub use crate::store::change_request::{ChangeRequestKind, NewRequest, RequestTarget};

/// Files a pending request by the caller, with its audit row, in `txn`.
///
/// # Errors
/// Database errors.
pub async fn file(
    txn: &DatabaseTransaction,
    principal: &Principal,
    new: NewRequest,
) -> AppResult<change_request::Model> {
    let request = rows::insert(txn, principal.staff_id(), new).await?;
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
    pub status: Option<entity::enums::ChangeRequestStatus>,
    /// Requests whose scope is this unit or a unit below it.
    pub scope: Option<OrgUnitId>,
    pub requester: Option<StaffId>,
}

/// A page of requests, newest first, with each row's cursor.
pub type RequestPage = crate::store::NewestFirst<change_request::Model>;

/// The requests the caller may see: its own, and those in the units where
/// it approves or reads the audit log.
fn visible(principal: &Principal) -> Condition {
    Condition::any()
        .add(change_request::Column::RequesterStaffId.eq(principal.staff.id))
        .add(principal.scope(Action::ChangeRequestApprove).condition(change_request::Column::OrgUnitId))
        .add(principal.scope(Action::AuditLogRead).condition(change_request::Column::OrgUnitId))
}

/// [`visible`] for a request already read (the realtime hub's): the same
/// three reasons, in the same order.
pub fn is_visible(principal: &Principal, request: &change_request::Model) -> bool {
    request.requester_staff_id == principal.staff.id
        || principal.scope(Action::ChangeRequestApprove).contains(request.org_unit_id)
        || principal.scope(Action::AuditLogRead).contains(request.org_unit_id)
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
    rows::list(db, filtered(principal, filter)?, page).await
}

/// How many requests match (all pages).
///
/// # Errors
/// As [`list`].
pub async fn count(db: &impl ConnectionTrait, principal: &Principal, filter: &RequestFilter) -> AppResult<u64> {
    rows::count(db, filtered(principal, filter)?).await
}

/// A request the caller may see.
///
/// # Errors
/// `NOT_FOUND` for missing and invisible requests alike.
pub async fn find(
    db: &impl ConnectionTrait,
    principal: &Principal,
    id: ChangeRequestId,
) -> AppResult<change_request::Model> {
    rows::find(db, id, visible(principal)).await?.ok_or_else(|| AppError::not_found("change request", id.0))
}
