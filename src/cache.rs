//! The answer cache in front of every provider.
//!
//! How long an answer may be reused depends on what it says (PROVIDERS.md): a finished
//! session for long, an open one briefly and never past its own expiry, a not-found very
//! briefly, and an error never. Concurrent misses for one key share one upstream call
//! (`try_get_with`), including calls whose answer is not stored.
//!
//! Owns: the lifetimes ([`CachePolicy`]) and the one session cache, keyed by account scope and id.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::Expiry;

use crate::domain::{CheckoutStatus, FetchError, FetchResult};
use crate::live::Hub;
use crate::metrics::Metrics;
use crate::providers::Account;

/// Lifetimes per kind of answer; each is a setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// `COMPLETED`, `CANCELLED`, `EXPIRED`: these no longer change.
    pub terminal: Duration,
    /// `FAILED`: the customer may retry within the same session.
    pub failed: Duration,
    /// `OPEN`, `ACTION_REQUIRED`, `PROCESSING`, `UNKNOWN`.
    pub open: Duration,
    /// A 404: may be a session created a moment ago, or a key of the wrong environment.
    pub not_found: Duration,
    /// How old a session may be and still be served, marked stale, while its provider cannot
    /// answer; zero: never.
    pub stale_if_error: Duration,
    /// The most entries kept…
    pub max_entries: u64,
    /// …and the most bytes they may hold, whichever bound is reached first.
    pub max_bytes: u64,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            terminal: Duration::from_secs(3600),
            failed: Duration::from_secs(30),
            open: Duration::from_secs(5),
            not_found: Duration::from_secs(2),
            stale_if_error: Duration::from_secs(3600),
            max_entries: 100_000,
            max_bytes: 128 * 1024 * 1024,
        }
    }
}

impl CachePolicy {
    /// How long this answer may be reused from now; `None` or zero means not at all.
    pub fn lifetime(&self, answer: &FetchResult) -> Option<Duration> {
        match answer {
            Ok(session) => {
                if session.status.is_final() {
                    return Some(self.terminal);
                }
                let by_status = match session.status {
                    CheckoutStatus::Failed => self.failed,
                    _ => self.open,
                };
                // A session still in play must not be served as open after it has expired.
                let until_expiry =
                    session.expires_at.map(|at| (at - Utc::now()).to_std().unwrap_or_default());
                Some(until_expiry.map_or(by_status, |left| left.min(by_status)))
            }
            Err(FetchError::NotFound) => Some(self.not_found),
            Err(_) => None,
        }
    }
}

/// An entry's weight for a cache bounded to `max_bytes`: its bytes (key, bookkeeping,
/// session), but never less than `max_bytes / max_entries`, so that at most `max_entries`
/// fit whatever their size.
fn weigher(policy: &CachePolicy) -> impl Fn(&Key, usize) -> u32 + Clone + Send + Sync + 'static {
    let floor = policy.max_bytes / policy.max_entries.max(1);
    move |key: &Key, session_bytes: usize| {
        // moka's own bookkeeping per entry is about this much.
        const OVERHEAD: usize = 128;
        let bytes = (key.0.len() + key.1.len() + OVERHEAD + session_bytes) as u64;
        u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
    }
}

/// A stored answer: a session or a not-found, with the moment it stops being reusable.
#[derive(Clone, Debug)]
struct Entry {
    answer: FetchResult,
    /// Until when the answer may be reused.
    expires_at: Instant,
    /// Until when it is kept: later than `expires_at` for a session that may still be served
    /// stale while its provider cannot answer.
    kept_until: Instant,
    /// When the call that got it was made: a refresh must not take an answer asked for
    /// before the change it was told of.
    asked_at: Instant,
}

struct ByAnswer;

impl Expiry<Key, Entry> for ByAnswer {
    fn expire_after_create(&self, _key: &Key, value: &Entry, created_at: Instant) -> Option<Duration> {
        Some(value.kept_until.saturating_duration_since(created_at))
    }
}

