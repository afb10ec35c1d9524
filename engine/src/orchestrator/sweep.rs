//! The TTL sweep: finished jobs past the retention are deleted in batches, with the
//! images pushed for them (unless a kept job pushed the same manifest; with the
//! job's own registry login when it named one); containers and images this
//! installation left on workers' engines are removed once their jobs are finished
//! (containers) or gone (images). Each sweep logs its counts.

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::workers::{Leftover, LeftoverKind, WorkerLink};
use crate::job::JobId;
use crate::registry::{Deletion, RegistryClient, RegistryError};
use crate::secrets::for_job::registry_login_for_sweep;
use crate::secrets::vault::Vault;
use crate::store::{ExpiredJob, Store, StoreError};

#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// How long finished jobs are kept.
    pub retention: Duration,
    pub interval: Duration,
    /// Jobs deleted per statement.
    pub batch: i64,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepCounts {
    pub jobs: u64,
    pub registry_images: u64,
    pub containers: u64,
    pub engine_images: u64,
    /// ECS tasks stopped.
    pub tasks: u64,
}

impl SweepCounts {
    fn record(&self) {
        let deletions = &slipway_observability::metrics::SWEEP_DELETIONS;
        for (kind, n) in [
            ("jobs", self.jobs),
            ("registry_images", self.registry_images),
            ("containers", self.containers),
            ("engine_images", self.engine_images),
            ("tasks", self.tasks),
        ] {
            if n > 0 {
                deletions.add(&[kind], n as f64);
            }
        }
    }
}

pub struct Sweeper {
    store: Store,
    /// Opens the registry logins jobs named, to delete their images with.
    vault: Vault,
    registry: RegistryClient,
    config: SweepConfig,
    instance_id: String,
    workers: Vec<WorkerLink>,
}

impl Sweeper {
    pub fn new(
        store: Store,
        vault: Vault,
        registry: RegistryClient,
        config: SweepConfig,
        instance_id: String,
        workers: Vec<WorkerLink>,
    ) -> Self {
        Sweeper { store, vault, registry, config, instance_id, workers }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                // Shutdown: stop sweeping.
                _ = shutdown.cancelled() => return,
                // The next sweep is due.
                _ = tokio::time::sleep(self.config.interval) => {}
            }
            match self.sweep().await {
                Ok(c) if c == SweepCounts::default() => {}
                Ok(c) => {
                    c.record();
                    tracing::info!(
                        jobs = c.jobs,
                        registry_images = c.registry_images,
                        containers = c.containers,
                        engine_images = c.engine_images,
                        tasks = c.tasks,
                        "sweep removed"
                    )
                }
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
        }
    }

    pub async fn sweep(&mut self) -> Result<SweepCounts, StoreError> {
        let mut counts = SweepCounts::default();
        self.sweep_jobs(&mut counts).await?;
        for worker in &self.workers {
            self.sweep_worker(worker, &mut counts).await?;
        }
        Ok(counts)
    }

    async fn sweep_jobs(&mut self, counts: &mut SweepCounts) -> Result<(), StoreError> {
        loop {
            let expired = self.store.expired_jobs(self.config.retention, self.config.batch).await?;
            let full = expired.len() as i64 == self.config.batch;
            let mut deletable = Vec::new();
            for job in &expired {
                match (&job.pushed_ref, job.image_shared) {
                    (Some(pushed), false) => match self.delete_image(job, pushed).await {
                        Ok(Deletion::Deleted) => {
                            counts.registry_images += 1;
                            deletable.push(job.id);
                        }
                        Ok(Deletion::AlreadyGone) => deletable.push(job.id),
                        Ok(Deletion::NotAllowed) => {
                            tracing::warn!(image = %pushed, "the registry does not allow deletes; the image stays");
                            deletable.push(job.id);
                        }
                        // Kept for the next sweep: the reference is the only way to the image.
                        Err(RegistryError::Unavailable(e)) => {
                            tracing::warn!(image = %pushed, error = %e, "image not deleted yet")
                        }
                        Err(e) => {
                            tracing::warn!(image = %pushed, error = %e, "cannot delete the image; it stays");
                            deletable.push(job.id);
                        }
                    },
                    _ => deletable.push(job.id),
                }
            }
            counts.jobs += self.store.delete_jobs(&deletable).await?;
            if !full || deletable.is_empty() {
                return Ok(());
            }
        }
    }

    /// Deletes a job's pushed image with the registry login the job named, if it
    /// still opens (the server's login for the host otherwise).
    async fn delete_image(&self, job: &ExpiredJob, pushed: &str) -> Result<Deletion, RegistryError> {
        let login = match &job.registry_credentials {
            None => None,
            Some(name) => match registry_login_for_sweep(&self.vault, job.project_id, name).await {
                Ok(None) => {
                    tracing::info!(job.id = %job.id, secret = %name, "the job's registry login is gone; deleting its image with the server's");
                    None
                }
                Ok(login) => login,
                Err(e) => return Err(RegistryError::Unavailable(format!("cannot read the job's registry login: {e}"))),
            },
        };
        self.registry.delete(pushed, login.as_ref()).await
    }

    async fn sweep_worker(&self, worker: &WorkerLink, counts: &mut SweepCounts) -> Result<(), StoreError> {
        let leftovers = match worker.leftovers(&self.instance_id).await {
            Ok(leftovers) => leftovers,
            Err(error) => {
                tracing::debug!(worker.url = %worker.url, %error, "cannot list leftovers");
                return Ok(());
            }
        };
        if leftovers.is_empty() {
            return Ok(());
        }
        let ids: Vec<JobId> = leftovers.iter().filter_map(|l| l.job_id).collect();
        let ended: HashMap<JobId, bool> = self.store.job_states(&ids).await?.into_iter().collect();
        // Containers go once their job has ended (or is gone); images once the job is
        // gone, since a kept job's image may run again.
        let mut doomed: Vec<Leftover> = leftovers
            .into_iter()
            .filter(|l| {
                let job = l.job_id.and_then(|id| ended.get(&id).copied());
                match l.kind {
                    LeftoverKind::Container => job.unwrap_or(true),
                    // Tasks also once past their deadline, whoever watches them.
                    LeftoverKind::Task => job.unwrap_or(true) || l.past_deadline,
                    LeftoverKind::Image => job.is_none(),
                }
            })
            .collect();
        doomed.sort_by_key(|l| l.kind);
        if doomed.is_empty() {
            return Ok(());
        }
        let count = |kind| doomed.iter().filter(|l| l.kind == kind).count() as u64;
        let (containers, tasks, images) =
            (count(LeftoverKind::Container), count(LeftoverKind::Task), count(LeftoverKind::Image));
        match worker.remove_leftovers(&doomed).await {
            Ok(removed) => {
                let removed = u64::from(removed);
                counts.containers += containers.min(removed);
                counts.engine_images += images.min(removed.saturating_sub(containers));
                counts.tasks += tasks.min(removed.saturating_sub(containers + images));
            }
            Err(error) => tracing::warn!(worker.url = %worker.url, %error, "cannot remove leftovers"),
        }
        Ok(())
    }
}
