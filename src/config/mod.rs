//! Configuration: one typed [`Config`], from defaults, an optional TOML file, environment
//! variables and command-line flags (later wins). Every setting has one flag, one environment
//! variable and one file key (the flag's name with `_`); unknown file keys and bad values stop
//! startup with a message that names the setting. Secrets never appear in `Debug` or logs.
//!
//! Owns: settings and accounts. Accounts are `[accounts.NAME]` tables in the file; each
//! provider's default account can also come from the variables it declares in its module
//! (`DHMAD_API_KEY`, `DHMAD_BASE_URL`, …), as before accounts existed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Arg, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Deserialize;

use crate::access::{AccessConfig, ApiKey, AuthMode, JwtConfig, Rights};
use crate::cache::redis::SharedConfig;
use crate::cache::CachePolicy;
pub use crate::domain::Secret;
use crate::graphql::documents::{TrustMode, TrustedDocuments};
use crate::providers::guard::RateLimit;
use crate::providers::{self, AccountConfig, Limits, ProviderKind};
pub use crate::telemetry::LogFormat;

/// checkout-gateway: one GraphQL view of checkout sessions held by several payment providers.
///
/// Settings come from flags, environment variables and an optional TOML file (`--config`),
/// in that order of precedence, over built-in defaults. A file key is the flag's name with
/// `_` for `-` (e.g. `cache_ttl_open = "5s"`). Durations are written like `500ms`, `5s`, `1h`.
/// Several accounts per provider: `[accounts.NAME]` tables in the file (see the README).
#[derive(Parser, Debug)]
#[command(name = "checkout-gateway", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TOML file with settings (keys as the flags below, with `_`).
    #[arg(long, env = "GATEWAY_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Serve against built-in sandbox providers on 127.0.0.1 (no keys needed): every fixture
    /// status and every error case, as listed in the README.
    #[arg(long, env = "GATEWAY_DEMO")]
    pub demo: bool,

    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Serve GraphQL (the default).
    Serve,
    /// Print the GraphQL schema (federation SDL, as in schema.graphql) and exit.
    Schema,
}

