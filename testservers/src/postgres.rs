//! A PostgreSQL cluster: `initdb` in a temporary directory, `postgres` on a free 127.0.0.1
//! port with its socket in that directory, stopped and removed with the guard. The
//! binaries come from Debian's `postgresql-15` (`/usr/lib/postgresql/15/bin`).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{ChildGuard, Shared, failure, free_port, run, wait_until};

/// How long a starting server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct PostgresServer {
    // Fields drop in order: the server stops before its directory goes.
    process: Mutex<Option<ChildGuard>>,
    /// Whether commits wait for the disk, as in production (for benchmarks); tests do
    /// without (their data need not survive a power loss).
    fsync: bool,
    dir: TempDir,
    bin: PathBuf,
    /// The `postgres` user's uid and gid when the tests run as root (which the server
    /// refuses).
    user: Option<(u32, u32)>,
    port: u16,
    databases: AtomicU32,
}

impl PostgresServer {
    /// The server shared by this process's tests (each takes its own database).
    pub fn shared() -> io::Result<Arc<PostgresServer>> {
        static SHARED: Shared<PostgresServer> = Shared::new();
        SHARED.acquire(PostgresServer::start)
    }

    /// A server of one's own for tests, without fsync.
    pub fn start() -> io::Result<PostgresServer> {
        PostgresServer::launch(false)
    }

    /// A server of one's own that fsyncs its commits, as in production: for benchmarks.
    pub fn start_durable() -> io::Result<PostgresServer> {
        PostgresServer::launch(true)
    }

    fn launch(fsync: bool) -> io::Result<PostgresServer> {
        let bin = binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("printfleet-postgres-")
            .tempdir()?;
        let user = if std::fs::metadata(dir.path())?.uid() == 0 {
            let (uid, gid) = postgres_user()?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
            Some((uid, gid))
        } else {
            None
        };
        let server = PostgresServer {
            process: Mutex::new(None),
            fsync,
            port: free_port()?,
            dir,
            bin,
            user,
            databases: AtomicU32::new(0),
        };
        let mut initdb = server.command("initdb");
        initdb.args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"]);
        initdb.args(["--no-sync", "--no-instructions", "-D"]);
        initdb.arg(server.data());
        run(initdb, "initdb", &server.dir.path().join("initdb.log"))?;
        server.resume()?;
        Ok(server)
    }

    /// A libpq connection string for `database` (`postgres` always exists).
    pub fn dsn(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={database}",
            self.port
        )
    }

    /// Create a database no other test uses; returns its DSN.
    pub fn create_database(&self) -> io::Result<String> {
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            self.databases.fetch_add(1, Ordering::Relaxed)
        );
        let mut createdb = self.command("createdb");
        createdb.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]);
        createdb.arg(&name);
        let log = self.dir.path().join(format!("createdb-{name}.log"));
        run(createdb, "createdb", &log)?;
        Ok(self.dsn(&name))
    }

    /// Kill the server as a crash would (immediate shutdown: no checkpoint, recovery from
    /// the WAL at the next start).
    pub fn crash(&self) -> io::Result<()> {
        self.stop("immediate")
    }

    /// Stop the server as an administrator does (fast shutdown: clients are disconnected,
    /// everything committed is on disk), and start it again on the same port and data
    /// after `down`.
    pub fn restart(&self, down: Duration) -> io::Result<()> {
        self.stop("fast")?;
        std::thread::sleep(down);
        self.resume()
    }

    /// `pg_ctl stop` in `mode`; returns once the server has exited.
    fn stop(&self, mode: &str) -> io::Result<()> {
        let Some(process) = self.process().take() else {
            return Ok(());
        };
        let mut stop = self.command("pg_ctl");
        stop.args(["stop", "-m", mode, "-w", "-D"]);
        stop.arg(self.data());
        let stopped = run(stop, "pg_ctl stop", &self.dir.path().join("pg_ctl.log"));
        process.wait_or_kill(Duration::from_secs(10));
        stopped
    }

    /// The postmaster's process id (its backends are its children) while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process().as_ref().map(ChildGuard::id)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Start the server (again) on its data directory and port; returns once it accepts
    /// connections.
    pub fn resume(&self) -> io::Result<()> {
        let mut process = self.process();
        if process.is_some() {
            return Ok(());
        }
        let log = self.dir.path().join("postgres.log");
        let mut postgres = self.command("postgres");
        postgres.arg("-D").arg(self.data());
        postgres.args(["-p", &self.port.to_string(), "-k"]);
        postgres.arg(self.dir.path());
        postgres.args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=300",
        ]);
        if !self.fsync {
            postgres.args(["-c", "fsync=off"]);
        }
        let mut child = ChildGuard::spawn(postgres, "postgres", &log)?;
        let ready = wait_until(START_TIMEOUT, || {
            !child.exited() && {
                let mut isready = self.command("pg_isready");
                isready.args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()]);
                isready.status().is_ok_and(|status| status.success())
            }
        });
        if !ready {
            return Err(failure(
                format!("postgres did not start on port {}", self.port),
                Some(&log),
            ));
        }
        *process = Some(child);
        Ok(())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn process(&self) -> MutexGuard<'_, Option<ChildGuard>> {
        self.process
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A PostgreSQL program, run as the `postgres` user when the tests run as root.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.current_dir(self.dir.path());
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid);
        }
        command
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Err(error) = self.crash() {
            eprintln!("stopping PostgreSQL: {error}");
        }
    }
}

/// The directory of the PostgreSQL server programs.
fn binaries() -> io::Result<PathBuf> {
    let mut candidates = vec![PathBuf::from("/usr/lib/postgresql/15/bin")];
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut others: Vec<PathBuf> = versions
            .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
            .collect();
        others.sort();
        candidates.extend(others.into_iter().rev());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    candidates.extend(std::env::split_paths(&path));
    candidates
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "PostgreSQL server programs (initdb, postgres) not found: install Debian's \
                 postgresql-15",
            )
        })
}

/// The uid and gid of the `postgres` user, from `/etc/passwd`.
fn postgres_user() -> io::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string(Path::new("/etc/passwd"))?;
    passwd_entry(&passwd, "postgres").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no postgres user to run PostgreSQL as (the tests run as root, which initdb \
             refuses): install Debian's postgresql-15",
        )
    })
}

fn passwd_entry(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_entries() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\npostgres:x:101:104::/var/lib/postgresql:/bin/bash\n";
        assert_eq!(passwd_entry(passwd, "postgres"), Some((101, 104)));
        assert_eq!(passwd_entry(passwd, "root"), Some((0, 0)));
        assert_eq!(passwd_entry(passwd, "post"), None);
        assert_eq!(passwd_entry("postgres:x:nope:1", "postgres"), None);
    }
}
