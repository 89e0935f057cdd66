//! Subscriptions (and any operation a client wants streamed): over WebSocket on `/graphql` and
//! `/ws` (`graphql-transport-ws` and the older `graphql-ws`, as Apollo Router and graphql-ws
//! clients speak them), and over Server-Sent Events on `/graphql` (GraphQL over SSE, distinct
//! connections: Hive Gateway's default for subgraphs). Subscriptions over HTTP callbacks
//! (`callback`) run through the same slots, budget and pipeline.
//!
//! Owns: how many stream connections are open at once (a WebSocket counts once its client is
//! admitted), how long a WebSocket may wait for `connection_init`, how large a message it may
//! send, how many subscriptions it may run, the idle ping, closing streams at shutdown (so
//! clients reconnect to another replica). Each streamed operation runs through the same
//! pipeline as one sent over HTTP (`graphql::pipeline`: admission, the document, its shape,
//! its own request scope, its trail); streams add the per-connection subscription budget.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_graphql::http::{WebSocket, WebSocketProtocols as Protocols, WsMessage, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql::Data;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use prometheus::IntGauge;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::access::{bearer_credential, Access, Client, Denied};
use crate::graphql::pipeline::{client_in, Pipeline};
use crate::graphql::SubscriptionBudget;
use crate::http::edge::{ConnectionSlot, Phase};
use crate::http::refusal::{refuse, Code};
use crate::http::AppState;
use crate::telemetry::metrics::Metrics;

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("max_connections", &self.max_connections)
            .field("per_connection", &self.per_connection)
            .field("ping", &self.ping)
            .field("init_timeout", &self.init_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish_non_exhaustive()
    }
}

/// What stream connections share.
#[derive(Clone)]
pub struct Streams {
    /// How each operation runs: the same gate as HTTP's.
    pipeline: Pipeline,
    /// One permit per admitted WebSocket connection, open SSE stream or running callback
    /// subscription.
    connections: Arc<Semaphore>,
    max_connections: usize,
    per_connection: usize,
    ping: Duration,
    init_timeout: Duration,
    max_message_bytes: usize,
    phase: watch::Receiver<Phase>,
    access: Arc<Access>,
    metrics: Arc<Metrics>,
}

/// Stream limits, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    pub max_connections: usize,
    pub per_connection: usize,
    pub ping: Duration,
    /// Time a WebSocket client has to send `connection_init`.
    pub init_timeout: Duration,
    /// The largest WebSocket message (and frame) a client may send.
    pub max_message_bytes: usize,
}

