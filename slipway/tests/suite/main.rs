//! The engine's integration tests, in one binary (one link of the engine, not one
//! per file). Each module is one concern; `common` holds the real parts they share.
//! Run one module with `scripts/test -E 'test(/^store::/)'`.

mod api;
#[cfg(feature = "aws")]
mod aws_clients;
mod browser;
mod build_cache;
mod cli;
mod common;
#[cfg(feature = "aws")]
mod ecs;
mod engine;
mod faults;
mod first_job;
mod grpc_auth;
mod hostile;
mod iam;
mod observability;
mod pipeline;
mod secrets;
mod soak;
mod store;
mod traces;
