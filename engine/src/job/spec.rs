//! What a user submits, and its validation.
//!
//! [`JobRequest`] is the JSON body as sent (every field optional so that a missing
//! one is named by us, not by serde); [`JobRequest::validate`] turns it into a
//! [`JobSpec`] with defaults filled in, or names the first field at fault. Only a
//! valid spec is ever stored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use slipway_steps::image_ref::ImageRef;

use super::RetryPolicy;
use super::secret_refs::{GitRequest, Named, RegistryRequest, SecretRefs};
use slipway_steps::aws::ecs::sizes::{FARGATE_CPU, fargate_memory_allowed, fargate_memory_choices};
use slipway_steps::paths::is_confined;
use slipway_steps::runtime::RuntimeKind;

/// The longest `run.timeout_seconds` a server allows by default (one day).
pub const MAX_TIMEOUT_SECONDS: u64 = 86_400;
/// The most attempts a job may ask for.
pub const MAX_ATTEMPTS: u32 = 20;
/// The most attempts a job may ask for unless the server says otherwise.
pub const DEFAULT_ATTEMPTS_CAP: u32 = 10;
/// The longest backoff a job may ask for (one hour).
pub const MAX_BACKOFF_MS: u64 = 3_600_000;

/// What a server fills in and enforces at submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitDefaults {
    pub retry: RetryPolicy,
    /// The longest `run.timeout_seconds` accepted, and the deadline of jobs that
    /// give none.
    pub max_timeout_seconds: u64,
    /// The runtime of jobs that name none.
    pub runtime: RuntimeKind,
    /// Where repositories may be fetched from.
    pub repo: slipway_steps::repo_url::RepoPolicy,
    /// The most attempts a job may ask for (at most [`MAX_ATTEMPTS`]): a job that
    /// crashes its worker cannot be made into a crash loop longer than this.
    pub max_attempts: u32,
}

impl Default for SubmitDefaults {
    fn default() -> Self {
        SubmitDefaults {
            retry: RetryPolicy::default(),
            max_timeout_seconds: MAX_TIMEOUT_SECONDS,
            runtime: RuntimeKind::Docker,
            repo: Default::default(),
            max_attempts: DEFAULT_ATTEMPTS_CAP,
        }
    }
}

/// `POST /v1/jobs` as sent.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The project the job is for (default: the token's); not part of the spec.
    pub project: Option<String>,
    /// The repository: `https://…`, `ssh://…`, `user@host:path`, or `file:///…`
    /// where the server builds local repositories.
    #[schema(required = true, value_type = String)]
    pub repo: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub dockerfile: Option<String>,
    pub context: Option<String>,
    /// The image to build: `registry/path:tag`, or without a registry host a local
    /// image that is not pushed.
    #[schema(required = true, value_type = String)]
    pub image: Option<String>,
    pub build_args: Option<BTreeMap<String, String>>,
    pub env: Option<BTreeMap<String, String>>,
    pub run: Option<RunRequest>,
    pub retry: Option<RetryRequest>,
    pub requires: Option<BTreeMap<String, String>>,
    /// Environment variable → the secret whose value it gets.
    pub secrets: Option<BTreeMap<String, String>>,
    /// BuildKit secret id → the secret it serves.
    pub build_secrets: Option<BTreeMap<String, String>>,
    pub git: Option<GitRequest>,
    pub registry: Option<RegistryRequest>,
    /// Images whose layers the build may reuse (`name:tag` or `name@sha256:…`,
    /// each with its registry host), instead of the last image pushed for the same
    /// repository, Dockerfile and context.
    pub cache_from: Option<Vec<String>>,
    /// `false`: build every step afresh, reusing no layer [default: true].
    pub cache: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub command: Option<Vec<String>>,
    pub timeout_seconds: Option<u64>,
    /// Retry a container that exits non-zero (by default such a job fails at once).
    pub retry_on_failure: Option<bool>,
    /// `docker` or `ecs`.
    pub runtime: Option<String>,
    /// Fargate CPU units and memory in MiB (`ecs` only).
    pub cpu: Option<u32>,
    pub memory: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    pub max_attempts: Option<u32>,
    pub initial_backoff_ms: Option<u64>,
    pub max_backoff_ms: Option<u64>,
}

