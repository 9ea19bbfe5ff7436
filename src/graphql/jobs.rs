//! Bulk jobs: `bulkTag` creates one and returns it at once; `job`, `jobs`
//! and `cancelJob` follow it; the `jobProgress` subscription streams its
//! state until it ends. Progress is read from the job row, so a
//! subscriber on one instance follows a job run by another.

use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Object, OneofObject, Result, SimpleObject, Subscription};
use entity::{enums::JobStatus, job};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::Value;

use super::governance::ChangeRequest;
use super::org::{Staff, staff_by_id};
use super::segment::{SegmentInput, resolve_segment};
use super::{DateTime, PageInfo, env, page_args};
use crate::authz::Principal;
use crate::domain::{ChangeRequestId, CustomerId, JobId, Reason, TagId, parse_ids};
use crate::service::governance::requests;
use crate::service::jobs::{self, BulkTagRequest, Customers};
use crate::state::AppState;

/// A bulk job: what it does, where it stands, and exactly what it has
/// applied so far.
pub struct Job(pub job::Model);

/// A customer a job left out, or what stopped it.
#[derive(SimpleObject)]
pub struct JobError {
    /// The customer, when the error is about one.
    customer_id: Option<ID>,
    /// An import: the file's line (the header is line 1).
    line: Option<i64>,
    /// An import: the column at fault, as the file's header names it.
    column: Option<String>,
    /// `LOCKED`, `NOT_FOUND`, `FORBIDDEN`, … (as error codes); an import's row codes.
    code: String,
    /// What happened, for people.
    message: String,
}

/// A bulk job: what it does, where it stands, and exactly what it has
/// applied so far.
#[Object]
impl Job {
    /// Opaque global id.
    async fn id(&self) -> ID {
        JobId(self.0.id).into()
    }
    /// `BULK_TAG` or `IMPORT_CUSTOMERS`.
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    /// Where the job stands.
    async fn status(&self) -> JobStatus {
        self.0.status
    }
    /// True once the job has ended (succeeded, failed or cancelled).
    async fn finished(&self) -> bool {
        jobs::is_finished(self.0.status)
    }
    /// Who created it; it runs with their rights.
    async fn requested_by(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, Some(self.0.requested_by)).await
    }
    /// Customers in the job's snapshot (taken when it was created); for an
    /// import, the file's rows that passed its checks.
    async fn total(&self) -> i64 {
        self.0.total
    }
    /// Customers (import: rows) processed so far (applied, unchanged or skipped).
    async fn done(&self) -> i64 {
        self.0.done
    }
    /// An import: customers created.
    async fn created(&self) -> i64 {
        self.0.created
    }
    /// An import: customers updated.
    async fn updated(&self) -> i64 {
        self.0.updated
    }
    /// Assignments added.
    async fn added(&self) -> i64 {
        self.0.added
    }
    /// Assignments removed (asked for, or replaced in an exclusive group).
    async fn removed(&self) -> i64 {
        self.0.removed
    }
    /// Requested changes already in place.
    async fn unchanged(&self) -> i64 {
        self.0.unchanged
    }
    /// Customers left out: under somebody else's modification lock, or no
    /// longer in the requester's scope (see `errors`).
    async fn skipped(&self) -> i64 {
        self.0.skipped
    }
    /// The first errors (customers left out, what stopped the job); the
    /// counts are exact beyond them.
    async fn errors(&self) -> Vec<JobError> {
        self.0
            .errors
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| JobError {
                customer_id: e.get("customerId").and_then(Value::as_str).map(|c| ID(c.to_owned())),
                line: e.get("line").and_then(Value::as_i64),
                column: e.get("column").and_then(Value::as_str).map(str::to_owned),
                code: e.get("code").and_then(Value::as_str).unwrap_or_default().to_owned(),
                message: e.get("message").and_then(Value::as_str).unwrap_or_default().to_owned(),
            })
            .collect()
    }
    /// Tags the job adds.
    async fn add_tag_ids(&self) -> Result<Vec<ID>> {
        Ok(jobs::input_of(&self.0)?.add.into_iter().map(|t| TagId(t).into()).collect())
    }
    /// Tags the job removes.
    async fn remove_tag_ids(&self) -> Result<Vec<ID>> {
        Ok(jobs::input_of(&self.0)?.remove.into_iter().map(|t| TagId(t).into()).collect())
    }
    /// Why, as given.
    async fn reason(&self) -> Result<Option<String>> {
        Ok(jobs::input_of(&self.0)?.reason)
    }
    /// Cancellation was asked for; a running job stops after its batch.
    async fn cancel_requested(&self) -> bool {
        self.0.cancel_requested
    }
    /// The change request the job waits for (or waited for).
    async fn change_request(&self, ctx: &Context<'_>) -> Result<Option<ChangeRequest>> {
        let Some(id) = self.0.change_request_id else { return Ok(None) };
        let env = env(ctx);
        Ok(requests::find(env.db, env.principal, ChangeRequestId(id)).await.ok().map(ChangeRequest))
    }
    /// When it was created (and its customers fixed).
    async fn created_at(&self) -> DateTime {
        self.0.created_at.into()
    }
    /// When an instance began running it.
    async fn started_at(&self) -> Option<DateTime> {
        self.0.started_at.map(DateTime)
    }
    /// When it ended.
    async fn finished_at(&self) -> Option<DateTime> {
        self.0.finished_at.map(DateTime)
    }
}