/// Whose view (account, provider, environment, credential fingerprint) and which session.
type Key = (Arc<str>, Arc<str>);

/// An answer and until when a client may reuse it (`None`: not at all). The moment is
/// absolute, so that whatever happens after the lookup (a slow sibling in a batch,
/// serialising, replay) nothing is announced or replayed past it.
#[derive(Clone, Debug)]
pub struct Lookup {
    pub answer: FetchResult,
    pub reusable_until: Option<Instant>,
    /// The provider could not answer; `answer` is an earlier session (see `stale_if_error`).
    pub stale: bool,
}

impl Lookup {
    /// An answer that must not be reused.
    pub fn once(answer: FetchResult) -> Self {
        Self { answer, reusable_until: None, stale: false }
    }
}

/// One cache for every account: bounded in total, keyed by whose view and which session.
#[derive(Debug)]
pub struct SessionCache {
    policy: CachePolicy,
    /// Fresh answers, and sessions kept past their freshness for `stale_if_error`.
    cache: Cache<Key, Entry>,
    /// Concurrent askers of one key share one provider call here; it stores nothing: its
    /// values cannot exist, so every result leaves as the shared "error" of `try_get_with`.
    calls: Cache<Key, Infallible>,
    /// Told every answer a provider gives, so that whoever watches the session hears of it.
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
}

