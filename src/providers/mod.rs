//! One module per provider behind one trait. Wire types and the mapping to the domain stay
//! inside each module; `upstream` holds what every provider's HTTP call shares.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::Config;
use crate::domain::{FetchResult, Provider};

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
    fn scope(&self) -> &str;

    /// Fetches one session. An id that cannot be valid for this provider is refused here,
    /// before any upstream call.
    async fn fetch_session(&self, id: &str) -> FetchResult;
}

/// Builds every provider from the configuration: the one place that lists them.
pub fn from_config(
    config: &Config,
    client: &reqwest::Client,
) -> anyhow::Result<Vec<Arc<dyn SessionProvider>>> {
    Ok(vec![
        Arc::new(dhmad::DhmadClient::new(upstream::Upstream::new(
            Provider::Dhmad,
            client.clone(),
            &config.dhmad,
            config.upstream_timeout,
            config.upstream_concurrency,
        )?)),
        Arc::new(dodo::DodoClient::new(upstream::Upstream::new(
            Provider::Dodo,
            client.clone(),
            &config.dodo,
            config.upstream_timeout,
            config.upstream_concurrency,
        )?)),
    ])
}

/// One HTTP client for every provider: connection pools are shared, redirects are not
/// followed (a provider API never redirects a GET; following one could leak the key).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    // reqwest is built without a default crypto provider; ring keeps the build small. A
    // second install (tests build several applications) is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("checkout-gateway/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(3))
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .build()?)
}
