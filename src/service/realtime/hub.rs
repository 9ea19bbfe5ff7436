//! The process-wide hub: one follower of the tag event log per instance,
//! fanning out to every subscriber of the instance.
//!
//! It polls every `realtime_poll_interval` with a fresh transaction (a
//! fresh snapshot each time: a snapshot kept from one poll to the next
//! would hide the writers whose transaction id is at or above its `xmax`),
//! reading what committed since the last poll as the segment index does
//! ([`after`](crate::store::event_log::after)).
//!
//! Events are released in sequence order, and only below a *stable* point:
//! a sequence number below which nothing can still commit. On SQLite one
//! transaction writes at a time, so every event read is stable. On
//! PostgreSQL a writer may commit sequence number 101 after another has
//! committed 102. Every writer of tag events holds the event-log advisory
//! lock (shared or exclusive) from before it draws sequence numbers until
//! it ends, so the writers that may still commit a number up to the newest
//! one visible in a snapshot are among the lock's holders listed just
//! after that snapshot was taken. Once none of them holds it any more
//! (listed just before a later snapshot), all have ended, and what they
//! wrote is visible in the later snapshot and has been read. Unrelated
//! transactions, of this database or of others on the server, hold
//! nothing back.
//!
//! Subscribers register under the same lock that releases events, and get
//! the stable point at that moment: everything at or below it is in the
//! database for a replay, everything above it comes through their feed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use entity::{change_request, enums::ChangeRequestStatus};
use sea_orm::{AccessMode, DatabaseConnection, DbBackend, IsolationLevel, TransactionTrait};
use tokio::sync::{broadcast, mpsc, watch};

use crate::error::{AppError, AppResult};
use crate::store::event_log::{Log, LogPosition, event_log_writers, log_position};
use crate::store::live::{self, TagChangeRow};

/// Log rows read per statement.
const PAGE: u64 = 10_000;

/// How far back each poll looks for change requests filed or decided
/// (their times are the writer's clock when it wrote, before it
/// committed): a request whose transaction took longer than this to commit
/// is not announced.
const REQUEST_WINDOW: Duration = Duration::from_secs(120);

/// Change requests waiting for slow subscribers, per instance.
const REQUEST_BUFFER: usize = 1_024;

/// Which tag changes a subscriber's feed carries: customers of these
/// units, of these tags when given. Who may see what is decided again at
/// delivery, with the subscriber's principal of that moment.
#[derive(Debug, Clone)]
pub struct FeedFilter {
    pub units: HashSet<i64>,
    pub tags: Option<HashSet<i64>>,
}

impl FeedFilter {
    fn matches(&self, row: &TagChangeRow) -> bool {
        self.units.contains(&row.org_unit_id) && self.tags.as_ref().is_none_or(|t| t.contains(&row.tag_id))
    }
}

struct Subscriber {
    filter: Arc<FeedFilter>,
    tx: mpsc::Sender<Arc<TagChangeRow>>,
    overflowed: Arc<AtomicBool>,
}

#[derive(Default)]
struct Fanout {
    subscribers: HashMap<u64, Subscriber>,
    /// Every event at or below it has been released (or predates the hub).
    stable: i64,
}

/// One subscriber's feed of tag changes above the stable point it was
/// registered at. Dropping it unregisters.
pub struct TagFeed {
    hub: Arc<Hub>,
    id: u64,
    rx: mpsc::Receiver<Arc<TagChangeRow>>,
    overflowed: Arc<AtomicBool>,
}

impl TagFeed {
    /// The next change; `Err(SLOW_CONSUMER)` once the buffer overflowed
    /// (the changes before the overflow are delivered first), `None` when
    /// the hub has stopped.
    pub async fn next(&mut self) -> Option<Result<Arc<TagChangeRow>, Overflowed>> {
        match self.rx.recv().await {
            Some(row) => Some(Ok(row)),
            None if self.overflowed.load(Ordering::Acquire) => Some(Err(Overflowed)),
            None => None,
        }
    }
}

impl TagFeed {
    /// The sign-in revision as of the hub's last poll.
    pub fn revision(&self) -> i64 {
        self.hub.revision_now()
    }
}

/// The feed's buffer filled up: the subscriber was cut off.
#[derive(Debug, Clone, Copy)]
pub struct Overflowed;

impl Drop for TagFeed {
    fn drop(&mut self) {
        self.hub.fanout().subscribers.remove(&self.id);
    }
}

