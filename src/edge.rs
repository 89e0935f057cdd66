//! The HTTP edge at the connection level: accepting, bounding, timing out and draining
//! connections. (Requests are `server`'s.)
//!
//! Owns: how many connections are served at once, how long a client may take to send its
//! headers, and how connections leave during a shutdown so that pooled clients lose nothing:
//! from the first moment of shutdown HTTP/2 connections get GOAWAY (and HTTP/1.1 responses
//! carry `Connection: close`, added by `server`), so clients move off while the listener still
//! serves; only then is the listener closed and what is left shut down gracefully.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

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
    /// for nothing).
    pub header_read_timeout: Duration,
}

/// The first bytes of an HTTP/2 connection without TLS (prior knowledge, as routers use).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Serves `router` on `listener` until `phase` reaches `Closing`; then waits for every
/// connection to finish (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: EdgeLimits,
    mut phase: watch::Receiver<Phase>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
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
        tokio::spawn(async move {
            connection(stream, &builder, router, phase, limits.header_read_timeout).await;
            drop(slot);
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
    first_bytes_timeout: Duration,
) {
    let mut preface = [0u8; H2_PREFACE.len()];
    let is_h2 = matches!(
        tokio::time::timeout(first_bytes_timeout, stream.peek(&mut preface)).await,
        Ok(Ok(n)) if n == H2_PREFACE.len() && preface == *H2_PREFACE
    );
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(router));
    tokio::pin!(conn);
    // When to ask the connection to finish; `None` until shutdown reaches it.
    let mut shutdown_at: Option<tokio::time::Instant> = None;
    let mut shutting = false;
    loop {
        let deadline = shutdown_at;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = async { if let Some(at) = deadline { tokio::time::sleep_until(at).await } else { std::future::pending().await } }, if !shutting => {
                conn.as_mut().graceful_shutdown();
                shutting = true;
            }
            changed = phase.changed(), if shutdown_at.is_none() => {
                let now = *phase.borrow();
                // HTTP/2 clients are told at once (GOAWAY) and open new connections elsewhere;
                // HTTP/1.1 ones read `Connection: close` on their next response and do the same.
                // When the listener closes, an HTTP/1.1 connection still open gets a moment:
                // a request already on its way is answered, not cut.
                if changed.is_err() || (now == Phase::Draining && is_h2) {
                    shutdown_at = Some(tokio::time::Instant::now());
                } else if now == Phase::Closing {
                    shutdown_at = Some(tokio::time::Instant::now() + CLOSE_LINGER);
                }
            }
        }
    }
}

/// How long an HTTP/1.1 connection left open when the listener closes may still receive the
/// request a client had already sent.
const CLOSE_LINGER: Duration = Duration::from_millis(250);
