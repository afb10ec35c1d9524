//! The JSON shapes of the API, built from store rows.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::job::{JobId, JobSpec, JobState};
use crate::store::{JobRow, StepRow};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: JobId,
    /// The project the job belongs to.
    pub project: String,
    pub state: JobState,
    pub attempt: i32,
    pub spec: JobSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The worker holding the job now, if any.
    pub worker: Option<String>,
    pub commit_sha: Option<String>,
    pub image_id: Option<String>,
    /// `name@sha256:…` once pushed; always `null` for a local image.
    pub pushed_ref: Option<String>,
    /// The image names no registry host: it is built and run on the worker's engine
    /// and pushed nowhere.
    pub local: bool,
    pub container_id: Option<String>,
    /// The ECS task of an `ecs` run, and how ECS said it stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskView>,
    pub exit_code: Option<i64>,
    pub error: Option<ErrorView>,
    /// Attempts that ended because their worker went silent (killed, crashed, cut
    /// off): a job that keeps taking workers down shows it here.
    pub workers_lost: i32,
    /// The job this one re-runs (`POST /v1/jobs/{id}/rerun`).
    pub rerun_of: Option<JobId>,
    /// Every step of every attempt; absent in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepRow>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskView {
    pub arn: String,
    pub stop_code: Option<String>,
    pub stopped_reason: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorView {
    pub code: String,
    pub message: String,
}

impl JobView {
    pub fn new(row: JobRow, steps: Option<Vec<StepRow>>) -> Self {
        let error = match (row.error_code, row.error) {
            (Some(code), message) => Some(ErrorView { code, message: message.unwrap_or_default() }),
            (None, Some(message)) => Some(ErrorView { code: "unknown".into(), message }),
            (None, None) => None,
        };
        let local = row.spec.0.is_local_image();
        JobView {
            id: row.id,
            project: row.project,
            state: row.state,
            attempt: row.attempt,
            spec: row.spec.0,
            created_at: row.created_at,
            updated_at: row.updated_at,
            finished_at: row.finished_at,
            worker: row.lease_worker,
            commit_sha: row.commit_sha,
            image_id: row.image_id,
            pushed_ref: row.pushed_ref,
            local,
            container_id: row.container_id,
            task: row.task_arn.map(|arn| TaskView {
                arn,
                stop_code: row.stop_code,
                stopped_reason: row.stopped_reason,
            }),
            exit_code: row.exit_code,
            error,
            workers_lost: row.workers_lost,
            rerun_of: row.rerun_of,
            steps,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobPage {
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<JobId>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogPage {
    pub lines: Vec<crate::store::LogRow>,
    /// Pass as `after` for the next lines.
    pub next_after: i64,
    /// Whether the job has ended (no further lines will come).
    pub finished: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    pub events: Vec<crate::store::EventRow>,
}