/// A valid job specification, as stored in `jobs.spec` and shown by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobSpec {
    pub repo: String,
    /// `None`: the remote's default branch.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub dockerfile: String,
    pub context: String,
    pub image: String,
    pub build_args: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub run: RunSpec,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Labels a worker must offer to run the job (`region = eu-west-1`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requires: BTreeMap<String, String>,
    /// The secrets the job names (`secrets`, `build_secrets`, `git`, `registry`).
    #[serde(flatten)]
    pub named_secrets: SecretRefs,
    /// Images the build takes its cache from, as the job named them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_from: Vec<String>,
    /// Whether the build may reuse layers at all.
    #[serde(default = "super::build_cache::on")]
    pub cache: bool,
}

impl JobSpec {
    /// Whether the job's image is built and run on the worker's engine and pushed
    /// nowhere ([`ImageRef::is_local`]).
    pub fn is_local_image(&self) -> bool {
        self.image.parse::<ImageRef>().is_ok_and(|image| image.is_local())
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunSpec {
    /// `None`: the image's own command.
    pub command: Option<Vec<String>>,
    /// The container's deadline; the server's maximum when the job gives none.
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub retry_on_failure: bool,
    #[serde(default)]
    #[schema(schema_with = crate::api::openapi::runtime_kinds)]
    pub runtime: RuntimeKind,
    /// Fargate CPU units and memory in MiB; set for `ecs` runs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
}

/// The field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
    /// The field holds a credential (a token in the repo URL), not merely a
    /// wrong value: answered `credentials_in_url`.
    pub credentials: bool,
}

impl FieldError {
    pub(super) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into(), credentials: false }
    }
}

impl JobRequest {
    pub fn validate(self, defaults: &SubmitDefaults) -> Result<JobSpec, FieldError> {
        let repo = self.repo.ok_or_else(|| FieldError::new("repo", "repo is required"))?;
        check_repo_url(&repo, &defaults.repo)?;
        if let Some(r) = &self.git_ref {
            check_git_ref(r)?;
        }
        let dockerfile = self.dockerfile.unwrap_or_else(|| "Dockerfile".into());
        check_relative_path("dockerfile", &dockerfile)?;
        let context = self.context.unwrap_or_else(|| ".".into());
        check_relative_path("context", &context)?;
        let image = self.image.ok_or_else(|| FieldError::new("image", "image is required"))?;
        let image_ref =
            image.parse::<ImageRef>().map_err(|why| FieldError::new("image", format!("image `{image}` {why}")))?;
        let build_args = self.build_args.unwrap_or_default();
        check_variables("build_args", "a build argument", &build_args)?;
        let env = self.env.unwrap_or_default();
        check_variables("env", "an environment variable", &env)?;
        let run = self.run.unwrap_or_default();
        if let Some(command) = &run.command {
            if command.is_empty() {
                return Err(FieldError::new(
                    "run.command",
                    "run.command must not be empty; leave it out to run the image's own command",
                ));
            }
            for part in command {
                check_no_nul("run.command", part)?;
            }
        }
        let max = defaults.max_timeout_seconds;
        if let Some(t) = run.timeout_seconds
            && !(1..=max).contains(&t)
        {
            return Err(FieldError::new(
                "run.timeout_seconds",
                format!("run.timeout_seconds must be between 1 and {max}"),
            ));
        }
        let retry = check_retry(self.retry.unwrap_or_default(), defaults.retry, defaults.max_attempts)?;
        let runtime = match &run.runtime {
            Some(name) => name.parse::<RuntimeKind>().map_err(|why| FieldError::new("run.runtime", why))?,
            None => defaults.runtime,
        };
        let (cpu, memory) = check_size(runtime, run.cpu, run.memory)?;
        if runtime == RuntimeKind::Ecs && image_ref.is_local() {
            return Err(FieldError::new(
                "image",
                format!(
                    "image `{image}` names no registry host, so it stays on the worker's engine, and an ecs run \
                     pulls its image from a registry: name one (`<account>.dkr.ecr.<region>.amazonaws.com/{image}`)"
                ),
            ));
        }
        let requires = self.requires.unwrap_or_default();
        for (key, value) in &requires {
            let valid = |s: &str| {
                !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            };
            if !valid(key) || !valid(value) {
                return Err(FieldError::new(
                    format!("requires.{key}"),
                    "a label and its value must be 1 to 63 letters, digits, `-`, `_`, `.` or `/`",
                ));
            }
        }
        let (cache_from, cache) = super::build_cache::check(self.cache_from, self.cache)?;
        let named_secrets = SecretRefs::check(Named {
            secrets: self.secrets,
            build_secrets: self.build_secrets,
            git: self.git,
            registry: self.registry,
            env: &env,
            image: &image_ref,
            runtime,
        })?;
        Ok(JobSpec {
            repo,
            git_ref: self.git_ref,
            dockerfile,
            context,
            image,
            build_args,
            env,
            run: RunSpec {
                command: run.command,
                timeout_seconds: Some(run.timeout_seconds.unwrap_or(max)),
                retry_on_failure: run.retry_on_failure.unwrap_or(false),
                runtime,
                cpu,
                memory,
            },
            retry,
            requires,
            named_secrets,
            cache_from,
            cache,
        })
    }
}

