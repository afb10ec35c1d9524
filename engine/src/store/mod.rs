//! The Postgres store: every read and write of job state, in SQL that the Rust code
//! can see. Each transition is one statement (a CTE that updates the job, appends the
//! event and touches the step row), so it is atomic without an explicit transaction
//! and costs one round trip. Every write is guarded by the states its
//! [`Transition`](crate::job::transitions::Transition) may leave (the transition
//! table), and every write a worker's report causes is also fenced by the lease
//! token of the attempt: zero rows is [`StoreError::LeaseLost`], never a silent
//! no-op. The writes a report causes ([`reports`], [`logs::append_logs`],
//! [`leases::hand_back`]) take a connection, so that the report service can commit
//! many reports in one transaction.

#[macro_use]
pub mod read;
mod access;
mod claim;
mod error;
mod idempotency;
pub mod leases;
mod listen;
pub mod logs;
pub mod reports;
mod secrets;
mod sessions;
mod sweep;
mod workers;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub use access::{AuditEntry, AuditRow, ProjectRow, TokenGrant, TokenRow};
pub use claim::{CacheElsewhere, ClaimedJob, WorkerOffer};
pub use error::StoreError;
pub use idempotency::{Submitted, Submitter};
pub use leases::{CancelOutcome, EndedLease, HeldLease, LeaseStatus};
pub use listen::listen;
pub use logs::{LogRow, NewLogLine};
pub use read::{EventRow, JobFilter, JobRow, QueueFigures, StepRow};
pub use reports::{Finish, Lease, Retry};
pub use secrets::{GitDefaultRow, PutOutcome, SealedRow, SecretRow};
pub use sessions::SessionRow;
pub use sweep::ExpiredJob;
pub use workers::{WorkerAnswer, WorkerRow, WorkerSeen};

/// The migrations in `migrations/`, applied by `slipway migrate` and at start.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// The channel a submission notifies, so that idle orchestrators wake at once.
pub const QUEUED_CHANNEL: &str = "slipway_jobs";
/// The channel a committed report notifies with its job id, so that live log
/// followers read on at once.
pub const CHANGED_CHANNEL: &str = "slipway_job_changes";
/// The channel a token's revocation notifies, so that the live-log streams it
/// opened close at once.
pub const TOKENS_CHANNEL: &str = "slipway_tokens";
/// The channel a cancel request notifies, so that the job's orchestrator tells its
/// worker at once.
pub const CANCEL_CHANNEL: &str = "slipway_cancels";

#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects to `url`, waiting up to `patience` for Postgres to accept connections.
    pub async fn connect(url: &str, patience: Duration) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(StoreError::from)?;
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let attempt = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options.clone())
                .await;
            match attempt {
                Ok(pool) => return Ok(Store { pool }),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(error = %e, "waiting for postgres");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Connects, waiting up to `patience`, and applies the migrations.
    pub async fn open(url: &str, patience: Duration) -> Result<Self, StoreError> {
        let store = Store::connect(url, patience).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await.map_err(|e| StoreError::Migrate(e.to_string()))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
