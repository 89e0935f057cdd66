//! The cross-replica protocol, in one place: how replicas share answers through the shared
//! tier ([`super::redis`] is its low-level client) and tell each other of changes.
//!
//! - get: a fresh answer another replica shared is taken instead of asking the provider;
//! - lock: one replica asks the provider for a cold session, the others wait a bounded while
//!   for its answer (then ask themselves);
//! - put: the answer is shared, with its moments, unless its call was superseded;
//! - unlock: the lock is let go once the answer is shared (or taken from another replica);
//! - publish: `invalidate` (a webhook came here; the shared copy is deleted first) or `update`
//!   (the new answer is shared);
//! - listen: what the others publish becomes a [`SessionChanged`] here; after a reconnection,
//!   or past a bound of messages at once, every local answer is dropped.
//!
//! Also the reference index's shared half (which sessions a payment or an escrow names).
//!
//! Owns: the format of shared entries ([`SHARED_FORMAT`]) and of messages, the lock's timings,
//! and the handle `/readyz` reads ([`Health`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::changes::SessionChanged;
use super::redis::{Shared, SharedState};
use super::references::REFERENCE_TTL;
use super::{CachePolicy, Entry, Key, SessionCache};
use crate::domain::{CheckoutSession, CheckoutStatus, FetchError};
use crate::providers::Account;
use crate::telemetry::metrics::Metrics;

/// How long a replica's lock on asking a provider lasts at most (a replica that dies holding
/// it blocks nobody longer), how long the others wait for its answer before asking
/// themselves, and how often they look.
const LOCK_TTL: Duration = Duration::from_secs(10);
const LOCK_WAIT: Duration = Duration::from_secs(2);
const LOCK_POLL: Duration = Duration::from_millis(20);

/// The version of what this gateway writes to the shared tier; an entry of any other version
/// is skipped (and overwritten), never misread, during a rolling upgrade.
pub const SHARED_FORMAT: u32 = 1;

/// Messages from other replicas acted on at once, at most.
const ADOPTING_MAX: usize = 64;

/// What replicas say to each other over pub/sub.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct Message {
    /// `invalidate` (a webhook came: drop your copy) or `update` (the new answer is shared).
    kind: String,
    scope: String,
    id: String,
    /// The replica that sent it (it ignores its own).
    from: String,
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

/// This replica's side of the protocol.
#[derive(Debug)]
pub struct Replicated {
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
}

