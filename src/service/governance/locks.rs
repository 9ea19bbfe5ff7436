//! Modification locks (修改锁): while a lock on a tag group holds,
//! only its holder changes the covered customers' tags of that group;
//! everybody else is refused with `LOCKED` (who, why, until when) instead
//! of being overwritten. Bulk tagging takes locks on its own; people with
//! `tag_group:lock` take and release them by hand. Locks expire on their
//! own, so a crashed bulk run cannot freeze a group for ever.

use chrono::{DateTime, Duration, Utc};
use std::collections::HashSet;

use entity::{job_customer, modification_lock, modification_lock_customer, staff, tag_group};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
    sea_query::{Alias, Expr, ExprTrait, JoinType, Query},
};
use serde_json::json;

use crate::authz::{Action, Principal};
use crate::domain::{CustomerId, LockId, Reason, StaffId, TagGroupId};
use crate::error::{AppError, AppResult, LockInfo};
use crate::service::audit::{self, AuditEntry};
use crate::service::tag_library::find_group;
use crate::store::CHUNK;

/// Longest a lock may be taken for.
pub const MAX_LOCK_SECONDS: i64 = 24 * 3600;
/// How long a lock holds when no duration is given.
pub const DEFAULT_LOCK_SECONDS: i64 = 30 * 60;

/// The locks in force now on these groups held by somebody other than
/// `staff_id` that cover any of `customers`; the first one found.
///
/// # Errors
/// `LOCKED` naming the lock; database errors.
pub async fn check_unlocked(
    db: &impl ConnectionTrait,
    staff_id: i64,
    groups: &[i64],
    customers: &[i64],
) -> AppResult<()> {
    if groups.is_empty() || customers.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let locks = modification_lock::Entity::find()
        .filter(modification_lock::Column::GroupId.is_in(groups.iter().copied()))
        .filter(modification_lock::Column::ReleasedAt.is_null())
        .filter(modification_lock::Column::ExpiresAt.gt(now))
        .filter(modification_lock::Column::HolderStaffId.ne(staff_id))
        .order_by_asc(modification_lock::Column::Id)
        .all(db)
        .await?;
    for lock in locks {
        let covers = lock.whole_group || covers_any(db, lock.id, customers).await?;
        if covers {
            return Err(AppError::Locked(lock_info(db, &lock).await?));
        }
    }
    Ok(())
}

/// The customers among `customers` that somebody other than `staff_id`
/// holds a lock in force on, in any of these groups: a bulk job leaves
/// them out (and reports them) instead of failing.
///
/// # Errors
/// Database errors.
pub async fn locked_customers(
    db: &impl ConnectionTrait,
    staff_id: i64,
    groups: &[i64],
    customers: &[i64],
) -> AppResult<HashSet<i64>> {
    let mut locked = HashSet::new();
    if groups.is_empty() || customers.is_empty() {
        return Ok(locked);
    }
    let locks = others_locks(db, staff_id, groups).await?;
    if locks.iter().any(|l| l.whole_group) {
        return Ok(customers.iter().copied().collect());
    }
    if locks.is_empty() {
        return Ok(locked);
    }
    for chunk in customers.chunks(CHUNK) {
        let rows: Vec<i64> = modification_lock_customer::Entity::find()
            .select_only()
            .column(modification_lock_customer::Column::CustomerId)
            .filter(modification_lock_customer::Column::LockId.is_in(locks.iter().map(|l| l.id)))
            .filter(modification_lock_customer::Column::CustomerId.is_in(chunk.iter().copied()))
            .into_tuple()
            .all(db)
            .await?;
        locked.extend(rows);
    }
    Ok(locked)
}

/// The locks in force on these groups held by somebody other than `staff_id`.
async fn others_locks(
    db: &impl ConnectionTrait,
    staff_id: i64,
    groups: &[i64],
) -> AppResult<Vec<modification_lock::Model>> {
    Ok(modification_lock::Entity::find()
        .filter(modification_lock::Column::GroupId.is_in(groups.iter().copied()))
        .filter(modification_lock::Column::ReleasedAt.is_null())
        .filter(modification_lock::Column::ExpiresAt.gt(Utc::now()))
        .filter(modification_lock::Column::HolderStaffId.ne(staff_id))
        .order_by_asc(modification_lock::Column::Id)
        .all(db)
        .await?)
}

