//! The shared tier: one Redis for every replica (`GATEWAY_REDIS_URL`). Answers providers gave,
//! a short lock so that one replica calls a provider for a cold session while the others wait
//! for its answer, invalidations and updates fanned out over pub/sub, and the providers'
//! quotas counted once for all replicas.
//!
//! Redis trouble is never an outage: every operation is bounded by a timeout, failures open a
//! breaker (no Redis call for a while, then one trial), and each caller falls back to what it
//! did without Redis (its local cache, the provider, its local quota). The connection manager
//! reconnects by itself; pub/sub is re-established by [`Shared::listen`], which reports each
//! reconnection so that the caller drops what it may have missed (pub/sub is at most once).
//!
//! Owns: the connection, keys and their prefix, the breaker, and the Redis side of each
//! mechanism (bytes in, bytes out): no provider, no session type.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use crate::domain::{lock, Secret};
use crate::providers::guard::{SharedQuota, Taken};
use crate::telemetry::metrics::Metrics;

/// How the shared tier is reached.
#[derive(Clone, Debug)]
pub struct SharedConfig {
    /// `redis://` or `rediss://`, credentials included: a secret.
    pub url: Secret,
    /// Put before every key and channel, so that several deployments can share one Redis.
    pub prefix: String,
    /// The longest any one Redis operation may take before it counts as failed.
    pub timeout: Duration,
}

/// Consecutive failed operations that open the breaker, and how long it stays open.
const BREAKER_FAILURES: u32 = 3;
const BREAKER_COOLDOWN: Duration = Duration::from_secs(2);
/// Waits between pub/sub reconnection attempts.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug)]
enum Breaker {
    Closed { failures: u32 },
    Open { until: Instant },
}

