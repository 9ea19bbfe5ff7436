//! State shared by every request.

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::auth::{Auth, JwtKeys};
use crate::authz::Authz;
use crate::config::Settings;
use crate::http::RequestSteps;
use crate::segment::SegmentIndex;
use crate::service::realtime::Hub;

#[derive(Clone)]
pub struct AppState {
    pub db: DatabaseConnection,
    pub authz: Authz,
    pub keys: JwtKeys,
    /// Sign-in: dev and session tokens, OIDC, WeCom.
    pub auth: Auth,
    pub settings: Arc<Settings>,
    /// The in-memory segment index of this instance.
    pub index: Arc<SegmentIndex>,
    /// The realtime hub of this instance (subscriptions).
    pub realtime: Arc<Hub>,
    /// What runs around every GraphQL execution of this instance: its
    /// persisted queries, per-staff rate limit and document limits.
    pub steps: Arc<RequestSteps>,
}
