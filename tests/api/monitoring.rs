//! The monitoring files (k8s/components/monitoring, docs/runbook.md): the PrometheusRule is
//! the plain rules file, every alert has a runbook section and a unit test, and every metric
//! the rules and the dashboard read is one the gateway exports after a representative run
//! (a renamed metric fails here instead of leaving a blank panel or a silent alert).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

use crate::support::app::{concurrently, sample, spawn_app};
use crate::support::providers::{dodo_session, mount_dodo};
use crate::support::sockets::Socket;
use crate::support::webhooks::{
    deliver, dodo_delivery, now, payment, with_dodo_secret, DODO_SECRET as WEBHOOK_SECRET,
};

fn read(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|error| panic!("{full}: {error}"))
}

const RULES: &str = "k8s/components/monitoring/rules.yaml";
const DASHBOARD: &str = "k8s/components/monitoring/dashboard.json";

#[test]
fn the_prometheus_rule_carries_the_plain_rules_file() {
    let indented: String = read(RULES)
        .lines()
        .map(|line| if line.is_empty() { "\n".to_owned() } else { format!("  {line}\n") })
        .collect();
    let expected = read("k8s/components/monitoring/prometheusrule.header.yaml") + &indented;
    assert!(
        read("k8s/components/monitoring/prometheusrule.yaml") == expected,
        "prometheusrule.yaml is not rules.yaml: run bash k8s/components/monitoring/generate.sh"
    );
}

#[test]
fn every_alert_has_its_runbook_section_and_a_unit_test() {
    let rules = read(RULES);
    let runbook = read("docs/runbook.md");
    let tests = read("k8s/components/monitoring/rules.test.yaml");
    let alerts: Vec<&str> = rules.lines().filter_map(|line| line.trim().strip_prefix("- alert: ")).collect();
    let urls: Vec<&str> =
        rules.lines().filter_map(|line| line.trim().strip_prefix("runbook_url: ")).collect();
    assert!(alerts.len() >= 13, "alerts: {alerts:?}");
    assert_eq!(alerts.len(), urls.len(), "each alert has one runbook_url");
    for (alert, url) in alerts.iter().zip(&urls) {
        assert_eq!(*url, format!("docs/runbook.md#{}", alert.to_lowercase()));
        assert!(runbook.lines().any(|line| line == format!("## {alert}")), "no runbook section for {alert}");
        assert!(tests.contains(&format!("alertname: {alert}\n")), "no unit test of {alert}");
        let rule = rules.split("- alert: ").find(|rule| rule.starts_with(&format!("{alert}\n"))).unwrap();
        for field in ["severity: ", "summary: ", "description: "] {
            assert!(rule.contains(field), "{alert} has no {field}");
        }
    }
}

/// The metric names (`checkout_gateway_…`) and recording rules (`checkout_gateway:…`) `text`
/// names.
fn names(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut metrics, mut recorded) = (BTreeSet::new(), BTreeSet::new());
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for (at, _) in text.match_indices("checkout_gateway") {
        if text[..at].chars().next_back().is_some_and(is_name) {
            continue;
        }
        let name: String = text[at..].chars().take_while(|&c| is_name(c)).collect();
        if name.contains(':') {
            recorded.insert(name);
        } else {
            metrics.insert(name);
        }
    }
    (metrics, recorded)
}

