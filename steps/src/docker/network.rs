//! The network job containers run on: Slipway's own bridge (`slipway-jobs`), not
//! the engine's default one, with traffic between containers turned off, so that a
//! job reaches neither another job's container nor other containers of the machine
//! on the default bridge. It still reaches the internet (through the engine's NAT)
//! and the machine's own addresses: a worker's gRPC port is out of reach only while
//! it listens on loopback (its default), and needs a certificate of the
//! installation's CA wherever it listens.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptionsBuilder;

use super::{engine_error, status_of};
use crate::{ErrorCode, StepError};

/// The name of the network.
pub const JOB_NETWORK: &str = "slipway-jobs";

/// Makes the network unless the engine has it, and returns its id. Workers sharing
/// an engine may race to make it, and an engine before API 1.44 lets two networks
/// share a name (a container naming it then fails as ambiguous): every worker picks
/// the same one, the oldest (its id breaks a tie), by id, and removes the others it
/// can. In one process, one job at a time makes it.
pub async fn ensure_job_network(docker: &Docker) -> Result<String, StepError> {
    static MAKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = MAKING.lock().await;
    if let Some(id) = chosen(docker).await? {
        return Ok(id);
    }
    let request = NetworkCreateRequest {
        name: JOB_NETWORK.to_string(),
        driver: Some("bridge".into()),
        options: Some(HashMap::from([("com.docker.network.bridge.enable_icc".to_string(), "false".to_string())])),
        labels: Some(HashMap::from([("slipway.network".to_string(), "jobs".to_string())])),
        ..Default::default()
    };
    match docker.create_network(request).await {
        // Made here, or (409) by another worker first.
        Ok(_) => {}
        Err(e) if status_of(&e) == Some(409) => {}
        Err(e) => return Err(engine_error(e, ErrorCode::RunFailed, "cannot make the jobs' network")),
    }
    chosen(docker)
        .await?
        .ok_or_else(|| StepError::new(ErrorCode::RunFailed, "the jobs' network vanished as it was made"))
}

/// The id of the network every worker uses, if the engine has one of that name;
/// the others of the same name are removed (one in use stays until it is not).
async fn chosen(docker: &Docker) -> Result<Option<String>, StepError> {
    let filters = HashMap::from([("name", vec![JOB_NETWORK])]);
    let listed = docker
        .list_networks(Some(ListNetworksOptionsBuilder::default().filters(&filters).build()))
        .await
        .map_err(|e| engine_error(e, ErrorCode::RunFailed, "cannot list the jobs' network"))?;
    // The filter matches parts of names: only the exact name counts.
    let mut named: Vec<_> = listed.into_iter().filter(|n| n.name.as_deref() == Some(JOB_NETWORK)).collect();
    named.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
    let mut ids = named.into_iter().filter_map(|n| n.id);
    let first = ids.next();
    for extra in ids {
        if let Err(e) = docker.remove_network(&extra).await {
            tracing::debug!(network = %extra, error = %e, "a second jobs' network stays while in use");
        }
    }
    Ok(first)
}
