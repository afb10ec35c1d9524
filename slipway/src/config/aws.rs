//! A worker's AWS settings: the ECS cluster and network its `ecs` runs use, and how
//! ECR repositories it creates are set up. Credentials and region come from the
//! standard AWS chain, not from here.

use std::time::Duration;

use clap::Args;
use slipway_steps::aws::ecr::RepositorySettings;
use slipway_steps::aws::ecs::EcsSettings;

use super::{ConfigError, bad, duration};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "AWS")]
pub struct AwsArgs {
    /// The ECS cluster `ecs` runs go to; unset: this worker takes no `ecs` jobs.
    #[arg(long, env = "SLIPWAY_ECS_CLUSTER")]
    pub ecs_cluster: Option<String>,
    /// Subnets of the tasks (comma-separated); private ones, with a NAT gateway or
    /// VPC endpoints for ECR, S3 and CloudWatch Logs.
    #[arg(long, env = "SLIPWAY_ECS_SUBNETS", value_delimiter = ',')]
    pub ecs_subnets: Vec<String>,
    /// Security groups of the tasks (comma-separated); none: the VPC's default.
    #[arg(long, env = "SLIPWAY_ECS_SECURITY_GROUPS", value_delimiter = ',')]
    pub ecs_security_groups: Vec<String>,
    /// Give tasks a public IP (only for public subnets without a NAT gateway).
    #[arg(long, env = "SLIPWAY_ECS_ASSIGN_PUBLIC_IP", default_value_t = false, action = clap::ArgAction::Set)]
    pub ecs_assign_public_ip: bool,
    /// The task execution role (pulls the image, writes the logs).
    #[arg(long, env = "SLIPWAY_ECS_EXECUTION_ROLE_ARN")]
    pub ecs_execution_role_arn: Option<String>,
    /// The role the job's code runs as.
    #[arg(long, env = "SLIPWAY_ECS_TASK_ROLE_ARN")]
    pub ecs_task_role_arn: Option<String>,
    /// The CloudWatch log group tasks write to (it must exist).
    #[arg(long, env = "SLIPWAY_ECS_LOG_GROUP", default_value = "/slipway/jobs")]
    pub ecs_log_group: String,
    /// The prefix of the tasks' log streams.
    #[arg(long, env = "SLIPWAY_ECS_LOG_STREAM_PREFIX", default_value = "slipway")]
    pub ecs_log_stream_prefix: String,
    /// The region of the cluster [default: the AWS configuration's].
    #[arg(long, env = "SLIPWAY_ECS_REGION")]
    pub ecs_region: Option<String>,
    /// First pause between `DescribeTasks` calls; it doubles while nothing changes.
    #[arg(long, env = "SLIPWAY_ECS_POLL_MIN", default_value = "1s", value_parser = duration)]
    pub ecs_poll_min: Duration,
    /// Longest pause between `DescribeTasks` calls.
    #[arg(long, env = "SLIPWAY_ECS_POLL_MAX", default_value = "15s", value_parser = duration)]
    pub ecs_poll_max: Duration,
    /// Repositories Slipway creates in ECR have immutable tags.
    #[arg(long, env = "SLIPWAY_ECR_IMMUTABLE_TAGS", default_value_t = false, action = clap::ArgAction::Set)]
    pub ecr_immutable_tags: bool,
    /// Repositories Slipway creates in ECR scan images on push.
    #[arg(long, env = "SLIPWAY_ECR_SCAN_ON_PUSH", default_value_t = false, action = clap::ArgAction::Set)]
    pub ecr_scan_on_push: bool,
}

impl AwsArgs {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !cfg!(feature = "aws") && self.ecs_cluster.is_some() {
            return Err(bad("SLIPWAY_ECS_CLUSTER", slipway_steps::aws::WITHOUT_AWS));
        }
        if self.ecs_cluster.is_some() && self.ecs_subnets.iter().all(|s| s.trim().is_empty()) {
            return Err(bad("SLIPWAY_ECS_SUBNETS", "ECS runs need at least one subnet"));
        }
        if self.ecs_poll_min.is_zero() || self.ecs_poll_min > self.ecs_poll_max {
            return Err(bad("SLIPWAY_ECS_POLL_MIN", "must be above zero and at most SLIPWAY_ECS_POLL_MAX"));
        }
        Ok(())
    }

    /// The ECS settings, when a cluster is configured.
    pub fn ecs(&self) -> Option<EcsSettings> {
        let cluster = self.ecs_cluster.clone()?;
        let list = |v: &[String]| v.iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        Some(EcsSettings {
            cluster,
            subnets: list(&self.ecs_subnets),
            security_groups: list(&self.ecs_security_groups),
            assign_public_ip: self.ecs_assign_public_ip,
            execution_role_arn: self.ecs_execution_role_arn.clone(),
            task_role_arn: self.ecs_task_role_arn.clone(),
            log_group: self.ecs_log_group.clone(),
            log_stream_prefix: self.ecs_log_stream_prefix.clone(),
            region: self.ecs_region.clone(),
            poll_min: self.ecs_poll_min,
            poll_max: self.ecs_poll_max,
        })
    }

    pub fn ecr(&self) -> RepositorySettings {
        RepositorySettings { immutable_tags: self.ecr_immutable_tags, scan_on_push: self.ecr_scan_on_push }
    }
}

/// `key=value` for `SLIPWAY_WORKER_LABELS`.
pub fn label(raw: &str) -> Result<(String, String), String> {
    let (key, value) = raw.split_once('=').ok_or_else(|| format!("`{raw}` is not key=value"))?;
    let (key, value) = (key.trim(), value.trim());
    if key.is_empty() || value.is_empty() {
        return Err(format!("`{raw}` needs a key and a value"));
    }
    Ok((key.to_string(), value.to_string()))
}
