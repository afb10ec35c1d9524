//! The installation's own CA and the certificates it issues (`slipway certs`).
//!
//! A CA folder holds `ca.pem` (the certificate every process trusts) and `ca.key`
//! (mode 0600, needed only to issue). `slipway certs issue` writes `<name>.pem` and
//! `<name>.key` beside them. What a certificate lets its holder be is a DNS name
//! under `slipway.invalid` (see `slipway_proto::tls`); the CA's own name is derived
//! from its key, so that the folder needs no other state to issue again.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use slipway_proto::tls::{ORCHESTRATOR_NAME, Role, TlsIdentity, WORKER_NAME, is_worker_name, worker_dns_name};
use time::{Duration, OffsetDateTime};

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
/// How long a CA stays valid; its certificates are issued for [`LEAF_VALIDITY`].
const CA_VALIDITY: Duration = Duration::days(3650);
const LEAF_VALIDITY: Duration = Duration::days(825);

/// An installation's CA, able to issue.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// A new CA.
    pub fn generate() -> anyhow::Result<Ca> {
        let key = KeyPair::generate().context("cannot make the CA's key")?;
        let params = ca_params(&key, OffsetDateTime::now_utc());
        let cert_pem = params.self_signed(&key).context("cannot sign the CA's certificate")?.pem();
        Ok(Ca { cert_pem, issuer: Issuer::new(params, key) })
    }

    /// The CA kept in `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Ca> {
        let cert_pem = std::fs::read_to_string(dir.join(CA_CERT)).with_context(|| {
            format!("cannot read {}: make a CA with `slipway certs init`", dir.join(CA_CERT).display())
        })?;
        let key_pem = std::fs::read_to_string(dir.join(CA_KEY))
            .with_context(|| format!("cannot read {}", dir.join(CA_KEY).display()))?;
        let key = KeyPair::from_pem(&key_pem).with_context(|| format!("{} holds no private key", CA_KEY))?;
        // The issuer needs the CA's name and key usages only; both follow from its key.
        let params = ca_params(&key, OffsetDateTime::now_utc());
        Ok(Ca { cert_pem, issuer: Issuer::new(params, key) })
    }

    /// Writes `ca.pem` and `ca.key` into `dir` (made if missing); refuses to replace a CA.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
        if dir.join(CA_KEY).exists() || dir.join(CA_CERT).exists() {
            bail!("{} already holds a CA; issue from it with `slipway certs issue --dir {0}`", dir.display());
        }
        write_private(&dir.join(CA_KEY), &self.issuer.key().serialize_pem())?;
        std::fs::write(dir.join(CA_CERT), &self.cert_pem)
            .with_context(|| format!("cannot write {}", dir.join(CA_CERT).display()))
    }

    /// The CA kept in `dir`, made there first if the folder holds none. Safe when
    /// several processes start at once: the first folder moved into place wins.
    pub fn read_or_create(dir: &Path) -> anyhow::Result<Ca> {
        if dir.join(CA_CERT).exists() {
            return Ca::read(dir);
        }
        let parent = dir.parent().context("the CA folder has no parent")?;
        std::fs::create_dir_all(parent).with_context(|| format!("cannot make {}", parent.display()))?;
        let staging = parent.join(format!(
            ".{}-{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("tls"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging).with_context(|| format!("cannot make {}", staging.display()))?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))?;
        Ca::generate()?.write(&staging)?;
        if std::fs::rename(&staging, dir).is_err() {
            // Another process made it first (or the folder exists, empty or not).
            let _ = std::fs::remove_dir_all(&staging);
        }
        Ca::read(dir)
    }

    /// A certificate for `role`, valid as a TLS server and client.
    pub fn issue(&self, role: &Role) -> anyhow::Result<Issued> {
        let names = match role {
            Role::Orchestrator => vec![ORCHESTRATOR_NAME.to_string()],
            Role::Worker(name) => {
                if !is_worker_name(name) {
                    bail!("`{name}` cannot name a worker: use 1-63 lowercase letters, digits and `-`");
                }
                vec![WORKER_NAME.to_string(), worker_dns_name(name)]
            }
        };
        let key = KeyPair::generate().context("cannot make a key")?;
        let mut params = CertificateParams::default();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(serial(key.public_key_raw()));
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names.last().cloned().unwrap_or_default());
        params.subject_alt_names = names
            .into_iter()
            .map(|n| n.try_into().map(SanType::DnsName))
            .collect::<Result<_, _>>()
            .context("a certificate name is not a DNS name")?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).context("cannot sign the certificate")?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// An identity for `role`, issued now and held in memory only.
    pub fn identity(&self, role: &Role) -> anyhow::Result<TlsIdentity> {
        let issued = self.issue(role)?;
        Ok(TlsIdentity::from_pem(self.cert_pem.as_bytes(), issued.cert_pem.as_bytes(), issued.key_pem.as_bytes())?)
    }
}

