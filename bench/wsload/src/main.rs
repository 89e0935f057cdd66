//! wsload: the load client of bench/bench.py's section (l), live sessions at 10,000 subscribers.
//!
//! One process on the load core, one thread:
//! 1. serves a Dodo stand-in on 127.0.0.1 (`GET /checkouts/{id}`, the session's current status,
//!    every request counted; the same JSON as bench.py's `FakeDodo`) and prints its URL as the
//!    first line of stdout, `{"dodo_url": "http://127.0.0.1:…"}`, so the gateway can be started
//!    against it;
//! 2. reads one JSON line from stdin (unless `--ws-url` and `--webhook-url` were given):
//!    `{"ws_url": "ws://…/graphql", "webhook_url": "http://…/webhooks/dodo", "pids": {"gateway": 123}}`.
//!    `ws_url` is where subscribers connect (the gateway, or a router in front of it);
//!    `webhook_url` is the gateway's webhook route; `pids` are the processes whose resident
//!    size is read from /proc;
//! 3. opens `--subscribers` graphql-transport-ws connections, one subscription each, subscriber
//!    i watching session i mod `--sessions`, and waits for every first answer (resident sizes
//!    read before, at a tenth, and after);
//! 4. waits `--idle-seconds` with no webhook and counts the stand-in's requests meanwhile (a
//!    session kept current by webhooks must not be polled);
//! 5. runs `--rounds` rounds: flips the status of the round's sessions in the stand-in, sends
//!    each a signed Dodo webhook (Standard Webhooks, as bench.py's `signed_webhook`), and times
//!    every subscriber of those sessions from its session's webhook being sent to its next
//!    message parsed;
//! 6. prints one JSON object as the last line of stdout (progress goes to stderr).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

const QUERY: &str = "subscription($id: ID!) { checkoutSessionUpdated(provider: DODO, id: $id) \
                     { ... on CheckoutSession { status } } }";

/// Dodo statuses the stand-in alternates between: each flip is a change the gateway sends on
/// (they normalise to ACTION_REQUIRED and PROCESSING). A session starts at index 1, as FakeDodo.
const STATUSES: [&str; 2] = ["requires_customer_action", "processing"];

#[derive(Parser, Debug)]
#[command(about = "graphql-transport-ws subscribers, a Dodo stand-in and signed webhooks, timed")]
struct Args {
    /// WebSocket connections, one subscription each.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Sessions the subscribers are spread over (subscriber i watches session i mod this).
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Webhook rounds.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Sessions flipped and sent a webhook each round (default: all); taken in turn.
    #[arg(long)]
    webhooks_per_round: Option<usize>,
    /// Least time between the starts of two rounds. The gateway refetches a session for
    /// webhooks at most once a second (REFETCH_INTERVAL in src/sessions/mod.rs): rounds closer
    /// than that would time the gateway's wait, not its delivery.
    #[arg(long, default_value_t = 1500)]
    round_interval_ms: u64,
    /// How long to wait for one round's deliveries before counting the rest as missing.
    #[arg(long, default_value_t = 10)]
    round_timeout_seconds: u64,
    /// The window with no webhook in which the stand-in's requests are counted.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// WebSocket handshakes in flight at once while subscribing.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Keep-alive connections the webhooks of one round are sent over.
    #[arg(long, default_value_t = 8)]
    webhook_connections: usize,
    /// The Dodo webhook secret the gateway was given (`whsec_` and base64 of the key).
    #[arg(long)]
    webhook_secret: String,
    /// Session ids are `<prefix>_<n>`.
    #[arg(long, default_value = "cks_bench_ws")]
    session_prefix: String,
    /// Where subscribers connect; read from stdin when absent.
    #[arg(long)]
    ws_url: Option<String>,
    /// The gateway's `POST /webhooks/dodo`; read from stdin when absent.
    #[arg(long)]
    webhook_url: Option<String>,
    /// `name=pid` of a process whose resident size is reported (several allowed).
    #[arg(long = "pid", value_parser = parse_pid)]
    pids: Vec<(String, u32)>,
    /// Where the stand-in listens (port 0: any free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    dodo_listen: SocketAddr,
}

fn parse_pid(text: &str) -> Result<(String, u32), String> {
    let (name, pid) = text.split_once('=').ok_or("expected name=pid")?;
    Ok((name.to_owned(), pid.parse().map_err(|_| "pid is not a number")?))
}

