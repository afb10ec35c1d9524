//! Local repositories: a job of `slipway standalone` may name a repository on the
//! same machine as a `file://` URL, so that a first job needs no git server. Only
//! folders under the allowed roots (`SLIPWAY_LOCAL_REPO_ROOTS`) qualify, after every
//! symbolic link is resolved, so that a job cannot build what the machine's owner
//! did not put there; and the clone fetches commits like any remote, so only
//! committed content is built. Everywhere else (`slipway server`, or with
//! `SLIPWAY_ALLOW_LOCAL_REPOS=false`) a `file://` URL is refused with what to do
//! instead: a job must not read its worker's disk.
//!
//! The check runs at submission and again just before the clone, which fetches
//! from the resolved folder. What remains open: a repository under a root may name
//! object stores outside it (`objects/info/alternates`); whoever can write under a
//! root is trusted with that.

use std::path::{Component, Path, PathBuf};

use crate::repo_url::RepoPolicy;

/// The URL scheme of a local repository.
pub const SCHEME: &str = "file://";

/// The repository folder a `file://` URL names, resolved, when `policy` allows it;
/// otherwise why not.
pub fn check(repo: &str, policy: &RepoPolicy) -> Result<PathBuf, String> {
    let Some(path) = repo.strip_prefix(SCHEME) else {
        return Err(format!("repo `{repo}` is not a file:// URL"));
    };
    if policy.local_roots.is_empty() {
        return Err(format!(
            "repo `{repo}` is on this machine's disk, and only `slipway standalone` builds local repositories \
             (SLIPWAY_ALLOW_LOCAL_REPOS); push it to a git server and give its https or ssh URL"
        ));
    }
    let path = Path::new(path);
    if !path.is_absolute() {
        return Err(format!("repo `{repo}` must name an absolute path (file:///home/you/app)"));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) || repo.contains('%') {
        return Err(format!("repo `{repo}` must name its folder plainly, without `..` or %-escapes"));
    }
    let folder = path.canonicalize().map_err(|e| format!("repo `{repo}`: cannot open {}: {e}", path.display()))?;
    if !is_repository(&folder) {
        return Err(format!("repo `{repo}`: {} is not a git repository (`git init` makes one)", folder.display()));
    }
    let roots: Vec<PathBuf> = policy.local_roots.iter().filter_map(|root| root.canonicalize().ok()).collect();
    if !roots.iter().any(|root| folder.starts_with(root)) {
        let allowed: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        return Err(format!(
            "repo `{repo}`: {} is outside the folders local repositories may be in ({}; SLIPWAY_LOCAL_REPO_ROOTS)",
            folder.display(),
            allowed.join(", ")
        ));
    }
    Ok(folder)
}

/// A working tree with its own `.git` folder, or a bare repository. A `.git` *file*
/// (a worktree, a submodule's checkout) points elsewhere and is not followed.
fn is_repository(folder: &Path) -> bool {
    let git = folder.join(".git");
    let bare = |dir: &Path| dir.join("HEAD").is_file() && dir.join("objects").is_dir();
    match std::fs::symlink_metadata(&git) {
        Ok(meta) => meta.is_dir() && bare(&git),
        Err(_) => bare(folder),
    }
}

/// The URL a clone fetches from: the resolved folder the check allowed.
pub fn fetch_url(folder: &Path) -> String {
    format!("{SCHEME}{}", folder.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository(at: &Path) {
        std::fs::create_dir_all(at.join(".git/objects")).unwrap();
        std::fs::write(at.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    }

    fn policy(roots: &[&Path]) -> RepoPolicy {
        RepoPolicy { local_roots: roots.iter().map(|r| r.to_path_buf()).collect(), ..Default::default() }
    }

    #[test]
    fn a_repository_under_a_root_is_allowed_by_its_resolved_folder() {
        let root = tempfile::tempdir().unwrap();
        let app = root.path().join("app");
        repository(&app);
        let url = format!("file://{}", app.display());
        assert_eq!(check(&url, &policy(&[root.path()])).unwrap(), app.canonicalize().unwrap());
    }

    #[test]
    fn refusals_say_why() {
        let (root, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let outside = elsewhere.path().join("app");
        repository(&outside);
        // A link under the root to a repository outside it is judged by its target.
        std::os::unix::fs::symlink(&outside, root.path().join("link")).unwrap();
        let plain = root.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        let allowed = policy(&[root.path()]);
        let url = |p: &Path| format!("file://{}", p.display());
        let cases = [
            (url(&outside), &allowed, "outside the folders"),
            (url(&root.path().join("link")), &allowed, "outside the folders"),
            (url(&plain), &allowed, "not a git repository"),
            (url(&root.path().join("missing")), &allowed, "cannot open"),
            (format!("{}/../app", url(root.path())), &allowed, "without `..`"),
            ("file://relative/app".to_string(), &allowed, "absolute path"),
            (url(&outside), &RepoPolicy::default(), "only `slipway standalone`"),
        ];
        for (repo, policy, why) in cases {
            let refused = check(&repo, policy).unwrap_err();
            assert!(refused.contains(why), "{repo}: {refused}");
        }
    }
}
