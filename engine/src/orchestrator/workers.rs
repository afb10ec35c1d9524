//! The orchestrator's clients of its workers' `JobService`: one connection per
//! worker, shared by the dispatch loop and the sweep, each call with its own
//! deadline. Calls take and give the engine's types; the messages are written and
//! read at the end of this file, and nowhere else.

use std::collections::HashMap;
use std::time::Duration;

use slipway_proto::convert::step_to_wire;
use slipway_proto::tls::{Server, TlsIdentity};
use slipway_proto::v1::{self, job_service_client::JobServiceClient, leftover::Kind};
use slipway_steps::Step;
use slipway_steps::runtime::RuntimeKind;
use tonic::transport::Channel;

use super::OrchestratorConfig;
use crate::job::JobId;
use crate::store::{ClaimedJob, HeldLease, WorkerOffer};
use slipway_steps::secrets::{GitAuth, JobSecrets, SecretEnv};

/// How long a call to a worker may take before the worker counts as unreachable.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Listing and removing leftovers may wait on a busy engine.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The most cache keys taken from one worker's ping.
const MAX_CACHE_KEYS: usize = 64;

/// One worker, as the orchestrator reaches it.
#[derive(Clone)]
pub struct WorkerLink {
    pub url: String,
    client: JobServiceClient<Channel>,
}

/// What a worker said when pinged.
#[derive(Debug, Clone)]
pub(super) struct WorkerPing {
    pub worker_id: String,
    pub slots_total: u32,
    pub slots_busy: u32,
    /// The labels and runtimes it offers.
    pub offer: WorkerOffer,
    /// The leases of the attempts it runs (those it named unreadably left out).
    pub held: Vec<HeldLease>,
    /// Why it takes no job now (its engine is wedged), if it says so.
    pub unhealthy: Option<String>,
}

/// What a worker's engine (or ECS) holds that this installation made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum LeftoverKind {
    // In the order of removal: containers first, since an image in use by one
    // cannot be removed.
    Container,
    Image,
    Task,
}

#[derive(Debug, Clone)]
pub(super) struct Leftover {
    pub kind: LeftoverKind,
    /// The container id, task ARN or image reference.
    pub id: String,
    /// The job it was made for, when its label names one.
    pub job_id: Option<JobId>,
    /// A task still running past the deadline it was launched with.
    pub past_deadline: bool,
}

impl WorkerLink {
    /// Links to every worker URL (`https://` only), presenting this orchestrator's
    /// certificate and accepting only a worker's; a URL that is not one is logged
    /// and left out.
    pub fn connect_all(urls: &[String], tls: &TlsIdentity) -> Vec<WorkerLink> {
        urls.iter()
            .filter_map(|url| match tls.endpoint(url, Server::Worker) {
                Ok(endpoint) => Some(WorkerLink {
                    url: url.clone(),
                    client: JobServiceClient::new(endpoint.connect_timeout(CALL_TIMEOUT).connect_lazy())
                        .max_encoding_message_size(slipway_proto::MAX_MESSAGE_BYTES)
                        .max_decoding_message_size(slipway_proto::MAX_MESSAGE_BYTES),
                }),
                Err(e) => {
                    tracing::error!(worker.url = %url, error = %e, "not a worker URL; ignored");
                    None
                }
            })
            .collect()
    }

    /// Asks the worker how it is, telling it where to report; fails after `limit`.
    pub(super) async fn ping(&self, report_to: &str, limit: Duration) -> Result<WorkerPing, String> {
        let mut client = self.client.clone();
        let answer = within(limit, client.ping(ping_request(report_to))).await?;
        Ok(ping(answer))
    }

    /// Hands a claimed job to the worker, starting at `first_step`.
    pub(super) async fn start(
        &self,
        job: &ClaimedJob,
        first_step: Step,
        secrets: &JobSecrets,
        config: &OrchestratorConfig,
        traceparent: &str,
    ) -> Result<(), String> {
        let mut request = tonic::Request::new(start_request(job, first_step, secrets, config, traceparent));
        if let Ok(value) = traceparent.parse() {
            request.metadata_mut().insert("traceparent", value);
        }
        let mut client = self.client.clone();
        within(CALL_TIMEOUT, client.start_job(request)).await.map(drop)
    }

