//! The engine: the job model and its state machine, the Postgres store, the
//! orchestrator loops, the HTTP API and the processes of the `slipway` binary.

pub mod job;
pub mod store;
