//! Run: the pushed image as a container on the local Docker engine.
//!
//! Split in two so the worker can store the container id before it waits:
//! [`create_container`] makes (or finds again) the container, [`wait_container`]
//! starts it if it never started, follows its output and returns its exit code.
//! The container's name is derived from job id and attempt, so a repeated create
//! for the same attempt finds the existing container instead of making a second.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::docker::{ATTEMPT_LABEL, INSTANCE_LABEL, JOB_LABEL, engine_error, status_of};
use crate::runtime::{LaunchRequest, RunEnd, Runtime, SecretEnv, Watch};
use crate::{ErrorCode, LogSink, LogStream, StepError};

/// The engine's log file for a job's container: its own, whatever the daemon's
/// default, kept until the container is removed. The engine rotates the file as it
/// grows and a reader that falls behind a rotation loses what rotated away, so the
/// files are large enough for a burst of output while the job's reader catches up.
const JOB_LOG_MAX_SIZE: &str = "64m";
const JOB_LOG_MAX_FILES: &str = "4";

fn job_log_config() -> HostConfigLogConfig {
    HostConfigLogConfig {
        typ: Some("json-file".into()),
        config: Some(HashMap::from([
            ("max-size".to_string(), JOB_LOG_MAX_SIZE.to_string()),
            ("max-file".to_string(), JOB_LOG_MAX_FILES.to_string()),
        ])),
    }
}

/// How long a container gets between SIGTERM and SIGKILL when Slipway stops it.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The container name of one attempt of one job.
pub fn container_name(job_id: &str, attempt: u32) -> String {
    format!("slipway-{job_id}-{attempt}")
}