/// What the subscribers, the stand-in and the rounds share.
struct Shared {
    /// Per session: index into STATUSES the stand-in answers with.
    status: Vec<AtomicU8>,
    /// Requests the stand-in has answered.
    upstream_requests: AtomicU64,
    /// Per session: when its current round's webhook was sent (ns since `epoch`); 0 = none yet.
    sent_at: Vec<AtomicU64>,
    epoch: Instant,
    /// The round under way (1-based; 0 before the first).
    round: AtomicUsize,
    /// Latencies (ns) recorded in the round under way.
    latencies: Mutex<Vec<u64>>,
    delivered: AtomicUsize,
    /// Messages past the one expected per subscriber in a round.
    extra: AtomicUsize,
    /// Updates whose status is not a change from the subscriber's previous one, or unreadable.
    wrong: AtomicUsize,
    /// Subscribers whose stream ended (error, complete, close) after their first answer.
    ended: AtomicUsize,
    delivered_notify: Notify,
    /// Subscribers whose first answer came.
    ready: AtomicUsize,
    ready_notify: Notify,
    /// Set by the main task: subscribers stop counting once the run is over.
    done: AtomicBool,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    match runtime.block_on(run(args)) {
        Ok(report) => println!("{report}"),
        Err(error) => {
            println!("{}", json!({"error": error}));
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> Result<Value, String> {
    if args.subscribers == 0 || args.sessions == 0 || args.sessions > args.subscribers {
        return Err("need 1 ≤ sessions ≤ subscribers".into());
    }
    let key = webhook_key(&args.webhook_secret)?;
    let shared = Arc::new(Shared {
        status: (0..args.sessions).map(|_| AtomicU8::new(1)).collect(),
        upstream_requests: AtomicU64::new(0),
        sent_at: (0..args.sessions).map(|_| AtomicU64::new(0)).collect(),
        epoch: Instant::now(),
        round: AtomicUsize::new(0),
        latencies: Mutex::new(Vec::with_capacity(args.subscribers)),
        delivered: AtomicUsize::new(0),
        extra: AtomicUsize::new(0),
        wrong: AtomicUsize::new(0),
        ended: AtomicUsize::new(0),
        delivered_notify: Notify::new(),
        ready: AtomicUsize::new(0),
        ready_notify: Notify::new(),
        done: AtomicBool::new(false),
    });

    let listener = TcpListener::bind(args.dodo_listen).await.map_err(|e| format!("stand-in bind: {e}"))?;
    let dodo_url = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
    tokio::spawn(serve_dodo(listener, shared.clone(), args.session_prefix.clone()));
    println!("{}", json!({"dodo_url": dodo_url}));

    let (ws_url, webhook_url, pids) = targets(&args).await?;
    let webhook_addr = http_authority(&webhook_url)?;
    let webhook_path = webhook_url.splitn(4, '/').nth(3).map_or("/".to_owned(), |p| format!("/{p}"));

    // Subscribing: a tenth, then the rest, resident sizes read before and between.
    let mut rss: HashMap<String, Vec<u64>> =
        pids.iter().map(|(name, _)| (name.clone(), Vec::new())).collect();
    let sample = |rss: &mut HashMap<String, Vec<u64>>| {
        for (name, pid) in &pids {
            rss.get_mut(name).expect("named").push(vm_rss(*pid).unwrap_or(0));
        }
    };
    sample(&mut rss);
    let tenth = (args.subscribers / 10).max(1);
    let started = Instant::now();
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let spawn_range = |from: usize, to: usize| {
        for index in from..to {
            let session = index % args.sessions;
            let (url, shared, permits, failures) =
                (ws_url.clone(), shared.clone(), permits.clone(), failures.clone());
            let id = format!("{}_{session}", args.session_prefix);
            tokio::spawn(async move {
                if let Err(error) = subscriber(&url, &id, session, &shared, permits).await {
                    failures.lock().expect("lock").push(error);
                    // A failed subscriber is counted as answered so the wait below ends.
                    shared.ready.fetch_add(1, Ordering::SeqCst);
                    shared.ready_notify.notify_one();
                }
            });
        }
    };
    spawn_range(0, tenth);
    wait_ready(&shared, tenth, Duration::from_secs(120)).await?;
    settle().await;
    sample(&mut rss);
    spawn_range(tenth, args.subscribers);
    wait_ready(&shared, args.subscribers, Duration::from_secs(300)).await?;
    let subscribe_seconds = started.elapsed().as_secs_f64();
    let failed = std::mem::take(&mut *failures.lock().expect("lock"));
    if !failed.is_empty() {
        let mut kinds: HashMap<&str, usize> = HashMap::new();
        for error in &failed {
            *kinds.entry(error.as_str()).or_default() += 1;
        }
        return Err(format!("{} of {} subscribers failed: {kinds:?}", failed.len(), args.subscribers));
    }
    settle().await;
    sample(&mut rss);
    let subscribing_requests = shared.upstream_requests.load(Ordering::SeqCst);
    eprintln!(
        "wsload: {} subscribers on {} sessions in {subscribe_seconds:.1}s",
        args.subscribers, args.sessions
    );

    // Idle: nothing should call the provider for sessions webhooks keep current.
    let before_idle = shared.upstream_requests.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let idle_requests = shared.upstream_requests.load(Ordering::SeqCst) - before_idle;

    // Rounds.
    let per_round = args.webhooks_per_round.unwrap_or(args.sessions).clamp(1, args.sessions);
    let subscribers_of = |session: usize| (args.subscribers - session).div_ceil(args.sessions);
    let mut all = Vec::with_capacity(args.rounds * args.subscribers);
    let mut per_round_p99 = Vec::new();
    let (mut expected, mut missing) = (0usize, 0usize);
    let before_rounds = shared.upstream_requests.load(Ordering::SeqCst);
    let cpu_before: Vec<(String, f64)> = cpu_of(&pids);
    let rounds_started = Instant::now();
    let mut delivery_wall = 0.0;
    for round in 0..args.rounds {
        let round_started = Instant::now();
        let sessions: Vec<usize> = (0..per_round).map(|k| (round * per_round + k) % args.sessions).collect();
        let want: usize = sessions.iter().map(|&s| subscribers_of(s)).sum();
        shared.latencies.lock().expect("lock").clear();
        shared.delivered.store(0, Ordering::SeqCst);
        shared.round.store(round + 1, Ordering::SeqCst);
        for &session in &sessions {
            shared.status[session].fetch_xor(1, Ordering::SeqCst);
        }
        send_webhooks(&shared, &key, webhook_addr, &webhook_path, &args, &sessions).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.round_timeout_seconds);
        while shared.delivered.load(Ordering::SeqCst) < want {
            let wait = shared.delivered_notify.notified();
            if shared.delivered.load(Ordering::SeqCst) >= want {
                break;
            }
            if tokio::time::timeout_at(deadline, wait).await.is_err() {
                break;
            }
        }
        delivery_wall += round_started.elapsed().as_secs_f64();
        let mut latencies = std::mem::take(&mut *shared.latencies.lock().expect("lock"));
        expected += want;
        missing += want.saturating_sub(latencies.len());
        latencies.sort_unstable();
        per_round_p99.push(ms(percentile(&latencies, 0.99)));
        eprintln!(
            "wsload: round {}: {} of {want} told, p50 {:.1} ms, p99 {:.1} ms",
            round + 1,
            latencies.len(),
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99))
        );
        all.extend(latencies);
        let next = round_started + Duration::from_millis(args.round_interval_ms);
        tokio::time::sleep_until(next.into()).await;
    }
    let rounds_seconds = rounds_started.elapsed().as_secs_f64();
    let cpu_after = cpu_of(&pids);
    let rounds_requests = shared.upstream_requests.load(Ordering::SeqCst) - before_rounds;
    sample(&mut rss);
    shared.done.store(true, Ordering::SeqCst);
    all.sort_unstable();

