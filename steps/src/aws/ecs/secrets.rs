//! A job's secrets on ECS.
//!
//! `RunTask`'s overrides carry plain environment variables only, and `DescribeTasks`
//! shows them to whoever may call it. A task reads secrets itself when it starts,
//! from Secrets Manager or SSM Parameter Store, with its execution role: the
//! container definition's `secrets`. So a secret the job gives as an ARN is passed
//! on by reference and Slipway never reads it; a project secret's value is written
//! by the worker as a `SecureString` parameter whose name depends only on the
//! project and the secret (`/slipway/<project>/<secret>`), overwritten before each
//! launch, and named in the task definition. A definition thus depends on which
//! variable reads which name, never on a value, and jobs that use the same secrets
//! share it.

#[cfg(feature = "aws")]
mod parameters;

/// Where every parameter Slipway writes lives (the IAM policies name it).
pub const PARAMETER_PREFIX: &str = "/slipway/";
/// SSM's limit on a parameter's full name.
const MAX_PARAMETER_NAME: usize = 1011;

/// The parameter a project's secret is written to for its jobs' tasks.
pub fn parameter_name(project: &str, secret: &str) -> String {
    format!("{PARAMETER_PREFIX}{project}/{secret}")
}

/// Whether `name` is a parameter Slipway may write: under [`PARAMETER_PREFIX`], in
/// SSM's characters, no empty or dots-only level.
pub fn is_parameter_name(name: &str) -> bool {
    name.len() <= MAX_PARAMETER_NAME
        && name.strip_prefix(PARAMETER_PREFIX).is_some_and(|rest| {
            rest.split('/').all(|level| {
                !level.is_empty()
                    && !level.bytes().all(|b| b == b'.')
                    && level.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            })
        })
}

/// Whether `text` is the ARN of a Secrets Manager secret
/// (`arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME`) or of an SSM parameter
/// (`arn:aws:ssm:REGION:ACCOUNT:parameter/NAME`).
pub fn is_secret_arn(text: &str) -> bool {
    if text.len() > 2048 || !text.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    let parts: Vec<&str> = text.splitn(6, ':').collect();
    let ["arn", partition, service, region, account, resource] = parts[..] else { return false };
    let region_ok =
        !region.is_empty() && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let named = |prefix: &str| resource.strip_prefix(prefix).is_some_and(|name| !name.is_empty());
    matches!(partition, "aws" | "aws-cn" | "aws-us-gov")
        && region_ok
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && match service {
            "secretsmanager" => named("secret:"),
            "ssm" => named("parameter/"),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_arns_are_told_from_anything_else() {
        for good in [
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-password-AbCdEf",
            "arn:aws:ssm:us-east-1:123456789012:parameter/team/db",
            "arn:aws-cn:ssm:cn-north-1:123456789012:parameter/x",
        ] {
            assert!(is_secret_arn(good), "{good}");
        }
        for bad in [
            "db-password",
            "arn:aws:s3:::bucket/key",
            "arn:aws:ssm:us-east-1:1234:parameter/x",
            "arn:aws:ssm:us-east-1:123456789012:parameter/",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:",
            "arn:aws:ssm::123456789012:parameter/x",
            "arn:evil:ssm:us-east-1:123456789012:parameter/x",
            "arn:aws:ssm:us-east-1:123456789012:parameter/with space",
        ] {
            assert!(!is_secret_arn(bad), "{bad}");
        }
    }

    #[test]
    fn parameters_stay_under_the_prefix() {
        assert!(is_parameter_name(&parameter_name("7d9c0a3e-6f1b-4c1e-9a55-1d3c2b4a5e6f", "db.password")));
        for bad in ["/other/x", "/slipway/", "/slipway//x", "/slipway/a/../b", "/slipway/a b", "slipway/a"] {
            assert!(!is_parameter_name(bad), "{bad}");
        }
    }
}
