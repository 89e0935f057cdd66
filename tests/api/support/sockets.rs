//! GraphQL over WebSocket as clients speak it (`graphql-transport-ws` and `graphql-ws`).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::app::TestApp;

/// A subscription to one session's updates: its status, or its error's code.
pub const UPDATED: &str = "subscription($p: Provider!, $id: ID!) {
    checkoutSessionUpdated(provider: $p, id: $id) {
        __typename
        ... on CheckoutSession { id status providerStatus }
        ... on CheckoutError { code }
    }
}";

/// The upgrade request of a WebSocket to `route` asking for the GraphQL `protocol`.
pub fn upgrade_request(
    addr: std::net::SocketAddr,
    route: &str,
    protocol: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = format!("ws://{addr}{route}").into_client_request().unwrap();
    request.headers_mut().insert("sec-websocket-protocol", protocol.parse().unwrap());
    request
}

/// A WebSocket as the client library opens it, with no protocol spoken over it yet.
pub type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A `graphql-transport-ws` client on one WebSocket.
pub struct Socket {
    stream: RawSocket,
}

impl Socket {
    pub async fn open(app: &TestApp, route: &str, protocol: &str) -> Socket {
        Self::open_at(app.addr, route, protocol).await
    }

    pub async fn open_at(addr: std::net::SocketAddr, route: &str, protocol: &str) -> Socket {
        Self::connect(addr, route, protocol, json!({})).await
    }

    /// A `graphql-transport-ws` connection whose `connection_init` carries `payload`.
    pub async fn open_with(addr: std::net::SocketAddr, route: &str, payload: Value) -> Socket {
        Self::connect(addr, route, "graphql-transport-ws", payload).await
    }

    async fn connect(addr: std::net::SocketAddr, route: &str, protocol: &str, payload: Value) -> Socket {
        let request = upgrade_request(addr, route, protocol);
        let (stream, response) =
            tokio_tungstenite::connect_async(request).await.expect("the upgrade is accepted");
        assert_eq!(response.headers()["sec-websocket-protocol"], protocol);
        let mut socket = Socket { stream };
        socket.send(json!({"type": "connection_init", "payload": payload})).await;
        assert_eq!(socket.next().await["type"], "connection_ack");
        socket
    }

    pub async fn send(&mut self, message: Value) {
        self.stream.send(Message::Text(message.to_string().into())).await.unwrap();
    }

    /// The next protocol message (pings answered by the library are skipped).
    pub async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), self.stream.next())
                .await
                .expect("a message within 5 s")
                .expect("the socket is open")
                .unwrap();
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Close(frame) => return json!({"type": "closed", "frame": format!("{frame:?}")}),
                _ => continue,
            }
        }
    }

    pub async fn subscribe(&mut self, id: &str, provider: &str, session: &str) {
        let payload = json!({"query": UPDATED, "variables": {"p": provider, "id": session}});
        self.send(json!({"id": id, "type": "subscribe", "payload": payload})).await;
    }

    /// The next `next` payload's session status (or error code), with its subscription id.
    pub async fn update(&mut self) -> (String, String) {
        let message = self.next().await;
        assert_eq!(message["type"], "next", "{message}");
        let result = &message["payload"]["data"]["checkoutSessionUpdated"];
        let what = result.get("status").or(result.get("code")).and_then(Value::as_str).unwrap_or_default();
        (message["id"].as_str().unwrap_or_default().to_owned(), what.to_owned())
    }
}
