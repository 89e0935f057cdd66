//! The gateway's own model of a checkout session and of what can go wrong fetching one.
//!
//! Every provider module maps its wire format into these types; nothing above the providers
//! knows a provider's JSON. The GraphQL layer derives its enums from here so that a status or
//! a reason is defined once.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

/// A payment provider the gateway can ask. Adding one means a variant here and a module in
/// `providers/`.
#[derive(async_graphql::Enum, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Provider {
    /// DHMAD, the escrow platform.
    Dhmad,
    /// Dodo Payments.
    Dodo,
}

impl Provider {
    /// The name people and logs use for the provider.
    pub fn label(self) -> &'static str {
        match self {
            Provider::Dhmad => "DHMAD",
            Provider::Dodo => "Dodo Payments",
        }
    }

    /// A short, stable, lower-case name for metrics labels and cache keys.
    pub fn slug(self) -> &'static str {
        match self {
            Provider::Dhmad => "dhmad",
            Provider::Dodo => "dodo",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The provider-independent state of a session (see PROVIDERS.md for the mapping).
#[derive(async_graphql::Enum, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckoutStatus {
    /// Waiting for the person to act.
    Open,
    /// The payment needs something from the customer or the merchant.
    ActionRequired,
    /// The payment is being processed.
    Processing,
    /// Done: the action was completed or the payment succeeded.
    Completed,
    /// The payment failed; the customer may retry within the same session.
    Failed,
    /// Cancelled.
    Cancelled,
    /// The session expired before completion.
    Expired,
    /// The provider answered with a value this gateway does not know yet (kept in `providerStatus`).
    Unknown,
}

/// One checkout session as the gateway reports it, whichever provider holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckoutSession {
    pub provider: Provider,
    /// Shared with the cache key. Strings below are boxed (no spare capacity, 8 bytes less
    /// each): the cache holds many sessions.
    pub id: Arc<str>,
    pub status: CheckoutStatus,
    /// The provider's own word for the status, so nothing is lost by normalising.
    pub provider_status: Option<Cow<'static, str>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub customer_email: Option<Box<str>>,
    pub customer_name: Option<Box<str>>,
    pub payment_id: Option<Box<str>>,
    /// Boxed: rare, and the cache holds many sessions.
    pub metadata: Option<Box<serde_json::Value>>,
    /// When the gateway heard this from the provider; a cached answer keeps its original time.
    pub fetched_at: DateTime<Utc>,
    pub details: SessionDetails,
}

/// Maps a provider's raw status through its table of documented values. A documented value is
/// kept as the table's static string (no allocation per cached session); a new one maps to
/// `UNKNOWN` and is kept as given.
pub fn normalise_status(
    raw: Box<str>,
    table: &[(&'static str, CheckoutStatus)],
) -> (CheckoutStatus, Cow<'static, str>) {
    match table.iter().find(|(known, _)| **known == *raw) {
        Some((known, status)) => (*status, Cow::Borrowed(*known)),
        None => (CheckoutStatus::Unknown, Cow::Owned(raw.into_string())),
    }
}

/// What only one provider knows about a session, beyond the common fields. Anything derivable
/// from the common fields (Dodo's payment id and status, DHMAD's target email) is not stored
/// twice: a cache holds many of these.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionDetails {
    Dhmad {
        /// The escrow this session belongs to.
        escrow_id: Option<Box<str>>,
        /// DHMAD's word for the action the person was asked to take.
        action: Option<Box<str>>,
    },
    Dodo,
}

/// The action a DHMAD session asks the person to take.
#[derive(async_graphql::Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhmadAction {
    SignContract,
    AcceptPay,
    Complete,
    Dispute,
    RequestCancellation,
    RejectCancellation,
    AcceptCancellation,
    CancelEscrow,
    SubmitProof,
    ReviewProof,
    /// A value this gateway does not know yet (see `rawAction`).
    Unknown,
}

impl DhmadAction {
    pub fn from_wire(raw: &str) -> Self {
        match raw {
            "sign_contract" => Self::SignContract,
            "accept_pay" => Self::AcceptPay,
            "complete" => Self::Complete,
            "dispute" => Self::Dispute,
            "request_cancellation" => Self::RequestCancellation,
            "reject_cancellation" => Self::RejectCancellation,
            "accept_cancellation" => Self::AcceptCancellation,
            "cancel_escrow" => Self::CancelEscrow,
            "submit_proof" => Self::SubmitProof,
            "review_proof" => Self::ReviewProof,
            _ => Self::Unknown,
        }
    }
}

