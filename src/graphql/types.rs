//! The GraphQL face of the domain types. Sessions are shared behind `Arc` (a cache hit hands
//! out the stored session), so these are thin views, not copies.

use std::sync::Arc;

use async_graphql::resolver_utils::enum_value;
use async_graphql::{ErrorExtensions, InputObject, Interface, Json, Object, Union, ID};
use chrono::{DateTime, Utc};

use crate::domain::{
    CheckoutSession, CheckoutStatus, DhmadAction, DodoPaymentStatus, ErrorCode, FetchError, FetchResult,
    Provider, SessionDetails, UnavailableReason,
};

/// A checkout session, whichever provider holds it.
#[derive(Debug)]
pub struct CheckoutSessionView(pub Arc<CheckoutSession>);

/// A checkout session, whichever provider holds it. Its key in the federated graph is
/// `provider id`.
#[Object(name = "CheckoutSession")]
impl CheckoutSessionView {
    async fn provider(&self) -> Provider {
        self.0.provider
    }

    /// The provider's id for the session (DHMAD: a UUID; Dodo: `cks_…`).
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    /// The normalised status, the same vocabulary for every provider.
    async fn status(&self) -> CheckoutStatus {
        self.0.status
    }

    /// The provider's own word for the status (DHMAD `status`, Dodo `payment_status`).
    async fn provider_status(&self) -> Option<&str> {
        self.0.provider_status.as_deref()
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// When the session stops accepting the person's action (DHMAD only: Dodo does not say).
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at
    }

    /// When the session was completed (DHMAD only).
    async fn completed_at(&self) -> Option<DateTime<Utc>> {
        self.0.completed_at
    }

    /// Dodo: the customer's email. DHMAD: the email of the user asked to act.
    async fn customer_email(&self) -> Option<&str> {
        self.0.customer_email.as_deref()
    }

    async fn customer_name(&self) -> Option<&str> {
        self.0.customer_name.as_deref()
    }

    /// The payment the session created (Dodo `pay_…`), once there is one.
    async fn payment_id(&self) -> Option<&str> {
        self.0.payment_id.as_deref()
    }

    /// Key-value pairs given when the session was created (DHMAD).
    async fn metadata(&self) -> Option<Json<&serde_json::Value>> {
        self.0.metadata.as_deref().map(Json)
    }

    /// When the gateway last heard this from the provider (older than now on a cache hit).
    async fn fetched_at(&self) -> DateTime<Utc> {
        self.0.fetched_at
    }

    /// What only this session's provider knows.
    async fn details(&self) -> ProviderDetails {
        match self.0.details {
            SessionDetails::Dhmad { .. } => ProviderDetails::Dhmad(DhmadSessionDetails(self.0.clone())),
            SessionDetails::Dodo => ProviderDetails::Dodo(DodoSessionDetails(self.0.clone())),
        }
    }
}

/// Provider-specific fields of a session.
#[derive(Union)]
pub enum ProviderDetails {
    Dhmad(DhmadSessionDetails),
    Dodo(DodoSessionDetails),
}

/// What DHMAD says about a session beyond the common fields.
pub struct DhmadSessionDetails(Arc<CheckoutSession>);

/// What DHMAD says about a session beyond the common fields.
#[Object]
impl DhmadSessionDetails {
    /// The escrow this session belongs to.
    async fn escrow_id(&self) -> Option<&str> {
        match &self.0.details {
            SessionDetails::Dhmad { escrow_id, .. } => escrow_id.as_deref(),
            SessionDetails::Dodo => None,
        }
    }

    /// What the person was asked to do.
    async fn action(&self) -> DhmadAction {
        self.raw().map_or(DhmadAction::Unknown, DhmadAction::from_wire)
    }

    /// DHMAD's own word for the action (useful when `action` is `UNKNOWN`).
    async fn raw_action(&self) -> Option<&str> {
        self.raw()
    }

    /// Email of the user who was meant to act.
    async fn target_user_email(&self) -> Option<&str> {
        self.0.customer_email.as_deref()
    }
}

impl DhmadSessionDetails {
    fn raw(&self) -> Option<&str> {
        match &self.0.details {
            SessionDetails::Dhmad { action, .. } => action.as_deref(),
            SessionDetails::Dodo => None,
        }
    }
}

/// What Dodo Payments says about a session beyond the common fields.
pub struct DodoSessionDetails(Arc<CheckoutSession>);

/// What Dodo Payments says about a session beyond the common fields.
#[Object]
impl DodoSessionDetails {
    /// The payment created by the session; null while the customer is still entering details.
    async fn payment_id(&self) -> Option<&str> {
        self.0.payment_id.as_deref()
    }

    /// The payment's status; null while there is no payment. `UNKNOWN` keeps new values (the
    /// raw value is in `CheckoutSession.providerStatus`).
    async fn payment_status(&self) -> Option<DodoPaymentStatus> {
        self.0.provider_status.as_deref().map(DodoPaymentStatus::from_wire)
    }
}

