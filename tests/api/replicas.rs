//! Several gateway processes sharing one real `redis-server` (started here on a free port):
//! one view of each session, one upstream call per cold session, webhooks and updates fanned
//! out, one quota, and no outage when Redis goes away.
//!
//! The tests run on two threads: wiremock's `MockServer` blocks its thread when dropped until
//! its requests are done. On one thread, a test that failed with a delayed upstream call in
//! flight would hang there instead of reporting its failure.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::{Mock, MockServer};

use crate::support::app::{post_graphql, DODO_KEY};
use crate::support::process::Gateway;
use crate::support::providers::{dodo_calls as calls, dodo_session, mount_dodo_upstream as upstream};
use crate::support::sockets::Socket;
use crate::support::webhooks::{dodo_delivery, now, payment, DODO_SECRET as WEBHOOK_SECRET};

/// A `redis-server` on a free port of 127.0.0.1, without persistence; killed when dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Redis { child: None, port };
        redis.restart();
        redis
    }

    // The child is reaped by `stop` and `Drop`.
    #[allow(clippy::zombie_processes)]
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One gateway process, a replica among several (the binary as `process` starts it).
struct Replica {
    addr: SocketAddr,
    /// Kept (and killed when dropped); in a mutex so replicas can be shared across tasks.
    _process: std::sync::Mutex<Gateway>,
}

impl Replica {
    fn start(redis: &Redis, dodo: &MockServer, env: &[(&str, &str)]) -> Replica {
        let (redis_url, dodo_url) = (redis.url(), dodo.uri());
        let mut all = vec![
            ("GATEWAY_REDIS_URL", redis_url.as_str()),
            ("DODO_PAYMENTS_API_KEY", DODO_KEY),
            ("DODO_PAYMENTS_BASE_URL", dodo_url.as_str()),
            ("GATEWAY_UPSTREAM_RETRIES", "0"),
        ];
        all.extend_from_slice(env);
        let process = Gateway::start(&[], &all);
        Replica { addr: process.addr, _process: std::sync::Mutex::new(process) }
    }

