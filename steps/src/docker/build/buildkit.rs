//! Progress of a BuildKit build: status messages (base64 protobuf in `aux`) that
//! report vertices (one per instruction or internal operation) starting, ending,
//! failing, and their output. They are turned into lines in the style of
//! `docker build`'s plain progress: `#3 [2/3] COPY busybox /bin/busybox`, then the
//! vertex's output prefixed with `#3`, then `#3 DONE` or `#3 CACHED`; the
//! instructions' ends are counted for the build's cache hits.

use std::collections::HashMap;

use bollard::errors::Error as DockerError;
use bollard::moby::buildkit::v1::StatusResponse;
use bollard::models::{BuildInfo, BuildInfoAux};
use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use super::BuildLog;
use super::counting::is_buildkit_step;
use crate::StepError;
use crate::docker::next_message;
use crate::logs::LineSplitter;

/// What has been said of each vertex so far.
#[derive(Default)]
struct Vertices {
    /// Vertex digest → its number in the log, in the order vertices appeared.
    numbers: HashMap<String, usize>,
    names: HashMap<String, String>,
    announced: HashMap<String, bool>,
    finished: HashMap<String, bool>,
    output: HashMap<String, LineSplitter>,
    /// The first vertex that reported an error.
    failure: Option<String>,
}

impl Vertices {
    fn number(&mut self, digest: &str) -> usize {
        let next = self.numbers.len() + 1;
        *self.numbers.entry(digest.to_string()).or_insert(next)
    }

    /// The log lines a status message adds.
    fn lines(&mut self, status: StatusResponse, log: &mut BuildLog<'_>) -> Vec<String> {
        let mut lines = Vec::new();
        for vertex in status.vertexes {
            let n = self.number(&vertex.digest);
            self.names.insert(vertex.digest.clone(), vertex.name.clone());
            if vertex.started.is_some() && !self.announced.get(&vertex.digest).copied().unwrap_or(false) {
                self.announced.insert(vertex.digest.clone(), true);
                lines.push(format!("#{n} {}", vertex.name));
                if vertex.name.starts_with('[') && self.failure.is_none() {
                    log.instruction(&vertex.name);
                }
            }
            if !vertex.error.is_empty() {
                lines.push(format!("#{n} ERROR: {}", vertex.error));
                if self.failure.is_none() {
                    // The failing vertex is the instruction a failure message names.
                    log.instruction(&vertex.name);
                    self.failure = Some(vertex.name.clone());
                }
            } else if vertex.completed.is_some() && !self.finished.get(&vertex.digest).copied().unwrap_or(false) {
                self.finished.insert(vertex.digest.clone(), true);
                if is_buildkit_step(&vertex.name) {
                    log.cache.step(vertex.cached);
                }
                lines.push(format!("#{n} {}", if vertex.cached { "CACHED" } else { "DONE" }));
            }
        }
        for entry in status.logs {
            let n = self.number(&entry.vertex);
            let splitter = self.output.entry(entry.vertex.clone()).or_insert_with(|| log.logs.splitter());
            lines.extend(splitter.push(&entry.msg).into_iter().map(|l| format!("#{n} {l}")));
        }
        lines
    }
}

/// Follows the build to its end; returns the image id if the engine sent it.
pub(super) async fn follow<S>(
    mut stream: S,
    log: &mut BuildLog<'_>,
    cancel: &CancellationToken,
) -> Result<Option<String>, StepError>
where
    S: Stream<Item = Result<BuildInfo, DockerError>> + Unpin,
{
    let mut vertices = Vertices::default();
    let mut image_id = None;
    while let Some(item) = next_message(&mut stream, cancel).await? {
        let info = log.message(item)?;
        match info.aux {
            Some(BuildInfoAux::BuildKit(status)) => {
                for line in vertices.lines(status, log) {
                    log.line(line).await;
                }
            }
            Some(BuildInfoAux::Default(aux)) => image_id = aux.id.or(image_id),
            None => {}
        }
        if let Some(error) = info.error_detail.and_then(|d| d.message) {
            return Err(log.failed(&error));
        }
    }
    Ok(image_id)
}
