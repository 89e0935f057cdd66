//! Dodo Payments' webhooks: Standard Webhooks signatures (verified by the `standardwebhooks`
//! crate), the envelope `{business_id, type, timestamp, data}`, and which events name which
//! sessions (PROVIDERS.md, LIBRARIES.md).

use axum::http::HeaderMap;
use base64::Engine;
use serde::Deserialize;
use standardwebhooks::{Webhook, WebhookError};

use crate::domain::Secret;
use crate::providers::webhook::{header, signatures, Refusal, Target, WebhookEvent, WebhookSpec};

pub static WEBHOOKS: WebhookSpec = WebhookSpec {
    secret_var: "DODO_PAYMENTS_WEBHOOK_KEY",
    check_secret,
    verify,
    // Standard Webhooks signs `{id}.{timestamp}.{body}`.
    signs_id_and_time: true,
    parse,
    reference: |session| session.payment_id.as_deref(),
};

/// A secret as Dodo's dashboard shows it: `whsec_` and base64 of a key that is not empty
/// (`whsec_` alone would be an empty HMAC key). Decoded as the crate decodes it.
fn check_secret(secret: &str) -> Result<(), String> {
    let secret = secret.trim();
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    match base64::engine::general_purpose::STANDARD.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(()),
        Ok(_) => {
            Err("holds no key: `whsec_` must be followed by the base64 of the key, as Dodo's dashboard \
                      shows it"
                .into())
        }
        Err(_) => Err(
            "is not a Standard Webhooks secret (`whsec_` followed by base64, as Dodo's dashboard shows it)"
                .into(),
        ),
    }
}

/// Signature (any of several `v1,` ones, compared in constant time) and timestamp (within five
/// minutes) by the crate, over the raw body. The crate computes one MAC per secret and
/// compares each `v1,` signature to it, but reads a header of any length: it is bounded here
/// first (at most 8 signatures in 1 KiB).
fn verify(secret: &Secret, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    signatures(headers, "webhook-signature", &[' '])?;
    let webhook = Webhook::new(secret.expose().trim()).map_err(|_| Refusal::BadSignature)?;
    webhook.verify(body, headers).map_err(|error| match error {
        WebhookError::MissingHeader(_) | WebhookError::InvalidHeader(_) => {
            // The crate names the header without its prefix; every one of them is required.
            Refusal::Malformed("webhook-id, webhook-timestamp and webhook-signature")
        }
        WebhookError::InvalidTimestamp => Refusal::Malformed("webhook-timestamp"),
        WebhookError::TimestampTooOldError | WebhookError::FutureTimestampError => Refusal::Stale,
        WebhookError::InvalidPayload => Refusal::Malformed("body"),
        WebhookError::InvalidSignature | WebhookError::InvalidSecret(_) => Refusal::BadSignature,
    })
}

/// Signs a delivery as Dodo does: for the sandbox and for tests.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    Webhook::new(secret).ok()?.sign(id, timestamp, body).ok()
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    business_id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Data,
}

/// The fields of `data` that name a session; the rest (amounts, the customer) is not read.
#[derive(Deserialize, Default)]
struct Data {
    #[serde(default)]
    payment_id: Option<String>,
    #[serde(default)]
    checkout_session_id: Option<String>,
}

/// Families whose events name a payment, and through it a session.
const ABOUT_PAYMENTS: [&str; 4] = ["payment.", "refund.", "dispute.", "abandoned_checkout."];
/// Documented families that say nothing about a checkout session: acknowledged, not acted on.
const NOT_ABOUT_SESSIONS: [&str; 3] = ["subscription.", "license_key.", "credit."];

fn parse(headers: &HeaderMap, body: &[u8]) -> Result<WebhookEvent, Refusal> {
    let id = header(headers, "webhook-id")?.to_owned();
    let envelope: Envelope = serde_json::from_slice(body).map_err(|_| Refusal::Malformed("body"))?;
    let Envelope { business_id, kind, data } = envelope;
    let non_empty = |value: Option<String>| value.filter(|v| !v.trim().is_empty());
    let (payment, session) = (non_empty(data.payment_id), non_empty(data.checkout_session_id));
    let targets = if kind.starts_with("payment.") && session.is_some() {
        // Each delivery carries the payment's latest state, but events come in any order: the
        // session is fetched again rather than taken from the event.
        vec![Target::Session { id: session.unwrap_or_default(), reference: payment }]
    } else if ABOUT_PAYMENTS.iter().any(|family| kind.starts_with(family)) {
        // Refunds, disputes and abandoned checkouts name only the payment.
        payment.map(Target::Reference).into_iter().collect()
    } else if NOT_ABOUT_SESSIONS.iter().any(|family| kind.starts_with(family)) {
        Vec::new()
    } else {
        return Err(Refusal::UnknownEvent);
    };
    Ok(WebhookEvent { id, kind, business_id, targets })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", id.parse().expect("static"));
        headers
    }

    #[test]
    fn events_name_sessions_or_payments() {
        let read = |body: &str| parse(&headers("msg_1"), body.as_bytes());
        let event = read(
            r#"{"business_id":"bus_1","type":"payment.succeeded","timestamp":"2025-01-01T00:00:00Z",
                "data":{"payment_id":"pay_1","checkout_session_id":"cks_1","status":"succeeded"}}"#,
        )
        .expect("a payment event");
        assert_eq!(event.business_id.as_deref(), Some("bus_1"));
        assert_eq!(
            event.targets,
            vec![Target::Session { id: "cks_1".into(), reference: Some("pay_1".into()) }]
        );
        let refund = read(r#"{"type":"refund.succeeded","data":{"payment_id":"pay_1","refund_id":"ref_1"}}"#);
        assert_eq!(refund.expect("a refund").targets, vec![Target::Reference("pay_1".into())]);
        let renewal = read(r#"{"type":"payment.succeeded","data":{"payment_id":"pay_2"}}"#);
        assert_eq!(renewal.expect("a renewal").targets, vec![Target::Reference("pay_2".into())]);
        assert!(read(r#"{"type":"subscription.active","data":{}}"#).expect("known").targets.is_empty());
        assert_eq!(read(r#"{"type":"made.up","data":{}}"#), Err(Refusal::UnknownEvent));
        assert_eq!(read("not json"), Err(Refusal::Malformed("body")));
    }

    #[test]
    fn a_secret_without_a_key_is_refused() {
        assert!(check_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        for empty in ["whsec_", " whsec_ ", ""] {
            assert!(check_secret(empty).unwrap_err().contains("holds no key"), "{empty:?}");
        }
        assert!(check_secret("whsec_not base64!").unwrap_err().contains("not a Standard Webhooks secret"));
    }
}
