//! Keeps the Dockerfile and the build context inside the clone.
//!
//! The API rejects paths that leave the repository by their text (`..`, absolute
//! paths); a repository can still hold a symlink that points outside it, which only
//! the checkout on disk can reveal. Both checks exist because each catches what the
//! other cannot.

use std::path::{Component, Path, PathBuf};

use crate::{ErrorCode, StepError};

/// Whether a user-given relative path stays inside whatever it is joined to, and
/// out of `.git` (the repository's own machinery, credentials in its config
/// included), judged by its text alone.
pub fn is_confined(relative: &str) -> bool {
    let path = Path::new(relative);
    !relative.contains('\0')
        && path.components().all(|c| match c {
            Component::Normal(name) => name != ".git",
            Component::CurDir => true,
            _ => false,
        })
}

/// Resolves `relative` under `root` on disk, following symlinks, and fails unless the
/// result is still inside `root`. `what` names the field for the error message.
pub fn resolve_inside(root: &Path, relative: &str, what: &str) -> Result<PathBuf, StepError> {
    if !is_confined(relative) {
        return Err(StepError::new(
            ErrorCode::PathEscapesRepository,
            format!("{what} `{relative}` leaves the repository"),
        ));
    }
    let root = root
        .canonicalize()
        .map_err(|e| StepError::new(ErrorCode::Internal, format!("cannot read the checkout: {e}")).with_source(e))?;
    let missing = if what == "dockerfile" { ErrorCode::DockerfileMissing } else { ErrorCode::ContextMissing };
    let resolved = root.join(relative).canonicalize().map_err(|e| {
        StepError::new(missing, format!("{what} `{relative}` does not exist in the repository")).with_source(e)
    })?;
    if !resolved.starts_with(&root) || resolved.starts_with(root.join(".git")) {
        return Err(StepError::new(
            ErrorCode::PathEscapesRepository,
            format!("{what} `{relative}` is a link that leaves the repository"),
        ));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_check_rejects_parent_and_absolute_paths() {
        assert!(is_confined("Dockerfile"));
        assert!(is_confined("./docker/Dockerfile"));
        assert!(is_confined("."));
        assert!(!is_confined("../Dockerfile"));
        assert!(!is_confined("a/../../b"));
        assert!(!is_confined("/etc/passwd"));
    }

    #[test]
    fn a_symlink_out_of_the_checkout_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("Dockerfile")).unwrap();
        let err = resolve_inside(root.path(), "Dockerfile", "dockerfile").unwrap_err();
        assert_eq!(err.code, ErrorCode::PathEscapesRepository);

        std::fs::write(root.path().join("real"), "FROM scratch").unwrap();
        assert!(resolve_inside(root.path(), "real", "dockerfile").is_ok());
        let err = resolve_inside(root.path(), "nope", "dockerfile").unwrap_err();
        assert_eq!(err.code, ErrorCode::DockerfileMissing);
    }
}
