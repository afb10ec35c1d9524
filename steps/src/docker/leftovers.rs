//! What Slipway left on an engine: containers labelled with a job id, and the tags
//! that mark images for jobs (`slipway-jobs/<installation>:<job id>`). Finding them
//! is the engine's part; which of them may go is the orchestrator's (it knows which
//! jobs are finished or gone). An image shared by several jobs goes with its last
//! job's tag.

use std::collections::HashMap;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder};

use crate::docker::run::remove_container;
use crate::docker::{
    Docker, INSTANCE_LABEL, JOB_LABEL, JOB_TAG_REPOSITORY, engine_error, job_tag_repository, status_of,
};
use crate::{ErrorCode, StepError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    Container {
        id: String,
        job_id: String,
    },
    /// A job's tag on an image (`id` is the tag).
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

/// Every container labelled with a job of installation `instance_id`, and every
/// image tag marking an image for one.
pub async fn list(docker: &Docker, instance_id: &str) -> Result<Vec<Leftover>, StepError> {
    let filters = HashMap::from([("label", vec![JOB_LABEL.to_string(), format!("{INSTANCE_LABEL}={instance_id}")])]);
    let containers = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
        .await
        .map_err(|e| engine_error(e, ErrorCode::Internal, "cannot list containers"))?;
    let repository = job_tag_repository(instance_id);
    let tagged = HashMap::from([("reference", vec![repository.clone()])]);
    let images = docker
        .list_images(Some(ListImagesOptionsBuilder::default().all(false).filters(&tagged).build()))
        .await
        .map_err(|e| engine_error(e, ErrorCode::Internal, "cannot list images"))?;
    let job_of = |labels: Option<&HashMap<String, String>>| labels.and_then(|l| l.get(JOB_LABEL)).cloned();
    let mut found: Vec<Leftover> = containers
        .into_iter()
        .filter_map(|c| Some(Leftover::Container { job_id: job_of(c.labels.as_ref())?, id: c.id? }))
        .collect();
    let prefix = format!("{repository}:");
    found.extend(images.iter().flat_map(|i| &i.repo_tags).filter_map(|tag| {
        let job_id = tag.strip_prefix(&prefix)?;
        Some(Leftover::Image { id: tag.clone(), job_id: job_id.to_string() })
    }));
    Ok(found)
}

/// Removes one leftover from the engine; one already gone counts as removed. The
/// request names it by id, so it is checked first: only a container labelled as
/// the job's by Slipway, and only a job's tag on an image Slipway labelled, may go.
pub async fn remove(docker: &Docker, leftover: &Leftover) -> Result<(), StepError> {
    let not_ours =
        |what: &str| StepError::new(ErrorCode::Internal, format!("{what} was not made by Slipway for that job"));
    match leftover {
        Leftover::Task { .. } => Err(StepError::new(ErrorCode::Internal, "an ECS task is stopped through ECS")),
        Leftover::Container { id, job_id } => {
            let labels = match docker.inspect_container(id, None).await {
                Ok(container) => container.config.and_then(|c| c.labels).unwrap_or_default(),
                Err(e) if status_of(&e) == Some(404) => return Ok(()),
                Err(e) => return Err(engine_error(e, ErrorCode::Internal, "cannot inspect the container")),
            };
            if labels.get(JOB_LABEL) != Some(job_id) || !labels.contains_key(INSTANCE_LABEL) {
                return Err(not_ours(&format!("container {id}")));
            }
            remove_container(docker, id).await
        }
        Leftover::Image { id: tag, job_id } => {
            let ours = tag
                .strip_prefix(JOB_TAG_REPOSITORY)
                .and_then(|rest| rest.strip_prefix('/'))
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(_, job)| job == job_id);
            if !ours {
                return Err(not_ours(&format!("image tag {tag}")));
            }
            let image = match docker.inspect_image(tag).await {
                Ok(image) => image,
                Err(e) if status_of(&e) == Some(404) => return Ok(()),
                Err(e) => return Err(engine_error(e, ErrorCode::Internal, "cannot inspect the image")),
            };
            if !image.config.as_ref().and_then(|c| c.labels.as_ref()).is_some_and(|l| l.contains_key(INSTANCE_LABEL)) {
                return Err(not_ours(&format!("image {tag}")));
            }
            // The job's tag goes; the image goes with it when no other job's tag is
            // left on it (the image's own name goes too: it was built for Slipway's jobs).
            remove_image(docker, tag, false).await?;
            let shared =
                image.repo_tags.unwrap_or_default().iter().any(|t| t != tag && t.starts_with(JOB_TAG_REPOSITORY));
            if let (false, Some(id)) = (shared, image.id) {
                remove_image(docker, &id, true).await?;
            }
            Ok(())
        }
    }
}

/// Removes an image (or, given a tag and no `force`, only that tag); one already
/// gone is fine.
async fn remove_image(docker: &Docker, name: &str, force: bool) -> Result<(), StepError> {
    let options = RemoveImageOptionsBuilder::default().force(force).build();
    match docker.remove_image(name, Some(options), None).await {
        Ok(_) => Ok(()),
        Err(e) if status_of(&e) == Some(404) => Ok(()),
        Err(e) => Err(engine_error(e, ErrorCode::Internal, "cannot remove the image")),
    }
}
