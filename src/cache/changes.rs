//! "A session changed": the one event the parts that keep answers listen to, instead of calling
//! each other.
//!
//! A session changes when a webhook says so (to this replica, or to another one, which tells
//! the others over the shared tier) and when its provider gives an answer. The session cache
//! (drops the old state, and tells the other replicas of a webhook here), the replayed
//! responses (forget every answer) and the live hub (tells watchers) each listen.
//!
//! Listeners are a short list, fixed at start, told one after another in the publisher's
//! task, and the publisher waits for them: once [`Changes::publish`] returns, the old state is
//! no longer served (a webhook is answered only then). The session cache is first: it has
//! dropped the old state before the replayed responses are cleared, so an answer built after
//! the clear cannot hold it. (A `tokio::sync::broadcast` would hand each change to a task per
//! listener: later, in no order, and lost when one lags.) Telling a session's watchers costs
//! one send however many there are: the hub's channel per session wakes them all.
//!
//! Owns: the event and the listener list.

use std::fmt;
use std::sync::Weak;

use futures::future::BoxFuture;

use super::Key;
use crate::domain::FetchResult;

/// What happened to one session.
#[derive(Clone, Copy, Debug)]
pub enum SessionChanged<'a> {
    /// A webhook said the session changed: whatever is held of it may be the old state.
    /// `here`: the webhook came to this replica (the other replicas are to be told); else
    /// another replica said so.
    Stale { key: &'a Key, here: bool },
    /// The session's answer now: its provider's, or the one another replica shared.
    Answered { key: &'a Key, answer: &'a FetchResult },
}

/// Something that keeps what a session said.
pub trait Listener: Send + Sync {
    /// Takes in `change`. For [`SessionChanged::Stale`], says whether this replica held, was
    /// asking for or watches the session (then it is fetched again, or the new answer taken).
    fn changed<'a>(&'a self, change: SessionChanged<'a>) -> BoxFuture<'a, bool>;

    /// Any session may have changed: messages from the other replicas may have been missed.
    /// Done at once: it is told from where nothing can wait.
    fn everything_changed(&self) {}
}

/// The listeners, in the order they are told: fixed when the session cache is made.
pub struct Changes {
    /// Weak: the session cache listens, and holds this list.
    listeners: Vec<Weak<dyn Listener>>,
}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Changes").field("listeners", &self.listeners.len()).finish()
    }
}

impl Changes {
    pub(super) fn new(listeners: Vec<Weak<dyn Listener>>) -> Self {
        Self { listeners }
    }

    /// Tells every listener of `change`, one after another; `true` when any held, was asking
    /// for or watches the session.
    pub async fn publish(&self, change: SessionChanged<'_>) -> bool {
        let mut known = false;
        for listener in self.listeners.iter().filter_map(Weak::upgrade) {
            known |= listener.changed(change).await;
        }
        known
    }

    /// Tells every listener that any session may have changed.
    pub fn publish_everything(&self) {
        for listener in self.listeners.iter().filter_map(Weak::upgrade) {
            listener.everything_changed();
        }
    }
}
