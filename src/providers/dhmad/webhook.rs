//! DHMAD's webhooks: escrow-level events (there is no session-level one), headers
//! `X-Webhook-Signature`, `X-Webhook-Id`, `X-Webhook-Event`, `X-Webhook-Timestamp`.
//!
//! The signature scheme is **unverified** (PROVIDERS.md): most likely HMAC-SHA256 of the raw
//! body keyed with the secret as given, hex, possibly prefixed `sha256=`. Every plausible form
//! is accepted and each is tested; when DHMAD confirms one, [`signature_matches`] is the one
//! function to narrow. The payload is most likely `{"event": …, "data": {…}}` with the escrow
//! id inside `data`; [`escrow_id`] reads the spellings that form could take.

use axum::http::HeaderMap;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::{CheckoutSession, Secret};
use crate::providers::webhook::{
    check_timestamp, header, parse_timestamp, signatures, Refusal, Target, WebhookEvent, WebhookSpec,
};

use super::details::DhmadDetails;

pub static WEBHOOKS: WebhookSpec = WebhookSpec {
    secret_var: "DHMAD_WEBHOOK_SECRET",
    check_secret: |secret| {
        if secret.trim().is_empty() {
            return Err("is empty".into());
        }
        Ok(())
    },
    verify,
    // DHMAD signs the body alone.
    signs_id_and_time: false,
    parse,
    reference: |session: &CheckoutSession| session.details::<DhmadDetails>()?.escrow_id.as_deref(),
};

/// The events DHMAD documents; each is about one escrow.
const EVENTS: [&str; 8] = [
    "escrow.status.updated",
    "contract.signed",
    "escrow.cancellation.requested",
    "escrow.cancellation.rejected",
    "escrow.cancellation.accepted",
    "escrow.updated",
    "escrow.delivery.rejected",
    "escrow.deposit_proof.rejected",
];

fn verify(secret: &Secret, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
    // Bounded before anything is computed (at most 8 signatures in 1 KiB).
    let given = signatures(headers, "x-webhook-signature", &[',', ' '])?;
    let at = parse_timestamp(header(headers, "x-webhook-timestamp")?)
        .ok_or(Refusal::Malformed("x-webhook-timestamp"))?;
    if !signature_matches(&mac(secret.expose().trim().as_bytes(), body), &given) {
        return Err(Refusal::BadSignature);
    }
    // Checked after the signature: an unsigned delivery learns nothing about the clock.
    check_timestamp(at, chrono::Utc::now())
}

/// HMAC-SHA256 of `body` with `key`: computed once per secret and delivery, however many
/// signatures come.
fn mac(key: &[u8], body: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Whether one of the `given` signatures is `expected`, written as hex (either case) or
/// base64, bare or after `sha256=`; several may come (a rotation). Each is compared in constant
/// time, and every one is compared (no early exit on a match).
fn signature_matches(expected: &[u8; 32], given: &[&str]) -> bool {
    given.iter().fold(false, |found, given| {
        let given = given.strip_prefix("sha256=").unwrap_or(given);
        let decoded = hex::decode(given)
            .ok()
            .filter(|bytes| bytes.len() == 32)
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(given).ok());
        let matches = decoded.is_some_and(|bytes| bool::from(bytes.as_slice().ct_eq(expected.as_slice())));
        found | matches
    })
}

/// Signs a delivery the way DHMAD most likely does (hex, `sha256=`): for tests.
pub fn sign(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(mac(secret.as_bytes(), body)))
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
}

fn parse(headers: &HeaderMap, body: &[u8]) -> Result<WebhookEvent, Refusal> {
    let id = header(headers, "x-webhook-id")?.to_owned();
    let payload: Payload = serde_json::from_slice(body).map_err(|_| Refusal::Malformed("body"))?;
    let kind = match header(headers, "x-webhook-event") {
        Ok(kind) => kind.to_owned(),
        Err(_) => payload.event.ok_or(Refusal::Malformed("x-webhook-event"))?,
    };
    if !EVENTS.contains(&kind.as_str()) {
        return Err(Refusal::UnknownEvent);
    }
    let escrow = escrow_id(&payload.data).ok_or(Refusal::Malformed("data.escrowId"))?;
    Ok(WebhookEvent { id, kind, business_id: None, targets: vec![Target::Reference(escrow)] })
}

/// The escrow an event is about: `data.escrowId`, `data.escrow_id`, or the id of
/// `data.escrow` (`id` or Mongo's `_id`: DHMAD's escrow ids are ObjectIds).
fn escrow_id(data: &serde_json::Value) -> Option<String> {
    let text = |value: Option<&serde_json::Value>| {
        value.and_then(serde_json::Value::as_str).filter(|s| !s.trim().is_empty()).map(str::to_owned)
    };
    text(data.get("escrowId")).or_else(|| text(data.get("escrow_id"))).or_else(|| {
        data.get("escrow").and_then(|escrow| text(escrow.get("id")).or_else(|| text(escrow.get("_id"))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"whsec_dhmad_test";
    const BODY: &[u8] = br#"{"event":"escrow.updated","data":{"escrowId":"507f1f77bcf86cd799439011"}}"#;

    #[test]
    fn every_documented_form_of_the_signature_is_accepted() {
        let expected = mac(KEY, BODY);
        let hex_lower = hex::encode(expected);
        let base64 = base64::engine::general_purpose::STANDARD.encode(expected);
        let matches = |header: &str| {
            let given: Vec<&str> = header.split([',', ' ']).filter(|s| !s.is_empty()).collect();
            signature_matches(&expected, &given)
        };
        for form in [
            hex_lower.clone(),
            hex_lower.to_uppercase(),
            format!("sha256={hex_lower}"),
            base64.clone(),
            format!("sha256={base64}"),
            format!("sha256=deadbeef, sha256={hex_lower}"),
        ] {
            assert!(matches(&form), "{form}");
        }
        assert!(!signature_matches(&mac(b"another key", BODY), &[hex_lower.as_str()]));
        assert!(!signature_matches(&mac(KEY, b"{}"), &[hex_lower.as_str()]));
        assert!(!matches(""));
        assert!(!matches(&hex_lower[..40]));
    }

    #[test]
    fn the_escrow_is_found_in_each_spelling() {
        for data in [
            r#"{"escrowId":"e1"}"#,
            r#"{"escrow_id":"e1"}"#,
            r#"{"escrow":{"id":"e1","status":"funded"}}"#,
            r#"{"escrow":{"_id":"e1"}}"#,
        ] {
            let data: serde_json::Value = serde_json::from_str(data).expect("json");
            assert_eq!(escrow_id(&data).as_deref(), Some("e1"), "{data}");
        }
        assert_eq!(escrow_id(&serde_json::json!({"other": 1})), None);
    }
}
