//! The GraphQL schema: thin resolvers over [`SessionService`]. Each answer becomes a member of
//! the `CheckoutSessionResult` union; the federation entity resolver goes through the same
//! service, so a router's fetch of a cached session costs no upstream call.
//!
//! Owns: the schema (built for a list of providers), the resolvers, the per-request scope
//! (reuse, entity error placement, the session budget) and the parsed-document cache. How a
//! request gets to run is [`pipeline`]'s.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_graphql::{
    Context, EmptyMutation, ErrorExtensions, Object, PathSegment, SDLExportOptions, Schema, SchemaBuilder,
    SharedDocument, Subscription as SubscriptionRoot, Value, ID,
};
use futures::{Stream, StreamExt};

use crate::access::quota::{ClientQuotas, Payer};
use crate::access::{Client, Rights};
use crate::cache::Lookup;
use crate::domain::{lock, FetchError};
use crate::graphql::answers::Answers;
use crate::graphql::fanout::{SharedRun, Subscribed};
use crate::providers::schema::{with_providers, ProviderName};
use crate::providers::{Account, ProviderKind, Registry};
use crate::sessions::{permitted, SessionRef, SessionService};

pub mod answers;
pub mod documents;
pub mod fanout;
pub mod limits;
pub mod operation;
pub mod pipeline;
mod timestamp;
mod types;

pub use types::{CheckoutError, CheckoutSessionRef, CheckoutSessionResult, CheckoutSessionView};

pub type GatewaySchema = Schema<Query, EmptyMutation, Subscription>;

/// What the resolvers need, shared by every request.
#[derive(Clone, Debug)]
pub struct Gateway {
    pub service: Arc<SessionService>,
    /// Most sessions one request may ask for through `checkoutSession` and
    /// `checkoutSessions`, aliases included.
    pub batch_max: usize,
    /// Most representations one request's `_entities` may resolve (a router's batch).
    pub entities_max: usize,
    /// Each client's budget of lookups that reach a provider.
    pub quotas: Arc<ClientQuotas>,
    /// Answers by type, counted as each leaves a resolver.
    pub answers: Arc<Answers>,
    /// `checkout_gateway_live_subscriptions`, counted by the subscriptions that run on their
    /// own (a shared one's subscribers are counted by `fanout`).
    pub live_subscriptions: prometheus::IntGauge,
}

/// The schema for `providers`: they are the values of `Provider` and the members of
/// `ProviderDetails`.
fn builder(
    providers: &[&'static ProviderKind],
    limits: QueryLimits,
) -> SchemaBuilder<Query, EmptyMutation, Subscription> {
    with_providers(providers.iter().map(|kind| kind.schema()).collect(), || {
        Schema::build(Query, EmptyMutation, Subscription)
            .enable_federation()
            // Without it `_service { sdl }` leaves out the `Subscription` type, and a router
            // composing this subgraph would not know it can subscribe.
            .enable_subscription_in_federation()
            // The interface is reached only through its implementers; register it so it is
            // in the schema for clients to spread on.
            .register_output_type::<CheckoutError>()
            .limit_depth(limits.max_depth)
            .limit_complexity(limits.max_complexity)
    })
}

/// How large a document may be. The defaults are generous for any real query (ours nest four
/// levels; introspection about a dozen) and tight enough to refuse pathological documents
/// before they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryLimits {
    pub max_depth: usize,
    pub max_complexity: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        Self { max_depth: 32, max_complexity: 5_000 }
    }
}

