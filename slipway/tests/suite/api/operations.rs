//! What an operator does to many jobs at once, or to one again: a re-run that says
//! which job it re-runs (and may pin that job's commit), a cancel by filter that
//! stops only what the filter and the token's project allow, and the workers as the
//! orchestrators last saw them.

use serde_json::{Value, json};
use slipway_engine::auth::Role;
use slipway_engine::store::{WorkerAnswer, WorkerOffer, WorkerSeen};

use super::auth::{call, token};
use super::{start, valid};

async fn submit(api: &super::Api, bearer: &str, body: &Value) -> String {
    let (status, job, _) = call(api, "POST", "/v1/jobs", Some(bearer), Some(body)).await;
    assert_eq!(status, 201, "{job}");
    job["id"].as_str().unwrap().to_string()
}

async fn state_of(api: &super::Api, id: &str) -> String {
    sqlx::query_scalar("select state::text from jobs where id = $1::uuid")
        .bind(id)
        .fetch_one(api.db.store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_names_the_job_it_reruns_and_same_commit_pins_that_jobs_commit() {
    let api = start().await;
    let owner = token(&api, Role::Owner, None, None).await;
    let mut body = valid();
    body["ref"] = json!("main");
    let original = submit(&api, &owner, &body).await;

    // Before its clone a job has no commit to pin: refused, nothing made.
    let path = format!("/v1/jobs/{original}/rerun");
    let (status, refused, _) = call(&api, "POST", &path, Some(&owner), Some(&json!({ "same_commit": true }))).await;
    assert_eq!((status, refused["error"]["field"].as_str()), (409, Some("same_commit")), "{refused}");
    let (status, refused, _) = call(&api, "POST", &path, Some(&owner), Some(&json!({ "same_comit": true }))).await;
    assert_eq!((status, refused["error"]["field"].as_str()), (400, Some("same_comit")), "{refused}");
    assert_eq!(super::job_count(&api).await, 1, "a refused re-run makes no job");

    let commit = "0123456789abcdef0123456789abcdef01234567";
    sqlx::query("update jobs set commit_sha = $2 where id = $1::uuid")
        .bind(&original)
        .bind(commit)
        .execute(api.db.store.pool())
        .await
        .unwrap();
    let (status, plain, _) = call(&api, "POST", &path, Some(&owner), None).await;
    assert_eq!((status, plain["rerun_of"].as_str()), (201, Some(original.as_str())), "{plain}");
    assert_eq!(plain["spec"]["ref"], "main", "a plain re-run builds what the ref names now");
    let (status, pinned, _) = call(&api, "POST", &path, Some(&owner), Some(&json!({ "same_commit": true }))).await;
    assert_eq!((status, pinned["spec"]["ref"].as_str()), (201, Some(commit)), "{pinned}");
    let (_, read, _) =
        call(&api, "GET", &format!("/v1/jobs/{}", pinned["id"].as_str().unwrap()), Some(&owner), None).await;
    assert_eq!(read["rerun_of"].as_str(), Some(original.as_str()), "the job view names the original");
    let (_, events, _) =
        call(&api, "GET", &format!("/v1/jobs/{}/events", pinned["id"].as_str().unwrap()), Some(&owner), None).await;
    let first = &events["events"][0];
    assert_eq!(first["reason"], format!("re-run of {original} at commit {commit}"), "{events}");
    assert!(first["actor"].as_str().is_some_and(|a| a.starts_with(&owner[..12])), "the history names who: {events}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_by_filter_stops_what_matches_in_the_callers_projects_only() {
    let api = start().await;
    let owner = token(&api, Role::Owner, None, None).await;
    let alpha = token(&api, Role::Submit, Some("alpha"), None).await;
    let beta = token(&api, Role::Submit, Some("beta"), None).await;
    let reader = token(&api, Role::Read, Some("alpha"), None).await;
    let other_repo = json!({ "repo": "git://127.0.0.1:9418/other.git", "image": "127.0.0.1:5000/team/app:v1" });
    let a1 = submit(&api, &alpha, &valid()).await;
    let a2 = submit(&api, &alpha, &valid()).await;
    let a_other = submit(&api, &alpha, &other_repo).await;
    let b1 = submit(&api, &beta, &valid()).await;
    let a_done = submit(&api, &alpha, &valid()).await;
    call(&api, "POST", &format!("/v1/jobs/{a_done}/cancel"), Some(&alpha), None).await;

    // Refused: nothing named, a finished state, an unknown field, a reader's token.
    for (body, field) in [
        (json!({}), "filter"),
        (json!({ "state": "succeeded" }), "state"),
        (json!({ "state": "dreaming" }), "state"),
        (json!({ "repos": "x" }), "repos"),
    ] {
        let (status, refused, _) = call(&api, "POST", "/v1/jobs/cancel", Some(&alpha), Some(&body)).await;
        assert_eq!((status, refused["error"]["field"].as_str()), (400, Some(field)), "{body}: {refused}");
    }
    let (status, _, _) =
        call(&api, "POST", "/v1/jobs/cancel", Some(&reader), Some(&json!({ "state": "queued" }))).await;
    assert_eq!(status, 403, "cancelling takes the submit role");
    assert_eq!(state_of(&api, &a1).await, "queued", "a refused cancel stops nothing");

    // A project token's ids of another project match nothing; its repo filter its own jobs.
    let body = json!({ "ids": [b1] });
    let (status, count, _) = call(&api, "POST", "/v1/jobs/cancel", Some(&alpha), Some(&body)).await;
    assert_eq!((status, count["asked"].as_u64()), (200, Some(0)), "{count}");
    let body = json!({ "repo": "git://127.0.0.1:9418/app.git" });
    let (status, count, _) = call(&api, "POST", "/v1/jobs/cancel", Some(&alpha), Some(&body)).await;
    assert_eq!(
        (status, &count),
        (200, &json!({ "asked": 2, "cancelled": 2, "stopping": 0, "more": false })),
        "the two queued jobs of that repository, not the finished one"
    );
    for (id, expected) in [(&a1, "cancelled"), (&a2, "cancelled"), (&a_other, "queued"), (&b1, "queued")] {
        assert_eq!(state_of(&api, id).await, expected, "{id}");
    }
    let audited: i64 =
        sqlx::query_scalar("select count(*) from audit_log where action = 'job.cancel' and target = any($1)")
            .bind(vec![a1.clone(), a2.clone()])
            .fetch_one(api.db.store.pool())
            .await
            .unwrap();
    assert_eq!(audited, 2, "each cancel of the filter is in the audit log");

    // An owner's filter by project reaches that project only.
    let body = json!({ "project": "beta", "state": "queued" });
    let (_, count, _) = call(&api, "POST", "/v1/jobs/cancel", Some(&owner), Some(&body)).await;
    assert_eq!(count["asked"], 1, "{count}");
    assert_eq!((state_of(&api, &b1).await, state_of(&api, &a_other).await), ("cancelled".into(), "queued".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_are_listed_as_last_seen_with_addresses_for_owners_only() {
    let api = start().await;
    let owner = token(&api, Role::Owner, None, None).await;
    let reader = token(&api, Role::Read, Some("alpha"), None).await;
    let store = &api.db.store;
    let offer = WorkerOffer {
        labels: [("region".into(), "eu".into())].into(),
        runtimes: vec!["docker".into()],
        ..Default::default()
    };
    let answer = |busy| WorkerAnswer {
        worker_id: "worker-a".into(),
        offer: offer.clone(),
        slots_total: 4,
        slots_busy: busy,
        unhealthy: None,
    };
    let url = "https://127.0.0.1:50051".to_string();
    store.record_workers("orch-1", &[WorkerSeen { url: url.clone(), answer: Some(answer(1)) }]).await.unwrap();
    let (status, listed, _) = call(&api, "GET", "/v1/workers", Some(&owner), None).await;
    assert_eq!(status, 200, "{listed}");
    let worker = &listed["workers"][0];
    assert_eq!(
        (&worker["id"], &worker["url"], &worker["labels"], &worker["slots_busy"], &worker["slots_total"]),
        (&json!("worker-a"), &json!(url), &json!({ "region": "eu" }), &json!(1), &json!(4)),
        "{listed}"
    );
    assert_eq!((&worker["reachable"], &worker["seen_by"]), (&json!(true), &json!("orch-1")));

    // A change is written at once; a worker that stops answering keeps what it said.
    store.record_workers("orch-2", &[WorkerSeen { url: url.clone(), answer: Some(answer(3)) }]).await.unwrap();
    let (_, listed, _) = call(&api, "GET", "/v1/workers", Some(&owner), None).await;
    assert_eq!((&listed["workers"][0]["slots_busy"], &listed["workers"][0]["seen_by"]), (&json!(3), &json!("orch-2")));
    let answered = listed["workers"][0]["last_answer_at"].clone();
    store.record_workers("orch-1", &[WorkerSeen { url: url.clone(), answer: None }]).await.unwrap();
    let (_, listed, _) = call(&api, "GET", "/v1/workers", Some(&reader), None).await;
    let worker = &listed["workers"][0];
    assert_eq!(
        (&worker["reachable"], &worker["id"], &worker["labels"]),
        (&json!(false), &json!("worker-a"), &json!({ "region": "eu" }))
    );
    assert_eq!((&worker["slots_busy"], &worker["last_answer_at"]), (&json!(0), &answered), "{listed}");
    assert!(worker.get("url").is_none(), "a project token sees no worker address: {listed}");
}
