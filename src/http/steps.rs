//! What runs once around every GraphQL execution, on every path (HTTP
//! single, batch and GET, WebSocket, in-process subscriptions): the work
//! schema extensions used to do, without their cost. As soon as a schema
//! has one extension, async-graphql runs the extension chain around every
//! field it resolves (a `ResolveInfo` and a boxed future per extension per
//! field); with none it takes a fast path. So the schema has none (but the
//! optional per-field spans), and these steps run once per request.
//!
//! Before execution, in the order the extensions ran, the first refusal
//! being the answer:
//! 1. the per-staff rate limit ([`GraphqlObserver`]);
//! 2. persisted queries ([`PersistedQueries`]): a hash becomes its document;
//! 3. GET runs queries only (`read_only`), on that document;
//! 4. the document limits ([`DocumentLimits`]), which parse the document
//!    once, for async-graphql too.
//!
//! After it: the operation's name for the metrics, and a `DENIED` audit row
//! per refused top-level mutation field ([`DeniedMutations`]).

use std::sync::Arc;

use async_graphql::parser::Positioned;
use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationDefinition, OperationType};
use async_graphql::{Request, Response, ServerResult};
use futures_util::stream::{self, BoxStream, StreamExt as _};
use sea_orm::DatabaseConnection;

use super::PersistedQueries;
use super::read_only::queries_only_over_get;
use crate::authz::Principal;
use crate::config::Settings;
use crate::graphql::AppSchema;
use crate::graphql::DeniedMutations;
use crate::graphql::limits::DocumentLimits;
use crate::observability::{self, GraphqlObserver};
use crate::state::AppState;

/// The steps of this instance, with their state: the persisted-query cache
/// (or the trusted documents), the per-staff rate limit, the document
/// limits.
pub struct RequestSteps {
    persisted: PersistedQueries,
    observer: GraphqlObserver,
    limits: DocumentLimits,
}

impl RequestSteps {
    /// The steps the settings ask for.
    ///
    /// # Errors
    /// The trusted-documents manifest cannot be loaded (see
    /// [`PersistedQueries::from_settings`]).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        Ok(Self {
            persisted: PersistedQueries::from_settings(settings)?,
            observer: GraphqlObserver::new(settings.limits.rate_per_staff),
            limits: DocumentLimits::new(&settings.limits),
        })
    }

    /// The steps before execution: the request to execute (its document
    /// parsed), and what the steps after it need to know.
    ///
    /// # Errors
    /// The first refusal: rate limit, persisted query, mutation by GET,
    /// document limits (or a document that does not parse).
    async fn prepare(&self, request: Request, principal: &Principal) -> ServerResult<(Request, Outline)> {
        self.observer.admit(principal)?;
        let mut request = self.persisted.resolve(request).await?;
        queries_only_over_get(&mut request)?;
        self.limits.check_request(&mut request)?;
        let outline = Outline::of(&mut request);
        Ok((request, outline))
    }
}

/// What the steps after execution need to know of the operation, taken
/// from the document before async-graphql consumes it.
#[derive(Debug, Default)]
struct Outline {
    /// The operation's name as async-graphql gives it to extensions.
    operation_name: Option<String>,
    /// The top-level fields of a mutation (none for other operations).
    denied: DeniedMutations,
}

impl Outline {
    /// The outline of the operation the request selects; empty when it
    /// selects none (async-graphql refuses the request then).
    fn of(request: &mut Request) -> Self {
        let name = request.operation_name.clone();
        let Ok(document) = request.parsed_query() else { return Self::default() };
        let Some((operation_name, operation)) = selected_operation(document, name.as_deref()) else {
            return Self::default();
        };
        let denied = match operation.node.ty {
            OperationType::Mutation => DeniedMutations::of(document, &operation.node.selection_set),
            OperationType::Query | OperationType::Subscription => DeniedMutations::default(),
        };
        Self { operation_name, denied }
    }

    /// Notes the operation's name (when it executed) and records refused
    /// mutation fields.
    async fn finish(&self, db: &DatabaseConnection, principal: &Principal, response: &Response) {
        if executed(response) {
            observability::note_operation(self.operation_name.as_deref());
        }
        self.denied.record(db, principal, response).await;
    }
}

