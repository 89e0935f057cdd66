//! checkout-gateway: one GraphQL view of checkout sessions held by several payment providers.
//!
//! # Layout
//!
//! A request flows top to bottom:
//!
//! - [`server`]: axum routes (`/graphql`, `/livez`, `/readyz`, `/metrics`), startup and graceful
//!   shutdown.
//! - [`response_cache`]: whole answers replayed while everything in them may be reused.
//! - [`graphql`]: the schema and thin resolvers; answers become members of a result union,
//!   errors are data with a stable code.
//! - [`service`]: picks the provider, answers batches in order with each session asked once.
//! - [`cache`]: moka in front of each provider; lifetime by what the answer says; concurrent
//!   misses share one upstream call.
//! - [`providers`]: one module per provider behind [`providers::SessionProvider`]; wire types
//!   and mapping stay inside; `upstream` holds the shared HTTP call.
//! - [`domain`]: the provider-independent session and error types.
//! - [`config`]: flags, environment, file and defaults into one checked [`config::Config`].
//! - [`sandbox`]: built-in stand-ins for the providers, for `--demo` and benchmarks.
//! - [`metrics`], [`telemetry`]: Prometheus metrics; logs, OTLP traces and request ids.

pub mod cache;
pub mod config;
pub mod domain;
pub mod graphql;
pub mod metrics;
pub mod net;
pub mod providers;
pub mod response_cache;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod view;