impl SessionCache {
    pub fn new(policy: CachePolicy, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Self {
        let evictions = metrics.cache_evictions.clone();
        let weigh = weigher(&policy);
        let cache = Cache::builder()
            .name("sessions")
            .max_capacity(policy.max_bytes)
            .weigher(move |key: &Key, entry: &Entry| {
                weigh(key, entry.answer.as_ref().map_or(0, |session| session.weight()))
            })
            .expire_after(ByAnswer)
            .eviction_listener(move |_key, _value, cause| {
                let cause = match cause {
                    RemovalCause::Expired => "expired",
                    RemovalCause::Size => "size",
                    RemovalCause::Replaced => "replaced",
                    RemovalCause::Explicit => "explicit",
                };
                evictions.with_label_values(&[cause]).inc();
            })
            .build();
        let calls = Cache::builder().name("calls in flight").build();
        Self { policy, cache, calls, hub, metrics }
    }

    /// The stored answer for `id` as `account` sees it, or the provider's answer now (shared
    /// with every concurrent asker of the same key, and stored if it may be reused).
    pub async fn lookup(&self, account: &Account, id: &str) -> Lookup {
        let label = [account.kind().slug, &**account.name()];
        // The id is shared by the key and, on a miss, the session the provider builds.
        let id = match account.client.canonical_id(id) {
            Ok(id) => id,
            Err(invalid) => return Lookup::once(Err(invalid)),
        };
        let key: Key = (account.scope.clone(), id.clone());
        // The common case, a hit, is one read.
        let kept = self.cache.get(&key).await;
        if let Some(entry) = &kept {
            if entry.expires_at > Instant::now() {
                self.metrics.cache_hits.with_label_values(&label).inc();
                return entry.clone().into_lookup();
            }
        }
        let (entry, called) = self.call(account, &key).await;
        let counter = if called { &self.metrics.cache_misses } else { &self.metrics.cache_coalesced };
        counter.with_label_values(&label).inc();
        if let Err(error) = &entry.answer {
            // The provider could not answer: an earlier session, kept for this, stands in.
            if let Some(Entry { answer: Ok(earlier), kept_until, .. }) = kept {
                if error.may_serve_stale() && kept_until > Instant::now() {
                    self.metrics.stale_answers.with_label_values(&label).inc();
                    return Lookup { answer: Ok(earlier), reusable_until: None, stale: true };
                }
            }
        }
        entry.into_lookup()
    }

    /// Asks the provider for `key`'s session, or joins the asker already doing so; `true` with
    /// the answer when this call made the request. What the provider answers is stored (if it
    /// may be reused) and told to the session's watchers.
    async fn call(&self, account: &Account, key: &Key) -> (Entry, bool) {
        let mut called = false;
        let shared = self
            .calls
            .try_get_with(key.clone(), async {
                called = true;
                let asked_at = Instant::now();
                let answer = account.client.fetch_session(&key.1).await;
                let entry = self.entry(answer, asked_at);
                // Stored before the askers waiting here are released, so that one arriving
                // after them finds it.
                if entry.expires_at > Instant::now() {
                    self.cache.insert(key.clone(), entry.clone()).await;
                }
                // Only an account that takes webhooks needs its sessions found by what they name.
                if let (Ok(session), true) = (&entry.answer, account.has_webhooks()) {
                    let reference =
                        account.kind().webhooks.and_then(|webhooks| (webhooks.reference)(session));
                    if let Some(reference) = reference {
                        self.hub.note_reference(&key.0, reference, &key.1);
                    }
                }
                self.hub.publish(key, &entry.answer);
                Err::<Infallible, _>(entry)
            })
            .await;
        match shared {
            Ok(never) => match never {},
            Err(entry) => ((*entry).clone(), called),
        }
    }

    /// Stops what is stored for `id` from being fresh (a webhook said it changed); it is still
    /// kept for stale-if-error. A lookup from now on asks the provider (and a [`Self::refresh`]
    /// joins it). Returns the canonical id when something was stored.
    pub async fn invalidate(&self, account: &Account, id: &str) -> Option<Arc<str>> {
        let key: Key = (account.scope.clone(), account.client.canonical_id(id).ok()?);
        let mut entry = self.cache.get(&key).await?;
        entry.expires_at = Instant::now();
        self.cache.insert(key.clone(), entry).await;
        Some(key.1)
    }

    /// Asks the provider for `id` again and stores the answer, sharing a call in flight only
    /// if it was made at or after `since` (the moment a webhook said the session changed); an
    /// earlier one may predate the change, so then a call of its own is made.
    pub async fn refresh(&self, account: &Account, id: &Arc<str>, since: Instant) {
        let key: Key = (account.scope.clone(), id.clone());
        let label = [account.kind().slug, &**account.name()];
        self.metrics.cache_refreshes.with_label_values(&label).inc();
        let (entry, called) = self.call(account, &key).await;
        if !called && entry.asked_at < since {
            self.call(account, &key).await;
        }
    }

    /// Whether an answer for `id` as `account` sees it is kept (fresh or not).
    pub fn holds(&self, account: &Account, id: &str) -> bool {
        account.client.canonical_id(id).is_ok_and(|id| self.cache.contains_key(&(account.scope.clone(), id)))
    }

    /// The canonical key of `id` for `account`.
    pub fn key(&self, account: &Account, id: &str) -> Result<(Arc<str>, Arc<str>), FetchError> {
        Ok((account.scope.clone(), account.client.canonical_id(id)?))
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// What to keep of an answer: until when it may be reused (now, for an answer that may
    /// not be), and until when it is kept: a session `stale_if_error` from now, a not-found
    /// only while fresh.
    fn entry(&self, answer: FetchResult, asked_at: Instant) -> Entry {
        let now = Instant::now();
        let expires_at = now + self.policy.lifetime(&answer).unwrap_or_default();
        let kept_until =
            if answer.is_ok() { expires_at.max(now + self.policy.stale_if_error) } else { expires_at };
        Entry { answer, expires_at, kept_until, asked_at }
    }

    /// How many answers are stored now. Runs the cache's pending maintenance first, so the
    /// count is exact (and expired entries are counted as evicted); meant for scrapes, not
    /// for the request path.
    pub async fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }
}

impl Entry {
    fn into_lookup(self) -> Lookup {
        // An answer whose lifetime is zero (an error, an expired session) is never reusable.
        let reusable_until = (self.expires_at > Instant::now()).then_some(self.expires_at);
        Lookup { reusable_until, answer: self.answer, stale: false }
    }
}
