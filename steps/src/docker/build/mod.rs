//! Build: the image from the checked-out repository, on the local Docker engine.
//!
//! The context is streamed to the engine as a tar made here (`context.rs`), from
//! inside the checkout only, bounded in size. The Dockerfile may sit outside the
//! context, as long as it is inside the repository; it is then added to the tar
//! under a private name. BuildKit runs the build when the engine offers
//! it ([`detect_builder`]), the classic builder otherwise; each has its own progress
//! format (`buildkit.rs`, `classic.rs`), turned into the same log lines and the
//! same count of steps taken from cache (`counting.rs`). Cache images are made
//! present first (`cache_import.rs`), and BuildKit writes its cache metadata into
//! the image (inline cache) so that other engines can reuse its layers. A failed
//! build names the instruction that failed and carries the last lines of output.

mod buildkit;
mod cache_import;
mod classic;
mod context;
mod counting;
mod ignore;
mod session;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use bollard::Docker;
use bollard::query_parameters::{BuildImageOptionsBuilder, BuilderVersion, TagImageOptionsBuilder};
use tokio_util::sync::CancellationToken;

pub use cache_import::{CacheSource, cache_keys_on_engine};

use crate::docker::push::RegistryCredentials;
use crate::docker::{CACHE_KEY_LABEL, INSTANCE_LABEL, engine_error, job_image_tag};
use crate::paths::resolve_inside;
use crate::{CacheCount, ErrorCode, LogSink, LogStream, StepError};

/// Lines of build output kept for the error of a failed build.
const TAIL_LINES: usize = 15;

#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub job_id: String,
    /// The installation, for the `slipway.instance` label.
    pub instance_id: String,
    /// The image reference to tag the result with.
    pub image: String,
    /// Relative to the repository root.
    pub dockerfile: String,
    /// Relative to the repository root.
    pub context: String,
    pub build_args: HashMap<String, String>,
    /// The most bytes of build context sent (`SLIPWAY_MAX_CONTEXT_BYTES`).
    pub max_context_bytes: u64,
    /// How long the engine may take to say anything about the build once it has
    /// the whole context (`SLIPWAY_BUILD_START_TIMEOUT`): an engine silent past it
    /// is wedged.
    pub start_timeout: std::time::Duration,
    /// What the build's containers may use (the worker's run limits); honoured by
    /// the classic builder only: BuildKit takes no resource limits per build.
    pub limits: crate::docker::run::RunLimits,
    /// A login for the registry of `image`, for base images pulled from there.
    pub registry_login: Option<RegistryCredentials>,
    /// BuildKit secret id → value, served to `RUN --mount=type=secret` through the
    /// build's session, never as a build argument.
    pub secrets: std::collections::BTreeMap<String, String>,
    /// Images whose layers the build may reuse, in order of preference.
    pub cache_from: Vec<CacheSource>,
    /// Build every step afresh: no layer of an earlier build is reused.
    pub no_cache: bool,
    /// The job's cache key, put on the image as [`CACHE_KEY_LABEL`].
    pub cache_key: Option<String>,
}

/// What a build made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// `sha256:…`.
    pub image_id: String,
    pub cache: CacheCount,
}

/// The build argument that makes BuildKit write its cache metadata into the image
/// (inline cache), so that a build elsewhere can reuse its layers once it is pushed.
/// The same value for every build: it changes no cache key.
const INLINE_CACHE: (&str, &str) = ("BUILDKIT_INLINE_CACHE", "1");

