//! Configuration: one typed [`Config`], from defaults, an optional TOML file, environment
//! variables and command-line flags (later wins). Every setting has one flag, one environment
//! variable and one file key (the flag's name with `_`), declared once in `cli.rs`; unknown
//! file keys and bad values stop startup with a message that names the setting. Secrets never
//! appear in `Debug` or logs.
//!
//! Two steps: [`Config::load`] reads (flags and environment through clap, the file, then the
//! variables and files the settings and accounts name: keys, webhook secrets, the
//! trusted-documents manifest) into [`Sources`]; [`Config::resolve`] turns them into a
//! [`Config`] and reads nothing. Both take the [`Registry`] of providers, whose accounts,
//! single-account variables and webhooks the configuration may name.
//!
//! Owns: settings and accounts. `cli.rs`: the command line and the table of settings;
//! `file.rs`: the TOML file; `accounts.rs`: accounts, clients, secrets; `values.rs`: how a
//! setting's text becomes its value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::access::AccessConfig;
use crate::cache::redis::SharedConfig;
use crate::cache::CachePolicy;
use crate::graphql::documents::TrustedDocuments;
use crate::graphql::limits::ShapeLimits;
use crate::graphql::QueryLimits;
use crate::http::callback::CallbackConfig;
use crate::providers::guard::RateLimit;
use crate::providers::sandbox::SandboxOptions;
use crate::providers::{AccountConfig, Limits, Registry};

mod accounts;
mod cli;
mod file;
mod values;

pub use crate::domain::Secret;
pub use crate::telemetry::LogFormat;
pub use accounts::LegacyAccount;
use cli::Given;
pub use cli::{command, parse, parse_from, Cli, Command, Settings};
pub use file::{AccountTable, ClientTable};

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
    /// The variables and files the settings and accounts name, as read ([`Sources::gather`]).
    pub gathered: Gathered,
}

impl Sources {
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
        let mut gathered = other.gathered;
        gathered.variables.extend(self.gathered.variables);
        gathered.files.extend(self.gathered.files);
        Sources {
            settings: self.settings.or(other.settings),
            legacy,
            accounts,
            clients,
            demo: self.demo || other.demo,
            gathered,
        }
    }

    /// Reads every environment variable and file the accounts name (`api_key_env`,
    /// `api_key_file`, `webhook_secret_env`, `webhook_secret_file`) and the trusted-documents
    /// manifest, so that resolving reads nothing; what cannot be read is refused then.
    pub fn gather(mut self) -> Sources {
        let mut variables = Vec::new();
        let mut files = Vec::new();
        for table in self.accounts.values() {
            variables.extend([&table.api_key_env, &table.webhook_secret_env].into_iter().flatten());
            files.extend([&table.api_key_file, &table.webhook_secret_file].into_iter().flatten().cloned());
        }
        files.extend(values::non_empty(self.settings.trusted_documents.as_deref()).map(PathBuf::from));
        for name in variables {
            let name = name.trim();
            if let Ok(value) = std::env::var(name) {
                self.gathered.variables.insert(name.to_owned(), value);
            }
        }
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| e.kind());
            self.gathered.files.insert(path, text);
        }
        self
    }
}

/// The environment variables and files the settings and accounts name, as the load step read
/// them. They hold secrets: `Debug` shows only their names.
#[derive(Default, Clone)]
pub struct Gathered {
    /// By name; a variable that is not set is not here.
    pub variables: BTreeMap<String, String>,
    /// By path: the text, or why it could not be read.
    pub files: BTreeMap<PathBuf, Result<String, std::io::ErrorKind>>,
}

impl Gathered {
    /// The variable's value; empty when it is not set.
    fn variable(&self, name: &str) -> &str {
        self.variables.get(name).map_or("", String::as_str)
    }

    /// The file's text, or why it could not be read (a file that was not read was not found).
    fn file(&self, path: &Path) -> Result<&str, String> {
        match self.files.get(path) {
            Some(Ok(text)) => Ok(text),
            Some(Err(kind)) => Err(format!("cannot read {}: {kind}", path.display())),
            None => Err(format!("cannot read {}: {}", path.display(), std::io::ErrorKind::NotFound)),
        }
    }
}

impl fmt::Debug for Gathered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gathered")
            .field("variables", &self.variables.keys().collect::<Vec<_>>())
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .finish()
    }
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
    /// Depth and complexity of a document.
    pub query_limits: QueryLimits,
    /// Aliases and root fields of a document.
    pub shape_limits: ShapeLimits,
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
    /// Subscriptions over HTTP callbacks: where they may go, each POST's timeout, how many.
    pub callbacks: CallbackConfig,
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
    /// With `demo`: how the sandbox providers answer.
    pub sandbox: SandboxOptions,
}

