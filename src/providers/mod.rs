//! Providers and their accounts.
//!
//! Owns: what a provider is to the rest of the gateway ([`ProviderKind`]: names,
//! environments, how to build its client, its details type and its sandbox), the one list of
//! built-in providers ([`Registry::builtin`]), what an account is ([`AccountConfig`], [`Account`]), and
//! the shared HTTP call every provider makes (`upstream`). Each provider is one folder: its
//! client and wire types (`mod.rs`), its details type (`details.rs`), its sandbox
//! (`sandbox.rs`). Wire types never leave their folder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{CheckoutSession, FetchError, FetchResult, Secret};
use crate::providers::schema::{DetailsObject, ProviderSchema};
use crate::telemetry::metrics::Metrics;
use sandbox::SandboxSpec;

pub mod dhmad;
pub mod dodo;
pub mod guard;
pub mod sandbox;
pub mod schema;
pub mod upstream;
pub mod webhook;

use guard::{CircuitState, Guard, GuardPolicy, RateLimit, SharedQuota};
use upstream::Upstream;
use webhook::WebhookSpec;

/// The providers a gateway is built with: a value handed to the configuration (which
/// accounts, webhooks and defaults may name), the schema and the application, so that a
/// provider defined elsewhere (a test's) is known to all of them alike.
#[derive(Clone, Debug)]
pub struct Registry(Vec<&'static ProviderKind>);

impl Registry {
    /// The providers of `src/providers/`: the one place that lists them.
    pub fn builtin() -> Self {
        Self(vec![&dhmad::KIND, &dodo::KIND])
    }

    /// These providers and `kind`, which comes last (in the schema's enum and union too).
    pub fn with(mut self, kind: &'static ProviderKind) -> Self {
        self.0.push(kind);
        self
    }

    /// The provider whose `slug` this is.
    pub fn get(&self, slug: &str) -> Option<&'static ProviderKind> {
        self.0.iter().copied().find(|kind| kind.slug == slug)
    }

    /// Every slug, for messages: `dhmad, dodo`.
    pub fn slugs(&self) -> String {
        self.0.iter().map(|kind| kind.slug).collect::<Vec<_>>().join(", ")
    }
}

