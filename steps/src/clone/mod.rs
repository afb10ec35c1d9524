//! Clone: fetch one commit of a remote repository into a folder and check it out.
//!
//! The ref is resolved against the remote's advertisement first, so that a missing
//! repository or ref is a permanent error named as such before anything is fetched.
//! A branch or tag is fetched shallow (depth 1); a commit SHA that no ref points at
//! needs the history, so it is fetched in full. The resolved SHA is returned so the
//! engine can pin it: a later attempt builds the same code even if the branch moved.

use std::path::Path;
use std::time::{Duration, Instant};

use git2::{
    AutotagOption, Direction, ErrorClass, ErrorCode as GitCode, FetchOptions, Oid, RemoteCallbacks, Repository,
};
use tokio_util::sync::CancellationToken;

use crate::repo_url::{RepoPolicy, host_and_port, redacted};
use crate::secrets::GitAuth;
use crate::{ErrorCode, LogSink, LogStream, StepError};

mod auth;
mod submodules;

pub use submodules::fetch_submodules;

/// How long libgit2 waits to connect to a remote, and for any byte from it.
const CONNECT_TIMEOUT_MS: i32 = 15_000;
const READ_TIMEOUT_MS: i32 = 120_000;

/// Bounds how long a clone can hang on a remote that stops answering, so that a
/// stalled server cannot hold a worker thread forever. Call it once, before the
/// process starts any thread: it sets libgit2 globals.
#[allow(unsafe_code)]
pub fn configure_timeouts() {
    // SAFETY: libgit2 requires these globals to be set before other threads run
    // (its options are unsynchronized); the binary calls this first thing in
    // `main`, before the async runtime starts its threads.
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(CONNECT_TIMEOUT_MS);
        let _ = git2::opts::set_server_timeout_in_milliseconds(READ_TIMEOUT_MS);
    }
}

/// How long resolving a repository's host may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves the repository's host and refuses it when `policy` does not allow
/// where it is (see [`crate::repo_url`]); called just before the clone connects.
/// Returns the URL to fetch from: `repo`, or for a local repository the folder it
/// resolved to ([`crate::local_repo`]).
pub async fn check_remote(repo: &str, policy: &RepoPolicy) -> Result<String, StepError> {
    if repo.starts_with(crate::local_repo::SCHEME) {
        let folder =
            crate::local_repo::check(repo, policy).map_err(|why| StepError::new(ErrorCode::RepoNotAllowed, why))?;
        return Ok(crate::local_repo::fetch_url(&folder));
    }
    let shown = redacted(repo);
    let (host, port) = host_and_port(repo)
        .ok_or_else(|| StepError::new(ErrorCode::RepoNotAllowed, format!("{shown} has no valid host and port")))?;
    let name = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let addresses: Vec<std::net::IpAddr> =
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name.as_str(), port))).await {
            Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
            Ok(Err(_)) | Err(_) => {
                return Err(StepError::new(
                    ErrorCode::CloneFailed,
                    format!("could not clone {shown}: cannot resolve `{host}`"),
                ));
            }
        };
    policy.check_addresses(&host, &addresses).map_err(|why| StepError::new(ErrorCode::RepoNotAllowed, why))?;
    Ok(repo.to_string())
}

/// What to fetch.
#[derive(Debug, Clone)]
pub struct CloneRequest {
    pub repo: String,
    /// Branch, tag, full ref name or full commit SHA; `None`: the default branch.
    pub git_ref: Option<String>,
    /// A SHA an earlier attempt resolved; when set it wins over `git_ref`.
    pub pinned_sha: Option<String>,
    /// The most bytes fetched, and the most bytes of files checked out.
    pub max_bytes: u64,
    /// The job's credentials; without them, the worker's ssh agent (ssh) or none.
    pub auth: Option<GitAuth>,
}

