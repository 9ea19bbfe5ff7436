//! The GraphQL API. Resolvers are thin: they read the caller from the
//! context, parse arguments into domain types, call one service function
//! and map the result.

mod admin;
mod audit;
mod customer;
mod customer_data;
mod governance;
mod jobs;
pub(crate) mod limits;
mod loaders;
mod org;
mod realtime;
mod relay;
mod reports;
mod rule_dryrun;
mod rule_proposal;
mod rule_runs;
mod rules;
mod scalars;
mod segment;
mod staff;
mod tag;

use std::sync::Arc;

use async_graphql::{Context, MergedObject, MergedSubscription, Schema, SchemaBuilder};
use sea_orm::DatabaseConnection;

pub(crate) use loaders::{CustomerPrefetch, prefetch_customers};
pub use loaders::{Loaders, for_request as loaders_for_request};
pub(crate) use relay::{PageInfo, page_args};
pub(crate) use scalars::{Date, DateTime};

use crate::authz::Principal;
use crate::config::Limits;
use crate::observability;
use crate::state::AppState;

/// Every read of the API.
#[derive(MergedObject, Default)]
pub struct Query(
    relay::NodeQuery,
    org::OrgQuery,
    customer::CustomerQuery,
    tag::TagQuery,
    segment::SegmentQuery,
    segment::SegmentSavedQuery,
    governance::GovernanceQuery,
    audit::AuditQuery,
    admin::AdminQuery,
    staff::StaffQuery,
    rules::RuleQuery,
    rule_dryrun::RuleDryRunQuery,
    jobs::JobQuery,
    rule_runs::RuleRunQuery,
    reports::ReportQuery,
    customer_data::CustomerDataQuery,
);

/// Every change the API makes.
#[derive(MergedObject, Default)]
pub struct Mutation(
    customer::CustomerMutation,
    tag::TagMutation,
    governance::GovernanceMutation,
    segment::SegmentMutation,
    admin::AdminMutation,
    staff::StaffMutation,
    rules::RuleMutation,
    rule_proposal::RuleProposalMutation,
    jobs::JobMutation,
    reports::ReportMutation,
    customer_data::CustomerDataMutation,
);

pub use jobs::JobSubscription;

/// Live updates, over `graphql-transport-ws` at `/graphql/ws`.
#[derive(MergedSubscription, Default)]
pub struct Subscription(jobs::JobSubscription, realtime::RealtimeSubscription);

pub type AppSchema = Schema<Query, Mutation, Subscription>;
pub type AppSchemaBuilder = SchemaBuilder<Query, Mutation, Subscription>;

fn builder() -> AppSchemaBuilder {
    Schema::build(Query::default(), Mutation::default(), Subscription::default())
}

/// The schema with its limits and the shared state, to be finished by the
/// caller (the HTTP edge adds its extensions).
pub fn schema_builder(state: AppState) -> AppSchemaBuilder {
    let limits = &state.settings.limits;
    let mut builder = builder()
        // Aliases, root fields, depth (introspection under its own bound)
        // and expanded size, before async-graphql's own checks; the
        // built-in depth limit stays as a backstop at the larger bound.
        .extension(limits::DocumentLimits::new(limits))
        .limit_depth(limits.max_query_depth.max(limits.max_introspection_depth))
        .limit_complexity(limits.max_query_complexity)
        .limit_recursive_depth(limits.max_recursive_depth)
        .limit_directives(limits.max_directives)
        .extension(observability::GraphqlObserver::new(limits.rate_per_staff))
        .extension(audit::DeniedMutationAudit);
    // Per-field spans cost a large share of a request's CPU at `info`:
    // only when the log filter asks for them.
    if observability::field_spans_enabled() {
        builder = builder.extension(async_graphql::extensions::Tracing);
    }
    builder.data(state)
}

/// The SDL that `schema.graphql` must equal.
pub fn sdl() -> String {
    builder().finish().sdl_with_options(async_graphql::SDLExportOptions::new().include_specified_by())
}

/// What every resolver needs: the caller, the database, the limits.
pub(crate) struct Env<'a> {
    pub principal: &'a Principal,
    pub db: &'a DatabaseConnection,
    pub limits: &'a Limits,
    pub loaders: &'a Loaders,
}

pub(crate) fn env<'a>(ctx: &'a Context<'_>) -> Env<'a> {
    let state = ctx.data_unchecked::<AppState>();
    Env {
        // The HTTP layer refuses unauthenticated requests before execution,
        // so a principal is always present.
        principal: ctx.data_unchecked::<Arc<Principal>>().as_ref(),
        db: &state.db,
        limits: &state.settings.limits,
        loaders: ctx.data_unchecked::<Loaders>(),
    }
}