impl Streams {
    pub fn new(
        pipeline: Pipeline,
        limits: StreamLimits,
        phase: watch::Receiver<Phase>,
        access: Arc<Access>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            pipeline,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            max_connections: limits.max_connections,
            per_connection: limits.per_connection,
            ping: limits.ping,
            init_timeout: limits.init_timeout,
            max_message_bytes: limits.max_message_bytes,
            phase,
            access,
            metrics,
        }
    }

    /// A connection slot, counted in `/metrics` while held; `None` when all are taken.
    pub(super) fn open(&self, transport: &str) -> Option<Slot> {
        let permit = self.connections.clone().try_acquire_owned().ok()?;
        let gauge = self.metrics.subscription_connections.with_label_values(&[transport]);
        gauge.inc();
        Some(Slot { _permit: permit, gauge })
    }

    pub(super) fn full(&self) -> Response {
        refuse(
            Code::SubscriptionsFull,
            &format!(
                "{} subscription connections are open, the most this gateway serves \
                 (GATEWAY_MAX_SUBSCRIPTION_CONNECTIONS); try another replica or later",
                self.max_connections
            ),
        )
    }

    /// Resolves when the server stops serving: streams end so clients move to another replica.
    pub(super) fn closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut phase = self.phase.clone();
        async move {
            let _ = phase.wait_for(|now| *now == Phase::Closing).await;
        }
    }

    /// Upgrades to a WebSocket speaking whichever GraphQL protocol the client asked for.
    /// A browser page from another site may open a WebSocket here (browsers apply no CORS to
    /// them): a request whose `Origin` is not this host is refused.
    ///
    /// Until its client is admitted (`connection_init` accepted) a socket holds no stream slot:
    /// it is bounded by its connection's place among GATEWAY_MAX_CONNECTIONS (`connection`,
    /// held until the socket closes), the init timeout (4408, as graphql-transport-ws says) and
    /// the message size bound (1009).
    pub fn websocket(
        &self,
        headers: &HeaderMap,
        upgrade: WebSocketUpgrade,
        protocol: Protocols,
        client: Option<Client>,
        connection: Option<ConnectionSlot>,
    ) -> Response {
        if !same_origin(headers) {
            return refuse(Code::ForbiddenOrigin, "a WebSocket from a page of another site is not accepted");
        }
        // A replica that is full says so at once (503, another replica may have room); the
        // slot itself is taken at admission.
        if self.connections.available_permits() == 0 {
            return self.full();
        }
        let (pipeline, per_connection, ping) = (self.pipeline.clone(), self.per_connection, self.ping);
        let (access, streams, init_timeout) = (self.access.clone(), self.clone(), self.init_timeout);
        let closing = self.closing();
        upgrade
            .protocols(ALL_WEBSOCKET_PROTOCOLS)
            // A subscription document is small; tungstenite's defaults (64 MiB messages, 16 MiB
            // frames) would be buffered whole before anything reads them.
            .max_message_size(self.max_message_bytes)
            .max_frame_size(self.max_message_bytes)
            // tungstenite's default read buffer (128 KiB) is zeroed to its full size on every
            // read attempt: each socket kept it resident, and each update sent cost a 128 KiB
            // memset when the protocol task polled its input again (BENCHMARKS.md, (l)).
            .read_buffer_size(WS_READ_BUFFER_BYTES)
            .on_upgrade(move |socket| async move {
                let _connection = connection;
                let handshake = Arc::new(Handshake::default());
                let (mut sink, incoming) = socket.split();
                // A message over the bound ends the input with tungstenite's capacity error and
                // nothing else: the socket is closed with 1009 below.
                let oversize = handshake.clone();
                let incoming = incoming.inspect(move |read| {
                    if read.as_ref().is_err_and(is_too_big) {
                        let _ = oversize.verdict.set(CloseFrame { code: 1009, reason: "message too big".into() });
                    }
                });
                // Text and binary messages are the protocol's; tungstenite answers pings itself,
                // and a close (or a read error: over the size bound, a broken socket) ends the
                // input.
                let input = incoming
                    .take_while(|read| std::future::ready(read.is_ok()))
                    .filter_map(|read| std::future::ready(match read {
                        Ok(message @ (Message::Text(_) | Message::Binary(_))) => Some(message.into_data()),
                        _ => None,
                    }));
                let admitted = handshake.clone();
                let protocol = WebSocket::new(pipeline, input, protocol)
                    .on_connection_init(move |payload| async move {
                        admitted.received.store(true, Ordering::Relaxed);
                        let client = match client {
                            Some(client) => client,
                            // Not in the upgrade's headers: in the payload, as browsers and
                            // Hive Router (the headers it sends this subgraph) put them.
                            None => {
                                let (secret, credential) = payload_credentials(&payload);
                                access.admit(secret, credential).await.map_err(|denied| {
                                    async_graphql::Error::new(denied.message())
                                })?
                            }
                        };
                        let Some(slot) = streams.open("websocket") else {
                            // 1013 "try again later": another replica may have room.
                            let reason = "subscription connections are all taken; try again later";
                            let _ = admitted.verdict.set(CloseFrame { code: 1013, reason: reason.into() });
                            return Err(async_graphql::Error::new(reason));
                        };
                        let _ = admitted.slot.set(slot);
                        if let Some(at) = client.expires_at {
                            let _ = admitted.expires_at.set(at);
                        }
                        let mut data = Data::default();
                        data.insert(SubscriptionBudget::new(per_connection));
                        data.insert(client);
                        Ok(data)
                    });
                // One loop, in the socket's one task, writes what the protocol answers, the
                // pings and the closes: an update costs one wake-up of this task and one write,
                // with no queue between the protocol and the socket. While a write waits on a
                // slow client the protocol is not polled: its subscriptions keep only their
                // latest answer meanwhile (the live hub's), as SSE and callbacks do.
                // A peer that takes no message for a whole ping interval is not reading: it is
                // given up, so that nothing (a shutdown's close included) waits on it.
                let mut pings = tokio::time::interval_at(tokio::time::Instant::now() + ping, ping);
                let init_by = tokio::time::sleep(init_timeout);
                tokio::pin!(closing, init_by, protocol);
                let mut awaiting_init = true;
                // How the socket closes: the frame the loop ends on; `None`, a plain close.
                let close = loop {
                    // Known once the client is admitted (the ack that follows wakes this loop).
                    let expiry = handshake.expires_at.get().copied();
                    tokio::select! {
                        message = protocol.next() => match message {
                            Some(WsMessage::Text(text)) => if !deliver(&mut sink, Message::Text(text.into()), ping).await { return },
                            // The protocol ends (or closes): with the gateway's own code
                            // (1009, 1013) if it has one.
                            Some(WsMessage::Close(code, reason)) => {
                                break handshake.verdict.get().cloned().or(Some(CloseFrame { code, reason: reason.into() }))
                            }
                            None => break handshake.verdict.get().cloned(),
                        },
                        _ = pings.tick() => if !deliver(&mut sink, Message::Ping(Bytes::new()), ping).await { return },
                        () = &mut init_by, if awaiting_init => {
                            awaiting_init = false;
                            if !handshake.received.load(Ordering::Relaxed) {
                                break Some(CloseFrame { code: 4408, reason: "Connection initialisation timeout".into() });
                            }
                        }
                        // The credential proves nothing any more: the client reconnects with a
                        // fresh one.
                        () = until(expiry) => break Some(CloseFrame { code: 4401, reason: "Unauthorized: the token has expired".into() }),
                        // 1001 "going away": clients reconnect, to another replica.
                        () = &mut closing => break Some(CloseFrame { code: 1001, reason: "the server is shutting down".into() }),
                    }
                };
                match close {
                    Some(frame) => {
                        let _ = deliver(&mut sink, Message::Close(Some(frame)), ping).await;
                    }
                    None => {
                        let _ = tokio::time::timeout(ping, sink.close()).await;
                    }
                }
            })
    }

    /// Runs `request` as a stream of Server-Sent Events: `next` per result, then `complete`.
    /// The stream's sessions are bounded like a WebSocket connection's: one operation may
    /// watch many through aliases.
    /// A stream opened with a credential that expires (a JWT) ends with an error event then.
    pub fn sse(&self, request: async_graphql::Request) -> Response {
        let Some(slot) = self.open("sse") else { return self.full() };
        let (results, expires_at) = self.answers(request);
        let results = results.take_until(until(expires_at));
        let expired = futures::stream::once(async move {
            expires_at
                .filter(|at| Instant::now() >= *at)
                .map(|_| async_graphql::Response::from_errors(vec![token_expired()]))
        })
        .filter_map(std::future::ready);
        let results = results.chain(expired).map(|response| {
            let event = Event::default().event("next");
            Ok::<_, Infallible>(event.json_data(&response).unwrap_or_else(|_| {
                Event::default()
                    .event("next")
                    .data(r#"{"errors":[{"message":"the result could not be serialised"}]}"#)
            }))
        });
        let complete = futures::stream::once(async { Ok(Event::default().event("complete").data("")) });
        let events = results.chain(complete).take_until(self.closing()).map(move |event| {
            // Held while the stream is open.
            let _held = &slot;
            event
        });
        Sse::new(events).keep_alive(KeepAlive::new().interval(self.ping).text("ping")).into_response()
    }

    /// `request` (its client in its data) run through the pipeline as one stream's answers,
    /// with the per-connection watch budget; and when its client's credential expires, if it
    /// does (the stream ends then).
    pub(super) fn answers(
        &self,
        request: async_graphql::Request,
    ) -> (BoxStream<'static, async_graphql::Response>, Option<Instant>) {
        let expires_at = client_in(&request.data).and_then(|client| client.expires_at);
        let request = request.data(SubscriptionBudget::new(self.per_connection));
        (self.pipeline.stream(request, None), expires_at)
    }
}

