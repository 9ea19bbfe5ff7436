//! Realtime: what subscriptions stream. Tag changes and change requests
//! come from one [`Hub`] per instance; who may see each item is decided at
//! delivery, with the subscriber's principal of that moment (a connection
//! replaces it when the sign-in revision moves: a role or policy change
//! applies to a stream already open).

mod hub;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, RwLock};

use entity::change_request;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use sea_orm::DatabaseConnection;
use tokio::sync::broadcast;

pub use crate::store::live::TagChangeRow;
pub use hub::{ConnectionSlot, FeedFilter, Hub, TagFeed};

use crate::authz::visibility::on_customer_visible;
use crate::authz::{Action, Principal};
use crate::config::Limits;
use crate::domain::{OrgUnitId, TagId};
use crate::error::{AppError, AppResult};
use crate::service::governance::requests;
use crate::store::live;

/// Replayed events read per statement.
const REPLAY_PAGE: u64 = 1_000;

/// Signs the subscriber in again (its connection's token).
pub type Refresh = Arc<dyn Fn() -> BoxFuture<'static, AppResult<Arc<Principal>>> + Send + Sync>;

/// The subscriber's principal, renewed while its connection stays open
/// (roles, policy, org tree changed). Streams ask for it at the sign-in
/// revision of the changes they deliver, so a role taken away before a
/// change was made applies to that change.
#[derive(Clone)]
pub struct LivePrincipal {
    /// The principal, and the sign-in revision it is known current at.
    now: Arc<RwLock<(Arc<Principal>, i64)>>,
    refresh: Option<Refresh>,
}

impl LivePrincipal {
    /// A principal that is never renewed (a request's own).
    pub fn new(principal: Arc<Principal>) -> Self {
        Self { now: Arc::new(RwLock::new((principal, i64::MAX))), refresh: None }
    }

    /// A principal current at `revision`, renewed by `refresh`.
    pub fn renewable(principal: Arc<Principal>, revision: i64, refresh: Refresh) -> Self {
        Self { now: Arc::new(RwLock::new((principal, revision))), refresh: Some(refresh) }
    }

    pub fn current(&self) -> Arc<Principal> {
        self.now.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Stores a principal known current at `revision`.
    pub fn replace(&self, principal: Arc<Principal>, revision: i64) {
        let mut now = self.now.write().unwrap_or_else(|e| e.into_inner());
        if revision >= now.1 {
            *now = (principal, revision);
        }
    }

    /// The principal as of `revision` at least: signed in again when the
    /// one held is older.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` when signing in again is refused.
    pub async fn at(&self, revision: i64) -> AppResult<Arc<Principal>> {
        let (principal, known) = self.now.read().unwrap_or_else(|e| e.into_inner()).clone();
        match &self.refresh {
            Some(refresh) if known < revision => {
                let fresh = refresh().await?;
                self.replace(fresh.clone(), revision);
                Ok(fresh)
            }
            _ => Ok(principal),
        }
    }
}

/// What a `tagChanges` subscriber asks for.
#[derive(Debug, Clone, Default)]
pub struct TagChangesRequest {
    /// Customers of this unit's subtree (all the caller reads if `None`).
    pub org_unit: Option<OrgUnitId>,
    /// Only these tags (all the caller sees if empty).
    pub tags: Vec<TagId>,
    /// Replay from the log everything after this sequence number first.
    pub after_seq: Option<i64>,
}

/// True when the caller may see this change now: the customer is in its
/// read scope and the tag is one it sees on that customer.
fn change_visible(principal: &Principal, row: &TagChangeRow) -> bool {
    principal.scope(Action::CustomerRead).contains(row.org_unit_id)
        && on_customer_visible(principal, row.owner_staff_id, row.visibility_class.as_deref(), row.org_unit_id)
}

/// The units a subscription covers: the subtree of `org_unit` (or all)
/// within what the caller reads.
fn units_of(principal: &Principal, org_unit: Option<OrgUnitId>) -> AppResult<HashSet<i64>> {
    let readable = principal.scope(Action::CustomerRead);
    let units: HashSet<i64> = match org_unit {
        Some(unit) => {
            if principal.org.get(unit.0).is_none() {
                return Err(AppError::not_found("org unit", unit));
            }
            principal.org.subtree(unit.0).map(|u| u.id).filter(|u| readable.contains(*u)).collect()
        }
        None => readable.unit_ids().collect(),
    };
    if units.is_empty() {
        return Err(match org_unit {
            Some(unit) => AppError::not_found("org unit", unit),
            None => AppError::Forbidden("you may read no customers".to_owned()),
        });
    }
    Ok(units)
}

/// Every add and remove of a tag the caller may see, on customers of the
/// requested units, in event-log order: first the replay of what came
/// after `after_seq`, then changes as they become stable. Each sequence
/// number comes once, in increasing order.
///
/// # Errors
/// `NOT_FOUND` for an unknown or invisible unit or tag; `VALIDATION` for a
/// negative `afterSeq`; `RESYNC_REQUIRED` when `afterSeq` is further back
/// than `max_replay_events` or beyond the end of the log. The stream ends
/// with `SLOW_CONSUMER` (carrying the position to resume from) when the
/// subscriber falls `subscription_buffer` changes behind.
#[tracing::instrument(skip_all, fields(staff = principal.current().staff.id))]
pub async fn tag_changes(
    db: &DatabaseConnection,
    hub: &Arc<Hub>,
    principal: LivePrincipal,
    limits: &Limits,
    request: TagChangesRequest,
) -> AppResult<BoxStream<'static, AppResult<TagChangeRow>>> {
    let now = principal.current();
    let units = units_of(&now, request.org_unit)?;
    let tags = if request.tags.is_empty() {
        None
    } else {
        crate::authz::visibility::visible_tags(db, &now, &request.tags).await?;
        Some(request.tags.iter().map(|t| t.0).collect::<HashSet<i64>>())
    };
    if request.after_seq.is_some_and(|s| s < 0) {
        return Err(AppError::validation("afterSeq", "must be 0 or more"));
    }
    let filter = FeedFilter { units: units.clone(), tags: tags.clone() };
    let (feed, stable) = hub.subscribe_tags(filter, limits.subscription_buffer).await?;
    let replay_to = match request.after_seq {
        None => stable,
        Some(after) if after > stable => {
            // Another instance may be ahead of this one; a position beyond
            // the log itself is not one this database gave.
            if after > live::newest_seq(db).await? {
                return Err(AppError::ResyncRequired(format!(
                    "afterSeq {after} is beyond the end of the tag event log: reload, then subscribe without afterSeq"
                )));
            }
            stable
        }
        Some(after) if stable - after > limits.max_replay_events => {
            return Err(AppError::ResyncRequired(format!(
                "afterSeq {after} is more than {} events back: reload, then subscribe without afterSeq",
                limits.max_replay_events
            )));
        }
        Some(_) => stable,
    };
    let position = request.after_seq.unwrap_or(stable);
    let follow = Follow {
        db: db.clone(),
        principal,
        units: units.into_iter().collect(),
        replay: (position < replay_to).then(VecDeque::new),
        replay_to,
        position,
        feed,
        ended: false,
    };
    Ok(stream::unfold(follow, |mut f| async move {
        let item = f.next().await?;
        Some((item, f))
    })
    .boxed())
}

