//! What stands between a lookup and an account's provider: the quota (sliding windows sized
//! to what the provider allows), the wait a 429 asked for, and a circuit breaker that stops
//! calling a provider that keeps failing. Retries are planned here and run by `upstream`.
//!
//! Owns: every decision to call, wait, retry or refuse without calling, per account.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{lock, FetchError, UnavailableReason};

/// A provider's quota as written in settings: `40/s`, `100/min`, `5000/h`, several joined with
/// `,` (all apply), or `off`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit(pub Vec<(u32, Duration)>);

impl RateLimit {
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let text = text.trim();
        if text == "off" {
            return Ok(RateLimit(Vec::new()));
        }
        let mut limits = Vec::new();
        for part in text.split(',') {
            let bad = || format!("`{part}` is not a rate such as 40/s, 100/min or 5000/h (or `off`)");
            let (count, per) = part.trim().split_once('/').ok_or_else(bad)?;
            let count: u32 = count.trim().parse().ok().filter(|n| *n > 0).ok_or_else(bad)?;
            let period = match per.trim() {
                "s" | "sec" | "second" => Duration::from_secs(1),
                "m" | "min" | "minute" => Duration::from_secs(60),
                "h" | "hour" => Duration::from_secs(3600),
                _ => return Err(bad()),
            };
            limits.push((count, period));
        }
        Ok(RateLimit(limits))
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("off");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(count, period)| match period.as_secs() {
                1 => format!("{count}/s"),
                60 => format!("{count}/min"),
                _ => format!("{count}/h"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// How an account's calls are guarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardPolicy {
    pub rate_limit: RateLimit,
    /// Further attempts after a failed one that may succeed (connection error, timeout, 408,
    /// 409, 429, 5xx).
    pub retries: u32,
    /// Consecutive failures (timeouts, connection errors, 5xx) that open the circuit.
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls before one trial call may close it.
    pub breaker_cooldown: Duration,
    /// The longest wait any signal may impose (a 429's `Retry-After`, DHMAD's `retryAfter`,
    /// a hold read from the shared tier): a provider, or whoever writes to Redis, can ask for
    /// years (or send epoch milliseconds where seconds were meant) and would hold the account
    /// for that long on every replica.
    pub max_wait: Duration,
}

/// The circuit's state, as `/readyz` and `/metrics` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    /// Calls are refused until the cooldown is over.
    Open,
    /// The cooldown is over: one trial call is let through; its outcome closes or reopens.
    HalfOpen,
}

#[derive(Debug)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `trial`: a trial call is in flight; others are refused until it reports.
    HalfOpen {
        trial: bool,
    },
}

/// At most `count` calls in any `period`: the times of the last `count` calls. Exact where a
/// token bucket is not (a full bucket plus its refill can pass nearly twice the quota in one
/// window), at the cost of one timestamp per allowed call.
#[derive(Debug)]
struct Window {
    count: usize,
    period: Duration,
    calls: Mutex<VecDeque<Instant>>,
}

impl Window {
    /// Takes a slot now, or says how long until one frees up.
    fn take(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut calls = lock(&self.calls);
        while calls.front().is_some_and(|&at| now.duration_since(at) >= self.period) {
            calls.pop_front();
        }
        if calls.len() < self.count {
            calls.push_back(now);
            return Ok(());
        }
        let oldest = calls.front().copied().unwrap_or(now);
        Err((oldest + self.period).saturating_duration_since(now))
    }
}

/// A quota counted for every replica at once (the shared tier). Each call returns `None`
/// when the store cannot answer: the guard then counts locally.
pub trait SharedQuota: Send + Sync + fmt::Debug {
    /// Takes one call of `scope`'s quota (`windows`: at most `count` per `period`). A hold
    /// longer than `max_wait` found there is not obeyed.
    fn take<'a>(
        &'a self,
        scope: &'a str,
        windows: &'a [(u32, Duration)],
        max_wait: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Taken>> + Send + 'a>>;

    /// Holds every replica's calls of `scope` for `wait` (a 429 asked it).
    fn hold<'a>(
        &'a self,
        scope: &'a str,
        wait: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
}

/// What a shared quota says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// A call may be made now (and was counted).
    Now,
    /// The quota has room again after this long.
    After(Duration),
    /// A 429's hold lasts this much longer.
    Held(Duration),
}

