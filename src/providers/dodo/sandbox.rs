//! Dodo Payments' API as the sandbox plays it: `GET /checkouts/{id}`, with Dodo's error bodies
//! and rate-limit headers.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Duration;
use serde_json::json;

use super::PAYMENT_STATUSES;
use crate::providers::sandbox::{SandboxState, SandboxWebhook, SLOW_FIXTURE_DELAY};

/// `cks_bench_<anything>`: a completed session under any id, for benchmarks.
pub const BENCH_PREFIX: &str = "cks_bench_";
/// `cks_live_<anything>`: a session that moves on its own from its first read: open, then
/// processing after one step, then succeeded after two; each change is announced by a signed
/// `payment.*` webhook when the sandbox has somewhere to send it.
pub const LIVE_PREFIX: &str = "cks_live_";
/// A live session's `payment_status` at each step (none while open).
const LIVE_STATUSES: [Option<&str>; 3] = [None, Some("processing"), Some("succeeded")];
/// Payment not started yet (`payment_status` null).
pub const OPEN: &str = "cks_demo_open";
/// A `payment_status` this gateway does not know.
pub const NEW_STATUS: &str = "cks_demo_new_status";
pub const UNAUTHORIZED: &str = "cks_err_401";
pub const FORBIDDEN: &str = "cks_err_403";
pub const NOT_FOUND: &str = "cks_err_404";
pub const INVALID: &str = "cks_err_422";
pub const RATE_LIMITED: &str = "cks_err_429";
pub const SERVER_ERROR: &str = "cks_err_500";
pub const GARBAGE: &str = "cks_err_garbage";
pub const SLOW: &str = "cks_err_slow";

pub fn router() -> Router<SandboxState> {
    Router::new().route("/checkouts/{id}", get(checkout))
}

fn error(status: StatusCode, code: &str, message: Option<&str>) -> Response {
    let body = match message {
        Some(message) => json!({"code": code, "message": message}),
        None => json!({"code": code}),
    };
    (status, Json(body)).into_response()
}

async fn checkout(State(state): State<SandboxState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if !state.accepts(&headers) || headers.contains_key("x-api-key") {
        return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", Some("Invalid API key"));
    }
    let session = |status: Option<&str>| {
        let paid = status.is_some();
        Json(json!({
            "id": id, "created_at": (state.started - Duration::minutes(10)).to_rfc3339(),
            "customer_email": "ana@example.com", "customer_name": "Ana",
            "payment_id": paid.then_some("pay_9Qz"), "payment_status": status
        }))
        .into_response()
    };
    // `cks_demo_<status>` holds a session in that documented status.
    let documented = id
        .strip_prefix("cks_demo_")
        .and_then(|status| PAYMENT_STATUSES.iter().find(|(known, _)| *known == status));
    if let Some((status, _)) = documented {
        return session(Some(*status));
    }
    if let Some(name) = id.strip_prefix(LIVE_PREFIX) {
        let (step, first) = state.live_step(&id);
        if first {
            if let Some(webhook) = state.webhook.clone() {
                tokio::spawn(announce(state.clone(), webhook, id.clone()));
            }
        }
        let status = LIVE_STATUSES[(step as usize).min(LIVE_STATUSES.len() - 1)];
        return Json(json!({
            "id": id, "created_at": (state.started - Duration::minutes(1)).to_rfc3339(),
            "customer_email": "ana@example.com", "customer_name": "Ana",
            "payment_id": status.map(|_| format!("pay_live_{name}")), "payment_status": status
        }))
        .into_response();
    }
    // Benchmarks need as many distinct sessions as they like: cold misses, cache filling.
    if id.starts_with(BENCH_PREFIX) {
        return session(Some("succeeded"));
    }
    match id.as_str() {
        OPEN => session(None),
        NEW_STATUS => session(Some("awaiting_bank_transfer")),
        UNAUTHORIZED => error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", Some("Invalid API key")),
        FORBIDDEN => {
            error(StatusCode::FORBIDDEN, "FORBIDDEN", Some("This key may not read checkout sessions"))
        }
        INVALID => error(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_REQUEST_PARAMETERS", Some("Invalid id")),
        RATE_LIMITED => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", None);
            let headers = response.headers_mut();
            headers.insert("retry-after", "3".parse().expect("static header"));
            headers.insert("x-ratelimit-limit", "40".parse().expect("static header"));
            headers.insert("x-ratelimit-remaining", "0".parse().expect("static header"));
            headers.insert("x-ratelimit-reset", "3".parse().expect("static header"));
            response
        }
        SERVER_ERROR => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_SERVER_ERROR", Some("Something went wrong :("))
        }
        GARBAGE => (StatusCode::OK, Json(json!({"unexpected": true}))).into_response(),
        SLOW => {
            tokio::time::sleep(SLOW_FIXTURE_DELAY).await;
            session(None)
        }
        _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", Some("Item not found")),
    }
}

/// Sends the `payment.*` webhook of each step of live session `id` as it happens, signed as
/// Dodo signs them (Standard Webhooks).
async fn announce(state: SandboxState, webhook: std::sync::Arc<SandboxWebhook>, id: String) {
    let started = tokio::time::Instant::now();
    let name = id.strip_prefix(LIVE_PREFIX).unwrap_or_default();
    for (step, status) in LIVE_STATUSES.iter().enumerate().skip(1) {
        let Some(status) = status else { continue };
        // A moment after the change, so that the gateway's refetch sees it.
        let at = started + state.step * step as u32 + std::time::Duration::from_millis(10);
        tokio::time::sleep_until(at).await;
        let body = json!({
            "business_id": webhook.business_id,
            "type": format!("payment.{status}"),
            "timestamp": chrono::Utc::now().to_rfc3339(),
            "data": {
                "payload_type": "Payment", "payment_id": format!("pay_live_{name}"),
                "checkout_session_id": id, "status": status, "business_id": webhook.business_id,
            }
        })
        .to_string();
        let delivery = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let timestamp = chrono::Utc::now().timestamp();
        let Some(signature) = super::webhook::sign(&webhook.secret, &delivery, timestamp, body.as_bytes())
        else {
            return;
        };
        let sent = state
            .http
            .post(&webhook.url)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        if let Err(error) = sent {
            tracing::warn!(%error, "the sandbox could not deliver a webhook");
        }
    }
}
