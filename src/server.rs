//! HTTP: `/graphql` (POST, GET for queries, GraphiQL for browsers), `/livez`, `/readyz`,
//! `/metrics`; startup ([`Application::build`], which reports the port it bound) and graceful
//! shutdown.
//!
//! Owns: the HTTP edge and the wiring of every part (`Application::build_with`), including
//! `--demo` (one sandbox and one account per environment of each provider) and `/readyz`'s
//! per-account credential report.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::rejection::GraphQLRejection;
use async_graphql_axum::GraphQLRequest;
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::cache::SessionCache;
use crate::config::Config;
use crate::domain::Secret;
use crate::graphql::{self, DocumentCache, Gateway, GatewaySchema, RequestScope};
use crate::metrics::Metrics;
use crate::providers::guard::CircuitState;
use crate::providers::{self, Account, AccountConfig, CredentialStatus, ProviderKind};
use crate::response_cache::{cache_control, ResponseCache, StoredResponse};
use crate::sandbox::{self, SandboxOptions};
use crate::service::SessionService;
use crate::{net, telemetry};

/// Parsed documents kept (estimated bytes): thousands of distinct dashboard queries.
const DOCUMENT_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// What the startup credential check found, per account (`/readyz` reports it).
type Credentials = Arc<RwLock<BTreeMap<Arc<str>, AccountReport>>>;

#[derive(Clone, Debug, serde::Serialize)]
struct AccountReport {
    provider: &'static str,
    default: bool,
    credentials: CredentialStatus,
}

#[derive(Clone)]
struct AppState {
    schema: GatewaySchema,
    documents: Arc<DocumentCache>,
    responses: Arc<ResponseCache>,
    service: Arc<SessionService>,
    metrics: Arc<Metrics>,
    /// False until the server is serving, and again from the moment shutdown begins.
    ready: Arc<AtomicBool>,
    credentials: Credentials,
    /// For their circuits' state, read live by `/readyz` and `/metrics`.
    accounts: Arc<Vec<Arc<Account>>>,
}

/// A gateway bound to its port, ready to run.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    ready: Arc<AtomicBool>,
    config: Config,
    accounts: Vec<Arc<Account>>,
    credentials: Credentials,
}

impl Application {
    /// Builds everything with the built-in providers and binds the listener (port 0 picks a
    /// free one; see [`Self::local_addr`]). With `config.demo`, first starts the sandbox
    /// providers and points the gateway at them.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, providers::builtin()).await
    }

    /// [`Self::build`] with the given providers: the schema's `Provider` enum and details
    /// union are theirs, and each gets an unconfigured default account if it has none.
    pub async fn build_with(mut config: Config, kinds: Vec<&'static ProviderKind>) -> anyhow::Result<Self> {
        if config.demo {
            config.accounts = demo_accounts(&kinds, SandboxOptions { latency: config.demo_latency }).await?;
        }
        for kind in &kinds {
            if !config.accounts.iter().any(|account| std::ptr::eq(account.kind, *kind)) {
                config.accounts.push(AccountConfig::unconfigured(kind));
            }
        }
        let metrics = Arc::new(Metrics::new());
        let http = net::http_client()?;
        let limits = config.limits();
        let accounts = config
            .accounts
            .iter()
            .map(|account| Account::new(account.clone(), &limits, &http, &metrics).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let credentials: Credentials = Arc::new(RwLock::new(
            accounts
                .iter()
                .map(|account| {
                    let report = AccountReport {
                        provider: account.kind().slug,
                        default: account.config.default,
                        credentials: CredentialStatus::Checking,
                    };
                    (account.name().clone(), report)
                })
                .collect(),
        ));
        let cache = SessionCache::new(config.cache, metrics.clone());
        let service = Arc::new(SessionService::new(&accounts, cache)?);
        let schema = graphql::schema(
            Gateway {
                service: service.clone(),
                batch_max: config.batch_max,
                entities_max: config.entities_max,
            },
            &kinds,
        );
        let ready = Arc::new(AtomicBool::new(false));
        let router = router(AppState {
            schema,
            documents: Arc::new(DocumentCache::new(DOCUMENT_CACHE_BYTES)),
            responses: Arc::new(ResponseCache::new(config.response_cache_bytes)),
            service,
            metrics,
            ready: ready.clone(),
            credentials: credentials.clone(),
            accounts: Arc::new(accounts.clone()),
        });
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (GATEWAY_LISTEN): {e}", config.listen))?;
        Ok(Self { listener, router, ready, config, accounts, credentials })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `stop` resolves, then drains: `/readyz` answers 503 at once, the listener
    /// keeps serving for `shutdown_delay` (so the cluster stops routing here), then in-flight
    /// requests get `shutdown_grace` to finish.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self { listener, router, ready, config, accounts, credentials } = self;
        tokio::spawn(check_credentials(accounts, credentials));
        let (drain, drained) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = drained.await;
        });
        let mut server = tokio::spawn(async move { server.await });
        ready.store(true, Ordering::SeqCst);
        tokio::select! {
            result = &mut server => return Ok(result??),
            () = stop => {}
        }
        ready.store(false, Ordering::SeqCst);
        tracing::info!(delay = ?config.shutdown_delay, grace = ?config.shutdown_grace, "shutting down: not ready, draining");
        tokio::time::sleep(config.shutdown_delay).await;
        let _ = drain.send(());
        match tokio::time::timeout(config.shutdown_grace, &mut server).await {
            Ok(result) => result??,
            Err(_) => tracing::warn!("shutdown grace period over with requests still in flight; exiting"),
        }
        tracing::info!("stopped");
        Ok(())
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe_request))
        .with_state(state)
}

