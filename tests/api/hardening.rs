//! Safe to expose: what hostile or careless clients cannot do, and how provider trouble stays
//! contained. Each test fails with its feature removed.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::path;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{dhmad_session, session_calls, spawn_app, DHMAD_ID};

const ENTITIES: &str = r#"query($representations: [_Any!]!) {
  _entities(representations: $representations) { ... on CheckoutSession { id status } }
}"#;

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

#[tokio::test]
async fn entities_that_all_fail_cost_linear_time_and_keep_their_index() {
    let app = spawn_app(|_| {}).await;
    let representations: Vec<Value> = (0..2_000)
        .map(|i| json!({"__typename": "CheckoutSession", "provider": "DHMAD", "id": format!("not-a-uuid-{i}")}))
        .collect();
    let started = Instant::now();
    let reply = app.graphql(ENTITIES, json!({"representations": representations})).await;
    let took = started.elapsed();
    let errors = reply.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2_000);
    for (i, error) in errors.iter().enumerate().step_by(97) {
        assert_eq!(error["extensions"]["code"], "INVALID_ID");
        let index = error["path"][1].as_u64().unwrap() as usize;
        assert!(reply.body["data"]["_entities"][index].is_null(), "error {i} points at a null");
    }
    let mut indices: Vec<u64> = errors.iter().map(|e| e["path"][1].as_u64().unwrap()).collect();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices.len(), 2_000, "each representation has its own error");
    assert!(took < Duration::from_secs(1), "2,000 failing entities took {took:?}");
}

#[tokio::test]
async fn entities_past_their_bound_are_refused_without_a_call() {
    let app = spawn_app(|config| config.entities_max = 3).await;
    let representations: Vec<Value> = (0..5)
        .map(|i| json!({"__typename": "CheckoutSession", "provider": "DODO", "id": format!("cks_{i}")}))
        .collect();
    let reply = app.graphql(ENTITIES, json!({"representations": representations})).await;
    let errors = reply.body["errors"].as_array().unwrap();
    let too_large: Vec<&Value> =
        errors.iter().filter(|e| e["extensions"]["code"] == "BATCH_TOO_LARGE").collect();
    assert_eq!(too_large.len(), 2, "{}", reply.body);
    assert!(too_large.iter().all(|e| e["extensions"]["max"] == 3 && e["path"][1].is_u64()));
    assert_eq!(app.dodo.received_requests().await.unwrap().len(), 3, "only the first three were asked");
}