/// Every setting, as given; `None` where not given. Parsed and checked by [`Config::resolve`].
#[derive(Args, Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address and port to serve on [default: 0.0.0.0:8080].
    #[arg(long, env = "GATEWAY_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// Longest wait for one provider call, queueing included; an account may set its own
    /// [default: 5s].
    #[arg(long, env = "GATEWAY_UPSTREAM_TIMEOUT", value_name = "DURATION")]
    pub upstream_timeout: Option<String>,

    /// A whole lookup, all attempts, backoff, quota and queue waits included [default: 10s].
    #[arg(long, env = "GATEWAY_LOOKUP_DEADLINE", value_name = "DURATION")]
    pub lookup_deadline: Option<String>,

    /// Further attempts of a read after a connection error, timeout, 408, 409, 429 or 5xx,
    /// within the lookup deadline [default: 2].
    #[arg(long, env = "GATEWAY_UPSTREAM_RETRIES", value_name = "N")]
    pub upstream_retries: Option<String>,

    /// Calls the gateway makes to a provider for one account, e.g. `40/s`, `100/min`,
    /// `40/s,240/min`, or `off`; overrides every provider's documented quota (an account may
    /// set its own) [default: each provider's documented quota].
    #[arg(long, env = "GATEWAY_UPSTREAM_RATE_LIMIT", value_name = "RATE")]
    pub upstream_rate_limit: Option<String>,

    /// Lookups one client (an API key, a token's subject) may send to providers, cache hits
    /// not counted, e.g. `600/min`, several joined with `,`, or `off`; past it the lookup is
    /// answered RATE_LIMITED with retryAfterSeconds [default: 600/min].
    #[arg(long, env = "GATEWAY_CLIENT_RATE_LIMIT", value_name = "RATE")]
    pub client_rate_limit: Option<String>,

    /// Consecutive failures (timeouts, connection errors, 5xx) of one account that open its
    /// circuit [default: 5].
    #[arg(long, env = "GATEWAY_BREAKER_FAILURES", value_name = "N")]
    pub breaker_failures: Option<String>,

    /// How long an open circuit answers CIRCUIT_OPEN without calling before one trial call
    /// [default: 30s].
    #[arg(long, env = "GATEWAY_BREAKER_COOLDOWN", value_name = "DURATION")]
    pub breaker_cooldown: Option<String>,

    /// The longest any wait signal may hold an account's calls: a 429's `Retry-After`,
    /// DHMAD's `retryAfter`, a hold read from Redis; longer ones are cut to this [default: 1h].
    #[arg(long, env = "GATEWAY_UPSTREAM_MAX_WAIT", value_name = "DURATION")]
    pub upstream_max_wait: Option<String>,

    /// How old a session may be and still be served (marked `stale`) when its provider cannot
    /// answer; 0s turns it off [default: 1h].
    #[arg(long, env = "GATEWAY_STALE_IF_ERROR", value_name = "DURATION")]
    pub stale_if_error: Option<String>,

    /// Most calls in flight to a provider for one account at once; an account may set its own
    /// [default: 16].
    #[arg(long, env = "GATEWAY_UPSTREAM_CONCURRENCY", value_name = "N")]
    pub upstream_concurrency: Option<String>,

    /// Bytes the cached sessions may hold, all accounts together (merchant metadata can be
    /// large); fits the manifests' 512 MiB memory limit [default: 134217728 (128 MiB)].
    #[arg(long, env = "GATEWAY_CACHE_MAX_BYTES", value_name = "BYTES")]
    pub cache_max_bytes: Option<String>,

    /// Most answers kept in the cache, all accounts together [default: 100000].
    #[arg(long, env = "GATEWAY_CACHE_MAX_ENTRIES", value_name = "N")]
    pub cache_max_entries: Option<String>,

    /// Bytes of whole responses kept for replay while everything in them may be reused; 0
    /// turns it off [default: 2097152 (2 MiB): thousands of small answers].
    #[arg(long, env = "GATEWAY_RESPONSE_CACHE_BYTES", value_name = "BYTES")]
    pub response_cache_bytes: Option<String>,

    /// Reuse of COMPLETED, CANCELLED and EXPIRED sessions [default: 1h].
    #[arg(long, env = "GATEWAY_CACHE_TTL_TERMINAL", value_name = "DURATION")]
    pub cache_ttl_terminal: Option<String>,

    /// Reuse of FAILED sessions [default: 30s].
    #[arg(long, env = "GATEWAY_CACHE_TTL_FAILED", value_name = "DURATION")]
    pub cache_ttl_failed: Option<String>,

    /// Reuse of OPEN, ACTION_REQUIRED, PROCESSING and UNKNOWN sessions, never past the
    /// session's own expiry [default: 5s].
    #[arg(long, env = "GATEWAY_CACHE_TTL_OPEN", value_name = "DURATION")]
    pub cache_ttl_open: Option<String>,

    /// Reuse of a not-found answer [default: 2s].
    #[arg(long, env = "GATEWAY_CACHE_TTL_NOT_FOUND", value_name = "DURATION")]
    pub cache_ttl_not_found: Option<String>,

    /// Most sessions one request may ask for through `checkoutSession` and `checkoutSessions`,
    /// aliases included [default: 100].
    #[arg(long, env = "GATEWAY_BATCH_MAX", value_name = "N")]
    pub batch_max: Option<String>,

    /// Deepest selection a document may nest [default: 32].
    #[arg(long, env = "GATEWAY_MAX_DEPTH", value_name = "N")]
    pub max_depth: Option<String>,

    /// Most complexity (fields selected, lists counted once) a document may have [default: 5000].
    #[arg(long, env = "GATEWAY_MAX_COMPLEXITY", value_name = "N")]
    pub max_complexity: Option<String>,

    /// Most aliases in a document [default: 200].
    #[arg(long, env = "GATEWAY_MAX_ALIASES", value_name = "N")]
    pub max_aliases: Option<String>,

    /// Most root fields an operation may select [default: 200].
    #[arg(long, env = "GATEWAY_MAX_ROOT_FIELDS", value_name = "N")]
    pub max_root_fields: Option<String>,

    /// Most representations one request's federation `_entities` may resolve; the same as a
    /// client's own batch [default: 100].
    #[arg(long, env = "GATEWAY_ENTITIES_MAX", value_name = "N")]
    pub entities_max: Option<String>,

    /// Serve `/metrics` on this address and port instead of the main one (keep scrapes off
    /// the public Service) [default: none: on the main port].
    #[arg(long, env = "GATEWAY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// Connections served at once; more wait in the kernel's backlog [default: 4096].
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,

    /// Time a client has to send a request's headers [default: 10s].
    #[arg(long, env = "GATEWAY_HEADER_READ_TIMEOUT", value_name = "DURATION")]
    pub header_read_timeout: Option<String>,

    /// How long a connection may stay open with no request in flight (HTTP/1.1 between
    /// requests, HTTP/2 with no open stream); then it is closed [default: 60s].
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,

    /// The longest a request may take; past it the client gets 503 [default: 30s].
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,

    /// The most a request body may hold, whatever its content type; more is refused with 413
    /// [default: 2097152 (2 MiB)].
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<String>,

    /// Serve GraphiQL to browsers at GET /graphql: `true` or `false` [default: false; true
    /// with --demo].
    #[arg(long, env = "GATEWAY_GRAPHIQL", value_name = "BOOL")]
    pub graphiql: Option<String>,

    /// Answer introspection (`__schema`, `__type`): `true` or `false`; federation's
    /// `_service { sdl }` is always answered [default: false; true with --demo].
    #[arg(long, env = "GATEWAY_INTROSPECTION", value_name = "BOOL")]
    pub introspection: Option<String>,

    /// Log lines waiting to be written at most; past it lines are dropped and counted rather
    /// than slowing requests [default: 65536].
    #[arg(long, env = "GATEWAY_LOG_QUEUE_LINES", value_name = "N")]
    pub log_queue_lines: Option<String>,

    /// Log format: `text` or `json` [default: text]. Levels come from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// After SIGTERM/SIGINT: how long /readyz answers 503 while the listener still serves, so
    /// the cluster stops routing here [default: 5s].
    #[arg(long, env = "GATEWAY_SHUTDOWN_DELAY", value_name = "DURATION")]
    pub shutdown_delay: Option<String>,

    /// After the delay: how long in-flight requests get to finish [default: 20s].
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,

    /// Subscription connections (WebSocket) and streams (Server-Sent Events) open at once;
    /// past it a new one gets 503 [default: 2048].
    #[arg(long, env = "GATEWAY_MAX_SUBSCRIPTION_CONNECTIONS", value_name = "N")]
    pub max_subscription_connections: Option<String>,

    /// Subscriptions one WebSocket connection or one Server-Sent Events stream (aliases) may
    /// run at once [default: 100].
    #[arg(long, env = "GATEWAY_SUBSCRIPTIONS_PER_CONNECTION", value_name = "N")]
    pub subscriptions_per_connection: Option<String>,

    /// How often an idle subscription connection is pinged (WebSocket ping, SSE comment), so
    /// that proxies keep it and a vanished peer is noticed [default: 15s].
    #[arg(long, env = "GATEWAY_SUBSCRIPTION_PING_INTERVAL", value_name = "DURATION")]
    pub subscription_ping_interval: Option<String>,

    /// Time a WebSocket client has to send `connection_init` after the upgrade; then the
    /// socket is closed with 4408 [default: 3s].
    #[arg(long, env = "GATEWAY_CONNECTION_INIT_TIMEOUT", value_name = "DURATION")]
    pub connection_init_timeout: Option<String>,

    /// The largest WebSocket message (and frame) a client may send; a larger one closes the
    /// socket with 1009 [default: 65536 (64 KiB)].
    #[arg(long, env = "GATEWAY_MAX_WS_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_ws_message_bytes: Option<String>,

    /// The shared tier replicas use together: `redis://[user:password@]host:port[/db]` or
    /// `rediss://…` (TLS); unset, each replica works alone [default: none].
    #[arg(long, env = "GATEWAY_REDIS_URL", value_name = "URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// Put before every Redis key and channel, so deployments can share a Redis
    /// [default: checkout-gateway:].
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", value_name = "PREFIX")]
    pub redis_prefix: Option<String>,

    /// The longest one Redis operation may take; past it the replica works without Redis for a
    /// moment [default: 100ms].
    #[arg(long, env = "GATEWAY_REDIS_TIMEOUT", value_name = "DURATION")]
    pub redis_timeout: Option<String>,

    /// How clients authenticate: `none`, `api-key` (keys in `[clients.NAME]` tables of the
    /// config file) or `jwt` (the GATEWAY_JWT_* settings). Required, `none` included, except
    /// with --demo [default: none with --demo; otherwise no default].
    #[arg(long, env = "GATEWAY_AUTH", value_name = "MODE")]
    pub auth: Option<String>,

    /// With `jwt`: the issuer's JWKS URL, fetched at startup and again for an unknown `kid`
    /// (at most every 10 s) [default: none].
    #[arg(long, env = "GATEWAY_JWT_JWKS_URL", value_name = "URL")]
    pub jwt_jwks_url: Option<String>,

    /// With `jwt`: how often the JWKS is fetched again in any case, so a key the issuer
    /// withdraws stops being accepted within it [default: 5m].
    #[arg(long, env = "GATEWAY_JWT_JWKS_REFRESH", value_name = "DURATION")]
    pub jwt_jwks_refresh: Option<String>,

    /// With `jwt`: the `iss` tokens must carry [default: none].
    #[arg(long, env = "GATEWAY_JWT_ISSUER", value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,

    /// With `jwt`: the `aud` tokens must carry [default: none].
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// With `jwt`: the signing algorithms accepted, comma-separated [default: RS256,ES256].
    #[arg(long, env = "GATEWAY_JWT_ALGORITHMS", value_name = "LIST")]
    pub jwt_algorithms: Option<String>,

    /// With `jwt`: clock skew allowed on `exp` and `nbf` [default: 60s].
    #[arg(long, env = "GATEWAY_JWT_LEEWAY", value_name = "DURATION")]
    pub jwt_leeway: Option<String>,

    /// With `jwt`: the claim listing the accounts a token may read (account names,
    /// `provider:<slug>`, or `*`) [default: checkout_accounts].
    #[arg(long, env = "GATEWAY_JWT_RIGHTS_CLAIM", value_name = "CLAIM")]
    pub jwt_rights_claim: Option<String>,

    /// The secret a router sends in `Router-Authorization`; a request carrying it is the
    /// router's (every account) [default: none: no router is admitted by secret].
    #[arg(long, env = "GATEWAY_ROUTER_SECRET", value_name = "SECRET", hide_env_values = true)]
    pub router_secret: Option<Secret>,

    /// The next router secret, also accepted while the router's is rotated [default: none].
    #[arg(long, env = "GATEWAY_ROUTER_SECRET_NEXT", value_name = "SECRET", hide_env_values = true)]
    pub router_secret_next: Option<Secret>,

    /// `true`: a request with the router's secret is authenticated by the client credentials
    /// the router forwards in `Authorization` (their rights apply), not as the router
    /// [default: false].
    #[arg(long, env = "GATEWAY_ROUTER_TRUST_IDENTITY", value_name = "BOOL")]
    pub router_trust_identity: Option<String>,

    /// A persisted query manifest (Apollo's JSON format) of the operations clients may run;
    /// unset, any operation may [default: none].
    #[arg(long, env = "GATEWAY_TRUSTED_DOCUMENTS", value_name = "FILE")]
    pub trusted_documents: Option<String>,

    /// `enforce` (other operations are refused) or `log` (they run and are logged, for a
    /// roll-out) [default: enforce].
    #[arg(long, env = "GATEWAY_TRUSTED_DOCUMENTS_MODE", value_name = "MODE")]
    pub trusted_documents_mode: Option<String>,

    /// Automatic persisted queries (Apollo's APQ: a known document sent by its hash alone):
    /// `true` or `false` [default: true].
    #[arg(long, env = "GATEWAY_APQ", value_name = "BOOL")]
    pub apq: Option<String>,

    /// With --demo: latency the sandbox providers add to every answer, e.g. `20ms` [default: 0s].
    #[arg(long, env = "GATEWAY_DEMO_LATENCY", value_name = "DURATION")]
    pub demo_latency: Option<String>,

    /// With --demo: how long a `cks_live_…` sandbox session stays in each status (open,
    /// processing, succeeded), each change announced by a signed webhook [default: 20s].
    #[arg(long, env = "GATEWAY_DEMO_STEP", value_name = "DURATION")]
    pub demo_step: Option<String>,
}

