//! The audit log (SPEC §9): reading it, and recording refused mutation
//! attempts. Rows of successful changes are written by the services in the
//! change's own transaction; nothing in the API updates or deletes a row.

use std::collections::HashMap;

use async_graphql::parser::Positioned;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{
    ComplexObject, Context, ID, InputObject, Json, Name, Object, PathSegment, Result, SimpleObject, Value as GqlValue,
};
use entity::{audit_log, enums::AuditOutcome};
use sea_orm::DatabaseConnection;
use serde_json::{Value, json};

use super::org::{OrgUnit, Staff, org_unit, staff_by_id};
use super::{DateTime, PageInfo, env, page_args};
use crate::authz::Principal;
use crate::domain::{
    AuditEntryId, ChangeRequestId, CustomerId, OrgUnitId, SegmentId, StaffId, TagGroupId, TagId, decode_global,
    encode_global,
};
use crate::service::audit::{self, AuditEntry, AuditFilter};

/// One row of the audit log, with the values the reader may not see
/// masked.
pub struct AuditLogEntry(pub audit_log::Model);

/// One row of the audit log, with the values the reader may not see
/// masked.
#[Object]
impl AuditLogEntry {
    /// Opaque global id (`node(id)` fetches the row again).
    pub async fn id(&self) -> ID {
        AuditEntryId(self.0.id).into()
    }

    /// When it happened.
    async fn occurred_at(&self) -> DateTime {
        self.0.occurred_at.into()
    }

    /// Who acted; none for the system (seed, scheduled jobs).
    async fn actor(&self, ctx: &Context<'_>) -> Result<Option<Staff>> {
        staff_by_id(ctx, self.0.actor_staff_id).await
    }

    /// `customer.tag`, `tag.merge`, `change_request.approve`, … and for
    /// refused attempts `mutation.<field>` (e.g. `mutation.lockTagGroup`).
    async fn action(&self) -> &str {
        &self.0.action
    }

    /// `customer`, `tag`, `tag_group`, `change_request`, `segment`, …
    async fn object_kind(&self) -> &str {
        &self.0.object_kind
    }

    /// The object's global id (as `node(id)` takes it); empty for calls
    /// about many objects (their row ids are in `detail`).
    async fn object_id(&self) -> Option<String> {
        let raw = self.0.object_id.as_deref().filter(|id| !id.is_empty())?;
        let type_name = match self.0.object_kind.as_str() {
            "customer" => CustomerId::TYPE_NAME,
            "tag" => TagId::TYPE_NAME,
            "tag_group" => TagGroupId::TYPE_NAME,
            "change_request" => ChangeRequestId::TYPE_NAME,
            "segment" => SegmentId::TYPE_NAME,
            "staff" => StaffId::TYPE_NAME,
            _ => return Some(raw.to_owned()),
        };
        Some(raw.parse::<i64>().map_or_else(|_| raw.to_owned(), |id| encode_global(type_name, id)))
    }

    /// The unit the row is filed under (its auditors read it).
    async fn org_unit(&self, ctx: &Context<'_>) -> Result<Option<OrgUnit>> {
        self.0.org_unit_id.map(|id| org_unit(ctx, id)).transpose()
    }

    /// Done, refused or failed.
    async fn outcome(&self) -> AuditOutcome {
        self.0.outcome
    }

    /// The request that made the change (`x-request-id`).
    async fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }

    /// What happened, as recorded; guarded values appear as the reader's
    /// field rules allow (`138****5678`, or `***`).
    async fn detail(&self) -> Json<Value> {
        Json(self.0.detail.clone())
    }
}

/// An audit log row in a page, with its cursor.
#[derive(SimpleObject)]
pub struct AuditLogEdge {
    /// Pass it as `after` or `before` to page from here.
    cursor: String,
    /// The row.
    node: AuditLogEntry,
}

/// A page of the audit log, newest first.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct AuditLogConnection {
    /// The rows of the page, newest first.
    edges: Vec<AuditLogEdge>,
    /// Where the page sits in the list.
    page_info: PageInfo,
    #[graphql(skip)]
    filter: AuditFilter,
}

#[ComplexObject]
impl AuditLogConnection {
    /// Rows matching the filter that the caller may read (all pages).
    async fn total_count(&self, ctx: &Context<'_>) -> Result<u64> {
        let env = env(ctx);
        Ok(audit::count(env.db, env.principal, &self.filter).await?)
    }
}

/// Every part is optional; given parts must all match.
#[derive(InputObject, Default)]
pub struct AuditLogFilter {
    /// The staff member who acted.
    actor_id: Option<ID>,
    /// An action (`customer.tag`), or a prefix: `customer.` or `tag*`.
    action: Option<String>,
    /// `customer`, `tag`, `tag_group`, `change_request`, …
    object_kind: Option<String>,
    /// The object the row is about: its id (global or row id).
    object_id: Option<ID>,
    /// Rows of this unit and the units below it.
    scope_id: Option<ID>,
    /// Rows at or after then.
    from: Option<DateTime>,
    /// Rows at or before then.
    to: Option<DateTime>,
    /// Only rows with this outcome.
    outcome: Option<AuditOutcome>,
}

