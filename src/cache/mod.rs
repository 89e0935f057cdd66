//! The answer cache in front of every provider.
//!
//! How long an answer may be reused depends on what it says (PROVIDERS.md): a finished
//! session for long, an open one briefly and never past its own expiry, a not-found very
//! briefly, and an error never. Concurrent misses for one key share one upstream call
//! (`try_get_with`), including calls whose answer is not stored. A call in flight when its
//! session is invalidated (a webhook said it changed) may carry the old state: its answer is
//! then neither stored (here or in the shared tier) nor told to watchers.
//!
//! Owns: the lifetimes ([`CachePolicy`]) and the one session cache, keyed by account scope and id.

pub mod redis;
pub mod responses;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::ops::compute::{CompResult, Op};
use moka::Expiry;

use crate::access::quota::Payer;
use crate::cache::redis::Shared;
use crate::domain::CheckoutSession;
use crate::domain::{CheckoutStatus, FetchError, FetchResult};
use crate::providers::Account;
use crate::sessions::live::{Hub, REFERENCE_TTL};
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
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if flights.get(&self.key).is_some_and(|flight| flight.number == self.number) {
            flights.remove(&self.key);
        }
    }
}

/// How long a replica's lock on asking a provider lasts at most (a replica that dies holding
/// it blocks nobody longer), how long the others wait for its answer before asking
/// themselves, and how often they look.
const LOCK_TTL: Duration = Duration::from_secs(10);
const LOCK_WAIT: Duration = Duration::from_secs(2);
const LOCK_POLL: Duration = Duration::from_millis(20);

/// The version of what this gateway writes to the shared tier; an entry of any other version
/// is skipped (and overwritten), never misread, during a rolling upgrade.
pub const SHARED_FORMAT: u32 = 1;

/// What replicas say to each other over pub/sub.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct Message {
    /// `invalidate` (a webhook came: drop your copy) or `update` (the new answer is shared).
    pub kind: String,
    pub scope: String,
    pub id: String,
    /// The replica that sent it (it ignores its own).
    pub from: String,
}

impl Message {
    fn encode(kind: &str, key: &Key, from: &str) -> Vec<u8> {
        let message = Message {
            kind: kind.to_owned(),
            scope: key.0.to_string(),
            id: key.1.to_string(),
            from: from.to_owned(),
        };
        serde_json::to_vec(&message).unwrap_or_default()
    }
}

/// An entry as the shared tier holds it. Moments are Unix milliseconds: replicas share no
/// monotonic clock.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedEntry {
    v: u32,
    expires_at: i64,
    kept_until: i64,
    asked_at: i64,
    answer: SharedAnswer,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum SharedAnswer {
    Session(Box<SessionRecord>),
    NotFound,
}

/// A session without what the reader knows already (provider, account, id).
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionRecord {
    status: CheckoutStatus,
    provider_status: Option<String>,
    created_at: chrono::DateTime<Utc>,
    expires_at: Option<chrono::DateTime<Utc>>,
    completed_at: Option<chrono::DateTime<Utc>>,
    customer_email: Option<Box<str>>,
    customer_name: Option<Box<str>>,
    payment_id: Option<Box<str>>,
    metadata: Option<serde_json::Value>,
    fetched_at: chrono::DateTime<Utc>,
    details: Option<serde_json::Value>,
}

/// An instant as Unix milliseconds, and back, through the wall clock now.
fn to_unix_ms(at: Instant) -> i64 {
    let (now, wall) = (Instant::now(), Utc::now().timestamp_millis());
    let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if at >= now {
        wall.saturating_add(millis(at - now))
    } else {
        wall.saturating_sub(millis(now - at))
    }
}

/// Moments further ahead than this are read as this far: no lifetime the gateway gives is
/// longer, and an `Instant` cannot hold every `i64` of milliseconds.
const FURTHEST_AHEAD: Duration = Duration::from_secs(31 * 24 * 3600);

fn from_unix_ms(ms: i64) -> Instant {
    let now = Utc::now().timestamp_millis();
    let base = Instant::now();
    if ms >= now {
        base + Duration::from_millis(u64::try_from(ms.saturating_sub(now)).unwrap_or(0)).min(FURTHEST_AHEAD)
    } else {
        base.checked_sub(Duration::from_millis(u64::try_from(now - ms).unwrap_or(0))).unwrap_or(base)
    }
}

