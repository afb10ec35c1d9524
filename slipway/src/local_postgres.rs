//! A private Postgres for `slipway standalone` when no `DATABASE_URL` is given.
//!
//! It runs the machine's own server binaries (`initdb`, `pg_ctl`, `postgres`) on a
//! data folder Slipway names at start-up. It listens on no TCP port at all: only on
//! a Unix socket in a private folder (`<data root>/run`, mode 0700). Postgres
//! refuses to run as root, so under root it runs as the `postgres` system user
//! that Debian's package creates. A server left running by an earlier start (after a
//! crash) is found through its `postmaster.pid` and reused.
//!
//! The cluster also asks for a password (SCRAM): a random one, made at the first
//! start and kept in `postgres.password` beside the cluster (mode 0600). A cluster
//! made by an older Slipway, which trusted every local connection over loopback TCP,
//! is given a password, its trust taken away and its TCP port closed at the next
//! start.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::process::Command;

const USER: &str = "slipway";
const DATABASE: &str = "slipway";
/// The password's file, in the data root (not in the cluster folder, which the
/// `postgres` user owns).
const PASSWORD_FILE: &str = "postgres.password";
/// Who may connect, and how: a password over the Unix socket, nothing else.
const PG_HBA: &str = "# Written by slipway: a password (SCRAM) over the Unix socket, nothing else.\n\
                      local all all scram-sha-256\n";