/// Builds with `builder` and returns the image id and the cache count.
pub async fn build_image(
    docker: &Docker,
    builder: Builder,
    checkout: &Path,
    request: &BuildRequest,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<Built, StepError> {
    if !request.secrets.is_empty() && builder == Builder::Classic {
        return Err(StepError::new(
            ErrorCode::BuildSecretsUnsupported,
            "the job names build_secrets, which only BuildKit serves, and this worker builds with the classic builder",
        ));
    }
    let context = resolve_inside(checkout, &request.context, "context")?;
    let dockerfile = resolve_inside(checkout, &request.dockerfile, "dockerfile")?;
    if !dockerfile.is_file() {
        return Err(StepError::new(
            ErrorCode::DockerfileMissing,
            format!("dockerfile `{}` is not a file", request.dockerfile),
        ));
    }
    if !context.is_dir() {
        return Err(StepError::new(
            ErrorCode::ContextMissing,
            format!("context `{}` is not a folder", request.context),
        ));
    }
    let ignore = {
        let context = context.clone();
        tokio::task::spawn_blocking(move || ignore::DockerIgnore::read(&context)).await.map_err(panicked)??
    };
    let usable = cache_import::usable(docker, &request.cache_from, logs, cancel).await?;
    let cache_from = match builder {
        Builder::BuildKit => usable.iter().map(|u| u.image.clone()).collect(),
        Builder::Classic => cache_import::for_classic_builder(&usable),
    };
    let mut build_args = request.build_args.clone();
    if builder == Builder::BuildKit {
        build_args.insert(INLINE_CACHE.0.to_string(), INLINE_CACHE.1.to_string());
    }
    let dockerfile_in_tar = context::dockerfile_in_tar(&context, &dockerfile);
    let name = match builder {
        Builder::BuildKit => "buildkit",
        Builder::Classic => "the classic builder",
    };
    logs.line(LogStream::System, format!("sending a build context to {name}")).await;
    // Stopped on a cancel, or when the engine says nothing within the start timeout.
    let stop = cancel.child_token();
    let packing = context::stream(context, dockerfile, ignore, request.max_context_bytes, stop.clone());

    // No job id among the labels: it would make every job's image its own.
    let mut labels = HashMap::from([(INSTANCE_LABEL.to_string(), request.instance_id.clone())]);
    if let Some(key) = &request.cache_key {
        labels.insert(CACHE_KEY_LABEL.to_string(), key.clone());
    }
    let options = BuildImageOptionsBuilder::default()
        .dockerfile(&dockerfile_in_tar)
        .t(&request.image)
        .buildargs(&build_args)
        .labels(&labels)
        .cachefrom(&cache_from)
        .nocache(request.no_cache)
        .rm(true)
        .forcerm(true);
    let mut chunks = packing.chunks;
    // The engine answers once it has the whole context: the start timeout runs from then.
    let uploaded = std::sync::Arc::new(tokio::sync::Notify::new());
    let body = {
        let uploaded = uploaded.clone();
        Some(bollard::body_try_stream(futures_util::stream::poll_fn(move |cx| {
            let chunk = chunks.poll_recv(cx);
            if let std::task::Poll::Ready(None) = chunk {
                uploaded.notify_one();
            }
            chunk
        })))
    };
    let started = AtomicBool::new(false);
    let mut log = BuildLog::new(logs, &started, &request.dockerfile);
    // The session id only has to be unique among the engine's running builds.
    let session_id = format!("slipway-{}-{}", request.job_id, std::process::id());
    let registry = registry_of(request);
    // A build that needs secrets has a session of Slipway's own (see `session`).
    let _own_session = match builder {
        Builder::BuildKit if !request.secrets.is_empty() => {
            let served = session::Served { secrets: request.secrets.clone(), registry: registry.clone() };
            match session::open(&session_id, served).await {
                Ok(session) => Some(session),
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            }
        }
        _ => None,
    };
    let credentials = registry.map(|(host, login)| HashMap::from([(host.clone(), login.for_engine(Some(host)))]));
    let follow = async {
        match builder {
            Builder::BuildKit => {
                let options = options.version(BuilderVersion::BuilderBuildKit).session(&session_id).build();
                let build = docker.build_image(options, credentials, body);
                buildkit::follow(std::pin::pin!(build), &mut log, &stop).await
            }
            Builder::Classic => {
                // The engine's API takes 32-bit numbers here: memory past 2 GiB is cut to it.
                let memory = request.limits.memory_bytes.min(i64::from(i32::MAX)) as i32;
                let quota = (request.limits.nano_cpus / 10_000).min(i64::from(i32::MAX)) as i32;
                let options = options.memory(memory).memswap(memory).cpuperiod(100_000).cpuquota(quota).build();
                let build = docker.build_image(options, credentials, body);
                classic::follow(std::pin::pin!(build), &mut log, &stop).await
            }
        }
    };
    let silent = async {
        uploaded.notified().await;
        tokio::time::sleep(request.start_timeout).await;
        if !started.load(Ordering::Relaxed) {
            stop.cancel();
        }
        std::future::pending::<()>().await
    };
    let built = tokio::select! {
        built = follow => built,
        () = silent => unreachable!("the watch never ends"),
    };
    if stop.is_cancelled() && !cancel.is_cancelled() {
        let _ = packing.packer.await;
        return Err(StepError::new(
            ErrorCode::EngineUnavailable,
            format!(
                "{name} said nothing about the build within {:?} (SLIPWAY_BUILD_START_TIMEOUT)",
                request.start_timeout
            ),
        ));
    }
    // The build is over (or stopped): the engine no longer reads, and the packer
    // ends. A cancel is the reason whatever else failed; a context over its limit
    // is the reason the build failed; a packer that only saw the engine stop
    // reading says less than the build's own error.
    let packed = packing.packer.await.map_err(panicked)?;
    if cancel.is_cancelled() {
        return Err(StepError::cancelled());
    }
    let image_id = match (built, packed) {
        (Err(e), Err(why)) if why.code != ErrorCode::ContextTooLarge => return Err(e),
        (Err(_), Err(why)) => return Err(why),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(_), Err(why)) => return Err(why),
        (Ok(id), Ok(bytes)) => {
            logs.line(LogStream::System, format!("sent a build context of {bytes} bytes")).await;
            id
        }
    };
    let image_id = match image_id {
        Some(id) => id,
        // Engines that do not send the id: ask for the tag.
        None => docker
            .inspect_image(&request.image)
            .await
            .map_err(|e| engine_error(e, ErrorCode::BuildFailed, "the built image cannot be found"))?
            .id
            .ok_or_else(|| StepError::new(ErrorCode::BuildFailed, "the engine reported no image id"))?,
    };
    let cache = log.cache;
    logs.line(LogStream::System, format!("build: {cache}")).await;
    let image_id = match cache_import::identical_cache_image(docker, &image_id, &usable).await {
        Some(same) if same != image_id => {
            let image: crate::image_ref::ImageRef = request
                .image
                .parse()
                .map_err(|why| StepError::new(ErrorCode::Internal, format!("image `{}` {why}", request.image)))?;
            tag(docker, &same, &image.name(), &image.tag).await?;
            logs.line(LogStream::System, format!("build: the same layers and configuration as {same}: using it")).await;
            same
        }
        _ => image_id,
    };
    let (repo, job_tag) = job_image_tag(&request.instance_id, &request.job_id);
    tag(docker, &image_id, &repo, &job_tag).await?;
    Ok(Built { image_id, cache })
}

