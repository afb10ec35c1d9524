//! Build: the image from the checked-out repository, on the local Docker engine.
//!
//! The context is sent as a tar made here, from inside the checkout only (symlinks
//! are sent as links, never followed, and `.git` is left out). The Dockerfile may
//! sit outside the context, as long as it is inside the repository; it is then added
//! to the tar under a private name. A failed build names the instruction that failed
//! and carries the last lines of its output.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use tokio_util::sync::CancellationToken;

use crate::docker::{JOB_LABEL, engine_error, next_message, stream_error};
use crate::logs::LineSplitter;
use crate::paths::resolve_inside;
use crate::{ErrorCode, LogSink, LogStream, StepError};

/// Lines of build output kept for the error of a failed build.
const TAIL_LINES: usize = 15;
/// The Dockerfile's name in the tar when it lies outside the context.
const OUTSIDE_DOCKERFILE: &str = ".slipway.Dockerfile";

#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub job_id: String,
    /// The image reference to tag the result with.
    pub image: String,
    /// Relative to the repository root.
    pub dockerfile: String,
    /// Relative to the repository root.
    pub context: String,
    pub build_args: HashMap<String, String>,
}

/// Builds and returns the image id (`sha256:…`).
pub async fn build_image(
    docker: &Docker,
    checkout: &Path,
    request: &BuildRequest,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<String, StepError> {
    let context = resolve_inside(checkout, &request.context, "context")?;
    let dockerfile = resolve_inside(checkout, &request.dockerfile, "dockerfile")?;
    if !dockerfile.is_file() {
        return Err(StepError::new(
            ErrorCode::DockerfileMissing,
            format!("dockerfile `{}` is not a file", request.dockerfile),
        ));
    }
    let (tar, dockerfile_in_tar) = tokio::task::spawn_blocking(move || pack_context(&context, &dockerfile))
        .await
        .map_err(|e| StepError::new(ErrorCode::Internal, format!("packing the context panicked: {e}")))??;
    logs.line(
        LogStream::System,
        format!("sending a build context of {} bytes", tar.len()),
    )
    .await;

    let labels = HashMap::from([(JOB_LABEL.to_string(), request.job_id.clone())]);
    let options = BuildImageOptionsBuilder::default()
        .dockerfile(&dockerfile_in_tar)
        .t(&request.image)
        .buildargs(&request.build_args)
        .labels(&labels)
        .rm(true)
        .forcerm(true)
        .build();
    let mut stream = std::pin::pin!(docker.build_image(options, None, Some(bollard::body_full(tar.into()))));

    let mut splitter = LineSplitter::default();
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let mut current_instruction: Option<String> = None;
    let mut image_id = None;
    while let Some(item) = next_message(&mut stream, cancel).await? {
        let info = match item {
            Ok(info) => info,
            Err(e) => match stream_error(&e) {
                Some(message) => return Err(build_failed(message, current_instruction, tail)),
                None => return Err(engine_error(e, ErrorCode::BuildFailed, "the build was refused")),
            },
        };
        if let Some(text) = info.stream.as_deref() {
            for line in splitter.push(text.as_bytes()) {
                if line.starts_with("Step ") {
                    current_instruction = Some(line.clone());
                }
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
                logs.line(LogStream::System, line).await;
            }
        }
        if let Some(id) = info.aux.and_then(|aux| aux.id) {
            image_id = Some(id);
        }
        if let Some(error) = info.error_detail.and_then(|d| d.message) {
            return Err(build_failed(&error, current_instruction, tail));
        }
    }
    if let Some(rest) = splitter.finish() {
        logs.line(LogStream::System, rest).await;
    }
    match image_id {
        Some(id) => Ok(id),
        // Older engines do not send the id in `aux`: ask for the tag.
        None => docker
            .inspect_image(&request.image)
            .await
            .map_err(|e| engine_error(e, ErrorCode::BuildFailed, "the built image cannot be found"))?
            .id
            .ok_or_else(|| StepError::new(ErrorCode::BuildFailed, "the engine reported no image id")),
    }
}

/// A failed build, naming the instruction that failed and the last lines of output.
fn build_failed(error: &str, instruction: Option<String>, tail: VecDeque<String>) -> StepError {
    let at = instruction.map(|s| format!(" at `{s}`")).unwrap_or_default();
    let tail: Vec<String> = tail.into_iter().collect();
    StepError::new(
        ErrorCode::BuildFailed,
        format!("build failed{at}: {error}\nlast output:\n{}", tail.join("\n")),
    )
}

/// Tars `context` (without `.git`) and returns it with the Dockerfile's path inside it.
fn pack_context(context: &Path, dockerfile: &Path) -> Result<(Vec<u8>, String), StepError> {
    let fail = |e: std::io::Error| {
        StepError::new(ErrorCode::Internal, format!("cannot pack the build context: {e}")).with_source(e)
    };
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    for entry in std::fs::read_dir(context).map_err(fail)? {
        let entry = entry.map_err(fail)?;
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let path = entry.path();
        if entry.file_type().map_err(fail)?.is_dir() {
            tar.append_dir_all(&name, &path).map_err(fail)?;
        } else {
            tar.append_path_with_name(&path, &name).map_err(fail)?;
        }
    }
    let inside: Option<PathBuf> = dockerfile.strip_prefix(context).ok().map(Path::to_path_buf);
    let name = match inside {
        Some(relative) => relative.to_string_lossy().into_owned(),
        None => {
            tar.append_path_with_name(dockerfile, OUTSIDE_DOCKERFILE)
                .map_err(fail)?;
            OUTSIDE_DOCKERFILE.to_string()
        }
    };
    let bytes = tar.into_inner().map_err(fail)?;
    Ok((bytes, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar);
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn packs_the_context_without_git_and_adds_an_outside_dockerfile() {
        let repo = tempfile::tempdir().unwrap();
        let app = repo.path().join("app");
        std::fs::create_dir_all(app.join(".git")).unwrap();
        std::fs::create_dir_all(app.join("src")).unwrap();
        std::fs::write(app.join("src/main.txt"), "x").unwrap();
        std::fs::write(app.join(".git/HEAD"), "x").unwrap();
        std::fs::write(repo.path().join("Dockerfile"), "FROM scratch").unwrap();

        let (tar, name) = pack_context(&app, &repo.path().join("Dockerfile")).unwrap();
        assert_eq!(name, OUTSIDE_DOCKERFILE);
        assert_eq!(names(&tar), vec![OUTSIDE_DOCKERFILE, "src/", "src/main.txt"]);

        std::fs::write(app.join("Dockerfile"), "FROM scratch").unwrap();
        let (_, name) = pack_context(&app, &app.join("Dockerfile")).unwrap();
        assert_eq!(name, "Dockerfile");
    }
}
