//! Bulk jobs (批量任务): tagging a segment or a long list of customers in
//! the background, with progress, cancellation, and exactly-once batches
//! across crashes and instances (docs/jobs.md).
//!
//! - **Snapshot.** The customers are fixed when the job is created (a
//!   segment is evaluated once, then): `job_customer` holds them by
//!   ordinal, written by one `INSERT … SELECT … unnest` on PostgreSQL.
//! - **Batches.** The job runs in batches of `job_batch_size` customers;
//!   each batch's transaction writes the assignments, the tag events *and*
//!   the job's checkpoint (`done` and the counts), so a crash never leaves
//!   half a batch and the counts always say exactly what was applied.
//! - **Lease.** An instance runs a job only while it holds the job's lease
//!   (`owner`, `lease_until`), taken by a conditional update and renewed
//!   by every batch, which also checks that `done` is where it left it.
//!   When an instance dies, the lease runs out and another instance (or
//!   the same one restarted) takes the job over from its checkpoint.
//! - **Locks.** When it starts, the job takes modification locks on the
//!   tags' groups for its snapshot (leaving out customers somebody else has
//!   locked: those are skipped and reported). The locks belong to the job:
//!   an instance taking it over extends them, and they are released when
//!   the job ends however it ends (or they expire).

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use entity::{
    customer,
    enums::{ChangeRequestStatus, JobStatus},
    job, job_customer, modification_lock, staff, tag_group,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::audit::{self, AuditEntry};
use super::customer::{self as customer_service, CustomerFilter, SegmentFilter};
use super::governance::locks;
use super::governance::requests::{self, ChangeRequestKind, NewRequest, RequestTarget};
use super::tagging;
use crate::authz::{Action, Authz, OrgTree, Principal};
use crate::config::Limits;
use crate::domain::{CustomerId, JobId, PageArgs, Reason, StaffId, TagId};
use crate::error::{AppError, AppResult};
use crate::segment::SegmentIndex;
use crate::store::change_request::transition;
use crate::store::event_log::{pg_array, share_event_log};
use crate::store::{CHUNK, id_in, ids_per_statement};

/// The kind of a bulk tagging job.
pub const BULK_TAG: &str = "BULK_TAG";
/// Errors a job keeps (the counts stay exact beyond them).
const MAX_ERRORS: usize = 100;
/// Times one batch runs again after a transient database error (see
/// [`is_transient`]) before the job fails.
const BATCH_RETRIES: u32 = 3;
/// The statement timeout inside a batch (PostgreSQL): a batch's statements
/// are bounded by the batch size, not by a caller waiting.
const BATCH_STATEMENT_TIMEOUT: StdDuration = StdDuration::from_secs(120);
const ORDERING: &str = "job.newest";

/// Which customers a bulk job tags.
#[derive(Debug, Clone)]
pub enum Customers {
    Ids(Vec<CustomerId>),
    Segment(Box<SegmentFilter>),
}

/// A bulk tagging job to create.
#[derive(Debug, Clone)]
pub struct BulkTagRequest {
    pub customers: Customers,
    pub add: Vec<TagId>,
    pub remove: Vec<TagId>,
    pub reason: Option<Reason>,
}

/// What a job does, as stored in `job.input`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobInput {
    pub add: Vec<i64>,
    pub remove: Vec<i64>,
    pub reason: Option<String>,
    /// `ids` or `segment`.
    pub customers_from: String,
}

impl JobInput {
    fn tags(&self, ids: &[i64]) -> Vec<TagId> {
        ids.iter().map(|t| TagId(*t)).collect()
    }
}

/// The stored input of a job.
///
/// # Errors
/// `INTERNAL` for a row this version cannot read.
pub fn input_of(job: &job::Model) -> AppResult<JobInput> {
    serde_json::from_value(job.input.clone()).map_err(AppError::internal)
}

/// True once a job has reached an end state.
pub fn is_finished(status: JobStatus) -> bool {
    matches!(status, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled)
}

fn check_request(limits: &Limits, req: &BulkTagRequest) -> AppResult<Vec<TagId>> {
    if req.add.is_empty() && req.remove.is_empty() {
        return Err(AppError::validation("add", "name at least one tag to add or to remove"));
    }
    if req.add.iter().any(|t| req.remove.contains(t)) {
        return Err(AppError::validation("remove", "a tag cannot be both added and removed"));
    }
    let all: Vec<TagId> = req.add.iter().chain(&req.remove).copied().collect();
    if all.len() > limits.max_tags_per_tagging {
        return Err(AppError::LimitExceeded(format!("at most {} tags per job", limits.max_tags_per_tagging)));
    }
    Ok(all)
}

