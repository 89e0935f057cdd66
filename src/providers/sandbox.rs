//! Built-in stand-ins that speak each provider's real HTTP API on 127.0.0.1, with fixture
//! sessions in every status and ids that produce every error. They make `--demo` work on a
//! fresh machine with no keys, and they are the upstream for benchmarks.
//!
//! Owns: serving a sandbox (port, latency, request counter, the key it accepts). Each
//! provider's routes and fixtures live in its own folder (`providers/<name>/sandbox.rs`);
//! fixture ids are listed in the README.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use tokio::net::TcpListener;

use crate::domain::lock;

/// How long the "slow" fixtures take: longer than any sensible upstream timeout, so they
/// show the gateway's timeout, and short enough not to pin resources forever.
pub const SLOW_FIXTURE_DELAY: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
pub struct SandboxOptions {
    /// Added to every answer, to stand in for the network and the provider's own work.
    pub latency: Duration,
    /// How long a live fixture stays in each status.
    pub step: Duration,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self { latency: Duration::ZERO, step: Duration::from_secs(20) }
    }
}

/// How a provider's sandbox is served: its routes and the path its API lives under.
#[derive(Clone, Copy, Debug)]
pub struct SandboxSpec {
    pub router: fn() -> Router<SandboxState>,
    /// Prefix of the base URL (`/api/v1` for DHMAD).
    pub base_path: &'static str,
    /// Whether its live fixtures announce their changes by webhook.
    pub sends_webhooks: bool,
}

/// Where a sandbox sends its webhooks, signed with what.
#[derive(Clone)]
pub struct SandboxWebhook {
    pub url: String,
    /// A public demo value, not a secret.
    pub secret: String,
    /// The provider's account id its events carry.
    pub business_id: String,
}

impl std::fmt::Debug for SandboxWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxWebhook").field("url", &self.url).finish_non_exhaustive()
    }
}

/// The demo's webhook secret for `account`: public, in the Standard Webhooks form (`whsec_`
/// and base64) that every provider's check accepts.
pub fn demo_webhook_secret(account: &str) -> String {
    use base64::Engine;
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(format!("demo-{account}-webhooks")))
}

/// What the gateway needs to talk to a running sandbox provider.
#[derive(Clone, Debug)]
pub struct SandboxEndpoint {
    pub addr: SocketAddr,
    /// The base URL to configure the account with.
    pub base_url: String,
    /// Session requests answered so far (all fixtures, errors included).
    pub requests: Arc<AtomicU64>,
}

/// Shared by every sandbox route: when the sandbox started (fixture times are relative to
/// it), the environment it plays, the key it accepts, the added latency and the request
/// counter.
#[derive(Clone, Debug)]
pub struct SandboxState {
    pub started: DateTime<Utc>,
    pub environment: &'static str,
    /// A public demo value, not a secret.
    pub key: Arc<str>,
    pub latency: Duration,
    pub requests: Arc<AtomicU64>,
    /// How long a live fixture stays in each status.
    pub step: Duration,
    /// Where live fixtures announce their changes; `None`: they do not.
    pub webhook: Option<Arc<SandboxWebhook>>,
    /// When each live fixture was first asked for: its clock starts then.
    pub first_seen: Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>,
    /// For sending webhooks.
    pub http: reqwest::Client,
}

impl SandboxState {
    /// Where live fixture `id` stands: its first sight starts its clock (`true` with the
    /// step then), and the number of whole steps since.
    pub fn live_step(&self, id: &str) -> (u32, bool) {
        let mut seen = lock(&self.first_seen);
        let now = std::time::Instant::now();
        let mut first = false;
        let since = *seen.entry(id.to_owned()).or_insert_with(|| {
            first = true;
            now
        });
        let steps = now.duration_since(since).as_nanos() / self.step.as_nanos().max(1);
        (u32::try_from(steps).unwrap_or(u32::MAX), first)
    }

    /// Whether the request presents the key this sandbox accepts.
    pub fn accepts(&self, headers: &axum::http::HeaderMap) -> bool {
        presented_key(headers) == Some(&*self.key)
    }
}

/// Serves one environment of a provider on an ephemeral 127.0.0.1 port, accepting `key`.
pub async fn serve(
    spec: SandboxSpec,
    environment: &'static str,
    key: &str,
    options: SandboxOptions,
    webhook: Option<SandboxWebhook>,
) -> std::io::Result<SandboxEndpoint> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let requests = Arc::new(AtomicU64::new(0));
    let state = SandboxState {
        started: Utc::now(),
        environment,
        key: Arc::from(key),
        latency: options.latency,
        requests: requests.clone(),
        step: options.step,
        webhook: webhook.map(Arc::new),
        first_seen: Arc::default(),
        http: crate::net::http_client().map_err(std::io::Error::other)?,
    };
    let app = (spec.router)()
        .route("/_sandbox/stats", get(stats))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_and_delay))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "sandbox provider stopped");
        }
    });
    Ok(SandboxEndpoint { addr, base_url: format!("http://{addr}{}", spec.base_path), requests })
}

async fn count_and_delay(State(state): State<SandboxState>, request: Request, next: Next) -> Response {
    if request.uri().path() != "/_sandbox/stats" {
        state.requests.fetch_add(1, Ordering::Relaxed);
        if !state.latency.is_zero() {
            tokio::time::sleep(state.latency).await;
        }
    }
    next.run(request).await
}

async fn stats(State(state): State<SandboxState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "requests": state.requests.load(Ordering::Relaxed) }))
}

/// The bearer token of a request, from `Authorization: Bearer …` or (DHMAD) `X-API-Key`.
pub fn presented_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}
