//! Subscriptions over HTTP callbacks (`callback/1.0`) as Apollo Router and Hive Router ask for
//! them: the router's callback endpoint is a small server here that records every POST and
//! answers as each test says.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use checkout_gateway::access::AccessConfig;
use checkout_gateway::config::{Config, Secret};
use serde_json::{json, Value};

use crate::support::app::{sample, spawn_app, start_stoppable, Stoppable, TestApp};
use crate::support::providers::{dodo_session, mount_dodo, mount_dodo_upstream, Upstream};
use crate::support::sockets::UPDATED;
use crate::support::webhooks::{send_payment_event, with_dodo_secret};

const ROUTER_SECRET: &str = "router-secret-for-callbacks";
const VERIFIER: &str = "01JAVERIFIERVERIFIERVERIF";

/// One POST the router's callback endpoint received.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    action: String,
    body: Value,
    /// Its `subscription-protocol` header.
    protocol: String,
    at: Instant,
}

impl Received {
    /// A `next`'s session status.
    fn status(&self) -> &str {
        self.body["payload"]["data"]["checkoutSessionUpdated"]["status"].as_str().unwrap_or_default()
    }
}

/// How the endpoint answers: 204 with `subscription-protocol: callback/1.0`, at once, unless
/// told otherwise.
#[derive(Default)]
struct Answers {
    status: HashMap<String, u16>,
    without_header: bool,
    /// Delays of the coming POSTs of each action, in order.
    delays: HashMap<String, VecDeque<Duration>>,
}

/// A router's callback endpoint on 127.0.0.1 (every path, every method).
#[derive(Clone, Default)]
struct Receiver(Arc<(Mutex<Vec<Received>>, Mutex<Answers>)>);

impl Receiver {
    /// The endpoint, and its base URL.
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let router = axum::Router::new().fallback(receive).with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (receiver, base)
    }

    fn answer(&self, action: &str, status: u16) {
        self.0 .1.lock().unwrap().status.insert(action.into(), status);
    }

    fn delay(&self, action: &str, delay: Duration) {
        self.0 .1.lock().unwrap().delays.entry(action.into()).or_default().push_back(delay);
    }

    fn received(&self) -> Vec<Received> {
        self.0 .0.lock().unwrap().clone()
    }

    fn of(&self, action: &str) -> Vec<Received> {
        self.received().into_iter().filter(|received| received.action == action).collect()
    }

    /// Waits up to `within` until `enough` holds for what was received; what was received.
    async fn wait(&self, within: Duration, enough: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let received = self.received();
            if enough(&received) {
                return received;
            }
            assert!(Instant::now() < deadline, "not received within {within:?}: {received:#?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the `n`th POST of `action`.
    async fn nth(&self, action: &str, n: usize, within: Duration) -> Received {
        let count = |received: &[Received]| received.iter().filter(|r| r.action == action).count();
        self.wait(within, |received| count(received) >= n).await;
        self.of(action).swap_remove(n - 1)
    }
}

async fn receive(State(receiver): State<Receiver>, request: axum::extract::Request) -> Response {
    let path = request.uri().path().to_owned();
    let protocol = request
        .headers()
        .get("subscription-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let action = body["action"].as_str().unwrap_or_default().to_owned();
    let received = Received { path, action: action.clone(), body, protocol, at: Instant::now() };
    receiver.0 .0.lock().unwrap().push(received);
    let (status, header, delay) = {
        let mut answers = receiver.0 .1.lock().unwrap();
        let delay = answers.delays.get_mut(&action).and_then(VecDeque::pop_front);
        (answers.status.get(&action).copied().unwrap_or(204), !answers.without_header, delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut response = StatusCode::from_u16(status).unwrap().into_response();
    if header {
        response.headers_mut().insert("subscription-protocol", "callback/1.0".parse().unwrap());
    }
    response
}

/// The router's secret is accepted, Dodo's webhooks are signed, and callbacks may go to
/// `<base>/callback`.
fn with_callbacks(base: &str) -> impl FnOnce(&mut Config) + '_ {
    move |config| {
        with_dodo_secret(config);
        config.access =
            Some(AccessConfig { router_secrets: vec![Secret::new(ROUTER_SECRET)], ..AccessConfig::open() });
        config.callbacks.allowed = vec![format!("{base}/callback").parse().unwrap()];
    }
}

/// `extensions.subscription` for subscription `id`, called back under `<base>/callback`.
fn extension(base: &str, id: &str, heartbeat_ms: u64) -> Value {
    json!({"callbackUrl": format!("{base}/callback/{id}"), "subscriptionId": id, "verifier": VERIFIER,
           "heartbeatIntervalMs": heartbeat_ms})
}

/// A router's callback subscription to Dodo session `session`, with the router's secret (or
/// `secret`); its status, body, and when it was answered.
async fn subscribe_as(
    app: &TestApp,
    secret: Option<&str>,
    session: &str,
    extension: Value,
) -> (u16, Value, Instant) {
    let mut request = app
        .http
        .post(format!("http://{}/graphql", app.addr))
        .header("accept", "application/json;callbackSpec=1.0")
        .json(&json!({"query": UPDATED, "variables": {"p": "DODO", "id": session},
                      "extensions": {"subscription": extension}}));
    if let Some(secret) = secret {
        request = request.header("router-authorization", secret);
    }
    let response = request.send().await.unwrap();
    let answered = Instant::now();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null), answered)
}

async fn subscribe(app: &TestApp, session: &str, extension: Value) -> (u16, Value, Instant) {
    subscribe_as(app, Some(ROUTER_SECRET), session, extension).await
}

/// A refusal's code.
fn code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"].as_str().unwrap_or_default()
}

