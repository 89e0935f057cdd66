//! The one entry point the GraphQL layer calls.
//!
//! Owns: which account answers a request (the named one, or the provider's default), batches
//! (input order, each distinct session asked once), watching a session (its first answer,
//! then its changes; polling it while watched where no webhook keeps it current) and what a
//! webhook event refreshes (each session it names published as changed). Goes through the
//! cache.

pub mod live;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::StreamExt;

use crate::access::quota::Payer;
use crate::access::Rights;
use crate::cache::changes::SessionChanged;
use crate::cache::{Key, Lookup, SessionCache};
use crate::domain::{lock, CheckoutSession, FetchError, FetchResult};
use crate::providers::schema::DetailsObject;
use crate::providers::webhook::Target;
use crate::providers::Account;
use crate::sessions::live::{same_answer, Abandoned, Hub};

/// One session to look up: the provider's schema name, the account (`None`: the provider's
/// default) and the id.
pub type SessionRef<'a> = (&'a str, Option<&'a str>, &'a str);

#[derive(Debug)]
pub struct SessionService {
    /// Each provider's default account, by the provider's schema name (`DHMAD`).
    defaults: HashMap<&'static str, Arc<Account>>,
    /// Every account by name: names are unique across providers.
    accounts: HashMap<Arc<str>, Arc<Account>>,
    cache: Arc<SessionCache>,
    /// Who watches which session (told every answer by the cache's changes).
    hub: Arc<Hub>,
    /// Sessions being refetched for a webhook, or refetched less than [`REFETCH_INTERVAL`]
    /// ago; `true`: another webhook came meanwhile, so one more refetch is due.
    refetching: Mutex<HashMap<Key, bool>>,
}

/// However many webhooks name a session, it is fetched again for them at most once per this
/// long: webhooks that come while it is being refetched, or within this long after, are
/// answered by one more refetch at the end of it. Its cache entry stops being served at each
/// webhook all the same (a lookup meanwhile asks the provider); what waits is only the refetch
/// that tells its watchers.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(1);

impl SessionService {
    /// Each provider's default is its account marked `default`, else its first. Account
    /// names must be unique across providers.
    pub fn new(accounts: &[Arc<Account>], cache: Arc<SessionCache>, hub: Arc<Hub>) -> anyhow::Result<Self> {
        let mut by_name = HashMap::new();
        for account in accounts {
            if by_name.insert(account.name().clone(), account.clone()).is_some() {
                anyhow::bail!("two accounts are named `{}`; account names must be unique", account.name());
            }
        }
        let mut defaults: HashMap<&'static str, Arc<Account>> = HashMap::new();
        for account in accounts {
            let default = defaults.entry(account.kind().name).or_insert_with(|| account.clone());
            if account.config.default && !default.config.default {
                *default = account.clone();
            }
        }
        Ok(Self { defaults, accounts: by_name, cache, hub, refetching: Mutex::default() })
    }

    /// The account that answers for `provider` and `account`, or the typed reason none does.
    pub fn account(&self, provider: &str, account: Option<&str>) -> Result<&Arc<Account>, FetchError> {
        // Only a federation representation (`_Any`) can name a provider the schema does not
        // have: the `Provider` enum refuses it everywhere else.
        let default = self
            .defaults
            .get(provider)
            .ok_or(FetchError::InvalidId("no such provider; see the Provider enum"))?;
        match account {
            None => Ok(default),
            Some(name) => self
                .named(name)
                .filter(|account| account.kind().name == provider)
                .ok_or_else(|| unknown(name)),
        }
    }

    /// The account named `name`, whichever provider it is of.
    pub fn account_named(&self, name: &str) -> Result<&Arc<Account>, FetchError> {
        self.named(name).ok_or_else(|| unknown(name))
    }

    fn named(&self, name: &str) -> Option<&Arc<Account>> {
        self.accounts.get(name)
    }

    /// A session as `account` sees it (through the cache); a miss is charged to `payer`.
    pub async fn lookup(
        &self,
        account: Result<&Arc<Account>, FetchError>,
        id: &str,
        payer: Option<&Payer>,
    ) -> Lookup {
        match account {
            Ok(account) => self.cache.lookup_charged(account, id, payer).await,
            Err(error) => Lookup::once(Err(error)),
        }
    }

