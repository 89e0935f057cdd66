//! The GraphQL face of the domain types. Sessions are shared behind `Arc` (a cache hit hands
//! out the stored session), so these are thin views, not copies.
//!
//! Owns: the schema's object, error and union types and the mirrors of the domain enums.

use std::sync::Arc;

use async_graphql::resolver_utils::enum_value;
use async_graphql::{Context, Enum, ErrorExtensions, InputObject, Interface, Json, Object, Union, ID};

use super::timestamp::Timestamp;
use crate::cache::Lookup;
use crate::domain::{self, CheckoutSession, FetchError};
use crate::providers::schema::{ProviderDetails, ProviderName};

/// The provider-independent state of a session (see PROVIDERS.md for the mapping).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::CheckoutStatus")]
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

/// The stable codes a client switches on. They appear as the `code` of an error in the result
/// union and as `extensions.code` where a GraphQL error is the only way out.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::ErrorCode")]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    NotFound,
    InvalidId,
    ProviderUnavailable,
    /// The request named an account that is not configured for the provider.
    UnknownAccount,
    /// The client's rights do not include the account (the gateway's own decision, not the
    /// provider's `FORBIDDEN`).
    AccessDenied,
}

/// Why a provider could not give an answer.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(remote = "domain::UnavailableReason")]
pub enum UnavailableReason {
    /// The gateway has no credentials for this provider.
    NotConfigured,
    /// The provider said 429, or the gateway is holding its calls for the provider's quota;
    /// or this client's own budget of lookups that reach a provider is spent
    /// (GATEWAY_CLIENT_RATE_LIMIT; the message says which). Either way: wait
    /// `retryAfterSeconds`; cached answers are still served.
    RateLimited,
    /// The provider answered 5xx or a status the gateway does not expect.
    UpstreamError,
    /// The provider did not answer within the upstream timeout.
    Timeout,
    /// The provider could not be reached (DNS, connect, TLS, connection reset).
    ConnectionFailed,
    /// The provider answered 200 with a body that is not a session.
    InvalidResponse,
    /// The provider has been failing (timeouts, connection errors, 5xx): the gateway is not
    /// calling it until `retryAfterSeconds` have passed, then tries one call.
    CircuitOpen,
}

/// A checkout session, whichever provider holds it.
#[derive(Debug)]
pub struct CheckoutSessionView(pub Arc<CheckoutSession>, pub bool);

/// A checkout session, whichever provider holds it. Its key in the federated graph is
/// `provider id`.
#[Object(name = "CheckoutSession")]
impl CheckoutSessionView {
    async fn provider(&self) -> ProviderName {
        ProviderName::new(self.0.provider)
    }

    /// The configured account that answered: the one the request named, or the provider's
    /// default account.
    async fn account(&self) -> &str {
        &self.0.account
    }

    /// The provider's id for the session (its form is in the `Provider` value's description).
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    /// The normalised status, the same vocabulary for every provider.
    async fn status(&self) -> CheckoutStatus {
        self.0.status.into()
    }

    /// The provider's own word for the status (which of its fields: the `Provider` value's
    /// description).
    async fn provider_status(&self) -> Option<&str> {
        self.0.provider_status.as_deref()
    }

    async fn created_at(&self) -> Timestamp {
        Timestamp(self.0.created_at)
    }

    /// When the session stops accepting the person's action, where the provider says.
    async fn expires_at(&self) -> Option<Timestamp> {
        self.0.expires_at.map(Timestamp)
    }

    /// When the session was completed, where the provider says.
    async fn completed_at(&self) -> Option<Timestamp> {
        self.0.completed_at.map(Timestamp)
    }

    /// The email of the person the session is for (whose exactly: the `Provider` value's
    /// description).
    async fn customer_email(&self) -> Option<&str> {
        self.0.customer_email.as_deref()
    }

    async fn customer_name(&self) -> Option<&str> {
        self.0.customer_name.as_deref()
    }

    /// The payment the session created, once there is one, where the provider has payments.
    async fn payment_id(&self) -> Option<&str> {
        self.0.payment_id.as_deref()
    }

    /// Key-value pairs given when the session was created, where the provider keeps them.
    async fn metadata(&self) -> Option<Json<&serde_json::Value>> {
        self.0.metadata.as_deref().map(Json)
    }

    /// When the gateway last heard this from the provider (older than now on a cache hit).
    async fn fetched_at(&self) -> Timestamp {
        Timestamp(self.0.fetched_at)
    }

    /// True when the provider could not answer just now (down, failing, slow, rate limited)
    /// and this earlier answer, from `fetchedAt`, was served instead.
    async fn stale(&self) -> bool {
        self.1
    }

    /// What only this session's provider knows.
    async fn details(&self, ctx: &Context<'_>) -> async_graphql::Result<ProviderDetails> {
        // Every session comes from a registered provider, which always has a details type.
        let details = super::gateway(ctx).service.details(&self.0);
        details.map(ProviderDetails).ok_or_else(|| "no details type for this provider".into())
    }
}

