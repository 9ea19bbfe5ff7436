//! Building and running the application, separate from `main` so tests
//! build the very same thing (and bind port 0).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;

use axum::Router;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;

use crate::auth::{Auth, JwtKeys};
use crate::authz::Authz;
use crate::config::Settings;
use crate::graphql::{AppSchema, schema_builder};
use crate::segment::SegmentIndex;
use crate::service::jobs;
use crate::service::realtime::Hub;
use crate::state::AppState;
use crate::{db, http, observability};

/// A built application: state, schema and router.
#[derive(Clone)]
pub struct Application {
    pub state: AppState,
    pub schema: AppSchema,
}

impl Application {
    /// Connects, migrates, loads the policy and keys.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let db = db::connect_with(&settings.database_url, settings.limits.request_timeout).await?;
        db::migrate(&db).await?;
        Self::with_database(settings, db).await
    }

    /// As [`build`](Self::build), on an open and migrated connection.
    pub async fn with_database(settings: Settings, db: DatabaseConnection) -> anyhow::Result<Self> {
        observability::metrics::install();
        let authz = Authz::load(&db).await?;
        let keys = JwtKeys::load(&db, &settings).await?;
        let auth = Auth::new(keys.clone(), &settings)?;
        let index = SegmentIndex::new();
        if let Some(interval) = settings.index_follow_interval {
            index.spawn_follower(db.clone(), interval);
        }
        let steps = Arc::new(http::RequestSteps::from_settings(&settings)?);
        if let Some(interval) = settings.job_poll_interval {
            let worker = jobs::Worker {
                db: db.clone(),
                authz: authz.clone(),
                index: index.clone(),
                limits: settings.limits.clone(),
                instance: format!("tagbase-{}", uuid::Uuid::new_v4().simple()),
            };
            worker.spawn(interval);
        }
        if let Some(interval) = settings.schedule_interval {
            let scheduler = crate::service::rules::schedule::Scheduler {
                db: db.clone(),
                index: Some(index.clone()),
                limits: settings.limits.clone(),
                offset: settings.utc_offset,
                instance: format!("tagbase-{}", uuid::Uuid::new_v4().simple()),
            };
            scheduler.spawn(interval);
        }
        if let Some(interval) = settings.rollup_interval {
            crate::service::reports::rollup::spawn_folder(db.clone(), interval);
        }
        // Starts following the logs with its first subscriber.
        let realtime = Hub::new(db.clone(), settings.limits.realtime_poll_interval);
        let state = AppState { db, authz, keys, auth, settings: Arc::new(settings), index, realtime, steps };
        let schema = schema_builder(state.clone()).finish();
        Ok(Self { state, schema })
    }

    pub fn router(&self) -> Router {
        http::router(self.state.clone(), self.schema.clone())
    }

    /// `/metrics` without a token, for the metrics listener.
    pub fn metrics_router(&self) -> Router {
        observability::metrics::listener_router(self.state.clone())
    }

    /// Serves until SIGTERM or Ctrl-C, then finishes in-flight requests.
    /// Also serves `/metrics` on the metrics listener, when one is set.
    pub async fn serve(self, listener: TcpListener) -> anyhow::Result<()> {
        if let Some(address) = self.state.settings.metrics_listen {
            let metrics = TcpListener::bind(address).await.with_context(|| format!("binding {address} for metrics"))?;
            tracing::info!(%address, "metrics listening");
            let router = self.metrics_router();
            tokio::spawn(async move {
                if let Err(err) = axum::serve(metrics, router).await {
                    tracing::error!(error = %err, "the metrics listener stopped");
                }
            });
        }
        tracing::info!(address = %listener.local_addr()?, "tagbase listening");
        // The peer address feeds the per-address rate limit.
        let service = self.router().into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, service).with_graceful_shutdown(shutdown_signal()).await?;
        tracing::info!("tagbase stopped");
        Ok(())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
