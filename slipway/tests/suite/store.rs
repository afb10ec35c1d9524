//! The store's claim and fencing against a real Postgres.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{TestDb, default_project, test_submit_defaults};
use slipway_engine::job::{JobId, JobRequest, JobState, RunRequest};
use slipway_engine::store::{
    CacheElsewhere, Finish, HeldLease, Lease, LeaseStatus, NewLogLine, Retry, StoreError, WorkerOffer, leases, logs,
    reports,
};
use slipway_steps::{Step, StepOutputs};

const TTL: Duration = Duration::from_secs(30);
/// No other worker holds any build cache.
static NOWHERE: CacheElsewhere = CacheElsewhere { keys: Vec::new(), wait: Duration::ZERO };

/// A worker offering the Docker runtime and no labels.
fn docker() -> WorkerOffer {
    WorkerOffer { runtimes: vec!["docker".into()], ..Default::default() }
}

async fn queue(db: &TestDb, n: usize) -> Vec<JobId> {
    queue_request(db, n, JobRequest::default()).await
}

async fn queue_request(db: &TestDb, n: usize, request: JobRequest) -> Vec<JobId> {
    let spec =
        JobRequest { repo: Some("git://127.0.0.1/app".into()), image: Some("127.0.0.1:5000/app:1".into()), ..request }
            .validate(&test_submit_defaults())
            .unwrap();
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = JobId::new();
        let by = slipway_engine::store::Submitter {
            project: default_project(db).await,
            actor: None,
            reason: "submitted".into(),
            rerun_of: None,
        };
        db.store.submit(id, &spec, None, None, &by).await.unwrap();
        ids.push(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_take_at_most_the_free_slots_and_never_the_same_job_twice() {
    let db = TestDb::new().await;
    let ids = queue(&db, 5).await;
    let offer = docker();
    let (a, b) = tokio::join!(
        db.store.claim("o1", "w1", &offer, 3, TTL, &NOWHERE),
        db.store.claim("o2", "w2", &offer, 3, TTL, &NOWHERE)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 5);
    assert!(a.len() <= 3 && b.len() <= 3);
    let mut claimed: Vec<JobId> = a.iter().chain(&b).map(|j| j.id).collect();
    claimed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(claimed, expected, "each job claimed exactly once");
    assert!(db.store.claim("o1", "w1", &docker(), 3, TTL, &NOWHERE).await.unwrap().is_empty());

    // A released lease makes the job claimable again, same attempt.
    db.store.release(a[0].id, a[0].lease_token).await.unwrap();
    let again = db.store.claim("o1", "w1", &docker(), 3, TTL, &NOWHERE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].id, again[0].attempt), (a[0].id, 1));
    assert_ne!(again[0].lease_token, a[0].lease_token);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_claimed_only_by_a_worker_offering_its_labels_and_runtime() {
    let db = TestDb::new().await;
    let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let requires = Some(labels(&[("region", "eu-west-1"), ("arch", "arm64")]));
    let in_eu = queue_request(&db, 1, JobRequest { requires, ..Default::default() }).await[0];
    let ecs_run = RunRequest { runtime: Some("ecs".into()), ..Default::default() };
    let on_ecs = queue_request(&db, 1, JobRequest { run: Some(ecs_run), ..Default::default() }).await[0];

    // Neither a worker without labels, nor one in another region, nor one with only
    // one of the two labels takes the first; none without ECS takes the second.
    let partial = WorkerOffer { labels: labels(&[("region", "eu-west-1")]), ..docker() };
    let elsewhere = WorkerOffer { labels: labels(&[("region", "us-east-1"), ("arch", "arm64")]), ..docker() };
    for offer in [docker(), partial, elsewhere] {
        assert!(db.store.claim("o", "w", &offer, 5, TTL, &NOWHERE).await.unwrap().is_empty(), "{offer:?}");
    }
    let eu = WorkerOffer { labels: labels(&[("region", "eu-west-1"), ("arch", "arm64"), ("gpu", "none")]), ..docker() };
    let claimed: Vec<JobId> =
        db.store.claim("o", "w", &eu, 5, TTL, &NOWHERE).await.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(claimed, vec![in_eu]);
    let ecs = WorkerOffer { runtimes: vec!["docker".into(), "ecs".into()], ..Default::default() };
    let claimed: Vec<JobId> =
        db.store.claim("o", "w", &ecs, 5, TTL, &NOWHERE).await.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(claimed, vec![on_ecs]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_with_a_stale_token_changes_nothing() {
    let db = TestDb::new().await;
    let id = queue(&db, 1).await[0];
    let first = db.store.claim("o", "w", &docker(), 1, TTL, &NOWHERE).await.unwrap().remove(0);
    db.store.release(id, first.lease_token).await.unwrap();
    let current = db.store.claim("o", "w", &docker(), 1, TTL, &NOWHERE).await.unwrap().remove(0);
    let stale = Lease { job_id: id, attempt: 1, token: first.lease_token, worker: Some("w".into()) };
    let mut conn = db.store.pool().acquire().await.unwrap();
    let conn = &mut *conn;
    let lease = Lease { job_id: id, attempt: 1, token: current.lease_token, worker: Some("w".into()) };

    let err = reports::mark_step_started(conn, &stale, Step::Clone, TTL).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost), "{err:?}");
    let line = NewLogLine { step: Step::Clone, stream: "system", at: chrono::Utc::now(), line: "x".into() };
    assert!(matches!(
        logs::append_logs(conn, &stale, std::slice::from_ref(&line), None, 1 << 20).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(db.store.logs(id, 0, 10).await.unwrap().is_empty());
    assert_eq!(db.store.job(id).await.unwrap().state, JobState::Queued);

    reports::mark_step_started(conn, &lease, Step::Clone, TTL).await.unwrap();
    logs::append_logs(conn, &lease, &[line], None, 1 << 20).await.unwrap();
    let outputs = StepOutputs { commit_sha: Some("abc".into()), ..Default::default() };
    reports::mark_step_succeeded(conn, &lease, Step::Clone, &outputs, TTL).await.unwrap();
    let finish = Finish {
        state: JobState::Failed,
        exit_code: None,
        error_code: Some("build_failed".into()),
        error: Some("no".into()),
    };
    reports::mark_step_started(conn, &lease, Step::Build, TTL).await.unwrap();
    reports::mark_finished(conn, &lease, Step::Build, &StepOutputs::default(), &finish).await.unwrap();

    // Once the job has ended, even its own lease can change nothing.
    let err = reports::mark_step_started(conn, &lease, Step::Push, TTL).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost));
    let job = db.store.job(id).await.unwrap();
    assert_eq!(
        (job.state, job.commit_sha.as_deref(), job.error_code.as_deref()),
        (JobState::Failed, Some("abc"), Some("build_failed"))
    );
    let events = db.store.events(id).await.unwrap();
    let states: Vec<JobState> = events.iter().map(|e| e.to_state).collect();
    assert_eq!(states, [JobState::Queued, JobState::Cloning, JobState::Building, JobState::Failed]);
    assert_eq!(events[1].worker.as_deref(), Some("w"));
    let steps = db.store.steps(id).await.unwrap();
    assert_eq!(
        steps.iter().map(|s| (s.step.as_str(), s.outcome.as_deref())).collect::<Vec<_>>(),
        [("clone", Some("succeeded")), ("build", Some("failed"))]
    );
}

/// Every write a worker's report can cause, each fenced by the lease token.
#[derive(Debug, Clone, Copy)]
enum FencedWrite {
    StepStarted,
    Outputs,
    StepSucceeded,
    Finished,
    Retry,
    Logs,
    Heartbeat,
    Release,
    CancelCheck,
    HandBack,
}

const FENCED_WRITES: [FencedWrite; 10] = [
    FencedWrite::StepStarted,
    FencedWrite::Outputs,
    FencedWrite::StepSucceeded,
    FencedWrite::Finished,
    FencedWrite::Retry,
    FencedWrite::Logs,
    FencedWrite::Heartbeat,
    FencedWrite::Release,
    FencedWrite::CancelCheck,
    FencedWrite::HandBack,
];

/// Tries one write with `lease`, for the step each write speaks of in the fencing
/// tests; true when it was refused.
async fn refused(db: &TestDb, write: FencedWrite, lease: &Lease) -> bool {
    let step = match write {
        FencedWrite::StepSucceeded | FencedWrite::Retry => Step::Clone,
        _ => Step::Run,
    };
    refused_at(db, write, lease, step).await
}

/// Tries one write with `lease` for `step`; true when it was refused.
async fn refused_at(db: &TestDb, write: FencedWrite, lease: &Lease, step: Step) -> bool {
    let mut conn = db.store.pool().acquire().await.unwrap();
    let conn = &mut *conn;
    let outputs =
        StepOutputs { commit_sha: Some("stale-sha".into()), container_id: Some("stale".into()), ..Default::default() };
    let lost = |r: Result<(), StoreError>| match r {
        Err(StoreError::LeaseLost) => true,
        Ok(()) => false,
        Err(e) => panic!("{write:?}: {e:?}"),
    };
    match write {
        FencedWrite::StepStarted => lost(reports::mark_step_started(conn, lease, step, TTL).await.map(drop)),
        FencedWrite::Outputs => lost(reports::record_outputs(conn, lease, step, &outputs, TTL).await),
        FencedWrite::StepSucceeded => lost(reports::mark_step_succeeded(conn, lease, step, &outputs, TTL).await),
        FencedWrite::Finished => {
            let finish = Finish { state: JobState::Succeeded, exit_code: Some(0), error_code: None, error: None };
            lost(reports::mark_finished(conn, lease, step, &outputs, &finish).await)
        }
        FencedWrite::Retry => {
            let retry = Retry {
                resume_at: JobState::Queued,
                after: Duration::ZERO,
                exit_code: None,
                error_code: "stale".into(),
                error: "stale".into(),
            };
            lost(reports::mark_retry(conn, lease, step, &retry).await)
        }
        FencedWrite::Logs => {
            let line = NewLogLine { step, stream: "stdout", at: chrono::Utc::now(), line: "stale".into() };
            lost(logs::append_logs(conn, lease, &[line], Some("stale-cursor"), 1 << 20).await)
        }
        FencedWrite::Heartbeat => {
            let held = HeldLease { job_id: lease.job_id, token: lease.token };
            let statuses = db.store.heartbeat("stale-owner", &[held], TTL).await.unwrap();
            statuses == [(held, LeaseStatus::Stale)]
        }
        FencedWrite::Release => lost(db.store.release(lease.job_id, lease.token).await),
        FencedWrite::CancelCheck => {
            // A stale lease never learns of a cancel meant for the current attempt.
            db.store.request_cancel(lease.job_id, None).await.unwrap();
            !leases::cancel_requested(conn, lease.job_id, lease.token).await.unwrap()
        }
        FencedWrite::HandBack => {
            leases::hand_back(conn, lease.job_id, lease.token, &Default::default()).await.unwrap().is_none()
        }
    }
}

/// Everything stored about a job, to compare before and after a refused write.
async fn stored(db: &TestDb, id: JobId) -> String {
    sqlx::query_scalar(
        "select jsonb_build_object(
             'job', (select to_jsonb(j) - 'cancel_requested_at' - 'updated_at' from jobs j where id = $1),
             'events', (select jsonb_agg(e order by e.id) from job_events e where job_id = $1),
             'steps', (select jsonb_agg(s order by s.attempt, s.step) from job_steps s where job_id = $1),
             'logs', (select jsonb_agg(l order by l.id) from job_logs l where job_id = $1))::text",
    )
    .bind(id)
    .fetch_one(db.store.pool())
    .await
    .unwrap()
}

