//! Change-request rows: filed, found, listed and moved out of `PENDING`.
//! Which handler applies a request, and who may decide it, is the
//! business of `service::governance`; this file only keeps the rows.

use std::fmt;

use chrono::Utc;
use entity::{change_request, enums::ChangeRequestStatus};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter,
    sea_query::Expr,
};

use crate::domain::{ChangeRequestId, ObjectKind, PageArgs, Reason, StaffId};
use crate::error::{AppError, AppResult};

const ORDERING: &str = "change_request.newest";

/// What a change request asks for; stored as its `kind` text and used as
/// the audit action of the change. Approval dispatches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeRequestKind {
    TagGroupUpdate,
    TagUpdate,
    TagArchive,
    TagRestore,
    TagMerge,
    TagRollback,
    TagCreate,
    TagGroupCreate,
    CustomerTag,
    CustomerUntag,
    RuleCreate,
    RuleUpdate,
    RuleEnable,
    /// A bulk job waiting to run (payload `{"jobId": …}`).
    BulkJob,
    /// Two customers to merge (payload: both ids and the versions seen).
    CustomerMerge,
}

impl ChangeRequestKind {
    const ALL: [Self; 15] = [
        Self::TagGroupUpdate,
        Self::TagUpdate,
        Self::TagArchive,
        Self::TagRestore,
        Self::TagMerge,
        Self::TagRollback,
        Self::TagCreate,
        Self::TagGroupCreate,
        Self::CustomerTag,
        Self::CustomerUntag,
        Self::RuleCreate,
        Self::RuleUpdate,
        Self::RuleEnable,
        Self::BulkJob,
        Self::CustomerMerge,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TagGroupUpdate => "tag_group.update",
            Self::TagUpdate => "tag.update",
            Self::TagArchive => "tag.archive",
            Self::TagRestore => "tag.restore",
            Self::TagMerge => "tag.merge",
            Self::TagRollback => "tag.rollback",
            Self::TagCreate => "tag.create",
            Self::TagGroupCreate => "tag_group.create",
            Self::CustomerTag => "customer.tag",
            Self::CustomerUntag => "customer.untag",
            Self::RuleCreate => "rule.create",
            Self::RuleUpdate => "rule.update",
            Self::RuleEnable => "rule.enable",
            Self::BulkJob => "customer.bulk_tag",
            Self::CustomerMerge => "customer.merge",
        }
    }

    /// The kind of a stored request.
    ///
    /// # Errors
    /// `INTERNAL` for a kind this version does not know.
    pub fn of(request: &change_request::Model) -> AppResult<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == request.kind)
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("unknown change request kind {:?}", request.kind)))
    }
}

impl fmt::Display for ChangeRequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a change request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestTarget {
    /// A tag or group (none yet for a group to be created).
    Library(ObjectKind, Option<i64>),
    /// Customers' tags (bulk tagging).
    Customers,
    /// An automatic-tagging rule (none yet for a rule to be created).
    Rule(Option<i64>),
}

impl RequestTarget {
    fn columns(self) -> (&'static str, Option<i64>) {
        match self {
            Self::Library(kind, id) => (kind.as_str(), id),
            Self::Customers => ("CUSTOMER", None),
            Self::Rule(id) => ("RULE", id),
        }
    }
}

/// A change to file for approval.
pub struct NewRequest {
    pub kind: ChangeRequestKind,
    pub target: RequestTarget,
    pub base_versions: serde_json::Value,
    pub payload: serde_json::Value,
    /// The unit whose approvers decide.
    pub scope: i64,
    pub reason: Option<Reason>,
}

/// Inserts a pending request by `requester`.
///
/// # Errors
/// Database errors.
pub async fn insert(
    txn: &DatabaseTransaction,
    requester: StaffId,
    new: NewRequest,
) -> AppResult<change_request::Model> {
    let (target_kind, target_id) = new.target.columns();
    Ok(change_request::Entity::insert(change_request::ActiveModel {
        id: NotSet,
        kind: Set(new.kind.as_str().to_owned()),
        target_kind: Set(target_kind.to_owned()),
        target_id: Set(target_id),
        base_versions: Set(new.base_versions),
        payload: Set(new.payload),
        org_unit_id: Set(new.scope),
        requester_staff_id: Set(requester.0),
        reason: Set(new.reason.map(Reason::into_inner).unwrap_or_default()),
        status: Set(ChangeRequestStatus::Pending),
        decided_by: Set(None),
        decided_at: Set(None),
        decision_comment: Set(None),
        created_at: Set(Utc::now()),
    })
    .exec_with_returning(txn)
    .await?)
}

/// The request `id` if it meets `visible`.
///
/// # Errors
/// Database errors.
pub async fn find(
    db: &impl ConnectionTrait,
    id: ChangeRequestId,
    visible: Condition,
) -> AppResult<Option<change_request::Model>> {
    Ok(change_request::Entity::find_by_id(id.0).filter(visible).one(db).await?)
}

/// A page of the requests meeting `cond`, newest first.
///
/// # Errors
/// `VALIDATION` for a bad cursor; database errors.
pub async fn list(
    db: &impl ConnectionTrait,
    cond: Condition,
    page: &PageArgs,
) -> AppResult<super::NewestFirst<change_request::Model>> {
    let query = change_request::Entity::find().filter(cond);
    super::newest_first(db, query, change_request::Column::Id, |r| r.id, ORDERING, page).await
}

/// How many requests meet `cond`.
///
/// # Errors
/// Database errors.
pub async fn count(db: &impl ConnectionTrait, cond: Condition) -> AppResult<u64> {
    Ok(change_request::Entity::find().filter(cond).count(db).await?)
}

/// Moves a pending request to `status`, decided `by` with `comment`, as
/// one conditional update, so that of two racing decisions one wins.
///
/// # Errors
/// `CONFLICT` when the request is no longer pending (somebody decided it
/// first).
pub async fn transition(
    txn: &DatabaseTransaction,
    id: ChangeRequestId,
    status: ChangeRequestStatus,
    by: StaffId,
    comment: Option<&Reason>,
) -> AppResult<()> {
    let result = change_request::Entity::update_many()
        .col_expr(change_request::Column::Status, Expr::value(status.as_str()))
        .col_expr(change_request::Column::DecidedBy, Expr::value(by.0))
        .col_expr(change_request::Column::DecidedAt, Expr::value(Utc::now()))
        .col_expr(change_request::Column::DecisionComment, Expr::value(comment.map(|c| c.as_str().to_owned())))
        .filter(change_request::Column::Id.eq(id.0))
        .filter(change_request::Column::Status.eq(ChangeRequestStatus::Pending))
        .exec(txn)
        .await?;
    if result.rows_affected == 1 {
        return Ok(());
    }
    let now = change_request::Entity::find_by_id(id.0).one(txn).await?.map(|r| r.status);
    Err(AppError::Conflict(format!(
        "change request {} is no longer pending ({})",
        id.0,
        now.map_or("gone", |s| s.as_str())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_text() {
        for kind in ChangeRequestKind::ALL {
            let row = change_request::Model {
                id: 1,
                kind: kind.as_str().to_owned(),
                target_kind: String::new(),
                target_id: None,
                base_versions: serde_json::Value::Null,
                payload: serde_json::Value::Null,
                org_unit_id: 1,
                requester_staff_id: 1,
                reason: String::new(),
                status: ChangeRequestStatus::Pending,
                decided_by: None,
                decided_at: None,
                decision_comment: None,
                created_at: Utc::now(),
            };
            assert_eq!(ChangeRequestKind::of(&row).unwrap(), kind);
        }
    }
}