    /// Waits until the replica serves and is connected to Redis, both for commands and for
    /// pub/sub: readiness alone does not wait for Redis (its trouble is never an outage), and a
    /// replica that had not connected yet would fetch for itself what the tests expect it to
    /// share.
    async fn ready(self, http: &reqwest::Client) -> Replica {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(response) = http.get(format!("http://{}/readyz", self.addr)).send().await {
                if response.status() == 200 {
                    let body: Value = response.json().await.unwrap_or_default();
                    if body["shared"]["state"] == "up" && body["shared"]["pubsub"] == true {
                        return self;
                    }
                }
            }
            assert!(Instant::now() < deadline, "the replica did not become ready with Redis");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn status(&self, http: &reqwest::Client, id: &str) -> Value {
        let query = "query($id: ID!) { checkoutSession(provider: DODO, id: $id) { ... on CheckoutSession { status } ... on CheckoutError { code } } }";
        let reply = post_graphql(http, self.addr, query, json!({"id": id})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let result = &reply.body["data"]["checkoutSession"];
        result.get("status").or(result.get("code")).cloned().unwrap_or(Value::Null)
    }

    async fn metrics(&self, http: &reqwest::Client) -> String {
        http.get(format!("http://{}/metrics", self.addr)).send().await.unwrap().text().await.unwrap()
    }
}

async fn replicas(redis: &Redis, dodo: &MockServer, count: usize, env: &[(&str, &str)]) -> Vec<Replica> {
    let http = crate::support::app::http();
    let mut started = Vec::new();
    for _ in 0..count {
        started.push(Replica::start(redis, dodo, env).ready(&http).await);
    }
    started
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_fetched_through_one_replica_costs_no_call_through_another() {
    let (redis, dodo, http) = (Redis::start(), MockServer::start().await, crate::support::app::http());
    upstream(&dodo, "cks_shared", Some("succeeded"), Duration::ZERO).await;
    let group = replicas(&redis, &dodo, 2, &[]).await;
    assert_eq!(group[0].status(&http, "cks_shared").await, "COMPLETED");
    assert_eq!(group[1].status(&http, "cks_shared").await, "COMPLETED");
    assert_eq!(calls(&dodo, "cks_shared").await, 1, "B read A's answer from Redis");
    assert!(group[1]
        .metrics(&http)
        .await
        .contains(r#"checkout_gateway_shared_cache_hits_total{account="dodo",provider="dodo"} 1"#));
    let ready: Value =
        http.get(format!("http://{}/readyz", group[1].addr)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["shared"], json!({"configured": true, "state": "up", "pubsub": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_misses_on_three_replicas_make_one_upstream_call() {
    let (redis, dodo) = (Redis::start(), MockServer::start().await);
    upstream(&dodo, "cks_cold", Some("succeeded"), Duration::from_millis(300)).await;
    let group = Arc::new(replicas(&redis, &dodo, 3, &[]).await);
    let http = crate::support::app::http();
    let tasks: Vec<_> = (0..300)
        .map(|n| {
            let (group, http) = (group.clone(), http.clone());
            tokio::spawn(async move { group[n % 3].status(&http, "cks_cold").await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), "COMPLETED");
    }
    assert_eq!(calls(&dodo, "cks_cold").await, 1, "one replica asked; the others waited for its answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_to_one_replica_updates_another_and_its_subscriber() {
    let (redis, dodo, http) = (Redis::start(), MockServer::start().await, crate::support::app::http());
    let session = upstream(&dodo, "cks_fan", None, Duration::ZERO).await;
    let group = replicas(&redis, &dodo, 2, &[("DODO_PAYMENTS_WEBHOOK_KEY", WEBHOOK_SECRET)]).await;
    assert_eq!(group[1].status(&http, "cks_fan").await, "OPEN");
    let mut socket = Socket::open_at(group[1].addr, "/ws", "graphql-transport-ws").await;
    socket.subscribe("1", "DODO", "cks_fan").await;
    assert_eq!(socket.update().await.1, "OPEN");

    session.set(dodo_session("cks_fan", Some("succeeded")));
    let (headers, body) =
        dodo_delivery(WEBHOOK_SECRET, "msg_fan", now(), "payment.succeeded", payment("cks_fan", "succeeded"));
    let mut request = http.post(format!("http://{}/webhooks/dodo", group[0].addr)).body(body);
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let sent = Instant::now();
    assert_eq!(request.send().await.unwrap().status(), 200);
    assert_eq!(socket.update().await.1, "COMPLETED");
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(1), "B's subscriber heard {took:?} after A's webhook");
    assert_eq!(group[1].status(&http, "cks_fan").await, "COMPLETED", "B's cached OPEN was replaced");
    assert_eq!(calls(&dodo, "cks_fan").await, 2, "the first lookup, and A's one refetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_quota_holds_a_burst_across_replicas() {
    let (redis, dodo) = (Redis::start(), MockServer::start().await);
    Mock::given(wiremock::matchers::path_regex("^/checkouts/cks_q[0-9]+$"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_json(dodo_session("cks_q", None)))
        .mount(&dodo)
        .await;
    let env = [("GATEWAY_UPSTREAM_RATE_LIMIT", "5/s"), ("GATEWAY_LOOKUP_DEADLINE", "400ms")];
    let group = Arc::new(replicas(&redis, &dodo, 3, &env).await);
    let http = crate::support::app::http();
    let started = Instant::now();
    let tasks: Vec<_> = (0..45)
        .map(|n| {
            let (group, http) = (group.clone(), http.clone());
            tokio::spawn(async move { group[n % 3].status(&http, &format!("cks_q{n}")).await })
        })
        .collect();
    let mut limited = 0;
    for task in tasks {
        if task.await.unwrap() == "PROVIDER_UNAVAILABLE" {
            limited += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let made = dodo.received_requests().await.unwrap().len();
    // 5/s for all three together: a burst of 5, then one every 200 ms. Each replica alone
    // would have let 5 through at once, 15 in all.
    let allowed = 5.0 + (elapsed * 5.0).ceil();
    assert!((made as f64) <= allowed, "{made} calls in {elapsed:.2} s; the shared quota allows {allowed}");
    assert!(made >= 5, "{made}");
    // Every lookup without a call was refused (one admitted at the deadline's edge may both
    // call and time out).
    assert!(made + limited >= 45, "{made} calls, {limited} refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_is_not_an_outage_and_its_return_is_noticed() {
    let (mut redis, dodo, http) = (Redis::start(), MockServer::start().await, crate::support::app::http());
    Mock::given(wiremock::matchers::path_regex("^/checkouts/cks_r[0-9]+$"))
        .respond_with(
            wiremock::ResponseTemplate::new(200).set_body_json(dodo_session("cks_r", Some("succeeded"))),
        )
        .mount(&dodo)
        .await;
    let group = replicas(&redis, &dodo, 2, &[("GATEWAY_REDIS_TIMEOUT", "50ms")]).await;
    let mut answered = 0;
    for n in 0..40 {
        if n == 10 {
            redis.stop();
        }
        let replica = &group[n % 2];
        let reply = post_graphql(
            &http,
            replica.addr,
            "query($id: ID!) { checkoutSession(provider: DODO, id: $id) { ... on CheckoutSession { status } } }",
            json!({"id": format!("cks_r{n}")}),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["data"]["checkoutSession"]["status"], "COMPLETED", "{}", reply.body);
        answered += 1;
    }
    assert_eq!(answered, 40);
    let ready = http.get(format!("http://{}/readyz", group[0].addr)).send().await.unwrap();
    assert_eq!(ready.status(), 200, "Redis trouble does not make a replica unready");
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["shared"]["configured"], true);
    assert!(group[0].metrics(&http).await.contains("checkout_gateway_redis_up 0"));

    // Back: without restarting the gateways, a session fetched through A is read by B again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 100;
    loop {
        n += 1;
        let id = format!("cks_r{n}");
        group[0].status(&http, &id).await;
        group[1].status(&http, &id).await;
        if calls(&dodo, &id).await == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the replicas never used Redis again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_written_in_another_format_is_ignored_not_misread() {
    let (redis, dodo, http) = (Redis::start(), MockServer::start().await, crate::support::app::http());
    upstream(&dodo, "cks_format", None, Duration::ZERO).await;
    let group = replicas(&redis, &dodo, 2, &[]).await;
    assert_eq!(group[0].status(&http, "cks_format").await, "OPEN");
    let mut connection = redis.connection().await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg("checkout-gateway:session:*").query_async(&mut connection).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    // What a future version might write: the same shape, another meaning.
    let stored: String = redis::cmd("GET").arg(&keys[0]).query_async(&mut connection).await.unwrap();
    let mut future: Value = serde_json::from_str(&stored).unwrap();
    future["v"] = json!(2);
    future["answer"]["status"] = json!("Completed");
    let _: () =
        redis::cmd("SET").arg(&keys[0]).arg(future.to_string()).query_async(&mut connection).await.unwrap();
    assert_eq!(group[1].status(&http, "cks_format").await, "OPEN", "the other version is not read");
    assert_eq!(calls(&dodo, "cks_format").await, 2, "B asked the provider instead");
    let rewritten: String = redis::cmd("GET").arg(&keys[0]).query_async(&mut connection).await.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&rewritten).unwrap()["v"], 1, "and wrote its own version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_lock_delays_a_cold_lookup_a_bounded_while_then_it_asks_itself() {
    let (redis, dodo, http) = (Redis::start(), MockServer::start().await, crate::support::app::http());
    upstream(&dodo, "cks_seen", Some("succeeded"), Duration::ZERO).await;
    upstream(&dodo, "cks_stuck", Some("succeeded"), Duration::ZERO).await;
    let group = replicas(&redis, &dodo, 1, &[]).await;
    // The account's scope, read from the key of a session it stored.
    group[0].status(&http, "cks_seen").await;
    let mut connection = redis.connection().await;
    let keys: Vec<String> =
        redis::cmd("KEYS").arg("checkout-gateway:session:*").query_async(&mut connection).await.unwrap();
    let scope = keys[0].strip_prefix("checkout-gateway:session:").unwrap().strip_suffix(":cks_seen").unwrap();
    // A replica that died holding the lock: it would expire in 9 s (a lock lasts 10 s at most).
    let _: () = redis::cmd("SET")
        .arg(format!("checkout-gateway:lock:{scope}:cks_stuck"))
        .arg("a-replica-that-died")
        .arg("PX")
        .arg(9_000)
        .query_async(&mut connection)
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(group[0].status(&http, "cks_stuck").await, "COMPLETED");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(5), "{took:?}");
    assert_eq!(calls(&dodo, "cks_stuck").await, 1);
}

/// The account's scope, read from the key of a session `replica` stored (`id`).
async fn scope_of(replica: &Replica, redis: &Redis, http: &reqwest::Client, id: &str) -> String {
    replica.status(http, id).await;
    let mut connection = redis.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("checkout-gateway:session:*:{id}"))
        .query_async(&mut connection)
        .await
        .unwrap();
    let key = keys.first().expect("the session was shared");
    key.strip_prefix("checkout-gateway:session:").unwrap().strip_suffix(&format!(":{id}")).unwrap().to_owned()
}

async fn redis_set(redis: &Redis, key: &str, value: impl redis::ToRedisArgs) {
    let mut connection = redis.connection().await;
    let _: () = redis::cmd("SET").arg(key).arg(value).query_async(&mut connection).await.unwrap();
}

// ---- Whoever can write to Redis: what is read there is bounded, not obeyed as written. ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_in_redis_lives_no_longer_than_the_cache_policy_allows() {
    let (redis, dodo, http) = (Redis::start(), MockServer::start().await, crate::support::app::http());
    upstream(&dodo, "cks_seen", None, Duration::ZERO).await;
    upstream(&dodo, "cks_forged", Some("succeeded"), Duration::ZERO).await;
    upstream(&dodo, "cks_forever", Some("succeeded"), Duration::ZERO).await;
    let group = replicas(&redis, &dodo, 1, &[("GATEWAY_CACHE_TTL_OPEN", "1s")]).await;
    let scope = scope_of(&group[0], &redis, &http, "cks_seen").await;
    let mut connection = redis.connection().await;
    let stored: String = redis::cmd("GET")
        .arg(format!("checkout-gateway:session:{scope}:cks_seen"))
        .query_async(&mut connection)
        .await
        .unwrap();
    // An OPEN answer said to be fresh for ten years, and one for the end of time (past what a
    // clock can add: read as written, it overflowed).
    let ten_years = chrono::Utc::now().timestamp_millis() + 10 * 365 * 24 * 3600 * 1000;
    for (id, until) in [("cks_forged", ten_years), ("cks_forever", i64::MAX)] {
        let mut forged: Value = serde_json::from_str(&stored).unwrap();
        forged["expires_at"] = json!(until);
        forged["kept_until"] = json!(until);
        redis_set(&redis, &format!("checkout-gateway:session:{scope}:{id}"), forged.to_string()).await;
        assert_eq!(group[0].status(&http, id).await, "OPEN", "{id}: read from Redis");
        let _: () = redis::cmd("DEL")
            .arg(format!("checkout-gateway:session:{scope}:{id}"))
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    // Taken as an OPEN answer may be (GATEWAY_CACHE_TTL_OPEN), not for the years it claimed.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for id in ["cks_forged", "cks_forever"] {
        assert_eq!(group[0].status(&http, id).await, "COMPLETED", "{id}: asked the provider again");
        assert_eq!(calls(&dodo, id).await, 1, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_or_a_lock_in_redis_that_no_replica_wrote_is_not_obeyed() {
    let (redis, dodo, http) = (Redis::start(), MockServer::start().await, crate::support::app::http());
    upstream(&dodo, "cks_seen", Some("succeeded"), Duration::ZERO).await;
    upstream(&dodo, "cks_held", Some("succeeded"), Duration::ZERO).await;
    upstream(&dodo, "cks_locked", Some("succeeded"), Duration::ZERO).await;
    let group = replicas(&redis, &dodo, 1, &[]).await;
    let scope = scope_of(&group[0], &redis, &http, "cks_seen").await;
    // A 429's hold for ten years, with no expiry: past GATEWAY_UPSTREAM_MAX_WAIT, so no
    // replica wrote it.
    let micros = (chrono::Utc::now().timestamp_millis() + 10 * 365 * 24 * 3600 * 1000) * 1000;
    redis_set(&redis, &format!("checkout-gateway:hold:{scope}:"), micros).await;
    assert_eq!(group[0].status(&http, "cks_held").await, "COMPLETED", "the forged hold is dropped");
    // A lock with no expiry: every cold lookup of the session would wait on it.
    let lock = format!("checkout-gateway:lock:{scope}:cks_locked");
    redis_set(&redis, &lock, "forged").await;
    let started = Instant::now();
    assert_eq!(group[0].status(&http, "cks_locked").await, "COMPLETED");
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}: not waited on", started.elapsed());
    let mut connection = redis.connection().await;
    let holder: Option<String> = redis::cmd("GET").arg(&lock).query_async(&mut connection).await.unwrap();
    assert_eq!(holder, None, "taken over and released, not left standing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_reference_set_in_redis_is_read_in_a_bounded_sample() {
    let (redis, dodo, http) = (Redis::start(), MockServer::start().await, crate::support::app::http());
    upstream(&dodo, "cks_seen", Some("succeeded"), Duration::ZERO).await;
    let group = replicas(&redis, &dodo, 1, &[("DODO_PAYMENTS_WEBHOOK_KEY", WEBHOOK_SECRET)]).await;
    let scope = scope_of(&group[0], &redis, &http, "cks_seen").await;
    let mut connection = redis.connection().await;
    let members: Vec<String> = (0..5_000).map(|i| format!("cks_{i}")).collect();
    let _: () = redis::cmd("SADD")
        .arg(format!("checkout-gateway:reference:{scope}:pay_big"))
        .arg(&members)
        .query_async(&mut connection)
        .await
        .unwrap();
    let (headers, body) =
        dodo_delivery(WEBHOOK_SECRET, "msg_big", now(), "refund.succeeded", json!({"payment_id": "pay_big"}));
    let mut request = http.post(format!("http://{}/webhooks/dodo", group[0].addr)).body(body);
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    // Each session named is invalidated for every replica (one DEL each): 64 at most, not 5,000.
    let metrics = group[0].metrics(&http).await;
    let deleted: u64 = metrics
        .lines()
        .filter(|line| {
            line.starts_with("checkout_gateway_redis_operations_total") && line.contains(r#"op="del""#)
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!((1..=64).contains(&deleted), "{deleted} sessions invalidated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_on_the_channel_that_no_replica_sends_are_ignored() {
    let (redis, dodo, http) = (Redis::start(), MockServer::start().await, crate::support::app::http());
    upstream(&dodo, "cks_seen", Some("succeeded"), Duration::ZERO).await;
    let group = replicas(&redis, &dodo, 1, &[]).await;
    let scope = scope_of(&group[0], &redis, &http, "cks_seen").await;
    let replays = |metrics: String| {
        metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix("checkout_gateway_response_cache_hits_total ")?.parse::<u64>().ok()
            })
            .unwrap_or(0)
    };
    // Answered, then replayed.
    group[0].status(&http, "cks_seen").await;
    let before = replays(group[0].metrics(&http).await);
    assert!(before >= 1);
    let mut connection = redis.connection().await;
    for message in [
        // Larger than any replica writes.
        json!({"kind": "invalidate", "scope": scope, "id": "x".repeat(8192), "from": "elsewhere"}),
        // A kind no replica sends.
        json!({"kind": "flush", "scope": scope, "id": "cks_seen", "from": "elsewhere"}),
    ] {
        let _: () = redis::cmd("PUBLISH")
            .arg("checkout-gateway:events")
            .arg(message.to_string())
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    group[0].status(&http, "cks_seen").await;
    assert_eq!(replays(group[0].metrics(&http).await), before + 1, "the replayed answers were kept");
}
