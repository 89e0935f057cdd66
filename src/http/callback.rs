//! Subscriptions over HTTP callbacks: Apollo's `callback/1.0`, which Apollo Router and Hive
//! Router speak to subgraphs. The router POSTs the subscription to `/graphql` with
//! `Accept: application/json;callbackSpec=1.0` and `extensions.subscription` (`callbackUrl`,
//! `subscriptionId`, `verifier`, `heartbeatIntervalMs`). The gateway POSTs a `check` to the
//! callback URL and answers `{"data": null}` only once the router confirmed it (204 with
//! `subscription-protocol: callback/1.0`); then each answer goes as a `next`, a `check` every
//! heartbeat interval, and `complete` ends it (with `errors` when it failed). A 404 to any of
//! them means the router dropped the subscription: it ends here too, as does any other answer
//! that is not a success (the protocol's "unexpected error").
//!
//! Owns: who may open one (the router, by its shared secret, and only to a URL under
//! GATEWAY_SUBSCRIPTION_CALLBACK_URLS: a callback URL is a place this gateway will POST to),
//! the extension's bounds, how many run at once, each POST's timeout, and what a slow router
//! gets (the latest answer, not a queue). Each runs as an SSE stream does (`streams`): a stream
//! slot, the per-connection watch budget, the pipeline (and so its trail), the end when the
//! token expires, and at shutdown a `complete` telling the router to subscribe again.

use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::{ErrorExtensionValues, ServerError};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Interval, MissedTickBehavior};

use crate::domain::Secret;
use crate::graphql::pipeline::{client_in, never_ran};
use crate::http::refusal::{refuse, Code};
use crate::http::streams::{token_expired, until, Slot, Streams};
use crate::net::{plain_http_url, NotPlain};
use crate::telemetry;
use crate::telemetry::metrics::Metrics;

/// The header every POST to a callback URL carries, and the router's confirmation of a
/// `check` with it; the protocol's one version.
const PROTOCOL_HEADER: &str = "subscription-protocol";
const PROTOCOL: &str = "callback/1.0";

/// The longest `subscriptionId`: Hive Router sends ULIDs (26 characters), Apollo Router UUIDs.
const MAX_ID_BYTES: usize = 128;
/// The longest `verifier` (Hive Router: a ULID).
const MAX_VERIFIER_BYTES: usize = 256;
/// The longest `callbackUrl`.
const MAX_URL_BYTES: usize = 2048;
/// `heartbeatIntervalMs`, when not 0 (no heartbeat): more often than four times a second is a
/// mistake that would cost a POST per subscription that often; an hour is far past any
/// router's default (5 s) and keeps the timer's deadline in range.
const HEARTBEAT_MS: RangeInclusive<u64> = 250..=3_600_000;
/// POSTs in a row that reached no router (timeout, connection error) before a subscription
/// is given up: one may be a blip, three are a router that is gone.
const UNREACHABLE_MAX: u32 = 3;

/// Callback subscriptions, from the configuration.
#[derive(Clone, Debug)]
pub struct CallbackConfig {
    /// Prefixes a callback URL must be under (GATEWAY_SUBSCRIPTION_CALLBACK_URLS); none:
    /// callback subscriptions are off.
    pub allowed: Vec<Url>,
    /// The longest one POST to a callback URL may take.
    pub timeout: Duration,
    /// Callback subscriptions running at once.
    pub max_subscriptions: usize,
}

/// What callback subscriptions share.
#[derive(Clone)]
pub struct Callbacks {
    /// Their slots, budget, pipeline and shutdown are the streams'.
    streams: Streams,
    /// The shared client: it follows no redirect, so a POST goes to the allowed URL or nowhere.
    http: reqwest::Client,
    config: Arc<CallbackConfig>,
    /// One permit per running callback subscription.
    running: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Callbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Callbacks {
    pub fn new(
        streams: Streams,
        http: reqwest::Client,
        config: CallbackConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let running = Arc::new(Semaphore::new(config.max_subscriptions));
        Self { streams, http, config: Arc::new(config), running, metrics }
    }

    /// Resolves once no callback subscription runs: at shutdown each sends its `complete`
    /// first, and the process must not exit under it.
    pub fn ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let running = self.running.clone();
        let all = u32::try_from(self.config.max_subscriptions).unwrap_or(u32::MAX);
        async move {
            let _ = running.acquire_many_owned(all).await;
        }
    }

