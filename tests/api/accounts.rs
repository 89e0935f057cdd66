//! Several accounts per provider: each answers with its own key, cache, bound, report and
//! metrics; clients pick one by name or get the provider's default.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::{header, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use checkout_gateway::providers::dodo;

use crate::support::app::{account, spawn_app, TestApp, DODO_KEY};
use crate::support::providers::dodo_session;

const TEST_KEY: &str = "dodo_test_mode_key";

const SESSION: &str = r#"query($id: ID!, $account: String) {
  checkoutSession(provider: DODO, id: $id, account: $account) {
    __typename
    ... on CheckoutSession { account providerStatus }
    ... on CheckoutError { code message provider }
    ... on UnknownAccountError { account }
  }
}"#;

/// The usual app (its `dodo` account is the default) plus `dodo_test`, a second Dodo account
/// with its own key at its own server.
async fn two_dodo_accounts(concurrency: Option<usize>) -> (TestApp, MockServer) {
    let test_mode = MockServer::start().await;
    let base_url = test_mode.uri();
    let app = spawn_app(move |config| {
        let mut second = account(&dodo::KIND, "dodo_test", base_url, Some(TEST_KEY));
        second.default = false;
        second.upstream_concurrency = concurrency;
        config.accounts.push(second);
    })
    .await;
    (app, test_mode)
}

