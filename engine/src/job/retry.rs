//! Retry policy: how many attempts a job gets and how long to wait between them.
//!
//! The policy is part of the job's stored spec (defaults from configuration filled
//! in at submission), so a restart or a change of configuration never changes the
//! policy of a job already submitted. The time of the next attempt is stored in
//! `run_after`, so waiting survives restarts too.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A job's retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1: no retry).
    pub max_attempts: u32,
    /// The wait before the second attempt, in milliseconds.
    pub initial_backoff_ms: u64,
    /// The longest wait between attempts, in milliseconds.
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 3, initial_backoff_ms: 1_000, max_backoff_ms: 60_000 }
    }
}

/// What to do after attempt `attempt` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this long.
    RetryAfter(Duration),
    /// Attempts are used up, or the failure is permanent.
    GiveUp,
}

impl RetryPolicy {
    /// `retryable`: whether the failure could go away by itself. `jitter` in
    /// `[0, 1)` spreads retries of many jobs that failed together ("full jitter":
    /// the wait is drawn from between half the exponential step and all of it).
    pub fn decide(&self, attempt: u32, retryable: bool, jitter: f64) -> RetryDecision {
        if !retryable || attempt >= self.max_attempts {
            return RetryDecision::GiveUp;
        }
        let exponent = attempt.saturating_sub(1).min(32);
        let step = self.initial_backoff_ms.saturating_mul(1u64 << exponent).min(self.max_backoff_ms);
        let jitter = jitter.clamp(0.0, 1.0);
        let wait = (step as f64 * (0.5 + 0.5 * jitter)) as u64;
        RetryDecision::RetryAfter(Duration::from_millis(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_retries_a_permanent_failure_or_past_the_last_attempt() {
        let policy = RetryPolicy { max_attempts: 3, ..Default::default() };
        for attempt in 1..10 {
            assert_eq!(policy.decide(attempt, false, 0.3), RetryDecision::GiveUp);
            let retried = matches!(policy.decide(attempt, true, 0.3), RetryDecision::RetryAfter(_));
            assert_eq!(retried, attempt < 3, "attempt {attempt}");
        }
    }

    #[test]
    fn waits_grow_exponentially_within_jitter_and_stay_under_the_cap() {
        let policy = RetryPolicy { max_attempts: 100, initial_backoff_ms: 100, max_backoff_ms: 5_000 };
        for attempt in 1..100u32 {
            let step = (100u64 << (attempt - 1).min(32)).min(5_000);
            for i in 0..=20 {
                let jitter = f64::from(i) / 20.0;
                let RetryDecision::RetryAfter(wait) = policy.decide(attempt, true, jitter) else {
                    panic!("attempt {attempt} should retry");
                };
                let ms = wait.as_millis() as u64;
                assert!(ms >= step / 2 && ms <= step, "attempt {attempt} jitter {jitter}: {ms} ms");
                assert!(ms <= 5_000);
            }
        }
    }
}
