//! The worker's side of the wire: a `StartJob` read once into an [`Assignment`] (a
//! malformed one is `INVALID_ARGUMENT`, naming the field), and the worker's reports
//! and lines written for the orchestrator. Past this file, the gRPC service and the
//! reporter, the worker speaks its own types, not prost's.

use std::collections::BTreeMap;

use slipway_proto::convert::{outputs_from_wire, outputs_to_wire, step_from_wire, step_to_wire, stream_to_wire};
use slipway_proto::v1::{self, step_report::Event};
use slipway_steps::aws::ecs::secrets as ecs_secrets;
use slipway_steps::image_ref::{ImageRef, PullRef};
use slipway_steps::paths::is_confined;
use slipway_steps::repo_url::{self, RepoPolicy};
use slipway_steps::runtime::RuntimeKind;
use slipway_steps::secrets::{GitAuth, JobSecrets, RegistryCredentials, SecretEnv};
use slipway_steps::{LogLine, Step};
use tonic::Status;

use crate::assignment::{Assignment, BuildCache, JobLease, JobSpec, StepEvent};

/// A `StartJob` request, checked and typed; reports will name `worker_id`.
pub(crate) fn assignment(
    request: v1::StartJobRequest,
    worker_id: &str,
    repo_policy: &RepoPolicy,
    traceparent: Option<String>,
) -> Result<Assignment, Status> {
    let lease = request.lease.ok_or_else(|| Status::invalid_argument("lease is required"))?;
    // The id names the job's folder and its containers: only a UUID will do.
    if uuid::Uuid::parse_str(&lease.job_id).is_err() {
        return Err(Status::invalid_argument("lease.job_id is not a job id"));
    }
    let spec = request.spec.ok_or_else(|| Status::invalid_argument("spec is required"))?;
    check_spec(&spec, repo_policy)?;
    let runtime = if spec.runtime.is_empty() {
        RuntimeKind::Docker
    } else {
        spec.runtime.parse().map_err(|_| Status::invalid_argument("spec.runtime is not a runtime"))?
    };
    let first_step =
        step_from_wire(request.first_step).ok_or_else(|| Status::invalid_argument("first_step is not a step"))?;
    if request.report_to.is_empty() {
        return Err(Status::invalid_argument("report_to is required"));
    }
    let outputs = request.outputs.unwrap_or_default();
    let cache = build_cache(&spec)?;
    Ok(Assignment {
        lease: JobLease {
            job_id: lease.job_id,
            attempt: lease.attempt,
            token: lease.lease_token,
            worker_id: worker_id.to_string(),
        },
        spec: JobSpec {
            repo: spec.repo,
            git_ref: non_empty(spec.git_ref),
            dockerfile: spec.dockerfile,
            context: spec.context,
            image: spec.image,
            build_args: spec.build_args.into_iter().collect(),
            env: spec.env.into_iter().collect(),
            command: spec.command,
            runtime,
            cpu: spec.cpu,
            memory: spec.memory,
            timeout: (spec.timeout_seconds > 0).then(|| std::time::Duration::from_secs(spec.timeout_seconds)),
            submodules: spec.submodules,
            cache,
        },
        secrets: secrets_from_wire(request.secrets.unwrap_or_default())?,
        log_cursor: non_empty(outputs.log_cursor.clone()),
        outputs: outputs_from_wire(&outputs),
        first_step,
        report_to: request.report_to,
        instance_id: request.instance_id,
        fresh_run: request.fresh_run,
        // The caller's trace context, from the call's metadata; the field is the fallback.
        traceparent: traceparent.unwrap_or(request.traceparent),
    })
}

/// An attempt's secrets, with the names the API allows (a value is passed on as
/// sent: the worker never builds a path or a command from one).
fn secrets_from_wire(secrets: v1::JobSecrets) -> Result<JobSecrets, Status> {
    use v1::git_credentials::Kind;
    let variables = secrets.env.keys().chain(secrets.env_references.keys());
    if let Some(name) = variables.into_iter().find(|n| !repo_url::is_variable_name(n)) {
        return Err(Status::invalid_argument(format!("secrets.env: `{name}` is not a variable name")));
    }
    let mut env = BTreeMap::new();
    for (variable, value) in secrets.env {
        let parameter = secrets.env_parameters.get(&variable).cloned().unwrap_or_default();
        if !ecs_secrets::is_parameter_name(&parameter) {
            return Err(Status::invalid_argument(format!(
                "secrets.env_parameters: `{variable}` has no valid parameter"
            )));
        }
        env.insert(variable, SecretEnv::Value { value, parameter });
    }
    for (variable, arn) in secrets.env_references {
        if !ecs_secrets::is_secret_arn(&arn) || env.contains_key(&variable) {
            return Err(Status::invalid_argument(format!("secrets.env_references: `{variable}` is not one ARN")));
        }
        env.insert(variable, SecretEnv::Reference(arn));
    }
    let git = match secrets.git.and_then(|g| g.kind) {
        None => None,
        Some(Kind::HttpsToken(t)) => Some(GitAuth::HttpsToken { username: t.username, token: t.token }),
        Some(Kind::SshKey(k)) => {
            Some(GitAuth::SshKey { private_key: k.private_key, passphrase: non_empty(k.passphrase) })
        }
    };
    Ok(JobSecrets {
        env,
        build: secrets.build.into_iter().collect(),
        git,
        registry: secrets.registry.map(|r| RegistryCredentials { username: r.username, password: r.password }),
    })
}

