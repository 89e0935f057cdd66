//! The command line and the settings. Every setting is declared once, in the table below:
//! its help, its environment variable and flag (clap), its file key (its name), its type, its
//! reader and its default. The table generates [`Settings`] (what the sources say, as text)
//! and one typed reader per setting, which names the setting when its value is refused.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::accounts::LegacyAccount;
use super::values::*;
use super::{ConfigError, Sources};
use crate::access::AuthMode;
use crate::domain::Secret;
use crate::graphql::documents::TrustMode;
use crate::providers::guard::RateLimit;
use crate::providers::Registry;
use crate::telemetry::LogFormat;

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

/// Declares the settings: each entry is `name: RAW => VALUE = reader;` under its help and its
/// `#[arg(env = …, value_name = …)]`. `RAW` is how the text is held (`String`, or `Secret`
/// where it must not be printed); the reader turns it into `VALUE` (see `values`), and may
/// use `$given` (the [`Given`] being read, e.g. `given.demo`).
macro_rules! settings {
    ($given:ident; $($(#[$meta:meta])* $name:ident: $raw:ty => $value:ty = $reader:expr;)*) => {
        /// Every setting, as given; `None` where not given. Read by [`Given`], checked by
        /// [`super::Config::resolve`].
        #[derive(Args, Deserialize, Debug, Default, Clone)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $(
                $(#[$meta])*
                #[arg(long)]
                pub $name: Option<$raw>,
            )*
        }

        impl Settings {
            /// `self` where given, else `other`.
            pub(super) fn or(self, other: Settings) -> Settings {
                Settings { $($name: self.$name.or(other.$name)),* }
            }
        }

        impl Given<'_> {
            $(
                /// The setting's value, or its default; refused naming the setting.
                #[allow(unused_variables)]
                pub(super) fn $name(&self) -> Result<$value, ConfigError> {
                    let $given = self;
                    let read = $reader;
                    read(self.settings.$name.as_ref().map(Text::text))
                        .map_err(|reason| self.invalid(stringify!($name), reason))
                }
            )*
        }
    };
}

