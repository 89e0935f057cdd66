//! The GraphQL surface: batches, HTTP methods and cross-site requests, bad requests and their
//! media types, validation of documents however often they ran, cache headers.

use std::time::Duration;

use serde_json::{json, Value};
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

use crate::support::app::{refusal, spawn_app, url, RESULT_FIELDS};
use crate::support::providers::{dhmad_session, dodo_session, mount_dodo, mount_dodo_numbered, DHMAD_ID};

fn batch_query() -> String {
    format!("query($refs: [CheckoutSessionRef!]!) {{ checkoutSessions(refs: $refs) {{ {RESULT_FIELDS} }} }}")
}

#[tokio::test]
async fn a_batch_answers_in_input_order_and_asks_each_session_once() {
    let app = spawn_app(|_| {}).await;
    // Each answer is delayed differently so that completion order differs from input order.
    for (id, status, delay) in
        [("cks_1", Some("succeeded"), 300), ("cks_2", None, 10), ("cks_3", Some("failed"), 150)]
    {
        Mock::given(path(format!("/checkouts/{id}")))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(dodo_session(id, status))
                    .set_delay(Duration::from_millis(delay)),
            )
            .expect(1)
            .mount(&app.dodo)
            .await;
    }
    Mock::given(path(format!("/api/v1/sessions/{DHMAD_ID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(dhmad_session(DHMAD_ID, "cancelled")))
        .expect(1)
        .mount(&app.dhmad)
        .await;
    let refs = json!([
        {"provider": "DODO", "id": "cks_1"},
        {"provider": "DHMAD", "id": DHMAD_ID},
        {"provider": "DODO", "id": "cks_2"},
        {"provider": "DODO", "id": "cks_1"},
        {"provider": "DHMAD", "id": "not-a-uuid"},
        {"provider": "DODO", "id": "cks_3"},
        {"provider": "DODO", "id": "cks_missing"},
        {"provider": "DODO", "id": "cks_2"},
    ]);

    let reply = app.graphql(&batch_query(), json!({"refs": refs})).await;

    let results = reply.data("checkoutSessions").as_array().unwrap();
    let summary: Vec<(String, String)> = results
        .iter()
        .map(|r| {
            let what = r.get("status").or(r.get("code")).and_then(Value::as_str).unwrap_or("?");
            (r["id"].as_str().unwrap_or("-").to_owned(), what.to_owned())
        })
        .collect();
    let expected = [
        ("cks_1", "COMPLETED"),
        (DHMAD_ID, "CANCELLED"),
        ("cks_2", "OPEN"),
        ("cks_1", "COMPLETED"),
        ("-", "INVALID_ID"),
        ("cks_3", "FAILED"),
        ("-", "NOT_FOUND"),
        ("cks_2", "OPEN"),
    ];
    let expected: Vec<(String, String)> =
        expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(summary, expected);
    // `.expect(1)` on each mock is verified when the servers drop; check now for a clear message.
    assert_eq!(
        app.dodo.received_requests().await.unwrap().len(),
        4,
        "cks_1, cks_2, cks_3, cks_missing once each"
    );
}

#[tokio::test]
async fn a_batch_of_100_is_served_and_101_refused_without_any_upstream_call() {
    let app = spawn_app(|_| {}).await;
    mount_dodo_numbered(&app, "cks_n").await;
    let refs = |n: usize| {
        json!((0..n).map(|i| json!({"provider": "DODO", "id": format!("cks_n{i}")})).collect::<Vec<_>>())
    };

    let too_many = app.graphql(&batch_query(), json!({"refs": refs(101)})).await;
    assert_eq!(too_many.status, 200);
    assert!(too_many.body["data"].is_null(), "{}", too_many.body);
    let error = &too_many.body["errors"][0];
    assert_eq!(error["extensions"]["code"], "BATCH_TOO_LARGE");
    assert_eq!(error["extensions"]["max"], 100);
    assert!(error["message"].as_str().unwrap().contains("at most 100"), "{error}");
    assert!(app.dodo.received_requests().await.unwrap().is_empty());
    assert_eq!(too_many.cache_control(), "no-store");

    let hundred = app.graphql(&batch_query(), json!({"refs": refs(100)})).await;
    assert_eq!(hundred.data("checkoutSessions").as_array().unwrap().len(), 100);
    assert_eq!(app.dodo.received_requests().await.unwrap().len(), 100);
}

#[tokio::test]
async fn get_runs_a_query_and_a_browser_gets_graphiql() {
    let app = spawn_app(|config| config.graphiql = true).await;
    mount_dodo(&app, "cks_get", Some("processing")).await;
    let url = format!("http://{}/graphql", app.addr);
    let query = r#"{ checkoutSession(provider: DODO, id: "cks_get") { ... on CheckoutSession { status } } }"#;
    let body: Value = app
        .http
        .get(&url)
        .query(&[("query", query)])
        .header("apollo-require-preflight", "true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"]["checkoutSession"]["status"], "PROCESSING");

    let page = app.http.get(&url).header("accept", "text/html").send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().to_lowercase().contains("graphiql"));
}

