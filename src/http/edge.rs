//! The HTTP edge at the connection level: accepting, bounding, timing out and draining
//! connections. (Requests are `server`'s.)
//!
//! Owns: how many connections are served at once (a WebSocket keeps its place for as long as it
//! is open), how long a client may take to send its headers, how long a connection may idle,
//! and how connections leave during a shutdown so that pooled clients lose nothing:
//! from the first moment of shutdown HTTP/2 connections get GOAWAY (and HTTP/1.1 responses
//! carry `Connection: close`, added by `server`), so clients move off while the listener still
//! serves; only then is the listener closed and what is left shut down gracefully.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use futures::future::BoxFuture;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::domain::lock;

/// Where a shutdown stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Serving,
    /// Not ready: clients are asked to move off; the listener still accepts.
    Draining,
    /// The listener is closed; connections finish what they started and close.
    Closing,
}

#[derive(Clone, Copy, Debug)]
pub struct EdgeLimits {
    /// Connections served at once; past it, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (slow-header attacks hold a connection
    /// for nothing); a new connection's first request included, whatever its protocol.
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight is kept.
    pub idle_timeout: Duration,
}

/// A connection's place among the `max_connections`. An upgrade request carries it (in its
/// extensions) to the WebSocket it becomes, which holds it until it closes: the HTTP
/// connection itself ends at the upgrade.
#[derive(Clone, Debug)]
pub struct ConnectionSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

/// The first bytes of an HTTP/2 connection without TLS (prior knowledge, as routers use).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Serves `router` on `listener` until `phase` reaches `Closing`; then waits for every
/// connection (WebSockets included) to finish (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: EdgeLimits,
    mut phase: watch::Receiver<Phase>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper times each request's head from the moment the connection waits for it, the end of
    // the previous response included: an idle HTTP/1.1 connection also closes after this.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Finds peers that vanished without closing: their streams would hold slots forever.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // A free slot first, then a connection: past the bound, new ones wait in the backlog.
        let next = async {
            let slot = slots.clone().acquire_owned().await.ok()?;
            Some(listener.accept().await.map(|(stream, _)| (stream, slot)))
        };
        let accepted = tokio::select! {
            biased;
            _ = phase.wait_for(|now| *now == Phase::Closing) => break,
            next = next => match next {
                Some(accepted) => accepted,
                None => break,
            },
        };
        let (stream, slot) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (builder, router, phase) = (builder.clone(), router.clone(), phase.clone());
        let slot = ConnectionSlot { _permit: Arc::new(slot) };
        tokio::spawn(async move {
            connection(stream, &builder, router, phase, limits, slot).await;
        });
    }
    drop(listener);
    // Every slot back means every connection is done.
    let _ = slots.acquire_many(limits.max_connections as u32).await;
}

async fn connection(
    stream: TcpStream,
    builder: &Builder<TokioExecutor>,
    router: Router,
    mut phase: watch::Receiver<Phase>,
    limits: EdgeLimits,
    slot: ConnectionSlot,
) {
    // The first request's head is due by then, however the client spends the time: silent,
    // a part of the HTTP/2 preface (hyper's version detection would wait for the rest
    // forever), or a part of a head.
    let first_request_by = Instant::now() + limits.header_read_timeout;
    let Some(is_h2) = opens_with_h2_preface(&stream, first_request_by).await else { return };
    let activity = Arc::new(Activity::new());
    let service = Tracked { inner: TowerToHyperService::new(router), activity: activity.clone(), slot };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // When to ask the connection to finish; `None` until shutdown reaches it.
    let mut shutdown_at: Option<Instant> = None;
    let mut shutting = false;
    // Asked to finish because it idled: a peer that does not complete the close by then (an
    // HTTP/2 one that never answers the GOAWAY's ping) is dropped.
    let mut idle_close_by: Option<Instant> = None;
    loop {
        let deadline = shutdown_at;
        // The idle clock is read lazily: requests do not wake this task (a timer set and
        // cancelled per request cost a fifth of `/livez`); when it fires, it looks whether the
        // connection really idled that long, and otherwise sets itself for the next moment it
        // could have.
        let idle_at = match idle_close_by {
            Some(by) => Some(by),
            // Shutting down: still, a connection that never sent a request does not stay.
            None if shutting => (!activity.has_served()).then_some(first_request_by),
            None => Some(activity.next_look(first_request_by, limits.idle_timeout)),
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = until(deadline), if !shutting => {
                conn.as_mut().graceful_shutdown();
                shutting = true;
            }
            () = until(idle_at) => {
                let now = Instant::now();
                if idle_close_by.is_some() {
                    if activity.is_idle() {
                        // The close was asked and not completed: nothing to be graceful about.
                        return;
                    }
                    // A request is still being answered: it gets its time.
                    idle_close_by = Some(now + limits.header_read_timeout);
                    continue;
                }
                if !activity.has_served() {
                    if now >= first_request_by {
                        // No request came in time.
                        return;
                    }
                    continue;
                }
                let idle_until = activity.idle_deadline(first_request_by, limits.idle_timeout);
                // A request may have come and gone since the deadline was set.
                if idle_until.is_some_and(|at| at <= Instant::now()) {
                    conn.as_mut().graceful_shutdown();
                    shutting = true;
                    idle_close_by = Some(Instant::now() + limits.header_read_timeout);
                }
            }
            changed = phase.changed(), if shutdown_at.is_none() => {
                let now = *phase.borrow();
                // HTTP/2 clients are told at once (GOAWAY) and open new connections elsewhere;
                // HTTP/1.1 ones read `Connection: close` on their next response and do the same.
                // When the listener closes, an HTTP/1.1 connection still open gets a moment:
                // a request already on its way is answered, not cut.
                if changed.is_err() || (now == Phase::Draining && is_h2) {
                    shutdown_at = Some(Instant::now());
                } else if now == Phase::Closing {
                    shutdown_at = Some(Instant::now() + CLOSE_LINGER);
                }
            }
        }
    }
}