/// The guard of one account.
pub struct Guard {
    policy: GuardPolicy,
    /// The shared quota and the account's scope in it, when replicas share one.
    shared: std::sync::OnceLock<(std::sync::Arc<dyn SharedQuota>, std::sync::Arc<str>)>,
    windows: Vec<Window>,
    /// Until when a 429 asked us not to call.
    held_until: Mutex<Option<Instant>>,
    breaker: Mutex<Breaker>,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard").field("policy", &self.policy).field("circuit", &self.circuit()).finish()
    }
}

/// What a finished attempt tells the guard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Any answer that is not a provider failure (2xx, 4xx but 408/429).
    Answered,
    /// A 429, with the wait the provider asked for when it said.
    RateLimited(Option<Duration>),
    /// Worth another try, but no sign of trouble (409).
    Retryable,
    /// Timeout, connection error, 408 or 5xx: counts towards opening the circuit.
    Failed,
}

/// Without a wait signal, a 429 holds calls this long (the Dodo SDK's first backoff, rounded).
const DEFAULT_HOLD: Duration = Duration::from_secs(1);

/// The longest wait a client is told (GraphQL's `Int` is 32 bits).
fn seconds(wait: Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.min(i32::MAX as u64)
}

fn refused(reason: UnavailableReason, wait: Duration) -> FetchError {
    FetchError::Unavailable { reason, upstream_status: None, retry_after_seconds: Some(seconds(wait)) }
}

impl Guard {
    pub fn new(policy: GuardPolicy) -> Self {
        let windows = policy
            .rate_limit
            .0
            .iter()
            .map(|&(count, period)| Window {
                count: count as usize,
                period,
                calls: Mutex::new(VecDeque::with_capacity((count as usize).min(1024))),
            })
            .collect();
        Self {
            policy,
            shared: std::sync::OnceLock::new(),
            windows,
            held_until: Mutex::new(None),
            breaker: Mutex::new(Breaker::Closed { failures: 0 }),
        }
    }

    /// Counts this account's quota and 429 holds in `quota`, under `scope`, for every replica.
    pub fn share(&self, quota: std::sync::Arc<dyn SharedQuota>, scope: std::sync::Arc<str>) {
        let _ = self.shared.set((quota, scope));
    }

    pub fn circuit(&self) -> CircuitState {
        match *lock(&self.breaker) {
            Breaker::Closed { .. } => CircuitState::Closed,
            Breaker::Open { until } if Instant::now() < until => CircuitState::Open,
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => CircuitState::HalfOpen,
        }
    }

    /// How long a 429's hold keeps this replica from calling (zero: none in force).
    pub fn held_for(&self) -> Duration {
        lock(&self.held_until).map_or(Duration::ZERO, |until| until.saturating_duration_since(Instant::now()))
    }

