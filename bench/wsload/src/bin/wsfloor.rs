//! wsfloor: the least a subscription server on the gateway's own stack (tokio's multi-thread
//! runtime, tokio-tungstenite 0.29, one task per WebSocket) can take to tell 10,000 subscribers
//! of one session about a change, on bench/bench.py's section (l) terms. It is the floor under
//! the row "webhook to subscriber, 10,000 on one session" that the gateway could reach by
//! rewriting its live path, where bench/sendfloor.c is the floor of the machine (bare `send()`).
//!
//! It does nothing a subscription server may skip: no GraphQL, no authentication, no webhook
//! signature, no provider, no trail, no metrics, no budget. It speaks just enough
//! `graphql-transport-ws` for bench/wsload (`connection_init` → `connection_ack`, `subscribe` →
//! a `next` at once, `ping` → `pong`, `complete`), and answers every `POST` on its webhook port
//! with 200 after flipping the one session's status between the two that wsload expects
//! alternately (ACTION_REQUIRED and PROCESSING). The answer's payload is serialised once per
//! change and shared; each subscriber's task is woken by a `watch`, wraps the payload in its
//! own `next` (its subscription id) and writes one frame.
//!
//! Prints one JSON line on stdout, `{"ws_url": "ws://127.0.0.1:…/graphql", "webhook_url":
//! "http://127.0.0.1:…/webhooks/dodo"}`, then serves until killed. bench.py runs it pinned to
//! the gateway's core, with bench/wsload on the other, exactly as it runs the gateway.

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// The statuses a change alternates between (what the gateway normalises wsload's two Dodo
/// statuses to). The session starts at the first, as wsload's stand-in does.
const STATUSES: [&str; 2] = ["ACTION_REQUIRED", "PROCESSING"];

/// The largest webhook body read (wsload's are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

type Failure = Box<dyn Error + Send + Sync>;

fn main() {
    // As the gateway's main: a multi-thread runtime, as many workers as cores it may use
    // (one, pinned by taskset).
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wsfloor: no runtime: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(run()) {
        eprintln!("wsfloor: {error}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Failure> {
    let sockets = TcpListener::bind("127.0.0.1:0").await?;
    let webhooks = TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "{}",
        serde_json::json!({
            "ws_url": format!("ws://{}/graphql", sockets.local_addr()?),
            "webhook_url": format!("http://{}/webhooks/dodo", webhooks.local_addr()?),
        })
    );
    let (published, watched) = watch::channel(payload(0));
    tokio::spawn(serve_webhooks(webhooks, Arc::new(published)));
    loop {
        let (stream, _) = sockets.accept().await?;
        let watched = watched.clone();
        tokio::spawn(async move {
            if let Err(error) = subscriber(stream, watched).await {
                eprintln!("wsfloor: a subscriber: {error}");
            }
        });
    }
}

/// A `next` payload: the session's status, serialised once per change.
fn payload(status: usize) -> Arc<str> {
    let status = STATUSES[status % STATUSES.len()];
    Arc::from(format!(r#"{{"data":{{"checkoutSessionUpdated":{{"status":"{status}"}}}}}}"#))
}

/// One WebSocket: the handshake, then its subscription's answers until it closes.
async fn subscriber(stream: TcpStream, mut watched: watch::Receiver<Arc<str>>) -> Result<(), Failure> {
    stream.set_nodelay(true)?;
    // The gateway's read buffer (WS_READ_BUFFER_BYTES), so that each socket holds as much.
    let config = WebSocketConfig::default().read_buffer_size(512);
    let mut socket = tokio_tungstenite::accept_hdr_async_with_config(stream, choose, Some(config)).await?;
    let mut subscription: Option<String> = None;
    loop {
        tokio::select! {
            changed = watched.changed(), if subscription.is_some() => {
                changed?;
                let text = next(subscription.as_deref().unwrap_or_default(), &watched.borrow_and_update());
                if socket.send(Message::text(text)).await.is_err() {
                    return Ok(());
                }
            }
            message = socket.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    // A socket that closes or breaks (wsload exits without closing) just ends.
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return Ok(()),
                    Some(Ok(_)) => continue,
                };
                let message: Value = serde_json::from_str(text.as_str())?;
                match message["type"].as_str() {
                    Some("connection_init") => socket.send(Message::text(r#"{"type":"connection_ack"}"#)).await?,
                    Some("ping") => socket.send(Message::text(r#"{"type":"pong"}"#)).await?,
                    Some("subscribe") => {
                        let id = message["id"].as_str().ok_or("a subscribe without an id")?.to_owned();
                        let text = next(&id, &watched.borrow_and_update());
                        socket.send(Message::text(text)).await?;
                        subscription = Some(id);
                    }
                    Some("complete") => subscription = None,
                    _ => return Err(format!("unexpected: {text}").into()),
                }
            }
        }
    }
}

/// The handshake's answer names the one protocol spoken. Its signature is tungstenite's
/// `Callback`, whose error is a whole HTTP response.
#[allow(clippy::result_large_err)]
fn choose(_: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    response.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("graphql-transport-ws"));
    Ok(response)
}

/// A subscriber's `next` message: its id around the shared payload.
fn next(id: &str, payload: &str) -> String {
    let mut text = String::with_capacity(id.len() + payload.len() + 40);
    text.push_str(r#"{"id":""#);
    text.push_str(id);
    text.push_str(r#"","type":"next","payload":"#);
    text.push_str(payload);
    text.push('}');
    text
}

/// The webhook port: every request (HTTP/1.1, kept alive, with a content-length) flips the
/// session's status and is answered 200 once the change is published.
async fn serve_webhooks(listener: TcpListener, published: Arc<watch::Sender<Arc<str>>>) {
    let changes = Arc::new(AtomicUsize::new(0));
    while let Ok((stream, _)) = listener.accept().await {
        let (published, changes) = (published.clone(), changes.clone());
        tokio::spawn(async move {
            if let Err(error) = webhook_connection(stream, &published, &changes).await {
                eprintln!("wsfloor: a webhook connection: {error}");
            }
        });
    }
}

async fn webhook_connection(
    stream: TcpStream,
    published: &watch::Sender<Arc<str>>,
    changes: &AtomicUsize,
) -> Result<(), Failure> {
    stream.set_nodelay(true)?;
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 {
                return Err("a request ended in its headers".into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        if length > MAX_BODY {
            return Err("a webhook body over 64 KiB".into());
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await?;
        let status = changes.fetch_add(1, Ordering::SeqCst) + 1;
        published.send_replace(payload(status));
        stream.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await?;
    }
}
