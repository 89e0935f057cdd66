//! The gateway's own model of a checkout session and of what can go wrong fetching one.
//!
//! Owns: the session, its normalised status, the errors, the credential type, and [`lock`]
//! (here because this leaf is the one module every layer may import). Knows no provider and
//! no GraphQL: every provider module maps its wire format into these types, and the GraphQL
//! layer mirrors the enums (`graphql::types`) without this module knowing.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};

/// The provider-independent state of a session (see PROVIDERS.md for the mapping). Each
/// value is described where clients see it: `graphql::types::CheckoutStatus` mirrors this.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum CheckoutStatus {
    Open,
    ActionRequired,
    Processing,
    Completed,
    Failed,
    Cancelled,
    Expired,
    Unknown,
}

impl CheckoutStatus {
    /// `COMPLETED`, `CANCELLED`, `EXPIRED`: the session will not change again.
    pub fn is_final(self) -> bool {
        matches!(self, CheckoutStatus::Completed | CheckoutStatus::Cancelled | CheckoutStatus::Expired)
    }
}

/// One checkout session as the gateway reports it, whichever provider holds it.
#[derive(Debug)]
pub struct CheckoutSession {
    /// The provider's name as the schema spells it (`DHMAD`, `DODO`): static, from its module.
    pub provider: &'static str,
    /// The configured account that answered (shared with the account, not copied).
    pub account: Arc<str>,
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
    /// Boxed: absent for providers with nothing of their own to say.
    pub details: Option<Box<dyn ProviderDetails>>,
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

/// What only one provider knows about a session, beyond the common fields: each provider
/// module defines its own type, and only that module reads it back (by downcasting).
/// Anything derivable from the common fields is not stored twice: a cache holds many.
/// Compared with `==` (live updates send only changes): the type derives `PartialEq`.
pub trait ProviderDetails: Any + fmt::Debug + Send + Sync + SameDetails {
    /// Bytes this value holds on the heap beyond its own size, for the cache's byte bound.
    fn heap_bytes(&self) -> usize {
        0
    }

    /// This value as JSON, for replicas sharing answers (read back by the provider's
    /// `details_from_json`); `None`: nothing worth keeping.
    fn to_json(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Whether two details say the same: equal values of one type. Implemented for every type
/// with `PartialEq`, so that `dyn ProviderDetails` can be compared.
pub trait SameDetails {
    fn same_as(&self, other: &dyn ProviderDetails) -> bool;
}

impl<T: PartialEq + Any> SameDetails for T {
    fn same_as(&self, other: &dyn ProviderDetails) -> bool {
        (other as &dyn Any).downcast_ref::<T>() == Some(self)
    }
}

impl CheckoutSession {
    /// Roughly what this session costs in memory: the struct and every allocation it owns
    /// (the cache is bounded by this, since merchant metadata can be large).
    pub fn weight(&self) -> usize {
        let text = |s: &Option<Box<str>>| s.as_ref().map_or(0, |s| s.len());
        let status = match &self.provider_status {
            Some(Cow::Owned(raw)) => raw.capacity(),
            _ => 0,
        };
        let details = self.details.as_ref().map_or(0, |d| std::mem::size_of_val(&**d) + d.heap_bytes());
        std::mem::size_of::<Self>()
            + self.id.len()
            + status
            + text(&self.customer_email)
            + text(&self.customer_name)
            + text(&self.payment_id)
            + self.metadata.as_deref().map_or(0, json_weight)
            + details
    }

    /// Whether `other` says the same about the session: every field but when it was fetched.
    pub fn same_content(&self, other: &CheckoutSession) -> bool {
        let details = match (&self.details, &other.details) {
            (Some(a), Some(b)) => a.same_as(&**b),
            (None, None) => true,
            _ => false,
        };
        details
            && self.provider == other.provider
            && self.account == other.account
            && self.id == other.id
            && self.status == other.status
            && self.provider_status == other.provider_status
            && self.created_at == other.created_at
            && self.expires_at == other.expires_at
            && self.completed_at == other.completed_at
            && self.customer_email == other.customer_email
            && self.customer_name == other.customer_name
            && self.payment_id == other.payment_id
            && self.metadata == other.metadata
    }

    /// The provider-specific details, if they are of type `T`.
    pub fn details<T: ProviderDetails>(&self) -> Option<&T> {
        let details: &dyn Any = self.details.as_deref()?;
        details.downcast_ref::<T>()
    }
}

/// The stable codes a client switches on. They appear as the `code` of an error in the result
/// union and as `extensions.code` where a GraphQL error is the only way out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Unauthorized,
    Forbidden,
    NotFound,
    InvalidId,
    ProviderUnavailable,
    UnknownAccount,
    AccessDenied,
}

/// Why a provider could not give an answer (described in `graphql::types`, which mirrors it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnavailableReason {
    NotConfigured,
    RateLimited,
    UpstreamError,
    Timeout,
    ConnectionFailed,
    InvalidResponse,
    CircuitOpen,
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
    /// The name the client gave (cut to 64 characters): not a secret, and useful to see.
    #[error("the account {0:?} is not configured for this lookup")]
    UnknownAccount(Arc<str>),
    /// The client's rights do not include this account: decided before any provider call.
    #[error("this client may not read sessions of the account {0:?}")]
    AccessDenied(Arc<str>),
    #[error("{}", unavailable_message(*reason, *upstream_status, *retry_after_seconds))]
    Unavailable {
        reason: UnavailableReason,
        /// The HTTP status the provider answered with, when it answered.
        upstream_status: Option<u16>,
        /// How long the provider asked us to wait, when it said.
        retry_after_seconds: Option<u64>,
    },
    /// This client's budget of upstream lookups (`GATEWAY_CLIENT_RATE_LIMIT`) is spent: the
    /// gateway's own decision, before any provider call. Shown as a provider's
    /// `RATE_LIMITED` (the same code and `retryAfterSeconds`, so a client handles both by
    /// waiting), with a message that says whose budget it is.
    #[error(
        "this client has used its budget of lookups that reach a provider (GATEWAY_CLIENT_RATE_LIMIT); \
         cached answers are still served; retry after {retry_after_seconds} s"
    )]
    ClientRateLimited { retry_after_seconds: u64 },
}

