//! `POST /webhooks/{provider}`: provider webhooks in. A delivery is verified with the secret
//! of each of the provider's accounts that has one, read by the provider's module, routed to
//! the account it belongs to (the secret that signs it, and the provider's account id where
//! the event carries one), de-duplicated by its id (and by its body where only the body is
//! signed), answered at once, and acted on after the answer: the sessions it names are
//! fetched again through the same guarded path as a query (quota, breaker), their cache
//! entries replaced and their subscribers told.
//!
//! Owns: the route's answers and outcomes (each counted and logged, never the body; a refusal
//! in the one shape of `refusal`, with a `WEBHOOK_…` code), and the ids (and body digests) of
//! deliveries already processed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::http::refusal::{refuse, Code};
use crate::http::{read_body, AppState};
use crate::providers::webhook::{
    Refusal, WebhookEvent, MAX_SIGNATURES, MAX_SIGNATURE_HEADER_BYTES, TOLERANCE_SECONDS,
};
use crate::providers::{Account, ProviderKind};
use crate::sessions::SessionService;
use crate::telemetry::metrics::Metrics;

/// The most a delivery may hold: Dodo's payment events are a few kilobytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a delivery's id is remembered: providers redeliver for about a day (Dodo: 8
/// attempts over about 28 hours), so twice that.
const SEEN_FOR: Duration = Duration::from_secs(48 * 3600);
/// Delivery ids remembered at most (about 100 bytes each).
const SEEN_MAX: u64 = 1_000_000;
/// How long the digest of a body taken is remembered, for a provider that signs only the body
/// (DHMAD): the replay window. A delivery sent again later verifies again (its timestamp is not
/// signed), and costs what one delivery costs: one refetch of each session it names.
const BODY_SEEN_FOR: Duration = Duration::from_secs(TOLERANCE_SECONDS.unsigned_abs());
/// Body digests remembered at most (about 100 bytes each).
const BODY_SEEN_MAX: u64 = 100_000;

#[derive(Debug)]
pub struct Webhooks {
    service: Arc<SessionService>,
    kinds: Vec<&'static ProviderKind>,
    /// (provider, delivery id) of deliveries already taken.
    seen: moka::sync::Cache<(&'static str, Box<str>), ()>,
    /// (provider, SHA-256 of the body) of deliveries taken within the replay window, for
    /// providers whose signature covers only the body.
    bodies: moka::sync::Cache<(&'static str, [u8; 32]), ()>,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    pub fn new(service: Arc<SessionService>, kinds: &[&'static ProviderKind], metrics: Arc<Metrics>) -> Self {
        let seen = moka::sync::Cache::builder().max_capacity(SEEN_MAX).time_to_live(SEEN_FOR).build();
        let bodies =
            moka::sync::Cache::builder().max_capacity(BODY_SEEN_MAX).time_to_live(BODY_SEEN_FOR).build();
        Self { service, kinds: kinds.to_vec(), seen, bodies, metrics }
    }

    fn accounts_of(&self, kind: &ProviderKind) -> Vec<&Arc<Account>> {
        self.service
            .accounts()
            .filter(|account| std::ptr::eq(account.kind(), kind) && account.has_webhooks())
            .collect()
    }