    /// Waits until a call may be made, or refuses at once: while a 429's wait lasts
    /// (`RATE_LIMITED`), while the circuit is open (`CIRCUIT_OPEN`), or when the quota has no
    /// room before `deadline` (`RATE_LIMITED`). A quota that frees up before the deadline is
    /// waited for. The [`Ticket`] reports the call's outcome; dropped without one (the call was
    /// never made, or the caller was cancelled), it gives back the half-open trial it may hold,
    /// so that the circuit never stays half-open with a trial nobody will finish.
    pub async fn admit(&self, deadline: Instant) -> Result<Ticket<'_>, FetchError> {
        if let Some(until) = *lock(&self.held_until) {
            let now = Instant::now();
            if now < until {
                return Err(refused(UnavailableReason::RateLimited, until - now));
            }
        }
        // From here on, every way out (a refusal below, a cancelled wait) drops the ticket.
        let ticket = Ticket { guard: self, trial: self.admit_breaker()? };
        if let Some((quota, scope)) = self.shared.get() {
            loop {
                match quota.take(scope, &self.policy.rate_limit.0, self.policy.max_wait).await {
                    Some(Taken::Now) => return Ok(ticket),
                    Some(Taken::Held(wait)) => {
                        let wait = self.clamp(wait);
                        // What the shared tier says is held for every replica is held here
                        // too, within the clamp.
                        self.hold_locally(wait);
                        return Err(refused(UnavailableReason::RateLimited, wait));
                    }
                    Some(Taken::After(wait)) => {
                        let wait = self.clamp(wait);
                        if Instant::now() + wait >= deadline {
                            return Err(refused(UnavailableReason::RateLimited, wait));
                        }
                        tokio::time::sleep(wait).await;
                    }
                    // The shared store cannot answer: this replica counts alone.
                    None => break,
                }
            }
        }
        for window in &self.windows {
            loop {
                match window.take() {
                    Ok(()) => break,
                    Err(wait) => {
                        if Instant::now() + wait >= deadline {
                            return Err(refused(UnavailableReason::RateLimited, wait));
                        }
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Ok(ticket)
    }

    /// Whether the call let through is the half-open circuit's one trial.
    fn admit_breaker(&self) -> Result<bool, FetchError> {
        let mut breaker = lock(&self.breaker);
        match *breaker {
            Breaker::Closed { .. } => Ok(false),
            Breaker::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(refused(UnavailableReason::CircuitOpen, until - now));
                }
                *breaker = Breaker::HalfOpen { trial: true };
                Ok(true)
            }
            Breaker::HalfOpen { trial: false } => {
                *breaker = Breaker::HalfOpen { trial: true };
                Ok(true)
            }
            Breaker::HalfOpen { trial: true } => {
                Err(refused(UnavailableReason::CircuitOpen, Duration::from_secs(1)))
            }
        }
    }

    /// A trial that ended without an outcome (never made, or cancelled) gives its slot back:
    /// the next call is the trial.
    fn release_trial(&self) {
        let mut breaker = lock(&self.breaker);
        if let Breaker::HalfOpen { trial: true } = *breaker {
            *breaker = Breaker::HalfOpen { trial: false };
        }
    }

    /// `wait`, but never longer than the policy's `max_wait`.
    pub fn clamp(&self, wait: Duration) -> Duration {
        wait.min(self.policy.max_wait)
    }

    /// No call of this replica before `wait` has passed (kept if a longer hold is in force).
    fn hold_locally(&self, wait: Duration) {
        let until = Instant::now() + self.clamp(wait);
        let mut held = lock(&self.held_until);
        *held = Some(held.map_or(until, |current| current.max(until)));
    }

    /// Takes note of a finished attempt: a 429 holds further calls (within the clamp);
    /// failures count towards the circuit, anything else resets it.
    fn record(&self, outcome: Outcome) {
        if let Outcome::RateLimited(wait) = outcome {
            let wait = self.clamp(wait.unwrap_or(DEFAULT_HOLD));
            if let Some((quota, scope)) = self.shared.get() {
                let (quota, scope) = (quota.clone(), scope.clone());
                tokio::spawn(async move { quota.hold(&scope, wait).await });
            }
            self.hold_locally(wait);
        }
        let mut breaker = lock(&self.breaker);
        let failed = outcome == Outcome::Failed;
        *breaker = match (&*breaker, failed) {
            (_, false) => Breaker::Closed { failures: 0 },
            (Breaker::Closed { failures }, true) if failures + 1 < self.policy.breaker_failures => {
                Breaker::Closed { failures: failures + 1 }
            }
            // The threshold reached, or the trial call failed.
            (_, true) => Breaker::Open { until: Instant::now() + self.policy.breaker_cooldown },
        };
    }

    /// How long to wait before attempt `attempt` (1 for the first retry), if another attempt
    /// is worth making before `deadline`. A wait the provider asked for wins; otherwise the
    /// Dodo SDK's backoff: `min(0.5 s * 2^(attempt-1), 8 s)` times a jitter in [0.75, 1].
    pub fn retry_wait(&self, attempt: u32, asked: Option<Duration>, deadline: Instant) -> Option<Duration> {
        if attempt > self.policy.retries {
            return None;
        }
        let wait = asked.map(|asked| self.clamp(asked)).unwrap_or_else(|| {
            let base = Duration::from_millis(500)
                .saturating_mul(1 << (attempt - 1).min(5))
                .min(Duration::from_secs(8));
            base.mul_f64(0.75 + fastrand::f64() * 0.25)
        });
        (Instant::now() + wait < deadline).then_some(wait)
    }
}

/// One admitted call. [`Ticket::record`] reports how it went; a ticket dropped without a
/// report (the call was not made, or the lookup was cancelled: a client gone, a stream reset,
/// a request timeout) ends the trial it may hold, so the circuit cannot stay half-open.
#[derive(Debug)]
#[must_use = "a call's outcome must be recorded, or the ticket dropped when no call was made"]
pub struct Ticket<'a> {
    guard: &'a Guard,
    /// Whether this call is the half-open circuit's trial.
    trial: bool,
}

