//! Conversions between wire enums and the steps' types, used on both sides of the
//! gRPC boundary.

use slipway_steps::{CacheCount, LogStream, Step, StepOutputs};

use crate::v1;

pub fn step_to_wire(step: Step) -> v1::Step {
    match step {
        Step::Clone => v1::Step::Clone,
        Step::Build => v1::Step::Build,
        Step::Push => v1::Step::Push,
        Step::Run => v1::Step::Run,
    }
}

/// `None` for an unknown or unset step.
pub fn step_from_wire(value: i32) -> Option<Step> {
    match v1::Step::try_from(value).ok()? {
        v1::Step::Clone => Some(Step::Clone),
        v1::Step::Build => Some(Step::Build),
        v1::Step::Push => Some(Step::Push),
        v1::Step::Run => Some(Step::Run),
        v1::Step::Unspecified => None,
    }
}

pub fn stream_to_wire(stream: LogStream) -> v1::Stream {
    match stream {
        LogStream::Stdout => v1::Stream::Stdout,
        LogStream::Stderr => v1::Stream::Stderr,
        LogStream::System => v1::Stream::System,
    }
}

/// The stream's name as stored (`stdout`, `stderr`, `system`); an unknown value is
/// stored as `system`.
pub fn stream_name(value: i32) -> &'static str {
    match v1::Stream::try_from(value) {
        Ok(v1::Stream::Stdout) => "stdout",
        Ok(v1::Stream::Stderr) => "stderr",
        _ => "system",
    }
}

/// Outputs as sent; `log_cursor` is not a step output and is left for the caller.
pub fn outputs_to_wire(o: &StepOutputs) -> v1::StepOutputs {
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    v1::StepOutputs {
        commit_sha: text(&o.commit_sha),
        image_id: text(&o.image_id),
        pushed_ref: text(&o.pushed_ref),
        container_id: text(&o.container_id),
        task_arn: text(&o.task_arn),
        stop_code: text(&o.stop_code),
        stopped_reason: text(&o.stopped_reason),
        log_cursor: String::new(),
        cache_hits: o.cache.map(|c| c.hits),
        cache_steps: o.cache.map(|c| c.steps),
    }
}

/// Outputs as received; an empty string is "not produced".
pub fn outputs_from_wire(o: &v1::StepOutputs) -> StepOutputs {
    let some = |s: &String| (!s.is_empty()).then(|| s.clone());
    StepOutputs {
        commit_sha: some(&o.commit_sha),
        image_id: some(&o.image_id),
        pushed_ref: some(&o.pushed_ref),
        container_id: some(&o.container_id),
        task_arn: some(&o.task_arn),
        stop_code: some(&o.stop_code),
        stopped_reason: some(&o.stopped_reason),
        // Both or neither; never more hits than steps.
        cache: match (o.cache_hits, o.cache_steps) {
            (Some(hits), Some(steps)) => Some(CacheCount { hits: hits.min(steps), steps }),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_survive_the_wire() {
        for step in Step::ALL {
            assert_eq!(step_from_wire(step_to_wire(step) as i32), Some(step));
        }
        assert_eq!(step_from_wire(0), None);
        assert_eq!(step_from_wire(99), None);
        assert_eq!(stream_name(stream_to_wire(LogStream::Stderr) as i32), "stderr");
    }

    #[test]
    fn outputs_survive_the_wire() {
        let outputs = StepOutputs {
            commit_sha: Some("c".into()),
            image_id: Some("i".into()),
            pushed_ref: Some("p".into()),
            container_id: Some("d".into()),
            task_arn: Some("t".into()),
            stop_code: Some("s".into()),
            stopped_reason: Some("r".into()),
            cache: Some(CacheCount { hits: 7, steps: 9 }),
        };
        assert_eq!(outputs_from_wire(&outputs_to_wire(&outputs)), outputs);
        assert_eq!(outputs_from_wire(&outputs_to_wire(&StepOutputs::default())), StepOutputs::default());
        // A worker cannot claim more hits than steps.
        let boasting = v1::StepOutputs { cache_hits: Some(10), cache_steps: Some(2), ..Default::default() };
        assert_eq!(outputs_from_wire(&boasting).cache, Some(CacheCount { hits: 2, steps: 2 }));
    }
}
