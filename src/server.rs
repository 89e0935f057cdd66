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
use std::time::{Duration, Instant};

use bytes::Bytes;

use async_graphql_axum::rejection::GraphQLRejection;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest};
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::access::{Access, AccessConfig, AuthMode, Client, Denied};
use crate::cache::SessionCache;
use crate::config::Config;
use crate::documents::{Admission, ApqStore};
use crate::domain::Secret;
use crate::edge::{self, EdgeLimits, Phase};
use crate::graphql::limits::{self, ShapeLimits};
use crate::graphql::{self, DocumentCache, Gateway, GatewaySchema, QueryLimits, RequestScope};
use crate::live::Hub;
use crate::metrics::{Metrics, OperationLabels};
use crate::providers::guard::CircuitState;
use crate::providers::guard::SharedQuota;
use crate::providers::{self, Account, AccountConfig, CredentialStatus, ProviderKind};
use crate::quota::ClientQuotas;
use crate::refusal::graphql_error;
use crate::response_cache::{cache_control, ResponseCache, StoredResponse};
use crate::sandbox::{self, SandboxOptions, SandboxWebhook};
use crate::service::SessionService;
use crate::shared::Shared;
use crate::streams::{self, Guarded, StreamLimits, Streams};
use crate::webhooks::{self, Webhooks};
use crate::{graphiql, net, telemetry};

/// Distinct operation names kept as metrics labels; later ones count as `other`.
const OPERATION_LABELS_MAX: usize = 200;

/// Documents registered through APQ, at most (estimated bytes).
const APQ_BYTES: u64 = 16 * 1024 * 1024;

/// Parsed documents kept (estimated bytes): thousands of distinct dashboard queries.
const DOCUMENT_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// What the startup credential check found, per account name (`/readyz` reports it).
type Credentials = Arc<RwLock<BTreeMap<Arc<str>, CredentialStatus>>>;

/// What every handler reads: one pointer to clone (axum clones the state several times per
/// request; cloning each field was ~2 % of an executed request).
#[derive(Clone)]
struct AppState(Arc<StateInner>);

impl std::ops::Deref for AppState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.0
    }
}