    /// Answers in input order; a ref repeated in `refs` (the same account and id) is looked up
    /// once. Lookups run concurrently; each account bounds its own upstream concurrency.
    /// `rights`: what the asking client may read; a ref outside them is `ACCESS_DENIED`
    /// without a call. Each distinct miss is charged to `payer`.
    pub async fn get_many(
        &self,
        refs: &[SessionRef<'_>],
        rights: &Rights,
        payer: Option<&Payer>,
    ) -> Vec<Lookup> {
        // Resolved first, so that naming the default account and naming none are one key.
        let resolved: Vec<Result<&Arc<Account>, FetchError>> = refs
            .iter()
            .map(|&(provider, account, _)| permitted(rights, self.account(provider, account)))
            .collect();
        // Account names are unique.
        let mut slot_of: HashMap<(&str, &str), usize> = HashMap::with_capacity(refs.len());
        let mut distinct: Vec<(&Arc<Account>, &str)> = Vec::with_capacity(refs.len());
        let slots: Vec<Result<usize, FetchError>> = refs
            .iter()
            .zip(&resolved)
            .map(|(&(_, _, id), account)| {
                let account = account.as_ref().map_err(Clone::clone)?;
                Ok(*slot_of.entry((account.name(), id)).or_insert_with(|| {
                    distinct.push((account, id));
                    distinct.len() - 1
                }))
            })
            .collect();
        let answers =
            join_all(distinct.iter().map(|&(account, id)| self.cache.lookup_charged(account, id, payer)))
                .await;
        slots
            .into_iter()
            .map(|slot| match slot {
                Ok(slot) => answers[slot].clone(),
                Err(error) => Lookup::once(Err(error)),
            })
            .collect()
    }

    /// The GraphQL details object for `session`, from its provider's module.
    pub fn details(&self, session: &Arc<CheckoutSession>) -> Option<Box<dyn DetailsObject>> {
        self.defaults.get(session.provider).map(|account| (account.kind().details)(session.clone()))
    }

    pub fn cache(&self) -> &Arc<SessionCache> {
        &self.cache
    }
}

/// `account`, if `rights` include it: the one place a client's rights are applied, before
/// any lookup.
pub fn permitted<'a>(
    rights: &Rights,
    account: Result<&'a Arc<Account>, FetchError>,
) -> Result<&'a Arc<Account>, FetchError> {
    let account = account?;
    if rights.allows(account) {
        Ok(account)
    } else {
        Err(FetchError::AccessDenied(account.name().clone()))
    }
}

/// The error for an account name the client gave that no account has.
fn unknown(name: &str) -> FetchError {
    FetchError::UnknownAccount(Arc::from(bounded(name)))
}

/// A client-given name, cut short enough to be shown back in an error.
fn bounded(name: &str) -> &str {
    match name.char_indices().nth(64) {
        Some((end, _)) => &name[..end],
        None => name,
    }
}

/// A watched session's answers: the current one, then each change.
pub type Updates = futures::stream::BoxStream<'static, Lookup>;

impl SessionService {
    /// The current answer for `id`, then every change to it, until the stream is dropped.
    /// The first watcher of a session whose account no webhook keeps current starts its one
    /// poller. The first answer is charged to `payer` (on a miss), and so are the calls of
    /// the poller this watch starts.
    pub fn watch(
        self: &Arc<Self>,
        account: Result<&Arc<Account>, FetchError>,
        id: &str,
        payer: Option<Payer>,
    ) -> Updates {
        let once = |error: FetchError| futures::stream::once(async { Lookup::once(Err(error)) }).boxed();
        let account = match account {
            Ok(account) => account.clone(),
            Err(error) => return once(error),
        };
        let key = match self.cache.key(&account, id) {
            Ok(key) => key,
            Err(error) => return once(error),
        };
        // Watching starts before the first lookup, so no change between the two is missed.
        let (mut watch, poll) = self.hub.watch(key.clone());
        if let Some(abandoned) = poll.filter(|_| !account.has_webhooks()) {
            let (service, account, id) = (self.clone(), account.clone(), key.1.clone());
            tokio::spawn(poll_while_watched(service, account, id, abandoned, payer.clone()));
        }
        let service = self.clone();
        async_stream::stream! {
            // Boxed, so that the lookup's future (~6 KiB) is freed once answered rather than
            // kept inline in this stream for as long as it is watched (BENCHMARKS.md, (l)).
            let first = Box::pin(service.cache.lookup_charged(&account, &key.1, payer.as_ref())).await;
            let mut last = first.answer.clone();
            let ended = ends_watch(&last);
            yield first;
            if ended {
                return;
            }
            while let Some(answer) = watch.changed().await {
                if same_answer(&last, &answer) {
                    continue;
                }
                last = answer.clone();
                let ended = ends_watch(&last);
                yield Lookup { answer, reusable_until: None, stale: false };
                if ended {
                    return;
                }
            }
        }
        .boxed()
    }

    /// The sessions a webhook event names that the gateway holds, watches or is asking the
    /// provider for (a session nobody asked for is not fetched: it would only spend the quota),
    /// each published as changed at once so that no lookup from now on reads the old answer
    /// (and a call in flight, which may carry it, is not stored). Returns their canonical ids,
    /// for [`Self::refresh`].
    pub async fn invalidate_targets(&self, account: &Arc<Account>, targets: &[Target]) -> Vec<Arc<str>> {
        let mut ids: Vec<Arc<str>> = Vec::new();
        for target in targets {
            match target {
                Target::Session { id, reference } => {
                    let Ok((scope, id)) = self.cache.key(account, id) else { continue };
                    if let Some(reference) = reference {
                        self.cache.note_reference(&scope, reference, &id).await;
                    }
                    ids.push(id);
                }
                Target::Reference(reference) => {
                    ids.extend(self.cache.sessions_of(&account.scope, reference).await)
                }
            }
        }
        ids.sort();
        ids.dedup();
        let mut known = Vec::with_capacity(ids.len());
        for id in ids {
            let Ok(key) = self.cache.key(account, &id) else { continue };
            if self.cache.changes().publish(SessionChanged::Stale { key: &key, here: true }).await {
                known.push(key.1);
            }
        }
        known
    }

