//! Conversions between wire enums and the steps' types, used on both sides of the
//! gRPC boundary.

use slipway_steps::{LogStream, Step};

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
}
