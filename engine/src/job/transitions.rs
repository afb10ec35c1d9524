//! The job state machine in one place: which states each store write may leave
//! (the transition table, [`Transition::from_states`]), and every "what happens
//! next" rule as a pure function over what is known at the time. The store's
//! statements carry out these decisions, each guarded by its transition's
//! from-states; the one decision taken in SQL (where a lease that ended without a
//! report sends its job, `store/leases.rs`) mirrors [`after_lease_end`] and is
//! tested against it.

use std::time::Duration;

use slipway_steps::{ErrorCode, Step};

use super::{JobState, RetryDecision, RetryPolicy, state_of_step};

/// Every write the store makes to a job's state or lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A runnable job is leased to a worker.
    Claim,
    /// A worker refused a job: its lease is given back unused, the job runnable again.
    Release,
    /// The job enters this step (also heard again when a report is sent twice).
    StartStep(Step),
    /// This step stores outputs while it goes on (the run's container before the wait).
    RecordOutputs(Step),
    /// This step, not the last, ended well.
    SucceedStep(Step),
    /// The attempt ends while this step ran, or was about to start: the job ends
    /// (succeeded, failed, cancelled) or is retried.
    EndAttempt(Step),
    /// The lease goes on: a heartbeat extends it, log lines are appended.
    KeepLease,
    /// The lease ended without a report of the job's end (expiry, or a hand-back).
    EndLease,
    /// Someone asks for the job to be cancelled.
    RequestCancel,
}

const UNFINISHED: &[JobState] =
    &[JobState::Queued, JobState::Cloning, JobState::Building, JobState::Pushing, JobState::Running];
/// Where a job waits for a worker: at the start, or at its run when its image is
/// pushed ([`resume_state`]).
const RUNNABLE: &[JobState] = &[JobState::Queued, JobState::Running];

impl Transition {
    /// The transition table: the states a job may be in for this write to apply.
    /// Every other state refuses it, and nothing is written.
    ///
    /// A step's own reports find the job in the step's state; its start also from
    /// where the step is entered; its success also in the next step's state (the
    /// report was sent again after the next step began, and changes nothing then).
    pub fn from_states(self) -> &'static [JobState] {
        use JobState::*;
        match self {
            Transition::Claim | Transition::Release => RUNNABLE,
            Transition::KeepLease | Transition::EndLease | Transition::RequestCancel => UNFINISHED,
            Transition::StartStep(step) | Transition::EndAttempt(step) => match step {
                Step::Clone => &[Queued, Cloning],
                Step::Build => &[Cloning, Building],
                Step::Push => &[Building, Pushing],
                Step::Run => &[Pushing, Running],
            },
            Transition::RecordOutputs(step) | Transition::SucceedStep(step) => match step {
                Step::Clone => &[Cloning, Building],
                Step::Build => &[Building, Pushing],
                Step::Push => &[Pushing, Running],
                Step::Run => &[Running],
            },
        }
    }

    pub fn allows(self, from: JobState) -> bool {
        self.from_states().contains(&from)
    }
}

/// The failure codes the engine itself records, beside the workers' own
/// ([`ErrorCode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineCode {
    /// The job's last attempt ended with its worker silent: the job failed.
    LeaseExpired,
    /// A step's row, when its attempt's lease ended before the step did.
    LeaseLost,
    /// A step's row, when its worker went silent (killed, crashed, cut off) while
    /// the step ran; each one also counts in `jobs.workers_lost`.
    WorkerLost,
    /// The worker gave the job back unfinished (it was shutting down).
    HandedBack,
    /// A secret the job names was deleted (or no longer fits) before an attempt
    /// started: the job fails for good.
    SecretMissing,
}

impl EngineCode {
    /// How a step's row ends when its attempt's lease ended under it rather than the
    /// step failing: a run ended so is resumed (re-attached) by the next attempt.
    pub const LEASE_ENDED: [EngineCode; 3] = [EngineCode::LeaseLost, EngineCode::WorkerLost, EngineCode::HandedBack];