/// Clones into `dest` (an empty or missing folder) and returns the checked-out SHA.
/// Blocking: call it from `spawn_blocking`.
pub fn clone_repo(
    request: &CloneRequest,
    dest: &Path,
    logs: &LogSink,
    cancel: &CancellationToken,
) -> Result<String, StepError> {
    std::fs::create_dir_all(dest).map_err(|e| internal("cannot create the clone folder", e))?;
    let repo = Repository::init(dest).map_err(|e| internal("cannot initialise the clone", e))?;
    let mut remote = repo.remote_anonymous(&request.repo).map_err(|e| classify(&request.repo, e))?;

    let too_large = std::sync::atomic::AtomicBool::new(false);
    let limit = Limit { max_bytes: request.max_bytes, exceeded: &too_large };
    let target = {
        let connection = remote
            .connect_auth(Direction::Fetch, Some(callbacks(request.auth.as_ref(), logs, cancel, limit)), None)
            .map_err(|e| classify(&request.repo, e))?;
        let heads: Vec<(String, Oid)> = connection
            .list()
            .map_err(|e| classify(&request.repo, e))?
            .iter()
            .map(|h| (h.name().to_string(), h.oid()))
            .collect();
        let default_branch = connection.default_branch().ok().and_then(|b| b.as_str().ok().map(String::from));
        resolve(request, &heads, default_branch.as_deref())?
    };
    logs.blocking_line(LogStream::System, format!("fetching {} from {}", target.describe(), redacted(&request.repo)));

    let mut fetch = FetchOptions::new();
    fetch.remote_callbacks(callbacks(request.auth.as_ref(), logs, cancel, limit)).download_tags(AutotagOption::None);
    let refspecs: Vec<String> = match &target.refname {
        Some(name) => {
            // libgit2's local transport fetches no shallow history; a local
            // repository's history is on the same disk anyway.
            if !request.repo.starts_with(crate::local_repo::SCHEME) {
                fetch.depth(1);
            }
            vec![format!("+{name}:refs/slipway/target")]
        }
        // A commit no ref points at: fetch everything and look for it.
        None => vec!["+refs/heads/*:refs/remotes/origin/*".into(), "+refs/tags/*:refs/tags/*".into()],
    };
    let fetched = remote.fetch(&refspecs, Some(&mut fetch), None);
    if too_large.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(too_large_error(&request.repo, "its download", request.max_bytes));
    }
    fetched.map_err(|e| if cancel.is_cancelled() { StepError::cancelled() } else { classify(&request.repo, e) })?;

    let commit = repo.find_commit(target.oid).map_err(|_| {
        StepError::new(ErrorCode::RefNotFound, format!("commit {} is not in {}", target.oid, redacted(&request.repo)))
    })?;
    // A small pack can hold huge files (a gigabyte of zeros compresses to little):
    // their sizes are read from the object headers before anything is written.
    let files =
        checkout_bytes(&repo, &commit, request.max_bytes).map_err(|e| internal("cannot read the commit's tree", e))?;
    if files > request.max_bytes {
        return Err(too_large_error(&request.repo, "its files", request.max_bytes));
    }
    let mut checkout = git2::build::CheckoutBuilder::new();
    checkout.force();
    repo.checkout_tree(commit.as_object(), Some(&mut checkout))
        .map_err(|e| internal("cannot check out the commit", e))?;
    repo.set_head_detached(target.oid).map_err(|e| internal("cannot check out the commit", e))?;
    let sha = target.oid.to_string();
    logs.blocking_line(LogStream::System, format!("checked out {sha}"));
    Ok(sha)
}

/// The commit to check out and, when a ref points at it, that ref's name.
#[derive(Debug, PartialEq)]
struct Target {
    oid: Oid,
    refname: Option<String>,
}

impl Target {
    fn describe(&self) -> String {
        match &self.refname {
            Some(name) => format!("{name} ({})", self.oid),
            None => format!("commit {}", self.oid),
        }
    }
}