/// `None` for what is never shared (errors).
fn encode(entry: &Entry) -> Option<Vec<u8>> {
    let answer = match &entry.answer {
        Ok(session) => SharedAnswer::Session(Box::new(SessionRecord {
            status: session.status,
            provider_status: session.provider_status.as_ref().map(|s| s.to_string()),
            created_at: session.created_at,
            expires_at: session.expires_at,
            completed_at: session.completed_at,
            customer_email: session.customer_email.clone(),
            customer_name: session.customer_name.clone(),
            payment_id: session.payment_id.clone(),
            metadata: session.metadata.as_deref().cloned(),
            fetched_at: session.fetched_at,
            details: session.details.as_ref().and_then(|details| details.to_json()),
        })),
        Err(FetchError::NotFound) => SharedAnswer::NotFound,
        Err(_) => return None,
    };
    let shared = SharedEntry {
        v: SHARED_FORMAT,
        expires_at: to_unix_ms(entry.expires_at),
        kept_until: to_unix_ms(entry.kept_until),
        asked_at: to_unix_ms(entry.asked_at),
        answer,
    };
    serde_json::to_vec(&shared).ok()
}

/// An entry another replica shared, if it is of this format, its moments held to what
/// `policy` allows for its answer: whoever can write to Redis must not make a replica serve an
/// answer longer than the gateway would have kept it.
fn decode(bytes: &[u8], account: &Account, id: &Arc<str>, policy: &CachePolicy) -> Option<Entry> {
    #[derive(serde::Deserialize)]
    struct Version {
        v: u32,
    }
    if serde_json::from_slice::<Version>(bytes).ok()?.v != SHARED_FORMAT {
        return None;
    }
    let shared: SharedEntry = serde_json::from_slice(bytes).ok()?;
    let answer = match shared.answer {
        SharedAnswer::NotFound => Err(FetchError::NotFound),
        SharedAnswer::Session(record) => Ok(Arc::new(CheckoutSession {
            provider: account.kind().name,
            account: account.name().clone(),
            id: id.clone(),
            status: record.status,
            provider_status: record.provider_status.map(std::borrow::Cow::Owned),
            created_at: record.created_at,
            expires_at: record.expires_at,
            completed_at: record.completed_at,
            customer_email: record.customer_email,
            customer_name: record.customer_name,
            payment_id: record.payment_id,
            metadata: record.metadata.map(Box::new),
            fetched_at: record.fetched_at,
            details: record.details.as_ref().and_then(account.kind().details_from_json),
        })),
    };
    let now = Instant::now();
    let expires_at = from_unix_ms(shared.expires_at).min(now + policy.lifetime(&answer).unwrap_or_default());
    let kept_until = from_unix_ms(shared.kept_until).min(policy.kept_until(&answer, expires_at, now));
    Some(Entry { answer, expires_at, kept_until, asked_at: from_unix_ms(shared.asked_at).min(now) })
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
    /// Told every answer a provider gives, so that whoever watches the session hears of it.
    hub: Arc<Hub>,
    /// The tier replicas share, between this cache and the providers; `None`: alone.
    shared: Option<Arc<Shared>>,
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
        Self {
            policy,
            cache,
            calls,
            in_flight: Mutex::default(),
            next_call: AtomicU64::new(0),
            hub,
            shared: None,
            metrics,
        }
    }

    /// Puts the shared tier between this cache and the providers.
    pub fn with_shared(mut self, shared: Arc<Shared>) -> Self {
        self.shared = Some(shared);
        self
    }

    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
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
                let entry = match &self.shared {
                    Some(shared) => {
                        self.through_shared(shared, account, key, fresh, asked_at, &landing).await
                    }
                    None => self.entry(account.client.fetch_session(&key.1).await, asked_at),
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
                    self.hub.publish(key, &entry.answer);
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
        // A panic while holding it leaves the map as it was: still usable.
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// Stops what is stored for `id` from being fresh (a webhook said it changed); it is still
    /// kept for stale-if-error. A lookup from now on asks the provider (and a [`Self::refresh`]
    /// joins it); a call already in flight is not stored. Returns the canonical id when
    /// something was stored or asked for.
    pub async fn invalidate(&self, account: &Account, id: &str) -> Option<Arc<str>> {
        let key = self.key(account, id).ok()?;
        // First, so that what the call in flight writes from now on is refused, and what it
        // wrote before is deleted below.
        let in_flight = self.supersede(&key);
        let mut shared_held = false;
        if let Some(shared) = &self.shared {
            // Every replica's copy goes too: the shared one now, the local ones by message.
            shared_held = shared.delete(&key.0, &key.1).await;
            shared.publish(&Message::encode("invalidate", &key, &shared.replica)).await;
        }
        let held = self.demote(&key).await;
        (held || shared_held || in_flight).then_some(key.1)
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
        if let Some(shared) = &self.shared {
            // The other replicas take the new answer from the shared tier.
            shared.publish(&Message::encode("update", &key, &shared.replica)).await;
        }
    }

    /// Between the local cache and the provider: a fresh answer another replica shared; else
    /// the lock on asking the provider (waiting a bounded while for the replica that holds it
    /// to share its answer); else, or after, the provider, whose answer is shared. `fresh`:
    /// a webhook said the session changed, so nothing shared before may be taken.
    async fn through_shared(
        &self,
        shared: &Shared,
        account: &Account,
        key: &Key,
        fresh: bool,
        asked_at: Instant,
        landing: &Landing<'_>,
    ) -> Entry {
        let label = [account.kind().slug, &**account.name()];
        if !fresh {
            if let Some(entry) = self.read_shared(shared, account, key).await {
                self.metrics.shared_hits.with_label_values(&label).inc();
                return entry;
            }
        }
        let locked = shared.lock(&key.0, &key.1, LOCK_TTL).await;
        if !fresh {
            let shared_answer = match locked {
                // Another replica may have shared its answer and let go of the lock between
                // the read above and taking the lock.
                Some(true) => {
                    let entry = self.read_shared(shared, account, key).await;
                    if entry.is_some() {
                        shared.unlock(&key.0, &key.1).await;
                    }
                    entry
                }
                // Another replica is asking: its answer, if it comes in time.
                Some(false) => self.await_shared(shared, account, key).await,
                None => None,
            };
            if let Some(entry) = shared_answer {
                self.metrics.shared_hits.with_label_values(&label).inc();
                return entry;
            }
        }
        let entry = self.entry(account.client.fetch_session(&key.1).await, asked_at);
        let now = Instant::now();
        if entry.expires_at > now && !self.superseded(landing) {
            if let Some(value) = encode(&entry) {
                shared.put(&key.0, &key.1, &value, to_unix_ms(entry.kept_until)).await;
                // Invalidated while it was being written: the invalidation's delete may have
                // come first.
                if self.superseded(landing) {
                    shared.delete(&key.0, &key.1).await;
                }
            }
        }
        if locked == Some(true) {
            shared.unlock(&key.0, &key.1).await;
        }
        entry
    }

    /// The answer the replica holding `key`'s lock shares, if it does within [`LOCK_WAIT`].
    async fn await_shared(&self, shared: &Shared, account: &Account, key: &Key) -> Option<Entry> {
        let until = Instant::now() + LOCK_WAIT;
        while Instant::now() < until {
            tokio::time::sleep(LOCK_POLL).await;
            if let Some(entry) = self.read_shared(shared, account, key).await {
                return Some(entry);
            }
        }
        None
    }

    /// The answer another replica shared for `key`, if it is of this format and still fresh.
    async fn read_shared(&self, shared: &Shared, account: &Account, key: &Key) -> Option<Entry> {
        let bytes = shared.get(&key.0, &key.1).await?;
        let entry = decode(&bytes, account, &key.1, &self.policy)?;
        (entry.expires_at > Instant::now()).then_some(entry)
    }

    /// Another replica changed `id`'s answer in the shared tier (or says it is about to): the
    /// local copy is dropped or replaced, and watchers here are told. `update`: read the new
    /// one now, where this replica holds or watches the session.
    pub async fn adopt(&self, account: &Account, id: &str, update: bool) {
        let Ok(key) = self.key(account, id) else { return };
        self.supersede(&key);
        let held = self.demote(&key).await;
        if !update || !(held || self.hub.is_watched(&key)) {
            return;
        }
        let Some(shared) = &self.shared else { return };
        if let Some(entry) = self.read_shared(shared, account, &key).await {
            self.cache.insert(key.clone(), entry.clone()).await;
            self.hub.publish(&key, &entry.answer);
        }
    }

    /// Remembers that `reference` (a payment, an escrow) names session `id` in `scope`, here
    /// and for the other replicas.
    pub async fn note_reference(&self, scope: &Arc<str>, reference: &str, id: &Arc<str>) {
        self.hub.note_reference(scope, reference, id);
        if let Some(shared) = &self.shared {
            shared.add_reference(scope, reference, id, REFERENCE_TTL).await;
        }
    }

    /// The sessions this replica, or any other, saw under `reference` in `scope`.
    pub async fn sessions_of(&self, scope: &Arc<str>, reference: &str) -> Vec<Arc<str>> {
        let mut ids = self.hub.sessions_of(scope, reference).to_vec();
        if let Some(shared) = &self.shared {
            ids.extend(shared.references(scope, reference).await.into_iter().map(Arc::from));
        }
        ids
    }

    /// Drops every local answer: pub/sub reconnected, and messages may have been missed (so
    /// the calls in flight may carry a state another replica was told has changed).
    pub fn clear_local(&self) {
        self.flights().values_mut().for_each(|flight| flight.superseded = true);
        self.cache.invalidate_all();
    }

    /// The canonical key of `id` for `account`.
    pub fn key(&self, account: &Account, id: &str) -> Result<Key, FetchError> {
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
