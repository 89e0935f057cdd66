//! What every provider's HTTP call shares: the credential, the base URL, the bound on
//! concurrent calls, the timeout, and the mapping of transport failures and HTTP statuses to
//! [`FetchError`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::guard::{Guard, Outcome};
use super::{AccountConfig, CredentialStatus, Limits, ProviderKind};
use crate::domain::{FetchError, UnavailableReason};
use crate::telemetry;
use crate::telemetry::metrics::Metrics;

/// Everything but RFC 3986 unreserved characters is escaped, so an id can never add a path
/// segment, a query or a fragment (`/`, `?`, `#`, `%` are all escaped).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// A provider answer larger than this is not a checkout session; reading stops there.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// One provider endpoint as seen with one account's credential.
pub struct Upstream {
    kind: &'static ProviderKind,
    account: Arc<str>,
    client: reqwest::Client,
    base_url: String,
    /// `Bearer <key>`, marked sensitive so that no HTTP-layer log prints it.
    authorization: Option<HeaderValue>,
    /// One attempt's exchange with the provider.
    timeout: Duration,
    /// A whole lookup: queueing, quota waits, attempts and backoff.
    deadline: Duration,
    permits: Semaphore,
    guard: Arc<Guard>,
    /// Shared by every cache key of this account (a reference count, not a copy, per entry).
    scope: Arc<str>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("provider", &self.kind.slug)
            .field("account", &self.account)
            .field("base_url", &self.base_url)
            .field("configured", &self.authorization.is_some())
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A provider's answer, read in full, before the provider module interprets it.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Upstream {
    pub fn new(
        config: &AccountConfig,
        limits: Limits,
        guard: Arc<Guard>,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let kind = config.kind;
        let base_url = config.base_url.trim_end_matches('/').to_owned();
        let authorization = match &config.api_key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                    anyhow::anyhow!(
                        "the key of account `{}` contains characters not allowed in an HTTP header",
                        config.name
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let fingerprint =
            config.api_key.as_ref().map_or_else(|| "none".to_owned(), |key| fingerprint(key.expose()));
        let scope = Arc::from(format!("{}|{}|{}|{}", config.name, kind.slug, base_url, fingerprint));
        Ok(Self {
            kind,
            account: config.name.clone(),
            client,
            base_url,
            authorization,
            timeout: limits.upstream_timeout,
            deadline: limits.lookup_deadline,
            permits: Semaphore::new(limits.upstream_concurrency.max(1)),
            guard,
            scope,
            metrics,
        })
    }

    pub fn scope(&self) -> &Arc<str> {
        &self.scope
    }

    /// The account this upstream calls for: sessions it fetches say so.
    pub fn account(&self) -> &Arc<str> {
        &self.account
    }

    /// `GET {base}/{segments…}` with each segment percent-encoded, through the account's
    /// guard: refused at once while a 429's wait lasts or the circuit is open, within the
    /// quota, retried (reads only) on connection errors, timeouts, 408, 409, 429 and 5xx, all
    /// within one lookup deadline. Each attempt's exchange is bounded by the upstream timeout;
    /// waiting for a concurrency permit is not part of it.
    pub async fn get(&self, segments: &[&str]) -> Result<UpstreamResponse, FetchError> {
        let Some(authorization) = &self.authorization else {
            return Err(FetchError::unavailable(UnavailableReason::NotConfigured));
        };
        let mut url = self.base_url.clone();
        for segment in segments {
            url.push('/');
            url.extend(utf8_percent_encode(segment, PATH_SEGMENT));
        }
        let deadline = Instant::now() + self.deadline;
        let mut attempt = 0;
        loop {
            let ticket =
                self.guard.admit(deadline).await.inspect_err(|refused| self.record_refusal(refused))?;
            let outcome = self.attempt(&url, authorization, deadline).await;
            let (verdict, asked) = judge(&outcome, self.kind);
            // A wait for a permit that outlasted the deadline says nothing about the provider:
            // the ticket is dropped unreported (a trial it held is given back).
            if !matches!(outcome, Err(Queued)) {
                ticket.record(verdict);
            }
            let outcome = outcome.map_err(|Queued| FetchError::unavailable(UnavailableReason::Timeout));
            let retry = match verdict {
                Outcome::Answered => None,
                Outcome::RateLimited(_) | Outcome::Retryable | Outcome::Failed => {
                    attempt += 1;
                    self.guard.retry_wait(attempt, asked, deadline)
                }
            };
            match retry {
                Some(wait) => {
                    tracing::debug!(
                        provider = self.kind.slug,
                        account = &*self.account,
                        attempt,
                        ?wait,
                        "retrying"
                    );
                    self.metrics.upstream_retries.with_label_values(&[self.kind.slug, &self.account]).inc();
                    tokio::time::sleep(wait).await;
                }
                None => return outcome.and_then(|attempt| attempt),
            }
        }
    }

    /// One call: a concurrency permit (waited for until `deadline`), then the exchange
    /// (bounded by the upstream timeout and the deadline).
    async fn attempt(
        &self,
        url: &str,
        authorization: &HeaderValue,
        deadline: Instant,
    ) -> Result<Result<UpstreamResponse, FetchError>, Queued> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let _permit = match tokio::time::timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; treat it as unreachable rather than panic.
            Ok(Err(_)) => return Ok(Err(FetchError::unavailable(UnavailableReason::ConnectionFailed))),
            Err(_) => return Err(Queued),
        };
        let started = Instant::now();
        let exchange_deadline = deadline.min(tokio::time::Instant::now() + self.timeout);
        let outcome = tokio::time::timeout_at(exchange_deadline, async {
            let mut request = self.client.get(url).header(AUTHORIZATION, authorization.clone());
            if let Some(id) = telemetry::request_id() {
                request = request.header("x-request-id", id);
            }
            let response = request.send().await.map_err(transport_error)?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = read_bounded(response).await?;
            Ok(UpstreamResponse { status, headers, body })
        })
        .await
        .unwrap_or_else(|_| Err(FetchError::unavailable(UnavailableReason::Timeout)));
        self.record(&outcome, started.elapsed());
        Ok(outcome)
    }

    /// A call the guard refused is counted, not logged: it can happen thousands of times a
    /// second while a provider is down.
    fn record_refusal(&self, refused: &FetchError) {
        let outcome = match refused {
            FetchError::Unavailable { reason: UnavailableReason::CircuitOpen, .. } => "circuit_open",
            _ => "rate_limited",
        };
        self.metrics
            .upstream_requests
            .with_label_values(&[self.kind.slug, &self.account, outcome, "none"])
            .inc();
    }

    /// Asks an identity endpoint (`GET {base}/{segments…}`) whether the key is accepted.
    pub async fn probe(&self, segments: &[&str]) -> CredentialStatus {
        match self.get(segments).await {
            Ok(response) if response.status == 200 => CredentialStatus::Valid,
            Ok(response) if matches!(response.status, 401 | 403) => CredentialStatus::Rejected,
            Err(FetchError::Unavailable { reason: UnavailableReason::NotConfigured, .. }) => {
                CredentialStatus::NotConfigured
            }
            _ => CredentialStatus::Unreachable,
        }
    }

    /// For a provider with no identity call: all that can be said without calling.
    pub fn unprobed(&self) -> CredentialStatus {
        if self.authorization.is_some() {
            CredentialStatus::Unchecked
        } else {
            CredentialStatus::NotConfigured
        }
    }

    /// One log line and the metrics for each call made.
    fn record(&self, outcome: &Result<UpstreamResponse, FetchError>, elapsed: Duration) {
        let (provider, account) = (self.kind.slug, &*self.account);
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        let (outcome_label, status_class) = match outcome {
            Ok(response) => {
                tracing::info!(provider, account, status = response.status, elapsed_ms, "upstream call");
                let class = match response.status {
                    200..=299 => "2xx",
                    300..=399 => "3xx",
                    400..=499 => "4xx",
                    _ => "5xx",
                };
                (if class == "2xx" { "ok" } else { "http_error" }, class)
            }
            Err(error) => {
                tracing::warn!(provider, account, error = %error, elapsed_ms, "upstream call failed");
                match error {
                    FetchError::Unavailable { reason: UnavailableReason::Timeout, .. } => ("timeout", "none"),
                    _ => ("connection_error", "none"),
                }
            }
        };
        self.metrics
            .upstream_requests
            .with_label_values(&[provider, account, outcome_label, status_class])
            .inc();
        self.metrics.upstream_duration.with_label_values(&[provider, account]).observe(elapsed.as_secs_f64());
    }

    /// Maps a non-success answer to the error a client sees.
    pub fn error_for(&self, response: &UpstreamResponse) -> FetchError {
        match response.status {
            401 => FetchError::Unauthorized,
            403 => FetchError::Forbidden,
            404 => FetchError::NotFound,
            // The provider says the id is malformed; we check ids before calling, so this is
            // the provider's rule being stricter than ours.
            400 | 422 => FetchError::InvalidId("the provider rejected this id as malformed"),
            status => FetchError::Unavailable {
                reason: match status {
                    408 => UnavailableReason::Timeout,
                    429 => UnavailableReason::RateLimited,
                    _ => UnavailableReason::UpstreamError,
                },
                upstream_status: Some(status),
                retry_after_seconds: asked_wait(response, self.kind)
                    .map(|wait| self.guard.clamp(wait).as_secs().min(i32::MAX as u64)),
            },
        }
    }

    /// The error for a 200 whose body is not what the provider documents.
    pub fn invalid_body(&self, error: &serde_json::Error) -> FetchError {
        tracing::warn!(
            provider = self.kind.slug,
            account = &*self.account,
            error = %error,
            "provider answered 200 with a body that is not a session"
        );
        FetchError::Unavailable {
            reason: UnavailableReason::InvalidResponse,
            upstream_status: Some(200),
            retry_after_seconds: None,
        }
    }
}

