//! What every step of one job's run on this worker shares, passed as one value.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::assignment::{Assignment, JobRun};
use crate::reporter::Reporter;
use crate::state::WorkerState;

pub(crate) struct StepContext<'a> {
    pub state: &'a WorkerState,
    /// The job's run, with the tokens that stop it.
    pub run: &'a JobRun,
    /// What the job is (`&run.assignment`).
    pub job: &'a Assignment,
    /// The job's folder for this attempt; the clone is checked out under it.
    pub folder: &'a Path,
    /// Stops the running step: a cancel, or a hand-back.
    pub stop: &'a CancellationToken,
    pub reporter: &'a Reporter,
}
