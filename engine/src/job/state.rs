//! The states of a job, mirrored by the `job_state` enum in Postgres, and how steps
//! map onto them.

use slipway_steps::Step;

/// Where a job is. `Queued` → `Cloning` → `Building` → `Pushing` → `Running` →
/// `Succeeded`, or from any unfinished state to `Failed` or `Cancelled`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "job_state", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Cloning,
    Building,
    Pushing,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 8] = [
        JobState::Queued,
        JobState::Cloning,
        JobState::Building,
        JobState::Pushing,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The final states: a job in one of them never changes again.
    pub const TERMINAL: &'static [JobState] = &[JobState::Succeeded, JobState::Failed, JobState::Cancelled];

    pub fn is_terminal(self) -> bool {
        JobState::TERMINAL.contains(&self)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Cloning => "cloning",
            JobState::Building => "building",
            JobState::Pushing => "pushing",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
            format!("`{s}` is not a state; use one of {}", names.join(", "))
        })
    }
}

/// The state a job is in while `step` runs.
pub fn state_of_step(step: Step) -> JobState {
    match step {
        Step::Clone => JobState::Cloning,
        Step::Build => JobState::Building,
        Step::Push => JobState::Pushing,
        Step::Run => JobState::Running,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().unwrap(), state);
        }
        assert!("done".parse::<JobState>().unwrap_err().contains("queued"));
    }
}
