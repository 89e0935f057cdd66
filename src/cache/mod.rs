//! The answer cache in front of every provider.
//!
//! How long an answer may be reused depends on what it says (PROVIDERS.md): a finished
//! session for long, an open one briefly and never past its own expiry, a not-found very
//! briefly, and an error never. Concurrent misses for one key share one upstream call
//! (`try_get_with`), including calls whose answer is not stored. A call in flight when its
//! session is invalidated (a webhook said it changed) may carry the old state: its answer is
//! then neither stored (here or in the shared tier) nor told to watchers.
//!
//! Owns: the lifetimes ([`CachePolicy`]) and the one session cache, keyed by account scope and
//! id; it publishes every answer a provider gives as a [`SessionChanged`], and drops what a
//! change makes old. Beside it: the event ([`changes`]), the cross-replica protocol
//! ([`replicated`]) over the Redis client ([`redis`]), the reference index ([`references`]),
//! and the replayed responses ([`responses`]).

pub mod changes;
pub mod redis;
pub mod references;
pub mod replicated;
pub mod responses;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::BoxFuture;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use moka::Expiry;

use self::changes::{Changes, Listener, SessionChanged};
use self::references::References;
use self::replicated::Replicated;
use crate::access::quota::Payer;
use crate::domain::{lock, CheckoutStatus, FetchError, FetchResult};
use crate::providers::Account;
use crate::telemetry::metrics::Metrics;

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

    /// Until when an answer reusable until `expires_at` is kept: a session for
    /// `stale_if_error` from `now` (it may stand in while its provider cannot answer), a
    /// not-found only while fresh.
    fn kept_until(&self, answer: &FetchResult, expires_at: Instant, now: Instant) -> Instant {
        if answer.is_ok() {
            expires_at.max(now + self.stale_if_error)
        } else {
            expires_at
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
    /// When the call that got it was made (part of the shared tier's format).
    asked_at: Instant,
}

struct ByAnswer;

impl Expiry<Key, Entry> for ByAnswer {
    fn expire_after_create(&self, _key: &Key, value: &Entry, created_at: Instant) -> Option<Duration> {
        Some(value.kept_until.saturating_duration_since(created_at))
    }
}

/// Whose view (account, provider, environment, credential fingerprint) and which session.
pub(crate) type Key = (Arc<str>, Arc<str>);

/// A provider call in flight.
#[derive(Debug)]
struct Flight {
    number: u64,
    /// Its session was invalidated since the call began.
    superseded: bool,
}

/// Forgets a call in flight when it ends, however it ends (a call whose askers all went away
/// is dropped mid-way); a later call of the same key has another number and is kept.
struct Landing<'a> {
    flights: &'a Mutex<HashMap<Key, Flight>>,
    key: Key,
    number: u64,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let mut flights = lock(self.flights);
        if flights.get(&self.key).is_some_and(|flight| flight.number == self.number) {
            flights.remove(&self.key);
        }
    }
}

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
    /// The provider calls in flight (one per key at most, through `calls`): each call's number,
    /// and whether its session was invalidated meanwhile.
    in_flight: Mutex<HashMap<Key, Flight>>,
    next_call: AtomicU64,
    /// Told every answer a provider gives (whoever watches the session hears of it), and
    /// every change a webhook or another replica reports; this cache listens first.
    changes: Arc<Changes>,
    /// The sessions each payment or escrow names, as this replica saw them.
    references: References,
    /// The protocol with the other replicas, between this cache and the providers; `None`:
    /// alone.
    replicated: Option<Arc<Replicated>>,
    metrics: Arc<Metrics>,
}

impl SessionCache {
    /// `listeners`: told of every change after this cache (see [`changes`]); `replicated`:
    /// the shared tier, if replicas share one.
    pub fn new(
        policy: CachePolicy,
        replicated: Option<Arc<Replicated>>,
        listeners: Vec<Weak<dyn Listener>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
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
        Arc::new_cyclic(|this: &Weak<Self>| {
            // First: the old state is dropped before anyone else hears of a change.
            let this: Weak<dyn Listener> = this.clone();
            let changes = Arc::new(Changes::new([this].into_iter().chain(listeners).collect()));
            Self {
                policy,
                cache,
                calls,
                in_flight: Mutex::default(),
                next_call: AtomicU64::new(0),
                changes,
                references: References::new(),
                replicated,
                metrics,
            }
        })
    }