/// Creates the attempt's container, or finds the one an earlier try of this attempt
/// made, and returns its id. Pulls the image when the engine does not have it.
pub async fn create_container(
    docker: &Docker,
    request: &LaunchRequest,
    limits: &RunLimits,
    logs: &LogSink,
) -> Result<String, StepError> {
    let (memory, nano_cpus) = limits.for_request(request)?;
    let network = super::network::ensure_job_network(docker).await?;
    let name = container_name(&request.job_id, request.attempt);
    let mut env: Vec<String> = request.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for (name, secret) in &request.secrets {
        match secret {
            SecretEnv::Value { value, .. } => env.push(format!("{name}={value}")),
            SecretEnv::Reference(_) => {
                return Err(StepError::new(
                    ErrorCode::RunFailed,
                    format!("secrets.{name} is an AWS ARN, which only an ECS task can read; name a project secret"),
                ));
            }
        }
    }
    env.sort();
    let body = ContainerCreateBody {
        image: Some(request.image.clone()),
        env: Some(env),
        cmd: (!request.command.is_empty()).then(|| request.command.clone()),
        labels: Some(HashMap::from([
            (JOB_LABEL.to_string(), request.job_id.clone()),
            (ATTEMPT_LABEL.to_string(), request.attempt.to_string()),
            (INSTANCE_LABEL.to_string(), request.instance_id.clone()),
        ])),
        host_config: Some(HostConfig {
            log_config: Some(job_log_config()),
            memory: Some(memory),
            // No swap beyond the memory limit.
            memory_swap: Some(memory),
            nano_cpus: Some(nano_cpus),
            pids_limit: Some(limits.pids),
            network_mode: Some(network),
            // No set-uid program in the image gains privileges it was not started with.
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    let mut pulled = false;
    loop {
        match docker.create_container(Some(options.clone()), body.clone()).await {
            Ok(created) => {
                logs.line(LogStream::System, format!("created container {name}")).await;
                return Ok(created.id);
            }
            Err(e) if status_of(&e) == Some(409) => {
                let existing = docker
                    .inspect_container(&name, None)
                    .await
                    .map_err(|e| engine_error(e, ErrorCode::RunFailed, "cannot inspect the existing container"))?;
                logs.line(LogStream::System, format!("found container {name} again")).await;
                return existing
                    .id
                    .ok_or_else(|| StepError::new(ErrorCode::RunFailed, "the engine reported no container id"));
            }
            // An image id names an image built on this engine (a local image): no
            // registry holds it.
            Err(e) if status_of(&e) == Some(404) && request.image.starts_with("sha256:") => {
                return Err(StepError::new(
                    ErrorCode::RunFailed,
                    format!("image {} built for the job is no longer on this engine", request.image),
                ));
            }
            Err(e) if status_of(&e) == Some(404) && !pulled => {
                pull(docker, &request.image, logs).await?;
                pulled = true;
            }
            Err(e) => return Err(engine_error(e, ErrorCode::RunFailed, "cannot create the container")),
        }
    }
}

/// The newest container an earlier attempt of the job left on this engine, if any.
pub async fn find_container(docker: &Docker, job_id: &str, logs: &LogSink) -> Result<Option<String>, StepError> {
    let filters = HashMap::from([("label", vec![format!("{JOB_LABEL}={job_id}")])]);
    let options = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
    let found = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| engine_error(e, ErrorCode::RunFailed, "cannot list containers"))?;
    let newest = found.into_iter().max_by_key(|c| c.created.unwrap_or_default()).and_then(|c| c.id);
    if let Some(id) = &newest {
        logs.line(LogStream::System, format!("re-attaching to container {id}")).await;
    }
    Ok(newest)
}

async fn pull(docker: &Docker, image: &str, logs: &LogSink) -> Result<(), StepError> {
    logs.line(LogStream::System, format!("pulling {image}")).await;
    super::pull_image(docker, image, None, &CancellationToken::new())
        .await?
        .map_err(|why| StepError::new(ErrorCode::RunFailed, format!("cannot pull {image}: {why}")))
}

/// Starts the container unless it already ran, streams its stdout and stderr to
/// `logs` (after the line stamped `after`, where an earlier attempt's stored log
/// stopped), and returns its exit code. Past `timeout`, or on cancel, the container
/// is stopped (SIGTERM, then SIGKILL after [`STOP_GRACE`]).
pub async fn wait_container(
    docker: &Docker,
    container_id: &str,
    timeout: Option<Duration>,
    after: Option<&str>,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<i64, StepError> {
    let inspected = docker
        .inspect_container(container_id, None)
        .await
        .map_err(|e| engine_error(e, ErrorCode::RunFailed, "cannot inspect the container"))?;
    let state = inspected.state.unwrap_or_default();
    let status = state.status;
    // A container found again after a crash keeps the deadline it started with.
    let timeout = match (status, timeout, state.started_at.as_deref().map(chrono::DateTime::parse_from_rfc3339)) {
        (Some(ContainerStateStatusEnum::RUNNING), Some(t), Some(Ok(started))) => {
            let ran = (chrono::Utc::now() - started.with_timezone(&chrono::Utc)).to_std().unwrap_or_default();
            Some(t.saturating_sub(ran))
        }
        _ => timeout,
    };
    if status == Some(ContainerStateStatusEnum::CREATED) {
        docker
            .start_container(container_id, None)
            .await
            .map_err(|e| engine_error(e, ErrorCode::RunFailed, "cannot start the container"))?;
    }
    let after = after.and_then(|a| chrono::DateTime::parse_from_rfc3339(a).ok());
    let (follower, read) = super::output::start_reading(docker, container_id, after, logs);

    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        code = exit_code(docker, container_id) => code,
        _ = deadline => {
            stop(docker, container_id).await;
            let secs = timeout.map(|t| t.as_secs()).unwrap_or_default();
            Err(StepError::new(ErrorCode::TimedOut, format!("the container ran longer than {secs} s and was stopped")))
        }
        _ = cancel.cancelled() => {
            stop(docker, container_id).await;
            Err(StepError::cancelled())
        }
    };
    super::output::finish_reading(follower, &read, logs).await;
    outcome
}

async fn exit_code(docker: &Docker, container_id: &str) -> Result<i64, StepError> {
    let mut wait = docker.wait_container(container_id, None);
    match wait.next().await {
        Some(Ok(response)) => Ok(response.status_code),
        // bollard reports a non-zero exit as an error carrying the code.
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(engine_error(e, ErrorCode::RunFailed, "lost the container while waiting")),
        None => {
            Err(StepError::new(ErrorCode::EngineUnavailable, "the engine closed the wait before the container ended"))
        }
    }
}

async fn stop(docker: &Docker, container_id: &str) {
    let options = StopContainerOptionsBuilder::default().t(STOP_GRACE.as_secs() as i32).build();
    if let Err(e) = docker.stop_container(container_id, Some(options)).await {
        tracing::warn!(container.id = container_id, error = %e, "stopping the container failed");
    }
}

/// Removes the container and its anonymous volumes; a container already gone is fine.
pub async fn remove_container(docker: &Docker, container_id: &str) -> Result<(), StepError> {
    let options = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    match docker.remove_container(container_id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if status_of(&e) == Some(404) => Ok(()),
        Err(e) => Err(engine_error(e, ErrorCode::RunFailed, "cannot remove the container")),
    }
}

/// What a job's container may use (`SLIPWAY_RUN_MEMORY`, `SLIPWAY_RUN_CPUS`,
/// `SLIPWAY_RUN_PIDS`), and the most a job may ask for instead
/// (`SLIPWAY_RUN_MAX_MEMORY`, `SLIPWAY_RUN_MAX_CPUS`): a job cannot take the
/// worker's machine from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    pub memory_bytes: i64,
    /// CPUs in billionths.
    pub nano_cpus: i64,
    pub pids: i64,
    pub max_memory_bytes: i64,
    pub max_nano_cpus: i64,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            memory_bytes: 2 << 30,
            nano_cpus: 2_000_000_000,
            pids: 4096,
            max_memory_bytes: 8 << 30,
            max_nano_cpus: 4_000_000_000,
        }
    }
}

