//! HTTP: `/graphql` (POST, GET for queries, GraphiQL for browsers), `/livez`, `/readyz`,
//! `/metrics`; startup ([`Application::build`], which reports the port it bound) and graceful
//! shutdown.
//!
//! Owns: the HTTP edge and the wiring of every part (`Application::build_with`), including
//! `--demo` (one sandbox and one account per environment of each provider) and `/readyz`'s
//! per-account credential report.

pub mod edge;
pub mod graphiql;
pub mod readiness;
pub mod refusal;
pub mod streams;
pub mod webhooks;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
use tracing::Instrument;

use crate::access::{Access, Client, Denied};
use crate::cache::responses::{cache_control, ResponseCache, StoredResponse};
use crate::graphql::documents::Admission;
use crate::graphql::limits::{self, ShapeLimits};
use crate::graphql::{DocumentCache, GatewaySchema, RequestScope};
use crate::http::readiness::Readiness;
use crate::http::refusal::graphql_error;
use crate::http::streams::Streams;
use crate::http::webhooks::Webhooks;
use crate::providers::guard::CircuitState;
use crate::providers::Account;
use crate::sessions::SessionService;
use crate::telemetry;
use crate::telemetry::metrics::{Metrics, OperationLabels};

/// What every handler reads: one pointer to clone (axum clones the state several times per
/// request; cloning each field was ~2 % of an executed request).
#[derive(Clone)]
pub(crate) struct AppState(pub(crate) Arc<StateInner>);

impl std::ops::Deref for AppState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.0
    }
}

pub(crate) struct StateInner {
    pub(crate) schema: GatewaySchema,
    /// The same schema validating nothing: for documents that passed the strict one before
    /// (validation was 44 % of an executed request; their limits held then and hold now).
    pub(crate) prevalidated_schema: GatewaySchema,
    pub(crate) documents: Arc<DocumentCache>,
    pub(crate) responses: Arc<ResponseCache>,
    pub(crate) service: Arc<SessionService>,
    pub(crate) metrics: Arc<Metrics>,
    /// False until the server is serving, and again from the moment shutdown begins.
    pub(crate) ready: Arc<AtomicBool>,
    /// What `/readyz` reports besides being ready.
    pub(crate) readiness: Arc<Readiness>,
    /// For their circuits' state, read live by `/metrics`.
    pub(crate) accounts: Arc<Vec<Arc<Account>>>,
    /// The longest a request may take, whatever it waits for.
    pub(crate) request_timeout: Duration,
    /// The most a request body may hold.
    pub(crate) max_body_bytes: usize,
    /// Serve GraphiQL to browsers.
    pub(crate) graphiql: bool,
    pub(crate) shape_limits: ShapeLimits,
    /// Operation names as metrics labels, from a bounded set.
    pub(crate) operations: Arc<OperationLabels>,
    /// Subscriptions over WebSocket and Server-Sent Events.
    pub(crate) streams: Streams,
    pub(crate) webhooks: Arc<Webhooks>,
    /// Who may ask.
    pub(crate) access: Arc<Access>,
    /// What may run (trusted documents) and the texts behind APQ hashes.
    pub(crate) admission: Admission,
}

/// The routes; `/metrics` only when it is not served on a port of its own.
pub(crate) fn router(state: AppState, with_metrics: bool) -> Router {
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
    let mut report = state.readiness.report();
    let (status, label) = if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    report["status"] = json!(label);
    (status, Json(report)).into_response()
}

pub(crate) async fn metrics_page(State(state): State<AppState>) -> Response {
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