/// `introspection`: answer `__schema` and `__type` (federation's `_service` is answered
/// either way: routers compose with it). `prevalidated`: validate nothing, for documents that passed
/// strict validation once (see [`Prepared`]); depth and complexity are properties of the
/// document, so the limits that strict pass checked hold for every later run.
pub fn schema(
    gateway: Gateway,
    providers: &[&'static ProviderKind],
    introspection: bool,
    limits: QueryLimits,
    prevalidated: bool,
) -> GatewaySchema {
    let mut builder = builder(providers, limits).data(gateway);
    if prevalidated {
        // `Prevalidated` is our patch to async-graphql (vendor/async-graphql): its `Fast`
        // mode still walks the document for depth, complexity and cache control, a sixth of
        // an executed request.
        builder = builder.validation_mode(async_graphql::ValidationMode::Prevalidated);
    }
    if introspection {
        builder.finish()
    } else {
        builder.disable_introspection().finish()
    }
}

/// The SDL a federation composition is given; `schema.graphql` holds exactly this for the
/// built-in providers.
pub fn sdl(providers: &Registry) -> String {
    builder(providers, QueryLimits::default()).finish().sdl_with_options(SDLExportOptions::new().federation())
}

/// What one request's resolvers share: how long the response may be reused (for
/// `Cache-Control` and replay), which copies of a repeated entity already have their error,
/// and how many sessions the request has asked for. Put one in each request's data.
#[derive(Clone, Debug, Default)]
pub struct RequestScope(Arc<ScopeState>);

#[derive(Debug, Default)]
struct ScopeState {
    reuse: Mutex<Reuse>,
    /// Where each representation key stands in `_entities(representations:)` and has no
    /// error yet: read once per request on the first failure (not once per failure: that made
    /// `_entities` quadratic). When a router repeats a representation, the n-th failure takes
    /// the n-th copy, so every null gets its own error.
    entity_positions: Mutex<Option<HashMap<OwnedEntityKey, VecDeque<usize>>>>,
    /// Representations `_entities` has resolved so far (bounded by `entities_max`).
    entities: AtomicUsize,
    /// Sessions `checkoutSession` and `checkoutSessions` have asked for, so that aliases
    /// cannot multiply one request past the batch limit.
    lookups: AtomicUsize,
}

/// A representation's key fields (see `EntityKey`), owned.
type OwnedEntityKey = (Option<ProviderName>, Option<String>, String);

#[derive(Debug, Default)]
struct Reuse {
    /// The earliest moment a session seen so far stops being reusable; `None` before any.
    earliest: Option<Instant>,
    /// Set once anything that must not be reused (an error, an uncacheable answer) is seen.
    no_store: bool,
}

impl RequestScope {
    fn observe(&self, lookup: &Lookup) {
        let mut reuse = lock(&self.0.reuse);
        match lookup.reusable_until {
            Some(until) if lookup.answer.is_ok() => {
                reuse.earliest = Some(reuse.earliest.map_or(until, |e| e.min(until)));
            }
            _ => reuse.no_store = true,
        }
    }

    /// Until when the whole response may be reused: the earliest moment any session in it
    /// stops being reusable; `None` for a response with any error, any answer that must not
    /// be reused (a stale one included), or no session at all.
    pub fn reusable_until(&self, response_has_errors: bool) -> Option<Instant> {
        let reuse = lock(&self.0.reuse);
        reuse.earliest.filter(|_| !reuse.no_store && !response_has_errors)
    }

    /// The index in `representations` of the failing entity `key`: its n-th copy for the
    /// n-th failure with that key.
    fn entity_index(&self, ctx: &Context<'_>, key: &EntityKey<'_>) -> Option<usize> {
        let mut positions = lock(&self.0.entity_positions);
        let positions = positions.get_or_insert_with(|| entity_positions(ctx));
        positions.get_mut(&key.owned()).and_then(VecDeque::pop_front)
    }

    /// Counts one more `_entities` representation; false once past `max`.
    fn ask_entity(&self, max: usize) -> bool {
        self.0.entities.fetch_add(1, Ordering::Relaxed) < max
    }

    /// Sessions this request has read (lookups and entities), for the access log.
    pub fn sessions(&self) -> usize {
        self.0.lookups.load(Ordering::Relaxed) + self.0.entities.load(Ordering::Relaxed)
    }

    /// Adds `lookups` to the sessions asked for; returns the total so far.
    fn ask(&self, lookups: usize) -> usize {
        self.0.lookups.fetch_add(lookups, Ordering::Relaxed) + lookups
    }
}

/// Parsed documents by query text: dashboards and routers send the same few queries over and
/// over, and parsing is the largest single cost of a cached answer. Long queries (batches with
/// their ids written inline, different every time) are not kept: they would only churn it.
#[derive(Debug)]
pub struct DocumentCache(moka::sync::Cache<String, Arc<CachedDocument>>);

/// A parsed document, and whether it has passed strict validation once: then it may run on
/// the schema that validates nothing (see [`schema`]).
#[derive(Debug)]
struct CachedDocument {
    /// Shared with every request that runs it (`set_shared_query`, our async-graphql patch):
    /// copying it for each request cost a tenth of an executed request.
    document: SharedDocument,
    validated: AtomicBool,
}

/// What [`DocumentCache::prepare`] found out about a request's document.
#[derive(Clone, Debug, Default)]
pub struct Prepared(Option<Arc<CachedDocument>>);

impl Prepared {
    /// The document passed strict validation before: the prevalidated schema may run it.
    pub fn validated(&self) -> bool {
        self.0.as_ref().is_some_and(|cached| cached.validated.load(Ordering::Relaxed))
    }

    /// Remembers that the document passed strict validation.
    pub fn mark_validated(&self) {
        if let Some(cached) = &self.0 {
            cached.validated.store(true, Ordering::Relaxed);
        }
    }
}

/// Queries longer than this are parsed every time.
const MAX_CACHED_QUERY_BYTES: usize = 2048;
/// A parsed document takes roughly this many times its text in memory (measured on our own
/// queries); the cache's bound is on that estimate.
const DOCUMENT_BYTES_PER_QUERY_BYTE: usize = 16;

impl DocumentCache {
    /// `max_bytes`: the estimated memory of the parsed documents kept.
    pub fn new(max_bytes: u64) -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|query: &String, _| {
                    u32::try_from(query.len() * DOCUMENT_BYTES_PER_QUERY_BYTE).unwrap_or(u32::MAX)
                })
                .build(),
        )
    }

    /// Gives `request` its parsed document: from the cache, or parsed now and kept. A query
    /// that does not parse is left for execution to report.
    pub fn prepare(&self, request: &mut async_graphql::Request) -> Prepared {
        if request.query.len() > MAX_CACHED_QUERY_BYTES {
            return Prepared(None);
        }
        if let Some(cached) = self.0.get(request.query.as_str()) {
            request.set_shared_query(cached.document.clone());
            return Prepared(Some(cached));
        }
        match async_graphql::parser::parse_query(&request.query) {
            Ok(document) => {
                let document = SharedDocument::new(document);
                request.set_shared_query(document.clone());
                let cached = Arc::new(CachedDocument { document, validated: AtomicBool::new(false) });
                self.0.insert(request.query.clone(), cached.clone());
                Prepared(Some(cached))
            }
            Err(_) => Prepared(None),
        }
    }
}