struct StateInner {
    schema: GatewaySchema,
    /// The same schema validating nothing: for documents that passed the strict one before
    /// (validation was 44 % of an executed request; their limits held then and hold now).
    prevalidated_schema: GatewaySchema,
    documents: Arc<DocumentCache>,
    responses: Arc<ResponseCache>,
    service: Arc<SessionService>,
    metrics: Arc<Metrics>,
    /// False until the server is serving, and again from the moment shutdown begins.
    ready: Arc<AtomicBool>,
    credentials: Credentials,
    /// For their circuits' state, read live by `/readyz` and `/metrics`.
    accounts: Arc<Vec<Arc<Account>>>,
    /// The longest a request may take, whatever it waits for.
    request_timeout: Duration,
    /// The most a request body may hold.
    max_body_bytes: usize,
    /// Serve GraphiQL to browsers.
    graphiql: bool,
    shape_limits: ShapeLimits,
    /// Operation names as metrics labels, from a bounded set.
    operations: Arc<OperationLabels>,
    /// Subscriptions over WebSocket and Server-Sent Events.
    streams: Streams,
    webhooks: Arc<Webhooks>,
    /// Who may ask.
    access: Arc<Access>,
    /// What may run (trusted documents) and the texts behind APQ hashes.
    admission: Admission,
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
    /// Where a shutdown stands, for connections and streams.
    phase: tokio::sync::watch::Sender<Phase>,
    /// `/metrics` on its own port (GATEWAY_METRICS_LISTEN).
    metrics_server: Option<(TcpListener, Router)>,
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
        // Bound first: the demo's sandboxes send their webhooks to this port.
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (GATEWAY_LISTEN): {e}", config.listen))?;
        if config.demo {
            let gateway = loopback(listener.local_addr()?);
            let options = SandboxOptions { latency: config.demo_latency, step: config.demo_step };
            config.accounts = demo_accounts(&kinds, options, gateway).await?;
        }
        for kind in &kinds {
            if !config.accounts.iter().any(|account| std::ptr::eq(account.kind, *kind)) {
                config.accounts.push(AccountConfig::unconfigured(kind));
            }
        }
        let metrics = Arc::new(Metrics::new());
        let http = net::http_client()?;
        let shared = config.redis.as_ref().map(|redis| Shared::new(redis, metrics.clone())).transpose()?;
        let mut limits = config.limits();
        limits.shared_quota = shared.clone().map(|shared| shared as Arc<dyn SharedQuota>);
        let accounts = config
            .accounts
            .iter()
            .map(|account| Account::new(account.clone(), &limits, &http, &metrics).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let credentials: Credentials = Arc::new(RwLock::new(
            accounts.iter().map(|account| (account.name().clone(), CredentialStatus::Checking)).collect(),
        ));
        let hub = Arc::new(Hub::new(REFERENCES_MAX, metrics.clone()));
        let mut cache = SessionCache::new(config.cache, hub, metrics.clone());
        if let Some(shared) = &shared {
            cache = cache.with_shared(shared.clone());
        }
        let service = Arc::new(SessionService::new(&accounts, cache)?);
        let responses = Arc::new(ResponseCache::new(config.response_cache_bytes));
        let replayed = responses.clone();
        // Another replica's webhook changed a session: replayed answers may hold it.
        service.listen_to_replicas(move || replayed.clear());
        let gateway = Gateway {
            service: service.clone(),
            batch_max: config.batch_max,
            entities_max: config.entities_max,
            quotas: Arc::new(ClientQuotas::new(&config.client_rate_limit)),
        };
        let limits = QueryLimits { max_depth: config.max_depth, max_complexity: config.max_complexity };
        let admission = Admission {
            trusted: config.trusted_documents.clone(),
            apq: ApqStore::new(config.apq.then_some(APQ_BYTES)),
        };
        let schema = graphql::schema(gateway.clone(), &kinds, config.introspection, limits, false);
        let prevalidated_schema = graphql::schema(gateway, &kinds, config.introspection, limits, true);
        let ready = Arc::new(AtomicBool::new(false));
        let shape_limits =
            ShapeLimits { max_aliases: config.max_aliases, max_root_fields: config.max_root_fields };
        let access = match config.access.clone() {
            Some(access) => access,
            None if config.demo => AccessConfig::open(),
            None => anyhow::bail!(
                "choose how clients authenticate: GATEWAY_AUTH=api-key (keys in [clients.NAME] tables), \
                 GATEWAY_AUTH=jwt (GATEWAY_JWT_JWKS_URL, _ISSUER, _AUDIENCE), or GATEWAY_AUTH=none to let \
                 anyone who reaches the port read every account (see the README's Security section)"
            ),
        };
        if access.mode == AuthMode::None && !config.demo {
            tracing::warn!("GATEWAY_AUTH=none: anyone who reaches this port reads every account");
        }
        let access = Arc::new(Access::new(access, http.clone()));
        if access.mode() == AuthMode::Jwt {
            tokio::spawn(access.clone().keep_jwks_fresh());
        }
        let (phase, phases) = tokio::sync::watch::channel(Phase::Serving);
        let streams = Streams::new(
            Guarded::new(schema.clone(), shape_limits, admission.clone()),
            StreamLimits {
                max_connections: config.max_subscription_connections,
                per_connection: config.subscriptions_per_connection,
                ping: config.subscription_ping_interval,
                init_timeout: config.connection_init_timeout,
                max_message_bytes: config.max_ws_message_bytes,
            },
            phases,
            access.clone(),
            metrics.clone(),
        );
        let webhooks = Arc::new(Webhooks::new(service.clone(), &kinds, responses.clone(), metrics.clone()));
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (GATEWAY_METRICS_LISTEN): {e}"))?,
            ),
            None => None,
        };
        let state = AppState(Arc::new(StateInner {
            schema,
            prevalidated_schema,
            documents: Arc::new(DocumentCache::new(DOCUMENT_CACHE_BYTES)),
            responses,
            service,
            metrics,
            ready: ready.clone(),
            credentials: credentials.clone(),
            accounts: Arc::new(accounts.clone()),
            request_timeout: config.request_timeout,
            max_body_bytes: config.max_body_bytes,
            graphiql: config.graphiql,
            shape_limits,
            operations: Arc::new(OperationLabels::new(OPERATION_LABELS_MAX)),
            streams,
            webhooks,
            access,
            admission,
        }));
        // Scrapers only, on a port the public Service need not expose.
        let metrics_server = metrics_listener.map(|listener| {
            let router = Router::new().route("/metrics", get(metrics_page)).with_state(state.clone());
            (listener, router)
        });
        let router = router(state, metrics_server.is_none());
        Ok(Self { listener, router, ready, config, accounts, credentials, phase, metrics_server })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served when it has its own port.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Serves until `stop` resolves, then drains: `/readyz` answers 503 at once, the listener
    /// keeps serving for `shutdown_delay` (so the cluster stops routing here), then in-flight
    /// requests get `shutdown_grace` to finish.
    pub async fn run_until_stopped(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self { listener, router, ready, config, accounts, credentials, phase, metrics_server } = self;
        if let Some((listener, router)) = metrics_server {
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).await {
                    tracing::error!(%error, "the metrics listener stopped");
                }
            });
        }
        tokio::spawn(check_credentials(accounts, credentials));
        let phases = phase.subscribe();
        let limits = EdgeLimits {
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
        };
        let mut server = tokio::spawn(edge::serve(listener, router, limits, phases));
        ready.store(true, Ordering::SeqCst);
        tokio::select! {
            result = &mut server => return Ok(result?),
            () = stop => {}
        }
        // Not ready, and every connection is asked to move off (HTTP/2: GOAWAY now; HTTP/1.1:
        // `Connection: close` on its next response) while the listener still serves.
        ready.store(false, Ordering::SeqCst);
        let _ = phase.send(Phase::Draining);
        tracing::info!(delay = ?config.shutdown_delay, grace = ?config.shutdown_grace, "shutting down: not ready, draining");
        tokio::time::sleep(config.shutdown_delay).await;
        let _ = phase.send(Phase::Closing);
        match tokio::time::timeout(config.shutdown_grace, &mut server).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!("shutdown grace period over with requests still in flight; exiting"),
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Entries of the index from payment and escrow ids to sessions (webhooks name sessions by
/// them).
const REFERENCES_MAX: u64 = 200_000;

/// Where a process on this machine reaches `addr` (a wildcard address is reached on loopback).
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// The routes; `/metrics` only when it is not served on a port of its own.
fn router(state: AppState, with_metrics: bool) -> Router {
    let mut router = Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/ws", get(websocket))
        .route(&format!("{}/{{file}}", graphiql::ASSET_PATH), get(graphiql::asset))
        .route("/webhooks/{provider}", post(webhook))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz));
    if with_metrics {
        router = router.route("/metrics", get(metrics_page));
    }
    router
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
    gateway: SocketAddr,
) -> anyhow::Result<Vec<AccountConfig>> {
    let mut accounts = Vec::new();
    for kind in kinds {
        for (index, (environment, _)) in kind.environments.iter().enumerate() {
            let name = if index == 0 { kind.slug.to_owned() } else { format!("{}_{environment}", kind.slug) };
            // Public demo values per account, so that each sandbox accepts only its own key
            // and the gateway only its own sandbox's webhooks.
            let key = format!("demo_{name}_key");
            let webhook = (kind.sandbox.sends_webhooks && kind.webhooks.is_some()).then(|| SandboxWebhook {
                url: format!("http://{gateway}/webhooks/{}", kind.slug),
                secret: sandbox::demo_webhook_secret(&name),
                business_id: format!("demo_{name}"),
            });
            let endpoint = sandbox::serve(kind.sandbox, environment, &key, options, webhook.clone()).await?;
            // Its own target, so that a quiet log level can still show where the sandboxes are.
            tracing::info!(
                target: "checkout_gateway::demo",
                account = %name,
                environment,
                base_url = %endpoint.base_url,
                webhooks = webhook.is_some(),
                "demo mode: sandbox provider"
            );
            accounts.push(AccountConfig {
                name: Arc::from(name),
                base_url: endpoint.base_url,
                api_key: Some(Secret::new(key)),
                default: index == 0,
                webhook_secret: webhook.as_ref().map(|webhook| Secret::new(webhook.secret.clone())),
                business_id: webhook.map(|webhook| webhook.business_id),
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
            map.insert(account.name().clone(), status);
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
        .map_or_else(new_request_id, str::to_owned);
    let route: &'static str = match request.uri().path() {
        "/graphql" => "/graphql",
        "/ws" => "/ws",
        path if path.starts_with("/graphiql/") => "/graphiql",
        path if path.starts_with("/webhooks/") => "/webhooks",
        "/livez" => "/livez",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        _ => "other",
    };
    let method = request.method().clone();
    let version = request.version();
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, route);
    let started = Instant::now();
    let handled = telemetry::with_request_id(request_id.clone(), next.run(request)).instrument(span.clone());
    let mut response = match tokio::time::timeout(state.request_timeout, handled).await {
        Ok(response) => response,
        Err(_) => graphql_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took longer than the gateway allows (GATEWAY_REQUEST_TIMEOUT)",
        ),
    };
    // Draining: an HTTP/1.1 client closes this connection after this response and opens its
    // next one elsewhere, instead of reusing one that is about to close under it.
    if !state.ready.load(Ordering::Relaxed) && version <= axum::http::Version::HTTP_11 {
        response.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    let elapsed = started.elapsed();
    let status = response.status();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    // Whatever the route, a refusal is never stored (a 404, 405, 413, 503…).
    if !status.is_success() && !response.headers().contains_key(CACHE_CONTROL) {
        response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let method = method_label(&method);
    state.metrics.http_requests.with_label_values(&[route, method, status.as_str()]).inc();
    state.metrics.http_duration.with_label_values(&[route, method]).observe(elapsed.as_secs_f64());
    let status = status.as_u16();
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    // Every request is counted in the metrics; the log at `info` holds the ones worth reading
    // (refused, failed or slow), so that logging every success does not cost the hot path.
    span.in_scope(|| {
        if status >= 400 || elapsed >= SLOW_REQUEST {
            tracing::info!(status, elapsed_ms, "served");
        } else {
            tracing::debug!(status, elapsed_ms, "served");
        }
    });
    response
}

/// A request slower than this is logged at `info` even when it succeeded.
const SLOW_REQUEST: Duration = Duration::from_secs(1);

/// A random (version 4) UUID from a fast non-cryptographic generator: a request id needs to
/// be unique, not secret, and asking the kernel for randomness on every request costs.
fn new_request_id() -> String {
    let bytes = fastrand::u128(..).to_le_bytes();
    uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
}

/// Methods are labels from a fixed set: a client inventing methods must not invent series.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// What a response is sent as (GraphQL over HTTP): `application/graphql-response+json` to a
/// client that accepts it, where a request that could not run (it did not parse or validate)
/// is a 400; `application/json` otherwise (and to a client that says nothing), always 200.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MediaType {
    GraphqlResponse,
    Json,
}

impl MediaType {
    fn of(headers: &axum::http::HeaderMap) -> Self {
        let accepts = headers.get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
        if accepts.contains("application/graphql-response+json") {
            MediaType::GraphqlResponse
        } else {
            MediaType::Json
        }
    }

    /// The status of a request that could not run (it did not parse or validate).
    fn not_run_status(self) -> StatusCode {
        match self {
            MediaType::GraphqlResponse => StatusCode::BAD_REQUEST,
            MediaType::Json => StatusCode::OK,
        }
    }

    fn header(self) -> HeaderValue {
        match self {
            MediaType::GraphqlResponse => HeaderValue::from_static("application/graphql-response+json"),
            MediaType::Json => HeaderValue::from_static("application/json"),
        }
    }
}

/// The request's media type without parameters, lower case (`application/json`); empty when
/// it has none.
fn media_type(headers: &axum::http::HeaderMap) -> String {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Browsers send these content types (or none) without a CORS preflight, so a page on any
/// site could make a dashboard user's browser post one; a query sent so must prove it was not
/// (Apollo Router's CSRF rule).
fn is_simple_content_type(media_type: &str) -> bool {
    matches!(media_type, "" | "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data")
}

/// A non-empty `apollo-require-preflight` or `x-apollo-operation-name`: no browser sends a
/// custom header cross-site without a preflight, which this server does not grant.
fn is_preflighted(headers: &axum::http::HeaderMap) -> bool {
    ["apollo-require-preflight", "x-apollo-operation-name"]
        .iter()
        .any(|name| headers.get(*name).is_some_and(|value| !value.is_empty()))
}

const CSRF_REFUSAL: &str = "this request could have been sent by a browser on another site: send it as \
     application/json, or add a non-empty `apollo-require-preflight` header";

/// Every POST body is read whole up to `GATEWAY_MAX_BODY_BYTES` (413 past it), whatever its
/// content type; a JSON body answered moments ago with a reusable answer is replayed.
async fn graphql_post(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let content_type = media_type(&parts.headers);
    if content_type.starts_with("multipart/") {
        return graphql_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "multipart requests (uploads) are not accepted",
        );
    }
    if is_simple_content_type(&content_type) && !is_preflighted(&parts.headers) {
        return graphql_error(StatusCode::BAD_REQUEST, CSRF_REFUSAL);
    }
    let client = match state.access.authenticate(&parts.headers).await {
        Ok(client) => client,
        Err(denied) => return unauthorized(denied),
    };
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || {
        graphql_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is over {} bytes (GATEWAY_MAX_BODY_BYTES)", state.max_body_bytes),
        )
    };
    if declared.is_some_and(|length| length > state.max_body_bytes as u64) {
        return too_large();
    }
    let bytes = match axum::body::to_bytes(body, state.max_body_bytes).await {
        Ok(bytes) => bytes,
        Err(error) if is_length_limit(&error) => return too_large(),
        Err(_) => return graphql_error(StatusCode::BAD_REQUEST, "the request body could not be read"),
    };
    let media = MediaType::of(&parts.headers);
    if !matches!(content_type.as_str(), "application/json" | "application/graphql-response+json") {
        return graphql_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a POST to /graphql is a JSON body ({\"query\": …}) sent as application/json",
        );
    }
    let sse = streams::wants_sse(&parts.headers);
    let key = replay_key(&client, bytes.clone());
    if !sse {
        if let Some(stored) = state.responses.get(&key) {
            if state.admission.may_replay(stored.admitted, client.via_router, &stored.operation) {
                return replay(&state, &stored, media, &client);
            }
        }
    }
    match serde_json::from_slice::<async_graphql::Request>(&bytes) {
        Ok(request)
            if request.query.trim().is_empty() && !request.extensions.contains_key("persistedQuery") =>
        {
            graphql_error(StatusCode::BAD_REQUEST, "the body has no `query` (nor a persisted query's hash)")
        }
        Ok(request) if sse => state.streams.sse(request.data(client)),
        Ok(request) => Box::pin(execute(&state, request, Some(key), media, client)).await,
        Err(error) => graphql_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "the body is not a GraphQL request ({{\"query\": \"…\", \"variables\": {{…}}}}): {error}"
            ),
        ),
    }
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// A query in the URL runs (or is replayed) when the request proves it is no cross-site one;
/// a browser asking for HTML without one gets GraphiQL, where it is turned on. A WebSocket
/// upgrade becomes a subscription connection; `Accept: text/event-stream` streams the result
/// as Server-Sent Events (how Hive Gateway subscribes).
async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    if streams::wants_websocket(request.headers()) {
        return websocket(State(state), request).await;
    }
    let media = MediaType::of(request.headers());
    let sse = streams::wants_sse(request.headers());
    // A query, or (APQ, trusted documents) a persisted query's hash in `extensions`.
    let has_query = request.uri().query().is_some_and(|query| {
        query.split('&').any(|pair| {
            (pair.starts_with("query=") && pair.len() > "query=".len()) || pair.starts_with("extensions=")
        })
    });
    let wants_html = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    // A browser navigating here (a `query` in the URL fills GraphiQL's editor).
    if wants_html && state.graphiql && !is_preflighted(request.headers()) {
        return graphiql::page();
    }
    if !has_query {
        return graphql_error(StatusCode::BAD_REQUEST, "GET /graphql needs a `query` parameter");
    }
    if !is_preflighted(request.headers()) {
        return graphql_error(StatusCode::BAD_REQUEST, CSRF_REFUSAL);
    }
    let client = match state.access.authenticate(request.headers()).await {
        Ok(client) => client,
        Err(denied) => return unauthorized(denied),
    };
    if sse {
        return match GraphQLRequest::<GraphQLRejection>::from_request(request, &state).await {
            Ok(request) => state.streams.sse(request.into_inner().data(client)),
            Err(_) => graphql_error(StatusCode::BAD_REQUEST, URL_REFUSAL),
        };
    }
    let key = request.uri().query().map(|query| replay_key(&client, Bytes::from(format!("GET?{query}"))));
    if let Some(stored) = key.as_deref().and_then(|key| state.responses.get(key)) {
        if state.admission.may_replay(stored.admitted, client.via_router, &stored.operation) {
            return replay(&state, &stored, media, &client);
        }
    }
    match GraphQLRequest::<GraphQLRejection>::from_request(request, &state).await {
        Ok(request) => Box::pin(execute(&state, request.into_inner(), key, media, client)).await,
        Err(_) => graphql_error(StatusCode::BAD_REQUEST, URL_REFUSAL),
    }
}

