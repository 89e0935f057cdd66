//! Startup and shutdown: builds every part from the [`Config`] ([`Application::build`], which
//! reports the port it bound), runs the HTTP edge until a signal, then drains.
//!
//! Owns: the wiring of every part (which part gets which section of the configuration and
//! which shared handles), the startup credential check `/readyz` reports, and the order of a
//! graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::access::quota::ClientQuotas;
use crate::access::{Access, AccessConfig, AuthMode};
use crate::cache::changes::Listener;
use crate::cache::redis::Shared;
use crate::cache::replicated::Replicated;
use crate::cache::responses::ResponseCache;
use crate::cache::SessionCache;
use crate::config::Config;
use crate::graphql::answers::Answers;
use crate::graphql::documents::{Admission, ApqStore};
use crate::graphql::fanout::Fanout;
use crate::graphql::operation::OperationLabels;
use crate::graphql::pipeline::{Pipeline, Stages};
use crate::graphql::{self, DocumentCache, Gateway};
use crate::http::callback::Callbacks;
use crate::http::edge::{self, EdgeLimits, Phase};
use crate::http::readiness::Readiness;
use crate::http::streams::{StreamLimits, Streams};
use crate::http::webhooks::Webhooks;
use crate::http::{self, AppState, StateInner};
use crate::providers::guard::SharedQuota;
use crate::providers::{Account, AccountConfig, CredentialStatus, Registry};
use crate::sessions::live::Hub;
use crate::sessions::SessionService;
use crate::telemetry::metrics::Metrics;
use crate::{demo, net};

/// Distinct operation names kept as metrics labels; later ones count as `other`.
const OPERATION_LABELS_MAX: usize = 200;

/// Documents registered through APQ, at most (estimated bytes).
const APQ_BYTES: u64 = 16 * 1024 * 1024;

/// Parsed documents kept (estimated bytes): thousands of distinct dashboard queries.
const DOCUMENT_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// A gateway bound to its port, ready to run.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: Router,
    ready: Arc<AtomicBool>,
    config: Config,
    accounts: Vec<Arc<Account>>,
    readiness: Arc<Readiness>,
    /// Where a shutdown stands, for connections and streams.
    phase: tokio::sync::watch::Sender<Phase>,
    /// `/metrics` on its own port (GATEWAY_METRICS_LISTEN).
    metrics_server: Option<(TcpListener, Router)>,
    /// Callback subscriptions, which end (with `complete`) before the process does.
    callbacks: Callbacks,
}