pub(crate) fn gateway<'a>(ctx: &Context<'a>) -> &'a Gateway {
    // Registered in `schema()`; a schema without it is a programming error caught by tests.
    ctx.data_unchecked::<Gateway>()
}

/// What the request's client may read. A request without a client (none was put in its
/// data) may read nothing: every path in must say who is asking.
fn rights<'a>(ctx: &Context<'a>) -> &'a Rights {
    static NOTHING: std::sync::OnceLock<Rights> = std::sync::OnceLock::new();
    match ctx.data_opt::<Client>() {
        Some(client) => &client.rights,
        None => NOTHING.get_or_init(Rights::none),
    }
}

/// What the request's client's misses are charged to: `None` for a client not metered (see
/// [`Client::metered`]) or when the limit is off.
fn payer(ctx: &Context<'_>) -> Option<Payer> {
    let client = ctx.data_opt::<Client>().filter(|client| client.metered)?;
    gateway(ctx).quotas.payer(&client.name)
}

/// The account that answers for `provider` (the named one, or its default), if the client
/// may read it.
fn readable<'a>(
    ctx: &Context<'a>,
    provider: &ProviderName,
    account: Option<&str>,
) -> Result<&'a Arc<Account>, FetchError> {
    permitted(rights(ctx), gateway(ctx).service.account(provider.as_str(), account))
}