    /// Answers one delivery for the provider whose slug is `slug`.
    pub async fn receive(&self, slug: &str, headers: &HeaderMap, body: &Bytes) -> Response {
        let Some(kind) = self.kinds.iter().copied().find(|kind| kind.slug == slug) else {
            return not_configured();
        };
        let (Some(spec), accounts) = (kind.webhooks, self.accounts_of(kind)) else { return not_configured() };
        if accounts.is_empty() {
            return not_configured();
        }
        let mut refusal = Refusal::BadSignature;
        let mut signed_by = Vec::new();
        for account in accounts {
            let Some(secret) = &account.config.webhook_secret else { continue };
            match (spec.verify)(secret, headers, body) {
                Ok(()) => signed_by.push(account),
                // Any reason but the signature says more (a header missing, the clock).
                Err(other) if other != Refusal::BadSignature => refusal = other,
                Err(_) => {}
            }
        }
        if signed_by.is_empty() {
            return self.refuse(kind, refusal);
        }
        let event = match (spec.parse)(headers, body) {
            Ok(event) => event,
            Err(refusal) => return self.refuse(kind, refusal),
        };
        let accounts: Vec<Arc<Account>> = signed_by
            .into_iter()
            .filter(|account| match (&account.config.business_id, &event.business_id) {
                (Some(ours), Some(theirs)) => ours == theirs,
                _ => true,
            })
            .cloned()
            .collect();
        if accounts.is_empty() {
            tracing::warn!(
                provider = kind.slug,
                delivery = %event.id,
                event = %event.kind,
                "a signed delivery names a business_id no account has: set `business_id` on the account"
            );
            return self.refused(
                kind,
                "unknown_account",
                Code::WebhookUnknownAccount,
                "no account has this business_id",
            );
        }
        let first = self.seen.entry((kind.slug, Box::from(event.id.as_str()))).or_insert(()).is_fresh();
        if !first {
            return self.answer(kind, "duplicate", "already processed");
        }
        if !spec.signs_id_and_time {
            // The same signed body under a new id and timestamp: a replay (or the provider
            // sending one event twice), acknowledged like a redelivery and not acted on.
            let digest: [u8; 32] = Sha256::digest(body).into();
            if !self.bodies.entry((kind.slug, digest)).or_insert(()).is_fresh() {
                self.log(kind, &event, &accounts, "duplicate_body");
                return self.answer(kind, "duplicate_body", "already processed");
            }
        }
        if event.targets.is_empty() {
            self.log(kind, &event, &accounts, "ignored");
            return self.answer(kind, "ignored", "nothing to do for this event");
        }
        self.log(kind, &event, &accounts, "accepted");
        // Before the answer, the old state stops being served, replayed answers included
        // (cheap: no provider call)…
        let mut work = Vec::new();
        for account in accounts {
            let ids = self.service.invalidate_targets(&account, &event.targets).await;
            if !ids.is_empty() {
                work.push((account, ids));
            }
        }
        // …and after it (in tasks of their own), the new state is fetched: a slow provider must
        // not make the delivery time out.
        for (account, ids) in &work {
            self.service.refresh(account, ids);
        }
        self.answer(kind, "accepted", "accepted")
    }

    fn log(&self, kind: &ProviderKind, event: &WebhookEvent, accounts: &[Arc<Account>], outcome: &str) {
        // Ids and the event type only: the body holds customers' personal data.
        let names: Vec<&str> = accounts.iter().map(|account| &**account.name()).collect();
        tracing::info!(
            provider = kind.slug,
            delivery = %event.id,
            event = %event.kind,
            accounts = ?names,
            targets = event.targets.len(),
            outcome,
            "webhook"
        );
    }

    fn refuse(&self, kind: &ProviderKind, refusal: Refusal) -> Response {
        let (code, message) = match refusal {
            Refusal::Malformed(what) => (Code::WebhookMalformed, format!("missing or unreadable: {what}")),
            Refusal::BadSignature => {
                (Code::WebhookBadSignature, "no configured webhook secret signs this delivery".to_owned())
            }
            Refusal::Stale => (
                Code::WebhookStaleTimestamp,
                "the delivery's timestamp is more than 5 minutes from now".to_owned(),
            ),
            Refusal::Oversized(what) => (
                Code::WebhookOversizedSignature,
                format!(
                    "{what} holds more than {MAX_SIGNATURES} signatures or {MAX_SIGNATURE_HEADER_BYTES} bytes"
                ),
            ),
            // Signed: acknowledged, so that the provider neither retries it nor disables the
            // endpoint, and left alone.
            Refusal::UnknownEvent => {
                tracing::info!(provider = kind.slug, outcome = refusal.outcome(), "webhook ignored");
                return self.answer(kind, refusal.outcome(), "not an event type handled here; ignored");
            }
        };
        tracing::info!(provider = kind.slug, outcome = refusal.outcome(), "webhook refused");
        self.refused(kind, refusal.outcome(), code, &message)
    }

    /// A delivery taken (or acknowledged and left alone): 200, `{"status": …}`.
    fn answer(&self, kind: &ProviderKind, outcome: &str, message: &str) -> Response {
        self.metrics.webhooks.with_label_values(&[kind.slug, outcome]).inc();
        (StatusCode::OK, Json(json!({"status": message}))).into_response()
    }

    /// A delivery refused: counted under `outcome`, answered as every refusal is. Providers
    /// read only the status (a 4xx is not retried as a 5xx would be).
    fn refused(&self, kind: &ProviderKind, outcome: &str, code: Code, message: &str) -> Response {
        self.metrics.webhooks.with_label_values(&[kind.slug, outcome]).inc();
        refuse(code, message)
    }
}

/// The same answer as any unknown route: without a secret nothing is accepted.
fn not_configured() -> Response {
    refuse(Code::NotFound, "no webhook secret is configured for this provider")
}

/// `POST /webhooks/{provider}`: the body is bounded on its own, far below a GraphQL request's.
pub(super) async fn deliver(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let too_large = || format!("a webhook delivery holds at most {MAX_BODY_BYTES} bytes");
    match read_body(body, MAX_BODY_BYTES, too_large).await {
        Ok(bytes) => state.webhooks.receive(&provider, &parts.headers, &bytes).await,
        Err(refused) => refused,
    }
}
