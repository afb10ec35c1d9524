//! Sends a job's log lines and step reports to the orchestrator, in order.
//!
//! One task per job owns the connection. Lines are sent in batches (every
//! [`FLUSH_EVERY`] or [`BATCH_LINES`] lines, whichever comes first); before a step
//! report goes out, every line already written is sent, so that when the
//! orchestrator records the end of a step it has the step's whole output.

use std::time::Duration;

use slipway_proto::convert::{step_to_wire, stream_to_wire};
use slipway_proto::v1::{self, report_service_client::ReportServiceClient};
use slipway_steps::LogLine;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const BATCH_LINES: usize = 500;
/// How long a report is retried while the orchestrator cannot be reached.
const PATIENCE: Duration = Duration::from_secs(60);

/// Why a report could not be delivered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    #[error("report_to `{0}` is not a URL")]
    BadAddress(String),
    #[error("the orchestrator refused the report: {0}")]
    Refused(tonic::Status),
    #[error("the orchestrator could not be reached for {0:?}")]
    Unreachable(Duration),
}

type Pending = (v1::StepReport, oneshot::Sender<Result<bool, ReportError>>);

pub(crate) struct Reporter {
    reports: mpsc::Sender<Pending>,
    pump: JoinHandle<()>,
}

impl Reporter {
    pub fn start(report_to: &str, lease: v1::Lease, lines: mpsc::Receiver<LogLine>) -> Result<Self, ReportError> {
        let channel = Channel::from_shared(report_to.to_string())
            .map_err(|_| ReportError::BadAddress(report_to.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        let client = ReportServiceClient::new(channel);
        let (reports, reports_rx) = mpsc::channel(4);
        let pump = tokio::spawn(pump(client, lease, lines, reports_rx));
        Ok(Reporter { reports, pump })
    }

    /// Sends a report after every line written before it. `Ok(false)`: the lease is
    /// no longer current and the job must stop.
    pub async fn send(&self, report: v1::StepReport) -> Result<bool, ReportError> {
        let (tx, rx) = oneshot::channel();
        if self.reports.send((report, tx)).await.is_err() {
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

async fn pump(
    mut client: ReportServiceClient<Channel>,
    lease: v1::Lease,
    mut lines: mpsc::Receiver<LogLine>,
    mut reports: mpsc::Receiver<Pending>,
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
                Some((report, reply)) => {
                    drain(&mut lines, &mut batch);
                    flush(&mut client, &lease, &mut batch).await;
                    let _ = reply.send(deliver_report(&mut client, report).await);
                }
                None => break,
            },
            // A line: batched until the batch is full or the next tick.
            line = lines.recv(), if lines_open => match line {
                Some(line) => {
                    batch.push(to_wire(line));
                    if batch.len() >= BATCH_LINES {
                        flush(&mut client, &lease, &mut batch).await;
                    }
                }
                None => lines_open = false,
            },
            _ = tick.tick() => flush(&mut client, &lease, &mut batch).await,
        }
    }
    drain(&mut lines, &mut batch);
    flush(&mut client, &lease, &mut batch).await;
}

fn drain(lines: &mut mpsc::Receiver<LogLine>, batch: &mut Vec<v1::LogLine>) {
    while let Ok(line) = lines.try_recv() {
        batch.push(to_wire(line));
    }
}

fn to_wire(line: LogLine) -> v1::LogLine {
    let at_micros = line
        .at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default();
    v1::LogLine {
        step: step_to_wire(line.step) as i32,
        stream: stream_to_wire(line.stream) as i32,
        text: line.text,
        at_micros,
    }
}

async fn flush(client: &mut ReportServiceClient<Channel>, lease: &v1::Lease, batch: &mut Vec<v1::LogLine>) {
    if batch.is_empty() {
        return;
    }
    let request = v1::LogBatch {
        lease: Some(lease.clone()),
        lines: std::mem::take(batch),
    };
    let count = request.lines.len();
    match with_retries(|| {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.append_logs(request).await }
    })
    .await
    {
        Ok(ack) if !ack.accepted => tracing::warn!(job.id = %lease.job_id, "log lines refused: the lease is gone"),
        Ok(_) => {}
        Err(e) => tracing::warn!(job.id = %lease.job_id, lines = count, error = %e, "log lines lost"),
    }
}

async fn deliver_report(
    client: &mut ReportServiceClient<Channel>,
    report: v1::StepReport,
) -> Result<bool, ReportError> {
    let ack = with_retries(|| {
        let mut client = client.clone();
        let report = report.clone();
        async move { client.report_step(report).await }
    })
    .await?;
    Ok(ack.accepted)
}

/// Calls `call` until it answers, or fails for a reason other than reachability,
/// or [`PATIENCE`] runs out.
async fn with_retries<F, Fut>(mut call: F) -> Result<v1::ReportAck, ReportError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<v1::ReportAck>, tonic::Status>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        match call().await {
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
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(status) => return Err(ReportError::Refused(status)),
        }
    }
}