impl Ticket<'_> {
    /// Reports the call's outcome to the guard.
    pub fn record(mut self, outcome: Outcome) {
        self.trial = false;
        self.guard.record(outcome);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if self.trial {
            self.guard.release_trial();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rate_limit: &str) -> GuardPolicy {
        GuardPolicy {
            rate_limit: RateLimit::parse(rate_limit).unwrap(),
            retries: 2,
            breaker_failures: 3,
            breaker_cooldown: Duration::from_millis(200),
            max_wait: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_window_never_passes_more_than_its_count() {
        let window =
            Window { count: 3, period: Duration::from_millis(300), calls: Mutex::new(VecDeque::new()) };
        for _ in 0..3 {
            window.take().unwrap();
        }
        let wait = window.take().unwrap_err();
        assert!(wait > Duration::from_millis(250) && wait <= Duration::from_millis(300), "{wait:?}");
        // The three were taken a few microseconds apart: past the first one's wait, with a
        // margin, all three have left the window.
        std::thread::sleep(wait + Duration::from_millis(50));
        for _ in 0..3 {
            window.take().unwrap();
        }
        assert!(window.take().is_err(), "three per window, however they are spread");
    }

    #[test]
    fn rates_parse_and_print() {
        assert_eq!(RateLimit::parse("40/s, 240/min").unwrap().to_string(), "40/s,240/min");
        assert_eq!(RateLimit::parse("off").unwrap(), RateLimit(Vec::new()));
        for bad in ["", "40", "0/s", "x/s", "40/day", "40/s,"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retry_waits_back_off_within_the_deadline() {
        let guard = Guard::new(policy("off"));
        let far = Instant::now() + Duration::from_secs(60);
        let first = guard.retry_wait(1, None, far).unwrap();
        assert!(first >= Duration::from_millis(375) && first <= Duration::from_millis(500), "{first:?}");
        let second = guard.retry_wait(2, None, far).unwrap();
        assert!(second >= Duration::from_millis(750) && second <= Duration::from_secs(1), "{second:?}");
        assert_eq!(guard.retry_wait(3, None, far), None, "two retries at most");
        assert_eq!(guard.retry_wait(1, Some(Duration::from_secs(7)), far), Some(Duration::from_secs(7)));
        let near = Instant::now() + Duration::from_millis(100);
        assert_eq!(guard.retry_wait(1, None, near), None, "never past the deadline");
    }

    #[tokio::test]
    async fn the_breaker_opens_refuses_and_closes_after_a_good_trial() {
        let guard = Guard::new(policy("off"));
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..3 {
            guard.admit(deadline).await.unwrap().record(Outcome::Failed);
        }
        assert_eq!(guard.circuit(), CircuitState::Open);
        let refused = guard.admit(deadline).await.unwrap_err();
        assert!(matches!(refused, FetchError::Unavailable { reason: UnavailableReason::CircuitOpen, .. }));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(guard.circuit(), CircuitState::HalfOpen);
        let trial = guard.admit(deadline).await.unwrap();
        assert!(guard.admit(deadline).await.is_err(), "one trial at a time");
        trial.record(Outcome::Answered);
        assert_eq!(guard.circuit(), CircuitState::Closed);
    }

    #[tokio::test]
    async fn a_trial_that_ends_without_an_outcome_lets_the_next_call_try() {
        let guard = Guard::new(policy("off"));
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..3 {
            guard.admit(deadline).await.unwrap().record(Outcome::Failed);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        // The trial's lookup is cancelled (its client left): the ticket is dropped unreported.
        drop(guard.admit(deadline).await.unwrap());
        let next = guard.admit(deadline).await.expect("the next call is the trial");
        next.record(Outcome::Answered);
        assert_eq!(guard.circuit(), CircuitState::Closed);
    }

    #[tokio::test]
    async fn waits_are_clamped() {
        let guard = Guard::new(GuardPolicy { max_wait: Duration::from_secs(2), ..policy("off") });
        let deadline = Instant::now() + Duration::from_secs(5);
        // A year-long (or epoch-milliseconds) Retry-After: no overflow, held for max_wait only.
        guard.admit(deadline).await.unwrap().record(Outcome::RateLimited(Some(Duration::MAX)));
        let FetchError::Unavailable { retry_after_seconds, .. } = guard.admit(deadline).await.unwrap_err()
        else {
            panic!("held")
        };
        assert_eq!(retry_after_seconds, Some(2));
        let far = Instant::now() + Duration::from_secs(60);
        assert_eq!(guard.retry_wait(1, Some(Duration::MAX), far), Some(Duration::from_secs(2)));
    }
}