/// Every PromQL string of the dashboard: panel targets and variable queries.
fn dashboard_queries(value: &Value, into: &mut String) {
    match value {
        Value::Object(fields) => {
            for (key, value) in fields {
                match (key.as_str(), value) {
                    ("expr" | "definition" | "query", Value::String(query)) => {
                        into.push_str(query);
                        into.push('\n');
                    }
                    _ => dashboard_queries(value, into),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|value| dashboard_queries(value, into)),
        _ => {}
    }
}

/// Counted only by a gateway with Redis (GATEWAY_REDIS_URL): checked against the registered
/// names instead of a run.
const REDIS_ONLY: &[&str] =
    &["checkout_gateway_redis_operations_total", "checkout_gateway_shared_cache_hits_total"];

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_read_is_exported() {
    // Without comment lines: they may name what is not a query.
    let rules: String =
        read(RULES).lines().filter(|line| !line.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut queries = String::new();
    dashboard_queries(&dashboard, &mut queries);
    let (mut wanted, used) = names(&rules);
    let (from_dashboard, used_by_dashboard) = names(&queries);
    wanted.extend(from_dashboard);
    // Recording rules are not exported: each one read must be defined (and its expression's
    // metrics are checked with the rules').
    let defined: BTreeSet<String> =
        rules.lines().filter_map(|line| line.trim().strip_prefix("- record: ")).map(str::to_owned).collect();
    for name in used.iter().chain(&used_by_dashboard) {
        assert!(defined.contains(name), "{name} is read but no rule records it");
    }
    assert!(wanted.len() > 20, "the files name only {wanted:?}");

    // A representative run: lookups answered by the provider, the cache and a replay,
    // coalesced askers, a session the provider does not have (a typed error), a provider
    // failure answered stale, webhooks (taken and refused), a subscription.
    let app = Arc::new(
        spawn_app(|config| {
            with_dodo_secret(config);
            config.cache.open = Duration::from_millis(200);
        })
        .await,
    );
    let up = Mock::given(path("/checkouts/cks_rep"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(dodo_session("cks_rep", Some("processing")))
                .set_delay(Duration::from_millis(100)),
        )
        .mount_as_scoped(&app.dodo)
        .await;
    concurrently(&app, 3, "DODO", "cks_rep").await;
    let query = r#"query Rep { checkoutSession(provider: DODO, id: "cks_rep") { __typename } }"#;
    app.graphql(query, json!({})).await;
    app.graphql(query, json!({})).await;
    not_found(&app.dodo, "cks_gone").await;
    app.graphql(
        r#"query Gone { checkoutSession(provider: DODO, id: "cks_gone") { __typename } }"#,
        json!({}),
    )
    .await;
    let mut socket = Socket::open(&app, "/ws", "graphql-transport-ws").await;
    socket.subscribe("1", "DODO", "cks_rep").await;
    socket.update().await;
    let (headers, body) = dodo_delivery(
        WEBHOOK_SECRET,
        "msg_rep1",
        now(),
        "payment.processing",
        payment("cks_rep", "processing"),
    );
    assert_eq!(deliver(&app, "dodo", &headers, body).await.0, 200);
    let (headers, body) = dodo_delivery(
        "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "msg_rep2",
        now(),
        "payment.processing",
        payment("cks_rep", "processing"),
    );
    assert_eq!(deliver(&app, "dodo", &headers, body).await.0, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(up);
    Mock::given(path("/checkouts/cks_rep")).respond_with(ResponseTemplate::new(500)).mount(&app.dodo).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.graphql(r#"{ checkoutSession(provider: DODO, id: "cks_rep") { __typename } }"#, json!({})).await;

    let exported: BTreeSet<String> = app
        .metrics()
        .await
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let registered = read("src/telemetry/metrics.rs");
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| !exported.contains(*name))
        .filter(|name| {
            !(REDIS_ONLY.contains(&name.as_str())
                && registered.contains(&format!("\"{}\"", name.trim_start_matches("checkout_gateway_"))))
        })
        .collect();
    assert!(missing.is_empty(), "read by the rules or the dashboard, not in /metrics: {missing:?}");
}

/// Dodo answers 404 for `id`.
async fn not_found(dodo: &wiremock::MockServer, id: &str) {
    Mock::given(path(format!("/checkouts/{id}"))).respond_with(ResponseTemplate::new(404)).mount(dodo).await;
}

/// The "Answers by type" and "Latency by operation" panels: every session answer is counted
/// once under its type (a single lookup, each batch member, each entity, a subscription's
/// update, each session of a replayed response), and each operation's duration is observed, executed or replayed.
#[tokio::test]
async fn answers_are_counted_by_type_and_operations_timed() {
    let app = spawn_app(|_| {}).await;
    mount_dodo(&app, "cks_here", Some("succeeded")).await;
    not_found(&app.dodo, "cks_gone").await;
    let pair = r#"query Pair {
      a: checkoutSession(provider: DODO, id: "cks_here") { __typename }
      b: checkoutSession(provider: DODO, id: "cks_gone") { __typename }
    }"#;
    let reply = app.graphql(pair, json!({})).await;
    assert_eq!(reply.body["data"]["a"]["__typename"], "CheckoutSession");
    assert_eq!(reply.body["data"]["b"]["__typename"], "NotFoundError");
    // Executed, then replayed: both answers leave the gateway, both count.
    let single = r#"query Single { checkoutSession(provider: DODO, id: "cks_here") { __typename } }"#;
    for _ in 0..2 {
        app.graphql(single, json!({})).await;
    }
    let batch = r#"query Batch { checkoutSessions(refs: [
      {provider: DODO, id: "cks_here"}, {provider: DODO, id: "cks_gone"}, {provider: DODO, id: "cks_here"}
    ]) { __typename } }"#;
    app.graphql(batch, json!({})).await;
    let entities = r#"query Entities($representations: [_Any!]!) {
      _entities(representations: $representations) { __typename }
    }"#;
    let representations = json!([{"__typename": "CheckoutSession", "provider": "DODO", "id": "cks_gone"}]);
    let reply = app.graphql(entities, json!({"representations": representations})).await;
    assert_eq!(reply.body["errors"][0]["extensions"]["code"], "NOT_FOUND");
    let mut socket = Socket::open(&app, "/ws", "graphql-transport-ws").await;
    socket.subscribe("1", "DODO", "cks_here").await;
    assert_eq!(socket.update().await.1, "COMPLETED");

    let metrics = app.metrics().await;
    let answers = |answer: &str| {
        sample(&metrics, &format!(r#"checkout_gateway_graphql_answers_total{{answer="{answer}"}}"#))
    };
    assert_eq!(
        sample(&metrics, "checkout_gateway_response_cache_hits_total"),
        1.0,
        "the 2nd Single was replayed"
    );
    assert_eq!(answers("session"), 6.0, "Pair 1, Single 2 (one replayed), Batch 2, the subscription 1");
    assert_eq!(answers("NOT_FOUND"), 3.0, "Pair 1, Batch 1, Entities 1");
    // Every type is exported from the start, so a dashboard's rate has a series to read.
    for code in [
        "UNAUTHORIZED",
        "FORBIDDEN",
        "INVALID_ID",
        "PROVIDER_UNAVAILABLE",
        "UNKNOWN_ACCOUNT",
        "ACCESS_DENIED",
    ] {
        let series = format!(r#"checkout_gateway_graphql_answers_total{{answer="{code}"}} 0"#);
        assert!(metrics.lines().any(|line| line == series), "no {series}");
    }
    let timed = |operation: &str| {
        sample(
            &metrics,
            &format!(
                r#"checkout_gateway_graphql_operation_duration_seconds_count{{operation="{operation}"}}"#
            ),
        )
    };
    assert_eq!(timed("Single"), 2.0, "executed and replayed alike");
    assert_eq!(timed("Pair"), 1.0);
    assert_eq!(timed("Batch"), 1.0);
}