impl Settings {
    /// `self` where given, else `other`.
    fn or(self, other: Settings) -> Settings {
        macro_rules! pick {
            ($($field:ident),* $(,)?) => {
                Settings { $($field: self.$field.or(other.$field)),* }
            };
        }
        pick!(
            listen,
            upstream_timeout,
            lookup_deadline,
            upstream_retries,
            upstream_rate_limit,
            client_rate_limit,
            breaker_failures,
            breaker_cooldown,
            upstream_max_wait,
            stale_if_error,
            upstream_concurrency,
            cache_max_entries,
            cache_max_bytes,
            response_cache_bytes,
            cache_ttl_terminal,
            cache_ttl_failed,
            cache_ttl_open,
            cache_ttl_not_found,
            batch_max,
            entities_max,
            max_depth,
            max_complexity,
            max_aliases,
            max_root_fields,
            max_connections,
            metrics_listen,
            header_read_timeout,
            idle_timeout,
            request_timeout,
            max_body_bytes,
            graphiql,
            introspection,
            log_queue_lines,
            log_format,
            shutdown_delay,
            shutdown_grace,
            max_subscription_connections,
            subscriptions_per_connection,
            subscription_ping_interval,
            connection_init_timeout,
            max_ws_message_bytes,
            redis_url,
            redis_prefix,
            redis_timeout,
            auth,
            jwt_jwks_url,
            jwt_jwks_refresh,
            jwt_issuer,
            jwt_audience,
            jwt_algorithms,
            jwt_leeway,
            jwt_rights_claim,
            router_secret,
            router_secret_next,
            router_trust_identity,
            trusted_documents,
            trusted_documents_mode,
            apq,
            demo_latency,
            demo_step,
        )
    }
}

/// Values are read as text, so that `cache_max_entries = 5000` and `cache_max_entries =
/// "5000"` mean the same.
fn as_text(value: toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A table of scalar values as text, for serde to check against a settings struct.
fn flatten(table: toml::Table, at: &str) -> Result<serde_json::Value, ConfigError> {
    let mut flat = serde_json::Map::new();
    for (key, value) in table {
        let text = as_text(value)
            .ok_or_else(|| ConfigError::File(format!("{at}`{key}` must be a string or a number")))?;
        flat.insert(key, serde_json::Value::String(text));
    }
    Ok(serde_json::Value::Object(flat))
}

/// One `[accounts.NAME]` table, as written.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct AccountTable {
    /// The provider's `slug` (`dhmad`, `dodo`).
    pub provider: Option<String>,
    /// A named deployment of the provider (`live`, `sandbox`, `test`)…
    pub environment: Option<String>,
    /// …or a base URL.
    pub base_url: Option<String>,
    /// The name of the environment variable holding the key…
    pub api_key_env: Option<String>,
    /// …or the path of a file holding it (a mounted Secret).
    pub api_key_file: Option<PathBuf>,
    /// `true`: answers when a request names no account.
    pub default: Option<String>,
    pub upstream_timeout: Option<String>,
    pub upstream_concurrency: Option<String>,
    /// Overrides the gateway's setting and the provider's documented quota.
    pub rate_limit: Option<String>,
    /// The name of the environment variable holding the webhook signing secret…
    pub webhook_secret_env: Option<String>,
    /// …or the path of a file holding it.
    pub webhook_secret_file: Option<PathBuf>,
    /// The provider's id for the account as its events carry it (Dodo: `business_id`).
    pub business_id: Option<String>,
}

/// What one source (the file, or flags and environment) says about a provider's default
/// account in the variables it had before accounts existed.
#[derive(Debug, Default, Clone)]
pub struct LegacyAccount {
    pub api_key: Option<Secret>,
    pub base_url: Option<String>,
    /// From the provider's webhook variable (`DODO_PAYMENTS_WEBHOOK_KEY`).
    pub webhook_secret: Option<Secret>,
}

impl LegacyAccount {
    fn or(self, other: LegacyAccount) -> LegacyAccount {
        LegacyAccount {
            api_key: self.api_key.or(other.api_key),
            base_url: self.base_url.or(other.base_url),
            webhook_secret: self.webhook_secret.or(other.webhook_secret),
        }
    }

    fn is_given(&self) -> bool {
        self.api_key.is_some() || self.base_url.is_some() || self.webhook_secret.is_some()
    }
}

/// Everything the sources say, before it is checked.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub settings: Settings,
    /// By provider slug.
    pub legacy: BTreeMap<String, LegacyAccount>,
    /// By account name.
    pub accounts: BTreeMap<String, AccountTable>,
    /// API-key clients, by name.
    pub clients: BTreeMap<String, ClientTable>,
    pub demo: bool,
}

/// One `[clients.NAME]` table: an API key's hash and what it may read.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct ClientTable {
    /// SHA-256 of the key, hex (`printf %s "$KEY" | sha256sum`): the key itself is never
    /// written anywhere.
    pub key_sha256: String,
    /// Account names, `provider:<slug>`, or `["*"]` for all.
    pub accounts: Vec<String>,
}

impl Sources {
    /// Reads a TOML settings file: top-level settings, the providers' single-account keys
    /// (`dhmad_api_key`, `dhmad_base_url`, …) and `[accounts.NAME]` tables.
    pub fn from_file(path: &Path) -> Result<Sources, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File(format!("cannot read {}: {e}", path.display())))?;
        let mut table: toml::Table = toml::from_str(&text)
            .map_err(|e| ConfigError::File(format!("{} is not valid TOML: {e}", path.display())))?;
        let at = format!("{}: ", path.display());
        let mut sources = Sources::default();
        if let Some(clients) = table.remove("clients") {
            let toml::Value::Table(clients) = clients else {
                return Err(ConfigError::File(format!(
                    "{at}`clients` must be a table of [clients.NAME] tables"
                )));
            };
            for (name, client) in clients {
                let client: ClientTable =
                    client.try_into().map_err(|e| ConfigError::File(format!("{at}clients.{name}: {e}")))?;
                sources.clients.insert(name, client);
            }
        }
        if let Some(accounts) = table.remove("accounts") {
            let toml::Value::Table(accounts) = accounts else {
                return Err(ConfigError::File(format!(
                    "{at}`accounts` must be a table of [accounts.NAME] tables"
                )));
            };
            for (name, account) in accounts {
                let toml::Value::Table(mut account) = account else {
                    return Err(ConfigError::File(format!("{at}`accounts.{name}` must be a table")));
                };
                if account.remove("api_key").is_some() {
                    return Err(ConfigError::File(format!(
                        "{at}accounts.{name}: a key is never written in the file; name its variable \
                         with api_key_env, or its file with api_key_file"
                    )));
                }
                let account = serde_json::from_value(flatten(account, &at)?)
                    .map_err(|e| ConfigError::File(format!("{at}accounts.{name}: {e}")))?;
                sources.accounts.insert(name, account);
            }
        }
        for kind in providers::builtin() {
            let key = table.remove(&format!("{}_api_key", kind.slug)).and_then(as_text);
            let base_url = table.remove(&format!("{}_base_url", kind.slug)).and_then(as_text);
            if table.contains_key(&format!("{}_webhook_secret", kind.slug)) {
                return Err(ConfigError::File(format!(
                    "{at}a webhook secret is never written in the file; set {} or use an \
                     [accounts.NAME] table with webhook_secret_env or webhook_secret_file",
                    kind.webhooks.map_or("its variable", |w| w.secret_var)
                )));
            }
            let legacy = LegacyAccount { api_key: key.map(Secret::new), base_url, webhook_secret: None };
            if legacy.is_given() {
                sources.legacy.insert(kind.slug.to_owned(), legacy);
            }
        }
        sources.settings = serde_json::from_value(flatten(table, &at)?)
            .map_err(|e| ConfigError::File(format!("{}: {e}", path.display())))?;
        Ok(sources)
    }

    /// `self` where given, else `other`.
    pub fn or(self, other: Sources) -> Sources {
        let mut legacy = other.legacy;
        for (slug, given) in self.legacy {
            let merged = given.or(legacy.remove(&slug).unwrap_or_default());
            legacy.insert(slug, merged);
        }
        let mut accounts = other.accounts;
        accounts.extend(self.accounts);
        let mut clients = other.clients;
        clients.extend(self.clients);
        Sources {
            settings: self.settings.or(other.settings),
            legacy,
            accounts,
            clients,
            demo: self.demo || other.demo,
        }
    }
}

