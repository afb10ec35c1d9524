//! The build context, streamed: a tar made from inside the checkout only (symlinks
//! sent as links, never followed; `.git` and what `.dockerignore` excludes left
//! out), written in chunks to the engine while it reads, so that a repository of
//! any size never sits whole in memory. The packer stops at the size limit
//! (`context_too_large`), at a cancel, and when the engine stops reading.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ignore::DockerIgnore;
use crate::{ErrorCode, StepError};

/// The Dockerfile's name in the tar when it lies outside the context.
pub const OUTSIDE_DOCKERFILE: &str = ".slipway.Dockerfile";
/// Bytes of tar in one chunk sent to the engine.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks written but not yet taken by the engine, at most.
const CHUNKS_IN_FLIGHT: usize = 16;

/// A context being packed and sent.
pub struct ContextStream {
    /// The tar's chunks, for the engine's request body.
    pub chunks: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    /// The packer: the bytes it sent, or why it stopped.
    pub packer: tokio::task::JoinHandle<Result<u64, StepError>>,
}

/// The Dockerfile's path inside the tar.
pub fn dockerfile_in_tar(context: &Path, dockerfile: &Path) -> String {
    match dockerfile.strip_prefix(context) {
        Ok(relative) => relative.to_string_lossy().into_owned(),
        Err(_) => OUTSIDE_DOCKERFILE.to_string(),
    }
}

/// Starts packing `context` on a blocking thread, at most `limit` bytes of tar.
pub fn stream(
    context: PathBuf,
    dockerfile: PathBuf,
    ignore: DockerIgnore,
    limit: u64,
    cancel: CancellationToken,
) -> ContextStream {
    let (tx, chunks) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let packer = tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK_BYTES), sent: 0, limit, cancel };
        let packed = pack(&context, &dockerfile, &ignore, &mut out).and_then(|()| {
            out.send_buffered().map_err(stopped)?;
            Ok(out.sent)
        });
        if let Err(e) = &packed {
            // The engine's request fails with the body; the build's error names why.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.message.clone())));
        }
        packed
    });
    ContextStream { chunks, packer }
}

/// Writes the tar of `context` to `out`: the Dockerfile and the `.dockerignore` are
/// always sent, as the engine's own client does.
pub fn pack(context: &Path, dockerfile: &Path, ignore: &DockerIgnore, out: &mut impl Write) -> Result<(), StepError> {
    let inside: Option<PathBuf> = dockerfile.strip_prefix(context).ok().map(Path::to_path_buf);
    let keep: Vec<String> =
        [Some(".dockerignore".to_string()), inside.as_ref().map(|p| p.to_string_lossy().into_owned())]
            .into_iter()
            .flatten()
            .collect();
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    add_folder(&mut tar, context, "", ignore, &keep).map_err(stopped)?;
    if inside.is_none() {
        tar.append_path_with_name(dockerfile, OUTSIDE_DOCKERFILE).map_err(stopped)?;
    }
    tar.finish().map_err(stopped)
}

/// Adds the entries of `folder` (at `prefix` in the tar), in name order.
fn add_folder<W: Write>(
    tar: &mut tar::Builder<W>,
    folder: &Path,
    prefix: &str,
    ignore: &DockerIgnore,
    keep: &[String],
) -> std::io::Result<()> {
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(folder)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        if prefix.is_empty() && name == ".git" {
            continue;
        }
        // Matching may be slow on hostile patterns: a cancel is heard between entries.
        tar.get_mut().flush()?;
        let kept = keep.iter().any(|k| *k == path || k.starts_with(&format!("{path}/")));
        let excluded = ignore.excludes(&path) && !kept;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if excluded && !ignore.has_exceptions() {
                continue;
            }
            if !excluded {
                tar.append_dir(&path, entry.path())?;
            }
            add_folder(tar, &entry.path(), &path, ignore, keep)?;
        } else if !excluded {
            tar.append_path_with_name(entry.path(), &path)?;
        }
    }
    Ok(())
}

/// Why packing stopped early, carried through the tar writer's I/O errors.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("the build context is larger than {0} bytes")]
    TooLarge(u64),
    #[error("cancelled")]
    Cancelled,
    #[error("the engine stopped reading the build context")]
    EngineGone,
}

fn stopped(e: std::io::Error) -> StepError {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Stop>()) {
        Some(Stop::TooLarge(limit)) => StepError::new(
            ErrorCode::ContextTooLarge,
            format!(
                "the build context is larger than {limit} bytes (SLIPWAY_MAX_CONTEXT_BYTES); leave out what the image does not need with .dockerignore"
            ),
        ),
        Some(Stop::Cancelled) => StepError::cancelled(),
        Some(Stop::EngineGone) => {
            StepError::new(ErrorCode::BuildFailed, "the engine stopped reading the build context")
        }
        None => StepError::new(ErrorCode::Internal, format!("cannot pack the build context: {e}")).with_source(e),
    }
}