/// Dodo's `IntentStatus`, plus `UNKNOWN` for values added after this gateway was built.
#[derive(async_graphql::Enum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DodoPaymentStatus {
    Succeeded,
    Failed,
    Cancelled,
    Processing,
    RequiresCustomerAction,
    RequiresMerchantAction,
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresCapture,
    PartiallyCaptured,
    PartiallyCapturedAndCapturable,
    Unknown,
}

impl DodoPaymentStatus {
    pub fn from_wire(raw: &str) -> Self {
        match raw {
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "processing" => Self::Processing,
            "requires_customer_action" => Self::RequiresCustomerAction,
            "requires_merchant_action" => Self::RequiresMerchantAction,
            "requires_payment_method" => Self::RequiresPaymentMethod,
            "requires_confirmation" => Self::RequiresConfirmation,
            "requires_capture" => Self::RequiresCapture,
            "partially_captured" => Self::PartiallyCaptured,
            "partially_captured_and_capturable" => Self::PartiallyCapturedAndCapturable,
            _ => Self::Unknown,
        }
    }
}

/// The stable codes a client switches on. They appear as the `code` of an error in the result
/// union and as `extensions.code` where a GraphQL error is the only way out.
#[derive(async_graphql::Enum, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    NotFound,
    InvalidId,
    ProviderUnavailable,
}

/// Why a provider could not give an answer.
#[derive(async_graphql::Enum, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnavailableReason {
    /// The gateway has no credentials for this provider.
    NotConfigured,
    /// The provider said 429.
    RateLimited,
    /// The provider answered 5xx or a status the gateway does not expect.
    UpstreamError,
    /// The provider did not answer within the upstream timeout.
    Timeout,
    /// The provider could not be reached (DNS, connect, TLS, connection reset).
    ConnectionFailed,
    /// The provider answered 200 with a body that is not a session.
    InvalidResponse,
}

/// Everything that can stop the gateway from answering with a session. Messages are the
/// gateway's own words: never a credential, an upstream URL or an upstream body.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FetchError {
    #[error("the provider rejected the gateway's credentials")]
    Unauthorized,
    #[error("the gateway's account may not read this checkout session")]
    Forbidden,
    #[error("no checkout session with this id")]
    NotFound,
    #[error("invalid checkout session id: {0}")]
    InvalidId(&'static str),
    #[error("{}", unavailable_message(*reason, *upstream_status, *retry_after_seconds))]
    Unavailable {
        reason: UnavailableReason,
        /// The HTTP status the provider answered with, when it answered.
        upstream_status: Option<u16>,
        /// How long the provider asked us to wait, when it said.
        retry_after_seconds: Option<u64>,
    },
}

fn unavailable_message(reason: UnavailableReason, status: Option<u16>, wait: Option<u64>) -> String {
    let what = match reason {
        UnavailableReason::NotConfigured => "the gateway has no credentials for this provider",
        UnavailableReason::RateLimited => "the provider is rate limiting the gateway",
        UnavailableReason::UpstreamError => "the provider answered with an error",
        UnavailableReason::Timeout => "the provider did not answer in time",
        UnavailableReason::ConnectionFailed => "the provider could not be reached",
        UnavailableReason::InvalidResponse => "the provider's answer could not be understood",
    };
    let mut message = what.to_owned();
    if let Some(status) = status {
        message.push_str(&format!(" (HTTP {status})"));
    }
    if let Some(wait) = wait {
        message.push_str(&format!("; retry after {wait} s"));
    }
    message
}

impl FetchError {
    pub fn unavailable(reason: UnavailableReason) -> Self {
        FetchError::Unavailable { reason, upstream_status: None, retry_after_seconds: None }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            FetchError::Unauthorized => ErrorCode::Unauthorized,
            FetchError::Forbidden => ErrorCode::Forbidden,
            FetchError::NotFound => ErrorCode::NotFound,
            FetchError::InvalidId(_) => ErrorCode::InvalidId,
            FetchError::Unavailable { .. } => ErrorCode::ProviderUnavailable,
        }
    }
}

/// What a lookup yields: a shared, immutable session (cache hits hand out the same `Arc`).
pub type FetchResult = Result<Arc<CheckoutSession>, FetchError>;
