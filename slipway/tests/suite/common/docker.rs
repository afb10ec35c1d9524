//! What runs leave behind: containers on the engine, clone folders on the worker.

use super::*;

/// Runs the docker CLI; its trimmed output.
pub fn docker_cli(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Containers the engine still has for a job, running or not.
pub fn containers_of(job_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter", &format!("label=slipway.job_id={job_id}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker ps failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().split_whitespace().map(String::from).collect()
}

/// Waits until the engine has no container of the job left (a run that went well
/// is removed just after its end is committed).
pub async fn wait_containers_gone(job_id: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let left = containers_of(job_id);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "containers of job {job_id} left after {limit:?}: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Job folders under a work folder (`<work>/<worker>/job-*`).
pub fn job_folders(work_dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for worker in std::fs::read_dir(work_dir).unwrap().flatten() {
        if let Ok(jobs) = std::fs::read_dir(worker.path()) {
            found.extend(jobs.flatten().map(|j| j.path()));
        }
    }
    found
}

/// The job folders left under a work folder once `limit` has passed: a worker
/// removes an attempt's folder right after reporting its end, so a test that saw
/// the end gives it a moment.
pub async fn job_folders_left(work_dir: &Path, limit: Duration) -> Vec<PathBuf> {
    let deadline = Instant::now() + limit;
    loop {
        let left = job_folders(work_dir);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many containers the engine ever created for a job since `since` (unix seconds).
pub fn containers_created(job_id: &str, since: u64) -> usize {
    let until = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
    let out = Command::new("docker")
        .args(["events", "--since", &since.to_string(), "--until", &until.to_string()])
        .args(["--filter", "type=container", "--filter", "event=create"])
        .args(["--filter", &format!("label=slipway.job_id={job_id}"), "--format", "{{.ID}}"])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker events failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().filter(|l| !l.trim().is_empty()).count()
}
