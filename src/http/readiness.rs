//! What `/readyz` reports besides whether this replica serves: each account's startup
//! credential check and circuit, and the shared tier's state. One handle, made where the parts
//! are built, so that the route reaches into nothing else (not the service, not the cache).
//!
//! Owns: what the startup credential check found (the check writes it, `/readyz` reads it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::cache::replicated::Health;
use crate::domain::lock;
use crate::providers::{Account, CredentialStatus};

#[derive(Debug)]
pub struct Readiness {
    accounts: Arc<Vec<Arc<Account>>>,
    /// By account name; `Checking` until the check reaches the account.
    credentials: Mutex<BTreeMap<Arc<str>, CredentialStatus>>,
    /// `None`: no shared tier is configured.
    shared: Option<Health>,
}

impl Readiness {
    pub fn new(accounts: Arc<Vec<Arc<Account>>>, shared: Option<Health>) -> Self {
        let credentials =
            accounts.iter().map(|account| (account.name().clone(), CredentialStatus::Checking)).collect();
        Self { accounts, credentials: Mutex::new(credentials), shared }
    }

    /// What the startup check found for `account`.
    pub fn checked(&self, account: &Account, status: CredentialStatus) {
        lock(&self.credentials).insert(account.name().clone(), status);
    }

    /// `{"accounts": {name: {provider, default, credentials, circuit}}, "shared": {…}}`.
    /// Redis trouble is reported, never made a reason to be unready: the replica works alone.
    pub fn report(&self) -> serde_json::Value {
        let checked = lock(&self.credentials).clone();
        let accounts: serde_json::Map<String, serde_json::Value> = self
            .accounts
            .iter()
            .map(|account| {
                let credentials = checked.get(account.name()).copied().unwrap_or(CredentialStatus::Checking);
                let report = json!({
                    "provider": account.kind().slug,
                    "default": account.config.default,
                    "credentials": credentials,
                    "circuit": account.circuit(),
                });
                (account.name().to_string(), report)
            })
            .collect();
        let shared = match &self.shared {
            None => json!({"configured": false}),
            Some(shared) => {
                json!({"configured": true, "state": shared.state(), "pubsub": shared.is_listening()})
            }
        };
        json!({"accounts": accounts, "shared": shared})
    }
}