#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// The audit log, newest first: the rows of the units where the caller
    /// holds `audit_log:read`.
    #[graphql(complexity = "super::limits::page_cost(first.or(last), child_complexity)")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Which rows (all readable ones when absent).")] filter: Option<AuditLogFilter>,
        #[graphql(desc = "Page forward: this many rows after `after`.")] first: Option<i32>,
        #[graphql(desc = "Page forward from this cursor.")] after: Option<String>,
        #[graphql(desc = "Page backward: this many rows before `before`.")] last: Option<i32>,
        #[graphql(desc = "Page backward from this cursor.")] before: Option<String>,
    ) -> Result<AuditLogConnection> {
        let env = env(ctx);
        let input = filter.unwrap_or_default();
        let filter = AuditFilter {
            actor: input.actor_id.map(|id| StaffId::parse(&id, "filter.actorId")).transpose()?,
            action: input.action,
            object_kind: input.object_kind,
            // The log records row ids; a global id filters by its row id.
            object_id: input.object_id.map(|id| decode_global(&id).map_or(id.0, |(_, row)| row.to_string())),
            scope: input.scope_id.map(|id| OrgUnitId::parse(&id, "filter.scopeId")).transpose()?,
            from: input.from.map(|t| t.0),
            to: input.to.map(|t| t.0),
            outcome: input.outcome,
        };
        let page = page_args(ctx, first, after, last, before)?;
        let page = audit::list(env.db, env.principal, &filter, &page).await?;
        let page_info = PageInfo::of(&page);
        Ok(AuditLogConnection {
            edges: page
                .items
                .into_iter()
                .map(|(cursor, row)| AuditLogEdge { cursor, node: AuditLogEntry(row) })
                .collect(),
            page_info,
            filter,
        })
    }
}

/// Error codes that mean "refused": a permission, a guarded field, or
/// somebody else's modification lock.
const REFUSALS: &[&str] = &["FORBIDDEN", "FORBIDDEN_FIELD", "LOCKED"];

/// Records every refused mutation attempt as a `DENIED` row, once the
/// operation has run: an error with a refusal code at a top-level field's
/// path (what that field's resolver answered) is one attempt, filed as
/// `mutation.<field>` under the caller's home unit. The mutation's own
/// transaction rolled back, so the row is written on its own. Errors
/// deeper in a field's answer (a guarded field of the returned object) or
/// without a path (refused before execution) are not attempts.
#[derive(Debug, Default)]
pub(crate) struct DeniedMutations {
    /// The top-level fields of the mutation operation: response key (the
    /// alias, or the name) → field name. Empty for other operations.
    fields: HashMap<Name, Name>,
}

impl DeniedMutations {
    /// The top-level fields of a mutation operation, through its fragments.
    pub(crate) fn of(doc: &ExecutableDocument, selection_set: &Positioned<SelectionSet>) -> Self {
        let mut fields = HashMap::new();
        top_level_fields(doc, selection_set, &mut Vec::new(), &mut fields);
        Self { fields }
    }

    /// Writes one `DENIED` row per refused top-level field of the response.
    pub(crate) async fn record(
        &self,
        db: &DatabaseConnection,
        principal: &Principal,
        response: &async_graphql::Response,
    ) {
        if self.fields.is_empty() {
            return;
        }
        for err in &response.errors {
            let [PathSegment::Field(key)] = err.path.as_slice() else { continue };
            let Some(field) = self.fields.get(key.as_str()) else { continue };
            let Some(code) = err.extensions.as_ref().and_then(|e| e.get("code")).and_then(string_of) else {
                continue;
            };
            if !REFUSALS.contains(&code.as_str()) {
                continue;
            }
            let mut detail = json!({ "code": code, "message": err.message });
            if let Some(lock) = err.extensions.as_ref().and_then(|e| e.get("lockId")).and_then(string_of) {
                detail["lockId"] = json!(lock);
            }
            let mut entry =
                AuditEntry::ok(principal.staff_id(), "", "mutation", "").in_unit(principal.staff.home_org_unit_id);
            entry.outcome = AuditOutcome::Denied;
            entry.object_id = None;
            entry.detail = detail;
            // Boxed: the write's future would otherwise grow every
            // request's future (and the stack of in-process callers).
            if let Err(e) = Box::pin(audit::record_action(db, entry, format!("mutation.{field}"))).await {
                tracing::error!(error = %e, "could not record a denied mutation attempt");
            }
        }
    }
}

/// Collects response key → field name of the fields of `set`, through
/// fragment spreads and inline fragments but not into fields. `seen`
/// holds the fragments being expanded (validation refuses cycles, but the
/// walk runs before it).
fn top_level_fields<'a>(
    doc: &'a ExecutableDocument,
    set: &'a Positioned<SelectionSet>,
    seen: &mut Vec<&'a Name>,
    fields: &mut HashMap<Name, Name>,
) {
    for selection in &set.node.items {
        match &selection.node {
            Selection::Field(field) => {
                let field = &field.node;
                fields.entry(field.response_key().node.clone()).or_insert_with(|| field.name.node.clone());
            }
            Selection::FragmentSpread(spread) => {
                let name = &spread.node.fragment_name.node;
                if seen.contains(&name) {
                    continue;
                }
                if let Some(fragment) = doc.fragments.get(name) {
                    seen.push(name);
                    top_level_fields(doc, &fragment.node.selection_set, seen, fields);
                    seen.pop();
                }
            }
            Selection::InlineFragment(inline) => top_level_fields(doc, &inline.node.selection_set, seen, fields),
        }
    }
}

fn string_of(value: &GqlValue) -> Option<String> {
    match value {
        GqlValue::String(s) => Some(s.clone()),
        _ => None,
    }
}
