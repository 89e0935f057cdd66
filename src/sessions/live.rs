//! Live sessions: who watches which session, and telling them when its answer changes.
//!
//! Owns: one topic per watched session (account view and id), created by its first watcher
//! and dropped with its last, so that a session nobody watches costs nothing here; publishing
//! an answer to a topic (only a change wakes anyone); and the index from the ids a provider's
//! webhooks name (a payment, an escrow) to the sessions the gateway has seen under them.
//! Knows nothing of how answers are fetched: the cache publishes what providers answer, the
//! service polls, webhooks refresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::FetchResult;
use crate::telemetry::metrics::Metrics;

/// Whose view (an account's scope) and which session (its canonical id).
pub type TopicKey = (Arc<str>, Arc<str>);

/// The latest answer a topic has published; `None` until the first.
type Latest = Option<FetchResult>;

/// Sessions one provider reference (a payment id, an escrow id) may name; a reference with
/// more (an escrow with many sessions) keeps the latest ones.
const SESSIONS_PER_REFERENCE: usize = 64;

/// How long a payment or escrow id keeps naming its sessions (here and in the shared tier):
/// providers redeliver an event for about a day.
pub const REFERENCE_TTL: Duration = Duration::from_secs(48 * 3600);

#[derive(Debug)]
pub struct Hub {
    topics: Mutex<HashMap<TopicKey, Topic>>,
    /// (scope, reference) → session ids, for webhooks that name a payment or an escrow
    /// (keyed like a topic: whose view, and the provider's id).
    references: moka::sync::Cache<TopicKey, Arc<[Arc<str>]>>,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// `references_max`: entries of the reference index; each is kept [`REFERENCE_TTL`].
    pub fn new(references_max: u64, metrics: Arc<Metrics>) -> Self {
        Self {
            topics: Mutex::default(),
            references: moka::sync::Cache::builder()
                .max_capacity(references_max)
                .time_to_live(REFERENCE_TTL)
                .build(),
            metrics,
        }
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<TopicKey, Topic>> {
        self.topics.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts watching `key`. The watcher that creates the topic also gets its [`Abandoned`]
    /// (the caller then decides whether something must poll it while anyone watches).
    pub fn watch(self: &Arc<Self>, key: TopicKey) -> (Watch, Option<Abandoned>) {
        let mut topics = self.topics();
        let (receiver, created) = match topics.get(&key) {
            Some(topic) => (topic.sender.subscribe(), None),
            None => {
                let (sender, receiver) = watch::channel(None);
                let (alive, removed) = watch::channel(());
                topics.insert(key.clone(), Topic { sender, _alive: alive });
                self.metrics.live_sessions.inc();
                (receiver, Some(Abandoned(removed)))
            }
        };
        self.metrics.live_watchers.inc();
        (Watch { hub: self.clone(), key, receiver: Some(receiver) }, created)
    }

    /// Whether anyone watches `key`.
    pub fn is_watched(&self, key: &TopicKey) -> bool {
        self.topics().contains_key(key)
    }

    /// Tells `key`'s watchers about `answer`, if anyone watches and it differs from the last
    /// one published. A passing failure (the provider unreachable, a quota) is not news: the
    /// watchers keep the last answer rather than flapping to an error and back.
    pub fn publish(&self, key: &TopicKey, answer: &FetchResult) {
        if matches!(answer, Err(error) if error.may_serve_stale()) {
            return;
        }
        let topics = self.topics();
        let Some(Topic { sender, .. }) = topics.get(key) else { return };
        let changed = sender.send_if_modified(|latest| {
            if latest.as_ref().is_some_and(|latest| same_answer(latest, answer)) {
                return false;
            }
            *latest = Some(answer.clone());
            true
        });
        if changed {
            self.metrics.live_updates.inc();
        }
    }

    /// Remembers that `reference` (a provider's id for a payment or an escrow) names session
    /// `id` in `scope`.
    pub fn note_reference(&self, scope: &Arc<str>, reference: &str, id: &Arc<str>) {
        let key = (scope.clone(), Arc::from(reference));
        self.references.entry(key).and_upsert_with(|known| match known {
            Some(entry) if entry.value().contains(id) => entry.into_value(),
            Some(entry) => {
                let known = entry.into_value();
                let skip = (known.len() + 1).saturating_sub(SESSIONS_PER_REFERENCE);
                known.iter().skip(skip).cloned().chain([id.clone()]).collect()
            }
            None => Arc::from([id.clone()]),
        });
    }

    /// The sessions seen under `reference` in `scope`.
    pub fn sessions_of(&self, scope: &Arc<str>, reference: &str) -> Arc<[Arc<str>]> {
        self.references.get(&(scope.clone(), Arc::from(reference))).unwrap_or_else(|| Arc::from([]))
    }
}

/// One watched session: its latest answer, for its watchers.
#[derive(Debug)]
struct Topic {
    sender: watch::Sender<Latest>,
    /// Dropped with the topic: that is what resolves its [`Abandoned`].
    _alive: watch::Sender<()>,
}

/// Resolves once the topic it was made with is removed (its last watcher left), even if a
/// new topic for the same session has been opened since. Not once its watchers' count reaches
/// zero: a watcher arriving just then joins this very topic (the count and the removal are
/// decided under the hub's lock), and must find its poller still running.
#[derive(Debug)]
pub struct Abandoned(watch::Receiver<()>);

impl Abandoned {
    pub async fn wait(&self) {
        let mut removed = self.0.clone();
        while removed.changed().await.is_ok() {}
    }
}

/// Whether two answers say the same thing: the same session content (when it was fetched
/// aside), or the same error.
pub fn same_answer(a: &FetchResult, b: &FetchResult) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a.same_content(b),
        (Err(a), Err(b)) => a == b,
        _ => false,
    }
}

