//! Configuration: one typed [`Config`], from defaults, an optional TOML file, environment
//! variables and command-line flags (later wins). Every setting has one flag, one environment
//! variable and one file key (the flag's name with `_`); unknown file keys and bad values stop
//! startup with a message that names the setting. Secrets never appear in `Debug` or logs.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use serde::Deserialize;

use crate::cache::CachePolicy;

/// A credential. It prints as `[redacted]` everywhere; `expose` is the only way to the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// checkout-gateway: one GraphQL view of checkout sessions held by DHMAD and Dodo Payments.
///
/// Settings come from flags, environment variables and an optional TOML file (`--config`),
/// in that order of precedence, over built-in defaults. A file key is the flag's name with
/// `_` for `-` (e.g. `cache_ttl_open = "5s"`). Durations are written like `500ms`, `5s`, `1h`.
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

    /// DHMAD API key (`sk_live_…` or `sk_sandbox_…`); without it DHMAD answers NOT_CONFIGURED.
    #[arg(long, env = "DHMAD_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub dhmad_api_key: Option<Secret>,

    /// DHMAD API base URL [default: https://dhmad.tn/api/v1; sandbox: https://sandbox.dhmad.tn/api/v1].
    #[arg(long, env = "DHMAD_BASE_URL", value_name = "URL")]
    pub dhmad_base_url: Option<String>,

    /// Dodo Payments API key (a read-only key is enough); without it Dodo answers NOT_CONFIGURED.
    #[arg(long, env = "DODO_PAYMENTS_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub dodo_api_key: Option<Secret>,

    /// Dodo Payments base URL [default: https://live.dodopayments.com; test mode: https://test.dodopayments.com].
    #[arg(long, env = "DODO_PAYMENTS_BASE_URL", value_name = "URL")]
    pub dodo_base_url: Option<String>,

    /// Longest wait for one provider call, queueing included [default: 5s].
    #[arg(long, env = "GATEWAY_UPSTREAM_TIMEOUT", value_name = "DURATION")]
    pub upstream_timeout: Option<String>,

    /// Most calls in flight to one provider at once [default: 16].
    #[arg(long, env = "GATEWAY_UPSTREAM_CONCURRENCY", value_name = "N")]
    pub upstream_concurrency: Option<String>,

    /// Most answers kept in the cache, per provider [default: 100000].
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

    /// Most refs one `checkoutSessions` call may ask for [default: 100].
    #[arg(long, env = "GATEWAY_BATCH_MAX", value_name = "N")]
    pub batch_max: Option<String>,

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

    /// With --demo: latency the sandbox providers add to every answer, e.g. `20ms` [default: 0s].
    #[arg(long, env = "GATEWAY_DEMO_LATENCY", value_name = "DURATION")]
    pub demo_latency: Option<String>,
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
            dhmad_api_key,
            dhmad_base_url,
            dodo_api_key,
            dodo_base_url,
            upstream_timeout,
            upstream_concurrency,
            cache_max_entries,
            response_cache_bytes,
            cache_ttl_terminal,
            cache_ttl_failed,
            cache_ttl_open,
            cache_ttl_not_found,
            batch_max,
            log_format,
            shutdown_delay,
            shutdown_grace,
            demo_latency,
        )
    }

    /// Reads a TOML settings file. Numbers and booleans are accepted where a setting is
    /// numeric, so `cache_max_entries = 5000` and `cache_max_entries = "5000"` mean the same.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::File(format!("cannot read {}: {e}", path.display())))?;
        let table: toml::Table = toml::from_str(&text)
            .map_err(|e| ConfigError::File(format!("{} is not valid TOML: {e}", path.display())))?;
        let mut flat = serde_json::Map::new();
        for (key, value) in table {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(ConfigError::File(format!(
                        "{}: `{key}` must be a string or a number",
                        path.display()
                    )))
                }
            };
            flat.insert(key, serde_json::Value::String(text));
        }
        serde_json::from_value(serde_json::Value::Object(flat))
            .map_err(|e| ConfigError::File(format!("{}: {e}", path.display())))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration file: {0}")]
    File(String),
    #[error("invalid setting {setting}: {reason}")]
    Invalid { setting: String, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub api_key: Option<Secret>,
    pub base_url: String,
}

/// The checked configuration the gateway runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub dhmad: ProviderConfig,
    pub dodo: ProviderConfig,
    pub upstream_timeout: Duration,
    pub upstream_concurrency: usize,
    pub cache: CachePolicy,
    /// Bytes of whole responses kept for replay; 0: none.
    pub response_cache_bytes: u64,
    pub batch_max: usize,
    pub log_format: LogFormat,
    pub shutdown_delay: Duration,
    pub shutdown_grace: Duration,
    /// Serve against the built-in sandbox providers instead of the configured ones.
    pub demo: bool,
    pub demo_latency: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config::resolve(Settings::default(), false).expect("the defaults are valid")
    }
}