impl<'a> IntoIterator for &'a Registry {
    type Item = &'a &'static ProviderKind;
    type IntoIter = std::slice::Iter<'a, &'static ProviderKind>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl std::ops::Deref for Registry {
    type Target = [&'static ProviderKind];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Reads a wait in seconds from an error body.
pub type BodyWait = fn(&[u8]) -> Option<u64>;

/// Everything the gateway knows about one provider, defined in that provider's module as a
/// `static`. Nothing outside the module names a provider.
#[derive(Debug)]
pub struct ProviderKind {
    /// The `Provider` enum value in the schema (`DHMAD`).
    pub name: &'static str,
    /// Lower case, stable: `provider = "…"` in an account, metrics labels, the default
    /// account's name (`dhmad`).
    pub slug: &'static str,
    /// For people: logs and messages.
    pub label: &'static str,
    /// The `Provider` enum value's description.
    pub description: &'static str,
    /// Named deployments (`environment = "…"` in an account) and their base URLs; the first
    /// is the default.
    pub environments: &'static [(&'static str, &'static str)],
    /// The environment variables that define the provider's default account, as before
    /// accounts existed (`DHMAD_API_KEY`, `DHMAD_BASE_URL`).
    pub key_var: &'static str,
    pub base_url_var: &'static str,
    /// The documented quota of one key (or IP), e.g. `100/min` or `40/s,240/min`: the
    /// gateway stays within it unless configured otherwise.
    pub rate_limit: &'static str,
    /// Reads the wait a 429's body asks for, for providers whose error body has such a field.
    pub retry_after_in_body: Option<BodyWait>,
    /// Builds the client for one account.
    pub client: fn(Upstream) -> Arc<dyn SessionProvider>,
    /// The GraphQL details object for a session of this provider.
    pub details: fn(Arc<CheckoutSession>) -> Box<dyn DetailsObject>,
    /// Registers the details object type in a schema.
    pub register_details: fn(&mut async_graphql::registry::Registry) -> String,
    /// The built-in stand-in for `--demo` and benchmarks.
    pub sandbox: SandboxSpec,
    /// How its webhooks are checked and read; `None`: it sends none (its watched sessions
    /// are polled).
    pub webhooks: Option<&'static WebhookSpec>,
    /// Reads back a session's details as another replica shared them.
    pub details_from_json: fn(&serde_json::Value) -> Option<Box<dyn crate::domain::ProviderDetails>>,
}

impl ProviderKind {
    pub fn schema(&self) -> ProviderSchema {
        ProviderSchema {
            name: self.name,
            description: self.description,
            register_details: self.register_details,
        }
    }

    /// The base URL of a named environment.
    pub fn environment(&self, name: &str) -> Option<&'static str> {
        self.environments.iter().find(|(known, _)| *known == name).map(|(_, url)| *url)
    }

    pub fn default_base_url(&self) -> &'static str {
        self.environments.first().map_or("", |(_, url)| url)
    }
}

/// One account as configured: a provider, an environment, a key, its own limits.
#[derive(Clone, Debug)]
pub struct AccountConfig {
    /// Unique among all accounts; what clients pass as `account` and metrics show.
    pub name: Arc<str>,
    pub kind: &'static ProviderKind,
    pub base_url: String,
    /// `None`: the account's sessions answer NOT_CONFIGURED.
    pub api_key: Option<Secret>,
    /// The provider's default account answers when a client names none.
    pub default: bool,
    /// Longest wait for one call, queueing included; `None`: the gateway's setting.
    pub upstream_timeout: Option<Duration>,
    /// Most calls in flight to the provider for this account; `None`: the gateway's setting.
    pub upstream_concurrency: Option<usize>,
    /// This account's quota; `None`: the gateway's setting, else the provider's documented one.
    pub rate_limit: Option<RateLimit>,
    /// The secret its webhook deliveries are signed with; `None`: none are accepted for it,
    /// and its watched sessions are polled.
    pub webhook_secret: Option<Secret>,
    /// The provider's own id for the account, as its events carry it (Dodo's `business_id`):
    /// with it, an event is acted on only by the account it names.
    pub business_id: Option<String>,
}

/// The gateway-wide limits an account uses where it sets none of its own.
#[derive(Clone, Debug)]
pub struct Limits {
    pub upstream_timeout: Duration,
    pub upstream_concurrency: usize,
    /// A whole lookup: queueing, quota waits, attempts and backoff.
    pub lookup_deadline: Duration,
    /// Overrides every provider's documented quota (`None`: each provider's own).
    pub rate_limit: Option<RateLimit>,
    pub retries: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// The longest wait a provider's signal (or the shared tier) may impose on calls.
    pub max_wait: Duration,
    /// Where every replica's calls are counted together (the shared tier); `None`: each
    /// replica counts its own.
    pub shared_quota: Option<Arc<dyn SharedQuota>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            upstream_timeout: Duration::from_secs(5),
            upstream_concurrency: 16,
            lookup_deadline: Duration::from_secs(10),
            rate_limit: None,
            retries: 2,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            max_wait: Duration::from_secs(3600),
            shared_quota: None,
        }
    }
}

impl AccountConfig {
    /// The account a provider has when nothing else is configured: named after the provider,
    /// its default environment, no key.
    pub fn unconfigured(kind: &'static ProviderKind) -> Self {
        Self {
            name: Arc::from(kind.slug),
            kind,
            base_url: kind.default_base_url().to_owned(),
            api_key: None,
            default: true,
            upstream_timeout: None,
            upstream_concurrency: None,
            rate_limit: None,
            webhook_secret: None,
            business_id: None,
        }
    }
}

