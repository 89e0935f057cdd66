//! `--demo`: every provider's built-in stand-in served on 127.0.0.1, and one account for each,
//! so that the gateway runs with no keys.
//!
//! Owns: which sandboxes a demo starts and the accounts that point at them.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::domain::Secret;
use crate::providers::sandbox::{self, SandboxOptions, SandboxWebhook};
use crate::providers::{AccountConfig, Registry};

/// Every environment of every provider as a sandbox on 127.0.0.1, one account each: the
/// first environment's account is the provider's default and is named after it (`dodo`), the
/// others after the provider and the environment (`dodo_test`).
pub async fn accounts(
    registry: &Registry,
    options: SandboxOptions,
    gateway: SocketAddr,
) -> anyhow::Result<Vec<AccountConfig>> {
    let mut accounts = Vec::new();
    for kind in registry.iter() {
        for (index, (environment, _)) in kind.environments.iter().enumerate() {
            let name = if index == 0 { kind.slug.to_owned() } else { format!("{}_{environment}", kind.slug) };
            // Public demo values per account, so that each sandbox accepts only its own key
            // and the gateway only its own sandbox's webhooks.
            let key = format!("demo_{name}_key");
            let webhook = (kind.sandbox.sends_webhooks && kind.webhooks.is_some()).then(|| SandboxWebhook {
                url: format!("http://{gateway}/webhooks/{}", kind.slug),
                secret: sandbox::demo_webhook_secret(&name),
                business_id: format!("demo_{name}"),
            });
            let endpoint = sandbox::serve(kind.sandbox, environment, &key, options, webhook.clone()).await?;
            // Its own target, so that a quiet log level can still show where the sandboxes are.
            tracing::info!(
                target: "checkout_gateway::demo",
                account = %name,
                environment,
                base_url = %endpoint.base_url,
                webhooks = webhook.is_some(),
                "demo mode: sandbox provider"
            );
            accounts.push(AccountConfig {
                name: Arc::from(name),
                base_url: endpoint.base_url,
                api_key: Some(Secret::new(key)),
                default: index == 0,
                webhook_secret: webhook.as_ref().map(|webhook| Secret::new(webhook.secret.clone())),
                business_id: webhook.map(|webhook| webhook.business_id),
                ..AccountConfig::unconfigured(kind)
            });
        }
    }
    Ok(accounts)
}
