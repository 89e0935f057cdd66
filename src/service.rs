//! The one entry point the GraphQL layer calls: finds the provider, goes through its cache,
//! and answers batches in input order with each distinct session asked once.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::join_all;

use crate::cache::{Lookup, SessionCache};
use crate::domain::{FetchError, Provider, UnavailableReason};
use crate::providers::SessionProvider;

#[derive(Debug)]
pub struct SessionService {
    providers: HashMap<Provider, Arc<dyn SessionProvider>>,
    cache: SessionCache,
}

impl SessionService {
    pub fn new(providers: Vec<Arc<dyn SessionProvider>>, cache: SessionCache) -> Self {
        let providers = providers.into_iter().map(|p| (p.provider(), p)).collect();
        Self { providers, cache }
    }

    pub async fn get(&self, provider: Provider, id: &str) -> Lookup {
        match self.providers.get(&provider) {
            Some(provider) => self.cache.lookup(provider.as_ref(), id).await,
            // Every variant is registered in `providers::from_config`; this only guards a
            // service built by hand with fewer.
            None => Lookup {
                answer: Err(FetchError::unavailable(UnavailableReason::NotConfigured)),
                reusable_for: None,
            },
        }
    }

    /// Answers in input order; a ref repeated in `refs` is looked up once. Lookups run
    /// concurrently; each provider bounds its own upstream concurrency.
    pub async fn get_many(&self, refs: &[(Provider, &str)]) -> Vec<Lookup> {
        let mut slot_of: HashMap<(Provider, &str), usize> = HashMap::with_capacity(refs.len());
        let mut distinct = Vec::with_capacity(refs.len());
        let slots: Vec<usize> = refs
            .iter()
            .map(|&key| {
                *slot_of.entry(key).or_insert_with(|| {
                    distinct.push(key);
                    distinct.len() - 1
                })
            })
            .collect();
        let answers = join_all(distinct.iter().map(|&(provider, id)| self.get(provider, id))).await;
        slots.into_iter().map(|slot| answers[slot].clone()).collect()
    }

    pub fn cache(&self) -> &SessionCache {
        &self.cache
    }
}
