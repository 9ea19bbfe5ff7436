//! GET runs queries only. The check is a step before execution (see
//! `steps`) rather than a look at the query string because a GET may carry
//! only a persisted-query hash: it runs after the persisted-query step, on
//! the document the hash stands for.

use std::any::TypeId;

use async_graphql::parser::types::{DocumentOperations, OperationType};
use async_graphql::{Request, ServerResult};

use super::reply::server_error;
use crate::error::ErrorCode;

/// Request data marking a request that came by GET.
pub(super) struct OverGet;

/// Refuses a mutation in a request marked [`OverGet`] (`METHOD_NOT_ALLOWED`,
/// answered 405 with `Allow: POST`).
///
/// # Errors
/// `METHOD_NOT_ALLOWED` for a mutation by GET; the parser's error for a
/// document that does not parse.
pub(super) fn queries_only_over_get(request: &mut Request) -> ServerResult<()> {
    if request.data.contains_key(&TypeId::of::<OverGet>()) && selects_mutation(request)? {
        return Err(server_error(ErrorCode::MethodNotAllowed, "mutations are sent with POST; GET runs queries only"));
    }
    Ok(())
}

/// Whether the operation the request selects is a mutation. A document
/// that does not parse, or names no operation it has, is left to
/// async-graphql's own errors.
fn selects_mutation(request: &mut Request) -> ServerResult<bool> {
    let name = request.operation_name.clone();
    let document = request.parsed_query()?;
    let ty = match (&document.operations, name.as_deref()) {
        (DocumentOperations::Single(operation), _) => Some(operation.node.ty),
        (DocumentOperations::Multiple(operations), Some(name)) => {
            operations.iter().find(|(n, _)| n.as_str() == name).map(|(_, op)| op.node.ty)
        }
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.values().next().map(|op| op.node.ty)
        }
        (DocumentOperations::Multiple(_), None) => None,
    };
    Ok(ty == Some(OperationType::Mutation))
}