impl RunLimits {
    /// The memory (bytes) and CPUs (billionths) of a job's container: what the job
    /// asked for (`run.memory` MiB, `run.cpu` units of 1/1024 CPU), else the
    /// defaults; more than the worker allows fails the run, naming the setting.
    pub fn for_request(&self, request: &LaunchRequest) -> Result<(i64, i64), StepError> {
        let memory = match request.memory {
            0 => self.memory_bytes,
            mib => i64::from(mib) << 20,
        };
        let nano_cpus = match request.cpu {
            0 => self.nano_cpus,
            units => i64::from(units) * 1_000_000_000 / 1024,
        };
        if memory > self.max_memory_bytes {
            return Err(StepError::new(
                ErrorCode::RunFailed,
                format!(
                    "run.memory {} MiB is more than this worker allows a job (SLIPWAY_RUN_MAX_MEMORY, {} MiB)",
                    memory >> 20,
                    self.max_memory_bytes >> 20
                ),
            ));
        }
        if nano_cpus > self.max_nano_cpus {
            return Err(StepError::new(
                ErrorCode::RunFailed,
                format!(
                    "run.cpu {} units is more than this worker allows a job (SLIPWAY_RUN_MAX_CPUS, {} CPUs)",
                    request.cpu,
                    self.max_nano_cpus as f64 / 1e9
                ),
            ));
        }
        Ok((memory, nano_cpus))
    }
}

/// The local Docker engine as a [`Runtime`]: one container per attempt.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    pub docker: Docker,
    pub limits: RunLimits,
}

impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn launch(&self, request: &LaunchRequest, logs: &LogSink) -> Result<String, StepError> {
        create_container(&self.docker, request, &self.limits, logs).await
    }

    /// The engine itself is the record: the job's newest labelled container.
    async fn find(&self, job_id: &str, _stored: Option<&str>, logs: &LogSink) -> Result<Option<String>, StepError> {
        find_container(&self.docker, job_id, logs).await
    }

    async fn wait(&self, handle: &str, watch: &Watch<'_>) -> Result<RunEnd, StepError> {
        let after = watch.log_cursor.as_deref();
        wait_container(&self.docker, handle, watch.timeout, after, watch.logs, watch.cancel).await.map(RunEnd::exited)
    }

    /// A container that ended has an exit code; one stopped by Slipway ended the
    /// wait with its own error before this.
    fn outcome(&self, end: &RunEnd) -> Result<i64, StepError> {
        match end.exit_code {
            Some(code) => crate::runtime::exit_outcome(code, ""),
            None => Err(StepError::new(ErrorCode::RunFailed, "the container ended without an exit code")),
        }
    }

    async fn clean_up(&self, handle: &str) -> Result<(), StepError> {
        remove_container(&self.docker, handle).await
    }
}
