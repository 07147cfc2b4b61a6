//! `/metrics`, `/healthz`, `/readyz`, and the state queries of [`crate::query`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::metrics::Metrics;
use crate::query::QueryService;

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
    /// `None`: the query routes answer 404 (no processing loop to ask).
    queries: Option<QueryService>,
}

/// The router, separate from the listener so tests can drive it.
pub fn router(metrics: Metrics, health: Arc<Health>) -> Router {
    router_with_queries(metrics, health, None)
}

/// The router with the state queries answered by `queries`.
pub fn router_with_queries(
    metrics: Metrics,
    health: Arc<Health>,
    queries: Option<QueryService>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/lineage/events/{id}", get(query_handler))
        .route("/dedupe/{key}", get(query_handler))
        .route("/sampling/traces/{trace_id}", get(query_handler))
        .with_state(AppState {
            metrics,
            health,
            queries,
        })
}

/// Serves until the task is dropped.
pub async fn serve(
    address: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
    queries: Option<QueryService>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(%address, "Serving metrics, health and queries.");
    serve_listener(listener, metrics, health, queries).await
}

/// Serves on a bound listener (an ephemeral port in tests and the demo) until the task is
/// dropped.
pub async fn serve_listener(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    health: Arc<Health>,
    queries: Option<QueryService>,
) -> std::io::Result<()> {
    axum::serve(listener, router_with_queries(metrics, health, queries)).await
}

/// The three query routes share one handler: [`QueryService::get`] parses the path itself, so
/// in-process callers get the same answers.
async fn query_handler(State(state): State<AppState>, uri: Uri) -> impl IntoResponse {
    let response = match &state.queries {
        Some(queries) => queries.get(uri.path(), uri.query()).await,
        None => crate::query::QueryResponse {
            status: StatusCode::NOT_FOUND,
            body: serde_json::json!({
                "error": "not_found",
                "message": "queries are not served by this process",
            }),
        },
    };
    (
        response.status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{}\n", response.body),
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Sends `GET path` over a plain socket and returns the status code and body.
    fn get(address: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(address).expect("server listens");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("request sent");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response read");
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status line");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn endpoints_report_readiness_liveness_and_committed_metrics() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let metrics = Metrics::new();
        let health = Health::new();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let app = router(metrics.clone(), health.clone());
        runtime.spawn(async move { axum::serve(listener, app).await });

        assert_eq!(get(address, "/healthz").0, 200);
        let (status, body) = get(address, "/readyz");
        assert_eq!(status, 503, "not ready before the first assignment: {body}");
        health.set_ready(true);
        assert_eq!(get(address, "/readyz").0, 200);

        metrics
            .events_in
            .with_label_values(&["payments", "payments-in"])
            .inc_by(7);
        let (status, body) = get(address, "/metrics");
        assert_eq!(status, 200);
        assert!(
            body.contains(
                r#"breadcrumb_events_in_total{pipeline="payments",topic="payments-in"} 7"#
            ),
            "{body}"
        );
        assert!(body.contains("# TYPE breadcrumb_commit_duration_seconds histogram"));

        health.set_dead();
        assert_eq!(get(address, "/healthz").0, 503);
        assert_eq!(get(address, "/readyz").0, 503);
        assert_eq!(get(address, "/nowhere").0, 404);
    }
}

#[cfg(test)]
mod query_tests {
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::sync::Arc;

    use crate::query::{self, Found, LocalAnswer, Query, QueryService, Searched};

    use super::*;

    fn get(address: SocketAddr, path: &str) -> (u16, serde_json::Value) {
        let mut stream = std::net::TcpStream::connect(address).expect("server listens");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("request sent");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("response read");
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status line");
        assert!(
            response.contains("content-type: application/json"),
            "{response}"
        );
        let body = response.split_once("\r\n\r\n").expect("a body").1;
        (status, serde_json::from_str(body).expect("a JSON body"))
    }

    /// The query routes over a real socket, with a thread standing in for the processing loop
    /// (polling the channel as `process_until_shutdown` does).
    #[test]
    fn query_routes_answer_json_from_the_processing_thread() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (sender, receiver) = query::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let processing = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    receiver.serve(query::QUERIES_PER_ITERATION, |query| {
                        let searched = vec![Searched {
                            pipeline: "payments".to_owned(),
                            topic: "payments".to_owned(),
                            local_partitions: vec![0, 1],
                            routing_key: None,
                        }];
                        match query {
                            Query::Dedupe { key } if key == "pay 1" => LocalAnswer {
                                found: vec![Found {
                                    pipeline: "payments".to_owned(),
                                    partition: 1,
                                    value: serde_json::json!({ "key": key, "first_copy": { "offset": 7 } }),
                                }],
                                searched,
                                errors: Vec::new(),
                            },
                            Query::Dedupe { .. } => LocalAnswer {
                                searched,
                                ..LocalAnswer::default()
                            },
                            _ => LocalAnswer::default(),
                        }
                    });
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
        };
        let service = QueryService::new(sender, "node-a", Some("127.0.0.1:1"), None, true);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let address = listener.local_addr().expect("address");
        runtime.spawn(serve_listener(
            listener,
            Metrics::new(),
            Health::new(),
            Some(service),
        ));

        let (status, body) = get(address, "/dedupe/pay%201");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["instance"]["id"], "node-a");
        assert_eq!(body["answers"][0]["pipeline"], "payments");
        assert_eq!(body["answers"][0]["partition"], 1);
        assert_eq!(body["answers"][0]["answer"]["first_copy"]["offset"], 7);

        let (status, body) = get(address, "/dedupe/pay-2");
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"], "not_found");
        assert_eq!(body["searched"][0]["partitions"], serde_json::json!([0, 1]));

        let (status, body) = get(
            address,
            "/lineage/events/inv-1?depth=3&trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
        );
        assert_eq!(status, 404, "no lineage pipeline: {body}");
        let (status, body) = get(address, "/sampling/traces/not-hex");
        assert_eq!(status, 400, "{body}");
        let (status, _) = get(address, "/lineage/events/x?depth=1000");
        assert_eq!(status, 400);

        stop.store(true, Ordering::Release);
        processing.join().expect("processing thread");
        let (status, body) = get(address, "/dedupe/pay-2");
        assert_eq!(status, 503, "the processing loop is gone: {body}");
    }

    #[test]
    fn query_routes_without_a_processing_loop_answer_404() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let server = std::thread::spawn(move || {
            runtime.block_on(async move {
                let app = router(Metrics::new(), Health::new());
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    axum::serve(listener, app),
                )
                .await;
            })
        });
        let (status, body) = get(address, "/dedupe/x");
        assert_eq!(status, 404, "{body}");
        drop(server);
    }
}
