//! Who may do what through the HTTP API: projects own jobs, and every call carries
//! an API token ([`token`]) whose [`Role`] says what it may do, in its project or,
//! for an `owner` token, in the whole installation.

pub mod token;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a token may do; each role may do what the ones before it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "token_role", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read its project's jobs, their history and logs.
    Read,
    /// And submit, cancel and re-run them.
    Submit,
    /// And manage its project's tokens.
    Admin,
    /// The installation: create projects and their first admin token; every project.
    Owner,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Read, Role::Submit, Role::Admin, Role::Owner];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a role: read, submit, admin or owner"))
    }
}

/// A project's id.
pub type ProjectId = Uuid;

/// Whether `name` can name a project: 1–63 lowercase letters, digits and `-`, not
/// at either end (the rule the `projects` table checks too).
pub fn is_project_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The project every job belonged to before projects, and the one jobs go to when
/// nothing names another.
pub const DEFAULT_PROJECT: &str = "default";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_may_do_what_the_ones_before_it_may() {
        assert!(Role::Owner.allows(Role::Admin) && Role::Admin.allows(Role::Submit) && Role::Submit.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Submit) && !Role::Admin.allows(Role::Owner));
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn project_names_are_dns_labels() {
        assert!(is_project_name("default") && is_project_name("team-a1"));
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_project_name(bad), "{bad}");
        }
    }
}
