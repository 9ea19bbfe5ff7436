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
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement, TransactionTrait,
    sea_query::Expr,
};
use serde_json::json;

use crate::authz::{Action, Principal};
use crate::domain::{CustomerId, LockId, Reason, StaffId, TagGroupId};
use crate::error::{AppError, AppResult, LockInfo};
use crate::service::audit::{self, AuditEntry};
use crate::service::tag_library::find_group;
use crate::store::event_log::pg_array;
use crate::store::{CHUNK, id_in, ids_per_statement};

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
    let first = coverage(db, &locks, customers).await?.first().map(|(lock, _)| *lock);
    if let Some(lock) = locks.iter().find(|l| Some(l.id) == first) {
        return Err(AppError::Locked(lock_info(db, lock).await?));
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
    locked.extend(coverage(db, &locks, customers).await?.into_iter().map(|(_, c)| c));
    Ok(locked)
}

/// Which of `customers` each of `locks` covers, as (lock id, customer id)
/// pairs by lock id: every customer for a whole-group lock; for a bulk
/// job's lock (`job_id`), those in the job's snapshot; otherwise those
/// listed in `modification_lock_customer`. One statement for the listed
/// locks and one per job lock (per chunk of customers on SQLite).
///
/// # Errors
/// Database errors.
pub(crate) async fn coverage(
    db: &impl ConnectionTrait,
    locks: &[modification_lock::Model],
    customers: &[i64],
) -> AppResult<Vec<(i64, i64)>> {
    let mut out = Vec::new();
    if customers.is_empty() {
        return Ok(out);
    }
    for lock in locks.iter().filter(|l| l.whole_group) {
        out.extend(customers.iter().map(|c| (lock.id, *c)));
    }
    let listed: Vec<i64> = locks.iter().filter(|l| !l.whole_group && l.job_id.is_none()).map(|l| l.id).collect();
    let of_jobs: Vec<(i64, i64)> =
        locks.iter().filter(|l| !l.whole_group).filter_map(|l| Some((l.id, l.job_id?))).collect();
    let backend = db.get_database_backend();
    for chunk in customers.chunks(ids_per_statement(backend)) {
        if !listed.is_empty() {
            let rows: Vec<(i64, i64)> = modification_lock_customer::Entity::find()
                .select_only()
                .columns([modification_lock_customer::Column::LockId, modification_lock_customer::Column::CustomerId])
                .filter(modification_lock_customer::Column::LockId.is_in(listed.iter().copied()))
                .filter(id_in(backend, modification_lock_customer::Column::CustomerId, chunk))
                .into_tuple()
                .all(db)
                .await?;
            out.extend(rows);
        }
        for (lock, job) in &of_jobs {
            let rows: Vec<i64> = job_customer::Entity::find()
                .select_only()
                .column(job_customer::Column::CustomerId)
                .filter(job_customer::Column::JobId.eq(*job))
                .filter(id_in(backend, job_customer::Column::CustomerId, chunk))
                .into_tuple()
                .all(db)
                .await?;
            out.extend(rows.into_iter().map(|c| (*lock, c)));
        }
    }
    out.sort_by_key(|(lock, _)| *lock);
    Ok(out)
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

/// Takes a lock on `group` for the customers of a job's snapshot
/// (`total` of them), leaving out the customers somebody else's lock
/// covers (the job skips those). Recorded in the audit log.
///
/// When nobody else holds a lock in force on the group (the usual case),
/// the lock names the job (`job_id`) and covers its snapshot as it is:
/// no row is copied (copying 100,000 customers cost ~1.5 s). Otherwise
/// the snapshot's customers not covered by those locks are listed, as a
/// lock taken by hand lists them.
///
/// # Errors
/// Database errors.
pub(crate) async fn take_for_job(
    txn: &DatabaseTransaction,
    holder: StaffId,
    group: &tag_group::Model,
    job_id: i64,
    total: i64,
    reason: &str,
    until: DateTime<Utc>,
) -> AppResult<modification_lock::Model> {
    crate::store::event_log::serialize_event_log(txn).await?;
    let now = Utc::now();
    let others = others_locks(txn, holder.0, &[group.id]).await?;
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
        job_id: Set(others.is_empty().then_some(job_id)),
    })
    .exec_with_returning(txn)
    .await?;
    let covered_rows = if others.is_empty() {
        total
    } else if others.iter().any(|l| l.whole_group) {
        0
    } else {
        let snapshot: Vec<i64> = job_customer::Entity::find()
            .select_only()
            .column(job_customer::Column::CustomerId)
            .filter(job_customer::Column::JobId.eq(job_id))
            .order_by_asc(job_customer::Column::CustomerId)
            .into_tuple()
            .all(txn)
            .await?;
        let taken: HashSet<i64> = coverage(txn, &others, &snapshot).await?.into_iter().map(|(_, c)| c).collect();
        let free: Vec<i64> = snapshot.into_iter().filter(|c| !taken.contains(c)).collect();
        insert_lock_rows(txn, lock.id, &free).await?;
        free.len() as i64
    };
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

/// Lists the customers a lock covers: one statement over an array on
/// PostgreSQL, multi-row statements on SQLite.
async fn insert_lock_rows(txn: &DatabaseTransaction, lock_id: i64, customers: &[i64]) -> AppResult<()> {
    if customers.is_empty() {
        return Ok(());
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        let sql = "INSERT INTO modification_lock_customer (lock_id, customer_id) \
                   SELECT $1, u.c FROM unnest($2::text::bigint[]) AS u(c)";
        let values: Vec<sea_orm::Value> = vec![lock_id.into(), pg_array(customers.iter().map(|c| Some(*c))).into()];
        txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
        return Ok(());
    }
    for chunk in customers.chunks(CHUNK) {
        modification_lock_customer::Entity::insert_many(
            chunk
                .iter()
                .map(|c| modification_lock_customer::ActiveModel { lock_id: Set(lock_id), customer_id: Set(*c) }),
        )
        .exec(txn)
        .await?;
    }
    Ok(())
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
    let overlapping = match customers {
        None => others.first().map(|l| l.id),
        Some(ids) => coverage(txn, &others, ids).await?.first().map(|(lock, _)| *lock),
    };
    if let Some(other) = others.iter().find(|l| Some(l.id) == overlapping) {
        return Err(AppError::Locked(lock_info(txn, other).await?));
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
        job_id: Set(None),
    })
    .exec_with_returning(txn)
    .await?;
    if let Some(ids) = customers {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        insert_lock_rows(txn, lock.id, &ids).await?;
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
