//! Tasks this installation left running: found by their tags, for the sweep to
//! stop those whose job is finished or gone, or that ran past their deadline.

use std::time::{Duration, SystemTime};

use aws_sdk_ecs::types::{DesiredStatus, TaskField};

use super::{DEADLINE_TAG, Ecs, INSTANCE_TAG, JOB_TAG};
use crate::aws::aws_error;
use crate::docker::leftovers::Leftover;
use crate::{ErrorCode, StepError};

impl Ecs {
    /// Running tasks of the cluster tagged with installation `instance_id`.
    pub async fn leftover_tasks(&self, instance_id: &str) -> Result<Vec<Leftover>, StepError> {
        let ecs = &self.ecs;
        let mut arns = Vec::new();
        let mut pages = ecs
            .list_tasks()
            .cluster(&self.settings.cluster)
            .desired_status(DesiredStatus::Running)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(e, ErrorCode::Internal, "cannot list the cluster's tasks"))?;
            arns.extend(page.task_arns().iter().cloned());
        }
        let mut found = Vec::new();
        // DescribeTasks takes at most 100 tasks a call.
        for chunk in arns.chunks(100) {
            let described = ecs
                .describe_tasks()
                .cluster(&self.settings.cluster)
                .set_tasks(Some(chunk.to_vec()))
                .include(TaskField::Tags)
                .send()
                .await
                .map_err(|e| aws_error(e, ErrorCode::Internal, "cannot describe the cluster's tasks"))?;
            for task in described.tasks() {
                let tag = |key: &str| task.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value());
                if tag(INSTANCE_TAG) == Some(instance_id)
                    && let (Some(job_id), Some(arn)) = (tag(JOB_TAG), task.task_arn())
                {
                    let past_deadline = tag(DEADLINE_TAG)
                        .and_then(|t| t.parse::<u64>().ok())
                        .is_some_and(|at| SystemTime::UNIX_EPOCH + Duration::from_secs(at) < SystemTime::now());
                    found.push(Leftover::Task { id: arn.to_string(), job_id: job_id.to_string(), past_deadline });
                }
            }
        }
        Ok(found)
    }
}
