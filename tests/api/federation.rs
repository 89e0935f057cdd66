//! The subgraph side of federation, through HTTP: `_entities` as a router sends it.

use serde_json::json;
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

use crate::support::app::spawn_app;
use crate::support::providers::{dodo_session, mount_dodo};

const ENTITIES: &str = r#"query($representations: [_Any!]!) {
  _entities(representations: $representations) {
    __typename
    ... on CheckoutSession { provider id status customerEmail }
  }
}"#;

#[tokio::test]
async fn entities_resolve_in_order_and_a_bad_one_spoils_nothing() {
    let app = spawn_app(|_| {}).await;
    for (id, status) in [("cks_a", Some("succeeded")), ("cks_b", None)] {
        Mock::given(path(format!("/checkouts/{id}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(dodo_session(id, status)))
            .expect(1)
            .mount(&app.dodo)
            .await;
    }
    Mock::given(path("/checkouts/cks_forbidden"))
        .respond_with(ResponseTemplate::new(403))
        .mount(&app.dodo)
        .await;
    let rep =
        |provider: &str, id: &str| json!({"__typename": "CheckoutSession", "provider": provider, "id": id});
    let representations = json!([
        rep("DODO", "cks_a"),
        rep("DODO", "cks_forbidden"),
        rep("DODO", "cks_b"),
        rep("DHMAD", "not-a-uuid"),
        rep("DODO", "cks_a"),
        rep("DODO", "cks_forbidden"),
    ]);

    let reply = app.graphql(ENTITIES, json!({"representations": representations})).await;

    let entities = reply.data("_entities").as_array().unwrap();
    assert_eq!(entities.len(), 6);
    assert_eq!(entities[0]["id"], "cks_a");
    assert_eq!(entities[0]["status"], "COMPLETED");
    assert!(entities[1].is_null());
    assert_eq!(entities[2]["id"], "cks_b");
    assert_eq!(entities[2]["status"], "OPEN");
    assert!(entities[3].is_null());
    assert_eq!(entities[4]["id"], "cks_a");
    assert!(entities[5].is_null());

    // Every null has its own error at its own index, a repeated representation included.
    let errors = reply.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 3, "{}", reply.body);
    let mut paths: Vec<String> = errors.iter().map(|e| e["path"].to_string()).collect();
    paths.sort();
    assert_eq!(paths, [r#"["_entities",1]"#, r#"["_entities",3]"#, r#"["_entities",5]"#]);
    let forbidden =
        errors.iter().find(|e| e["path"] == json!(["_entities", 1])).expect("an error at _entities.1");
    assert_eq!(forbidden["extensions"]["code"], "FORBIDDEN");
    assert_eq!(forbidden["extensions"]["provider"], "DODO");
    let invalid =
        errors.iter().find(|e| e["path"] == json!(["_entities", 3])).expect("an error at _entities.3");
    assert_eq!(invalid["extensions"]["code"], "INVALID_ID");
    assert_eq!(invalid["extensions"]["provider"], "DHMAD");
    assert_eq!(reply.cache_control(), "no-store");
}

#[tokio::test]
async fn an_entity_fetch_reuses_the_cached_session() {
    let app = spawn_app(|_| {}).await;
    mount_dodo(&app, "cks_shared", Some("succeeded")).await;
    app.session("DODO", "cks_shared").await;
    let reply = app
        .graphql(
            ENTITIES,
            json!({"representations": [{"__typename": "CheckoutSession", "provider": "DODO", "id": "cks_shared"}]}),
        )
        .await;
    assert_eq!(reply.data("_entities")[0]["status"], "COMPLETED");
    assert_eq!(app.dodo.received_requests().await.unwrap().len(), 1);
    assert!(reply.cache_control().starts_with("private, max-age="), "{}", reply.cache_control());
}

#[tokio::test]
async fn unavailable_entities_carry_the_reason_and_wait() {
    let app = spawn_app(|_| {}).await;
    Mock::given(path("/checkouts/cks_busy"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "9"))
        .mount(&app.dodo)
        .await;
    let reply = app
        .graphql(ENTITIES, json!({"representations": [{"__typename": "CheckoutSession", "provider": "DODO", "id": "cks_busy"}]}))
        .await;
    assert!(reply.body["data"]["_entities"][0].is_null());
    let extensions = &reply.body["errors"][0]["extensions"];
    assert_eq!(extensions["code"], "PROVIDER_UNAVAILABLE");
    assert_eq!(extensions["reason"], "RATE_LIMITED");
    assert_eq!(extensions["retryAfterSeconds"], 9);
}
