//! Sends a job's log lines and step reports to an orchestrator, in order.
//!
//! One task per job owns the connection. Lines are sent in batches (every
//! [`FLUSH_EVERY`] or [`BATCH_LINES`] lines, whichever comes first); before a step
//! report goes out, every line already written is sent, so that when the
//! orchestrator records the end of a step it has the step's whole output.
//!
//! Reports go to the orchestrator that started the job. When it cannot be reached,
//! they go to another that pinged this worker lately: every orchestrator shares the
//! database and commits any report whose lease token is current.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_observability::trace;
use slipway_proto::tls::{Server, TlsIdentity};
use slipway_proto::v1::{self, report_service_client::ReportServiceClient};
use slipway_steps::secrets::Mask;
use slipway_steps::{LogLine, Step};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::assignment::{JobLease, StepEvent};
use crate::wire;

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const BATCH_LINES: usize = 500;
/// Bytes of line text in one batch at most (plus the line that crosses it), so that
/// a batch stays under the message limit whatever the lines.
const BATCH_BYTES: usize = slipway_proto::MAX_MESSAGE_BYTES / 4;
/// How long a report is retried while no orchestrator can be reached.
const PATIENCE: Duration = Duration::from_secs(60);

/// Why a report could not be delivered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    #[error("cannot report to it: {0}")]
    BadAddress(String),
    #[error("the orchestrator refused the report: {0}")]
    Refused(tonic::Status),
    #[error("no orchestrator could be reached for {0:?}")]
    Unreachable(Duration),
}

type Pending = (v1::StepReport, Option<String>, oneshot::Sender<Result<bool, ReportError>>);

pub(crate) struct Reporter {
    /// Hides the job's secrets in everything that leaves: lines and failure messages.
    mask: Arc<Mask>,
    reports: mpsc::Sender<Pending>,
    pump: JoinHandle<()>,
}

impl Reporter {
    /// `known`: report URLs of orchestrators that pinged lately, to fail over to.
    pub fn start(
        tls: &TlsIdentity,
        report_to: &str,
        known: Arc<Mutex<Vec<String>>>,
        lease: &JobLease,
        lines: mpsc::Receiver<LogLine>,
        mask: Mask,
    ) -> Result<Self, ReportError> {
        let mut link = Link {
            tls: tls.clone(),
            primary: report_to.to_string(),
            known,
            current: report_to.to_string(),
            clients: HashMap::new(),
        };
        link.client(report_to)?;
        let (reports, reports_rx) = mpsc::channel(4);
        let mask = Arc::new(mask);
        let pump = tokio::spawn(pump(link, wire::lease(lease), lines, reports_rx, mask.clone()));
        Ok(Reporter { mask, reports, pump })
    }

    /// Sends a report after every line written before it. `Ok(false)`: the lease is
    /// no longer current and the job must stop.
    /// `traceparent`: the span the report belongs to, sent in the call's metadata.
    async fn send(&self, report: v1::StepReport, traceparent: Option<String>) -> Result<bool, ReportError> {
        let (tx, rx) = oneshot::channel();
        if self.reports.send((report, traceparent, tx)).await.is_err() {
            return Err(ReportError::Unreachable(Duration::ZERO));
        }
        rx.await.unwrap_or(Err(ReportError::Unreachable(Duration::ZERO)))
    }

    /// Sends what is left and stops.
    pub async fn close(self) {
        drop(self.reports);
        let _ = self.pump.await;
    }
}

/// The orchestrator reports go to, and the others to fail over to.
struct Link {
    tls: TlsIdentity,
    primary: String,
    known: Arc<Mutex<Vec<String>>>,
    current: String,
    clients: HashMap<String, ReportServiceClient<Channel>>,
}

impl Link {
    fn client(&mut self, url: &str) -> Result<ReportServiceClient<Channel>, ReportError> {
        if let Some(client) = self.clients.get(url) {
            return Ok(client.clone());
        }
        let channel = self
            .tls
            .endpoint(url, Server::Orchestrator)
            .map_err(|e| ReportError::BadAddress(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        let client = ReportServiceClient::new(channel)
            .max_encoding_message_size(slipway_proto::MAX_MESSAGE_BYTES)
            .max_decoding_message_size(slipway_proto::MAX_MESSAGE_BYTES);
        self.clients.insert(url.to_string(), client.clone());
        Ok(client)
    }

    /// Moves on to the next orchestrator: the one that started the job, then those
    /// that pinged lately, round and round.
    fn fail_over(&mut self) {
        let mut candidates = vec![self.primary.clone()];
        for url in self.known.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if !candidates.contains(url) {
                candidates.push(url.clone());
            }
        }
        let next = candidates.iter().position(|u| *u == self.current).map_or(0, |i| (i + 1) % candidates.len());
        if candidates[next] != self.current {
            tracing::info!(from = %self.current, to = %candidates[next], "reporting to another orchestrator");
        }
        self.current = candidates[next].clone();
    }

    /// Calls `call` until an orchestrator answers, or one refuses for a reason other
    /// than reachability, or [`PATIENCE`] runs out.
    async fn call<F, Fut>(&mut self, mut call: F) -> Result<v1::ReportAck, ReportError>
    where
        F: FnMut(ReportServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<v1::ReportAck>, tonic::Status>>,
    {
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let url = self.current.clone();
            match call(self.client(&url)?).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded
                    ) =>
                {
                    if started.elapsed() >= PATIENCE {
                        return Err(ReportError::Unreachable(started.elapsed()));
                    }
                    self.fail_over();
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(status) => return Err(ReportError::Refused(status)),
            }
        }
    }
}