/// Tags `image_id` as `repo:tag`.
async fn tag(docker: &Docker, image_id: &str, repo: &str, tag: &str) -> Result<(), StepError> {
    let options = TagImageOptionsBuilder::default().repo(repo).tag(tag).build();
    docker
        .tag_image(image_id, Some(options))
        .await
        .map_err(|e| engine_error(e, ErrorCode::BuildFailed, &format!("cannot tag the built image as {repo}:{tag}")))
}

/// The registry of the job's image and the job's login for it, if it has one: base
/// images pulled from that registry use it; no other registry gets it.
fn registry_of(request: &BuildRequest) -> Option<(String, RegistryCredentials)> {
    let login = request.registry_login.clone()?;
    let image: crate::image_ref::ImageRef = request.image.parse().ok()?;
    Some((image.registry?, login))
}

/// Which builder runs the engine's builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    /// BuildKit, through a session the build opens on the engine.
    BuildKit,
    /// The engine's first builder, for engines without BuildKit.
    Classic,
}

impl std::str::FromStr for Builder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "buildkit" => Ok(Builder::BuildKit),
            "classic" => Ok(Builder::Classic),
            other => Err(format!("`{other}` is not a builder; use buildkit or classic")),
        }
    }
}

/// BuildKit when the engine offers it: a Linux engine with API 1.39 (Docker 18.09)
/// or newer; the classic builder otherwise.
pub async fn detect_builder(docker: &Docker) -> Result<Builder, StepError> {
    let version = docker
        .version()
        .await
        .map_err(|e| engine_error(e, ErrorCode::EngineUnavailable, "cannot read the engine's version"))?;
    let api = version.api_version.unwrap_or_default();
    let linux = version.os.as_deref().is_none_or(|os| os == "linux");
    Ok(if linux && api_at_least(&api, (1, 39)) { Builder::BuildKit } else { Builder::Classic })
}