    pub fn as_str(self) -> &'static str {
        match self {
            EngineCode::LeaseExpired => "lease_expired",
            EngineCode::LeaseLost => "lease_lost",
            EngineCode::WorkerLost => "worker_lost",
            EngineCode::HandedBack => "handed_back",
            EngineCode::SecretMissing => "secret_missing",
        }
    }
}

/// The error of a job cancelled by request, and the reason its history gives.
pub const CANCELLED_BY_REQUEST: &str = "cancelled by request";

/// The reason the history gives for a job passing `pushing` without a push: its
/// image names no registry host and stays on the worker's engine. Such a job has
/// no pushed image to resume at, so another attempt starts over ([`resume_state`]).
pub const PUSH_SKIPPED_LOCAL: &str = "push skipped: local image";

/// Where an unfinished attempt's job goes back to. The clone on disk and the built
/// image live on the worker that made them, so a job that had not pushed starts over
/// from the clone (at its pinned commit); a pushed image can run anywhere, so a job
/// that pushed resumes at the run.
pub fn resume_state(pushed: bool) -> JobState {
    if pushed { JobState::Running } else { JobState::Queued }
}

/// Where an attempt begins, as a job's log says it: resumed at `running`, or over
/// from the clone.
pub fn where_attempt_starts(state: JobState) -> &'static str {
    if state == JobState::Running { "at the run, with the pushed image" } else { "from the clone" }
}

/// The step a claimed job starts with, from the state it was left in.
pub fn first_step_of(state: JobState, pushed: bool) -> Step {
    if state == JobState::Running && pushed { Step::Run } else { Step::Clone }
}

/// Where a job goes when its attempt's lease ended without a report of its end (the
/// worker went silent, or handed it back): `cancelled` if a cancel was asked for,
/// `failed` once its attempts are used up, else back to be claimed again.
pub fn after_lease_end(attempt: u32, max_attempts: u32, cancel_requested: bool, pushed: bool) -> JobState {
    if cancel_requested {
        JobState::Cancelled
    } else if attempt >= max_attempts {
        JobState::Failed
    } else {
        resume_state(pushed)
    }
}

/// Where a cancel request sends an unfinished job: one no worker holds ends
/// `cancelled` at once; a held one stays where it is, marked, until its worker
/// stops it (its end is then reported, or its lease ends, as `cancelled`).
pub fn after_cancel_request(state: JobState, leased: bool) -> JobState {
    if leased { state } else { JobState::Cancelled }
}

/// What a worker said of a failed step.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    pub code: &'a str,
    /// Whether the worker thinks trying again could help.
    pub retryable: bool,
}

/// What the job of a failed step does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// The step was stopped by a cancel: the job ends `cancelled`.
    Cancelled,
    /// Another attempt, at `resume_at`, after waiting `after`.
    Retry { resume_at: JobState, after: Duration },
    /// The job ends `failed`.
    Failed,
}

