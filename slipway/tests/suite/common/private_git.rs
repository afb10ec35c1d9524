//! Private repositories: a [`GitServer`]'s folder served over https with a token
//! (git http-backend behind a loopback TLS server whose self-signed certificate the
//! worker is given), and over ssh with a deploy key (Debian's sshd on loopback).

use super::*;

/// The folder's repositories over https, for `user` with `token` only.
pub struct HttpsGit {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl HttpsGit {
    pub fn start(root: &Path, user: &str, token: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/suite/common/files/git_https.py");
        let port = free_port();
        let child = Command::new("python3")
            .arg(script)
            .arg(root)
            .arg(port.to_string())
            .args([user, token])
            .arg(dir.path().join("cert.pem"))
            .arg(dir.path().join("key.pem"))
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 starts");
        wait_for_port(port, Duration::from_secs(10));
        HttpsGit { dir, port, child }
    }

    pub fn url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/{name}", self.port)
    }

    /// The certificate the worker must trust (`SSL_CERT_FILE`).
    pub fn ca_file(&self) -> String {
        self.dir.path().join("cert.pem").display().to_string()
    }
}

impl Drop for HttpsGit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The folder's repositories over ssh, for the holder of one deploy key.
pub struct SshGit {
    dir: tempfile::TempDir,
    pub port: u16,
    root: PathBuf,
    child: Child,
}

impl SshGit {
    pub fn start(root: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (file, comment) in [("host_key", "host"), ("deploy_key", "deploy")] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(d.join(file))
                .status()
                .unwrap();
            assert!(status.success(), "ssh-keygen");
        }
        std::fs::copy(d.join("deploy_key.pub"), d.join("authorized_keys")).unwrap();
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nStrictModes no\n\
             PermitRootLogin prohibit-password\nUsePAM no\nPidFile {d}/sshd.pid\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        // sshd's privilege separation folder.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd starts");
        wait_for_port(port, Duration::from_secs(10));
        SshGit { dir, port, root: root.to_path_buf(), child }
    }

    pub fn url(&self, name: &str) -> String {
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
        format!("ssh://{}@127.0.0.1:{}{}/{name}", user.trim(), self.port, self.root.display())
    }

    /// The deploy key's private half, as a secret holds it.
    pub fn deploy_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("deploy_key")).unwrap()
    }

    /// A home folder whose `known_hosts` knows this server, for the worker.
    pub fn home(&self) -> String {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        let host_key = std::fs::read_to_string(self.dir.path().join("host_key.pub")).unwrap();
        std::fs::write(home.join(".ssh/known_hosts"), format!("[127.0.0.1]:{} {host_key}", self.port)).unwrap();
        home.display().to_string()
    }
}

impl Drop for SshGit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