/// The customers of a bulk job: exactly one field.
#[derive(OneofObject)]
pub enum BulkCustomersInput {
    /// These customers (in the caller's scope).
    CustomerIds(Vec<ID>),
    /// The members of a segment the caller sees, evaluated once, when the
    /// job is created.
    Segment(SegmentInput),
}

/// A bulk tagging job.
#[derive(InputObject)]
pub struct BulkTagInput {
    /// The customers: a list, or a segment's members.
    pub customers: BulkCustomersInput,
    /// Tags to put on.
    #[graphql(default)]
    pub add: Vec<ID>,
    /// Tags to take off.
    #[graphql(default)]
    pub remove: Vec<ID>,
    /// Why: shown in the job, its locks and its change request.
    pub reason: Option<String>,
}

/// Parses a `bulkTag` input into the service's request.
pub(crate) async fn bulk_request(ctx: &Context<'_>, input: BulkTagInput) -> Result<BulkTagRequest> {
    let customers = match input.customers {
        BulkCustomersInput::CustomerIds(ids) => {
            Customers::Ids(parse_ids(&ids, "customers.customerIds", CustomerId::parse)?)
        }
        BulkCustomersInput::Segment(segment) => Customers::Segment(Box::new(resolve_segment(ctx, segment).await?)),
    };
    Ok(BulkTagRequest {
        customers,
        add: parse_ids(&input.add, "add", TagId::parse)?,
        remove: parse_ids(&input.remove, "remove", TagId::parse)?,
        reason: Reason::parse(input.reason.as_deref(), "reason")?,
    })
}

/// A job in a page, with its cursor.
#[derive(SimpleObject)]
pub struct JobEdge {
    /// Pass it as `after` or `before` to page from here.
    cursor: String,
    /// The job.
    node: Job,
}

/// A page of jobs, newest first.
#[derive(SimpleObject)]
pub struct JobConnection {
    /// The jobs of the page, newest first.
    edges: Vec<JobEdge>,
    /// Where the page sits in the list.
    page_info: PageInfo,
}

#[derive(Default)]
pub struct JobQuery;

#[Object]
impl JobQuery {
    /// A job the caller may see (its own, or one in a unit where it
    /// approves or audits); `NOT_FOUND` otherwise.
    async fn job(&self, ctx: &Context<'_>, #[graphql(desc = "The job.")] id: ID) -> Result<Job> {
        let env = env(ctx);
        Ok(Job(jobs::find(env.db, env.principal, JobId::parse(&id, "id")?).await?))
    }

