//! WebSocket transport for subscription

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::{
    FutureExt, StreamExt,
    future::{BoxFuture, Ready},
    stream::{SelectAll, Stream},
    task::AtomicWaker,
};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};

use crate::{Data, Error, Executor, Request, Response, Result, util::Delay};

/// All known protocols based on WebSocket.
pub const ALL_WEBSOCKET_PROTOCOLS: [&str; 2] = ["graphql-transport-ws", "graphql-ws"];

/// An enum representing the various forms of a WebSocket message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsMessage {
    /// A text WebSocket message
    Text(String),

    /// A close message with the close frame.
    Close(u16, String),
}

impl WsMessage {
    /// Returns the contained [WsMessage::Text] value, consuming the `self`
    /// value.
    ///
    /// Because this function may panic, its use is generally discouraged.
    ///
    /// # Panics
    ///
    /// Panics if the self value not equals [WsMessage::Text].
    pub fn unwrap_text(self) -> String {
        match self {
            Self::Text(text) => text,
            Self::Close(_, _) => panic!("Not a text message"),
        }
    }

    /// Returns the contained [WsMessage::Close] value, consuming the `self`
    /// value.
    ///
    /// Because this function may panic, its use is generally discouraged.
    ///
    /// # Panics
    ///
    /// Panics if the self value not equals [WsMessage::Close].
    pub fn unwrap_close(self) -> (u16, String) {
        match self {
            Self::Close(code, msg) => (code, msg),
            Self::Text(_) => panic!("Not a close message"),
        }
    }
}

struct Timer {
    interval: Duration,
    delay: Delay,
}

impl Timer {
    #[inline]
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            delay: Delay::new(interval),
        }
    }

    #[inline]
    fn reset(&mut self) {
        self.delay.reset(self.interval);
    }
}

