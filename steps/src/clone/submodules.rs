//! Submodules, fetched after the checkout when a job asks (`git.submodules`): each
//! at the commit its parent records, shallow when a ref of its remote points at that
//! commit, recursively. A repository's `.gitmodules` is as hostile as the rest of
//! it: every URL is held to the job's URL rules (resolved just before it is fetched,
//! like the job's own), every path must stay inside the parent's checkout with no
//! link on the way, and the nesting, the count and the bytes are bounded.

use std::path::{Component, Path, PathBuf};

use tokio_util::sync::CancellationToken;

use super::{CloneRequest, check_remote, clone_repo};
use crate::paths::is_confined;
use crate::repo_url::{self, RepoPolicy, redacted};
use crate::{ErrorCode, LogSink, LogStream, StepError};

/// How deep submodules may nest.
pub const MAX_DEPTH: usize = 8;
/// How many submodules one clone may fetch, at every depth together.
pub const MAX_SUBMODULES: usize = 64;

/// One submodule as its parent records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recorded {
    path: String,
    url: String,
    commit: String,
}

/// Fetches the submodules of the checkout in `root` (cloned from `parent.repo`),
/// with the parent's credentials, within the parent's byte bound in all.
pub async fn fetch_submodules(
    parent: &CloneRequest,
    root: &Path,
    policy: &RepoPolicy,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<(), StepError> {
    let mut queue = vec![(root.to_path_buf(), parent.repo.clone(), 1usize)];
    let mut fetched = 0usize;
    while let Some((dir, url, depth)) = queue.pop() {
        let listed = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || recorded(&dir)).await.map_err(panicked)??
        };
        for sub in listed {
            fetched += 1;
            if fetched > MAX_SUBMODULES {
                return Err(refused(format!("the repository has more than {MAX_SUBMODULES} submodules")));
            }
            if depth > MAX_DEPTH {
                return Err(refused(format!("submodules nest deeper than {MAX_DEPTH} levels")));
            }
            let sub_url = resolve_url(&url, &sub.url)
                .ok_or_else(|| refused(format!("submodule `{}` has a URL that cannot be resolved", sub.path)))?;
            repo_url::check(&sub_url, policy)
                .map_err(|why| StepError::new(ErrorCode::RepoNotAllowed, format!("submodule `{}`: {why}", sub.path)))?;
            let fetch_from = check_remote(&sub_url, policy).await?;
            let dest = inside(&dir, &sub.path)?;
            let used = {
                let root = root.to_path_buf();
                tokio::task::spawn_blocking(move || bytes_under(&root)).await.map_err(panicked)?
            };
            let request = CloneRequest {
                repo: fetch_from,
                git_ref: None,
                pinned_sha: Some(sub.commit.clone()),
                max_bytes: parent.max_bytes.saturating_sub(used),
                auth: parent.auth.clone(),
            };
            logs.line(LogStream::System, format!("submodule {}: {}", sub.path, redacted(&sub_url))).await;
            let (logs, cancel, to) = (logs.clone(), cancel.clone(), dest.clone());
            tokio::task::spawn_blocking(move || clone_repo(&request, &to, &logs, &cancel))
                .await
                .map_err(panicked)??;
            queue.push((dest, sub_url, depth + 1));
        }
    }
    Ok(())
}

fn refused(message: String) -> StepError {
    StepError::new(ErrorCode::RepoNotAllowed, message)
}

fn panicked(e: tokio::task::JoinError) -> StepError {
    StepError::new(ErrorCode::Internal, format!("fetching submodules panicked: {e}"))
}

/// The submodules the checkout in `dir` records: path, URL and commit.
fn recorded(dir: &Path) -> Result<Vec<Recorded>, StepError> {
    let repo = git2::Repository::open(dir)
        .map_err(|e| StepError::new(ErrorCode::Internal, format!("cannot open the checkout: {e}")).with_source(e))?;
    let submodules = repo.submodules().map_err(|e| {
        StepError::new(ErrorCode::CloneFailed, "the repository's .gitmodules cannot be read").with_source(e)
    })?;
    let mut found = Vec::new();
    for sub in submodules {
        let path = sub.path().to_string_lossy().into_owned();
        let (Ok(Some(url)), Some(commit)) = (sub.url(), sub.head_id()) else {
            return Err(refused(format!("submodule `{path}` has no URL or no recorded commit")));
        };
        found.push(Recorded { path, url: url.to_string(), commit: commit.to_string() });
    }
    Ok(found)
}

/// A submodule URL made absolute: `./x` and `../x` are relative to the parent's
/// URL, as git resolves them; anything else is taken as it is.
fn resolve_url(parent: &str, url: &str) -> Option<String> {
    if !url.starts_with("./") && !url.starts_with("../") {
        return Some(url.to_string());
    }
    // The part of the parent URL that relative paths may not climb out of.
    let (base, path) = match parent.find("://") {
        Some(i) => {
            let after = &parent[i + 3..];
            let slash = after.find('/').map_or(parent.len(), |j| i + 3 + j);
            (&parent[..slash], &parent[slash..])
        }
        None => parent.split_at(parent.find(':')? + 1),
    };
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for part in url.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            name => segments.push(name),
        }
    }
    let joined = segments.join("/");
    Some(if base.ends_with(':') { format!("{base}{joined}") } else { format!("{base}/{joined}") })
}

/// `relative` under `root`, refused if it leaves `root` or passes through a link or
/// a file on the way (a checkout can hold a link named like a submodule's folder).
fn inside(root: &Path, relative: &str) -> Result<PathBuf, StepError> {
    let escapes = || {
        StepError::new(ErrorCode::PathEscapesRepository, format!("submodule path `{relative}` leaves the repository"))
    };
    if relative.is_empty() || !is_confined(relative) {
        return Err(escapes());
    }
    let mut path = root.to_path_buf();
    for part in Path::new(relative).components() {
        if let Component::Normal(name) = part {
            path.push(name);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_dir() => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                _ => return Err(escapes()),
            }
        }
    }
    Ok(path)
}

/// Bytes of the files under `dir`, links not followed.
fn bytes_under(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_urls_resolve_against_the_parent_and_never_climb_past_its_host() {
        let https = "https://git.example/group/app.git";
        assert_eq!(resolve_url(https, "../lib.git").unwrap(), "https://git.example/group/lib.git");
        assert_eq!(resolve_url(https, "../../other/lib.git").unwrap(), "https://git.example/other/lib.git");
        assert_eq!(resolve_url(https, "./sub.git").unwrap(), "https://git.example/group/app.git/sub.git");
        assert_eq!(resolve_url(https, "../../../x.git"), None);
        assert_eq!(
            resolve_url("git@git.example:group/app.git", "../lib.git").unwrap(),
            "git@git.example:group/lib.git"
        );
        assert_eq!(resolve_url(https, "https://elsewhere/x.git").unwrap(), "https://elsewhere/x.git");
    }

    #[test]
    fn a_path_through_a_link_or_out_of_the_checkout_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("vendor")).unwrap();
        std::fs::write(root.path().join("file"), "x").unwrap();
        for bad in ["vendor/lib", "vendor", "../x", "/etc", ".git/modules", "file/x", ""] {
            assert_eq!(inside(root.path(), bad).unwrap_err().code, ErrorCode::PathEscapesRepository, "{bad}");
        }
        assert_eq!(inside(root.path(), "libs/one").unwrap(), root.path().join("libs/one"));
    }
}
