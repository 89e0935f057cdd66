//! Outbound HTTP: the one reqwest client every provider call shares, and the TLS crypto
//! provider (also needed by the OTLP exporter). Owns nothing else, so that both the
//! providers and telemetry can use it without depending on each other.

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

/// What keeps a URL from being a plain http(s) one: the gateway sends requests to such URLs
/// (providers, callbacks), and credentials, a query or a fragment in them would go out with
/// every request and into logs.
#[derive(Debug, PartialEq, Eq)]
pub enum NotPlain {
    /// Not a URL at all, with the parser's reason.
    Unparsable(String),
    /// Not http:// nor https://.
    Scheme,
    NoHost,
    /// A user name or password (never echoed: it is a credential).
    Credentials,
    QueryOrFragment,
}

/// `raw` as an http(s) URL with a host and no credentials, query or fragment.
pub fn plain_http_url(raw: &str) -> Result<reqwest::Url, NotPlain> {
    let url = reqwest::Url::parse(raw).map_err(|e| NotPlain::Unparsable(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(NotPlain::Scheme);
    }
    if url.host_str().is_none() {
        return Err(NotPlain::NoHost);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(NotPlain::Credentials);
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(NotPlain::QueryOrFragment);
    }
    Ok(url)
}

/// reqwest is built without a default TLS crypto provider; ring keeps the build small. A
/// second install (tests build several applications) is refused harmlessly.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