    let memory: serde_json::Map<String, Value> = rss
        .iter()
        .map(|(name, at)| {
            let (before, tenth_rss, after, after_rounds) = (at[0], at[1], at[2], at[3]);
            let per = after.saturating_sub(before) as f64 / args.subscribers as f64;
            let rest = (args.subscribers - tenth) as f64;
            let marginal = (after.saturating_sub(tenth_rss) as f64 / rest.max(1.0)).round();
            (
                name.clone(),
                json!({
                    "rss_before": before, "rss_at_tenth": tenth_rss, "rss_after": after,
                    "rss_after_rounds": after_rounds,
                    "bytes_per_subscriber": per.round(),
                    "marginal_bytes_per_subscriber": marginal,
                    "bytes_per_subscriber_after_rounds":
                        (after_rounds.saturating_sub(before) as f64 / args.subscribers as f64).round(),
                }),
            )
        })
        .collect();
    let cpu: serde_json::Map<String, Value> = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|((name, before), (_, after))| {
            (name.clone(), json!(((after - before) * 1000.0).round() / 1000.0))
        })
        .collect();
    Ok(json!({
        "ws_url": ws_url,
        "subscribers": args.subscribers,
        "sessions": args.sessions,
        "rounds": args.rounds,
        "webhooks_per_round": per_round,
        "subscribe_seconds": round3(subscribe_seconds),
        "memory": memory,
        "idle": {"seconds": args.idle_seconds, "upstream_requests": idle_requests},
        "upstream_requests": {"subscribing": subscribing_requests, "rounds": rounds_requests},
        "latency_ms": {
            "p50": ms(percentile(&all, 0.5)),
            "p90": ms(percentile(&all, 0.9)),
            "p99": ms(percentile(&all, 0.99)),
            "max": ms(all.last().copied().unwrap_or(0)),
        },
        "per_round_p99_ms": per_round_p99,
        "deliveries": all.len(),
        "expected_deliveries": expected,
        "missing": missing,
        "extra": shared.extra.load(Ordering::SeqCst),
        "wrong": shared.wrong.load(Ordering::SeqCst),
        "ended": shared.ended.load(Ordering::SeqCst),
        "rounds_seconds": round3(rounds_seconds),
        "delivery_seconds": round3(delivery_wall),
        // CPU seconds each process used over the rounds (this one included as "load"): the
        // client is not the bottleneck while its share stays well under the wall time.
        "cpu_seconds_during_rounds": cpu,
        "load_rss": vm_rss(std::process::id()).unwrap_or(0),
    }))
}

