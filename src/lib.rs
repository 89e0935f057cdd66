//! checkout-gateway: one GraphQL view of checkout sessions held by several payment providers.
//!
//! # Layout
//!
//! A request flows top to bottom; each module imports only modules below it, or of its own
//! folder (tests/api/layers.rs fails on any other import, `super::` paths included):
//!
//! - [`app`]: builds every part from the configuration, runs, drains (`main` starts it).
//! - [`config`]: flags, environment, file and defaults into one checked [`config::Config`].
//! - [`demo`]: `--demo`, the sandbox providers wired in.
//! - [`http`]: routes, the edge's accept loop, handlers, subscriptions over WebSocket and SSE,
//!   webhooks in, refusals, GraphiQL, what `/readyz` reports.
//! - [`graphql`]: the one pipeline every operation passes (HTTP and streams alike), the schema
//!   and thin resolvers; which documents may run (trusted documents, APQ), shape limits.
//! - [`sessions`]: picks the account, answers batches in order, watches sessions (the live
//!   hub), acts on webhooks.
//! - [`cache`]: the session cache and its lifetimes; the "session changed" event its
//!   listeners hear; the cross-replica protocol over Redis; replayed responses.
//! - [`access`]: who may ask (none, API keys, JWT) and which accounts; each client's budget.
//! - [`providers`]: what a provider is, the registry ([`providers::Registry`]), accounts, the
//!   guarded upstream call, webhook verification, one folder per provider.
//! - [`telemetry`]: logs, traces, request ids, Prometheus metrics.
//! - [`net`], [`domain`]: the outbound HTTP client; the provider-independent session and error
//!   types. Leaves: they import neither each other nor anything above.

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
