//! Which sessions a provider's reference names: webhooks name a payment or an escrow, not
//! always the session. This replica's half of the index; the shared half is the protocol's
//! ([`super::replicated`]).
//!
//! Owns: the local index, bounded in entries and in sessions per reference, and how long a
//! reference keeps naming its sessions.

use std::sync::Arc;
use std::time::Duration;

use super::Key;

/// Sessions one provider reference (a payment id, an escrow id) may name; a reference with
/// more (an escrow with many sessions) keeps the latest ones.
const SESSIONS_PER_REFERENCE: usize = 64;

/// How long a payment or escrow id keeps naming its sessions (here and in the shared tier):
/// providers redeliver an event for about a day.
pub const REFERENCE_TTL: Duration = Duration::from_secs(48 * 3600);

/// Entries of the index at most.
const REFERENCES_MAX: u64 = 200_000;

/// (scope, reference) → session ids (keyed like a session: whose view, and the provider's id).
#[derive(Debug)]
pub(super) struct References(moka::sync::Cache<Key, Arc<[Arc<str>]>>);

impl References {
    pub(super) fn new() -> Self {
        Self(moka::sync::Cache::builder().max_capacity(REFERENCES_MAX).time_to_live(REFERENCE_TTL).build())
    }

    /// Remembers that `reference` (a provider's id for a payment or an escrow) names session
    /// `id` in `scope`.
    pub(super) fn note(&self, scope: &Arc<str>, reference: &str, id: &Arc<str>) {
        let key = (scope.clone(), Arc::from(reference));
        self.0.entry(key).and_upsert_with(|known| match known {
            Some(entry) if entry.value().contains(id) => entry.into_value(),
            Some(entry) => {
                let known = entry.into_value();
                let skip = (known.len() + 1).saturating_sub(SESSIONS_PER_REFERENCE);
                known.iter().skip(skip).cloned().chain([id.clone()]).collect()
            }
            None => Arc::from([id.clone()]),
        });
    }

    /// The sessions seen under `reference` in `scope`.
    pub(super) fn sessions_of(&self, scope: &Arc<str>, reference: &str) -> Arc<[Arc<str>]> {
        self.0.get(&(scope.clone(), Arc::from(reference))).unwrap_or_else(|| Arc::from([]))
    }
}
