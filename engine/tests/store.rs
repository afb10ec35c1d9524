//! The store's claim and fencing against a real Postgres.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestDb;
use slipway_engine::job::{JobId, JobRequest, JobState, RunRequest};
use slipway_engine::store::{Finish, Lease, NewLogLine, Outputs, StoreError, WorkerOffer, logs, transitions};
use slipway_steps::Step;

const TTL: Duration = Duration::from_secs(30);

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
            .validate(&Default::default())
            .unwrap();
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = JobId::new();
        db.store.submit(id, &spec, None, None).await.unwrap();
        ids.push(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_take_at_most_the_free_slots_and_never_the_same_job_twice() {
    let db = TestDb::new().await;
    let ids = queue(&db, 5).await;
    let offer = docker();
    let (a, b) = tokio::join!(db.store.claim("o1", "w1", &offer, 3, TTL), db.store.claim("o2", "w2", &offer, 3, TTL));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.len() + b.len(), 5);
    assert!(a.len() <= 3 && b.len() <= 3);
    let mut claimed: Vec<JobId> = a.iter().chain(&b).map(|j| j.id).collect();
    claimed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(claimed, expected, "each job claimed exactly once");
    assert!(db.store.claim("o1", "w1", &docker(), 3, TTL).await.unwrap().is_empty());

    // A released lease makes the job claimable again, same attempt.
    db.store.release(a[0].id, a[0].lease_token).await.unwrap();
    let again = db.store.claim("o1", "w1", &docker(), 3, TTL).await.unwrap();
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
        assert!(db.store.claim("o", "w", &offer, 5, TTL).await.unwrap().is_empty(), "{offer:?}");
    }
    let eu = WorkerOffer { labels: labels(&[("region", "eu-west-1"), ("arch", "arm64"), ("gpu", "none")]), ..docker() };
    let claimed: Vec<JobId> = db.store.claim("o", "w", &eu, 5, TTL).await.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(claimed, vec![in_eu]);
    let ecs = WorkerOffer { runtimes: vec!["docker".into(), "ecs".into()], ..Default::default() };
    let claimed: Vec<JobId> = db.store.claim("o", "w", &ecs, 5, TTL).await.unwrap().iter().map(|j| j.id).collect();
    assert_eq!(claimed, vec![on_ecs]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_report_with_a_stale_token_changes_nothing() {
    let db = TestDb::new().await;
    let id = queue(&db, 1).await[0];
    let first = db.store.claim("o", "w", &docker(), 1, TTL).await.unwrap().remove(0);
    db.store.release(id, first.lease_token).await.unwrap();
    let current = db.store.claim("o", "w", &docker(), 1, TTL).await.unwrap().remove(0);
    let stale = Lease { job_id: id, attempt: 1, token: first.lease_token };
    let mut conn = db.store.pool().acquire().await.unwrap();
    let conn = &mut *conn;
    let lease = Lease { job_id: id, attempt: 1, token: current.lease_token };

    let err = transitions::mark_step_started(conn, &stale, Step::Clone, TTL).await.unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost), "{err:?}");
    let line = NewLogLine { step: Step::Clone, stream: "system", at: chrono::Utc::now(), line: "x".into() };
    assert!(matches!(
        logs::append_logs(conn, &stale, std::slice::from_ref(&line), None, 1 << 20).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(db.store.logs(id, 0, 10).await.unwrap().is_empty());
    assert_eq!(db.store.job(id).await.unwrap().state, JobState::Queued);

    transitions::mark_step_started(conn, &lease, Step::Clone, TTL).await.unwrap();
    logs::append_logs(conn, &lease, &[line], None, 1 << 20).await.unwrap();
    let outputs = Outputs { commit_sha: Some("abc".into()), ..Default::default() };
    transitions::mark_step_succeeded(conn, &lease, Step::Clone, &outputs, TTL).await.unwrap();
    let finish = Finish {
        state: JobState::Failed,
        exit_code: None,
        error_code: Some("build_failed".into()),
        error: Some("no".into()),
    };
    transitions::mark_step_started(conn, &lease, Step::Build, TTL).await.unwrap();
    transitions::mark_finished(conn, &lease, Step::Build, &Outputs::default(), &finish).await.unwrap();

    // Once the job has ended, even its own lease can change nothing.
    let err = transitions::mark_step_started(conn, &lease, Step::Push, TTL).await.unwrap_err();
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