    /// Opens the callback subscription `request` asks for (its client in its data). Refused,
    /// without any POST, unless the router sent it, its extension is well formed, its callback
    /// URL is allowed and there is room; refused too when the router does not confirm the
    /// `check`. Then answered `{"data": null}` and run in the background until it ends.
    pub async fn subscribe(&self, mut request: async_graphql::Request) -> Response {
        if !client_in(&request.data).is_some_and(|client| client.via_router) {
            return refuse(
                Code::CallbackForbidden,
                "callback subscriptions are taken only from the router (its `Router-Authorization` \
                 secret, GATEWAY_ROUTER_SECRET): a callback URL is a place this gateway POSTs to",
            );
        }
        // Taken out of the request: the verifier goes nowhere but to the callback URL.
        let target = match Target::from_extension(request.extensions.remove("subscription")) {
            Ok(target) => target,
            Err(reason) => return refuse(Code::CallbackMalformed, &reason),
        };
        if let Err(reason) = self.allows(&target.url) {
            return refuse(Code::CallbackUrlNotAllowed, reason);
        }
        let Ok(permit) = self.running.clone().try_acquire_owned() else {
            return refuse(
                Code::SubscriptionsFull,
                &format!(
                    "{} callback subscriptions run, the most this gateway serves \
                     (GATEWAY_MAX_CALLBACK_SUBSCRIPTIONS); try another replica or later",
                    self.config.max_subscriptions
                ),
            );
        };
        let Some(slot) = self.streams.open("callback") else { return self.streams.full() };
        let callback = Arc::new(Callback {
            http: self.http.clone(),
            timeout: self.config.timeout,
            metrics: self.metrics.clone(),
            target,
        });
        // The protocol: confirmed before the router is answered.
        let check = callback.message(Action::Check, None, None);
        let delivery = callback.post(Action::Check, check).await;
        if !matches!(delivery, Delivery::Accepted) {
            return refuse(Code::CallbackCheckFailed, &delivery.check_failure(self.config.timeout));
        }
        let (answers, expires_at) = self.streams.answers(request);
        let running = callback.run(answers, expires_at, self.streams.closing(), (slot, permit));
        // Its logs and its trail keep the request's id.
        match telemetry::request_id() {
            Some(id) => tokio::spawn(telemetry::with_request_id(id, running)),
            None => tokio::spawn(running),
        };
        (StatusCode::OK, Json(serde_json::json!({"data": null}))).into_response()
    }

    /// Whether the gateway may POST to `url`: it is under an allowed prefix.
    fn allows(&self, url: &Url) -> Result<(), &'static str> {
        if self.config.allowed.is_empty() {
            return Err("callback subscriptions are off here: GATEWAY_SUBSCRIPTION_CALLBACK_URLS names no \
                        callback URL");
        }
        if self.config.allowed.iter().any(|prefix| is_under(url, prefix)) {
            Ok(())
        } else {
            Err("the callbackUrl is under none of GATEWAY_SUBSCRIPTION_CALLBACK_URLS: this gateway POSTs \
                 nowhere else")
        }
    }
}

/// Whether a request asks for a callback subscription: an `Accept` media range with the
/// parameter `callbackSpec=1.0`.
pub fn wanted(headers: &HeaderMap) -> bool {
    headers.get_all(ACCEPT).iter().filter_map(|value| value.to_str().ok()).any(|accept| {
        accept.split(',').any(|range| {
            range.split(';').skip(1).any(|parameter| {
                parameter.split_once('=').is_some_and(|(name, value)| {
                    name.trim().eq_ignore_ascii_case("callbackSpec")
                        && value.trim().trim_matches('"') == "1.0"
                })
            })
        })
    })
}

/// `url` is under `prefix`: the same scheme, host and port, and a path that is the prefix's
/// or goes on below it (`/callback` covers `/callback/01J…`, not `/callbacks`).
fn is_under(url: &Url, prefix: &Url) -> bool {
    let (path, base) = (url.path(), prefix.path());
    url.scheme() == prefix.scheme()
        && url.host() == prefix.host()
        && url.port_or_known_default() == prefix.port_or_known_default()
        && path
            .strip_prefix(base)
            .is_some_and(|rest| base.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
}

/// `extensions.subscription` as the router sends it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Extension {
    callback_url: String,
    subscription_id: String,
    verifier: Secret,
    heartbeat_interval_ms: u64,
}

