//! The monitoring files (k8s/components/monitoring, docs/runbook.md): the PrometheusRule is
//! the plain rules file, every alert has a runbook section and a unit test, and every metric
//! the rules and the dashboard read is one the gateway exports after a representative run
//! (a renamed metric fails here instead of leaving a blank panel or a silent alert).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use checkout_gateway::config::Secret;
use serde_json::{json, Value};
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

use crate::support::app::{account_mut, concurrently, spawn_app};
use crate::support::providers::dodo_session;
use crate::support::sockets::Socket;
use crate::support::webhooks::{deliver, dodo_delivery, now, payment, DODO_SECRET as WEBHOOK_SECRET};

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
    // coalesced askers, a provider failure answered stale, webhooks (taken and refused), a
    // subscription.
    let app = Arc::new(
        spawn_app(|config| {
            account_mut(config, "dodo").webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
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