/// The snapshot: the customers the job will tag, in the caller's scope,
/// ascending by id, and their org units.
async fn snapshot(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    limits: &Limits,
    customers: Customers,
) -> AppResult<Snapshot> {
    let (ids, from) = match customers {
        Customers::Ids(ids) => {
            if ids.is_empty() {
                return Err(AppError::validation("customers.customerIds", "name at least one customer"));
            }
            let mut ids: Vec<i64> = ids.into_iter().map(|c| c.0).collect();
            ids.sort_unstable();
            ids.dedup();
            (ids, "ids")
        }
        Customers::Segment(segment) => {
            let filter = CustomerFilter { segment: Some(*segment), ..Default::default() };
            let mut ids: Vec<i64> = match super::segment::index_members(db, index, principal, &filter).await? {
                Some(members) => members.iter().map(i64::from).collect(),
                None => customer_service::ids_in_scope(db, principal, &filter).await?,
            };
            ids.sort_unstable();
            (ids, "segment")
        }
    };
    if ids.len() > limits.max_customers_per_job {
        return Err(AppError::LimitExceeded(format!("at most {} customers per job", limits.max_customers_per_job)));
    }
    // One pass over the customers: that each named one is visible, and
    // the units the job touches.
    let mut units = BTreeSet::new();
    let mut visible = 0usize;
    let backend = db.get_database_backend();
    for chunk in ids.chunks(ids_per_statement(backend)) {
        let rows: Vec<(i64, i64)> = customer::Entity::find()
            .select_only()
            .column(customer::Column::OrgUnitId)
            .column_as(customer::Column::Id.count(), "n")
            .filter(id_in(backend, customer::Column::Id, chunk))
            .filter(principal.scope(Action::CustomerRead).condition(customer::Column::OrgUnitId))
            .filter(customer::Column::MergedIntoId.is_null())
            .group_by(customer::Column::OrgUnitId)
            .into_tuple()
            .all(db)
            .await?;
        for (unit, n) in rows {
            units.insert(unit);
            visible += usize::try_from(n).unwrap_or_default();
        }
    }
    if visible != ids.len() {
        // Which one: the slow path, only on this error.
        customer_service::require_visible_ids(db, principal, &ids).await?;
    }
    Ok(Snapshot { ids, units, from })
}

/// The customers a job tags, fixed when it is created.
struct Snapshot {
    /// Ascending.
    ids: Vec<i64>,
    /// The org units of those customers.
    units: BTreeSet<i64>,
    /// `ids` or `segment`.
    from: &'static str,
}

/// Writes a job's snapshot: one statement over an array on PostgreSQL,
/// multi-row statements on SQLite.
async fn insert_snapshot(txn: &DatabaseTransaction, job_id: i64, ids: &[i64]) -> AppResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        let sql = "INSERT INTO job_customer (job_id, ordinal, customer_id) \
                   SELECT $1, u.o - 1, u.c FROM unnest($2::text::bigint[]) WITH ORDINALITY AS u(c, o)";
        let values: Vec<sea_orm::Value> = vec![job_id.into(), pg_array(ids.iter().map(|c| Some(*c))).into()];
        txn.execute_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
        return Ok(());
    }
    for (n, chunk) in ids.chunks(CHUNK).enumerate() {
        let start = (n * CHUNK) as i64;
        job_customer::Entity::insert_many(chunk.iter().enumerate().map(|(i, c)| job_customer::ActiveModel {
            job_id: Set(job_id),
            ordinal: Set(start + i as i64),
            customer_id: Set(*c),
        }))
        .exec(txn)
        .await?;
    }
    Ok(())
}

/// Creates a bulk tagging job and returns it at once; an instance's worker
/// runs it. The customers are fixed now (a segment is evaluated once, in
/// the caller's scope). A caller holding `customer_tag:bulk` at every
/// customer's unit gets a `QUEUED` job; anybody else's job waits in
/// `AWAITING_APPROVAL` for a change request (as a bulk `tagCustomers`
/// call does).
///
/// # Errors
/// `VALIDATION` for no tags, a tag both added and removed, tags that are
/// not active or two of one exclusive group, tags outside a customer's
/// library; `NOT_FOUND` for tags or named customers the caller cannot see;
/// `FORBIDDEN` without the use of a tag at a customer's unit;
/// `LIMIT_EXCEEDED` over the job size. Nothing is written on error.
#[tracing::instrument(skip(db, index, principal, limits, req), fields(staff = principal.staff.id))]
pub async fn submit_bulk_tag(
    db: &DatabaseConnection,
    index: &SegmentIndex,
    principal: &Principal,
    limits: &Limits,
    req: BulkTagRequest,
) -> AppResult<job::Model> {
    let all = check_request(limits, &req)?;
    let tags = tagging::named_tags(db, principal, &all).await?;
    let mut exclusive: HashSet<i64> = HashSet::new();
    for t in tags.iter().filter(|t| req.add.iter().any(|a| a.0 == t.tag.id)) {
        if t.tag.status != entity::enums::TagStatus::Active {
            return Err(AppError::validation("add", format!("tag {:?} is not active", t.tag.name)));
        }
        if let Some(group) = t.group.as_ref().filter(|g| g.exclusive)
            && !exclusive.insert(group.id)
        {
            return Err(AppError::validation("add", format!("two tags of the exclusive group {:?}", group.name)));
        }
    }
    let Snapshot { ids, units, from } = snapshot(db, index, principal, limits, req.customers.clone()).await?;
    let input = JobInput {
        add: req.add.iter().map(|t| t.0).collect(),
        remove: req.remove.iter().map(|t| t.0).collect(),
        reason: req.reason.as_ref().map(|r| r.as_str().to_owned()),
        customers_from: from.to_owned(),
    };
    let now = Utc::now();
    let txn = db.begin().await?;
    let inserted = job::Entity::insert(job::ActiveModel {
        id: NotSet,
        kind: Set(BULK_TAG.to_owned()),
        status: Set(JobStatus::Queued),
        requested_by: Set(principal.staff.id),
        org_unit_id: Set(principal.staff.home_org_unit_id),
        input: Set(serde_json::to_value(&input).map_err(AppError::internal)?),
        total: Set(ids.len() as i64),
        done: Set(0),
        added: Set(0),
        removed: Set(0),
        unchanged: Set(0),
        skipped: Set(0),
        created: Set(0),
        updated: Set(0),
        errors: Set(json!([])),
        change_request_id: Set(None),
        cancel_requested: Set(false),
        lock_ids: Set(json!([])),
        owner: Set(None),
        lease_until: Set(None),
        attempts: Set(0),
        created_at: Set(now),
        started_at: Set(None),
        finished_at: Set(None),
        updated_at: Set(now),
    })
    .exec_with_returning(&txn)
    .await?;
    insert_snapshot(&txn, inserted.id, &ids).await?;
    // The whole job as it would apply: every tag usable, and from the
    // customer's library, at every unit it touches.
    for unit in &units {
        for t in &tags {
            tagging::require_use(principal, t, *unit)?;
            if let Some(group) = &t.group
                && req.add.iter().any(|a| a.0 == t.tag.id)
                && !principal.org.is_within(*unit, group.org_unit_id)
            {
                return Err(AppError::validation(
                    "add",
                    format!("tag {:?} is not in the tag library of some of these customers", t.tag.name),
                ));
            }
        }
    }
    let scope = principal.org.common_ancestor(units.iter().copied()).unwrap_or(principal.staff.home_org_unit_id);
    let mut update = job::ActiveModel { id: Set(inserted.id), org_unit_id: Set(scope), ..Default::default() };
    if !units.iter().all(|u| principal.may(Action::CustomerTagBulk, *u)) {
        let request = requests::file(
            &txn,
            principal,
            NewRequest {
                kind: ChangeRequestKind::BulkJob,
                target: RequestTarget::Customers,
                base_versions: json!({}),
                payload: json!({ "jobId": inserted.id, "add": input.add, "remove": input.remove, "customers": ids.len() }),
                scope,
                reason: req.reason.clone(),
            },
        )
        .await?;
        update.status = Set(JobStatus::AwaitingApproval);
        update.change_request_id = Set(Some(request.id));
    }
    let job = job::Entity::update(update).exec(&txn).await?;
    audit::record(
        &txn,
        AuditEntry::ok(principal.staff_id(), "job.create", "job", job.id).in_unit(scope).with_detail(json!({
            "kind": BULK_TAG,
            "status": job.status,
            "customers": job.total,
            "customersFrom": from,
            "add": input.add,
            "remove": input.remove,
            "changeRequestId": job.change_request_id,
        })),
    )
    .await?;
    txn.commit().await?;
    Ok(job)
}