/// Every environment of every provider as a sandbox on 127.0.0.1, one account each: the
/// first environment's account is the provider's default and is named after it (`dodo`), the
/// others after the provider and the environment (`dodo_test`).
async fn demo_accounts(
    kinds: &[&'static ProviderKind],
    options: SandboxOptions,
) -> anyhow::Result<Vec<AccountConfig>> {
    let mut accounts = Vec::new();
    for kind in kinds {
        for (index, (environment, _)) in kind.environments.iter().enumerate() {
            let name = if index == 0 { kind.slug.to_owned() } else { format!("{}_{environment}", kind.slug) };
            // A public demo value per account, so that each sandbox accepts only its own.
            let key = format!("demo_{name}_key");
            let endpoint = sandbox::serve(kind.sandbox, environment, &key, options).await?;
            // Its own target, so that a quiet log level can still show where the sandboxes are.
            tracing::info!(
                target: "checkout_gateway::demo",
                account = %name,
                environment,
                base_url = %endpoint.base_url,
                "demo mode: sandbox provider"
            );
            accounts.push(AccountConfig {
                name: Arc::from(name),
                base_url: endpoint.base_url,
                api_key: Some(Secret::new(key)),
                default: index == 0,
                ..AccountConfig::unconfigured(kind)
            });
        }
    }
    Ok(accounts)
}

/// Checks each account's key once, in the background: readiness never waits on a provider.
async fn check_credentials(accounts: Vec<Arc<Account>>, credentials: Credentials) {
    for account in accounts {
        let status = account.client.check_credentials().await;
        let (provider, name) = (account.kind().slug, &**account.name());
        match status {
            CredentialStatus::Rejected => {
                tracing::error!(provider, account = name, "the provider refused the configured key")
            }
            CredentialStatus::NotConfigured => {
                tracing::warn!(
                    provider,
                    account = name,
                    "no API key: its sessions answer PROVIDER_UNAVAILABLE (NOT_CONFIGURED)"
                )
            }
            CredentialStatus::Unreachable => {
                tracing::warn!(provider, account = name, "could not check the key: provider unreachable")
            }
            _ => tracing::info!(provider, account = name, status = ?status, "credential check"),
        }
        if let Ok(mut map) = credentials.write() {
            if let Some(report) = map.get_mut(account.name()) {
                report.credentials = status;
            }
        }
    }
}

/// The request id (the caller's `x-request-id` when it is sane, else a new one) follows the
/// request into its span, its provider calls and its response; every request is counted and
/// timed, and logged once (probes and scrapes at debug level).
async fn observe_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let route: &'static str = match request.uri().path() {
        "/graphql" => "/graphql",
        "/livez" => "/livez",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ => "other",
    };
    let method = request.method().clone();
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, route);
    let started = Instant::now();
    let mut response =
        telemetry::with_request_id(request_id.clone(), next.run(request)).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    state.metrics.http_requests.with_label_values(&[route, method.as_str(), status.as_str()]).inc();
    state.metrics.http_duration.with_label_values(&[route, method.as_str()]).observe(elapsed.as_secs_f64());
    let status = status.as_u16();
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if route == "/graphql" || route == "other" {
            tracing::info!(status, elapsed_ms, "served");
        } else {
            tracing::debug!(status, elapsed_ms, "served");
        }
    });
    response
}

/// The most a `/graphql` request body may hold.
const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// A JSON POST answered moments ago with a reusable answer is replayed from the response
/// cache; every other request goes through async-graphql-axum's extractor and the schema.
async fn graphql_post(State(state): State<AppState>, request: Request) -> Response {
    let is_json = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|content_type| content_type.starts_with("application/json"));
    if !is_json {
        return extract_and_execute(&state, request, None).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return graphql_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body could not be read, or is over 2 MiB",
        );
    };
    if let Some(stored) = state.responses.get(&bytes) {
        return replay(&state, &stored);
    }
    extract_and_execute(&state, Request::from_parts(parts, Body::from(bytes.clone())), Some(bytes)).await
}