fn unavailable_message(reason: UnavailableReason, status: Option<u16>, wait: Option<u64>) -> String {
    let what = match reason {
        UnavailableReason::NotConfigured => "the gateway has no credentials for this provider",
        UnavailableReason::RateLimited => "the provider is rate limiting the gateway",
        UnavailableReason::UpstreamError => "the provider answered with an error",
        UnavailableReason::Timeout => "the provider did not answer in time",
        UnavailableReason::ConnectionFailed => "the provider could not be reached",
        UnavailableReason::InvalidResponse => "the provider's answer could not be understood",
        UnavailableReason::CircuitOpen => {
            "the provider has been failing; the gateway is not calling it for now"
        }
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

    /// Whether an earlier answer may stand in for this one: the provider could not answer
    /// (down, failing, slow, rate limited, circuit open), which says nothing about the session.
    pub fn may_serve_stale(&self) -> bool {
        matches!(
            self,
            FetchError::Unavailable {
                reason: UnavailableReason::RateLimited
                    | UnavailableReason::UpstreamError
                    | UnavailableReason::Timeout
                    | UnavailableReason::ConnectionFailed
                    | UnavailableReason::InvalidResponse
                    | UnavailableReason::CircuitOpen,
                ..
            }
        )
    }

    /// Whether asking again cannot give another answer: the provider has no such session, or
    /// refuses the gateway's credentials or account, or the id cannot be valid. (Asking again
    /// after a configuration change may, but that is a restart.)
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            FetchError::NotFound
                | FetchError::Unauthorized
                | FetchError::Forbidden
                | FetchError::InvalidId(_)
        )
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            FetchError::Unauthorized => ErrorCode::Unauthorized,
            FetchError::Forbidden => ErrorCode::Forbidden,
            FetchError::NotFound => ErrorCode::NotFound,
            FetchError::InvalidId(_) => ErrorCode::InvalidId,
            FetchError::UnknownAccount(_) => ErrorCode::UnknownAccount,
            FetchError::AccessDenied(_) => ErrorCode::AccessDenied,
            FetchError::Unavailable { .. } | FetchError::ClientRateLimited { .. } => {
                ErrorCode::ProviderUnavailable
            }
        }
    }
}

/// An estimate of a JSON value's memory: each node's size plus its strings.
fn json_weight(value: &serde_json::Value) -> usize {
    let node = std::mem::size_of::<serde_json::Value>();
    match value {
        serde_json::Value::String(s) => node + s.capacity(),
        serde_json::Value::Array(items) => node + items.iter().map(json_weight).sum::<usize>(),
        serde_json::Value::Object(fields) => {
            // A map entry also holds its key and the map's own bookkeeping.
            node + fields.iter().map(|(key, value)| key.capacity() + 32 + json_weight(value)).sum::<usize>()
        }
        _ => node,
    }
}

/// What a lookup yields: a shared, immutable session (cache hits hand out the same `Arc`).
pub type FetchResult = Result<Arc<CheckoutSession>, FetchError>;

/// A credential. It prints as `[redacted]` everywhere; `expose` is the only way to the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// The guard of `mutex`, even if a thread panicked while holding it: every mutex here guards
/// data that each critical section leaves whole (one insert, one update), so a panic elsewhere
/// must not turn every later caller into a panic too.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
