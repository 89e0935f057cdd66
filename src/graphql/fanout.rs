//! One execution for every client that subscribes alike: the same subscription document,
//! operation and variables, asked by the same client with the same rights. Ten thousand
//! dashboards watching one session then cost one GraphQL execution (one watch of the session,
//! one answer built per change), not ten thousand; each subscriber holds only its place in the
//! share: what it has been sent, its permit of its connection's subscription budget, its trail.
//! Before, each held its own async-graphql execution (about 4.6 KB: BENCHMARKS.md, (l)) and
//! built each answer itself.
//!
//! Owns: which subscriptions share (`key_of`), the share's life (it starts with its first
//! subscriber and ends with its last, or when its execution ends), and what each subscriber is
//! sent: the latest answer it has not yet seen, as a slow client of any transport is. A
//! subscriber that joins a running share is sent its latest answer first: the session's
//! current answer, as a subscription's first answer is. Only while that answer is a session
//! fresh from the provider or the cache: a stale one, or an error (the provider unreachable),
//! is not what the joiner's own lookup would find now, so it runs on its own and looks.
//! A shared execution's permit is taken when its subscriber subscribes (its own execution took
//! it when first polled, and not at all for a document that did not validate).
//!
//! Shared only where a subscriber's answers cannot differ from the first one's: a subscription
//! with a single root field (each root field takes one permit of its connection's budget, so a
//! subscriber is charged exactly what its own execution would take), no directive on it. Any
//! other operation, or a subscriber whose connection has no permit left, runs on its own,
//! where the resolver gives its exact answer (`TOO_MANY_SUBSCRIPTIONS` included).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::parser::types::{OperationType, Selection};
use async_graphql::{Data, Request, Response};
use futures::stream::BoxStream;
use futures::StreamExt;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::access::Client;
use crate::domain::lock;
use crate::graphql::pipeline::stream_data;
use crate::graphql::SubscriptionBudget;

/// The running shares, by [`key_of`].
#[derive(Debug)]
pub struct Fanout {
    shares: Mutex<HashMap<Box<[u8]>, Arc<Share>>>,
    /// `checkout_gateway_live_subscriptions`: subscribers, shared or not.
    subscribed: IntGauge,
    /// `checkout_gateway_live_shared_executions`: the executions the shares run.
    executions: IntGauge,
}

/// What a share's execution has published.
#[derive(Debug)]
struct Published {
    /// The latest answer, and the counter of its type (`graphql_answers_total`), counted once
    /// per subscriber it is sent to.
    latest: Option<(Arc<Response>, Option<IntCounter>)>,
    /// How many answers were published.
    count: u64,
    /// The execution ended: a subscriber that has seen the latest answer ends too.
    ended: bool,
    /// A subscriber may join: no answer yet (it will be sent the first, a fresh lookup), or
    /// the latest is a session fresh from the provider or the cache.
    joinable: bool,
}

#[derive(Debug)]
struct Share {
    published: watch::Sender<Published>,
}

/// Put in a shared execution's data: the resolver leaves here the counter of each answer's
/// type instead of counting it (so that it is counted per subscriber sent it), and whether the
/// answer is a fresh session (so that a subscriber may join on it).
#[derive(Debug, Default)]
pub struct SharedRun(Mutex<Option<(IntCounter, bool)>>);

impl SharedRun {
    pub fn answered(&self, counter: &IntCounter, fresh: bool) {
        *lock(&self.0) = Some((counter.clone(), fresh));
    }

    fn take(&self) -> Option<(IntCounter, bool)> {
        lock(&self.0).take()
    }
}

/// One open subscription, as `checkout_gateway_live_subscriptions` counts it.
#[derive(Debug)]
pub struct Subscribed(IntGauge);

impl Subscribed {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A subscriber's place in a share.
struct Subscriber {
    published: watch::Receiver<Published>,
    /// How many of the share's answers it has been sent (or skipped, being slow).
    seen: u64,
    /// Held while it subscribes: its connection's budget, as its own execution would hold.
    _permit: Option<OwnedSemaphorePermit>,
    _subscribed: Subscribed,
}

impl Fanout {
    pub fn new(subscribed: IntGauge, executions: IntGauge) -> Self {
        Self { shares: Mutex::default(), subscribed, executions }
    }

