//! Which lines of a build's progress are steps, for [`crate::CacheCount`].
//!
//! A step is an instruction after `FROM` that the builder reports on its own:
//! BuildKit names its vertices `[2/5] RUN …` (`[stage 2/5] RUN …` in a multi-stage
//! build) and says at their end whether they came from cache; the classic builder
//! prints `Step 2/5 : RUN …` and then ` ---> Using cache` for a hit. `FROM` is not
//! counted: it is a base image pulled or found, not a layer built; nor is the
//! `LABEL` the classic builder appends for Slipway's own labels. BuildKit's own
//! work (`[internal] load …`, `exporting to image`) is not an instruction.

/// Whether a BuildKit vertex named `name` is a step of the Dockerfile.
pub(super) fn is_buildkit_step(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('[') else { return false };
    let Some((position, instruction)) = rest.split_once("] ") else { return false };
    // `2/5` or `stage 2/5`: a numbered position, never `internal`.
    position.rsplit(' ').next().is_some_and(is_position) && !is_from(instruction)
}

/// For a line of the classic builder's output: `Some(true)` starts a counted step,
/// `Some(false)` one that is not counted (`FROM`, or the `LABEL` the builder
/// appends for the labels Slipway asks for), `None` is any other line.
pub(super) fn classic_step(line: &str) -> Option<bool> {
    let rest = line.strip_prefix("Step ")?;
    let (position, instruction) = rest.split_once(" : ")?;
    // The builder writes the labels asked for in one LABEL, sorted by name.
    let own_label = [crate::docker::CACHE_KEY_LABEL, crate::docker::INSTANCE_LABEL]
        .iter()
        .any(|label| instruction.starts_with(&format!("LABEL {label}=")));
    is_position(position).then(|| !is_from(instruction) && !own_label)
}

/// Whether a line of the classic builder's output says the current step came from cache.
pub(super) fn is_classic_hit(line: &str) -> bool {
    line.trim() == "---> Using cache"
}

fn is_from(instruction: &str) -> bool {
    instruction.split_whitespace().next().is_some_and(|word| word.eq_ignore_ascii_case("from"))
}

/// `n/m`, as both builders number their steps.
fn is_position(s: &str) -> bool {
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    s.split_once('/').is_some_and(|(a, b)| is_number(a) && is_number(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkit_instructions_are_steps_and_its_own_work_is_not() {
        assert!(is_buildkit_step("[2/3] COPY busybox /bin/busybox"));
        assert!(is_buildkit_step("[builder 4/7] RUN make"));
        assert!(!is_buildkit_step("[1/3] FROM docker.io/library/alpine@sha256:00"));
        assert!(!is_buildkit_step("[builder 1/7] from base"));
        assert!(!is_buildkit_step("[internal] load build definition from Dockerfile"));
        assert!(!is_buildkit_step("[internal] load metadata for docker.io/library/alpine:3"));
        assert!(!is_buildkit_step("exporting to image"));
        assert!(!is_buildkit_step("importing cache manifest from 127.0.0.1:5000/app"));
        assert!(!is_buildkit_step("[a/b] RUN x"));
        assert!(!is_buildkit_step("[2/3]RUN x"));
    }

    #[test]
    fn classic_steps_and_hits() {
        assert_eq!(classic_step("Step 1/4 : FROM scratch"), Some(false));
        assert_eq!(classic_step("Step 2/4 : COPY busybox /bin/busybox"), Some(true));
        assert_eq!(classic_step("Step 4/5 : CMD [\"sh\"]"), Some(true));
        assert_eq!(classic_step("Step 5/5 : LABEL slipway.instance=0a1b"), Some(false));
        assert_eq!(classic_step("Step 5/5 : LABEL slipway.cache_key=9f slipway.instance=0a1b"), Some(false));
        assert_eq!(classic_step("Step 5/5 : LABEL version=1"), Some(true));
        assert_eq!(classic_step("Step two : RUN x"), None);
        assert_eq!(classic_step(" ---> Running in 1234"), None);
        assert!(is_classic_hit(" ---> Using cache"));
        assert!(!is_classic_hit(" ---> 5d2f0a1b"));
    }
}
