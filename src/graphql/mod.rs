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

pub(crate) use audit::DeniedMutations;
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
/// caller.
///
/// No extension (but the optional field spans): with one, async-graphql
/// runs the extension chain around every field it resolves. What
/// extensions would do runs once per request instead, around execution
/// (`http::steps`): the document limits (aliases, root fields, depth,
/// introspection, expanded size) before async-graphql's own checks, for
/// which the built-in depth limit stays as a backstop at the larger bound.
pub fn schema_builder(state: AppState) -> AppSchemaBuilder {
    let limits = &state.settings.limits;
    let mut builder = builder()
        .limit_depth(limits.max_query_depth.max(limits.max_introspection_depth))
        .limit_complexity(limits.max_query_complexity)
        .limit_recursive_depth(limits.max_recursive_depth)
        .limit_directives(limits.max_directives);
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `dir`.
    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// As soon as a schema has one extension, async-graphql runs the chain
    /// around every field it resolves (a page of customers then serves a
    /// fifth fewer requests). async-graphql does not say which extensions a
    /// schema has, so this reads the code: outside test modules, nothing
    /// defines an extension, and nothing adds one but the per-field spans
    /// (only when the log asks for them). What extensions would do runs
    /// once per request, in `http::steps`.
    #[test]
    fn the_schema_has_no_extensions() {
        let defines = regex::Regex::new(r"impl\s*(<[^>]*>)?\s*[\w:]*Extension(Factory)?(<[^>]*>)?\s+for\b").unwrap();
        let adds = regex::Regex::new(r"\.extension\(\s*([^)\s]|$)").unwrap();
        let mut files = Vec::new();
        rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
        assert!(files.len() > 50, "the sources were read");
        let mut found = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read a source file");
            // Test modules close the files; they may measure with one.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            for (number, line) in code.lines().enumerate() {
                let spans = line.contains(".extension(async_graphql::extensions::Tracing)");
                if defines.is_match(line) || (adds.is_match(line) && !spans) {
                    found.push(format!("{}:{}: {}", file.display(), number + 1, line.trim()));
                }
            }
        }
        assert!(
            found.is_empty(),
            "schema extensions cost every field resolve; run the work in http::steps: {found:#?}"
        );
    }
}