/// Picks the commit from the remote's advertised refs.
fn resolve(request: &CloneRequest, heads: &[(String, Oid)], default_branch: Option<&str>) -> Result<Target, StepError> {
    let by_oid = |oid: Oid| Target {
        oid,
        refname: heads.iter().find(|(n, o)| *o == oid && !n.ends_with("^{}")).map(|(n, _)| n.clone()),
    };
    if let Some(sha) = request.pinned_sha.as_deref() {
        let oid = Oid::from_str(sha).map_err(|_| ref_not_found(request, sha))?;
        return Ok(by_oid(oid));
    }
    let wanted = match request.git_ref.as_deref() {
        Some(r) => r.to_string(),
        None => default_branch
            .map(String::from)
            .or_else(|| heads.iter().find(|(n, _)| n == "HEAD").map(|_| "HEAD".to_string()))
            .ok_or_else(|| {
                StepError::new(ErrorCode::RefNotFound, format!("{} has no default branch", redacted(&request.repo)))
            })?,
    };
    let candidates = [wanted.clone(), format!("refs/heads/{wanted}"), format!("refs/tags/{wanted}")];
    for name in &candidates {
        // An annotated tag's commit is advertised as `<tag>^{}`.
        let peeled = format!("{name}^{{}}");
        if let Some((_, oid)) = heads.iter().find(|(n, _)| *n == peeled) {
            return Ok(Target { oid: *oid, refname: Some(name.clone()) });
        }
        if let Some((n, oid)) = heads.iter().find(|(n, _)| n == name) {
            return Ok(Target { oid: *oid, refname: Some(n.clone()) });
        }
    }
    if wanted.len() == 40 && wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        let oid = Oid::from_str(&wanted).map_err(|_| ref_not_found(request, &wanted))?;
        return Ok(by_oid(oid));
    }
    Err(ref_not_found(request, &wanted))
}

fn ref_not_found(request: &CloneRequest, wanted: &str) -> StepError {
    StepError::new(ErrorCode::RefNotFound, format!("ref `{wanted}` does not exist in {}", redacted(&request.repo)))
}

/// The size bound of one clone, and whether it was crossed.
#[derive(Clone, Copy)]
struct Limit<'a> {
    max_bytes: u64,
    exceeded: &'a std::sync::atomic::AtomicBool,
}

fn too_large_error(repo: &str, what: &str, max_bytes: u64) -> StepError {
    StepError::new(
        ErrorCode::CloneTooLarge,
        format!("could not clone {}: {what} exceed {max_bytes} bytes (SLIPWAY_MAX_CLONE_BYTES)", redacted(repo)),
    )
}