/// Sleeps until `at`; forever when there is none.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether the connection opens with HTTP/2's preface (prior knowledge); `None` when it is
/// closed, or has not shown which by `deadline` (silent, or a part of the preface only).
async fn opens_with_h2_preface(stream: &TcpStream, deadline: Instant) -> Option<bool> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut first)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        if first[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        // A part of the preface: `peek` answers at once while it waits, so look again a moment
        // later (clients send the preface in one write: this is rare).
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long an HTTP/1.1 connection left open when the listener closes may still receive the
/// request a client had already sent.
const CLOSE_LINGER: Duration = Duration::from_millis(250);

/// What a connection's requests tell its task: how many are open (a request is open from its
/// head until its response body ends, so a Server-Sent Events stream keeps its connection),
/// and since when none is.
#[derive(Debug)]
struct Activity {
    usage: Mutex<Usage>,
}

#[derive(Debug)]
struct Usage {
    open: usize,
    served: bool,
    idle_since: Instant,
}

impl Activity {
    fn new() -> Self {
        Self { usage: Mutex::new(Usage { open: 0, served: false, idle_since: Instant::now() }) }
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        lock(&self.usage)
    }

    fn open(self: &Arc<Self>) -> Open {
        let mut usage = self.usage();
        usage.open += 1;
        usage.served = true;
        Open(self.clone())
    }

    fn is_idle(&self) -> bool {
        self.usage().open == 0
    }

    fn has_served(&self) -> bool {
        self.usage().served
    }

    /// When to look again whether the connection idled: when it would have, if nothing
    /// happens meanwhile (before its first request, the first request's deadline, or sooner:
    /// the first request may come and go); while a request is open, one idle timeout on.
    fn next_look(&self, first_request_by: Instant, idle_timeout: Duration) -> Instant {
        let soonest = Instant::now() + idle_timeout;
        let usage = self.usage();
        match (usage.open, usage.served) {
            (0, false) => first_request_by.min(soonest),
            (0, true) => usage.idle_since + idle_timeout,
            _ => soonest,
        }
    }

    /// When the connection is to close for want of requests; `None` while one is open.
    fn idle_deadline(&self, first_request_by: Instant, idle_timeout: Duration) -> Option<Instant> {
        let usage = self.usage();
        match (usage.open, usage.served) {
            (0, false) => Some(first_request_by),
            (0, true) => Some(usage.idle_since + idle_timeout),
            _ => None,
        }
    }
}

/// One open request; it ends when dropped (with the response body, or the cancelled call).
#[derive(Debug)]
struct Open(Arc<Activity>);

impl Drop for Open {
    fn drop(&mut self) {
        let mut usage = self.0.usage();
        usage.open -= 1;
        if usage.open == 0 {
            usage.idle_since = Instant::now();
        }
    }
}

/// The router, with each request counted open until its response body ends.
#[derive(Clone)]
struct Tracked {
    inner: TowerToHyperService<Router>,
    activity: Arc<Activity>,
    slot: ConnectionSlot,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = hyper::Response<TrackedBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        let open = self.activity.open();
        if request.headers().contains_key(hyper::header::UPGRADE) {
            request.extensions_mut().insert(self.slot.clone());
        }
        let response = hyper::service::Service::call(&self.inner, request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody { body, _open: open }))
        })
    }
}

/// A response body that keeps its request open until it ends.
struct TrackedBody {
    body: axum::body::Body,
    _open: Open,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
