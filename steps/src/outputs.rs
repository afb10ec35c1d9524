//! What steps produce: kept with the job by the orchestrator, handed to later steps
//! and attempts by the worker. One type on both sides of the wire.

use crate::runtime::RuntimeKind;

/// Step outputs; `None` is "not produced" (and, in a report, "leave the stored
/// value as it is").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepOutputs {
    /// The commit the clone checked out; later attempts build the same one.
    pub commit_sha: Option<String>,
    pub image_id: Option<String>,
    /// `name@sha256:…` once pushed.
    pub pushed_ref: Option<String>,
    /// The run's container (Docker).
    pub container_id: Option<String>,
    /// The run's task (ECS).
    pub task_arn: Option<String>,
    /// How the run's task stopped, as ECS said it.
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
    /// How many of the build's steps came from cache.
    pub cache: Option<CacheCount>,
}

/// How many steps a build ran and how many of them came from cache: every
/// instruction after `FROM` that the builder reports as a step of its own
/// (BuildKit: `[2/5] RUN …`; the classic builder: `Step 2/5 : RUN …`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCount {
    pub hits: u32,
    pub steps: u32,
}

impl CacheCount {
    /// One more step, from cache or not.
    pub fn step(&mut self, cached: bool) {
        self.steps = self.steps.saturating_add(1);
        if cached {
            self.hits = self.hits.saturating_add(1);
        }
    }

    /// The steps that ran.
    pub fn misses(&self) -> u32 {
        self.steps.saturating_sub(self.hits)
    }
}

impl std::fmt::Display for CacheCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of {} steps from cache", self.hits, self.steps)
    }
}

impl StepOutputs {
    /// The run's handle on `runtime`: its container id on Docker, its task ARN on ECS.
    pub fn run_handle(&self, runtime: RuntimeKind) -> Option<&str> {
        match runtime {
            RuntimeKind::Docker => self.container_id.as_deref(),
            RuntimeKind::Ecs => self.task_arn.as_deref(),
        }
    }

    pub fn set_run_handle(&mut self, runtime: RuntimeKind, handle: &str) {
        let slot = match runtime {
            RuntimeKind::Docker => &mut self.container_id,
            RuntimeKind::Ecs => &mut self.task_arn,
        };
        *slot = Some(handle.to_string());
    }

    /// Outputs holding only the run's handle on `runtime`.
    pub fn of_run(runtime: RuntimeKind, handle: &str) -> StepOutputs {
        let mut outputs = StepOutputs::default();
        outputs.set_run_handle(runtime, handle);
        outputs
    }
}