impl Stream for Timer {
    type Item = ();

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.delay.poll_unpin(cx) {
            Poll::Ready(_) => {
                this.delay.reset(this.interval);
                Poll::Ready(Some(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

pin_project! {
    /// A GraphQL connection over websocket.
    ///
    /// # References
    ///
    /// - [subscriptions-transport-ws](https://github.com/apollographql/subscriptions-transport-ws/blob/master/PROTOCOL.md)
    /// - [graphql-ws](https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md)
    pub struct WebSocket<S, E, OnInit, OnPing> {
        on_connection_init: Option<OnInit>,
        on_ping: OnPing,
        init_fut: Option<BoxFuture<'static, Result<Data>>>,
        ping_fut: Option<BoxFuture<'static, Result<Option<serde_json::Value>>>>,
        connection_data: Option<Data>,
        data: Option<Arc<Data>>,
        executor: E,
        // The running subscriptions, polled only when woken: one update costs one stream's
        // poll, however many the connection runs.
        streams: SelectAll<Running>,
        // The running subscriptions by id: how a `Stop` (or a `Start` reusing the id) ends one.
        running: HashMap<String, Arc<Slot>>,
        #[pin]
        stream: S,
        protocol: Protocols,
        last_msg_at: Instant,
        keepalive_timer: Option<Timer>,
        close: bool,
    }
}

type MessageMapStream<S> =
    futures_util::stream::Map<S, fn(<S as Stream>::Item) -> serde_json::Result<ClientMessage>>;

/// Default connection initializer type.
pub type DefaultOnConnInitType = fn(serde_json::Value) -> Ready<Result<Data>>;

/// Default ping handler type.
pub type DefaultOnPingType =
    fn(Option<&Data>, Option<serde_json::Value>) -> Ready<Result<Option<serde_json::Value>>>;

/// Default connection initializer function.
pub fn default_on_connection_init(_: serde_json::Value) -> Ready<Result<Data>> {
    futures_util::future::ready(Ok(Data::default()))
}

/// Default ping handler function.
pub fn default_on_ping(
    _: Option<&Data>,
    _: Option<serde_json::Value>,
) -> Ready<Result<Option<serde_json::Value>>> {
    futures_util::future::ready(Ok(None))
}

impl<S, E> WebSocket<S, E, DefaultOnConnInitType, DefaultOnPingType>
where
    E: Executor,
    S: Stream<Item = serde_json::Result<ClientMessage>>,
{
    /// Create a new websocket from [`ClientMessage`] stream.
    pub fn from_message_stream(executor: E, stream: S, protocol: Protocols) -> Self {
        WebSocket {
            on_connection_init: Some(default_on_connection_init),
            on_ping: default_on_ping,
            init_fut: None,
            ping_fut: None,
            connection_data: None,
            data: None,
            executor,
            streams: SelectAll::new(),
            running: HashMap::new(),
            stream,
            protocol,
            last_msg_at: Instant::now(),
            keepalive_timer: None,
            close: false,
        }
    }
}

impl<S, E> WebSocket<MessageMapStream<S>, E, DefaultOnConnInitType, DefaultOnPingType>
where
    E: Executor,
    S: Stream,
    S::Item: AsRef<[u8]>,
{
    /// Create a new websocket from bytes stream.
    pub fn new(executor: E, stream: S, protocol: Protocols) -> Self {
        let stream = stream
            .map(ClientMessage::from_bytes as fn(S::Item) -> serde_json::Result<ClientMessage>);
        WebSocket::from_message_stream(executor, stream, protocol)
    }
}

impl<S, E, OnInit, OnPing> WebSocket<S, E, OnInit, OnPing>
where
    E: Executor,
    S: Stream<Item = serde_json::Result<ClientMessage>>,
{
    /// Specify a connection data.
    ///
    /// This data usually comes from HTTP requests.
    /// When the `GQL_CONNECTION_INIT` message is received, this data will be
    /// merged with the data returned by the closure specified by
    /// `with_initializer` into the final subscription context data.
    #[must_use]
    pub fn connection_data(mut self, data: Data) -> Self {
        self.connection_data = Some(data);
        self
    }

    /// Specify a connection initialize callback function.
    ///
    /// This function if present, will be called with the data sent by the
    /// client in the [`GQL_CONNECTION_INIT` message](https://github.com/apollographql/subscriptions-transport-ws/blob/master/PROTOCOL.md#gql_connection_init).
    /// From that point on the returned data will be accessible to all requests.
    #[must_use]
    pub fn on_connection_init<F, R>(self, callback: F) -> WebSocket<S, E, F, OnPing>
    where
        F: FnOnce(serde_json::Value) -> R + Send + 'static,
        R: Future<Output = Result<Data>> + Send + 'static,
    {
        WebSocket {
            on_connection_init: Some(callback),
            on_ping: self.on_ping,
            init_fut: self.init_fut,
            ping_fut: self.ping_fut,
            connection_data: self.connection_data,
            data: self.data,
            executor: self.executor,
            streams: self.streams,
            running: self.running,
            stream: self.stream,
            protocol: self.protocol,
            last_msg_at: self.last_msg_at,
            keepalive_timer: self.keepalive_timer,
            close: self.close,
        }
    }

    /// Specify a ping callback function.
    ///
    /// This function if present, will be called with the data sent by the
    /// client in the [`Ping` message](https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md#ping).
    ///
    /// The function should return the data to be sent in the [`Pong` message](https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md#pong).
    ///
    /// NOTE: Only used for the `graphql-ws` protocol.
    #[must_use]
    pub fn on_ping<F, R>(self, callback: F) -> WebSocket<S, E, OnInit, F>
    where
        F: FnOnce(Option<&Data>, Option<serde_json::Value>) -> R + Send + Clone + 'static,
        R: Future<Output = Result<Option<serde_json::Value>>> + Send + 'static,
    {
        WebSocket {
            on_connection_init: self.on_connection_init,
            on_ping: callback,
            init_fut: self.init_fut,
            ping_fut: self.ping_fut,
            connection_data: self.connection_data,
            data: self.data,
            executor: self.executor,
            streams: self.streams,
            running: self.running,
            stream: self.stream,
            protocol: self.protocol,
            last_msg_at: self.last_msg_at,
            keepalive_timer: self.keepalive_timer,
            close: self.close,
        }
    }

    /// Sets a timeout for receiving an acknowledgement of the keep-alive ping.
    ///
    /// If the ping is not acknowledged within the timeout, the connection will
    /// be closed.
    ///
    /// NOTE: Only used for the `graphql-ws` protocol.
    #[must_use]
    pub fn keepalive_timeout(self, timeout: impl Into<Option<Duration>>) -> Self {
        Self {
            keepalive_timer: timeout.into().map(Timer::new),
            ..self
        }
    }
}

impl<S, E, OnInit, InitFut, OnPing, PingFut> Stream for WebSocket<S, E, OnInit, OnPing>
where
    E: Executor,
    S: Stream<Item = serde_json::Result<ClientMessage>>,
    OnInit: FnOnce(serde_json::Value) -> InitFut + Send + 'static,
    InitFut: Future<Output = Result<Data>> + Send + 'static,
    OnPing: FnOnce(Option<&Data>, Option<serde_json::Value>) -> PingFut + Clone + Send + 'static,
    PingFut: Future<Output = Result<Option<serde_json::Value>>> + Send + 'static,
{
    type Item = WsMessage;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context) -> Poll<Option<Self::Item>> {
        let mut this = self.project();

        if *this.close {
            return Poll::Ready(None);
        }

        if let Some(keepalive_timer) = this.keepalive_timer
            && let Poll::Ready(Some(())) = keepalive_timer.poll_next_unpin(cx)
        {
            return match this.protocol {
                Protocols::SubscriptionsTransportWS => {
                    *this.close = true;
                    Poll::Ready(Some(WsMessage::Text(
                        serde_json::to_string(&ServerMessage::ConnectionError {
                            payload: Error::new("timeout"),
                        })
                        .unwrap(),
                    )))
                }
                Protocols::GraphQLWS => {
                    *this.close = true;
                    Poll::Ready(Some(WsMessage::Close(3008, "timeout".to_string())))
                }
            };
        }

        if this.init_fut.is_none() && this.ping_fut.is_none() {
            while let Poll::Ready(message) = Pin::new(&mut this.stream).poll_next(cx) {
                let message = match message {
                    Some(message) => message,
                    None => return Poll::Ready(None),
                };

                let message: ClientMessage = match message {
                    Ok(message) => message,
                    Err(err) => {
                        *this.close = true;
                        return Poll::Ready(Some(WsMessage::Close(1002, err.to_string())));
                    }
                };

                *this.last_msg_at = Instant::now();
                if let Some(keepalive_timer) = this.keepalive_timer {
                    keepalive_timer.reset();
                }

                match message {
                    ClientMessage::ConnectionInit { payload } => {
                        if let Some(on_connection_init) = this.on_connection_init.take() {
                            *this.init_fut = Some(Box::pin(async move {
                                on_connection_init(payload.unwrap_or_default()).await
                            }));
                            break;
                        } else {
                            *this.close = true;
                            match this.protocol {
                                Protocols::SubscriptionsTransportWS => {
                                    return Poll::Ready(Some(WsMessage::Text(
                                        serde_json::to_string(&ServerMessage::ConnectionError {
                                            payload: Error::new(
                                                "Too many initialisation requests.",
                                            ),
                                        })
                                        .unwrap(),
                                    )));
                                }
                                Protocols::GraphQLWS => {
                                    return Poll::Ready(Some(WsMessage::Close(
                                        4429,
                                        "Too many initialisation requests.".to_string(),
                                    )));
                                }
                            }
                        }
                    }
                    ClientMessage::Start {
                        id,
                        payload: request,
                    } => {
                        if let Some(data) = this.data.clone() {
                            let slot = Arc::new(Slot {
                                stream: Mutex::new(Some(Box::pin(
                                    this.executor.execute_stream(request, Some(data)),
                                ))),
                                waker: AtomicWaker::new(),
                            });
                            if let Some(replaced) = this.running.insert(id.clone(), slot.clone()) {
                                replaced.stop();
                            }
                            this.streams.push(Running {
                                id,
                                slot,
                                protocol: *this.protocol,
                                ended: false,
                            });
                        } else {
                            *this.close = true;
                            return Poll::Ready(Some(WsMessage::Close(
                                1011,
                                "The handshake is not completed.".to_string(),
                            )));
                        }
                    }
                    ClientMessage::Stop { id } => {
                        if let Some(stopped) = this.running.remove(&id) {
                            stopped.stop();
                            return Poll::Ready(Some(WsMessage::Text(
                                serde_json::to_string(&ServerMessage::Complete { id: &id })
                                    .unwrap(),
                            )));
                        }
                    }
                    // Note: in the revised `graphql-ws` spec, there is no equivalent to the
                    // `CONNECTION_TERMINATE` `client -> server` message; rather, disconnection is
                    // handled by disconnecting the websocket
                    ClientMessage::ConnectionTerminate => {
                        *this.close = true;
                        return Poll::Ready(None);
                    }
                    // Pong must be sent in response from the receiving party as soon as possible.
                    ClientMessage::Ping { payload } => {
                        let on_ping = this.on_ping.clone();
                        let data = this.data.clone();
                        *this.ping_fut =
                            Some(Box::pin(
                                async move { on_ping(data.as_deref(), payload).await },
                            ));
                        break;
                    }
                    ClientMessage::Pong { .. } => {
                        // Do nothing...
                    }
                }
            }
        }

        if let Some(init_fut) = this.init_fut {
            return init_fut.poll_unpin(cx).map(|res| {
                *this.init_fut = None;
                match res {
                    Ok(data) => {
                        let mut ctx_data = this.connection_data.take().unwrap_or_default();
                        ctx_data.merge(data);
                        *this.data = Some(Arc::new(ctx_data));
                        Some(WsMessage::Text(
                            serde_json::to_string(&ServerMessage::ConnectionAck).unwrap(),
                        ))
                    }
                    Err(err) => {
                        *this.close = true;
                        match this.protocol {
                            Protocols::SubscriptionsTransportWS => Some(WsMessage::Text(
                                serde_json::to_string(&ServerMessage::ConnectionError {
                                    payload: Error::new(err.message),
                                })
                                .unwrap(),
                            )),
                            Protocols::GraphQLWS => Some(WsMessage::Close(1002, err.message)),
                        }
                    }
                }
            });
        }

        if let Some(ping_fut) = this.ping_fut {
            return ping_fut.poll_unpin(cx).map(|res| {
                *this.ping_fut = None;
                match res {
                    Ok(payload) => Some(WsMessage::Text(
                        serde_json::to_string(&ServerMessage::Pong { payload }).unwrap(),
                    )),
                    Err(err) => {
                        *this.close = true;
                        match this.protocol {
                            Protocols::SubscriptionsTransportWS => Some(WsMessage::Text(
                                serde_json::to_string(&ServerMessage::ConnectionError {
                                    payload: Error::new(err.message),
                                })
                                .unwrap(),
                            )),
                            Protocols::GraphQLWS => Some(WsMessage::Close(1002, err.message)),
                        }
                    }
                }
            });
        }

        // Empty, `SelectAll` is ready with `None`: that only means nothing runs yet.
        while let Poll::Ready(Some(event)) = this.streams.poll_next_unpin(cx) {
            match event {
                Event::Next(text) => return Poll::Ready(Some(WsMessage::Text(text))),
                Event::Ended { id, slot } => {
                    // Ended by itself, not stopped or replaced: the client is told.
                    if this
                        .running
                        .get(&id)
                        .is_some_and(|current| Arc::ptr_eq(current, &slot))
                    {
                        this.running.remove(&id);
                        return Poll::Ready(Some(WsMessage::Text(
                            serde_json::to_string(&ServerMessage::Complete { id: &id }).unwrap(),
                        )));
                    }
                }
            }
        }

        Poll::Pending
    }
}

type SubscriptionStream = Pin<Box<dyn Stream<Item = Response> + Send>>;

/// A running subscription's stream, shared by the connection's map of ids (which stops it) and
/// the `SelectAll` (which polls it).
struct Slot {
    /// `None` once stopped: the stream is dropped at once, as it was when it lived in the map.
    stream: Mutex<Option<SubscriptionStream>>,
    /// Wakes the `SelectAll`'s entry when stopped, so that it is removed.
    waker: AtomicWaker,
}

impl Slot {
    /// Drops the stream now; its entry in the `SelectAll` ends at its next poll.
    fn stop(&self) {
        let stream = self
            .stream
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(stream);
        self.waker.wake();
    }
}

/// One running subscription, as the connection polls it: its answers as `next` messages, then
/// once that it ended.
struct Running {
    id: String,
    slot: Arc<Slot>,
    protocol: Protocols,
    ended: bool,
}

/// What a running subscription has for its connection.
enum Event {
    /// A `next` message, serialised.
    Next(String),
    /// It ended (by itself, or stopped or replaced: the connection tells which by its slot).
    Ended { id: String, slot: Arc<Slot> },
}

impl Stream for Running {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        self.slot.waker.register(cx.waker());
        let polled = match self
            .slot
            .stream
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            Some(stream) => stream.as_mut().poll_next(cx),
            None => Poll::Ready(None),
        };
        match polled {
            Poll::Ready(Some(payload)) => Poll::Ready(Some(Event::Next(
                serde_json::to_string(&self.protocol.next_message(&self.id, payload)).unwrap(),
            ))),
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(Some(Event::Ended {
                    id: std::mem::take(&mut self.id),
                    slot: self.slot.clone(),
                }))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Specification of which GraphQL Over WebSockets protocol is being utilized
#[derive(Debug, Copy, Clone, Eq, PartialEq, Hash)]
pub enum Protocols {
    /// [subscriptions-transport-ws protocol](https://github.com/apollographql/subscriptions-transport-ws/blob/master/PROTOCOL.md).
    SubscriptionsTransportWS,
    /// [graphql-ws protocol](https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md).
    GraphQLWS,
}

impl Protocols {
    /// Returns the `Sec-WebSocket-Protocol` header value for the protocol
    pub fn sec_websocket_protocol(&self) -> &'static str {
        match self {
            Protocols::SubscriptionsTransportWS => "graphql-ws",
            Protocols::GraphQLWS => "graphql-transport-ws",
        }
    }

    #[inline]
    fn next_message<'s>(&self, id: &'s str, payload: Response) -> ServerMessage<'s> {
        match self {
            Protocols::SubscriptionsTransportWS => ServerMessage::Data { id, payload },
            Protocols::GraphQLWS => ServerMessage::Next { id, payload },
        }
    }
}

impl std::str::FromStr for Protocols {
    type Err = Error;

    fn from_str(protocol: &str) -> Result<Self, Self::Err> {
        if protocol.eq_ignore_ascii_case("graphql-ws") {
            Ok(Protocols::SubscriptionsTransportWS)
        } else if protocol.eq_ignore_ascii_case("graphql-transport-ws") {
            Ok(Protocols::GraphQLWS)
        } else {
            Err(Error::new(format!(
                "Unsupported Sec-WebSocket-Protocol: {}",
                protocol
            )))
        }
    }
}

/// A websocket message received from the client
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // Request is at fault
pub enum ClientMessage {
    /// A new connection
    ConnectionInit {
        /// Optional init payload from the client
        payload: Option<serde_json::Value>,
    },
    /// The start of a Websocket subscription
    #[serde(alias = "subscribe")]
    Start {
        /// Message ID
        id: String,
        /// The GraphQL Request - this can be modified by protocol implementors
        /// to add files uploads.
        payload: Request,
    },
    /// The end of a Websocket subscription
    #[serde(alias = "complete")]
    Stop {
        /// Message ID
        id: String,
    },
    /// Connection terminated by the client
    ConnectionTerminate,
    /// Useful for detecting failed connections, displaying latency metrics or
    /// other types of network probing.
    ///
    /// Reference: <https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md#ping>
    Ping {
        /// Additional details about the ping.
        payload: Option<serde_json::Value>,
    },
    /// The response to the Ping message.
    ///
    /// Reference: <https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md#pong>
    Pong {
        /// Additional details about the pong.
        payload: Option<serde_json::Value>,
    },
}

impl ClientMessage {
    /// Creates a ClientMessage from an array of bytes
    pub fn from_bytes<T>(message: T) -> serde_json::Result<Self>
    where
        T: AsRef<[u8]>,
    {
        serde_json::from_slice(message.as_ref())
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage<'a> {
    ConnectionError {
        payload: Error,
    },
    ConnectionAck,
    /// subscriptions-transport-ws protocol next payload
    Data {
        id: &'a str,
        payload: Response,
    },
    /// graphql-ws protocol next payload
    Next {
        id: &'a str,
        payload: Response,
    },
    // Not used by this library, as it's not necessary to send
    // Error {
    //     id: &'a str,
    //     payload: serde_json::Value,
    // },
    Complete {
        id: &'a str,
    },
    /// The response to the Ping message.
    ///
    /// https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md#pong
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<serde_json::Value>,
    },
    // Not used by this library
    // #[serde(rename = "ka")]
    // KeepAlive
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };
    use std::task::Waker;

    use futures_util::stream::BoxStream;

    use super::*;
    use crate::Value;

    /// A subscription's stream that counts its polls and answers once when fired.
    #[derive(Default)]
    struct Trigger {
        fired: bool,
        waker: Option<Waker>,
    }

    #[derive(Clone, Default)]
    struct CountingExecutor {
        polls: Arc<AtomicUsize>,
        triggers: Arc<Mutex<Vec<Arc<Mutex<Trigger>>>>>,
    }

    impl CountingExecutor {
        fn fire(&self, index: usize) {
            let trigger = self.triggers.lock().unwrap()[index].clone();
            let mut trigger = trigger.lock().unwrap();
            trigger.fired = true;
            trigger.waker.take().expect("the stream was polled").wake();
        }
    }

    impl Executor for CountingExecutor {
        async fn execute(&self, _request: Request) -> Response {
            Response::new(Value::Null)
        }

        fn execute_stream(
            &self,
            _request: Request,
            _session_data: Option<Arc<Data>>,
        ) -> BoxStream<'static, Response> {
            let trigger = Arc::new(Mutex::new(Trigger::default()));
            self.triggers.lock().unwrap().push(trigger.clone());
            let polls = self.polls.clone();
            futures_util::stream::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::SeqCst);
                let mut trigger = trigger.lock().unwrap();
                if std::mem::take(&mut trigger.fired) {
                    Poll::Ready(Some(Response::new(Value::Null)))
                } else {
                    trigger.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .boxed()
        }
    }

