//! How the dispatch loop is woken between heartbeats: a job queued or a cancel
//! requested (through `LISTEN`), or an attempt ended (through the report service).
//!
//! An ended attempt names its worker, and the dispatcher counts that worker's slot
//! free at once. Asking the worker instead would race with it: a worker frees its
//! slot only once it has the answer to its last report, so a ping sent on the
//! commit could still count the attempt, and the slot would wait a heartbeat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Debug, Clone, Default)]
pub struct Wake {
    notify: Arc<Notify>,
    /// Slots freed since the dispatcher last looked, by worker id.
    freed: Arc<Mutex<HashMap<String, u32>>>,
}

impl Wake {
    /// Something may be runnable.
    pub fn notify(&self) {
        self.notify.notify_one();
    }

    /// An attempt on `worker` ended, freeing its slot.
    pub fn slot_freed(&self, worker: Option<&str>) {
        if let Some(worker) = worker {
            *self.lock().entry(worker.to_string()).or_default() += 1;
        }
        self.notify.notify_one();
    }

    /// Waits for the next wake-up.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// The slots freed since the last call, by worker id.
    pub fn take_freed(&self) -> HashMap<String, u32> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.freed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
