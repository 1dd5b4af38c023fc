//! The shared stores of a spooler cluster, as real servers: a PostgreSQL cluster (`initdb`
//! in a temp dir, `postgres` on a free 127.0.0.1 port) and an S3-protocol server (moto,
//! installed once into a venv under the target directory). Each stops with its guard.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::error::{HarnessError, Result};
use crate::process::{ChildGuard, free_port, port_open, run, wait_until};
use crate::spooler::workspace_root;

/// How long a starting server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL server of its own, on a free port.
pub struct Postgres {
    // Fields drop in order: the server stops before its directory goes.
    process: ChildGuard,
    dir: TempDir,
    port: u16,
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
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
        let command = |program: &str| {
            let mut command = Command::new(bin.join(program));
            command.current_dir(dir.path());
            if let Some((uid, gid)) = user {
                std::os::unix::process::CommandExt::uid(&mut command, uid);
                std::os::unix::process::CommandExt::gid(&mut command, gid);
            }
            command
        };
        let data = dir.path().join("data");
        let mut initdb = command("initdb");
        initdb.args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"]);
        initdb
            .args(["--no-sync", "--no-instructions", "-D"])
            .arg(&data);
        run(initdb)?;
        let port = free_port()?;
        let mut postgres = command("postgres");
        postgres.arg("-D").arg(&data);
        postgres
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path());
        postgres.args(["-c", "listen_addresses=127.0.0.1"]);
        postgres.args(["-c", "max_connections=200", "-c", "fsync=off"]);
        let mut process =
            ChildGuard::spawn("postgres", postgres, &dir.path().join("postgres.log"))?;
        process.wait_ready(START_TIMEOUT, || {
            let mut isready = command("pg_isready");
            isready.args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()]);
            isready.status().is_ok_and(|status| status.success())
        })?;
        Ok(Postgres { process, dir, port })
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
    _process: ChildGuard,
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
        Ok(Moto {
            _process: process,
            dir,
            port,
        })
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
/// processes never see half an install.
fn moto_venv() -> Result<PathBuf> {
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