pub(crate) fn lease(lease: &JobLease) -> v1::Lease {
    v1::Lease {
        job_id: lease.job_id.clone(),
        attempt: lease.attempt,
        lease_token: lease.token.clone(),
        worker_id: lease.worker_id.clone(),
    }
}

pub(crate) fn step_report(
    lease: &JobLease,
    step: Step,
    event: &StepEvent,
    exit_code: Option<i64>,
    then_start: Option<Step>,
) -> v1::StepReport {
    let event = match event {
        StepEvent::Started => Event::Started(v1::step_report::Started {}),
        StepEvent::Progress(o) => Event::Progress(outputs_to_wire(o)),
        StepEvent::Succeeded(o) => Event::Succeeded(outputs_to_wire(o)),
        StepEvent::Failed { code, message, retryable } => {
            Event::Failed(v1::StepFailure { code: code.to_string(), message: message.clone(), retryable: *retryable })
        }
        StepEvent::Released => Event::Released(v1::step_report::Released {}),
    };
    v1::StepReport {
        lease: Some(self::lease(lease)),
        step: step_to_wire(step) as i32,
        event: Some(event),
        exit_code,
        then_start: then_start.map_or(0, |s| step_to_wire(s) as i32),
    }
}

pub(crate) fn log_line(line: LogLine) -> v1::LogLine {
    let at_micros = line.at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or_default();
    v1::LogLine {
        step: step_to_wire(line.step) as i32,
        stream: stream_to_wire(line.stream) as i32,
        text: line.text,
        at_micros,
        cursor: line.cursor.unwrap_or_default(),
    }
}

/// The job's own fields, by the API's rules again: the worker trusts nothing a
/// caller sends, and never builds a path or a command from what it has not checked.
fn check_spec(spec: &v1::JobSpec, repo_policy: &RepoPolicy) -> Result<(), Status> {
    let refuse = |field: &str, why: String| Err(Status::invalid_argument(format!("spec.{field}: {why}")));
    if let Err(why) = repo_url::check(&spec.repo, repo_policy) {
        // The refusal may be read by whoever sent it: no credential in it.
        return refuse("repo", why);
    }
    for (field, path) in [("dockerfile", &spec.dockerfile), ("context", &spec.context)] {
        if path.is_empty() || !is_confined(path) {
            return refuse(field, format!("`{path}` is not a relative path inside the repository"));
        }
    }
    if let Err(why) = spec.image.parse::<ImageRef>() {
        return refuse("image", format!("`{}` {why}", spec.image));
    }
    for (field, names) in [("env", &spec.env), ("build_args", &spec.build_args)] {
        if let Some(name) = names.keys().find(|n| !repo_url::is_variable_name(n)) {
            return refuse(field, format!("`{name}` is not a variable name"));
        }
    }
    Ok(())
}

/// The most images a job's build takes its cache from (the API allows fewer).
const MAX_CACHE_IMAGES: usize = 16;

/// The build's cache sources and key, checked: images by the rules of references,
/// each naming its registry host; a key of hex digits.
fn build_cache(spec: &v1::JobSpec) -> Result<BuildCache, Status> {
    let refuse = |field: &str, why: String| Status::invalid_argument(format!("spec.{field}: {why}"));
    if spec.cache_from.len() > MAX_CACHE_IMAGES {
        return Err(refuse("cache_from", format!("more than {MAX_CACHE_IMAGES} images")));
    }
    let image = |field: &str, text: &str| -> Result<PullRef, Status> {
        let image: PullRef = text.parse().map_err(|why| refuse(field, format!("`{text}` {why}")))?;
        match image.registry() {
            Some(_) => Ok(image),
            None => Err(refuse(field, format!("`{text}` names no registry host"))),
        }
    };
    let named = spec.cache_from.iter().map(|text| image("cache_from", text)).collect::<Result<_, _>>()?;
    let last_pushed = match spec.cache_image.as_str() {
        "" => None,
        text => Some(image("cache_image", text)?),
    };
    let key = non_empty(spec.cache_key.clone());
    if key.as_deref().is_some_and(|k| k.len() > 64 || !k.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(refuse("cache_key", "is not a cache key".into()));
    }
    Ok(BuildCache { named, last_pushed, off: spec.no_cache, key })
}

