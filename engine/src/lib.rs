//! The engine: the job model and its state machine, the Postgres store, the
//! orchestrator loops, the HTTP API, and the processes and CLI of the `slipway`
//! binary.

pub mod api;
pub mod cli;
pub mod config;
pub mod job;
pub mod local_postgres;
pub mod orchestrator;
pub mod process;
pub mod registry;
pub mod store;
