//! An S3-protocol server: moto (`pip install 'moto[server]'`), installed once into a venv
//! under the target directory and started on a free 127.0.0.1 port.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::{
    ChildGuard, Shared, failure, free_port, port_open, run, target_dir, wait_until,
};

/// How long a starting moto may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct MotoServer {
    // Fields drop in order: the server stops before its log directory goes.
    process: ChildGuard,
    dir: TempDir,
    port: u16,
    buckets: AtomicU32,
}

impl MotoServer {
    /// The server shared by this process's tests (each takes its own bucket).
    pub fn shared() -> io::Result<Arc<MotoServer>> {
        static SHARED: Shared<MotoServer> = Shared::new();
        SHARED.acquire(MotoServer::start)
    }

    /// A server of one's own.
    pub fn start() -> io::Result<MotoServer> {
        let python = venv()?.join("bin").join("python");
        let dir = tempfile::Builder::new()
            .prefix("printfleet-moto-")
            .tempdir()?;
        let port = free_port()?;
        let log = dir.path().join("moto.log");
        let mut moto = Command::new(python);
        moto.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        let mut process = ChildGuard::spawn(moto, "moto", &log)?;
        if !wait_until(START_TIMEOUT, || !process.exited() && port_open(port)) {
            return Err(failure(
                format!("moto did not start on port {port}"),
                Some(&log),
            ));
        }
        Ok(MotoServer {
            process,
            dir,
            port,
            buckets: AtomicU32::new(0),
        })
    }

    /// The S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    /// Create a bucket no other test uses; returns its name.
    pub fn new_bucket(&self) -> io::Result<String> {
        let name = format!(
            "test-{}-{}",
            std::process::id(),
            self.buckets.fetch_add(1, Ordering::Relaxed)
        );
        self.create_bucket(&name)?;
        Ok(name)
    }

    /// Create bucket `name`. Moto takes unsigned bucket creation; everything after goes
    /// through the signed client under test.
    pub fn create_bucket(&self, name: &str) -> io::Result<()> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        let request = format!(
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        if response.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "creating bucket {name}: {}",
                response.lines().next().unwrap_or("no answer")
            )))
        }
    }

    /// Writes a mounted-Secret-like directory of access keys (moto takes any).
    pub fn write_credentials(&self, dir: &Path) -> io::Result<()> {
        for (name, value) in [
            ("AWS_ACCESS_KEY_ID", "printfleet-test"),
            ("AWS_SECRET_ACCESS_KEY", "printfleet-test-secret"),
        ] {
            std::fs::write(dir.join(name), format!("{value}\n"))?;
        }
        Ok(())
    }
}

/// The moto venv, created on first use. It is built under a name of its own and renamed
/// into place, so concurrent test processes never see half an install; moto runs as
/// `python -m moto.server`, which (unlike the venv's scripts) survives the rename.
fn venv() -> io::Result<PathBuf> {
    static CREATING: Mutex<()> = Mutex::new(());
    let _creating = CREATING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let target = target_dir()?;
    let venv = target.join("moto-venv");
    if installed(&venv) {
        return Ok(venv);
    }
    let partial = target.join(format!("moto-venv.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let log = target.join(format!("moto-venv-{}.log", std::process::id()));
    let mut create = Command::new("python3");
    create.args(["-m", "venv"]).arg(&partial);
    run(create, "python3 -m venv", &log)?;
    let mut install = Command::new(partial.join("bin").join("python"));
    install.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ]);
    install.arg("moto[server]");
    run(install, "pip install moto[server]", &log)?;
    let _ = std::fs::remove_file(&log);
    if std::fs::rename(&partial, &venv).is_err() {
        // Another process finished first: use its venv.
        let _ = std::fs::remove_dir_all(&partial);
    }
    if installed(&venv) {
        Ok(venv)
    } else {
        Err(io::Error::other(format!(
            "no moto in {} after installing it",
            venv.display()
        )))
    }
}

fn installed(venv: &Path) -> bool {
    venv.join("bin").join("python").exists()
        && std::fs::read_dir(venv.join("lib")).is_ok_and(|mut versions| {
            versions.any(|version| {
                version
                    .is_ok_and(|version| version.path().join("site-packages").join("moto").is_dir())
            })
        })
}
