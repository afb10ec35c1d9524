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
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\nhttp:\n  addr: {addr}\n\
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
