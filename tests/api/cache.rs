//! The answer cache, seen from outside: upstream calls counted at the wiremock providers; its
//! bound in bytes, and no answer announced or replayed past a session's expiry.

use std::sync::Arc;
use std::time::Duration;

use checkout_gateway::cache::{CachePolicy, SessionCache};
use checkout_gateway::net::http_client;
use checkout_gateway::providers::{dhmad, Account, Limits};
use checkout_gateway::telemetry::metrics::Metrics;
use chrono::Utc;
use serde_json::json;
use wiremock::matchers::{header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::app::{account, concurrently, spawn_app};
use crate::support::providers::{dhmad_session, dodo_session, mount_dodo, session_calls, DHMAD_ID};

fn metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new())
}

async fn calls(server: &MockServer) -> usize {
    crate::support::providers::session_calls(server).await
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
    // (A 429 is not stored either, and holds the account's calls: see resilience.rs.)
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
    let cache = SessionCache::new(CachePolicy::default(), None, Vec::new(), metrics());

    let seen_by_a = cache.lookup(&a, DHMAD_ID).await.answer.unwrap();
    let seen_by_b = cache.lookup(&b, DHMAD_ID).await.answer.unwrap();
    assert_eq!(seen_by_a.provider_status.as_deref(), Some("completed"));
    assert_eq!(seen_by_b.provider_status.as_deref(), Some("cancelled"));
    cache.lookup(&a, DHMAD_ID).await;
    cache.lookup(&b, DHMAD_ID).await;
    assert_eq!(calls(&server).await, 2);
}

#[tokio::test]
async fn an_open_session_is_never_announced_or_replayed_past_its_expiry() {
    // An open DHMAD session that expires in 2 s, and a slow miss in the same batch: the
    // response leaves about 1.5 s after the open session was looked up.
    let app = spawn_app(|config| config.cache.open = Duration::from_secs(60)).await;
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(2_000);
    let mut open = dhmad_session(DHMAD_ID, "pending");
    open["session"]["expiresAt"] = json!(expires.to_rfc3339());
    Mock::given(path(format!("/api/v1/sessions/{DHMAD_ID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(open))
        .mount(&app.dhmad)
        .await;
    Mock::given(path("/checkouts/cks_slow"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(Duration::from_millis(1_500))
                .set_body_json(crate::support::providers::dodo_session("cks_slow", Some("succeeded"))),
        )
        .mount(&app.dodo)
        .await;
    let query = format!(
        r#"{{ checkoutSessions(refs: [{{provider: DHMAD, id: "{DHMAD_ID}"}}, {{provider: DODO, id: "cks_slow"}}]) {{ __typename }} }}"#
    );
    let reply = app.graphql(&query, json!({})).await;
    let max_age: u64 =
        reply.cache_control().trim_start_matches("private, max-age=").parse().unwrap_or(u64::MAX);
    let left = (expires - chrono::Utc::now()).num_milliseconds().max(0) as u64;
    assert!(max_age * 1000 <= left, "max-age={max_age} announced with {left} ms left");
    // Replayed answers stop when the session does.
    tokio::time::sleep(Duration::from_millis(left + 100)).await;
    app.graphql(&query, json!({})).await;
    assert_eq!(session_calls(&app.dhmad).await, 2, "after its expiry the session was asked again");
}

#[tokio::test]
async fn the_session_cache_is_bounded_in_bytes() {
    // Ten terminal sessions with 40 KiB of metadata each, into a 128 KiB cache: a count bound
    // alone would keep all ten.
    let app = spawn_app(|config| {
        config.cache.max_bytes = 128 * 1024;
        config.cache.max_entries = 1_000;
    })
    .await;
    let ids: Vec<String> = (0..10).map(|i| format!("550e8400-e29b-41d4-a716-4466554400{i:02}")).collect();
    for id in &ids {
        let mut body = dhmad_session(id, "completed");
        body["session"]["metadata"] = json!({"notes": "n".repeat(40 * 1024)});
        Mock::given(path(format!("/api/v1/sessions/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&app.dhmad)
            .await;
    }
    for id in &ids {
        assert_eq!(app.session("DHMAD", id).await["status"], "COMPLETED");
    }
    let metrics = app.metrics().await;
    let entries: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("checkout_gateway_cache_entries "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap();
    assert!((1.0..=3.0).contains(&entries), "{entries} sessions of 40 KiB in a 128 KiB cache");
    assert!(metrics.contains(r#"checkout_gateway_cache_evictions_total{cause="size"}"#), "{metrics}");
}
