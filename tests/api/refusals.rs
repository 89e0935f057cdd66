//! Every route refuses in one shape: the status, `Cache-Control: no-store`, and
//! `{"errors": [{"message": …, "extensions": {"code": …}}]}` with a code from the README's
//! "Refusals" table (`readme.rs` checks the table against the codes).

use serde_json::json;

use crate::support::app::{refusal, spawn_app, url};

#[tokio::test]
async fn every_route_refuses_in_one_shape_with_a_stable_code() {
    let app = spawn_app(|_| {}).await;
    let base = format!("http://{}", app.addr);
    let http = &app.http;
    let json_post =
        |body: &str| http.post(url(&app)).header("content-type", "application/json").body(body.to_owned());
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("an unknown path", http.get(format!("{base}/nope")), 404, "NOT_FOUND"),
        ("an unknown asset", http.get(format!("{base}/graphiql/nope.js")), 404, "NOT_FOUND"),
        (
            "webhooks without a secret",
            http.post(format!("{base}/webhooks/dodo")).body("{}"),
            404,
            "NOT_FOUND",
        ),
        ("a method the route has not", http.put(url(&app)), 405, "METHOD_NOT_ALLOWED"),
        (
            "a cross-site form",
            http.post(url(&app)).header("content-type", "text/plain").body("{}"),
            400,
            "CSRF_PREVENTED",
        ),
        (
            "an upload",
            http.post(url(&app)).header("content-type", "multipart/form-data; boundary=x"),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        ("a body that is not JSON", json_post("not json"), 400, "BAD_REQUEST"),
        ("a body without a query", json_post(r#"{"variables": {}}"#), 400, "BAD_REQUEST"),
        ("a socket that is no upgrade", http.get(format!("{base}/ws")), 400, "BAD_REQUEST"),
    ];
    for (what, request, status, code) in cases {
        let response = request.send().await.unwrap();
        let allow = response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned());
        let (got, cache, body) = refusal(response).await;
        assert_eq!((got, cache.as_str()), (status, "no-store"), "{what}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}: {body}");
        let expected = json!({"errors": [{"message": message, "extensions": {"code": code}}]});
        assert_eq!(body, expected, "{what}");
        if status == 405 {
            // The methods the route has are still listed.
            assert!(allow.is_some_and(|allow| allow.contains("POST")), "{what}");
        }
    }
    assert_eq!(app.dodo.received_requests().await.unwrap().len(), 0, "nothing ran");
}