/// The command line: [`Cli`], plus each provider's single-account flags (`--dhmad-api-key`,
/// `--dhmad-base-url`, with their environment variables), which come from the provider
/// modules.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    for kind in providers::builtin() {
        command = command
            .arg(
                Arg::new(format!("{}_api_key", kind.slug))
                    .long(format!("{}-api-key", kind.slug))
                    .env(kind.key_var)
                    .value_name("KEY")
                    .hide_env_values(true)
                    .help(format!(
                        "{} API key of the default `{}` account; without it (and without accounts) {} \
                         answers NOT_CONFIGURED",
                        kind.label, kind.slug, kind.label
                    )),
            )
            .arg(
                Arg::new(format!("{}_base_url", kind.slug))
                    .long(format!("{}-base-url", kind.slug))
                    .env(kind.base_url_var)
                    .value_name("URL")
                    .help(format!(
                        "{} base URL of the default `{}` account [default: {}; {}]",
                        kind.label,
                        kind.slug,
                        kind.default_base_url(),
                        kind.environments
                            .iter()
                            .map(|(name, url)| format!("{name}: {url}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
            );
        if let Some(webhooks) = kind.webhooks {
            command = command.arg(
                Arg::new(format!("{}_webhook_secret", kind.slug))
                    .long(format!("{}-webhook-secret", kind.slug))
                    .env(webhooks.secret_var)
                    .value_name("SECRET")
                    .hide_env_values(true)
                    .help(format!(
                        "{} webhook signing secret of the default `{}` account; without it POST \
                         /webhooks/{} answers 404 and its watched sessions are polled",
                        kind.label, kind.slug, kind.slug
                    )),
            );
        }
    }
    command
}

/// Parses the process's arguments (and environment); exits with clap's message on an error.
pub fn parse() -> (Cli, Sources) {
    let matches = command().get_matches();
    match from_matches(&matches) {
        Ok(parsed) => parsed,
        Err(error) => error.exit(),
    }
}

fn from_matches(matches: &ArgMatches) -> Result<(Cli, Sources), clap::Error> {
    let cli = Cli::from_arg_matches(matches)?;
    let mut legacy = BTreeMap::new();
    for kind in providers::builtin() {
        // An empty variable (as a manifest may leave one) says nothing.
        let text = |id: String| matches.get_one::<String>(&id).filter(|v| !v.trim().is_empty()).cloned();
        let given = LegacyAccount {
            api_key: text(format!("{}_api_key", kind.slug)).map(Secret::new),
            base_url: text(format!("{}_base_url", kind.slug)),
            webhook_secret: text(format!("{}_webhook_secret", kind.slug)).map(Secret::new),
        };
        if given.is_given() {
            legacy.insert(kind.slug.to_owned(), given);
        }
    }
    let sources = Sources {
        settings: cli.settings.clone(),
        legacy,
        accounts: BTreeMap::new(),
        clients: BTreeMap::new(),
        demo: cli.demo,
    };
    Ok((cli, sources))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration file: {0}")]
    File(String),
    #[error("invalid setting {setting}: {reason}")]
    Invalid { setting: String, reason: String },
}

/// The checked configuration the gateway runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Every configured account; a provider with none gets an unconfigured default account
    /// when the application is built.
    pub accounts: Vec<AccountConfig>,
    pub upstream_timeout: Duration,
    pub upstream_concurrency: usize,
    pub lookup_deadline: Duration,
    pub upstream_retries: u32,
    /// `None`: each provider's documented quota.
    pub upstream_rate_limit: Option<RateLimit>,
    /// Each metered client's budget of lookups that reach a provider; empty: `off`.
    pub client_rate_limit: RateLimit,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// The longest wait any signal may impose on an account's calls.
    pub upstream_max_wait: Duration,
    pub cache: CachePolicy,
    /// Bytes of whole responses kept for replay; 0: none.
    pub response_cache_bytes: u64,
    pub batch_max: usize,
    pub entities_max: usize,
    pub max_depth: usize,
    pub max_complexity: usize,
    pub max_aliases: usize,
    pub max_root_fields: usize,
    pub max_connections: usize,
    /// `/metrics` on its own port; `None`: on the main one.
    pub metrics_listen: Option<SocketAddr>,
    pub header_read_timeout: Duration,
    /// How long a connection with no request in flight is kept.
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub graphiql: bool,
    pub introspection: bool,
    pub log_queue_lines: usize,
    pub log_format: LogFormat,
    pub shutdown_delay: Duration,
    pub shutdown_grace: Duration,
    pub max_subscription_connections: usize,
    pub subscriptions_per_connection: usize,
    pub subscription_ping_interval: Duration,
    /// Time a WebSocket client has to send `connection_init`.
    pub connection_init_timeout: Duration,
    /// The largest WebSocket message a client may send.
    pub max_ws_message_bytes: usize,
    /// The shared tier; `None`: each replica works alone.
    pub redis: Option<SharedConfig>,
    /// Who may ask; `None`: not chosen (allowed only with `--demo`, where it means none).
    pub access: Option<AccessConfig>,
    /// The operations clients may run; `None`: any.
    pub trusted_documents: Option<Arc<TrustedDocuments>>,
    /// Answer Apollo's automatic persisted queries.
    pub apq: bool,
    /// Serve against the built-in sandbox providers instead of the configured ones.
    pub demo: bool,
    pub demo_latency: Duration,
    pub demo_step: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config::resolve(Settings::default(), false).expect("the defaults are valid")
    }
}