/// Where one subscription's messages go, and what proves them to the router.
#[derive(Debug)]
struct Target {
    url: Url,
    id: String,
    /// Never logged: it lets whoever holds it speak for this gateway about the subscription.
    verifier: Secret,
    /// `None`: no heartbeat.
    heartbeat: Option<Duration>,
}

impl Target {
    fn from_extension(extension: Option<async_graphql::Value>) -> Result<Target, String> {
        const SHAPE: &str = "{callbackUrl, subscriptionId, verifier, heartbeatIntervalMs}";
        let Some(extension) = extension else {
            return Err(format!(
                "a callback subscription (Accept: application/json;callbackSpec=1.0) carries \
                 extensions.subscription: {SHAPE}"
            ));
        };
        let extension: Extension = async_graphql::from_value(extension)
            .map_err(|error| format!("extensions.subscription is not {SHAPE}: {error}"))?;
        let id = extension.subscription_id;
        if id.is_empty() || id.len() > MAX_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("subscriptionId must be 1 to {MAX_ID_BYTES} visible ASCII characters"));
        }
        let verifier = extension.verifier;
        if verifier.expose().is_empty() || verifier.expose().len() > MAX_VERIFIER_BYTES {
            return Err(format!("verifier must be 1 to {MAX_VERIFIER_BYTES} bytes"));
        }
        let heartbeat = match extension.heartbeat_interval_ms {
            0 => None,
            ms if HEARTBEAT_MS.contains(&ms) => Some(Duration::from_millis(ms)),
            _ => {
                return Err(format!(
                    "heartbeatIntervalMs must be 0 (no heartbeat) or from {} to {} milliseconds",
                    HEARTBEAT_MS.start(),
                    HEARTBEAT_MS.end()
                ))
            }
        };
        if extension.callback_url.len() > MAX_URL_BYTES {
            return Err(format!("callbackUrl is longer than {MAX_URL_BYTES} bytes"));
        }
        let url = plain_http_url(&extension.callback_url).map_err(|problem| match problem {
            NotPlain::Unparsable(error) => format!("callbackUrl is not a URL ({error})"),
            _ => "callbackUrl must be an http:// or https:// URL with a host, and no credentials, \
                  query or fragment"
                .into(),
        })?;
        Ok(Target { url, id, verifier, heartbeat })
    }
}

/// A message's `action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Check,
    Next,
    Complete,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Check => "check",
            Action::Next => "next",
            Action::Complete => "complete",
        }
    }
}

/// A message to the callback URL.
#[derive(Serialize)]
struct Message<'a> {
    kind: &'static str,
    action: &'static str,
    id: &'a str,
    verifier: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a async_graphql::Response>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [ServerError]>,
}

/// How the router took one POST.
#[derive(Clone, Copy, Debug)]
enum Delivery {
    /// 2xx (a `check`: 204 with `subscription-protocol: callback/1.0`).
    Accepted,
    /// 404: the router has no such subscription (any more).
    Gone,
    /// Any other answer, a redirect included (none is followed).
    Refused(StatusCode),
    /// No answer within the timeout, or no connection.
    Unreachable { timed_out: bool },
}

impl Delivery {
    fn of(action: Action, response: &reqwest::Response) -> Delivery {
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Delivery::Gone;
        }
        let confirmed = response
            .headers()
            .get(PROTOCOL_HEADER)
            .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(PROTOCOL.as_bytes()));
        let accepted = match action {
            Action::Check => status == StatusCode::NO_CONTENT && confirmed,
            Action::Next | Action::Complete => status.is_success(),
        };
        if accepted {
            Delivery::Accepted
        } else {
            Delivery::Refused(status)
        }
    }

    fn label(self) -> &'static str {
        match self {
            Delivery::Accepted => "accepted",
            Delivery::Gone => "gone",
            Delivery::Refused(_) => "refused",
            Delivery::Unreachable { .. } => "unreachable",
        }
    }

    /// Why a subscription's first `check` failed, for the router's error.
    fn check_failure(self, timeout: Duration) -> String {
        match self {
            Delivery::Accepted => "the router confirmed the `check`".into(),
            Delivery::Gone => "the router answered the callback `check` with 404: it has no subscription \
                               with this subscriptionId and verifier"
                .into(),
            Delivery::Refused(status) => format!(
                "the router answered the callback `check` with {status}, not 204 with \
                 `subscription-protocol: callback/1.0`"
            ),
            Delivery::Unreachable { timed_out: true } => format!(
                "the callbackUrl did not answer the `check` within {} (GATEWAY_CALLBACK_TIMEOUT)",
                humantime::format_duration(timeout)
            ),
            Delivery::Unreachable { timed_out: false } => {
                "the callbackUrl could not be reached for the `check`".into()
            }
        }
    }
}