/// Takes a lock on `group` for the customers of a job's snapshot, in one
/// `INSERT … SELECT` from the snapshot, leaving out the customers somebody
/// else's lock covers (the job skips those). Recorded in the audit log.
///
/// # Errors
/// Database errors.
pub(crate) async fn take_for_job(
    txn: &DatabaseTransaction,
    holder: StaffId,
    group: &tag_group::Model,
    job_id: i64,
    reason: &str,
    until: DateTime<Utc>,
) -> AppResult<modification_lock::Model> {
    crate::store::event_log::serialize_event_log(txn).await?;
    let now = Utc::now();
    let lock = modification_lock::Entity::insert(modification_lock::ActiveModel {
        id: NotSet,
        group_id: Set(group.id),
        holder_staff_id: Set(holder.0),
        reason: Set(reason.trim().to_owned()),
        whole_group: Set(false),
        acquired_at: Set(now),
        expires_at: Set(until),
        released_at: Set(None),
        released_by: Set(None),
    })
    .exec_with_returning(txn)
    .await?;
    let (ml, mlc) = (Alias::new("ml"), Alias::new("mlc"));
    let covered = Query::select()
        .expr(Expr::val(1))
        .from_as(modification_lock_customer::Entity, mlc.clone())
        .join_as(
            JoinType::InnerJoin,
            modification_lock::Entity,
            ml.clone(),
            Expr::col((ml.clone(), modification_lock::Column::Id))
                .equals((mlc.clone(), modification_lock_customer::Column::LockId)),
        )
        .and_where(
            Expr::col((mlc.clone(), modification_lock_customer::Column::CustomerId))
                .equals((job_customer::Entity, job_customer::Column::CustomerId)),
        )
        .and_where(Expr::col((ml.clone(), modification_lock::Column::GroupId)).eq(group.id))
        .and_where(Expr::col((ml.clone(), modification_lock::Column::ReleasedAt)).is_null())
        .and_where(Expr::col((ml.clone(), modification_lock::Column::ExpiresAt)).gt(now))
        .and_where(Expr::col((ml.clone(), modification_lock::Column::HolderStaffId)).ne(holder.0))
        .to_owned();
    let whole_group_others = Query::select()
        .expr(Expr::val(1))
        .from(modification_lock::Entity)
        .and_where(modification_lock::Column::GroupId.eq(group.id))
        .and_where(modification_lock::Column::WholeGroup.eq(true))
        .and_where(modification_lock::Column::ReleasedAt.is_null())
        .and_where(modification_lock::Column::ExpiresAt.gt(now))
        .and_where(modification_lock::Column::HolderStaffId.ne(holder.0))
        .to_owned();
    let snapshot = Query::select()
        .expr(Expr::val(lock.id))
        .column((job_customer::Entity, job_customer::Column::CustomerId))
        .from(job_customer::Entity)
        .and_where(Expr::col((job_customer::Entity, job_customer::Column::JobId)).eq(job_id))
        .and_where(Expr::exists(covered).not())
        .and_where(Expr::exists(whole_group_others).not())
        .to_owned();
    let insert = Query::insert()
        .into_table(modification_lock_customer::Entity)
        .columns([modification_lock_customer::Column::LockId, modification_lock_customer::Column::CustomerId])
        .select_from(snapshot)
        .map_err(|e| AppError::internal(anyhow::anyhow!(e)))?
        .to_owned();
    let covered_rows = txn.execute(&insert).await?.rows_affected();
    audit::record(
        txn,
        AuditEntry::ok(holder, "tag_group.lock", "tag_group", group.id).in_unit(group.org_unit_id).with_detail(json!({
            "lockId": lock.id,
            "reason": lock.reason,
            "until": lock.expires_at,
            "jobId": job_id,
            "customers": covered_rows,
        })),
    )
    .await?;
    Ok(lock)
}

/// Moves the end of the locks still in force to `until`: a job renews the
/// locks it holds while it runs (on whichever instance runs it).
///
/// # Errors
/// Database errors.
pub(crate) async fn extend(db: &impl ConnectionTrait, lock_ids: &[i64], until: DateTime<Utc>) -> AppResult<()> {
    if lock_ids.is_empty() {
        return Ok(());
    }
    modification_lock::Entity::update_many()
        .col_expr(modification_lock::Column::ExpiresAt, Expr::value(until))
        .filter(modification_lock::Column::Id.is_in(lock_ids.iter().copied()))
        .filter(modification_lock::Column::ReleasedAt.is_null())
        .exec(db)
        .await?;
    Ok(())
}

