//! GraphQL over HTTP on `/graphql`: POST (JSON bodies; Server-Sent Events, or a callback
//! subscription from a router), GET (queries in the URL; GraphiQL for a browser, a WebSocket
//! upgrade, or Server-Sent Events), and the replay of answers kept in
//! `cache::responses`. What runs, and how, is the pipeline's (`graphql::pipeline`); this is
//! its HTTP adapter.
//!
//! Owns: CSRF prevention, the media types (which status a request error gets), the body's
//! bound, the replay key, and how an answer is written and kept.

use std::time::Instant;

use async_graphql_axum::rejection::GraphQLRejection;
use async_graphql_axum::GraphQLRequest;
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::json;

use crate::access::Client;
use crate::cache::responses::{cache_control, StoredResponse};
use crate::http::refusal::{refuse, Code};
use crate::http::{callback, graphiql, read_body, streams, AppState};

/// What a response is sent as (GraphQL over HTTP): `application/graphql-response+json` to a
/// client that accepts it, where a request that could not run (it did not parse or validate)
/// is a 400; `application/json` otherwise (and to a client that says nothing), always 200.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MediaType {
    GraphqlResponse,
    Json,
}

impl MediaType {
    fn of(headers: &HeaderMap) -> Self {
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
fn media_type(headers: &HeaderMap) -> String {
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
fn is_preflighted(headers: &HeaderMap) -> bool {
    ["apollo-require-preflight", "x-apollo-operation-name"]
        .iter()
        .any(|name| headers.get(*name).is_some_and(|value| !value.is_empty()))
}

fn csrf_refusal() -> Response {
    refuse(
        Code::CsrfPrevented,
        "this request could have been sent by a browser on another site: send it as \
         application/json, or add a non-empty `apollo-require-preflight` header",
    )
}

/// Every POST body is read whole up to `GATEWAY_MAX_BODY_BYTES` (413 past it), whatever its
/// content type; a JSON body answered moments ago with a reusable answer is replayed.
pub(super) async fn post(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let content_type = media_type(&parts.headers);
    if content_type.starts_with("multipart/") {
        return refuse(Code::UnsupportedMediaType, "multipart requests (uploads) are not accepted");
    }
    if is_simple_content_type(&content_type) && !is_preflighted(&parts.headers) {
        return csrf_refusal();
    }
    let client = match state.access.authenticate(&parts.headers).await {
        Ok(client) => client,
        Err(denied) => return refuse(Code::Unauthenticated, &denied.message()),
    };
    let max = state.max_body_bytes;
    let too_large = || format!("the request body is over {max} bytes (GATEWAY_MAX_BODY_BYTES)");
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max as u64) {
        return refuse(Code::PayloadTooLarge, &too_large());
    }
    let bytes = match read_body(body, max, too_large).await {
        Ok(bytes) => bytes,
        Err(refused) => return refused,
    };
    let media = MediaType::of(&parts.headers);
    if !matches!(content_type.as_str(), "application/json" | "application/graphql-response+json") {
        return refuse(
            Code::UnsupportedMediaType,
            "a POST to /graphql is a JSON body ({\"query\": …}) sent as application/json",
        );
    }
    let sse = streams::wants_sse(&parts.headers);
    let callback = callback::wanted(&parts.headers);
    // Streams are never replayed: no key for them.
    let key = (!sse && !callback).then(|| replay_key(&client, bytes.clone()));
    if let Some(replayed) = key.as_ref().and_then(|key| replay(&state, key, media, &client)) {
        return replayed;
    }
    match serde_json::from_slice::<async_graphql::Request>(&bytes) {
        Ok(request)
            if request.query.trim().is_empty() && !request.extensions.contains_key("persistedQuery") =>
        {
            refuse(Code::BadRequest, "the body has no `query` (nor a persisted query's hash)")
        }
        // Before SSE: a router asks for one or the other, and the callback is the one it names.
        Ok(request) if callback => Box::pin(state.callbacks.subscribe(request.data(client))).await,
        Ok(request) if sse => state.streams.sse(request.data(client)),
        Ok(request) => Box::pin(execute(&state, request.data(client), key, media)).await,
        Err(error) => refuse(
            Code::BadRequest,
            &format!(
                "the body is not a GraphQL request ({{\"query\": \"…\", \"variables\": {{…}}}}): {error}"
            ),
        ),
    }
}

/// A query in the URL runs (or is replayed) when the request proves it is no cross-site one;
/// a browser asking for HTML without one gets GraphiQL, where it is turned on. A WebSocket
/// upgrade becomes a subscription connection; `Accept: text/event-stream` streams the result
/// as Server-Sent Events (how Hive Gateway subscribes).
pub(super) async fn get(State(state): State<AppState>, request: Request) -> Response {
    if streams::wants_websocket(request.headers()) {
        return streams::websocket(State(state), request).await;
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
        return refuse(Code::BadRequest, "GET /graphql needs a `query` parameter");
    }
    if !is_preflighted(request.headers()) {
        return csrf_refusal();
    }
    let client = match state.access.authenticate(request.headers()).await {
        Ok(client) => client,
        Err(denied) => return refuse(Code::Unauthenticated, &denied.message()),
    };
    let key = if sse {
        None
    } else {
        let key = request.uri().query().map(|query| replay_key(&client, Bytes::from(format!("GET?{query}"))));
        if let Some(replayed) = key.as_deref().and_then(|key| replay(&state, key, media, &client)) {
            return replayed;
        }
        key
    };
    let request = match GraphQLRequest::<GraphQLRejection>::from_request(request, &state).await {
        Ok(request) => request.into_inner().data(client),
        Err(_) => {
            return refuse(
                Code::BadRequest,
                "the URL is not a GraphQL request: `query`, and `variables` as JSON if any",
            )
        }
    };
    if sse {
        return state.streams.sse(request);
    }
    Box::pin(execute(&state, request, key, media)).await
}

/// The answer kept for `key`, if the client may be sent it without running anything.
fn replay(state: &AppState, key: &[u8], media: MediaType, client: &Client) -> Option<Response> {
    let started = Instant::now();
    let stored = state.responses.get(key)?;
    state
        .pipeline
        .replays(&stored, client, started)
        .then(|| graphql_response(stored.body.clone(), Some(stored.expires_at), media))
}

/// Runs one GraphQL request (its client in its data) through the pipeline; keeps the answer
/// under `cache_key` when all of it may be reused. Callers box its future: it holds
/// async-graphql's, several kilobytes that every layer above would otherwise move on each poll.
async fn execute(
    state: &AppState,
    request: async_graphql::Request,
    cache_key: Option<Bytes>,
    media: MediaType,
) -> Response {
    // Before any lookup: a webhook that clears the replayed answers while this runs may have
    // changed what it reads, so then its answer is not kept.
    let epoch = state.responses.epoch();
    let executed = match state.pipeline.run(request).await {
        Ok(executed) => executed,
        Err(refused) => return request_error(refused, media),
    };
    // Sized for a single session's answer, so that it is written without growing.
    let mut body = Vec::with_capacity(512);
    let response = &executed.response;
    // A request error has no `data` entry (GraphQL over HTTP): `null` would say it ran.
    let written = if executed.not_run {
        serde_json::to_writer(
            &mut body,
            &RequestErrors { errors: &response.errors, extensions: &response.extensions },
        )
    } else {
        serde_json::to_writer(&mut body, response)
    };
    if let Err(error) = written {
        tracing::error!(%error, "a GraphQL response could not be serialised");
        return refuse(Code::InternalError, "the response could not be serialised");
    }
    let body = Bytes::from(body);
    let (reusable_until, not_run) = (executed.reusable_until, executed.not_run);
    if let (Some(key), Some(until)) = (cache_key, reusable_until) {
        let stored = StoredResponse {
            body: body.clone(),
            expires_at: until,
            operation: executed.operation,
            sessions: executed.sessions,
            admitted: executed.admitted,
            epoch,
        };
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