/// One callback subscription: where its messages go.
struct Callback {
    http: reqwest::Client,
    timeout: Duration,
    metrics: Arc<Metrics>,
    target: Target,
}

impl Callback {
    /// The body of a message about this subscription.
    fn message(
        &self,
        action: Action,
        payload: Option<&async_graphql::Response>,
        errors: Option<&[ServerError]>,
    ) -> Bytes {
        let message = |payload, errors| Message {
            kind: "subscription",
            action: action.as_str(),
            id: &self.target.id,
            verifier: self.target.verifier.expose(),
            payload,
            errors,
        };
        match serde_json::to_vec(&message(payload, errors)) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                tracing::error!(%error, "a callback message could not be serialised");
                let unwritten = async_graphql::Response::from_errors(vec![ServerError::new(
                    "the result could not be serialised",
                    None,
                )]);
                let body = message(payload.map(|_| &unwritten), errors.map(|_| &unwritten.errors[..]));
                Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
            }
        }
    }

    /// POSTs `body` (an `action` message) to the callback URL, within the timeout.
    async fn post(&self, action: Action, body: Bytes) -> Delivery {
        let sent = self
            .http
            .post(self.target.url.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header(PROTOCOL_HEADER, PROTOCOL)
            .body(body)
            .send()
            .await;
        let delivery = match sent {
            Ok(response) => Delivery::of(action, &response),
            Err(error) => Delivery::Unreachable { timed_out: error.is_timeout() },
        };
        self.metrics.callback_messages.with_label_values(&[action.as_str(), delivery.label()]).inc();
        delivery
    }

    /// [`Self::post`] as a task of its own, handing back what it sent (to send again).
    fn send(self: &Arc<Self>, action: Action, body: Bytes) -> BoxFuture<'static, (Bytes, Delivery)> {
        let callback = self.clone();
        async move {
            let delivery = callback.post(action, body.clone()).await;
            (body, delivery)
        }
        .boxed()
    }

    async fn complete(&self, errors: Option<&[ServerError]>) {
        self.post(Action::Complete, self.message(Action::Complete, None, errors)).await;
    }

    /// Runs the subscription to its end, holding its slot and its permit until then.
    async fn run(
        self: Arc<Self>,
        answers: BoxStream<'static, async_graphql::Response>,
        expires_at: Option<Instant>,
        closing: impl Future<Output = ()>,
        held: (Slot, OwnedSemaphorePermit),
    ) {
        let ended = self.serve(answers, expires_at, closing).await;
        drop(held);
        tracing::debug!(subscription = %self.target.id, ended, "callback subscription ended");
    }

    /// Sends each answer as a `next` and a `check` every heartbeat interval, then `complete`;
    /// says why it ended. The next answer is taken only once the `next` before it is done, as a
    /// WebSocket or SSE writer takes it: meanwhile the live hub keeps each watched session's
    /// latest state, so a slow router gets the latest answer, not a queue, and an update of one
    /// aliased session is never dropped for another's. A `check` has its own lane: a slow
    /// `next` does not hold back the heartbeat the router counts.
    async fn serve(
        self: &Arc<Self>,
        mut answers: BoxStream<'static, async_graphql::Response>,
        expires_at: Option<Instant>,
        closing: impl Future<Output = ()>,
    ) -> &'static str {
        let mut heartbeat = self.target.heartbeat.map(|every| {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticks
        });
        let check = self.message(Action::Check, None, None);
        // The `next` in flight (sent again when its router did not answer).
        let mut sending: Option<BoxFuture<'static, (Bytes, Delivery)>> = None;
        let mut checking: Option<BoxFuture<'static, (Bytes, Delivery)>> = None;
        // No answer will come any more; with the errors of one that failed the subscription.
        let mut finished = false;
        let mut failed: Option<Vec<ServerError>> = None;
        let mut unreachable = 0;
        tokio::pin!(closing);
        let expiry = until(expires_at);
        tokio::pin!(expiry);
        loop {
            if finished && sending.is_none() {
                break;
            }
            let delivery = tokio::select! {
                answer = answers.next(), if !finished && sending.is_none() => {
                    match answer {
                        // A request that never ran (refused, not valid) fails the
                        // subscription: its errors go with `complete`.
                        Some(answer) if never_ran(&answer) => {
                            failed = Some(answer.errors);
                            finished = true;
                        }
                        Some(answer) => {
                            sending = Some(self.send(Action::Next, self.message(Action::Next, Some(&answer), None)));
                        }
                        None => finished = true,
                    }
                    continue;
                }
                (body, delivery) = in_flight(&mut sending) => {
                    sending = matches!(delivery, Delivery::Unreachable { .. }).then(|| self.send(Action::Next, body));
                    delivery
                }
                () = tick(&mut heartbeat), if checking.is_none() => {
                    checking = Some(self.send(Action::Check, check.clone()));
                    continue;
                }
                (_, delivery) = in_flight(&mut checking) => {
                    checking = None;
                    delivery
                }
                () = &mut expiry => {
                    drop(sending.take());
                    self.complete(Some(&[token_expired()])).await;
                    return "the token expired";
                }
                () = &mut closing => {
                    drop(sending.take());
                    self.complete(Some(&[shutting_down()])).await;
                    return "shutdown";
                }
            };
            match delivery {
                Delivery::Accepted => unreachable = 0,
                Delivery::Unreachable { .. } => {
                    unreachable += 1;
                    if unreachable >= UNREACHABLE_MAX {
                        return "the router is unreachable";
                    }
                }
                Delivery::Gone => return "the router dropped it (404)",
                Delivery::Refused(_) => return "the router refused a message",
            }
        }
        self.complete(failed.as_deref()).await;
        "completed"
    }
}

