//! The wire types and gRPC services between orchestrators and workers.
//!
//! Generated from `proto/slipway.proto` at build time. These types stop at the gRPC
//! boundary: [`convert`] turns the shared ones into the steps' own types, and the
//! engine and the worker keep their own types past that point.

pub mod convert;
mod secrets;
pub mod tls;

/// The largest gRPC message either side sends or accepts, set explicitly on every
/// client and server (tonic's default decoding limit, written down). Senders keep
/// under it by construction: a batch of log lines is cut at a quarter of it, and
/// no line is longer than `slipway_steps::logs::MAX_LINE_BYTES_LIMIT`.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// `slipway.v1`: the `JobService` every worker serves and the `ReportService`
/// every orchestrator serves.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("slipway.v1");
}
