//! checkout-gateway: one GraphQL view of checkout sessions held by several payment providers.
//!
//! # Layout
//!
//! A request flows top to bottom; each module imports only modules below it (a test fails on
//! an import circle):
//!
//! - [`server`]: axum routes (`/graphql`, `/ws`, `/livez`, `/readyz`, `/metrics`), wiring,
//!   `--demo`, graceful shutdown; [`streams`]: subscriptions over WebSocket and Server-Sent
//!   Events.
//! - [`webhooks`]: `POST /webhooks/{provider}`: verified, de-duplicated, routed to an account,
//!   acted on after the answer.
//! - [`graphiql`]: the GraphiQL page and its embedded assets; [`refusal`]: the one shape of a
//!   refused HTTP request.
//! - [`response_cache`]: whole answers replayed while everything in them may be reused.
//! - [`access`]: who may ask (none, API keys, JWT; the router's secret) and which accounts.
//! - [`documents`]: which documents may run (trusted documents) and APQ's store.
//! - [`graphql`]: the schema and thin resolvers; answers become members of a result union,
//!   errors are data with a stable code.
//! - [`service`]: picks the account, answers batches in order with each session asked once.
//! - [`config`]: flags, environment, file and defaults into one checked [`config::Config`],
//!   accounts included.
//! - [`live`]: who watches which session; changes published to its watchers; the index from
//!   the payments and escrows webhooks name to sessions.
//! - [`shared`]: the Redis tier replicas share (answers, locks, pub/sub, quotas), optional.
//! - [`cache`]: moka in front of every account; lifetime by what the answer says; concurrent
//!   misses share one upstream call.
//! - [`quota`]: each client's budget of lookups that reach a provider (charged by the cache
//!   on a miss).
//! - [`providers`]: what a provider is ([`providers::ProviderKind`]), the one list of them
//!   ([`providers::Registry`]), accounts, and one folder per provider (client and wire types,
//!   details type, sandbox); `upstream` holds the shared HTTP call.
//! - [`view`]: the schema types whose members come from the providers (`Provider`,
//!   `ProviderDetails`).
//! - [`sandbox`]: serving a provider's built-in stand-in, for `--demo` and benchmarks.
//! - [`metrics`], [`telemetry`], [`net`]: Prometheus metrics; logs, OTLP traces and request
//!   ids; the outbound HTTP client.
//! - [`domain`]: the provider-independent session and error types: no provider, no GraphQL.

pub mod access;
pub mod app;
pub mod cache;
pub mod config;
pub mod demo;
pub mod domain;
pub mod graphql;
pub mod http;
pub mod net;
pub mod providers;
pub mod sessions;
pub mod telemetry;