impl Config {
    /// Loads everything the command line says: flags and environment (through clap), then the
    /// file named by `--config`, then defaults.
    pub fn load(cli: &Cli, given: Sources) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => Sources::from_file(path)?,
            None => Sources::default(),
        };
        Config::resolve_sources(given.or(file))
    }

    /// Parses and checks every setting, falling back to the defaults; no accounts beyond the
    /// providers' defaults.
    pub fn resolve(settings: Settings, demo: bool) -> Result<Config, ConfigError> {
        Config::resolve_sources(Sources { settings, demo, ..Sources::default() })
    }

    /// Parses and checks every setting and account, falling back to the defaults.
    pub fn resolve_sources(sources: Sources) -> Result<Config, ConfigError> {
        let Sources { settings, legacy, accounts, clients, demo } = sources;
        let names = SettingNames::new();
        let duration = |id: &str, value: &Option<String>, default: &str| {
            parse_duration(value.as_deref().unwrap_or(default)).map_err(|reason| names.invalid(id, reason))
        };
        let whole = |id: &str, value: &Option<String>, default: u64, range: RangeInclusive<u64>| {
            value
                .as_deref()
                .map_or(Ok(default), |raw| parse_whole(raw, range).map_err(|r| names.invalid(id, r)))
        };
        let positive =
            |id: &str, value: &Option<String>, default: u64, max: u64| whole(id, value, default, 1..=max);

        let listen = settings.listen.as_deref().unwrap_or("0.0.0.0:8080");
        let listen = listen.trim().parse::<SocketAddr>().map_err(|_| {
            names.invalid("listen", format!("`{listen}` is not an address and port such as 0.0.0.0:8080"))
        })?;
        let boolean = |id: &str, value: &Option<String>, default: bool| match value.as_deref().map(str::trim)
        {
            None => Ok(default),
            Some("true" | "on" | "1") => Ok(true),
            Some("false" | "off" | "0") => Ok(false),
            Some(other) => Err(names.invalid(id, format!("`{other}` is neither true nor false"))),
        };
        let positive_duration = |id: &str, value: &Option<String>, default: &str| {
            let d = duration(id, value, default)?;
            if d.is_zero() {
                return Err(names.invalid(id, "must be longer than zero".into()));
            }
            Ok(d)
        };
        // A timer's deadline is `now + d`: an unbounded duration would overflow it at first use.
        let duration_up_to = |id: &str, value: &Option<String>, default: &str, max: Duration| {
            let d = positive_duration(id, value, default)?;
            if d > max {
                return Err(names.invalid(id, format!("must be at most {}", humantime::format_duration(max))));
            }
            Ok(d)
        };
        let log_format = match settings.log_format.as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(names.invalid("log_format", format!("`{other}` is neither `text` nor `json`")))
            }
        };
        let mut resolved = Vec::new();
        for kind in providers::builtin() {
            let Some(given) = legacy.get(kind.slug) else { continue };
            let base_url = given.base_url.as_deref().unwrap_or(kind.default_base_url());
            let id = format!("{}_base_url", kind.slug);
            resolved.push(AccountConfig {
                base_url: parse_base_url(base_url).map_err(|reason| names.invalid(&id, reason))?,
                api_key: given.api_key.clone().filter(|key| !key.expose().trim().is_empty()),
                webhook_secret: check_webhook_secret(kind, given.webhook_secret.clone())
                    .map_err(|reason| names.invalid(&format!("{}_webhook_secret", kind.slug), reason))?,
                ..AccountConfig::unconfigured(kind)
            });
        }
        for (name, table) in &accounts {
            // A table named after an account the variables define only tunes it: the
            // variables keep the key and the URL.
            if let Some(defined) = resolved.iter_mut().find(|other| *other.name == **name) {
                tune_account(defined, table)?;
                continue;
            }
            resolved.push(resolve_account(name, table)?);
        }
        choose_defaults(&mut resolved)?;
        let config = Config {
            listen,
            accounts: resolved,
            upstream_timeout: positive_duration("upstream_timeout", &settings.upstream_timeout, "5s")?,
            upstream_concurrency: positive("upstream_concurrency", &settings.upstream_concurrency, 16, 1024)?
                as usize,
            lookup_deadline: positive_duration("lookup_deadline", &settings.lookup_deadline, "10s")?,
            upstream_retries: whole("upstream_retries", &settings.upstream_retries, 2, 0..=10)? as u32,
            upstream_rate_limit: settings
                .upstream_rate_limit
                .as_deref()
                .map(RateLimit::parse)
                .transpose()
                .map_err(|reason| names.invalid("upstream_rate_limit", reason))?,
            client_rate_limit: RateLimit::parse(settings.client_rate_limit.as_deref().unwrap_or("600/min"))
                .map_err(|reason| names.invalid("client_rate_limit", reason))?,
            breaker_failures: positive("breaker_failures", &settings.breaker_failures, 5, 1000)? as u32,
            breaker_cooldown: positive_duration("breaker_cooldown", &settings.breaker_cooldown, "30s")?,
            upstream_max_wait: positive_duration("upstream_max_wait", &settings.upstream_max_wait, "1h")?,
            cache: CachePolicy {
                terminal: duration("cache_ttl_terminal", &settings.cache_ttl_terminal, "1h")?,
                failed: duration("cache_ttl_failed", &settings.cache_ttl_failed, "30s")?,
                open: duration("cache_ttl_open", &settings.cache_ttl_open, "5s")?,
                not_found: duration("cache_ttl_not_found", &settings.cache_ttl_not_found, "2s")?,
                stale_if_error: duration("stale_if_error", &settings.stale_if_error, "1h")?,
                max_entries: positive(
                    "cache_max_entries",
                    &settings.cache_max_entries,
                    100_000,
                    100_000_000,
                )?,
                max_bytes: positive(
                    "cache_max_bytes",
                    &settings.cache_max_bytes,
                    128 * 1024 * 1024,
                    1 << 40,
                )?,
            },
            response_cache_bytes: whole(
                "response_cache_bytes",
                &settings.response_cache_bytes,
                2 * 1024 * 1024,
                0..=1 << 40,
            )?,
            batch_max: positive("batch_max", &settings.batch_max, 100, 10_000)? as usize,
            entities_max: positive("entities_max", &settings.entities_max, 100, 100_000)? as usize,
            max_depth: positive("max_depth", &settings.max_depth, 32, 1_000)? as usize,
            max_complexity: positive("max_complexity", &settings.max_complexity, 5_000, 10_000_000)? as usize,
            max_aliases: whole("max_aliases", &settings.max_aliases, 200, 0..=100_000)? as usize,
            max_root_fields: positive("max_root_fields", &settings.max_root_fields, 200, 100_000)? as usize,
            max_connections: positive("max_connections", &settings.max_connections, 4096, 1_000_000)?
                as usize,
            metrics_listen: settings
                .metrics_listen
                .as_deref()
                .map(str::trim)
                .filter(|addr| !addr.is_empty())
                .map(|addr| {
                    addr.parse::<SocketAddr>().map_err(|_| {
                        names.invalid(
                            "metrics_listen",
                            format!("`{addr}` is not an address and port such as 0.0.0.0:9090"),
                        )
                    })
                })
                .transpose()?,
            header_read_timeout: positive_duration(
                "header_read_timeout",
                &settings.header_read_timeout,
                "10s",
            )?,
            idle_timeout: duration_up_to("idle_timeout", &settings.idle_timeout, "60s", DAY)?,
            request_timeout: positive_duration("request_timeout", &settings.request_timeout, "30s")?,
            max_body_bytes: positive("max_body_bytes", &settings.max_body_bytes, 2 * 1024 * 1024, 1 << 30)?
                as usize,
            graphiql: boolean("graphiql", &settings.graphiql, demo)?,
            introspection: boolean("introspection", &settings.introspection, demo)?,
            log_queue_lines: positive("log_queue_lines", &settings.log_queue_lines, 65_536, 10_000_000)?
                as usize,
            log_format,
            shutdown_delay: duration("shutdown_delay", &settings.shutdown_delay, "5s")?,
            shutdown_grace: duration("shutdown_grace", &settings.shutdown_grace, "20s")?,
            max_subscription_connections: positive(
                "max_subscription_connections",
                &settings.max_subscription_connections,
                2048,
                1_000_000,
            )? as usize,
            subscriptions_per_connection: positive(
                "subscriptions_per_connection",
                &settings.subscriptions_per_connection,
                100,
                100_000,
            )? as usize,
            subscription_ping_interval: positive_duration(
                "subscription_ping_interval",
                &settings.subscription_ping_interval,
                "15s",
            )?,
            connection_init_timeout: duration_up_to(
                "connection_init_timeout",
                &settings.connection_init_timeout,
                "3s",
                HOUR,
            )?,
            // Below 1 KiB no `subscribe` message fits; tungstenite's own default is 64 MiB.
            max_ws_message_bytes: whole(
                "max_ws_message_bytes",
                &settings.max_ws_message_bytes,
                64 * 1024,
                1024..=64 * 1024 * 1024,
            )? as usize,
            redis: match settings.redis_url.as_ref().filter(|url| !url.expose().trim().is_empty()) {
                None => None,
                Some(url) => {
                    let scheme = url.expose().trim().split("://").next().unwrap_or("");
                    if !matches!(scheme, "redis" | "rediss") {
                        return Err(
                            names.invalid("redis_url", "must start with redis:// or rediss://".into())
                        );
                    }
                    Some(SharedConfig {
                        url: Secret::new(url.expose().trim()),
                        prefix: settings.redis_prefix.clone().unwrap_or_else(|| "checkout-gateway:".into()),
                        timeout: positive_duration("redis_timeout", &settings.redis_timeout, "100ms")?,
                    })
                }
            },
            access: resolve_access(
                &settings,
                &clients,
                &names,
                boolean("router_trust_identity", &settings.router_trust_identity, false)?,
            )?,
            trusted_documents: match settings
                .trusted_documents
                .as_deref()
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                None => None,
                Some(path) => {
                    let mode = match settings.trusted_documents_mode.as_deref().map(str::trim) {
                        None | Some("enforce") => TrustMode::Enforce,
                        Some("log") => TrustMode::Log,
                        Some(other) => {
                            return Err(names.invalid(
                                "trusted_documents_mode",
                                format!("`{other}` is neither enforce nor log"),
                            ))
                        }
                    };
                    let trusted = TrustedDocuments::load(Path::new(path), mode)
                        .map_err(|reason| names.invalid("trusted_documents", reason))?;
                    Some(Arc::new(trusted))
                }
            },
            apq: boolean("apq", &settings.apq, true)?,
            demo,
            demo_latency: duration("demo_latency", &settings.demo_latency, "0s")?,
            demo_step: positive_duration("demo_step", &settings.demo_step, "20s")?,
        };
        Ok(config)
    }
}

impl Config {
    /// What every account uses where it sets nothing of its own.
    pub fn limits(&self) -> Limits {
        Limits {
            upstream_timeout: self.upstream_timeout,
            upstream_concurrency: self.upstream_concurrency,
            lookup_deadline: self.lookup_deadline,
            rate_limit: self.upstream_rate_limit.clone(),
            retries: self.upstream_retries,
            breaker_failures: self.breaker_failures,
            breaker_cooldown: self.breaker_cooldown,
            max_wait: self.upstream_max_wait,
            // The application adds the shared tier's, when it has one.
            shared_quota: None,
        }
    }
}

