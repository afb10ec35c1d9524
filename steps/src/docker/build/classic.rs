//! Progress of the classic builder: JSON messages whose `stream` carries the
//! output text, `Step N/M : …` lines naming each instruction, and the image id in
//! `aux`.

use bollard::errors::Error as DockerError;
use bollard::models::{BuildInfo, BuildInfoAux};
use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use super::BuildLog;
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
    while let Some(item) = next_message(&mut stream, cancel).await? {
        let info = log.message(item)?;
        if let Some(text) = info.stream.as_deref() {
            for line in splitter.push(text.as_bytes()) {
                if line.starts_with("Step ") {
                    log.instruction(&line);
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
