//! The shared stores of a spooler cluster, as real servers: a PostgreSQL cluster (`initdb`
//! in a temp dir, `postgres` on a free 127.0.0.1 port) and an S3-protocol server (moto,
//! installed once into a venv under the target directory). Each stops with its guard.
//! [`Shard`] puts them together with the Kubernetes API double that holds the shard's
//! Lease, and starts the shard's pods.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::apiserver::{ApiServer, write_kubeconfig};
use crate::error::{HarnessError, Result};
use crate::process::{ChildGuard, free_port, port_open, run, wait_until};
use crate::spooler::{Spooler, workspace_root};

/// How long a starting server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL server of its own, on a free port.
pub struct Postgres {
    // Fields drop in order: the server stops before its directory goes.
    process: ChildGuard,
    dir: TempDir,
    port: u16,
    bin: PathBuf,
    /// The `postgres` user's (uid, gid) when running as root.
    user: Option<(u32, u32)>,
    fsync: bool,
}

impl Postgres {
    /// A server for tests: without fsync (a test's data need not survive a power loss).
    pub fn start() -> Result<Postgres> {
        Postgres::launch(false)
    }

    /// A server that fsyncs its commits, as in production: for benchmarks.
    pub fn start_durable() -> Result<Postgres> {
        Postgres::launch(true)
    }

    fn launch(fsync: bool) -> Result<Postgres> {
        let bin = postgres_binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("printfleet-e2e-postgres-")
            .tempdir()
            .map_err(HarnessError::io("creating the PostgreSQL temp dir"))?;
        // The server refuses to run as root: then it runs as the `postgres` user.
        let user = if is_root() {
            let user = postgres_user()?;
            std::os::unix::fs::chown(dir.path(), Some(user.0), Some(user.1))
                .map_err(HarnessError::io("handing the data dir to postgres"))?;
            Some(user)
        } else {
            None
        };
        let mut initdb = command_as(&bin, "initdb", dir.path(), user);
        initdb.args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"]);
        initdb
            .args(["--no-sync", "--no-instructions", "-D"])
            .arg(dir.path().join("data"));
        run(initdb)?;
        let port = free_port()?;
        let process = serve(&bin, dir.path(), user, port, fsync)?;
        Ok(Postgres {
            process,
            dir,
            port,
            bin,
            user,
            fsync,
        })
    }

    /// Stops the server as an administrator does (`pg_ctl stop -m fast`: clients are
    /// disconnected, everything committed is on disk), then starts it again on the same
    /// port and data after `down`.
    pub fn restart(&mut self, down: Duration) -> Result<()> {
        let stopped = Command::new("kill")
            .args(["-INT", &self.process.id().to_string()])
            .status()
            .is_ok_and(|status| status.success());
        if !stopped || !wait_until(START_TIMEOUT, || self.process.exit_status().is_some()) {
            return Err(HarnessError::Ipp("PostgreSQL did not stop".into()));
        }
        std::thread::sleep(down);
        self.process = serve(&self.bin, self.dir.path(), self.user, self.port, self.fsync)?;
        Ok(())
    }

    /// The postmaster's process id (its backends are its children).
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// A libpq DSN for the `postgres` database.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

/// `program` of the PostgreSQL binaries, run in `dir` as `user` when given.
fn command_as(bin: &Path, program: &str, dir: &Path, user: Option<(u32, u32)>) -> Command {
    let mut command = Command::new(bin.join(program));
    command.current_dir(dir);
    if let Some((uid, gid)) = user {
        std::os::unix::process::CommandExt::uid(&mut command, uid);
        std::os::unix::process::CommandExt::gid(&mut command, gid);
    }
    command
}

/// Starts the server on `dir`/data and waits until it accepts connections.
fn serve(
    bin: &Path,
    dir: &Path,
    user: Option<(u32, u32)>,
    port: u16,
    fsync: bool,
) -> Result<ChildGuard> {
    let mut postgres = command_as(bin, "postgres", dir, user);
    postgres.arg("-D").arg(dir.join("data"));
    postgres.args(["-p", &port.to_string(), "-k"]).arg(dir);
    postgres.args(["-c", "listen_addresses=127.0.0.1"]);
    postgres.args(["-c", "max_connections=200"]);
    if !fsync {
        postgres.args(["-c", "fsync=off"]);
    }
    let mut process = ChildGuard::spawn("postgres", postgres, &dir.join("postgres.log"))?;
    process.wait_ready(START_TIMEOUT, || {
        let mut isready = command_as(bin, "pg_isready", dir, user);
        isready.args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()]);
        isready.status().is_ok_and(|status| status.success())
    })?;
    Ok(process)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown, which also ends the server's child processes (a
        // SIGKILL of the postmaster would leave them to notice by themselves).
        let quit = Command::new("kill")
            .args(["-QUIT", &self.process.id().to_string()])
            .status();
        if quit.is_ok_and(|status| status.success()) {
            wait_until(Duration::from_secs(10), || {
                self.process.exit_status().is_some()
            });
        }
        // The guard's drop kills whatever is left.
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

