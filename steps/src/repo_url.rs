//! What a job may name, by rules the API's validator and the worker's edge share
//! (one copy, so the worker trusts nothing the orchestrator sends it): repository
//! URLs and variable names. Credentials in repository URLs are found (a submission
//! carrying one is refused) and hidden (every message naming a URL shows it without
//! them): a token belongs in a secret, not in a URL that is stored with the job,
//! shown by the API and printed in logs.
//!
//! Over `http(s)` anything before the `@` of the host is a credential (a token is
//! often the user name); over `ssh` and `git` a user name alone (`git@`) is not,
//! a password is.
//!
//! Where a repository may be is a [`RepoPolicy`]: by default `https` and `ssh` only,
//! on public addresses only, so that a job cannot turn a worker into a client of
//! its own network (cloud metadata, databases, the worker's ports). An address
//! written in the URL is checked at submission; a host name when the clone resolves
//! it, just before libgit2 connects (libgit2 resolves the name again itself: a
//! name whose answer changes in between is the gap that remains).

use std::net::IpAddr;

/// The credential part of `url` (user info that is secret), if any.
fn secret_span(url: &str) -> Option<std::ops::Range<usize>> {
    let (scheme, rest) = url.split_once("://")?;
    let start = scheme.len() + 3;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    let userinfo = &rest[..at];
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => Some(start..start + at),
        _ => userinfo.find(':').map(|colon| start + colon + 1..start + at),
    }
}

/// Whether `url` carries a credential.
pub fn has_credentials(url: &str) -> bool {
    secret_span(url).is_some()
}

/// Where repositories may be fetched from: the schemes, and the hosts allowed
/// although they are inside the network (`SLIPWAY_REPO_ALLOW_INSECURE`,
/// `SLIPWAY_REPO_ALLOW_HOSTS`). The default allows `https`, `ssh` and scp-like URLs
/// to public addresses only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoPolicy {
    /// `http://` and `git://` too: code fetched without TLS, which anyone on the
    /// path can change.
    pub allow_insecure: bool,
    /// Host names or addresses a repository may be on although they are (or
    /// resolve to) loopback, private, link-local or otherwise internal addresses.
    pub allow_hosts: Vec<String>,
    /// Folders whose repositories a job may name by `file://` URL
    /// ([`crate::local_repo`]); empty: none (the default everywhere but
    /// `standalone`).
    pub local_roots: Vec<std::path::PathBuf>,
}

impl RepoPolicy {
    /// Whether `host` (a name or an address, as the URL writes it) is allowed in.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allow_hosts
            .iter()
            .any(|allowed| allowed.trim_start_matches('[').trim_end_matches(']').eq_ignore_ascii_case(host))
    }

    /// Refuses `host` when one of the addresses it resolved to is internal and the
    /// host is not allowed: a job must not reach the worker's network (cloud
    /// metadata, databases, the worker's own ports) by naming a repository there.
    pub fn check_addresses(&self, host: &str, addresses: &[IpAddr]) -> Result<(), String> {
        if addresses.is_empty() {
            return Err(format!("repository host `{host}` has no address"));
        }
        match addresses.iter().find(|ip| is_internal(**ip)) {
            Some(ip) if !self.allows_host(host) => Err(format!(
                "repository host `{host}` is at {ip}, an internal address; a repository there is allowed only \
                 when SLIPWAY_REPO_ALLOW_HOSTS names its host"
            )),
            _ => Ok(()),
        }
    }
}

/// Whether an address is inside a network rather than on the internet: loopback,
/// private, shared (CGNAT), link-local (cloud metadata included), multicast,
/// broadcast, unspecified, documentation, or IPv6 unique-local, and an IPv4 address
/// written as IPv6.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped().or_else(|| v6.to_ipv4().filter(|_| v6.segments()[..6] == [0; 6])) {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
        }
    }
}

/// A repository URL's host (as written: a name, an IPv4 address or a bracketed
/// IPv6 one) and the port a fetch connects to.
pub fn host_and_port(repo: &str) -> Option<(String, u16)> {
    let (scheme, authority) = match repo.split_once("://") {
        Some((scheme, rest)) => (scheme, rest.split('/').next().unwrap_or_default()),
        // scp-like: user@host:path
        None => ("ssh", repo.split_once(':')?.0),
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        "git" => 9418,
        _ => 22,
    };
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        (format!("[{v6}]"), after.strip_prefix(':'))
    } else if repo.contains("://") {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        }
    } else {
        (authority.to_string(), None)
    };
    let port = match port {
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
        None => default_port,
    };
    Some((host, port))
}