/// The most CPU units (1024 a CPU) and memory a `docker` run may name; each worker
/// allows what it allows within these (`SLIPWAY_RUN_MAX_CPUS`, `SLIPWAY_RUN_MAX_MEMORY`).
const DOCKER_MAX_CPU_UNITS: u32 = 256 * 1024;
const DOCKER_MIN_MEMORY_MIB: u32 = 6;
const DOCKER_MAX_MEMORY_MIB: u32 = 1 << 20;

/// Fargate's size for `ecs` runs (a quarter vCPU and 512 MiB unless given), among
/// the pairs Fargate allows; for `docker` runs, what the job names if anything.
fn check_size(
    runtime: RuntimeKind,
    cpu: Option<u32>,
    memory: Option<u32>,
) -> Result<(Option<u32>, Option<u32>), FieldError> {
    if runtime == RuntimeKind::Docker {
        // The worker's defaults unless given; the worker refuses more than it allows.
        if let Some(cpu) = cpu.filter(|c| !(1..=DOCKER_MAX_CPU_UNITS).contains(c)) {
            return Err(FieldError::new(
                "run.cpu",
                format!("run.cpu {cpu} must be between 1 and {DOCKER_MAX_CPU_UNITS} (1024 units are one CPU)"),
            ));
        }
        if let Some(memory) = memory.filter(|m| !(DOCKER_MIN_MEMORY_MIB..=DOCKER_MAX_MEMORY_MIB).contains(m)) {
            return Err(FieldError::new(
                "run.memory",
                format!("run.memory {memory} MiB must be between {DOCKER_MIN_MEMORY_MIB} and {DOCKER_MAX_MEMORY_MIB}"),
            ));
        }
        return Ok((cpu, memory));
    }
    let cpu = cpu.unwrap_or(256);
    if !FARGATE_CPU.contains(&cpu) {
        return Err(FieldError::new("run.cpu", format!("run.cpu must be one of Fargate's sizes: {FARGATE_CPU:?}")));
    }
    let memory = memory.unwrap_or(if cpu == 256 { 512 } else { cpu * 2 });
    if !fargate_memory_allowed(cpu, memory) {
        return Err(FieldError::new(
            "run.memory",
            format!(
                "Fargate does not offer {memory} MiB with {cpu} CPU units; with {cpu} it offers {}",
                fargate_memory_choices(cpu)
            ),
        ));
    }
    Ok((Some(cpu), Some(memory)))
}

