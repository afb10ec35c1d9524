//! Field names used on spans and log events.

pub const JOB_ID: &str = "job.id";
pub const JOB_STEP: &str = "job.step";
pub const JOB_ATTEMPT: &str = "job.attempt";
pub const WORKER_ID: &str = "worker.id";
pub const IMAGE_DIGEST: &str = "image.digest";
pub const CONTAINER_ID: &str = "container.id";
pub const ECS_TASK_ARN: &str = "ecs.task_arn";