impl Config {
    /// Loads everything the command line says: flags and environment (through clap), then the
    /// file named by `--config`, then defaults.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        Config::resolve(cli.settings.clone().or(file), cli.demo)
    }

    /// Parses and checks every setting, falling back to the defaults.
    pub fn resolve(settings: Settings, demo: bool) -> Result<Config, ConfigError> {
        let names = SettingNames::new();
        let duration = |id: &str, value: &Option<String>, default: &str| -> Result<Duration, ConfigError> {
            let raw = value.as_deref().unwrap_or(default);
            humantime::parse_duration(raw.trim()).map_err(|e| {
                names.invalid(id, format!("`{raw}` is not a duration ({e}); write e.g. 500ms, 5s, 1h"))
            })
        };
        let whole = |id: &str, value: &Option<String>, default: u64, range: RangeInclusive<u64>| {
            let Some(raw) = value else { return Ok(default) };
            raw.trim().parse::<u64>().ok().filter(|n| range.contains(n)).ok_or_else(|| {
                names.invalid(
                    id,
                    format!("`{raw}` is not a whole number from {} to {}", range.start(), range.end()),
                )
            })
        };
        let positive =
            |id: &str, value: &Option<String>, default: u64, max: u64| whole(id, value, default, 1..=max);
        let url = |id: &str, value: &Option<String>, default: &str| -> Result<String, ConfigError> {
            let raw = value.as_deref().unwrap_or(default).trim();
            check_base_url(raw).map_err(|reason| names.invalid(id, reason))?;
            Ok(raw.trim_end_matches('/').to_owned())
        };
        let non_empty = |key: Option<Secret>| key.filter(|k| !k.expose().trim().is_empty());

        let listen = settings.listen.as_deref().unwrap_or("0.0.0.0:8080");
        let listen = listen.trim().parse::<SocketAddr>().map_err(|_| {
            names.invalid("listen", format!("`{listen}` is not an address and port such as 0.0.0.0:8080"))
        })?;
        let positive_duration = |id: &str, value: &Option<String>, default: &str| {
            let d = duration(id, value, default)?;
            if d.is_zero() {
                return Err(names.invalid(id, "must be longer than zero".into()));
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
        let config = Config {
            listen,
            dhmad: ProviderConfig {
                api_key: non_empty(settings.dhmad_api_key),
                base_url: url("dhmad_base_url", &settings.dhmad_base_url, "https://dhmad.tn/api/v1")?,
            },
            dodo: ProviderConfig {
                api_key: non_empty(settings.dodo_api_key),
                base_url: url("dodo_base_url", &settings.dodo_base_url, "https://live.dodopayments.com")?,
            },
            upstream_timeout: positive_duration("upstream_timeout", &settings.upstream_timeout, "5s")?,
            upstream_concurrency: positive("upstream_concurrency", &settings.upstream_concurrency, 16, 1024)?
                as usize,
            cache: CachePolicy {
                terminal: duration("cache_ttl_terminal", &settings.cache_ttl_terminal, "1h")?,
                failed: duration("cache_ttl_failed", &settings.cache_ttl_failed, "30s")?,
                open: duration("cache_ttl_open", &settings.cache_ttl_open, "5s")?,
                not_found: duration("cache_ttl_not_found", &settings.cache_ttl_not_found, "2s")?,
                max_entries: positive(
                    "cache_max_entries",
                    &settings.cache_max_entries,
                    100_000,
                    100_000_000,
                )?,
            },
            response_cache_bytes: whole(
                "response_cache_bytes",
                &settings.response_cache_bytes,
                2 * 1024 * 1024,
                0..=1 << 40,
            )?,
            batch_max: positive("batch_max", &settings.batch_max, 100, 10_000)? as usize,
            log_format,
            shutdown_delay: duration("shutdown_delay", &settings.shutdown_delay, "5s")?,
            shutdown_grace: duration("shutdown_grace", &settings.shutdown_grace, "20s")?,
            demo,
            demo_latency: duration("demo_latency", &settings.demo_latency, "0s")?,
        };
        Ok(config)
    }
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
        let command = Cli::command();
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

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = Config::default();
        assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.dhmad.base_url, "https://dhmad.tn/api/v1");
        assert_eq!(config.dodo.base_url, "https://live.dodopayments.com");
        assert_eq!(config.cache, CachePolicy::default());
        assert_eq!(config.batch_max, 100);
        assert!(config.dhmad.api_key.is_none());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = resolve(Settings { listen: Some("nowhere".into()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("GATEWAY_LISTEN"), "{err}");
        let err =
            resolve(Settings { cache_ttl_open: Some("soon".into()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("GATEWAY_CACHE_TTL_OPEN"), "{err}");
        let err =
            resolve(Settings { dodo_base_url: Some("ftp://x".into()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("DODO_PAYMENTS_BASE_URL"), "{err}");
        let err = resolve(Settings { batch_max: Some("0".into()), ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("GATEWAY_BATCH_MAX"), "{err}");
        let err = resolve(Settings {
            dhmad_base_url: Some("https://user:pw@dhmad.tn/api/v1".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(!err.to_string().contains("pw@"), "{err}");
    }

    #[test]
    fn secrets_never_debug_print() {
        let settings =
            Settings { dhmad_api_key: Some(Secret::new("sk_live_topsecret")), ..Default::default() };
        assert!(!format!("{settings:?}").contains("topsecret"));
        let config = resolve(settings).unwrap();
        assert!(!format!("{config:?}").contains("topsecret"));
    }

    #[test]
    fn file_keys_are_checked_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("cg-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\ncache_max_entries = 5000\nbatch_max = 7\n")
            .unwrap();
        let file = Settings::from_file(&path).unwrap();
        let flags = Settings { batch_max: Some("9".into()), ..Default::default() };
        let config = resolve(flags.or(file)).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.cache.max_entries, 5000);
        assert_eq!(config.batch_max, 9);

        std::fs::write(&path, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let err = Settings::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("unknown field `lisen`"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