settings! {
    given;
    /// Address and port to serve on [default: 0.0.0.0:8080].
    #[arg(env = "GATEWAY_LISTEN", value_name = "ADDR")]
    listen: String => SocketAddr = address("0.0.0.0:8080");
    /// Longest wait for one provider call, queueing included; an account may set its own
    /// [default: 5s].
    #[arg(env = "GATEWAY_UPSTREAM_TIMEOUT", value_name = "DURATION")]
    upstream_timeout: String => Duration = positive_duration("5s");
    /// A whole lookup, all attempts, backoff, quota and queue waits included [default: 10s].
    #[arg(env = "GATEWAY_LOOKUP_DEADLINE", value_name = "DURATION")]
    lookup_deadline: String => Duration = positive_duration("10s");
    /// Further attempts of a read after a connection error, timeout, 408, 409, 429 or 5xx,
    /// within the lookup deadline [default: 2].
    #[arg(env = "GATEWAY_UPSTREAM_RETRIES", value_name = "N")]
    upstream_retries: String => u32 = whole(2, 0..=10);
    /// Calls the gateway makes to a provider for one account, e.g. `40/s`, `100/min`,
    /// `40/s,240/min`, or `off`; overrides every provider's documented quota (an account may
    /// set its own) [default: each provider's documented quota].
    #[arg(env = "GATEWAY_UPSTREAM_RATE_LIMIT", value_name = "RATE")]
    upstream_rate_limit: String => Option<RateLimit> = optional(RateLimit::parse);
    /// Lookups one client (an API key, a token's subject) may send to providers, cache hits
    /// not counted, e.g. `600/min`, several joined with `,`, or `off`; past it the lookup is
    /// answered RATE_LIMITED with retryAfterSeconds [default: 600/min].
    #[arg(env = "GATEWAY_CLIENT_RATE_LIMIT", value_name = "RATE")]
    client_rate_limit: String => RateLimit = rate_limit("600/min");
    /// Consecutive failures (timeouts, connection errors, 5xx) of one account that open its
    /// circuit [default: 5].
    #[arg(env = "GATEWAY_BREAKER_FAILURES", value_name = "N")]
    breaker_failures: String => u32 = positive(5, 1000);
    /// How long an open circuit answers CIRCUIT_OPEN without calling before one trial call
    /// [default: 30s].
    #[arg(env = "GATEWAY_BREAKER_COOLDOWN", value_name = "DURATION")]
    breaker_cooldown: String => Duration = positive_duration("30s");
    /// The longest any wait signal may hold an account's calls: a 429's `Retry-After`,
    /// DHMAD's `retryAfter`, a hold read from Redis; longer ones are cut to this [default: 1h].
    #[arg(env = "GATEWAY_UPSTREAM_MAX_WAIT", value_name = "DURATION")]
    upstream_max_wait: String => Duration = positive_duration("1h");
    /// How old a session may be and still be served (marked `stale`) when its provider cannot
    /// answer; 0s turns it off [default: 1h].
    #[arg(env = "GATEWAY_STALE_IF_ERROR", value_name = "DURATION")]
    stale_if_error: String => Duration = duration("1h");
    /// Most calls in flight to a provider for one account at once; an account may set its own
    /// [default: 16].
    #[arg(env = "GATEWAY_UPSTREAM_CONCURRENCY", value_name = "N")]
    upstream_concurrency: String => usize = positive(16, 1024);
    /// Bytes the cached sessions may hold, all accounts together (merchant metadata can be
    /// large); fits the manifests' 512 MiB memory limit [default: 134217728 (128 MiB)].
    #[arg(env = "GATEWAY_CACHE_MAX_BYTES", value_name = "BYTES")]
    cache_max_bytes: String => u64 = positive(128 * 1024 * 1024, 1 << 40);
    /// Most answers kept in the cache, all accounts together [default: 100000].
    #[arg(env = "GATEWAY_CACHE_MAX_ENTRIES", value_name = "N")]
    cache_max_entries: String => u64 = positive(100_000, 100_000_000);
    /// Bytes of whole responses kept for replay while everything in them may be reused; 0
    /// turns it off [default: 2097152 (2 MiB): thousands of small answers].
    #[arg(env = "GATEWAY_RESPONSE_CACHE_BYTES", value_name = "BYTES")]
    response_cache_bytes: String => u64 = whole(2 * 1024 * 1024, 0..=1 << 40);
    /// Reuse of COMPLETED, CANCELLED and EXPIRED sessions [default: 1h].
    #[arg(env = "GATEWAY_CACHE_TTL_TERMINAL", value_name = "DURATION")]
    cache_ttl_terminal: String => Duration = duration("1h");
    /// Reuse of FAILED sessions [default: 30s].
    #[arg(env = "GATEWAY_CACHE_TTL_FAILED", value_name = "DURATION")]
    cache_ttl_failed: String => Duration = duration("30s");
    /// Reuse of OPEN, ACTION_REQUIRED, PROCESSING and UNKNOWN sessions, never past the
    /// session's own expiry [default: 5s].
    #[arg(env = "GATEWAY_CACHE_TTL_OPEN", value_name = "DURATION")]
    cache_ttl_open: String => Duration = duration("5s");
    /// Reuse of a not-found answer [default: 2s].
    #[arg(env = "GATEWAY_CACHE_TTL_NOT_FOUND", value_name = "DURATION")]
    cache_ttl_not_found: String => Duration = duration("2s");
    /// Most sessions one request may ask for through `checkoutSession` and `checkoutSessions`,
    /// aliases included [default: 100].
    #[arg(env = "GATEWAY_BATCH_MAX", value_name = "N")]
    batch_max: String => usize = positive(100, 10_000);
    /// Deepest selection a document may nest [default: 32].
    #[arg(env = "GATEWAY_MAX_DEPTH", value_name = "N")]
    max_depth: String => usize = positive(32, 1_000);
    /// Most complexity (fields selected, lists counted once) a document may have [default: 5000].
    #[arg(env = "GATEWAY_MAX_COMPLEXITY", value_name = "N")]
    max_complexity: String => usize = positive(5_000, 10_000_000);
    /// Most aliases in a document [default: 200].
    #[arg(env = "GATEWAY_MAX_ALIASES", value_name = "N")]
    max_aliases: String => usize = whole(200, 0..=100_000);
    /// Most root fields an operation may select [default: 200].
    #[arg(env = "GATEWAY_MAX_ROOT_FIELDS", value_name = "N")]
    max_root_fields: String => usize = positive(200, 100_000);
    /// Most representations one request's federation `_entities` may resolve; the same as a
    /// client's own batch [default: 100].
    #[arg(env = "GATEWAY_ENTITIES_MAX", value_name = "N")]
    entities_max: String => usize = positive(100, 100_000);
    /// Serve `/metrics` on this address and port instead of the main one (keep scrapes off
    /// the public Service) [default: none: on the main port].
    #[arg(env = "GATEWAY_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: String => Option<SocketAddr> = optional_address("0.0.0.0:9090");
    /// Connections served at once; more wait in the kernel's backlog [default: 4096].
    #[arg(env = "GATEWAY_MAX_CONNECTIONS", value_name = "N")]
    max_connections: String => usize = positive(4096, 1_000_000);
    /// Time a client has to send a request's headers [default: 10s].
    #[arg(env = "GATEWAY_HEADER_READ_TIMEOUT", value_name = "DURATION")]
    header_read_timeout: String => Duration = positive_duration("10s");
    /// How long a connection may stay open with no request in flight (HTTP/1.1 between
    /// requests, HTTP/2 with no open stream); then it is closed [default: 60s].
    #[arg(env = "GATEWAY_IDLE_TIMEOUT", value_name = "DURATION")]
    idle_timeout: String => Duration = duration_up_to("60s", DAY);
    /// The longest a request may take; past it the client gets 503 [default: 30s].
    #[arg(env = "GATEWAY_REQUEST_TIMEOUT", value_name = "DURATION")]
    request_timeout: String => Duration = positive_duration("30s");
    /// The most a request body may hold, whatever its content type; more is refused with 413
    /// [default: 2097152 (2 MiB)].
    #[arg(env = "GATEWAY_MAX_BODY_BYTES", value_name = "BYTES")]
    max_body_bytes: String => usize = positive(2 * 1024 * 1024, 1 << 30);
    /// Serve GraphiQL to browsers at GET /graphql: `true` or `false` [default: false; true
    /// with --demo].
    #[arg(env = "GATEWAY_GRAPHIQL", value_name = "BOOL")]
    graphiql: String => bool = boolean(given.demo);
    /// Answer introspection (`__schema`, `__type`): `true` or `false`; federation's
    /// `_service { sdl }` is always answered [default: false; true with --demo].
    #[arg(env = "GATEWAY_INTROSPECTION", value_name = "BOOL")]
    introspection: String => bool = boolean(given.demo);
    /// Log lines waiting to be written at most; past it lines are dropped and counted rather
    /// than slowing requests [default: 65536].
    #[arg(env = "GATEWAY_LOG_QUEUE_LINES", value_name = "N")]
    log_queue_lines: String => usize = positive(65_536, 10_000_000);
    /// Log format: `text` or `json` [default: text]. Levels come from RUST_LOG (default `info`).
    #[arg(env = "LOG_FORMAT", value_name = "FORMAT")]
    log_format: String => LogFormat = keyword(
        LogFormat::Text,
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        "is neither `text` nor `json`",
    );
    /// After SIGTERM/SIGINT: how long /readyz answers 503 while the listener still serves, so
    /// the cluster stops routing here [default: 5s].
    #[arg(env = "GATEWAY_SHUTDOWN_DELAY", value_name = "DURATION")]
    shutdown_delay: String => Duration = duration("5s");
    /// After the delay: how long in-flight requests get to finish [default: 20s].
    #[arg(env = "GATEWAY_SHUTDOWN_GRACE", value_name = "DURATION")]
    shutdown_grace: String => Duration = duration("20s");
    /// Subscription connections (WebSocket) and streams (Server-Sent Events) open at once;
    /// past it a new one gets 503 [default: 2048].
    #[arg(env = "GATEWAY_MAX_SUBSCRIPTION_CONNECTIONS", value_name = "N")]
    max_subscription_connections: String => usize = positive(2048, 1_000_000);
    /// Subscriptions one WebSocket connection or one Server-Sent Events stream (aliases) may
    /// run at once [default: 100].
    #[arg(env = "GATEWAY_SUBSCRIPTIONS_PER_CONNECTION", value_name = "N")]
    subscriptions_per_connection: String => usize = positive(100, 100_000);
    /// How often an idle subscription connection is pinged (WebSocket ping, SSE comment), so
    /// that proxies keep it and a vanished peer is noticed [default: 15s].
    #[arg(env = "GATEWAY_SUBSCRIPTION_PING_INTERVAL", value_name = "DURATION")]
    subscription_ping_interval: String => Duration = positive_duration("15s");
    /// Time a WebSocket client has to send `connection_init` after the upgrade; then the
    /// socket is closed with 4408 [default: 3s].
    #[arg(env = "GATEWAY_CONNECTION_INIT_TIMEOUT", value_name = "DURATION")]
    connection_init_timeout: String => Duration = duration_up_to("3s", HOUR);
    /// The largest WebSocket message (and frame) a client may send; a larger one closes the
    /// socket with 1009 [default: 65536 (64 KiB)].
    #[arg(env = "GATEWAY_MAX_WS_MESSAGE_BYTES", value_name = "BYTES")]
    // Below 1 KiB no `subscribe` message fits; tungstenite's own default is 64 MiB.
    max_ws_message_bytes: String => usize = whole(64 * 1024, 1024..=64 * 1024 * 1024);
    /// Where callback subscriptions (Apollo's `callback/1.0`, from the router only) may be sent:
    /// URL prefixes, comma-separated, e.g. the router's callback `public_url`; a subscription
    /// naming any other callback URL is refused [default: none: callback subscriptions are off].
    #[arg(env = "GATEWAY_SUBSCRIPTION_CALLBACK_URLS", value_name = "URLS")]
    subscription_callback_urls: String => Vec<reqwest::Url> = callback_urls;
    /// The longest one POST to a callback URL (`check`, `next`, `complete`) may take; at most
    /// 1 min [default: 5s].
    #[arg(env = "GATEWAY_CALLBACK_TIMEOUT", value_name = "DURATION")]
    callback_timeout: String => Duration = duration_up_to("5s", MINUTE);
    /// Callback subscriptions running at once (each also takes one of
    /// GATEWAY_MAX_SUBSCRIPTION_CONNECTIONS); past it a new one gets 503 [default: 1024].
    #[arg(env = "GATEWAY_MAX_CALLBACK_SUBSCRIPTIONS", value_name = "N")]
    max_callback_subscriptions: String => usize = positive(1024, 1_000_000);
    /// The shared tier replicas use together: `redis://[user:password@]host:port[/db]` or
    /// `rediss://…` (TLS); unset, each replica works alone [default: none].
    #[arg(env = "GATEWAY_REDIS_URL", value_name = "URL", hide_env_values = true)]
    redis_url: Secret => Option<Secret> = redis_url;
    /// Put before every Redis key and channel, so deployments can share a Redis
    /// [default: checkout-gateway:].
    #[arg(env = "GATEWAY_REDIS_PREFIX", value_name = "PREFIX")]
    redis_prefix: String => String = text("checkout-gateway:");
    /// The longest one Redis operation may take; past it the replica works without Redis for a
    /// moment [default: 100ms].
    #[arg(env = "GATEWAY_REDIS_TIMEOUT", value_name = "DURATION")]
    redis_timeout: String => Duration = positive_duration("100ms");
    /// How clients authenticate: `none`, `api-key` (keys in `[clients.NAME]` tables of the
    /// config file) or `jwt` (the GATEWAY_JWT_* settings). Required, `none` included, except
    /// with --demo [default: none with --demo; otherwise no default].
    #[arg(env = "GATEWAY_AUTH", value_name = "MODE")]
    auth: String => Option<AuthMode> = optional(AuthMode::parse);
    /// With `jwt`: the issuer's JWKS URL, fetched at startup and again for an unknown `kid`
    /// (at most every 10 s) [default: none].
    #[arg(env = "GATEWAY_JWT_JWKS_URL", value_name = "URL")]
    jwt_jwks_url: String => String = jwks_url;
    /// With `jwt`: how often the JWKS is fetched again in any case, so a key the issuer
    /// withdraws stops being accepted within it [default: 5m].
    #[arg(env = "GATEWAY_JWT_JWKS_REFRESH", value_name = "DURATION")]
    jwt_jwks_refresh: String => Duration = jwks_refresh;
    /// With `jwt`: the `iss` tokens must carry [default: none].
    #[arg(env = "GATEWAY_JWT_ISSUER", value_name = "ISSUER")]
    jwt_issuer: String => String = required_with_jwt;
    /// With `jwt`: the `aud` tokens must carry [default: none].
    #[arg(env = "GATEWAY_JWT_AUDIENCE", value_name = "AUDIENCE")]
    jwt_audience: String => String = required_with_jwt;
    /// With `jwt`: the signing algorithms accepted, comma-separated [default: RS256,ES256].
    #[arg(env = "GATEWAY_JWT_ALGORITHMS", value_name = "LIST")]
    jwt_algorithms: String => Vec<Algorithm> = jwt_algorithms;
    /// With `jwt`: clock skew allowed on `exp` and `nbf` [default: 60s].
    #[arg(env = "GATEWAY_JWT_LEEWAY", value_name = "DURATION")]
    jwt_leeway: String => Duration = duration("60s");
    /// With `jwt`: the claim listing the accounts a token may read (account names,
    /// `provider:<slug>`, or `*`) [default: checkout_accounts].
    #[arg(env = "GATEWAY_JWT_RIGHTS_CLAIM", value_name = "CLAIM")]
    jwt_rights_claim: String => String = text("checkout_accounts");
    /// The secret a router sends in `Router-Authorization`; a request carrying it is the
    /// router's (every account) [default: none: no router is admitted by secret].
    #[arg(env = "GATEWAY_ROUTER_SECRET", value_name = "SECRET", hide_env_values = true)]
    router_secret: Secret => Option<Secret> = secret;
    /// The next router secret, also accepted while the router's is rotated [default: none].
    #[arg(env = "GATEWAY_ROUTER_SECRET_NEXT", value_name = "SECRET", hide_env_values = true)]
    router_secret_next: Secret => Option<Secret> = secret;
    /// `true`: a request with the router's secret is authenticated by the client credentials
    /// the router forwards in `Authorization` (their rights apply), not as the router
    /// [default: false].
    #[arg(env = "GATEWAY_ROUTER_TRUST_IDENTITY", value_name = "BOOL")]
    router_trust_identity: String => bool = boolean(false);
    /// A persisted query manifest (Apollo's JSON format) of the operations clients may run;
    /// unset, any operation may [default: none].
    #[arg(env = "GATEWAY_TRUSTED_DOCUMENTS", value_name = "FILE")]
    trusted_documents: String => Option<PathBuf> = path;
    /// `enforce` (other operations are refused) or `log` (they run and are logged, for a
    /// roll-out) [default: enforce].
    #[arg(env = "GATEWAY_TRUSTED_DOCUMENTS_MODE", value_name = "MODE")]
    trusted_documents_mode: String => TrustMode = keyword(
        TrustMode::Enforce,
        &[("enforce", TrustMode::Enforce), ("log", TrustMode::Log)],
        "is neither enforce nor log",
    );
    /// Automatic persisted queries (Apollo's APQ: a known document sent by its hash alone):
    /// `true` or `false` [default: true].
    #[arg(env = "GATEWAY_APQ", value_name = "BOOL")]
    apq: String => bool = boolean(true);
    /// With --demo: latency the sandbox providers add to every answer, e.g. `20ms` [default: 0s].
    #[arg(env = "GATEWAY_DEMO_LATENCY", value_name = "DURATION")]
    demo_latency: String => Duration = duration("0s");
    /// With --demo: how long a `cks_live_…` sandbox session stays in each status (open,
    /// processing, succeeded), each change announced by a signed webhook [default: 20s].
    #[arg(env = "GATEWAY_DEMO_STEP", value_name = "DURATION")]
    demo_step: String => Duration = positive_duration("20s");
}

