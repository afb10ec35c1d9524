//! One job's task: launched once per attempt, found again after a crash, watched
//! until it stops, stopped on cancel or deadline.

use std::time::{Duration, SystemTime};

use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, ContainerOverride, DesiredStatus, KeyValuePair, LaunchType,
    NetworkConfiguration, Tag, Task, TaskField, TaskOverride,
};
use tokio_util::sync::CancellationToken;

use super::definition::{DefinitionInput, fargate_architecture};
use super::logs::LogCursor;
use super::{ATTEMPT_TAG, CONTAINER_NAME, DEADLINE_TAG, Ecs, INSTANCE_TAG, JOB_TAG, PAST_DEADLINE, STOP_REASON_PREFIX};
use crate::aws::aws_error;
use crate::runtime::LaunchRequest;
use crate::runtime::RunEnd;
use crate::{ErrorCode, LogSink, LogStream, StepError};

/// Consecutive failed `DescribeTasks` calls a watch rides out.
const MAX_DESCRIBE_FAILURES: u32 = 5;

/// The idempotency token of one attempt's `RunTask`.
pub fn client_token(job_id: &str, attempt: u32) -> String {
    format!("{job_id}-{attempt}")
}

impl Ecs {
    /// Launches the attempt's task on Fargate and returns its ARN. A retried call
    /// with the same job and attempt returns the task the first call started.
    pub async fn launch(&self, request: &LaunchRequest, logs: &LogSink) -> Result<String, StepError> {
        let input = DefinitionInput {
            image: request.image.clone(),
            cpu: request.cpu,
            memory: request.memory,
            architecture: fargate_architecture(&request.architecture)?,
            secrets: self.task_secrets(&request.secrets).await?,
        };
        let definition = self.task_definition(&input, &request.instance_id).await?;
        let s = &self.settings;
        let vpc = AwsVpcConfiguration::builder()
            .set_subnets(Some(s.subnets.clone()))
            .set_security_groups((!s.security_groups.is_empty()).then(|| s.security_groups.clone()))
            .assign_public_ip(if s.assign_public_ip { AssignPublicIp::Enabled } else { AssignPublicIp::Disabled })
            .build()
            .map_err(|e| StepError::new(ErrorCode::Internal, format!("network configuration: {e}")))?;
        let mut environment: Vec<_> =
            request.env.iter().map(|(k, v)| KeyValuePair::builder().name(k).value(v).build()).collect();
        environment.sort_by(|a, b| a.name().cmp(&b.name()));
        let container = ContainerOverride::builder()
            .name(CONTAINER_NAME)
            .set_command((!request.command.is_empty()).then(|| request.command.clone()))
            .set_environment(Some(environment))
            .build();
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        let mut tags = vec![
            tag(JOB_TAG, &request.job_id),
            tag(ATTEMPT_TAG, &request.attempt.to_string()),
            tag(INSTANCE_TAG, &request.instance_id),
        ];
        if let Some(timeout) = request.timeout {
            let at = SystemTime::now() + timeout;
            tags.push(tag(
                DEADLINE_TAG,
                &at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs().to_string(),
            ));
        }
        let ecs = &self.ecs;
        let answer = ecs
            .run_task()
            .cluster(&s.cluster)
            .task_definition(&definition)
            .launch_type(LaunchType::Fargate)
            .count(1)
            .client_token(client_token(&request.job_id, request.attempt))
            .started_by(&request.job_id)
            .network_configuration(NetworkConfiguration::builder().awsvpc_configuration(vpc).build())
            .overrides(TaskOverride::builder().container_overrides(container).build())
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| aws_error(e, ErrorCode::RunFailed, "ECS refused to run the task"))?;
        if let Some(task_arn) = answer.tasks().first().and_then(|t| t.task_arn()) {
            logs.line(LogStream::System, format!("started task {task_arn} ({definition})")).await;
            return Ok(task_arn.to_string());
        }
        let why = answer
            .failures()
            .iter()
            .map(|f| format!("{} {}", f.reason().unwrap_or("unknown"), f.detail().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("; ");
        // No capacity and the like: ECS may well have it on the next attempt.
        Err(StepError::new(ErrorCode::InfrastructureStop, format!("ECS started no task: {why}")))
    }

    /// The task to re-attach to: the stored one if ECS still knows it, else a task
    /// still running that an attempt started for this job before its ARN was stored.
    pub async fn find(&self, job_id: &str, stored: Option<&str>, logs: &LogSink) -> Result<Option<String>, StepError> {
        let found = match stored {
            Some(arn) if self.describe(arn).await?.is_some() => Some(arn.to_string()),
            _ => self.running_task_of(job_id).await?,
        };
        if let Some(arn) = &found {
            logs.line(LogStream::System, format!("re-attaching to task {arn}")).await;
        }
        Ok(found)
    }

    /// A running task an attempt started for the job.
    async fn running_task_of(&self, job_id: &str) -> Result<Option<String>, StepError> {
        let ecs = &self.ecs;
        let listed = ecs
            .list_tasks()
            .cluster(&self.settings.cluster)
            .started_by(job_id)
            .desired_status(DesiredStatus::Running)
            .send()
            .await
            .map_err(|e| aws_error(e, ErrorCode::RunFailed, "cannot list the job's tasks"))?;
        Ok(listed.task_arns().first().cloned())
    }

    /// The task as ECS describes it now; `None` when ECS no longer knows it.
    pub async fn describe(&self, task_arn: &str) -> Result<Option<Task>, StepError> {
        let ecs = &self.ecs;
        let answer = ecs
            .describe_tasks()
            .cluster(&self.settings.cluster)
            .tasks(task_arn)
            .include(TaskField::Tags)
            .send()
            .await
            .map_err(|e| aws_error(e, ErrorCode::RunFailed, "cannot describe the task"))?;
        Ok(answer.tasks().first().cloned())
    }

    /// Asks ECS to stop the task; one that is already stopped or gone is fine.
    pub async fn stop(&self, task_arn: &str, reason: &str) -> Result<(), StepError> {
        let ecs = &self.ecs;
        let stopped = ecs.stop_task().cluster(&self.settings.cluster).task(task_arn).reason(reason).send().await;
        match stopped {
            Ok(_) => Ok(()),
            Err(e) if crate::aws::service_code(&e) == Some("InvalidParameterException") => Ok(()),
            Err(e) => Err(aws_error(e, ErrorCode::RunFailed, "cannot stop the task")),
        }
    }

    /// Waits for the task to stop, following its output, and returns how it ended.
    /// Past `timeout`, or on cancel, the task is stopped with a reason naming the job.
    pub async fn wait(
        &self,
        job_id: &str,
        task_arn: &str,
        timeout: Option<Duration>,
        log_cursor: LogCursor,
        logs: &LogSink,
        cancel: &CancellationToken,
    ) -> Result<RunEnd, StepError> {
        // The deadline the task was launched with holds after a re-attach too.
        let until = match self.describe(task_arn).await? {
            Some(task) => deadline_of(&task),
            None => None,
        };
        let left = until.map(|at| at.duration_since(SystemTime::now()).unwrap_or_default());
        let follow_stop = CancellationToken::new();
        let follower = self.follow_logs(task_arn, log_cursor, logs.clone(), follow_stop.clone());
        let watch = async {
            let deadline = async {
                match left.or(timeout) {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                end = self.until_stopped(task_arn) => {
                    end
                }
                _ = deadline => {
                    let secs = timeout.map(|t| t.as_secs()).unwrap_or_default();
                    let reason = format!("{STOP_REASON_PREFIX}job {job_id} {PAST_DEADLINE} ({secs} s)");
                    self.stop(task_arn, &reason).await?;
                    Err(StepError::new(ErrorCode::TimedOut, format!("the task ran longer than {secs} s and was stopped")))
                }
                _ = cancel.cancelled() => {
                    self.stop(task_arn, &format!("{STOP_REASON_PREFIX}job {job_id} cancelled")).await?;
                    Err(StepError::cancelled())
                }
            }
        };
        let (outcome, ()) = tokio::join!(
            async {
                let outcome = watch.await;
                // The last lines reach CloudWatch shortly after the task stops.
                follow_stop.cancel();
                outcome
            },
            follower
        );
        outcome
    }

    /// Describes the task with growing pauses until it is STOPPED.
    async fn until_stopped(&self, task_arn: &str) -> Result<RunEnd, StepError> {
        let s = &self.settings;
        let mut pause = s.poll_min;
        let mut last_status = String::new();
        let mut failures = 0;
        loop {
            tokio::time::sleep(pause).await;
            // A throttled or failed call is asked again, a few times, before the
            // attempt gives up (and is retried, re-attaching to the same task).
            let described = match self.describe(task_arn).await {
                Err(e) if e.retryable() && failures < MAX_DESCRIBE_FAILURES => {
                    failures += 1;
                    tracing::warn!(task.arn = task_arn, error = %e, "describing the task failed; asking again");
                    pause = (pause * 2).min(s.poll_max);
                    continue;
                }
                other => other?,
            };
            failures = 0;
            let Some(task) = described else {
                return Err(StepError::new(
                    ErrorCode::InfrastructureStop,
                    format!("ECS no longer knows task {task_arn}"),
                ));
            };
            let status = task.last_status().unwrap_or_default().to_string();
            if status == "STOPPED" {
                return Ok(task_end(&task));
            }
            // A change of state may be followed by others soon: look again soon.
            pause = if status != last_status { s.poll_min } else { (pause * 2).min(s.poll_max) };
            last_status = status;
        }
    }
}

/// The `slipway.deadline` the task was tagged with at launch.
fn deadline_of(task: &Task) -> Option<SystemTime> {
    let tag = task.tags().iter().find(|t| t.key() == Some(DEADLINE_TAG))?;
    let secs: u64 = tag.value()?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// What the stopped task says about its end.
pub fn task_end(task: &Task) -> RunEnd {
    let essential = task.containers().iter().find(|c| c.name() == Some(CONTAINER_NAME)).or(task.containers().first());
    RunEnd {
        exit_code: essential.and_then(|c| c.exit_code()).map(i64::from),
        stop_code: task.stop_code().map(|c| c.as_str().to_string()),
        stopped_reason: task.stopped_reason().filter(|r| !r.is_empty()).map(str::to_string),
        container_reason: essential.and_then(|c| c.reason()).filter(|r| !r.is_empty()).map(str::to_string),
    }
}
