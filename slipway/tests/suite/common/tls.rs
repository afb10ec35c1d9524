//! The test process's own CA, made with `slipway certs init`, and certificates
//! issued from it with `slipway certs issue`, once per name.

use std::sync::{Mutex, OnceLock};

use super::*;

/// The CA folder of this test process.
pub fn test_ca() -> &'static Path {
    static CA: OnceLock<tempfile::TempDir> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        certs(&["init", &dir.path().display().to_string()]);
        dir
    })
    .path()
}

/// The `SLIPWAY_TLS_*` settings of a worker named `name`, or of an orchestrator.
pub fn tls_env(role: TlsRole) -> BTreeMap<&'static str, String> {
    static ISSUED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let (flag, name) = match role {
        TlsRole::Worker(name) => ("--worker", name.to_string()),
        TlsRole::Orchestrator => ("--orchestrator", "orchestrator".to_string()),
    };
    let dir = test_ca();
    let mut issued = ISSUED.lock().unwrap();
    if !issued.contains(&name) {
        certs(&["issue", "--dir", &dir.display().to_string(), flag, &name]);
        issued.push(name.clone());
    }
    BTreeMap::from([
        ("SLIPWAY_TLS_CA", dir.join("ca.pem").display().to_string()),
        ("SLIPWAY_TLS_CERT", dir.join(format!("{name}.pem")).display().to_string()),
        ("SLIPWAY_TLS_KEY", dir.join(format!("{name}.key")).display().to_string()),
    ])
}

#[derive(Debug, Clone, Copy)]
pub enum TlsRole<'a> {
    Worker(&'a str),
    Orchestrator,
}

fn certs(args: &[&str]) {
    let output = slipway_command().arg("certs").args(args).output().unwrap();
    assert!(output.status.success(), "slipway certs {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}