impl Application {
    /// Builds everything with the built-in providers and binds the listener (port 0 picks a
    /// free one; see [`Self::local_addr`]). With `config.demo`, first starts the sandbox
    /// providers and points the gateway at them.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, Registry::builtin()).await
    }

    /// [`Self::build`] with the given providers (those `config` was resolved with): the
    /// schema's `Provider` enum and details union are theirs, and each gets an unconfigured
    /// default account if it has none.
    pub async fn build_with(mut config: Config, kinds: Registry) -> anyhow::Result<Self> {
        // Bound first: the demo's sandboxes send their webhooks to this port.
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (GATEWAY_LISTEN): {e}", config.listen))?;
        if config.demo {
            let gateway = loopback(listener.local_addr()?);
            config.accounts = demo::accounts(&kinds, config.sandbox, gateway).await?;
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
        let replicated = shared.map(|shared| Replicated::new(shared, metrics.clone()));
        let readiness =
            Arc::new(Readiness::new(Arc::new(accounts.clone()), replicated.as_ref().map(|r| r.health())));
        let hub = Arc::new(Hub::new(metrics.clone()));
        let responses = Arc::new(ResponseCache::new(config.response_cache_bytes));
        // Both hear of each change after the cache: watchers, and replayed answers that may
        // hold the session.
        let listeners: Vec<Weak<dyn Listener>> =
            vec![Arc::downgrade(&hub) as _, Arc::downgrade(&responses) as _];
        let cache = SessionCache::new(config.cache, replicated.clone(), listeners, metrics.clone());
        if let Some(replicated) = &replicated {
            replicated.listen(&cache, &accounts);
        }
        let service = Arc::new(SessionService::new(&accounts, cache, hub)?);
        let answers = Arc::new(Answers::new(&metrics.graphql_answers));
        let gateway = Gateway {
            service: service.clone(),
            batch_max: config.batch_max,
            entities_max: config.entities_max,
            quotas: Arc::new(ClientQuotas::new(&config.client_rate_limit)),
            answers: answers.clone(),
            live_subscriptions: metrics.live_subscriptions.clone(),
        };
        let limits = config.query_limits;
        let admission = Admission {
            trusted: config.trusted_documents.clone(),
            apq: ApqStore::new(config.apq.then_some(APQ_BYTES)),
        };
        let schema = graphql::schema(gateway.clone(), &kinds, config.introspection, limits, false);
        let prevalidated_schema = graphql::schema(gateway, &kinds, config.introspection, limits, true);
        let ready = Arc::new(AtomicBool::new(false));
        let shape_limits = config.shape_limits;
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
        let pipeline = Pipeline::new(Stages {
            schema,
            prevalidated_schema,
            documents: DocumentCache::new(DOCUMENT_CACHE_BYTES),
            shape_limits,
            operations: OperationLabels::new(
                OPERATION_LABELS_MAX,
                &metrics.graphql_operations,
                &metrics.graphql_operation_duration,
            ),
            admission,
            metrics: metrics.clone(),
            answers,
            fanout: Arc::new(Fanout::new(
                metrics.live_subscriptions.clone(),
                metrics.live_shared_executions.clone(),
            )),
        });
        let (phase, phases) = tokio::sync::watch::channel(Phase::Serving);
        let streams = Streams::new(
            pipeline.clone(),
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
        let callbacks =
            Callbacks::new(streams.clone(), http.clone(), config.callbacks.clone(), metrics.clone());
        let webhooks = Arc::new(Webhooks::new(service.clone(), &kinds, metrics.clone()));
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (GATEWAY_METRICS_LISTEN): {e}"))?,
            ),
            None => None,
        };
        let state = AppState(Arc::new(StateInner {
            pipeline,
            responses,
            service,
            metrics,
            ready: ready.clone(),
            readiness: readiness.clone(),
            accounts: Arc::new(accounts.clone()),
            request_timeout: config.request_timeout,
            max_body_bytes: config.max_body_bytes,
            graphiql: config.graphiql,
            streams,
            callbacks: callbacks.clone(),
            webhooks,
            access,
        }));
        // Scrapers only, on a port the public Service need not expose.
        let metrics_server = metrics_listener.map(|listener| {
            let router = Router::new().route("/metrics", get(http::metrics_page)).with_state(state.clone());
            (listener, router)
        });
        let router = http::router(state, metrics_server.is_none());
        Ok(Self { listener, router, ready, config, accounts, readiness, phase, metrics_server, callbacks })
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
        let Self { listener, router, ready, config, accounts, readiness, phase, metrics_server, callbacks } =
            self;
        if let Some((listener, router)) = metrics_server {
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, router).await {
                    tracing::error!(%error, "the metrics listener stopped");
                }
            });
        }
        tokio::spawn(check_credentials(accounts, readiness));
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
        // Streams end now; a callback subscription first POSTs its `complete` to the router.
        let stopped = async { tokio::join!(&mut server, callbacks.ended()).0 };
        match tokio::time::timeout(config.shutdown_grace, stopped).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!("shutdown grace period over with requests still in flight; exiting"),
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Where a process on this machine reaches `addr` (a wildcard address is reached on loopback).
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// Checks each account's key once, in the background: readiness never waits on a provider.
async fn check_credentials(accounts: Vec<Arc<Account>>, readiness: Arc<Readiness>) {
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
        readiness.checked(&account, status);
    }
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
