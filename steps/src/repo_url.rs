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

/// Accepts `https://`, `http://`, `ssh://` and `git://` URLs and scp-like
/// `user@host:path`, without credentials; refuses local paths and every other
/// scheme, which would let a job read the worker's own disk. The error says why.
pub fn check(repo: &str) -> Result<(), String> {
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
    if let Some((scheme, rest)) = repo.split_once("://") {
        if !matches!(scheme, "https" | "http" | "ssh" | "git") {
            return Err(format!("unsupported URL scheme `{scheme}` in repo; use https, ssh or git"));
        }
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() || rest.len() <= host.len() + 1 {
            return Err(format!("repo `{repo}` needs a host and a path"));
        }
        return Ok(());
    }
    // scp-like: user@host:path
    if let Some((user_host, path)) = repo.split_once(':')
        && let Some((user, host)) = user_host.split_once('@')
        && !user.is_empty()
        && !host.is_empty()
        && !host.contains('/')
        && !path.is_empty()
    {
        return Ok(());
    }
    Err(format!("repo `{repo}` is not an https, ssh or git URL"))
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
}