/// The deadline passed while waiting for a concurrency permit: no call was made.
#[derive(Debug)]
struct Queued;

/// What an attempt's outcome means to the guard, and the wait the provider asked for.
fn judge(
    outcome: &Result<Result<UpstreamResponse, FetchError>, Queued>,
    kind: &ProviderKind,
) -> (Outcome, Option<Duration>) {
    match outcome {
        Ok(Ok(response)) => match response.status {
            429 => {
                let asked = asked_wait(response, kind);
                (Outcome::RateLimited(asked), asked)
            }
            408 | 500..=599 => (Outcome::Failed, asked_wait(response, kind)),
            // A conflict is worth another try (the Dodo SDK's policy) but is no provider failure.
            409 => (Outcome::Retryable, None),
            _ => (Outcome::Answered, None),
        },
        Ok(Err(FetchError::Unavailable {
            reason: UnavailableReason::Timeout | UnavailableReason::ConnectionFailed,
            ..
        })) => (Outcome::Failed, None),
        Ok(Err(_)) => (Outcome::Answered, None),
        Err(Queued) => (Outcome::Answered, None),
    }
}

/// The wait a provider asked for: its body's own field where it has one (DHMAD `retryAfter`),
/// else `retry-after-ms`, `Retry-After` (seconds or a date), or `X-RateLimit-Reset`.
fn asked_wait(response: &UpstreamResponse, kind: &ProviderKind) -> Option<Duration> {
    let from_body = kind.retry_after_in_body.and_then(|read| read(&response.body));
    from_body.or_else(|| retry_after(&response.headers)).map(Duration::from_secs)
}

