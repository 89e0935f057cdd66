//! Prometheus metrics, one registry per application (so tests running several gateways in one
//! process never mix counts). Exposed at `/metrics` in the Prometheus text format.
//!
//! Owns: every metric's name, help and labels. Label values come from fixed sets (routes,
//! providers, configured accounts, outcomes).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Counter, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// `metric`, registered: definitions and names are fixed in code, so a failure is a bug that
/// every start (and every test) shows.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("static metric definition");
    registry.register(Box::new(metric.clone())).expect("each metric is registered once");
    metric
}

/// Latency buckets in seconds: sub-millisecond cache hits up to slow provider calls.
const BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub graphql_operations: IntCounterVec,
    pub graphql_operation_duration: HistogramVec,
    pub graphql_answers: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub cache_hits: IntCounterVec,
    pub cache_misses: IntCounterVec,
    pub cache_coalesced: IntCounterVec,
    pub cache_evictions: IntCounterVec,
    pub cache_entries: IntGauge,
    pub upstream_retries: IntCounterVec,
    pub circuit_state: IntGaugeVec,
    pub upstream_hold: GaugeVec,
    pub process_memory: IntGauge,
    pub process_cpu: Counter,
    pub stale_answers: IntCounterVec,
    pub log_lines_dropped: IntCounter,
    pub response_cache_hits: IntCounter,
    pub cache_refreshes: IntCounterVec,
    pub webhooks: IntCounterVec,
    pub live_sessions: IntGauge,
    pub live_subscriptions: IntGauge,
    pub live_shared_executions: IntGauge,
    pub live_pollers: IntGauge,
    pub live_updates: IntCounter,
    pub client_rate_limited: IntCounter,
    pub subscription_connections: IntGaugeVec,
    pub callback_messages: IntCounterVec,
    pub redis_operations: IntCounterVec,
    pub redis_up: IntGauge,
    pub shared_hits: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("checkout_gateway".into()), None)
            .expect("a static prefix is a valid metric namespace");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
            registered(&registry, HistogramVec::new(opts, labels))
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            registered(&registry, IntGaugeVec::new(Opts::new(name, help), labels))
        };
        let gauge = |name: &str, help: &str| registered(&registry, IntGauge::new(name, help));
        let single = |name: &str, help: &str| registered(&registry, IntCounter::new(name, help));
        let cache_entries = gauge("cache_entries", "Answers in the cache now.");
        let response_cache_hits = single(
            "response_cache_hits_total",
            "GraphQL requests answered by replaying a stored response (no session lookup at all).",
        );
        let circuit_state = gauges(
            "circuit_state",
            "Each account's circuit: 0 closed, 1 half-open (one trial call), 2 open.",
            &["provider", "account"],
        );
        // Set at each scrape, like the circuit: an alert sees a hold in force, not only 429s.
        let upstream_hold = registered(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "upstream_hold_seconds",
                    "Seconds left of a 429's hold on each account (0: none): its lookups answer \
                     RATE_LIMITED without calling meanwhile.",
                ),
                &["provider", "account"],
            ),
        );
        // The process's own, for dashboards beside the cluster's (read at each scrape, Linux).
        let process_memory = gauge("process_resident_memory_bytes", "Resident memory of the process.");
        let process_cpu = registered(
            &registry,
            Counter::new("process_cpu_seconds_total", "CPU time the process used (user and system)."),
        );
        let log_lines_dropped = single(
            "log_lines_dropped_total",
            "Log lines dropped because stdout could not keep up (the writer never blocks a request).",
        );
        let live_sessions =
            gauge("live_sessions_watched", "Sessions someone is subscribed to now (topics in the hub).");
        let live_subscriptions = gauge("live_subscriptions", "Subscriptions to sessions open now.");
        let live_shared_executions = gauge(
            "live_shared_executions",
            "Subscription executions shared by every client that subscribed alike (one per \
             document, variables and rights watched now).",
        );
        let live_pollers = gauge(
            "live_pollers",
            "Watched sessions the gateway polls now (no webhook keeps their account current).",
        );
        let live_updates = single(
            "live_updates_total",
            "Changes of a session sent to its subscribers (a same-content refetch is not one).",
        );
        let client_rate_limited = single(
            "client_rate_limited_total",
            "Lookups refused without a provider call because their client's budget \
             (GATEWAY_CLIENT_RATE_LIMIT) was spent.",
        );
        let subscription_connections = gauges(
            "subscription_connections",
            "Subscription connections open now, by transport.",
            &["transport"],
        );
        let redis_up =
            gauge("redis_up", "1 while the shared tier (Redis) answers, 0 while its breaker is open.");
        Self {
            redis_up,
            redis_operations: counter(
                "redis_operations_total",
                "Operations on the shared tier by kind and outcome (ok, error, timeout, skipped: breaker open).",
                &["op", "outcome"],
            ),
            shared_hits: counter(
                "shared_cache_hits_total",
                "Lookups answered from the shared tier (another replica's answer), no provider call.",
                &["provider", "account"],
            ),
            live_sessions,
            live_subscriptions,
            live_shared_executions,
            live_pollers,
            live_updates,
            client_rate_limited,
            subscription_connections,
            callback_messages: counter(
                "callback_messages_total",
                "POSTs to routers' callback URLs (callback subscriptions) by action (check, next, \
                 complete) and outcome (accepted; gone: 404, the router dropped it; refused: any \
                 other answer; unreachable: timeout or connection error).",
                &["action", "outcome"],
            ),
            cache_refreshes: counter(
                "cache_refreshes_total",
                "Sessions fetched again because a webhook said they changed.",
                &["provider", "account"],
            ),
            webhooks: counter(
                "webhooks_total",
                "Webhook deliveries by provider and outcome (accepted, duplicate, ignored, or why refused).",
                &["provider", "outcome"],
            ),
            log_lines_dropped,
            upstream_retries: counter(
                "upstream_retries_total",
                "Attempts made again after a connection error, timeout, 408, 409, 429 or 5xx.",
                &["provider", "account"],
            ),
            stale_answers: counter(
                "stale_answers_total",
                "Lookups answered with an earlier session because the provider could not answer.",
                &["provider", "account"],
            ),
            circuit_state,
            upstream_hold,
            process_memory,
            process_cpu,
            http_requests: counter(
                "http_requests_total",
                "HTTP requests served.",
                &["route", "method", "status"],
            ),
            http_duration: histogram(
                "http_request_duration_seconds",
                "Time to answer an HTTP request.",
                &["route", "method"],
            ),
            graphql_operations: counter(
                "graphql_operations_total",
                "GraphQL operations by operation name and outcome (ok: no GraphQL errors).",
                &["operation", "outcome"],
            ),
            graphql_operation_duration: histogram(
                "graphql_operation_duration_seconds",
                "Time a GraphQL operation took in the pipeline, by operation name, executed and \
                 replayed alike: executed, from admission to its answer; replayed, finding and \
                 checking the stored answer. Serialising and sending it are in \
                 http_request_duration_seconds; a streamed operation is not observed.",
                &["operation"],
            ),
            graphql_answers: counter(
                "graphql_answers_total",
                "Session answers sent, by type: session, or the typed error's code (NOT_FOUND, …). \
                 One per checkoutSession, checkoutSessions member, _entities representation and \
                 subscription update; a replayed response counts the sessions it holds.",
                &["answer"],
            ),
            upstream_requests: counter(
                "upstream_requests_total",
                "Calls to providers by account, outcome and HTTP status class.",
                &["provider", "account", "outcome", "status_class"],
            ),
            upstream_duration: histogram(
                "upstream_request_duration_seconds",
                "Time a provider took to answer (or to fail).",
                &["provider", "account"],
            ),
            cache_hits: counter(
                "cache_hits_total",
                "Lookups answered from the cache.",
                &["provider", "account"],
            ),
            cache_misses: counter(
                "cache_misses_total",
                "Lookups that called the provider.",
                &["provider", "account"],
            ),
            cache_coalesced: counter(
                "cache_coalesced_waits_total",
                "Lookups that waited for another asker's call to the provider instead of making one.",
                &["provider", "account"],
            ),
            cache_evictions: counter(
                "cache_evictions_total",
                "Answers removed from the cache, by cause (expired, size, replaced, explicit).",
                &["cause"],
            ),
            cache_entries,
            response_cache_hits,
            registry,
        }
    }

    /// Reads the process's memory and CPU time from /proc (nothing elsewhere: the metrics
    /// stay at 0 off Linux).
    pub fn sample_process(&self) {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<i64>().ok());
        if let Some(kib) = rss_kib {
            self.process_memory.set(kib.saturating_mul(1024));
        }
        // utime and stime, the 12th and 13th fields after the command's closing parenthesis,
        // in clock ticks: USER_HZ, 100 on Linux whatever the kernel's own rate.
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let ticks: Option<f64> = stat.rsplit_once(')').and_then(|(_, rest)| {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
        });
        if let Some(ticks) = ticks {
            let seconds = ticks / 100.0;
            let counted = self.process_cpu.get();
            if seconds > counted {
                self.process_cpu.inc_by(seconds - counted);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics; an empty page is the
        // honest answer if it ever does.
        if TextEncoder::new().encode(&self.registry.gather(), &mut buffer).is_err() {
            buffer.clear();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// An operation's label and its series, resolved once per label: counting an operation is
/// two atomic updates, with no lookup by label on the request's path.
#[derive(Debug)]
pub struct Operation {
    pub label: String,
    counters: IntCounterVec,
    /// `ok` and `error`, each made on its first use (a series appears once it has a count).
    outcomes: [OnceLock<IntCounter>; 2],
    duration: Histogram,
}

impl Operation {
    /// The series of `label` in `counters` (labelled `operation`, `outcome`) and `durations`.
    pub fn new(label: &str, counters: &IntCounterVec, durations: &HistogramVec) -> Self {
        Self {
            label: label.to_owned(),
            counters: counters.clone(),
            outcomes: Default::default(),
            duration: durations.with_label_values(&[label]),
        }
    }

    /// Counts one answer (ok: no GraphQL errors) that took `took`.
    pub fn record(&self, ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.outcomes[usize::from(!ok)]
            .get_or_init(|| self.counters.with_label_values(&[&self.label, outcome]))
            .inc();
        self.duration.observe(took.as_secs_f64());
    }
}