/// Each server answers `id` only to its own key, with its own status.
async fn mount_both(app: &TestApp, test_mode: &MockServer, id: &str) {
    for (server, key, status) in [(&app.dodo, DODO_KEY, "succeeded"), (test_mode, TEST_KEY, "failed")] {
        Mock::given(path(format!("/checkouts/{id}")))
            .and(header("authorization", format!("Bearer {key}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(dodo_session(id, Some(status))))
            .mount(server)
            .await;
    }
}

async fn ask(app: &TestApp, id: &str, account: Option<&str>) -> Value {
    app.graphql(SESSION, json!({"id": id, "account": account})).await.data("checkoutSession").clone()
}

async fn calls(server: &MockServer) -> usize {
    server.received_requests().await.unwrap().len()
}

#[tokio::test]
async fn each_account_answers_with_its_own_key_and_cache() {
    let (app, test_mode) = two_dodo_accounts(None).await;
    mount_both(&app, &test_mode, "cks_same").await;

    for _ in 0..2 {
        let default = ask(&app, "cks_same", None).await;
        assert_eq!(
            default,
            json!({"__typename": "CheckoutSession", "account": "dodo", "providerStatus": "succeeded"})
        );
        let named_default = ask(&app, "cks_same", Some("dodo")).await;
        assert_eq!(named_default["account"], "dodo");
        let test = ask(&app, "cks_same", Some("dodo_test")).await;
        assert_eq!(
            test,
            json!({"__typename": "CheckoutSession", "account": "dodo_test", "providerStatus": "failed"})
        );
    }
    // One entry per account: naming the default account or naming none is the same entry.
    assert_eq!((calls(&app.dodo).await, calls(&test_mode).await), (1, 1));
}

#[tokio::test]
async fn an_unknown_account_is_a_typed_error_before_any_call() {
    let (app, test_mode) = two_dodo_accounts(None).await;
    let answer = ask(&app, "cks_any", Some("dodo_staging")).await;
    assert_eq!(answer["__typename"], "UnknownAccountError");
    assert_eq!(answer["code"], "UNKNOWN_ACCOUNT");
    assert_eq!(answer["provider"], "DODO");
    assert_eq!(answer["account"], "dodo_staging");
    // An account of another provider is unknown to this one.
    let reply = app
        .graphql(
            r#"{ checkoutSession(provider: DHMAD, id: "550e8400-e29b-41d4-a716-446655440000", account: "dodo_test") {
                 __typename } }"#,
            json!({}),
        )
        .await;
    assert_eq!(reply.data("checkoutSession")["__typename"], "UnknownAccountError");
    assert_eq!(reply.cache_control(), "no-store");
    assert_eq!(calls(&app.dodo).await + calls(&test_mode).await, 0);
    assert_eq!(crate::support::providers::session_calls(&app.dhmad).await, 0);
}

#[tokio::test]
async fn a_batch_mixes_accounts_in_input_order() {
    let (app, test_mode) = two_dodo_accounts(None).await;
    mount_both(&app, &test_mode, "cks_b").await;
    let query = r#"query($refs: [CheckoutSessionRef!]!) {
      checkoutSessions(refs: $refs) { __typename ... on CheckoutSession { account providerStatus } } }"#;
    let refs = json!([
        {"provider": "DODO", "id": "cks_b", "account": "dodo_test"},
        {"provider": "DODO", "id": "cks_b"},
        {"provider": "DODO", "id": "cks_b", "account": "nope"},
        {"provider": "DODO", "id": "cks_b", "account": "dodo"},
        {"provider": "DODO", "id": "cks_b", "account": "dodo_test"},
    ]);
    let reply = app.graphql(query, json!({"refs": refs})).await;
    let answers: Vec<(String, String)> = reply
        .data("checkoutSessions")
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let typename = a["__typename"].as_str().unwrap().to_owned();
            (typename, a["account"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    let expected = [
        ("CheckoutSession", "dodo_test"),
        ("CheckoutSession", "dodo"),
        ("UnknownAccountError", ""),
        ("CheckoutSession", "dodo"),
        ("CheckoutSession", "dodo_test"),
    ];
    assert_eq!(answers, expected.map(|(t, a)| (t.to_owned(), a.to_owned())));
    assert_eq!((calls(&app.dodo).await, calls(&test_mode).await), (1, 1), "each distinct session once");
}

#[tokio::test]
async fn both_entity_keys_resolve_and_fail_at_their_index() {
    let (app, test_mode) = two_dodo_accounts(None).await;
    mount_both(&app, &test_mode, "cks_e").await;
    let query = r#"query($representations: [_Any!]!) {
      _entities(representations: $representations) { ... on CheckoutSession { account providerStatus } } }"#;
    let representations = json!([
        {"__typename": "CheckoutSession", "provider": "DODO", "id": "cks_e"},
        {"__typename": "CheckoutSession", "account": "dodo_test", "id": "cks_e"},
        {"__typename": "CheckoutSession", "account": "gone", "id": "cks_e"},
        {"__typename": "CheckoutSession", "account": "dhmad", "id": "cks_e"},
    ]);
    let reply = app.graphql(query, json!({"representations": representations})).await;
    let entities = reply.data("_entities");
    assert_eq!(entities[0], json!({"account": "dodo", "providerStatus": "succeeded"}));
    assert_eq!(entities[1], json!({"account": "dodo_test", "providerStatus": "failed"}));
    assert!(entities[2].is_null() && entities[3].is_null());
    let errors = reply.body["errors"].as_array().unwrap();
    let at = |index: usize| errors.iter().find(|e| e["path"] == json!(["_entities", index])).unwrap();
    // An unknown account names no provider: there is none to name.
    assert_eq!(at(2)["extensions"]["code"], "UNKNOWN_ACCOUNT", "{}", reply.body);
    assert!(at(2)["extensions"].get("provider").is_none());
    // A known account answers for its own provider: a Dodo id is no DHMAD id.
    assert_eq!(at(3)["extensions"]["code"], "INVALID_ID");
    assert_eq!(at(3)["extensions"]["provider"], "DHMAD");
    assert_eq!(errors.len(), 2);
}

#[tokio::test]
async fn each_account_has_its_own_concurrency_bound() {
    // dodo_test may have one call in flight; its queue must not hold up the default account.
    let (app, test_mode) = two_dodo_accounts(Some(1)).await;
    let slow = ResponseTemplate::new(200).set_delay(Duration::from_millis(400));
    Mock::given(path("/checkouts/cks_q1"))
        .respond_with(slow.clone().set_body_json(dodo_session("cks_q1", Some("processing"))))
        .mount(&test_mode)
        .await;
    Mock::given(path("/checkouts/cks_q2"))
        .respond_with(slow.set_body_json(dodo_session("cks_q2", Some("processing"))))
        .mount(&test_mode)
        .await;
    Mock::given(path("/checkouts/cks_fast"))
        .respond_with(ResponseTemplate::new(200).set_body_json(dodo_session("cks_fast", Some("processing"))))
        .mount(&app.dodo)
        .await;
    let app = std::sync::Arc::new(app);
    let started = Instant::now();
    let queued: Vec<_> = ["cks_q1", "cks_q2"]
        .into_iter()
        .map(|id| {
            let app = app.clone();
            tokio::spawn(async move { ask(&app, id, Some("dodo_test")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let fast = ask(&app, "cks_fast", None).await;
    let fast_took = started.elapsed();
    for task in queued {
        assert_eq!(task.await.unwrap()["__typename"], "CheckoutSession");
    }
    let queued_took = started.elapsed();
    assert_eq!(fast["account"], "dodo");
    assert!(fast_took < Duration::from_millis(400), "the default account waited: {fast_took:?}");
    assert!(queued_took >= Duration::from_millis(800), "dodo_test ran two calls at once: {queued_took:?}");
}

#[tokio::test]
async fn readiness_and_metrics_report_each_account() {
    let (app, test_mode) = two_dodo_accounts(None).await;
    mount_both(&app, &test_mode, "cks_m").await;
    ask(&app, "cks_m", Some("dodo_test")).await;
    let readiness: Value =
        app.http.get(format!("http://{}/readyz", app.addr)).send().await.unwrap().json().await.unwrap();
    let accounts = readiness["accounts"].as_object().unwrap();
    let names: Vec<&str> = accounts.keys().map(String::as_str).collect();
    assert_eq!(names, ["dhmad", "dodo", "dodo_test"]);
    assert_eq!(accounts["dodo_test"]["provider"], "dodo");
    assert_eq!(accounts["dodo_test"]["default"], false);
    assert_eq!(accounts["dodo"]["default"], true);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"checkout_gateway_cache_misses_total{account="dodo_test",provider="dodo"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"checkout_gateway_upstream_requests_total{account="dodo_test",outcome="ok",provider="dodo",status_class="2xx"} 1"#),
        "{metrics}"
    );
    assert!(
        !metrics.contains(r#"checkout_gateway_cache_misses_total{account="dodo",provider="dodo"}"#),
        "the default account made no call"
    );
}