const URL_REFUSAL: &str = "the URL is not a GraphQL request: `query`, and `variables` as JSON if any";

/// A WebSocket for subscriptions (`/ws`, Apollo Router's default subgraph path, and
/// `/graphql`).
async fn websocket(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    // The connection's place among GATEWAY_MAX_CONNECTIONS, kept by the WebSocket it becomes.
    let slot = parts.extensions.remove::<edge::ConnectionSlot>();
    let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &state).await;
    let protocol = GraphQLProtocol::from_request_parts(&mut parts, &state).await;
    // Credentials in the upgrade's headers (routers, servers), or else in the protocol's
    // `connection_init` payload (browsers cannot set headers on a WebSocket).
    let client = match state.access.authenticate(&parts.headers).await {
        Ok(client) => Some(client),
        Err(Denied::Missing) => None,
        Err(denied) => return unauthorized(denied),
    };
    match (upgrade, protocol) {
        (Ok(upgrade), Ok(protocol)) => state.streams.websocket(&parts.headers, upgrade, protocol, client, slot),
        _ => graphql_error(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade with the `graphql-transport-ws` (or `graphql-ws`) subprotocol is expected here",
        ),
    }
}

/// A provider's webhook delivery (see `webhooks`): its body is bounded on its own, far below
/// a GraphQL request's.
async fn webhook(State(state): State<AppState>, Path(provider): Path<String>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, webhooks::MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(error) if is_length_limit(&error) => {
            return graphql_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("a webhook delivery holds at most {} bytes", webhooks::MAX_BODY_BYTES),
            )
        }
        Err(_) => return graphql_error(StatusCode::BAD_REQUEST, "the request body could not be read"),
    };
    state.webhooks.receive(&provider, &parts.headers, &bytes).await
}

