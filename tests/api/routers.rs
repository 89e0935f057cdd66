//! Routers that subscribe over WebSocket: Hive Router sends the headers it is configured to send
//! this subgraph (`router-authorization` among them) as the `connection_init` payload, not on
//! the upgrade request. The secret is admitted there exactly as in the header, and refused the
//! same way. (The whole path through a real Hive Router: tests/routers.)

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::access::{api_keys, ALL_KEY};
use crate::support::app::{spawn_app, TestApp};
use crate::support::providers::mount_dodo;
use crate::support::sockets::{upgrade_request, Socket};

/// The first message (or close frame) a fresh socket gets after `connection_init` with `payload`.
async fn answer_to_init(app: &TestApp, protocol: &str, payload: Value) -> Value {
    let (mut stream, _) =
        tokio_tungstenite::connect_async(upgrade_request(app.addr, "/ws", protocol)).await.unwrap();
    let init = json!({"type": "connection_init", "payload": payload}).to_string();
    stream.send(Message::Text(init.into())).await.unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap();
        match message.unwrap().unwrap() {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => {
                let frame = frame.unwrap();
                return json!({"closed": u16::from(frame.code), "reason": frame.reason.as_str()});
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn secret_in_connection_init_is_admitted_as_in_the_header() {
    let app = spawn_app(|config| config.access = Some(api_keys())).await;
    mount_dodo(&app, "cks_ws", None).await;
    let payloads = [
        // What Hive Router sends: its header rules' output, lower-case names, flat.
        json!({"router-authorization": "router-current", "authorization": format!("Bearer {ALL_KEY}")}),
        // The client's own credential is not needed: the router is trusted with every account.
        json!({"router-authorization": "router-current"}),
        // The next secret (rotation), nested as Apollo Router's `connectionParams`.
        json!({"connectionParams": {"Router-Authorization": "router-next"}}),
    ];
    for payload in payloads {
        let mut socket = Socket::open_with(app.addr, "/ws", payload.clone()).await;
        socket.subscribe("1", "DODO", "cks_ws").await;
        assert_eq!(socket.update().await, ("1".into(), "OPEN".into()), "{payload}");
    }
    // The older `graphql-ws` protocol reads the same payload.
    let legacy = answer_to_init(&app, "graphql-ws", json!({"router-authorization": "router-current"})).await;
    assert_eq!(legacy["type"], "connection_ack", "{legacy}");
}

#[tokio::test]
async fn wrong_secret_in_connection_init_is_refused_like_the_header() {
    let app = spawn_app(|config| config.access = Some(api_keys())).await;
    // The header's refusal: 401 with this message.
    let refused = app
        .http
        .post(format!("http://{}/graphql", app.addr))
        .header("router-authorization", "router-wrong")
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let message = refused.json::<Value>().await.unwrap()["errors"][0]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("Router-Authorization"), "{message}");
    // In the payload: the socket is closed with that message (1002, as any credential
    // refused at connection_init), even next to a client key that would be admitted alone.
    for payload in [
        json!({"router-authorization": "router-wrong"}),
        json!({"router-authorization": "router-wrong", "authorization": format!("Bearer {ALL_KEY}")}),
        json!({"headers": {"router-authorization": "router-current-but-longer"}}),
    ] {
        let answer = answer_to_init(&app, "graphql-transport-ws", payload.clone()).await;
        assert_eq!(answer, json!({"closed": 1002, "reason": message}), "{payload}");
    }
    // The older protocol says it with `connection_error`.
    let legacy = answer_to_init(&app, "graphql-ws", json!({"router-authorization": "router-wrong"})).await;
    assert_eq!(legacy, json!({"type": "connection_error", "payload": {"message": message}}));
}

#[tokio::test]
async fn null_connection_init_payload_takes_credentials_from_the_upgrade_or_none() {
    let app = spawn_app(|config| config.access = Some(api_keys())).await;
    mount_dodo(&app, "cks_null", None).await;
    // Hive Router with no header rules sends `"payload": null`: no credential, refused as one.
    let answer = answer_to_init(&app, "graphql-transport-ws", Value::Null).await;
    assert_eq!(answer["closed"], 1002, "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains("needs credentials"), "{answer}");
    // With the secret on the upgrade request instead, a null payload is admitted.
    let mut request = upgrade_request(app.addr, "/ws", "graphql-transport-ws");
    request.headers_mut().insert("router-authorization", "router-current".parse().unwrap());
    let (mut stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let init = json!({"type": "connection_init", "payload": null}).to_string();
    stream.send(Message::Text(init.into())).await.unwrap();
    let ack = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Value>(ack.to_text().unwrap()).unwrap()["type"], "connection_ack");
}