/// Where a `tagChanges` stream is.
struct Follow {
    db: DatabaseConnection,
    principal: LivePrincipal,
    units: Vec<i64>,
    /// Replayed rows read but not yet delivered; `None` once the replay is
    /// over.
    replay: Option<VecDeque<TagChangeRow>>,
    replay_to: i64,
    /// The last sequence number the stream got past (delivered, or not
    /// the caller's to see): a resume from it loses nothing.
    position: i64,
    feed: TagFeed,
    ended: bool,
}

impl Follow {
    async fn next(&mut self) -> Option<AppResult<TagChangeRow>> {
        if self.ended {
            return None;
        }
        loop {
            let row = if let Some(buffer) = &mut self.replay {
                match buffer.pop_front() {
                    Some(row) => row,
                    None if self.position >= self.replay_to => {
                        self.replay = None;
                        continue;
                    }
                    None => {
                        let page =
                            live::changes_between(&self.db, self.position, self.replay_to, &self.units, REPLAY_PAGE)
                                .await;
                        match page {
                            Ok(rows) if rows.is_empty() => {
                                self.position = self.replay_to;
                            }
                            Ok(rows) => buffer.extend(rows),
                            Err(err) => {
                                self.ended = true;
                                return Some(Err(err));
                            }
                        }
                        continue;
                    }
                }
            } else {
                match self.feed.next().await {
                    Some(Ok(row)) => TagChangeRow::clone(&row),
                    Some(Err(_)) => {
                        self.ended = true;
                        return Some(Err(AppError::SlowConsumer { resume_after_seq: Some(self.position) }));
                    }
                    None => return None,
                }
            };
            if row.seq <= self.position {
                continue;
            }
            // The hub reads the sign-in revision with the events it
            // releases: a change of roles committed before this event was
            // read is known here.
            let principal = match self.principal.at(self.feed.revision()).await {
                Ok(principal) => principal,
                Err(err) => {
                    self.ended = true;
                    return Some(Err(err));
                }
            };
            self.position = row.seq;
            if change_visible(&principal, &row) {
                return Some(Ok(row));
            }
        }
    }
}

/// Change requests filed or decided from now on that the caller may see
/// (as `changeRequests` shows them), in the subtree of `scope` when given.
///
/// # Errors
/// `NOT_FOUND` for an unknown unit. The stream ends with `SLOW_CONSUMER`
/// when the subscriber falls too far behind.
pub async fn change_request_updates(
    hub: &Arc<Hub>,
    principal: LivePrincipal,
    scope: Option<OrgUnitId>,
) -> AppResult<BoxStream<'static, AppResult<change_request::Model>>> {
    let now = principal.current();
    let units: Option<HashSet<i64>> = match scope {
        Some(unit) => {
            if now.org.get(unit.0).is_none() {
                return Err(AppError::not_found("org unit", unit));
            }
            Some(now.org.subtree(unit.0).map(|u| u.id).collect())
        }
        None => None,
    };
    let rx = hub.subscribe_requests().await?;
    let hub = Arc::clone(hub);
    Ok(stream::unfold(Some(rx), move |rx| {
        let (principal, units, hub) = (principal.clone(), units.clone(), hub.clone());
        async move {
            let mut rx = rx?;
            loop {
                match rx.recv().await {
                    Ok(request) => {
                        let wanted = units.as_ref().is_none_or(|u| u.contains(&request.org_unit_id));
                        let principal = match principal.at(hub.revision_now()).await {
                            Ok(principal) => principal,
                            Err(err) => return Some((Err(err), None)),
                        };
                        if wanted && requests::is_visible(&principal, &request) {
                            return Some((Ok(change_request::Model::clone(&request)), Some(rx)));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some((Err(AppError::SlowConsumer { resume_after_seq: None }), None));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    })
    .boxed())
}
