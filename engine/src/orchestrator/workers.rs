//! The orchestrator's clients of its workers' `JobService`: one connection per
//! worker, shared by the dispatch loop and the sweep, each call with its own
//! deadline. Calls take and give the engine's types; the messages are written and
//! read in [`super::wire`].

use std::time::Duration;

use slipway_proto::v1::job_service_client::JobServiceClient;
use slipway_steps::Step;
use tonic::transport::{Channel, Endpoint};

use super::{OrchestratorConfig, wire};
use crate::job::JobId;
use crate::store::{ClaimedJob, HeldLease, WorkerOffer};

/// How long a call to a worker may take before the worker counts as unreachable.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Listing and removing leftovers may wait on a busy engine.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Links to every worker URL; a URL that is not one is logged and left out.
    pub fn connect_all(urls: &[String]) -> Vec<WorkerLink> {
        urls.iter()
            .filter_map(|url| match Endpoint::from_shared(url.clone()) {
                Ok(endpoint) => Some(WorkerLink {
                    url: url.clone(),
                    client: JobServiceClient::new(endpoint.connect_timeout(CALL_TIMEOUT).connect_lazy()),
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
        let answer = within(limit, client.ping(wire::ping_request(report_to))).await?;
        Ok(wire::ping(answer))
    }

    /// Hands a claimed job to the worker, starting at `first_step`.
    pub(super) async fn start(
        &self,
        job: &ClaimedJob,
        first_step: Step,
        config: &OrchestratorConfig,
        traceparent: &str,
    ) -> Result<(), String> {
        let mut request = tonic::Request::new(wire::start_request(job, first_step, config, traceparent));
        if let Ok(value) = traceparent.parse() {
            request.metadata_mut().insert("traceparent", value);
        }
        let mut client = self.client.clone();
        within(CALL_TIMEOUT, client.start_job(request)).await.map(drop)
    }

    /// Tells the worker to stop the attempt of `lease`; a failure is logged.
    pub(super) async fn cancel(&self, lease: HeldLease, reason: &str) {
        let mut client = self.client.clone();
        let call = client.cancel(wire::cancel_request(lease, reason));
        if let Err(error) = within(CALL_TIMEOUT, call).await {
            tracing::warn!(job.id = %lease.job_id, worker.url = %self.url, %error, "cannot cancel on the worker");
        }
    }

    /// What the worker holds that installation `instance_id` made.
    pub(super) async fn leftovers(&self, instance_id: &str) -> Result<Vec<Leftover>, String> {
        let mut client = self.client.clone();
        let call = client.list_leftovers(wire::list_leftovers_request(instance_id));
        Ok(wire::leftovers(within(SWEEP_TIMEOUT, call).await?))
    }

    /// Removes leftovers; answers how many are gone.
    pub(super) async fn remove_leftovers(&self, leftovers: &[Leftover]) -> Result<u32, String> {
        let mut client = self.client.clone();
        let call = client.remove_leftovers(wire::remove_leftovers_request(leftovers));
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
