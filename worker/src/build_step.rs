//! The build step on the worker: the request made from the job, the images its
//! cache comes from with the login each may be pulled with, and the fall-back to
//! the classic builder when only BuildKit is wedged.
//!
//! Logins follow one rule ([`registry_login`]), the push's: a job's own registry
//! login goes to its image's registry; the worker's configured logins (and ECR
//! tokens) to the hosts they are for. An image the job named in `cache_from` is
//! pulled with the job's own login only, never with the worker's: the worker's
//! logins may read other projects' images, and a job must not choose what they
//! read. The last image pushed for the job's cache key was chosen by the
//! orchestrator from the job's own project, so it gets the push's login.

#[cfg(not(feature = "aws"))]
use slipway_steps::aws::ecr::EcrRegistry;
use slipway_steps::docker::build::{BuildRequest, Builder, Built, CacheSource, build_image};
use slipway_steps::docker::push::RegistryCredentials;
use slipway_steps::image_ref::{ImageRef, PullRef};
use slipway_steps::{ErrorCode, LogSink, LogStream, StepError};

use crate::engine_health::AfterFailedBuild;
use crate::job_run::checkout_dir;
use crate::step_context::StepContext;

pub(crate) async fn build(ctx: &StepContext<'_>, logs: &LogSink) -> Result<Built, StepError> {
    let (state, job) = (ctx.state, &ctx.job);
    let request = BuildRequest {
        job_id: job.lease.job_id.clone(),
        instance_id: job.instance_id.clone(),
        image: job.spec.image.clone(),
        dockerfile: job.spec.dockerfile.clone(),
        context: job.spec.context.clone(),
        build_args: job.spec.build_args.clone(),
        max_context_bytes: state.config.max_context_bytes,
        start_timeout: state.config.build_start_timeout,
        limits: state.config.run_limits,
        registry_login: job.secrets.registry.clone(),
        secrets: job.secrets.build.clone(),
        cache_from: cache_sources(ctx).await?,
        no_cache: job.spec.cache.off,
        cache_key: job.spec.cache.key.clone(),
    };
    let builder = state.builder().await?;
    let checkout = checkout_dir(ctx.folder);
    let built = match build_image(&state.docker, builder, &checkout, &request, logs, ctx.stop).await {
        // A wedged engine is noticed: probed, and BuildKit left for the classic
        // builder when only BuildKit is wedged.
        Err(e) if e.code == ErrorCode::EngineUnavailable && !ctx.stop.is_cancelled() => {
            match state.engine.after_failed_build(&state.docker, builder).await {
                AfterFailedBuild::UseClassic => {
                    let why = format!("{}; the classic builder answers: building with it", e.message);
                    logs.line(LogStream::System, why).await;
                    build_image(&state.docker, Builder::Classic, &checkout, &request, logs, ctx.stop).await
                }
                AfterFailedBuild::Unhealthy | AfterFailedBuild::Passed => Err(e),
            }
        }
        built => built,
    }?;
    if let Some(key) = &job.spec.cache.key {
        state.cache_keys.built(key);
    }
    Ok(built)
}

/// The images the build takes its cache from: none with `"cache": false`; else
/// those the job named, or else the last one pushed for its cache key.
async fn cache_sources(ctx: &StepContext<'_>) -> Result<Vec<CacheSource>, StepError> {
    let (job, cache) = (ctx.job, &ctx.job.spec.cache);
    if cache.off {
        return Ok(Vec::new());
    }
    let image_registry = image_registry(job);
    if !cache.named.is_empty() {
        let own_login = |image: &PullRef| match image.registry() {
            Some(host) if Some(host) == image_registry.as_deref() => job.secrets.registry.clone(),
            _ => None,
        };
        return Ok(cache
            .named
            .iter()
            .map(|image| CacheSource { image: image.to_string(), login: own_login(image) })
            .collect());
    }
    let Some(image) = &cache.last_pushed else { return Ok(Vec::new()) };
    let login = match registry_login(ctx, image.registry()).await {
        Ok(login) => login,
        // No login (an ECR token refused): the pull is tried without one, and the
        // build goes on cold if that fails.
        Err(e) if e.code != ErrorCode::Cancelled => None,
        Err(e) => return Err(e),
    };
    Ok(vec![CacheSource { image: image.to_string(), login }])
}

/// The login for `registry` (`None`: Docker Hub): an ECR token for an ECR host;
/// else the job's own login when `registry` is its image's; else the worker's
/// login for that host, if it has one.
pub(crate) async fn registry_login(
    ctx: &StepContext<'_>,
    registry: Option<&str>,
) -> Result<Option<RegistryCredentials>, StepError> {
    let (state, job) = (ctx.state, ctx.job);
    #[cfg(feature = "aws")]
    if let Some(ecr) = registry.and_then(slipway_steps::aws::ecr::EcrRegistry::parse) {
        return state.ecr().await.credentials(&ecr).await.map(Some);
    }
    #[cfg(not(feature = "aws"))]
    if registry.and_then(EcrRegistry::parse).is_some() {
        return Ok(None);
    }
    let own = job.secrets.registry.clone().filter(|_| registry == image_registry(job).as_deref());
    Ok(own.or_else(|| state.config.registry_logins.for_host(registry).cloned()))
}

/// The registry host of the job's image, if it names one.
fn image_registry(job: &crate::assignment::Assignment) -> Option<String> {
    job.spec.image.parse::<ImageRef>().ok().and_then(|image| image.registry)
}
