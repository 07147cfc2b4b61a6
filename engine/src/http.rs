//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;

/// Liveness and readiness, shared between the processing thread and the HTTP server.
#[derive(Debug, Default)]
pub struct Health {
    /// False once the processing loop has stopped for good.
    alive: AtomicBool,
    /// True once the instance has an assignment (possibly empty) and every assigned partition is
    /// restored; false while restoring.
    ready: AtomicBool,
    /// Partitions assigned and restored.
    pub partitions_ready: AtomicU64,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            alive: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            partitions_ready: AtomicU64::new(0),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_dead(&self) {
        self.alive.store(false, Ordering::Release);
        self.ready.store(false, Ordering::Release);
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Arc<Health>,
}

/// The router, separate from the listener so tests can drive it.
pub fn router(metrics: Metrics, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health })
}

/// Serves until the task is dropped.
pub async fn serve(
    address: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(%address, "Serving metrics and health.");
    axum::serve(listener, router(metrics, health)).await
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stopped\n")
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "restoring or not yet assigned\n",
        )
    }
}
