//! The ECS, CloudWatch Logs and SSM clients of one region, and ECS as a
//! [`Runtime`](crate::runtime::Runtime).

use super::{CONTAINER_NAME, EcsSettings, logs, stop};
use crate::aws::AwsConfig;

/// ECS, CloudWatch Logs and SSM clients bound to the settings' region.
pub struct Ecs {
    pub(crate) ecs: aws_sdk_ecs::Client,
    pub(crate) cloudwatch: aws_sdk_cloudwatchlogs::Client,
    /// SSM Parameter Store, where project secrets are written for tasks to read.
    pub(crate) ssm: aws_sdk_ssm::Client,
    pub(crate) settings: EcsSettings,
    pub(crate) region: String,
    pub(crate) definitions: tokio::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl Ecs {
    pub fn new(config: &AwsConfig, settings: EcsSettings) -> Self {
        let sdk = config.sdk_for(settings.region.as_deref());
        let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into());
        Ecs {
            ecs: aws_sdk_ecs::Client::new(&sdk),
            cloudwatch: aws_sdk_cloudwatchlogs::Client::new(&sdk),
            ssm: aws_sdk_ssm::Client::new(&sdk),
            settings,
            region,
            definitions: Default::default(),
        }
    }

    pub fn settings(&self) -> &EcsSettings {
        &self.settings
    }

    /// The CloudWatch stream the awslogs driver writes a task's output to.
    pub fn log_stream_of(&self, task_arn: &str) -> String {
        let task_id = task_arn.rsplit('/').next().unwrap_or(task_arn);
        format!("{}/{CONTAINER_NAME}/{task_id}", self.settings.log_stream_prefix)
    }
}

impl crate::runtime::Runtime for Ecs {
    fn name(&self) -> &'static str {
        "ecs"
    }

    async fn launch(
        &self,
        request: &crate::runtime::LaunchRequest,
        logs: &crate::LogSink,
    ) -> Result<String, crate::StepError> {
        Ecs::launch(self, request, logs).await
    }

    async fn find(
        &self,
        job_id: &str,
        stored: Option<&str>,
        logs: &crate::LogSink,
    ) -> Result<Option<String>, crate::StepError> {
        Ecs::find(self, job_id, stored, logs).await
    }

    async fn wait(
        &self,
        handle: &str,
        watch: &crate::runtime::Watch<'_>,
    ) -> Result<crate::runtime::RunEnd, crate::StepError> {
        let cursor = match watch.log_cursor.as_deref().map(str::parse::<logs::LogCursor>) {
            Some(Ok(cursor)) => cursor,
            Some(Err(why)) => {
                tracing::warn!(job.id = watch.job_id, error = %why, "reading the task's log from its start");
                logs::LogCursor::default()
            }
            None => logs::LogCursor::default(),
        };
        Ecs::wait(self, watch.job_id, handle, watch.timeout, cursor, watch.logs, watch.cancel).await
    }

    /// Read from the task's stop code and reasons and its essential container's exit.
    fn outcome(&self, end: &crate::runtime::RunEnd) -> Result<i64, crate::StepError> {
        stop::classify(&stop::StoppedTask {
            exit_code: end.exit_code,
            stop_code: end.stop_code.as_deref(),
            stopped_reason: end.stopped_reason.as_deref(),
            container_reason: end.container_reason.as_deref(),
        })
    }

    /// A stopped task needs nothing removed; ECS forgets it by itself.
    async fn clean_up(&self, _handle: &str) -> Result<(), crate::StepError> {
        Ok(())
    }
}
