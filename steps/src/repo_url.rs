//! Credentials in repository URLs: found (a submission carrying one is refused)
//! and hidden (every message naming a URL shows it without them). A token belongs
//! in a secret, not in a URL that is stored with the job, shown by the API and
//! printed in logs.
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
