//! What operators see: probes, metrics (their series fixed whatever clients send), request ids.

use serde_json::{json, Value};
use wiremock::matchers::{header, header_exists, path};
use wiremock::{Mock, ResponseTemplate};

use crate::support::app::{account_mut, concurrently, sample, spawn_app, url, TestApp};
use crate::support::providers::{dodo_session, mount_dodo};

async fn get(app: &TestApp, route: &str) -> (u16, String) {
    let response = app.http.get(format!("http://{}{route}", app.addr)).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// `/readyz` once the startup credential check has reported on `provider` (it runs in the
/// background, so a loaded machine may need a moment).
async fn settled_readiness(app: &TestApp, provider: &str) -> (u16, Value) {
    for _ in 0..250 {
        let (status, body) = get(app, "/readyz").await;
        let body: Value = serde_json::from_str(&body).unwrap();
        if body["accounts"][provider]["credentials"] != "checking" {
            return (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the credential check of {provider} never finished");
}

#[tokio::test]
async fn probes_answer_without_calling_a_provider() {
    let app = spawn_app(|_| {}).await;
    assert_eq!(get(&app, "/livez").await, (200, "ok".to_owned()));
    let (status, body) = settled_readiness(&app, "dodo").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ready");
    // Dodo has no identity call; DHMAD's `/me` is asked once at startup (unmocked here: 404).
    assert_eq!(body["accounts"]["dodo"]["credentials"], "unchecked");
    for _ in 0..5 {
        get(&app, "/readyz").await;
    }
    assert!(app.dodo.received_requests().await.unwrap().is_empty());
    let dhmad_calls = app.dhmad.received_requests().await.unwrap();
    assert!(dhmad_calls.iter().all(|r| r.url.path() == "/api/v1/me"));
    assert!(dhmad_calls.len() <= 1, "probes never call DHMAD again");
}

#[tokio::test]
async fn readiness_reports_the_startup_credential_check() {
    // The check runs at startup, so the key's answer is mounted before the app starts.
    let server = wiremock::MockServer::start().await;
    Mock::given(path("/api/v1/me"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "Unauthorized"})))
        .mount(&server)
        .await;
    let app =
        spawn_app(|config| account_mut(config, "dhmad").base_url = format!("{}/api/v1", server.uri())).await;
    let (status, body) = settled_readiness(&app, "dhmad").await;
    assert_eq!(status, 200, "a refused key is reported, not a reason to leave the pool");
    assert_eq!(body["accounts"]["dhmad"]["credentials"], "rejected");
}

#[tokio::test]
async fn metrics_count_requests_operations_upstream_calls_and_the_cache() {
    let app = spawn_app(|_| {}).await;
    mount_dodo(&app, "cks_m", Some("succeeded")).await;
    let query = r#"query Dashboard { checkoutSession(provider: DODO, id: "cks_m") { __typename } }"#;
    for _ in 0..3 {
        app.graphql(query, json!({})).await;
    }
    // Other text, same session: not a replay, but a session-cache hit.
    app.graphql(r#"query Other { checkoutSession(provider: DODO, id: "cks_m") { __typename } }"#, json!({}))
        .await;
    app.graphql("query Broken { nope }", json!({})).await;

    let (status, metrics) = get(&app, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "checkout_gateway_http_requests_total",
        "checkout_gateway_http_request_duration_seconds_bucket",
        "checkout_gateway_graphql_operations_total",
        "checkout_gateway_upstream_requests_total",
        "checkout_gateway_upstream_request_duration_seconds_bucket",
        "checkout_gateway_cache_hits_total",
        "checkout_gateway_cache_misses_total",
        "checkout_gateway_cache_entries",
        "checkout_gateway_response_cache_hits_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    let count = |series: &str| sample(&metrics, series);
    assert_eq!(
        count(r#"checkout_gateway_graphql_operations_total{operation="Dashboard",outcome="ok"}"#),
        3.0
    );
    assert_eq!(
        count(r#"checkout_gateway_graphql_operations_total{operation="Broken",outcome="error"}"#),
        1.0
    );
    assert_eq!(
        count(r#"checkout_gateway_http_requests_total{method="POST",route="/graphql",status="200"}"#),
        5.0
    );
    assert_eq!(
        count(
            r#"checkout_gateway_upstream_requests_total{account="dodo",outcome="ok",provider="dodo",status_class="2xx"}"#
        ),
        1.0
    );
    assert_eq!(count(r#"checkout_gateway_cache_misses_total{account="dodo",provider="dodo"}"#), 1.0);
    assert_eq!(
        count("checkout_gateway_response_cache_hits_total"),
        2.0,
        "the 2nd and 3rd Dashboard were replayed"
    );
    assert_eq!(
        count(r#"checkout_gateway_cache_hits_total{account="dodo",provider="dodo"}"#),
        1.0,
        "Other hit the session cache"
    );
    assert_eq!(count("checkout_gateway_cache_entries"), 1.0);
}

#[tokio::test]
async fn coalesced_waits_are_counted() {
    let app = std::sync::Arc::new(spawn_app(|_| {}).await);
    Mock::given(path("/checkouts/cks_co"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(dodo_session("cks_co", None))
                .set_delay(std::time::Duration::from_millis(300)),
        )
        .mount(&app.dodo)
        .await;
    concurrently(&app, 10, "DODO", "cks_co").await;
    let (_, metrics) = get(&app, "/metrics").await;
    assert_eq!(
        sample(&metrics, r#"checkout_gateway_cache_misses_total{account="dodo",provider="dodo"}"#),
        1.0
    );
    assert_eq!(
        sample(&metrics, r#"checkout_gateway_cache_coalesced_waits_total{account="dodo",provider="dodo"}"#),
        9.0
    );
}

#[tokio::test]
async fn the_request_id_is_returned_and_sent_upstream() {
    let app = spawn_app(|_| {}).await;
    Mock::given(path("/checkouts/cks_rid"))
        .and(header("x-request-id", "dash-42"))
        .respond_with(ResponseTemplate::new(200).set_body_json(dodo_session("cks_rid", None)))
        .expect(1)
        .mount(&app.dodo)
        .await;
    Mock::given(path("/checkouts/cks_gen"))
        .and(header_exists("x-request-id"))
        .respond_with(ResponseTemplate::new(200).set_body_json(dodo_session("cks_gen", None)))
        .expect(1)
        .mount(&app.dodo)
        .await;
    let url = format!("http://{}/graphql", app.addr);
    let given = app
        .http
        .post(&url)
        .header("x-request-id", "dash-42")
        .json(&json!({"query": r#"{ checkoutSession(provider: DODO, id: "cks_rid") { __typename } }"#}))
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "dash-42");
    let body: Value = given.json().await.unwrap();
    assert_eq!(body["data"]["checkoutSession"]["__typename"], "CheckoutSession");

    let generated = app
        .http
        .post(&url)
        .json(&json!({"query": r#"{ checkoutSession(provider: DODO, id: "cks_gen") { __typename } }"#}))
        .send()
        .await
        .unwrap();
    let id = generated.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let upstream = app.dodo.received_requests().await.unwrap();
    let sent = upstream.iter().find(|r| r.url.path() == "/checkouts/cks_gen").unwrap();
    assert_eq!(sent.headers["x-request-id"], id.as_str());
}

#[tokio::test]
async fn a_429_hold_in_force_is_a_gauge_per_account() {
    let app = spawn_app(|_| {}).await;
    let series = r#"checkout_gateway_upstream_hold_seconds{account="dodo",provider="dodo"}"#;
    let (_, before) = get(&app, "/metrics").await;
    assert!(before.contains(series), "every account has the gauge from the first scrape");
    assert_eq!(sample(&before, series), 0.0);
    Mock::given(path("/checkouts/cks_held"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "60"))
        .mount(&app.dodo)
        .await;
    app.graphql(r#"{ checkoutSession(provider: DODO, id: "cks_held") { __typename } }"#, json!({})).await;
    let (_, during) = get(&app, "/metrics").await;
    let left = sample(&during, series);
    // A loaded machine may take a while between the 429 and the scrape: within 30 s of 60.
    assert!((30.0..=60.0).contains(&left), "the hold's seconds left: {left}");
    let other = r#"checkout_gateway_upstream_hold_seconds{account="dhmad",provider="dhmad"}"#;
    assert_eq!(sample(&during, other), 0.0, "the other account is not held");
}

#[tokio::test]
async fn the_process_memory_and_cpu_time_are_exported() {
    let app = spawn_app(|_| {}).await;
    let (_, metrics) = get(&app, "/metrics").await;
    let memory = sample(&metrics, "checkout_gateway_process_resident_memory_bytes");
    assert!(memory > 1e6, "resident memory: {memory} bytes");
    // The gateway runs in this process: CPU spent here is its CPU time. The kernel counts in
    // 10 ms ticks, so spin until one scrape shows some (within 5 s, on a loaded machine too).
    let started = std::time::Instant::now();
    let mut cpu = 0.0;
    while cpu == 0.0 && started.elapsed() < std::time::Duration::from_secs(5) {
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(fastrand::u64(..));
        }
        cpu = sample(&get(&app, "/metrics").await.1, "checkout_gateway_process_cpu_seconds_total");
    }
    assert!(cpu > 0.0, "CPU seconds: {cpu}");
}

#[tokio::test]
async fn metrics_series_stay_fixed_whatever_clients_send() {
    let app = spawn_app(|_| {}).await;
    // Warm every series an ordinary request creates, then count.
    app.graphql("query Warm { __typename }", json!({})).await;
    let method = |name: &str| reqwest::Method::from_bytes(name.as_bytes()).unwrap();
    app.http.request(method("XYZ0"), url(&app)).send().await.unwrap();
    for i in 0..250 {
        app.graphql(&format!("query Op{i} {{ __typename }}"), json!({})).await;
    }
    let series = |metrics: &str| metrics.lines().filter(|l| !l.starts_with('#')).count();
    app.metrics().await; // A scrape's own series appear after it.
    let before = series(&app.metrics().await);
    for i in 1..=5 {
        app.http.request(method(&format!("XYZ{i}")), url(&app)).send().await.unwrap();
    }
    for i in 0..1_000 {
        app.graphql(&format!("query Junk{i} {{ __typename }}"), json!({})).await;
    }
    let metrics = app.metrics().await;
    assert_eq!(series(&metrics), before, "junk methods and names added series");
    assert!(metrics.contains(r#"method="other""#));
    assert!(metrics.contains(r#"operation="other""#));
}