/// The port only names the socket file, in a folder of its own: any number will do.
const SOCKET_PORT: u16 = 5432;
/// The longest path of a Unix socket.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum LocalPostgresError {
    #[error(
        "no PostgreSQL server binaries found (looked for initdb, pg_ctl and postgres beside `pg_ctl` in PATH \
         and in /usr/lib/postgresql/*/bin): install them (on Debian: `apt-get install postgresql`) or set DATABASE_URL"
    )]
    NoBinaries,
    #[error("Postgres cannot run as root and there is no `postgres` user to run it as: create one or set DATABASE_URL")]
    NoUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("cannot prepare {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running private Postgres; [`LocalPostgres::stop`] stops it.
#[derive(Debug)]
pub struct LocalPostgres {
    bin: PathBuf,
    data: PathBuf,
    /// The private folder of the server's socket.
    socket_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    pub url: String,
}

impl LocalPostgres {
    /// Starts (or finds running) a Postgres in `<data_root>/postgres`.
    pub async fn start(data_root: &Path) -> Result<Self, LocalPostgresError> {
        let bin = find_binaries().ok_or(LocalPostgresError::NoBinaries)?;
        let run_as = if std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(0) == 0 {
            Some(postgres_user().ok_or(LocalPostgresError::NoUser)?)
        } else {
            None
        };
        let data = data_root.join("postgres");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LocalPostgresError::Io { path, source }
        };
        std::fs::create_dir_all(&data).map_err(io(&data))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).map_err(io(&data))?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).map_err(io(&data))?;
        let socket_dir = data_root.join("run");
        let socket = socket_dir.join(format!(".s.PGSQL.{SOCKET_PORT}"));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(LocalPostgresError::Command {
                what: "placing the private postgres's socket".into(),
                detail: format!(
                    "{} is longer than a Unix socket's {MAX_SOCKET_PATH} bytes: set SLIPWAY_DATA_DIR to a shorter folder",
                    socket.display()
                ),
            });
        }
        std::fs::create_dir_all(&socket_dir).map_err(io(&socket_dir))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&socket_dir, Some(uid), Some(gid)).map_err(io(&socket_dir))?;
        }
        std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&socket_dir))?;

        let this = LocalPostgres { bin, data, socket_dir, run_as, url: String::new() };
        let password_file = data_root.join(PASSWORD_FILE);
        let (password, made) = read_or_make_password(&password_file).map_err(io(&password_file))?;
        if !this.data.join("PG_VERSION").exists() {
            tracing::info!(path = %this.data.display(), "creating the private postgres cluster");
            this.init(&password).await?;
        } else if made {
            // A cluster from before passwords: it trusts every local connection.
            tracing::info!(path = %this.data.display(), "giving the private postgres a password");
            this.require_password(&password).await?;
        }
        if this.running_port().is_some() {
            tracing::info!("reusing the private postgres already running");
        } else {
            this.start_server().await?;
        }
        this.create_database(&this.url_of(Some(&password), "postgres")).await?;
        let url = this.url_of(Some(&password), DATABASE);
        tracing::info!(
            data = %this.data.display(),
            socket = %this.socket_dir.display(),
            password_file = %password_file.display(),
            "private postgres ready"
        );
        Ok(LocalPostgres { url, ..this })
    }

    /// Makes the cluster, its superuser's password set from the start.
    async fn init(&self, password: &str) -> Result<(), LocalPostgresError> {
        // initdb reads the password from a file the `postgres` user can read, outside
        // the folder it fills (which must be empty).
        let pwfile = self.data.with_file_name(".initdb-password");
        let io = |source| LocalPostgresError::Io { path: pwfile.clone(), source };
        write_private(&pwfile, password).map_err(io)?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).map_err(io)?;
        }
        let data = self.data.to_string_lossy().into_owned();
        let pwfile_arg = format!("--pwfile={}", pwfile.display());
        let args = ["-D", &data, "-U", USER, "--auth=scram-sha-256", &pwfile_arg, "-E", "UTF8", "--no-instructions"];
        let made = self.run("initdb", &args).await;
        let _ = std::fs::remove_file(&pwfile);
        made?;
        self.write_hba()
    }

    /// Sets the superuser's password on a cluster that trusted every local
    /// connection, then takes the trust away.
    async fn require_password(&self, password: &str) -> Result<(), LocalPostgresError> {
        use sqlx::Connection;
        if self.running_port().is_none() {
            self.start_server().await?;
        }
        let fail = |e: sqlx::Error| LocalPostgresError::Command {
            what: "setting the private postgres's password".into(),
            detail: format!(
                "{e} (if the cluster already has a password, {PASSWORD_FILE} beside it is gone: restore it)"
            ),
        };
        let mut conn = sqlx::PgConnection::connect(&self.url_of(None, "postgres")).await.map_err(fail)?;
        // The password is hex digits (see `read_or_make_password`): safe in a literal.
        let statement = format!("alter role {USER} password '{password}'");
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.map_err(fail)?;
        self.write_hba()?;
        let data = self.data.to_string_lossy().into_owned();
        self.run("pg_ctl", &["-D", &data, "reload"]).await
    }

    fn write_hba(&self) -> Result<(), LocalPostgresError> {
        let path = self.data.join("pg_hba.conf");
        std::fs::write(&path, PG_HBA).map_err(|source| LocalPostgresError::Io { path, source })
    }

    /// Starts the server on its Unix socket only: no TCP address (`-h ''`).
    async fn start_server(&self) -> Result<(), LocalPostgresError> {
        let data = self.data.to_string_lossy().into_owned();
        let log = self.data.join("server.log").to_string_lossy().into_owned();
        // pg_ctl hands the options to a shell: the folder is quoted.
        let options = format!("-p {SOCKET_PORT} -h '' -k '{}'", self.socket_dir.display());
        self.run("pg_ctl", &["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start"]).await
    }

    /// The port of a server already running on this data folder on its socket, if
    /// any. One running without the socket (started by an older Slipway, on loopback
    /// TCP) is stopped, to be started again the way it runs now.
    fn running_port(&self) -> Option<u16> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        let mut lines = pid_file.lines();
        let pid: u32 = lines.next()?.trim().parse().ok()?;
        let port: u16 = lines.nth(2)?.trim().parse().ok()?;
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return None;
        }
        if port == SOCKET_PORT && self.socket_dir.join(format!(".s.PGSQL.{port}")).exists() {
            return Some(port);
        }
        let data = self.data.to_string_lossy().into_owned();
        let mut stop = std::process::Command::new(self.bin.join("pg_ctl"));
        stop.args(["-D", &data, "-m", "fast", "-w", "stop"]).current_dir(&self.data);
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            stop.uid(uid).gid(gid);
        }
        let stopped = stop.status();
        if !stopped.is_ok_and(|s| s.success()) {
            tracing::warn!("cannot stop the private postgres an older start left on TCP");
        }
        None
    }

    /// The URL of `database` over the socket, with `password` if given.
    fn url_of(&self, password: Option<&str>, database: &str) -> String {
        let user = match password {
            Some(password) => format!("{USER}:{password}"),
            None => USER.to_string(),
        };
        let folder: String = self
            .socket_dir
            .to_string_lossy()
            .chars()
            .map(|c| match c {
                ' ' | '%' | '&' | '#' | '?' | '+' | '=' => format!("%{:02X}", c as u32),
                c => c.to_string(),
            })
            .collect();
        format!("postgres://{user}@localhost:{SOCKET_PORT}/{database}?host={folder}")
    }

    /// Creates Slipway's database unless it exists, connected to `admin_url`.
    async fn create_database(&self, admin_url: &str) -> Result<(), LocalPostgresError> {
        use sqlx::Connection;
        let fail = |e: sqlx::Error| LocalPostgresError::Command {
            what: "creating the slipway database".into(),
            detail: e.to_string(),
        };
        let mut conn = sqlx::PgConnection::connect(admin_url).await.map_err(fail)?;
        let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(DATABASE)
            .fetch_one(&mut conn)
            .await
            .map_err(fail)?;
        if !exists {
            sqlx::query("create database slipway").execute(&mut conn).await.map_err(fail)?;
        }
        Ok(())
    }

    /// Stops the server (fast shutdown: running queries are cancelled).
    pub async fn stop(&self) {
        let data = self.data.to_string_lossy().into_owned();
        if let Err(e) = self.run("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]).await {
            tracing::warn!(error = %e, "cannot stop the private postgres");
        }
    }

    async fn run(&self, program: &str, args: &[&str]) -> Result<(), LocalPostgresError> {
        let mut command = Command::new(self.bin.join(program));
        command.args(args).current_dir(&self.data).kill_on_drop(true);
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let output = command
            .output()
            .await
            .map_err(|e| LocalPostgresError::Command { what: program.into(), detail: e.to_string() })?;
        if output.status.success() {
            Ok(())
        } else {
            Err(LocalPostgresError::Command {
                what: format!("{program} {}", args.join(" ")),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }
}

/// The password in `path`, or a new random one written there (mode 0600); whether
/// it was made now.
fn read_or_make_password(path: &Path) -> std::io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(password) if !password.trim().is_empty() => Ok((password.trim().to_string(), false)),
        Ok(_) => make_password(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => make_password(path),
        Err(e) => Err(e),
    }
}

fn make_password(path: &Path) -> std::io::Result<(String, bool)> {
    // 256 random bits from the kernel, as hex.
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(path, &password)?;
    Ok((password, true))
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

/// The folder holding `initdb`, `pg_ctl` and `postgres`.
fn find_binaries() -> Option<PathBuf> {
    let complete = |dir: &Path| ["initdb", "pg_ctl", "postgres"].iter().all(|b| dir.join(b).is_file());
    let from_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("pg_ctl"))
            .find(|p| p.is_file())
            .and_then(|p| p.canonicalize().ok())
            .and_then(|p| p.parent().map(Path::to_path_buf))
    });
    let mut installed: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    // Newest version first.
    installed.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()),
        )
    });
    from_path.into_iter().chain(installed).find(|dir| complete(dir))
}

/// uid and gid of the `postgres` user.
fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

/// Where `standalone` keeps its private Postgres unless `SLIPWAY_DATA_DIR` says.
pub fn default_data_root() -> PathBuf {
    if std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) == 0 {
        return PathBuf::from("/var/lib/slipway");
    }
    match std::env::var_os("XDG_DATA_HOME")
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share").into()))
    {
        Some(base) => Path::new(&base).join("slipway"),
        None => PathBuf::from("slipway-data"),
    }
}