/// Counts `lookups` against the request's limit, or refuses with `BATCH_TOO_LARGE`.
fn spend(ctx: &Context<'_>, lookups: usize) -> async_graphql::Result<()> {
    let max = gateway(ctx).batch_max;
    let asked = ctx.data_opt::<RequestScope>().map_or(lookups, |scope| scope.ask(lookups));
    if asked <= max {
        return Ok(());
    }
    Err(too_large(
        format!(
            "a request may ask for at most {max} checkout sessions (checkoutSession and checkoutSessions \
             together); this one asks for more"
        ),
        max,
    ))
}

/// A request asked for more than `max` of something: `BATCH_TOO_LARGE`, with the bound.
fn too_large(message: String, max: usize) -> async_graphql::Error {
    async_graphql::Error::new(message).extend_with(|_, ext| {
        ext.set("code", "BATCH_TOO_LARGE");
        ext.set("max", max);
    })
}

/// Each lookup's answer: counted by type, and its reuse noted in the request's scope. The
/// caller's `gateway` is passed in: looking it up again in `ctx` would cost each answer a
/// type-map search or three.
fn observe(ctx: &Context<'_>, gateway: &Gateway, lookup: &Lookup) {
    gateway.answers.count(&lookup.answer);
    if let Some(scope) = ctx.data_opt::<RequestScope>() {
        scope.observe(lookup);
    }
}

#[derive(Debug)]
pub struct Query;

#[Object]
impl Query {
    /// One checkout session, or the typed reason there is none. `account` names a configured
    /// account of the provider; without it the provider's default account answers.
    async fn checkout_session(
        &self,
        ctx: &Context<'_>,
        provider: ProviderName,
        id: ID,
        account: Option<String>,
    ) -> async_graphql::Result<CheckoutSessionResult> {
        spend(ctx, 1)?;
        let gateway = gateway(ctx);
        let lookup = gateway
            .service
            .lookup(readable(ctx, &provider, account.as_deref()), &id, payer(ctx).as_ref())
            .await;
        observe(ctx, gateway, &lookup);
        Ok(CheckoutSessionResult::from_lookup(&provider, lookup))
    }

    /// Many sessions at once, answered in input order. A ref repeated in one call is fetched
    /// once. One request may ask for at most 100 sessions (GATEWAY_BATCH_MAX) through
    /// `checkoutSession` and `checkoutSessions` together, aliases included; more is refused
    /// with `BATCH_TOO_LARGE` before this field's upstream calls.
    async fn checkout_sessions(
        &self,
        ctx: &Context<'_>,
        refs: Vec<CheckoutSessionRef>,
    ) -> async_graphql::Result<Vec<CheckoutSessionResult>> {
        spend(ctx, refs.len())?;
        let gateway = gateway(ctx);
        let keys: Vec<SessionRef<'_>> =
            refs.iter().map(|r| (r.provider.as_str(), r.account.as_deref(), r.id.as_str())).collect();
        let lookups = gateway.service.get_many(&keys, rights(ctx), payer(ctx).as_ref()).await;
        Ok(refs
            .iter()
            .zip(lookups)
            .map(|(r, lookup)| {
                observe(ctx, gateway, &lookup);
                CheckoutSessionResult::from_lookup(&r.provider, lookup)
            })
            .collect())
    }