/// The address a host names itself, for an IP literal.
fn literal_address(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// Whether a host is a DNS name or an address, and nothing a tool could read as
/// an option (`-oProxyCommand=…`) or as more than one host.
fn is_host(host: &str) -> bool {
    if literal_address(host).is_some() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
        })
}

/// Accepts `https://` and `ssh://` URLs and scp-like `user@host:path` (and `http://`
/// and `git://` when `policy` allows insecure fetches; `file://` under the local
/// roots it allows, [`crate::local_repo`]), without credentials, with
/// a host that is a DNS name or an address (never option-shaped), and not an
/// internal address unless allowed; refuses local paths and every other scheme,
/// which would let a job read the worker's own disk. The error says why. A host
/// *name* is checked against `policy` again when the clone resolves it.
pub fn check(repo: &str, policy: &RepoPolicy) -> Result<(), String> {
    if repo.trim().is_empty() {
        return Err("repo must not be empty".into());
    }
    if has_credentials(repo) {
        let shown = redacted(repo);
        return Err(format!(
            "repo `{shown}` carries a credential; give the URL without it (the job would store and show it)"
        ));
    }
    if repo.chars().any(|c| c.is_whitespace() || c.is_control()) || repo.starts_with('-') {
        return Err(format!("repo `{repo}` is not a URL"));
    }
    if repo.starts_with("file://") {
        return crate::local_repo::check(repo, policy).map(|_| ());
    }
    if repo.starts_with('/') || repo.starts_with('.') || repo.starts_with('~') {
        return Err(format!(
            "repo `{repo}` is a path: name a local repository as a file:// URL (file:///abs/path), which only \
             `slipway standalone` builds"
        ));
    }
    if let Some((scheme, rest)) = repo.split_once("://") {
        match scheme {
            "https" | "ssh" => {}
            "http" | "git" if policy.allow_insecure => {}
            "http" | "git" => {
                return Err(format!(
                    "repo `{repo}`: {scheme}:// fetches code without TLS, which anyone on the path can change; \
                     use https or ssh (or allow it with SLIPWAY_REPO_ALLOW_INSECURE)"
                ));
            }
            _ => return Err(format!("unsupported URL scheme `{scheme}` in repo; use https or ssh")),
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() || rest.len() <= authority.len() + 1 {
            return Err(format!("repo `{repo}` needs a host and a path"));
        }
    } else {
        // scp-like: user@host:path
        let scp = repo.split_once(':').and_then(|(user_host, path)| {
            let (user, host) = user_host.split_once('@')?;
            (!user.is_empty() && !host.is_empty() && !host.contains('/') && !path.is_empty()).then_some(())
        });
        if scp.is_none() {
            return Err(format!("repo `{repo}` is not an https or ssh URL"));
        }
    }
    let Some((host, _)) = host_and_port(repo) else {
        return Err(format!("repo `{repo}` has no valid host and port"));
    };
    if !is_host(&host) {
        return Err(format!("repo `{repo}`: `{host}` is not a host name or address"));
    }
    if let Some(ip) = literal_address(&host) {
        policy.check_addresses(&host, &[ip]).map_err(|why| format!("repo `{repo}`: {why}"))?;
    }
    Ok(())
}

/// Whether `text` holds a character that changes how text around it is shown
/// without being seen itself: bidirectional overrides and isolates (`U+202E` makes
/// `gpj.exe` read as `exe.jpg`), zero-width characters, line and paragraph
/// separators, the byte-order mark. A ref or a path holding one would mislead
/// whoever reads it in a log or a list.
pub fn has_deceptive_chars(text: &str) -> bool {
    text.chars().any(|c| {
        matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}')
    })
}

