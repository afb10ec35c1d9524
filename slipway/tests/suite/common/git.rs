//! Git repositories made by the tests and served by `git daemon` on loopback.

use super::*;

/// A Dockerfile whose image prints `hello $GREETING`.
pub const BUSYBOX_DOCKERFILE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"sh\", \"-c\", \"echo hello $GREETING; echo done >&2\"]\n";

/// A folder of repositories served by `git daemon` on loopback.
pub struct GitServer {
    root: tempfile::TempDir,
    port: u16,
    child: Child,
}

/// What a repository file is.
pub enum Entry<'a> {
    Text(&'a str),
    Busybox,
    Symlink(&'a str),
    /// A file of this many zero bytes.
    Zeros(usize),
    /// A file of this many bytes that do not compress (a fixed pseudo-random sequence).
    Noise(usize),
}

impl GitServer {
    pub fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let port = free_port();
        // `git-daemon` itself, not `git daemon`: the wrapper would leave the daemon
        // running when it is killed.
        let child = Command::new(git_daemon())
            .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", root.path().display()))
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        wait_for_port(port, Duration::from_secs(10));
        GitServer { root, port, child }
    }

    /// Makes a repository with one commit on `main` and returns its URL.
    pub fn repo(&self, name: &str, files: &[(&str, Entry)]) -> String {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &["init", "-q", "-b", "main"]);
        for (path, entry) in files {
            let target = dir.join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            match entry {
                Entry::Text(text) => std::fs::write(&target, text).unwrap(),
                Entry::Busybox => {
                    std::fs::copy(env("SLIPWAY_TEST_BUSYBOX"), &target).unwrap();
                }
                Entry::Symlink(to) => std::os::unix::fs::symlink(to, &target).unwrap(),
                Entry::Zeros(len) => std::fs::write(&target, vec![0u8; *len]).unwrap(),
                Entry::Noise(len) => {
                    let mut state = 0x2545_f491_4f6c_dd1d_u64;
                    let bytes: Vec<u8> = (0..*len)
                        .map(|_| {
                            state ^= state << 13;
                            state ^= state >> 7;
                            state ^= state << 17;
                            (state >> 24) as u8
                        })
                        .collect();
                    std::fs::write(&target, bytes).unwrap()
                }
            }
        }
        git(&dir, &["add", "-A"]);
        git(&dir, &["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "init"]);
        self.url(name)
    }

    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// The folder the repositories are in (other servers may serve it too).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Adds repository `module` as a submodule of `repo` at `path`, by the relative
    /// URL `../<module>`, and commits it.
    pub fn add_submodule(&self, repo: &str, module: &str, path: &str) {
        let dir = self.root.path().join(repo);
        let url = format!("../{module}");
        git(&dir, &["-c", "protocol.file.allow=always", "submodule", "add", "-q", &url, path]);
        git(&dir, &["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "submodule"]);
    }

    pub fn head(&self, name: &str) -> String {
        let out =
            Command::new("git").args(["rev-parse", "HEAD"]).current_dir(self.root.path().join(name)).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `git-daemon` program, from git's own folder of commands.
fn git_daemon() -> PathBuf {
    let out = Command::new("git").arg("--exec-path").output().expect("git runs");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("git-daemon")
}

/// Runs git in `dir`; the test fails if it does.
pub fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git").args(args).current_dir(dir).status().unwrap();
    assert!(status.success(), "git {args:?} failed");
}

/// A repository whose image prints `hello $GREETING`.
pub fn app_repo(git: &GitServer, name: &str) -> String {
    git.repo(name, &[("Dockerfile", Entry::Text(BUSYBOX_DOCKERFILE)), ("busybox", Entry::Busybox)])
}

/// A repository whose build takes `seconds` (a `RUN sleep`), then runs `hello`.
/// The `RUN` step is unique to the repository, so that no build cache skips it.
pub fn slow_build_repo(git: &GitServer, name: &str, seconds: u32) -> String {
    let dockerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo {}; /bin/busybox sleep {seconds}\"]\n\
         CMD [\"/bin/busybox\", \"echo\", \"hello\"]\n",
        unique("build-")
    );
    git.repo(name, &[("Dockerfile", Entry::Text(&dockerfile)), ("busybox", Entry::Busybox)])
}