pub struct Shared {
    client: redis::Client,
    manager: ConnectionManager,
    prefix: String,
    timeout: Duration,
    breaker: Mutex<Breaker>,
    /// Whether pub/sub is subscribed now.
    listening: AtomicBool,
    /// This process, so that it can tell its own messages from the others'.
    pub replica: String,
    metrics: Arc<Metrics>,
    /// The Lua scripts, hashed once (each call sends the hash, and the body only when the
    /// server does not know it yet).
    take_script: Script,
    hold_script: Script,
    unlock_script: Script,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What `/readyz` says of the shared tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedState {
    /// Answering.
    Up,
    /// Failing: the breaker is open; every replica works alone until it closes.
    Down,
}

/// GCRA over every window of a quota at once, with Redis's own clock (replicas' clocks may
/// differ). KEYS: the hold key, then one key per window. ARGV: the longest hold allowed, then
/// per window its emission interval and burst tolerance, in microseconds. Returns {0, 0} when
/// a call may be made now, {1, wait} when the quota has room again in `wait` µs, {2, wait}
/// while a 429's hold lasts.
///
/// What it reads is checked, not trusted: a hold longer than the clamp, or a window's state
/// further ahead than one whole window can be, was not written by a gateway (or by a gateway
/// with a longer clamp): it is dropped rather than obeyed, so nobody who can write to Redis
/// holds an account for ever.
const TAKE: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local held = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if held > now + tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  held = 0
end
if held > now then return {2, held - now} end
local tats = {}
local wait = 0
for i = 2, #KEYS do
  local interval = tonumber(ARGV[2 * i - 2])
  local tolerance = tonumber(ARGV[2 * i - 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now or tat > now + interval + tolerance then tat = now end
  local allowed_at = tat - tolerance
  if allowed_at > now and allowed_at - now > wait then wait = allowed_at - now end
  tats[i] = tat + interval
end
if wait > 0 then return {1, wait} end
for i = 2, #KEYS do
  local ttl = math.ceil((tats[i] - now) / 1000) + 1000
  redis.call('SET', KEYS[i], tats[i], 'PX', ttl)
end
return {0, 0}
"#;

/// Holds every replica's calls of one account until a moment (µs, Redis's clock), keeping the
/// later of two holds.
const HOLD: &str = r#"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local until_ = now + tonumber(ARGV[1])
local held = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > held then
  redis.call('SET', KEYS[1], until_, 'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 1000)
end
return 1
"#;

/// The largest answer read back from Redis: a provider's answer is read up to 1 MiB, and its
/// shared form is about the same size.
const VALUE_MAX_BYTES: usize = 2 * 1024 * 1024;

/// Sessions read under one reference (a payment, an escrow), and the longest id taken from
/// there: a set is read by sampling, never whole.
pub const REFERENCES_READ_MAX: usize = 64;
const REFERENCE_ID_MAX_BYTES: usize = 256;

/// The largest pub/sub message read: a replica's messages name an account scope and an id.
pub const MESSAGE_MAX_BYTES: usize = 4096;

/// Releases a lock only if it is still this holder's.
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

impl Shared {
    /// Connects lazily: the gateway starts whether or not Redis is up, and the manager
    /// connects (and reconnects) by itself.
    pub fn new(config: &SharedConfig, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        crate::net::install_crypto_provider();
        // The URL holds the password: the error says what is wrong, never the URL.
        let client = redis::Client::open(config.url.expose()).map_err(|e| {
            anyhow::anyhow!("GATEWAY_REDIS_URL is not a redis:// or rediss:// URL ({:?})", e.kind())
        })?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(500))))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let manager = client
            .get_connection_manager_lazy(manager_config)
            .map_err(|e| anyhow::anyhow!("the Redis connection could not be set up ({:?})", e.kind()))?;
        Ok(Arc::new(Self {
            client,
            manager,
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
            listening: AtomicBool::new(false),
            replica: format!("{:016x}", fastrand::u64(..)),
            metrics,
            take_script: Script::new(TAKE),
            hold_script: Script::new(HOLD),
            unlock_script: Script::new(UNLOCK),
        }))
    }

    pub fn state(&self) -> SharedState {
        match *lock(&self.breaker) {
            Breaker::Open { until } if Instant::now() < until => SharedState::Down,
            _ => SharedState::Up,
        }
    }

    /// Runs one operation within the timeout; `None` when Redis could not answer (or the
    /// breaker is open), counted and remembered by the breaker.
    async fn run<T, F>(&self, op: &'static str, call: F) -> Option<T>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        if self.state() == SharedState::Down {
            self.metrics.redis_operations.with_label_values(&[op, "skipped"]).inc();
            return None;
        }
        let outcome = tokio::time::timeout(self.timeout, call).await;
        let ok = matches!(outcome, Ok(Ok(_)));
        let label = match &outcome {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "error",
            Err(_) => "timeout",
        };
        self.metrics.redis_operations.with_label_values(&[op, label]).inc();
        let mut breaker = lock(&self.breaker);
        *breaker = match (&*breaker, ok) {
            (_, true) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, false) if failures + 1 < BREAKER_FAILURES => {
                Breaker::Closed { failures: failures + 1 }
            }
            (_, false) => {
                if let Ok(Err(error)) = &outcome {
                    tracing::warn!(op, error = ?error.kind(), "Redis failed; working without it for a while");
                } else {
                    tracing::warn!(op, "Redis did not answer in time; working without it for a while");
                }
                Breaker::Open { until: Instant::now() + BREAKER_COOLDOWN }
            }
        };
        self.metrics.redis_up.set(i64::from(matches!(*breaker, Breaker::Closed { .. })));
        outcome.ok()?.ok()
    }

    fn key(&self, kind: &str, scope: &str, id: &str) -> String {
        format!("{}{kind}:{scope}:{id}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// The stored answer for `scope` and `id`. At most [`VALUE_MAX_BYTES`] are read (one
    /// command, on the hot path): a longer value, which no gateway writes, arrives cut and is
    /// not read as an answer.
    pub async fn get(&self, scope: &str, id: &str) -> Option<Vec<u8>> {
        let key = self.key("session", scope, id);
        let mut redis = self.manager.clone();
        let value = self
            .run("get", async move {
                redis::cmd("GETRANGE")
                    .arg(key)
                    .arg(0)
                    .arg(VALUE_MAX_BYTES)
                    .query_async::<Vec<u8>>(&mut redis)
                    .await
            })
            .await?;
        // A missing key reads as nothing; a value past the bound is refused whole.
        (!value.is_empty() && value.len() <= VALUE_MAX_BYTES).then_some(value)
    }

    /// Stores an answer until `until` (Unix milliseconds: an absolute expiry, the same for
    /// every replica).
    pub async fn put(&self, scope: &str, id: &str, value: &[u8], until: i64) {
        let key = self.key("session", scope, id);
        let mut redis = self.manager.clone();
        let value = value.to_vec();
        self.run("set", async move {
            redis::cmd("SET").arg(key).arg(value).arg("PXAT").arg(until).query_async::<()>(&mut redis).await
        })
        .await;
    }

    /// Forgets the stored answer (a webhook said it changed); `true` when there was one.
    pub async fn delete(&self, scope: &str, id: &str) -> bool {
        let key = self.key("session", scope, id);
        let mut redis = self.manager.clone();
        self.run("del", async move { redis.del::<_, i64>(key).await }).await.unwrap_or(0) > 0
    }

    /// Remembers, for every replica, that `reference` (a payment, an escrow) names session
    /// `id`, for `ttl`.
    pub async fn add_reference(&self, scope: &str, reference: &str, id: &str, ttl: Duration) {
        let key = self.key("reference", scope, reference);
        let mut redis = self.manager.clone();
        let (id, seconds) = (id.to_owned(), i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        self.run("reference", async move {
            redis::pipe()
                .sadd(&key, id)
                .ignore()
                .expire(&key, seconds)
                .ignore()
                .query_async::<()>(&mut redis)
                .await
        })
        .await;
    }

    /// Some of the sessions any replica saw under `reference`: at most
    /// [`REFERENCES_READ_MAX`], each a plausible id (the set is sampled, never read whole).
    pub async fn references(&self, scope: &str, reference: &str) -> Vec<String> {
        let key = self.key("reference", scope, reference);
        let mut redis = self.manager.clone();
        let count = REFERENCES_READ_MAX;
        let mut ids = self
            .run("references", async move {
                redis::cmd("SRANDMEMBER").arg(key).arg(count).query_async::<Vec<String>>(&mut redis).await
            })
            .await
            .unwrap_or_default();
        ids.retain(|id| !id.is_empty() && id.len() <= REFERENCE_ID_MAX_BYTES);
        ids
    }

    /// Takes the lock on calling the provider for `scope` and `id`: `Some(true)` when taken
    /// (release it with [`Self::unlock`]), `Some(false)` when another replica holds it, `None`
    /// when Redis cannot say. It expires by itself after `ttl`, so a replica that died holding
    /// it blocks nobody for long.
    pub async fn lock(&self, scope: &str, id: &str, ttl: Duration) -> Option<bool> {
        let key = self.key("lock", scope, id);
        let mut redis = self.manager.clone();
        let token = self.replica.clone();
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run("lock", async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(millis)
                .query_async(&mut redis)
                .await?;
            if set.is_some() {
                return Ok(true);
            }
            // Held. A lock no replica could have written (no expiry, or one further off than a
            // lock lasts) would make every replica wait on each cold lookup of the session:
            // it is taken over. (Two replicas may both take it over; each then asks the
            // provider, as without Redis.)
            let left: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await?;
            if left == -1 || left > i64::try_from(millis).unwrap_or(i64::MAX) {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&token)
                    .arg("PX")
                    .arg(millis)
                    .query_async::<()>(&mut redis)
                    .await?;
                return Ok(true);
            }
            Ok(false)
        })
        .await
    }

    pub async fn unlock(&self, scope: &str, id: &str) {
        let key = self.key("lock", scope, id);
        let mut redis = self.manager.clone();
        let token = self.replica.clone();
        let mut invocation = self.unlock_script.key(key);
        invocation.arg(token);
        self.run("unlock", async move { invocation.invoke_async::<i64>(&mut redis).await }).await;
    }

    /// Tells every replica something (`message` is JSON the caller reads back in `listen`).
    pub async fn publish(&self, message: &[u8]) {
        let channel = self.channel();
        let mut redis = self.manager.clone();
        let message = message.to_vec();
        self.run("publish", async move { redis.publish::<_, _, ()>(channel, message).await }).await;
    }

    /// Whether pub/sub is subscribed now.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Receives what other replicas publish, for as long as the process runs: `on_message`
    /// gets each message; `on_resubscribed` runs after every reconnection but the first
    /// (messages may have been missed meanwhile).
    pub fn listen(
        self: &Arc<Self>,
        on_message: impl Fn(Vec<u8>) + Send + Sync + 'static,
        on_resubscribed: impl Fn() + Send + Sync + 'static,
    ) {
        let shared = self.clone();
        tokio::spawn(async move {
            let mut first = true;
            loop {
                let subscribed = async {
                    let mut pubsub = tokio::time::timeout(
                        shared.timeout.max(Duration::from_secs(1)),
                        shared.client.get_async_pubsub(),
                    )
                    .await
                    .ok()?
                    .ok()?;
                    pubsub.subscribe(shared.channel()).await.ok()?;
                    Some(pubsub)
                }
                .await;
                let Some(mut pubsub) = subscribed else {
                    shared.listening.store(false, Ordering::Relaxed);
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    continue;
                };
                shared.listening.store(true, Ordering::Relaxed);
                if !first {
                    tracing::info!("Redis pub/sub subscribed again; local answers dropped");
                    on_resubscribed();
                }
                first = false;
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    let bytes = message.get_payload_bytes();
                    // No replica writes more: whoever did is not read.
                    if bytes.len() <= MESSAGE_MAX_BYTES {
                        on_message(bytes.to_vec());
                    }
                }
                shared.listening.store(false, Ordering::Relaxed);
                tracing::warn!("Redis pub/sub connection lost; reconnecting");
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        });
    }
}