/// A configured account, ready to call: its client and the scope its answers are cached
/// under.
#[derive(Debug)]
pub struct Account {
    pub config: AccountConfig,
    /// Whose view of the provider this is: account, provider, environment (base URL) and a
    /// fingerprint of the key. Two accounts may see different sessions under one id, so the
    /// cache keys on it.
    pub scope: Arc<str>,
    pub client: Arc<dyn SessionProvider>,
    /// Quota, 429 waits and circuit breaker, shared with the client's upstream.
    pub guard: Arc<Guard>,
}

impl Account {
    pub fn new(
        config: AccountConfig,
        defaults: &Limits,
        http: &reqwest::Client,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let rate_limit = match config.rate_limit.clone().or_else(|| defaults.rate_limit.clone()) {
            Some(limit) => limit,
            None => RateLimit::parse(config.kind.rate_limit)
                .map_err(|e| anyhow::anyhow!("{}'s documented quota: {e}", config.kind.label))?,
        };
        let guard = Arc::new(Guard::new(GuardPolicy {
            rate_limit,
            retries: defaults.retries,
            breaker_failures: defaults.breaker_failures,
            breaker_cooldown: defaults.breaker_cooldown,
            max_wait: defaults.max_wait,
        }));
        let limits = Limits {
            upstream_timeout: config.upstream_timeout.unwrap_or(defaults.upstream_timeout),
            upstream_concurrency: config.upstream_concurrency.unwrap_or(defaults.upstream_concurrency),
            ..defaults.clone()
        };
        let upstream = Upstream::new(&config, limits, guard.clone(), http.clone(), metrics.clone())?;
        let scope = upstream.scope().clone();
        if let Some(quota) = &defaults.shared_quota {
            guard.share(quota.clone(), scope.clone());
        }
        let client = (config.kind.client)(upstream);
        Ok(Self { config, scope, client, guard })
    }

    pub fn circuit(&self) -> CircuitState {
        self.guard.circuit()
    }

    /// How long a 429's hold keeps this replica from calling the account (zero: none).
    pub fn held_for(&self) -> std::time::Duration {
        self.guard.held_for()
    }

    pub fn name(&self) -> &Arc<str> {
        &self.config.name
    }

    pub fn kind(&self) -> &'static ProviderKind {
        self.config.kind
    }

    /// Whether the provider's webhooks keep this account's sessions current (else a watched
    /// session is polled).
    pub fn has_webhooks(&self) -> bool {
        self.config.kind.webhooks.is_some() && self.config.webhook_secret.is_some()
    }
}

/// Something that can fetch a checkout session from one provider, with one account.
#[async_trait]
pub trait SessionProvider: Send + Sync + fmt::Debug {
    /// The one spelling of `id` that the cache and the provider see, or `InvalidId` for an id
    /// that cannot exist at this provider: checked before the cache and any call, so that
    /// spellings of one session share one entry and junk never reaches the provider.
    fn canonical_id(&self, id: &str) -> Result<Arc<str>, FetchError>;

    /// Fetches one session by its canonical id.
    async fn fetch_session(&self, id: &Arc<str>) -> FetchResult;

    /// Whether the provider accepts the account's key, checked once at startup where the
    /// provider has a cheap identity call.
    async fn check_credentials(&self) -> CredentialStatus;
}

/// What the startup credential check found, reported by `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialStatus {
    /// The check has not finished yet.
    Checking,
    /// No key is configured: the account's sessions answer NOT_CONFIGURED.
    NotConfigured,
    /// A key is configured; the provider has no identity call to check it with.
    Unchecked,
    /// The provider accepted the key.
    Valid,
    /// The provider refused the key (401/403): every call will fail until it is fixed.
    Rejected,
    /// The provider could not be asked (timeout, connection, 5xx); calls may still work later.
    Unreachable,
}
