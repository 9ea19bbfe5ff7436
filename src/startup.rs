//! Building and running the application, separate from `main` so tests
//! build the very same thing (and bind port 0).

use std::sync::Arc;

use axum::Router;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;

use crate::auth::{Auth, JwtKeys};
use crate::authz::Authz;
use crate::config::Settings;
use crate::graphql::{AppSchema, build_schema};
use crate::segment::SegmentIndex;
use crate::state::AppState;
use crate::{db, http};

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
        let authz = Authz::load(&db).await?;
        let keys = JwtKeys::load(&db, &settings).await?;
        let auth = Auth::new(keys.clone(), &settings)?;
        let index = SegmentIndex::new();
        if let Some(interval) = settings.index_follow_interval {
            index.spawn_follower(db.clone(), interval);
        }
        let state = AppState { db, authz, keys, auth, settings: Arc::new(settings), index };
        let schema = build_schema(state.clone());
        Ok(Self { state, schema })
    }

    pub fn router(&self) -> Router {
        http::router(self.state.clone(), self.schema.clone())
    }

    /// Serves until SIGTERM or Ctrl-C, then finishes in-flight requests.
    pub async fn serve(self, listener: TcpListener) -> anyhow::Result<()> {
        tracing::info!(address = %listener.local_addr()?, "tagbase listening");
        axum::serve(listener, self.router()).with_graceful_shutdown(shutdown_signal()).await?;
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
