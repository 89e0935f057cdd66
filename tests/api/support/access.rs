//! Clients as the access tests configure them: API keys and the router's secrets.

use checkout_gateway::access::{AccessConfig, ApiKey, AuthMode, Rights};
use checkout_gateway::config::Secret;
use sha2::{Digest, Sha256};

/// The key of a client that reads every account.
pub const ALL_KEY: &str = "key-of-the-operations-team";
/// The key of a client that reads the `dodo` account only.
pub const DODO_ONLY_KEY: &str = "key-of-the-dodo-dashboard";

/// SHA-256 as hex, as API keys are configured (and as persisted queries are named).
pub fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// `GATEWAY_AUTH=api-key` with the two keys above, and the router's current and next secret
/// (`router-current`, `router-next`).
pub fn api_keys() -> AccessConfig {
    AccessConfig {
        mode: AuthMode::ApiKey,
        api_keys: vec![
            ApiKey { name: "ops".into(), sha256: sha256(ALL_KEY), rights: Rights::from_list(&["*"]) },
            ApiKey {
                name: "dodo-dashboard".into(),
                sha256: sha256(DODO_ONLY_KEY),
                rights: Rights::from_list(&["dodo"]),
            },
        ],
        router_secrets: vec![Secret::new("router-current"), Secret::new("router-next")],
        ..AccessConfig::open()
    }
}
