//! The engine: the job model and its state machine, the Postgres store, the
//! orchestrator loops (dispatch, report commits, sweeps) and the HTTP API. The
//! `slipway` binary (crate `slipway/`) wires them into processes.

pub mod api;
pub mod auth;
pub mod error;
pub mod job;
pub mod orchestrator;
pub mod registry;
pub mod secrets;
pub mod store;
pub mod web;
