//! The DHMAD client: the request it sends, every spelling of an id, every status and body
//! shape, timeouts; its webhooks' signature bounds, replays and refetch bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use checkout_gateway::config::Secret;
use checkout_gateway::providers::dhmad;
use checkout_gateway::sessions::REFETCH_INTERVAL;
use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::support::app::{account_mut, spawn_app, TestApp, DHMAD_KEY};
use crate::support::providers::{dhmad_session, session_calls, Upstream, DHMAD_ID};
use crate::support::webhooks::{deliver, now, DHMAD_SECRET as WEBHOOK_SECRET};

const SESSION_PATH: &str = "/api/v1/sessions/550e8400-e29b-41d4-a716-446655440000";

#[tokio::test]
async fn sends_get_with_bearer_key_and_parses_every_field() {
    let app = spawn_app(|_| {}).await;
    Mock::given(method("GET"))
        .and(path(SESSION_PATH))
        .and(header("authorization", format!("Bearer {DHMAD_KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"session": {
            "sessionId": DHMAD_ID, "escrowId": "507f1f77bcf86cd799439011", "action": "sign_contract",
            "targetUserEmail": "buyer@example.com", "status": "completed",
            "metadata": {"order_id": "ord_123"}, "expiresAt": "2024-01-15T10:30:00Z",
            "completedAt": "2024-01-15T10:15:00Z", "createdAt": "2024-01-15T10:00:00Z"}})))
        .expect(1)
        .mount(&app.dhmad)
        .await;

    let session = app.session("DHMAD", DHMAD_ID).await;

    assert_eq!(session["__typename"], "CheckoutSession");
    assert_eq!(session["provider"], "DHMAD");
    assert_eq!(session["id"], DHMAD_ID);
    assert_eq!(session["status"], "COMPLETED");
    assert_eq!(session["providerStatus"], "completed");
    assert_eq!(session["createdAt"], "2024-01-15T10:00:00+00:00");
    assert_eq!(session["expiresAt"], "2024-01-15T10:30:00+00:00");
    assert_eq!(session["completedAt"], "2024-01-15T10:15:00+00:00");
    assert_eq!(session["customerEmail"], "buyer@example.com");
    assert_eq!(session["metadata"], json!({"order_id": "ord_123"}));
    assert_eq!(session["details"]["__typename"], "DhmadSessionDetails");
    assert_eq!(session["details"]["escrowId"], "507f1f77bcf86cd799439011");
    assert_eq!(session["details"]["action"], "SIGN_CONTRACT");
    assert_eq!(session["details"]["rawAction"], "sign_contract");
    assert!(session["fetchedAt"].as_str().is_some());
}

