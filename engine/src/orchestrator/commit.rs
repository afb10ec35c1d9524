//! Group commit of workers' reports.
//!
//! Every report (a step's start, outputs or end, a batch of log lines) is queued here.
//! A few committer tasks each take whatever is queued (up to `SLIPWAY_COMMIT_BATCH`) and apply
//! it in one transaction: one commit, so one wait for the disk, for many reports. A
//! report is answered only after its transaction committed. When one statement of a
//! batch fails for a reason other than a lost lease, the batch is rolled back and its
//! reports are applied one transaction each, so that one bad report costs no other.

use std::sync::Arc;

use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::apply::{Applied, Report, Rules, apply};
use crate::job::JobId;
use crate::store::StoreError;

/// Reports waiting for a committer, at most.
const QUEUED: usize = 1024;
/// Committer tasks, each with its own connection and transaction.
const COMMITTERS: usize = 4;

type Work = (Report, oneshot::Sender<Result<Applied, StoreError>>);

#[derive(Clone)]
pub(super) struct Committer {
    queue: mpsc::Sender<Work>,
}

impl Committer {
    /// Starts the committer tasks; they stop when the last `Committer` is dropped.
    pub fn start(pool: PgPool, config: super::CommitConfig, wake: super::Wake) -> Self {
        let (queue, receiver) = mpsc::channel::<Work>(QUEUED);
        let receiver = Arc::new(Mutex::new(receiver));
        let rules = Rules {
            lease_ttl: config.lease_ttl,
            default_policy: config.default_policy,
            max_log_bytes: i64::try_from(config.max_log_bytes).unwrap_or(i64::MAX),
        };
        let max_batch = config.batch.max(1);
        for _ in 0..COMMITTERS {
            tokio::spawn(run(pool.clone(), receiver.clone(), rules.clone(), max_batch, wake.clone()));
        }
        Committer { queue }
    }

    /// Applies a report; answers once it is committed.
    pub async fn apply(&self, report: Report) -> Result<Applied, StoreError> {
        let (reply, answer) = oneshot::channel();
        if self.queue.send((report, reply)).await.is_err() {
            return Err(StoreError::CommitterStopped);
        }
        answer.await.unwrap_or(Err(StoreError::CommitterStopped))
    }
}

async fn run(
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::Receiver<Work>>>,
    rules: Rules,
    max_batch: usize,
    wake: super::Wake,
) {
    loop {
        // Take whatever is queued, waiting only for the first.
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match receiver.try_recv() {
                    Ok(work) => batch.push(work),
                    Err(_) => break,
                }
            }
            batch
        };
        let (reports, replies): (Vec<Report>, Vec<_>) = batch.into_iter().unzip();
        let results = match commit_together(&pool, &reports, &rules).await {
            Ok(results) => results,
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, reports = reports.len(), "cannot commit reports: the database is unavailable");
                reports.iter().map(|_| Err(StoreError::Unavailable(sqlx::Error::PoolClosed))).collect()
            }
            Err(e) => {
                tracing::warn!(error = ?e, reports = reports.len(), "a batch of reports failed; committing them one by one");
                let mut results = Vec::with_capacity(reports.len());
                for report in &reports {
                    results.push(commit_alone(&pool, report, &rules).await);
                }
                results
            }
        };
        for (report, applied) in reports.iter().zip(&results) {
            if let Ok(applied) = applied {
                applied.record();
                report.record();
            }
        }
        for (report, result) in reports.iter().zip(&results) {
            if result.as_ref().is_ok_and(Applied::frees_slot) {
                wake.slot_freed(report.worker());
            }
        }
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

/// Applies all reports in one transaction. A lost lease is a result, not a failure.
async fn commit_together(
    pool: &PgPool,
    reports: &[Report],
    rules: &Rules,
) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
    let mut tx = pool.begin().await?;
    // Rows are locked in job id order, as the heartbeat locks them, so that two
    // transactions never wait on each other in a circle.
    let mut order: Vec<usize> = (0..reports.len()).collect();
    order.sort_by_key(|&i| reports[i].job_id());
    let mut results: Vec<Result<Applied, StoreError>> = reports.iter().map(|_| Ok(Applied::GOES_ON)).collect();
    for i in order {
        match apply(&mut tx, &reports[i], rules).await {
            Err(StoreError::LeaseLost) => results[i] = Err(StoreError::LeaseLost),
            Err(e) => return Err(e),
            Ok(applied) => results[i] = Ok(applied),
        }
    }
    let changed: Vec<JobId> = reports
        .iter()
        .zip(&results)
        .filter(|(report, result)| followers_care(report, result))
        .map(|(report, _)| report.job_id())
        .collect();
    notify_changed(&mut tx, &changed).await?;
    tx.commit().await?;
    Ok(results)
}

async fn commit_alone(pool: &PgPool, report: &Report, rules: &Rules) -> Result<Applied, StoreError> {
    let mut tx = pool.begin().await?;
    let applied = apply(&mut tx, report, rules).await;
    match applied {
        Ok(_) => {
            if followers_care(report, &applied) {
                notify_changed(&mut tx, &[report.job_id()]).await?;
            }
            tx.commit().await?
        }
        Err(StoreError::LeaseLost) => tx.commit().await?,
        Err(_) => tx.rollback().await?,
    }
    applied
}

/// Whether live log followers need to hear of this report: new lines, or the end of
/// the job (their stream ends then). Other reports are not announced, since every
/// notification costs the database work at commit.
fn followers_care(report: &Report, result: &Result<Applied, StoreError>) -> bool {
    matches!(report, Report::Logs { .. }) || matches!(result, Ok(Applied::Finished(_) | Applied::Stopped))
}

/// Tells followers (live logs) that these jobs have news, when the transaction commits.
async fn notify_changed(conn: &mut PgConnection, jobs: &[JobId]) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    sqlx::query("select pg_notify($2, id::text) from (select distinct unnest($1::uuid[]) as id) as changed")
        .bind(jobs)
        .bind(crate::store::CHANGED_CHANNEL)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
