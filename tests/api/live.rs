//! Live sessions: provider webhooks refresh the cache and reach subscribers over WebSocket and
//! Server-Sent Events; without webhooks one poller per watched session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use checkout_gateway::config::{Config, Secret};
use checkout_gateway::providers::sandbox::SandboxOptions;
use checkout_gateway::providers::{dhmad, dodo};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wiremock::matchers::path;
use wiremock::{Mock, Request, Respond, ResponseTemplate};

use checkout_gateway::sessions::REFETCH_INTERVAL;

use crate::support::access::{api_keys, ALL_KEY, DODO_ONLY_KEY};
use crate::support::app::{account_mut, sample, spawn_app, start_stoppable, Stoppable, TestApp};
use crate::support::providers::{
    dhmad_session, dodo_calls, dodo_session, mount_dodo_upstream, Upstream, DHMAD_ID,
};
use crate::support::sockets::{upgrade_request, RawSocket, Socket, UPDATED};
use crate::support::webhooks::{
    deliver, dodo_delivery, now, payment, send_payment_event, with_dodo_secret, Delivery, DHMAD_SECRET,
    DODO_SECRET,
};

/// Dodo answers `id` from a body the test can change.
async fn dodo_upstream(app: &TestApp, id: &str, status: Option<&str>, delay: Duration) -> Upstream {
    mount_dodo_upstream(&app.dodo, id, status, delay).await
}

async fn calls(app: &TestApp, id: &str) -> usize {
    dodo_calls(&app.dodo, id).await
}

#[tokio::test]
async fn a_signed_payment_event_refreshes_the_cache_and_reaches_the_subscriber_at_once() {
    let app = spawn_app(with_dodo_secret).await;
    let upstream = dodo_upstream(&app, "cks_live", None, Duration::ZERO).await;
    let mut socket = Socket::open(&app, "/graphql", "graphql-transport-ws").await;
    socket.subscribe("1", "DODO", "cks_live").await;
    assert_eq!(socket.update().await, ("1".into(), "OPEN".into()), "the current answer comes first");

    upstream.set(dodo_session("cks_live", Some("succeeded")));
    let sent = Instant::now();
    assert_eq!(send_payment_event(&app, "cks_live", "succeeded").await, 200);
    assert_eq!(socket.update().await.1, "COMPLETED");
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(1), "the update took {took:?}");
    // The cache entry was replaced: a query sees the new state without another call.
    assert_eq!(app.session("DODO", "cks_live").await["status"], "COMPLETED");
    assert_eq!(calls(&app, "cks_live").await, 2, "the first lookup and one refetch");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"checkout_gateway_webhooks_total{outcome="accepted",provider="dodo"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("checkout_gateway_live_pollers 0"), "a webhook keeps it current: no poller");
}

#[tokio::test]
async fn refused_deliveries_change_nothing() {
    // No secret: the route does not exist.
    let app = spawn_app(|_| {}).await;
    let (headers, body) =
        dodo_delivery(DODO_SECRET, "msg_1", now(), "payment.succeeded", payment("cks_r", "succeeded"));
    assert_eq!(deliver(&app, "dodo", &headers, body).await.0, 404);

    let app = spawn_app(with_dodo_secret).await;
    dodo_upstream(&app, "cks_r", None, Duration::ZERO).await;
    app.session("DODO", "cks_r").await;
    let event = |secret: &str, id: &str, at: i64, kind: &str| {
        dodo_delivery(secret, id, at, kind, payment("cks_r", "succeeded"))
    };
    let other_secret = "whsec_b3RoZXItc2VjcmV0LW9mLXRoZS1zYW1lLWZvcm0=";
    let cases: Vec<(&str, Delivery, u16, &str)> = vec![
        ("another secret", event(other_secret, "msg_a", now(), "payment.succeeded"), 401, "bad_signature"),
        (
            "six minutes old",
            event(DODO_SECRET, "msg_b", now() - 360, "payment.succeeded"),
            400,
            "stale_timestamp",
        ),
        (
            "six minutes ahead",
            event(DODO_SECRET, "msg_c", now() + 360, "payment.succeeded"),
            400,
            "stale_timestamp",
        ),
        (
            "no signature",
            {
                let (mut headers, body) = event(DODO_SECRET, "msg_e", now(), "payment.succeeded");
                headers.retain(|(name, _)| name != "webhook-signature");
                (headers, body)
            },
            400,
            "malformed",
        ),
        (
            "a changed body",
            {
                let (headers, body) = event(DODO_SECRET, "msg_f", now(), "payment.succeeded");
                (headers, body.replace("succeeded", "failed"))
            },
            401,
            "bad_signature",
        ),
        (
            "a signed body that is not JSON",
            {
                let signature = dodo::webhook::sign(DODO_SECRET, "msg_g", now(), b"not json").unwrap();
                (
                    vec![
                        ("webhook-id".into(), "msg_g".into()),
                        ("webhook-timestamp".into(), now().to_string()),
                        ("webhook-signature".into(), signature),
                    ],
                    "not json".into(),
                )
            },
            400,
            "malformed",
        ),
    ];
    let mut expected: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for (what, (headers, body), status, outcome) in cases {
        let (got, answer) = deliver(&app, "dodo", &headers, body).await;
        assert_eq!(got, status, "{what}: {answer}");
        assert!(answer["errors"][0]["message"].is_string(), "{what}: {answer}");
        // The refusal's code names the outcome it is counted under.
        let code = format!("WEBHOOK_{}", outcome.to_ascii_uppercase());
        assert_eq!(answer["errors"][0]["extensions"]["code"], code.as_str(), "{what}: {answer}");
        *expected.entry(outcome).or_default() += 1;
    }
    // Each refusal counted once, under its own outcome.
    let metrics = app.metrics().await;
    for (outcome, count) in expected {
        let series =
            format!(r#"checkout_gateway_webhooks_total{{outcome="{outcome}",provider="dodo"}} {count}"#);
        assert!(metrics.lines().any(|line| line == series), "{series}\n{metrics}");
    }
    // A signed event of a type not handled here is acknowledged (a 4xx would have Dodo retry
    // it, then disable the endpoint) and left alone.
    let (headers, body) = event(DODO_SECRET, "msg_d", now(), "payment_link.made_up");
    let (got, answer) = deliver(&app, "dodo", &headers, body).await;
    assert_eq!(got, 200, "{answer}");
    assert!(answer["status"].as_str().unwrap().contains("ignored"), "{answer}");
    let series = r#"checkout_gateway_webhooks_total{outcome="unknown_event",provider="dodo"} 1"#;
    assert!(app.metrics().await.lines().any(|line| line == series));
    // Bounded: a megabyte and more is refused before it is read whole.
    let (headers, _) = event(DODO_SECRET, "msg_h", now(), "payment.succeeded");
    let (got, _) = deliver(&app, "dodo", &headers, "x".repeat(2 * 1024 * 1024)).await;
    assert_eq!(got, 413);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls(&app, "cks_r").await, 1, "no refused delivery fetched anything");
}