impl Default for Config {
    fn default() -> Self {
        Config::resolve(Sources::default(), &Registry::builtin()).expect("the defaults are valid")
    }
}

impl Config {
    /// The one step that reads: flags and environment (through clap, in `given`), then the
    /// file named by `--config`, then the variables and files they name; then
    /// [`Config::resolve`].
    pub fn load(cli: &Cli, given: Sources, registry: &Registry) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => Sources::from_file(path, registry)?,
            None => Sources::default(),
        };
        Config::resolve(given.or(file).gather(), registry)
    }

    /// Parses and checks every setting and account, falling back to the defaults; reads
    /// nothing but `sources`.
    pub fn resolve(sources: Sources, registry: &Registry) -> Result<Config, ConfigError> {
        let Sources { settings, legacy, accounts, clients, demo, gathered } = sources;
        let given = Given::new(&settings, registry, demo);
        let listen = given.listen()?;
        let log_format = given.log_format()?;
        let accounts = accounts::resolve(registry, &legacy, &accounts, &gathered, &given)?;
        Ok(Config {
            listen,
            accounts,
            upstream_timeout: given.upstream_timeout()?,
            upstream_concurrency: given.upstream_concurrency()?,
            lookup_deadline: given.lookup_deadline()?,
            upstream_retries: given.upstream_retries()?,
            upstream_rate_limit: given.upstream_rate_limit()?,
            client_rate_limit: given.client_rate_limit()?,
            breaker_failures: given.breaker_failures()?,
            breaker_cooldown: given.breaker_cooldown()?,
            upstream_max_wait: given.upstream_max_wait()?,
            cache: CachePolicy {
                terminal: given.cache_ttl_terminal()?,
                failed: given.cache_ttl_failed()?,
                open: given.cache_ttl_open()?,
                not_found: given.cache_ttl_not_found()?,
                stale_if_error: given.stale_if_error()?,
                max_entries: given.cache_max_entries()?,
                max_bytes: given.cache_max_bytes()?,
            },
            response_cache_bytes: given.response_cache_bytes()?,
            batch_max: given.batch_max()?,
            entities_max: given.entities_max()?,
            query_limits: QueryLimits {
                max_depth: given.max_depth()?,
                max_complexity: given.max_complexity()?,
            },
            shape_limits: ShapeLimits {
                max_aliases: given.max_aliases()?,
                max_root_fields: given.max_root_fields()?,
            },
            max_connections: given.max_connections()?,
            metrics_listen: given.metrics_listen()?,
            header_read_timeout: given.header_read_timeout()?,
            idle_timeout: given.idle_timeout()?,
            request_timeout: given.request_timeout()?,
            max_body_bytes: given.max_body_bytes()?,
            graphiql: given.graphiql()?,
            introspection: given.introspection()?,
            log_queue_lines: given.log_queue_lines()?,
            log_format,
            shutdown_delay: given.shutdown_delay()?,
            shutdown_grace: given.shutdown_grace()?,
            max_subscription_connections: given.max_subscription_connections()?,
            subscriptions_per_connection: given.subscriptions_per_connection()?,
            subscription_ping_interval: given.subscription_ping_interval()?,
            connection_init_timeout: given.connection_init_timeout()?,
            max_ws_message_bytes: given.max_ws_message_bytes()?,
            callbacks: CallbackConfig {
                allowed: given.subscription_callback_urls()?,
                timeout: given.callback_timeout()?,
                max_subscriptions: given.max_callback_subscriptions()?,
            },
            redis: match given.redis_url()? {
                None => None,
                Some(url) => {
                    Some(SharedConfig { url, prefix: given.redis_prefix()?, timeout: given.redis_timeout()? })
                }
            },
            access: accounts::resolve_access(&given, &clients)?,
            trusted_documents: match given.trusted_documents()? {
                None => None,
                Some(path) => {
                    let mode = given.trusted_documents_mode()?;
                    let trusted = gathered
                        .file(&path)
                        .and_then(|text| TrustedDocuments::parse(&path, text, mode))
                        .map_err(|reason| given.invalid("trusted_documents", reason))?;
                    Some(Arc::new(trusted))
                }
            },
            apq: given.apq()?,
            demo,
            sandbox: SandboxOptions { latency: given.demo_latency()?, step: given.demo_step()? },
        })
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(settings: Settings) -> Result<Config, ConfigError> {
        resolve_sources(Sources { settings, ..Sources::default() })
    }

    fn resolve_sources(sources: Sources) -> Result<Config, ConfigError> {
        Config::resolve(sources, &Registry::builtin())
    }

    fn read_file(path: &Path) -> Result<Sources, ConfigError> {
        Sources::from_file(path, &Registry::builtin())
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
        resolve_sources(read_file(&file.0)?.gather())
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
            resolve_sources(legacy("dodo", Some("k"), Some("https://test.dodopayments.com/"))).unwrap();
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
        let err = resolve_sources(legacy("dodo", None, Some("ftp://x"))).unwrap_err();
        assert!(err.to_string().contains("DODO_PAYMENTS_BASE_URL"), "{err}");
        let err = resolve(Settings { batch_max: Some("0".into()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("GATEWAY_BATCH_MAX"), "{err}");
        for bad in ["0/min", "600", "600/day", ""] {
            let err =
                resolve(Settings { client_rate_limit: Some(bad.into()), ..Default::default() }).unwrap_err();
            assert!(err.to_string().contains("GATEWAY_CLIENT_RATE_LIMIT"), "{bad}: {err}");
        }
        let err =
            resolve_sources(legacy("dhmad", None, Some("https://user:pw@dhmad.tn/api/v1"))).unwrap_err();
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
    fn callback_settings_are_checked_when_loading() {
        let defaults = resolve(Settings::default()).unwrap();
        assert!(defaults.callbacks.allowed.is_empty(), "callbacks are off by default");
        assert_eq!(defaults.callbacks.timeout, Duration::from_secs(5));
        assert_eq!(defaults.callbacks.max_subscriptions, 1024);
        let given =
            |urls: &str| Settings { subscription_callback_urls: Some(urls.into()), ..Default::default() };
        let config = resolve(given(" http://router:4000/callback , https://r.example/cb/,")).unwrap();
        let urls: Vec<&str> = config.callbacks.allowed.iter().map(|url| url.as_str()).collect();
        assert_eq!(urls, ["http://router:4000/callback", "https://r.example/cb/"]);
        for bad in ["ftp://router/cb", "http://user:pw@router/cb", "http://router/cb?x=1", "/callback"] {
            let err = resolve(given(bad)).unwrap_err();
            assert!(err.to_string().contains("GATEWAY_SUBSCRIPTION_CALLBACK_URLS"), "{bad}: {err}");
            assert!(!err.to_string().contains("pw@"), "{err}");
        }
        let err =
            resolve(Settings { callback_timeout: Some("2m".into()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("GATEWAY_CALLBACK_TIMEOUT"), "{err}");
        let err = resolve(Settings { max_callback_subscriptions: Some("0".into()), ..Default::default() })
            .unwrap_err();
        assert!(err.to_string().contains("GATEWAY_MAX_CALLBACK_SUBSCRIPTIONS"), "{err}");
    }

    #[test]
    fn secrets_never_debug_print() {
        let sources = legacy("dhmad", Some("sk_live_topsecret"), None);
        assert!(!format!("{sources:?}").contains("topsecret"));
        let config = resolve_sources(sources).unwrap();
        assert!(!format!("{config:?}").contains("topsecret"));
    }

    #[test]
    fn file_keys_are_checked_and_flags_win() {
        let file = TempFile::new(
            "flags",
            "listen = \"127.0.0.1:9000\"\ncache_max_entries = 5000\nbatch_max = 7\ndodo_base_url = \"https://test.dodopayments.com\"\n",
        );
        let in_file = read_file(&file.0).unwrap();
        let flags = Sources {
            settings: Settings { batch_max: Some("9".into()), ..Default::default() },
            ..legacy("dodo", Some("from-env"), None)
        };
        let config = resolve_sources(flags.or(in_file)).unwrap();
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
        // The variable and the key file as the load step would have read them: resolving
        // reads neither, so no test changes the process's environment.
        let text = "[accounts.dodo_live]\nprovider = \"dodo\"\nenvironment = \"live\"\napi_key_env = \"CG_TEST_DODO_LIVE_KEY\"\n\
             default = true\nupstream_concurrency = 4\nupstream_timeout = \"2s\"\n\
             [accounts.dodo_test]\nprovider = \"dodo\"\nenvironment = \"test\"\napi_key_file = \"/run/keys/dodo-test\"\n";
        let file = TempFile::new("accounts", text);
        let mut sources = read_file(&file.0).unwrap();
        sources.gathered.variables.insert("CG_TEST_DODO_LIVE_KEY".into(), "live-key".into());
        sources.gathered.files.insert("/run/keys/dodo-test".into(), Ok("test-key\n".into()));
        let config = resolve_sources(sources).unwrap();
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
        let sources = legacy("dhmad", Some("sk_live_x"), None).or(read_file(&file.0).unwrap());
        let config = resolve_sources(sources).unwrap();
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
        let sources = legacy("dhmad", Some("sk_live_x"), None).or(read_file(&file.0).unwrap());
        let err = resolve_sources(sources).unwrap_err().to_string();
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