/// The CA's parameters: its name follows from its key, so that they can be made
/// again from `ca.key` alone.
fn ca_params(key: &KeyPair, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let id: String = Sha256::digest(key.public_key_raw())[..6].iter().map(|b| format!("{b:02x}")).collect();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "Slipway");
    params.distinguished_name.push(DnType::CommonName, format!("Slipway CA {id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(serial(key.public_key_raw()));
    params
}

/// A positive serial number unique to a key.
fn serial(public_key: &[u8]) -> SerialNumber {
    let mut bytes: Vec<u8> = Sha256::digest(public_key)[..16].to_vec();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Writes a file only its owner can read; refuses to replace one.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// `slipway certs init DIR`
pub fn init(dir: &Path) -> anyhow::Result<()> {
    Ca::generate()?.write(dir)?;
    println!("CA written to {} ({CA_CERT}; keep {CA_KEY} private)", dir.display());
    println!(
        "next: slipway certs issue --dir {} --orchestrator NAME  (and --worker NAME for each worker)",
        dir.display()
    );
    Ok(())
}

/// `slipway certs issue --dir DIR --worker|--orchestrator NAME`: writes
/// `<name>.pem` and `<name>.key` into `dir`.
pub fn issue(dir: &Path, role: &Role, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    if !is_worker_name(name) {
        bail!("`{name}` cannot name a certificate: use 1-63 lowercase letters, digits and `-`");
    }
    let ca = Ca::read(dir)?;
    let issued = ca.issue(role)?;
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    write_private(&key, &issued.key_pem)?;
    std::fs::write(&cert, &issued.cert_pem).with_context(|| format!("cannot write {}", cert.display()))?;
    println!("SLIPWAY_TLS_CA={}", dir.join(CA_CERT).display());
    println!("SLIPWAY_TLS_CERT={}", cert.display());
    println!("SLIPWAY_TLS_KEY={}", key.display());
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::tls::Server;

    #[test]
    fn issued_certificates_name_their_role_and_a_ca_read_again_issues_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        Ca::generate().unwrap().write(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(CA_KEY)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(Ca::generate().unwrap().write(dir.path()).is_err(), "a CA is never replaced");

        let ca = Ca::read(dir.path()).unwrap();
        let worker = ca.identity(&Role::Worker("w-1".into())).unwrap();
        assert_eq!(worker.role(), &Role::Worker("w-1".into()));
        assert!(worker.expect_orchestrator().is_err());
        let orchestrator = ca.identity(&Role::Orchestrator).unwrap();
        assert_eq!(orchestrator.role(), &Role::Orchestrator);
        assert!(ca.issue(&Role::Worker("../x".into())).is_err());

        let error = orchestrator.endpoint("http://127.0.0.1:1", Server::Worker).unwrap_err().to_string();
        assert!(error.contains("https://"), "{error}");
        assert!(orchestrator.endpoint("https://127.0.0.1:1", Server::Worker).is_ok());
    }
}
