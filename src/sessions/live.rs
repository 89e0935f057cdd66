//! Live sessions: who watches which session, and telling them when its answer changes.
//!
//! Owns: one topic per watched session (account view and id), created by its first watcher
//! and dropped with its last, so that a session nobody watches costs nothing here; and
//! publishing an answer to a topic (only a change wakes anyone). Knows nothing of how answers
//! are fetched: it listens to the cache's changes ([`SessionChanged`]), which carry what
//! providers answer; the service polls, webhooks refresh.

use std::collections::HashMap;
use std::future::ready;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::cache::changes::{Listener, SessionChanged};
use crate::domain::{lock, FetchResult};
use crate::telemetry::metrics::Metrics;

/// Whose view (an account's scope) and which session (its canonical id).
pub type TopicKey = (Arc<str>, Arc<str>);

/// The latest answer a topic has published; `None` until the first.
type Latest = Option<FetchResult>;

#[derive(Debug)]
pub struct Hub {
    topics: Mutex<HashMap<TopicKey, Topic>>,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { topics: Mutex::default(), metrics }
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<TopicKey, Topic>> {
        lock(&self.topics)
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
        (Watch { hub: self.clone(), key, receiver: Some(receiver) }, created)
    }

    /// Whether anyone watches `key`.
    pub fn is_watched(&self, key: &TopicKey) -> bool {
        self.topics().contains_key(key)
    }

    /// Tells `key`'s watchers about `answer`, if anyone watches and it differs from the last
    /// one published. A passing failure (the provider unreachable, a quota) is not news: the
    /// watchers keep the last answer rather than flapping to an error and back.
    fn tell(&self, key: &TopicKey, answer: &FetchResult) {
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
}

impl Listener for Hub {
    /// An answer is told to the session's watchers; a webhook's change is theirs once the
    /// session is fetched again (answered), so it only asks whether anyone watches.
    fn changed<'a>(&'a self, change: SessionChanged<'a>) -> BoxFuture<'a, bool> {
        let watched = match change {
            SessionChanged::Stale { key, .. } => self.is_watched(key),
            SessionChanged::Answered { key, answer } => {
                self.tell(key, answer);
                false
            }
        };
        Box::pin(ready(watched))
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
    use std::time::Duration;

    /// The last watcher leaves while a new one arrives: the poller of the topic must keep
    /// running as long as the topic is in the hub (the new watcher may join it), and stop
    /// once it is removed.
    #[test]
    fn the_poller_stops_only_when_its_topic_is_removed() {
        let hub = Arc::new(Hub::new(Arc::new(Metrics::new())));
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