/// Runs one GraphQL request; stores the answer under `cache_key` when all of it may be reused.
/// Callers box its future: it holds async-graphql's, several kilobytes that every layer above
/// would otherwise move on each poll.
async fn execute(
    state: &AppState,
    mut request: async_graphql::Request,
    cache_key: Option<Bytes>,
    media: MediaType,
    client: Client,
) -> Response {
    let admitted = match state.admission.admit(&mut request, client.via_router) {
        Ok(admitted) => admitted,
        Err(refused) => {
            log_access(&client, "refused", 0);
            return request_error(refused, media);
        }
    };
    let prepared = state.documents.prepare(&mut request);
    let validated = prepared.validated();
    // A document that ran before passed these checks then: they depend on nothing else.
    if !validated {
        if let Ok(document) = request.parsed_query() {
            if let Err(reason) = limits::check(document, state.shape_limits) {
                return request_error(async_graphql::ServerError::new(reason, None), media);
            }
        }
    }
    let operation = state.operations.label(&mut request);
    // Before any lookup: a webhook that clears the replayed answers while this runs may have
    // changed what it reads, so then its answer is not kept.
    let epoch = state.responses.epoch();
    let scope = RequestScope::default();
    let request = request.data(scope.clone()).data(client.clone());
    let schema = if validated { &state.prevalidated_schema } else { &state.schema };
    let response = schema.execute(request).await;
    let outcome = if response.is_ok() { "ok" } else { "error" };
    state.metrics.graphql_operations.with_label_values(&[operation.as_str(), outcome]).inc();
    let reusable_until = scope.reusable_until(response.is_err());
    // A request that never ran (it did not parse or validate) has only errors without a path.
    let not_run = response.data == async_graphql::Value::Null
        && response.is_err()
        && response.errors.iter().all(|error| error.path.is_empty());
    if !not_run && !validated {
        prepared.mark_validated();
    }
    // Sized for a single session's answer, so that it is written without growing.
    let mut body = Vec::with_capacity(512);
    // A request error has no `data` entry (GraphQL over HTTP): `null` would say it ran.
    let written = if not_run {
        serde_json::to_writer(
            &mut body,
            &RequestErrors { errors: &response.errors, extensions: &response.extensions },
        )
    } else {
        serde_json::to_writer(&mut body, &response)
    };
    if let Err(error) = written {
        tracing::error!(%error, "a GraphQL response could not be serialised");
        return graphql_error(StatusCode::INTERNAL_SERVER_ERROR, "the response could not be serialised");
    }
    let body = Bytes::from(body);
    let sessions = scope.sessions();
    log_access(&client, &operation, sessions);
    if let (Some(key), Some(until)) = (cache_key, reusable_until) {
        let stored =
            StoredResponse { body: body.clone(), expires_at: until, operation, sessions, admitted, epoch };
        state.responses.insert(&key, stored);
    }
    let mut response = graphql_response(body, reusable_until, media);
    if not_run {
        *response.status_mut() = media.not_run_status();
    }
    response
}

