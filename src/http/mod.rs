//! HTTP: the routes (`/graphql` for POST, GET and GraphiQL, `/ws`, `/webhooks/{provider}`,
//! `/livez`, `/readyz`, `/metrics`) and what every handler reads ([`AppState`]).
//!
//! Owns: which path goes to which handler, and the state they share. The handlers are by job:
//! `graphql` (GraphQL over HTTP), `streams` (WebSocket and SSE), `callback` (subscriptions
//! over HTTP callbacks to a router), `webhooks`, `probes`,
//! `graphiql`; `observe` watches every request; `refusal` is the one shape of a refusal;
//! `edge` accepts and drains connections.

pub mod callback;
pub mod edge;
pub mod graphiql;
mod graphql;
mod observe;
mod probes;
pub mod readiness;
pub mod refusal;
pub mod streams;
pub mod webhooks;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;

use crate::access::Access;
use crate::cache::responses::ResponseCache;
use crate::graphql::pipeline::Pipeline;
use crate::http::callback::Callbacks;
use crate::http::readiness::Readiness;
use crate::http::refusal::{refuse, Code};
use crate::http::streams::Streams;
use crate::http::webhooks::Webhooks;
use crate::providers::Account;
use crate::sessions::SessionService;
use crate::telemetry::metrics::Metrics;

/// For `/metrics` on a port of its own (GATEWAY_METRICS_LISTEN).
pub(crate) use probes::metrics_page;

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
    /// How a GraphQL operation runs (admission, documents, limits, schemas, trail).
    pub(crate) pipeline: Pipeline,
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
    /// Subscriptions over WebSocket and Server-Sent Events.
    pub(crate) streams: Streams,
    /// Subscriptions over HTTP callbacks (`callback/1.0`), for routers.
    pub(crate) callbacks: Callbacks,
    pub(crate) webhooks: Arc<Webhooks>,
    /// Who may ask.
    pub(crate) access: Arc<Access>,
}

/// The routes; `/metrics` only when it is not served on a port of its own.
pub(crate) fn router(state: AppState, with_metrics: bool) -> Router {
    let mut router = Router::new()
        .route("/graphql", get(graphql::get).post(graphql::post))
        .route("/ws", get(streams::websocket))
        .route(&format!("{}/{{file}}", graphiql::ASSET_PATH), get(graphiql::asset))
        .route("/webhooks/{provider}", post(webhooks::deliver))
        .route("/livez", get(probes::livez))
        .route("/readyz", get(probes::readyz));
    if with_metrics {
        router = router.route("/metrics", get(probes::metrics_page));
    }
    router
        .fallback(probes::not_found)
        .method_not_allowed_fallback(probes::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::observe_request))
        .with_state(state)
}

/// A request's body, read whole up to `max` bytes: past it, 413 with `too_large`'s reason
/// (made only then); 400 when it cannot be read.
async fn read_body(
    body: axum::body::Body,
    max: usize,
    too_large: impl FnOnce() -> String,
) -> Result<Bytes, axum::response::Response> {
    match axum::body::to_bytes(body, max).await {
        Ok(bytes) => Ok(bytes),
        Err(error) if is_length_limit(&error) => Err(refuse(Code::PayloadTooLarge, &too_large())),
        Err(_) => Err(refuse(Code::BadRequest, "the request body could not be read")),
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