    /// Tells the worker to stop the attempt of `lease`; a failure is logged.
    pub(super) async fn cancel(&self, lease: HeldLease, reason: &str) {
        let mut client = self.client.clone();
        let call = client.cancel(cancel_request(lease, reason));
        if let Err(error) = within(CALL_TIMEOUT, call).await {
            tracing::warn!(job.id = %lease.job_id, worker.url = %self.url, %error, "cannot cancel on the worker");
        }
    }

    /// What the worker holds that installation `instance_id` made.
    pub(super) async fn leftovers(&self, instance_id: &str) -> Result<Vec<Leftover>, String> {
        let mut client = self.client.clone();
        let call = client.list_leftovers(list_leftovers_request(instance_id));
        Ok(leftovers(within(SWEEP_TIMEOUT, call).await?))
    }

    /// Removes leftovers; answers how many are gone.
    pub(super) async fn remove_leftovers(&self, leftovers: &[Leftover]) -> Result<u32, String> {
        let mut client = self.client.clone();
        let call = client.remove_leftovers(remove_leftovers_request(leftovers));
        Ok(within(SWEEP_TIMEOUT, call).await?.removed)
    }
}

/// A call's answer, or why there is none: the worker's message, or no answer
/// within `limit` (a worker that hangs is as unreachable as one that is gone).
async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(answer)) => Ok(answer.into_inner()),
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// The opened secrets of an attempt, as `StartJob` carries them.
fn secrets_to_wire(secrets: &JobSecrets) -> v1::JobSecrets {
    use v1::git_credentials::Kind;
    let git = secrets.git.as_ref().map(|git| v1::GitCredentials {
        kind: Some(match git {
            GitAuth::HttpsToken { username, token } => {
                Kind::HttpsToken(v1::HttpsToken { username: username.clone(), token: token.clone() })
            }
            GitAuth::SshKey { private_key, passphrase } => Kind::SshKey(v1::SshKey {
                private_key: private_key.clone(),
                passphrase: passphrase.clone().unwrap_or_default(),
            }),
        }),
    });
    let (mut env, mut env_parameters, mut env_references) = (HashMap::new(), HashMap::new(), HashMap::new());
    for (variable, secret) in &secrets.env {
        match secret {
            SecretEnv::Value { value, parameter } => {
                env.insert(variable.clone(), value.clone());
                env_parameters.insert(variable.clone(), parameter.clone());
            }
            SecretEnv::Reference(arn) => {
                env_references.insert(variable.clone(), arn.clone());
            }
        }
    }
    v1::JobSecrets {
        env,
        env_parameters,
        env_references,
        build: secrets.build.clone().into_iter().collect(),
        git,
        registry: secrets
            .registry
            .as_ref()
            .map(|r| v1::RegistryLogin { username: r.username.clone(), password: r.password.clone() }),
    }
}

/// The `StartJob` for a claimed job, starting at `first_step`.
fn start_request(
    job: &ClaimedJob,
    first_step: Step,
    secrets: &JobSecrets,
    config: &OrchestratorConfig,
    traceparent: &str,
) -> v1::StartJobRequest {
    let spec = &job.spec.0;
    v1::StartJobRequest {
        lease: Some(v1::Lease {
            job_id: job.id.to_string(),
            attempt: job.attempt as u32,
            lease_token: job.lease_token.to_string(),
            worker_id: String::new(),
        }),
        spec: Some(v1::JobSpec {
            repo: spec.repo.clone(),
            git_ref: spec.git_ref.clone().unwrap_or_default(),
            dockerfile: spec.dockerfile.clone(),
            context: spec.context.clone(),
            image: spec.image.clone(),
            build_args: spec.build_args.clone().into_iter().collect(),
            env: spec.env.clone().into_iter().collect(),
            command: spec.run.command.clone().unwrap_or_default(),
            timeout_seconds: spec.run.timeout_seconds.unwrap_or_default(),
            runtime: spec.run.runtime.as_str().to_string(),
            cpu: spec.run.cpu.unwrap_or_default(),
            memory: spec.run.memory.unwrap_or_default(),
            submodules: spec.named_secrets.git.submodules,
            cache_from: spec.cache_from.clone(),
            // The last push of the key, unless the job named its own or none.
            cache_image: job
                .cache_image
                .clone()
                .filter(|_| spec.cache && spec.cache_from.is_empty())
                .unwrap_or_default(),
            no_cache: !spec.cache,
            cache_key: job.cache_key.clone().unwrap_or_default(),
        }),
        outputs: Some(v1::StepOutputs {
            commit_sha: job.commit_sha.clone().unwrap_or_default(),
            image_id: job.image_id.clone().unwrap_or_default(),
            pushed_ref: job.pushed_ref.clone().unwrap_or_default(),
            container_id: job.container_id.clone().unwrap_or_default(),
            task_arn: job.task_arn.clone().unwrap_or_default(),
            log_cursor: job.log_cursor.clone().unwrap_or_default(),
            ..Default::default()
        }),
        first_step: step_to_wire(first_step) as i32,
        report_to: config.report_url.clone(),
        traceparent: traceparent.to_string(),
        instance_id: config.instance_id.clone(),
        fresh_run: job.fresh_run,
        secrets: Some(secrets_to_wire(secrets)),
    }
}

