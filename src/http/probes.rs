//! What is not GraphQL: `/livez`, `/readyz` (with each account's credential check and circuit,
//! and the shared tier), the `/metrics` page (here, or on a port of its own), and the answers
//! to a path or a method no route has.
//!
//! Owns: readiness (never a provider call) and what is sampled at each scrape.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::http::refusal::{refuse, Code};
use crate::http::AppState;
use crate::providers::guard::CircuitState;
use crate::telemetry;

pub(super) async fn livez() -> &'static str {
    "ok"
}

/// 200 while serving, 503 before and from the start of shutdown. Never calls a provider; the
/// startup credential check is reported, not waited on.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let mut report = state.readiness.report();
    let (status, label) = if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    report["status"] = json!(label);
    (status, Json(report)).into_response()
}

pub(crate) async fn metrics_page(State(state): State<AppState>) -> Response {
    // The writer counts; the counter catches up at each scrape.
    let dropped = telemetry::dropped_log_lines();
    let counted = state.metrics.log_lines_dropped.get();
    state.metrics.log_lines_dropped.inc_by(dropped.saturating_sub(counted));
    state.metrics.sample_process();
    for account in state.accounts.iter() {
        let value = match account.circuit() {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        };
        let label = [account.kind().slug, &**account.name()];
        state.metrics.circuit_state.with_label_values(&label).set(value);
        state.metrics.upstream_hold.with_label_values(&label).set(account.held_for().as_secs_f64());
    }
    state
        .metrics
        .cache_entries
        .set(i64::try_from(state.service.cache().entry_count().await).unwrap_or(i64::MAX));
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()).into_response()
}

pub(super) async fn not_found() -> Response {
    refuse(
        Code::NotFound,
        "not found; the routes are /graphql, /ws, /webhooks/{provider}, /livez, /readyz and /metrics",
    )
}

pub(super) async fn method_not_allowed() -> Response {
    refuse(Code::MethodNotAllowed, "this route does not take this method (`Allow` lists the ones it does)")
}