/// Where to connect and whom to measure: from the arguments, else from one stdin line.
async fn targets(args: &Args) -> Result<(String, String, Vec<(String, u32)>), String> {
    if let (Some(ws), Some(webhook)) = (&args.ws_url, &args.webhook_url) {
        return Ok((ws.clone(), webhook.clone(), args.pids.clone()));
    }
    let mut line = String::new();
    BufReader::new(tokio::io::stdin()).read_line(&mut line).await.map_err(|e| format!("stdin: {e}"))?;
    let given: Value = serde_json::from_str(&line).map_err(|e| format!("stdin is not JSON: {e}"))?;
    let text = |name: &str| given[name].as_str().map(str::to_owned).ok_or(format!("stdin has no {name}"));
    let mut pids = args.pids.clone();
    if let Some(named) = given["pids"].as_object() {
        for (name, pid) in named {
            let pid = pid.as_u64().and_then(|p| u32::try_from(p).ok()).ok_or("a pid is not a number")?;
            pids.push((name.clone(), pid));
        }
    }
    Ok((text("ws_url")?, text("webhook_url")?, pids))
}

/// Lets the allocator's deferred work and the last writes land before a resident size is read.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn wait_ready(shared: &Shared, count: usize, within: Duration) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let wait = shared.ready_notify.notified();
        let ready = shared.ready.load(Ordering::SeqCst);
        if ready >= count {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, wait).await.is_err() {
            return Err(format!("only {ready} of {count} subscribers had a first answer in {within:?}"));
        }
    }
}