/// The body of a request that never ran: its errors (and extensions, if any), no `data`.
#[derive(serde::Serialize)]
struct RequestErrors<'a> {
    errors: &'a [async_graphql::ServerError],
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    extensions: &'a std::collections::BTreeMap<String, async_graphql::Value>,
}

fn replay(state: &AppState, stored: &StoredResponse, media: MediaType, client: &Client) -> Response {
    state.metrics.response_cache_hits.inc();
    log_access(client, &stored.operation, stored.sessions);
    state.metrics.graphql_operations.with_label_values(&[stored.operation.as_str(), "ok"]).inc();
    graphql_response(stored.body.clone(), Some(stored.expires_at), media)
}

/// The access trail for personal data: who (never a secret), which operation, how many
/// sessions. Its own target, so it can be routed or silenced apart from the rest.
fn log_access(client: &Client, operation: &str, sessions: usize) {
    telemetry::access(&client.name, operation, sessions);
}

/// Replayed answers are keyed by the request and the rights it was answered with, so a client
/// never receives an answer assembled for other rights.
fn replay_key(client: &Client, request: Bytes) -> Bytes {
    let rights = client.rights.fingerprint();
    if rights.is_empty() {
        return request;
    }
    let mut key = Vec::with_capacity(rights.len() + request.len());
    key.extend_from_slice(rights.as_bytes());
    key.extend_from_slice(&request);
    Bytes::from(key)
}

