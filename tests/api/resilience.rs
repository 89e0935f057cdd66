//! What a provider's signals can cost: the circuit breaker's trial always ends, and every wait
//! a provider (or the shared tier) asks for is clamped. Each test fails with its fix removed.

use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::{path, path_regex};
use wiremock::{Mock, ResponseTemplate};

use crate::hardening::ask;
use crate::helpers::{mount_dodo, session_calls, spawn_app};

#[tokio::test]
async fn a_cancelled_trial_call_does_not_keep_the_circuit_open() {
    let app = spawn_app(|config| {
        config.breaker_failures = 1;
        config.breaker_cooldown = Duration::from_millis(300);
        config.cache.stale_if_error = Duration::ZERO;
        // The trial's lookup is cancelled by the request's own deadline.
        config.request_timeout = Duration::from_millis(500);
    })
    .await;
    let down = Mock::given(path("/checkouts/cks_down"))
        .respond_with(ResponseTemplate::new(502))
        .mount_as_scoped(&app.dodo)
        .await;
    assert_eq!(ask(&app, "DODO", "cks_down").await.0, "UPSTREAM_ERROR");
    assert_eq!(ask(&app, "DODO", "cks_other").await.0, "CIRCUIT_OPEN");
    drop(down);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The half-open trial hangs; the request gives up (503) and its lookup is dropped.
    Mock::given(path("/checkouts/cks_slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&app.dodo)
        .await;
    let query = r#"{ checkoutSession(provider: DODO, id: "cks_slow") { __typename } }"#;
    let cancelled = app
        .http
        .post(format!("http://{}/graphql", app.addr))
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status(), 503, "the request's deadline cancels the trial");
    // The provider is healthy: the next call is a trial of its own and closes the circuit.
    mount_dodo(&app, "cks_up", Some("succeeded")).await;
    assert_eq!(ask(&app, "DODO", "cks_up").await.0, "COMPLETED", "the circuit is not stuck half-open");
    let readiness: Value =
        app.http.get(format!("http://{}/readyz", app.addr)).send().await.unwrap().json().await.unwrap();
    assert_eq!(readiness["accounts"]["dodo"]["circuit"], "closed");
}

#[tokio::test]
async fn a_wait_signal_in_epoch_milliseconds_is_clamped_to_the_setting() {
    let app = spawn_app(|_| {}).await;
    // Epoch milliseconds where seconds are meant: 55 years, were it believed.
    Mock::given(path_regex("/sessions/"))
        .respond_with(
            ResponseTemplate::new(429)
                .set_body_json(json!({"error": "Too Many Requests", "retryAfter": 1_733_400_000_000_u64})),
        )
        .mount(&app.dhmad)
        .await;
    let id = crate::helpers::DHMAD_ID;
    assert_eq!(ask(&app, "DHMAD", id).await, (json!("RATE_LIMITED"), json!(3600)), "the default clamp: 1 h");
}

#[tokio::test]
async fn a_huge_retry_after_holds_the_account_no_longer_than_the_clamp() {
    let app = spawn_app(|config| config.upstream_max_wait = Duration::from_secs(1)).await;
    // Past what an `Instant` can add: unclamped, this panicked.
    let held = Mock::given(path("/checkouts/cks_held"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "99999999999999999"))
        .mount_as_scoped(&app.dodo)
        .await;
    assert_eq!(ask(&app, "DODO", "cks_held").await, (json!("RATE_LIMITED"), json!(1)));
    assert_eq!(ask(&app, "DODO", "cks_other").await.0, "RATE_LIMITED", "the account is held…");
    drop(held);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    mount_dodo(&app, "cks_held", Some("succeeded")).await;
    assert_eq!(ask(&app, "DODO", "cks_held").await.0, "COMPLETED", "…for the clamp, not for ages");
    assert_eq!(session_calls(&app.dodo).await, 2, "the held call never reached the provider");
}
