//! Each client's budget of upstream lookups (`GATEWAY_CLIENT_RATE_LIMIT`): one authenticated
//! client must not spend a provider's quota for everyone.
//!
//! Owns: the per-client windows (bounded in memory, idle clients forgotten) and the answer once
//! a budget is spent. Knows nothing of who the client is: the GraphQL layer names it; the
//! cache charges a lookup only when it is about to go upstream (a hit costs nothing).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::{lock, FetchError};
use crate::providers::guard::RateLimit;

/// Clients whose windows are kept at most (each ~100 bytes); past it the least used are
/// forgotten, which gives them a full budget again.
const CLIENTS_MAX: u64 = 100_000;

/// Every client's budget.
#[derive(Debug)]
pub struct ClientQuotas {
    /// `(count, period)`: at most `count` lookups per `period`, each pair applying.
    limits: Arc<[(u32, Duration)]>,
    clients: Clients,
}

type Clients = moka::sync::Cache<Arc<str>, Arc<Windows>>;

impl ClientQuotas {
    pub fn new(limit: &RateLimit) -> Self {
        // A client idle for its longest period has its whole budget again: forgetting it then
        // loses nothing.
        let idle = limit.0.iter().map(|&(_, period)| period).max().unwrap_or(Duration::from_secs(60));
        Self {
            limits: limit.0.iter().copied().collect(),
            clients: moka::sync::Cache::builder().max_capacity(CLIENTS_MAX).time_to_idle(idle).build(),
        }
    }

    /// What `client`'s lookups are charged to; `None` when nothing is counted (the limit is
    /// `off`). Costs nothing until a lookup is charged.
    pub fn payer(&self, client: &Arc<str>) -> Option<Payer> {
        if self.limits.is_empty() {
            return None;
        }
        Some(Payer { clients: self.clients.clone(), limits: self.limits.clone(), client: client.clone() })
    }
}

/// One client's account, shared by its requests and streams. It names the client rather
/// than holding its windows, so that a long-lived holder (a poller) charges the same windows
/// as the client's new requests, and keeps them from being forgotten as idle.
#[derive(Clone)]
pub struct Payer {
    clients: Clients,
    limits: Arc<[(u32, Duration)]>,
    client: Arc<str>,
}

impl std::fmt::Debug for Payer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Payer").field(&self.client).finish()
    }
}

/// Per limit, its "theoretical arrival time" (GCRA): a lookup is let through while this is at
/// most `period − period / count` ahead of now. The same bound as a token bucket holding
/// `count` lookups refilled over `period`, in one instant per limit.
#[derive(Debug)]
struct Windows(Mutex<Vec<Instant>>);

impl Payer {
    fn windows(&self) -> Arc<Windows> {
        self.clients.get_with_by_ref(&self.client, || {
            Arc::new(Windows(Mutex::new(vec![Instant::now(); self.limits.len()])))
        })
    }

    /// Counts one upstream lookup, or refuses with how long until one is allowed again.
    /// Nothing is counted when any limit refuses.
    pub fn spend(&self) -> Result<(), FetchError> {
        let windows = self.windows();
        let now = Instant::now();
        let mut next = lock(&windows.0);
        let mut wait = Duration::ZERO;
        for (&(count, period), at) in self.limits.iter().zip(next.iter()) {
            let step = period / count.max(1);
            let ahead = (*at).max(now) - now;
            wait = wait.max(ahead.saturating_sub(period - step));
        }
        if !wait.is_zero() {
            let retry_after_seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(FetchError::ClientRateLimited { retry_after_seconds });
        }
        for (&(count, period), at) in self.limits.iter().zip(next.iter_mut()) {
            *at = (*at).max(now) + period / count.max(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_count_then_waits_and_others_are_apart() {
        let quotas = ClientQuotas::new(&RateLimit::parse("3/min").unwrap());
        let (a, b) = (Arc::from("a"), Arc::from("b"));
        let payer = quotas.payer(&a).unwrap();
        for _ in 0..3 {
            payer.spend().unwrap();
        }
        match quotas.payer(&a).unwrap().spend() {
            Err(FetchError::ClientRateLimited { retry_after_seconds }) => {
                assert!((19..=20).contains(&retry_after_seconds), "{retry_after_seconds}")
            }
            other => panic!("{other:?}"),
        }
        quotas.payer(&b).unwrap().spend().unwrap();
        assert!(ClientQuotas::new(&RateLimit::parse("off").unwrap()).payer(&a).is_none());
    }

    #[test]
    fn every_limit_applies_and_a_refusal_spends_nothing() {
        let quotas = ClientQuotas::new(&RateLimit::parse("100/s,2/min").unwrap());
        let payer = quotas.payer(&Arc::from("a")).unwrap();
        payer.spend().unwrap();
        payer.spend().unwrap();
        for _ in 0..5 {
            assert!(payer.spend().is_err());
        }
        let next = payer.windows().0.lock().unwrap().clone();
        assert!(
            next[0] <= Instant::now() + Duration::from_millis(20),
            "the per-second window was not charged"
        );
    }
}
