//! The dashboard's job list with 100,000 jobs in the database: a real `slipway
//! server`, a signed-in session, and the answer time of the pages a person opens —
//! the first page, a state, a repository, the counts with them, a page deep in the
//! keyset — measured from a client on loopback (an upper bound of the server's own
//! time), p50 and p99 of `BENCH_PAGE_LOADS` loads each. The table is vacuumed
//! after the fill, as autovacuum leaves a table whose finished rows no longer
//! change.

use std::time::Instant;

use super::common::{TestDb, test_token};
use super::{percentile, start_server, start_workers};

/// Fills the database with `jobs` finished and unfinished jobs of 20 repositories,
/// one a second over the past days, ids ordered by time like the server's.
async fn fill(db: &TestDb, jobs: i64) {
    let spec = r#"{"repo": "https://git.example.com/team/app-REPO.git", "ref": null, "dockerfile": "Dockerfile",
                   "context": ".", "image": "registry.example.com/team/app-REPO:v1", "build_args": {}, "env": {},
                   "run": {"command": null, "timeout_seconds": 600, "retry_on_failure": false, "runtime": "docker"},
                   "retry": {"max_attempts": 3, "initial_backoff_ms": 1000, "max_backoff_ms": 60000}}"#;
    sqlx::query(
        "insert into jobs (id, spec, state, created_at, updated_at, finished_at, project_id, error_code)
         select (lpad(to_hex((extract(epoch from t) * 1000)::bigint), 12, '0') || '7' || substr(md5(i::text), 1, 3)
                 || '8' || substr(md5(i::text), 4, 15))::uuid,
                replace($1, 'REPO', (i % 20)::text)::jsonb,
                s.state, t, t, case when s.state in ('succeeded', 'failed', 'cancelled') then t + interval '30 seconds' end,
                (select id from projects where name = 'default'),
                case when s.state = 'failed' then 'exit_nonzero' end
         from generate_series(1, $2) as i,
              lateral (select now() - ($2 - i) * interval '1 second' as t) as times,
              lateral (select (case when i % 100 = 0 then 'failed' when i % 250 = 0 then 'cancelled'
                                    when i > $2 - 20 then 'queued' else 'succeeded' end)::job_state as state) as s",
    )
    .bind(spec)
    .bind(jobs)
    .execute(db.store.pool())
    .await
    .unwrap();
    // What autovacuum does on its own to a table whose old rows no longer change.
    sqlx::query("vacuum analyze jobs").execute(db.store.pool()).await.unwrap();
}

/// A session cookie for the tests' owner token, signed in through the form.
async fn sign_in(http: &reqwest::Client, api: &str) -> String {
    let form = http.get(format!("{api}/login")).send().await.unwrap();
    let login = form.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let page = form.text().await.unwrap();
    let csrf = page.split(r#"name="csrf" value=""#).nth(1).unwrap().split('"').next().unwrap().to_string();
    let body = format!("token={}&csrf={csrf}&next=%2F", test_token().secret);
    let answer = http
        .post(format!("{api}/login"))
        .header("cookie", login)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let session = answer.headers().get_all("set-cookie").iter().find_map(|c| {
        let c = c.to_str().unwrap();
        c.starts_with("slipway_session=").then(|| c.split(';').next().unwrap().to_string())
    });
    session.expect("signed in")
}

pub async fn job_list(jobs: i64, loads: usize) {
    let db = TestDb::new().await;
    let started = Instant::now();
    fill(&db, jobs).await;
    println!("\n== dashboard: the job list with {jobs} jobs (filled in {:.1} s)", started.elapsed().as_secs_f64());
    // A worker for the server to ping (it takes no job: every job here is finished
    // or queued for the figures).
    let (workers, _) = start_workers(1, 1).await;
    let (_server, api) = start_server(&db, &workers, &[]).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let cookie = sign_in(&http, &api).await;
    let middle: String = sqlx::query_scalar("select id::text from jobs order by id desc offset $1 limit 1")
        .bind(jobs / 2)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    let pages = [
        ("the first page, with the counts".to_string(), "/".to_string()),
        ("failed jobs".into(), "/?state=failed".into()),
        ("one repository".into(), "/?repo=https%3A%2F%2Fgit.example.com%2Fteam%2Fapp-7.git".into()),
        ("a page half-way down".into(), format!("/?cursor={middle}")),
        ("the rows alone (a live update)".into(), "/#rows".into()),
    ];
    println!("| page | p50 | p99 |\n| --- | --- | --- |");
    for (name, path) in pages {
        let (path, fragment) = match path.strip_suffix("#rows") {
            Some(path) => (path.to_string(), true),
            None => (path, false),
        };
        let mut times = Vec::with_capacity(loads);
        for _ in 0..loads {
            let mut request = http.get(format!("{api}{path}")).header("cookie", &cookie);
            if fragment {
                request = request.header("x-slipway-fragment", "rows");
            }
            let start = Instant::now();
            let answer = request.send().await.unwrap();
            assert_eq!(answer.status(), 200, "{path}");
            answer.bytes().await.unwrap();
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!("| {name} | {:.1} ms | {:.1} ms |", percentile(&times, 50.0), percentile(&times, 99.0));
    }
}
