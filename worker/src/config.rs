//! What a worker needs to know: where to listen, who it is, how much it may run at
//! once, where to put clones, and the registry credentials for pushes.

use std::net::SocketAddr;
use std::path::PathBuf;

use slipway_steps::push::RegistryCredentials;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub listen: SocketAddr,
    /// Names this worker in leases, events and logs.
    pub worker_id: String,
    /// How many jobs may run at once.
    pub slots: u32,
    /// Where clones go, one folder per job attempt, removed when it ends.
    pub work_dir: PathBuf,
    pub registry_credentials: Option<RegistryCredentials>,
}