fn check_retry(request: RetryRequest, defaults: RetryPolicy, cap: u32) -> Result<RetryPolicy, FieldError> {
    let policy = RetryPolicy {
        max_attempts: request.max_attempts.unwrap_or(defaults.max_attempts),
        initial_backoff_ms: request.initial_backoff_ms.unwrap_or(defaults.initial_backoff_ms),
        max_backoff_ms: request.max_backoff_ms.unwrap_or(defaults.max_backoff_ms),
    };
    let cap = cap.min(MAX_ATTEMPTS);
    if !(1..=cap).contains(&policy.max_attempts) {
        return Err(FieldError::new(
            "retry.max_attempts",
            format!("retry.max_attempts must be between 1 and {cap} (this server's SLIPWAY_MAX_ATTEMPTS)"),
        ));
    }
    if policy.max_backoff_ms > MAX_BACKOFF_MS {
        return Err(FieldError::new(
            "retry.max_backoff_ms",
            format!("retry.max_backoff_ms must be at most {MAX_BACKOFF_MS}"),
        ));
    }
    if policy.initial_backoff_ms > policy.max_backoff_ms {
        return Err(FieldError::new(
            "retry.initial_backoff_ms",
            "retry.initial_backoff_ms must not exceed retry.max_backoff_ms",
        ));
    }
    Ok(policy)
}

/// The repo URL, by the rules the worker checks again ([`slipway_steps::repo_url`]);
/// a credential in it has its own answer.
fn check_repo_url(repo: &str, policy: &slipway_steps::repo_url::RepoPolicy) -> Result<(), FieldError> {
    match slipway_steps::repo_url::check(repo, policy) {
        Ok(()) => Ok(()),
        Err(message) => Err(FieldError {
            credentials: slipway_steps::repo_url::has_credentials(repo),
            ..FieldError::new("repo", message)
        }),
    }
}

/// A branch, tag, full ref name or commit SHA, by git's rules for ref names.
fn check_git_ref(r: &str) -> Result<(), FieldError> {
    let valid = !r.is_empty()
        && r.len() <= 255
        && !r.starts_with(['-', '/', '.'])
        && !r.ends_with(['/', '.'])
        && !r.ends_with(".lock")
        && !r.contains("..")
        && !r.contains("//")
        && !r.contains("@{")
        && !r.chars().any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c))
        && !slipway_steps::repo_url::has_deceptive_chars(r);
    if valid { Ok(()) } else { Err(FieldError::new("ref", format!("ref `{r}` is not a valid branch, tag or commit"))) }
}

fn check_relative_path(field: &str, path: &str) -> Result<(), FieldError> {
    if path.is_empty() {
        return Err(FieldError::new(field, format!("{field} must not be empty")));
    }
    if slipway_steps::repo_url::has_deceptive_chars(path) || path.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            format!("{field} holds a control, invisible or text-direction character; name the file plainly"),
        ));
    }
    if !is_confined(path) {
        return Err(FieldError::new(
            field,
            format!(
                "{field} `{path}` must be a relative path inside the repository (no `..`, not absolute, not in `.git`)"
            ),
        ));
    }
    Ok(())
}

/// Names of environment variables and build arguments: `[A-Za-z_][A-Za-z0-9_]*`
/// (no control characters, no line separators, nothing option-shaped); values
/// without NUL.
fn check_variables(map: &str, what: &str, variables: &BTreeMap<String, String>) -> Result<(), FieldError> {
    for (key, value) in variables {
        let field = format!("{map}.{key}");
        if !slipway_steps::repo_url::is_variable_name(key) {
            return Err(FieldError::new(field, format!("{what} name must match [A-Za-z_][A-Za-z0-9_]*")));
        }
        check_no_nul(&field, value)?;
    }
    Ok(())
}

