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

use super::{engine_error, status_of};
use crate::{ErrorCode, StepError};

/// The name of the network.
pub const JOB_NETWORK: &str = "slipway-jobs";

/// Makes the network unless the engine has it; safe when several workers race.
pub async fn ensure_job_network(docker: &Docker) -> Result<(), StepError> {
    match docker.inspect_network(JOB_NETWORK, None).await {
        Ok(_) => return Ok(()),
        Err(e) if status_of(&e) == Some(404) => {}
        Err(e) => return Err(engine_error(e, ErrorCode::RunFailed, "cannot inspect the jobs' network")),
    }
    let request = NetworkCreateRequest {
        name: JOB_NETWORK.to_string(),
        driver: Some("bridge".into()),
        options: Some(HashMap::from([("com.docker.network.bridge.enable_icc".to_string(), "false".to_string())])),
        labels: Some(HashMap::from([("slipway.network".to_string(), "jobs".to_string())])),
        ..Default::default()
    };
    match docker.create_network(request).await {
        Ok(_) => Ok(()),
        // Another worker made it first.
        Err(e) if status_of(&e) == Some(409) => Ok(()),
        Err(e) => Err(engine_error(e, ErrorCode::RunFailed, "cannot make the jobs' network")),
    }
}
