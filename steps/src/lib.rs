//! What each step of a job does, on the machine that runs it.
//!
//! The worker calls these in order — [`clone`], then on the Docker engine
//! [`docker::build`], [`docker::push`] and a run through a [`runtime`] — and
//! owns everything around them (reports, leases, cancellation tokens). Each step
//! returns its outputs or a [`StepError`] that says whether trying again could help.
//! Nothing here knows about Postgres or gRPC.

pub mod aws;
pub mod clone;
pub mod docker;
mod error;
pub mod image_ref;
pub mod local_repo;
pub mod logs;
mod outputs;
pub mod paths;
pub mod registry_logins;
pub mod repo_url;
pub mod runtime;
pub mod secrets;

pub use error::{ErrorCode, StepError};
pub use logs::{LogLine, LogSink, LogStream};
pub use outputs::{CacheCount, StepOutputs};

/// The steps of a job, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    Clone,
    Build,
    Push,
    Run,
}

impl Step {
    pub const ALL: [Step; 4] = [Step::Clone, Step::Build, Step::Push, Step::Run];

    /// The step after this one, if any.
    pub fn next(self) -> Option<Step> {
        match self {
            Step::Clone => Some(Step::Build),
            Step::Build => Some(Step::Push),
            Step::Push => Some(Step::Run),
            Step::Run => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Clone => "clone",
            Step::Build => "build",
            Step::Push => "push",
            Step::Run => "run",
        }
    }
}