    /// Federation entity resolver for `CheckoutSession @key(fields: "provider id")`: the
    /// provider's default account answers.
    ///
    /// A session that cannot be resolved is `null` with an error at `_entities.<index>` whose
    /// `extensions.code` says why; the other representations are unaffected. (Returning an
    /// `Err` would fail the whole `_entities` list in async-graphql.)
    #[graphql(entity)]
    async fn find_checkout_session(
        &self,
        ctx: &Context<'_>,
        provider: ProviderName,
        id: ID,
    ) -> Option<CheckoutSessionView> {
        entity(ctx, EntityKey { provider: Some(&provider), account: None, id: &id }).await
    }

    /// Federation entity resolver for `CheckoutSession @key(fields: "account id")`: the named
    /// account answers (account names are unique across providers).
    ///
    /// Not `provider account id`: a query planner that can satisfy two keys takes the one with
    /// fewer fields (Apollo's do), so a subgraph holding `provider`, `account` and `id` would
    /// be routed through `provider id` and silently reach the default account. A subgraph that
    /// declares only `account id` can be routed one way only.
    #[graphql(entity)]
    async fn find_checkout_session_by_account(
        &self,
        ctx: &Context<'_>,
        account: String,
        id: ID,
    ) -> Option<CheckoutSessionView> {
        entity(ctx, EntityKey { provider: None, account: Some(&account), id: &id }).await
    }
}

/// How many subscriptions one connection may still start; put one in each WebSocket
/// connection's data and each SSE stream's request.
#[derive(Clone, Debug)]
pub struct SubscriptionBudget(Arc<tokio::sync::Semaphore>, usize);

impl SubscriptionBudget {
    pub fn new(max: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(max)), max)
    }

    /// One permit, if any is left.
    pub(crate) fn take_one(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }

    fn take(&self) -> async_graphql::Result<Option<tokio::sync::OwnedSemaphorePermit>> {
        match self.take_one() {
            Some(permit) => Ok(Some(permit)),
            None => Err(async_graphql::Error::new(format!(
                "a WebSocket connection, an SSE stream or a callback subscription may run at most {} \
                 subscriptions at once (GATEWAY_SUBSCRIPTIONS_PER_CONNECTION)",
                self.1
            ))
            .extend_with(|_, ext| {
                ext.set("code", "TOO_MANY_SUBSCRIPTIONS");
                ext.set("max", self.1);
            })),
        }
    }
}

#[derive(Debug)]
pub struct Subscription;

#[SubscriptionRoot]
impl Subscription {
    /// One checkout session as it changes: its current answer first, then a new one each time
    /// the session changes (a provider's webhook, or the gateway's own polling where no
    /// webhook is configured); a refetch that finds nothing new sends nothing. `account` as in
    /// `checkoutSession`.
    async fn checkout_session_updated(
        &self,
        ctx: &Context<'_>,
        provider: ProviderName,
        id: ID,
        account: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = CheckoutSessionResult>> {
        let permit = match ctx.data_opt::<SubscriptionBudget>() {
            Some(budget) => budget.take()?,
            None => None,
        };
        let gateway = gateway(ctx);
        let updates = gateway.service.watch(readable(ctx, &provider, account.as_deref()), &id, payer(ctx));
        let answers = gateway.answers.clone();
        // A shared execution's answers are counted per subscriber sent them, and so are its
        // subscribers (`fanout`).
        let shared = ctx.data_opt::<Arc<SharedRun>>().cloned();
        let subscribed = shared.is_none().then(|| Subscribed::new(&gateway.live_subscriptions));
        Ok(updates.map(move |lookup| {
            // Held as long as the subscription runs.
            let _held = (&permit, &subscribed);
            let counter = answers.counter(&lookup.answer);
            match &shared {
                Some(shared) => shared.answered(counter, lookup.answer.is_ok() && !lookup.stale),
                None => counter.inc(),
            }
            CheckoutSessionResult::from_lookup(&provider, lookup)
        }))
    }
}

/// A representation's key fields: `provider id` or `account id`.
struct EntityKey<'a> {
    provider: Option<&'a ProviderName>,
    account: Option<&'a str>,
    id: &'a str,
}