/// The `postgres` user's uid and gid.
fn postgres_user() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let mut command = Command::new("id");
        command.args([flag, "postgres"]);
        let output = run(command)?;
        output
            .trim()
            .parse()
            .map_err(|_| HarnessError::MissingTool {
                tool: "postgres user",
                package: "postgresql-15",
            })
    };
    Ok((id("-u")?, id("-g")?))
}

/// The directory of the PostgreSQL server programs.
fn postgres_binaries() -> Result<PathBuf> {
    let mut candidates = vec![PathBuf::from("/usr/lib/postgresql/15/bin")];
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        candidates.extend(versions.filter_map(|entry| Some(entry.ok()?.path().join("bin"))));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates.extend(std::env::split_paths(&path));
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        .ok_or(HarnessError::MissingTool {
            tool: "initdb",
            package: "postgresql-15",
        })
}

/// An S3-protocol server (moto) on a free port.
pub struct Moto {
    // Fields drop in order: the server stops before its log directory goes.
    process: ChildGuard,
    dir: TempDir,
    port: u16,
}

impl Moto {
    pub fn start() -> Result<Moto> {
        let python = moto_venv()?.join("bin").join("python");
        let dir = tempfile::Builder::new()
            .prefix("printfleet-e2e-moto-")
            .tempdir()
            .map_err(HarnessError::io("creating the moto temp dir"))?;
        let port = free_port()?;
        let mut moto = Command::new(python);
        moto.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        let mut process = ChildGuard::spawn("moto", moto, &dir.path().join("moto.log"))?;
        process.wait_ready(START_TIMEOUT, || port_open(port))?;
        Ok(Moto { process, dir, port })
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates bucket `name` (moto takes unsigned bucket creation; everything after goes
    /// through the spooler's signed client).
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        let what = || format!("creating bucket {name} on {}", self.endpoint());
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).map_err(|source| HarnessError::Io {
                what: what(),
                source,
            })?;
        let request = format!(
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        let mut response = String::new();
        stream
            .write_all(request.as_bytes())
            .and_then(|()| stream.read_to_string(&mut response))
            .map_err(|source| HarnessError::Io {
                what: what(),
                source,
            })?;
        if response.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(HarnessError::Ipp(format!(
                "{}: {}",
                what(),
                response.lines().next().unwrap_or("no answer")
            )))
        }
    }

