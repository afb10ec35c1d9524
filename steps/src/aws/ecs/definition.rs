//! Task definitions: one per distinct image, size, roles and log settings.
//!
//! The job's command and environment go into `RunTask`'s overrides, not into the
//! definition, so every job that runs the same image at the same size, reading the
//! same secrets, shares one.
//! The family is named by a hash of the definition's content: an unchanged
//! definition is found by `DescribeTaskDefinition` (or this process's cache) and
//! never registered again, so revisions do not pile up.

use aws_sdk_ecs::types::{
    Compatibility, ContainerDefinition, CpuArchitecture, LogConfiguration, LogDriver, NetworkMode, OsFamily,
    RuntimePlatform, Secret, Tag,
};
use sha2::{Digest, Sha256};

use super::{CONTAINER_NAME, Ecs, INSTANCE_TAG};
use crate::aws::{aws_error, service_code};
use crate::{ErrorCode, StepError};

/// What a task definition is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionInput {
    pub image: String,
    /// Fargate CPU units (256 = a quarter vCPU).
    pub cpu: u32,
    /// MiB.
    pub memory: u32,
    pub architecture: CpuArchitecture,
    /// Secret environment variables, sorted, each with where the task reads it (an
    /// SSM parameter's name or an ARN; never a value).
    pub secrets: Vec<(String, String)>,
}

/// Fargate's name for an engine's architecture; Fargate runs no other.
pub fn fargate_architecture(engine: &str) -> Result<CpuArchitecture, StepError> {
    match engine {
        "x86_64" | "amd64" => Ok(CpuArchitecture::X8664),
        "aarch64" | "arm64" => Ok(CpuArchitecture::Arm64),
        other => Err(StepError::new(
            ErrorCode::RunFailed,
            format!("the image is built for `{other}`; Fargate runs only x86_64 and arm64 images"),
        )),
    }
}

/// The definition's family: readable prefix from the image's repository, then the
/// content hash.
pub fn family_of(input: &DefinitionInput, ecs: &Ecs) -> String {
    let s = &ecs.settings;
    let mut hasher = Sha256::new();
    for part in [
        input.image.as_str(),
        &input.cpu.to_string(),
        &input.memory.to_string(),
        input.architecture.as_str(),
        s.execution_role_arn.as_deref().unwrap_or_default(),
        s.task_role_arn.as_deref().unwrap_or_default(),
        &s.log_group,
        &s.log_stream_prefix,
        &ecs.region,
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    for (variable, source) in &input.secrets {
        hasher.update(format!("secret\0{variable}\0{source}\0").as_bytes());
    }
    let hash: String = hasher.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    let repository = input.image.split(['@', ':']).next().unwrap_or_default();
    let name: String = repository
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .take(40)
        .collect();
    format!("slipway-{name}-{hash}")
}

impl Ecs {
    /// The ARN of the definition for `input`, registering it only when its family
    /// has no active revision yet.
    pub async fn task_definition(&self, input: &DefinitionInput, instance_id: &str) -> Result<String, StepError> {
        let family = family_of(input, self);
        let mut known = self.definitions.lock().await;
        if let Some(arn) = known.get(&family) {
            return Ok(arn.clone());
        }
        let ecs = &self.ecs;
        let arn = match ecs.describe_task_definition().task_definition(&family).send().await {
            Ok(found) => found
                .task_definition()
                .filter(|d| d.status().is_none_or(|s| s.as_str() == "ACTIVE"))
                .and_then(|d| d.task_definition_arn().map(str::to_string)),
            Err(e) if service_code(&e) == Some("ClientException") => None,
            Err(e) => return Err(aws_error(e, ErrorCode::RunFailed, "cannot look up the task definition")),
        };
        let arn = match arn {
            Some(arn) => arn,
            None => self.register(&family, input, instance_id).await?,
        };
        known.insert(family, arn.clone());
        Ok(arn)
    }

    async fn register(&self, family: &str, input: &DefinitionInput, instance_id: &str) -> Result<String, StepError> {
        let s = &self.settings;
        let log = LogConfiguration::builder()
            .log_driver(LogDriver::Awslogs)
            .options("awslogs-group", &s.log_group)
            .options("awslogs-region", &self.region)
            .options("awslogs-stream-prefix", &s.log_stream_prefix)
            .build()
            .map_err(|e| StepError::new(ErrorCode::Internal, format!("log configuration: {e}")))?;
        let secrets = input
            .secrets
            .iter()
            .map(|(variable, source)| Secret::builder().name(variable).value_from(source).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StepError::new(ErrorCode::Internal, format!("task secrets: {e}")))?;
        let container = ContainerDefinition::builder()
            .name(CONTAINER_NAME)
            .set_secrets((!secrets.is_empty()).then_some(secrets))
            .image(&input.image)
            .essential(true)
            .memory(input.memory as i32)
            .log_configuration(log)
            .build();
        let ecs = &self.ecs;
        let registered = ecs
            .register_task_definition()
            .family(family)
            .requires_compatibilities(Compatibility::Fargate)
            .network_mode(NetworkMode::Awsvpc)
            .cpu(input.cpu.to_string())
            .memory(input.memory.to_string())
            .set_execution_role_arn(s.execution_role_arn.clone())
            .set_task_role_arn(s.task_role_arn.clone())
            .runtime_platform(
                RuntimePlatform::builder()
                    .cpu_architecture(input.architecture.clone())
                    .operating_system_family(OsFamily::Linux)
                    .build(),
            )
            .container_definitions(container)
            .tags(Tag::builder().key(INSTANCE_TAG).value(instance_id).build())
            .send()
            .await
            .map_err(|e| aws_error(e, ErrorCode::RunFailed, "cannot register the task definition"))?;
        registered
            .task_definition()
            .and_then(|d| d.task_definition_arn())
            .map(str::to_string)
            .ok_or_else(|| StepError::new(ErrorCode::RunFailed, "ECS registered a task definition without an ARN"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_architectures_map_to_fargates() {
        for (engine, fargate) in [("x86_64", "X86_64"), ("amd64", "X86_64"), ("aarch64", "ARM64"), ("arm64", "ARM64")] {
            assert_eq!(fargate_architecture(engine).unwrap().as_str(), fargate, "{engine}");
        }
        let e = fargate_architecture("s390x").unwrap_err();
        assert!(e.message.contains("s390x") && !e.retryable(), "{}", e.message);
    }
}