#[tokio::test]
async fn a_redelivery_is_acknowledged_and_not_processed_twice() {
    let app = spawn_app(with_dodo_secret).await;
    dodo_upstream(&app, "cks_dup", None, Duration::ZERO).await;
    app.session("DODO", "cks_dup").await;
    let (headers, body) =
        dodo_delivery(DODO_SECRET, "msg_dup", now(), "payment.processing", payment("cks_dup", "processing"));
    let first = deliver(&app, "dodo", &headers, body.clone()).await;
    let again = deliver(&app, "dodo", &headers, body).await;
    assert_eq!((first.0, again.0), (200, 200));
    assert_eq!(again.1["status"], "already processed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(calls(&app, "cks_dup").await, 2, "one lookup, one refetch");
    assert!(app
        .metrics()
        .await
        .contains(r#"checkout_gateway_webhooks_total{outcome="duplicate",provider="dodo"} 1"#));
}

#[tokio::test]
async fn events_out_of_order_leave_the_providers_latest_state() {
    let app = spawn_app(with_dodo_secret).await;
    let upstream = dodo_upstream(&app, "cks_order", None, Duration::ZERO).await;
    app.session("DODO", "cks_order").await;
    upstream.set(dodo_session("cks_order", Some("succeeded")));
    // The succeeded event arrives first, the processing one (sent earlier) late.
    assert_eq!(send_payment_event(&app, "cks_order", "succeeded").await, 200);
    assert_eq!(send_payment_event(&app, "cks_order", "processing").await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.session("DODO", "cks_order").await["status"],
        "COMPLETED",
        "the event's own state is not taken"
    );
}

#[tokio::test]
async fn refunds_and_disputes_reach_the_session_through_its_payment() {
    let app = spawn_app(with_dodo_secret).await;
    dodo_upstream(&app, "cks_paid", Some("succeeded"), Duration::ZERO).await;
    // The session's payment (pay_9Qz) comes from the fetched session itself.
    app.session("DODO", "cks_paid").await;
    for (delivery, kind) in [("msg_refund", "refund.succeeded"), ("msg_dispute", "dispute.opened")] {
        let (headers, body) =
            dodo_delivery(DODO_SECRET, delivery, now(), kind, json!({"payment_id": "pay_9Qz"}));
        assert_eq!(deliver(&app, "dodo", &headers, body).await.0, 200);
    }
    // A payment the gateway never saw reaches nothing (and costs no call).
    let (headers, body) = dodo_delivery(
        DODO_SECRET,
        "msg_other",
        now(),
        "refund.succeeded",
        json!({"payment_id": "pay_other"}),
    );
    assert_eq!(deliver(&app, "dodo", &headers, body).await.0, 200);
    // The second event came within the refetch bound of the first: its refetch follows at the
    // end of it.
    tokio::time::sleep(REFETCH_INTERVAL + Duration::from_millis(500)).await;
    assert_eq!(calls(&app, "cks_paid").await, 3, "the lookup, then one refetch per event");
    assert!(app
        .metrics()
        .await
        .contains(r#"checkout_gateway_cache_refreshes_total{account="dodo",provider="dodo"} 2"#));
}

#[tokio::test]
async fn the_refetch_is_shared_with_concurrent_queries_and_the_answer_does_not_wait_for_it() {
    let app = Arc::new(spawn_app(with_dodo_secret).await);
    let upstream = dodo_upstream(&app, "cks_slow", None, Duration::from_millis(600)).await;
    app.session("DODO", "cks_slow").await;
    upstream.set(dodo_session("cks_slow", Some("succeeded")));
    let sent = Instant::now();
    assert_eq!(send_payment_event(&app, "cks_slow", "succeeded").await, 200);
    assert!(sent.elapsed() < Duration::from_millis(500), "the delivery is answered before the refetch ends");
    // Queries arriving while the refetch is in flight wait for it rather than read the old
    // answer or call again.
    let answers = crate::support::app::concurrently(&app, 20, "DODO", "cks_slow").await;
    assert!(answers.iter().all(|answer| answer["status"] == "COMPLETED"), "{answers:?}");
    assert_eq!(calls(&app, "cks_slow").await, 2, "the first lookup and the one shared refetch");
}

/// The first call answers the old state (open), late; every later one the new (succeeded).
struct OldThenNew {
    id: &'static str,
    calls: Arc<std::sync::atomic::AtomicUsize>,
    delay: Duration,
}

impl Respond for OldThenNew {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            ResponseTemplate::new(200).set_body_json(dodo_session(self.id, None)).set_delay(self.delay)
        } else {
            ResponseTemplate::new(200).set_body_json(dodo_session(self.id, Some("succeeded")))
        }
    }
}

#[tokio::test]
async fn a_lookup_in_flight_during_a_webhook_stores_nothing_over_it() {
    let app = Arc::new(spawn_app(with_dodo_secret).await);
    let upstream = OldThenNew { id: "cks_race", calls: Arc::default(), delay: Duration::from_millis(800) };
    Mock::given(path("/checkouts/cks_race")).respond_with(upstream).mount(&app.dodo).await;
    let query =
        "query($id: ID!) { checkoutSession(provider: DODO, id: $id) { ... on CheckoutSession { status } } }";
    let ask = || {
        let app = app.clone();
        tokio::spawn(async move { app.graphql(query, json!({"id": "cks_race"})).await })
    };
    let first = ask();
    // Its provider call is in flight when the webhook comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(send_payment_event(&app, "cks_race", "succeeded").await, 200);
    let first = first.await.unwrap();
    assert_eq!(first.data("checkoutSession")["status"], "OPEN", "it began before the webhook");
    // From now on, the new state: for the same request (a replayed response would hold the
    // old one, and so would the session cache)…
    let again = ask().await.unwrap();
    assert_eq!(again.data("checkoutSession")["status"], "COMPLETED", "the same request read the old state");
    // …and for another request (through the session cache).
    assert_eq!(app.session("DODO", "cks_race").await["status"], "COMPLETED");
    assert_eq!(calls(&app, "cks_race").await, 2, "the late lookup and the webhook's refetch");
}

#[tokio::test]
async fn a_hundred_subscribers_cost_one_refetch_per_webhook() {
    let app = spawn_app(with_dodo_secret).await;
    let upstream = dodo_upstream(&app, "cks_many", None, Duration::ZERO).await;
    let mut socket = Socket::open(&app, "/ws", "graphql-transport-ws").await;
    for n in 0..100 {
        socket.subscribe(&n.to_string(), "DODO", "cks_many").await;
    }
    for _ in 0..100 {
        assert_eq!(socket.update().await.1, "OPEN");
    }
    assert!(app.metrics().await.contains("checkout_gateway_live_sessions_watched 1"));
    upstream.set(dodo_session("cks_many", Some("processing")));
    assert_eq!(send_payment_event(&app, "cks_many", "processing").await, 200);
    let mut told = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let (id, status) = socket.update().await;
        assert_eq!(status, "PROCESSING");
        told.insert(id);
    }
    assert_eq!(told.len(), 100, "every subscriber is told once");
    assert_eq!(calls(&app, "cks_many").await, 2, "one lookup shared by all, one refetch");
}

/// Many subscriptions on one socket (as a router sends them): a stopped one leaves the session
/// at once and is not told again, its id may be reused at once, and an update reaches each
/// running one exactly once.
#[tokio::test]
async fn a_stopped_subscription_on_a_shared_socket_leaves_at_once_and_its_id_can_be_reused() {
    let app = spawn_app(with_dodo_secret).await;
    let upstream = dodo_upstream(&app, "cks_shared", None, Duration::ZERO).await;
    let mut socket = Socket::open(&app, "/ws", "graphql-transport-ws").await;
    for id in ["a", "b", "c"] {
        socket.subscribe(id, "DODO", "cks_shared").await;
        assert_eq!(socket.update().await, (id.to_owned(), "OPEN".to_owned()));
    }
    assert!(app.metrics().await.contains("checkout_gateway_live_subscriptions 3"));

    socket.send(json!({"id": "b", "type": "complete"})).await;
    let complete = socket.next().await;
    assert_eq!((&complete["id"], &complete["type"]), (&json!("b"), &json!("complete")), "{complete}");
    // Dropped with the stop, not at some later poll.
    assert!(app.metrics().await.contains("checkout_gateway_live_subscriptions 2"));

    socket.subscribe("b", "DODO", "cks_shared").await;
    assert_eq!(socket.update().await, ("b".to_owned(), "OPEN".to_owned()));
    upstream.set(dodo_session("cks_shared", Some("processing")));
    assert_eq!(send_payment_event(&app, "cks_shared", "processing").await, 200);
    let mut told = Vec::new();
    for _ in 0..3 {
        let (id, status) = socket.update().await;
        assert_eq!(status, "PROCESSING");
        told.push(id);
    }
    told.sort();
    assert_eq!(told, ["a", "b", "c"], "each running subscription told once, the stopped one not");
    assert!(app.metrics().await.contains("checkout_gateway_live_subscriptions 3"));
}

/// Subscribers asking alike (one document, variables, client) share one execution, wherever
/// they connect from: each is still told each change once and counted as its own; one who joins
/// later is sent the session's current answer first; the last to leave ends the execution.
#[tokio::test]
async fn subscribers_asking_alike_share_one_execution_and_each_is_told() {
    let app = spawn_app(with_dodo_secret).await;
    let upstream = dodo_upstream(&app, "cks_fan", None, Duration::ZERO).await;
    dodo_upstream(&app, "cks_other", None, Duration::ZERO).await;
    let gauge = |metrics: &str, name: &str| sample(metrics, &format!("checkout_gateway_{name} "));
    let sessions_sent =
        |metrics: &str| sample(metrics, r#"checkout_gateway_graphql_answers_total{answer="session"}"#);
    let mut one = Socket::open(&app, "/ws", "graphql-transport-ws").await;
    let mut two = Socket::open(&app, "/graphql", "graphql-transport-ws").await;
    for id in ["1", "2"] {
        one.subscribe(id, "DODO", "cks_fan").await;
        assert_eq!(one.update().await, (id.to_owned(), "OPEN".to_owned()));
    }
    two.subscribe("a", "DODO", "cks_fan").await;
    assert_eq!(two.update().await, ("a".to_owned(), "OPEN".to_owned()));
    // Other variables: another execution.
    two.subscribe("z", "DODO", "cks_other").await;
    assert_eq!(two.update().await, ("z".to_owned(), "OPEN".to_owned()));
    let metrics = app.metrics().await;
    assert_eq!(gauge(&metrics, "live_shared_executions"), 2.0, "{metrics}");
    assert_eq!(gauge(&metrics, "live_subscriptions"), 4.0, "{metrics}");
    assert_eq!(gauge(&metrics, "live_sessions_watched"), 2.0, "{metrics}");
    let before = sessions_sent(&metrics);

    upstream.set(dodo_session("cks_fan", Some("processing")));
    assert_eq!(send_payment_event(&app, "cks_fan", "processing").await, 200);
    let mut told = vec![one.update().await, one.update().await, two.update().await];
    told.sort();
    let processing = |id: &str| (id.to_owned(), "PROCESSING".to_owned());
    assert_eq!(told, [processing("1"), processing("2"), processing("a")], "each told once");
    // A late subscriber joins the running execution and is sent where the session stands now.
    two.subscribe("b", "DODO", "cks_fan").await;
    assert_eq!(two.update().await, processing("b"));
    let metrics = app.metrics().await;
    assert_eq!(gauge(&metrics, "live_shared_executions"), 2.0, "{metrics}");
    assert_eq!(
        sessions_sent(&metrics) - before,
        4.0,
        "each answer counted per subscriber sent it: {metrics}"
    );
    assert_eq!(calls(&app, "cks_fan").await, 2, "the first lookup and one refetch");

    // One leaves: the others stay; all leave: the executions end and the hub forgets.
    one.send(json!({"id": "1", "type": "complete"})).await;
    assert_eq!(one.next().await["type"], "complete");
    assert_eq!(gauge(&app.metrics().await, "live_subscriptions"), 4.0);
    drop((one, two));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = app.metrics().await;
        let gone = ["live_shared_executions", "live_subscriptions", "live_sessions_watched"]
            .iter()
            .all(|name| gauge(&metrics, name) == 0.0);
        if gone {
            break;
        }
        assert!(Instant::now() < deadline, "still running after everyone left: {metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A share whose latest answer is not a fresh session (here the provider could not answer) is
/// not joined: the newcomer's own lookup finds the session the provider answers now.
#[tokio::test]
async fn a_subscriber_does_not_join_a_share_whose_latest_answer_is_an_outage() {
    let app = spawn_app(with_dodo_secret).await;
    dodo_upstream(&app, "cks_down", None, Duration::ZERO).await;
    // The provider's first answer is a 503, then it answers again.
    Mock::given(path("/checkouts/cks_down"))
        .respond_with(ResponseTemplate::new(503))
        .with_priority(1)
        .up_to_n_times(1)
        .mount(&app.dodo)
        .await;
    let mut socket = Socket::open(&app, "/ws", "graphql-transport-ws").await;
    socket.subscribe("1", "DODO", "cks_down").await;
    assert_eq!(socket.update().await, ("1".to_owned(), "PROVIDER_UNAVAILABLE".to_owned()));
    socket.subscribe("2", "DODO", "cks_down").await;
    assert_eq!(socket.update().await, ("2".to_owned(), "OPEN".to_owned()), "its own lookup, not the outage");
    let metrics = app.metrics().await;
    assert_eq!(sample(&metrics, "checkout_gateway_live_shared_executions "), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "checkout_gateway_live_subscriptions "), 2.0, "{metrics}");
}

/// Clients with other rights never share an execution: each is answered for its own rights
/// (the one that may not read the account is refused, the other gets the session).
#[tokio::test]
async fn subscribers_with_other_rights_are_answered_each_for_their_own() {
    let app = spawn_app(|config| config.access = Some(api_keys())).await;
    Mock::given(path(format!("/api/v1/sessions/{DHMAD_ID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(dhmad_session(DHMAD_ID, "pending")))
        .mount(&app.dhmad)
        .await;
    let mut sockets = Vec::new();
    // The client that may read DHMAD first (had the next one joined its execution, it would be
    // sent a session it may not read), then the one that may not, then the first one's again.
    for (key, denied) in [(ALL_KEY, false), (DODO_ONLY_KEY, true), (ALL_KEY, false)] {
        let mut socket =
            Socket::open_with(app.addr, "/ws", json!({"Authorization": format!("Bearer {key}")})).await;
        socket.subscribe("1", "DHMAD", DHMAD_ID).await;
        let (_, answer) = socket.update().await;
        assert_eq!(answer == "ACCESS_DENIED", denied, "{key}: {answer}");
        assert!(!answer.is_empty());
        sockets.push(socket);
    }
    let metrics = app.metrics().await;
    // The refused one's execution ended with its answer; both of the first client's run as one.
    assert_eq!(sample(&metrics, "checkout_gateway_live_shared_executions "), 1.0, "{metrics}");
    assert_eq!(sample(&metrics, "checkout_gateway_live_subscriptions "), 2.0, "{metrics}");
}

#[tokio::test]
async fn without_webhooks_one_poller_per_session_while_anyone_watches() {
    let app = spawn_app(|config| config.cache.open = Duration::from_millis(300)).await;
    let upstream = dodo_upstream(&app, "cks_polled", None, Duration::ZERO).await;
    let mut sockets = Vec::new();
    for _ in 0..4 {
        let mut socket = Socket::open(&app, "/ws", "graphql-transport-ws").await;
        for n in 0..25 {
            socket.subscribe(&n.to_string(), "DODO", "cks_polled").await;
        }
        for _ in 0..25 {
            assert_eq!(socket.update().await.1, "OPEN");
        }
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let polled = calls(&app, "cks_polled").await;
    // One poller: about one call per 300 ms, however many watch.
    assert!((3..=8).contains(&polled), "{polled} calls in 1.5 s");
    let metrics = app.metrics().await;
    assert!(metrics.contains("checkout_gateway_live_pollers 1"), "{metrics}");
    assert!(metrics.contains("checkout_gateway_live_subscriptions 100"), "{metrics}");

    // A change found by polling reaches every subscriber; a same-content poll sends nothing.
    upstream.set(dodo_session("cks_polled", Some("requires_customer_action")));
    for socket in &mut sockets {
        for _ in 0..25 {
            assert_eq!(socket.update().await.1, "ACTION_REQUIRED");
        }
    }

    // Everyone leaves: the poller stops and the hub forgets the session.
    drop(sockets);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after_leaving = calls(&app, "cks_polled").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(calls(&app, "cks_polled").await, after_leaving, "no call once nobody watches");
    let metrics = app.metrics().await;
    assert!(metrics.contains("checkout_gateway_live_pollers 0"), "{metrics}");
    assert!(metrics.contains("checkout_gateway_live_sessions_watched 0"), "{metrics}");
    assert!(metrics.contains("checkout_gateway_live_subscriptions 0"), "{metrics}");
}

#[tokio::test]
async fn the_poller_stops_at_a_final_status() {
    let app = spawn_app(|config| {
        config.cache.open = Duration::from_millis(200);
        // Short too, so that a poller that went on past the final status would call again.
        config.cache.terminal = Duration::from_millis(200);
    })
    .await;
    let upstream = dodo_upstream(&app, "cks_final", None, Duration::ZERO).await;
    let mut socket = Socket::open(&app, "/ws", "graphql-transport-ws").await;
    socket.subscribe("1", "DODO", "cks_final").await;
    assert_eq!(socket.update().await.1, "OPEN");
    upstream.set(dodo_session("cks_final", Some("succeeded")));
    assert_eq!(socket.update().await.1, "COMPLETED");
    let at_final = calls(&app, "cks_final").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(calls(&app, "cks_final").await, at_final, "a completed session is not polled");
    assert!(app.metrics().await.contains("checkout_gateway_live_pollers 0"));
}

/// Reads Server-Sent Events until `count` `next` events; their data.
async fn sse_events(response: reqwest::Response, count: usize) -> Vec<Value> {
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("an event")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if event.contains("event: next") {
                let data = event.lines().find_map(|line| line.strip_prefix("data: ")).unwrap();
                events.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    events
}

/// Reads Server-Sent Events until `count` `next` events; their statuses.
async fn sse_statuses(response: reqwest::Response, count: usize) -> Vec<String> {
    sse_events(response, count)
        .await
        .iter()
        .map(|value| {
            value["data"]["checkoutSessionUpdated"]["status"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn server_sent_events_carry_updates_for_get_and_post() {
    let app = spawn_app(with_dodo_secret).await;
    let upstream = dodo_upstream(&app, "cks_sse", None, Duration::ZERO).await;
    let variables = json!({"p": "DODO", "id": "cks_sse"}).to_string();
    let url = format!("http://{}/graphql", app.addr);
    let get = app
        .http
        .get(&url)
        .query(&[("query", UPDATED), ("variables", &variables)])
        .header("accept", "text/event-stream")
        .header("apollo-require-preflight", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert!(get.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let post = app
        .http
        .post(&url)
        .header("accept", "text/event-stream")
        .json(&json!({"query": UPDATED, "variables": {"p": "DODO", "id": "cks_sse"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 200);
    let get = tokio::spawn(sse_statuses(get, 2));
    let post = tokio::spawn(sse_statuses(post, 2));
    tokio::time::sleep(Duration::from_millis(300)).await;
    upstream.set(dodo_session("cks_sse", Some("succeeded")));
    assert_eq!(send_payment_event(&app, "cks_sse", "succeeded").await, 200);
    assert_eq!(get.await.unwrap(), ["OPEN", "COMPLETED"]);
    assert_eq!(post.await.unwrap(), ["OPEN", "COMPLETED"]);

    // A browser's EventSource sends no custom header: refused like any cross-site GET.
    let bare = app
        .http
        .get(&url)
        .query(&[("query", UPDATED), ("variables", &variables)])
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 400);
}

#[tokio::test]
async fn the_older_graphql_ws_protocol_is_spoken_too() {
    let app = spawn_app(|_| {}).await;
    crate::support::providers::mount_dodo(&app, "cks_legacy", Some("processing")).await;
    let mut socket = Socket::open(&app, "/ws", "graphql-ws").await;
    let payload = json!({"query": UPDATED, "variables": {"p": "DODO", "id": "cks_legacy"}});
    socket.send(json!({"id": "1", "type": "start", "payload": payload})).await;
    let message = socket.next().await;
    assert_eq!(message["type"], "data", "{message}");
    assert_eq!(message["payload"]["data"]["checkoutSessionUpdated"]["status"], "PROCESSING");
}

#[tokio::test]
async fn connections_and_subscriptions_are_bounded() {
    let app = spawn_app(|config| {
        config.subscriptions_per_connection = 2;
        config.max_subscription_connections = 1;
    })
    .await;
    crate::support::providers::mount_dodo(&app, "cks_b", None).await;
    let mut socket = Socket::open(&app, "/ws", "graphql-transport-ws").await;
    for n in ["1", "2"] {
        socket.subscribe(n, "DODO", "cks_b").await;
        assert_eq!(socket.update().await.1, "OPEN");
    }
    socket.subscribe("3", "DODO", "cks_b").await;
    let refused = socket.next().await;
    assert_eq!(refused["id"], "3", "{refused}");
    assert_eq!(refused["payload"]["errors"][0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS", "{refused}");
    assert_eq!(socket.next().await["type"], "complete");

    // The one connection allowed is taken.
    let request = upgrade_request(app.addr, "/ws", "graphql-transport-ws");
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    // Stopping a subscription frees its place.
    socket.send(json!({"id": "1", "type": "complete"})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    socket.subscribe("4", "DODO", "cks_b").await;
    let mut message = socket.next().await;
    while message["type"] == "complete" {
        message = socket.next().await;
    }
    assert_eq!((&message["id"], &message["type"]), (&json!("4"), &json!("next")), "{message}");
}

#[tokio::test]
async fn a_websocket_from_another_sites_page_is_refused() {
    let app = spawn_app(|_| {}).await;
    let mut request = upgrade_request(app.addr, "/ws", "graphql-transport-ws");
    request.headers_mut().insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    // The gateway's own page (same origin) may.
    let mut request = upgrade_request(app.addr, "/ws", "graphql-transport-ws");
    request.headers_mut().insert("origin", format!("http://{}", app.addr).parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
}

/// The code of the close frame the server sends within `within` (other messages skipped).
async fn close_code(socket: &mut RawSocket, within: Duration) -> Option<u16> {
    tokio::time::timeout(within, async {
        while let Some(Ok(message)) = socket.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|frame| u16::from(frame.code));
            }
        }
        None
    })
    .await
    .expect("the server closes the socket in time")
}

#[tokio::test]
async fn a_websocket_without_connection_init_is_closed_with_4408() {
    let app = spawn_app(|config| config.connection_init_timeout = Duration::from_millis(500)).await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let (mut socket, _) =
            tokio_tungstenite::connect_async(upgrade_request(app.addr, "/ws", protocol)).await.unwrap();
        let opened = Instant::now();
        assert_eq!(close_code(&mut socket, Duration::from_secs(3)).await, Some(4408), "{protocol}");
        assert!(opened.elapsed() >= Duration::from_millis(400), "{protocol}: closed before the timeout");
    }
    // A client that sends it in time stays.
    let mut socket = Socket::open(&app, "/ws", "graphql-transport-ws").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    socket.send(json!({"type": "ping"})).await;
    assert_eq!(socket.next().await["type"], "pong");
}

#[tokio::test]
async fn sockets_that_never_send_connection_init_take_no_subscription_slot() {
    let app = spawn_app(|config| {
        config.max_subscription_connections = 2;
        config.connection_init_timeout = Duration::from_secs(30);
    })
    .await;
    crate::support::providers::mount_dodo(&app, "cks_slot", Some("processing")).await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        let request = upgrade_request(app.addr, "/ws", "graphql-transport-ws");
        idle.push(tokio_tungstenite::connect_async(request).await.unwrap().0);
    }
    // Admitted, so counted: the two silent ones do not keep it out.
    let mut socket = Socket::open(&app, "/ws", "graphql-transport-ws").await;
    socket.subscribe("1", "DODO", "cks_slot").await;
    assert_eq!(socket.update().await, ("1".into(), "PROCESSING".into()));
    let admitted = Socket::open(&app, "/ws", "graphql-transport-ws").await;
    // Both slots are taken by admitted clients: the next is told at once.
    let request = upgrade_request(app.addr, "/ws", "graphql-transport-ws");
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    drop((idle, admitted));
}

#[tokio::test]
async fn a_websocket_message_over_the_bound_closes_the_socket_with_1009() {
    let app = spawn_app(|_| {}).await;
    crate::support::providers::mount_dodo(&app, "cks_big", Some("processing")).await;
    let (mut socket, _) =
        tokio_tungstenite::connect_async(upgrade_request(app.addr, "/ws", "graphql-transport-ws"))
            .await
            .unwrap();
    socket.send(Message::Text(json!({"type": "connection_init"}).to_string().into())).await.unwrap();
    // A subscription whose document is padded (a comment) past the default 64 KiB.
    let query = format!("# {}\n{UPDATED}", "x".repeat(100 * 1024));
    let payload = json!({"query": query, "variables": {"p": "DODO", "id": "cks_big"}});
    let subscribe = json!({"id": "1", "type": "subscribe", "payload": payload});
    socket.send(Message::Text(subscribe.to_string().into())).await.unwrap();
    assert_eq!(close_code(&mut socket, Duration::from_secs(5)).await, Some(1009));
}

/// The socket reads 512 bytes at a time: a message many times that, within the bound, is
/// still read whole and answered.
#[tokio::test]
async fn a_websocket_message_larger_than_one_read_is_read_whole() {
    let app = spawn_app(|_| {}).await;
    crate::support::providers::mount_dodo(&app, "cks_padded", Some("processing")).await;
    let mut socket = Socket::open(&app, "/ws", "graphql-transport-ws").await;
    let query = format!("# {}\n{UPDATED}", "x".repeat(48 * 1024));
    let payload = json!({"query": query, "variables": {"p": "DODO", "id": "cks_padded"}});
    socket.send(json!({"id": "1", "type": "subscribe", "payload": payload})).await;
    assert_eq!(socket.update().await, ("1".to_owned(), "PROCESSING".to_owned()));
}

#[tokio::test]
async fn shutdown_does_not_wait_on_a_websocket_client_that_does_not_read() {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shutdown_delay: Duration::ZERO,
        shutdown_grace: Duration::from_secs(30),
        // Also how long one write may wait on the peer.
        subscription_ping_interval: Duration::from_secs(2),
        introspection: true,
        access: Some(checkout_gateway::access::AccessConfig::open()),
        ..Config::default()
    };
    let Stoppable { addr, stop, server } = start_stoppable(config).await;
    // A client with a small receive window that, once admitted, never reads again, and asks for
    // megabytes (introspection results, tens of KiB each) to be written to it.
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    tcp.set_recv_buffer_size(4096).unwrap();
    let stream = tcp.connect(addr).await.unwrap();
    let request = upgrade_request(addr, "/ws", "graphql-transport-ws");
    let (socket, _) = tokio_tungstenite::client_async(request, stream).await.unwrap();
    let (mut write, mut read) = socket.split();
    write.send(Message::Text(json!({"type": "connection_init"}).to_string().into())).await.unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(5), read.next()).await.unwrap().unwrap().unwrap();
    assert!(ack.to_text().unwrap().contains("connection_ack"), "{ack:?}");
    let query =
        "{ __schema { types { name description fields { name description args { name description } } } } }";
    let sending = tokio::spawn(async move {
        for id in 0..300 {
            let subscribe = json!({"id": id.to_string(), "type": "subscribe", "payload": {"query": query}});
            if write.send(Message::Text(subscribe.to_string().into())).await.is_err() {
                break;
            }
        }
        write
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the shutdown finishes well within its 30 s grace")
        .unwrap()
        .unwrap();
    assert!(asked.elapsed() < Duration::from_secs(6), "{:?}", asked.elapsed());
    drop((sending, read));
}

#[tokio::test]
async fn a_dhmad_escrow_event_refreshes_every_session_of_the_escrow() {
    let app =
        spawn_app(|config| account_mut(config, "dhmad").webhook_secret = Some(Secret::new(DHMAD_SECRET)))
            .await;
    let other = "6ba7b810-9dad-41d1-80b4-00c04fd430c8";
    for id in [DHMAD_ID, other] {
        Mock::given(path(format!("/api/v1/sessions/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(dhmad_session(id, "pending")))
            .mount(&app.dhmad)
            .await;
    }
    app.session("DHMAD", DHMAD_ID).await;
    app.session("DHMAD", other).await;
    let dhmad_calls = || async {
        let requests = app.dhmad.received_requests().await.unwrap();
        requests.iter().filter(|r| r.url.path().starts_with("/api/v1/sessions/")).count()
    };
    assert_eq!(dhmad_calls().await, 2);
    let event = |status: &str| {
        json!({"event": "escrow.status.updated", "data": {"escrowId": "507f1f77bcf86cd799439011", "status": status}}).to_string()
    };
    let body = event("funded");
    // The signature in each documented form, and the timestamp as seconds and as RFC 3339 (two
    // events: the same body twice would be a replay).
    let signature = dhmad::webhook::sign(DHMAD_SECRET, body.as_bytes());
    let released = event("released");
    let bare =
        dhmad::webhook::sign(DHMAD_SECRET, released.as_bytes()).trim_start_matches("sha256=").to_owned();
    let forms = [
        (signature.clone(), now().to_string(), body.clone()),
        (bare, chrono::Utc::now().to_rfc3339(), released),
    ];
    for (n, (signature, timestamp, body)) in forms.into_iter().enumerate() {
        let headers = vec![
            ("x-webhook-id".to_owned(), format!("evt_{n}")),
            ("x-webhook-event".to_owned(), "escrow.status.updated".to_owned()),
            ("x-webhook-timestamp".to_owned(), timestamp),
            ("x-webhook-signature".to_owned(), signature),
        ];
        let (status, answer) = deliver(&app, "dhmad", &headers, body).await;
        assert_eq!(status, 200, "{answer}");
    }
    // The second event's refetches come at the end of the refetch bound.
    tokio::time::sleep(REFETCH_INTERVAL + Duration::from_millis(500)).await;
    assert_eq!(dhmad_calls().await, 6, "both sessions of the escrow, once per event");

    let stale = vec![
        ("x-webhook-id".to_owned(), "evt_old".to_owned()),
        ("x-webhook-event".to_owned(), "escrow.status.updated".to_owned()),
        ("x-webhook-timestamp".to_owned(), (now() - 600).to_string()),
        ("x-webhook-signature".to_owned(), signature.clone()),
    ];
    assert_eq!(deliver(&app, "dhmad", &stale, body.clone()).await.0, 400);
    let forged = vec![
        ("x-webhook-id".to_owned(), "evt_forged".to_owned()),
        ("x-webhook-event".to_owned(), "escrow.status.updated".to_owned()),
        ("x-webhook-timestamp".to_owned(), now().to_string()),
        ("x-webhook-signature".to_owned(), dhmad::webhook::sign("not the secret", body.as_bytes())),
    ];
    assert_eq!(deliver(&app, "dhmad", &forged, body.clone()).await.0, 401);
    // Signed, of a type DHMAD does not document: acknowledged and ignored.
    let teleported = event("teleported");
    let unknown = vec![
        ("x-webhook-id".to_owned(), "evt_unknown".to_owned()),
        ("x-webhook-event".to_owned(), "escrow.teleported".to_owned()),
        ("x-webhook-timestamp".to_owned(), now().to_string()),
        ("x-webhook-signature".to_owned(), dhmad::webhook::sign(DHMAD_SECRET, teleported.as_bytes())),
    ];
    let (status, answer) = deliver(&app, "dhmad", &unknown, teleported).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["status"].as_str().unwrap().contains("ignored"), "{answer}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(dhmad_calls().await, 6, "refused and ignored deliveries fetch nothing");
}

#[tokio::test]
async fn an_event_goes_to_the_account_whose_business_it_names() {
    let app = spawn_app(|config| {
        let live = account_mut(config, "dodo");
        live.webhook_secret = Some(Secret::new(DODO_SECRET));
        live.business_id = Some("bus_live".into());
    })
    .await;
    dodo_upstream(&app, "cks_biz", None, Duration::ZERO).await;
    app.session("DODO", "cks_biz").await;
    let signed = |business: &str, delivery: &str| {
        let body = json!({"business_id": business, "type": "payment.succeeded", "data": payment("cks_biz", "succeeded")}).to_string();
        let signature = dodo::webhook::sign(DODO_SECRET, delivery, now(), body.as_bytes()).unwrap();
        let headers = vec![
            ("webhook-id".to_owned(), delivery.to_owned()),
            ("webhook-timestamp".to_owned(), now().to_string()),
            ("webhook-signature".to_owned(), signature),
        ];
        (headers, body)
    };
    let (headers, body) = signed("bus_other", "msg_biz");
    assert_eq!(deliver(&app, "dodo", &headers, body).await.0, 422, "no account has bus_other");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls(&app, "cks_biz").await, 1);
    // The account's own business: taken, and the session fetched again.
    let (headers, body) = signed("bus_live", "msg_biz_ok");
    assert_eq!(deliver(&app, "dodo", &headers, body).await.0, 200, "bus_live is the account's");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls(&app, "cks_biz").await, 2);
}

#[tokio::test]
async fn demo_sessions_move_and_their_webhooks_reach_a_subscriber() {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        demo: true,
        sandbox: SandboxOptions { step: Duration::from_millis(400), ..SandboxOptions::default() },
        shutdown_delay: Duration::ZERO,
        ..Config::default()
    };
    let addr = crate::support::app::start(config).await;
    let app = TestApp {
        addr,
        http: crate::support::app::http(),
        dhmad: wiremock::MockServer::start().await,
        dodo: wiremock::MockServer::start().await,
    };
    let mut socket = Socket::open(&app, "/graphql", "graphql-transport-ws").await;
    socket.subscribe("1", "DODO", "cks_live_test").await;
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("COMPLETED") {
        seen.push(socket.update().await.1);
    }
    assert_eq!(seen, ["OPEN", "PROCESSING", "COMPLETED"]);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"checkout_gateway_webhooks_total{outcome="accepted",provider="dodo"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains("checkout_gateway_live_pollers 0"), "the demo's Dodo accounts take webhooks");
}

/// Subscribes to `id` over WebSocket and reads its first answer's code or status, then
/// whether the subscription is complete.
async fn first_answer_then(app: &TestApp, id: &str) -> (String, Value) {
    let mut socket = Socket::open(app, "/ws", "graphql-transport-ws").await;
    socket.subscribe("1", "DODO", id).await;
    let (_, what) = socket.update().await;
    let after = tokio::time::timeout(Duration::from_millis(500), socket.next()).await.unwrap_or(Value::Null);
    // Held open for several poll intervals: a poller would call meanwhile.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    drop(socket);
    (what, after)
}

#[tokio::test]
async fn a_session_whose_answer_cannot_change_is_not_polled() {
    let app = spawn_app(|config| {
        config.cache.open = Duration::from_millis(100);
        config.cache.not_found = Duration::from_millis(100);
        config.cache.terminal = Duration::from_millis(100);
    })
    .await;
    for (status, id) in [(404, "cks_gone"), (401, "cks_unauthorized"), (403, "cks_forbidden")] {
        Mock::given(path(format!("/checkouts/{id}")))
            .respond_with(ResponseTemplate::new(status).set_body_json(json!({"code": "NOPE"})))
            // The subscription's own lookup; at most one poll more, should the poller's first
            // interval (100 ms) pass on a loaded machine before the subscription has ended.
            .expect(1..=2)
            .named(id)
            .mount(&app.dodo)
            .await;
    }
    let mut ended = Vec::new();
    for id in ["cks_gone", "cks_unauthorized", "cks_forbidden"] {
        let (what, after) = first_answer_then(&app, id).await;
        ended.push((what, after["type"].as_str().unwrap_or_default().to_owned()));
    }
    // At most two calls each over ten poll intervals (polling on: one every 100 ms).
    app.dodo.verify().await;
    // The subscription gets the error, then ends: there is no session to follow.
    let complete = |code: &str| (code.to_owned(), "complete".to_owned());
    assert_eq!(ended, [complete("NOT_FOUND"), complete("UNAUTHORIZED"), complete("FORBIDDEN")]);

    // A completed session: its subscription stays (a webhook may still report a refund), its
    // poller stops at the first answer (the terminal TTL is as short as the poll interval, so
    // one more poll would call again).
    Mock::given(path("/checkouts/cks_done"))
        .respond_with(ResponseTemplate::new(200).set_body_json(dodo_session("cks_done", Some("succeeded"))))
        .expect(1..=2)
        .named("cks_done")
        .mount(&app.dodo)
        .await;
    let (what, after) = first_answer_then(&app, "cks_done").await;
    assert_eq!(what, "COMPLETED");
    assert!(after.is_null(), "nothing more is sent: {after}");
    app.dodo.verify().await;
    assert!(app.metrics().await.contains("checkout_gateway_live_pollers 0"));
}

#[tokio::test]
async fn an_sse_stream_watches_at_most_the_per_connection_bound() {
    let app = spawn_app(|config| config.subscriptions_per_connection = 2).await;
    crate::support::providers::mount_dodo_numbered(&app, "cks_alias_").await;
    let fields: String = (1..=3)
        .map(|n| {
            format!("s{n}: checkoutSessionUpdated(provider: DODO, id: \"cks_alias_{n}\") {{ __typename }} ")
        })
        .collect();
    let response = app
        .http
        .post(format!("http://{}/graphql", app.addr))
        .header("accept", "text/event-stream")
        .json(&json!({"query": format!("subscription {{ {fields} }}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = sse_events(response, 3).await;
    let refused: Vec<&Value> = events
        .iter()
        .filter(|event| event["errors"][0]["extensions"]["code"] == "TOO_MANY_SUBSCRIPTIONS")
        .collect();
    assert_eq!(refused.len(), 1, "{events:?}");
    assert_eq!(refused[0]["errors"][0]["extensions"]["max"], 2);
    assert!(refused[0]["errors"][0]["message"].as_str().unwrap().contains("SSE stream"));
    assert_eq!(
        events.iter().filter(|event| event["data"].is_object()).count(),
        2,
        "the two within the bound are answered: {events:?}"
    );
    assert_eq!(crate::support::providers::session_calls(&app.dodo).await, 2, "the refused one asked nothing");
}