/// One subscriber: connect, `connection_init`, subscribe, the first answer; then every update
/// timed against its session's webhook.
async fn subscriber(
    url: &str,
    id: &str,
    session: usize,
    shared: &Shared,
    permits: Arc<Semaphore>,
) -> Result<(), String> {
    let permit = permits.acquire_owned().await.map_err(|_| "closed")?;
    let mut request = url.into_client_request().map_err(|e| format!("url: {e}"))?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "graphql-transport-ws".parse().expect("a header value"));
    // Small buffers: 10,000 sockets at tungstenite's 128 KiB read buffer would be 1.3 GB here,
    // and the client must not be what runs short.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(60),
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map_err(|e| format!("handshake: {}", short(&e.to_string())))?;
    ws.send(Message::text(r#"{"type":"connection_init","payload":{}}"#))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let subscribe =
        json!({"id": "1", "type": "subscribe", "payload": {"query": QUERY, "variables": {"id": id}}});
    let mut previous: Option<String> = None;
    let mut last_round = 0usize;
    let setup = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut permit = Some(permit);
    loop {
        let next = if previous.is_none() {
            match tokio::time::timeout_at(setup, ws.next()).await {
                Ok(next) => next,
                Err(_) => return Err("no first answer within 60 s".into()),
            }
        } else {
            ws.next().await
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                return end(shared, previous.is_some(), format!("read: {}", short(&error.to_string())))
            }
            None => return end(shared, previous.is_some(), "closed".into()),
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => {
                let why =
                    frame.map_or("close".into(), |f| format!("close {} {}", u16::from(f.code), f.reason));
                return end(shared, previous.is_some(), why);
            }
            // Pings are answered by tungstenite itself.
            _ => continue,
        };
        let value: Value = serde_json::from_str(text.as_str()).map_err(|_| "a message is not JSON")?;
        let received = shared.now_ns();
        match value["type"].as_str() {
            Some("connection_ack") => {
                ws.send(Message::text(subscribe.to_string())).await.map_err(|e| format!("send: {e}"))?;
            }
            Some("ping") => {
                ws.send(Message::text(r#"{"type":"pong"}"#)).await.map_err(|e| format!("send: {e}"))?;
            }
            Some("next") => {
                let status =
                    value["payload"]["data"]["checkoutSessionUpdated"]["status"].as_str().map(str::to_owned);
                let Some(status) = status else {
                    let why = format!("an answer without a status: {}", short(text.as_str()));
                    if previous.is_none() {
                        return Err(why);
                    }
                    shared.wrong.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let first = previous.is_none();
                if !first && previous.as_deref() == Some(status.as_str()) {
                    shared.wrong.fetch_add(1, Ordering::Relaxed);
                }
                previous = Some(status);
                if first {
                    drop(permit.take());
                    shared.ready.fetch_add(1, Ordering::SeqCst);
                    shared.ready_notify.notify_one();
                    continue;
                }
                if shared.done.load(Ordering::Relaxed) {
                    continue;
                }
                let round = shared.round.load(Ordering::SeqCst);
                let sent = shared.sent_at[session].load(Ordering::SeqCst);
                if round == 0 || round == last_round || sent == 0 {
                    shared.extra.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                last_round = round;
                shared.latencies.lock().expect("lock").push(received.saturating_sub(sent));
                shared.delivered.fetch_add(1, Ordering::SeqCst);
                shared.delivered_notify.notify_one();
            }
            _ => {
                let why = format!("unexpected: {}", short(text.as_str()));
                return end(shared, previous.is_some(), why);
            }
        }
    }
}

/// A subscriber's stream ended: before its first answer that is a failure to subscribe; after,
/// it is counted (a socket the gateway closed mid-run).
fn end(shared: &Shared, subscribed: bool, why: String) -> Result<(), String> {
    if subscribed {
        if !shared.done.load(Ordering::Relaxed) {
            shared.ended.fetch_add(1, Ordering::Relaxed);
            eprintln!("wsload: a subscriber's stream ended: {why}");
        }
        Ok(())
    } else {
        Err(why)
    }
}

fn short(text: &str) -> String {
    text.chars().take(200).collect()
}

/// The Dodo stand-in: `GET …/checkouts/{id}` answers the session's current status.
async fn serve_dodo(listener: TcpListener, shared: Arc<Shared>, prefix: String) {
    let prefix: Arc<str> = Arc::from(format!("{prefix}_"));
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let (shared, prefix) = (shared.clone(), prefix.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let answer = dodo_answer(&shared, &prefix, request.uri().path());
                async move { Ok::<_, Infallible>(answer) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

fn dodo_answer(shared: &Shared, prefix: &str, path: &str) -> Response<Full<Bytes>> {
    shared.upstream_requests.fetch_add(1, Ordering::SeqCst);
    let id = path.rsplit('/').next().unwrap_or_default();
    let status = id
        .strip_prefix(prefix)
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| shared.status.get(n))
        .map_or(1, |status| status.load(Ordering::SeqCst));
    let body = json!({"id": id, "created_at": "2025-06-01T12:00:00Z", "payment_id": format!("pay_{id}"),
                      "payment_status": STATUSES[usize::from(status)]});
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a response")
}

/// The HMAC key of a Standard Webhooks secret (`whsec_` and base64).
fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.trim().strip_prefix("whsec_").unwrap_or(secret.trim());
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "the webhook secret is not base64".into())
}

static DELIVERY: AtomicU64 = AtomicU64::new(0);

/// A Dodo `payment.processing` delivery for `session`, signed as Standard Webhooks says
/// (HMAC-SHA256 over `{id}.{timestamp}.{body}`, `v1,` and base64), as bench.py's signed_webhook.
fn signed_webhook(key: &[u8], session: &str) -> (String, String, String, String) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let delivery = format!("msg_{}_{}", now.as_nanos(), DELIVERY.fetch_add(1, Ordering::Relaxed));
    let timestamp = now.as_secs().to_string();
    let body =
        json!({"business_id": "bus_bench", "type": "payment.processing", "timestamp": "2025-06-01T12:00:00Z",
                      "data": {"payment_id": format!("pay_{session}"), "checkout_session_id": session,
                               "status": "processing"}})
        .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(format!("{delivery}.{timestamp}.{body}").as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (delivery, timestamp, format!("v1,{signature}"), body)
}

/// Sends one webhook per session, over `webhook_connections` keep-alive connections; each
/// session's send time is set just before its request is written.
async fn send_webhooks(
    shared: &Arc<Shared>,
    key: &[u8],
    addr: SocketAddr,
    path: &str,
    args: &Args,
    sessions: &[usize],
) -> Result<(), String> {
    let queue = Arc::new(Mutex::new(sessions.to_vec()));
    let workers = args.webhook_connections.clamp(1, sessions.len());
    let mut tasks = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (queue, shared, key, path, prefix) =
            (queue.clone(), shared.clone(), key.to_vec(), path.to_owned(), args.session_prefix.clone());
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.map_err(|e| format!("webhook connect: {e}"))?;
            let _ = stream.set_nodelay(true);
            let mut stream = BufReader::new(stream);
            loop {
                let Some(session) = queue.lock().expect("lock").pop() else { return Ok(()) };
                let id = format!("{prefix}_{session}");
                let (delivery, timestamp, signature, body) = signed_webhook(&key, &id);
                let request = format!(
                    "POST {path} HTTP/1.1\r\nHost: {addr}\r\ncontent-type: application/json\r\n\
                     webhook-id: {delivery}\r\nwebhook-timestamp: {timestamp}\r\nwebhook-signature: {signature}\r\n\
                     content-length: {}\r\n\r\n{body}",
                    body.len()
                );
                shared.sent_at[session].store(shared.now_ns(), Ordering::SeqCst);
                stream.get_mut().write_all(request.as_bytes()).await.map_err(|e| format!("webhook write: {e}"))?;
                let (status, answer) = read_response(&mut stream).await?;
                if status != 200 {
                    return Err(format!("webhook refused: {status} {}", short(&answer)));
                }
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| format!("webhook task: {e}"))??;
    }
    Ok(())
}

/// One HTTP/1.1 response with a content-length: (status, body).
async fn read_response(stream: &mut BufReader<TcpStream>) -> Result<(u16, String), String> {
    let mut line = String::new();
    stream.read_line(&mut line).await.map_err(|e| format!("webhook read: {e}"))?;
    let status =
        line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(format!("webhook answer: {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        stream.read_line(&mut line).await.map_err(|e| format!("webhook read: {e}"))?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().map_err(|_| "a bad content-length")?;
            }
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.map_err(|e| format!("webhook read: {e}"))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn http_authority(url: &str) -> Result<SocketAddr, String> {
    let rest = url.strip_prefix("http://").ok_or("the webhook URL must be http://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    authority.parse().map_err(|_| format!("the webhook URL needs an IP and port: {authority}"))
}

/// VmRSS of `pid`, in bytes.
fn vm_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
}

/// User + system CPU seconds of `pid` (/proc reports them in USER_HZ, 100 a second).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (user, system): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((user + system) as f64 / 100.0)
}

fn cpu_of(pids: &[(String, u32)]) -> Vec<(String, f64)> {
    let mut all: Vec<(String, f64)> =
        pids.iter().map(|(name, pid)| (name.clone(), cpu_seconds(*pid).unwrap_or(0.0))).collect();
    all.push(("load".into(), cpu_seconds(std::process::id()).unwrap_or(0.0)));
    all
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[at]
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e4).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