    /// Writes a mounted-Secret-like directory of (moto's any-will-do) access keys.
    pub fn write_credentials(&self, dir: &Path) -> Result<()> {
        for (name, value) in [
            ("AWS_ACCESS_KEY_ID", "printfleet-e2e"),
            ("AWS_SECRET_ACCESS_KEY", "printfleet-e2e-secret"),
        ] {
            std::fs::write(dir.join(name), format!("{value}\n"))
                .map_err(HarnessError::io(format!("writing {name}")))?;
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }
}

/// The moto venv under the target directory (shared with the spooler's store tests),
/// created on first use under a name of its own and renamed into place, so concurrent
/// processes never see half an install. Within a process, one test thread installs while
/// the others wait (the name is per process, so two threads would build the same one).
fn moto_venv() -> Result<PathBuf> {
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _creating = CREATING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let venv = target.join("moto-venv");
    if moto_installed(&venv) {
        return Ok(venv);
    }
    let partial = target.join(format!("moto-venv.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let mut create = Command::new("python3");
    create.args(["-m", "venv"]).arg(&partial);
    run(create)?;
    let mut install = Command::new(partial.join("bin").join("python"));
    install.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    install.arg("moto[server]");
    run(install)?;
    if std::fs::rename(&partial, &venv).is_err() {
        // Another process finished first: use its venv.
        let _ = std::fs::remove_dir_all(&partial);
    }
    if moto_installed(&venv) {
        Ok(venv)
    } else {
        Err(HarnessError::MissingTool {
            tool: "moto",
            package: "python3-venv (pip install 'moto[server]')",
        })
    }
}

fn moto_installed(venv: &Path) -> bool {
    venv.join("bin").join("python").exists()
        && std::fs::read_dir(venv.join("lib")).is_ok_and(|mut versions| {
            versions.any(|version| {
                version
                    .is_ok_and(|version| version.path().join("site-packages").join("moto").is_dir())
            })
        })
}

/// The namespace of the shard's Lease on the API double.
pub const LEASE_NAMESPACE: &str = "printfleet";

/// One shard of spooler pods as the operator runs it: shared PostgreSQL and S3 (moto)
/// stores, and its Lease on the Kubernetes API double.
pub struct Shard {
    pub name: String,
    pub postgres: Postgres,
    pub moto: Moto,
    pub api: ApiServer,
    bucket: String,
    /// S3 credentials and the kubeconfig.
    files: TempDir,
    kubeconfig: PathBuf,
    lease_seconds: u64,
}

impl Shard {
    /// Starts the stores (PostgreSQL fsyncing or not) and the API double.
    pub async fn start(name: &str, lease_seconds: u64, durable: bool) -> Result<Shard> {
        let postgres = if durable {
            Postgres::start_durable()?
        } else {
            Postgres::start()?
        };
        let moto = Moto::start()?;
        let bucket = "printfleet-shard".to_string();
        moto.create_bucket(&bucket)?;
        let files = tempfile::tempdir().map_err(HarnessError::io("creating a temp dir"))?;
        moto.write_credentials(files.path())?;
        let api = ApiServer::start(&[]).await;
        let kubeconfig = write_kubeconfig(files.path(), api.address);
        Ok(Shard {
            name: name.to_string(),
            postgres,
            moto,
            api,
            bucket,
            files,
            kubeconfig,
            lease_seconds,
        })
    }

    /// Starts pod `pod` of the shard (one of `replicas`) on `config`.
    pub fn pod(&self, config: &str, pod: &str, replicas: u32) -> Result<Spooler> {
        self.pod_of(&self.name, config, pod, replicas)
    }

    /// Starts pod `pod` of another shard, `shard`, on the same stores and API server.
    pub fn pod_of(&self, shard: &str, config: &str, pod: &str, replicas: u32) -> Result<Spooler> {
        let args = [
            "--store-dsn".to_string(),
            self.postgres.dsn(),
            "--documents-url".into(),
            format!("s3://{}/jobs", self.bucket),
            "--s3-endpoint".into(),
            self.moto.endpoint(),
            "--s3-region".into(),
            "us-east-1".into(),
            "--s3-credentials-dir".into(),
            self.files.path().display().to_string(),
            "--claimer-id".into(),
            pod.into(),
            "--replicas".into(),
            replicas.to_string(),
            "--shard".into(),
            shard.into(),
            "--shard-lease".into(),
            shard.into(),
            "--lease-namespace".into(),
            LEASE_NAMESPACE.into(),
            "--lease-duration".into(),
            self.lease_seconds.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let kubeconfig = self.kubeconfig.display().to_string();
        Spooler::start_with_env(config, &args, &[("KUBECONFIG", &kubeconfig)])
    }

    /// The pod holding the shard's Lease.
    pub fn leader(&self) -> Option<String> {
        self.api
            .get("coordination.k8s.io/v1/leases", LEASE_NAMESPACE, &self.name)?["spec"]
            ["holderIdentity"]
            .as_str()
            .map(str::to_owned)
    }

    /// `queue` annotated as one of this shard's, for the pods' configuration.
    pub fn queue_yaml(&self, queue: &str, printers: &[&str], extra_spec: &str) -> String {
        sharded_queue_yaml(&self.name, queue, printers, extra_spec)
    }
}

/// `queue` annotated as one of `shard`'s, as the operator writes it.
pub fn sharded_queue_yaml(shard: &str, queue: &str, printers: &[&str], extra_spec: &str) -> String {
    crate::spooler::queue_yaml(queue, printers, extra_spec).replace(
        &format!("  name: {queue}\n"),
        &format!("  name: {queue}\n  annotations:\n    printfleet.io/shard: \"{shard}\"\n"),
    )
}
