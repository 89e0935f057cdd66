//! Provider webhooks as the providers send them: signed deliveries and their secrets.

use checkout_gateway::config::{Config, Secret};
use checkout_gateway::providers::dodo;
use serde_json::{json, Value};

use super::app::{account_mut, TestApp};

/// A Standard Webhooks secret, as Dodo's dashboard shows one.
pub const DODO_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const DHMAD_SECRET: &str = "dhmad_webhook_secret_for_tests";

/// A delivery: its headers and its body.
pub type Delivery = (Vec<(String, String)>, String);

/// A Dodo `payment.*` delivery for session `id`, signed with `secret` at `timestamp`.
pub fn dodo_delivery(secret: &str, delivery: &str, timestamp: i64, kind: &str, data: Value) -> Delivery {
    let body =
        json!({"business_id": "bus_test", "type": kind, "timestamp": "2025-06-01T12:00:00Z", "data": data})
            .to_string();
    let signature = dodo::webhook::sign(secret, delivery, timestamp, body.as_bytes()).unwrap();
    let headers = vec![
        ("webhook-id".to_owned(), delivery.to_owned()),
        ("webhook-timestamp".to_owned(), timestamp.to_string()),
        ("webhook-signature".to_owned(), signature),
    ];
    (headers, body)
}

pub fn payment(id: &str, status: &str) -> Value {
    json!({"payment_id": "pay_9Qz", "checkout_session_id": id, "status": status})
}

pub async fn deliver(
    app: &TestApp,
    provider: &str,
    headers: &[(String, String)],
    body: String,
) -> (u16, Value) {
    let mut request = app.http.post(format!("http://{}/webhooks/{provider}", app.addr)).body(body);
    request = request.header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The `dodo` account takes webhooks signed with [`DODO_SECRET`].
pub fn with_dodo_secret(config: &mut Config) {
    account_mut(config, "dodo").webhook_secret = Some(Secret::new(DODO_SECRET));
}

/// Sends a signed `payment.<status>` delivery for `id`; returns the HTTP status.
pub async fn send_payment_event(app: &TestApp, id: &str, status: &str) -> u16 {
    let delivery = format!("msg_{:032x}", fastrand::u128(..));
    let (headers, body) =
        dodo_delivery(DODO_SECRET, &delivery, now(), &format!("payment.{status}"), payment(id, status));
    deliver(app, "dodo", &headers, body).await.0
}
