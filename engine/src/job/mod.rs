//! The job: its identity, its states, and the specification a user submits.

pub mod build_cache;
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
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    sqlx::Type,
    utoipa::ToSchema,
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

/// The ids that start with `prefix` (hex digits, dashes ignored, 1 to 32 of them),
/// as the first and last id of the range: a prefix is found through the primary key.
pub fn id_prefix_range(prefix: &str) -> Result<(JobId, JobId), String> {
    let digits: String = prefix.chars().filter(|c| *c != '-').collect::<String>().to_ascii_lowercase();
    if digits.is_empty() || digits.len() > 32 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("`{prefix}` is not the start of a job id (1 to 32 hex digits)"));
    }
    let bound = |fill: char| {
        let padded: String = digits.chars().chain(std::iter::repeat(fill)).take(32).collect();
        Uuid::parse_str(&padded).map(JobId).map_err(|e| e.to_string())
    };
    Ok((bound('0')?, bound('f')?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_prefix_is_the_range_of_the_ids_it_starts() {
        let id: JobId = "0193b1c2-7c1e-7d3a-9f10-3a1b2c3d4e5f".parse().unwrap();
        for prefix in ["0193b1c2", "0193B1C2-7c1e", "0193b1c27c1e7d3a", &id.to_string()] {
            let (first, last) = id_prefix_range(prefix).unwrap();
            assert!(first <= id && id <= last, "{prefix}");
        }
        let (first, last) = id_prefix_range("0193b1c3").unwrap();
        assert!(!(first <= id && id <= last));
        for bad in ["", "xyz", "0193b1c2-7c1e-7d3a-9f10-3a1b2c3d4e5f0"] {
            assert!(id_prefix_range(bad).is_err(), "{bad}");
        }
    }
}