#[tokio::test]
async fn every_status_is_normalised_and_the_raw_value_kept() {
    let app = spawn_app(|_| {}).await;
    let cases = [
        ("pending", "OPEN"),
        ("completed", "COMPLETED"),
        ("expired", "EXPIRED"),
        ("cancelled", "CANCELLED"),
        ("on_hold", "UNKNOWN"),
    ];
    for (i, (raw, normalised)) in cases.iter().enumerate() {
        let id = format!("550e8400-e29b-41d4-a716-44665544000{i}");
        Mock::given(path(format!("/api/v1/sessions/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(dhmad_session(&id, raw)))
            .mount(&app.dhmad)
            .await;
        let session = app.session("DHMAD", &id).await;
        assert_eq!(session["status"], *normalised, "{raw}");
        assert_eq!(session["providerStatus"], *raw);
    }
}

#[tokio::test]
async fn missing_optional_fields_and_unknown_extras_still_parse() {
    let app = spawn_app(|_| {}).await;
    Mock::given(path(SESSION_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"session": {
            "status": "pending", "createdAt": "2024-01-15T10:00:00Z", "action": "brand_new_action",
            "someNewField": [1, 2, 3]}, "extra": true})))
        .mount(&app.dhmad)
        .await;
    let session = app.session("DHMAD", DHMAD_ID).await;
    assert_eq!(session["status"], "OPEN");
    assert!(session["metadata"].is_null());
    assert!(session["expiresAt"].is_null());
    assert_eq!(session["details"]["action"], "UNKNOWN");
    assert_eq!(session["details"]["rawAction"], "brand_new_action");
}

#[tokio::test]
async fn every_error_body_shape_maps_to_its_type() {
    let app = spawn_app(|_| {}).await;
    let cases = [
        (401, json!({"error": "Unauthorized"}), "UnauthorizedError"),
        (401, json!({"error": "Unauthorized", "message": "Invalid or expired API key"}), "UnauthorizedError"),
        (
            403,
            json!({"error": "Forbidden", "message": "You do not have access to this checkout session."}),
            "ForbiddenError",
        ),
        (404, json!({"error": "Checkout session not found"}), "NotFoundError"),
        (404, json!({"error": "Not Found", "message": "..."}), "NotFoundError"),
        (
            400,
            json!({"error": {"code": "QUICK_ESCROW_NO_CONTRACT", "type": "business_rule_violation",
                               "message": "m", "user_message": "u"}}),
            "InvalidIdError",
        ),
        (500, json!({"error": "Internal", "message": "db-7.internal exploded"}), "ProviderUnavailableError"),
        (503, json!("just a string"), "ProviderUnavailableError"),
    ];
    for (i, (status, body, typename)) in cases.iter().enumerate() {
        let id = format!("00000000-0000-4000-8000-00000000000{i}");
        Mock::given(path(format!("/api/v1/sessions/{id}")))
            .respond_with(ResponseTemplate::new(*status).set_body_json(body))
            .mount(&app.dhmad)
            .await;
        let answer = app.session("DHMAD", &id).await;
        assert_eq!(answer["__typename"], *typename, "{status} {body}");
        assert_eq!(answer["provider"], "DHMAD");
        let message = answer["message"].as_str().unwrap();
        assert!(
            !message.contains("db-7") && !message.contains("QUICK_ESCROW"),
            "upstream text leaked: {message}"
        );
    }
}

#[tokio::test]
async fn non_json_error_and_success_bodies_never_break_the_gateway() {
    let app = spawn_app(|_| {}).await;
    Mock::given(path(SESSION_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"))
        .mount(&app.dhmad)
        .await;
    let answer = app.session("DHMAD", DHMAD_ID).await;
    assert_eq!(answer["__typename"], "ProviderUnavailableError");
    assert_eq!(answer["reason"], "INVALID_RESPONSE");
    assert_eq!(answer["upstreamStatus"], 200);
    assert!(!answer["message"].as_str().unwrap().contains("maintenance"));

    // Another gateway: this one's DHMAD calls are held for an hour now.
    let app = spawn_app(|_| {}).await;
    let other = "550e8400-e29b-41d4-a716-446655440001";
    Mock::given(path(format!("/api/v1/sessions/{other}")))
        .respond_with(ResponseTemplate::new(502).set_body_string("\u{0}\u{1}binary junk"))
        .mount(&app.dhmad)
        .await;
    let answer = app.session("DHMAD", other).await;
    assert_eq!(answer["reason"], "UPSTREAM_ERROR");
    assert_eq!(answer["upstreamStatus"], 502);
}

#[tokio::test]
async fn rate_limit_carries_the_wait_from_the_body_or_the_header() {
    let app = spawn_app(|_| {}).await;
    Mock::given(path(SESSION_PATH))
        .respond_with(ResponseTemplate::new(429).set_body_json(
            json!({"error": "Too Many Requests", "message": "Rate limit exceeded...", "retryAfter": 3600}),
        ))
        .mount(&app.dhmad)
        .await;
    let answer = app.session("DHMAD", DHMAD_ID).await;
    assert_eq!(answer["__typename"], "ProviderUnavailableError");
    assert_eq!(answer["code"], "PROVIDER_UNAVAILABLE");
    assert_eq!(answer["reason"], "RATE_LIMITED");
    assert_eq!(answer["retryAfterSeconds"], 3600);

    // Another gateway: this one's DHMAD calls are held for an hour now.
    let app = spawn_app(|_| {}).await;
    let other = "550e8400-e29b-41d4-a716-446655440001";
    Mock::given(path(format!("/api/v1/sessions/{other}")))
        .respond_with(
            ResponseTemplate::new(429).insert_header("retry-after", "17").set_body_string("slow down"),
        )
        .mount(&app.dhmad)
        .await;
    let answer = app.session("DHMAD", other).await;
    assert_eq!(answer["reason"], "RATE_LIMITED");
    assert_eq!(answer["retryAfterSeconds"], 17);
}

#[tokio::test]
async fn a_non_uuid_id_is_refused_without_calling() {
    let app = spawn_app(|_| {}).await;
    for id in ["cks_0Xa1", "../me", "550e8400-e29b-41d4-a716-44665544000", ""] {
        let answer = app.session("DHMAD", id).await;
        assert_eq!(answer["__typename"], "InvalidIdError", "{id:?}");
        assert_eq!(answer["code"], "INVALID_ID");
    }
    assert_eq!(crate::support::providers::session_calls(&app.dhmad).await, 0, "an invalid id reached DHMAD");
}

#[tokio::test]
async fn a_slow_upstream_times_out() {
    let app = spawn_app(|config| config.upstream_timeout = Duration::from_millis(300)).await;
    Mock::given(path(SESSION_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(dhmad_session(DHMAD_ID, "pending"))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&app.dhmad)
        .await;
    let started = Instant::now();
    let answer = app.session("DHMAD", DHMAD_ID).await;
    assert_eq!(answer["__typename"], "ProviderUnavailableError");
    assert_eq!(answer["reason"], "TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn an_unreachable_provider_is_unavailable() {
    // Bind then drop a listener: nothing serves that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app =
        spawn_app(|config| account_mut(config, "dhmad").base_url = format!("http://127.0.0.1:{port}/api/v1"))
            .await;
    let answer = app.session("DHMAD", DHMAD_ID).await;
    assert_eq!(answer["reason"], "CONNECTION_FAILED");
    assert!(!answer["message"].as_str().unwrap().contains("127.0.0.1"));
}

#[tokio::test]
async fn without_a_key_the_provider_is_not_configured_and_never_called() {
    let app = spawn_app(|config| account_mut(config, "dhmad").api_key = None).await;
    let answer = app.session("DHMAD", DHMAD_ID).await;
    assert_eq!(answer["__typename"], "ProviderUnavailableError");
    assert_eq!(answer["reason"], "NOT_CONFIGURED");
    assert_eq!(crate::support::providers::session_calls(&app.dhmad).await, 0);
}

#[tokio::test]
async fn the_key_never_appears_in_an_answer() {
    let app = spawn_app(|_| {}).await;
    Mock::given(path(SESSION_PATH))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"error": "Unauthorized", "message": DHMAD_KEY})),
        )
        .mount(&app.dhmad)
        .await;
    let answer = app.session("DHMAD", DHMAD_ID).await;
    assert_eq!(answer["__typename"], "UnauthorizedError");
    assert!(!answer.to_string().contains(DHMAD_KEY));
}

/// The escrow of `dhmad_session`'s sessions.
const ESCROW: &str = "507f1f77bcf86cd799439011";

/// A gateway whose `dhmad` account takes webhooks, and DHMAD answering `DHMAD_ID` from a body
/// the test can change.
async fn webhook_app() -> (Arc<TestApp>, Upstream) {
    let app = spawn_app(|config| {
        account_mut(config, "dhmad").webhook_secret = Some(Secret::new(WEBHOOK_SECRET));
    })
    .await;
    let upstream =
        Upstream::mount(&app.dhmad, SESSION_PATH, dhmad_session(DHMAD_ID, "pending"), Duration::ZERO).await;
    (Arc::new(app), upstream)
}

/// An escrow event's body, `pad` bytes longer than it needs to be.
fn escrow_body(status: &str, pad: usize) -> String {
    json!({"event": "escrow.status.updated",
           "data": {"escrowId": ESCROW, "status": status, "note": "x".repeat(pad)}})
    .to_string()
}

/// A delivery's headers, with `signature` as its `X-Webhook-Signature`.
fn escrow_headers(delivery: &str, signature: &str) -> Vec<(String, String)> {
    vec![
        ("x-webhook-id".to_owned(), delivery.to_owned()),
        ("x-webhook-event".to_owned(), "escrow.status.updated".to_owned()),
        ("x-webhook-timestamp".to_owned(), now().to_string()),
        ("x-webhook-signature".to_owned(), signature.to_owned()),
    ]
}

/// `n` well-formed signatures, none of them right.
fn wrong_signatures(n: u8) -> Vec<String> {
    (0..n).map(|n| format!("sha256={}", hex_of(n))).collect()
}

fn hex_of(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

// Several workers: a delivery that held one for long would still let the probes and the
// test's own timing through on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_header_over_its_bounds_is_refused_before_any_mac_while_probes_answer() {
    let (app, _) = webhook_app().await;
    // Just under the megabyte a delivery may hold.
    let body = escrow_body("funded", 1_000_000);
    let huge = vec!["AAAA"; 10_000].join(",");
    assert!(huge.len() > 49_000);
    let started = Instant::now();
    let delivery = {
        let (app, body) = (app.clone(), body.clone());
        tokio::spawn(async move { deliver(&app, "dhmad", &escrow_headers("evt_huge", &huge), body).await })
    };
    for _ in 0..3 {
        let probe = app.http.get(format!("http://{}/livez", app.addr)).timeout(Duration::from_secs(1));
        let live = probe.send().await.expect("/livez answers within a second meanwhile");
        assert_eq!(live.status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, answer) = tokio::time::timeout(Duration::from_secs(5), delivery)
        .await
        .expect("answered (without the bound: 10,000 MACs over a megabyte, minutes)")
        .unwrap();
    let took = started.elapsed();
    assert_eq!(status, 400, "{answer}");
    assert!(answer["errors"][0]["message"].as_str().unwrap().contains("x-webhook-signature"), "{answer}");
    assert_eq!(answer["errors"][0]["extensions"]["code"], "WEBHOOK_OVERSIZED_SIGNATURE", "{answer}");
    assert!(took < Duration::from_secs(1), "answered in {took:?}");

    // Over the bounds by one signature, or by length: refused the same way.
    let nine = wrong_signatures(9).join(",");
    let long = format!("sha256={}", "a".repeat(1100));
    for header in [nine, long] {
        let (status, answer) =
            deliver(&app, "dhmad", &escrow_headers("evt_over", &header), body.clone()).await;
        assert_eq!(status, 400, "{answer}");
    }
    // Within them, eight wrong signatures over a megabyte cost one MAC: refused quickly.
    let started = Instant::now();
    let eight = wrong_signatures(8).join(", ");
    let (status, _) = deliver(&app, "dhmad", &escrow_headers("evt_eight", &eight), body.clone()).await;
    assert_eq!(status, 401);
    assert!(started.elapsed() < Duration::from_secs(1), "answered in {:?}", started.elapsed());
    let metrics = app.metrics().await;
    let series = r#"checkout_gateway_webhooks_total{outcome="oversized_signature",provider="dhmad"} 3"#;
    assert!(metrics.lines().any(|line| line == series), "{metrics}");
    assert_eq!(session_calls(&app.dhmad).await, 0, "no refused delivery fetched anything");
}

#[tokio::test]
async fn a_rotation_signs_with_one_of_several_signatures() {
    let (app, _) = webhook_app().await;
    app.session("DHMAD", DHMAD_ID).await;
    let body = escrow_body("funded", 0);
    // The old secret's signature and the new one's, as during a rotation; then bare hex.
    let signature = dhmad::webhook::sign(WEBHOOK_SECRET, body.as_bytes());
    let rotation = format!("{}, {signature}", wrong_signatures(1)[0]);
    let (status, answer) = deliver(&app, "dhmad", &escrow_headers("evt_rot", &rotation), body).await;
    assert_eq!((status, &answer["status"]), (200, &json!("accepted")), "{answer}");
    let body = escrow_body("released", 0);
    let bare = dhmad::webhook::sign(WEBHOOK_SECRET, body.as_bytes()).replace("sha256=", "");
    let eight = [wrong_signatures(7), vec![bare]].concat().join(",");
    let (status, answer) = deliver(&app, "dhmad", &escrow_headers("evt_eight_ok", &eight), body).await;
    assert_eq!((status, &answer["status"]), (200, &json!("accepted")), "{answer}");
}

#[tokio::test]
async fn a_body_sent_again_under_a_new_id_is_acknowledged_and_not_acted_on() {
    let (app, _) = webhook_app().await;
    app.session("DHMAD", DHMAD_ID).await;
    let body = escrow_body("funded", 0);
    let signature = dhmad::webhook::sign(WEBHOOK_SECRET, body.as_bytes());
    let (status, answer) = deliver(&app, "dhmad", &escrow_headers("evt_1", &signature), body.clone()).await;
    assert_eq!((status, &answer["status"]), (200, &json!("accepted")), "{answer}");
    // Past the refetch bound, so that only the body's digest can tell the replay.
    tokio::time::sleep(REFETCH_INTERVAL + Duration::from_millis(300)).await;
    assert_eq!(session_calls(&app.dhmad).await, 2, "the lookup and the refetch");
    // Captured and sent again with a new id and timestamp: DHMAD signs the body alone, so it
    // verifies.
    let (status, answer) = deliver(&app, "dhmad", &escrow_headers("evt_2", &signature), body).await;
    assert_eq!((status, &answer["status"]), (200, &json!("already processed")), "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(session_calls(&app.dhmad).await, 2, "the replay fetched nothing");
    let metrics = app.metrics().await;
    let series = r#"checkout_gateway_webhooks_total{outcome="duplicate_body",provider="dhmad"} 1"#;
    assert!(metrics.lines().any(|line| line == series), "{metrics}");
}

#[tokio::test]
async fn a_burst_of_deliveries_for_one_escrow_costs_a_bounded_number_of_refetches() {
    let (app, upstream) = webhook_app().await;
    app.session("DHMAD", DHMAD_ID).await;
    upstream.set(dhmad_session(DHMAD_ID, "completed"));
    let started = Instant::now();
    for n in 0..20 {
        let body = escrow_body(&format!("step_{n}"), 0);
        let signature = dhmad::webhook::sign(WEBHOOK_SECRET, body.as_bytes());
        let (status, answer) =
            deliver(&app, "dhmad", &escrow_headers(&format!("evt_{n}"), &signature), body).await;
        assert_eq!((status, &answer["status"]), (200, &json!("accepted")), "{answer}");
    }
    let burst = started.elapsed();
    tokio::time::sleep(REFETCH_INTERVAL * 2 + Duration::from_millis(500)).await;
    // One refetch at once, then at most one per interval for all that came during it (without
    // the bound: one per delivery, 20).
    let refetches = session_calls(&app.dhmad).await - 1;
    let bound = 2 + (burst.as_millis() / REFETCH_INTERVAL.as_millis()) as usize;
    assert!((2..=bound).contains(&refetches), "{refetches} refetches for 20 deliveries in {burst:?}");
    // None of them is lost: the last refetch came after the last delivery.
    assert_eq!(app.session("DHMAD", DHMAD_ID).await["status"], "COMPLETED");
}

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
