//! ECR: push credentials from `GetAuthorizationToken`, repositories created on first
//! push, and images deleted when their jobs expire ([`Ecr`], in builds with the
//! `aws` feature). What a host name says about its registry, and how created
//! repositories are set up, need no SDK and are here for every build.

#[cfg(feature = "aws")]
mod access;

#[cfg(feature = "aws")]
pub use access::{Ecr, REFRESH_BEFORE};

/// An ECR registry host: `<account>.dkr.ecr[-fips].<region>.amazonaws.com[.cn]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EcrRegistry {
    pub host: String,
    pub account: String,
    pub region: String,
}

impl EcrRegistry {
    /// The registry a host names, if it is an ECR host.
    pub fn parse(host: &str) -> Option<EcrRegistry> {
        let rest = host.strip_suffix(".amazonaws.com").or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
        let mut parts = rest.split('.');
        let (account, dkr, ecr, region) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let valid = parts.next().is_none()
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && dkr == "dkr"
            && (ecr == "ecr" || ecr == "ecr-fips")
            && !region.is_empty()
            && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        valid.then(|| EcrRegistry { host: host.to_string(), account: account.to_string(), region: region.to_string() })
    }
}

/// How repositories Slipway creates are set up.
#[derive(Debug, Clone, Default)]
pub struct RepositorySettings {
    /// Tags cannot be moved once pushed.
    pub immutable_tags: bool,
    pub scan_on_push: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_ecr_hosts() {
        let r = EcrRegistry::parse("123456789012.dkr.ecr.eu-west-1.amazonaws.com").unwrap();
        assert_eq!((r.account.as_str(), r.region.as_str()), ("123456789012", "eu-west-1"));
        assert!(EcrRegistry::parse("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com").is_some());
        assert!(EcrRegistry::parse("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn").is_some());
        for other in ["127.0.0.1:5000", "ghcr.io", "12345.dkr.ecr.eu-west-1.amazonaws.com", "public.ecr.aws"] {
            assert_eq!(EcrRegistry::parse(other), None, "{other}");
        }
    }
}
