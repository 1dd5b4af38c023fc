//! What the servers have in common: free ports, child processes that die with their guard,
//! waiting, and one server shared by a test process's concurrent tests.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago (the OS picks it, so parallel tests do
/// not collide).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Polls `ready` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An error naming what failed, with the end of the server's log when there is one.
pub(crate) fn failure(what: impl std::fmt::Display, log: Option<&Path>) -> io::Error {
    let tail = log
        .and_then(|log| std::fs::read_to_string(log).ok())
        .map(|text| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        })
        .unwrap_or_default();
    io::Error::other(format!("{what}\n{tail}"))
}

/// Run `command` to completion, its output going to `log`; an error unless it succeeded.
pub(crate) fn run(mut command: Command, what: &str, log: &Path) -> io::Result<()> {
    let output = File::create(log)?;
    let status = command
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .status()
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(failure(format!("{what} failed: {status}"), Some(log)))
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub(crate) struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Start `command` with its output appended to `log`.
    pub(crate) fn spawn(mut command: Command, what: &str, log: &Path) -> io::Result<ChildGuard> {
        let output = File::options().create(true).append(true).open(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {what}: {e}")))?;
        Ok(ChildGuard { child })
    }

    /// The process id.
    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited.
    pub(crate) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait up to `timeout` for the process to exit by itself; kill it otherwise.
    pub(crate) fn wait_or_kill(mut self, timeout: Duration) {
        wait_until(timeout, || self.exited());
        // Drop kills and reaps.
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server shared by the tests of this process that run at the same time, started by
/// the first and stopped when the last handle is dropped.
pub(crate) struct Shared<T> {
    current: Mutex<Weak<T>>,
}

impl<T> Shared<T> {
    pub(crate) const fn new() -> Self {
        Shared {
            current: Mutex::new(Weak::new()),
        }
    }

    pub(crate) fn acquire(&self, start: impl FnOnce() -> io::Result<T>) -> io::Result<Arc<T>> {
        // A poisoned lock only means another test panicked while holding it; the Weak
        // inside is still valid.
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(server) = current.upgrade() {
            return Ok(server);
        }
        let server = Arc::new(start()?);
        *current = Arc::downgrade(&server);
        Ok(server)
    }
}

/// The target directory the running test or bench was built in (where the moto venv is
/// kept between runs): `CARGO_TARGET_DIR` when set, else the nearest directory above the
/// executable that holds cargo's `CACHEDIR.TAG`.
pub(crate) fn target_dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| io::Error::other(format!("no target dir above {}", exe.display())))
}