/// A query in the URL runs (or is replayed); a browser asking for HTML without one gets
/// GraphiQL.
async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    let key = request.uri().query().map(|query| Bytes::from(format!("GET?{query}")));
    if let Some(stored) = key.as_deref().and_then(|key| state.responses.get(key)) {
        return replay(&state, &stored);
    }
    let wants_html = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    match GraphQLRequest::<GraphQLRejection>::from_request(request, &state).await {
        Ok(request) if !request.0.query.trim().is_empty() => execute(&state, request.into_inner(), key).await,
        _ if wants_html => Html(GraphiQLSource::build().endpoint("/graphql").finish()).into_response(),
        Err(rejection) => rejection.into_response(),
        Ok(_) => graphql_error(StatusCode::BAD_REQUEST, "GET /graphql needs a `query` parameter"),
    }
}

async fn extract_and_execute(state: &AppState, request: Request, cache_key: Option<Bytes>) -> Response {
    match GraphQLRequest::<GraphQLRejection>::from_request(request, state).await {
        Ok(request) => execute(state, request.into_inner(), cache_key).await,
        Err(rejection) => rejection.into_response(),
    }
}

/// Runs one GraphQL request; stores the answer under `cache_key` when all of it may be reused.
async fn execute(
    state: &AppState,
    mut request: async_graphql::Request,
    cache_key: Option<Bytes>,
) -> Response {
    state.documents.prepare(&mut request);
    let operation = operation_label(&mut request);
    let scope = RequestScope::default();
    let request = request.data(scope.clone());
    let response = state.schema.execute(request).await;
    let outcome = if response.is_ok() { "ok" } else { "error" };
    state.metrics.graphql_operations.with_label_values(&[operation.as_str(), outcome]).inc();
    let reusable_until = scope.reusable_until(response.is_err());
    let body = match serde_json::to_vec(&response) {
        Ok(mut body) => {
            // Kept bodies should cost what they weigh: no spare capacity.
            body.shrink_to_fit();
            Bytes::from(body)
        }
        Err(error) => {
            tracing::error!(%error, "a GraphQL response could not be serialised");
            return graphql_error(StatusCode::INTERNAL_SERVER_ERROR, "the response could not be serialised");
        }
    };
    if let (Some(key), Some(until)) = (cache_key, reusable_until) {
        // Own the key exactly: the request's bytes may be a view of a larger read buffer.
        state.responses.insert(Bytes::copy_from_slice(&key), body.clone(), until, operation);
    }
    graphql_response(body, reusable_until)
}

fn replay(state: &AppState, stored: &StoredResponse) -> Response {
    state.metrics.response_cache_hits.inc();
    state.metrics.graphql_operations.with_label_values(&[stored.operation.as_str(), "ok"]).inc();
    graphql_response(stored.body.clone(), Some(stored.expires_at))
}

fn graphql_response(body: Bytes, reusable_until: Option<Instant>) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/graphql-response+json"));
    if let Ok(value) = HeaderValue::from_str(&cache_control(reusable_until)) {
        headers.insert(CACHE_CONTROL, value);
    }
    response
}

fn graphql_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"errors": [{"message": message}]}))).into_response()
}

/// The operation's name for metrics: `operationName`, else the name in the document (parsed
/// once; execution reuses the parse). Names come from clients: keep the label clean.
fn operation_label(request: &mut async_graphql::Request) -> String {
    let name = match &request.operation_name {
        Some(name) => Some(name.clone()),
        None => match request.parsed_query().map(|doc| &doc.operations) {
            Ok(async_graphql::parser::types::DocumentOperations::Multiple(operations))
                if operations.len() == 1 =>
            {
                operations.keys().next().map(|name| name.to_string())
            }
            _ => None,
        },
    };
    match name {
        None => "anonymous".to_owned(),
        Some(name) if name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
            name
        }
        Some(_) => "invalid_name".to_owned(),
    }
}

async fn livez() -> &'static str {
    "ok"
}

/// 200 while serving, 503 before and from the start of shutdown. Never calls a provider; the
/// startup credential check is reported, not waited on.
async fn readyz(State(state): State<AppState>) -> Response {
    let mut accounts = state.credentials.read().map(|map| json!(*map)).unwrap_or_default();
    for account in state.accounts.iter() {
        if let Some(report) = accounts.get_mut(&**account.name()) {
            report["circuit"] = json!(account.circuit());
        }
    }
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, Json(json!({"status": "ready", "accounts": accounts}))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready", "accounts": accounts})))
            .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    for account in state.accounts.iter() {
        let value = match account.circuit() {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        };
        state.metrics.circuit_state.with_label_values(&[account.kind().slug, account.name()]).set(value);
    }
    state
        .metrics
        .cache_entries
        .set(i64::try_from(state.service.cache().entry_count().await).unwrap_or(i64::MAX));
    ([(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not found", "routes": ["/graphql", "/livez", "/readyz", "/metrics"]})),
    )
        .into_response()
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
