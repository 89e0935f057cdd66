//! HTTP: `/graphql` (POST, GET for queries, GraphiQL for browsers), `/livez`, `/readyz`;
//! startup ([`Application::build`], which reports the port it bound) and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::rejection::GraphQLRejection;
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::extract::State;
use axum::http::header::{ACCEPT, CACHE_CONTROL};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{Config, ProviderConfig, Secret};
use crate::graphql::{self, CacheHint, Gateway, GatewaySchema};
use crate::providers;
use crate::sandbox::{self, SandboxOptions};
use crate::service::SessionService;

#[derive(Clone)]
struct AppState {
    schema: GatewaySchema,
    /// False until the server is serving, and again from the moment shutdown begins.
    ready: Arc<AtomicBool>,
}

/// A gateway bound to its port, ready to run.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    ready: Arc<AtomicBool>,
    config: Config,
}

impl Application {
    /// Builds everything and binds the listener (port 0 picks a free one; see [`Self::local_addr`]).
    /// With `config.demo`, first starts the sandbox providers and points the gateway at them.
    pub async fn build(mut config: Config) -> anyhow::Result<Self> {
        if config.demo {
            let (dhmad, dodo) = sandbox::start(SandboxOptions { latency: config.demo_latency }).await?;
            tracing::info!(dhmad = %dhmad.base_url, dodo = %dodo.base_url, "demo mode: serving sandbox providers");
            config.dhmad =
                ProviderConfig { api_key: Some(Secret::new(dhmad.api_key)), base_url: dhmad.base_url };
            config.dodo =
                ProviderConfig { api_key: Some(Secret::new(dodo.api_key)), base_url: dodo.base_url };
        }
        let client = providers::http_client()?;
        let providers = providers::from_config(&config, &client)?;
        for provider in &providers {
            if provider.scope().ends_with("|none") {
                tracing::warn!(provider = %provider.provider(), "no API key: its sessions answer PROVIDER_UNAVAILABLE (NOT_CONFIGURED)");
            }
        }
        let service = Arc::new(SessionService::new(providers, config.cache));
        let schema = graphql::schema(Gateway { service, batch_max: config.batch_max });
        let ready = Arc::new(AtomicBool::new(false));
        let router = router(AppState { schema, ready: ready.clone() });
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (GATEWAY_LISTEN): {e}", config.listen))?;
        Ok(Self { listener, router, ready, config })
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
        let Self { listener, router, ready, config } = self;
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
        .fallback(not_found)
        .with_state(state)
}

async fn graphql_post(State(state): State<AppState>, request: GraphQLRequest) -> Response {
    execute(&state, request).await
}

/// A query in the URL runs; a browser asking for HTML without one gets GraphiQL.
async fn graphql_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Result<GraphQLRequest, GraphQLRejection>,
) -> Response {
    let wants_html =
        headers.get(ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"));
    match request {
        Ok(request) if !request.0.query.trim().is_empty() => execute(&state, request).await,
        _ if wants_html => Html(GraphiQLSource::build().endpoint("/graphql").finish()).into_response(),
        Err(rejection) => rejection.into_response(),
        Ok(_) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"errors": [{"message": "GET /graphql needs a `query` parameter"}]})),
        )
            .into_response(),
    }
}

async fn execute(state: &AppState, request: GraphQLRequest) -> Response {
    let hint = CacheHint::default();
    let response = state.schema.execute(request.into_inner().data(hint.clone())).await;
    let cache_control = hint.header_value(response.is_err());
    let mut http = GraphQLResponse::from(response).into_response();
    if let Ok(value) = HeaderValue::from_str(&cache_control) {
        http.headers_mut().insert(CACHE_CONTROL, value);
    }
    http
}

async fn livez() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready"}))).into_response()
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "not found", "routes": ["/graphql", "/livez", "/readyz"]})))
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
