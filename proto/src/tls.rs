//! Mutual TLS between orchestrators and workers: the only way either gRPC service
//! is reached (there is no plaintext mode).
//!
//! An installation has its own CA (`slipway certs init`). Every certificate it issues
//! (`slipway certs issue`) names its holder's role as DNS names under
//! `slipway.invalid`, a domain that never resolves (RFC 6761):
//! [`ORCHESTRATOR_NAME`] for an orchestrator; [`WORKER_NAME`] and
//! `<name>.worker.slipway.invalid` for the worker `<name>`. So:
//!
//! - a client dials any address and checks the server's *role*, by using that
//!   role's name as the TLS server name ([`TlsIdentity::endpoint`]);
//! - a server accepts only clients with a certificate from the CA, and each
//!   service lets in only the role that may call it ([`orchestrators_only`],
//!   [`workers_only`]); the report service also learns which worker calls
//!   ([`CallingWorker`]) to hold every report to that worker's own leases.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// The name every orchestrator certificate holds.
pub const ORCHESTRATOR_NAME: &str = "orchestrator.slipway.invalid";
/// The name every worker certificate holds, beside `<name>.` + this.
pub const WORKER_NAME: &str = "worker.slipway.invalid";

/// The name a worker's certificate holds for `worker_id`.
pub fn worker_dns_name(worker_id: &str) -> String {
    format!("{worker_id}.{WORKER_NAME}")
}

/// Whether `name` can be a worker's name in its certificate: a DNS label
/// (1–63 lowercase letters, digits and `-`, not at either end).
pub fn is_worker_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// What a certificate of this installation lets its holder be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Orchestrator,
    Worker(String),
}

impl Role {
    /// The role a certificate names, if it names one.
    pub fn of(cert: &CertificateDer<'_>) -> Option<Role> {
        let cert = webpki::EndEntityCert::try_from(cert).ok()?;
        // Both names are checked the way a TLS client checks a server's name.
        let holds = |name: &str| {
            ServerName::try_from(name).is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        };
        if holds(ORCHESTRATOR_NAME) {
            return Some(Role::Orchestrator);
        }
        let suffix = format!(".{WORKER_NAME}");
        cert.valid_dns_names()
            .filter_map(|name| name.strip_suffix(&suffix))
            .find(|worker| is_worker_name(worker) && holds(&worker_dns_name(worker)))
            .map(|worker| Role::Worker(worker.to_string()))
    }

    fn describe(&self) -> String {
        match self {
            Role::Orchestrator => "an orchestrator's".into(),
            Role::Worker(name) => format!("the worker `{name}`'s"),
        }
    }
}

/// Which service a client dials: the worker's `JobService` or an orchestrator's
/// `ReportService`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Worker,
    Orchestrator,
}

