//! Project secrets: values a project's admins store once and jobs name, so that a
//! job's spec, its view, its history and its logs never hold them. Values are
//! sealed at rest ([`keyring`]); the orchestrator opens the ones a job names when it
//! starts an attempt and hands them to the worker inside `StartJob`, which masks
//! them in every line of output before it leaves.
//!
//! Some secrets are credentials with a shape (`slipway_steps::secrets::GitAuth`, a
//! registry login): JSON values, checked when a job names them.

pub mod for_job;
pub mod keyring;
pub mod vault;

use crate::auth::ProjectId;

/// The largest value a secret may hold.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The most secrets a project may hold.
pub const MAX_PER_PROJECT: i64 = 1000;
/// The most secrets one job may name, and the most bytes their values may total:
/// they travel in one `StartJob` message.
pub const MAX_PER_JOB: usize = 64;
pub const MAX_JOB_BYTES: usize = 1 << 20;

/// Whether `name` can name a secret: `[A-Za-z_][A-Za-z0-9_.-]{0,127}` (the rule the
/// `project_secrets` table checks too).
pub fn is_secret_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && name.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Whether `host` can name a git host for default credentials: a lowercase name
/// or address without port (an IPv6 address in brackets).
pub fn is_git_host(host: &str) -> bool {
    let plain = |h: &str| {
        !h.is_empty() && h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
    };
    let v6 = |h: &str| {
        h.strip_prefix('[').and_then(|r| r.strip_suffix(']')).is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    };
    host.len() <= 255 && (plain(host) || v6(host))
}

/// What a sealed value is bound to: its project and name.
pub fn binding(project: ProjectId, name: &str) -> Vec<u8> {
    let mut bytes = project.as_bytes().to_vec();
    bytes.extend_from_slice(name.as_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_follow_the_documented_rule() {
        for good in ["a", "_x", "DATABASE_PASSWORD", "npm-token", "a.b-c_d", &format!("a{}", "b".repeat(127))] {
            assert!(is_secret_name(good), "{good}");
        }
        for bad in ["", "1a", "-a", ".a", "a b", "a/b", "a\0", "é", &format!("a{}", "b".repeat(128))] {
            assert!(!is_secret_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn git_hosts_are_lowercase_names_or_addresses_without_port() {
        for good in ["github.com", "git.example.org", "10.0.0.1", "[::1]"] {
            assert!(is_git_host(good), "{good}");
        }
        for bad in ["", "GitHub.com", "host:22", "a/b", "[nope]", "x y"] {
            assert!(!is_git_host(bad), "{bad}");
        }
    }
}
