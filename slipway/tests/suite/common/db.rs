//! A fresh Postgres database per test, the job history as rows, and a Postgres server of a test's own that it can restart.

use super::*;

/// A fresh database with the migrations applied.
pub struct TestDb {
    pub url: String,
    pub store: Store,
}

impl TestDb {
    pub async fn new() -> Self {
        use sqlx::Connection;
        let base = env("DATABASE_URL");
        let name = format!("slipway_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&base).await.expect("connect to DATABASE_URL");
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}"))).execute(&mut admin).await.unwrap();
        let (prefix, _) = base.rsplit_once('/').expect("DATABASE_URL has a database name");
        let url = format!("{prefix}/{name}");
        let store = slipway_engine::store::Store::open(&url, std::time::Duration::from_secs(30))
            .await
            .expect("open the test database");
        grant_test_token(&store).await;
        TestDb { url, store }
    }
}

/// The token every request of this test process carries (see [`http`]): an owner
/// token, made once per process and granted in each database the test makes.
pub fn test_token() -> &'static slipway_engine::auth::token::NewToken {
    static TOKEN: std::sync::OnceLock<slipway_engine::auth::token::NewToken> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| slipway_engine::auth::token::NewToken::generate().unwrap())
}

/// Grants [`test_token`] in a database (once).
pub async fn grant_test_token(store: &Store) {
    let grant = slipway_engine::store::TokenGrant {
        name: "tests",
        role: slipway_engine::auth::Role::Owner,
        project: None,
        expires_at: None,
        created_by: None,
    };
    if store.token_by_prefix(&test_token().prefix).await.unwrap().is_none() {
        store.create_token(test_token(), &grant).await.unwrap();
    }
}

/// The id of the project `default`.
pub async fn default_project(db: &TestDb) -> uuid::Uuid {
    db.store.project_named("default").await.unwrap().unwrap().id
}

/// The states the job went through, from its event history.
pub async fn state_history(db: &TestDb, id: &str) -> Vec<String> {
    let id: uuid::Uuid = id.parse().unwrap();
    sqlx::query_scalar("select to_state::text from job_events where job_id = $1 order by id")
        .bind(id)
        .fetch_all(db.store.pool())
        .await
        .unwrap()
}

/// The job's events as (to_state, attempt, worker, reason).
pub async fn events(db: &TestDb, id: &str) -> Vec<(String, i32, Option<String>, Option<String>)> {
    let id: uuid::Uuid = id.parse().unwrap();
    sqlx::query_as("select to_state::text, attempt, worker, reason from job_events where job_id = $1 order by id")
        .bind(id)
        .fetch_all(db.store.pool())
        .await
        .unwrap()
}

/// A Postgres server of the test's own, on a fixed port, that the test can restart.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .flatten()
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("pg_ctl").exists())
            .expect("postgres server binaries");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let pg = PrivatePostgres { dir, bin, port: free_port() };
        pg.run("initdb", &["-D", &pg.data(), "-U", "slipway", "--auth=trust", "--no-instructions"]);
        pg.up();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    pub fn url(&self) -> String {
        format!("postgres://slipway@127.0.0.1:{}/postgres", self.port)
    }

    pub fn up(&self) {
        let options = format!("-p {} -h 127.0.0.1 -k ''", self.port);
        let log = self.dir.path().join("log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "start"]);
    }

    pub fn down(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let root =
            std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false);
        let status = if root {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&program)
                .args(args)
                .stdout(Stdio::null())
                .status()
        } else {
            Command::new(&program).args(args).stdout(Stdio::null()).status()
        }
        .unwrap();
        assert!(status.success(), "{} {args:?} failed", program.display());
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let options = ["-D", &self.data(), "-m", "immediate", "stop"].map(String::from);
        let program = self.bin.join("pg_ctl");
        let _ = Command::new("runuser").args(["-u", "postgres", "--"]).arg(&program).args(&options).output();
        let _ = Command::new(&program).args(&options).output();
    }
}
