//! DHMAD (escrow platform): `GET {base}/sessions/{uuid}` with a Bearer key.
//! Wire format and error bodies: PROVIDERS.md.
//!
//! Owns everything about DHMAD: the client and its wire types (here), the details type
//! (`details`), the sandbox (`sandbox`), and [`KIND`], which the registry lists.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::sandbox::SandboxSpec;
use super::upstream::Upstream;
use super::{CredentialStatus, ProviderKind, SessionProvider};
use crate::domain::{normalise_status, CheckoutSession, CheckoutStatus, FetchError, FetchResult};

pub mod details;
pub mod sandbox;
pub mod webhook;

use details::{DhmadDetails, DhmadSessionDetails};

pub static KIND: ProviderKind = ProviderKind {
    name: "DHMAD",
    slug: "dhmad",
    label: "DHMAD",
    description: "DHMAD, the escrow platform. Session ids are UUIDs; `providerStatus` is its `status`; \
                  `customerEmail` is the email of the user asked to act; it gives `expiresAt`, \
                  `completedAt` and `metadata`.",
    environments: &[("live", "https://dhmad.tn/api/v1"), ("sandbox", "https://sandbox.dhmad.tn/api/v1")],
    key_var: "DHMAD_API_KEY",
    base_url_var: "DHMAD_BASE_URL",
    // Per IP by default: replicas behind one egress address share it (see the README).
    rate_limit: "100/min",
    retry_after_in_body: Some(body_retry_after),
    client: |upstream| Arc::new(DhmadClient { upstream }),
    details: |session| Box::new(DhmadSessionDetails(session)),
    register_details: <DhmadSessionDetails as async_graphql::OutputType>::create_type_info,
    sandbox: SandboxSpec { router: sandbox::router, base_path: "/api/v1", sends_webhooks: false },
    webhooks: Some(&webhook::WEBHOOKS),
    details_from_json: details::DhmadDetails::from_json,
};

#[derive(Debug)]
pub struct DhmadClient {
    upstream: Upstream,
}

#[async_trait]
impl SessionProvider for DhmadClient {
    /// DHMAD session ids are UUIDs; any spelling `uuid` accepts (upper case, no hyphens,
    /// braces, `urn:uuid:`) becomes the lower-case hyphenated form DHMAD issues.
    fn canonical_id(&self, id: &str) -> Result<Arc<str>, FetchError> {
        let uuid = uuid::Uuid::try_parse(id.trim())
            .map_err(|_| FetchError::InvalidId("a DHMAD session id is a UUID"))?;
        let canonical = uuid.hyphenated().to_string();
        Ok(if canonical == id { Arc::from(id) } else { Arc::from(canonical) })
    }

    async fn fetch_session(&self, id: &Arc<str>) -> FetchResult {
        let response = self.upstream.get(&["sessions", id]).await?;
        if response.status != 200 {
            return Err(self.upstream.error_for(&response));
        }
        let envelope: Envelope =
            serde_json::from_slice(&response.body).map_err(|e| self.upstream.invalid_body(&e))?;
        Ok(Arc::new(envelope.session.into_domain(id, self.upstream.account())))
    }

    /// `GET /me` needs no account association, so it checks just the key.
    async fn check_credentials(&self) -> CredentialStatus {
        self.upstream.probe(&["me"]).await
    }
}

#[derive(Deserialize)]
struct Envelope {
    session: WireSession,
}

/// Only `status` and `createdAt` are needed to describe a session; everything else may be
/// absent or null without failing the parse.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSession {
    status: Box<str>,
    created_at: DateTime<Utc>,
    #[serde(default)]
    escrow_id: Option<Box<str>>,
    #[serde(default)]
    action: Option<Box<str>>,
    #[serde(default)]
    target_user_email: Option<Box<str>>,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    completed_at: Option<DateTime<Utc>>,
}

impl WireSession {
    fn into_domain(self, id: &Arc<str>, account: &Arc<str>) -> CheckoutSession {
        let (status, provider_status) = normalise_status(self.status, STATUSES);
        let details = DhmadDetails { escrow_id: self.escrow_id, action: self.action };
        CheckoutSession {
            provider: KIND.name,
            account: account.clone(),
            id: id.clone(),
            status,
            provider_status: Some(provider_status),
            created_at: self.created_at,
            expires_at: self.expires_at,
            completed_at: self.completed_at,
            // The person DHMAD asked to act is the closest thing it has to a customer.
            customer_email: self.target_user_email,
            customer_name: None,
            payment_id: None,
            metadata: self.metadata.filter(|m| !m.is_null()).map(Box::new),
            fetched_at: Utc::now(),
            details: Some(Box::new(details)),
        }
    }
}

/// DHMAD's documented statuses and what they mean (PROVIDERS.md).
const STATUSES: &[(&str, CheckoutStatus)] = &[
    ("pending", CheckoutStatus::Open),
    ("completed", CheckoutStatus::Completed),
    ("expired", CheckoutStatus::Expired),
    ("cancelled", CheckoutStatus::Cancelled),
];

/// DHMAD's error bodies come in several shapes (`{"error": "..."}`, `{"error": "...",
/// "message": "..."}`, `{"error": {"code": ...}}`); only `retryAfter` on a 429 matters to the
/// gateway, and any shape, or no JSON at all, must be accepted.
fn body_retry_after(body: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct ErrorBody {
        #[serde(default, rename = "retryAfter")]
        retry_after: Option<serde_json::Value>,
    }
    let body: ErrorBody = serde_json::from_slice(body).ok()?;
    match body.retry_after? {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f.max(0.0).ceil() as u64)),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}
