//! The agent's HTTP endpoints: `/metrics`, `/histograms`, `/healthz`, `/readyz`, served
//! with hyper (HTTP/1.1) on the agent's tokio runtime.

use std::{
    convert::Infallible,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ACCEPT, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;

use super::metrics::AgentMetrics;

/// Content type of the OpenMetrics text exposition.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the Prometheus text exposition.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether every hook is attached, and what to say about it.
#[derive(Debug, Default)]
pub struct Readiness {
    ready: AtomicBool,
    status: RwLock<String>,
}

impl Readiness {
    /// Ready from now on; `status` is `/readyz`'s body (one line per fact).
    pub fn set_ready(&self, status: String) {
        *self.status.write().unwrap_or_else(PoisonError::into_inner) = status;
        self.ready.store(true, Ordering::Release);
    }

    /// Not ready (stopping, or the hooks disappeared), with the reason.
    pub fn set_not_ready(&self, status: String) {
        self.ready.store(false, Ordering::Release);
        *self.status.write().unwrap_or_else(PoisonError::into_inner) = status;
    }

    fn answer(&self) -> (StatusCode, String) {
        let status = self
            .status
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if self.ready.load(Ordering::Acquire) {
            (StatusCode::OK, status)
        } else if status.is_empty() {
            (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, status)
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// Answers one request.
fn route(
    request: &Request<Incoming>,
    metrics: &Arc<AgentMetrics>,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    match request.uri().path() {
        "/metrics" => {
            let wants_openmetrics = request
                .headers()
                .get(ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/openmetrics-text"));
            match metrics.encode_text() {
                Ok(body) if wants_openmetrics => text(StatusCode::OK, OPENMETRICS, body),
                // The Prometheus text parser reads the same exposition; the
                // OpenMetrics end marker is a comment to it.
                Ok(body) => text(StatusCode::OK, PROMETHEUS_TEXT, body),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    PLAIN,
                    "cannot encode the metrics\n".into(),
                ),
            }
        }
        "/histograms" => match serde_json::to_string(&metrics.histograms()) {
            Ok(body) => text(StatusCode::OK, "application/json", body),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                PLAIN,
                "cannot encode the histograms\n".into(),
            ),
        },
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => {
            let (status, body) = readiness.answer();
            text(status, PLAIN, body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: /metrics, /histograms, /healthz, /readyz\n".into(),
        ),
    }
}

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<AgentMetrics>,
    readiness: Arc<Readiness>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        let readiness = Arc::clone(&readiness);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = route(&request, &metrics, &readiness);
                async move { Ok::<_, Infallible>(response) }
            });
            // A client that goes away mid-request is not our error.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