/// A job at attempt 2 on worker `w2`, cloning, whose attempt 1 (on `w1`) was handed
/// back: returns the lease of attempt 1.
async fn job_with_a_stale_attempt(db: &TestDb) -> (JobId, Lease) {
    let id = queue(db, 1).await[0];
    let first = db.store.claim("o", "w1", &docker(), 1, TTL, &NOWHERE).await.unwrap().remove(0);
    let stale = Lease { job_id: id, attempt: 1, token: first.lease_token, worker: Some("w1".into()) };
    let mut conn = db.store.pool().acquire().await.unwrap();
    reports::mark_step_started(&mut conn, &stale, Step::Clone, TTL).await.unwrap();
    leases::hand_back(&mut conn, id, first.lease_token, &Default::default()).await.unwrap().unwrap();
    let second = db.store.claim("o", "w2", &docker(), 1, TTL, &NOWHERE).await.unwrap().remove(0);
    assert_eq!(second.attempt, 2);
    let current = Lease { job_id: id, attempt: 2, token: second.lease_token, worker: Some("w2".into()) };
    reports::mark_step_started(&mut conn, &current, Step::Clone, TTL).await.unwrap();
    (id, stale)
}

/// A job that failed on worker `w`, and the lease it held while it ran.
async fn finished_job(db: &TestDb) -> (JobId, Lease) {
    let id = queue(db, 1).await[0];
    let claimed = db.store.claim("o", "w", &docker(), 1, TTL, &NOWHERE).await.unwrap().remove(0);
    let lease = Lease { job_id: id, attempt: 1, token: claimed.lease_token, worker: Some("w".into()) };
    let mut conn = db.store.pool().acquire().await.unwrap();
    reports::mark_step_started(&mut conn, &lease, Step::Clone, TTL).await.unwrap();
    let finish =
        Finish { state: JobState::Failed, exit_code: None, error_code: Some("clone_failed".into()), error: None };
    reports::mark_finished(&mut conn, &lease, Step::Clone, &StepOutputs::default(), &finish).await.unwrap();
    (id, lease)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fenced_write_with_a_stale_token_is_refused_and_writes_nothing() {
    let db = TestDb::new().await;
    for write in FENCED_WRITES {
        let (id, stale) = job_with_a_stale_attempt(&db).await;
        let before = stored(&db, id).await;
        assert!(refused(&db, write, &stale).await, "{write:?} with the token of attempt 1 was accepted");
        assert_eq!(stored(&db, id).await, before, "{write:?} with a stale token changed the job");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fenced_write_to_a_finished_job_is_refused_and_writes_nothing() {
    let db = TestDb::new().await;
    for write in FENCED_WRITES {
        let (id, lease) = finished_job(&db).await;
        let before = stored(&db, id).await;
        assert!(refused(&db, write, &lease).await, "{write:?} to a finished job was accepted");
        assert_eq!(stored(&db, id).await, before, "{write:?} changed a finished job");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_from_a_worker_other_than_the_lease_s_is_refused_and_writes_nothing() {
    let db = TestDb::new().await;
    let reports = [
        (FencedWrite::StepStarted, Step::Build),
        (FencedWrite::Outputs, Step::Clone),
        (FencedWrite::StepSucceeded, Step::Clone),
        (FencedWrite::Finished, Step::Clone),
        (FencedWrite::Logs, Step::Clone),
        // Last: the job it retries would be claimed again by the next case.
        (FencedWrite::Retry, Step::Clone),
    ];
    for (write, step) in reports {
        let (id, lease) = job_at(&db, Some(Step::Clone)).await;
        let before = stored(&db, id).await;
        let intruder = Lease { worker: Some("intruder".into()), ..lease.clone() };
        assert!(
            refused_at(&db, write, &intruder, step).await,
            "{write:?} from another worker with the token was accepted"
        );
        assert_eq!(stored(&db, id).await, before, "{write:?} from another worker changed the job");
        assert!(!refused_at(&db, write, &lease, step).await, "{write:?} from the lease's own worker was refused");
    }
}

/// A job claimed by worker `w` and taken through its steps up to `step` (started),
/// with the lease of that attempt; `None`: claimed, no step started.
async fn job_at(db: &TestDb, step: Option<Step>) -> (JobId, Lease) {
    let id = queue(db, 1).await[0];
    let claimed = db.store.claim("o", "w", &docker(), 1, TTL, &NOWHERE).await.unwrap().remove(0);
    let lease = Lease { job_id: id, attempt: 1, token: claimed.lease_token, worker: Some("w".into()) };
    let Some(step) = step else { return (id, lease) };
    let mut conn = db.store.pool().acquire().await.unwrap();
    for done in Step::ALL.into_iter().take_while(|s| *s != step) {
        reports::mark_step_started(&mut conn, &lease, done, TTL).await.unwrap();
        reports::mark_step_succeeded(&mut conn, &lease, done, &StepOutputs::default(), TTL).await.unwrap();
    }
    reports::mark_step_started(&mut conn, &lease, step, TTL).await.unwrap();
    (id, lease)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_write_from_a_state_its_transition_may_not_leave_is_refused_and_writes_nothing() {
    use FencedWrite::*;
    let db = TestDb::new().await;
    // A claimed job that started no step yet: no step can end or store outputs.
    let at_claim =
        [(Outputs, Step::Clone), (StepSucceeded, Step::Clone), (Finished, Step::Build), (StepStarted, Step::Build)];
    // A cloning job: nothing of a later step applies, and it is past being released.
    let cloning = [
        (StepStarted, Step::Push),
        (StepStarted, Step::Run),
        (Outputs, Step::Build),
        (Outputs, Step::Run),
        (StepSucceeded, Step::Build),
        (StepSucceeded, Step::Push),
        (Finished, Step::Push),
        (Finished, Step::Run),
        (Retry, Step::Push),
        (Retry, Step::Run),
        (Release, Step::Clone),
    ];
    // A running job never goes back to an earlier step.
    let running =
        [(StepStarted, Step::Clone), (StepStarted, Step::Build), (Retry, Step::Clone), (Outputs, Step::Build)];
    for (at, writes) in [(None, &at_claim[..]), (Some(Step::Clone), &cloning[..]), (Some(Step::Run), &running[..])] {
        for &(write, step) in writes {
            let (id, lease) = job_at(&db, at).await;
            let before = stored(&db, id).await;
            assert!(refused_at(&db, write, &lease, step).await, "{write:?} of {step:?} accepted at {at:?}");
            assert_eq!(stored(&db, id).await, before, "{write:?} of {step:?} at {at:?} changed the job");
        }
    }

    // A job left unleased in a state no claim may take is not claimed.
    let (id, _) = job_at(&db, Some(Step::Build)).await;
    sqlx::query("update jobs set lease_token = null, lease_owner = null, lease_worker = null where id = $1")
        .bind(id)
        .execute(db.store.pool())
        .await
        .unwrap();
    let before = stored(&db, id).await;
    assert!(db.store.claim("o", "w", &docker(), 1, TTL, &NOWHERE).await.unwrap().is_empty());
    assert_eq!(stored(&db, id).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn history_rows_name_the_attempt_and_worker_of_the_report() {
    let db = TestDb::new().await;
    let (id, _) = job_with_a_stale_attempt(&db).await;
    let token = sqlx::query_scalar("select lease_token from jobs where id = $1")
        .bind(id)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    let lease = Lease { job_id: id, attempt: 2, token, worker: Some("w2".into()) };
    let mut conn = db.store.pool().acquire().await.unwrap();
    let line = NewLogLine { step: Step::Clone, stream: "stdout", at: chrono::Utc::now(), line: "hi".into() };
    logs::append_logs(&mut conn, &lease, &[line], None, 1 << 20).await.unwrap();
    reports::mark_step_succeeded(&mut conn, &lease, Step::Clone, &StepOutputs::default(), TTL).await.unwrap();
    let retry = Retry {
        resume_at: JobState::Queued,
        after: Duration::ZERO,
        exit_code: None,
        error_code: "build_unavailable".into(),
        error: "down".into(),
    };
    reports::mark_step_started(&mut conn, &lease, Step::Build, TTL).await.unwrap();
    reports::mark_retry(&mut conn, &lease, Step::Build, &retry).await.unwrap();

    let events: Vec<(String, i32, Option<String>)> = sqlx::query_as(
        "select to_state::text, attempt, worker from job_events where job_id = $1 and to_state <> 'queued' order by id",
    )
    .bind(id)
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    let w = |s: &str| Some(s.to_string());
    assert_eq!(
        events,
        [("cloning".into(), 1, w("w1")), ("cloning".into(), 2, w("w2")), ("building".into(), 2, w("w2")),]
    );
    let retried: (i32, Option<String>) =
        sqlx::query_as("select attempt, worker from job_events where job_id = $1 order by id desc limit 1")
            .bind(id)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(retried, (3, w("w2")), "the retry names the next attempt and the reporting worker");
    let logged = db.store.logs(id, 0, 10).await.unwrap();
    let hi = logged.iter().find(|l| l.line == "hi").unwrap();
    assert_eq!((hi.attempt, hi.worker.as_deref()), (2, Some("w2")));
    // The lease that ended says so in its own attempt's log, as does the retry.
    let ended = logged.iter().find(|l| l.line.starts_with("attempt 1 ended")).unwrap();
    assert_eq!((ended.attempt, ended.worker.as_deref(), ended.stream.as_str()), (1, Some("w1"), "system"));
    let retried = logged.iter().find(|l| l.line.starts_with("attempt 2 failed (build_unavailable): down")).unwrap();
    assert_eq!((retried.attempt, retried.step.as_str()), (2, "build"));
    let build: (i32, Option<String>) =
        sqlx::query_as("select attempt, worker from job_steps where job_id = $1 and step = 'build'")
            .bind(id)
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(build, (2, w("w2")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_run_starts_afresh_and_a_run_whose_lease_ended_is_resumed() {
    let db = TestDb::new().await;
    let id = queue(&db, 1).await[0];
    let mut conn = db.store.pool().acquire().await.unwrap();
    let lease_of = |claimed: &slipway_engine::store::ClaimedJob| Lease {
        job_id: id,
        attempt: claimed.attempt,
        token: claimed.lease_token,
        worker: Some("w".into()),
    };
    let first = db.store.claim("o", "w", &docker(), 1, TTL, &NOWHERE).await.unwrap().remove(0);
    assert!(!first.fresh_run);
    let lease = lease_of(&first);
    for step in Step::ALL {
        reports::mark_step_started(&mut conn, &lease, step, TTL).await.unwrap();
        if step != Step::Run {
            reports::mark_step_succeeded(&mut conn, &lease, step, &StepOutputs::default(), TTL).await.unwrap();
        }
    }
    let pushed = StepOutputs { pushed_ref: Some("127.0.0.1:5000/app@sha256:00".into()), ..Default::default() };
    reports::record_outputs(&mut conn, &lease, Step::Run, &pushed, TTL).await.unwrap();

    // The run ended and its end was recorded: the retry runs afresh.
    let retry = Retry {
        resume_at: JobState::Running,
        after: Duration::ZERO,
        exit_code: Some(3),
        error_code: "exit_nonzero".into(),
        error: "the container exited with code 3".into(),
    };
    reports::mark_retry(&mut conn, &lease, Step::Run, &retry).await.unwrap();
    let second = db.store.claim("o", "w", &docker(), 1, TTL, &NOWHERE).await.unwrap().remove(0);
    assert_eq!((second.state, second.attempt, second.fresh_run), (JobState::Running, 2, true));

    // Its worker went away mid-run: the next attempt re-attaches to what it left.
    let lease = lease_of(&second);
    reports::mark_step_started(&mut conn, &lease, Step::Run, TTL).await.unwrap();
    leases::hand_back(&mut conn, id, second.lease_token, &Default::default()).await.unwrap().unwrap();
    let third = db.store.claim("o", "w", &docker(), 1, TTL, &NOWHERE).await.unwrap().remove(0);
    assert_eq!((third.state, third.attempt, third.fresh_run), (JobState::Running, 3, false));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_back_waits_for_a_row_another_transaction_holds_instead_of_skipping_it() {
    let db = TestDb::new().await;
    let id = queue(&db, 1).await[0];
    let claimed = db.store.claim("o", "w", &docker(), 1, TTL, &NOWHERE).await.unwrap().remove(0);
    let lease = Lease { job_id: id, attempt: 1, token: claimed.lease_token, worker: Some("w".into()) };
    let mut conn = db.store.pool().acquire().await.unwrap();
    reports::mark_step_started(&mut conn, &lease, Step::Clone, TTL).await.unwrap();

    // Another transaction (a heartbeat, a report being committed) holds the row.
    let mut holder = db.store.pool().begin().await.unwrap();
    sqlx::query("select 1 from jobs where id = $1 for update").bind(id).execute(&mut *holder).await.unwrap();
    let hand_back = tokio::spawn(async move {
        leases::hand_back(&mut conn, id, lease.token, &Default::default()).await.unwrap().map(|l| l.to_state)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.commit().await.unwrap();

    assert_eq!(hand_back.await.unwrap(), Some(JobState::Queued), "the hand-back was skipped");
    let history: Vec<String> =
        sqlx::query_scalar("select reason from job_events where job_id = $1 and reason is not null")
            .bind(id)
            .fetch_all(db.store.pool())
            .await
            .unwrap();
    assert!(history.iter().any(|r| r.starts_with("handed_back")), "{history:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lease_that_ends_sends_its_job_where_the_rule_says() {
    use slipway_engine::job::transitions::after_lease_end;
    let db = TestDb::new().await;
    let max_attempts = 3;
    let mut expected = BTreeMap::new();
    for state in [JobState::Cloning, JobState::Building, JobState::Pushing, JobState::Running] {
        for attempt in [1, max_attempts] {
            for cancel_requested in [false, true] {
                for pushed in [false, true] {
                    let id = queue(&db, 1).await[0];
                    sqlx::query(
                        "update jobs set state = $2, attempt = $3, lease_owner = 'o', lease_worker = 'w',
                             lease_token = gen_random_uuid(), lease_expires_at = now() - interval '1 second',
                             cancel_requested_at = case when $4 then now() end,
                             pushed_ref = case when $5 then '127.0.0.1:5000/app@sha256:00' end,
                             spec = jsonb_set(spec, '{retry,max_attempts}', to_jsonb($6::int))
                         where id = $1",
                    )
                    .bind(id)
                    .bind(state)
                    .bind(attempt as i32)
                    .bind(cancel_requested)
                    .bind(pushed)
                    .bind(max_attempts as i32)
                    .execute(db.store.pool())
                    .await
                    .unwrap();
                    let rule = after_lease_end(attempt, max_attempts, cancel_requested, pushed);
                    expected.insert(id, ((state, attempt, cancel_requested, pushed), rule));
                }
            }
        }
    }
    let ended = db.store.expire_leases(&Default::default()).await.unwrap();
    assert_eq!(ended.len(), expected.len());
    for lease in ended {
        let (case, rule) = expected[&lease.id];
        assert_eq!(lease.to_state, rule, "the statement and the rule disagree for {case:?}");
        let attempt = if rule.is_terminal() { case.1 } else { case.1 + 1 };
        assert_eq!(lease.attempt as u32, attempt, "{case:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_request_sends_its_job_where_the_rule_says() {
    use slipway_engine::job::transitions::after_cancel_request;
    use slipway_engine::store::CancelOutcome;
    let db = TestDb::new().await;
    for state in [JobState::Queued, JobState::Cloning, JobState::Building, JobState::Pushing, JobState::Running] {
        for leased in [false, true] {
            let id = queue(&db, 1).await[0];
            sqlx::query(
                "update jobs set state = $2,
                     lease_token = case when $3 then gen_random_uuid() end,
                     lease_owner = case when $3 then 'o' end, lease_worker = case when $3 then 'w' end,
                     lease_expires_at = case when $3 then now() + interval '1 minute' end
                 where id = $1",
            )
            .bind(id)
            .bind(state)
            .bind(leased)
            .execute(db.store.pool())
            .await
            .unwrap();
            let outcome = db.store.request_cancel(id, None).await.unwrap();
            let rule = after_cancel_request(state, leased);
            let job = db.store.job(id).await.unwrap();
            assert_eq!(job.state, rule, "the statement and the rule disagree for {state:?}, leased {leased}");
            let expected =
                if rule == JobState::Cancelled { CancelOutcome::Cancelled } else { CancelOutcome::Requested };
            assert_eq!(outcome, expected, "{state:?}, leased {leased}");
        }
    }
    // A finished job stays as it ended.
    let (id, _) = finished_job(&db).await;
    assert_eq!(db.store.request_cancel(id, None).await.unwrap(), CancelOutcome::AlreadyFinished(JobState::Failed));
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_stored_as_hashes_found_by_prefix_and_revoked_within_their_project() {
    use slipway_engine::auth::Role;
    use slipway_engine::auth::token::{NewToken, matches, prefix_of};
    use slipway_engine::store::TokenGrant;
    let db = TestDb::new().await;
    let store = &db.store;
    let team = store.create_project("team-a").await.unwrap().expect("a new name");
    assert!(store.create_project("team-a").await.unwrap().is_none(), "a name is taken once");
    let other = store.create_project("team-b").await.unwrap().unwrap();
    let names: Vec<String> = store.projects().await.unwrap().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["default", "team-a", "team-b"], "jobs before projects belong to `default`");

    let token = NewToken::generate().unwrap();
    let grant =
        TokenGrant { name: "ci", role: Role::Submit, project: Some(team.id), expires_at: None, created_by: None };
    let stored = store.create_token(&token, &grant).await.unwrap();
    assert_eq!((stored.role, stored.project.as_deref()), (Role::Submit, Some("team-a")));
    let secrets: i64 =
        sqlx::query_scalar("select count(*) from api_tokens where position($1 in encode(hash, 'escape')) > 0")
            .bind(&token.secret)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(secrets, 0, "the secret itself is not stored");
    let found = store.token_by_prefix(prefix_of(&token.secret).unwrap()).await.unwrap().unwrap();
    assert!(matches(&token.secret, &found.hash));
    store.touch_token(found.id).await.unwrap();
    assert!(store.token_by_prefix(&token.prefix).await.unwrap().unwrap().last_used_at.is_some());

    // An owner token belongs to no project, and only an owner token does.
    let owner = TokenGrant { name: "root", role: Role::Owner, project: None, expires_at: None, created_by: None };
    // (The tests' own owner token is granted in every test database: revoked here.)
    sqlx::query("update api_tokens set revoked_at = now() where role = 'owner'").execute(store.pool()).await.unwrap();
    assert!(!store.has_owner().await.unwrap(), "a revoked owner token is no owner");
    store.create_token(&NewToken::generate().unwrap(), &owner).await.unwrap();
    assert!(store.has_owner().await.unwrap());
    let misplaced = TokenGrant { project: Some(team.id), ..owner.clone() };
    assert!(store.create_token(&NewToken::generate().unwrap(), &misplaced).await.is_err());

    assert!(!store.revoke_token(Some(other.id), found.id).await.unwrap(), "another project cannot revoke it");
    assert!(store.revoke_token(Some(team.id), found.id).await.unwrap());
    assert!(!store.revoke_token(Some(team.id), found.id).await.unwrap(), "revoked once");
    assert!(store.token_by_prefix(&token.prefix).await.unwrap().unwrap().revoked_at.is_some());
    assert_eq!(store.tokens(Some(team.id)).await.unwrap().len(), 1);

    let entry = slipway_engine::store::AuditEntry {
        actor_token: Some(found.id),
        actor_name: "ci",
        action: "token.revoke",
        project: Some(team.id),
        target: Some(&token.prefix),
        request_id: None,
        client_addr: Some("127.0.0.1"),
        outcome: "ok",
    };
    store.audit(&entry).await.unwrap();
    let logged: (String, Option<String>) =
        sqlx::query_as("select action, target from audit_log").fetch_one(store.pool()).await.unwrap();
    assert_eq!(logged, ("token.revoke".to_string(), Some(token.prefix.clone())));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_waits_for_the_worker_holding_its_cache_without_holding_up_others_and_builds_from_its_projects_last_push()
{
    let db = TestDb::new().await;
    let cached = queue(&db, 1).await[0];
    let other = queue_request(&db, 1, JobRequest { context: Some("sub".into()), ..Default::default() }).await[0];
    let key: String = sqlx::query_scalar("select cache_key from jobs where id = $1")
        .bind(cached)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    let held_by_b = CacheElsewhere { keys: vec![key.clone()], wait: Duration::from_secs(60) };

    // Another worker holds the first job's key: this one takes the younger job.
    let claimed = db.store.claim("o", "worker-a", &docker(), 1, TTL, &held_by_b).await.unwrap();
    assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), [other]);
    assert!(db.store.claim("o", "worker-a", &docker(), 1, TTL, &held_by_b).await.unwrap().is_empty());
    // The holder takes it, and the reason is kept for the history.
    let holder = WorkerOffer { cache_keys: vec![key.clone()], ..docker() };
    let claimed = db.store.claim("o", "worker-b", &holder, 1, TTL, &NOWHERE).await.unwrap();
    assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), [cached]);
    let reason =
        |id: JobId| sqlx::query_scalar::<_, Option<String>>("select dispatch_reason from jobs where id = $1").bind(id);
    let said = reason(cached).fetch_one(db.store.pool()).await.unwrap();
    assert_eq!(said.as_deref(), Some("dispatched to worker-b: holds the cache of this repository"));
    assert_eq!(claimed[0].cache_image, None, "nothing was pushed for the key yet");

    // Past the wait any worker takes it; it builds from the key's last push in its
    // own project, never another project's.
    let pushed = "127.0.0.1:5000/app@sha256:".to_string() + &"a".repeat(64);
    sqlx::query("update jobs set pushed_ref = $2 where id = $1")
        .bind(cached)
        .bind(&pushed)
        .execute(db.store.pool())
        .await
        .unwrap();
    let next = queue(&db, 1).await[0];
    let stranger = db.store.create_project("stranger").await.unwrap().unwrap();
    let foreign = queue(&db, 1).await[0];
    sqlx::query("update jobs set project_id = $2 where id = $1")
        .bind(foreign)
        .bind(stranger.id)
        .execute(db.store.pool())
        .await
        .unwrap();
    let soon = CacheElsewhere { wait: Duration::ZERO, ..held_by_b };
    let claimed = db.store.claim("o", "worker-a", &docker(), 2, TTL, &soon).await.unwrap();
    let image_of = |id| claimed.iter().find(|j| j.id == id).unwrap().cache_image.clone();
    assert_eq!(image_of(next), Some(pushed));
    assert_eq!(image_of(foreign), None);
    let said = reason(next).fetch_one(db.store.pool()).await.unwrap();
    assert_eq!(
        said.as_deref(),
        Some("dispatched to worker-a: the workers holding the cache of this repository had no free slot within 0 s")
    );
}
