//! DHMAD's API as the sandbox plays it: `GET /api/v1/sessions/{id}` and `GET /api/v1/me`,
//! with DHMAD's own error bodies.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Duration;
use serde_json::json;

use crate::providers::sandbox::{presented_key, SandboxState, SLOW_FIXTURE_DELAY};

/// Fixture ids: sessions in every status, then ids that make each error.
pub const OPEN: &str = "d4a1e000-0000-4000-8000-000000000001";
pub const COMPLETED: &str = "d4a1e000-0000-4000-8000-000000000002";
pub const EXPIRED: &str = "d4a1e000-0000-4000-8000-000000000003";
pub const CANCELLED: &str = "d4a1e000-0000-4000-8000-000000000004";
pub const NEW_STATUS: &str = "d4a1e000-0000-4000-8000-000000000005";
pub const UNAUTHORIZED: &str = "d4a1e000-0000-4000-8000-000000000401";
pub const FORBIDDEN: &str = "d4a1e000-0000-4000-8000-000000000403";
pub const NOT_FOUND: &str = "d4a1e000-0000-4000-8000-000000000404";
pub const RATE_LIMITED: &str = "d4a1e000-0000-4000-8000-000000000429";
pub const SERVER_ERROR: &str = "d4a1e000-0000-4000-8000-000000000500";
pub const GARBAGE: &str = "d4a1e000-0000-4000-8000-000000000502";
pub const SLOW: &str = "d4a1e000-0000-4000-8000-000000000504";

pub fn router() -> Router<SandboxState> {
    Router::new().route("/api/v1/sessions/{id}", get(session)).route("/api/v1/me", get(me))
}

fn unauthorized(state: &SandboxState, headers: &HeaderMap) -> Option<Response> {
    match presented_key(headers) {
        Some(_) if state.accepts(headers) => None,
        Some(_) => Some(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "Unauthorized", "message": "Invalid or expired API key"})),
            )
                .into_response(),
        ),
        None => Some((StatusCode::UNAUTHORIZED, Json(json!({"error": "Unauthorized"}))).into_response()),
    }
}

async fn me(State(state): State<SandboxState>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(&state, &headers) {
        return denied;
    }
    Json(json!({
        "apiKey": {"id": "key_demo", "name": "demo", "keyPrefix": state.key.get(..14), "environment": state.environment,
                   "isActive": true, "rateLimit": 100},
        "developer": {"id": "dev_demo", "email": "demo@example.com", "companyName": "Demo"}
    }))
    .into_response()
}

async fn session(State(state): State<SandboxState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Some(denied) = unauthorized(&state, &headers) {
        return denied;
    }
    let at = |minutes: i64| (state.started + Duration::minutes(minutes)).to_rfc3339();
    let fixture = |status: &str, action: &str, completed: Option<String>, expires_in: i64| {
        Json(json!({"session": {
            "sessionId": id, "escrowId": "507f1f77bcf86cd799439011", "action": action,
            "targetUserEmail": "buyer@example.com", "status": status,
            "metadata": {"order_id": "ord_123"}, "expiresAt": at(expires_in),
            "completedAt": completed, "createdAt": at(-10)
        }}))
        .into_response()
    };
    match id.as_str() {
        OPEN => fixture("pending", "sign_contract", None, 30),
        COMPLETED => fixture("completed", "accept_pay", Some(at(-5)), 20),
        EXPIRED => fixture("expired", "submit_proof", None, -1),
        CANCELLED => fixture("cancelled", "cancel_escrow", None, 20),
        NEW_STATUS => fixture("on_hold", "escalate_to_mediator", None, 30),
        UNAUTHORIZED => (StatusCode::UNAUTHORIZED, Json(json!({"error": "Unauthorized"}))).into_response(),
        FORBIDDEN => (
            StatusCode::FORBIDDEN,
            Json(json!({"error": "Forbidden", "message": "You do not have access to this checkout session."})),
        )
            .into_response(),
        RATE_LIMITED => (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"error": "Too Many Requests", "message": "Rate limit exceeded, retry later", "retryAfter": 5})),
        )
            .into_response(),
        SERVER_ERROR => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "Internal Server Error", "message": "database timeout at db-7.internal"})),
        )
            .into_response(),
        GARBAGE => (StatusCode::OK, "<html>maintenance</html>").into_response(),
        SLOW => {
            tokio::time::sleep(SLOW_FIXTURE_DELAY).await;
            fixture("pending", "sign_contract", None, 30)
        }
        _ => (StatusCode::NOT_FOUND, Json(json!({"error": "Checkout session not found"}))).into_response(),
    }
}
