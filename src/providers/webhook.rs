//! What a provider's webhooks are to the gateway: how a delivery is checked and what it names.
//! Each provider's module says it for its own (`<provider>/webhook.rs`); the `webhooks` module
//! receives deliveries and acts on them.
//!
//! Owns: the shape every provider's webhook module fills in ([`WebhookSpec`]), what a
//! delivery may name ([`WebhookEvent`], [`Target`]), why one is refused ([`Refusal`]), and the
//! replay window every provider documents.

use std::fmt;

use axum::http::HeaderMap;
use chrono::{DateTime, TimeZone, Utc};

use crate::domain::{CheckoutSession, Secret};

/// Deliveries signed further than this from now are refused (both providers say 5 minutes).
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

/// The most signatures a delivery's signature header may carry: a secret's rotation needs two,
/// and each one is compared to the MAC the gateway computes (once per secret).
pub const MAX_SIGNATURES: usize = 8;
/// The most bytes that header may hold: eight SHA-256 signatures in base64 or hex, with their
/// prefixes and separators, fit (about 600 bytes).
pub const MAX_SIGNATURE_HEADER_BYTES: usize = 1024;

/// One provider's webhooks, defined in its module as a `static`.
pub struct WebhookSpec {
    /// The environment variable holding the default account's secret (the name the
    /// provider's SDK uses, where it has one).
    pub secret_var: &'static str,
    /// Checks a secret's form at startup, so a mistyped one stops the gateway rather than
    /// refusing every delivery.
    pub check_secret: fn(&str) -> Result<(), String>,
    /// Checks a delivery's signature and timestamp with one account's secret: one MAC over
    /// the body, whatever the number of signatures the header carries.
    pub verify: fn(&Secret, &HeaderMap, &[u8]) -> Result<(), Refusal>,
    /// Whether the signature covers the delivery's id and timestamp (Standard Webhooks) and
    /// not only its body (DHMAD). When it does not, a captured delivery sent again under a new
    /// id and timestamp still verifies: the bodies taken are remembered for the replay window
    /// and a repeat is not acted on.
    pub signs_id_and_time: bool,
    /// What a verified delivery is about.
    pub parse: fn(&HeaderMap, &[u8]) -> Result<WebhookEvent, Refusal>,
    /// The id this provider's events name a session by, when not by its own id (Dodo: the
    /// payment; DHMAD: the escrow).
    pub reference: fn(&CheckoutSession) -> Option<&str>,
}

impl fmt::Debug for WebhookSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSpec").field("secret_var", &self.secret_var).finish_non_exhaustive()
    }
}

/// A verified delivery, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEvent {
    /// The delivery's id: a redelivery carries the same one.
    pub id: String,
    /// The event's type as the provider names it (`payment.succeeded`): logs and metrics.
    pub kind: String,
    /// The provider's own id for the account (Dodo's `business_id`), when the event says.
    pub business_id: Option<String>,
    /// The sessions it is about; none for an event the gateway has nothing to do with.
    pub targets: Vec<Target>,
}

/// What an event names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A session by its id, and the reference it is known by from now on (its payment).
    Session { id: String, reference: Option<String> },
    /// Every session the gateway has seen under this reference (a payment, an escrow).
    Reference(String),
}

/// Why a delivery is refused; nothing is changed by a refused one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A required header or field is missing or unreadable.
    Malformed(&'static str),
    /// No configured secret signs it.
    BadSignature,
    /// Signed more than five minutes from now.
    Stale,
    /// The signature header is over its bounds ([`MAX_SIGNATURES`],
    /// [`MAX_SIGNATURE_HEADER_BYTES`]): refused before any MAC is computed.
    Oversized(&'static str),
    /// An event type the provider does not document. Not a refusal of the delivery: it is
    /// signed, so it is acknowledged (a 4xx would make the provider retry it, then disable
    /// the endpoint) and ignored.
    UnknownEvent,
}

impl Refusal {
    /// For metrics and logs.
    pub fn outcome(self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::BadSignature => "bad_signature",
            Refusal::Stale => "stale_timestamp",
            Refusal::Oversized(_) => "oversized_signature",
            Refusal::UnknownEvent => "unknown_event",
        }
    }
}

/// Refuses a delivery signed at `at` more than the tolerance away from `now`.
pub fn check_timestamp(at: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), Refusal> {
    if (now - at).num_seconds().abs() > TOLERANCE_SECONDS {
        return Err(Refusal::Stale);
    }
    Ok(())
}

/// A timestamp header in any of the forms providers use: Unix seconds, Unix milliseconds or
/// RFC 3339.
pub fn parse_timestamp(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(number) = raw.parse::<i64>() {
        // Milliseconds since 1970 pass 10^12 in 2001; seconds will not for 30,000 years.
        return if number.abs() >= 1_000_000_000_000 {
            Utc.timestamp_millis_opt(number).single()
        } else {
            Utc.timestamp_opt(number, 0).single()
        };
    }
    DateTime::parse_from_rfc3339(raw).ok().map(|at| at.with_timezone(&Utc))
}

/// A header's value as text, or the refusal naming it.
pub fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Refusal> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .ok_or(Refusal::Malformed(name))
}

/// The signatures in header `name` (split at any of `separators`, empty pieces skipped), or
/// the refusal when it is missing or over its bounds. Checked before any MAC is computed, so
/// what a delivery costs does not grow with what its header holds.
pub fn signatures<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    separators: &[char],
) -> Result<Vec<&'a str>, Refusal> {
    let value = header(headers, name)?;
    if value.len() > MAX_SIGNATURE_HEADER_BYTES {
        return Err(Refusal::Oversized(name));
    }
    let signatures: Vec<&str> = value.split(separators).map(str::trim).filter(|s| !s.is_empty()).collect();
    if signatures.len() > MAX_SIGNATURES {
        return Err(Refusal::Oversized(name));
    }
    Ok(signatures)
}