/// Who may ask: `None` when GATEWAY_AUTH is not given (the application refuses to start
/// without `--demo`).
fn resolve_access(
    settings: &Settings,
    clients: &BTreeMap<String, ClientTable>,
    names: &SettingNames,
    trust_router_identity: bool,
) -> Result<Option<AccessConfig>, ConfigError> {
    let Some(mode) = settings.auth.as_deref() else {
        if !clients.is_empty() {
            return Err(
                names.invalid("auth", "[clients.NAME] tables are given: set GATEWAY_AUTH=api-key".into())
            );
        }
        return Ok(None);
    };
    let mode = AuthMode::parse(mode).map_err(|reason| names.invalid("auth", reason))?;
    let mut api_keys = Vec::new();
    for (name, client) in clients {
        let hash = client.key_sha256.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ConfigError::Invalid {
                setting: format!("clients.{name}.key_sha256 in the config file"),
                reason: "is not a SHA-256 as 64 hex digits (printf %s \"$KEY\" | sha256sum)".into(),
            });
        }
        api_keys.push(ApiKey {
            name: name.clone(),
            sha256: hash,
            rights: Rights::from_list(&client.accounts),
        });
    }
    if mode == AuthMode::ApiKey && api_keys.is_empty() {
        return Err(names
            .invalid("auth", "`api-key` needs at least one [clients.NAME] table in the config file".into()));
    }
    let jwt = if mode == AuthMode::Jwt {
        let required = |id: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| names.invalid(id, "is required with GATEWAY_AUTH=jwt".into()))
        };
        let algorithms = settings
            .jwt_algorithms
            .as_deref()
            .unwrap_or("RS256,ES256")
            .split(',')
            .map(|name| name.trim().parse::<jsonwebtoken::Algorithm>().map_err(|_| name.trim().to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|bad| {
                names.invalid("jwt_algorithms", format!("`{bad}` is not a JWT algorithm (RS256, ES256, …)"))
            })?;
        if algorithms.iter().any(|a| {
            matches!(
                a,
                jsonwebtoken::Algorithm::HS256
                    | jsonwebtoken::Algorithm::HS384
                    | jsonwebtoken::Algorithm::HS512
            )
        }) {
            return Err(names.invalid(
                "jwt_algorithms",
                "shared-secret (HS*) algorithms cannot be verified with a JWKS".into(),
            ));
        }
        let leeway = parse_duration(settings.jwt_leeway.as_deref().unwrap_or("60s"))
            .map_err(|reason| names.invalid("jwt_leeway", reason))?;
        let jwks_url = required("jwt_jwks_url", &settings.jwt_jwks_url)?;
        check_jwks_url(&jwks_url).map_err(|reason| names.invalid("jwt_jwks_url", reason))?;
        let jwks_refresh = parse_duration(settings.jwt_jwks_refresh.as_deref().unwrap_or("5m"))
            .and_then(|every| {
                if every < Duration::from_secs(1) {
                    return Err("must be at least 1s".into());
                }
                Ok(every)
            })
            .map_err(|reason| names.invalid("jwt_jwks_refresh", reason))?;
        Some(JwtConfig {
            jwks_url,
            issuer: required("jwt_issuer", &settings.jwt_issuer)?,
            audience: required("jwt_audience", &settings.jwt_audience)?,
            algorithms,
            leeway,
            jwks_refresh,
            rights_claim: settings.jwt_rights_claim.clone().unwrap_or_else(|| "checkout_accounts".into()),
        })
    } else {
        None
    };
    let router_secrets: Vec<Secret> = [&settings.router_secret, &settings.router_secret_next]
        .into_iter()
        .flatten()
        .filter(|secret| !secret.expose().trim().is_empty())
        .map(|secret| Secret::new(secret.expose().trim()))
        .collect();
    Ok(Some(AccessConfig { mode, api_keys, jwt, router_secrets, trust_router_identity }))
}

/// Account names are metrics labels and GraphQL arguments: short and plain.
fn check_account_name(name: &str) -> Result<(), String> {
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
    if name.is_empty() || name.len() > 32 || !name.bytes().all(plain) {
        return Err(format!(
            "`{name}` is not an account name: 1 to 32 characters from a-z, 0-9, `_` and `-`"
        ));
    }
    Ok(())
}

/// One `[accounts.NAME]` table, checked. The key is read now, so that a missing variable or
/// file stops startup rather than failing every request.
fn resolve_account(name: &str, table: &AccountTable) -> Result<AccountConfig, ConfigError> {
    let invalid = |field: &str, reason: String| account_error(name, field, reason);
    check_account_name(name).map_err(|reason| invalid("", reason))?;
    let slugs = || providers::builtin().iter().map(|k| k.slug).collect::<Vec<_>>().join(", ");
    let slug = table
        .provider
        .as_deref()
        .map(str::trim)
        .ok_or_else(|| invalid("provider", format!("is required: one of {}", slugs())))?;
    let kind: &'static ProviderKind = providers::builtin()
        .into_iter()
        .find(|kind| kind.slug == slug)
        .ok_or_else(|| invalid("provider", format!("`{slug}` is not a provider: one of {}", slugs())))?;
    let base_url = match (&table.environment, &table.base_url) {
        (Some(_), Some(_)) => {
            return Err(invalid("base_url", "give `environment` or `base_url`, not both".into()))
        }
        (Some(environment), None) => kind.environment(environment.trim()).ok_or_else(|| {
            let known: Vec<_> = kind.environments.iter().map(|(name, _)| *name).collect();
            invalid(
                "environment",
                format!("`{environment}` is not a {} environment: one of {}", kind.label, known.join(", ")),
            )
        })?,
        (None, Some(url)) => url.as_str(),
        (None, None) => kind.default_base_url(),
    };
    let base_url = parse_base_url(base_url).map_err(|reason| invalid("base_url", reason))?;
    let api_key =
        read_secret(name, ("api_key_env", &table.api_key_env), ("api_key_file", &table.api_key_file))?
            .ok_or_else(|| {
                invalid("api_key_env", "an account needs `api_key_env` or `api_key_file`".into())
            })?;
    let webhook_secret = read_secret(
        name,
        ("webhook_secret_env", &table.webhook_secret_env),
        ("webhook_secret_file", &table.webhook_secret_file),
    )?;
    let webhook_secret =
        check_webhook_secret(kind, webhook_secret).map_err(|reason| invalid("webhook_secret_env", reason))?;
    let default = parse_default(name, table)?;
    let (upstream_timeout, upstream_concurrency, rate_limit) = resolve_limits(name, table)?;
    Ok(AccountConfig {
        name: Arc::from(name),
        kind,
        base_url,
        api_key: Some(api_key),
        default,
        upstream_timeout,
        upstream_concurrency,
        rate_limit,
        webhook_secret,
        business_id: table.business_id.as_deref().map(str::trim).map(str::to_owned),
    })
}

/// A secret named by its variable (`…_env`) or its file (`…_file`), read now so that a
/// missing one stops startup; `None` when neither is given. Its value is never shown.
fn read_secret(
    name: &str,
    (env_field, env): (&str, &Option<String>),
    (file_field, file): (&str, &Option<PathBuf>),
) -> Result<Option<Secret>, ConfigError> {
    let invalid = |field: &str, reason: String| account_error(name, field, reason);
    match (env, file) {
        (Some(_), Some(_)) => {
            Err(invalid(env_field, format!("give `{env_field}` or `{file_field}`, not both")))
        }
        (Some(var), None) => {
            let value = std::env::var(var.trim()).unwrap_or_default();
            if value.trim().is_empty() {
                return Err(invalid(env_field, format!("the environment variable `{var}` is not set")));
            }
            Ok(Some(Secret::new(value.trim())))
        }
        (None, Some(path)) => {
            let value = std::fs::read_to_string(path)
                .map_err(|e| invalid(file_field, format!("cannot read {}: {}", path.display(), e.kind())))?;
            if value.trim().is_empty() {
                return Err(invalid(file_field, format!("{} is empty", path.display())));
            }
            Ok(Some(Secret::new(value.trim())))
        }
        (None, None) => Ok(None),
    }
}

/// A webhook secret, if its provider takes webhooks and its form is right.
fn check_webhook_secret(kind: &ProviderKind, secret: Option<Secret>) -> Result<Option<Secret>, String> {
    let Some(secret) = secret.filter(|secret| !secret.expose().trim().is_empty()) else { return Ok(None) };
    let Some(webhooks) = kind.webhooks else {
        return Err(format!("{} sends no webhooks", kind.label));
    };
    (webhooks.check_secret)(secret.expose().trim())?;
    Ok(Some(secret))
}

/// Applies a table's limits to `account`, which the provider's single-account variables
/// define; a table that would also change its provider, URL or key is refused.
fn tune_account(account: &mut AccountConfig, table: &AccountTable) -> Result<(), ConfigError> {
    let name = account.name.clone();
    let owned = [
        ("environment", table.environment.is_some()),
        ("base_url", table.base_url.is_some()),
        ("api_key_env", table.api_key_env.is_some()),
        ("api_key_file", table.api_key_file.is_some()),
        ("provider", table.provider.as_deref().is_some_and(|p| p.trim() != account.kind.slug)),
    ];
    if let Some((field, _)) = owned.iter().find(|(_, given)| *given) {
        return Err(account_error(
            &name,
            field,
            format!(
                "the account `{name}` is defined by {}'s variables ({}, {}); its table may only set \
                 default, upstream_timeout, upstream_concurrency, rate_limit and business_id",
                account.kind.label, account.kind.key_var, account.kind.base_url_var
            ),
        ));
    }
    if table.webhook_secret_env.is_some() || table.webhook_secret_file.is_some() {
        return Err(account_error(
            &name,
            "webhook_secret_env",
            format!(
                "the account `{name}` takes its webhook secret from {}",
                account.kind.webhooks.map_or("its provider's variable", |w| w.secret_var)
            ),
        ));
    }
    if let Some(business_id) = &table.business_id {
        account.business_id = Some(business_id.trim().to_owned());
    }
    let (timeout, concurrency, rate_limit) = resolve_limits(&name, table)?;
    account.upstream_timeout = timeout.or(account.upstream_timeout);
    account.upstream_concurrency = concurrency.or(account.upstream_concurrency);
    account.rate_limit = rate_limit.or(account.rate_limit.take());
    if table.default.is_some() {
        account.default = parse_default(&name, table)?;
    }
    Ok(())
}