/// Decides the fate of a job whose `step` failed on attempt `attempt`. A non-zero
/// exit is retried only when the job asked for it (`retry_on_failure`); `jitter`
/// in `[0, 1)` spreads the waits of jobs that failed together.
pub fn after_failure(
    step: Step,
    failure: Failure<'_>,
    attempt: u32,
    policy: &RetryPolicy,
    retry_on_failure: bool,
    pushed: bool,
    jitter: f64,
) -> AfterFailure {
    if failure.code == ErrorCode::Cancelled.as_str() {
        return AfterFailure::Cancelled;
    }
    let retryable = failure.retryable || (failure.code == ErrorCode::ExitNonZero.as_str() && retry_on_failure);
    match policy.decide(attempt.max(1), retryable, jitter) {
        RetryDecision::RetryAfter(after) => {
            // A failure before the run never has a pushed image of this attempt to
            // reuse, and one of the run always has.
            let pushed = pushed && state_of_step(step) == JobState::Running;
            AfterFailure::Retry { resume_at: resume_state(pushed), after }
        }
        RetryDecision::GiveUp => AfterFailure::Failed,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A job as the rules see it.
    #[derive(Debug, Clone, Copy)]
    struct Job {
        state: JobState,
        attempt: u32,
        pushed: bool,
        cancel_requested: bool,
        /// The step its current attempt runs, once it started one.
        step: Option<Step>,
    }

    /// What can happen to a job, in any order.
    #[derive(Debug, Clone, Copy)]
    enum Event {
        /// The claimed attempt starts its first step, or the next one after a success.
        StepSucceeded,
        StepFailed {
            retryable: bool,
            code: usize,
        },
        LeaseEnded,
        CancelRequested,
    }

    const CODES: [&str; 4] = ["push_failed", "exit_nonzero", "cancelled", "build_failed"];

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            3 => Just(Event::StepSucceeded),
            2 => (any::<bool>(), 0..CODES.len()).prop_map(|(retryable, code)| Event::StepFailed { retryable, code }),
            1 => Just(Event::LeaseEnded),
            1 => Just(Event::CancelRequested),
        ]
    }

    /// Applies one event the way the engine does, through the rules.
    fn apply(job: Job, event: Event, policy: &RetryPolicy, retry_on_failure: bool) -> Job {
        if job.state.is_terminal() {
            return job; // every write is fenced off a finished job
        }
        let step = job.step.unwrap_or_else(|| first_step_of(job.state, job.pushed));
        match event {
            Event::CancelRequested => Job { cancel_requested: true, ..job },
            // A job asked to cancel starts no step: it ends cancelled instead.
            Event::StepSucceeded if job.cancel_requested => Job { state: JobState::Cancelled, ..job },
            Event::StepSucceeded if job.step.is_none() => Job { state: state_of_step(step), step: Some(step), ..job },
            Event::StepSucceeded => {
                let pushed = job.pushed || step == Step::Push;
                match step.next() {
                    Some(next) => Job { state: state_of_step(next), step: Some(next), pushed, ..job },
                    None => Job { state: JobState::Succeeded, pushed, ..job },
                }
            }
            Event::StepFailed { .. } if job.step.is_none() => job,
            Event::StepFailed { retryable, code } => {
                let failure = Failure { code: CODES[code], retryable };
                match after_failure(step, failure, job.attempt, policy, retry_on_failure, job.pushed, 0.5) {
                    AfterFailure::Cancelled => Job { state: JobState::Cancelled, ..job },
                    AfterFailure::Failed => Job { state: JobState::Failed, ..job },
                    AfterFailure::Retry { resume_at, .. } => {
                        Job { state: resume_at, attempt: job.attempt + 1, step: None, ..job }
                    }
                }
            }
            Event::LeaseEnded => {
                let next = after_lease_end(job.attempt, policy.max_attempts, job.cancel_requested, job.pushed);
                let attempt = if next.is_terminal() { job.attempt } else { job.attempt + 1 };
                Job { state: next, attempt, step: None, ..job }
            }
        }
    }

    /// The store writes the engine makes for `event`, all applied to the job as it
    /// was before the event.
    fn writes_of(job: Job, event: Event) -> Vec<Transition> {
        let step = job.step.unwrap_or_else(|| first_step_of(job.state, job.pushed));
        match event {
            Event::CancelRequested => vec![Transition::RequestCancel],
            Event::LeaseEnded => vec![Transition::EndLease],
            Event::StepSucceeded if job.step.is_none() => vec![Transition::Claim, Transition::StartStep(step)],
            Event::StepSucceeded => match step.next() {
                Some(next) => vec![Transition::SucceedStep(step), Transition::StartStep(next)],
                None => vec![Transition::EndAttempt(step)],
            },
            Event::StepFailed { .. } if job.step.is_none() => vec![],
            Event::StepFailed { .. } => vec![Transition::EndAttempt(step)],
        }
    }

    proptest! {
        #[test]
        fn the_rules_keep_the_state_machine_s_promises(
            events in proptest::collection::vec(event(), 1..60),
            max_attempts in 1u32..6,
            retry_on_failure in any::<bool>(),
        ) {
            let policy = RetryPolicy { max_attempts, ..Default::default() };
            let mut job = Job { state: JobState::Queued, attempt: 1, pushed: false, cancel_requested: false, step: None };
            for event in events {
                let before = job;
                job = apply(job, event, &policy, retry_on_failure);
                if !before.state.is_terminal() {
                    for write in writes_of(before, event) {
                        prop_assert!(write.allows(before.state), "the table refuses {write:?} from {before:?}");
                    }
                }
                if !job.state.is_terminal() && job.step.is_none() {
                    prop_assert!(Transition::Claim.allows(job.state), "cannot be claimed again: {job:?}");
                }
                prop_assert!(!before.state.is_terminal() || job.state == before.state, "left a final state: {before:?} → {job:?}");
                prop_assert!(job.attempt >= before.attempt, "attempts went back: {before:?} → {job:?}");
                prop_assert!(job.attempt <= max_attempts, "more attempts than allowed: {job:?}");
                if before.cancel_requested {
                    prop_assert!(job.step.is_none() || job.step == before.step, "a job asked to cancel started a step: {before:?} → {job:?}");
                }
                if before.pushed {
                    prop_assert!(job.pushed, "forgot its pushed image: {job:?}");
                    prop_assert!(!matches!(job.state, JobState::Queued | JobState::Cloning | JobState::Building),
                        "a pushed job went back before its run: {before:?} → {job:?}");
                }
            }
        }
    }

    #[test]
    fn no_write_leaves_a_final_state_and_each_step_is_entered_from_the_one_before() {
        let mut all = vec![Transition::Claim, Transition::Release, Transition::KeepLease, Transition::EndLease];
        all.push(Transition::RequestCancel);
        for step in Step::ALL {
            all.extend([
                Transition::StartStep(step),
                Transition::RecordOutputs(step),
                Transition::SucceedStep(step),
                Transition::EndAttempt(step),
            ]);
        }
        for write in all {
            assert!(!write.from_states().is_empty(), "{write:?}");
            assert!(!write.from_states().iter().any(|s| s.is_terminal()), "{write:?} leaves a final state");
        }
        for step in Step::ALL {
            assert!(Transition::StartStep(step).allows(state_of_step(step)));
            if let Some(next) = step.next() {
                assert!(Transition::StartStep(next).allows(state_of_step(step)), "{next:?} cannot follow {step:?}");
                assert!(!Transition::StartStep(step).allows(state_of_step(next)), "{step:?} after {next:?}");
            }
        }
        assert!(!Transition::StartStep(Step::Clone).allows(JobState::Running), "a pushed job cloned again");
    }

    #[test]
    fn a_pushed_job_resumes_at_its_run_and_any_other_starts_over() {
        assert_eq!(resume_state(true), JobState::Running);
        assert_eq!(resume_state(false), JobState::Queued);
        assert_eq!(first_step_of(JobState::Running, true), Step::Run);
        assert_eq!(first_step_of(JobState::Queued, false), Step::Clone);
        let policy = RetryPolicy::default();
        let push_failed = Failure { code: "push_failed", retryable: true };
        let after = after_failure(Step::Push, push_failed, 1, &policy, false, false, 0.0);
        assert!(matches!(after, AfterFailure::Retry { resume_at: JobState::Queued, .. }), "{after:?}");
        let exited = Failure { code: "exit_nonzero", retryable: false };
        assert_eq!(after_failure(Step::Run, exited, 1, &policy, false, true, 0.0), AfterFailure::Failed);
        let after = after_failure(Step::Run, exited, 1, &policy, true, true, 0.0);
        assert!(matches!(after, AfterFailure::Retry { resume_at: JobState::Running, .. }), "{after:?}");
        assert_eq!(after_lease_end(3, 3, false, true), JobState::Failed);
        assert_eq!(after_lease_end(3, 3, true, true), JobState::Cancelled);
        assert_eq!(after_lease_end(1, 3, false, true), JobState::Running);
    }
}