/// 401 with a GraphQL error body; never stored.
fn unauthorized(denied: Denied) -> Response {
    let mut response = graphql_error(StatusCode::UNAUTHORIZED, &denied.message());
    response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn graphql_response(body: Bytes, reusable_until: Option<Instant>, media: MediaType) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, media.header());
    if let Ok(value) = HeaderValue::from_str(&cache_control(reusable_until)) {
        headers.insert(CACHE_CONTROL, value);
    }
    response
}

/// A document refused before it ran, as GraphQL over HTTP says: 400 for a client that accepts
/// `application/graphql-response+json`, 200 for one that knows only `application/json`.
fn request_error(error: async_graphql::ServerError, media: MediaType) -> Response {
    // No `data`: the request never ran.
    let body = serde_json::to_vec(&json!({"errors": [error]})).unwrap_or_default();
    let mut response = graphql_response(Bytes::from(body), None, media);
    *response.status_mut() = media.not_run_status();
    response
}

async fn livez() -> &'static str {
    "ok"
}

/// 200 while serving, 503 before and from the start of shutdown. Never calls a provider; the
/// startup credential check is reported, not waited on.
async fn readyz(State(state): State<AppState>) -> Response {
    let checked = state.credentials.read().map(|map| map.clone()).unwrap_or_default();
    let accounts: serde_json::Map<String, serde_json::Value> = state
        .accounts
        .iter()
        .map(|account| {
            let credentials = checked.get(account.name()).copied().unwrap_or(CredentialStatus::Checking);
            let report = json!({
                "provider": account.kind().slug,
                "default": account.config.default,
                "credentials": credentials,
                "circuit": account.circuit(),
            });
            (account.name().to_string(), report)
        })
        .collect();
    // Redis trouble is reported, never made a reason to be unready: the replica works alone.
    let shared = match state.service.cache().shared() {
        None => json!({"configured": false}),
        Some(shared) => json!({"configured": true, "state": shared.state(), "pubsub": shared.is_listening()}),
    };
    let (status, label) = if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    (status, Json(json!({"status": label, "accounts": accounts, "shared": shared}))).into_response()
}

async fn metrics_page(State(state): State<AppState>) -> Response {
    // The writer counts; the counter catches up at each scrape.
    let dropped = telemetry::dropped_log_lines();
    let counted = state.metrics.log_lines_dropped.get();
    state.metrics.log_lines_dropped.inc_by(dropped.saturating_sub(counted));
    state.metrics.sample_process();
    for account in state.accounts.iter() {
        let value = match account.circuit() {
            CircuitState::Closed => 0,
            CircuitState::HalfOpen => 1,
            CircuitState::Open => 2,
        };
        let label = [account.kind().slug, &**account.name()];
        state.metrics.circuit_state.with_label_values(&label).set(value);
        state.metrics.upstream_hold.with_label_values(&label).set(account.held_for().as_secs_f64());
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
        Json(json!({"error": "not found", "routes": ["/graphql", "/ws", "/webhooks/{provider}", "/livez", "/readyz", "/metrics"]})),
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