    /// Fetches `ids` again (see [`SessionCache::refresh`]), each in a task of its own: their
    /// cache entries are replaced and their watchers told. A session already being refetched
    /// (or refetched less than [`REFETCH_INTERVAL`] ago) gets one more refetch at the end of
    /// that interval, however many webhooks ask for it meanwhile.
    pub fn refresh(self: &Arc<Self>, account: &Arc<Account>, ids: &[Arc<str>]) {
        for id in ids {
            let key: Key = (account.scope.clone(), id.clone());
            {
                let mut refetching = self.refetching();
                if let Some(again) = refetching.get_mut(&key) {
                    *again = true;
                    continue;
                }
                refetching.insert(key.clone(), false);
            }
            let (service, account) = (self.clone(), account.clone());
            tokio::spawn(async move { service.refetch(&account, key).await });
        }
    }

    /// Refetches `key`'s session, then again every [`REFETCH_INTERVAL`] for as long as
    /// webhooks keep asking.
    async fn refetch(&self, account: &Account, key: Key) {
        let mut done = Refetched { refetching: &self.refetching, key: Some(key.clone()) };
        loop {
            let next = tokio::time::Instant::now() + REFETCH_INTERVAL;
            self.cache.refresh(account, &key.1).await;
            tokio::time::sleep_until(next).await;
            let mut refetching = self.refetching();
            if refetching.get(&key) == Some(&true) {
                refetching.insert(key.clone(), false);
            } else {
                // Ended under the lock: a webhook from now on starts another refetch.
                refetching.remove(&key);
                done.key = None;
                return;
            }
        }
    }

    fn refetching(&self) -> MutexGuard<'_, HashMap<Key, bool>> {
        lock(&self.refetching)
    }

    /// Every configured account.
    pub fn accounts(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.accounts.values()
    }
}

/// Keeps one watched session current by asking for it each time its answer stops being
/// reusable (the cache's lifetimes: an open session every few seconds), until its answer is
/// settled (see [`is_settled`]) or nobody watches it any more. Each call is charged to
/// `payer`, the client whose watch opened the topic: a client cannot make the gateway poll
/// past its own budget by subscribing. The first call is one interval after the watch's own
/// first lookup, so that a watch refused at once (a spent budget, a session not found) costs
/// no poll.
async fn poll_while_watched(
    service: Arc<SessionService>,
    account: Arc<Account>,
    id: Arc<str>,
    abandoned: Abandoned,
    payer: Option<Payer>,
) {
    let metrics = service.cache.metrics().clone();
    metrics.live_pollers.inc();
    let open = service.cache.policy().open.max(MIN_POLL_INTERVAL);
    let mut wait = open;
    loop {
        tokio::select! {
            () = abandoned.wait() => break,
            () = tokio::time::sleep(wait) => {}
        }
        let lookup = service.cache.lookup_charged(&account, &id, payer.as_ref()).await;
        if is_settled(&lookup.answer) {
            break;
        }
        wait = match &lookup.answer {
            Err(FetchError::ClientRateLimited { retry_after_seconds }) => {
                Duration::from_secs(*retry_after_seconds)
            }
            _ => lookup.reusable_until.map_or(open, |until| until.saturating_duration_since(Instant::now())),
        }
        .max(MIN_POLL_INTERVAL);
    }
    metrics.live_pollers.dec();
}

/// An answer polling cannot change: a final status, or an error asking again would repeat
/// (not found, credentials or account refused, an invalid id). A session that is not found
/// a moment after its creation is the client's to ask again for.
fn is_settled(answer: &FetchResult) -> bool {
    match answer {
        Ok(session) => session.status.is_final(),
        Err(error) => error.is_final(),
    }
}

/// An answer after which a subscription ends (its error is the last event): there is no
/// session to follow, or the client's budget is spent (it subscribes again after
/// `retryAfterSeconds`; nothing is polled for it meanwhile). A final status does not end it:
/// a provider's webhook may still report a refund or a dispute of a completed payment.
fn ends_watch(answer: &FetchResult) -> bool {
    matches!(answer, Err(error) if error.is_final() || matches!(error, FetchError::ClientRateLimited { .. }))
}

/// However short an answer's lifetime, a poller waits at least this long between calls.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Forgets a refetch that ended other than by its loop (its task was dropped, or panicked), so
/// that webhooks for its session start another.
struct Refetched<'a> {
    refetching: &'a Mutex<HashMap<Key, bool>>,
    key: Option<Key>,
}

impl Drop for Refetched<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(self.refetching).remove(&key);
        }
    }
}