/// One session to look up in a batch.
#[derive(InputObject, Clone, Debug)]
pub struct CheckoutSessionRef {
    pub provider: Provider,
    pub id: ID,
}

/// A failure answer, the same shape for every error type.
#[derive(Clone, Debug)]
pub struct Failure {
    provider: Provider,
    error: FetchError,
}

macro_rules! error_type {
    ($name:ident, $doc:literal $(, $extra:item)*) => {
        #[doc = $doc]
        #[derive(Debug)]
        pub struct $name(Failure);

        #[doc = $doc]
        #[Object]
        impl $name {
            /// The stable code to switch on.
            async fn code(&self) -> ErrorCode {
                self.0.error.code()
            }
            /// For people; never parse it.
            async fn message(&self) -> String {
                self.0.error.to_string()
            }
            async fn provider(&self) -> Provider {
                self.0.provider
            }
            $($extra)*
        }
    };
}

error_type!(UnauthorizedError, "The provider rejected the gateway's credentials (HTTP 401).");
error_type!(ForbiddenError, "The gateway's account may not read this session (HTTP 403).");
error_type!(
    NotFoundError,
    "The provider has no such session for the gateway's account and environment (HTTP 404)."
);
error_type!(
    InvalidIdError,
    "The id cannot be valid for this provider (checked before any call), or the provider said so (HTTP 422)."
);
error_type!(
    ProviderUnavailableError,
    "The provider could not answer now: rate limited, failing, slow, unreachable, misbehaving, or not configured.",
    /// Why the provider could not answer.
    async fn reason(&self) -> UnavailableReason {
        match &self.0.error {
            FetchError::Unavailable { reason, .. } => *reason,
            _ => UnavailableReason::UpstreamError,
        }
    },
    /// How long the provider asked us to wait before asking again, when it said.
    async fn retry_after_seconds(&self) -> Option<u64> {
        match &self.0.error {
            FetchError::Unavailable { retry_after_seconds, .. } => *retry_after_seconds,
            _ => None,
        }
    },
    /// The HTTP status the provider answered with, when it answered.
    async fn upstream_status(&self) -> Option<u16> {
        match &self.0.error {
            FetchError::Unavailable { upstream_status, .. } => *upstream_status,
            _ => None,
        }
    }
);

/// What every error answer has.
#[derive(Interface, Debug)]
#[graphql(
    field(name = "code", ty = "ErrorCode", desc = "The stable code to switch on."),
    field(name = "message", ty = "String", desc = "For people; never parse it."),
    field(name = "provider", ty = "Provider")
)]
pub enum CheckoutError {
    Unauthorized(UnauthorizedError),
    Forbidden(ForbiddenError),
    NotFound(NotFoundError),
    InvalidId(InvalidIdError),
    ProviderUnavailable(ProviderUnavailableError),
}

/// A session, or the reason there is none. Switch on `__typename`.
#[derive(Union, Debug)]
pub enum CheckoutSessionResult {
    CheckoutSession(CheckoutSessionView),
    UnauthorizedError(UnauthorizedError),
    ForbiddenError(ForbiddenError),
    NotFoundError(NotFoundError),
    InvalidIdError(InvalidIdError),
    ProviderUnavailableError(ProviderUnavailableError),
}

impl CheckoutSessionResult {
    /// The one place an answer becomes a union member.
    pub fn from_answer(provider: Provider, answer: FetchResult) -> Self {
        match answer {
            Ok(session) => Self::CheckoutSession(CheckoutSessionView(session)),
            Err(error) => {
                let failure = Failure { provider, error };
                match failure.error.code() {
                    ErrorCode::Unauthorized => Self::UnauthorizedError(UnauthorizedError(failure)),
                    ErrorCode::Forbidden => Self::ForbiddenError(ForbiddenError(failure)),
                    ErrorCode::NotFound => Self::NotFoundError(NotFoundError(failure)),
                    ErrorCode::InvalidId => Self::InvalidIdError(InvalidIdError(failure)),
                    ErrorCode::ProviderUnavailable => {
                        Self::ProviderUnavailableError(ProviderUnavailableError(failure))
                    }
                }
            }
        }
    }
}

/// The same failure as a GraphQL error, where an error is the only way out (federation
/// `_entities`): `extensions.code` carries the code, `extensions.provider` the provider.
pub fn to_graphql_error(provider: Provider, error: &FetchError) -> async_graphql::Error {
    async_graphql::Error::new(error.to_string()).extend_with(|_, ext| {
        ext.set("code", enum_value(error.code()));
        ext.set("provider", enum_value(provider));
        if let FetchError::Unavailable { reason, retry_after_seconds, .. } = error {
            ext.set("reason", enum_value(*reason));
            if let Some(seconds) = retry_after_seconds {
                ext.set("retryAfterSeconds", *seconds);
            }
        }
    })
}