async fn pump(
    mut link: Link,
    lease: v1::Lease,
    mut lines: mpsc::Receiver<LogLine>,
    mut reports: mpsc::Receiver<Pending>,
    mask: Arc<Mask>,
) {
    let mut batch: Vec<v1::LogLine> = Vec::new();
    let mut lines_open = true;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Runs until the job closes its reporter; lines still buffered then are sent,
    // and a sink clone left in some task cannot keep the job from ending.
    loop {
        tokio::select! {
            biased;
            // A step report: first every line written before it.
            pending = reports.recv() => match pending {
                Some((report, traceparent, reply)) => {
                    drain(&mut lines, &mut batch, &mask);
                    flush(&mut link, &lease, &mut batch).await;
                    let result = link.call(|mut c| {
                        let mut request = tonic::Request::new(report.clone());
                        if let Some(value) = traceparent.as_deref().and_then(|t| t.parse().ok()) {
                            request.metadata_mut().insert("traceparent", value);
                        }
                        async move { c.report_step(request).await }
                    }).await;
                    let _ = reply.send(result.map(|ack| ack.accepted));
                }
                None => break,
            },
            // A line: batched until the batch is full or the next tick.
            line = lines.recv(), if lines_open => match line {
                Some(line) => {
                    batch.push(masked(line, &mask));
                    let bytes: usize = batch.iter().map(|l| l.text.len()).sum();
                    if batch.len() >= BATCH_LINES || bytes >= BATCH_BYTES {
                        flush(&mut link, &lease, &mut batch).await;
                    }
                }
                None => lines_open = false,
            },
            _ = tick.tick() => flush(&mut link, &lease, &mut batch).await,
        }
    }
    drain(&mut lines, &mut batch, &mask);
    flush(&mut link, &lease, &mut batch).await;
}

fn drain(lines: &mut mpsc::Receiver<LogLine>, batch: &mut Vec<v1::LogLine>, mask: &Mask) {
    while let Ok(line) = lines.try_recv() {
        batch.push(masked(line, mask));
    }
}

/// A line as it leaves the worker: with the job's secrets masked.
fn masked(mut line: LogLine, mask: &Mask) -> v1::LogLine {
    if let std::borrow::Cow::Owned(text) = mask.apply(&line.text) {
        line.text = text;
    }
    wire::log_line(line)
}

/// Sends the batch, in as many messages as its size needs.
async fn flush(link: &mut Link, lease: &v1::Lease, batch: &mut Vec<v1::LogLine>) {
    let mut lines = std::mem::take(batch).into_iter().peekable();
    while lines.peek().is_some() {
        let (mut part, mut bytes) = (Vec::new(), 0);
        while let Some(line) =
            lines.next_if(|l| part.is_empty() || (part.len() < BATCH_LINES && bytes + l.text.len() <= BATCH_BYTES))
        {
            bytes += line.text.len();
            part.push(line);
        }
        send_lines(link, lease, part).await;
    }
}

async fn send_lines(link: &mut Link, lease: &v1::Lease, lines: Vec<v1::LogLine>) {
    let request = v1::LogBatch { lease: Some(lease.clone()), lines };
    let count = request.lines.len();
    match link
        .call(|mut c| {
            let r = request.clone();
            async move { c.append_logs(r).await }
        })
        .await
    {
        Ok(ack) if !ack.accepted => tracing::warn!(job.id = %lease.job_id, "log lines refused: the lease is gone"),
        Ok(_) => {}
        Err(e) => tracing::warn!(job.id = %lease.job_id, lines = count, error = %e, "log lines lost"),
    }
}

/// Sends a report; `false` when the job must stop (lease gone or orchestrator unreachable).
pub(crate) async fn send(
    reporter: &Reporter,
    lease: &JobLease,
    step: Step,
    event: StepEvent,
    exit_code: Option<i64>,
    then_start: Option<Step>,
) -> bool {
    let traceparent = trace::traceparent_of(&tracing::Span::current());
    let event = match event {
        StepEvent::Failed { code, message, retryable } => {
            StepEvent::Failed { code, message: reporter.mask.apply(&message).into_owned(), retryable }
        }
        event => event,
    };
    let report = wire::step_report(lease, step, &event, exit_code, then_start);
    match reporter.send(report, traceparent).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(job.id = %lease.job_id, job.step = step.as_str(), "the lease is gone; stopping the job");
            false
        }
        Err(e) => {
            tracing::warn!(job.id = %lease.job_id, job.step = step.as_str(), error = %e, "report not delivered; stopping the job");
            false
        }
    }
}