    /// The stored answer for `id` as `account` sees it, or the provider's answer now (shared
    /// with every concurrent asker of the same key, and stored if it may be reused).
    pub async fn lookup(&self, account: &Account, id: &str) -> Lookup {
        self.lookup_charged(account, id, None).await
    }

    /// [`Self::lookup`], charging `payer` (the asking client's budget) when the answer is
    /// not held: a hit costs nothing. A miss that joins a call already in flight is charged
    /// too: which it will be is not known before asking, and charging only the one that
    /// calls would let a client whose budget is spent share its refusal with the others.
    pub async fn lookup_charged(&self, account: &Account, id: &str, payer: Option<&Payer>) -> Lookup {
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
        if let Some(Err(spent)) = payer.map(Payer::spend) {
            self.metrics.client_rate_limited.inc();
            return Lookup::once(Err(spent));
        }
        let (mut entry, called, superseded) = self.call(account, &key, false).await;
        if superseded && !called {
            // Joined a call made before a webhook said the session changed: its answer may be
            // the old state, and this lookup may have started after the change.
            (entry, _, _) = self.call(account, &key, false).await;
        }
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

    /// Asks the provider for `key`'s session, or joins the asker already doing so; with the
    /// answer, `true` when this call made the request, and `true` when the session was
    /// invalidated while the request was in flight (the answer may predate the change). What
    /// the provider answers is stored (if it may be reused and was not superseded) and told to
    /// the session's watchers (if it was not superseded: the refetch that follows tells them).
    async fn call(&self, account: &Account, key: &Key, fresh: bool) -> (Entry, bool, bool) {
        let mut called = false;
        let shared = self
            .calls
            .try_get_with(key.clone(), async {
                called = true;
                let landing = self.take_off(key);
                let asked_at = Instant::now();
                let provider = async { self.entry(account.client.fetch_session(&key.1).await, asked_at) };
                let entry = match &self.replicated {
                    Some(replicated) => {
                        let superseded = || self.superseded(&landing);
                        replicated.ask(account, key, fresh, &self.policy, provider, superseded).await
                    }
                    None => provider.await,
                };
                // Stored before the askers waiting here are released, so that one arriving
                // after them finds it.
                if entry.expires_at > Instant::now() {
                    self.store(key, &entry, &landing).await;
                }
                // Only an account that takes webhooks needs its sessions found by what they name.
                if let (Ok(session), true) = (&entry.answer, account.has_webhooks()) {
                    let reference =
                        account.kind().webhooks.and_then(|webhooks| (webhooks.reference)(session));
                    if let Some(reference) = reference {
                        self.note_reference(&key.0, reference, &key.1).await;
                    }
                }
                let superseded = self.superseded(&landing);
                if !superseded {
                    self.changes.publish(SessionChanged::Answered { key, answer: &entry.answer }).await;
                }
                Err::<Infallible, _>((entry, superseded))
            })
            .await;
        match shared {
            Ok(never) => match never {},
            Err(answer) => {
                let (entry, superseded) = (*answer).clone();
                (entry, called, superseded)
            }
        }
    }

    /// Records a provider call for `key` as in flight, until the returned guard is dropped.
    fn take_off(&self, key: &Key) -> Landing<'_> {
        let number = self.next_call.fetch_add(1, Ordering::Relaxed);
        self.flights().insert(key.clone(), Flight { number, superseded: false });
        Landing { flights: &self.in_flight, key: key.clone(), number }
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<Key, Flight>> {
        lock(&self.in_flight)
    }

    /// Whether the session of the call `landing` records was invalidated since it began.
    fn superseded(&self, landing: &Landing<'_>) -> bool {
        self.flights()
            .get(&landing.key)
            .is_some_and(|flight| flight.number == landing.number && flight.superseded)
    }

    /// Marks a call in flight for `key`, if any, as superseded; `true` if there was one.
    fn supersede(&self, key: &Key) -> bool {
        self.flights().get_mut(key).map(|flight| flight.superseded = true).is_some()
    }

    /// Stores `entry` unless its call was superseded. Checked under moka's lock on the key,
    /// which [`Self::demote`] takes too after marking the call: either the entry is stored
    /// before the demotion (and demoted by it), or the mark is seen here and nothing is stored.
    async fn store(&self, key: &Key, entry: &Entry, landing: &Landing<'_>) {
        self.cache
            .entry(key.clone())
            .and_compute_with(|_| {
                ready(if self.superseded(landing) { Op::Nop } else { Op::Put(entry.clone()) })
            })
            .await;
    }

    /// Stops what is stored for `key` from being fresh (a webhook said it changed); it is
    /// still kept for stale-if-error. A lookup from now on asks the provider (and a
    /// [`Self::refresh`] joins it); a call already in flight is not stored. `here`: the webhook
    /// came to this replica, so every replica's copy goes too. `true` when something was
    /// stored or asked for.
    async fn drop_stale(&self, key: &Key, here: bool) -> bool {
        // First, so that what the call in flight writes from now on is refused, and what it
        // wrote before is deleted below.
        let in_flight = self.supersede(key);
        let mut shared_held = false;
        if let Some(replicated) = self.replicated.as_ref().filter(|_| here) {
            // The shared copy now, the other replicas' by message.
            shared_held = replicated.forget(key).await;
        }
        let held = self.demote(key).await;
        held || shared_held || in_flight
    }

    /// What is stored for `key` stops being fresh (kept for stale-if-error); `false` when
    /// nothing was stored.
    async fn demote(&self, key: &Key) -> bool {
        let now = Instant::now();
        let result = self
            .cache
            .entry(key.clone())
            .and_compute_with(|stored| {
                ready(match stored {
                    Some(stored) => {
                        let mut entry = stored.into_value();
                        entry.expires_at = now;
                        Op::Put(entry)
                    }
                    None => Op::Nop,
                })
            })
            .await;
        matches!(result, CompResult::ReplacedWith(_))
    }

    /// Asks the provider for `id` again and stores the answer, sharing a call in flight only
    /// if it was not superseded (made before the webhook that asks for this said the session
    /// changed): then a call of its own is made.
    pub async fn refresh(&self, account: &Account, id: &Arc<str>) {
        let key: Key = (account.scope.clone(), id.clone());
        let label = [account.kind().slug, &**account.name()];
        self.metrics.cache_refreshes.with_label_values(&label).inc();
        let (_, called, superseded) = self.call(account, &key, true).await;
        if superseded && !called {
            self.call(account, &key, true).await;
        }
        if let Some(replicated) = &self.replicated {
            // The other replicas take the new answer from the shared tier.
            replicated.announce(&key).await;
        }
    }

    /// Remembers that `reference` (a payment, an escrow) names session `id` in `scope`, here
    /// and for the other replicas.
    pub async fn note_reference(&self, scope: &Arc<str>, reference: &str, id: &Arc<str>) {
        self.references.note(scope, reference, id);
        if let Some(replicated) = &self.replicated {
            replicated.note_reference(scope, reference, id).await;
        }
    }

    /// The sessions this replica, or any other, saw under `reference` in `scope`.
    pub async fn sessions_of(&self, scope: &Arc<str>, reference: &str) -> Vec<Arc<str>> {
        let mut ids = self.references.sessions_of(scope, reference).to_vec();
        if let Some(replicated) = &self.replicated {
            ids.extend(replicated.references(scope, reference).await);
        }
        ids
    }

    /// The canonical key of `id` for `account`.
    pub fn key(&self, account: &Account, id: &str) -> Result<Key, FetchError> {
        Ok((account.scope.clone(), account.client.canonical_id(id)?))
    }

    /// Where changes are published, to this cache and the listeners after it.
    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
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
        let kept_until = self.policy.kept_until(&answer, expires_at, now);
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

impl Listener for SessionCache {
    fn changed<'a>(&'a self, change: SessionChanged<'a>) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match change {
                SessionChanged::Stale { key, here } => self.drop_stale(key, here).await,
                // Its own answers, stored already (or refused), and another replica's, stored
                // by whoever read it.
                SessionChanged::Answered { .. } => false,
            }
        })
    }

    /// Drops every local answer: pub/sub reconnected, and messages may have been missed (so
    /// the calls in flight may carry a state another replica was told has changed).
    fn everything_changed(&self) {
        self.flights().values_mut().for_each(|flight| flight.superseded = true);
        self.cache.invalidate_all();
    }
}
