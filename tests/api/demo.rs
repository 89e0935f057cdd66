//! `--demo`: the built-in sandbox providers answer every fixture the README lists.

use checkout_gateway::config::Config;
use checkout_gateway::providers::dhmad::sandbox as dhmad;
use checkout_gateway::providers::dodo::sandbox as dodo;
use checkout_gateway::providers::Registry;
use serde_json::json;

use crate::support::app::{post_graphql, start, RESULT_FIELDS};

#[tokio::test]
async fn every_fixture_answers_as_documented() {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        demo: true,
        upstream_timeout: std::time::Duration::from_millis(300),
        ..Config::default()
    };
    let addr = start(config).await;
    let http = crate::support::app::http();

    let cases: Vec<(&str, String, &str, &str)> = vec![
        ("DHMAD", dhmad::OPEN.into(), "CheckoutSession", "OPEN"),
        ("DHMAD", dhmad::COMPLETED.into(), "CheckoutSession", "COMPLETED"),
        ("DHMAD", dhmad::EXPIRED.into(), "CheckoutSession", "EXPIRED"),
        ("DHMAD", dhmad::CANCELLED.into(), "CheckoutSession", "CANCELLED"),
        ("DHMAD", dhmad::NEW_STATUS.into(), "CheckoutSession", "UNKNOWN"),
        ("DHMAD", dhmad::UNAUTHORIZED.into(), "UnauthorizedError", "UNAUTHORIZED"),
        ("DHMAD", dhmad::FORBIDDEN.into(), "ForbiddenError", "FORBIDDEN"),
        ("DHMAD", dhmad::NOT_FOUND.into(), "NotFoundError", "NOT_FOUND"),
        ("DHMAD", "not-a-uuid".into(), "InvalidIdError", "INVALID_ID"),
        ("DHMAD", dhmad::RATE_LIMITED.into(), "ProviderUnavailableError", "RATE_LIMITED"),
        ("DHMAD", dhmad::SERVER_ERROR.into(), "ProviderUnavailableError", "UPSTREAM_ERROR"),
        ("DHMAD", dhmad::GARBAGE.into(), "ProviderUnavailableError", "INVALID_RESPONSE"),
        ("DHMAD", dhmad::SLOW.into(), "ProviderUnavailableError", "TIMEOUT"),
        ("DODO", dodo::OPEN.into(), "CheckoutSession", "OPEN"),
        ("DODO", dodo::NEW_STATUS.into(), "CheckoutSession", "UNKNOWN"),
        ("DODO", "cks_demo_succeeded".into(), "CheckoutSession", "COMPLETED"),
        ("DODO", "cks_demo_failed".into(), "CheckoutSession", "FAILED"),
        ("DODO", "cks_demo_requires_capture".into(), "CheckoutSession", "ACTION_REQUIRED"),
        ("DODO", "cks_demo_processing".into(), "CheckoutSession", "PROCESSING"),
        ("DODO", "cks_demo_cancelled".into(), "CheckoutSession", "CANCELLED"),
        ("DODO", dodo::UNAUTHORIZED.into(), "UnauthorizedError", "UNAUTHORIZED"),
        ("DODO", dodo::FORBIDDEN.into(), "ForbiddenError", "FORBIDDEN"),
        ("DODO", dodo::NOT_FOUND.into(), "NotFoundError", "NOT_FOUND"),
        ("DODO", dodo::INVALID.into(), "InvalidIdError", "INVALID_ID"),
        ("DODO", dodo::RATE_LIMITED.into(), "ProviderUnavailableError", "RATE_LIMITED"),
        ("DODO", dodo::SERVER_ERROR.into(), "ProviderUnavailableError", "UPSTREAM_ERROR"),
        ("DODO", dodo::GARBAGE.into(), "ProviderUnavailableError", "INVALID_RESPONSE"),
        ("DODO", dodo::SLOW.into(), "ProviderUnavailableError", "TIMEOUT"),
    ];
    // A 429 holds every call of its account for the wait it asks: the 429 fixtures are asked
    // through each provider's second account (named after its second environment), so that
    // they hold none of the others.
    let registry = Registry::builtin();
    let second_account = |provider: &str| {
        let kind = registry.iter().find(|kind| kind.name == provider).expect("a registered provider");
        format!("{}_{}", kind.slug, kind.environments[1].0)
    };
    let refs: Vec<_> = cases
        .iter()
        .map(|(p, id, _, what)| match *what {
            "RATE_LIMITED" => json!({"provider": p, "id": id, "account": second_account(p)}),
            _ => json!({"provider": p, "id": id}),
        })
        .collect();
    let query = format!(
        "query($refs: [CheckoutSessionRef!]!) {{ checkoutSessions(refs: $refs) {{ {RESULT_FIELDS} }} }}"
    );
    let reply = post_graphql(&http, addr, &query, json!({"refs": refs})).await;
    let results = reply.data("checkoutSessions").as_array().unwrap();
    for ((provider, id, typename, what), result) in cases.iter().zip(results) {
        assert_eq!(result["__typename"], *typename, "{provider} {id}: {result}");
        let got = result.get("reason").or(result.get("status")).or(result.get("code")).unwrap();
        assert_eq!(got, what, "{provider} {id}: {result}");
    }
    assert_eq!(results[9]["retryAfterSeconds"], 5);
    assert_eq!(results[24]["retryAfterSeconds"], 3);
}

#[tokio::test]
async fn the_demo_has_two_accounts_per_provider() {
    let config = Config { listen: "127.0.0.1:0".parse().unwrap(), demo: true, ..Config::default() };
    let addr = start(config).await;
    let http = crate::support::app::http();
    let query = r#"{
      live: checkoutSession(provider: DODO, id: "cks_demo_succeeded") { ... on CheckoutSession { account status } }
      test: checkoutSession(provider: DODO, id: "cks_demo_succeeded", account: "dodo_test") { ... on CheckoutSession { account status } }
      sandbox: checkoutSession(provider: DHMAD, id: "d4a1e000-0000-4000-8000-000000000002", account: "dhmad_sandbox") { ... on CheckoutSession { account status } }
    }"#;
    let reply = post_graphql(&http, addr, query, json!({})).await;
    assert_eq!(
        reply.body["data"],
        json!({"live": {"account": "dodo", "status": "COMPLETED"},
               "test": {"account": "dodo_test", "status": "COMPLETED"},
               "sandbox": {"account": "dhmad_sandbox", "status": "COMPLETED"}}),
        "{}",
        reply.body
    );
    let readiness: serde_json::Value =
        http.get(format!("http://{addr}/readyz")).send().await.unwrap().json().await.unwrap();
    let names: Vec<&String> = readiness["accounts"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["dhmad", "dhmad_sandbox", "dodo", "dodo_test"]);
}
