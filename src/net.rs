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

/// reqwest is built without a default TLS crypto provider; ring keeps the build small. A
/// second install (tests build several applications) is refused harmlessly.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