/// The operation async-graphql executes, with the name it reports: the one
/// `operationName` names, or the only one (the name of a named one).
/// `None` when there is no such operation (async-graphql refuses it).
fn selected_operation<'a>(
    document: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<(Option<String>, &'a Positioned<OperationDefinition>)> {
    match (&document.operations, name) {
        (DocumentOperations::Single(_), Some(_)) => None,
        (DocumentOperations::Single(operation), None) => Some((None, operation)),
        (DocumentOperations::Multiple(operations), Some(name)) => {
            operations.get(name).map(|operation| (Some(name.to_owned()), operation))
        }
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.iter().next().map(|(name, operation)| (Some(name.to_string()), operation))
        }
        (DocumentOperations::Multiple(_), None) => None,
    }
}

/// async-graphql's answer to a subscription executed as a query: the
/// operation passed validation and ran, though it answers like a refusal.
const SUBSCRIPTION_NOT_ON_THIS_TRANSPORT: &str = "Subscriptions are not supported on this transport.";

/// Whether the operation ran: a response refused before execution (parse,
/// validation, limits) has no data and only errors without a path, as the
/// HTTP reply judges it too.
fn executed(response: &Response) -> bool {
    let refused = matches!(response.data, async_graphql::Value::Null)
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty());
    !refused || response.errors.iter().any(|e| e.message == SUBSCRIPTION_NOT_ON_THIS_TRANSPORT)
}

/// Executes one request as `principal` (its data already attached): the
/// steps before, the execution, the steps after.
pub(super) async fn execute(app: &AppState, schema: &AppSchema, principal: &Principal, request: Request) -> Response {
    match app.steps.prepare(request, principal).await {
        Ok((request, outline)) => {
            let response = schema.execute(request).await;
            outline.finish(&app.db, principal, &response).await;
            response
        }
        Err(error) => Response::from_errors(vec![error]),
    }
}

/// Executes a request as a stream of responses (a subscription's events,
/// or the one response of a query or mutation), with the same steps: a
/// refusal before execution is the stream's only response.
pub(super) fn execute_stream(
    app: AppState,
    schema: AppSchema,
    principal: Arc<Principal>,
    request: Request,
) -> BoxStream<'static, Response> {
    stream::once(async move {
        match app.steps.prepare(request, &principal).await {
            Ok((request, outline)) => {
                let outline = Arc::new(outline);
                schema
                    .execute_stream(request)
                    .then(move |response| {
                        let (app, principal, outline) = (app.clone(), principal.clone(), outline.clone());
                        async move {
                            outline.finish(&app.db, &principal, &response).await;
                            response
                        }
                    })
                    .boxed()
            }
            Err(error) => stream::iter([Response::from_errors(vec![error])]).boxed(),
        }
    })
    .flatten()
    .boxed()
}

#[cfg(test)]
mod tests {
    use async_graphql::parser::parse_query;
    use async_graphql::{PathSegment, Pos, Response, ServerError};

    use super::{SUBSCRIPTION_NOT_ON_THIS_TRANSPORT, executed, selected_operation};

    /// The name and type of the operation `selected_operation` picks.
    fn picked(document: &str, name: Option<&str>) -> Option<(Option<String>, String)> {
        let document = parse_query(document).expect("test documents parse");
        selected_operation(&document, name).map(|(name, op)| (name, op.node.ty.to_string()))
    }

    #[test]
    fn the_operation_is_the_one_async_graphql_executes_with_the_name_it_reports() {
        assert_eq!(picked("{ a }", None), Some((None, "query".to_owned())));
        assert_eq!(picked("{ a }", Some("A")), None);
        assert_eq!(picked("mutation M { a }", None), Some((Some("M".to_owned()), "mutation".to_owned())));
        let two = "query Q { a } mutation M { a }";
        assert_eq!(picked(two, Some("M")), Some((Some("M".to_owned()), "mutation".to_owned())));
        assert_eq!(picked(two, Some("X")), None);
        assert_eq!(picked(two, None), None);
    }

    #[test]
    fn only_refusals_before_execution_count_as_not_executed() {
        let refused = Response::from_errors(vec![ServerError::new("Unknown field", Some(Pos::default()))]);
        assert!(!executed(&refused));
        let mut field_error = ServerError::new("denied", None);
        field_error.path = vec![PathSegment::Field("lockTagGroup".to_owned())];
        assert!(executed(&Response::from_errors(vec![field_error])));
        assert!(executed(&Response::new(async_graphql::Value::Null)));
        assert!(executed(&Response::from_errors(vec![ServerError::new(SUBSCRIPTION_NOT_ON_THIS_TRANSPORT, None)])));
    }
}