#[tokio::test]
async fn graphiql_and_introspection_are_off_unless_turned_on() {
    let app = spawn_app(|_| {}).await;
    let url = format!("http://{}/graphql", app.addr);
    let page = app.http.get(&url).header("accept", "text/html").send().await.unwrap();
    assert_eq!(page.status(), 400);
    assert!(!page.text().await.unwrap().to_lowercase().contains("graphiql"));
    let reply = app.graphql("{ __schema { queryType { name } } }", json!({})).await;
    assert!(reply.body["data"]["__schema"].is_null(), "no schema shown: {}", reply.body);
    // Routers compose with `_service`: it stays.
    let sdl = app.graphql("{ _service { sdl } }", json!({})).await;
    assert!(sdl.data("_service")["sdl"].as_str().unwrap().contains("CheckoutSession"));

    let app = spawn_app(|config| config.introspection = true).await;
    let reply = app.graphql("{ __schema { queryType { name } } }", json!({})).await;
    assert_eq!(reply.data("__schema")["queryType"]["name"], "Query");
}

#[tokio::test]
async fn bad_requests_are_client_errors_never_500() {
    let app = spawn_app(|_| {}).await;
    let url = format!("http://{}/graphql", app.addr);
    let not_json = app
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);
    let no_query = app.http.get(&url).send().await.unwrap();
    assert_eq!(no_query.status(), 400);

    let reply =
        app.graphql("{ checkoutSession(provider: PAYPAL, id: \"x\") { __typename } }", json!({})).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body["errors"][0]["message"].as_str().unwrap().contains("PAYPAL"));

    let deep = format!(
        "{{ {}__typename{} }}",
        "__schema { types { fields { type { ofType { ".repeat(8),
        " } } } } }".repeat(8)
    );
    let reply = app.graphql(&deep, json!({})).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.body["errors"][0]["message"].as_str().unwrap().to_lowercase().contains("depth"),
        "{}",
        reply.body
    );

    let missing = app.http.get(format!("http://{}/nope", app.addr)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn cache_control_follows_the_shortest_lifetime_and_errors_forbid_storing() {
    let app = spawn_app(|_| {}).await;
    mount_dodo(&app, "cks_done", Some("succeeded")).await;
    mount_dodo(&app, "cks_open", None).await;
    Mock::given(path("/checkouts/cks_boom")).respond_with(ResponseTemplate::new(500)).mount(&app.dodo).await;
    let one = |id: &str| format!(r#"{{ checkoutSession(provider: DODO, id: "{id}") {{ __typename }} }}"#);

    let done = app.graphql(&one("cks_done"), json!({})).await;
    let max_age = |reply: &crate::support::app::Reply| -> u64 {
        let header = reply.cache_control().to_owned();
        header.strip_prefix("private, max-age=").unwrap_or_else(|| panic!("{header}")).parse().unwrap()
    };
    assert!((3590..=3600).contains(&max_age(&done)), "{}", done.cache_control());

    let both = app
        .graphql(
            r#"{ a: checkoutSession(provider: DODO, id: "cks_done") { __typename }
                 b: checkoutSession(provider: DODO, id: "cks_open") { __typename } }"#,
            json!({}),
        )
        .await;
    assert!(max_age(&both) <= 5, "{}", both.cache_control());

    let failing = app
        .graphql(
            r#"{ a: checkoutSession(provider: DODO, id: "cks_done") { __typename }
                 b: checkoutSession(provider: DODO, id: "cks_boom") { __typename } }"#,
            json!({}),
        )
        .await;
    assert_eq!(failing.cache_control(), "no-store");

    let nothing = app.graphql("{ __typename }", json!({})).await;
    assert_eq!(nothing.cache_control(), "no-store");
}