/// Why a TLS identity cannot be used, naming the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting}: cannot read {path}: {source}")]
    Read { setting: &'static str, path: String, source: std::io::Error },
    #[error("{setting}: {message}")]
    Invalid { setting: &'static str, message: String },
    #[error("`{0}` is not an https:// URL: orchestrators and workers speak TLS only")]
    NotHttps(String),
    #[error("`{url}` is not a URL: {message}")]
    BadUrl { url: String, message: String },
}

/// One process's certificate and key, and the CA it trusts.
#[derive(Clone)]
pub struct TlsIdentity {
    ca: Certificate,
    identity: Identity,
    role: Role,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("role", &self.role).finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Reads the files `SLIPWAY_TLS_CA`, `SLIPWAY_TLS_CERT` and `SLIPWAY_TLS_KEY` name.
    pub fn read(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |setting, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read { setting, path: path.display().to_string(), source })
        };
        Self::from_pem(&read("SLIPWAY_TLS_CA", ca)?, &read("SLIPWAY_TLS_CERT", cert)?, &read("SLIPWAY_TLS_KEY", key)?)
    }

    /// An identity from PEM text; the certificate must name a role.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let invalid = |setting, message: &str| TlsError::Invalid { setting, message: message.to_string() };
        CertificateDer::from_pem_slice(ca).map_err(|_| invalid("SLIPWAY_TLS_CA", "holds no PEM certificate"))?;
        let der = CertificateDer::from_pem_slice(cert)
            .map_err(|_| invalid("SLIPWAY_TLS_CERT", "holds no PEM certificate"))?;
        rustls_pki_types::PrivateKeyDer::from_pem_slice(key)
            .map_err(|_| invalid("SLIPWAY_TLS_KEY", "holds no PEM private key"))?;
        let role = Role::of(&der).ok_or_else(|| {
            invalid(
                "SLIPWAY_TLS_CERT",
                "names no Slipway role: make one with `slipway certs issue --worker|--orchestrator`",
            )
        })?;
        Ok(TlsIdentity { ca: Certificate::from_pem(ca), identity: Identity::from_pem(cert, key), role })
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Refuses an identity of the other role, naming what to make instead.
    pub fn expect_worker(&self) -> Result<&str, TlsError> {
        match &self.role {
            Role::Worker(name) => Ok(name),
            other => Err(TlsError::Invalid {
                setting: "SLIPWAY_TLS_CERT",
                message: format!(
                    "is {} certificate; a worker needs one made by `slipway certs issue --worker NAME`",
                    other.describe()
                ),
            }),
        }
    }

    /// Refuses an identity of the other role, naming what to make instead.
    pub fn expect_orchestrator(&self) -> Result<(), TlsError> {
        match &self.role {
            Role::Orchestrator => Ok(()),
            other => Err(TlsError::Invalid {
                setting: "SLIPWAY_TLS_CERT",
                message: format!(
                    "is {} certificate; a server needs one made by `slipway certs issue --orchestrator NAME`",
                    other.describe()
                ),
            }),
        }
    }

    /// The server side: this identity, and a client certificate from the CA required.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(self.identity.clone()).client_ca_root(self.ca.clone())
    }

    /// An endpoint for the service `server` at `url` (`https://` only), presenting
    /// this identity and accepting only a server certificate of that role.
    pub fn endpoint(&self, url: &str, server: Server) -> Result<Endpoint, TlsError> {
        if !url.starts_with("https://") {
            return Err(TlsError::NotHttps(url.to_string()));
        }
        let bad = |e: tonic::transport::Error| TlsError::BadUrl { url: url.to_string(), message: e.to_string() };
        let name = match server {
            Server::Worker => WORKER_NAME,
            Server::Orchestrator => ORCHESTRATOR_NAME,
        };
        let tls =
            ClientTlsConfig::new().ca_certificate(self.ca.clone()).identity(self.identity.clone()).domain_name(name);
        Endpoint::from_shared(url.to_string()).map_err(bad)?.tls_config(tls).map_err(bad)
    }
}

/// The role of the caller, from the certificate the TLS handshake verified.
pub fn caller<T>(request: &Request<T>) -> Option<Role> {
    request.peer_certs().and_then(|certs| certs.first().and_then(Role::of))
}

/// The worker a call to the report service came from, as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallingWorker(pub String);

/// An interceptor for the worker's services: orchestrators only.
#[allow(clippy::result_large_err)]
pub fn orchestrators_only(request: Request<()>) -> Result<Request<()>, Status> {
    match caller(&request) {
        Some(Role::Orchestrator) => Ok(request),
        other => Err(refused(other, "only an orchestrator may call a worker")),
    }
}

/// An interceptor for the report service: workers only, each call marked with
/// the [`CallingWorker`].
#[allow(clippy::result_large_err)]
pub fn workers_only(mut request: Request<()>) -> Result<Request<()>, Status> {
    match caller(&request) {
        Some(Role::Worker(name)) => {
            request.extensions_mut().insert(CallingWorker(name));
            Ok(request)
        }
        other => Err(refused(other, "only a worker may report")),
    }
}

fn refused(role: Option<Role>, rule: &str) -> Status {
    let who =
        role.map_or_else(|| "a certificate naming no Slipway role".to_string(), |r| r.describe() + " certificate");
    Status::permission_denied(format!("{rule}; this call came with {who}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_are_dns_labels() {
        for good in ["w", "worker-1", "a0"] {
            assert!(is_worker_name(good), "{good}");
        }
        for bad in ["", "-w", "w-", "W", "a.b", "a_b", &"a".repeat(64), "../x", "a b"] {
            assert!(!is_worker_name(bad), "{bad}");
        }
    }
}