impl Replicated {
    pub fn new(shared: Arc<Shared>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self { shared, metrics })
    }

    /// The shared tier's state, for `/readyz`.
    pub fn health(&self) -> Health {
        Health(self.shared.clone())
    }

    /// Between the local cache and the provider: a fresh answer another replica shared; else
    /// the lock on asking the provider (waiting a bounded while for the replica that holds it
    /// to share its answer); else, or after, `provider`, whose answer is shared unless
    /// `superseded` says its session was invalidated meanwhile. `fresh`: a webhook said the
    /// session changed, so nothing shared before may be taken.
    pub(super) async fn ask(
        &self,
        account: &Account,
        key: &Key,
        fresh: bool,
        policy: &CachePolicy,
        provider: impl Future<Output = Entry>,
        superseded: impl Fn() -> bool,
    ) -> Entry {
        let shared = &self.shared;
        let label = [account.kind().slug, &**account.name()];
        if !fresh {
            if let Some(entry) = self.read(account, key, policy).await {
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
                    let entry = self.read(account, key, policy).await;
                    if entry.is_some() {
                        shared.unlock(&key.0, &key.1).await;
                    }
                    entry
                }
                // Another replica is asking: its answer, if it comes in time.
                Some(false) => self.await_answer(account, key, policy).await,
                None => None,
            };
            if let Some(entry) = shared_answer {
                self.metrics.shared_hits.with_label_values(&label).inc();
                return entry;
            }
        }
        let entry = provider.await;
        if entry.expires_at > Instant::now() && !superseded() {
            if let Some(value) = encode(&entry) {
                shared.put(&key.0, &key.1, &value, to_unix_ms(entry.kept_until)).await;
                // Invalidated while it was being written: the invalidation's delete may have
                // come first.
                if superseded() {
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
    async fn await_answer(&self, account: &Account, key: &Key, policy: &CachePolicy) -> Option<Entry> {
        let until = Instant::now() + LOCK_WAIT;
        while Instant::now() < until {
            tokio::time::sleep(LOCK_POLL).await;
            if let Some(entry) = self.read(account, key, policy).await {
                return Some(entry);
            }
        }
        None
    }

    /// The answer another replica shared for `key`, if it is of this format and still fresh.
    async fn read(&self, account: &Account, key: &Key, policy: &CachePolicy) -> Option<Entry> {
        let bytes = self.shared.get(&key.0, &key.1).await?;
        let entry = decode(&bytes, account, &key.1, policy)?;
        (entry.expires_at > Instant::now()).then_some(entry)
    }

    /// A webhook here said `key`'s session changed: the shared copy goes now, and the other
    /// replicas are told to drop theirs. `true` when there was a shared copy.
    pub(super) async fn forget(&self, key: &Key) -> bool {
        let held = self.shared.delete(&key.0, &key.1).await;
        self.shared.publish(&Message::encode("invalidate", key, &self.shared.replica)).await;
        held
    }

    /// `key`'s new answer is shared: the other replicas take it where they hold or watch it.
    pub(super) async fn announce(&self, key: &Key) {
        self.shared.publish(&Message::encode("update", key, &self.shared.replica)).await;
    }

    /// Remembers, for every replica, that `reference` names session `id` in `scope`.
    pub(super) async fn note_reference(&self, scope: &str, reference: &str, id: &str) {
        self.shared.add_reference(scope, reference, id, REFERENCE_TTL).await;
    }

    /// Sessions any replica saw under `reference` in `scope` (a bounded sample).
    pub(super) async fn references(&self, scope: &str, reference: &str) -> Vec<Arc<str>> {
        self.shared.references(scope, reference).await.into_iter().map(Arc::from).collect()
    }

    /// Acts on what other replicas publish, for as long as the process runs: each message of
    /// theirs about an account here is a [`SessionChanged::Stale`] for `cache`'s listeners
    /// (and for an `update`, the shared answer is taken where the session is held or watched).
    /// After a reconnection every local answer is dropped: messages may have been missed.
    pub fn listen(self: &Arc<Self>, cache: &Arc<SessionCache>, accounts: &[Arc<Account>]) {
        let (told, reconnected) = (cache.clone(), cache.clone());
        let accounts = accounts.to_vec();
        let replica = self.shared.replica.clone();
        // Messages are acted on a bounded number at a time: a flood (from a replica, or from
        // whoever can publish on the channel) cannot start unbounded work. Past the bound,
        // every local answer is dropped at once, as after a reconnection: nothing stale is
        // served, and that costs nothing per message.
        let working = Arc::new(tokio::sync::Semaphore::new(ADOPTING_MAX));
        self.shared.listen(
            move |bytes| {
                let Ok(message) = serde_json::from_slice::<Message>(&bytes) else { return };
                if message.from == replica || !matches!(message.kind.as_str(), "invalidate" | "update") {
                    return;
                }
                let Some(account) = accounts.iter().find(|a| *a.scope == *message.scope).cloned() else {
                    return;
                };
                let Ok(permit) = working.clone().try_acquire_owned() else {
                    told.changes().publish_everything();
                    return;
                };
                let cache = told.clone();
                tokio::spawn(async move {
                    cache.told_by_replica(&account, &message.id, message.kind == "update").await;
                    drop(permit);
                });
            },
            move || reconnected.changes().publish_everything(),
        );
    }
}

impl SessionCache {
    /// Another replica changed `id`'s answer in the shared tier (or says it is about to): the
    /// local copy stops being served, and the listeners here are told. `update`: the new
    /// answer is read now, where this replica holds, asks for or watches the session.
    async fn told_by_replica(&self, account: &Account, id: &str, update: bool) {
        let Ok(key) = self.key(account, id) else { return };
        let known = self.changes.publish(SessionChanged::Stale { key: &key, here: false }).await;
        let Some(replicated) = self.replicated.as_ref().filter(|_| update && known) else { return };
        if let Some(entry) = replicated.read(account, &key, &self.policy).await {
            self.cache.insert(key.clone(), entry.clone()).await;
            self.changes.publish(SessionChanged::Answered { key: &key, answer: &entry.answer }).await;
        }
    }
}

/// The shared tier's state, and nothing else of it: what `/readyz` reports.
#[derive(Clone, Debug)]
pub struct Health(Arc<Shared>);

impl Health {
    /// Answering, or failing (the breaker is open: this replica works alone meanwhile).
    pub fn state(&self) -> SharedState {
        self.0.state()
    }

    /// Whether pub/sub is subscribed now.
    pub fn is_listening(&self) -> bool {
        self.0.is_listening()
    }
}
