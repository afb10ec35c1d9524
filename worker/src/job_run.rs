//! One job's run on this worker: its steps in order, each reported before and after,
//! its clone folder removed however the run ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use slipway_observability::{fields, metrics, trace};
use slipway_steps::aws::ecr::EcrRegistry;
#[cfg(not(feature = "aws"))]
use slipway_steps::aws::without_aws;
use slipway_steps::clone::{CloneRequest, check_remote, clone_repo, fetch_submodules};
use slipway_steps::docker::push::push_image;
use slipway_steps::image_ref::ImageRef;
use slipway_steps::{ErrorCode, LogSink, LogStream, Step, StepError, StepOutputs};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::assignment::{JobRun, StepEvent};
use crate::build_step::{build, registry_login};
use crate::reporter::{Reporter, send};
use crate::run_step::{clean_up, run_container};
use crate::state::WorkerState;
use crate::step_context::StepContext;

/// Lines a step may have written before the reporter sends them; a full buffer
/// slows the step rather than dropping lines.
const LOG_BUFFER: usize = 4096;

/// Runs the job to its end and forgets it.
pub(crate) async fn run(state: Arc<WorkerState>, job: JobRun) {
    let job_id = job.assignment.lease.job_id.clone();
    let token = job.assignment.lease.token.clone();
    let folder = state.config.jobs_dir().join(format!("job-{}-{}", job_id, job.assignment.lease.attempt));
    let span = tracing::info_span!("worker.job", job.id = %job_id, job.attempt = job.assignment.lease.attempt);
    trace::set_parent(&span, &job.assignment.traceparent);
    run_steps(&state, job, &folder).instrument(span).await;
    if let Err(e) = tokio::fs::remove_dir_all(&folder).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(job.id = %job_id, path = %folder.display(), error = %e, "cannot remove the clone folder");
    }
    state.finished(&job_id, &token);
}

async fn run_steps(state: &WorkerState, job: JobRun, folder: &Path) {
    let (lines_tx, lines_rx) = mpsc::channel(LOG_BUFFER);
    let reporter = match Reporter::start(
        &state.config.tls,
        &job.assignment.report_to,
        state.orchestrators(),
        &job.assignment.lease,
        lines_rx,
        job.assignment.secrets.mask(),
    ) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(job.id = %job.assignment.lease.job_id, error = %e, "cannot report; giving the job up");
            return;
        }
    };
    // A cancel or a hand-back stops the running step.
    let stop = job.cancel.child_token();
    let _link = {
        let stop = stop.clone();
        let hand_back = job.hand_back.clone();
        tokio::spawn(async move {
            hand_back.cancelled().await;
            stop.cancel();
        })
    }
    .abort_handle();
    let logs = LogSink::new(lines_tx, job.assignment.first_step, state.config.max_line_bytes);
    let mut outputs = job.assignment.outputs.clone();
    let mut step = job.assignment.first_step;
    // Later steps are reported started together with the end of the one before.
    if send(&reporter, &job.assignment.lease, step, StepEvent::Started, None, None).await {
        let ctx = StepContext { state, run: &job, job: &job.assignment, folder, stop: &stop, reporter: &reporter };
        loop {
            *job.current_step.lock().unwrap_or_else(|p| p.into_inner()) = step;
            match run_step(&ctx, &logs, &mut outputs, step).await {
                Some(next) => step = next,
                None => break,
            }
        }
    }
    reporter.close().await;
}

/// Runs one step and reports its end; returns the next step if the job goes on.
async fn run_step(ctx: &StepContext<'_>, logs: &LogSink, outputs: &mut StepOutputs, step: Step) -> Option<Step> {
    let (state, job, reporter) = (ctx.state, ctx.job, ctx.reporter);
    {
        let logs = logs.for_step(step);
        let started = std::time::Instant::now();
        let span = tracing::info_span!("step", job.step = step.as_str(), job.id = %job.lease.job_id);
        let result = async {
            match step {
                Step::Clone => clone(ctx, &logs)
                    .instrument(tracing::info_span!("git.fetch"))
                    .await
                    .map(|sha| outputs.commit_sha = Some(sha)),
                Step::Build => build(ctx, &logs).instrument(tracing::info_span!("docker.build")).await.map(|built| {
                    outputs.image_id = Some(built.image_id);
                    outputs.cache = Some(built.cache);
                }),
                Step::Push => {
                    let span = tracing::info_span!("docker.push");
                    let pushed = push(ctx, &logs).instrument(span.clone()).await;
                    if let Ok(Some(pushed)) = &pushed
                        && let Some((_, digest)) = pushed.split_once('@')
                    {
                        trace::set_attribute(&span, fields::IMAGE_DIGEST, digest.to_string());
                    }
                    pushed.map(|r| outputs.pushed_ref = r)
                }
                Step::Run => run_container(ctx, outputs, &logs).await,
            }
        }
        .instrument(span.clone())
        .await;
        if let Err(e) = &result {
            trace::mark_error(&span, &format!("{}: {}", e.code, e.message));
        }
        let outcome = match &result {
            Ok(()) => "succeeded",
            Err(e) if e.code == ErrorCode::Cancelled => "cancelled",
            Err(_) => "failed",
        };
        metrics::STEP_DURATION.observe(&[step.as_str(), outcome], started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                let done = StepEvent::Succeeded(outputs.clone());
                let exit_code = (step == Step::Run).then_some(0);
                let next = step.next();
                let committed = send(reporter, &job.lease, step, done, exit_code, next).await;
                if step == Step::Run && committed {
                    clean_up(state, job, outputs).await;
                }
                committed.then_some(next).flatten()
            }
            Err(_) if ctx.run.hand_back.is_cancelled() && !ctx.run.cancel.is_cancelled() => {
                // The worker is stopping: the job is not at fault; it runs again elsewhere.
                tracing::info!(job.id = %job.lease.job_id, job.step = step.as_str(), "handing the job back on shutdown");
                send(reporter, &job.lease, step, StepEvent::Released, None, None).await;
                None
            }
            Err(e) => {
                tracing::info!(job.id = %job.lease.job_id, job.step = step.as_str(), error.code = e.code.as_str(), "step failed");
                let failure =
                    StepEvent::Failed { code: e.code.as_str(), message: e.message.clone(), retryable: e.retryable() };
                let committed = send(reporter, &job.lease, step, failure, e.exit_code, None).await;
                if step == Step::Run && committed {
                    clean_up(state, job, outputs).await;
                }
                None
            }
        }
    }
}