fn api_at_least(version: &str, wanted: (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= wanted
}

/// The build's output on its way to the job's log, with what a failure message
/// needs: the instruction that ran last and the last lines.
struct BuildLog<'a> {
    logs: &'a LogSink,
    tail: VecDeque<String>,
    instruction: Option<String>,
    /// Set at the engine's first message about the build.
    started: &'a AtomicBool,
    /// The Dockerfile's path, to name it when it does not parse.
    dockerfile: &'a str,
    /// The steps seen to end so far, and how many came from cache.
    cache: CacheCount,
}

impl<'a> BuildLog<'a> {
    fn new(logs: &'a LogSink, started: &'a AtomicBool, dockerfile: &'a str) -> Self {
        BuildLog {
            logs,
            tail: VecDeque::with_capacity(TAIL_LINES),
            instruction: None,
            started,
            dockerfile,
            cache: CacheCount::default(),
        }
    }

    async fn line(&mut self, line: String) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        self.logs.line(LogStream::System, line).await;
    }

    /// Notes the instruction now running (`Step 2/3 : RUN …`, `[2/3] RUN …`).
    fn instruction(&mut self, name: &str) {
        self.instruction = Some(name.to_string());
    }

    /// A progress message, or the build's end: an error the engine reported in the
    /// stream is the build failing; any other error means the engine could not run it.
    fn message<T>(&self, item: Result<T, bollard::errors::Error>) -> Result<T, StepError> {
        self.started.store(true, Ordering::Relaxed);
        item.map_err(|e| match crate::docker::stream_error(&e) {
            Some(message) => self.failed(message),
            None => {
                let refused = engine_error(e, ErrorCode::BuildFailed, "the build was refused");
                dockerfile_error(&refused.message, self.dockerfile).unwrap_or(refused)
            }
        })
    }

    /// A failed build, naming the failing instruction and the last lines of output.
    fn failed(&self, error: &str) -> StepError {
        if let Some(invalid) = dockerfile_error(error, self.dockerfile) {
            return invalid;
        }
        let at = self.instruction.as_ref().map(|s| format!(" at `{s}`")).unwrap_or_default();
        let tail: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        StepError::new(ErrorCode::BuildFailed, format!("build failed{at}: {error}\nlast output:\n{}", tail.join("\n")))
    }
}

/// A Dockerfile the engine could not parse, said with the line the engine names
/// (its words end `… dockerfile parse error line 3: unknown instruction: RUNN`), not
/// as whatever stage of the build noticed it.
fn dockerfile_error(engine: &str, dockerfile: &str) -> Option<StepError> {
    const MARK: &str = "parse error";
    let at = engine.to_ascii_lowercase().find(&format!("dockerfile {MARK}"))? + "dockerfile ".len() + MARK.len();
    let detail = engine[at..].trim_start_matches([' ', ':']).trim_start_matches("on ");
    Some(StepError::new(ErrorCode::DockerfileInvalid, format!("{dockerfile} does not parse: {detail}")))
}

fn panicked(e: tokio::task::JoinError) -> StepError {
    StepError::new(ErrorCode::Internal, format!("packing the build context panicked: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dockerfile_that_does_not_parse_is_named_with_its_line() {
        let engine = "failed to solve with frontend dockerfile.v0: failed to create LLB definition: \
                      dockerfile parse error line 3: unknown instruction: RUNN";
        let error = dockerfile_error(engine, "build/Dockerfile").unwrap();
        assert_eq!(error.code, ErrorCode::DockerfileInvalid);
        assert_eq!(error.message, "build/Dockerfile does not parse: line 3: unknown instruction: RUNN");
        assert!(dockerfile_error("process did not complete successfully: exit code: 7", "Dockerfile").is_none());
    }

    #[test]
    fn buildkit_needs_api_1_39() {
        assert!(api_at_least("1.41", (1, 39)));
        assert!(api_at_least("1.39", (1, 39)));
        assert!(!api_at_least("1.38", (1, 39)));
        assert!(api_at_least("2.0", (1, 39)));
        assert!(!api_at_least("", (1, 39)));
    }
}
