//! What Slipway left on an engine: containers and images labelled with a job id.
//! Finding them is the engine's part; which of them may go is the orchestrator's
//! (it knows which jobs are finished or gone).

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder};

use crate::docker::{Docker, INSTANCE_LABEL, JOB_LABEL, engine_error, status_of};
use crate::run::remove_container;
use crate::{ErrorCode, StepError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    Container {
        id: String,
        job_id: String,
    },
    Image {
        id: String,
        job_id: String,
    },
    /// An ECS task (its ARN), listed by [`crate::aws::ecs::Ecs::leftover_tasks`].
    Task {
        id: String,
        job_id: String,
        past_deadline: bool,
    },
}

/// Every container and image on the engine labelled with a job of installation
/// `instance_id`.
pub async fn list(docker: &Docker, instance_id: &str) -> Result<Vec<Leftover>, StepError> {
    let filters = HashMap::from([("label", vec![JOB_LABEL.to_string(), format!("{INSTANCE_LABEL}={instance_id}")])]);
    let containers = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
        .await
        .map_err(|e| engine_error(e, ErrorCode::Internal, "cannot list containers"))?;
    let images = docker
        .list_images(Some(ListImagesOptionsBuilder::default().all(false).filters(&filters).build()))
        .await
        .map_err(|e| engine_error(e, ErrorCode::Internal, "cannot list images"))?;
    let job_of = |labels: Option<&HashMap<String, String>>| labels.and_then(|l| l.get(JOB_LABEL)).cloned();
    let mut found: Vec<Leftover> = containers
        .into_iter()
        .filter_map(|c| Some(Leftover::Container { job_id: job_of(c.labels.as_ref())?, id: c.id? }))
        .collect();
    found.extend(
        images.into_iter().filter_map(|i| Some(Leftover::Image { job_id: job_of(Some(&i.labels))?, id: i.id })),
    );
    Ok(found)
}

/// Removes one leftover from the engine; one already gone counts as removed.
pub async fn remove(docker: &Docker, leftover: &Leftover) -> Result<(), StepError> {
    match leftover {
        Leftover::Task { .. } => Err(StepError::new(ErrorCode::Internal, "an ECS task is stopped through ECS")),
        Leftover::Container { id, .. } => remove_container(docker, id).await,
        Leftover::Image { id, .. } => {
            let options = RemoveImageOptionsBuilder::default().force(true).build();
            match docker.remove_image(id, Some(options), None).await {
                Ok(_) => Ok(()),
                Err(e) if status_of(&e) == Some(404) => Ok(()),
                Err(e) => Err(engine_error(e, ErrorCode::Internal, "cannot remove the image")),
            }
        }
    }
}
