//! Session answers by type as they leave the gateway, for
//! `checkout_gateway_graphql_answers_total{answer}`: `session`, or the typed error's code as
//! clients read it (`NOT_FOUND`, `PROVIDER_UNAVAILABLE`, …).
//!
//! Owns: each answer's label and when one is counted. Once per session answer a resolver
//! produces: a `checkoutSession`, each `checkoutSessions` member, each `_entities`
//! representation looked up (a failure counts under the `extensions.code` it carries), each
//! subscription update each subscriber is sent (one execution may serve many: `fanout`); and
//! once per session a replayed response holds (one is kept only when every answer in it is a
//! session, so its count of sessions is its count of answers). A request refused as a whole
//! (`BATCH_TOO_LARGE`, a document that does not validate) answers no session: it shows in
//! `graphql_operations_total` only.

use async_graphql::resolver_utils::EnumType;
use prometheus::{IntCounter, IntCounterVec};

use super::types::ErrorCode;
use crate::domain::{self, FetchResult};

/// One counter per label value, resolved once at startup: counting an answer is one atomic
/// add, with no lookup by label on the request's path.
#[derive(Clone, Debug)]
pub struct Answers {
    session: IntCounter,
    /// By `domain::ErrorCode as usize`.
    errors: Vec<IntCounter>,
}

impl Answers {
    /// The counters of `counter` (labelled `answer`), every series created now so that each
    /// is exported (at 0) from the first scrape.
    pub fn new(counter: &IntCounterVec) -> Self {
        // The labels are the schema's own spelling of the codes, so the metric and the
        // answers clients switch on cannot drift apart.
        let mut errors: Vec<(usize, IntCounter)> = ErrorCode::items()
            .iter()
            .map(|item| {
                (domain::ErrorCode::from(item.value) as usize, counter.with_label_values(&[item.name]))
            })
            .collect();
        errors.sort_by_key(|(index, _)| *index);
        assert!(
            errors.iter().enumerate().all(|(at, (index, _))| at == *index),
            "every domain code has exactly one GraphQL code"
        );
        Self {
            session: counter.with_label_values(&["session"]),
            errors: errors.into_iter().map(|(_, counter)| counter).collect(),
        }
    }

    /// Counts one answer leaving the gateway.
    pub fn count(&self, answer: &FetchResult) {
        self.counter(answer).inc();
    }

    /// The counter `answer` is counted by.
    pub fn counter(&self, answer: &FetchResult) -> &IntCounter {
        match answer {
            Ok(_) => &self.session,
            // `new` holds a counter for every code.
            Err(error) => &self.errors[error.code() as usize],
        }
    }

    /// Counts the answers of a replayed response: `sessions`, each a session.
    pub fn replayed(&self, sessions: usize) {
        self.session.inc_by(sessions as u64);
    }
}