async fn clone(ctx: &StepContext<'_>, logs: &LogSink) -> Result<String, StepError> {
    let (job, stop) = (&ctx.job, ctx.stop);
    let mut request = CloneRequest {
        repo: job.spec.repo.clone(),
        git_ref: job.spec.git_ref.clone(),
        pinned_sha: job.outputs.commit_sha.clone(),
        max_bytes: ctx.state.config.max_clone_bytes,
        auth: job.secrets.git.clone(),
    };
    tokio::select! {
        checked = check_remote(&request.repo, &ctx.state.config.repo_policy) => request.repo = checked?,
        _ = stop.cancelled() => return Err(StepError::cancelled()),
    }
    let dest = checkout_dir(ctx.folder);
    if dest.exists() {
        tokio::fs::remove_dir_all(&dest).await.map_err(|e| internal("cannot clear the clone folder", e))?;
    }
    // Past its time the clone is stopped like a cancel, and fails as slow.
    let (logs, cancel) = (logs.clone(), stop.child_token());
    let abort = cancel.clone();
    let policy = &ctx.state.config.repo_policy;
    let submodules = job.spec.submodules;
    let fetch = async move {
        let (parent, root) = (request.clone(), dest.clone());
        let (lines, stop) = (logs.clone(), cancel.clone());
        let sha = tokio::task::spawn_blocking(move || clone_repo(&request, &dest, &lines, &stop))
            .await
            .map_err(|e| StepError::new(ErrorCode::Internal, format!("the clone panicked: {e}")))??;
        if submodules {
            fetch_submodules(&parent, &root, policy, &logs, &cancel).await?;
        }
        Ok(sha)
    };
    let limit = ctx.state.config.clone_timeout;
    tokio::select! {
        done = fetch => done,
        // libgit2 sees a cancel only between transfers; a remote that stalls must not
        // hold the job: the fetch thread is left to end on libgit2's timeout.
        _ = stop.cancelled() => Err(StepError::cancelled()),
        _ = tokio::time::sleep(limit) => {
            abort.cancel();
            let repo = slipway_steps::repo_url::redacted(&job.spec.repo);
            Err(StepError::new(
                ErrorCode::CloneFailed,
                format!("could not clone {repo} within {:?} (SLIPWAY_CLONE_TIMEOUT)", limit),
            ))
        }
    }
}

/// Pushes the built image and returns `name@digest`; a local image is not pushed.
async fn push(ctx: &StepContext<'_>, logs: &LogSink) -> Result<Option<String>, StepError> {
    let (state, job) = (ctx.state, &ctx.job);
    let image: ImageRef = job
        .spec
        .image
        .parse()
        .map_err(|why| StepError::new(ErrorCode::Internal, format!("image `{}` {why}", job.spec.image)))?;
    if image.is_local() {
        let why = format!(
            "push skipped: local image {image} names no registry host and stays on this worker's engine \
             (name one, such as docker.io/you/app, to push it)"
        );
        logs.line(LogStream::System, why).await;
        return Ok(None);
    }
    // ECR: the repository made if missing (the login is a token for the registry).
    let ecr_registry = image.registry.as_deref().and_then(EcrRegistry::parse);
    #[cfg(not(feature = "aws"))]
    if ecr_registry.is_some() {
        return Err(without_aws(ErrorCode::PushRefused, "pushing to Amazon ECR"));
    }
    #[cfg(feature = "aws")]
    if let Some(registry) = &ecr_registry
        && state.ecr().await.ensure_repository(registry, &image.path).await?
    {
        logs.line(LogStream::System, format!("created ECR repository {}", image.path)).await;
    }
    let credentials = registry_login(ctx, image.registry.as_deref()).await?;
    let pushed = push_image(&state.docker, &image, credentials.as_ref(), logs, ctx.stop).await;
    #[cfg(feature = "aws")]
    if let (Err(_), Some(registry)) = (&pushed, &ecr_registry) {
        state.ecr().await.forget_repository(registry, &image.path).await;
    }
    pushed.map(Some)
}

pub(crate) fn checkout_dir(folder: &Path) -> PathBuf {
    folder.join("src")
}

fn internal(what: &str, e: std::io::Error) -> StepError {
    StepError::new(ErrorCode::Internal, format!("{what}: {e}")).with_source(e)
}