/// One watcher of one topic; dropping it leaves, and the last to leave drops the topic.
#[derive(Debug)]
pub struct Watch {
    hub: Arc<Hub>,
    key: TopicKey,
    receiver: Option<watch::Receiver<Latest>>,
}

impl Watch {
    /// The next answer published after the last one this watcher saw.
    pub async fn changed(&mut self) -> Option<FetchResult> {
        let receiver = self.receiver.as_mut()?;
        receiver.changed().await.ok()?;
        receiver.borrow_and_update().clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.hub.metrics.live_watchers.dec();
        let mut topics = self.hub.topics();
        // Dropped under the lock, so that leaving, the count and the removal are one step for
        // a watcher arriving at the same moment: it either joins before (the topic stays) or
        // after (it opens a new topic, with its own poller).
        self.receiver.take();
        if topics.get(&self.key).is_some_and(|topic| topic.sender.receiver_count() == 0) {
            topics.remove(&self.key);
            self.hub.metrics.live_sessions.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// The last watcher leaves while a new one arrives: the poller of the topic must keep
    /// running as long as the topic is in the hub (the new watcher may join it), and stop
    /// once it is removed.
    #[test]
    fn the_poller_stops_only_when_its_topic_is_removed() {
        let hub = Arc::new(Hub::new(16, Arc::new(Metrics::new())));
        let key: TopicKey = (Arc::from("scope"), Arc::from("id"));
        let (watch, abandoned) = hub.watch(key.clone());
        let abandoned = abandoned.expect("the first watcher creates the topic");
        // Held here, the lock stands for a watcher arriving (`Hub::watch` takes it) at the
        // moment the last one leaves on another thread.
        let topics = hub.topics();
        let leaving = std::thread::spawn(move || drop(watch));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            abandoned.wait().now_or_never().is_none(),
            "the poller would stop while its topic is still in the hub: a watcher joining it now \
             would be left without one"
        );
        assert!(topics.contains_key(&key));
        drop(topics);
        leaving.join().unwrap();
        assert!(!hub.is_watched(&key));
        assert!(abandoned.wait().now_or_never().is_some(), "the topic is removed: its poller stops");
    }
}
