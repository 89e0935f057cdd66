//! A provider that lives only in this file: one module's worth of code (its client, its wire
//! types, its details type, its sandbox) and one line that registers it. It is queried
//! through GraphQL like the built-in ones and answers in the union with its own details. The
//! README's "Adding a provider" list is exactly what this file needed.

use std::sync::Arc;

use async_graphql::{Object, OutputType};
use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use wiremock::matchers::{header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use checkout_gateway::app::Application;
use checkout_gateway::config::{self, Config};
use checkout_gateway::domain::{
    normalise_status, CheckoutSession, CheckoutStatus, FetchError, FetchResult, ProviderDetails,
};
use checkout_gateway::providers::sandbox::{SandboxSpec, SandboxState};
use checkout_gateway::providers::upstream::Upstream;
use checkout_gateway::providers::{CredentialStatus, ProviderKind, Registry, SessionProvider};

use crate::support::app::{http, post_graphql};

// ---- The module: what a new provider brings. -------------------------------------------

/// The one value the registry lists.
static ACME: ProviderKind = ProviderKind {
    name: "ACME",
    slug: "acme",
    label: "Acme Pay",
    description: "Acme Pay, a provider that exists only in the tests.",
    environments: &[("live", "https://api.acme.test"), ("test", "https://test.acme.test")],
    key_var: "ACME_API_KEY",
    base_url_var: "ACME_BASE_URL",
    rate_limit: "50/s",
    retry_after_in_body: None,
    client: |upstream| Arc::new(AcmeClient { upstream }),
    details: |session| Box::new(AcmeSessionDetails(session)),
    register_details: <AcmeSessionDetails as OutputType>::create_type_info,
    sandbox: SandboxSpec { router: sandbox, base_path: "", sends_webhooks: false },
    webhooks: None,
    details_from_json: |_| None,
};

/// The client: `GET {base}/v2/sessions/{id}`.
#[derive(Debug)]
struct AcmeClient {
    upstream: Upstream,
}

#[async_trait]
impl SessionProvider for AcmeClient {
    fn canonical_id(&self, id: &str) -> Result<Arc<str>, FetchError> {
        match id.strip_prefix("acs_") {
            Some(rest)
                if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
            {
                Ok(Arc::from(id))
            }
            _ => Err(FetchError::InvalidId("an Acme session id is acs_ and letters, digits or _")),
        }
    }

    async fn fetch_session(&self, id: &Arc<str>) -> FetchResult {
        let response = self.upstream.get(&["v2", "sessions", id]).await?;
        if response.status != 200 {
            return Err(self.upstream.error_for(&response));
        }
        let wire: Wire =
            serde_json::from_slice(&response.body).map_err(|e| self.upstream.invalid_body(&e))?;
        let (status, raw) = normalise_status(
            wire.state,
            &[("open", CheckoutStatus::Open), ("paid", CheckoutStatus::Completed)],
        );
        Ok(Arc::new(CheckoutSession {
            provider: ACME.name,
            account: self.upstream.account().clone(),
            id: id.clone(),
            status,
            provider_status: Some(raw),
            created_at: wire.created,
            expires_at: None,
            completed_at: None,
            customer_email: None,
            customer_name: None,
            payment_id: None,
            metadata: None,
            fetched_at: Utc::now(),
            details: Some(Box::new(AcmeDetails { note: wire.note })),
        }))
    }

    async fn check_credentials(&self) -> CredentialStatus {
        self.upstream.unprobed()
    }
}

/// The wire type: private to the module.
#[derive(Deserialize)]
struct Wire {
    state: Box<str>,
    created: DateTime<Utc>,
    note: Box<str>,
}

/// The details type, as stored…
#[derive(Debug, PartialEq)]
struct AcmeDetails {
    note: Box<str>,
}

impl ProviderDetails for AcmeDetails {}

/// …and as the schema shows it.
#[derive(Debug)]
struct AcmeSessionDetails(Arc<CheckoutSession>);

/// What only Acme says about a session.
#[Object]
impl AcmeSessionDetails {
    async fn note(&self) -> Option<&str> {
        self.0.details::<AcmeDetails>().map(|d| &*d.note)
    }
}

/// The sandbox: one fixture.
fn sandbox() -> Router<SandboxState> {
    Router::new().route("/v2/sessions/{id}", get(sandbox_session))
}

async fn sandbox_session(
    State(state): State<SandboxState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !state.accepts(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match id.as_str() {
        "acs_demo_paid" => {
            Json(json!({"state": "paid", "created": "2026-01-01T00:00:00Z", "note": state.environment}))
                .into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

// ---- The one line that registers it. -----------------------------------------------------

fn registry() -> Registry {
    Registry::builtin().with(&ACME)
}

// ---- The tests. --------------------------------------------------------------------------

const QUERY: &str = r#"query($id: ID!, $account: String) {
  checkoutSession(provider: ACME, id: $id, account: $account) {
    __typename
    ... on CheckoutSession { provider account id status providerStatus
                             details { __typename ... on AcmeSessionDetails { note } } }
    ... on CheckoutError { code provider }
  }
}"#;

/// Loads the configuration as the binary does (these flags, the environment, the file they
/// name and what it names) with the registry that knows Acme, and runs the gateway.
async fn start(args: &[&str]) -> std::net::SocketAddr {
    let registry = registry();
    let args = std::iter::once("checkout-gateway").chain(args.iter().copied());
    let (cli, given) = config::parse_from(&registry, args).expect("the flags are valid");
    let config = Config::load(&cli, given, &registry).expect("the configuration is valid");
    let app = Application::build_with(config, registry).await.expect("the application builds");
    let addr = app.local_addr().unwrap();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    addr
}

#[tokio::test]
async fn a_provider_defined_in_the_tests_answers_through_graphql_with_its_own_details() {
    let acme = MockServer::start().await;
    Mock::given(path("/v2/sessions/acs_1"))
        .and(header("authorization", "Bearer acme-key"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"state": "paid", "created": "2026-01-01T00:00:00Z", "note": "gift"})),
        )
        .expect(1)
        .mount(&acme)
        .await;
    Mock::given(path("/v2/sessions/acs_gone")).respond_with(ResponseTemplate::new(404)).mount(&acme).await;
    // An account of Acme as any other: a table naming its provider, its key in a file.
    let dir = std::env::temp_dir().join(format!("cg-acme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("acme-key");
    std::fs::write(&key, "acme-key\n").unwrap();
    let file = dir.join("gateway.toml");
    let text = format!(
        "auth = \"none\"\nshutdown_delay = \"0s\"\n\
         [accounts.acme]\nprovider = \"acme\"\nbase_url = \"{}\"\napi_key_file = \"{}\"\n",
        acme.uri(),
        key.display()
    );
    std::fs::write(&file, text).unwrap();
    let addr = start(&["--listen", "127.0.0.1:0", "--config", file.to_str().unwrap()]).await;
    std::fs::remove_dir_all(&dir).unwrap();
    let http = http();

    for _ in 0..2 {
        let reply = post_graphql(&http, addr, QUERY, json!({"id": "acs_1"})).await;
        assert_eq!(
            reply.body["data"]["checkoutSession"],
            json!({"__typename": "CheckoutSession", "provider": "ACME", "account": "acme", "id": "acs_1",
                   "status": "COMPLETED", "providerStatus": "paid",
                   "details": {"__typename": "AcmeSessionDetails", "note": "gift"}}),
            "{}",
            reply.body
        );
    }
    // The typed errors are the gateway's, whichever provider: checked before a call, and after.
    let invalid = post_graphql(&http, addr, QUERY, json!({"id": "nope"})).await;
    assert_eq!(invalid.body["data"]["checkoutSession"]["code"], "INVALID_ID");
    let gone = post_graphql(&http, addr, QUERY, json!({"id": "acs_gone"})).await;
    assert_eq!(
        gone.body["data"]["checkoutSession"],
        json!({"__typename": "NotFoundError", "code": "NOT_FOUND", "provider": "ACME"})
    );
    // The built-in providers are unaffected, and the schema lists the new one.
    let sdl = post_graphql(&http, addr, "{ _service { sdl } }", json!({})).await;
    let sdl = sdl.body["data"]["_service"]["sdl"].as_str().unwrap().to_owned();
    assert!(
        sdl.contains("union ProviderDetails = DhmadSessionDetails | DodoSessionDetails | AcmeSessionDetails"),
        "{sdl}"
    );
    assert!(sdl.contains("ACME"), "{sdl}");
    // Cached like any other (acs_1 was called once for two queries: `expect(1)` above), and
    // counted under its own labels: two misses (acs_1, acs_gone); the invalid id never reached
    // the cache.
    let metrics = http.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"checkout_gateway_cache_misses_total{account="acme",provider="acme"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_new_provider_has_a_demo_with_one_account_per_environment() {
    let addr = start(&["--demo", "--listen", "127.0.0.1:0"]).await;
    let http = http();
    for (account, environment) in [(None, "live"), (Some("acme_test"), "test")] {
        let reply =
            post_graphql(&http, addr, QUERY, json!({"id": "acs_demo_paid", "account": account})).await;
        let session = &reply.body["data"]["checkoutSession"];
        assert_eq!(session["status"], "COMPLETED", "{}", reply.body);
        assert_eq!(session["account"], account.unwrap_or("acme"));
        assert_eq!(session["details"]["note"], environment, "each account has its own sandbox");
    }
}

#[test]
fn without_registration_the_schema_does_not_know_it() {
    let builtin = checkout_gateway::graphql::sdl(&Registry::builtin());
    assert!(!builtin.contains("ACME") && !builtin.contains("AcmeSessionDetails"));
    let extended = checkout_gateway::graphql::sdl(&registry());
    assert!(extended.contains("AcmeSessionDetails") && extended.contains("Acme Pay, a provider"));
}