/// The error a stream ends with when its client's credential expired.
pub(super) fn token_expired() -> async_graphql::ServerError {
    async_graphql::ServerError::new("the token has expired: subscribe again with a fresh one", None)
}

/// A WebSocket for subscriptions (`/ws`, Apollo Router's default subgraph path, and
/// `/graphql`).
pub(super) async fn websocket(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    // The connection's place among GATEWAY_MAX_CONNECTIONS, kept by the WebSocket it becomes.
    let slot = parts.extensions.remove::<ConnectionSlot>();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &state).await;
    let protocol = protocol_of(&parts.headers);
    // Credentials in the upgrade's headers (routers, servers), or else in the protocol's
    // `connection_init` payload (browsers cannot set headers on a WebSocket).
    let client = match state.access.authenticate(&parts.headers).await {
        Ok(client) => Some(client),
        Err(Denied::Missing) => None,
        Err(denied) => return refuse(Code::Unauthenticated, &denied.message()),
    };
    match (upgrade, protocol) {
        (Ok(upgrade), Some(protocol)) => state.streams.websocket(&parts.headers, upgrade, protocol, client, slot),
        _ => refuse(
            Code::BadRequest,
            "a WebSocket upgrade with the `graphql-transport-ws` (or `graphql-ws`) subprotocol is expected here",
        ),
    }
}