impl SharedQuota for Shared {
    fn take<'a>(
        &'a self,
        scope: &'a str,
        windows: &'a [(u32, Duration)],
        max_wait: Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<Taken>> + Send + 'a>> {
        Box::pin(async move {
            let mut invocation = self.take_script.prepare_invoke();
            invocation.key(self.key("hold", scope, ""));
            invocation.arg(u64::try_from(max_wait.as_micros()).unwrap_or(u64::MAX));
            for (index, &(count, period)) in windows.iter().enumerate() {
                let period = period.as_micros() as u64;
                let interval = period / u64::from(count.max(1));
                invocation.key(self.key("quota", scope, &index.to_string()));
                invocation.arg(interval).arg(period.saturating_sub(interval));
            }
            let mut redis = self.manager.clone();
            let (verdict, wait): (i64, i64) =
                self.run("quota", async move { invocation.invoke_async(&mut redis).await }).await?;
            let wait = Duration::from_micros(u64::try_from(wait).unwrap_or(0));
            Some(match verdict {
                0 => Taken::Now,
                1 => Taken::After(wait),
                _ => Taken::Held(wait),
            })
        })
    }

    fn hold<'a>(
        &'a self,
        scope: &'a str,
        wait: Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let key = self.key("hold", scope, "");
            let mut redis = self.manager.clone();
            let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
            let mut invocation = self.hold_script.key(key);
            invocation.arg(micros);
            self.run("hold", async move { invocation.invoke_async::<i64>(&mut redis).await }).await;
        })
    }
}