    /// Jobs the caller may see, newest first.
    #[graphql(complexity = "super::limits::page_cost(first.or(last), child_complexity)")]
    async fn jobs(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only jobs in this state.")] status: Option<JobStatus>,
        #[graphql(desc = "Page forward: this many jobs after `after`.")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "Page backward: this many jobs before `before`.")] last: Option<i32>,
        #[graphql(desc = "Page backward from this cursor.")] before: Option<String>,
    ) -> Result<JobConnection> {
        let env = env(ctx);
        let page = page_args(ctx, first, after, last, before)?;
        let page = jobs::list(env.db, env.principal, status, &page).await?;
        let page_info = PageInfo::of(&page);
        Ok(JobConnection {
            edges: page.items.into_iter().map(|(cursor, j)| JobEdge { cursor, node: Job(j) }).collect(),
            page_info,
        })
    }
}

#[derive(Default)]
pub struct JobMutation;

#[Object]
impl JobMutation {
    /// Tags (and untags) a segment's members or a list of customers as a
    /// background job, returned at once (`QUEUED`, or `AWAITING_APPROVAL`
    /// with a change request when the caller may not bulk-tag every
    /// customer's unit). Follow it with `job` or `jobProgress`.
    async fn bulk_tag(&self, ctx: &Context<'_>, #[graphql(desc = "What to tag.")] input: BulkTagInput) -> Result<Job> {
        let request = bulk_request(ctx, input).await?;
        let env = env(ctx);
        let index = &ctx.data_unchecked::<AppState>().index;
        Ok(Job(jobs::submit_bulk_tag(env.db, index, env.principal, env.limits, request).await?))
    }

    /// Cancels a job: at once when it has not started, after the batch in
    /// flight when it runs. What was applied stays, and is counted.
    async fn cancel_job(&self, ctx: &Context<'_>, #[graphql(desc = "The job.")] id: ID) -> Result<Job> {
        let env = env(ctx);
        Ok(Job(jobs::cancel(env.db, env.principal, JobId::parse(&id, "id")?).await?))
    }
}

/// Live updates, over `graphql-transport-ws`.
#[derive(Default)]
pub struct JobSubscription;

/// Live updates, over `graphql-transport-ws`.
#[Subscription]
impl JobSubscription {
    /// The job as it progresses: its state now, then each time it changes,
    /// until it has ended (the last item is the finished job).
    async fn job_progress(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The job.")] job_id: ID,
    ) -> Result<BoxStream<'static, Result<Job>>> {
        let id = JobId::parse(&job_id, "jobId")?;
        let state = ctx.data_unchecked::<AppState>().clone();
        let principal: Arc<Principal> = ctx.data_unchecked::<Arc<Principal>>().clone();
        // Refused at once when the caller may not see the job.
        let first = jobs::find(&state.db, &principal, id).await?;
        let interval = state.settings.limits.job_progress_interval;
        let stream = futures_util::stream::unfold(Progress::First(first), move |step| {
            let (state, principal) = (state.clone(), principal.clone());
            async move {
                let last = match step {
                    Progress::First(job) => return Some((Ok(Job(job.clone())), Progress::Follow(job))),
                    Progress::Follow(last) if !jobs::is_finished(last.status) => last,
                    Progress::Follow(_) | Progress::End => return None,
                };
                loop {
                    tokio::time::sleep(interval).await;
                    match jobs::find(&state.db, &principal, id).await {
                        Ok(now) if now != last => return Some((Ok(Job(now.clone())), Progress::Follow(now))),
                        Ok(_) => {}
                        Err(err) => return Some((Err(err.into()), Progress::End)),
                    }
                }
            }
        });
        Ok(stream.boxed())
    }
}

/// Where a `jobProgress` stream is.
enum Progress {
    First(job::Model),
    Follow(job::Model),
    End,
}