/// Sends what is written in chunks, counting it against the limit.
struct ChunkWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
    sent: u64,
    limit: u64,
    cancel: CancellationToken,
}

impl ChunkWriter {
    fn send_buffered(&mut self) -> std::io::Result<()> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other(Stop::Cancelled));
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_BYTES)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::other(Stop::EngineGone))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.sent += data.len() as u64;
        if self.sent > self.limit {
            return Err(std::io::Error::other(Stop::TooLarge(self.limit)));
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK_BYTES {
            self.send_buffered()?;
        }
        Ok(data.len())
    }

    /// Sends nothing early; only says whether to stop (a cancel).
    fn flush(&mut self) -> std::io::Result<()> {
        if self.cancel.is_cancelled() { Err(std::io::Error::other(Stop::Cancelled)) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar);
        let mut names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    fn packed(context: &Path, dockerfile: &Path) -> Vec<u8> {
        let ignore = DockerIgnore::read(context).unwrap();
        let mut tar = Vec::new();
        pack(context, dockerfile, &ignore, &mut tar).unwrap();
        tar
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

        let outside = repo.path().join("Dockerfile");
        assert_eq!(dockerfile_in_tar(&app, &outside), OUTSIDE_DOCKERFILE);
        assert_eq!(names(&packed(&app, &outside)), vec![OUTSIDE_DOCKERFILE, "src", "src/main.txt"]);
        assert_eq!(dockerfile_in_tar(&app, &app.join("Dockerfile")), "Dockerfile");
    }

    #[test]
    fn leaves_out_what_dockerignore_says_but_never_the_dockerfile() {
        let app = tempfile::tempdir().unwrap();
        let root = app.path();
        std::fs::create_dir_all(root.join("target/debug")).unwrap();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("target/debug/big"), "x").unwrap();
        std::fs::write(root.join("src/main.rs"), "x").unwrap();
        std::fs::write(root.join("src/notes.log"), "x").unwrap();
        std::fs::write(root.join("Dockerfile"), "FROM scratch").unwrap();
        std::fs::write(root.join(".dockerignore"), "target\n**/*.log\nDockerfile\n").unwrap();
        let tar = packed(root, &root.join("Dockerfile"));
        assert_eq!(names(&tar), vec![".dockerignore", "Dockerfile", "src", "src/main.rs"]);
    }

    /// Reads the stream as the engine would, keeping only the count.
    async fn drain(mut context: ContextStream) -> (u64, Result<u64, StepError>) {
        let mut read = 0;
        while let Some(chunk) = context.chunks.recv().await {
            match chunk {
                Ok(bytes) => read += bytes.len() as u64,
                Err(_) => break,
            }
        }
        drop(context.chunks);
        (read, context.packer.await.unwrap())
    }

    fn pack_app(app: &Path, limit: u64) -> ContextStream {
        stream(app.to_path_buf(), app.join("Dockerfile"), DockerIgnore::default(), limit, CancellationToken::new())
    }

    #[tokio::test]
    async fn a_context_over_the_limit_stops_with_context_too_large_having_sent_no_more() {
        let app = tempfile::tempdir().unwrap();
        std::fs::write(app.path().join("Dockerfile"), "FROM scratch").unwrap();
        // Zeros written out (a sparse file would travel as a sparse entry, small).
        std::fs::write(app.path().join("zeros"), vec![0u8; 32 << 20]).unwrap();
        let limit = 8 << 20;
        let (read, packed) = drain(pack_app(app.path(), limit)).await;
        assert_eq!(packed.unwrap_err().code, ErrorCode::ContextTooLarge);
        assert!(read <= limit, "{read} bytes sent past the limit of {limit}");

        // Under the limit, every byte arrives and the count says so.
        std::fs::remove_file(app.path().join("zeros")).unwrap();
        let (read, packed) = drain(pack_app(app.path(), limit)).await;
        assert_eq!(packed.unwrap(), read);
    }

    #[tokio::test]
    async fn a_cancel_or_an_engine_that_stops_reading_stops_the_packer() {
        let app = tempfile::tempdir().unwrap();
        std::fs::write(app.path().join("Dockerfile"), "FROM scratch").unwrap();
        std::fs::write(app.path().join("zeros"), vec![0u8; 32 << 20]).unwrap();
        let cancel = CancellationToken::new();
        let context = stream(
            app.path().to_path_buf(),
            app.path().join("Dockerfile"),
            DockerIgnore::default(),
            u64::MAX,
            cancel.clone(),
        );
        // Nobody reads: the packer waits on a full channel until told to stop.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        cancel.cancel();
        let started = std::time::Instant::now();
        let ContextStream { chunks, packer } = context;
        drop(chunks);
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(1), packer).await.unwrap().unwrap();
        assert!(stopped.is_err(), "a stopped packer reports why");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
