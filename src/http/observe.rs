//! What every request goes through, whatever its route: a request id (the caller's
//! `x-request-id` when it is sane, else a new one) that follows it into its span, its provider
//! calls and its response; the request timeout; `Connection: close` while draining; counting,
//! timing and one log line.
//!
//! Owns: the request id's rules, the route and method labels, and what is logged at `info`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::http::refusal::{refuse, Code};
use crate::http::AppState;
use crate::telemetry;

/// The request id follows the request into its span, its provider calls and its response;
/// every request is counted and timed, and logged once (probes and scrapes at debug level).
pub(super) async fn observe_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(new_request_id, str::to_owned);
    let route: &'static str = match request.uri().path() {
        "/graphql" => "/graphql",
        "/ws" => "/ws",
        path if path.starts_with("/graphiql/") => "/graphiql",
        path if path.starts_with("/webhooks/") => "/webhooks",
        "/livez" => "/livez",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ => "other",
    };
    let method = request.method().clone();
    let version = request.version();
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, route);
    let started = Instant::now();
    let handled = telemetry::with_request_id(request_id.clone(), next.run(request)).instrument(span.clone());
    let mut response = match tokio::time::timeout(state.request_timeout, handled).await {
        Ok(response) => response,
        Err(_) => refuse(
            Code::RequestTimeout,
            "the request took longer than the gateway allows (GATEWAY_REQUEST_TIMEOUT)",
        ),
    };
    // Draining: an HTTP/1.1 client closes this connection after this response and opens its
    // next one elsewhere, instead of reusing one that is about to close under it.
    if !state.ready.load(Ordering::Relaxed) && version <= axum::http::Version::HTTP_11 {
        response.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    let elapsed = started.elapsed();
    let status = response.status();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    // Whatever the route, a refusal is never stored (a 404, 405, 413, 503…).
    if !status.is_success() && !response.headers().contains_key(CACHE_CONTROL) {
        response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let method = method_label(&method);
    state.metrics.http_requests.with_label_values(&[route, method, status.as_str()]).inc();
    state.metrics.http_duration.with_label_values(&[route, method]).observe(elapsed.as_secs_f64());
    let status = status.as_u16();
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    // Every request is counted in the metrics; the log at `info` holds the ones worth reading
    // (refused, failed or slow), so that logging every success does not cost the hot path.
    span.in_scope(|| {
        if status >= 400 || elapsed >= SLOW_REQUEST {
            tracing::info!(status, elapsed_ms, "served");
        } else {
            tracing::debug!(status, elapsed_ms, "served");
        }
    });
    response
}

/// A request slower than this is logged at `info` even when it succeeded.
const SLOW_REQUEST: Duration = Duration::from_secs(1);

/// A random (version 4) UUID from a fast non-cryptographic generator: a request id needs to
/// be unique, not secret, and asking the kernel for randomness on every request costs.
fn new_request_id() -> String {
    let bytes = fastrand::u128(..).to_le_bytes();
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

/// Methods are labels from a fixed set: a client inventing methods must not invent series.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}
