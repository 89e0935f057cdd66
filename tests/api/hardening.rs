//! Safe to expose: what hostile or careless clients cannot do, and how provider trouble stays
//! contained. Each test fails with its feature removed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{dhmad_session, session_calls, spawn_app, DHMAD_ID};

const ENTITIES: &str = r#"query($representations: [_Any!]!) {
  _entities(representations: $representations) { ... on CheckoutSession { id status } }
}"#;

#[tokio::test]
async fn spellings_of_one_dhmad_uuid_share_one_entry_and_one_call() {
    let app = spawn_app(|_| {}).await;
    Mock::given(path(format!("/api/v1/sessions/{DHMAD_ID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(dhmad_session(DHMAD_ID, "completed")))
        .mount(&app.dhmad)
        .await;
    let upper = DHMAD_ID.to_uppercase();
    let simple = DHMAD_ID.replace('-', "");
    let braced = format!("{{{DHMAD_ID}}}");
    let urn = format!("urn:uuid:{DHMAD_ID}");
    for spelling in [DHMAD_ID, &upper, &simple, &braced, &urn] {
        let session = app.session("DHMAD", spelling).await;
        assert_eq!(session["__typename"], "CheckoutSession", "{spelling}: {session}");
        assert_eq!(session["id"], DHMAD_ID, "the canonical id is reported for {spelling}");
    }
    assert_eq!(session_calls(&app.dhmad).await, 1, "one entry, one call; the provider saw the canonical id");
}

#[tokio::test]
async fn entities_that_all_fail_cost_linear_time_and_keep_their_index() {
    let app = spawn_app(|_| {}).await;
    let representations: Vec<Value> = (0..2_000)
        .map(|i| json!({"__typename": "CheckoutSession", "provider": "DHMAD", "id": format!("not-a-uuid-{i}")}))
        .collect();
    let started = Instant::now();
    let reply = app.graphql(ENTITIES, json!({"representations": representations})).await;
    let took = started.elapsed();
    let errors = reply.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2_000);
    for (i, error) in errors.iter().enumerate().step_by(97) {
        assert_eq!(error["extensions"]["code"], "INVALID_ID");
        let index = error["path"][1].as_u64().unwrap() as usize;
        assert!(reply.body["data"]["_entities"][index].is_null(), "error {i} points at a null");
    }
    let mut indices: Vec<u64> = errors.iter().map(|e| e["path"][1].as_u64().unwrap()).collect();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices.len(), 2_000, "each representation has its own error");
    assert!(took < Duration::from_secs(1), "2,000 failing entities took {took:?}");
}

#[tokio::test]
async fn entities_past_their_bound_are_refused_without_a_call() {
    let app = spawn_app(|config| config.entities_max = 3).await;
    let representations: Vec<Value> = (0..5)
        .map(|i| json!({"__typename": "CheckoutSession", "provider": "DODO", "id": format!("cks_{i}")}))
        .collect();
    let reply = app.graphql(ENTITIES, json!({"representations": representations})).await;
    let errors = reply.body["errors"].as_array().unwrap();
    let too_large: Vec<&Value> =
        errors.iter().filter(|e| e["extensions"]["code"] == "BATCH_TOO_LARGE").collect();
    assert_eq!(too_large.len(), 2, "{}", reply.body);
    assert!(too_large.iter().all(|e| e["extensions"]["max"] == 3 && e["path"][1].is_u64()));
    assert_eq!(app.dodo.received_requests().await.unwrap().len(), 3, "only the first three were asked");
}

// ---- Providers are protected, and their outages are not amplified. ----------------------

/// Answers for `id`: the reason (or status) and `retryAfterSeconds`.
async fn ask(app: &crate::helpers::TestApp, provider: &str, id: &str) -> (Value, Value) {
    let answer = app.session(provider, id).await;
    let what = answer.get("reason").or(answer.get("status")).cloned().unwrap_or(Value::Null);
    (what, answer["retryAfterSeconds"].clone())
}

#[tokio::test]
async fn a_429_holds_every_later_call_of_the_account_for_the_wait_it_asked() {
    // Each wait signal a provider may send, each on its own gateway.
    let dodo_429 = |template: ResponseTemplate| template;
    let cases: Vec<(&str, ResponseTemplate, u64)> = vec![
        (
            "DHMAD",
            ResponseTemplate::new(429)
                .set_body_json(json!({"error": "Too Many Requests", "retryAfter": 3600})),
            3600,
        ),
        ("DODO", dodo_429(ResponseTemplate::new(429).insert_header("retry-after", "120")), 120),
        ("DODO", dodo_429(ResponseTemplate::new(429).insert_header("retry-after-ms", "90000")), 90),
        ("DODO", dodo_429(ResponseTemplate::new(429).insert_header("x-ratelimit-reset", "60")), 60),
    ];
    for (provider, response, wait) in cases {
        let app = spawn_app(|_| {}).await;
        let (server, first, second) = match provider {
            "DHMAD" => (&app.dhmad, DHMAD_ID.to_owned(), "550e8400-e29b-41d4-a716-446655440001".to_owned()),
            _ => (&app.dodo, "cks_first".to_owned(), "cks_second".to_owned()),
        };
        // Sessions only: DHMAD's startup credential check (`/me`) must not be the one held.
        Mock::given(wiremock::matchers::path_regex("/(sessions|checkouts)/"))
            .respond_with(response)
            .mount(server)
            .await;
        assert_eq!(ask(&app, provider, &first).await, (json!("RATE_LIMITED"), json!(wait)));
        let (reason, left) = ask(&app, provider, &second).await;
        assert_eq!(reason, "RATE_LIMITED", "{provider}: another session is held too");
        assert!(left.as_u64().is_some_and(|left| left <= wait && left + 2 >= wait), "{provider}: {left}");
        assert_eq!(session_calls(server).await, 1, "{provider}: the held call never reached the provider");
    }
}

#[tokio::test]
async fn the_quota_holds_under_a_burst() {
    let app = spawn_app(|config| {
        config.upstream_rate_limit =
            Some(checkout_gateway::providers::guard::RateLimit::parse("5/min").unwrap())
    })
    .await;
    crate::helpers::mount_dodo_numbered(&app, "cks_burst_").await;
    let app = std::sync::Arc::new(app);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move { ask(&app, "DODO", &format!("cks_burst_{i}")).await })
        })
        .collect();
    let mut answered = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            (status, _) if status == "COMPLETED" => answered += 1,
            (reason, wait) => {
                assert_eq!(reason, "RATE_LIMITED");
                assert!(wait.as_u64().is_some_and(|w| (1..=60).contains(&w)), "{wait}");
                refused += 1;
            }
        }
    }
    assert_eq!((answered, refused), (5, 15));
    assert_eq!(
        app.dodo.received_requests().await.unwrap().len(),
        5,
        "the gateway itself never exceeds the quota"
    );
}