/// Open WebSocket connections of one staff member on this instance; the
/// count goes down when it is dropped.
pub struct ConnectionSlot {
    hub: Arc<Hub>,
    staff_id: i64,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut connections = self.hub.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = connections.get_mut(&self.staff_id) {
            *n -= 1;
            if *n == 0 {
                connections.remove(&self.staff_id);
            }
        }
    }
}

/// The realtime hub of one instance. It starts following the logs with
/// its first subscriber or connection, and follows them from then on.
pub struct Hub {
    db: DatabaseConnection,
    interval: Duration,
    started: AtomicBool,
    next_id: AtomicU64,
    fanout: Mutex<Fanout>,
    ready: watch::Sender<bool>,
    revision: watch::Sender<i64>,
    requests: broadcast::Sender<Arc<change_request::Model>>,
    connections: Mutex<HashMap<i64, usize>>,
}

impl Hub {
    /// A hub that reads `db` every `interval` once started.
    pub fn new(db: DatabaseConnection, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            db,
            interval,
            started: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            fanout: Mutex::default(),
            ready: watch::channel(false).0,
            revision: watch::channel(0).0,
            requests: broadcast::channel(REQUEST_BUFFER).0,
            connections: Mutex::default(),
        })
    }

    fn fanout(&self) -> std::sync::MutexGuard<'_, Fanout> {
        self.fanout.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the follower (once), and waits until it has a stable point.
    ///
    /// # Errors
    /// `INTERNAL` when the follower cannot reach the database for long.
    pub async fn ready(self: &Arc<Self>) -> AppResult<()> {
        if !self.started.swap(true, Ordering::AcqRel) {
            let hub = Arc::clone(self);
            tokio::spawn(async move { hub.follow().await });
        }
        let mut ready = self.ready.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| *r)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => Err(AppError::internal(anyhow::anyhow!("the realtime hub did not start"))),
        }
    }

    /// Registers a subscriber of tag changes with a buffer of `buffer`
    /// changes: its feed, and the stable point it starts above.
    ///
    /// # Errors
    /// As [`ready`](Self::ready).
    pub async fn subscribe_tags(self: &Arc<Self>, filter: FeedFilter, buffer: usize) -> AppResult<(TagFeed, i64)> {
        self.ready().await?;
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let overflowed = Arc::new(AtomicBool::new(false));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stable = {
            let mut fanout = self.fanout();
            fanout.subscribers.insert(id, Subscriber { filter: Arc::new(filter), tx, overflowed: overflowed.clone() });
            fanout.stable
        };
        Ok((TagFeed { hub: Arc::clone(self), id, rx, overflowed }, stable))
    }

    /// Change requests as they are filed or decided.
    ///
    /// # Errors
    /// As [`ready`](Self::ready).
    pub async fn subscribe_requests(self: &Arc<Self>) -> AppResult<broadcast::Receiver<Arc<change_request::Model>>> {
        self.ready().await?;
        Ok(self.requests.subscribe())
    }

    /// The sign-in revision as of the last poll: it moves with every change
    /// to staff, sessions, the org tree and the policy, on any instance.
    ///
    /// # Errors
    /// As [`ready`](Self::ready).
    pub async fn revisions(self: &Arc<Self>) -> AppResult<watch::Receiver<i64>> {
        self.ready().await?;
        Ok(self.revision.subscribe())
    }

    /// The sign-in revision as of the last poll.
    pub fn revision_now(&self) -> i64 {
        *self.revision.borrow()
    }

    /// Takes one of `limit` connection slots of a staff member.
    ///
    /// # Errors
    /// `LIMIT_EXCEEDED` when the member holds `limit` already.
    pub fn connect(self: &Arc<Self>, staff_id: i64, limit: usize) -> AppResult<ConnectionSlot> {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let n = connections.entry(staff_id).or_default();
        if *n >= limit {
            return Err(AppError::LimitExceeded(format!(
                "too many subscription connections for this staff member (at most {limit})"
            )));
        }
        *n += 1;
        Ok(ConnectionSlot { hub: Arc::clone(self), staff_id })
    }

    /// Subscribers of tag changes registered now.
    pub fn tag_subscribers(&self) -> usize {
        self.fanout().subscribers.len()
    }

    /// Subscribers of change requests registered now.
    pub fn request_subscribers(&self) -> usize {
        self.requests.receiver_count()
    }

    /// The stable point: every tag event at or below it has been released.
    pub fn stable_seq(&self) -> i64 {
        self.fanout().stable
    }

    async fn follow(self: Arc<Self>) {
        let mut state = Follow::default();
        loop {
            if let Err(err) = self.poll(&mut state).await {
                tracing::warn!(error = ?err, "the realtime hub could not read the logs");
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// One poll: reads what committed since the last one, in a fresh
    /// snapshot, and releases what has become stable.
    async fn poll(&self, state: &mut Follow) -> AppResult<()> {
        let postgres = self.db.get_database_backend() == DbBackend::Postgres;
        // Before the snapshot: a writer not among these had ended before it
        // was taken, and everything it wrote is visible in it.
        let writing_before = event_log_writers(&self.db).await?;
        let txn = if postgres {
            self.db.begin_with_config(Some(IsolationLevel::RepeatableRead), Some(AccessMode::ReadOnly)).await?
        } else {
            self.db.begin().await?
        };
        // The first statement fixes the snapshot this poll reads in.
        let to = log_position(&txn, Log::TagEvents).await?;
        // After it: every writer that had drawn sequence numbers before the
        // snapshot and had not committed by then (and maybe a few more).
        let writing_after = event_log_writers(&txn).await?;
        let revision = live::sign_in_revision(&txn).await?;
        let mut rows = Vec::new();
        if let Some(from) = &state.from {
            let mut page = 0;
            loop {
                let batch = live::changes_after(&txn, from, page, PAGE).await?;
                let more = batch.len() as u64 == PAGE;
                if let Some(last) = batch.last() {
                    page = last.seq;
                }
                rows.extend(batch);
                if !more {
                    break;
                }
            }
        }
        let now = Utc::now();
        let since = now - chrono::Duration::from_std(REQUEST_WINDOW).unwrap_or_default();
        let requests = live::requests_touched_since(&txn, since).await?;
        txn.commit().await?;

        self.revision.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
        let ready = *self.ready.borrow();
        self.announce_requests(state, requests, ready);

        for row in rows {
            state.pending.insert(row.seq, Arc::new(row));
        }
        // Earlier snapshots whose unfinished writers have all ended since:
        // every sequence number up to their newest one has been read.
        let mut stable = None;
        while let Some((writers, seq)) = state.candidates.front()
            && writers.is_disjoint(&writing_before)
        {
            stable = Some(*seq);
            state.candidates.pop_front();
        }
        if postgres {
            state.candidates.push_back((writing_after, to.seq));
        } else {
            stable = Some(to.seq);
        }
        state.from = Some(to);
        let Some(stable) = stable else { return Ok(()) };
        let mut released = state.pending.split_off(&(stable + 1));
        std::mem::swap(&mut released, &mut state.pending);
        let mut fanout = self.fanout();
        if ready {
            self.release(&mut fanout, released.into_values());
        }
        fanout.stable = fanout.stable.max(stable);
        drop(fanout);
        if !ready {
            // Nobody subscribed before this point: they replay up to it.
            self.ready.send_replace(true);
        }
        Ok(())
    }

    /// Hands released events to every subscriber they concern; one whose
    /// buffer is full is cut off.
    fn release(&self, fanout: &mut Fanout, events: impl Iterator<Item = Arc<TagChangeRow>>) {
        for event in events {
            if event.seq <= fanout.stable {
                tracing::warn!(seq = event.seq, stable = fanout.stable, "a tag event arrived below the stable point");
                continue;
            }
            fanout.subscribers.retain(|_, s| {
                if !s.filter.matches(&event) {
                    return !s.tx.is_closed();
                }
                match s.tx.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.overflowed.store(true, Ordering::Release);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
        }
    }

    /// Announces requests whose status is new to the hub (nothing before
    /// the hub is ready: those were filed before anybody listened). The
    /// hub remembers the requests of the window only: each poll reads the
    /// whole window again.
    fn announce_requests(&self, state: &mut Follow, requests: Vec<change_request::Model>, ready: bool) {
        let mut seen = HashMap::with_capacity(requests.len());
        for request in requests {
            seen.insert(request.id, request.status);
            if ready && state.requests.get(&request.id) != Some(&request.status) {
                // No receivers is not an error.
                let _ = self.requests.send(Arc::new(request));
            }
        }
        state.requests = seen;
    }
}

/// What the follower carries from one poll to the next.
#[derive(Default)]
struct Follow {
    /// The snapshot the last poll read to.
    from: Option<LogPosition>,
    /// Read, not yet stable.
    pending: BTreeMap<i64, Arc<TagChangeRow>>,
    /// The snapshots read, oldest first, waiting for their unfinished
    /// writers to end: those writers, and the newest sequence number
    /// visible in the snapshot.
    candidates: VecDeque<(HashSet<String>, i64)>,
    /// Status of the change requests in the window, as last announced.
    requests: HashMap<i64, ChangeRequestStatus>,
}
