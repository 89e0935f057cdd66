//! One module per provider behind one trait. Wire types and the mapping to the domain stay
//! inside each module; `upstream` holds what every provider's HTTP call shares.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::Config;
use crate::domain::{FetchResult, Provider};
use crate::metrics::Metrics;

pub mod dhmad;
pub mod dodo;
pub mod upstream;

/// Something that can fetch a checkout session from one provider, with one credential.
#[async_trait]
pub trait SessionProvider: Send + Sync + fmt::Debug {
    fn provider(&self) -> Provider;

    /// Whose view of the provider this is: environment (base URL) and a fingerprint of the
    /// credential. Two providers with different scopes may see different sessions under the
    /// same id, so the cache keys on it.
    fn scope(&self) -> &Arc<str>;

    /// Fetches one session. An id that cannot be valid for this provider is refused here,
    /// before any upstream call.
    async fn fetch_session(&self, id: &Arc<str>) -> FetchResult;

    /// Whether the provider accepts the gateway's credentials, checked once at startup where
    /// the provider has a cheap identity call.
    async fn check_credentials(&self) -> CredentialStatus;
}

/// What the startup credential check found, reported by `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialStatus {
    /// The check has not finished yet.
    Checking,
    /// No key is configured: the provider's sessions answer NOT_CONFIGURED.
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

/// Builds every provider from the configuration: the one place that lists them.
pub fn from_config(
    config: &Config,
    client: &reqwest::Client,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Vec<Arc<dyn SessionProvider>>> {
    let upstream = |provider, settings| {
        upstream::Upstream::new(
            provider,
            client.clone(),
            settings,
            config.upstream_timeout,
            config.upstream_concurrency,
            metrics.clone(),
        )
    };
    Ok(vec![
        Arc::new(dhmad::DhmadClient::new(upstream(Provider::Dhmad, &config.dhmad)?)),
        Arc::new(dodo::DodoClient::new(upstream(Provider::Dodo, &config.dodo)?)),
    ])
}

/// One HTTP client for every provider: connection pools are shared, redirects are not
/// followed (a provider API never redirects a GET; following one could leak the key).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    install_crypto_provider();
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("checkout-gateway/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(3))
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .build()?)
}

/// reqwest is built without a default TLS crypto provider; ring keeps the build small. A
/// second install (tests build several applications) is refused harmlessly.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
