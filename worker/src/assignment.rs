//! One job as this worker was given it by `StartJob`: the lease it runs under, what
//! to build and run, what earlier attempts left, where to report, and the tokens that
//! stop it.

use std::sync::{Arc, Mutex};

use slipway_proto::v1;
use slipway_steps::Step;
use tokio_util::sync::CancellationToken;

/// A job this worker runs, as it was assigned.
pub(crate) struct JobRun {
    pub lease: v1::Lease,
    pub spec: v1::JobSpec,
    pub outputs: v1::StepOutputs,
    pub first_step: Step,
    pub report_to: String,
    pub instance_id: String,
    /// The run starts afresh: the last attempt's run ended and was recorded.
    pub fresh_run: bool,
    /// The orchestrator's dispatch span, parent of this run's spans.
    pub traceparent: String,
    pub current_step: Arc<Mutex<Step>>,
    /// Cancelled when the job is to end `cancelled`.
    pub cancel: CancellationToken,
    /// Cancelled when the worker stops before the job ends: the job is handed back.
    pub hand_back: CancellationToken,
}

/// A wire string that may be empty, as an option.
pub(crate) fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}