/// One session to look up in a batch.
#[derive(InputObject, Clone, Debug)]
pub struct CheckoutSessionRef {
    pub provider: ProviderName,
    pub id: ID,
    /// The account to ask; the provider's default account when absent.
    pub account: Option<String>,
}

/// A failure answer, the same shape for every error type.
#[derive(Clone, Debug)]
pub struct Failure {
    provider: ProviderName,
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
                self.0.error.code().into()
            }
            /// For people; never parse it.
            async fn message(&self) -> String {
                self.0.error.to_string()
            }
            async fn provider(&self) -> ProviderName {
                self.0.provider.clone()
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
            FetchError::Unavailable { reason, .. } => (*reason).into(),
            FetchError::ClientRateLimited { .. } => UnavailableReason::RateLimited,
            _ => UnavailableReason::UpstreamError,
        }
    },
    /// How long to wait before asking again, when known: what the provider asked, the open
    /// circuit's cooldown, or until this client's budget allows another lookup.
    async fn retry_after_seconds(&self) -> Option<u64> {
        match &self.0.error {
            FetchError::Unavailable { retry_after_seconds, .. } => *retry_after_seconds,
            FetchError::ClientRateLimited { retry_after_seconds } => Some(*retry_after_seconds),
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

error_type!(
    UnknownAccountError,
    "The request named an account that is not configured for this provider; nothing was asked.",
    /// The account the request named.
    async fn account(&self) -> Option<&str> {
        match &self.0.error {
            FetchError::UnknownAccount(name) => Some(name),
            _ => None,
        }
    }
);

error_type!(
    AccessDeniedError,
    "This client may not read sessions of the account; decided by the gateway before any provider call.",
    /// The account the session would be read with.
    async fn account(&self) -> Option<&str> {
        match &self.0.error {
            FetchError::AccessDenied(name) => Some(name),
            _ => None,
        }
    }
);

/// What every error answer has.
#[derive(Interface, Debug)]
#[graphql(
    field(name = "code", ty = "ErrorCode", desc = "The stable code to switch on."),
    field(name = "message", ty = "String", desc = "For people; never parse it."),
    field(name = "provider", ty = "ProviderName")
)]
pub enum CheckoutError {
    Unauthorized(UnauthorizedError),
    Forbidden(ForbiddenError),
    NotFound(NotFoundError),
    InvalidId(InvalidIdError),
    ProviderUnavailable(ProviderUnavailableError),
    UnknownAccount(UnknownAccountError),
    AccessDenied(AccessDeniedError),
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
    UnknownAccountError(UnknownAccountError),
    AccessDeniedError(AccessDeniedError),
}

impl CheckoutSessionResult {
    /// The one place an answer becomes a union member.
    pub fn from_lookup(provider: &ProviderName, lookup: Lookup) -> Self {
        match lookup.answer {
            Ok(session) => Self::CheckoutSession(CheckoutSessionView(session, lookup.stale)),
            Err(error) => {
                let failure = Failure { provider: provider.clone(), error };
                match failure.error.code() {
                    domain::ErrorCode::Unauthorized => Self::UnauthorizedError(UnauthorizedError(failure)),
                    domain::ErrorCode::Forbidden => Self::ForbiddenError(ForbiddenError(failure)),
                    domain::ErrorCode::NotFound => Self::NotFoundError(NotFoundError(failure)),
                    domain::ErrorCode::InvalidId => Self::InvalidIdError(InvalidIdError(failure)),
                    domain::ErrorCode::ProviderUnavailable => {
                        Self::ProviderUnavailableError(ProviderUnavailableError(failure))
                    }
                    domain::ErrorCode::UnknownAccount => {
                        Self::UnknownAccountError(UnknownAccountError(failure))
                    }
                    domain::ErrorCode::AccessDenied => Self::AccessDeniedError(AccessDeniedError(failure)),
                }
            }
        }
    }
}

/// The same failure as a GraphQL error, where an error is the only way out (federation
/// `_entities`): `extensions.code` carries the code, `extensions.provider` the provider.
/// `provider` is `None` only where it cannot be known (an unknown account in an `account id`
/// representation).
pub fn to_graphql_error(provider: Option<&ProviderName>, error: &FetchError) -> async_graphql::Error {
    async_graphql::Error::new(error.to_string()).extend_with(|_, ext| {
        ext.set("code", enum_value(ErrorCode::from(error.code())));
        if let Some(provider) = provider {
            ext.set("provider", async_graphql::Value::Enum(provider.0.clone()));
        }
        let (reason, retry_after_seconds) = match error {
            FetchError::Unavailable { reason, retry_after_seconds, .. } => (*reason, *retry_after_seconds),
            FetchError::ClientRateLimited { retry_after_seconds } => {
                (domain::UnavailableReason::RateLimited, Some(*retry_after_seconds))
            }
            _ => return,
        };
        ext.set("reason", enum_value(UnavailableReason::from(reason)));
        if let Some(seconds) = retry_after_seconds {
            ext.set("retryAfterSeconds", seconds);
        }
    })
}
