//! The Dodo Payments client: the request it sends, the id encoding, every status, timeouts;
//! its webhooks' signature bounds.

use std::time::{Duration, Instant};

use serde_json::json;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, ResponseTemplate};

use checkout_gateway::config::Secret;

use crate::support::app::{account_mut, spawn_app, DODO_KEY};
use crate::support::providers::{dodo_session, mount_dodo};
use crate::support::webhooks::{deliver, dodo_delivery, now, payment, DODO_SECRET as WEBHOOK_SECRET};

#[tokio::test]
async fn sends_get_with_bearer_key_and_parses_every_field() {
    let app = spawn_app(|_| {}).await;
    Mock::given(method("GET"))
        .and(path("/checkouts/cks_0Xa1"))
        .and(header("authorization", format!("Bearer {DODO_KEY}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(dodo_session("cks_0Xa1", Some("succeeded"))))
        .expect(1)
        .mount(&app.dodo)
        .await;

    let session = app.session("DODO", "cks_0Xa1").await;

    assert_eq!(session["__typename"], "CheckoutSession");
    assert_eq!(session["provider"], "DODO");
    assert_eq!(session["id"], "cks_0Xa1");
    assert_eq!(session["status"], "COMPLETED");
    assert_eq!(session["providerStatus"], "succeeded");
    assert_eq!(session["createdAt"], "2025-06-01T12:00:00+00:00");
    assert!(session["expiresAt"].is_null(), "Dodo does not say when a session expires");
    assert_eq!(session["customerEmail"], "ana@example.com");
    assert_eq!(session["customerName"], "Ana");
    assert_eq!(session["paymentId"], "pay_9Qz");
    assert_eq!(session["details"]["__typename"], "DodoSessionDetails");
    assert_eq!(session["details"]["paymentId"], "pay_9Qz");
    assert_eq!(session["details"]["paymentStatus"], "SUCCEEDED");
}

#[tokio::test]
async fn every_payment_status_is_normalised_and_unknown_ones_kept() {
    let app = spawn_app(|_| {}).await;
    let cases = [
        (None, "OPEN", None),
        (Some("requires_customer_action"), "ACTION_REQUIRED", Some("REQUIRES_CUSTOMER_ACTION")),
        (Some("requires_merchant_action"), "ACTION_REQUIRED", Some("REQUIRES_MERCHANT_ACTION")),
        (Some("requires_payment_method"), "ACTION_REQUIRED", Some("REQUIRES_PAYMENT_METHOD")),
        (Some("requires_confirmation"), "ACTION_REQUIRED", Some("REQUIRES_CONFIRMATION")),
        (Some("requires_capture"), "ACTION_REQUIRED", Some("REQUIRES_CAPTURE")),
        (Some("processing"), "PROCESSING", Some("PROCESSING")),
        (Some("partially_captured_and_capturable"), "PROCESSING", Some("PARTIALLY_CAPTURED_AND_CAPTURABLE")),
        (Some("succeeded"), "COMPLETED", Some("SUCCEEDED")),
        (Some("partially_captured"), "COMPLETED", Some("PARTIALLY_CAPTURED")),
        (Some("failed"), "FAILED", Some("FAILED")),
        (Some("cancelled"), "CANCELLED", Some("CANCELLED")),
        (Some("awaiting_bank_transfer"), "UNKNOWN", Some("UNKNOWN")),
    ];
    for (i, (raw, normalised, detail)) in cases.iter().enumerate() {
        let id = format!("cks_status_{i}");
        Mock::given(path(format!("/checkouts/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(dodo_session(&id, *raw)))
            .mount(&app.dodo)
            .await;
        let session = app.session("DODO", &id).await;
        assert_eq!(session["status"], *normalised, "{raw:?}");
        assert_eq!(session["providerStatus"], json!(raw));
        assert_eq!(session["details"]["paymentStatus"], json!(detail));
    }
}

#[tokio::test]
async fn only_id_and_created_at_are_required() {
    let app = spawn_app(|_| {}).await;
    Mock::given(path("/checkouts/cks_min"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "cks_min", "created_at": "2025-06-01T12:00:00Z"})),
        )
        .mount(&app.dodo)
        .await;
    let session = app.session("DODO", "cks_min").await;
    assert_eq!(session["status"], "OPEN");
    assert!(session["customerEmail"].is_null() && session["paymentId"].is_null());

    Mock::given(path("/checkouts/cks_bad"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "cks_bad"})))
        .mount(&app.dodo)
        .await;
    let answer = app.session("DODO", "cks_bad").await;
    assert_eq!(answer["reason"], "INVALID_RESPONSE");
}

#[tokio::test]
async fn every_error_status_maps_to_its_type() {
    let app = spawn_app(|_| {}).await;
    let cases = [
        (401, json!({"code": "UNAUTHORIZED", "message": "Invalid API key"}), "UnauthorizedError", None),
        (403, json!({"code": "FORBIDDEN"}), "ForbiddenError", None),
        (404, json!({"code": "NOT_FOUND", "message": "Item not found"}), "NotFoundError", None),
        (422, json!({"code": "INVALID_REQUEST_PARAMETERS", "message": "bad"}), "InvalidIdError", None),
        (
            500,
            json!({"code": "INTERNAL_SERVER_ERROR", "message": "secret stack trace"}),
            "ProviderUnavailableError",
            Some("UPSTREAM_ERROR"),
        ),
        (408, json!({}), "ProviderUnavailableError", Some("TIMEOUT")),
        // Last: a 429 holds the account's further calls.
        (429, json!({"code": "TOO_MANY_REQUESTS"}), "ProviderUnavailableError", Some("RATE_LIMITED")),
    ];
    for (status, body, typename, reason) in cases {
        let id = format!("cks_err_{status}");
        Mock::given(path(format!("/checkouts/{id}")))
            .respond_with(ResponseTemplate::new(status).set_body_json(&body))
            .mount(&app.dodo)
            .await;
        let answer = app.session("DODO", &id).await;
        assert_eq!(answer["__typename"], typename, "{status}");
        assert_eq!(answer["provider"], "DODO");
        if let Some(reason) = reason {
            assert_eq!(answer["reason"], reason, "{status}");
            assert_eq!(answer["upstreamStatus"], status);
        }
        assert!(!answer["message"].as_str().unwrap().contains("secret stack trace"));
    }
}

#[tokio::test]
async fn rate_limit_wait_comes_from_retry_after_headers() {
    // One gateway per case: a 429 holds the account's later calls.
    let cases = [
        (
            ResponseTemplate::new(429)
                .insert_header("retry-after", "12")
                .insert_header("x-ratelimit-remaining", "0"),
            json!(12),
        ),
        (ResponseTemplate::new(429).insert_header("retry-after-ms", "2500"), json!(3)),
        (ResponseTemplate::new(429).insert_header("x-ratelimit-reset", "7"), json!(7)),
        (ResponseTemplate::new(429).set_body_json(json!({"code": "TOO_MANY_REQUESTS"})), json!(null)),
    ];
    for (response, wait) in cases {
        let app = spawn_app(|_| {}).await;
        Mock::given(path("/checkouts/cks_a")).respond_with(response).mount(&app.dodo).await;
        let answer = app.session("DODO", "cks_a").await;
        assert_eq!(answer["reason"], "RATE_LIMITED");
        assert_eq!(answer["retryAfterSeconds"], wait);
    }
}

#[tokio::test]
async fn the_id_is_percent_encoded_into_one_path_segment() {
    let app = spawn_app(|_| {}).await;
    Mock::given(path("/checkouts/cks_a%3Bb%3Dc%26d%40e%2Bf"))
        .respond_with(ResponseTemplate::new(200).set_body_json(dodo_session("cks_a;b=c&d@e+f", None)))
        .expect(1)
        .mount(&app.dodo)
        .await;
    let session = app.session("DODO", "cks_a;b=c&d@e+f").await;
    assert_eq!(session["__typename"], "CheckoutSession", "{session}");
    assert_eq!(session["id"], "cks_a;b=c&d@e+f");
}

#[tokio::test]
async fn ids_that_could_reach_another_endpoint_are_refused_without_calling() {
    let app = spawn_app(|_| {}).await;
    let long = "x".repeat(129);
    for id in ["../me", "a/b?x=1", "%2e%2e", "..", ".", "a#b", "a\\b", "a b", "a\nb", "", long.as_str()] {
        let answer = app.session("DODO", id).await;
        assert_eq!(answer["__typename"], "InvalidIdError", "{id:?}");
        assert_eq!(answer["code"], "INVALID_ID");
    }
    assert!(app.dodo.received_requests().await.unwrap().is_empty(), "an invalid id reached Dodo");
}

#[tokio::test]
async fn a_slow_upstream_times_out() {
    let app = spawn_app(|config| config.upstream_timeout = Duration::from_millis(300)).await;
    Mock::given(path("/checkouts/cks_slow"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(dodo_session("cks_slow", None))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&app.dodo)
        .await;
    let started = Instant::now();
    let answer = app.session("DODO", "cks_slow").await;
    assert_eq!(answer["reason"], "TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_webhook_signature_header_over_its_bounds_is_refused_whatever_it_holds() {
    let app =
        spawn_app(|config| account_mut(config, "dodo").webhook_secret = Some(Secret::new(WEBHOOK_SECRET)))
            .await;
    mount_dodo(&app, "cks_sig", None).await;
    app.session("DODO", "cks_sig").await;
    let with_signatures = |delivery: &str, signatures: &dyn Fn(String) -> String| {
        let (mut headers, body) = dodo_delivery(
            WEBHOOK_SECRET,
            delivery,
            now(),
            "payment.succeeded",
            payment("cks_sig", "succeeded"),
        );
        let (_, signature) = headers.iter_mut().find(|(name, _)| name == "webhook-signature").unwrap();
        *signature = signatures(signature.clone());
        (headers, body)
    };
    // The right signature among 10,000 (70 KB): the crate would read them all; refused first.
    let (headers, body) = with_signatures("msg_huge", &|right| {
        [vec!["v1,AAAA".to_owned(); 9_999], vec![right]].concat().join(" ")
    });
    let started = Instant::now();
    let (status, answer) = deliver(&app, "dodo", &headers, body).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["errors"][0]["message"].as_str().unwrap().contains("webhook-signature"), "{answer}");
    assert_eq!(answer["errors"][0]["extensions"]["code"], "WEBHOOK_OVERSIZED_SIGNATURE", "{answer}");
    assert!(started.elapsed() < Duration::from_secs(1), "answered in {:?}", started.elapsed());
    // A rotation's two signatures, the right one second: taken.
    let (headers, body) = with_signatures("msg_rotation", &|right| format!("v1,AAAA {right}"));
    let (status, answer) = deliver(&app, "dodo", &headers, body).await;
    assert_eq!((status, &answer["status"]), (200, &json!("accepted")), "{answer}");
}
