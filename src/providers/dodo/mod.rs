//! Dodo Payments: `GET {base}/checkouts/{id}` with a Bearer key.
//! Wire format (OpenAPI `GetCheckoutSessionsStatus`) and errors: PROVIDERS.md.
//!
//! Owns everything about Dodo: the client and its wire types (here), the details type
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

use details::DodoSessionDetails;

pub static KIND: ProviderKind = ProviderKind {
    name: "DODO",
    slug: "dodo",
    label: "Dodo Payments",
    description: "Dodo Payments. Session ids are `cks_…`; `providerStatus` is its `payment_status`; \
                  `customerEmail` is the customer's; `paymentId` is its `pay_…`; it gives no \
                  `expiresAt`, `completedAt` or `metadata`.",
    // Test and live mode are separate deployments with separate keys and sessions.
    environments: &[("live", "https://live.dodopayments.com"), ("test", "https://test.dodopayments.com")],
    key_var: "DODO_PAYMENTS_API_KEY",
    base_url_var: "DODO_PAYMENTS_BASE_URL",
    // The default tier, per key.
    rate_limit: "40/s,240/min",
    // Dodo's error body says nothing about waiting; its headers do.
    retry_after_in_body: None,
    client: |upstream| Arc::new(DodoClient { upstream }),
    details: |session| Box::new(DodoSessionDetails(session)),
    register_details: <DodoSessionDetails as async_graphql::OutputType>::create_type_info,
    sandbox: SandboxSpec { router: sandbox::router, base_path: "", sends_webhooks: true },
    webhooks: Some(&webhook::WEBHOOKS),
    details_from_json: |_| None,
};

/// Far longer than any id Dodo issues (`cks_` and a short token); a bound keeps junk out of
/// logs and the cache.
const MAX_ID_LEN: usize = 128;

#[derive(Debug)]
pub struct DodoClient {
    upstream: Upstream,
}

#[async_trait]
impl SessionProvider for DodoClient {
    fn canonical_id(&self, id: &str) -> Result<Arc<str>, FetchError> {
        validate_id(id)?;
        Ok(Arc::from(id))
    }

    async fn fetch_session(&self, id: &Arc<str>) -> FetchResult {
        let response = self.upstream.get(&["checkouts", id]).await?;
        if response.status != 200 {
            // Dodo's error body (`{"code", "message"}`) adds nothing the status does not say;
            // the wait comes from headers.
            return Err(self.upstream.error_for(&response));
        }
        let wire: WireSession =
            serde_json::from_slice(&response.body).map_err(|e| self.upstream.invalid_body(&e))?;
        Ok(Arc::new(wire.into_domain(id, self.upstream.account())))
    }

    /// Dodo documents no identity call that a read-only key may make.
    async fn check_credentials(&self) -> CredentialStatus {
        self.upstream.unprobed()
    }
}

/// Dodo does not document its id format beyond `cks_…`, so only what can never be an id, or
/// could change which endpoint is called, is refused.
fn validate_id(id: &str) -> Result<(), FetchError> {
    if id.is_empty() {
        return Err(FetchError::InvalidId("the id is empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(FetchError::InvalidId("the id is longer than 128 bytes"));
    }
    if id == "." || id == ".." {
        return Err(FetchError::InvalidId("the id is a path segment"));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '\\' | '?' | '#' | '%')) {
        return Err(FetchError::InvalidId(
            "the id contains whitespace, a control character or one of / \\ ? # %",
        ));
    }
    Ok(())
}

/// Only `id` and `created_at` are required by Dodo's schema; the rest may be null or absent.
#[derive(Deserialize)]
struct WireSession {
    created_at: DateTime<Utc>,
    #[serde(default)]
    customer_email: Option<Box<str>>,
    #[serde(default)]
    customer_name: Option<Box<str>>,
    #[serde(default)]
    payment_id: Option<Box<str>>,
    #[serde(default)]
    payment_status: Option<Box<str>>,
}

impl WireSession {
    fn into_domain(self, id: &Arc<str>, account: &Arc<str>) -> CheckoutSession {
        let (status, provider_status) = match self.payment_status {
            Some(raw) => {
                let (status, kept) = normalise_status(raw, PAYMENT_STATUSES);
                (status, Some(kept))
            }
            None => (CheckoutStatus::Open, None),
        };
        CheckoutSession {
            provider: KIND.name,
            account: account.clone(),
            id: id.clone(),
            status,
            created_at: self.created_at,
            // The GET response carries no expiry and the lifetime depends on how the session
            // was created, so none is guessed.
            expires_at: None,
            completed_at: None,
            customer_email: self.customer_email,
            customer_name: self.customer_name,
            payment_id: self.payment_id,
            metadata: None,
            fetched_at: Utc::now(),
            // Dodo's own fields (payment id and status) are common fields already.
            details: None,
            provider_status,
        }
    }
}

/// Dodo's documented `payment_status` values and what they mean (PROVIDERS.md); null means
/// the customer has not reached payment yet (`OPEN`). The one list of them: the schema's
/// `DodoPaymentStatus` and the sandbox's fixtures are read from it.
const PAYMENT_STATUSES: &[(&str, CheckoutStatus)] = &[
    ("requires_customer_action", CheckoutStatus::ActionRequired),
    ("requires_merchant_action", CheckoutStatus::ActionRequired),
    ("requires_payment_method", CheckoutStatus::ActionRequired),
    ("requires_confirmation", CheckoutStatus::ActionRequired),
    ("requires_capture", CheckoutStatus::ActionRequired),
    ("processing", CheckoutStatus::Processing),
    ("partially_captured_and_capturable", CheckoutStatus::Processing),
    ("succeeded", CheckoutStatus::Completed),
    ("partially_captured", CheckoutStatus::Completed),
    ("failed", CheckoutStatus::Failed),
    ("cancelled", CheckoutStatus::Cancelled),
];
