//! The answer cache, seen from outside: upstream calls counted at the wiremock providers.

use std::sync::Arc;
use std::time::Duration;

use checkout_gateway::cache::{CachePolicy, SessionCache};
use checkout_gateway::net::http_client;
use checkout_gateway::providers::{dhmad, Account, Limits};
use checkout_gateway::sessions::live::Hub;
use checkout_gateway::telemetry::metrics::Metrics;
use chrono::Utc;
use serde_json::json;
use wiremock::matchers::{header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{account, concurrently, dhmad_session, dodo_session, mount_dodo, spawn_app, DHMAD_ID};

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new())
}

async fn calls(server: &MockServer) -> usize {
    crate::helpers::session_calls(server).await
}

#[tokio::test]
async fn a_second_query_is_served_from_the_cache() {
    let app = spawn_app(|_| {}).await;
    mount_dodo(&app, "cks_c", Some("succeeded")).await;
    let first = app.session("DODO", "cks_c").await;
    let second = app.session("DODO", "cks_c").await;
    assert_eq!(calls(&app.dodo).await, 1);
    assert_eq!(first, second, "a hit answers exactly what was fetched, fetchedAt included");
}

#[tokio::test]
async fn fifty_concurrent_queries_on_a_cold_key_make_one_upstream_call() {
    let app = Arc::new(spawn_app(|_| {}).await);
    Mock::given(path("/checkouts/cks_hot"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(dodo_session("cks_hot", Some("processing")))
                .set_delay(Duration::from_millis(300)),
        )
        .mount(&app.dodo)
        .await;
    for answer in concurrently(&app, 50, "DODO", "cks_hot").await {
        assert_eq!(answer["status"], "PROCESSING");
    }
    assert_eq!(calls(&app.dodo).await, 1);
}

#[tokio::test]
async fn concurrent_askers_share_an_error_but_it_is_not_stored() {
    let app = Arc::new(spawn_app(|_| {}).await);
    Mock::given(path("/checkouts/cks_err"))
        .respond_with(ResponseTemplate::new(503).set_delay(Duration::from_millis(300)))
        .mount(&app.dodo)
        .await;
    for answer in concurrently(&app, 10, "DODO", "cks_err").await {
        assert_eq!(answer["reason"], "UPSTREAM_ERROR");
    }
    assert_eq!(calls(&app.dodo).await, 1, "concurrent askers share one call");
    app.session("DODO", "cks_err").await;
    assert_eq!(calls(&app.dodo).await, 2, "the error was not stored");
}

#[tokio::test]
async fn errors_are_never_cached() {
    let app = spawn_app(|_| {}).await;
    // (A 429 is not stored either, and holds the account's calls: see hardening.rs.)
    for (id, status) in [("cks_401", 401), ("cks_403", 403), ("cks_500", 500), ("cks_503", 503)] {
        Mock::given(path(format!("/checkouts/{id}")))
            .respond_with(ResponseTemplate::new(status))
            .mount(&app.dodo)
            .await;
        app.session("DODO", id).await;
        app.session("DODO", id).await;
    }
    assert_eq!(calls(&app.dodo).await, 8);
}

#[tokio::test]
async fn terminal_and_open_sessions_live_for_different_times() {
    let app = spawn_app(|config| {
        // Lifetimes far apart, so a loaded machine's slow queries cannot blur them.
        config.cache.open = Duration::from_millis(1000);
        config.cache.failed = Duration::from_millis(2500);
    })
    .await;
    mount_dodo(&app, "cks_open", None).await;
    mount_dodo(&app, "cks_done", Some("succeeded")).await;
    mount_dodo(&app, "cks_failed", Some("failed")).await;
    for id in ["cks_open", "cks_done", "cks_failed"] {
        app.session("DODO", id).await;
        app.session("DODO", id).await;
    }
    assert_eq!(calls(&app.dodo).await, 3, "all three cached at first");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for id in ["cks_open", "cks_done", "cks_failed"] {
        app.session("DODO", id).await;
    }
    assert_eq!(calls(&app.dodo).await, 4, "only the open session expired");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.session("DODO", "cks_failed").await;
    app.session("DODO", "cks_done").await;
    assert_eq!(calls(&app.dodo).await, 5, "then the failed one; the completed one stays");
}

#[tokio::test]
async fn an_open_session_is_never_kept_past_its_own_expiry() {
    let app = spawn_app(|config| config.cache.open = Duration::from_secs(3600)).await;
    let mut body = dhmad_session(DHMAD_ID, "pending");
    body["session"]["expiresAt"] = json!((Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339());
    Mock::given(path(format!("/api/v1/sessions/{DHMAD_ID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(&app.dhmad)
        .await;
    app.session("DHMAD", DHMAD_ID).await;
    app.session("DHMAD", DHMAD_ID).await;
    assert_eq!(calls(&app.dhmad).await, 1);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    app.session("DHMAD", DHMAD_ID).await;
    assert_eq!(calls(&app.dhmad).await, 2);
}

#[tokio::test]
async fn a_not_found_is_kept_briefly_then_asked_again() {
    let app = spawn_app(|config| config.cache.not_found = Duration::from_millis(1000)).await;
    app.session("DODO", "cks_nobody").await;
    let again = app.session("DODO", "cks_nobody").await;
    assert_eq!(again["__typename"], "NotFoundError");
    assert_eq!(calls(&app.dodo).await, 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    app.session("DODO", "cks_nobody").await;
    assert_eq!(calls(&app.dodo).await, 2);
}

#[tokio::test]
async fn the_cache_key_holds_the_credential() {
    // Two DHMAD accounts, same environment, different keys, one shared cache: each key's
    // answer is its own, and each is cached under its own key.
    let server = MockServer::start().await;
    for (key, status) in [("sk_sandbox_a", "completed"), ("sk_sandbox_b", "cancelled")] {
        Mock::given(path(format!("/api/v1/sessions/{DHMAD_ID}")))
            .and(header("authorization", format!("Bearer {key}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(dhmad_session(DHMAD_ID, status)))
            .mount(&server)
            .await;
    }
    let client = |key: &str| {
        let config = account(&dhmad::KIND, "dhmad", format!("{}/api/v1", server.uri()), Some(key));
        let limits = Limits { upstream_timeout: Duration::from_secs(2), ..Limits::default() };
        Account::new(config, &limits, &http_client().unwrap(), &metrics()).unwrap()
    };
    let (a, b) = (client("sk_sandbox_a"), client("sk_sandbox_b"));
    assert_ne!(a.scope, b.scope);
    assert!(!a.scope.contains("sk_sandbox_a"), "the key itself is never part of the cache key");
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(1000, metrics.clone()));
    let cache = SessionCache::new(CachePolicy::default(), hub, metrics);

    let seen_by_a = cache.lookup(&a, DHMAD_ID).await.answer.unwrap();
    let seen_by_b = cache.lookup(&b, DHMAD_ID).await.answer.unwrap();
    assert_eq!(seen_by_a.provider_status.as_deref(), Some("completed"));
    assert_eq!(seen_by_b.provider_status.as_deref(), Some("cancelled"));
    cache.lookup(&a, DHMAD_ID).await;
    cache.lookup(&b, DHMAD_ID).await;
    assert_eq!(calls(&server).await, 2);
}
