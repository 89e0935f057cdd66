//! The TOML file (`--config`): top-level settings (the keys of [`super::Settings`]), each
//! provider's single-account keys (`dhmad_api_key`, `dhmad_base_url`, …), `[accounts.NAME]`
//! and `[clients.NAME]` tables. Unknown keys are refused; values are read as text, so that
//! `cache_max_entries = 5000` and `cache_max_entries = "5000"` mean the same.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::accounts::LegacyAccount;
use super::{ConfigError, Sources};
use crate::domain::Secret;
use crate::providers::Registry;

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
    /// Reads a TOML settings file: top-level settings, the single-account keys of the
    /// registry's providers and `[accounts.NAME]` and `[clients.NAME]` tables.
    pub fn from_file(path: &Path, registry: &Registry) -> Result<Sources, ConfigError> {
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
        for kind in registry.iter() {
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
