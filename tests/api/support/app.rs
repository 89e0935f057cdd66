//! Gateways in this process: started on port 0 with wiremock providers, and asked over HTTP.

use std::future::pending;
use std::net::SocketAddr;
use std::time::Duration;

use checkout_gateway::app::Application;
use checkout_gateway::config::{Config, Secret};
use checkout_gateway::providers::{dhmad, dodo, AccountConfig, ProviderKind};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};
use wiremock::MockServer;

/// The keys `spawn_app` configures; tests look for them in what the providers receive.
pub const DHMAD_KEY: &str = "sk_sandbox_1111111111111111111111111111111111111111111111111111111111111111";
pub const DODO_KEY: &str = "dodo_test_key_2222";

/// A running gateway whose providers are two wiremock servers.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub dhmad: MockServer,
    pub dodo: MockServer,
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// `data.<field>`, failing loudly if the response has no such field.
    pub fn data(&self, field: &str) -> &Value {
        let value = &self.body["data"][field];
        assert!(!value.is_null(), "no data.{field} in {}", self.body);
        value
    }

    pub fn cache_control(&self) -> &str {
        self.headers.get("cache-control").and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// Starts the gateway with test keys pointing at fresh wiremock servers; `tweak` adjusts the
/// configuration first.
pub async fn spawn_app(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dhmad = MockServer::start().await;
    let dodo = MockServer::start().await;
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        accounts: vec![
            account(&dhmad::KIND, "dhmad", format!("{}/api/v1", dhmad.uri()), Some(DHMAD_KEY)),
            account(&dodo::KIND, "dodo", dodo.uri(), Some(DODO_KEY)),
        ],
        upstream_timeout: Duration::from_secs(2),
        // One call per lookup, so that tests of how one answer maps see exactly that call;
        // retries have their own tests.
        upstream_retries: 0,
        shutdown_delay: Duration::ZERO,
        // Access has its own tests; the others ask as a client that may read everything.
        access: Some(checkout_gateway::access::AccessConfig::open()),
        ..Config::default()
    };
    tweak(&mut config);
    let addr = start(config).await;
    TestApp { addr, http: http(), dhmad, dodo }
}

/// An account of `kind` named `name` at `base_url`; the provider's default unless it is
/// changed.
pub fn account(
    kind: &'static ProviderKind,
    name: &str,
    base_url: String,
    key: Option<&str>,
) -> AccountConfig {
    AccountConfig {
        name: name.into(),
        base_url,
        api_key: key.map(Secret::new),
        ..AccountConfig::unconfigured(kind)
    }
}

/// The configured account named `name`.
pub fn account_mut<'a>(config: &'a mut Config, name: &str) -> &'a mut AccountConfig {
    config.accounts.iter_mut().find(|account| &*account.name == name).expect("the account is configured")
}

/// An HTTP client for tests (reqwest is built without a default TLS provider).
/// No test waits on the gateway for more than a minute: a request that is never answered
/// fails its test rather than hanging the suite.
pub fn http() -> reqwest::Client {
    checkout_gateway::net::install_crypto_provider();
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("a reqwest client")
}

/// Builds and runs an application in the background; returns its address.
pub async fn start(config: Config) -> SocketAddr {
    serve(config, pending()).await.0
}

/// Builds an application and runs it in the background until `until` resolves.
async fn serve(
    config: Config,
    until: impl std::future::Future<Output = ()> + Send + 'static,
) -> (SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let app = Application::build(config).await.expect("the application builds");
    let addr = app.local_addr().unwrap();
    (addr, tokio::spawn(app.run_until_stopped(until)))
}

/// An application serving `config` until the test sends `stop`; `server` ends once it drained.
pub struct Stoppable {
    pub addr: SocketAddr,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn start_stoppable(config: Config) -> Stoppable {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = serve(config, async move {
        let _ = stopped.await;
    })
    .await;
    Stoppable { addr, stop, server }
}

pub async fn post_graphql(http: &reqwest::Client, addr: SocketAddr, query: &str, variables: Value) -> Reply {
    let response = http
        .post(format!("http://{addr}/graphql"))
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.expect("a JSON body");
    Reply { status, headers, body }
}

/// The value of one sample line, e.g. `checkout_gateway_cache_hits_total{account="dodo",provider="dodo"}`.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// The GraphQL endpoint of `app`.
pub fn url(app: &TestApp) -> String {
    format!("http://{}/graphql", app.addr)
}

/// A refusal's status, `Cache-Control` and body (`null` when it is not JSON).
pub async fn refusal(response: reqwest::Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let cache =
        response.headers().get("cache-control").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, cache, body)
}

/// Every field of a session and of every error, so one query shows any answer whole.
pub const RESULT_FIELDS: &str = r#"
    __typename
    ... on CheckoutSession {
      provider id status providerStatus createdAt expiresAt completedAt customerEmail
      customerName paymentId metadata fetchedAt
      details {
        __typename
        ... on DhmadSessionDetails { escrowId action rawAction targetUserEmail }
        ... on DodoSessionDetails { paymentId paymentStatus }
      }
    }
    ... on CheckoutError { code message provider }
    ... on ProviderUnavailableError { reason retryAfterSeconds upstreamStatus }
"#;

impl TestApp {
    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.http.get(format!("http://{}/metrics", self.addr)).send().await.unwrap().text().await.unwrap()
    }

    pub async fn graphql(&self, query: &str, variables: Value) -> Reply {
        post_graphql(&self.http, self.addr, query, variables).await
    }

    /// `checkoutSession(provider, id)` with every field selected; returns the result object.
    pub async fn session(&self, provider: &str, id: &str) -> Value {
        let query = format!(
            "query($p: Provider!, $id: ID!) {{ checkoutSession(provider: $p, id: $id) {{ {RESULT_FIELDS} }} }}"
        );
        let reply = self.graphql(&query, json!({"p": provider, "id": id})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.data("checkoutSession").clone()
    }
}

/// `askers` concurrent `checkoutSession` queries for one session; their answers.
pub async fn concurrently(
    app: &std::sync::Arc<TestApp>,
    askers: usize,
    provider: &str,
    id: &str,
) -> Vec<Value> {
    let tasks: Vec<_> = (0..askers)
        .map(|_| {
            let (app, provider, id) = (app.clone(), provider.to_owned(), id.to_owned());
            tokio::spawn(async move { app.session(&provider, &id).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(askers);
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}
