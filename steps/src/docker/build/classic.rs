//! Progress of the classic builder: JSON messages whose `stream` carries the
//! output text, `Step N/M : …` lines naming each instruction (` ---> Using cache`
//! after one that came from cache), and the image id in `aux`.

use bollard::errors::Error as DockerError;
use bollard::models::{BuildInfo, BuildInfoAux};
use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use super::BuildLog;
use super::counting::{classic_step, is_classic_hit};
use crate::StepError;
use crate::docker::next_message;

/// Follows the build to its end; returns the image id if the engine sent it.
pub(super) async fn follow<S>(
    mut stream: S,
    log: &mut BuildLog<'_>,
    cancel: &CancellationToken,
) -> Result<Option<String>, StepError>
where
    S: Stream<Item = Result<BuildInfo, DockerError>> + Unpin,
{
    let mut splitter = log.logs.splitter();
    let mut image_id = None;
    // The step running is counted and not yet known to be a hit.
    let mut hit_possible = false;
    while let Some(item) = next_message(&mut stream, cancel).await? {
        let info = log.message(item)?;
        if let Some(text) = info.stream.as_deref() {
            for line in splitter.push(text.as_bytes()) {
                if let Some(counted) = classic_step(&line) {
                    log.instruction(&line);
                    // Counted as run until the builder says it used its cache.
                    if counted {
                        log.cache.step(false);
                    }
                    hit_possible = counted;
                } else if hit_possible && is_classic_hit(&line) {
                    log.cache.hits += 1;
                    hit_possible = false;
                }
                log.line(line).await;
            }
        }
        if let Some(BuildInfoAux::Default(aux)) = info.aux
            && let Some(id) = aux.id
        {
            image_id = Some(id);
        }
        if let Some(error) = info.error_detail.and_then(|d| d.message) {
            return Err(log.failed(&error));
        }
    }
    if let Some(rest) = splitter.finish() {
        log.line(rest).await;
    }
    Ok(image_id)
}
