//! Child processes that die with their guard, free ports, tools and waiting.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};

/// A tool the tests run, and the Debian package that provides it.
#[derive(Clone, Copy, Debug)]
pub struct Tool {
    pub name: &'static str,
    pub package: &'static str,
}

pub const IPPTOOL: Tool = Tool {
    name: "ipptool",
    package: "cups-ipp-utils",
};
pub const IPPEVEPRINTER: Tool = Tool {
    name: "ippeveprinter",
    package: "cups-ipp-utils",
};
pub const LP: Tool = Tool {
    name: "lp",
    package: "cups-client",
};
pub const LPSTAT: Tool = Tool {
    name: "lpstat",
    package: "cups-client",
};
pub const CANCEL: Tool = Tool {
    name: "cancel",
    package: "cups-client",
};
pub const LPADMIN: Tool = Tool {
    name: "lpadmin",
    package: "cups-client",
};
pub const CUPSD: Tool = Tool {
    name: "cupsd",
    package: "cups-daemon",
};
pub const DBUS_DAEMON: Tool = Tool {
    name: "dbus-daemon",
    package: "dbus",
};
pub const AVAHI_DAEMON: Tool = Tool {
    name: "avahi-daemon",
    package: "avahi-daemon",
};

impl Tool {
    /// The tool's full path on PATH (plus the sbin directories, which a non-login PATH may
    /// lack), or an error naming the package to install.
    pub fn path(self) -> Result<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
            .map(|dir| dir.join(self.name))
            .find(|candidate| candidate.is_file())
            .ok_or(HarnessError::MissingTool {
                tool: self.name,
                package: self.package,
            })
    }

    pub fn command(self) -> Result<Command> {
        Ok(Command::new(self.path()?))
    }
}

pub use printfleet_testservers::{port_open, wait_until};

/// A port on 127.0.0.1 that was free a moment ago (the OS picks it, so parallel tests do
/// not collide).
pub fn free_port() -> Result<u16> {
    printfleet_testservers::free_port().map_err(HarnessError::io("binding a free port"))
}

/// For tests on a tokio runtime: polls `check` every 20 ms until it gives a value, and
/// panics naming `what` when `limit` passes first.
pub async fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last `lines` lines of a log file, formatted to follow an error message.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n--- {} ---\n{tail}", path.display())
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildGuard {
    /// Spawns `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: impl Into<String>, mut command: Command, log: &Path) -> Result<ChildGuard> {
        let name = name.into();
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(HarnessError::io(format!("opening {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(HarnessError::io("duplicating a log handle"))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(HarnessError::io(format!("starting {name}")))?;
        Ok(ChildGuard {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// An error when the process has exited (with its log tail).
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(HarnessError::Exited {
                what: self.name.clone(),
                status: status.to_string(),
                log: log_tail(&self.log, 30),
            }),
            Err(source) => Err(HarnessError::Io {
                what: format!("waiting for {}", self.name),
                source,
            }),
        }
    }

    /// Waits until `ready` holds, failing early when the process exits.
    pub fn wait_ready(&mut self, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
        let mut exited = None;
        let became_ready = wait_until(timeout, || {
            if let Err(error) = self.check_running() {
                exited = Some(error);
                return true;
            }
            ready()
        });
        if let Some(error) = exited {
            return Err(error);
        }
        if became_ready {
            Ok(())
        } else {
            Err(HarnessError::NotReady {
                what: self.name.clone(),
                seconds: timeout.as_secs(),
                log: log_tail(&self.log, 30),
            })
        }
    }

    /// SIGKILL now and reap.
    pub fn kill(&mut self) {
        // Errors mean the process is already gone, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Returns whether it
    /// exited on its own.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        let signalled = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|status| status.success());
        let exited =
            signalled && wait_until(grace, || matches!(self.child.try_wait(), Ok(Some(_))));
        self.kill();
        exited
    }

    /// The exit status once the process has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion, returning stdout; a non-zero exit is an error carrying
/// both outputs.
pub fn run(mut command: Command) -> Result<String> {
    let rendered = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(HarnessError::io(format!("running {rendered}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(HarnessError::Command {
            command: rendered,
            status: output.status.to_string(),
            output: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
        })
    }
}