/// An environment variable or build argument name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_variable_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `url` with its credential replaced by `***`.
pub fn redacted(url: &str) -> String {
    match secret_span(url) {
        Some(span) => format!("{}***{}", &url[..span.start], &url[span.end..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_found_and_hidden() {
        let cases = [
            ("https://ghp_token@github.com/a/b.git", true, "https://***@github.com/a/b.git"),
            ("https://user:pass@example.com/a.git", true, "https://***@example.com/a.git"),
            ("ssh://git:hunter2@example.com/a.git", true, "ssh://git:***@example.com/a.git"),
            ("ssh://git@example.com/a.git", false, "ssh://git@example.com/a.git"),
            ("git@github.com:a/b.git", false, "git@github.com:a/b.git"),
            ("https://example.com/a@b.git", false, "https://example.com/a@b.git"),
            ("git://127.0.0.1/app", false, "git://127.0.0.1/app"),
        ];
        for (url, secret, shown) in cases {
            assert_eq!(has_credentials(url), secret, "{url}");
            assert_eq!(redacted(url), shown, "{url}");
        }
    }

    fn insecure_and_allowed(hosts: &[&str]) -> RepoPolicy {
        RepoPolicy {
            allow_insecure: true,
            allow_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_secure_schemes_by_default_and_insecure_ones_when_allowed() {
        let strict = RepoPolicy::default();
        for good in ["https://github.com/a/b.git", "ssh://git@example.com/a.git", "git@github.com:a/b.git"] {
            assert_eq!(check(good, &strict), Ok(()), "{good}");
        }
        for insecure in ["http://example.com/a.git", "git://example.com/a"] {
            let why = check(insecure, &strict).unwrap_err();
            assert!(why.contains("SLIPWAY_REPO_ALLOW_INSECURE"), "{why}");
            assert_eq!(check(insecure, &insecure_and_allowed(&[])), Ok(()), "{insecure}");
        }
        for bad in ["file:///etc", "/srv/repo", "ext::sh -c id", "", "https://example.com"] {
            assert!(check(bad, &insecure_and_allowed(&[])).is_err(), "{bad}");
        }
    }

    #[test]
    fn option_shaped_and_malformed_hosts_are_refused() {
        let policy = insecure_and_allowed(&[]);
        for bad in [
            "ssh://-oProxyCommand=touch%20x/repo",
            "ssh://git@-oProxyCommand=x/repo",
            "git@-oProxyCommand=x:repo",
            "https://exa mple.com/a",
            "https://-example.com/a",
            "https://example.com:99999/a",
            "https://example.com:0/a",
            "https://a;b/c",
        ] {
            assert!(check(bad, &policy).is_err(), "{bad}");
        }
    }

    #[test]
    fn internal_addresses_are_refused_unless_their_host_is_allowed() {
        let policy = RepoPolicy::default();
        for internal in [
            "https://169.254.169.254/latest/meta-data",
            "https://127.0.0.1/a",
            "https://10.1.2.3/a",
            "https://[::1]/a",
            "https://[fe80::1]:8443/a",
            "https://[::ffff:127.0.0.1]/a",
            "https://100.64.0.1/a",
            "https://0.0.0.0/a",
            "git@192.168.1.1:a/b",
        ] {
            let why = check(internal, &policy).unwrap_err();
            assert!(why.contains("internal address"), "{internal}: {why}");
        }
        assert_eq!(check("https://127.0.0.1:8443/a", &insecure_and_allowed(&["127.0.0.1"])), Ok(()));
        assert_eq!(check("https://[::1]/a", &insecure_and_allowed(&["::1"])), Ok(()));
        assert_eq!(check("https://93.184.215.14/a", &policy), Ok(()));
    }

    #[test]
    fn resolved_addresses_are_held_to_the_same_rule() {
        let policy = insecure_and_allowed(&["git.internal"]);
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let public: IpAddr = "93.184.215.14".parse().unwrap();
        assert!(policy.check_addresses("localhost", &[loopback]).is_err());
        assert!(
            policy.check_addresses("sneaky.example", &[public, loopback]).is_err(),
            "one internal address is enough"
        );
        assert_eq!(policy.check_addresses("GIT.internal", &[loopback]), Ok(()));
        assert_eq!(policy.check_addresses("example.com", &[public]), Ok(()));
        assert!(policy.check_addresses("nowhere", &[]).is_err());
    }

    #[test]
    fn text_direction_and_invisible_characters_are_found() {
        for deceptive in ["\u{202e}gpj.exe", "main\u{200b}", "a\u{2028}b", "\u{feff}x", "x\u{2066}y"] {
            assert!(has_deceptive_chars(deceptive), "{deceptive:?}");
        }
        for plain in ["main", "release/v1.2", "docs/ünïcödé.md", "日本語"] {
            assert!(!has_deceptive_chars(plain), "{plain:?}");
        }
    }

    #[test]
    fn hosts_and_ports_by_scheme() {
        assert_eq!(host_and_port("https://h/a"), Some(("h".into(), 443)));
        assert_eq!(host_and_port("git://127.0.0.1:9419/a"), Some(("127.0.0.1".into(), 9419)));
        assert_eq!(host_and_port("ssh://git@[::1]:2222/a"), Some(("[::1]".into(), 2222)));
        assert_eq!(host_and_port("git@github.com:a/b"), Some(("github.com".into(), 22)));
    }
}
