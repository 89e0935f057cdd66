//! Which documents may run, and how a client may send one by its hash: trusted documents (a
//! manifest of allowed operations in Apollo's persisted query list format) and automatic
//! persisted queries (Apollo's APQ protocol: the hash alone once the document is known).
//!
//! Owns: the manifest and its two modes, and the bounded store of APQ documents.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_graphql::extensions::apollo_persisted_queries::CacheStorage;
use async_graphql::parser::types::ExecutableDocument;

/// What to do with an operation the manifest does not list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustMode {
    /// Refuse it (`PERSISTED_QUERY_NOT_IN_LIST`).
    Enforce,
    /// Run it and log it: for rolling a manifest out.
    Log,
}

/// The allowed operations: by id, and by their exact text.
#[derive(Debug)]
pub struct TrustedDocuments {
    mode: TrustMode,
    by_id: HashMap<String, Arc<str>>,
    bodies: std::collections::HashSet<Arc<str>>,
}

#[derive(serde::Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    operations: Vec<ManifestOperation>,
}

#[derive(serde::Deserialize)]
struct ManifestOperation {
    id: String,
    body: String,
}

/// What the manifest says of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Listed (its text filled in when the request named it by id only).
    Allowed,
    /// Not listed; in log mode it runs anyway.
    NotListed,
}

impl TrustedDocuments {
    /// Reads a manifest (`{"format": "apollo-persisted-query-manifest", "version": 1,
    /// "operations": [{"id", "name", "type", "body"}]}`).
    pub fn load(path: &Path, mode: TrustMode) -> Result<TrustedDocuments, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {}", path.display(), e.kind()))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a persisted query manifest: {e}", path.display()))?;
        if manifest.format != "apollo-persisted-query-manifest" || manifest.version != 1 {
            return Err(format!(
                "{}: format {} version {} is not apollo-persisted-query-manifest version 1",
                path.display(),
                manifest.format,
                manifest.version
            ));
        }
        let mut by_id = HashMap::new();
        let mut bodies = std::collections::HashSet::new();
        for operation in manifest.operations {
            let body: Arc<str> = Arc::from(operation.body);
            bodies.insert(body.clone());
            by_id.insert(operation.id, body);
        }
        Ok(TrustedDocuments { mode, by_id, bodies })
    }

    pub fn mode(&self) -> TrustMode {
        self.mode
    }

    /// Checks `request` against the manifest: a listed body runs as sent; an id alone (the
    /// APQ extension's hash, as Apollo clients send persisted queries) gets its body.
    pub fn check(&self, request: &mut async_graphql::Request) -> Verdict {
        if request.query.trim().is_empty() {
            let id = request
                .extensions
                .get("persistedQuery")
                .and_then(|value| match value {
                    async_graphql::Value::Object(fields) => fields.get("sha256Hash").cloned(),
                    _ => None,
                })
                .and_then(|hash| match hash {
                    async_graphql::Value::String(hash) => Some(hash),
                    _ => None,
                });
            if let Some(body) = id.and_then(|id| self.by_id.get(&id)) {
                request.query = body.to_string();
                // Answered from the manifest, not from the APQ store.
                request.extensions.remove("persistedQuery");
                return Verdict::Allowed;
            }
            return Verdict::NotListed;
        }
        if self.bodies.contains(request.query.as_str()) {
            Verdict::Allowed
        } else {
            Verdict::NotListed
        }
    }
}

/// Documents registered through APQ, bounded by their estimated size.
#[derive(Clone)]
pub struct ApqStore(moka::future::Cache<String, Arc<ExecutableDocument>>);

impl std::fmt::Debug for ApqStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApqStore").field("entries", &self.0.entry_count()).finish()
    }
}

impl ApqStore {
    pub fn new(max_bytes: u64) -> Self {
        Self(
            moka::future::Cache::builder()
                .max_capacity(max_bytes)
                // A parsed document's size, estimated by its printed form: computed once, when
                // a client registers it.
                .weigher(|hash: &String, document: &Arc<ExecutableDocument>| {
                    u32::try_from(hash.len() + format!("{document:?}").len()).unwrap_or(u32::MAX)
                })
                .build(),
        )
    }
}

#[async_trait::async_trait]
impl CacheStorage for ApqStore {
    async fn get(&self, key: String) -> Option<ExecutableDocument> {
        self.0.get(&key).await.map(|document| (*document).clone())
    }

    async fn set(&self, key: String, query: ExecutableDocument) {
        self.0.insert(key, Arc::new(query)).await;
    }
}

/// Lets `request` run, or says why not: the router's own operations (query plans) are never
/// in a client manifest and pass; a listed document passes; an unlisted one is refused in
/// enforce mode and logged in log mode.
pub fn admit(
    trusted: Option<&TrustedDocuments>,
    request: &mut async_graphql::Request,
    via_router: bool,
) -> Result<(), async_graphql::ServerError> {
    let Some(trusted) = trusted.filter(|_| !via_router) else { return Ok(()) };
    if trusted.check(request) == Verdict::Allowed {
        return Ok(());
    }
    let operation = request.operation_name.clone().unwrap_or_default();
    match trusted.mode() {
        TrustMode::Log => {
            tracing::warn!(operation = %operation, "an operation not in the trusted documents ran (log mode)");
            Ok(())
        }
        TrustMode::Enforce => {
            use async_graphql::ErrorExtensions;
            let error = async_graphql::Error::new(
                "this gateway runs only its trusted documents, and this operation is not one of them",
            )
            .extend_with(|_, extensions| extensions.set("code", "PERSISTED_QUERY_NOT_IN_LIST"));
            Err(error.into_server_error(async_graphql::Pos::default()))
        }
    }
}
