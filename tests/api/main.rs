//! End-to-end tests through real HTTP: the gateway on port 0, providers as wiremock servers
//! (or the built-in sandbox). One test binary, so the suite links once.

// A failed unwrap in a test is a failed test with a backtrace: what we want.
#![allow(clippy::unwrap_used)]

mod support;

mod access;
mod accounts;
mod cache;
mod callback;
mod cli;
mod demo;
mod dhmad;
mod dodo;
mod edge;
mod federation;
mod graphql;
mod layers;
mod limits;
mod live;
mod monitoring;
mod ops;
mod process;
mod readme;
mod refusals;
mod replicas;
mod resilience;
mod routers;
mod third_provider;
