//! Jobs that run on ECS Fargate, end to end: separate `server` and `worker`
//! processes, a real clone, build and push to the local registry, and moto as ECS
//! and CloudWatch Logs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::moto::{CLUSTER, Moto};
use crate::common::*;
use serde_json::{Value, json};

const JOB_LIMIT: Duration = Duration::from_secs(180);

/// A server and an ECS-enabled worker against one moto server.
struct EcsSetup {
    db: TestDb,
    _git: GitServer,
    repo: String,
    moto: Moto,
    ports: Ports,
    /// The worker's ECS settings.
    worker_env: BTreeMap<&'static str, String>,
    worker: Slipway,
    server: Slipway,
    ecs: aws_sdk_ecs::Client,
    work: tempfile::TempDir,
}

impl EcsSetup {
    async fn start(tasks_stay_running: bool, extra_server_env: &[(&'static str, &str)]) -> Self {
        let moto = Moto::start();
        let network = moto.ecs_ready().await;
        if tasks_stay_running {
            moto.tasks_stay_running(true).await;
        }
        let db = TestDb::new().await;
        let git = GitServer::start();
        let repo = app_repo(&git, "app");
        let work = tempfile::tempdir().unwrap();
        let ports = Ports::new();
        let worker_env = moto.worker_env(&network);
        let worker = spawn_worker("worker", ports.worker, work.path(), worker_env.clone());
        let server_env = moto.process_env().into_iter().chain(settings(extra_server_env));
        let server = spawn_server("server", &db.url, &ports, &[ports.worker], server_env);
        wait_healthy(&ports.api(), Duration::from_secs(30)).await;
        let ecs = aws_sdk_ecs::Client::new(&moto.sdk().await);
        EcsSetup { db, _git: git, repo, moto, ports, worker_env, worker, server, ecs, work }
    }

    /// A worker again, as the first was started.
    fn respawn_worker(&self) -> Slipway {
        spawn_worker("worker", self.ports.worker, self.work.path(), self.worker_env.clone())
    }

    async fn submit_ecs(&self, run: Value) -> String {
        let image = format!("{}/ecs/app:{}", open_registry(), unique("t"));
        let mut run = run;
        run["runtime"] = json!("ecs");
        let job = submit(
            &self.ports.api(),
            &json!({ "repo": self.repo, "image": image, "env": { "GREETING": "fargate" }, "run": run }),
        )
        .await;
        job["id"].as_str().unwrap().to_string()
    }

    async fn task(&self, arn: &str) -> aws_sdk_ecs::types::Task {
        let described = self
            .ecs
            .describe_tasks()
            .cluster(CLUSTER)
            .tasks(arn)
            .include(aws_sdk_ecs::types::TaskField::Tags)
            .send()
            .await
            .unwrap();
        described.tasks()[0].clone()
    }

    /// Waits until the job's task ARN is stored.
    async fn stored_task_arn(&self, id: &str) -> String {
        let uuid: uuid::Uuid = id.parse().unwrap();
        let deadline = Instant::now() + JOB_LIMIT;
        loop {
            let arn: Option<String> = sqlx::query_scalar("select task_arn from jobs where id = $1")
                .bind(uuid)
                .fetch_one(self.db.store.pool())
                .await
                .unwrap();
            if let Some(arn) = arn {
                return arn;
            }
            let job = get_job(&self.ports.api(), id).await;
            assert!(job["finished_at"].is_null(), "the job ended before its task started: {job}");
            assert!(Instant::now() < deadline, "no task stored for {id}: {}", get_job(&self.ports.api(), id).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn tag<'a>(task: &'a aws_sdk_ecs::types::Task, key: &str) -> Option<&'a str> {
    task.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ecs_job_is_built_pushed_and_run_as_a_fargate_task() {
    let setup = EcsSetup::start(false, &[]).await;
    let api = setup.ports.api();
    // Two jobs of the same repository and size, one after the other (the second
    // build comes from the engine's cache, so it is the same image).
    let mut pushed = Vec::new();
    for _ in 0..2 {
        let id = &setup.submit_ecs(json!({ "cpu": 512, "memory": 1024 })).await;
        let job = wait_finished(&api, id, JOB_LIMIT).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["exit_code"], 0);
        assert_eq!(job["spec"]["run"]["runtime"], "ecs");
        assert_eq!(job["container_id"], Value::Null, "nothing ran on the Docker engine");
        let arn = job["task"]["arn"].as_str().expect("the task is recorded").to_string();
        let task = setup.task(&arn).await;
        assert_eq!(task.last_status(), Some("STOPPED"));
        assert_eq!(task.launch_type().map(|l| l.as_str()), Some("FARGATE"));
        assert_eq!(task.started_by(), Some(id.as_str()));
        assert_eq!(tag(&task, "slipway.job_id"), Some(id.as_str()));
        assert_eq!(tag(&task, "slipway.attempt"), Some("1"));
        assert!(tag(&task, "slipway.instance").is_some() && tag(&task, "slipway.deadline").is_some(), "{task:?}");
        let overrides = &task.overrides().unwrap().container_overrides()[0];
        let env: BTreeMap<&str, &str> =
            overrides.environment().iter().map(|kv| (kv.name().unwrap(), kv.value().unwrap())).collect();
        assert_eq!(env.get("GREETING"), Some(&"fargate"));
        assert_eq!(env.get("SLIPWAY_JOB_ID"), Some(&id.as_str()));
        let logs = all_logs(&api, id).await;
        assert!(logs.iter().any(|l| l["line"].as_str().unwrap().starts_with("started task ")), "{logs:?}");
        pushed.push(job["pushed_ref"].as_str().unwrap().to_string());
    }
    // Nothing that varies per job is in the image: both pushed the same digest, and
    // share one task definition, registered once, with the size asked for and the
    // image as pushed.
    assert_eq!(pushed[0], pushed[1], "two jobs of the same content pushed different images");
    let families = setup.ecs.list_task_definitions().send().await.unwrap();
    let definitions = families.task_definition_arns();
    assert_eq!(definitions.len(), 1, "{definitions:?} for {pushed:?}");
    assert!(definitions.iter().all(|arn| arn.ends_with(":1")), "never a second revision: {definitions:?}");
    let definition = setup.ecs.describe_task_definition().task_definition(&definitions[0]).send().await.unwrap();
    let definition = definition.task_definition().unwrap();
    assert_eq!((definition.cpu(), definition.memory()), (Some("512"), Some("1024")));
    assert_eq!(definition.network_mode().map(|m| m.as_str()), Some("awsvpc"));
    // Built on this machine's engine, so run on Fargate's matching architecture.
    let platform = definition.runtime_platform().expect("a runtime platform");
    let expected = if cfg!(target_arch = "aarch64") { "ARM64" } else { "X86_64" };
    assert_eq!(platform.cpu_architecture().map(|a| a.as_str()), Some(expected));
    let container = &definition.container_definitions()[0];
    assert!(pushed.contains(&container.image().unwrap().to_string()), "{container:?}");
    let log = container.log_configuration().unwrap();
    assert_eq!(log.log_driver().as_str(), "awslogs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fargate_tasks_log_streams_resumes_after_a_worker_crash_and_cancel_stops_the_task() {
    let mut setup = EcsSetup::start(true, &[]).await;
    let api = setup.ports.api();
    let id = setup.submit_ecs(json!({})).await;
    let arn = setup.stored_task_arn(&id).await;
    assert_eq!(get_job(&api, &id).await["task"]["arn"], arn.as_str(), "the ARN is shown while the task runs");

    setup.moto.write_task_log(&arn, &["line one", "line two", "line three"]).await;
    wait_for_line(&api, &id, "line three").await;

    // The worker dies; the task runs on. The next attempt re-attaches to the stored
    // task and reads on from the stored position.
    setup.worker.signal("KILL");
    setup.moto.write_task_log(&arn, &["line four", "line five"]).await;
    setup.worker = setup.respawn_worker();
    wait_for_line(&api, &id, "line five").await;
    let job = get_job(&api, &id).await;
    assert_eq!(job["attempt"], 2, "{job}");
    assert_eq!(job["task"]["arn"], arn.as_str(), "the same task");
    let lines: Vec<String> = all_logs(&api, &id)
        .await
        .into_iter()
        .filter(|l| l["stream"] == "stdout")
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(lines, ["line one", "line two", "line three", "line four", "line five"], "no gap, no repeat");
    let listed = setup.ecs.list_tasks().cluster(CLUSTER).started_by(&id).send().await.unwrap();
    assert_eq!(listed.task_arns(), std::slice::from_ref(&arn), "exactly one task for the job");

    let (status, _) = cancel(&api, &id).await;
    assert_eq!(status, 202);
    let job = wait_finished(&api, &id, JOB_LIMIT).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    let task = setup.task(&arn).await;
    assert_eq!(task.last_status(), Some("STOPPED"));
    let reason = task.stopped_reason().unwrap_or_default();
    assert!(reason.contains(&id) && reason.contains("cancelled"), "{reason}");
    drop(setup.server);
}

async fn wait_for_line(api: &str, id: &str, line: &str) {
    let deadline = Instant::now() + JOB_LIMIT;
    while !all_logs(api, id).await.iter().any(|l| l["line"] == line) {
        assert!(Instant::now() < deadline, "`{line}` never reached the job's log: {}", get_job(api, id).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_stops_tasks_of_gone_jobs_and_past_their_deadline_and_deletes_expired_ecr_images() {
    let setup = EcsSetup::start(true, &[("SLIPWAY_SWEEP_INTERVAL", "300ms")]).await;
    let pool = setup.db.store.pool();
    let instance: uuid::Uuid = sqlx::query_scalar("select id from slipway_instance").fetch_one(pool).await.unwrap();

    // A job that waits for a worker in a region nobody offers: its task (started by
    // hand here) is alive but past its deadline.
    let waiting = submit(
        &setup.ports.api(),
        &json!({ "repo": setup.repo, "image": "127.0.0.1:5000/ecs/never:1", "requires": { "region": "nowhere" } }),
    )
    .await;
    let waiting = waiting["id"].as_str().unwrap().to_string();
    let gone = uuid::Uuid::new_v4().to_string();
    let past = (now_secs() - 60).to_string();
    let gone_task = run_tagged_task(&setup, &instance.to_string(), &gone, None).await;
    let late_task = run_tagged_task(&setup, &instance.to_string(), &waiting, Some(&past)).await;
    let kept_task = run_tagged_task(&setup, &instance.to_string(), &waiting, None).await;
    let other_task = run_tagged_task(&setup, &uuid::Uuid::new_v4().to_string(), &gone, None).await;

    // An expired job whose image Slipway pushed to ECR.
    let ecr = aws_sdk_ecr::Client::new(&setup.moto.sdk().await);
    ecr.create_repository().repository_name("team/app").send().await.unwrap();
    let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[]}"#;
    let put =
        ecr.put_image().repository_name("team/app").image_manifest(manifest).image_tag("v1").send().await.unwrap();
    let digest = put.image().unwrap().image_id().unwrap().image_digest().unwrap().to_string();
    let expired = uuid::Uuid::new_v4();
    let spec: Value = get_job(&setup.ports.api(), &waiting).await["spec"].clone();
    sqlx::query(
        "insert into jobs (id, state, spec, pushed_ref, created_at, finished_at, project_id)
         values ($1, 'succeeded', $2, $3, now() - interval '40 days', now() - interval '40 days',
                 (select id from projects where name = 'default'))",
    )
    .bind(expired)
    .bind(&spec)
    .bind(format!(
        "{}.dkr.ecr.{}.amazonaws.com/team/app@{digest}",
        crate::common::moto::ACCOUNT,
        crate::common::moto::REGION
    ))
    .execute(pool)
    .await
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stopped = |t: &aws_sdk_ecs::types::Task| t.last_status() == Some("STOPPED");
        let (gone_t, late_t) = (setup.task(&gone_task).await, setup.task(&late_task).await);
        let images = ecr.list_images().repository_name("team/app").send().await.unwrap();
        if stopped(&gone_t) && stopped(&late_t) && images.image_ids().is_empty() {
            assert!(gone_t.stopped_reason().unwrap().contains("finished or gone"), "{gone_t:?}");
            assert!(late_t.stopped_reason().unwrap().contains("past its deadline"), "{late_t:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the sweep did not act: {gone_t:?} {late_t:?} {images:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A live job's task within its deadline, and another installation's task, stay.
    assert_eq!(setup.task(&kept_task).await.last_status(), Some("RUNNING"));
    assert_eq!(setup.task(&other_task).await.last_status(), Some("RUNNING"));
    let left: i64 =
        sqlx::query_scalar("select count(*) from jobs where id = $1").bind(expired).fetch_one(pool).await.unwrap();
    assert_eq!(left, 0, "the expired job is deleted once its image is");
}

/// Runs a task by hand, tagged as Slipway tags its own.
async fn run_tagged_task(setup: &EcsSetup, instance: &str, job_id: &str, deadline: Option<&str>) -> String {
    use aws_sdk_ecs::types::{AwsVpcConfiguration, ContainerDefinition, NetworkConfiguration, Tag};
    let definition = setup
        .ecs
        .register_task_definition()
        .family("by-hand")
        .network_mode(aws_sdk_ecs::types::NetworkMode::Awsvpc)
        .container_definitions(ContainerDefinition::builder().name("app").image("busybox").memory(512).build())
        .send()
        .await
        .unwrap();
    let subnet = setup.worker_env["SLIPWAY_ECS_SUBNETS"].clone();
    let group = setup.worker_env["SLIPWAY_ECS_SECURITY_GROUPS"].clone();
    let mut tags = vec![
        Tag::builder().key("slipway.instance").value(instance).build(),
        Tag::builder().key("slipway.job_id").value(job_id).build(),
    ];
    if let Some(at) = deadline {
        tags.push(Tag::builder().key("slipway.deadline").value(at).build());
    }
    let run = setup
        .ecs
        .run_task()
        .cluster(CLUSTER)
        .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
        .task_definition(definition.task_definition().unwrap().task_definition_arn().unwrap())
        .network_configuration(
            NetworkConfiguration::builder()
                .awsvpc_configuration(
                    AwsVpcConfiguration::builder().subnets(subnet).security_groups(group).build().unwrap(),
                )
                .build(),
        )
        .set_tags(Some(tags))
        .send()
        .await
        .unwrap();
    run.tasks()[0].task_arn().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fargate_task_past_its_timeout_is_stopped_and_the_job_times_out() {
    let setup = EcsSetup::start(true, &[]).await;
    let api = setup.ports.api();
    let id = setup.submit_ecs(json!({ "timeout_seconds": 2 })).await;
    let arn = setup.stored_task_arn(&id).await;
    let job = wait_finished(&api, &id, JOB_LIMIT).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "timed_out", "{job}");
    assert_eq!(job["attempt"], 1, "a deadline is not retried: {job}");
    let task = setup.task(&arn).await;
    assert_eq!(task.last_status(), Some("STOPPED"));
    let reason = task.stopped_reason().unwrap_or_default();
    assert!(reason.contains(&id) && reason.contains("past its deadline"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ecs_task_reads_its_secrets_through_its_definition_never_from_run_task() {
    let key = slipway_engine::secrets::keyring::SecretKey::generate_base64();
    let setup = EcsSetup::start(false, &[("SLIPWAY_SECRETS_KEY", &key)]).await;
    let api = setup.ports.api();
    let password = unique("ecs-db-password-");
    assert_eq!(crate::secrets::put_secret(&api, "default", "db-password", &password).await.0, 201);
    // A secret kept in Secrets Manager, which the job names by ARN: Slipway never
    // reads it, the task's execution role does.
    let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:slipway/api-token-AbCdEf";
    let image = format!("{}/ecs/app:{}", open_registry(), unique("t"));
    let secrets = json!({ "DB_PASSWORD": "db-password", "API_TOKEN": arn });
    let body = json!({ "repo": setup.repo, "image": image, "secrets": secrets, "run": { "runtime": "ecs" } });
    let mut ids = Vec::new();
    // Two jobs with the same secrets share one definition; the value is written again.
    for _ in 0..2 {
        let job = submit(&api, &body).await;
        assert_eq!(job["spec"]["secrets"], secrets, "{job}");
        let id = job["id"].as_str().unwrap().to_string();
        let job = wait_finished(&api, &id, JOB_LIMIT).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        ids.push((id, job["task"]["arn"].as_str().unwrap().to_string()));
    }

    let project: uuid::Uuid = sqlx::query_scalar("select id from projects where name = 'default'")
        .fetch_one(setup.db.store.pool())
        .await
        .unwrap();
    let parameter = format!("/slipway/{project}/db-password");
    for (id, task_arn) in &ids {
        // What DescribeTasks shows of the RunTask: the plain environment, no secret.
        let task = setup.task(task_arn).await;
        let printed = format!("{task:?}");
        assert!(!printed.contains(&password) && !printed.contains("DB_PASSWORD"), "{printed}");
        let overrides = &task.overrides().unwrap().container_overrides()[0];
        let names: Vec<&str> = overrides.environment().iter().filter_map(|kv| kv.name()).collect();
        assert!(!names.contains(&"API_TOKEN") && names.contains(&"SLIPWAY_JOB_ID"), "{names:?}");
        let logs = format!("{:?}", all_logs(&api, id).await);
        assert!(!logs.contains(&password), "{logs}");
    }
    let families = setup.ecs.list_task_definitions().send().await.unwrap();
    let definitions = families.task_definition_arns();
    assert_eq!(definitions.len(), 1, "one definition for both jobs: {definitions:?}");
    let definition = setup.ecs.describe_task_definition().task_definition(&definitions[0]).send().await.unwrap();
    let printed = format!("{definition:?}");
    assert!(!printed.contains(&password), "{printed}");
    let container = &definition.task_definition().unwrap().container_definitions()[0];
    let from: BTreeMap<&str, &str> = container.secrets().iter().map(|s| (s.name(), s.value_from())).collect();
    assert_eq!(from, BTreeMap::from([("API_TOKEN", arn), ("DB_PASSWORD", parameter.as_str())]));
    assert!(container.environment().is_empty(), "{container:?}");

    // The task reads the value where the worker wrote it, encrypted.
    let ssm = aws_sdk_ssm::Client::new(&setup.moto.sdk().await);
    let stored = ssm.get_parameter().name(&parameter).with_decryption(true).send().await.unwrap();
    let stored = stored.parameter().unwrap();
    assert_eq!(stored.r#type().map(|t| t.as_str()), Some("SecureString"));
    assert_eq!(stored.value(), Some(password.as_str()));
    let listed = ssm.describe_parameters().send().await.unwrap();
    assert_eq!(listed.parameters().len(), 1, "only the project secret is written: {listed:?}");

    // An ARN reaches ECS tasks only.
    let docker = json!({ "repo": setup.repo, "image": image, "secrets": { "API_TOKEN": arn } });
    let refused = http().post(format!("{api}/v1/jobs")).json(&docker).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["field"], "secrets.API_TOKEN", "{refused}");
}