#[tokio::test]
async fn retries_back_off_and_stop_at_the_lookup_deadline() {
    let app = spawn_app(|config| {
        config.upstream_retries = 2;
        config.lookup_deadline = Duration::from_millis(1200);
    })
    .await;
    // Fails twice, then answers: two retries (0.5 s, then 1 s of backoff) fit the deadline?
    // 0.375..0.5 + 0.75..1.0 s: up to 1.5 s, past 1.2 s, so the second retry is not made.
    Mock::given(path("/checkouts/cks_flaky"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .mount(&app.dodo)
        .await;
    crate::helpers::mount_dodo(&app, "cks_flaky", Some("succeeded")).await;
    let started = Instant::now();
    let (reason, _) = ask(&app, "DODO", "cks_flaky").await;
    let took = started.elapsed();
    assert_eq!(reason, "UPSTREAM_ERROR", "the retry that would succeed lies past the deadline");
    assert_eq!(app.dodo.received_requests().await.unwrap().len(), 2);
    assert!(took < Duration::from_millis(1200), "{took:?}");

    // With room for both retries, the third attempt answers.
    let app = spawn_app(|config| config.upstream_retries = 2).await;
    Mock::given(path("/checkouts/cks_flaky"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .mount(&app.dodo)
        .await;
    crate::helpers::mount_dodo(&app, "cks_flaky", Some("succeeded")).await;
    assert_eq!(ask(&app, "DODO", "cks_flaky").await.0, "COMPLETED");
    assert_eq!(app.dodo.received_requests().await.unwrap().len(), 3);
    assert!(app
        .metrics()
        .await
        .contains(r#"checkout_gateway_upstream_retries_total{account="dodo",provider="dodo"} 2"#));

    // Never on an answer that another try cannot change.
    let app = spawn_app(|config| config.upstream_retries = 2).await;
    Mock::given(path("/checkouts/cks_no")).respond_with(ResponseTemplate::new(403)).mount(&app.dodo).await;
    ask(&app, "DODO", "cks_no").await;
    assert_eq!(app.dodo.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn the_circuit_opens_answers_without_calling_and_closes_after_recovery() {
    let app = spawn_app(|config| {
        config.breaker_failures = 3;
        config.breaker_cooldown = Duration::from_millis(600);
        config.cache.stale_if_error = Duration::ZERO;
    })
    .await;
    let down = Mock::given(path("/checkouts/cks_down"))
        .respond_with(ResponseTemplate::new(502))
        .mount_as_scoped(&app.dodo)
        .await;
    for _ in 0..3 {
        assert_eq!(ask(&app, "DODO", "cks_down").await.0, "UPSTREAM_ERROR");
    }
    let (reason, wait) = ask(&app, "DODO", "cks_other").await;
    assert_eq!(reason, "CIRCUIT_OPEN");
    assert_eq!(wait, 1, "the cooldown's remaining whole seconds, rounded up");
    assert_eq!(app.dodo.received_requests().await.unwrap().len(), 3, "an open circuit calls no one");
    let readiness: Value =
        app.http.get(format!("http://{}/readyz", app.addr)).send().await.unwrap().json().await.unwrap();
    assert_eq!(readiness["status"], "ready", "an open circuit does not make the pod unready");
    assert_eq!(readiness["accounts"]["dodo"]["circuit"], "open");
    assert!(app
        .metrics()
        .await
        .contains(r#"checkout_gateway_circuit_state{account="dodo",provider="dodo"} 2"#));

    // The provider recovers; after the cooldown one trial call closes the circuit.
    drop(down);
    crate::helpers::mount_dodo(&app, "cks_down", Some("succeeded")).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(ask(&app, "DODO", "cks_down").await.0, "COMPLETED");
    let readiness: Value =
        app.http.get(format!("http://{}/readyz", app.addr)).send().await.unwrap().json().await.unwrap();
    assert_eq!(readiness["accounts"]["dodo"]["circuit"], "closed");
}

#[tokio::test]
async fn a_session_fetched_before_is_served_stale_while_the_provider_cannot_answer() {
    let app = spawn_app(|config| config.cache.open = Duration::from_millis(200)).await;
    let up = Mock::given(path("/checkouts/cks_s"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(crate::helpers::dodo_session("cks_s", Some("processing"))),
        )
        .mount_as_scoped(&app.dodo)
        .await;
    let query = r#"{ checkoutSession(provider: DODO, id: "cks_s") { ... on CheckoutSession { status stale fetchedAt } } }"#;
    let fresh = app.graphql(query, json!({})).await;
    assert_eq!(fresh.data("checkoutSession")["stale"], false);
    drop(up);
    Mock::given(path("/checkouts/cks_s")).respond_with(ResponseTemplate::new(500)).mount(&app.dodo).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stale = app.graphql(query, json!({})).await;
    let session = stale.data("checkoutSession");
    assert_eq!(session["status"], "PROCESSING");
    assert_eq!(session["stale"], true);
    assert_eq!(session["fetchedAt"], fresh.data("checkoutSession")["fetchedAt"], "its age shows");
    assert_eq!(stale.cache_control(), "no-store");
    assert!(app
        .metrics()
        .await
        .contains(r#"checkout_gateway_stale_answers_total{account="dodo",provider="dodo"} 1"#));
    // A session nobody fetched before stays an error.
    Mock::given(path("/checkouts/cks_never")).respond_with(ResponseTemplate::new(500)).mount(&app.dodo).await;
    assert_eq!(ask(&app, "DODO", "cks_never").await.0, "UPSTREAM_ERROR");
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
                .set_body_json(crate::helpers::dodo_session("cks_slow", Some("succeeded"))),
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
