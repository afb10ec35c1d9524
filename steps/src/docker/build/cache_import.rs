//! The images a build takes its cache from: found on the engine or pulled, with the
//! login the worker chose for each, before the build starts (the classic builder
//! only looks at local images; the engine's BuildKit reads a local image's inline
//! cache first). An image that cannot be had never fails the build: the log says
//! why and the build goes on without it. After the build, a build that made its
//! cache image again takes that image.

use std::time::Duration;

use bollard::Docker;
use tokio_util::sync::CancellationToken;

use crate::docker::pull_image;
use crate::docker::push::RegistryCredentials;
use crate::{LogSink, LogStream, StepError};

/// The longest a cache image may take to pull: past it, building cold is faster.
const PULL_LIMIT: Duration = Duration::from_secs(300);

/// An image to take cache from, with the login to pull it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSource {
    /// `name:tag` or `name@sha256:…`.
    pub image: String,
    pub login: Option<RegistryCredentials>,
}

/// The sources that are on the engine now, in order; each one left out is named
/// in the log with its reason. Only a cancel or an unreachable engine is an error.
pub(super) async fn usable(
    docker: &Docker,
    sources: &[CacheSource],
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<Vec<Usable>, StepError> {
    let mut usable = Vec::new();
    for source in sources {
        let image = &source.image;
        if docker.inspect_image(image).await.is_ok() {
            logs.line(LogStream::System, format!("cache: using {image}, already on this engine")).await;
            usable.push(Usable { image: image.clone(), was_here: true });
            continue;
        }
        logs.line(LogStream::System, format!("cache: pulling {image}")).await;
        let pulled = tokio::time::timeout(PULL_LIMIT, pull_image(docker, image, source.login.as_ref(), cancel)).await;
        let why = match pulled {
            Ok(Ok(Ok(()))) => {
                usable.push(Usable { image: image.clone(), was_here: false });
                continue;
            }
            Ok(Ok(Err(why))) => why,
            Ok(Err(e)) => return Err(e),
            Err(_) => format!("not pulled within {PULL_LIMIT:?}"),
        };
        logs.line(LogStream::System, format!("cache: cannot use {image} ({why}); building without it")).await;
    }
    Ok(usable)
}

/// A cache image on the engine, and whether it was there before this build.
pub(super) struct Usable {
    pub image: String,
    pub was_here: bool,
}

/// The images to name to the classic builder. Once named any, it takes a step from
/// its local cache only if the image found there is a parent of one of them, and it
/// matches named images by their history, which BuildKit writes differently: so a
/// cache image already on this engine is left unnamed (the engine's own cache holds
/// what was built here), and pulled ones are named only when none was here.
pub(super) fn for_classic_builder(usable: &[Usable]) -> Vec<String> {
    if usable.iter().any(|u| u.was_here) {
        return Vec::new();
    }
    usable.iter().map(|u| u.image.clone()).collect()
}

/// The cache image a build made again, if it did: the same layers and the same
/// configuration. BuildKit writes its cache metadata into each image it exports,
/// and that metadata changes with every build of the same layers, so a build that
/// changed nothing would still make an image of its own; the job takes the cache
/// image instead, so that its push sends nothing new and jobs of the same content
/// share one image (and one ECS task definition).
pub(super) async fn identical_cache_image(docker: &Docker, built: &str, usable: &[Usable]) -> Option<String> {
    let what = |image: bollard::models::ImageInspect| {
        (image.root_fs.and_then(|r| r.layers), image.config, image.architecture, image.os, image.variant)
    };
    let built_is = what(docker.inspect_image(built).await.ok()?);
    for candidate in usable {
        let Ok(image) = docker.inspect_image(&candidate.image).await else { continue };
        let id = image.id.clone();
        if id.as_deref() == Some(built) || what(image) == built_is {
            return id;
        }
    }
    None
}

/// The cache keys of the images on the engine that Slipway built, newest first, at
/// most `max`: what a worker holds when it starts.
pub async fn cache_keys_on_engine(docker: &Docker, max: usize) -> Result<Vec<String>, StepError> {
    let filters = std::collections::HashMap::from([("label", vec![crate::docker::CACHE_KEY_LABEL.to_string()])]);
    let options = bollard::query_parameters::ListImagesOptionsBuilder::default().filters(&filters).build();
    let mut images = docker
        .list_images(Some(options))
        .await
        .map_err(|e| crate::docker::engine_error(e, crate::ErrorCode::EngineUnavailable, "cannot list images"))?;
    images.sort_by_key(|image| std::cmp::Reverse(image.created));
    let mut keys: Vec<String> = Vec::new();
    for key in images.iter().filter_map(|image| image.labels.get(crate::docker::CACHE_KEY_LABEL)) {
        if keys.len() == max {
            break;
        }
        if !keys.contains(key) {
            keys.push(key.clone());
        }
    }
    Ok(keys)
}
