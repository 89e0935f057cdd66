//! Accounts and clients: each provider's default account from its single-account variables,
//! `[accounts.NAME]` tables (their keys and webhook secrets from the variables and files
//! they name, as the load step read them), the default account of each provider, and who may
//! ask (`[clients.NAME]` API keys, JWT, the router's secret).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::cli::Given;
use super::file::{AccountTable, ClientTable};
use super::values::{parse_base_url, parse_positive_duration, parse_whole};
use super::{ConfigError, Gathered};
use crate::access::{AccessConfig, ApiKey, AuthMode, JwtConfig, Rights};
use crate::domain::Secret;
use crate::providers::guard::RateLimit;
use crate::providers::{AccountConfig, ProviderKind, Registry};

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
    pub(super) fn or(self, other: LegacyAccount) -> LegacyAccount {
        LegacyAccount {
            api_key: self.api_key.or(other.api_key),
            base_url: self.base_url.or(other.base_url),
            webhook_secret: self.webhook_secret.or(other.webhook_secret),
        }
    }

    pub(super) fn is_given(&self) -> bool {
        self.api_key.is_some() || self.base_url.is_some() || self.webhook_secret.is_some()
    }
}

/// Every account: the providers' single-account variables first, then the tables; each
/// provider with accounts gets exactly one default.
pub(super) fn resolve(
    registry: &Registry,
    legacy: &BTreeMap<String, LegacyAccount>,
    tables: &BTreeMap<String, AccountTable>,
    gathered: &Gathered,
    given: &Given,
) -> Result<Vec<AccountConfig>, ConfigError> {
    let mut resolved = Vec::new();
    for kind in registry.iter() {
        let Some(legacy) = legacy.get(kind.slug) else { continue };
        let base_url = legacy.base_url.as_deref().unwrap_or(kind.default_base_url());
        let id = format!("{}_base_url", kind.slug);
        resolved.push(AccountConfig {
            base_url: parse_base_url(base_url).map_err(|reason| given.invalid(&id, reason))?,
            api_key: legacy.api_key.clone().filter(|key| !key.expose().trim().is_empty()),
            webhook_secret: check_webhook_secret(kind, legacy.webhook_secret.clone())
                .map_err(|reason| given.invalid(&format!("{}_webhook_secret", kind.slug), reason))?,
            ..AccountConfig::unconfigured(kind)
        });
    }
    for (name, table) in tables {
        // A table named after an account the variables define only tunes it: the
        // variables keep the key and the URL.
        if let Some(defined) = resolved.iter_mut().find(|other| *other.name == **name) {
            tune_account(defined, table)?;
            continue;
        }
        resolved.push(resolve_account(name, table, registry, gathered)?);
    }
    choose_defaults(&mut resolved, registry)?;
    Ok(resolved)
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

/// One `[accounts.NAME]` table, checked, its key as the load step read it: a missing
/// variable or file stops startup rather than failing every request.
fn resolve_account(
    name: &str,
    table: &AccountTable,
    registry: &Registry,
    gathered: &Gathered,
) -> Result<AccountConfig, ConfigError> {
    let invalid = |field: &str, reason: String| account_error(name, field, reason);
    check_account_name(name).map_err(|reason| invalid("", reason))?;
    let slug = table
        .provider
        .as_deref()
        .map(str::trim)
        .ok_or_else(|| invalid("provider", format!("is required: one of {}", registry.slugs())))?;
    let kind = registry.get(slug).ok_or_else(|| {
        invalid("provider", format!("`{slug}` is not a provider: one of {}", registry.slugs()))
    })?;
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
    let secret = |env, file| read_secret(name, env, file, gathered);
    let api_key = secret(("api_key_env", &table.api_key_env), ("api_key_file", &table.api_key_file))?
        .ok_or_else(|| invalid("api_key_env", "an account needs `api_key_env` or `api_key_file`".into()))?;
    let webhook_secret = secret(
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

/// A secret named by its variable (`…_env`) or its file (`…_file`); `None` when neither is
/// given. Its value is never shown.
fn read_secret(
    name: &str,
    (env_field, env): (&str, &Option<String>),
    (file_field, file): (&str, &Option<PathBuf>),
    gathered: &Gathered,
) -> Result<Option<Secret>, ConfigError> {
    let invalid = |field: &str, reason: String| account_error(name, field, reason);
    match (env, file) {
        (Some(_), Some(_)) => {
            Err(invalid(env_field, format!("give `{env_field}` or `{file_field}`, not both")))
        }
        (Some(var), None) => {
            let value = gathered.variable(var.trim());
            if value.trim().is_empty() {
                return Err(invalid(env_field, format!("the environment variable `{var}` is not set")));
            }
            Ok(Some(Secret::new(value.trim())))
        }
        (None, Some(path)) => {
            let value = gathered.file(path).map_err(|reason| invalid(file_field, reason))?;
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
        .map(parse_positive_duration)
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
fn choose_defaults(accounts: &mut [AccountConfig], registry: &Registry) -> Result<(), ConfigError> {
    for &kind in registry.iter() {
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

/// Who may ask: `None` when GATEWAY_AUTH is not given (the application refuses to start
/// without `--demo`).
pub(super) fn resolve_access(
    given: &Given,
    clients: &BTreeMap<String, ClientTable>,
) -> Result<Option<AccessConfig>, ConfigError> {
    let trust_router_identity = given.router_trust_identity()?;
    let Some(mode) = given.auth()? else {
        if !clients.is_empty() {
            return Err(
                given.invalid("auth", "[clients.NAME] tables are given: set GATEWAY_AUTH=api-key".into())
            );
        }
        return Ok(None);
    };
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
        return Err(given
            .invalid("auth", "`api-key` needs at least one [clients.NAME] table in the config file".into()));
    }
    let jwt = if mode == AuthMode::Jwt {
        // In the order the settings were always checked in, so the first refusal is the same.
        let algorithms = given.jwt_algorithms()?;
        let leeway = given.jwt_leeway()?;
        let jwks_url = given.jwt_jwks_url()?;
        let jwks_refresh = given.jwt_jwks_refresh()?;
        Some(JwtConfig {
            jwks_url,
            issuer: given.jwt_issuer()?,
            audience: given.jwt_audience()?,
            algorithms,
            leeway,
            jwks_refresh,
            rights_claim: given.jwt_rights_claim()?,
        })
    } else {
        None
    };
    let router_secrets =
        [given.router_secret()?, given.router_secret_next()?].into_iter().flatten().collect();
    Ok(Some(AccessConfig { mode, api_keys, jwt, router_secrets, trust_router_identity }))
}