/// The bytes of the files a checkout of `commit` writes, counted until past `max`.
fn checkout_bytes(repo: &Repository, commit: &git2::Commit<'_>, max: u64) -> Result<u64, git2::Error> {
    let odb = repo.odb()?;
    let mut total = 0u64;
    let mut failed = None;
    commit
        .tree()?
        .walk(git2::TreeWalkMode::PreOrder, |_, entry| {
            if entry.kind() == Some(git2::ObjectType::Blob) {
                match odb.read_header(entry.id()) {
                    Ok((size, _)) => total = total.saturating_add(size as u64),
                    Err(e) => {
                        failed = Some(e);
                        return git2::TreeWalkResult::Abort;
                    }
                }
            }
            if total > max { git2::TreeWalkResult::Abort } else { git2::TreeWalkResult::Ok }
        })
        .or_else(|e| if total > max { Ok(()) } else { Err(e) })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

fn callbacks<'a>(
    auth: Option<&'a GitAuth>,
    logs: &'a LogSink,
    cancel: &'a CancellationToken,
    limit: Limit<'a>,
) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    let mut credential_tries = 0;
    cb.credentials(move |_url, username, allowed| {
        credential_tries += 1;
        if credential_tries > 3 {
            return Err(git2::Error::from_str("credentials refused"));
        }
        auth::credential(auth, username, allowed)
    });
    let mut last = Instant::now() - Duration::from_secs(1);
    cb.transfer_progress(move |p| {
        if p.received_bytes() as u64 > limit.max_bytes {
            limit.exceeded.store(true, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        let done = p.received_objects() == p.total_objects();
        if done || last.elapsed() >= Duration::from_millis(500) {
            last = Instant::now();
            logs.blocking_line(
                LogStream::System,
                format!(
                    "received {}/{} objects, {} bytes",
                    p.received_objects(),
                    p.total_objects(),
                    p.received_bytes()
                ),
            );
        }
        !cancel.is_cancelled()
    });
    // The remote's messages arrive in arbitrary pieces, with `\r` redrawing progress
    // counters: keep whole lines only, and of counters only the final one.
    let mut pending = String::new();
    cb.sideband_progress(move |text| {
        pending.push_str(&String::from_utf8_lossy(text));
        while let Some(end) = pending.find(['\n', '\r']) {
            let line: String = pending.drain(..=end).collect();
            let line = line.trim();
            let counter = line.ends_with('%') || (line.contains('%') && !line.ends_with("done."));
            if !line.is_empty() && !counter {
                logs.blocking_line(LogStream::System, format!("remote: {line}"));
            }
        }
        !cancel.is_cancelled()
    });
    cb
}

/// What a failed fetch means for the job, in a message that names the URL without
/// its credential and never repeats what the remote said (a banner or an error page
/// would tell whoever submitted the job what listens there). libgit2's own words go
/// to the worker's log only.
fn classify(repo: &str, e: git2::Error) -> StepError {
    let text = e.message().to_ascii_lowercase();
    let shown = redacted(repo);
    tracing::info!(repo = %shown, error = %e.message().replace(repo, &shown), "clone failed");
    let repo = shown.as_str();
    let code = if e.code() == GitCode::Auth
        || text.contains("authentication")
        || text.contains("credentials")
        || text.contains("401")
        || text.contains("403")
    {
        ErrorCode::AuthRefused
    } else if e.code() == GitCode::NotFound
        || text.contains("not found")
        || text.contains("not exported")
        || text.contains("does not appear to be a git repository")
        || text.contains("404")
        || (e.class() == ErrorClass::Invalid && text.contains("unsupported url"))
    {
        ErrorCode::RepoNotFound
    } else {
        ErrorCode::CloneFailed
    };
    let why = match e.class() {
        ErrorClass::Net | ErrorClass::Os => "the connection failed or was closed",
        ErrorClass::Ssh => "the ssh session failed",
        ErrorClass::Http => "the http exchange failed",
        ErrorClass::Ssl => "the TLS handshake failed",
        _ => "the remote did not answer as a git server",
    };
    let message = match code {
        ErrorCode::RepoNotFound => format!("could not clone {repo}: it does not exist or cannot be read"),
        ErrorCode::AuthRefused => format!("could not clone {repo}: the credentials were refused"),
        _ => format!("could not clone {repo}: {why}"),
    };
    StepError::new(code, message).with_source(e)
}

fn internal(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> StepError {
    StepError::new(ErrorCode::Internal, format!("{what}: {e}")).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    fn request(git_ref: Option<&str>) -> CloneRequest {
        CloneRequest {
            repo: "git://x/r".into(),
            git_ref: git_ref.map(String::from),
            pinned_sha: None,
            max_bytes: 1 << 30,
            auth: None,
        }
    }

    fn heads() -> Vec<(String, Oid)> {
        vec![
            ("HEAD".into(), oid(1)),
            ("refs/heads/main".into(), oid(1)),
            ("refs/heads/dev".into(), oid(2)),
            ("refs/tags/v1".into(), oid(3)),
            ("refs/tags/v1^{}".into(), oid(4)),
        ]
    }

    #[test]
    fn resolves_default_branch_branches_and_peeled_tags() {
        let h = heads();
        let main = resolve(&request(None), &h, Some("refs/heads/main")).unwrap();
        assert_eq!(main, Target { oid: oid(1), refname: Some("refs/heads/main".into()) });
        assert_eq!(resolve(&request(Some("dev")), &h, None).unwrap().oid, oid(2));
        assert_eq!(resolve(&request(Some("v1")), &h, None).unwrap().oid, oid(4));
    }

    #[test]
    fn a_sha_no_ref_points_at_needs_a_full_fetch_and_an_unknown_ref_is_permanent() {
        let h = heads();
        let sha = oid(9).to_string();
        let t = resolve(&request(Some(&sha)), &h, None).unwrap();
        assert_eq!(t, Target { oid: oid(9), refname: None });
        let t = resolve(&request(Some(&oid(2).to_string())), &h, None).unwrap();
        assert_eq!(t.refname.as_deref(), Some("refs/heads/dev"));
        let err = resolve(&request(Some("nope")), &h, None).unwrap_err();
        assert_eq!(err.code, ErrorCode::RefNotFound);
    }

    #[test]
    fn a_pinned_sha_wins_over_the_ref() {
        let mut r = request(Some("dev"));
        r.pinned_sha = Some(oid(1).to_string());
        assert_eq!(resolve(&r, &heads(), None).unwrap().oid, oid(1));
    }
}
