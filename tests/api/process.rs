//! The real binary as an operator runs it: signals, JSON logs, OTLP traces.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::app::post_graphql;
use crate::support::process::Gateway;
use crate::support::providers::dodo_session;

#[tokio::test]
async fn sigterm_turns_readiness_off_then_drains_in_flight_queries_and_exits_zero() {
    let gateway = Gateway::start(
        &["--demo"],
        &[
            ("GATEWAY_DEMO_LATENCY", "1500ms"),
            ("GATEWAY_SHUTDOWN_DELAY", "700ms"),
            ("GATEWAY_SHUTDOWN_GRACE", "10s"),
        ],
    );
    let http = crate::support::app::http();
    let addr = gateway.addr;
    let slow_query = tokio::spawn({
        let http = http.clone();
        async move {
            post_graphql(
                &http,
                addr,
                r#"{ checkoutSession(provider: DODO, id: "cks_demo_succeeded") { ... on CheckoutSession { status } } }"#,
                json!({}),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let readiness = http.get(format!("http://{addr}/readyz")).send().await.unwrap();
    assert_eq!(readiness.status(), 503, "readiness is off at once, while the listener still answers");

    let reply = slow_query.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["data"]["checkoutSession"]["status"], "COMPLETED");
    let (code, logs) = gateway.finish().await;
    assert_eq!(code, Some(0));
    assert!(logs.iter().any(|l| l["message"] == "stopped"), "{logs:?}");
}

#[tokio::test]
async fn json_logs_carry_the_request_id_and_upstream_call_but_never_the_key() {
    let dodo = MockServer::start().await;
    Mock::given(path("/checkouts/cks_log"))
        .respond_with(ResponseTemplate::new(200).set_body_json(dodo_session("cks_log", None)))
        .mount(&dodo)
        .await;
    let secret = "dodo_live_key_do_not_log_0123456789";
    let gateway =
        Gateway::start(&[], &[("DODO_PAYMENTS_API_KEY", secret), ("DODO_PAYMENTS_BASE_URL", &dodo.uri())]);
    let http = crate::support::app::http();
    let response = http
        .post(format!("http://{}/graphql", gateway.addr))
        .header("x-request-id", "trace-me-7")
        .json(&json!({"query": r#"{ checkoutSession(provider: DODO, id: "cks_log") { __typename } }"#}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (code, logs) = gateway.stop("INT").await;
    assert_eq!(code, Some(0));
    assert!(logs.iter().all(|l| l.get("not_json").is_none()), "every line is JSON: {logs:?}");
    let upstream =
        logs.iter().find(|l| l["message"] == "upstream call").expect("the upstream call is logged");
    assert_eq!(upstream["provider"], "dodo");
    assert_eq!(upstream["status"], 200);
    assert!(upstream["elapsed_ms"].as_f64().is_some());
    assert_eq!(upstream["span"]["request_id"], "trace-me-7");
    let all = serde_json::to_string(&logs).unwrap();
    assert!(!all.contains(secret), "the key was logged");
}

#[tokio::test]
async fn traces_are_exported_over_otlp_when_the_endpoint_is_set() {
    let collector = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/traces"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&collector)
        .await;
    let gateway = Gateway::start(
        &["--demo"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.uri()), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let http = crate::support::app::http();
    let reply = post_graphql(
        &http,
        gateway.addr,
        r#"{ checkoutSession(provider: DODO, id: "cks_demo_failed") { __typename } }"#,
        json!({}),
    )
    .await;
    assert_eq!(reply.status, 200);
    let (code, _) = gateway.stop("TERM").await;
    assert_eq!(code, Some(0));
    let exports = collector.received_requests().await.unwrap();
    assert!(!exports.is_empty(), "no OTLP export reached the collector");
    assert!(exports.iter().all(|r| r.headers["content-type"] == "application/x-protobuf"));
    let bodies: Vec<u8> = exports.iter().flat_map(|r| r.body.clone()).collect();
    let contains = |needle: &[u8]| bodies.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"checkout-gateway"), "the service name is in the export");
    assert!(contains(b"request"), "the request span is in the export");
    assert!(contains(b"upstream call") || contains(b"provider"), "the upstream call is in the export");
}

#[tokio::test]
async fn accounts_from_the_config_file_each_call_with_their_own_key() {
    let dodo = MockServer::start().await;
    for (key, status) in [("key-from-env", "succeeded"), ("key-from-file", "failed")] {
        Mock::given(path("/checkouts/cks_acct"))
            .and(wiremock::matchers::header("authorization", format!("Bearer {key}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(dodo_session("cks_acct", Some(status))))
            .mount(&dodo)
            .await;
    }
    let dir = std::env::temp_dir().join(format!("cg-accounts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("dodo-test.key");
    std::fs::write(&key_file, "key-from-file\n").unwrap();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[accounts.brand_a]\nprovider = \"dodo\"\nbase_url = \"{uri}\"\napi_key_env = \"BRAND_A_DODO_KEY\"\ndefault = true\n\n\
             [accounts.brand_b]\nprovider = \"dodo\"\nbase_url = \"{uri}\"\napi_key_file = \"{file}\"\nupstream_concurrency = 2\n",
            uri = dodo.uri(),
            file = key_file.display()
        ),
    )
    .unwrap();
    let gateway = Gateway::start(
        &["--config", config.to_str().unwrap()],
        &[
            ("BRAND_A_DODO_KEY", "key-from-env"),
            ("DODO_PAYMENTS_API_KEY", ""),
            ("DODO_PAYMENTS_BASE_URL", ""),
        ],
    );
    let http = crate::support::app::http();
    let query = r#"{
      a: checkoutSession(provider: DODO, id: "cks_acct") { ... on CheckoutSession { account providerStatus } }
      b: checkoutSession(provider: DODO, id: "cks_acct", account: "brand_b") { ... on CheckoutSession { account providerStatus } }
    }"#;
    let reply = post_graphql(&http, gateway.addr, query, json!({})).await;
    assert_eq!(
        reply.body["data"],
        json!({"a": {"account": "brand_a", "providerStatus": "succeeded"},
               "b": {"account": "brand_b", "providerStatus": "failed"}}),
        "{}",
        reply.body
    );
    let (code, logs) = gateway.stop("TERM").await;
    assert_eq!(code, Some(0));
    let all = serde_json::to_string(&logs).unwrap();
    assert!(!all.contains("key-from-env") && !all.contains("key-from-file"), "a key was logged");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_stalled_log_pipe_never_stalls_requests_and_drops_are_counted() {
    // Nobody reads the gateway's stdout: the pipe fills after a few hundred lines. A writer on
    // the request path would then block every request. (Refused requests are logged at info;
    // these are.)
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_checkout-gateway"))
        .arg("--demo")
        .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("GATEWAY_AUTH", "none")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("GATEWAY_LOG_QUEUE_LINES", "100")
        .env("GATEWAY_SHUTDOWN_DELAY", "0s")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = crate::support::app::http();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{base}/livez")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    for _ in 0..2_000 {
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            http.post(format!("{base}/graphql"))
                .header("content-type", "application/json")
                .body("{not json")
                .send(),
        )
        .await
        .expect("a request waited on the log pipe")
        .unwrap();
        assert_eq!(reply.status(), 400);
    }
    let took = started.elapsed();
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let dropped: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("checkout_gateway_log_lines_dropped_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(dropped > 1_000.0, "the queue of 100 lines overflowed and was counted: {dropped}");
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[tokio::test]
async fn sigterm_under_keep_alive_load_loses_no_request() {
    // 16 clients, each with its own pool of keep-alive connections (as a router keeps them),
    // send queries back to back through a SIGTERM. A client leaves the pod the way a pooled
    // client does in a cluster: when the pod tells it to (`Connection: close`), it takes its
    // next request elsewhere (here: it stops). Until then it reuses its connection, and not
    // one of its requests may be reset or dropped; all must have left before the listener
    // closes at the end of the shutdown delay.
    let gateway = Gateway::start(
        &["--demo"],
        &[("GATEWAY_SHUTDOWN_DELAY", "1500ms"), ("GATEWAY_SHUTDOWN_GRACE", "5s")],
    );
    let url = format!("http://{}/graphql", gateway.addr);
    let body =
        json!({"query": r#"{ checkoutSession(provider: DODO, id: "cks_demo_succeeded") { __typename } }"#});
    let give_up = Instant::now() + Duration::from_secs(10);
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move {
                let http = crate::support::app::http();
                let (mut ok, mut lost, mut left) = (0u32, Vec::new(), None);
                while Instant::now() < give_up {
                    match http.post(&url).json(&body).send().await {
                        Ok(response) if response.status() == 200 => {
                            ok += 1;
                            if response.headers().get("connection").is_some_and(|v| v == "close") {
                                left = Some(Instant::now());
                                break;
                            }
                        }
                        Ok(response) => lost.push(format!("status {}", response.status())),
                        Err(error) => lost.push(format!("{error:?}")),
                    }
                }
                (ok, lost, left)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    gateway.signal("TERM");
    let (mut ok, mut lost, mut last_left) = (0, Vec::new(), signalled);
    for client in clients {
        let (o, l, left) = client.await.unwrap();
        ok += o;
        lost.extend(l);
        last_left = last_left.max(left.expect("every client was told to move off"));
    }
    let (code, _) = gateway.finish().await;
    assert_eq!(code, Some(0));
    assert!(ok > 500, "the load ran: {ok} answered");
    assert!(
        lost.is_empty(),
        "{} of {} requests lost: {:?}",
        lost.len(),
        ok as usize + lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        last_left.duration_since(signalled) < Duration::from_millis(1_500),
        "every client moved off within the shutdown delay"
    );
}

#[tokio::test]
async fn every_answered_request_leaves_an_access_trail_without_the_key() {
    let key = "dashboard_key_never_logged_4242";
    let dir = std::env::temp_dir().join(format!("cg-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key.as_bytes()));
    std::fs::write(
        &file,
        format!("[clients.dodo-dashboard]\nkey_sha256 = \"{hash}\"\naccounts = [\"dodo\"]\n"),
    )
    .unwrap();
    let gateway = Gateway::start(
        &["--demo"],
        &[("GATEWAY_AUTH", "api-key"), ("GATEWAY_CONFIG", file.to_str().unwrap())],
    );
    let http = crate::support::app::http();
    let query = r#"query Dashboard { a: checkoutSession(provider: DODO, id: "cks_demo_succeeded") { __typename }
        b: checkoutSession(provider: DODO, id: "cks_demo_open") { __typename } }"#;
    for _ in 0..2 {
        // The second is replayed: logged all the same.
        let response = http
            .post(format!("http://{}/graphql", gateway.addr))
            .bearer_auth(key)
            .json(&json!({"query": query}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // A subscription, authenticated in connection_init: written when it ends.
    let credentials = json!({"Authorization": format!("Bearer {key}")});
    let mut socket = crate::support::sockets::Socket::open_with(gateway.addr, "/ws", credentials).await;
    let subscription = r#"subscription Watch { checkoutSessionUpdated(provider: DODO, id: "cks_demo_succeeded") {
        ... on CheckoutSession { status } } }"#;
    socket.send(json!({"id": "1", "type": "subscribe", "payload": {"query": subscription}})).await;
    assert_eq!(socket.update().await.1, "COMPLETED");
    drop(socket);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The second query was indeed replayed (the trail's count below rests on it).
    let metrics =
        http.get(format!("http://{}/metrics", gateway.addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|line| line == "checkout_gateway_response_cache_hits_total 1"), "{metrics}");
    let (_, logs) = gateway.stop("TERM").await;
    let trail: Vec<&Value> =
        logs.iter().filter(|line| line["target"] == "checkout_gateway::access").collect();
    assert_eq!(trail.len(), 3, "{logs:?}");
    for line in &trail[..2] {
        assert_eq!(line["client"], "dodo-dashboard");
        assert_eq!(line["operation"], "Dashboard");
        assert_eq!(line["sessions"], 2);
    }
    let watched = (&trail[2]["client"], &trail[2]["operation"], &trail[2]["sessions"]);
    assert_eq!(watched, (&json!("dodo-dashboard"), &json!("Watch"), &json!(1)), "{logs:?}");
    assert!(!serde_json::to_string(&logs).unwrap().contains(key), "the key was logged");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn in_log_mode_an_operation_outside_the_trusted_documents_runs_and_is_logged_once() {
    let listed =
        r#"query Listed { checkoutSession(provider: DODO, id: "cks_demo_succeeded") { __typename } }"#;
    let other = r#"query Other { checkoutSession(provider: DODO, id: "cks_demo_open") { __typename } }"#;
    let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(listed.as_bytes()));
    let manifest = json!({"format": "apollo-persisted-query-manifest", "version": 1,
                          "operations": [{"id": id, "name": "Listed", "type": "query", "body": listed}]});
    let (gateway, path) = log_mode_gateway(&manifest, "cg-log-manifest");
    let http = crate::support::app::http();
    for query in [listed, other] {
        let reply = post_graphql(&http, gateway.addr, query, json!({})).await;
        assert_eq!(reply.body["data"]["checkoutSession"]["__typename"], "CheckoutSession", "{}", reply.body);
    }
    let (_, logs) = gateway.stop("TERM").await;
    let warned: Vec<&Value> = logs
        .iter()
        .filter(|line| line["message"] == "an operation not in the trusted documents ran (log mode)")
        .collect();
    assert_eq!(warned.len(), 1, "only the unlisted operation is logged: {logs:?}");
    assert_eq!(warned[0]["operation"], "Other");
    std::fs::remove_file(path).unwrap();
}

/// An operation's name comes from the client, up to the body's bound: what reaches a log line
/// is cut to 100 characters (on a character boundary), and `/metrics` never sees it.
#[tokio::test]
async fn a_long_operation_name_is_cut_in_every_log_line() {
    // 10 KB of two-byte characters, so that a cut by bytes would fall inside one.
    let given = "é".repeat(5_000);
    // A name in a document is ASCII; kept well under any bound on a WebSocket message.
    let named = "A".repeat(1_000);
    let manifest = json!({"format": "apollo-persisted-query-manifest", "version": 1, "operations": []});
    // Log mode: every operation is unlisted, runs, and is logged by its name.
    let (gateway, path) = log_mode_gateway(&manifest, "cg-long-name");
    let http = crate::support::app::http();
    let query = r#"{ checkoutSession(provider: DODO, id: "cks_demo_succeeded") { __typename } }"#;
    let response = http
        .post(format!("http://{}/graphql", gateway.addr))
        .json(&json!({"query": query, "operationName": given}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // A subscription's trail takes the document's own name.
    let mut socket = crate::support::sockets::Socket::open_with(gateway.addr, "/ws", json!({})).await;
    let subscription = format!(
        r#"subscription {named} {{ checkoutSessionUpdated(provider: DODO, id: "cks_demo_succeeded") {{
        ... on CheckoutSession {{ status }} }} }}"#
    );
    socket.send(json!({"id": "1", "type": "subscribe", "payload": {"query": subscription}})).await;
    assert_eq!(socket.update().await.1, "COMPLETED");
    drop(socket);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics =
        http.get(format!("http://{}/metrics", gateway.addr)).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("éé") && !metrics.contains("AA"), "a client's name became a label");
    let (_, logs) = gateway.stop("TERM").await;
    let operations: Vec<&str> = logs.iter().filter_map(|line| line["operation"].as_str()).collect();
    let count = |name: String| operations.iter().filter(|operation| **operation == name).count();
    // The HTTP one warned of; the subscription warned of, then its trail.
    assert_eq!((count("é".repeat(100)), count("A".repeat(100))), (1, 2), "{operations:?}");
    assert!(operations.iter().all(|operation| operation.chars().count() <= 100), "{operations:?}");
    std::fs::remove_file(path).unwrap();
}

/// `--demo` with `manifest` as its trusted documents in log mode; the manifest's file (under
/// the temporary folder, named after `name`) is the caller's to remove.
fn log_mode_gateway(manifest: &Value, name: &str) -> (Gateway, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("{name}-{}.json", std::process::id()));
    std::fs::write(&path, manifest.to_string()).unwrap();
    let gateway = Gateway::start(
        &["--demo"],
        &[("GATEWAY_TRUSTED_DOCUMENTS", path.to_str().unwrap()), ("GATEWAY_TRUSTED_DOCUMENTS_MODE", "log")],
    );
    (gateway, path)
}
