//! `ippeveprinter`, CUPS's IPP Everywhere printer simulator, and the DNS-SD daemons it
//! refuses to start without.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tempfile::TempDir;

use crate::error::{HarnessError, Result};
use crate::process::{AVAHI_DAEMON, ChildGuard, DBUS_DAEMON, IPPEVEPRINTER, free_port, port_open};

const DBUS_SOCKET: &str = "/run/dbus/system_bus_socket";
const FORMATS: &str = "application/pdf,application/postscript,image/pwg-raster,image/urf,text/plain,application/octet-stream";

/// dbus and avahi, started for this process's tests unless they already run, stopped when
/// the last `DnsSd` handle is dropped.
pub struct DnsSd {
    // Fields drop in order: avahi before the bus it talks to, both before their log dir.
    _avahi: Option<ChildGuard>,
    _dbus: Option<ChildGuard>,
    _dir: TempDir,
}

impl DnsSd {
    /// A handle on running daemons, starting them if this process holds none yet.
    pub fn acquire() -> Result<Arc<DnsSd>> {
        static SHARED: Mutex<Weak<DnsSd>> = Mutex::new(Weak::new());
        // A poisoned lock only means another test panicked while holding it; the Weak
        // inside is still valid.
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(daemons) = shared.upgrade() {
            return Ok(daemons);
        }
        let daemons = Arc::new(DnsSd::start()?);
        *shared = Arc::downgrade(&daemons);
        Ok(daemons)
    }

    fn start() -> Result<DnsSd> {
        let dir = tempfile::Builder::new()
            .prefix("printfleet-dnssd-")
            .tempdir()
            .map_err(HarnessError::io("creating the DNS-SD log dir"))?;
        let dbus = if UnixStream::connect(DBUS_SOCKET).is_ok() {
            None
        } else {
            std::fs::create_dir_all("/run/dbus").map_err(HarnessError::io("creating /run/dbus"))?;
            // A socket left by a dead daemon makes the new one fail to bind.
            let _ = std::fs::remove_file(DBUS_SOCKET);
            let mut command = DBUS_DAEMON.command()?;
            command.args(["--system", "--nofork", "--nopidfile"]);
            let mut daemon =
                ChildGuard::spawn("dbus-daemon", command, &dir.path().join("dbus.log"))?;
            daemon.wait_ready(Duration::from_secs(10), || {
                UnixStream::connect(DBUS_SOCKET).is_ok()
            })?;
            Some(daemon)
        };
        let avahi = if avahi_running()? {
            None
        } else {
            // A pid file left by a dead daemon makes the new one refuse to start.
            let _ = std::fs::remove_file("/run/avahi-daemon/pid");
            let mut command = AVAHI_DAEMON.command()?;
            command.args(["--no-drop-root", "--no-rlimits", "--no-chroot"]);
            let mut daemon =
                ChildGuard::spawn("avahi-daemon", command, &dir.path().join("avahi.log"))?;
            let log = dir.path().join("avahi.log");
            daemon.wait_ready(Duration::from_secs(10), || {
                std::fs::read_to_string(&log)
                    .is_ok_and(|text| text.contains("Server startup complete"))
            })?;
            Some(daemon)
        };
        Ok(DnsSd {
            _dir: dir,
            _avahi: avahi,
            _dbus: dbus,
        })
    }
}

fn avahi_running() -> Result<bool> {
    let status = AVAHI_DAEMON
        .command()?
        .arg("--check")
        .status()
        .map_err(HarnessError::io("running avahi-daemon --check"))?;
    Ok(status.success())
}

/// One simulated IPP Everywhere printer on 127.0.0.1 with its own spool directory.
pub struct IppEvePrinter {
    // Fields drop in order: the printer stops before its spool dir goes, and before the
    // DNS-SD daemons it registered with.
    process: Option<ChildGuard>,
    spool: TempDir,
    name: String,
    port: u16,
    two_sided: bool,
    quick: bool,
    _dnssd: Arc<DnsSd>,
}

impl IppEvePrinter {
    pub fn start(name: &str) -> Result<IppEvePrinter> {
        Self::launch(name, false, false)
    }

    /// A printer that also prints on both sides (`sides` two-sided-long/short-edge).
    pub fn start_two_sided(name: &str) -> Result<IppEvePrinter> {
        Self::launch(name, true, false)
    }

    /// A printer that finishes each job as soon as it has the document (it runs `true`
    /// on it and keeps the file) instead of simulating 5 to 15 s of printing: for tests
    /// that send it hundreds of jobs.
    pub fn start_quick(name: &str) -> Result<IppEvePrinter> {
        Self::launch(name, false, true)
    }

    fn launch(name: &str, two_sided: bool, quick: bool) -> Result<IppEvePrinter> {
        let dnssd = DnsSd::acquire()?;
        let spool = tempfile::Builder::new()
            .prefix("printfleet-ippeve-")
            .tempdir()
            .map_err(HarnessError::io("creating the ippeveprinter spool dir"))?;
        let mut printer = IppEvePrinter {
            name: name.to_string(),
            port: free_port()?,
            spool,
            process: None,
            two_sided,
            quick,
            _dnssd: dnssd,
        };
        printer.resume()?;
        Ok(printer)
    }

    /// `ipp://127.0.0.1:PORT/ipp/print`.
    pub fn uri(&self) -> String {
        format!("ipp://127.0.0.1:{}/ipp/print", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The documents the printer has received (its spool files, not its logs).
    pub fn received_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.spool.path()) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.is_file() && path.extension().is_none_or(|ext| ext != "log"))
            .collect();
        files.sort();
        files
    }

    pub fn received_count(&self) -> usize {
        self.received_files().len()
    }

    /// Takes the printer off the network (the process is killed; files stay).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Brings the printer back on the same port.
    pub fn resume(&mut self) -> Result<()> {
        self.stop();
        let mut command = IPPEVEPRINTER.command()?;
        command
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-r", "off", "-d"])
            .arg(self.spool.path())
            .args(["-f", FORMATS]);
        if self.two_sided {
            command.arg("-2");
        }
        if self.quick {
            command.args(["-k", "-c", "/bin/true"]);
        }
        command.arg(&self.name);
        let log = self.spool.path().join("ippeveprinter.log");
        let mut process = ChildGuard::spawn(format!("ippeveprinter {}", self.name), command, &log)?;
        let port = self.port;
        process.wait_ready(Duration::from_secs(15), || port_open(port))?;
        self.process = Some(process);
        Ok(())
    }
}