/// The value of the series `series` in `/metrics` (0 when absent).
async fn gauge(app: &TestApp, series: &str) -> i64 {
    sample(&app.metrics().await, series) as i64
}

const CALLBACK_SLOTS: &str = r#"checkout_gateway_subscription_connections{transport="callback"}"#;

/// Waits until the callback slots in use are `n`.
async fn slots_become(app: &TestApp, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while gauge(app, CALLBACK_SLOTS).await != n {
        assert!(Instant::now() < deadline, "{}", app.metrics().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The router's endpoint and its base URL, and a gateway calling it back whose Dodo answers
/// `session` (open) from a body the test can change.
async fn router_and_gateway(session: &str) -> (Receiver, String, TestApp, Upstream) {
    let (receiver, base) = Receiver::start().await;
    let app = spawn_app(with_callbacks(&base)).await;
    let upstream = mount_dodo_upstream(&app.dodo, session, None, Duration::ZERO).await;
    (receiver, base, app, upstream)
}

#[tokio::test]
async fn a_callback_subscription_is_checked_first_then_gets_each_change_and_heartbeats() {
    let (receiver, base, app, upstream) = router_and_gateway("cks_cb").await;
    // The router takes its time to confirm: the subscription is answered only after it did.
    receiver.delay("check", Duration::from_millis(300));
    let sent = Instant::now();
    let (status, body, answered) = subscribe(&app, "cks_cb", extension(&base, "sub-1", 400)).await;
    assert_eq!((status, &body), (200, &json!({"data": null})));
    let check = receiver.of("check").remove(0);
    assert!(answered >= check.at + Duration::from_millis(300), "answered before the check was confirmed");
    assert!(answered - sent < Duration::from_secs(2));
    assert_eq!(
        check.body,
        json!({"kind": "subscription", "action": "check", "id": "sub-1", "verifier": VERIFIER})
    );
    assert_eq!(check.path, "/callback/sub-1");

    // The current answer, then a webhook's change at once: the hub every transport shares.
    let first = receiver.nth("next", 1, Duration::from_secs(5)).await;
    assert_eq!(first.status(), "OPEN", "{:?}", first.body);
    assert_eq!((&first.body["id"], &first.body["verifier"]), (&json!("sub-1"), &json!(VERIFIER)));
    upstream.set(dodo_session("cks_cb", Some("succeeded")));
    let changed = Instant::now();
    assert_eq!(send_payment_event(&app, "cks_cb", "succeeded").await, 200);
    let second = receiver.nth("next", 2, Duration::from_secs(2)).await;
    assert_eq!(second.status(), "COMPLETED");
    assert!(second.at - changed < Duration::from_secs(1), "the change took {:?}", second.at - changed);

    // A `check` every heartbeat interval (400 ms) after the first.
    receiver.nth("check", 4, Duration::from_secs(5)).await;
    let checks = receiver.of("check");
    for pair in checks.windows(2).skip(1) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(350) && gap < Duration::from_millis(1500), "{gap:?}");
    }
    assert!(receiver.received().iter().all(|r| r.protocol == "callback/1.0" && r.path == "/callback/sub-1"));
    assert_eq!(gauge(&app, CALLBACK_SLOTS).await, 1);
    let accepted = r#"checkout_gateway_callback_messages_total{action="next",outcome="accepted"}"#;
    assert_eq!(gauge(&app, accepted).await, 2);
    assert!(receiver.of("complete").is_empty(), "a completed session may still change (a refund)");
}

#[tokio::test]
async fn callback_subscriptions_are_taken_only_from_the_router() {
    let (receiver, base) = Receiver::start().await;
    let app = spawn_app(with_callbacks(&base)).await;
    mount_dodo(&app, "cks_nr", None).await;
    let (status, body, _) = subscribe_as(&app, None, "cks_nr", extension(&base, "sub-nr", 0)).await;
    assert_eq!((status, code(&body)), (403, "CALLBACK_FORBIDDEN"), "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("router"), "{body}");
    let (status, body, _) =
        subscribe_as(&app, Some("not-the-secret"), "cks_nr", extension(&base, "sub-nr", 0)).await;
    assert_eq!((status, code(&body)), (401, "UNAUTHENTICATED"), "{body}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.received().is_empty(), "no POST: {:?}", receiver.received());
    assert_eq!(app.dodo.received_requests().await.unwrap().len(), 0, "nothing ran");
}

#[tokio::test]
async fn a_callback_url_outside_the_allow_list_is_refused_without_a_post() {
    let (receiver, base) = Receiver::start().await;
    let (elsewhere, other_base) = Receiver::start().await;
    // None allowed: the default.
    let off = spawn_app(|config| {
        with_callbacks(&base)(config);
        config.callbacks.allowed.clear();
    })
    .await;
    let (status, body, _) = subscribe(&off, "cks_url", extension(&base, "sub-off", 0)).await;
    assert_eq!((status, code(&body)), (403, "CALLBACK_URL_NOT_ALLOWED"), "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("off"), "{body}");

    let app = spawn_app(with_callbacks(&base)).await;
    let https = base.replace("http://", "https://");
    let outside = [
        format!("{base}/callbacks/sub-x"),
        format!("{base}/other/callback/sub-x"),
        format!("{base}/callback/../admin"),
        format!("{other_base}/callback/sub-x"),
        format!("{https}/callback/sub-x"),
    ];
    for url in outside {
        let extension = json!({"callbackUrl": url, "subscriptionId": "sub-x", "verifier": VERIFIER,
                               "heartbeatIntervalMs": 0});
        let (status, body, _) = subscribe(&app, "cks_url", extension).await;
        assert_eq!((status, code(&body)), (403, "CALLBACK_URL_NOT_ALLOWED"), "{url}: {body}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(receiver.received().is_empty() && elsewhere.received().is_empty(), "no POST anywhere");
}

#[tokio::test]
async fn a_malformed_subscription_extension_is_refused() {
    let (receiver, base) = Receiver::start().await;
    let app = spawn_app(with_callbacks(&base)).await;
    let url = format!("{base}/callback/sub-m");
    let with = |field: &str, value: Value| {
        let mut extension = extension(&base, "sub-m", 5000);
        extension[field] = value;
        extension
    };
    let without = |field: &str| {
        let mut extension = extension(&base, "sub-m", 5000);
        extension.as_object_mut().unwrap().remove(field);
        extension
    };
    let cases = [
        ("no extension", Value::Null),
        ("not an object", json!("callback")),
        ("no verifier", without("verifier")),
        ("no heartbeat", without("heartbeatIntervalMs")),
        ("a negative heartbeat", with("heartbeatIntervalMs", json!(-1))),
        ("a fractional heartbeat", with("heartbeatIntervalMs", json!(1.5))),
        ("a heartbeat as text", with("heartbeatIntervalMs", json!("5000"))),
        ("a heartbeat under the floor", with("heartbeatIntervalMs", json!(100))),
        ("a heartbeat over the ceiling", with("heartbeatIntervalMs", json!(3_600_001))),
        ("an empty id", with("subscriptionId", json!(""))),
        ("a long id", with("subscriptionId", json!("x".repeat(129)))),
        ("an id with a space", with("subscriptionId", json!("a b"))),
        ("an empty verifier", with("verifier", json!(""))),
        ("a long verifier", with("verifier", json!("v".repeat(257)))),
        ("no URL", with("callbackUrl", json!("not a url"))),
        ("another scheme", with("callbackUrl", json!(url.replace("http://", "ftp://")))),
        ("credentials", with("callbackUrl", json!(url.replace("http://", "http://u:p@")))),
        ("a query", with("callbackUrl", json!(format!("{url}?x=1")))),
    ];
    for (what, extension) in cases {
        let (status, body, _) = subscribe(&app, "cks_m", extension).await;
        assert_eq!((status, code(&body)), (400, "CALLBACK_MALFORMED"), "{what}: {body}");
        assert!(!body.to_string().contains("u:p@"), "{body}");
    }
    // No `extensions` at all: a client that asked for callbacks without saying where.
    let response = app
        .http
        .post(format!("http://{}/graphql", app.addr))
        .header("accept", "application/json;callbackSpec=1.0")
        .header("router-authorization", ROUTER_SECRET)
        .json(&json!({"query": UPDATED, "variables": {"p": "DODO", "id": "cks_m"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(code(&body), "CALLBACK_MALFORMED", "{body}");
    assert!(body.to_string().contains("carries extensions.subscription"), "{body}");
    // Within the bounds: 0 (no heartbeat) and the floor.
    mount_dodo(&app, "cks_m", None).await;
    for heartbeat in [0, 250] {
        let (status, body, _) = subscribe(&app, "cks_m", with("heartbeatIntervalMs", json!(heartbeat))).await;
        assert_eq!(status, 200, "{heartbeat}: {body}");
    }
    assert_eq!(receiver.of("check").len(), 2, "only the well-formed ones were checked");
}

#[tokio::test]
async fn a_check_the_router_does_not_confirm_fails_the_subscription() {
    let (receiver, base) = Receiver::start().await;
    let app = spawn_app(|config| {
        with_callbacks(&base)(config);
        config.callbacks.timeout = Duration::from_millis(300);
    })
    .await;
    mount_dodo(&app, "cks_chk", None).await;
    // What the router answers the check (status, with the protocol's header, after how long),
    // and what the refusal names.
    let cases = [
        ("404", 404, true, None, "404"),
        ("500", 500, true, None, "500"),
        ("204 without the protocol's header", 204, false, None, "subscription-protocol"),
        ("no answer within the timeout", 204, true, Some(Duration::from_secs(2)), "GATEWAY_CALLBACK_TIMEOUT"),
    ];
    for (n, (what, status, header, delay, says)) in cases.into_iter().enumerate() {
        receiver.answer("check", status);
        receiver.0 .1.lock().unwrap().without_header = !header;
        if let Some(delay) = delay {
            receiver.delay("check", delay);
        }
        let (status, body, _) = subscribe(&app, "cks_chk", extension(&base, &format!("sub-c{n}"), 0)).await;
        assert_eq!((status, code(&body)), (400, "CALLBACK_CHECK_FAILED"), "{what}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(says), "{what}: {message}");
        assert_eq!(receiver.of("check").len(), n + 1, "{what}");
    }
    slots_become(&app, 0).await;
    assert!(receiver.of("next").is_empty(), "nothing ran");
    assert_eq!(crate::support::providers::session_calls(&app.dodo).await, 0);
}

#[tokio::test]
async fn a_404_from_the_router_ends_the_subscription_and_frees_its_slot() {
    let (receiver, base, app, upstream) = router_and_gateway("cks_404").await;
    receiver.answer("next", 404);
    let (status, body, _) = subscribe(&app, "cks_404", extension(&base, "sub-404", 0)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(receiver.nth("next", 1, Duration::from_secs(5)).await.status(), "OPEN");
    slots_become(&app, 0).await;
    assert_eq!(gauge(&app, "checkout_gateway_live_subscriptions").await, 0, "the watch is released");
    // Nothing more goes to the router, a change included.
    upstream.set(dodo_session("cks_404", Some("succeeded")));
    assert_eq!(send_payment_event(&app, "cks_404", "succeeded").await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 2, "the check and the one next: {:?}", receiver.received());
    let gone = r#"checkout_gateway_callback_messages_total{action="next",outcome="gone"}"#;
    assert_eq!(gauge(&app, gone).await, 1);
}

#[tokio::test]
async fn callback_subscriptions_are_bounded() {
    let (receiver, base) = Receiver::start().await;
    let app = spawn_app(|config| {
        with_callbacks(&base)(config);
        config.callbacks.max_subscriptions = 1;
    })
    .await;
    mount_dodo(&app, "cks_n", Some("processing")).await;
    let (status, body, _) = subscribe(&app, "cks_n", extension(&base, "sub-1", 300)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = subscribe(&app, "cks_n", extension(&base, "sub-2", 300)).await;
    assert_eq!((status, code(&body)), (503, "SUBSCRIPTIONS_FULL"), "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("GATEWAY_MAX_CALLBACK_SUBSCRIPTIONS"));
    assert!(receiver.received().iter().all(|r| r.path == "/callback/sub-1"), "the refused one sent nothing");
    // The router drops the first (its next check gets 404): its place is free again.
    receiver.answer("check", 404);
    slots_become(&app, 0).await;
    receiver.answer("check", 204);
    let (status, body, _) = subscribe(&app, "cks_n", extension(&base, "sub-3", 300)).await;
    assert_eq!(status, 200, "{body}");
    // The stream slots every transport shares bound them too.
    let app = spawn_app(|config| {
        with_callbacks(&base)(config);
        config.max_subscription_connections = 1;
    })
    .await;
    mount_dodo(&app, "cks_n", Some("processing")).await;
    assert_eq!(subscribe(&app, "cks_n", extension(&base, "sub-4", 0)).await.0, 200);
    let (status, body, _) = subscribe(&app, "cks_n", extension(&base, "sub-5", 0)).await;
    assert_eq!((status, code(&body)), (503, "SUBSCRIPTIONS_FULL"), "{body}");
}

#[tokio::test]
async fn a_slow_router_gets_the_latest_answer_not_a_queue() {
    let (receiver, base, app, upstream) = router_and_gateway("cks_slow").await;
    // The router takes 2.5 s to take the first `next`; two changes come meanwhile (the
    // second one's refetch waits out the one-second refetch bound).
    receiver.delay("next", Duration::from_millis(2500));
    let (status, body, _) = subscribe(&app, "cks_slow", extension(&base, "sub-slow", 0)).await;
    assert_eq!(status, 200, "{body}");
    let first = receiver.nth("next", 1, Duration::from_secs(5)).await;
    assert_eq!(first.status(), "OPEN");
    upstream.set(dodo_session("cks_slow", Some("processing")));
    assert_eq!(send_payment_event(&app, "cks_slow", "processing").await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    upstream.set(dodo_session("cks_slow", Some("succeeded")));
    assert_eq!(send_payment_event(&app, "cks_slow", "succeeded").await, 200);
    let second = receiver.nth("next", 2, Duration::from_secs(5)).await;
    assert!(second.at >= first.at + Duration::from_millis(2500), "sent while the first was in flight");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let statuses: Vec<String> = receiver.of("next").iter().map(|next| next.status().to_owned()).collect();
    assert_eq!(statuses, ["OPEN", "COMPLETED"], "the latest answer, not each one in turn");
}

#[tokio::test]
async fn at_shutdown_each_callback_subscription_completes_with_an_error_to_subscribe_again() {
    let (receiver, base) = Receiver::start().await;
    let dodo = wiremock::MockServer::start().await;
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        accounts: vec![crate::support::app::account(
            &checkout_gateway::providers::dodo::KIND,
            "dodo",
            dodo.uri(),
            Some("key"),
        )],
        shutdown_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(10),
        ..Config::default()
    };
    with_callbacks(&base)(&mut config);
    let Stoppable { addr, stop, server } = start_stoppable(config).await;
    mount_dodo_upstream(&dodo, "cks_stop", None, Duration::ZERO).await;
    let app =
        TestApp { addr, http: crate::support::app::http(), dhmad: wiremock::MockServer::start().await, dodo };
    assert_eq!(subscribe(&app, "cks_stop", extension(&base, "sub-stop", 0)).await.0, 200);
    receiver.nth("next", 1, Duration::from_secs(5)).await;
    // The router takes its time with the `complete`: the process waits for it.
    receiver.delay("complete", Duration::from_millis(500));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap().unwrap();
    let stopped_at = Instant::now();
    let complete = receiver.of("complete");
    assert_eq!(complete.len(), 1, "{:?}", receiver.received());
    assert!(complete[0].at + Duration::from_millis(500) <= stopped_at, "the shutdown waited for it");
    let error = &complete[0].body["errors"][0];
    assert_eq!(error["extensions"]["code"], "SHUTTING_DOWN", "{:?}", complete[0].body);
    assert!(error["message"].as_str().unwrap().contains("subscribe again"));
    assert_eq!(
        (&complete[0].body["id"], &complete[0].body["verifier"]),
        (&json!("sub-stop"), &json!(VERIFIER))
    );
}