async fn covers_any(db: &impl ConnectionTrait, lock_id: i64, customers: &[i64]) -> AppResult<bool> {
    for chunk in customers.chunks(CHUNK) {
        let hit = modification_lock_customer::Entity::find()
            .filter(modification_lock_customer::Column::LockId.eq(lock_id))
            .filter(modification_lock_customer::Column::CustomerId.is_in(chunk.iter().copied()))
            .limit(1)
            .one(db)
            .await?;
        if hit.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn lock_info(db: &impl ConnectionTrait, lock: &modification_lock::Model) -> AppResult<LockInfo> {
    let holder = staff::Entity::find_by_id(lock.holder_staff_id).one(db).await?;
    let group = tag_group::Entity::find_by_id(lock.group_id).one(db).await?;
    Ok(LockInfo {
        lock_id: LockId(lock.id).to_string(),
        group: group.map(|g| g.name).unwrap_or_default(),
        holder: holder
            .map_or_else(|| lock.holder_staff_id.to_string(), |s| format!("{} ({})", s.display_name, s.login)),
        reason: lock.reason.clone(),
        until: lock.expires_at,
    })
}

/// What to lock.
#[derive(Debug, Clone)]
pub struct LockRequest {
    pub group: TagGroupId,
    /// `None`: every customer's tags of the group.
    pub customers: Option<Vec<CustomerId>>,
    pub reason: String,
    pub seconds: i64,
}

fn check_request(req: &LockRequest) -> AppResult<Reason> {
    let reason =
        Reason::parse_required(Some(&req.reason), "reason", "is required: others see it when they are refused")?;
    if !(1..=MAX_LOCK_SECONDS).contains(&req.seconds) {
        return Err(AppError::validation("durationSeconds", format!("must be between 1 and {MAX_LOCK_SECONDS}")));
    }
    if req.customers.as_ref().is_some_and(Vec::is_empty) {
        return Err(AppError::validation("customerIds", "name at least one customer, or leave it out for all"));
    }
    Ok(reason)
}

/// Inserts a lock (no permission check: the callers check). Refused with
/// `LOCKED` when somebody else's lock overlaps it.
///
/// Taken under the tag-event writers' serialization: a tagging transaction
/// that checked for locks before this one commits has committed before the
/// lock is in force, and one that starts after sees it.
async fn insert_lock(
    txn: &DatabaseTransaction,
    holder: i64,
    group_id: i64,
    customers: Option<&[i64]>,
    reason: &str,
    until: DateTime<Utc>,
) -> AppResult<modification_lock::Model> {
    crate::store::event_log::serialize_event_log(txn).await?;
    let others = modification_lock::Entity::find()
        .filter(modification_lock::Column::GroupId.eq(group_id))
        .filter(modification_lock::Column::ReleasedAt.is_null())
        .filter(modification_lock::Column::ExpiresAt.gt(Utc::now()))
        .filter(modification_lock::Column::HolderStaffId.ne(holder))
        .all(txn)
        .await?;
    for other in others {
        let overlaps = match customers {
            None => true,
            Some(ids) => other.whole_group || covers_any(txn, other.id, ids).await?,
        };
        if overlaps {
            return Err(AppError::Locked(lock_info(txn, &other).await?));
        }
    }
    let lock = modification_lock::Entity::insert(modification_lock::ActiveModel {
        id: NotSet,
        group_id: Set(group_id),
        holder_staff_id: Set(holder),
        reason: Set(reason.trim().to_owned()),
        whole_group: Set(customers.is_none()),
        acquired_at: Set(Utc::now()),
        expires_at: Set(until),
        released_at: Set(None),
        released_by: Set(None),
    })
    .exec_with_returning(txn)
    .await?;
    if let Some(ids) = customers {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        for chunk in ids.chunks(CHUNK) {
            modification_lock_customer::Entity::insert_many(
                chunk
                    .iter()
                    .map(|c| modification_lock_customer::ActiveModel { lock_id: Set(lock.id), customer_id: Set(*c) }),
            )
            .exec(txn)
            .await?;
        }
    }
    Ok(lock)
}

/// Marks a lock released (no permission check).
async fn release(txn: &impl ConnectionTrait, lock_id: i64, by: i64) -> AppResult<bool> {
    let result = modification_lock::Entity::update_many()
        .col_expr(modification_lock::Column::ReleasedAt, Expr::value(Utc::now()))
        .col_expr(modification_lock::Column::ReleasedBy, Expr::value(by))
        .filter(modification_lock::Column::Id.eq(lock_id))
        .filter(modification_lock::Column::ReleasedAt.is_null())
        .exec(txn)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Takes a lock for `holder` and records it in the audit log.
///
/// # Errors
/// `LOCKED` when somebody else's lock overlaps; database errors.
pub(crate) async fn take(
    txn: &DatabaseTransaction,
    holder: StaffId,
    group: &tag_group::Model,
    customers: Option<&[i64]>,
    reason: &str,
    until: DateTime<Utc>,
) -> AppResult<modification_lock::Model> {
    let lock = insert_lock(txn, holder.0, group.id, customers, reason, until).await?;
    audit::record(
        txn,
        AuditEntry::ok(holder, "tag_group.lock", "tag_group", group.id).in_unit(group.org_unit_id).with_detail(json!({
            "lockId": lock.id,
            "reason": lock.reason,
            "until": lock.expires_at,
            "customerIds": customers,
        })),
    )
    .await?;
    Ok(lock)
}

/// Releases a lock `by` somebody and records it in the audit log (with
/// whether the run it guarded completed, for a bulk run's own locks);
/// false when it was released already.
///
/// # Errors
/// Database errors.
pub(crate) async fn give_back(
    txn: &DatabaseTransaction,
    by: StaffId,
    lock: &modification_lock::Model,
    group: &tag_group::Model,
    completed: Option<bool>,
) -> AppResult<bool> {
    if !release(txn, lock.id, by.0).await? {
        return Ok(false);
    }
    audit::record(
        txn,
        AuditEntry::ok(by, "tag_group.unlock", "tag_group", group.id)
            .in_unit(group.org_unit_id)
            .with_detail(json!({ "lockId": lock.id, "holder": lock.holder_staff_id, "completed": completed })),
    )
    .await?;
    Ok(true)
}

/// Takes a lock by hand.
///
/// # Errors
/// `NOT_FOUND` for an invisible group or customer, `FORBIDDEN` without
/// `tag_group:lock` at the group's unit, `VALIDATION` for bad input,
/// `LOCKED` when somebody else's lock overlaps.
#[tracing::instrument(skip(db, principal, req), fields(staff = principal.staff.id))]
pub async fn lock_group(
    db: &DatabaseConnection,
    principal: &Principal,
    req: LockRequest,
) -> AppResult<modification_lock::Model> {
    let reason = check_request(&req)?;
    let group = find_group(db, principal, req.group).await?;
    principal.require(Action::TagGroupLock, group.org_unit_id)?;
    let customers: Option<Vec<i64>> = req.customers.as_ref().map(|c| c.iter().map(|c| c.0).collect());
    if let Some(ids) = &customers {
        crate::service::customer::require_visible_ids(db, principal, ids).await?;
    }
    let until = Utc::now() + Duration::seconds(req.seconds);
    let txn = db.begin().await?;
    let lock = take(&txn, principal.staff_id(), &group, customers.as_deref(), reason.as_str(), until).await?;
    txn.commit().await?;
    Ok(lock)
}

/// Releases a lock: its holder, or anybody with `tag_group:lock` at the
/// group's unit (an admin clearing a forgotten lock). The caller then
/// applies the rule actions the lock deferred
/// (`rules::deferred::apply_pending`; else the scheduler's next round does).
///
/// # Errors
/// `NOT_FOUND`, `FORBIDDEN`, `CONFLICT` when already released.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn unlock(db: &DatabaseConnection, principal: &Principal, id: LockId) -> AppResult<modification_lock::Model> {
    let lock_id = id.0;
    let lock = modification_lock::Entity::find_by_id(lock_id)
        .one(db)
        .await?
        .ok_or_else(|| AppError::not_found("lock", lock_id))?;
    let group =
        find_group(db, principal, TagGroupId(lock.group_id)).await.map_err(|_| AppError::not_found("lock", lock_id))?;
    if lock.holder_staff_id != principal.staff.id {
        principal.require(Action::TagGroupLock, group.org_unit_id)?;
    }
    let txn = db.begin().await?;
    if !give_back(&txn, principal.staff_id(), &lock, &group, None).await? {
        return Err(AppError::Conflict(format!("lock {lock_id} was already released")));
    }
    txn.commit().await?;
    Ok(modification_lock::Entity::find_by_id(lock_id).one(db).await?.unwrap_or(lock))
}

/// The locks in force on a group the caller may see, oldest first.
///
/// # Errors
/// `NOT_FOUND` for an invisible group.
pub async fn active_locks(
    db: &impl ConnectionTrait,
    principal: &Principal,
    group: TagGroupId,
) -> AppResult<Vec<modification_lock::Model>> {
    let group = find_group(db, principal, group).await?;
    Ok(modification_lock::Entity::find()
        .filter(modification_lock::Column::GroupId.eq(group.id))
        .filter(modification_lock::Column::ReleasedAt.is_null())
        .filter(modification_lock::Column::ExpiresAt.gt(Utc::now()))
        .order_by_asc(modification_lock::Column::Id)
        .all(db)
        .await?)
}

/// A lock, in force or not, on a group the caller may see.
///
/// # Errors
/// `NOT_FOUND` for a missing lock and for one on an invisible group alike.
pub async fn find(db: &impl ConnectionTrait, principal: &Principal, id: LockId) -> AppResult<modification_lock::Model> {
    let lock =
        modification_lock::Entity::find_by_id(id.0).one(db).await?.ok_or_else(|| AppError::not_found("lock", id))?;
    find_group(db, principal, TagGroupId(lock.group_id)).await.map_err(|e| match e {
        AppError::NotFound { .. } => AppError::not_found("lock", id),
        other => other,
    })?;
    Ok(lock)
}
