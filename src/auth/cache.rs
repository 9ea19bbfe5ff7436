//! Signed-in callers, kept between requests while nothing they are built
//! from has changed.
//!
//! Building a caller reads the staff row, its session, the policy revision
//! and the whole org tree: four statements per request. Every table those
//! come from bumps one counter, `sign_in_revision`, by trigger in the
//! writing transaction (see the migration `sign_in_revision`). A request
//! reads that counter (one primary-key read) and reuses the caller it
//! built for the same bearer token at the same revision; any change to a
//! staff member, a session, an identity, the org tree or the policy moves
//! the counter and empties the cache.
//!
//! The counter is read on every request rather than polled in the
//! background, which keeps the promise sign-in always made: a revoked
//! session, a deactivated member or a role change is refused or applied on
//! the very next request, on this instance and on every other one sharing
//! the database, with no window at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};

use super::SignIn;
use crate::authz::{OrgTree, Principal};
use crate::error::{AppError, AppResult};

/// Callers kept at most; beyond, the cache starts afresh (tokens expire
/// and are replaced, so old keys would otherwise pile up until the next
/// change).
const MAX_CALLERS: usize = 10_000;

/// A caller built at some revision.
#[derive(Clone)]
pub(super) struct CachedCaller {
    pub principal: Arc<Principal>,
    pub sign_in: SignIn,
    /// When the session behind a session token ends.
    pub session_ends: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct State {
    revision: i64,
    org: Option<Arc<OrgTree>>,
    /// By bearer token (verified before every lookup).
    callers: HashMap<String, CachedCaller>,
}

impl State {
    /// Moves to `revision` when it is newer, dropping everything older.
    /// False when `revision` is older than what the cache holds (a slow
    /// request that read the counter before a faster one).
    fn at(&mut self, revision: i64) -> bool {
        if revision > self.revision {
            *self = State { revision, ..State::default() };
        }
        revision == self.revision
    }
}

/// The callers and the org tree of the current revision.
#[derive(Default)]
pub struct SignInCache {
    state: Mutex<State>,
}

impl SignInCache {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The caller built for `token` at `revision`, unless its session has
    /// ended since.
    pub(super) fn caller(&self, token: &str, revision: i64) -> Option<CachedCaller> {
        let mut state = self.state();
        if !state.at(revision) {
            return None;
        }
        state.callers.get(token).filter(|c| c.session_ends.is_none_or(|end| end > Utc::now())).cloned()
    }

    pub(super) fn keep(&self, token: &str, revision: i64, caller: CachedCaller) {
        let mut state = self.state();
        if !state.at(revision) {
            return;
        }
        if state.callers.len() >= MAX_CALLERS {
            state.callers.clear();
        }
        state.callers.insert(token.to_owned(), caller);
    }

    /// The org tree at `revision`, loaded once per revision.
    pub(super) async fn org(&self, db: &DatabaseConnection, revision: i64) -> AppResult<Arc<OrgTree>> {
        {
            let mut state = self.state();
            if state.at(revision)
                && let Some(org) = &state.org
            {
                return Ok(org.clone());
            }
        }
        let org = Arc::new(OrgTree::load(db).await?);
        let mut state = self.state();
        if state.at(revision) {
            state.org = Some(org.clone());
        }
        Ok(org)
    }

    /// How many callers are kept (for tests).
    pub fn len(&self) -> usize {
        self.state().callers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The current sign-in revision.
///
/// # Errors
/// Database errors, and a database without the counter's row.
pub async fn read_revision(db: &DatabaseConnection) -> AppResult<i64> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT revision FROM sign_in_revision WHERE id = 1",
        ))
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("sign_in_revision has no row")))?;
    Ok(row.try_get::<i64>("", "revision")?)
}
