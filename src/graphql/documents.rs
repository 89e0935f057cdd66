//! Which documents may run, and how a client may send one by its hash: trusted documents (a
//! manifest of allowed operations in Apollo's persisted query list format) and automatic
//! persisted queries (Apollo's APQ protocol: the hash alone once the document is known).
//!
//! Owns: the manifest and its two modes, and the bounded store of APQ documents.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub use crate::cache::responses::Admitted;

use sha2::Digest;

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
        Self::parse(path, &text, mode)
    }

    /// A manifest already read from `path` (which the messages name).
    pub fn parse(path: &Path, text: &str, mode: TrustMode) -> Result<TrustedDocuments, String> {
        let manifest: Manifest = serde_json::from_str(text)
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

/// Apollo's automatic persisted queries: query texts by their SHA-256, bounded by their size.
/// Resolved before execution (not as an async-graphql extension: any extension moves every
/// field onto the library's slower resolve path), so a hash-only request becomes its text and
/// then takes the same parsed-document and validation caches as any other.
#[derive(Clone)]
pub struct ApqStore(Option<moka::sync::Cache<Arc<str>, Arc<str>>>);

impl std::fmt::Debug for ApqStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApqStore").field("entries", &self.0.as_ref().map(|c| c.entry_count())).finish()
    }
}

/// A stored text's bookkeeping beside its own bytes and its hash's (moka's entry, two `Arc`s).
const APQ_ENTRY_OVERHEAD: usize = 128;

#[derive(serde::Deserialize)]
struct PersistedQuery {
    version: i64,
    #[serde(rename = "sha256Hash")]
    sha256_hash: String,
}

impl ApqStore {
    /// `max_bytes`: the texts and hashes kept; `None`: APQ is off (a hash-only request is
    /// told `PERSISTED_QUERY_NOT_SUPPORTED`, as Apollo Router does, and clients send the text).
    pub fn new(max_bytes: Option<u64>) -> Self {
        Self(max_bytes.map(|max_bytes| {
            moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|hash: &Arc<str>, text: &Arc<str>| {
                    u32::try_from(hash.len() + text.len() + APQ_ENTRY_OVERHEAD).unwrap_or(u32::MAX)
                })
                .build()
        }))
    }

    /// Gives a hash-only request its text, or registers a text sent with its hash; a request
    /// without the extension is left as it is.
    pub fn resolve(&self, request: &mut async_graphql::Request) -> Result<(), async_graphql::ServerError> {
        let Some(extension) = request.extensions.remove("persistedQuery") else { return Ok(()) };
        let Some(store) = &self.0 else {
            if request.query.trim().is_empty() {
                return Err(coded("PersistedQueryNotSupported", "PERSISTED_QUERY_NOT_SUPPORTED"));
            }
            return Ok(());
        };
        let persisted: PersistedQuery = async_graphql::from_value(extension).map_err(|_| {
            coded(
                "the persistedQuery extension is {\"version\": 1, \"sha256Hash\": \"<64 hex digits>\"}",
                "PERSISTED_QUERY_INVALID",
            )
        })?;
        if persisted.version != 1 {
            return Err(coded(
                "only version 1 of the persistedQuery extension is supported",
                "PERSISTED_QUERY_INVALID",
            ));
        }
        if request.query.trim().is_empty() {
            return match store.get(persisted.sha256_hash.as_str()) {
                Some(text) => {
                    request.query = text.to_string();
                    Ok(())
                }
                // Apollo clients match this exact message (and code), then send the text.
                None => Err(coded("PersistedQueryNotFound", "PERSISTED_QUERY_NOT_FOUND")),
            };
        }
        let hash = hex::encode(sha2::Sha256::digest(request.query.as_bytes()));
        if !hash.eq_ignore_ascii_case(&persisted.sha256_hash) {
            return Err(coded("provided sha does not match query", "PERSISTED_QUERY_HASH_MISMATCH"));
        }
        // Only documents that parse are kept: the store holds what can run.
        if !store.contains_key(hash.as_str()) && async_graphql::parser::parse_query(&request.query).is_ok() {
            store.insert(Arc::from(hash), Arc::from(request.query.as_str()));
        }
        Ok(())
    }
}

fn coded(message: &str, code: &'static str) -> async_graphql::ServerError {
    use async_graphql::ErrorExtensions;
    async_graphql::Error::new(message)
        .extend_with(|_, extensions| extensions.set("code", code))
        .into_server_error(async_graphql::Pos::default())
}

/// The one gate every operation passes before it runs (HTTP and streams alike): the trusted
/// documents, then APQ.
#[derive(Clone, Debug)]
pub struct Admission {
    pub trusted: Option<Arc<TrustedDocuments>>,
    pub apq: ApqStore,
}

impl Admission {
    /// Lets `request` run, or says why not: the router's own operations (query plans) are
    /// never in a client manifest and pass; a listed document passes; an unlisted one is
    /// refused in enforce mode and logged in log mode. Then a hash-only APQ request gets its
    /// text.
    pub fn admit(
        &self,
        request: &mut async_graphql::Request,
        via_router: bool,
    ) -> Result<Admitted, async_graphql::ServerError> {
        let mut admitted = Admitted::Listed;
        if let Some(trusted) = &self.trusted {
            if via_router {
                admitted = Admitted::ByRouter;
            } else if trusted.check(request) == Verdict::NotListed {
                match trusted.mode() {
                    TrustMode::Log => {
                        // The document's own name when the request gives none.
                        let operation = super::operation::operation_or_anonymous(request);
                        log_unlisted(&operation);
                        admitted = Admitted::Logged;
                    }
                    TrustMode::Enforce => return Err(coded(
                        "this gateway runs only its trusted documents, and this operation is not one of them",
                        "PERSISTED_QUERY_NOT_IN_LIST",
                    )),
                }
            }
        }
        self.apq.resolve(request)?;
        Ok(admitted)
    }

    /// Whether an answer stored for a request `admitted` so may be replayed to this client
    /// without admitting it again: one check of a stored verdict, on the replay path.
    /// `operation`: the stored answer's label, for the log-mode line.
    pub fn may_replay(&self, admitted: Admitted, via_router: bool, operation: &str) -> bool {
        match admitted {
            Admitted::Listed => true,
            Admitted::Logged => {
                log_unlisted(operation);
                true
            }
            Admitted::ByRouter => via_router,
        }
    }
}

fn log_unlisted(operation: &str) {
    tracing::warn!(%operation, "an operation not in the trusted documents ran (log mode)");
}