#[tokio::test]
async fn a_repeated_request_is_replayed_until_its_shortest_lifetime_ends() {
    let app = spawn_app(|config| config.cache.open = Duration::from_millis(3000)).await;
    mount_dodo(&app, "cks_replay", None).await;
    let url = format!("http://{}/graphql", app.addr);
    let body = json!({"query": r#"{ checkoutSession(provider: DODO, id: "cks_replay") { ... on CheckoutSession { status fetchedAt } } }"#});
    let send = || app.http.post(&url).json(&body).send();
    let first = send().await.unwrap();
    let max_age = first.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(["private, max-age=2", "private, max-age=1"].contains(&max_age.as_str()), "{max_age}");
    let first = first.bytes().await.unwrap();
    let second = send().await.unwrap();
    assert!(second.headers()["cache-control"].to_str().unwrap().starts_with("private, max-age="));
    assert_eq!(second.bytes().await.unwrap(), first, "replayed byte for byte");
    let metrics = app.metrics().await;
    assert!(metrics.contains("checkout_gateway_response_cache_hits_total 1"), "{metrics}");
    assert_eq!(app.dodo.received_requests().await.unwrap().len(), 1);

    tokio::time::sleep(Duration::from_millis(3200)).await;
    let third: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(
        app.dodo.received_requests().await.unwrap().len(),
        2,
        "the session expired, and the replay with it"
    );
    assert_ne!(third.to_string().as_bytes(), &first[..]);
}

#[tokio::test]
async fn replaying_can_be_turned_off() {
    let app = spawn_app(|config| config.response_cache_bytes = 0).await;
    Mock::given(path("/checkouts/cks_noreplay"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(dodo_session("cks_noreplay", Some("succeeded"))),
        )
        .mount(&app.dodo)
        .await;
    for _ in 0..3 {
        app.session("DODO", "cks_noreplay").await;
    }
    let metrics = app.metrics().await;
    assert!(metrics.contains("checkout_gateway_response_cache_hits_total 0"), "{metrics}");
    assert!(
        metrics.contains(r#"checkout_gateway_cache_hits_total{account="dodo",provider="dodo"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn aliases_cannot_multiply_a_request_past_the_batch_limit() {
    let app = spawn_app(|_| {}).await;
    mount_dodo_numbered(&app, "cks_a").await;
    let aliases = |n: usize| {
        let fields: String = (0..n)
            .map(|i| format!(r#"s{i}: checkoutSession(provider: DODO, id: "cks_a{i}") {{ __typename }} "#))
            .collect();
        format!("{{ {fields} }}")
    };
    let within = app.graphql(&aliases(100), json!({})).await;
    assert_eq!(within.data("s99")["__typename"], "CheckoutSession");

    let refs: Vec<_> = (0..100).map(|i| json!({"provider": "DODO", "id": format!("cks_a{i}")})).collect();
    let mixed = app
        .graphql(
            r#"query($refs: [CheckoutSessionRef!]!) {
                 many: checkoutSessions(refs: $refs) { __typename }
                 one: checkoutSession(provider: DODO, id: "cks_a1") { __typename } }"#,
            json!({"refs": refs}),
        )
        .await;
    let error = &mixed.body["errors"][0];
    assert_eq!(error["extensions"]["code"], "BATCH_TOO_LARGE", "{}", mixed.body);
    assert_eq!(error["path"], json!(["one"]));
    assert!(mixed.body["data"]["one"].is_null());

    let over = app.graphql(&aliases(101), json!({})).await;
    let errors = over.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "exactly one alias is over the limit: {}", over.body);
    assert_eq!(errors[0]["extensions"]["code"], "BATCH_TOO_LARGE");
    let answered =
        over.body["data"].as_object().map_or(0, |data| data.values().filter(|v| !v.is_null()).count());
    assert!(answered <= 100, "{answered} aliases answered");
    assert_eq!(over.cache_control(), "no-store");
    assert!(app.dodo.received_requests().await.unwrap().len() <= 100, "never more calls than the limit");
}

/// Variables are per request: a document that passed validation before (and so runs on the
/// prevalidated schema, vendor/async-graphql/PATCHED.md) is still refused for a bad or missing
/// variable, with the very answer it got before it ever ran: a request error, no `data`.
#[tokio::test]
async fn variables_are_checked_on_every_request_however_often_the_document_ran() {
    let app = spawn_app(|_| {}).await;
    mount_dodo(&app, "cks_ok", Some("succeeded")).await;
    let query = "query Q($p: Provider!, $id: ID!) { checkoutSession(provider: $p, id: $id) { __typename } }";
    let ask = |variables: Value| {
        let request = app
            .http
            .post(format!("http://{}/graphql", app.addr))
            .header("accept", "application/graphql-response+json")
            .json(&json!({"query": query, "variables": variables}));
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let bad = [
        json!({"p": "NOPE", "id": "x"}),
        json!({"id": "x"}),
        json!({"p": null, "id": "x"}),
        json!({"p": "DODO", "id": {"not": "an id"}}),
    ];
    let mut first = Vec::new();
    for variables in &bad {
        let (status, body) = ask(variables.clone()).await;
        assert_eq!(status, 400, "{variables}: {body}");
        assert!(body.get("data").is_none(), "a request error has no data: {body}");
        first.push(body);
    }
    let message = |body: &Value| body["errors"][0]["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        message(&first[0]).contains(r#"enumeration type "Provider" does not contain the value "NOPE""#),
        "{}",
        first[0]
    );
    assert!(message(&first[1]).contains(r#"Variable "$p" of required type "Provider!" was not provided"#));
    for _ in 0..2 {
        let (status, body) = ask(json!({"p": "DODO", "id": "cks_ok"})).await;
        assert_eq!(
            (status, &body["data"]["checkoutSession"]["__typename"]),
            (200, &json!("CheckoutSession"))
        );
        for (variables, first) in bad.iter().zip(&first) {
            assert_eq!(ask(variables.clone()).await, (400, first.clone()), "{variables}, after a valid run");
        }
    }
}

#[tokio::test]
async fn queries_a_browser_could_send_cross_site_need_a_preflight_header() {
    let app = spawn_app(|_| {}).await;
    crate::support::providers::mount_dodo(&app, "cks_csrf", Some("succeeded")).await;
    let query = r#"{ checkoutSession(provider: DODO, id: "cks_csrf") { __typename } }"#;
    let body = json!({"query": query}).to_string();
    // A GET, and a POST as text/plain or a form: refused without the header, before any call.
    let get = app.http.get(url(&app)).query(&[("query", query)]).send().await.unwrap();
    let (status, cache, refused) = refusal(get).await;
    assert_eq!((status, cache.as_str()), (400, "no-store"));
    assert!(refused["errors"][0]["message"].as_str().unwrap().contains("apollo-require-preflight"));
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let post = app
            .http
            .post(url(&app))
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 400, "{content_type}");
    }
    assert!(app.dodo.received_requests().await.unwrap().is_empty(), "nothing ran");
    // With a preflight header, or as JSON (which a browser cannot send cross-site without a
    // preflight), it runs.
    for header in ["apollo-require-preflight", "x-apollo-operation-name"] {
        let get =
            app.http.get(url(&app)).query(&[("query", query)]).header(header, "1").send().await.unwrap();
        assert_eq!(get.status(), 200, "{header}");
    }
    let post =
        app.http.post(url(&app)).header("content-type", "application/json").body(body).send().await.unwrap();
    assert_eq!(post.status(), 200);
}

#[tokio::test]
async fn bad_requests_get_graphql_errors_with_the_status_their_media_type_calls_for() {
    let app = spawn_app(|_| {}).await;
    let post = |body: &'static str, accept: &'static str| {
        app.http
            .post(url(&app))
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(body)
            .send()
    };
    // The body is not a GraphQL request at all: 400, whatever the client accepts.
    for body in ["{\"query\": \"{ a\nb }\"}", "{not json", "{\"variables\": {}}", "[]"] {
        let (status, cache, reply) = refusal(post(body, "application/json").await.unwrap()).await;
        assert_eq!((status, cache.as_str()), (400, "no-store"), "{body}");
        let message = reply["errors"][0]["message"].as_str().unwrap();
        assert!(!message.contains("InvalidRequest("), "no Rust debug text: {message}");
    }
    // A document that does not parse or validate: 400 as graphql-response+json, 200 as json.
    for document in ["{\"query\": \"{ checkoutSession(\"}", "{\"query\": \"{ nope }\"}"] {
        let strict = post(document, "application/graphql-response+json").await.unwrap();
        assert_eq!(strict.headers()["content-type"], "application/graphql-response+json");
        let (status, cache, reply) = refusal(strict).await;
        assert_eq!((status, cache.as_str()), (400, "no-store"), "{document}");
        assert!(reply["errors"].is_array());
        // A request error: no `data` entry at all (`null` would say it ran).
        assert!(reply.get("data").is_none(), "{document}: {reply}");
        let legacy = post(document, "application/json").await.unwrap();
        assert_eq!(legacy.headers()["content-type"], "application/json");
        assert_eq!(legacy.status(), 200, "{document}");
        let legacy: Value = legacy.json().await.unwrap();
        assert!(legacy.get("data").is_none(), "{document}: {legacy}");
    }
    // Any route's refusal is not stored either.
    let missing = app.http.get(format!("http://{}/nowhere", app.addr)).send().await.unwrap();
    assert_eq!(missing.headers()["cache-control"], "no-store");
}

/// The fast-validating schema is a speed-up (measured by `bench/run.sh`, row a′); this guards
/// what it must not change: what a document answers, however often it ran before.
#[tokio::test]
async fn a_document_is_validated_strictly_until_it_has_passed_once() {
    let app = spawn_app(|config| config.response_cache_bytes = 0).await;
    crate::support::providers::mount_dodo(&app, "cks_v", Some("succeeded")).await;
    let valid = r#"query V($id: ID!) { checkoutSession(provider: DODO, id: $id) { ... on CheckoutSession { status } } }"#;
    let invalid = r#"query I($id: ID!) { checkoutSession(provider: DODO, id: $id) { ... on CheckoutSession { nope } } }"#;
    for _ in 0..3 {
        let ok = app.graphql(valid, json!({"id": "cks_v"})).await;
        assert_eq!(ok.data("checkoutSession")["status"], "COMPLETED");
        // A valid document with bad variables is still refused, however often it passed.
        let bad_variable = app.graphql(valid, json!({"id": {"not": "an id"}})).await;
        assert!(bad_variable.body["errors"].is_array(), "{}", bad_variable.body);
        // An invalid document never passes, so it is never run on the fast schema.
        let refused = app.graphql(invalid, json!({"id": "cks_v"})).await;
        assert!(refused.body["errors"][0]["message"].as_str().unwrap().contains("nope"), "{}", refused.body);
    }
}

/// A parsed document is shared by every request that sends its text (our async-graphql patch,
/// vendor/async-graphql/PATCHED.md): `@skip` and `@include` must act on each request's own
/// copy, and each request runs the operation it names, however the requests before it went.
#[tokio::test]
async fn a_shared_document_answers_each_request_by_its_own_variables_and_operation() {
    let app = spawn_app(|config| config.response_cache_bytes = 0).await;
    crate::support::providers::mount_dodo(&app, "cks_d", Some("succeeded")).await;
    let document = r#"
        query Full($id: ID!, $email: Boolean!, $brief: Boolean!) {
          checkoutSession(provider: DODO, id: $id) {
            ... on CheckoutSession { status customerEmail @include(if: $email) ...Times @skip(if: $brief) id }
          }
        }
        query Kind($id: ID!) { checkoutSession(provider: DODO, id: $id) { __typename } }
        fragment Times on CheckoutSession { createdAt fetchedAt }"#;
    let run = |operation: &'static str, email: bool, brief: bool| {
        let http = app.http.clone();
        let body = json!({
            "query": document,
            "operationName": operation,
            "variables": {"id": "cks_d", "email": email, "brief": brief},
        });
        let url = format!("http://{}/graphql", app.addr);
        async move { http.post(url).json(&body).send().await.unwrap().text().await.unwrap() }
    };
    // The order alternates, so a request that changed the shared document would show in the next.
    for (operation, email, brief, fields) in [
        ("Full", false, false, vec!["status", "createdAt", "fetchedAt", "id"]),
        ("Full", true, true, vec!["status", "customerEmail", "id"]),
        ("Kind", false, false, vec!["__typename"]),
        ("Full", false, true, vec!["status", "id"]),
        ("Full", true, false, vec!["status", "customerEmail", "createdAt", "fetchedAt", "id"]),
        ("Kind", true, true, vec!["__typename"]),
        ("Full", false, false, vec!["status", "createdAt", "fetchedAt", "id"]),
    ] {
        let text = run(operation, email, brief).await;
        let body: Value = serde_json::from_str(&text).unwrap();
        assert!(body.get("errors").is_none(), "{text}");
        let session = body["data"]["checkoutSession"].as_object().unwrap();
        let mut keys: Vec<&str> = session.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = fields.clone();
        expected.sort_unstable();
        assert_eq!(keys, expected, "{operation} email={email} brief={brief}: {text}");
        // Fields come in the order the document selects them (checked on the text: a parsed
        // JSON object need not keep its order).
        let positions: Vec<usize> =
            fields.iter().map(|field| text.find(&format!("\"{field}\"")).unwrap()).collect();
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{operation}: {text}");
    }
}