fn ping_request(report_to: &str) -> v1::PingRequest {
    v1::PingRequest { report_to: report_to.to_string() }
}

fn ping(ping: v1::PingResponse) -> WorkerPing {
    WorkerPing {
        held: ping
            .running
            .iter()
            .filter_map(|l| Some(HeldLease { job_id: l.job_id.parse().ok()?, token: l.lease_token.parse().ok()? }))
            .collect(),
        offer: WorkerOffer {
            labels: ping.labels.into_iter().collect(),
            // A worker from before runtimes were announced runs Docker only.
            runtimes: if ping.runtimes.is_empty() {
                vec![RuntimeKind::Docker.as_str().to_string()]
            } else {
                ping.runtimes
            },
            // No more than a worker sends, each no longer than a key.
            cache_keys: ping.cache_keys.into_iter().filter(|k| k.len() <= 64).take(MAX_CACHE_KEYS).collect(),
        },
        worker_id: ping.worker_id,
        slots_total: ping.slots_total,
        slots_busy: ping.slots_busy,
        unhealthy: (!ping.unhealthy.is_empty()).then_some(ping.unhealthy),
    }
}

fn cancel_request(lease: HeldLease, reason: &str) -> v1::CancelRequest {
    v1::CancelRequest {
        job_id: lease.job_id.to_string(),
        reason: reason.to_string(),
        lease_token: lease.token.to_string(),
    }
}

fn list_leftovers_request(instance_id: &str) -> v1::ListLeftoversRequest {
    v1::ListLeftoversRequest { instance_id: instance_id.to_string() }
}

/// The leftovers a worker listed, of the kinds this orchestrator knows.
fn leftovers(answer: v1::ListLeftoversResponse) -> Vec<Leftover> {
    answer
        .leftovers
        .into_iter()
        .filter_map(|l| {
            let kind = match Kind::try_from(l.kind).ok()? {
                Kind::Container => LeftoverKind::Container,
                Kind::Task => LeftoverKind::Task,
                Kind::Image => LeftoverKind::Image,
                Kind::Unspecified => return None,
            };
            Some(Leftover { kind, job_id: l.job_id.parse().ok(), id: l.id, past_deadline: l.past_deadline })
        })
        .collect()
}

fn remove_leftovers_request(leftovers: &[Leftover]) -> v1::RemoveLeftoversRequest {
    let leftovers = leftovers
        .iter()
        .map(|l| v1::Leftover {
            kind: match l.kind {
                LeftoverKind::Container => Kind::Container,
                LeftoverKind::Task => Kind::Task,
                LeftoverKind::Image => Kind::Image,
            } as i32,
            id: l.id.clone(),
            job_id: l.job_id.map(|id| id.to_string()).unwrap_or_default(),
            past_deadline: l.past_deadline,
        })
        .collect();
    v1::RemoveLeftoversRequest { leftovers }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_names_no_more_cache_keys_than_a_worker_may_and_none_longer_than_a_key() {
        let keys = (0..1000).map(|i| if i % 2 == 0 { format!("{i:032x}") } else { "k".repeat(10_000) }).collect();
        let answer = ping(v1::PingResponse { worker_id: "w".into(), cache_keys: keys, ..Default::default() });
        assert_eq!(answer.offer.cache_keys.len(), MAX_CACHE_KEYS);
        assert!(answer.offer.cache_keys.iter().all(|k| k.len() == 32));
    }
}
