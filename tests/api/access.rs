//! Who may ask: API keys, JWTs against a JWKS, the router's secret; rights enforced before
//! any upstream call in every entry point; replay never crossing rights.

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use checkout_gateway::access::{AccessConfig, AuthMode, JwtConfig};
use serde_json::{json, Value};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::access::{api_keys, sha256, ALL_KEY, DODO_ONLY_KEY};
use crate::support::app::{spawn_app, TestApp};
use crate::support::providers::{mount_dodo, session_calls, DHMAD_ID};

const QUERY: &str = "query($p: Provider!, $id: ID!) { checkoutSession(provider: $p, id: $id) {
    __typename ... on CheckoutSession { status } ... on CheckoutError { code }
    ... on AccessDeniedError { account } } }";

async fn ask(app: &TestApp, credential: Option<(&str, &str)>, body: &Value) -> (u16, Value) {
    let mut request = app.http.post(format!("http://{}/graphql", app.addr)).json(body);
    if let Some((header, value)) = credential {
        request = request.header(header, value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn bearer(key: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {key}")))
}

async fn as_client(app: &TestApp, key: &str, body: &Value) -> (u16, Value) {
    let credential = bearer(key);
    ask(app, credential.as_ref().map(|(h, v)| (*h, v.as_str())), body).await
}

#[tokio::test]
async fn api_keys_admit_known_clients_only() {
    let app = spawn_app(|config| config.access = Some(api_keys())).await;
    mount_dodo(&app, "cks_a", Some("succeeded")).await;
    let body = json!({"query": QUERY, "variables": {"p": "DODO", "id": "cks_a"}});
    let cases: [(Option<(&str, &str)>, &str); 4] = [
        (None, "needs credentials"),
        (Some(("authorization", "Bearer not-a-key")), "not one this gateway knows"),
        (Some(("authorization", "Basic b3BzOm9wcw==")), "needs credentials"),
        (Some(("router-authorization", "router-wrong")), "Router-Authorization"),
    ];
    for (credential, says) in cases {
        let (status, answer) = ask(&app, credential, &body).await;
        assert_eq!(status, 401, "{credential:?}");
        let message = answer["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(says), "{credential:?}: {message}");
        assert_eq!(answer["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{credential:?}");
    }
    assert_eq!(session_calls(&app.dodo).await, 0, "no refused request reached a provider");
    let (status, answer) = as_client(&app, ALL_KEY, &body).await;
    assert_eq!((status, &answer["data"]["checkoutSession"]["status"]), (200, &json!("COMPLETED")));
    // The router, with the current secret and with the next one (rotation).
    for secret in ["router-current", "router-next"] {
        let (status, answer) = ask(&app, Some(("router-authorization", secret)), &body).await;
        assert_eq!(
            (status, &answer["data"]["checkoutSession"]["status"]),
            (200, &json!("COMPLETED")),
            "{secret}"
        );
    }
    // Probes and metrics stay open.
    for route in ["/livez", "/readyz", "/metrics"] {
        let status = app.http.get(format!("http://{}{route}", app.addr)).send().await.unwrap().status();
        assert_eq!(status, 200, "{route}");
    }
}

#[tokio::test]
async fn rights_are_enforced_before_any_upstream_call_everywhere() {
    let app = spawn_app(|config| config.access = Some(api_keys())).await;
    mount_dodo(&app, "cks_r", Some("succeeded")).await;
    // checkoutSession
    let denied =
        as_client(&app, DODO_ONLY_KEY, &json!({"query": QUERY, "variables": {"p": "DHMAD", "id": DHMAD_ID}}))
            .await;
    assert_eq!(
        denied.1["data"]["checkoutSession"],
        json!({"__typename": "AccessDeniedError", "code": "ACCESS_DENIED", "account": "dhmad"})
    );
    // checkoutSessions: the permitted ref answers, the other is denied.
    let batch = "query($refs: [CheckoutSessionRef!]!) { checkoutSessions(refs: $refs) { __typename ... on CheckoutSession { status } } }";
    let refs = json!([{"provider": "DODO", "id": "cks_r"}, {"provider": "DHMAD", "id": DHMAD_ID}]);
    let (_, answer) =
        as_client(&app, DODO_ONLY_KEY, &json!({"query": batch, "variables": {"refs": refs}})).await;
    assert_eq!(
        answer["data"]["checkoutSessions"],
        json!([{"__typename": "CheckoutSession", "status": "COMPLETED"}, {"__typename": "AccessDeniedError"}])
    );
    // _entities
    let entities =
        r#"query($r: [_Any!]!) { _entities(representations: $r) { ... on CheckoutSession { status } } }"#;
    let representations = json!([{"__typename": "CheckoutSession", "provider": "DHMAD", "id": DHMAD_ID}]);
    let (_, answer) =
        as_client(&app, DODO_ONLY_KEY, &json!({"query": entities, "variables": {"r": representations}}))
            .await;
    assert_eq!(answer["errors"][0]["extensions"]["code"], "ACCESS_DENIED", "{answer}");
    assert_eq!(answer["errors"][0]["path"], json!(["_entities", 0]));
    // A subscription, authenticated in connection_init as a browser would.
    let mut socket = crate::support::sockets::Socket::open_with(
        app.addr,
        "/ws",
        json!({"Authorization": format!("Bearer {DODO_ONLY_KEY}")}),
    )
    .await;
    socket.subscribe("1", "DHMAD", DHMAD_ID).await;
    assert_eq!(socket.update().await.1, "ACCESS_DENIED");
    let requests = app.dhmad.received_requests().await.unwrap();
    assert!(requests.iter().all(|r| r.url.path() == "/api/v1/me"), "DHMAD was never asked for a session");
    // A WebSocket without any credentials is closed at connection_init.
    let request = crate::support::sockets::upgrade_request(app.addr, "/ws", "graphql-transport-ws");
    let (mut stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    use futures::{SinkExt, StreamExt};
    stream
        .send(tokio_tungstenite::tungstenite::Message::Text(
            json!({"type": "connection_init"}).to_string().into(),
        ))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap();
    assert!(matches!(closed, Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))), "{closed:?}");
}

#[tokio::test]
async fn a_replayed_answer_never_crosses_rights() {
    let app = spawn_app(|config| config.access = Some(api_keys())).await;
    Mock::given(path(format!("/api/v1/sessions/{DHMAD_ID}")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(crate::support::providers::dhmad_session(DHMAD_ID, "completed")),
        )
        .mount(&app.dhmad)
        .await;
    let body = json!({"query": QUERY, "variables": {"p": "DHMAD", "id": DHMAD_ID}});
    let (_, all) = as_client(&app, ALL_KEY, &body).await;
    assert_eq!(all["data"]["checkoutSession"]["status"], "COMPLETED");
    // The same bytes from a client without DHMAD: not the answer stored for the first.
    let (_, limited) = as_client(&app, DODO_ONLY_KEY, &body).await;
    assert_eq!(limited["data"]["checkoutSession"]["code"], "ACCESS_DENIED");
    // And the first client's next ask is replayed (the store is there, keyed by rights).
    as_client(&app, ALL_KEY, &body).await;
    assert!(app.metrics().await.contains("checkout_gateway_response_cache_hits_total 1"));
}

/// An EC P-256 key pair made by `openssl` now (no private key is kept in the repository):
/// its PKCS#8 PEM and its public JWK with `kid`.
fn key_pair(kid: &str) -> (Vec<u8>, Value) {
    let generated = Command::new("sh")
        .arg("-c")
        .arg("openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt")
        .output()
        .expect("openssl is installed");
    let pem = generated.stdout;
    let mut public = Command::new("openssl")
        .args(["ec", "-pubout", "-outform", "DER"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    public.stdin.take().unwrap().write_all(&pem).unwrap();
    let der = public.wait_with_output().unwrap().stdout;
    let point = &der[der.len() - 65..];
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]), "kid": kid, "alg": "ES256", "use": "sig"});
    (pem, jwk)
}

fn token(pem: &[u8], kid: &str, claims: Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_ec_pem(pem).unwrap()).unwrap()
}

/// Opens `subscription` as Server-Sent Events with `credential` as the bearer.
async fn subscribe_over_sse(app: &TestApp, credential: &str, subscription: &str) -> reqwest::Response {
    app.http
        .post(format!("http://{}/graphql", app.addr))
        .header("accept", "text/event-stream")
        .header("authorization", format!("Bearer {credential}"))
        .json(&json!({ "query": subscription }))
        .send()
        .await
        .unwrap()
}

/// The issuer publishes `jwk` alone in its JWKS.
async fn serve_jwks(issuer: &MockServer, jwk: &Value) {
    Mock::given(path("/.well-known/jwks.json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"keys": [jwk]})))
        .mount(issuer)
        .await;
}

/// `token` is refused with 401, for a reason that says `why`.
async fn refused_because(app: &TestApp, token: &str, body: &Value, why: &str) {
    let (status, answer) = as_client(app, token, body).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer["errors"][0]["message"].as_str().unwrap().contains(why), "{why}: {answer}");
}

/// A gateway verifying JWTs against `issuer`'s JWKS, fetched again every `refresh`.
async fn jwt_app(issuer: &MockServer, refresh: Duration) -> TestApp {
    jwt_app_with(issuer, refresh, Duration::from_secs(5)).await
}

/// [`jwt_app`] with `leeway` of clock skew.
async fn jwt_app_with(issuer: &MockServer, refresh: Duration, leeway: Duration) -> TestApp {
    let jwks_url = format!("{}/.well-known/jwks.json", issuer.uri());
    spawn_app(|config| {
        config.access = Some(AccessConfig {
            mode: AuthMode::Jwt,
            jwt: Some(JwtConfig {
                jwks_url,
                issuer: "https://auth.example.test/".into(),
                audience: "checkout-gateway".into(),
                algorithms: vec![jsonwebtoken::Algorithm::ES256, jsonwebtoken::Algorithm::RS256],
                leeway,
                jwks_refresh: refresh,
                rights_claim: "checkout_accounts".into(),
            }),
            ..AccessConfig::open()
        })
    })
    .await
}

#[tokio::test]
async fn jwts_are_verified_against_the_issuers_jwks() {
    let issuer = MockServer::start().await;
    let (pem, jwk) = key_pair("k1");
    let (other_pem, other_jwk) = key_pair("k2");
    serve_jwks(&issuer, &jwk).await;
    let app = jwt_app(&issuer, Duration::from_secs(300)).await;
    mount_dodo(&app, "cks_j", Some("succeeded")).await;
    let body = json!({"query": QUERY, "variables": {"p": "DODO", "id": "cks_j"}});
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64, iss: &str, aud: &str| json!({"sub": "dashboard-7", "iss": iss, "aud": aud, "exp": exp, "iat": now, "checkout_accounts": ["dodo"]});
    let good = token(&pem, "k1", claims(now + 300, "https://auth.example.test/", "checkout-gateway"));
    // Valid for the next 6 s (1 s and the 5 s leeway): verified once, then taken from the
    // gateway's verified tokens, but never past that.
    let short = token(&pem, "k1", claims(now + 1, "https://auth.example.test/", "checkout-gateway"));
    for _ in 0..2 {
        assert_eq!(as_client(&app, &short, &body).await.0, 200);
    }
    let (status, answer) = as_client(&app, &good, &body).await;
    assert_eq!(
        (status, &answer["data"]["checkoutSession"]["status"]),
        (200, &json!("COMPLETED")),
        "{answer}"
    );
    // Its claim grants Dodo only.
    let dhmad = json!({"query": QUERY, "variables": {"p": "DHMAD", "id": DHMAD_ID}});
    assert_eq!(as_client(&app, &good, &dhmad).await.1["data"]["checkoutSession"]["code"], "ACCESS_DENIED");

    let refused = [
        (token(&pem, "k1", claims(now - 60, "https://auth.example.test/", "checkout-gateway")), "expired"),
        (
            token(&pem, "k1", claims(now + 300, "https://evil.example.test/", "checkout-gateway")),
            "wrong issuer",
        ),
        (token(&pem, "k1", claims(now + 300, "https://auth.example.test/", "another-api")), "wrong audience"),
        // Signed by another key under the known kid.
        (
            token(&other_pem, "k1", claims(now + 300, "https://auth.example.test/", "checkout-gateway")),
            "bad signature",
        ),
        ("not.a.jwt".to_owned(), "not a JWT"),
    ];
    for (token, why) in refused {
        let (status, answer) = as_client(&app, &token, &body).await;
        assert_eq!(status, 401, "{why}");
        assert!(answer["errors"][0]["message"].as_str().unwrap().contains(why), "{why}: {answer}");
    }
    // An unknown kid makes the gateway fetch the JWKS again, once.
    let jwks_fetches = || async { issuer.received_requests().await.unwrap().len() };
    let before = jwks_fetches().await;
    let unknown =
        token(&other_pem, "k2", claims(now + 300, "https://auth.example.test/", "checkout-gateway"));
    let (status, _) = as_client(&app, &unknown, &body).await;
    assert_eq!(status, 401);
    let after_first = jwks_fetches().await;
    // The JWKS was fetched moments ago (for k1): an unknown kid now fetches nothing.
    assert_eq!(after_first, before, "no refresh within 10 s of the last one");
    // Another unknown kid at once: no second fetch (a client inventing kids cannot make the
    // gateway fetch per request).
    as_client(&app, &unknown, &body).await;
    assert_eq!(jwks_fetches().await, after_first);
    // The issuer rotates in k2: after the refresh interval, the next unknown-kid token makes
    // one fetch that finds it.
    issuer.reset().await;
    serve_jwks(&issuer, &other_jwk).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    // A new connection: the idle one was closed by the header-read timeout meanwhile.
    let app = TestApp { http: crate::support::app::http(), ..app };
    // The short-lived token expired while the gateway still knew its key.
    let (status, answer) = as_client(&app, &short, &body).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer["errors"][0]["message"].as_str().unwrap().contains("expired"), "{answer}");
    let (status, answer) = as_client(&app, &unknown, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(issuer.received_requests().await.unwrap().len(), 1, "one fetch, for the unknown kid");
    // k1 is withdrawn: a token it signed, verified before, proves nothing any more.
    refused_because(&app, &good, &body, "not in the issuer's JWKS").await;
}

#[tokio::test]
async fn a_withdrawn_key_stops_working_at_the_scheduled_refresh_and_nbf_is_checked() {
    let issuer = MockServer::start().await;
    let (pem, jwk) = key_pair("k1");
    let (_, other_jwk) = key_pair("k2");
    serve_jwks(&issuer, &jwk).await;
    let app = jwt_app(&issuer, Duration::from_secs(1)).await;
    mount_dodo(&app, "cks_j", Some("succeeded")).await;
    let body = json!({"query": QUERY, "variables": {"p": "DODO", "id": "cks_j"}});
    let now = chrono::Utc::now().timestamp();
    let claims = |nbf: i64| json!({"sub": "dashboard-7", "iss": "https://auth.example.test/", "aud": "checkout-gateway", "exp": now + 300, "nbf": nbf, "checkout_accounts": ["dodo"]});
    let good = token(&pem, "k1", claims(now - 10));
    assert_eq!(as_client(&app, &good, &body).await.0, 200);
    // Issued for later (past the 5 s leeway): not valid yet.
    let (status, answer) = as_client(&app, &token(&pem, "k1", claims(now + 300)), &body).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer["errors"][0]["message"].as_str().unwrap().contains("not valid yet"), "{answer}");
    // The issuer withdraws k1. No token names an unknown kid, yet the schedule fetches the
    // JWKS again, and k1's tokens (verified and remembered before) stop working.
    issuer.reset().await;
    serve_jwks(&issuer, &other_jwk).await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(!issuer.received_requests().await.unwrap().is_empty(), "fetched on schedule");
    refused_because(&app, &good, &body, "not in the issuer's JWKS").await;
}

#[tokio::test]
async fn streams_opened_with_a_token_end_when_it_expires() {
    let issuer = MockServer::start().await;
    let (pem, jwk) = key_pair("k1");
    serve_jwks(&issuer, &jwk).await;
    let app = jwt_app_with(&issuer, Duration::from_secs(300), Duration::ZERO).await;
    mount_dodo(&app, "cks_j", None).await;
    // Valid for one to two more seconds (exp is in whole seconds), no leeway.
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": "dashboard-7", "iss": "https://auth.example.test/", "aud": "checkout-gateway", "exp": now + 2, "checkout_accounts": ["dodo"]});
    let short = token(&pem, "k1", claims);

    let payload = json!({"Authorization": format!("Bearer {short}")});
    let mut socket = crate::support::sockets::Socket::open_with(app.addr, "/ws", payload).await;
    socket.subscribe("1", "DODO", "cks_j").await;
    assert_eq!(socket.update().await.1, "OPEN");
    let closed = socket.next().await;
    assert_eq!(closed["type"], "closed", "{closed}");
    assert!(closed["frame"].as_str().unwrap().contains("4401"), "{closed}");

    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": "dashboard-7", "iss": "https://auth.example.test/", "aud": "checkout-gateway", "exp": now + 2, "checkout_accounts": ["dodo"]});
    let short = token(&pem, "k1", claims);
    let query = r#"subscription { checkoutSessionUpdated(provider: DODO, id: "cks_j") { __typename } }"#;
    let stream = subscribe_over_sse(&app, &short, query).await;
    assert_eq!(stream.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(6), stream.text())
        .await
        .expect("the stream ends when its token expires")
        .unwrap();
    assert!(body.contains("the token has expired") && body.contains("event: complete"), "{body}");
}

#[test]
fn the_gateway_refuses_to_start_until_an_auth_mode_is_chosen() {
    let output = Command::new(env!("CARGO_BIN_EXE_checkout-gateway"))
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .env_remove("GATEWAY_AUTH")
        .env_remove("GATEWAY_DEMO")
        .env_remove("GATEWAY_CONFIG")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("GATEWAY_AUTH=api-key") && text.contains("GATEWAY_AUTH=none"), "{text}");
}

#[tokio::test]
async fn automatic_persisted_queries_round_trip() {
    let app = spawn_app(|_| {}).await;
    mount_dodo(&app, "cks_apq", Some("succeeded")).await;
    let query = r#"{ checkoutSession(provider: DODO, id: "cks_apq") { ... on CheckoutSession { status } } }"#;
    let hash = sha256(query);
    let persisted = json!({"persistedQuery": {"version": 1, "sha256Hash": hash}});
    // The hash alone, before the document is known: Apollo's retry signal.
    let (_, unknown) = ask(&app, None, &json!({"extensions": persisted})).await;
    assert_eq!(unknown["errors"][0]["message"], "PersistedQueryNotFound", "{unknown}");
    // The document with its hash registers it…
    let (_, registered) = ask(&app, None, &json!({"query": query, "extensions": persisted})).await;
    assert_eq!(registered["data"]["checkoutSession"]["status"], "COMPLETED", "{registered}");
    // …and from then on the hash alone runs it, by POST and by GET.
    let (_, by_hash) = ask(&app, None, &json!({"extensions": persisted})).await;
    assert_eq!(by_hash["data"]["checkoutSession"]["status"], "COMPLETED", "{by_hash}");
    let by_get: Value = app
        .http
        .get(format!("http://{}/graphql", app.addr))
        .query(&[("extensions", persisted.to_string())])
        .header("apollo-require-preflight", "true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_get["data"]["checkoutSession"]["status"], "COMPLETED", "{by_get}");
    // A hash that does not match the document is refused.
    let wrong = json!({"persistedQuery": {"version": 1, "sha256Hash": sha256("something else")}});
    let (_, mismatch) = ask(&app, None, &json!({"query": query, "extensions": wrong})).await;
    assert!(mismatch["errors"][0]["message"].as_str().unwrap().contains("does not match"), "{mismatch}");
    assert_eq!(mismatch["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_HASH_MISMATCH", "{mismatch}");
    assert_eq!(unknown["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_FOUND", "{unknown}");
    // A text that does not parse is answered with its syntax error and never kept.
    let broken = "{ checkoutSession(";
    let broken_hash = json!({"persistedQuery": {"version": 1, "sha256Hash": sha256(broken)}});
    let (_, parse_error) = ask(&app, None, &json!({"query": broken, "extensions": broken_hash})).await;
    assert!(parse_error["data"].is_null(), "{parse_error}");
    assert!(parse_error["errors"][0]["message"].as_str().unwrap().contains("expected name"), "{parse_error}");
    let (_, still_unknown) = ask(&app, None, &json!({"extensions": broken_hash})).await;
    assert_eq!(still_unknown["errors"][0]["message"], "PersistedQueryNotFound", "{still_unknown}");
    // Another version of the extension, or a malformed one, is refused with its reason.
    let version2 = json!({"persistedQuery": {"version": 2, "sha256Hash": hash}});
    let (_, unsupported) = ask(&app, None, &json!({"extensions": version2})).await;
    assert_eq!(unsupported["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_INVALID", "{unsupported}");
    let (_, malformed) = ask(&app, None, &json!({"extensions": {"persistedQuery": "yes"}})).await;
    assert_eq!(malformed["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_INVALID", "{malformed}");
    // Both paths answer the same sessions through the same caches: one upstream call in all.
    assert_eq!(app.dodo.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn with_apq_off_a_hash_alone_is_not_supported_and_a_text_runs() {
    let app = spawn_app(|config| config.apq = false).await;
    mount_dodo(&app, "cks_apq", Some("succeeded")).await;
    let query = r#"{ checkoutSession(provider: DODO, id: "cks_apq") { ... on CheckoutSession { status } } }"#;
    let persisted = json!({"persistedQuery": {"version": 1, "sha256Hash": sha256(query)}});
    // Apollo clients stop sending hashes on this code.
    let (_, hash_only) = ask(&app, None, &json!({"extensions": persisted})).await;
    assert_eq!(hash_only["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_SUPPORTED", "{hash_only}");
    let (_, with_text) = ask(&app, None, &json!({"query": query, "extensions": persisted})).await;
    assert_eq!(with_text["data"]["checkoutSession"]["status"], "COMPLETED", "{with_text}");
    let (_, again) = ask(&app, None, &json!({"extensions": persisted})).await;
    assert_eq!(again["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_SUPPORTED", "{again}");
}

fn manifest(operations: &[&str]) -> std::path::PathBuf {
    let operations: Vec<Value> = operations
        .iter()
        .map(|body| json!({"id": sha256(body), "name": "Op", "type": "query", "body": body}))
        .collect();
    let path =
        std::env::temp_dir().join(format!("cg-manifest-{}-{}.json", std::process::id(), fastrand::u64(..)));
    let text = json!({"format": "apollo-persisted-query-manifest", "version": 1, "operations": operations});
    std::fs::write(&path, text.to_string()).unwrap();
    path
}

#[tokio::test]
async fn trusted_documents_run_alone_in_enforce_mode_and_are_logged_in_log_mode() {
    let listed = r#"query Listed { checkoutSession(provider: DODO, id: "cks_t") { ... on CheckoutSession { status } } }"#;
    let other = r#"{ checkoutSession(provider: DODO, id: "cks_t") { __typename } }"#;
    let path = manifest(&[listed]);
    for (mode, other_runs) in [
        (checkout_gateway::graphql::documents::TrustMode::Enforce, false),
        (checkout_gateway::graphql::documents::TrustMode::Log, true),
    ] {
        let trusted = checkout_gateway::graphql::documents::TrustedDocuments::load(&path, mode).unwrap();
        let app = spawn_app(|config| {
            config.trusted_documents = Some(std::sync::Arc::new(trusted));
            config.access = Some(api_keys());
        })
        .await;
        mount_dodo(&app, "cks_t", Some("succeeded")).await;
        // By its text, and by its id alone (as Apollo clients send persisted queries).
        let (_, by_text) = as_client(&app, ALL_KEY, &json!({"query": listed})).await;
        assert_eq!(by_text["data"]["checkoutSession"]["status"], "COMPLETED", "{by_text}");
        let id = json!({"persistedQuery": {"version": 1, "sha256Hash": sha256(listed)}});
        let (_, by_id) = as_client(&app, ALL_KEY, &json!({"extensions": id})).await;
        assert_eq!(by_id["data"]["checkoutSession"]["status"], "COMPLETED", "{by_id}");
        // Anything else.
        let (_, answer) = as_client(&app, ALL_KEY, &json!({"query": other})).await;
        if other_runs {
            assert_eq!(
                answer["data"]["checkoutSession"]["__typename"], "CheckoutSession",
                "{mode:?}: {answer}"
            );
        } else {
            assert_eq!(answer["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_IN_LIST", "{answer}");
            assert!(answer["data"].is_null());
        }
        // The router's query plans are never in a client manifest: they pass.
        let (_, routed) =
            ask(&app, Some(("router-authorization", "router-current")), &json!({"query": other})).await;
        assert_eq!(routed["data"]["checkoutSession"]["__typename"], "CheckoutSession", "{routed}");
    }
    std::fs::remove_file(path).unwrap();
}

/// A replayed answer skips admission: it is replayed only to a client the manifest would
/// admit. The router's operations pass unlisted; an answer given to the router is not a way
/// around the manifest for a client sending the same body.
#[tokio::test]
async fn a_replayed_answer_is_no_way_around_the_trusted_documents() {
    let listed = r#"query Listed { checkoutSession(provider: DODO, id: "cks_t") { ... on CheckoutSession { status } } }"#;
    let other = json!({"query": r#"{ checkoutSession(provider: DODO, id: "cks_t") { __typename } }"#});
    let path = manifest(&[listed]);
    let trusted = checkout_gateway::graphql::documents::TrustedDocuments::load(
        &path,
        checkout_gateway::graphql::documents::TrustMode::Enforce,
    )
    .unwrap();
    let app = spawn_app(|config| {
        config.trusted_documents = Some(std::sync::Arc::new(trusted));
        config.access = Some(api_keys());
    })
    .await;
    mount_dodo(&app, "cks_t", Some("succeeded")).await;
    let router = Some(("router-authorization", "router-current"));
    let hits = |metrics: String| {
        metrics.lines().find_map(|line| {
            line.strip_prefix("checkout_gateway_response_cache_hits_total ")?.parse::<u64>().ok()
        })
    };
    for _ in 0..2 {
        let (_, routed) = ask(&app, router, &other).await;
        assert_eq!(routed["data"]["checkoutSession"]["__typename"], "CheckoutSession", "{routed}");
    }
    // The router's second ask was replayed: the answer is stored under this very body.
    assert_eq!(hits(app.metrics().await), Some(1));
    for _ in 0..2 {
        let (_, answer) = as_client(&app, ALL_KEY, &other).await;
        assert_eq!(answer["errors"][0]["extensions"]["code"], "PERSISTED_QUERY_NOT_IN_LIST", "{answer}");
    }
    // A listed document is replayed to clients and the router alike.
    for credential in [bearer(ALL_KEY), None, bearer(ALL_KEY)] {
        let (_, answer) = match &credential {
            Some((header, value)) => ask(&app, Some((header, value)), &json!({"query": listed})).await,
            None => ask(&app, router, &json!({"query": listed})).await,
        };
        assert_eq!(answer["data"]["checkoutSession"]["status"], "COMPLETED", "{answer}");
    }
    assert_eq!(hits(app.metrics().await), Some(3));
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn metrics_can_move_to_a_port_of_their_own() {
    let mut config = checkout_gateway::config::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        access: Some(api_keys()),
        ..checkout_gateway::config::Config::default()
    };
    config.shutdown_delay = Duration::ZERO;
    let app = checkout_gateway::app::Application::build(config).await.unwrap();
    let (addr, metrics) = (app.local_addr().unwrap(), app.metrics_addr().unwrap());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let http = crate::support::app::http();
    let on_main = http.get(format!("http://{addr}/metrics")).send().await.unwrap().status();
    assert_eq!(on_main, 404, "not on the public port any more");
    let scraped = http.get(format!("http://{metrics}/metrics")).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.unwrap().contains("checkout_gateway_http_requests_total"));
}

// ---- Each client's budget of lookups that reach a provider (GATEWAY_CLIENT_RATE_LIMIT). ----

const BUDGETED: &str = "query($id: ID!) { checkoutSession(provider: DODO, id: $id) {
    __typename ... on CheckoutSession { status } ... on CheckoutError { code message }
    ... on ProviderUnavailableError { reason retryAfterSeconds } } }";

/// Dodo answers every `<prefix><digits>` with a completed session, and expects `calls` such
/// calls in all (checked when the test ends, or by `verify`).
async fn mount_expecting(app: &TestApp, prefix: &str, calls: u64) {
    Mock::given(wiremock::matchers::path_regex(format!("^/checkouts/{prefix}[0-9]+$")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(crate::support::providers::dodo_session(prefix, Some("succeeded"))),
        )
        .expect(calls)
        .mount(&app.dodo)
        .await;
}

fn budget_of(limit: &str) -> impl FnOnce(&mut checkout_gateway::config::Config) + '_ {
    move |config| {
        config.access = Some(api_keys());
        config.client_rate_limit = checkout_gateway::providers::guard::RateLimit::parse(limit).unwrap();
    }
}

#[tokio::test]
async fn a_client_that_spent_its_budget_is_rate_limited_alone_and_still_served_from_the_cache() {
    let app = spawn_app(budget_of("3/min")).await;
    mount_expecting(&app, "cks_ops_", 3).await;
    mount_expecting(&app, "cks_dash_", 1).await;
    let lookup = |key: &'static str, id: &'static str| {
        let app = &app;
        async move {
            let (status, answer) =
                as_client(app, key, &json!({"query": BUDGETED, "variables": {"id": id}})).await;
            assert_eq!(status, 200, "{answer}");
            answer["data"]["checkoutSession"].clone()
        }
    };
    for id in ["cks_ops_1", "cks_ops_2", "cks_ops_3"] {
        assert_eq!(lookup(ALL_KEY, id).await["status"], "COMPLETED", "{id}");
    }
    let refused = lookup(ALL_KEY, "cks_ops_4").await;
    assert_eq!(refused["__typename"], "ProviderUnavailableError", "{refused}");
    assert_eq!(refused["code"], "PROVIDER_UNAVAILABLE", "{refused}");
    assert_eq!(refused["reason"], "RATE_LIMITED", "{refused}");
    let wait = refused["retryAfterSeconds"].as_u64().unwrap();
    assert!((1..=20).contains(&wait), "3/min: one lookup more every 20 s; told {wait}");
    assert!(refused["message"].as_str().unwrap().contains("GATEWAY_CLIENT_RATE_LIMIT"), "{refused}");

    // What the cache holds costs nothing: still served to the client whose budget is spent.
    assert_eq!(lookup(ALL_KEY, "cks_ops_1").await["status"], "COMPLETED");
    // Another client (another API key) has its own budget.
    assert_eq!(lookup(DODO_ONLY_KEY, "cks_dash_1").await["status"], "COMPLETED");
    // A batch of misses is charged per distinct session: refused without a call.
    let batch = "{ checkoutSessions(refs: [{provider: DODO, id: \"cks_ops_5\"}, {provider: DODO, id: \"cks_ops_1\"}]) {
        __typename ... on ProviderUnavailableError { reason } } }";
    let (_, answer) = as_client(&app, ALL_KEY, &json!({"query": batch})).await;
    let results = &answer["data"]["checkoutSessions"];
    assert_eq!(results[0]["reason"], "RATE_LIMITED", "{answer}");
    assert_eq!(results[1]["__typename"], "CheckoutSession", "{answer}");
    app.dodo.verify().await;
    assert!(app.metrics().await.contains("checkout_gateway_client_rate_limited_total 2"));
}

#[tokio::test]
async fn entities_and_subscriptions_are_charged_to_the_clients_budget() {
    let app = spawn_app(budget_of("2/min")).await;
    mount_expecting(&app, "cks_ent_", 2).await;
    let entities = r#"query($representations: [_Any!]!) {
      _entities(representations: $representations) { ... on CheckoutSession { id } } }"#;
    let representations: Vec<Value> = (1..=4)
        .map(|i| json!({"__typename": "CheckoutSession", "provider": "DODO", "id": format!("cks_ent_{i}")}))
        .collect();
    let (_, answer) = as_client(
        &app,
        ALL_KEY,
        &json!({"query": entities, "variables": {"representations": representations}}),
    )
    .await;
    let errors = answer["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{answer}");
    for error in errors {
        assert_eq!(error["extensions"]["reason"], "RATE_LIMITED", "{answer}");
        assert!(error["extensions"]["retryAfterSeconds"].as_u64().is_some_and(|s| s > 0), "{answer}");
        let index = error["path"][1].as_u64().unwrap() as usize;
        assert!(answer["data"]["_entities"][index].is_null(), "{answer}");
    }
    // The first answer of a subscription is a lookup too.
    let subscription = "subscription { checkoutSessionUpdated(provider: DODO, id: \"cks_ent_9\") {
        __typename ... on ProviderUnavailableError { reason } } }";
    let response = subscribe_over_sse(&app, ALL_KEY, subscription).await;
    let text = tokio::time::timeout(Duration::from_secs(5), async {
        let mut body = response.bytes_stream();
        let mut text = String::new();
        while !text.contains("event: complete") {
            use futures::StreamExt;
            text.push_str(&String::from_utf8_lossy(&body.next().await.unwrap().unwrap()));
        }
        text
    })
    .await
    .expect("the first event");
    assert!(text.contains("RATE_LIMITED"), "the subscription ends with its refusal: {text}");
    // Nothing is polled for it meanwhile (the poller would call within 5 s, the open TTL).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.metrics().await.contains("checkout_gateway_live_pollers 0"));
    app.dodo.verify().await;
}

#[tokio::test]
async fn behind_the_router_the_forwarded_client_is_counted_and_the_routers_own_identity_is_not() {
    for trust in [false, true] {
        let app = spawn_app(|config| {
            budget_of("1/min")(config);
            config.access.as_mut().unwrap().trust_router_identity = trust;
        })
        .await;
        mount_dodo(&app, "cks_r1", Some("succeeded")).await;
        mount_dodo(&app, "cks_r2", Some("succeeded")).await;
        let mut typenames = Vec::new();
        for id in ["cks_r1", "cks_r2"] {
            let response = app
                .http
                .post(format!("http://{}/graphql", app.addr))
                .header("router-authorization", "router-current")
                .header("authorization", format!("Bearer {ALL_KEY}"))
                .json(&json!({"query": BUDGETED, "variables": {"id": id}}))
                .send()
                .await
                .unwrap();
            let answer: Value = response.json().await.unwrap();
            typenames.push(answer["data"]["checkoutSession"]["__typename"].as_str().unwrap().to_owned());
        }
        let expected = if trust {
            ["CheckoutSession", "ProviderUnavailableError"]
        } else {
            ["CheckoutSession", "CheckoutSession"]
        };
        assert_eq!(typenames, expected, "trusting the forwarded identity: {trust}");
    }
}

#[tokio::test]
async fn the_polls_of_a_clients_subscription_are_charged_to_it() {
    let app = spawn_app(|config| {
        budget_of("3/min")(config);
        config.cache.open = Duration::from_millis(100);
    })
    .await;
    Mock::given(path("/checkouts/cks_polled_1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(crate::support::providers::dodo_session("cks_polled_1", None)),
        )
        // The subscription's first lookup and two polls; then the budget is spent, and the
        // poller waits for it (without the charge: one call every 100 ms).
        .expect(3)
        .mount(&app.dodo)
        .await;
    let subscription = "subscription { checkoutSessionUpdated(provider: DODO, id: \"cks_polled_1\") {
        __typename ... on CheckoutSession { status } } }";
    let response = subscribe_over_sse(&app, ALL_KEY, subscription).await;
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(app.metrics().await.contains("checkout_gateway_live_pollers 1"), "still watched, still polled");
    drop(response);
    app.dodo.verify().await;
}
