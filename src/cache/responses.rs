//! Whole `/graphql` answers, kept for as long as everything in them may be reused.
//!
//! A response is stored only when it carries no error and only sessions that may be reused,
//! and only until the first of them expires: the same lifetime its `Cache-Control` header
//! announces. Within that time the session cache would hand the resolvers the very same
//! sessions, so replaying the serialised bytes gives the same answer without parsing,
//! validating, executing or serialising again. Keyed by the exact request (JSON body, or URL
//! query for GET); bounded in bytes.
//!
//! A session changed by a webhook (here or at another replica) clears it: it listens to the
//! session cache's changes ([`SessionChanged::Stale`]), after the cache has dropped the old
//! state. An answer whose execution began before a clear may hold the state the webhook
//! replaced, so it is never replayed: each answer carries the epoch (the number of clears) its
//! execution began in, and only answers of the current epoch are replayed.

use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use moka::sync::Cache;
use moka::Expiry;

use super::changes::{Listener, SessionChanged};
use crate::telemetry::metrics::Operation;

/// A stored answer, ready to send.
#[derive(Debug)]
pub struct StoredResponse {
    pub body: Bytes,
    pub expires_at: Instant,
    /// The operation's label and series, for metrics on replay.
    pub operation: Arc<Operation>,
    /// Sessions the answer holds, for the access log on replay.
    pub sessions: usize,
    /// How the request passed the trusted documents: who else may be sent this answer.
    pub admitted: Admitted,
    /// The epoch its execution began in ([`ResponseCache::epoch`], taken before it ran).
    pub epoch: u64,
}

struct UntilExpiry;

impl Expiry<Bytes, Arc<StoredResponse>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _: &Bytes,
        value: &Arc<StoredResponse>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(value.expires_at.saturating_duration_since(created_at))
    }
}

#[derive(Debug)]
pub struct ResponseCache {
    cache: Option<Cache<Bytes, Arc<StoredResponse>>>,
    /// How many times it was cleared.
    epoch: AtomicU64,
}

impl ResponseCache {
    /// `max_bytes` of requests and responses at most; 0 turns the cache off.
    pub fn new(max_bytes: u64) -> Self {
        let cache = (max_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &Bytes, value: &Arc<StoredResponse>| {
                    // What an entry really costs: its bytes plus the cache's and our bookkeeping.
                    u32::try_from(key.len() + value.body.len() + value.operation.label.len() + 256)
                        .unwrap_or(u32::MAX)
                })
                .expire_after(UntilExpiry)
                .build()
        });
        Self { cache, epoch: AtomicU64::new(0) }
    }

    /// A stored answer for `key`, if its execution began after the last clear.
    pub fn get(&self, key: &[u8]) -> Option<Arc<StoredResponse>> {
        let stored = self.cache.as_ref()?.get(key)?;
        (stored.epoch == self.epoch()).then_some(stored)
    }

    /// The current epoch: taken before an execution begins, and given to [`Self::insert`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Forgets every stored answer: a webhook changed a session that some may hold, sooner
    /// than their lifetimes said. An execution in flight may hold it too: what it inserts
    /// after this is never replayed.
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
    }

    /// Keeps `stored` under `key` until its `expires_at` (nothing is kept for less than a
    /// second: not worth it), if nothing cleared the cache since its epoch, when its execution
    /// began. Keeps exact copies of `key` and the body: the request's bytes may be a view of a
    /// larger read buffer, and the body's buffer has spare capacity; a kept answer costs what
    /// it weighs.
    pub fn insert(&self, key: &[u8], stored: StoredResponse) {
        let Some(cache) = &self.cache else { return };
        if stored.epoch != self.epoch() {
            return;
        }
        if stored.expires_at.saturating_duration_since(Instant::now()) >= Duration::from_secs(1) {
            let stored = StoredResponse { body: Bytes::copy_from_slice(&stored.body), ..stored };
            cache.insert(Bytes::copy_from_slice(key), Arc::new(stored));
        }
    }
}

impl Listener for ResponseCache {
    /// A webhook's change clears every answer (which hold the session is not kept); a
    /// provider's answer does not: an answer is kept no longer than the sessions it holds.
    fn changed<'a>(&'a self, change: SessionChanged<'a>) -> BoxFuture<'a, bool> {
        if let SessionChanged::Stale { .. } = change {
            self.clear();
        }
        Box::pin(ready(false))
    }

    fn everything_changed(&self) {
        self.clear();
    }
}

/// The `Cache-Control` header for an answer reusable until `until` (`None`: not at all):
/// whole seconds left from now, rounded down, so that no client reuses it past that moment.
pub fn cache_control(until: Option<Instant>) -> String {
    match until {
        Some(until) => {
            format!("private, max-age={}", until.saturating_duration_since(Instant::now()).as_secs())
        }
        None => "no-store".to_owned(),
    }
}

/// How a request passed the trusted documents. A replayed answer skips admission, so it is
/// stored with this, and replayed only to a client the same verdict would admit: the
/// manifest's verdict is the same for the same text (it is read once, at start), the router's
/// exemption holds for the router alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Listed in the manifest, or there is none: any client.
    Listed,
    /// Not listed, and run in log mode: any client, logged again.
    Logged,
    /// Not checked: the router's operation.
    ByRouter,
}
