//! Project secrets written to SSM Parameter Store for a task to read at its start.

use std::collections::BTreeMap;

use aws_sdk_ssm::types::{ParameterTier, ParameterType};

use crate::aws::aws_error;
use crate::aws::ecs::Ecs;
use crate::runtime::SecretEnv;
use crate::{ErrorCode, StepError};

/// What SSM holds in one parameter: 4 KB in the standard tier, 8 KB in the advanced.
const STANDARD_MAX_BYTES: usize = 4096;
const ADVANCED_MAX_BYTES: usize = 8192;

impl Ecs {
    /// Writes the values among `secrets` to their parameters and answers the
    /// container's secrets: each variable with where the task reads it.
    pub(in crate::aws::ecs) async fn task_secrets(
        &self,
        secrets: &BTreeMap<String, SecretEnv>,
    ) -> Result<Vec<(String, String)>, StepError> {
        let mut sources = Vec::with_capacity(secrets.len());
        for (variable, secret) in secrets {
            let source = match secret {
                SecretEnv::Reference(arn) => arn.clone(),
                SecretEnv::Value { value, parameter } => {
                    self.put_parameter(variable, parameter, value).await?;
                    parameter.clone()
                }
            };
            sources.push((variable.clone(), source));
        }
        Ok(sources)
    }

    async fn put_parameter(&self, variable: &str, parameter: &str, value: &str) -> Result<(), StepError> {
        let tier = match value.len() {
            n if n <= STANDARD_MAX_BYTES => ParameterTier::Standard,
            n if n <= ADVANCED_MAX_BYTES => ParameterTier::Advanced,
            n => {
                return Err(StepError::new(
                    ErrorCode::RunFailed,
                    format!(
                        "secrets.{variable}: an ECS task reads a project secret from SSM Parameter Store, \
                         which holds at most {ADVANCED_MAX_BYTES} bytes; this one holds {n}"
                    ),
                ));
            }
        };
        let ssm = &self.ssm;
        ssm.put_parameter()
            .name(parameter)
            .value(value)
            .r#type(ParameterType::SecureString)
            .tier(tier)
            .overwrite(true)
            .description("A Slipway project secret, read by its jobs' ECS tasks")
            .send()
            .await
            .map_err(|e| aws_error(e, ErrorCode::RunFailed, &format!("cannot write secrets.{variable} to SSM")))?;
        Ok(())
    }
}
