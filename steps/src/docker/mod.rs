//! The Docker engine: the connection and what its errors mean for a job, and the
//! steps done there — building, pushing, running a container, finding what was
//! left behind.

pub mod build;
pub mod leftovers;
pub mod network;
mod output;
pub mod probe;
pub mod push;
pub mod run;

pub use bollard::Docker;
use bollard::errors::Error as DockerError;
use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::{ErrorCode, StepError};

/// Label put on every container Slipway makes, with the job id as value, so that
/// it can be found again (re-attach, sweeps). Images do not carry it: a label is
/// part of the image, so it would make every job's image (and ECS task definition)
/// its own; an image is marked for its job by a tag instead ([`job_image_tag`]).
pub const JOB_LABEL: &str = "slipway.job_id";
/// The repository of the tags that mark images for jobs:
/// `slipway-jobs/<installation>:<job id>`.
pub const JOB_TAG_REPOSITORY: &str = "slipway-jobs";
/// Label with the id of the Slipway installation that made an image or container.
pub const INSTANCE_LABEL: &str = "slipway.instance";
/// Label with the attempt that made a container.
pub const ATTEMPT_LABEL: &str = "slipway.attempt";
/// Label with the cache key of the build that made an image: the same for every
/// build of a repository's Dockerfile and context, so it changes no cache key
/// between them; a restarted worker reads it back to know which layers it holds.
pub const CACHE_KEY_LABEL: &str = "slipway.cache_key";

/// The repository and tag that mark an image as built for a job of an
/// installation. Tags are not part of the image: jobs that build the same content
/// share one image, each with its own tag, and the image goes with the last of them.
pub fn job_image_tag(instance_id: &str, job_id: &str) -> (String, String) {
    (job_tag_repository(instance_id), job_id.to_string())
}

/// The repository of an installation's job tags.
pub fn job_tag_repository(instance_id: &str) -> String {
    format!("{JOB_TAG_REPOSITORY}/{instance_id}")
}

/// Connects to the local engine (`DOCKER_HOST` or the default socket).
pub fn connect() -> Result<Docker, StepError> {
    Docker::connect_with_local_defaults().map_err(|e| {
        StepError::new(ErrorCode::EngineUnavailable, format!("cannot reach the Docker engine: {e}")).with_source(e)
    })
}

/// The engine's answer status, when it answered at all.
pub fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The message of an error the engine reported inside a progress stream (a failed
/// build instruction, a refused push), if that is what `e` is.
pub fn stream_error(e: &DockerError) -> Option<&str> {
    match e {
        DockerError::DockerStreamError { error } => Some(error),
        _ => None,
    }
}

/// An error talking to the engine: an answer with a status is `on_answer`
/// (the engine refused), anything else means the engine could not be reached.
pub fn engine_error(e: DockerError, on_answer: ErrorCode, what: &str) -> StepError {
    match &e {
        DockerError::DockerResponseServerError { message, .. } => {
            let message = format!("{what}: {message}");
            StepError::new(on_answer, message).with_source(e)
        }
        _ => StepError::new(ErrorCode::EngineUnavailable, format!("{what}: the Docker engine is unreachable: {e}"))
            .with_source(e),
    }
}

/// Pulls `image` (`name:tag` or `name@sha256:…`) with `login` for its registry, if
/// any. A refusal is the engine's reason, for the caller to word; an engine that
/// cannot be reached, or a cancel, is the step's error.
pub async fn pull_image(
    docker: &Docker,
    image: &str,
    login: Option<&push::RegistryCredentials>,
    cancel: &CancellationToken,
) -> Result<Result<(), String>, StepError> {
    let options = bollard::query_parameters::CreateImageOptionsBuilder::default().from_image(image).build();
    let host = image.parse::<crate::image_ref::PullRef>().ok().and_then(|r| r.image.registry);
    let credentials = login.map(|login| login.for_engine(host));
    let mut stream = std::pin::pin!(docker.create_image(Some(options), None, credentials));
    while let Some(item) = next_message(&mut stream, cancel).await? {
        let info = match item {
            Ok(info) => info,
            Err(DockerError::DockerStreamError { error }) => return Ok(Err(error)),
            Err(DockerError::DockerResponseServerError { message, .. }) => return Ok(Err(message)),
            Err(e) => return Err(engine_error(e, ErrorCode::EngineUnavailable, "cannot pull")),
        };
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            return Ok(Err(message));
        }
    }
    Ok(Ok(()))
}

/// The next message of an engine progress stream (build, push), or
/// [`ErrorCode::Cancelled`] as soon as `cancel` fires: the caller then drops the
/// stream, which closes the connection and makes the engine abort the operation.
pub async fn next_message<S, T>(
    stream: &mut S,
    cancel: &CancellationToken,
) -> Result<Option<Result<T, DockerError>>, StepError>
where
    S: Stream<Item = Result<T, DockerError>> + Unpin,
{
    tokio::select! {
        _ = cancel.cancelled() => Err(StepError::cancelled()),
        item = stream.next() => Ok(item),
    }
}
