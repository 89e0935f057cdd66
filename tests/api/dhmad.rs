//! The DHMAD client: the request it sends, every status and body shape, timeouts.

use std::time::{Duration, Instant};

use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{account_mut, dhmad_session, spawn_app, DHMAD_ID, DHMAD_KEY};

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
    assert_eq!(crate::helpers::session_calls(&app.dhmad).await, 0, "an invalid id reached DHMAD");
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
    assert_eq!(crate::helpers::session_calls(&app.dhmad).await, 0);
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