/// A wire string that may be empty, as an option.
fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' repositories are served over git:// on loopback.
    fn test_policy() -> RepoPolicy {
        RepoPolicy { allow_insecure: true, allow_hosts: vec!["127.0.0.1".into()], ..Default::default() }
    }

    fn start(job_id: &str, runtime: &str) -> v1::StartJobRequest {
        v1::StartJobRequest {
            lease: Some(v1::Lease { job_id: job_id.into(), attempt: 1, lease_token: "t".into(), worker_id: "".into() }),
            spec: Some(v1::JobSpec {
                runtime: runtime.into(),
                repo: "git://127.0.0.1/app".into(),
                dockerfile: "Dockerfile".into(),
                context: ".".into(),
                image: "127.0.0.1:5000/app:1".into(),
                ..Default::default()
            }),
            first_step: step_to_wire(Step::Clone) as i32,
            report_to: "http://127.0.0.1:50052".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_start_naming_a_path_or_an_unknown_runtime_is_refused_naming_the_field() {
        let id = "01a22ee5-2edf-73b7-8e61-c91417b10ac9";
        let job = assignment(start(id, ""), "w", &test_policy(), None).unwrap();
        assert_eq!((job.spec.runtime, job.lease.worker_id.as_str()), (RuntimeKind::Docker, "w"));
        let e = assignment(start("../../../../victim", "docker"), "w", &test_policy(), None).unwrap_err();
        assert!(e.message().contains("lease.job_id"), "{}", e.message());
        let e = assignment(start(id, "kubernetes"), "w", &test_policy(), None).unwrap_err();
        assert!(e.message().contains("spec.runtime"), "{}", e.message());
        let e =
            assignment(v1::StartJobRequest { report_to: String::new(), ..start(id, "") }, "w", &test_policy(), None)
                .unwrap_err();
        assert!(e.message().contains("report_to"), "{}", e.message());
        // Its own repository policy applies, whatever the orchestrator allowed.
        let e = assignment(start(id, ""), "w", &RepoPolicy::default(), None).unwrap_err();
        assert!(e.message().contains("spec.repo") && e.message().contains("git://"), "{}", e.message());
        // What the API refuses, the worker refuses too.
        let with_spec = |change: fn(&mut v1::JobSpec)| {
            let mut request = start(id, "");
            change(request.spec.as_mut().unwrap());
            assignment(request, "w", &test_policy(), None).unwrap_err().message().to_string()
        };
        assert!(with_spec(|s| s.repo = "/etc".into()).contains("spec.repo"));
        assert!(with_spec(|s| s.repo = "file:///root/.ssh".into()).contains("spec.repo"));
        let leaked = with_spec(|s| s.repo = "https://s3cr3t@example.com/a.git".into());
        assert!(leaked.contains("spec.repo") && !leaked.contains("s3cr3t"), "{leaked}");
        assert!(with_spec(|s| s.dockerfile = "../../etc/passwd".into()).contains("spec.dockerfile"));
        assert!(with_spec(|s| s.context = ".git".into()).contains("spec.context"));
        assert!(with_spec(|s| s.image = "Bad Image".into()).contains("spec.image"));
        assert!(
            with_spec(|s| {
                s.env.insert("--privileged".into(), "1".into());
            })
            .contains("spec.env")
        );
        assert!(
            with_spec(|s| {
                s.build_args.insert("A\nB".into(), "1".into());
            })
            .contains("spec.build_args")
        );
        assert!(with_spec(|s| s.cache_from = vec!["app:1".into()]).contains("names no registry host"));
        assert!(with_spec(|s| s.cache_from = vec!["127.0.0.1:5000/a@sha256:0".into()]).contains("spec.cache_from"));
        assert!(with_spec(|s| s.cache_from = vec!["127.0.0.1:5000/a".into(); 17]).contains("spec.cache_from"));
        assert!(with_spec(|s| s.cache_image = "--help".into()).contains("spec.cache_image"));
        assert!(with_spec(|s| s.cache_key = "../x".into()).contains("spec.cache_key"));
        let mut request = start(id, "");
        let spec = request.spec.as_mut().unwrap();
        spec.cache_from = vec!["127.0.0.1:5000/a:cache".into()];
        spec.cache_key = "0123abcd".into();
        let cache = assignment(request, "w", &test_policy(), None).unwrap().spec.cache;
        assert_eq!(cache.named[0].to_string(), "127.0.0.1:5000/a:cache");
        assert_eq!((cache.key.as_deref(), cache.last_pushed, cache.off), (Some("0123abcd"), None, false));
    }
}