/// The error about `field` of `[accounts.NAME]` (`""`: the table itself).
fn account_error(name: &str, field: &str, reason: String) -> ConfigError {
    let setting = if field.is_empty() {
        format!("[accounts.{name}] in the config file")
    } else {
        format!("accounts.{name}.{field} in the config file")
    };
    ConfigError::Invalid { setting, reason }
}

fn parse_default(name: &str, table: &AccountTable) -> Result<bool, ConfigError> {
    match table.default.as_deref().map(str::trim) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(account_error(name, "default", format!("`{other}` is neither true nor false"))),
    }
}

/// An account's own limits: timeout, concurrency, quota (`None`: the gateway's).
type AccountLimits = (Option<Duration>, Option<usize>, Option<RateLimit>);

fn resolve_limits(name: &str, table: &AccountTable) -> Result<AccountLimits, ConfigError> {
    let upstream_timeout = table
        .upstream_timeout
        .as_deref()
        .map(|raw| match parse_duration(raw) {
            Ok(d) if d.is_zero() => Err("must be longer than zero".to_owned()),
            other => other,
        })
        .transpose()
        .map_err(|reason| account_error(name, "upstream_timeout", reason))?;
    let upstream_concurrency = table
        .upstream_concurrency
        .as_deref()
        .map(|raw| parse_whole(raw, 1..=1024).map(|n| n as usize))
        .transpose()
        .map_err(|reason| account_error(name, "upstream_concurrency", reason))?;
    let rate_limit = table
        .rate_limit
        .as_deref()
        .map(RateLimit::parse)
        .transpose()
        .map_err(|reason| account_error(name, "rate_limit", reason))?;
    Ok((upstream_timeout, upstream_concurrency, rate_limit))
}

/// Each provider with accounts gets exactly one default: the one marked `default = true`,
/// else the one its single-account variables define, else its only account.
fn choose_defaults(accounts: &mut [AccountConfig]) -> Result<(), ConfigError> {
    for kind in providers::builtin() {
        let of_kind: Vec<usize> =
            (0..accounts.len()).filter(|&i| std::ptr::eq(accounts[i].kind, kind)).collect();
        let marked: Vec<usize> = of_kind
            .iter()
            .copied()
            .filter(|&i| accounts[i].default && &*accounts[i].name != kind.slug)
            .collect();
        let chosen = match marked.as_slice() {
            [one] => Some(*one),
            [] => of_kind
                .iter()
                .copied()
                .find(|&i| &*accounts[i].name == kind.slug)
                .or(if of_kind.len() == 1 { of_kind.first().copied() } else { None }),
            several => {
                let names: Vec<_> = several.iter().map(|&i| accounts[i].name.to_string()).collect();
                return Err(ConfigError::Invalid {
                    setting: format!("accounts.{}.default in the config file", names[1]),
                    reason: format!("{} accounts are marked default: {}", kind.label, names.join(", ")),
                });
            }
        };
        if chosen.is_none() && !of_kind.is_empty() {
            let names: Vec<_> = of_kind.iter().map(|&i| accounts[i].name.to_string()).collect();
            return Err(ConfigError::Invalid {
                setting: format!("accounts.{}.default in the config file", names[0]),
                reason: format!(
                    "{} has several accounts ({}); mark one `default = true`",
                    kind.label,
                    names.join(", ")
                ),
            });
        }
        for &i in &of_kind {
            accounts[i].default = Some(i) == chosen;
        }
    }
    Ok(())
}

/// The longest duration any setting takes: longer ones are typing mistakes, and added to a
/// clock (`Instant::now() + d`) a huge one overflows at first use instead of here.
const MAX_SETTING_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Upper bounds of the timeouts that are added to "now" (idle, connection_init).
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn parse_duration(raw: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(raw.trim())
        .map_err(|e| format!("`{raw}` is not a duration ({e}); write e.g. 500ms, 5s, 1h"))?;
    if duration > MAX_SETTING_DURATION {
        return Err(format!("`{raw}` is longer than 30 days, the longest any duration setting takes"));
    }
    Ok(duration)
}

fn parse_whole(raw: &str, range: RangeInclusive<u64>) -> Result<u64, String> {
    raw.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| format!("`{raw}` is not a whole number from {} to {}", range.start(), range.end()))
}

fn parse_base_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    check_base_url(raw)?;
    Ok(raw.trim_end_matches('/').to_owned())
}

/// The keys every token is checked against: fetched over plain HTTP, anyone on the path could
/// substitute their own and mint tokens. `http://` is allowed only to a loopback address (a
/// sidecar, a test issuer).
fn check_jwks_url(raw: &str) -> Result<(), String> {
    check_base_url(raw)?;
    let url = reqwest::Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL ({e})"))?;
    let host = url.host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if url.scheme() != "https" && !loopback {
        return Err(format!("`{raw}` must be https:// (plain http:// only to a loopback address)"));
    }
    Ok(())
}