/// How a setting's text is held: as written, or as a secret (never in `Debug`).
trait Text {
    fn text(&self) -> &str;
}

impl Text for String {
    fn text(&self) -> &str {
        self
    }
}

impl Text for Secret {
    fn text(&self) -> &str {
        self.expose()
    }
}

/// The settings as given, read one at a time through the readers the table generates (one
/// method per setting): what is read, and in which order, is up to the resolution, so that
/// a setting that only matters with another (the JWT's with `GATEWAY_AUTH=jwt`) is only
/// checked then.
#[derive(Debug)]
pub(super) struct Given<'a> {
    settings: &'a Settings,
    names: SettingNames,
    /// `--demo`: some defaults differ.
    demo: bool,
}

impl<'a> Given<'a> {
    pub(super) fn new(settings: &'a Settings, registry: &Registry, demo: bool) -> Self {
        Self { settings, names: SettingNames::new(registry), demo }
    }

    /// The error about the setting `id` (a field of [`Settings`], or a provider's
    /// single-account setting such as `dodo_base_url`).
    pub(super) fn invalid(&self, id: &str, reason: String) -> ConfigError {
        let setting = self.names.0.get(id).cloned().unwrap_or_else(|| id.to_owned());
        ConfigError::Invalid { setting, reason }
    }
}