/// What a subscription ends with when the gateway stops: the router's client is told to
/// subscribe again, which another replica serves.
fn shutting_down() -> ServerError {
    let mut error = ServerError::new("the gateway is shutting down: subscribe again", None);
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", "SHUTTING_DOWN");
    error.extensions = Some(extensions);
    error
}

/// The output of the POST in flight, if any; never without one.
async fn in_flight<T>(post: &mut Option<BoxFuture<'static, T>>) -> T {
    match post {
        Some(post) => post.await,
        None => std::future::pending().await,
    }
}

/// The next heartbeat; never without one.
async fn tick(heartbeat: &mut Option<Interval>) {
    match heartbeat {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_url_is_under_a_prefix_only_by_scheme_host_port_and_whole_path_segments() {
        let prefix = Url::parse("http://router.internal:4000/callback").unwrap();
        let cases = [
            ("http://router.internal:4000/callback/01J9ZQ", true),
            ("http://router.internal:4000/callback", true),
            ("http://ROUTER.internal:4000/callback/x", true),
            ("http://router.internal:4000/callbacks/x", false),
            ("http://router.internal:4000/other/callback/x", false),
            ("http://router.internal:4000/callback/../admin", false),
            ("http://router.internal:40001/callback/x", false),
            ("http://router.internal/callback/x", false),
            ("https://router.internal:4000/callback/x", false),
            ("http://router.internal.evil.example:4000/callback/x", false),
        ];
        for (url, under) in cases {
            assert_eq!(is_under(&Url::parse(url).unwrap(), &prefix), under, "{url}");
        }
        let root = Url::parse("https://router.internal").unwrap();
        assert!(is_under(&Url::parse("https://router.internal:443/cb/1").unwrap(), &root));
    }

    #[test]
    fn the_callback_accept_is_told_apart() {
        let with = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, accept.parse().unwrap());
            wanted(&headers)
        };
        assert!(with("application/json;callbackSpec=1.0"));
        assert!(with("text/html, application/json; callbackspec=\"1.0\""));
        assert!(!with("application/json"));
        assert!(!with("application/json;callbackSpec=2.0"));
        assert!(!with("multipart/mixed;subscriptionSpec=1.0"));
    }

    #[test]
    fn the_verifier_never_debug_prints() {
        let target = Target {
            url: Url::parse("http://router/callback/1").unwrap(),
            id: "1".into(),
            verifier: Secret::new("verifier-value"),
            heartbeat: None,
        };
        assert!(!format!("{target:?}").contains("verifier-value"));
    }
}