/// The jobs the caller may see: its own, and those of units where it
/// approves change requests or reads the audit log.
fn visible(principal: &Principal) -> Condition {
    Condition::any()
        .add(job::Column::RequestedBy.eq(principal.staff.id))
        .add(principal.scope(Action::ChangeRequestApprove).condition(job::Column::OrgUnitId))
        .add(principal.scope(Action::AuditLogRead).condition(job::Column::OrgUnitId))
}

/// A job the caller may see.
///
/// # Errors
/// `NOT_FOUND` for missing and invisible jobs alike.
pub async fn find(db: &impl ConnectionTrait, principal: &Principal, id: JobId) -> AppResult<job::Model> {
    job::Entity::find_by_id(id.0)
        .filter(visible(principal))
        .one(db)
        .await?
        .ok_or_else(|| AppError::not_found("job", id))
}

/// A page of the jobs the caller may see, newest first.
///
/// # Errors
/// `VALIDATION` for a bad cursor.
pub async fn list(
    db: &impl ConnectionTrait,
    principal: &Principal,
    status: Option<JobStatus>,
    page: &PageArgs,
) -> AppResult<super::NewestFirst<job::Model>> {
    let mut query = job::Entity::find().filter(visible(principal));
    if let Some(status) = status {
        query = query.filter(job::Column::Status.eq(status));
    }
    super::newest_first(db, query, job::Column::Id, |j| j.id, ORDERING, page).await
}

/// Cancels a job: at once when it has not started (its change request, if
/// pending, is withdrawn with it); between two batches when it runs, by
/// whichever instance runs it. Its requester, or an approver at its unit.
///
/// # Errors
/// `NOT_FOUND`, `FORBIDDEN`, `CONFLICT` when the job has finished.
#[tracing::instrument(skip(db, principal), fields(staff = principal.staff.id))]
pub async fn cancel(db: &DatabaseConnection, principal: &Principal, id: JobId) -> AppResult<job::Model> {
    let found = find(db, principal, id).await?;
    if found.requested_by != principal.staff.id {
        principal.require(Action::ChangeRequestApprove, found.org_unit_id)?;
    }
    let finished = || AppError::Conflict(format!("job {id} has finished"));
    let txn = db.begin().await?;
    let now = Utc::now();
    let not_started = job::Entity::update_many()
        .col_expr(job::Column::Status, Expr::value(JobStatus::Cancelled))
        .col_expr(job::Column::CancelRequested, Expr::value(true))
        .col_expr(job::Column::FinishedAt, Expr::value(now))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .filter(job::Column::Id.eq(id.0))
        .filter(job::Column::Status.is_in([JobStatus::Queued, JobStatus::AwaitingApproval]))
        .filter(job::Column::StartedAt.is_null())
        .exec(&txn)
        .await?;
    if not_started.rows_affected == 1 {
        if let Some(request) = found.change_request_id.filter(|_| found.status == JobStatus::AwaitingApproval) {
            let id = crate::domain::ChangeRequestId(request);
            match transition(&txn, id, ChangeRequestStatus::Cancelled, principal.staff_id(), None).await {
                Ok(()) | Err(AppError::Conflict(_)) => {}
                Err(err) => return Err(err),
            }
        }
        let job = job::Entity::find_by_id(id.0).one(&txn).await?.ok_or_else(finished)?;
        record_end(&txn, &job, Some(principal.staff_id())).await?;
        txn.commit().await?;
        return Ok(job);
    }
    let running = job::Entity::update_many()
        .col_expr(job::Column::CancelRequested, Expr::value(true))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .filter(job::Column::Id.eq(id.0))
        .filter(job::Column::Status.is_in([JobStatus::Queued, JobStatus::Running]))
        .exec(&txn)
        .await?;
    if running.rows_affected != 1 {
        return Err(finished());
    }
    audit::record(&txn, AuditEntry::ok(principal.staff_id(), "job.cancel", "job", id.0).in_unit(found.org_unit_id))
        .await?;
    txn.commit().await?;
    find(db, principal, id).await
}