    /// The answers of `request` (gated already; its client in its data or the connection's
    /// `session`): from the share it keys, started with `run` if none runs; else `run` on its
    /// own.
    pub fn subscribe<F>(
        self: &Arc<Self>,
        mut request: Request,
        session: Option<Arc<Data>>,
        run: F,
    ) -> BoxStream<'static, Response>
    where
        F: FnOnce(Request, Option<Arc<Data>>) -> BoxStream<'static, Response>,
    {
        let Some((key, client)) = key_of(&mut request, session.as_deref()) else {
            return run(request, session);
        };
        let budget = stream_data::<SubscriptionBudget>(&request.data, session.as_deref());
        let permit = match budget.map(SubscriptionBudget::take_one) {
            Some(None) => return run(request, session),
            Some(permit) => permit,
            None => None,
        };
        let mut shares = lock(&self.shares);
        let share = match shares.get(&key) {
            Some(share) if share.published.borrow().joinable => share.clone(),
            Some(_) => {
                drop(shares);
                return run(request, session);
            }
            None => {
                let published = Published { latest: None, count: 0, ended: false, joinable: true };
                let share = Arc::new(Share { published: watch::channel(published).0 });
                shares.insert(key.clone(), share.clone());
                // The execution's own data: the client (its rights, who pays for its lookups)
                // and where its answers' types are left; no budget (each subscriber is charged
                // its own) and nothing of the first subscriber's connection.
                let told = Arc::new(SharedRun::default());
                let mut data = Data::default();
                data.insert(client);
                data.insert(told.clone());
                request.data = data;
                let answers = run(request, None);
                let drive = self.clone().drive(key, share.clone(), answers, told);
                // Its upstream calls and log lines carry the first subscriber's request id.
                match crate::telemetry::request_id() {
                    Some(id) => tokio::spawn(crate::telemetry::with_request_id(id, drive)),
                    None => tokio::spawn(drive),
                };
                share
            }
        };
        // Under the lock: the share cannot end between being found and being joined.
        let published = share.published.subscribe();
        drop(shares);
        let subscriber = Subscriber {
            published,
            seen: 0,
            _permit: permit,
            _subscribed: Subscribed::new(&self.subscribed),
        };
        futures::stream::unfold(subscriber, |mut subscriber| async move {
            loop {
                let next = {
                    let published = subscriber.published.borrow_and_update();
                    if published.count > subscriber.seen {
                        subscriber.seen = published.count;
                        published.latest.clone()
                    } else if published.ended {
                        return None;
                    } else {
                        None
                    }
                };
                if let Some((answer, counter)) = next {
                    if let Some(counter) = counter {
                        counter.inc();
                    }
                    return Some((copy(&answer), subscriber));
                }
                // An error: the share is gone, and what it published was read above.
                subscriber.published.changed().await.ok()?;
            }
        })
        .boxed()
    }

    /// Runs a share's execution, publishing each answer, until it ends or nobody subscribes.
    async fn drive(
        self: Arc<Self>,
        key: Box<[u8]>,
        share: Arc<Share>,
        mut answers: BoxStream<'static, Response>,
        told: Arc<SharedRun>,
    ) {
        // Ends the share however this ends: returning, or dropped by a panic in the execution
        // (its subscribers are then told it ended, and the next to subscribe starts anew).
        let _end = Ending { fanout: self.clone(), key: key.clone(), share: share.clone() };
        self.executions.inc();
        loop {
            tokio::select! {
                answer = answers.next() => match answer {
                    Some(answer) => {
                        let (counter, fresh) = told.take().unzip();
                        share.published.send_modify(|published| {
                            published.latest = Some((Arc::new(answer), counter));
                            published.count += 1;
                            published.joinable = fresh.unwrap_or(false);
                        });
                    }
                    None => break,
                },
                () = share.published.closed() => {
                    // Decided under the lock subscribers join under: one joining now either
                    // came first (the share goes on) or finds no share and starts another.
                    let mut shares = lock(&self.shares);
                    if share.published.receiver_count() == 0 {
                        forget(&mut shares, &key, &share);
                        break;
                    }
                }
            }
        }
    }
}

/// Ends a share when its execution's task ends.
struct Ending {
    fanout: Arc<Fanout>,
    key: Box<[u8]>,
    share: Arc<Share>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        let mut shares = lock(&self.fanout.shares);
        self.share.published.send_modify(|published| published.ended = true);
        forget(&mut shares, &self.key, &self.share);
        drop(shares);
        self.fanout.executions.dec();
    }
}

/// Removes `share` from `shares` if it is still the one under `key`.
fn forget(shares: &mut HashMap<Box<[u8]>, Arc<Share>>, key: &[u8], share: &Arc<Share>) {
    if shares.get(key).is_some_and(|running| Arc::ptr_eq(running, share)) {
        shares.remove(key);
    }
}

/// What makes two subscriptions' answers the same, and the client the execution runs as;
/// `None` for an operation that is not shared (see the module's note).
fn key_of(request: &mut Request, session: Option<&Data>) -> Option<(Box<[u8]>, Client)> {
    let client = stream_data::<Client>(&request.data, session)?.clone();
    let wanted = request.operation_name.clone();
    let document = request.parsed_query().ok()?;
    let mut operations = document.operations.iter().filter(|(name, _)| match &wanted {
        Some(wanted) => name.is_some_and(|name| name.as_str() == wanted),
        None => true,
    });
    let (_, operation) = operations.next()?;
    if operations.next().is_some() || operation.node.ty != OperationType::Subscription {
        return None;
    }
    let [field] = operation.node.selection_set.node.items.as_slice() else { return None };
    let Selection::Field(field) = &field.node else { return None };
    if !field.node.directives.is_empty() || field.node.name.node.starts_with("__") {
        return None;
    }
    let variables = serde_json::to_vec(&request.variables).ok()?;
    let mut key = Vec::with_capacity(client.name.len() + request.query.len() + variables.len() + 64);
    for part in [
        client.name.as_bytes(),
        client.rights.fingerprint().as_bytes(),
        &[u8::from(client.via_router), u8::from(client.metered)],
        wanted.as_deref().unwrap_or_default().as_bytes(),
        request.query.as_bytes(),
        &variables,
    ] {
        // Each part's length first: no two different requests make the same key.
        key.extend_from_slice(&part.len().to_le_bytes());
        key.extend_from_slice(part);
    }
    Some((key.into_boxed_slice(), client))
}

/// A subscriber's own copy of a shared answer (async-graphql's `Response` is not `Clone`).
fn copy(answer: &Response) -> Response {
    let mut copy = Response::new(answer.data.clone());
    copy.extensions = answer.extensions.clone();
    copy.cache_control = answer.cache_control;
    copy.errors = answer.errors.clone();
    copy.http_headers = answer.http_headers.clone();
    copy
}