/// A short, one-way fingerprint of a credential: enough to tell two keys apart in a cache
/// key, useless for recovering the key.
pub fn fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect()
}

fn transport_error(error: reqwest::Error) -> FetchError {
    // reqwest's error text can carry the URL; log the kind only.
    tracing::debug!(timeout = error.is_timeout(), connect = error.is_connect(), "transport error");
    if error.is_timeout() {
        FetchError::unavailable(UnavailableReason::Timeout)
    } else {
        FetchError::unavailable(UnavailableReason::ConnectionFailed)
    }
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Bytes, FetchError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(FetchError::Unavailable {
                reason: UnavailableReason::InvalidResponse,
                upstream_status: Some(response.status().as_u16()),
                retry_after_seconds: None,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// `retry-after-ms` (Dodo's SDK), `Retry-After` in seconds or as an HTTP date, or
/// `X-RateLimit-Reset` (seconds until the window resets, or the reset's Unix time), rounded up
/// to whole seconds.
fn retry_after(headers: &HeaderMap) -> Option<u64> {
    let text = |name| headers.get(name).and_then(|value: &HeaderValue| value.to_str().ok()).map(str::trim);
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some((ms / 1000.0).ceil() as u64);
        }
    }
    if let Some(value) = text(RETRY_AFTER.as_str()) {
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(seconds);
        }
        if let Ok(date) = chrono::DateTime::parse_from_rfc2822(value) {
            return Some(date.signed_duration_since(chrono::Utc::now()).num_seconds().max(0) as u64);
        }
    }
    let reset = text("x-ratelimit-reset")?.parse::<u64>().ok()?;
    // A value past 2001 in Unix time is a moment, not a number of seconds.
    const UNIX_TIME_FLOOR: u64 = 1_000_000_000;
    if reset >= UNIX_TIME_FLOOR {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        return Some(reset.saturating_sub(now));
    }
    Some(reset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_cannot_escape() {
        let encoded: String = utf8_percent_encode("../me?x=1#f%2e", PATH_SEGMENT).collect();
        assert_eq!(encoded, "..%2Fme%3Fx%3D1%23f%252e");
    }

    #[test]
    fn retry_after_forms() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(7));
        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&headers), Some(2));
        headers.remove("retry-after-ms");
        headers.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&headers), Some(0));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("12"));
        assert_eq!(retry_after(&headers), Some(12));
        let soon = (chrono::Utc::now().timestamp() + 30).to_string();
        headers.insert("x-ratelimit-reset", HeaderValue::from_str(&soon).unwrap());
        assert!(matches!(retry_after(&headers), Some(29..=30)));
    }

    #[test]
    fn fingerprints_differ_and_hide_the_key() {
        let a = fingerprint("sk_live_aaaa");
        assert_eq!(a.len(), 16);
        assert_ne!(a, fingerprint("sk_live_aaab"));
        assert!(!a.contains("aaaa"));
    }
}