/// An approved change request lets its job run (in the approval's
/// transaction).
///
/// # Errors
/// `CONFLICT` when the job is no longer awaiting approval.
pub(crate) async fn approved(txn: &DatabaseTransaction, job_id: i64) -> AppResult<()> {
    let result = job::Entity::update_many()
        .col_expr(job::Column::Status, Expr::value(JobStatus::Queued))
        .col_expr(job::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::Status.eq(JobStatus::AwaitingApproval))
        .exec(txn)
        .await?;
    if result.rows_affected != 1 {
        return Err(AppError::Conflict(format!("job {} is no longer awaiting approval", JobId(job_id))));
    }
    Ok(())
}

/// A rejected or withdrawn change request cancels its job.
///
/// # Errors
/// Database errors.
pub(crate) async fn declined(txn: &DatabaseTransaction, job_id: i64, by: StaffId) -> AppResult<()> {
    let now = Utc::now();
    let result = job::Entity::update_many()
        .col_expr(job::Column::Status, Expr::value(JobStatus::Cancelled))
        .col_expr(job::Column::FinishedAt, Expr::value(now))
        .col_expr(job::Column::UpdatedAt, Expr::value(now))
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::Status.eq(JobStatus::AwaitingApproval))
        .exec(txn)
        .await?;
    if result.rows_affected == 1
        && let Some(job) = job::Entity::find_by_id(job_id).one(txn).await?
    {
        record_end(txn, &job, Some(by)).await?;
    }
    Ok(())
}

/// The one audit row of a job's end, with its counts (each customer's
/// changes are in the tag events, source `BULK`, `sourceRef` `job:<id>`).
async fn record_end(txn: &DatabaseTransaction, job: &job::Model, by: Option<StaffId>) -> AppResult<()> {
    let input = input_of(job)?;
    let errors = job.errors.as_array().map_or(0, Vec::len);
    if job.kind == super::import::IMPORT_CUSTOMERS {
        // The import's audit row, with the file's hash; its rows are done with.
        let import = super::import::import_input_of(job)?;
        super::import::forget_rows(txn, job.id).await?;
        audit::record(
            txn,
            AuditEntry::ok(by.unwrap_or(StaffId(job.requested_by)), "customer.import", "job", job.id)
                .in_unit(job.org_unit_id)
                .with_detail(json!({
                    "status": job.status,
                    "sha256": import.sha256,
                    "encoding": import.encoding,
                    "orgUnitId": import.org_unit_id,
                    "rows": import.rows,
                    "total": job.total,
                    "done": job.done,
                    "created": job.created,
                    "updated": job.updated,
                    "unchanged": job.unchanged,
                    "skipped": job.skipped,
                    "tagIds": input.add,
                    "tagsAdded": job.added,
                    "errorsKept": errors,
                    "startedAt": job.started_at,
                    "finishedAt": job.finished_at,
                })),
        )
        .await?;
        return Ok(());
    }
    audit::record(
        txn,
        AuditEntry::ok(by.unwrap_or(StaffId(job.requested_by)), "customer.bulk_tag", "job", job.id)
            .in_unit(job.org_unit_id)
            .with_detail(json!({
                "status": job.status,
                "requestedBy": job.requested_by,
                "add": input.add,
                "remove": input.remove,
                "reason": input.reason,
                "total": job.total,
                "done": job.done,
                "added": job.added,
                "removed": job.removed,
                "unchanged": job.unchanged,
                "skipped": job.skipped,
                "errorsKept": errors,
                "startedAt": job.started_at,
                "finishedAt": job.finished_at,
            })),
    )
    .await?;
    Ok(())
}

/// What a worker needs: the database, the policy (to act with the
/// requester's rights), this instance's index and its name.
#[derive(Clone)]
pub struct Worker {
    pub db: DatabaseConnection,
    pub authz: Authz,
    pub index: Arc<SegmentIndex>,
    pub limits: Limits,
    /// This instance, as written in `job.owner`.
    pub instance: String,
}

/// How a run of a job ended on this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// The job reached an end state here.
    Finished(JobStatus),
    /// Another instance holds the job now (this one's lease ran out).
    LostLease,
    /// Stopped dead by the fault-injection setting, as a killed process.
    Halted,
}

