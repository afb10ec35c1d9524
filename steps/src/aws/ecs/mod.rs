//! ECS Fargate: a job's run as a task.
//!
//! A task definition per distinct image and size ([`definition`]), launched with
//! `RunTask` under a client token derived from job and attempt so that a repeated
//! call never starts a second task ([`task`]), watched with `DescribeTasks` until it
//! stops and its stop classified ([`stop`]), its output read from CloudWatch Logs
//! with the forward token handed on to be stored ([`logs`]). Its secrets reach it
//! through the task definition, never through `RunTask` ([`secrets`]).

//!
//! The SDK's part ([`Ecs`] and the modules it uses) is in builds with the `aws`
//! feature; the names, sizes and settings the API and configuration check are in
//! every build.

#[cfg(feature = "aws")]
mod client;
#[cfg(feature = "aws")]
pub mod definition;
#[cfg(feature = "aws")]
mod leftovers;
#[cfg(feature = "aws")]
pub mod logs;
pub mod secrets;
pub mod sizes;
#[cfg(feature = "aws")]
pub mod stop;
#[cfg(feature = "aws")]
pub mod task;

use std::time::Duration;

#[cfg(feature = "aws")]
pub use client::Ecs;

/// The one container of every task Slipway defines.
pub const CONTAINER_NAME: &str = "app";
/// Tags on every task, naming what it belongs to.
pub const JOB_TAG: &str = "slipway.job_id";
pub const ATTEMPT_TAG: &str = "slipway.attempt";
pub const INSTANCE_TAG: &str = "slipway.instance";
/// Unix time (seconds) past which the task is stopped, whoever watches it.
pub const DEADLINE_TAG: &str = "slipway.deadline";
/// How a stop reason Slipway gives begins; what follows says why.
pub const STOP_REASON_PREFIX: &str = "slipway: ";
/// A stop reason's words for a task stopped past its deadline.
pub const PAST_DEADLINE: &str = "ran past its deadline";

/// Where and how tasks run.
#[derive(Debug, Clone)]
pub struct EcsSettings {
    pub cluster: String,
    /// awsvpc subnets; private ones, with a NAT gateway or VPC endpoints to reach ECR
    /// and CloudWatch Logs.
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub assign_public_ip: bool,
    /// The role ECS uses to pull the image and write logs.
    pub execution_role_arn: Option<String>,
    /// The role the job's code runs as.
    pub task_role_arn: Option<String>,
    pub log_group: String,
    pub log_stream_prefix: String,
    /// `None`: the region of the AWS configuration.
    pub region: Option<String>,
    /// `DescribeTasks` is called after `poll_min`, then ever less often up to `poll_max`.
    pub poll_min: Duration,
    pub poll_max: Duration,
}