async fn entity(ctx: &Context<'_>, key: EntityKey<'_>) -> Option<CheckoutSessionView> {
    let gateway = gateway(ctx);
    let scope = ctx.data_opt::<RequestScope>();
    if !scope.is_none_or(|scope| scope.ask_entity(gateway.entities_max)) {
        let max = gateway.entities_max;
        let message = format!(
            "one request may resolve at most {max} entities (GATEWAY_ENTITIES_MAX); this one asks for more"
        );
        place_entity_error(ctx, &key, too_large(message, max));
        return None;
    }
    let service = &gateway.service;
    let account = match key.provider {
        Some(provider) => service.account(provider.as_str(), key.account),
        None => service.account_named(key.account.unwrap_or_default()),
    };
    let account = permitted(rights(ctx), account);
    // The provider of the account that answers; none for a representation naming no account
    // or provider of ours (a name the client made up is not echoed back as a provider).
    let provider = account.as_ref().ok().map(|account| ProviderName::new(account.kind().name));
    let lookup = service.lookup(account, key.id, payer(ctx).as_ref()).await;
    observe(ctx, gateway, &lookup);
    match lookup.answer {
        Ok(session) => Some(CheckoutSessionView(session, lookup.stale)),
        Err(error) => {
            place_entity_error(ctx, &key, types::to_graphql_error(provider.as_ref(), &error));
            None
        }
    }
}

/// Adds `error` at `_entities.<index>` of the representation `key`. The entity resolver is not
/// told its index, so it is looked up (only on the error path); a repeated representation
/// takes its copies in turn.
fn place_entity_error(ctx: &Context<'_>, key: &EntityKey<'_>, error: async_graphql::Error) {
    let mut server_error = error.into_server_error(ctx.item.pos);
    let field = PathSegment::Field(ctx.item.node.response_key().node.to_string());
    let index = ctx.data_opt::<RequestScope>().and_then(|scope| scope.entity_index(ctx, key));
    server_error.path = match index {
        Some(index) => vec![field, PathSegment::Index(index)],
        None => vec![field],
    };
    ctx.add_error(server_error);
}

impl EntityKey<'_> {
    fn owned(&self) -> OwnedEntityKey {
        (self.provider.cloned(), self.account.map(str::to_owned), self.id.to_owned())
    }
}

/// Every representation's key and its indices, in one pass. A representation's key is the
/// one async-graphql resolves it by: `provider id` when it has both, else `account id`.
fn entity_positions(ctx: &Context<'_>) -> HashMap<OwnedEntityKey, VecDeque<usize>> {
    let mut positions: HashMap<OwnedEntityKey, VecDeque<usize>> = HashMap::new();
    let Ok((_, representations)) = ctx.param_value::<Vec<async_graphql::Any>>("representations", None) else {
        return positions;
    };
    let text = |value: Option<&Value>| match value {
        Some(Value::String(text)) => Some(text.clone()),
        // Variables carry the enum as a string, an inline literal as an enum value.
        Some(Value::Enum(name)) => Some(name.to_string()),
        _ => None,
    };
    for (index, representation) in representations.iter().enumerate() {
        let Value::Object(fields) = &representation.0 else { continue };
        let Some(id) = text(fields.get("id")) else { continue };
        let key = match (text(fields.get("provider")), text(fields.get("account"))) {
            (Some(provider), _) => (Some(ProviderName::new(&provider)), None, id),
            (None, Some(account)) => (None, Some(account), id),
            (None, None) => continue,
        };
        positions.entry(key).or_default().push_back(index);
    }
    positions
}