impl Worker {
    /// Looks for jobs every `interval` and runs them one at a time, until
    /// the process ends.
    pub fn spawn(self, interval: StdDuration) {
        tokio::spawn(async move {
            loop {
                match self.run_next().await {
                    Ok(Some(RunEnd::Halted)) => return,
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                    Err(err) => tracing::warn!(error = ?err, "bulk job worker"),
                }
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// Takes up the oldest job waiting to run (queued, or running on an
    /// instance whose lease ran out) and runs it; `None` when there is none.
    ///
    /// # Errors
    /// Database errors outside a job's batches.
    pub async fn run_next(&self) -> AppResult<Option<RunEnd>> {
        let Some(job) = self.claim().await? else { return Ok(None) };
        tracing::info!(job = job.id, attempt = job.attempts, "running bulk job");
        Ok(Some(self.run(job).await?))
    }

    fn lease_end(&self) -> DateTime<Utc> {
        Utc::now() + Duration::from_std(self.limits.job_lease).unwrap_or(Duration::seconds(30))
    }

    fn runnable() -> Condition {
        Condition::all()
            .add(job::Column::Status.is_in([JobStatus::Queued, JobStatus::Running]))
            .add(Condition::any().add(job::Column::LeaseUntil.is_null()).add(job::Column::LeaseUntil.lt(Utc::now())))
    }

    /// The lease, by a conditional update: of two instances reaching for
    /// one job, one gets it.
    async fn claim(&self) -> AppResult<Option<job::Model>> {
        let Some(candidate) =
            job::Entity::find().filter(Self::runnable()).order_by_asc(job::Column::Id).one(&self.db).await?
        else {
            return Ok(None);
        };
        let taken = job::Entity::update_many()
            .col_expr(job::Column::Owner, Expr::value(self.instance.clone()))
            .col_expr(job::Column::LeaseUntil, Expr::value(self.lease_end()))
            .col_expr(job::Column::Attempts, Expr::col(job::Column::Attempts).add(1))
            .col_expr(job::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(job::Column::Id.eq(candidate.id))
            .filter(Self::runnable())
            .exec(&self.db)
            .await?;
        if taken.rows_affected != 1 {
            return Ok(None);
        }
        Ok(job::Entity::find_by_id(candidate.id).one(&self.db).await?)
    }

    async fn run(&self, mut job: job::Model) -> AppResult<RunEnd> {
        if job.attempts > self.limits.job_max_attempts {
            let message = format!("taken up {} times without finishing", job.attempts - 1);
            return self.finish(&job, JobStatus::Failed, Some(("ABANDONED", message))).await;
        }
        let principal = match self.requester(&job).await {
            Ok(p) => p,
            Err(err) => return self.finish(&job, JobStatus::Failed, failure(&job, &err)).await,
        };
        let input = input_of(&job)?;
        if job.status == JobStatus::Queued && !job.cancel_requested {
            match self.start(&job, &principal, &input).await {
                Ok(Some(started)) => job = started,
                Ok(None) => return Ok(RunEnd::LostLease),
                Err(err) => {
                    return self.finish(&job, JobStatus::Failed, failure(&job, &err)).await;
                }
            }
        } else {
            // Taken over: the job's locks are handed on to this run.
            locks::extend(&self.db, &lock_ids(&job), self.lock_end()).await?;
        }
        let principal = Arc::new(principal);
        let mut batches = 0u32;
        let mut retries = 0u32;
        // The segment index catches up with each batch while the next one
        // runs (the database writes one, the index reads the other's
        // events), at most one catch-up behind; the job ends caught up.
        let mut following = Following::default();
        // A bulk job's batches on PostgreSQL run two at a time, each in its
        // own transaction on its own connection (one backend's CPU was the
        // bound), and commit in order: a batch commits its checkpoint only
        // on the `done` its predecessor left, so `done` stays a prefix of
        // the snapshot whatever fails or dies in between.
        let depth = if job.kind == BULK_TAG && self.db.get_database_backend() == DbBackend::Postgres { 2 } else { 1 };
        let mut ahead: VecDeque<(i64, tokio::task::JoinHandle<AppResult<Prepared>>)> = VecDeque::new();
        loop {
            let current = job::Entity::find_by_id(job.id).one(&self.db).await?.unwrap_or(job.clone());
            if current.cancel_requested {
                drain(&mut ahead).await;
                following.wait().await;
                return self.finish(&job, JobStatus::Cancelled, None).await;
            }
            if job.done >= job.total {
                following.wait().await;
                return self.finish(&job, JobStatus::Succeeded, None).await;
            }
            let step = if job.kind == BULK_TAG {
                let mut next = ahead.back().map_or(job.done, |(start, _)| start + self.batch_size());
                while ahead.len() < depth && next < job.total {
                    let (worker, principal, input) = (self.clone(), principal.clone(), input.clone());
                    let job_id = job.id;
                    let approved = job.change_request_id.is_some();
                    ahead.push_back((
                        next,
                        tokio::spawn(async move { worker.prepare(job_id, next, &principal, &input, approved).await }),
                    ));
                    next += self.batch_size();
                }
                match ahead.pop_front() {
                    Some((_, prepared)) => match prepared.await {
                        Ok(Ok(prepared)) => self.checkpoint(&job, prepared).await,
                        Ok(Err(err)) => Err(err),
                        Err(err) => Err(AppError::internal(err)),
                    },
                    None => Ok(None),
                }
            } else {
                self.batch(&job, &principal).await
            };
            match step {
                Ok(Some(next)) => {
                    job = next;
                    retries = 0;
                }
                Ok(None) => {
                    drain(&mut ahead).await;
                    return Ok(RunEnd::LostLease);
                }
                Err(err) if retries < BATCH_RETRIES && is_transient(&err) => {
                    // The batch rolled back whole (and those prepared after
                    // it with it): running them again from the same
                    // checkpoint applies each once.
                    drain(&mut ahead).await;
                    retries += 1;
                    tracing::warn!(job = job.id, retries, error = ?err, "bulk job batch rolled back; running it again");
                    tokio::time::sleep(StdDuration::from_millis(200 * u64::from(retries))).await;
                    continue;
                }
                Err(err) => {
                    drain(&mut ahead).await;
                    following.wait().await;
                    return self.finish(&job, JobStatus::Failed, failure(&job, &err)).await;
                }
            }
            following.wait().await;
            following.start(&self.index, &self.db);
            batches += 1;
            if self.limits.job_halt_after_batches.is_some_and(|k| batches >= k) {
                drain(&mut ahead).await;
                following.wait().await;
                tracing::warn!(job = job.id, batches, "bulk job worker halted (fault injection)");
                return Ok(RunEnd::Halted);
            }
        }
    }

    /// Customers per batch. At most 20,000: one statement binds a whole
    /// batch of ids on PostgreSQL.
    fn batch_size(&self) -> i64 {
        self.limits.job_batch_size.clamp(1, 20_000) as i64
    }

    fn lock_end(&self) -> DateTime<Utc> {
        Utc::now() + Duration::seconds(self.limits.bulk_lock_seconds)
    }

    /// The requester, with the rights it holds now.
    async fn requester(&self, job: &job::Model) -> AppResult<Principal> {
        let staff = staff::Entity::find_by_id(job.requested_by)
            .one(&self.db)
            .await?
            .filter(|s| s.active)
            .ok_or_else(|| AppError::Forbidden("the requester is no longer active".to_owned()))?;
        let org = Arc::new(OrgTree::load(&self.db).await?);
        Ok(self.authz.principal(staff, org))
    }

    /// `QUEUED` → `RUNNING`, taking the job's modification locks, in one
    /// transaction; `None` when the lease was lost meanwhile.
    async fn start(&self, job: &job::Model, principal: &Principal, input: &JobInput) -> AppResult<Option<job::Model>> {
        let tags: Vec<TagId> = input.tags(&input.add).into_iter().chain(input.tags(&input.remove)).collect();
        let visible = tagging::named_tags(&self.db, principal, &tags).await?;
        let mut groups: Vec<&tag_group::Model> = visible.iter().filter_map(|t| t.group.as_ref()).collect();
        groups.sort_by_key(|g| g.id);
        groups.dedup_by_key(|g| g.id);
        let txn = self.db.begin().await?;
        let now = Utc::now();
        let started = job::Entity::update_many()
            .col_expr(job::Column::Status, Expr::value(JobStatus::Running))
            .col_expr(job::Column::StartedAt, Expr::value(now))
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(job::Column::Id.eq(job.id))
            .filter(job::Column::Owner.eq(self.instance.clone()))
            .filter(job::Column::Status.eq(JobStatus::Queued))
            .exec(&txn)
            .await?;
        if started.rows_affected != 1 {
            return Ok(None);
        }
        let reason = format!(
            "bulk job {}{}",
            JobId(job.id),
            input.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
        );
        let mut ids = Vec::new();
        for group in groups {
            let lock =
                locks::take_for_job(&txn, principal.staff_id(), group, job.id, job.total, &reason, self.lock_end())
                    .await?;
            ids.push(lock.id);
        }
        job::Entity::update_many()
            .col_expr(job::Column::LockIds, Expr::value(json!(ids)))
            .filter(job::Column::Id.eq(job.id))
            .exec(&txn)
            .await?;
        let started = job::Entity::find_by_id(job.id).one(&txn).await?;
        txn.commit().await?;
        Ok(started)
    }

    /// One batch of an import job and its checkpoint, in one transaction;
    /// `None` when the lease is no longer this instance's (nothing written
    /// then).
    async fn batch(&self, job: &job::Model, principal: &Principal) -> AppResult<Option<job::Model>> {
        let txn = self.db.begin().await?;
        // First: renew the lease, only if the job is still ours and where
        // we left it. This also locks the job's row, so an instance that
        // finds the lease expired waits for this batch and then sees it
        // renewed.
        let renewed = job::Entity::update_many()
            .col_expr(job::Column::LeaseUntil, Expr::value(self.lease_end()))
            .filter(job::Column::Id.eq(job.id))
            .filter(job::Column::Owner.eq(self.instance.clone()))
            .filter(job::Column::Status.eq(JobStatus::Running))
            .filter(job::Column::Done.eq(job.done))
            .exec(&txn)
            .await?;
        if renewed.rows_affected != 1 {
            txn.rollback().await?;
            return Ok(None);
        }
        begin_batch(&txn).await?;
        self.import_batch(txn, job, principal, self.batch_size()).await
    }

    /// The writes of a bulk job's batch from snapshot ordinal `start`, in a
    /// transaction left open for [`Worker::checkpoint`]. It does not touch
    /// the job's row, so the next batch can run beside it; a batch whose
    /// checkpoint never comes rolls back whole.
    async fn prepare(
        &self,
        job_id: i64,
        start: i64,
        principal: &Principal,
        input: &JobInput,
        approved: bool,
    ) -> AppResult<Prepared> {
        let txn = self.db.begin().await?;
        begin_batch(&txn).await?;
        let ids: Vec<i64> = job_customer::Entity::find()
            .select_only()
            .column(job_customer::Column::CustomerId)
            .filter(job_customer::Column::JobId.eq(job_id))
            .filter(job_customer::Column::Ordinal.gte(start))
            .filter(job_customer::Column::Ordinal.lt(start + self.batch_size()))
            .order_by_asc(job_customer::Column::Ordinal)
            .into_tuple()
            .all(&txn)
            .await?;
        let mut errors: Vec<Value> = Vec::new();
        let mut skip = |customer: i64, code: &str, message: &str| {
            if errors.len() < MAX_ERRORS {
                errors
                    .push(json!({ "customerId": CustomerId(customer).to_string(), "code": code, "message": message }));
            }
        };
        let mut skipped = 0i64;
        // Customers out of the requester's scope now, or (unless approved)
        // in a unit where it may no longer bulk-tag, are left out. The
        // rest are locked by the same statement that finds them, reading
        // only their ids and units.
        let scope = Condition::all()
            .add(principal.scope(Action::CustomerRead).condition(customer::Column::OrgUnitId))
            .add(customer::Column::MergedIntoId.is_null());
        let found = tagging::lock_customer_units(&txn, &ids, scope).await?;
        let in_scope: HashSet<i64> = found.iter().map(|c| c.id).collect();
        for c in ids.iter().filter(|c| !in_scope.contains(c)) {
            skipped += 1;
            skip(*c, "NOT_FOUND", "no longer in the requester's scope");
        }
        let mut eligible: Vec<tagging::Locked> = Vec::with_capacity(found.len());
        for c in found {
            if approved || principal.may(Action::CustomerTagBulk, c.org_unit_id) {
                eligible.push(c);
            } else {
                skipped += 1;
                skip(c.id, "FORBIDDEN", "the requester may not bulk-tag at this customer's unit");
            }
        }
        let adding = input.tags(&input.add);
        let named = tagging::named_tags(&txn, principal, &[adding.clone(), input.tags(&input.remove)].concat()).await?;
        let (add, remove): (Vec<_>, Vec<_>) = named.into_iter().partition(|t| adding.contains(&TagId(t.tag.id)));
        let mut groups: Vec<i64> = add.iter().chain(&remove).filter_map(|t| t.group.as_ref().map(|g| g.id)).collect();
        groups.sort_unstable();
        groups.dedup();
        let eligible_ids: Vec<i64> = eligible.iter().map(|c| c.id).collect();
        let locked = locks::locked_customers(&txn, principal.staff.id, &groups, &eligible_ids).await?;
        if !locked.is_empty() {
            for c in eligible_ids.iter().filter(|c| locked.contains(c)) {
                skipped += 1;
                skip(*c, "LOCKED", "another staff member's modification lock covers this customer");
            }
            eligible.retain(|c| !locked.contains(&c.id));
        }
        let outcome =
            tagging::apply_job_batch(&txn, principal, &self.limits, &eligible, &add, &remove, format!("job:{job_id}"))
                .await?;
        Ok(Prepared { txn, start, count: ids.len() as i64, outcome, skipped, errors })
    }

    /// Commits a prepared batch with its checkpoint, if the job is still
    /// this instance's and stands where the batch begins (its predecessor
    /// committed); `None`, and the batch rolled back, otherwise. `job` is
    /// the job as the predecessor's checkpoint left it.
    async fn checkpoint(&self, job: &job::Model, prepared: Prepared) -> AppResult<Option<job::Model>> {
        let Prepared { txn, start, count, outcome, skipped, mut errors } = prepared;
        let mut all: Vec<Value> = job.errors.as_array().cloned().unwrap_or_default();
        errors.truncate(MAX_ERRORS.saturating_sub(all.len()));
        all.extend(errors);
        let now = Utc::now();
        let saved = job::Entity::update_many()
            .col_expr(job::Column::Done, Expr::value(start + count))
            .col_expr(job::Column::Added, Expr::value(job.added + i64::from(outcome.added)))
            .col_expr(job::Column::Removed, Expr::value(job.removed + i64::from(outcome.removed)))
            .col_expr(job::Column::Unchanged, Expr::value(job.unchanged + i64::from(outcome.unchanged)))
            .col_expr(job::Column::Skipped, Expr::value(job.skipped + skipped))
            .col_expr(job::Column::Errors, Expr::value(Value::Array(all)))
            .col_expr(job::Column::LeaseUntil, Expr::value(self.lease_end()))
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(job::Column::Id.eq(job.id))
            .filter(job::Column::Owner.eq(self.instance.clone()))
            .filter(job::Column::Status.eq(JobStatus::Running))
            .filter(job::Column::Done.eq(start))
            .exec(&txn)
            .await?;
        if saved.rows_affected != 1 {
            txn.rollback().await?;
            return Ok(None);
        }
        locks::extend(&txn, &lock_ids(job), self.lock_end()).await?;
        let next = job::Entity::find_by_id(job.id).one(&txn).await?;
        txn.commit().await?;
        Ok(next)
    }

    /// One batch of an import job and its checkpoint, in the batch's
    /// transaction (the lease already renewed).
    async fn import_batch(
        &self,
        txn: DatabaseTransaction,
        job: &job::Model,
        principal: &Principal,
        size: i64,
    ) -> AppResult<Option<job::Model>> {
        let (rows, outcome) = super::import::job_batch(&txn, principal, &self.limits, job, size).await?;
        let mut errors: Vec<Value> = job.errors.as_array().cloned().unwrap_or_default();
        let room = MAX_ERRORS.saturating_sub(errors.len());
        errors.extend(super::import::job_errors(&outcome.issues).into_iter().take(room));
        let skipped = outcome.issues.iter().map(|i| i.line).collect::<HashSet<_>>().len() as i64;
        job::Entity::update_many()
            .col_expr(job::Column::Done, Expr::value(job.done + rows as i64))
            .col_expr(job::Column::Created, Expr::value(job.created + outcome.created as i64))
            .col_expr(job::Column::Updated, Expr::value(job.updated + outcome.updated as i64))
            .col_expr(job::Column::Unchanged, Expr::value(job.unchanged + outcome.unchanged as i64))
            .col_expr(job::Column::Added, Expr::value(job.added + outcome.tags_added as i64))
            .col_expr(job::Column::Skipped, Expr::value(job.skipped + skipped))
            .col_expr(job::Column::Errors, Expr::value(Value::Array(errors)))
            .col_expr(job::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(job::Column::Id.eq(job.id))
            .exec(&txn)
            .await?;
        locks::extend(&txn, &lock_ids(job), self.lock_end()).await?;
        let next = job::Entity::find_by_id(job.id).one(&txn).await?;
        txn.commit().await?;
        Ok(next)
    }

    /// Ends the job (if it is still this instance's), releases its locks and
    /// writes its audit row, in one transaction.
    async fn finish(&self, job: &job::Model, status: JobStatus, error: Option<(&str, String)>) -> AppResult<RunEnd> {
        let txn = self.db.begin().await?;
        let mut errors: Vec<Value> = job.errors.as_array().cloned().unwrap_or_default();
        if let Some((code, message)) = error {
            errors.push(json!({ "customerId": null, "code": code, "message": message }));
        }
        let now = Utc::now();
        let ended = job::Entity::update_many()
            .col_expr(job::Column::Status, Expr::value(status))
            .col_expr(job::Column::FinishedAt, Expr::value(now))
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .col_expr(job::Column::Errors, Expr::value(Value::Array(errors)))
            .col_expr(job::Column::LeaseUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .filter(job::Column::Id.eq(job.id))
            .filter(job::Column::Owner.eq(self.instance.clone()))
            .filter(job::Column::Status.is_in([JobStatus::Queued, JobStatus::Running]))
            .exec(&txn)
            .await?;
        if ended.rows_affected != 1 {
            txn.rollback().await?;
            return Ok(RunEnd::LostLease);
        }
        let by = StaffId(job.requested_by);
        for lock_id in lock_ids(job) {
            let Some(lock) = modification_lock::Entity::find_by_id(lock_id).one(&txn).await? else { continue };
            let Some(group) = tag_group::Entity::find_by_id(lock.group_id).one(&txn).await? else { continue };
            locks::give_back(&txn, by, &lock, &group, Some(status == JobStatus::Succeeded)).await?;
        }
        let ended = job::Entity::find_by_id(job.id).one(&txn).await?.unwrap_or(job.clone());
        record_end(&txn, &ended, None).await?;
        txn.commit().await?;
        tracing::info!(job = job.id, status = status.as_str(), done = ended.done, "bulk job ended");
        Ok(RunEnd::Finished(status))
    }
}

/// A bulk batch written in its open transaction, waiting for its
/// checkpoint.
struct Prepared {
    txn: DatabaseTransaction,
    /// The snapshot ordinal it begins at: the `done` it follows.
    start: i64,
    /// Customers of the snapshot it covers.
    count: i64,
    outcome: tagging::TaggingOutcome,
    skipped: i64,
    /// Its customers left out, with the reason.
    errors: Vec<Value>,
}

/// What every batch's transaction sets first: no request timeout (a batch
/// is no request: the connection's `statement_timeout` does not bound its
/// statements), and the shared side of the governance lock.
async fn begin_batch(txn: &DatabaseTransaction) -> AppResult<()> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared(&format!("SET LOCAL statement_timeout = {}", BATCH_STATEMENT_TIMEOUT.as_millis()))
            .await?;
    }
    share_event_log(txn).await
}

/// Drops the batches prepared ahead: each rolls back (a finished one when
/// its transaction is dropped, a running one when it is stopped).
async fn drain(ahead: &mut VecDeque<(i64, tokio::task::JoinHandle<AppResult<Prepared>>)>) {
    for (_, prepared) in ahead.drain(..) {
        prepared.abort();
        if let Ok(Ok(prepared)) = prepared.await
            && let Err(err) = prepared.txn.rollback().await
        {
            tracing::warn!(error = %err, "rolling back a bulk batch prepared ahead");
        }
    }
}

/// The segment index's catch-up with a job's last batch, running beside
/// the next batch.
#[derive(Default)]
struct Following(Option<tokio::task::JoinHandle<()>>);

impl Following {
    fn start(&mut self, index: &Arc<SegmentIndex>, db: &DatabaseConnection) {
        let (index, db) = (index.clone(), db.clone());
        self.0 = Some(tokio::spawn(async move {
            if let Err(err) = index.catch_up(&db).await {
                tracing::warn!(error = %err, "segment index catch-up failed");
            }
        }));
    }

    /// Until the running catch-up (if any) has ended.
    async fn wait(&mut self) {
        if let Some(running) = self.0.take()
            && let Err(err) = running.await
        {
            tracing::warn!(error = %err, "segment index catch-up task");
        }
    }
}

/// What a job's `errors` says of the error that stopped it: its code and
/// its message; for a database error, the database's own code and
/// message (`internal error: database error 57014: canceling statement
/// due to statement timeout`), never SQL. The whole cause goes to the log.
fn failure(job: &job::Model, err: &AppError) -> Option<(&'static str, String)> {
    tracing::warn!(job = job.id, error = ?err, "bulk job stopped by an error");
    let message = match database_error(err) {
        Some((code, text)) => format!("{}: database error {code}: {text}", err.message()),
        None => err.message(),
    };
    Some((err.code().as_str(), message))
}

/// The database's code (SQLSTATE on PostgreSQL) and message of an internal
/// error that a database statement raised.
fn database_error(err: &AppError) -> Option<(String, String)> {
    let AppError::Internal(cause) = err else { return None };
    let db = cause.chain().find_map(|e| e.downcast_ref::<sea_orm::DbErr>())?;
    match db {
        sea_orm::DbErr::Query(sea_orm::RuntimeErr::SqlxError(e))
        | sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e)) => match e.as_ref() {
            sea_orm::sqlx::Error::Database(d) => {
                Some((d.code().map(|c| c.into_owned()).unwrap_or_default(), d.message().to_owned()))
            }
            other => Some((String::new(), other.to_string())),
        },
        other => Some((String::new(), other.to_string())),
    }
}

/// True for the errors after which running the batch again may succeed:
/// a deadlock, a serialization failure, a statement cancelled by its
/// timeout or a lock not available (PostgreSQL), a busy database (SQLite).
fn is_transient(err: &AppError) -> bool {
    database_error(err)
        .is_some_and(|(code, _)| matches!(code.as_str(), "40P01" | "40001" | "57014" | "55P03" | "5" | "517"))
}

fn lock_ids(job: &job::Model) -> Vec<i64> {
    job.lock_ids.as_array().map(|a| a.iter().filter_map(Value::as_i64).collect()).unwrap_or_default()
}