/// How each setting is named to a person: its environment variable, flag and file key, read
/// from the clap definitions so they are written once.
#[derive(Debug)]
struct SettingNames(HashMap<String, String>);

impl SettingNames {
    fn new(registry: &Registry) -> Self {
        let names = command(registry)
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
}

/// The command line: [`Cli`], plus each provider's single-account flags (`--dhmad-api-key`,
/// `--dhmad-base-url`, with their environment variables), which come from the registry.
pub fn command(registry: &Registry) -> clap::Command {
    let mut command = Cli::command();
    for kind in registry.iter() {
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
pub fn parse(registry: &Registry) -> (Cli, Sources) {
    let matches = command(registry).get_matches();
    match from_matches(registry, &matches) {
        Ok(parsed) => parsed,
        Err(error) => error.exit(),
    }
}

/// Parses `args` (the program's name first) and the environment, as [`parse`] does.
pub fn parse_from<I, T>(registry: &Registry, args: I) -> Result<(Cli, Sources), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    from_matches(registry, &command(registry).try_get_matches_from(args)?)
}

fn from_matches(registry: &Registry, matches: &ArgMatches) -> Result<(Cli, Sources), clap::Error> {
    let cli = Cli::from_arg_matches(matches)?;
    let mut legacy = BTreeMap::new();
    for kind in registry.iter() {
        // An empty variable (as a manifest may leave one) says nothing; a provider without
        // webhooks has no webhook flag to ask about.
        let text = |id: String| {
            matches.try_get_one::<String>(&id).ok().flatten().filter(|v| !v.trim().is_empty()).cloned()
        };
        let given = LegacyAccount {
            api_key: text(format!("{}_api_key", kind.slug)).map(Secret::new),
            base_url: text(format!("{}_base_url", kind.slug)),
            webhook_secret: text(format!("{}_webhook_secret", kind.slug)).map(Secret::new),
        };
        if given.is_given() {
            legacy.insert(kind.slug.to_owned(), given);
        }
    }
    let sources = Sources { settings: cli.settings.clone(), legacy, demo: cli.demo, ..Sources::default() };
    Ok((cli, sources))
}
