//! The providers' side: wiremock answers as DHMAD and Dodo give them, and what they were asked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use super::app::TestApp;

pub const DHMAD_ID: &str = "550e8400-e29b-41d4-a716-446655440000";

/// Requests a provider mock received for sessions: DHMAD's startup credential check
/// (`GET /api/v1/me`) is not one.
pub async fn session_calls(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().iter().filter(|r| r.url.path() != "/api/v1/me").count()
}

/// Dodo answers `id` with a session in `status` (`None`: no payment yet).
pub async fn mount_dodo(app: &TestApp, id: &str, status: Option<&str>) {
    Mock::given(path(format!("/checkouts/{id}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(dodo_session(id, status)))
        .mount(&app.dodo)
        .await;
}

/// Dodo answers every id `<prefix><digits>` with a completed session.
pub async fn mount_dodo_numbered(app: &TestApp, prefix: &str) {
    Mock::given(wiremock::matchers::path_regex(format!("^/checkouts/{prefix}[0-9]+$")))
        .respond_with(ResponseTemplate::new(200).set_body_json(dodo_session(prefix, Some("succeeded"))))
        .mount(&app.dodo)
        .await;
}

/// A DHMAD `GET /sessions/{id}` 200 body.
pub fn dhmad_session(id: &str, status: &str) -> Value {
    json!({"session": {
        "sessionId": id, "escrowId": "507f1f77bcf86cd799439011", "action": "sign_contract",
        "targetUserEmail": "buyer@example.com", "status": status,
        "metadata": {"order_id": "ord_123"}, "expiresAt": "2099-01-15T10:30:00Z",
        "completedAt": null, "createdAt": "2024-01-15T10:00:00Z"
    }})
}

/// A Dodo `GET /checkouts/{id}` 200 body.
pub fn dodo_session(id: &str, payment_status: Option<&str>) -> Value {
    json!({"id": id, "created_at": "2025-06-01T12:00:00Z", "customer_email": "ana@example.com",
           "customer_name": "Ana", "payment_id": payment_status.map(|_| "pay_9Qz"), "payment_status": payment_status})
}

/// What a provider answers for one session, changed by the test while the gateway runs.
#[derive(Clone)]
pub struct Upstream {
    body: Arc<Mutex<Value>>,
    delay: Duration,
}

impl Respond for Upstream {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(self.body.lock().unwrap().clone()).set_delay(self.delay)
    }
}

impl Upstream {
    /// `server` answers `route` with `body` after `delay`, until the test sets another body.
    pub async fn mount(server: &MockServer, route: &str, body: Value, delay: Duration) -> Upstream {
        let upstream = Upstream { body: Arc::new(Mutex::new(body)), delay };
        Mock::given(path(route)).respond_with(upstream.clone()).mount(server).await;
        upstream
    }

    pub fn set(&self, body: Value) {
        *self.body.lock().unwrap() = body;
    }
}

/// Dodo (`server`) answers `id` from a body the test can change.
pub async fn mount_dodo_upstream(
    server: &MockServer,
    id: &str,
    status: Option<&str>,
    delay: Duration,
) -> Upstream {
    Upstream::mount(server, &format!("/checkouts/{id}"), dodo_session(id, status), delay).await
}

/// How often Dodo (`server`) was asked for session `id`.
pub async fn dodo_calls(server: &MockServer, id: &str) -> usize {
    let requests = server.received_requests().await.unwrap();
    requests.iter().filter(|r| r.url.path() == format!("/checkouts/{id}")).count()
}
