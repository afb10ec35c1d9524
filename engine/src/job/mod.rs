//! The job: its identity, its states, and the specification a user submits.

mod retry;
pub mod secret_refs;
mod spec;
mod state;
pub mod transitions;

pub use retry::{RetryDecision, RetryPolicy};
pub use spec::{
    DEFAULT_ATTEMPTS_CAP, FieldError, JobRequest, JobSpec, MAX_ATTEMPTS, MAX_BACKOFF_MS, MAX_TIMEOUT_SECONDS,
    RetryRequest, RunRequest, RunSpec, SubmitDefaults,
};
pub use state::{JobState, state_of_step};

use std::fmt;

use uuid::Uuid;

/// A job's id: a UUIDv7, so ids sort by submission time.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, sqlx::Type,
)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(JobId)
    }
}
