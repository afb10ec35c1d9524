//! The wire types and gRPC services between orchestrators and workers.
//!
//! Generated from `proto/slipway.proto` at build time. These types stop at the gRPC
//! boundary: [`convert`] turns the shared ones into the steps' own types, and the
//! engine and the worker keep their own types past that point.

pub mod convert;

/// `slipway.v1`: the `JobService` every worker serves and the `ReportService`
/// every orchestrator serves.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("slipway.v1");
}
