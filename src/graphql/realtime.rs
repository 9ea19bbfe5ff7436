//! Subscriptions of changes as they happen: `tagChanges` (resumable by
//! sequence number) and `changeRequestUpdates`. Served over
//! `graphql-transport-ws` at `/graphql/ws`; see docs/realtime.md.

use std::sync::Arc;

use async_graphql::{Context, ID, Object, Result, Subscription};
use entity::enums::{TagOp, TagSource};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::DateTime;
use super::governance::ChangeRequest;
use crate::authz::Principal;
use crate::domain::{CustomerId, OrgUnitId, TagId, parse_ids};
use crate::service::realtime::{self, LivePrincipal, TagChangeRow, TagChangesRequest};
use crate::state::AppState;

/// One add or remove of a tag on a customer, from the tag event log.
pub struct TagChange(TagChangeRow);

/// One add or remove of a tag on a customer, from the tag event log.
#[Object]
impl TagChange {
    /// The event's sequence number: changes arrive in increasing order;
    /// pass the last one seen as `afterSeq` to resume.
    async fn seq(&self) -> i64 {
        self.0.seq
    }
    /// `ADD` or `REMOVE`.
    async fn op(&self) -> TagOp {
        self.0.op
    }
    /// The customer.
    async fn customer_id(&self) -> ID {
        CustomerId(self.0.customer_id).into()
    }
    /// The tag.
    async fn tag_id(&self) -> ID {
        TagId(self.0.tag_id).into()
    }
    /// The customer's org unit.
    async fn org_unit_id(&self) -> ID {
        OrgUnitId(self.0.org_unit_id).into()
    }
    /// What made the change (by hand, bulk, rule, import, …).
    async fn source(&self) -> TagSource {
        self.0.source
    }
    /// When it was made.
    async fn occurred_at(&self) -> DateTime {
        DateTime(self.0.occurred_at)
    }
}

/// The subscriber's principal: the connection's live one over WebSocket,
/// the request's own otherwise.
fn live_principal(ctx: &Context<'_>) -> LivePrincipal {
    match ctx.data_opt::<LivePrincipal>() {
        Some(live) => live.clone(),
        None => LivePrincipal::new(ctx.data_unchecked::<Arc<Principal>>().clone()),
    }
}

#[derive(Default)]
pub struct RealtimeSubscription;

#[Subscription]
impl RealtimeSubscription {
    /// Every add and remove of a tag the caller may see, on customers of
    /// its scope (within `orgUnitId`'s subtree when given), in event-log
    /// order, each with its `seq`. With `afterSeq`, the changes after it
    /// are replayed from the log first: nothing missed, nothing twice.
    /// `RESYNC_REQUIRED` when `afterSeq` is further back than the log
    /// replays; the stream ends with `SLOW_CONSUMER` (and
    /// `extensions.resumeAfterSeq`) when the subscriber falls too far
    /// behind, and over `/graphql/ws` the socket then closes with 4413.
    async fn tag_changes(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Customers of this unit and the units below it.")] org_unit_id: Option<ID>,
        #[graphql(desc = "Only these tags (all the caller sees when absent).")] tag_ids: Option<Vec<ID>>,
        #[graphql(desc = "Replay the changes after this sequence number first.")] after_seq: Option<i64>,
    ) -> Result<BoxStream<'static, Result<TagChange>>> {
        let request = TagChangesRequest {
            org_unit: org_unit_id.map(|id| OrgUnitId::parse(&id, "orgUnitId")).transpose()?,
            tags: parse_ids(tag_ids.as_deref().unwrap_or_default(), "tagIds", TagId::parse)?,
            after_seq,
        };
        let state = ctx.data_unchecked::<AppState>();
        let stream =
            realtime::tag_changes(&state.db, &state.realtime, live_principal(ctx), &state.settings.limits, request)
                .await?;
        Ok(stream.map(|item| item.map(TagChange).map_err(Into::into)).boxed())
    }

    /// Change requests filed or decided from now on that the caller may
    /// see (its own, and those of units where it approves or reads the
    /// audit log), within `scopeId`'s subtree when given.
    async fn change_request_updates(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Requests whose scope is this unit or a unit below it.")] scope_id: Option<ID>,
    ) -> Result<BoxStream<'static, Result<ChangeRequest>>> {
        let scope = scope_id.map(|id| OrgUnitId::parse(&id, "scopeId")).transpose()?;
        let state = ctx.data_unchecked::<AppState>();
        let stream = realtime::change_request_updates(&state.realtime, live_principal(ctx), scope).await?;
        Ok(stream.map(|item| item.map(ChangeRequest).map_err(Into::into)).boxed())
    }
}
