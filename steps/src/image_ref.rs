//! Image references (`registry:port/team/app:tag`): parsed once, by the rules of the
//! distribution spec, so that a bad one is refused at submission with a reason
//! instead of failing a build minutes later.

use std::fmt;

/// A validated image reference without a digest: Slipway builds and tags it, then
/// records the digest it pushed. A reference that names no registry host
/// (`myapp:latest`, `team/app:v1`) is *local*: it is built and run on the worker's
/// engine and pushed nowhere (Docker Hub is named as `docker.io/you/app`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host (with port), when the reference names one.
    pub registry: Option<String>,
    /// The repository path inside the registry, such as `team/app`.
    pub path: String,
    /// The tag; `latest` when none was given.
    pub tag: String,
}

impl ImageRef {
    /// The name without tag, as registries and `docker push` know it.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.path),
            None => self.path.clone(),
        }
    }

    /// Whether the image stays on the engine that built it (no registry host).
    pub fn is_local(&self) -> bool {
        self.registry.is_none()
    }

    /// `name@digest`: the reference of one pushed manifest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name(), self.tag)
    }
}

impl std::str::FromStr for ImageRef {
    type Err = String;

    /// Parses a reference; the error says what is wrong with it.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is empty".into());
        }
        if s.contains('@') {
            return Err("must not carry a digest: Slipway records the digest it pushes".into());
        }
        let (name, tag) = match s.rfind(':') {
            Some(i) if !s[i + 1..].contains('/') => (&s[..i], Some(&s[i + 1..])),
            _ => (s, None),
        };
        if name.len() > 255 {
            return Err("name is longer than 255 characters".into());
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let registry =
            if parts.len() > 1 && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost") {
                let host = parts.remove(0);
                check_registry(host)?;
                Some(host.to_string())
            } else {
                None
            };
        for part in &parts {
            check_path_component(part)?;
        }
        let tag = match tag {
            Some(t) => {
                check_tag(t)?;
                t.to_string()
            }
            None => "latest".to_string(),
        };
        Ok(ImageRef { registry, path: parts.join("/"), tag })
    }
}

/// An image to pull, by tag or pinned to one manifest: `name[:tag]` or
/// `name@sha256:<64 hex>` (what a push recorded). Used for the images a build
/// takes its cache from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRef {
    pub image: ImageRef,
    /// `sha256:…`, when pinned.
    pub digest: Option<String>,
}

impl PullRef {
    /// The registry host, when the reference names one.
    pub fn registry(&self) -> Option<&str> {
        self.image.registry.as_deref()
    }
}

impl fmt::Display for PullRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.digest {
            Some(digest) => write!(f, "{}@{digest}", self.image.name()),
            None => self.image.fmt(f),
        }
    }
}

impl std::str::FromStr for PullRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((name, digest)) = s.split_once('@') else {
            return Ok(PullRef { image: s.parse()?, digest: None });
        };
        let hex = digest.strip_prefix("sha256:").ok_or("digest must start with `sha256:`")?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err("digest must be `sha256:` and 64 lowercase hex digits".into());
        }
        Ok(PullRef { image: name.parse()?, digest: Some(digest.to_string()) })
    }
}

fn check_registry(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err(format!("registry host `{host}` is not a valid host name"));
    }
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(format!("registry port `{p}` is not a port number"));
    }
    Ok(())
}

fn check_path_component(part: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "path component `{part}` must be lowercase letters and digits, \
             separated by single `.`, `_`, `__` or runs of `-`"
        )
    };
    if part.is_empty() {
        return Err("has an empty path component".into());
    }
    let bytes = part.as_bytes();
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return Err(bad());
    }
    let mut separator = String::new();
    for &b in bytes {
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            if !(separator.is_empty()
                || separator == "."
                || separator == "_"
                || separator == "__"
                || separator.chars().all(|c| c == '-'))
            {
                return Err(bad());
            }
            separator.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator.push(b as char);
        } else {
            return Err(bad());
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.starts_with('_'))
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!("tag `{tag}` must be 1-128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ImageRef, String> {
        s.parse()
    }

    #[test]
    fn parses_registry_path_and_tag() {
        let r = parse("127.0.0.1:5000/team/app:v1.2").unwrap();
        assert_eq!(r.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(r.path, "team/app");
        assert_eq!(r.tag, "v1.2");
        assert_eq!(r.name(), "127.0.0.1:5000/team/app");
        assert_eq!(r.with_digest("sha256:ab"), "127.0.0.1:5000/team/app@sha256:ab");

        let r = parse("localhost/app").unwrap();
        assert_eq!((r.registry.as_deref(), r.tag.as_str()), (Some("localhost"), "latest"));
        let r = parse("library/busy_box__x:latest").unwrap();
        assert_eq!(r.registry, None);
        assert_eq!(r.to_string(), "library/busy_box__x:latest");
    }

    #[test]
    fn only_a_reference_without_a_registry_host_is_local() {
        for local in ["myapp:latest", "team/app:v1", "app"] {
            assert!(parse(local).unwrap().is_local(), "{local}");
        }
        for pushed in ["docker.io/you/app", "localhost/app", "127.0.0.1:5000/app:1", "registry:5000/app"] {
            assert!(!parse(pushed).unwrap().is_local(), "{pushed}");
        }
    }

    #[test]
    fn refuses_bad_references_with_a_reason() {
        for bad in [
            "",
            "App:1",
            "team//app",
            "team/app:",
            "team/app:-x",
            "team/app@sha256:00",
            "host:port/app",
            "-app",
            "a..b",
            "a/b c",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn a_pull_reference_is_a_tag_or_a_whole_sha256_digest() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let pinned: PullRef = format!("127.0.0.1:5000/team/app@{digest}").parse().unwrap();
        assert_eq!(pinned.registry(), Some("127.0.0.1:5000"));
        assert_eq!(pinned.to_string(), format!("127.0.0.1:5000/team/app@{digest}"));
        let tagged: PullRef = "127.0.0.1:5000/team/app:cache".parse().unwrap();
        assert_eq!((tagged.to_string(), tagged.digest), ("127.0.0.1:5000/team/app:cache".into(), None));
        for bad in ["app@sha256:00", "app@md5:00", &format!("App@{digest}"), &format!("app@{}", digest.to_uppercase())]
        {
            assert!(bad.parse::<PullRef>().is_err(), "{bad} should be refused");
        }
    }

    proptest::proptest! {
        /// Nothing makes the parser panic, and what it accepts reads back the same.
        #[test]
        fn an_accepted_reference_reads_back_as_itself(text in "[a-zA-Z0-9._:/@-]{0,80}|\\PC{0,40}") {
            if let Ok(image) = parse(&text) {
                let again = parse(&image.to_string());
                proptest::prop_assert_eq!(again.as_ref(), Ok(&image), "{} → {}", text, image);
            }
        }
    }
}
