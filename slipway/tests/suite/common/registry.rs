//! Container registries: the open one the test script started, and one with a password.

use super::*;

/// `s3cret`, hashed for the registry's htpasswd.
pub const REGISTRY_USER: &str = "slipway";
pub const REGISTRY_PASSWORD: &str = "s3cret";
const REGISTRY_HTPASSWD: &str = "slipway:$2b$12$cyOMsDjcyhjEc/A.uk9VsuUEf3vzCueXlyxtCtnuu4.0Q1lCpI5ye";

/// A `docker-registry` of the test's own that demands a password.
pub struct AuthRegistry {
    dir: tempfile::TempDir,
    pub addr: String,
    child: Child,
}

impl AuthRegistry {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        std::fs::write(dir.path().join("htpasswd"), REGISTRY_HTPASSWD).unwrap();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n\
             auth:\n  htpasswd:\n    realm: slipway-test\n    path: {root}/htpasswd\n",
            root = dir.path().display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        wait_for_port(port, Duration::from_secs(10));
        AuthRegistry { dir, addr, child }
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The open registry the test script started.
pub fn open_registry() -> String {
    env("SLIPWAY_TEST_REGISTRY")
}

/// A registry that is not one: it answers every request `401` with a basic-auth
/// challenge and records the `Authorization` headers it was sent.
pub struct RecordingRegistry {
    pub addr: String,
    pub authorizations: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl RecordingRegistry {
    pub async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let authorizations = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen, count) = (authorizations.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (seen, count) = (seen.clone(), count.clone());
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    let mut read = 0;
                    while !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buffer.len() {
                        match socket.read(&mut buffer[read..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read += n,
                        }
                    }
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let head = String::from_utf8_lossy(&buffer[..read]).to_string();
                    for line in head.lines() {
                        if line.to_ascii_lowercase().starts_with("authorization:") {
                            seen.lock().unwrap().push(line.to_string());
                        }
                    }
                    let answer = "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"r\"\r\n\
                                  Docker-Distribution-Api-Version: registry/2.0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        RecordingRegistry { addr, authorizations, requests }
    }
}