    fn start(id: &str) -> serde_json::Result<ClientMessage> {
        Ok(ClientMessage::Start {
            id: id.to_string(),
            payload: Request::new("subscription { x }"),
        })
    }

    fn socket(
        executor: CountingExecutor,
        messages: Vec<serde_json::Result<ClientMessage>>,
    ) -> impl Stream<Item = WsMessage> + Unpin {
        let init = Ok(ClientMessage::ConnectionInit { payload: None });
        // The client stays connected after its messages.
        let input = futures_util::stream::iter(std::iter::once(init).chain(messages))
            .chain(futures_util::stream::pending());
        Box::pin(WebSocket::from_message_stream(
            executor,
            input,
            Protocols::GraphQLWS,
        ))
    }

    fn poll(socket: &mut (impl Stream<Item = WsMessage> + Unpin)) -> Poll<Option<WsMessage>> {
        socket.poll_next_unpin(&mut Context::from_waker(
            futures_util::task::noop_waker_ref(),
        ))
    }

    /// One subscription's update costs one stream's poll, not one per subscription the
    /// connection runs (a router multiplexes thousands on one socket).
    #[test]
    fn an_update_polls_only_the_stream_that_was_woken() {
        let executor = CountingExecutor::default();
        let ids: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let mut socket = socket(executor.clone(), ids.iter().map(|id| start(id)).collect());
        assert!(
            matches!(poll(&mut socket), Poll::Ready(Some(WsMessage::Text(ack))) if ack.contains("connection_ack"))
        );
        assert!(poll(&mut socket).is_pending());
        assert_eq!(
            executor.polls.load(Ordering::SeqCst),
            100,
            "each stream polled once"
        );

        executor.fire(7);
        let Poll::Ready(Some(WsMessage::Text(next))) = poll(&mut socket) else {
            panic!("the fired subscription's answer is sent")
        };
        assert!(
            next.contains(r#""type":"next""#) && next.contains(r#""id":"7""#),
            "{next}"
        );
        assert_eq!(
            executor.polls.load(Ordering::SeqCst),
            101,
            "only the woken stream was polled"
        );
    }

    /// A stopped subscription is told complete once; its id may be reused at once, and the new
    /// subscription under it is not ended by the old one's end.
    #[test]
    fn a_stopped_id_can_be_reused() {
        let executor = CountingExecutor::default();
        let messages = vec![
            start("a"),
            Ok(ClientMessage::Stop {
                id: "a".to_string(),
            }),
            start("a"),
        ];
        let mut socket = socket(executor.clone(), messages);
        assert!(
            matches!(poll(&mut socket), Poll::Ready(Some(WsMessage::Text(ack))) if ack.contains("connection_ack"))
        );
        let Poll::Ready(Some(WsMessage::Text(complete))) = poll(&mut socket) else {
            panic!("the stop is answered")
        };
        assert!(complete.contains(r#""type":"complete""#), "{complete}");
        assert!(
            poll(&mut socket).is_pending(),
            "the stopped stream ends without a second complete"
        );

        executor.fire(1);
        let Poll::Ready(Some(WsMessage::Text(next))) = poll(&mut socket) else {
            panic!("the new subscription under the reused id answers")
        };
        assert!(
            next.contains(r#""type":"next""#) && next.contains(r#""id":"a""#),
            "{next}"
        );
    }
}