fn check_no_nul(field: &str, value: &str) -> Result<(), FieldError> {
    if value.contains('\0') {
        return Err(FieldError::new(field, format!("{field} must not contain NUL bytes")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' repositories are served over git:// on loopback.
    fn defaults() -> SubmitDefaults {
        let repo = slipway_steps::repo_url::RepoPolicy {
            allow_insecure: true,
            allow_hosts: vec!["127.0.0.1".into()],
            ..Default::default()
        };
        SubmitDefaults { repo, ..Default::default() }
    }

    fn request() -> JobRequest {
        JobRequest {
            repo: Some("git://127.0.0.1:9418/app.git".into()),
            image: Some("127.0.0.1:5000/team/app:v1".into()),
            ..Default::default()
        }
    }

    fn field_of(r: JobRequest) -> String {
        r.validate(&defaults()).unwrap_err().field
    }

    #[test]
    fn fills_in_defaults() {
        let spec = request().validate(&defaults()).unwrap();
        assert_eq!(spec.dockerfile, "Dockerfile");
        assert_eq!(spec.context, ".");
        assert_eq!(spec.git_ref, None);
        assert_eq!(spec.run.timeout_seconds, Some(MAX_TIMEOUT_SECONDS));
        assert!(!spec.run.retry_on_failure);
        assert_eq!(spec.retry, RetryPolicy::default());
    }

    #[test]
    fn accepts_the_url_kinds_users_give() {
        for repo in ["https://github.com/a/b.git", "ssh://git@h/a/b", "git@github.com:a/b.git", "git://h/b"] {
            let r = JobRequest { repo: Some(repo.into()), ..request() };
            assert!(r.validate(&defaults()).is_ok(), "{repo}");
        }
    }

    #[test]
    fn the_repository_policy_is_the_configured_one() {
        let strict = SubmitDefaults::default();
        let refused = request().validate(&strict).unwrap_err();
        assert_eq!(refused.field, "repo");
        assert!(refused.message.contains("SLIPWAY_REPO_ALLOW_INSECURE"), "{}", refused.message);
        let metadata = JobRequest { repo: Some("https://169.254.169.254/latest".into()), ..request() };
        assert!(metadata.validate(&defaults()).unwrap_err().message.contains("internal address"));
    }

    #[test]
    fn names_the_field_at_fault() {
        assert_eq!(field_of(JobRequest { repo: None, ..request() }), "repo");
        assert_eq!(field_of(JobRequest { image: None, ..request() }), "image");
        for repo in ["file:///etc", "/srv/repo", "ftp://h/r", "", "https://", "-uhoh"] {
            assert_eq!(field_of(JobRequest { repo: Some(repo.into()), ..request() }), "repo", "{repo}");
        }
        assert_eq!(field_of(JobRequest { image: Some("Bad Image".into()), ..request() }), "image");
        assert_eq!(field_of(JobRequest { dockerfile: Some("../Dockerfile".into()), ..request() }), "dockerfile");
        assert_eq!(field_of(JobRequest { context: Some("/abs".into()), ..request() }), "context");
        assert_eq!(field_of(JobRequest { git_ref: Some("a..b".into()), ..request() }), "ref");
        let env = BTreeMap::from([("1X".to_string(), "v".to_string())]);
        assert_eq!(field_of(JobRequest { env: Some(env), ..request() }), "env.1X");
        let run = RunRequest { timeout_seconds: Some(0), ..Default::default() };
        assert_eq!(field_of(JobRequest { run: Some(run), ..request() }), "run.timeout_seconds");
        let run = RunRequest { command: Some(vec![]), ..Default::default() };
        assert_eq!(field_of(JobRequest { run: Some(run), ..request() }), "run.command");
        let retry = RetryRequest { max_attempts: Some(0), ..Default::default() };
        assert_eq!(field_of(JobRequest { retry: Some(retry), ..request() }), "retry.max_attempts");
        let retry = RetryRequest { max_attempts: Some(DEFAULT_ATTEMPTS_CAP + 1), ..Default::default() };
        assert_eq!(field_of(JobRequest { retry: Some(retry), ..request() }), "retry.max_attempts");
        let retry = RetryRequest { initial_backoff_ms: Some(10), max_backoff_ms: Some(5), ..Default::default() };
        assert_eq!(field_of(JobRequest { retry: Some(retry), ..request() }), "retry.initial_backoff_ms");
        let run = RunRequest { runtime: Some("lambda".into()), ..Default::default() };
        assert_eq!(field_of(JobRequest { run: Some(run), ..request() }), "run.runtime");
        let requires = BTreeMap::from([("region".to_string(), "eu west".to_string())]);
        assert_eq!(field_of(JobRequest { requires: Some(requires), ..request() }), "requires.region");
    }

    #[test]
    fn a_local_image_runs_on_docker_only() {
        let local = JobRequest { image: Some("hello:dev".into()), ..request() };
        assert!(local.clone().validate(&defaults()).unwrap().is_local_image());
        assert!(!request().validate(&defaults()).unwrap().is_local_image());
        let ecs = RunRequest { runtime: Some("ecs".into()), ..Default::default() };
        let refused = JobRequest { run: Some(ecs), ..local }.validate(&defaults()).unwrap_err();
        assert_eq!(refused.field, "image");
        assert!(refused.message.contains("names no registry host"), "{}", refused.message);
    }

    #[test]
    fn fargate_sizes_are_checked() {
        let ecs = |cpu, memory| RunRequest { runtime: Some("ecs".into()), cpu, memory, ..Default::default() };
        let spec = JobRequest { run: Some(ecs(None, None)), ..request() }.validate(&defaults()).unwrap();
        assert_eq!((spec.run.runtime, spec.run.cpu, spec.run.memory), (RuntimeKind::Ecs, Some(256), Some(512)));
        let spec = JobRequest { run: Some(ecs(Some(1024), None)), ..request() }.validate(&defaults()).unwrap();
        assert_eq!(spec.run.memory, Some(2048));
        let e = JobRequest { run: Some(ecs(Some(256), Some(4096))), ..request() }.validate(&defaults()).unwrap_err();
        assert_eq!(e.field, "run.memory");
        assert!(e.message.contains("4096 MiB with 256 CPU units"), "{}", e.message);
        assert_eq!(field_of(JobRequest { run: Some(ecs(Some(300), None)), ..request() }), "run.cpu");
        let docker = RunRequest { cpu: Some(0), ..Default::default() };
        assert_eq!(field_of(JobRequest { run: Some(docker), ..request() }), "run.cpu");
        let docker = RunRequest { memory: Some(4), ..Default::default() };
        assert_eq!(field_of(JobRequest { run: Some(docker), ..request() }), "run.memory");
        let docker = RunRequest { cpu: Some(512), memory: Some(256), ..Default::default() };
        let spec = JobRequest { run: Some(docker), ..request() }.validate(&defaults()).unwrap();
        assert_eq!((spec.run.cpu, spec.run.memory), (Some(512), Some(256)), "a docker run names its own size");
    }

    /// Pieces a field is made of: valid ones, and ones made to break a rule.
    fn piece() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("git://127.0.0.1/app".to_string()),
            Just("https://example.com/a.git".to_string()),
            Just("127.0.0.1:5000/app:1".to_string()),
            Just("Dockerfile".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("/".to_string()),
            Just(".git".to_string()),
            Just("@".to_string()),
            Just(":".to_string()),
            Just("-o".to_string()),
            Just("\u{202e}".to_string()),
            Just("\n".to_string()),
            "[a-zA-Z0-9_./:@-]{0,12}",
            "\\PC{0,6}",
        ]
    }

    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::collection::vec(piece(), 0..4).prop_map(|parts| parts.concat())
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// Whatever is sent, the validator answers (no panic), and what it accepts
        /// the worker's own checks accept too: the shared rules are one copy.
        #[test]
        fn what_the_api_accepts_the_worker_accepts(
            repo in proptest::prop_oneof![proptest::strategy::Just("git://127.0.0.1/app".to_string()), text()],
            image in proptest::prop_oneof![proptest::strategy::Just("127.0.0.1:5000/app:1".to_string()), text()],
            dockerfile in text(), context in text(), git_ref in text(),
            env_name in proptest::prop_oneof!["[A-Z_][A-Z0-9_]{0,5}", text()],
            arg_name in proptest::prop_oneof!["[A-Z_][A-Z0-9_]{0,5}", text()],
        ) {
            let request = JobRequest {
                repo: Some(repo),
                image: Some(image),
                dockerfile: Some(dockerfile),
                context: Some(context),
                git_ref: Some(git_ref),
                env: Some(BTreeMap::from([(env_name, "v".to_string())])),
                build_args: Some(BTreeMap::from([(arg_name, "v".to_string())])),
                ..Default::default()
            };
            let policy = defaults().repo.clone();
            if let Ok(spec) = request.validate(&defaults()) {
                proptest::prop_assert_eq!(slipway_steps::repo_url::check(&spec.repo, &policy), Ok(()));
                proptest::prop_assert!(is_confined(&spec.dockerfile) && is_confined(&spec.context));
                proptest::prop_assert!(spec.image.parse::<ImageRef>().is_ok());
                let names = spec.env.keys().chain(spec.build_args.keys());
                for name in names {
                    proptest::prop_assert!(slipway_steps::repo_url::is_variable_name(name), "{:?}", name);
                }
            }
        }
    }
}
