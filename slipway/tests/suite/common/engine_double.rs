//! Docker engines gone wrong, on a Unix socket a worker is pointed at with
//! `DOCKER_HOST`: one that accepts connections and never answers (a wedged engine),
//! and one that passes everything to the real engine but BuildKit builds, which it
//! takes and never answers (a wedged BuildKit beside a working classic builder).
//! A real engine cannot be wedged on demand; these stand in for it.

use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// A socket serving until dropped; `docker_host()` names it.
pub struct EngineDouble {
    _dir: tempfile::TempDir,
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EngineDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EngineDouble {
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Accepts every connection and never writes a byte.
    pub fn wedged() -> Self {
        Self::serve(|client| async move {
            let mut client = client;
            let mut sink = [0u8; 8192];
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
        })
    }

    /// Forwards to the real engine, but a connection that asks for a BuildKit build
    /// (`POST …/build?…version=2`) gets no answer from then on.
    pub fn wedged_buildkit() -> Self {
        Self::serve(|client| async move {
            let Ok(engine) = UnixStream::connect(real_engine()).await else { return };
            let (mut from_client, mut to_client) = client.into_split();
            let (mut from_engine, mut to_engine) = engine.into_split();
            let answers = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_engine, &mut to_client).await;
            });
            let mut buf = vec![0u8; 64 * 1024];
            let mut wedged = false;
            loop {
                let n = match from_client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                let head = chunk.split(|b| *b == b'\n').next().unwrap_or_default();
                let text = String::from_utf8_lossy(head);
                // From then on nothing reaches the engine, so nothing comes back, and
                // the connection stays open: a wedged BuildKit.
                if text.starts_with("POST ") && text.contains("/build?") && text.contains("version=2") {
                    wedged = true;
                }
                if !wedged && to_engine.write_all(chunk).await.is_err() {
                    break;
                }
            }
            answers.abort();
        })
    }

    fn serve<F, Fut>(on_connection: F) -> Self
    where
        F: Fn(UnixStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(on_connection(client));
            }
        });
        EngineDouble { _dir: dir, path, task }
    }
}

/// The real engine's socket: `DOCKER_HOST` when it names one, else the default.
fn real_engine() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}
