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
