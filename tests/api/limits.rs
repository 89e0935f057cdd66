//! What one request may hold and cost: its body, its document's shape, how many entities it
//! names and what failing ones cost, its time; and what an entity representation cannot make
//! the gateway echo. Each test fails with its bound removed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

use checkout_gateway::providers::guard::RateLimit;

use crate::support::app::{refusal, spawn_app, url};
use crate::support::providers::session_calls;

const ENTITIES: &str = r#"query($representations: [_Any!]!) {
  _entities(representations: $representations) { ... on CheckoutSession { id status } }
}"#;

#[tokio::test]
async fn one_body_limit_for_every_content_type() {
    let app = spawn_app(|config| config.max_body_bytes = 64 * 1024).await;
    let big = "x".repeat(100 * 1024);
    let json_body = json!({"query": format!("{{ __typename }} # {big}")}).to_string();
    for (content_type, body) in [
        ("application/json", json_body.clone()),
        ("text/plain", big.clone()),
        ("application/graphql", big.clone()),
    ] {
        let sent = app
            .http
            .post(url(&app))
            .header("content-type", content_type)
            .header("apollo-require-preflight", "true")
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, cache, body) = refusal(sent).await;
        assert_eq!(status, 413, "{content_type}");
        assert_eq!(cache, "no-store");
        assert!(body["errors"][0]["message"].as_str().unwrap().contains("GATEWAY_MAX_BODY_BYTES"));
    }
    // Without a Content-Length (chunked), the limit holds while reading.
    let stream = futures::stream::iter(
        (0..100).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1024]))),
    );
    let sent = app
        .http
        .post(url(&app))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 413);
    // Multipart (uploads) is refused whatever its size.
    let sent = app
        .http
        .post(url(&app))
        .header("content-type", "multipart/form-data; boundary=x")
        .header("apollo-require-preflight", "true")
        .body("--x--")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 415);
}

#[tokio::test]
async fn documents_are_bounded_in_depth_complexity_aliases_and_root_fields() {
    let app = spawn_app(|config| {
        config.shape_limits.max_aliases = 5;
        config.shape_limits.max_root_fields = 4;
        config.query_limits.max_depth = 6;
        config.query_limits.max_complexity = 50;
    })
    .await;
    let send = |query: String| {
        app.http
            .post(url(&app))
            .header("accept", "application/graphql-response+json")
            .json(&json!({"query": query}))
            .send()
    };
    let six_aliases = (0..6).map(|i| format!("a{i}: sdl")).collect::<Vec<_>>().join(" ");
    let aliases = format!("{{ _service {{ {six_aliases} }} }}");
    let via_fragment = format!("query {{ _service {{ ...F }} }} fragment F on _Service {{ {six_aliases} }}");
    let root = "{ __typename _service { sdl } a: __typename b: __typename c: __typename }".to_owned();
    let complex = format!(
        r#"{{ checkoutSessions(refs: []) {{ ... on CheckoutSession {{ {} }} }} }}"#,
        "provider id status providerStatus createdAt expiresAt completedAt customerEmail customerName paymentId metadata fetchedAt ".repeat(5)
    );
    for (name, query, says) in [
        ("aliases", aliases, "GATEWAY_MAX_ALIASES"),
        ("aliases in a fragment", via_fragment, "GATEWAY_MAX_ALIASES"),
        ("root fields", root, "GATEWAY_MAX_ROOT_FIELDS"),
        ("complexity", complex, "too complex"),
    ] {
        let (status, cache, body) = refusal(send(query).await.unwrap()).await;
        assert_eq!((status, cache.as_str()), (400, "no-store"), "{name}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains(says), "{name}: {message}");
    }
    let too_deep = "{ checkoutSession(provider: DODO, id: \"x\") { ... on CheckoutSession { details { ... on DodoSessionDetails { paymentId } } } } __schema { types { fields { type { ofType { ofType { name } } } } } } }";
    let (status, _, body) = refusal(send(too_deep.to_owned()).await.unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("nested too deep"), "{body}");
    // Within every bound, it runs.
    let (status, _, _) = refusal(send("{ a: __typename b: __typename }".to_owned()).await.unwrap()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_request_that_takes_too_long_is_cut_off() {
    let app = spawn_app(|config| {
        config.request_timeout = Duration::from_millis(300);
        config.upstream_timeout = Duration::from_secs(5);
    })
    .await;
    Mock::given(path("/checkouts/cks_slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .mount(&app.dodo)
        .await;
    let started = Instant::now();
    let sent = app
        .http
        .post(url(&app))
        .json(&json!({"query": r#"{ checkoutSession(provider: DODO, id: "cks_slow") { __typename } }"#}))
        .send()
        .await
        .unwrap();
    let (status, cache, body) = refusal(sent).await;
    assert_eq!((status, cache.as_str()), (503, "no-store"));
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("GATEWAY_REQUEST_TIMEOUT"));
    assert!(started.elapsed() < Duration::from_secs(2));
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

#[tokio::test]
async fn entities_are_bounded_like_a_batch_by_default() {
    // Dodo's own quota (40/s) would only make the test slower.
    let app = spawn_app(|config| config.upstream_rate_limit = RateLimit::parse("off").ok()).await;
    crate::support::providers::mount_dodo_numbered(&app, "cks_many_").await;
    let representations: Vec<Value> = (0..101)
        .map(|i| json!({"__typename": "CheckoutSession", "provider": "DODO", "id": format!("cks_many_{i}")}))
        .collect();
    let reply = app.graphql(ENTITIES, json!({"representations": representations})).await;
    let errors = reply.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{}", reply.body);
    assert_eq!(errors[0]["extensions"]["code"], "BATCH_TOO_LARGE");
    assert_eq!(errors[0]["extensions"]["max"], 100, "the same bound as GATEWAY_BATCH_MAX's default");
    assert_eq!(session_calls(&app.dodo).await, 100);
}

#[tokio::test]
async fn entities_that_all_fail_cost_linear_time_and_keep_their_index() {
    let app = spawn_app(|config| config.entities_max = 2_000).await;
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
async fn an_entity_naming_no_provider_of_ours_is_an_invalid_id_and_not_echoed() {
    let app = spawn_app(|_| {}).await;
    let reply = app
        .graphql(
            ENTITIES,
            json!({"representations": [{"__typename": "CheckoutSession", "provider": "STRIPE<script>", "id": "cks_x"}]}),
        )
        .await;
    let error = &reply.body["errors"][0];
    assert_eq!(error["extensions"]["code"], "INVALID_ID", "{}", reply.body);
    assert!(error["extensions"].get("provider").is_none(), "{}", reply.body);
    assert_eq!(error["path"], json!(["_entities", 0]));
}