/// How much a WebSocket reads from its socket at once, and what it keeps allocated for it (each
/// socket holds it for its whole life: at 10,000 sockets every KiB here is 10 MiB). Clients send
/// `connection_init`, `subscribe`, `ping` and `complete`, most smaller than this; a larger
/// message (a router's long subscription document) is still read whole, in more reads.
const WS_READ_BUFFER_BYTES: usize = 512;

/// What a WebSocket's protocol task and its writer share.
#[derive(Default)]
struct Handshake {
    /// `connection_init` came: the init timeout no longer applies.
    received: AtomicBool,
    /// The stream slot, taken once the client is admitted; held until the socket closes.
    slot: OnceLock<Slot>,
    /// How the socket closes when the gateway decided it (1009, 1013) rather than the protocol.
    verdict: OnceLock<CloseFrame>,
    /// When the admitted client's credential expires (a JWT's `exp`): the socket closes then.
    expires_at: OnceLock<Instant>,
}

/// Resolves at `at`; never without one.
pub(super) async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Writes one message, within `within`; false when the socket is gone or not reading.
async fn deliver<S>(sink: &mut S, message: Message, within: Duration) -> bool
where
    S: futures::Sink<Message> + Unpin,
{
    matches!(tokio::time::timeout(within, sink.send(message)).await, Ok(Ok(())))
}

/// Whether a read failed because the message (or a frame) is over the bound.
fn is_too_big(error: &axum::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        .is_some_and(|error| matches!(error, tungstenite::Error::Capacity(_)))
}

/// A stream connection's place among the open ones.
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The router secret and the bearer credential of a `connection_init` payload, as
/// `(Router-Authorization, Authorization's credential)`. Names in any case, at the top
/// (`{"Authorization": "Bearer …"}` from GraphiQL and graphql-ws clients; the headers Hive
/// Router sends this subgraph, `{"router-authorization": "…", "authorization": "Bearer …"}`),
/// else inside `headers` or `connectionParams` (Apollo Router's shape). A `null` payload has
/// neither.
fn payload_credentials(payload: &serde_json::Value) -> (Option<&str>, Option<&str>) {
    let places = [Some(payload), payload.get("headers"), payload.get("connectionParams")];
    let find = |name: &str| places.iter().flatten().find_map(|object| payload_field(object, name));
    (find("router-authorization"), find("authorization").and_then(bearer_credential))
}

/// A non-empty string field of a JSON object, its name in any case (as header names are).
fn payload_field<'a>(object: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    let (_, value) = object.as_object()?.iter().find(|(key, _)| key.eq_ignore_ascii_case(name))?;
    value.as_str().map(str::trim).filter(|value| !value.is_empty())
}

/// No `Origin` (not a browser), or one naming the host the request was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(axum::http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

/// The first GraphQL protocol of those a WebSocket upgrade offers (`Sec-WebSocket-Protocol`).
fn protocol_of(headers: &HeaderMap) -> Option<Protocols> {
    let offered = headers.get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    offered.split(',').find_map(|protocol| protocol.trim().parse().ok())
}

/// Whether a request asks for Server-Sent Events.
pub fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"))
}

/// Whether a request asks to become a WebSocket.
pub fn wants_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|upgrade| upgrade.eq_ignore_ascii_case("websocket"))
}