/// A base URL must be plain http(s) with a host, and carry no credentials, query or fragment
/// (they would end up in every upstream request and in logs).
fn check_base_url(raw: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("`{raw}` must start with https:// (or http://)"));
    }
    if url.host_str().is_none() {
        return Err(format!("`{raw}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; set the API key instead".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{raw}` must not have a query or fragment"));
    }
    Ok(())
}

/// How each setting is named to a person: its environment variable, flag and file key, read
/// from the clap definitions so they are written once.
struct SettingNames(HashMap<String, String>);

impl SettingNames {
    fn new() -> Self {
        let command = command();
        let names = command
            .get_arguments()
            .map(|arg| {
                let id = arg.get_id().to_string();
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
                let long = arg.get_long().unwrap_or_default();
                (id.clone(), format!("{env} (--{long}, `{id}` in the config file)"))
            })
            .collect();
        Self(names)
    }

    fn invalid(&self, id: &str, reason: String) -> ConfigError {
        let setting = self.0.get(id).cloned().unwrap_or_else(|| id.to_owned());
        ConfigError::Invalid { setting, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(settings: Settings) -> Result<Config, ConfigError> {
        Config::resolve(settings, false)
    }

    /// A config file in a fresh folder; the folder is removed when the guard drops.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("cg-config-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("gateway.toml");
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    fn from_file(name: &str, text: &str) -> Result<Config, ConfigError> {
        let file = TempFile::new(name, text);
        Config::resolve_sources(Sources::from_file(&file.0)?)
    }

    fn legacy(slug: &str, key: Option<&str>, base_url: Option<&str>) -> Sources {
        let given = LegacyAccount {
            api_key: key.map(Secret::new),
            base_url: base_url.map(str::to_owned),
            webhook_secret: None,
        };
        Sources { legacy: BTreeMap::from([(slug.to_owned(), given)]), ..Sources::default() }
    }

    #[test]
    fn defaults() {
        let config = resolve(Settings::default()).unwrap();
        assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
        assert!(config.accounts.is_empty(), "each provider gets its unconfigured account at build");
        assert_eq!(config.cache, CachePolicy::default());
        assert_eq!(config.batch_max, 100);
        assert_eq!(config.entities_max, config.batch_max, "a router's batch is bounded like a client's");
        assert_eq!(config.client_rate_limit, RateLimit::parse("600/min").unwrap());
    }

    #[test]
    fn single_account_variables_define_the_default_account() {
        let config =
            Config::resolve_sources(legacy("dodo", Some("k"), Some("https://test.dodopayments.com/")))
                .unwrap();
        let [account] = config.accounts.as_slice() else { panic!("{:?}", config.accounts) };
        assert_eq!(&*account.name, "dodo");
        assert_eq!(account.base_url, "https://test.dodopayments.com");
        assert_eq!(account.api_key.as_ref().map(Secret::expose), Some("k"));
        assert!(account.default);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = resolve(Settings { listen: Some("nowhere".into()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("GATEWAY_LISTEN"), "{err}");
        let err =
            resolve(Settings { cache_ttl_open: Some("soon".into()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("GATEWAY_CACHE_TTL_OPEN"), "{err}");
        let err = Config::resolve_sources(legacy("dodo", None, Some("ftp://x"))).unwrap_err();
        assert!(err.to_string().contains("DODO_PAYMENTS_BASE_URL"), "{err}");
        let err = resolve(Settings { batch_max: Some("0".into()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("GATEWAY_BATCH_MAX"), "{err}");
        for bad in ["0/min", "600", "600/day", ""] {
            let err =
                resolve(Settings { client_rate_limit: Some(bad.into()), ..Default::default() }).unwrap_err();
            assert!(err.to_string().contains("GATEWAY_CLIENT_RATE_LIMIT"), "{bad}: {err}");
        }
        let err = Config::resolve_sources(legacy("dhmad", None, Some("https://user:pw@dhmad.tn/api/v1")))
            .unwrap_err();
        assert!(err.to_string().contains("DHMAD_BASE_URL") && !err.to_string().contains("pw@"), "{err}");
    }

    #[test]
    fn connection_bounds_are_checked_when_loading() {
        let defaults = resolve(Settings::default()).unwrap();
        assert_eq!(defaults.idle_timeout, Duration::from_secs(60));
        assert_eq!(defaults.connection_init_timeout, Duration::from_secs(3));
        assert_eq!(defaults.max_ws_message_bytes, 64 * 1024);
        // Each would overflow a timer's deadline, or is no bound at all.
        for (settings, name) in [
            (
                Settings { idle_timeout: Some("100000000y".into()), ..Default::default() },
                "GATEWAY_IDLE_TIMEOUT",
            ),
            (Settings { idle_timeout: Some("0s".into()), ..Default::default() }, "GATEWAY_IDLE_TIMEOUT"),
            (
                Settings { connection_init_timeout: Some("2h".into()), ..Default::default() },
                "GATEWAY_CONNECTION_INIT_TIMEOUT",
            ),
            (
                Settings { max_ws_message_bytes: Some("100".into()), ..Default::default() },
                "GATEWAY_MAX_WS_MESSAGE_BYTES",
            ),
            (
                Settings { max_ws_message_bytes: Some("1099511627776".into()), ..Default::default() },
                "GATEWAY_MAX_WS_MESSAGE_BYTES",
            ),
        ] {
            let err = resolve(settings).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn secrets_never_debug_print() {
        let sources = legacy("dhmad", Some("sk_live_topsecret"), None);
        assert!(!format!("{sources:?}").contains("topsecret"));
        let config = Config::resolve_sources(sources).unwrap();
        assert!(!format!("{config:?}").contains("topsecret"));
    }

    #[test]
    fn file_keys_are_checked_and_flags_win() {
        let file = TempFile::new(
            "flags",
            "listen = \"127.0.0.1:9000\"\ncache_max_entries = 5000\nbatch_max = 7\ndodo_base_url = \"https://test.dodopayments.com\"\n",
        );
        let in_file = Sources::from_file(&file.0).unwrap();
        let flags = Sources {
            settings: Settings { batch_max: Some("9".into()), ..Default::default() },
            ..legacy("dodo", Some("from-env"), None)
        };
        let config = Config::resolve_sources(flags.or(in_file)).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.cache.max_entries, 5000);
        assert_eq!(config.batch_max, 9);
        assert_eq!(config.accounts[0].base_url, "https://test.dodopayments.com");
        assert_eq!(config.accounts[0].api_key.as_ref().map(Secret::expose), Some("from-env"));

        let err = from_file("typo", "lisen = \"127.0.0.1:9000\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `lisen`"), "{err}");
    }

    #[test]
    fn accounts_from_the_file() {
        std::env::set_var("CG_TEST_DODO_LIVE_KEY", "live-key");
        let key_file = TempFile::new("keyfile", "test-key\n");
        let text = format!(
            "[accounts.dodo_live]\nprovider = \"dodo\"\nenvironment = \"live\"\napi_key_env = \"CG_TEST_DODO_LIVE_KEY\"\n\
             default = true\nupstream_concurrency = 4\nupstream_timeout = \"2s\"\n\
             [accounts.dodo_test]\nprovider = \"dodo\"\nenvironment = \"test\"\napi_key_file = \"{}\"\n",
            key_file.0.display()
        );
        let config = from_file("accounts", &text).unwrap();
        let live = config.accounts.iter().find(|a| &*a.name == "dodo_live").unwrap();
        let test = config.accounts.iter().find(|a| &*a.name == "dodo_test").unwrap();
        assert_eq!(live.base_url, "https://live.dodopayments.com");
        assert_eq!(test.base_url, "https://test.dodopayments.com");
        assert_eq!(live.api_key.as_ref().map(Secret::expose), Some("live-key"));
        assert_eq!(test.api_key.as_ref().map(Secret::expose), Some("test-key"));
        assert!(live.default && !test.default);
        assert_eq!(live.upstream_concurrency, Some(4));
        assert_eq!(live.upstream_timeout, Some(Duration::from_secs(2)));
        assert_eq!(test.upstream_concurrency, None);
    }

    #[test]
    fn a_table_named_after_the_variables_account_tunes_it() {
        let file =
            TempFile::new("tune", "[accounts.dhmad]\nrate_limit = \"50/min\"\nupstream_concurrency = 4\n");
        let sources = legacy("dhmad", Some("sk_live_x"), None).or(Sources::from_file(&file.0).unwrap());
        let config = Config::resolve_sources(sources).unwrap();
        let [dhmad] = config.accounts.as_slice() else { panic!("{:?}", config.accounts) };
        assert_eq!(
            dhmad.api_key.as_ref().map(Secret::expose),
            Some("sk_live_x"),
            "the variables keep the key"
        );
        assert_eq!(dhmad.rate_limit, Some(RateLimit::parse("50/min").unwrap()));
        assert_eq!(dhmad.upstream_concurrency, Some(4));
        assert!(dhmad.default);

        let file = TempFile::new("tune-bad", "[accounts.dhmad]\napi_key_env = \"OTHER\"\n");
        let sources = legacy("dhmad", Some("sk_live_x"), None).or(Sources::from_file(&file.0).unwrap());
        let err = Config::resolve_sources(sources).unwrap_err().to_string();
        assert!(err.contains("accounts.dhmad.api_key_env") && err.contains("DHMAD_API_KEY"), "{err}");
    }

    #[test]
    fn bad_accounts_are_refused_naming_the_account() {
        let cases = [
            ("[accounts.a]\nprovider = \"dodo\"\napi_key = \"inline\"\n", "never written in the file"),
            ("[accounts.a]\nprovider = \"stripe\"\napi_key_env = \"X\"\n", "accounts.a.provider"),
            ("[accounts.a]\napi_key_env = \"X\"\n", "accounts.a.provider"),
            ("[accounts.a]\nprovider = \"dodo\"\nenvironment = \"staging\"\napi_key_env = \"HOME\"\n", "live, test"),
            ("[accounts.a]\nprovider = \"dodo\"\n", "needs `api_key_env` or"),
            ("[accounts.a]\nprovider = \"dodo\"\napi_key_env = \"CG_TEST_SURELY_UNSET\"\n", "CG_TEST_SURELY_UNSET` is not set"),
            ("[accounts.a]\nprovider = \"dodo\"\napi_key_file = \"/nonexistent/key\"\n", "accounts.a.api_key_file"),
            ("[accounts.A]\nprovider = \"dodo\"\napi_key_env = \"HOME\"\n", "not an account name"),
            ("[accounts.a]\nprovider = \"dodo\"\napi_key_env = \"HOME\"\nrate = 1\n", "unknown field `rate`"),
            (
                "[accounts.a]\nprovider = \"dodo\"\napi_key_env = \"HOME\"\n[accounts.b]\nprovider = \"dodo\"\napi_key_env = \"HOME\"\n",
                "mark one `default = true`",
            ),
            (
                "[accounts.a]\nprovider = \"dodo\"\napi_key_env = \"HOME\"\ndefault = true\n[accounts.b]\nprovider = \"dodo\"\napi_key_env = \"HOME\"\ndefault = true\n",
                "accounts are marked default",
            ),
        ];
        for (i, (text, expected)) in cases.iter().enumerate() {
            let err = from_file(&format!("bad{i}"), text).unwrap_err().to_string();
            assert!(err.contains(expected), "case {i}: `{err}` does not say `{expected}`");
            assert!(!err.contains("inline"), "case {i} shows the key: {err}");
        }
    }
}
