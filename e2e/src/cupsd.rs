//! A private CUPS scheduler (`cupsd`) with one raw queue, `null`, printing to /dev/null:
//! the reference the benchmark compares the spooler with.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::error::{HarnessError, Result};
use crate::process::{CUPSD, ChildGuard, LPADMIN, free_port, port_open, run};

/// The queue every `Cupsd` has.
pub const NULL_QUEUE: &str = "null";

pub struct Cupsd {
    // Fields drop in order: cupsd stops before its directory is removed.
    process: ChildGuard,
    port: u16,
    _dir: TempDir,
}

impl Cupsd {
    /// Starts cupsd on a free port with its files in a temp dir owned by `lp` (cupsd refuses
    /// to run jobs as root), then adds the raw `null` queue.
    pub fn start() -> Result<Cupsd> {
        let dir = tempfile::Builder::new()
            .prefix("printfleet-cupsd-")
            .tempdir()
            .map_err(HarnessError::io("creating the cupsd dir"))?;
        let root = dir.path();
        let port = free_port()?;
        for sub in ["root", "spool", "spool/tmp", "cache", "state", "log"] {
            std::fs::create_dir_all(root.join(sub))
                .map_err(HarnessError::io(format!("creating {sub}")))?;
        }
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))
            .map_err(HarnessError::io("opening the cupsd dir to lp"))?;
        let path = |sub: &str| root.join(sub).display().to_string();
        let cupsd_conf = format!(
            "Listen 127.0.0.1:{port}\nServerName 127.0.0.1\nLogLevel warn\nMaxJobs 0\nMaxJobsPerPrinter 0\nMaxJobsPerUser 0\nPreserveJobHistory Off\nPreserveJobFiles Off\nBrowsing Off\nWebInterface No\nDefaultAuthType None\n<Location />\n  Order allow,deny\n  Allow all\n</Location>\n<Policy default>\n  <Limit All>\n    Order deny,allow\n  </Limit>\n</Policy>\n"
        );
        let files_conf = format!(
            "User lp\nGroup lp\nFileDevice Yes\nServerRoot {}\nRequestRoot {}\nTempDir {}\nCacheDir {}\nStateDir {}\nAccessLog {}\nErrorLog {}\nPageLog {}\n",
            path("root"),
            path("spool"),
            path("spool/tmp"),
            path("cache"),
            path("state"),
            path("log/access_log"),
            path("log/error_log"),
            path("log/page_log"),
        );
        std::fs::write(root.join("cupsd.conf"), cupsd_conf)
            .map_err(HarnessError::io("writing cupsd.conf"))?;
        std::fs::write(root.join("cups-files.conf"), files_conf)
            .map_err(HarnessError::io("writing cups-files.conf"))?;
        let mut chown = Command::new("chown");
        chown.arg("-R").arg("lp:lp").arg(root);
        run(chown)?;

        let mut command = CUPSD.command()?;
        command
            .arg("-f")
            .arg("-c")
            .arg(root.join("cupsd.conf"))
            .arg("-s")
            .arg(root.join("cups-files.conf"));
        let mut process = ChildGuard::spawn("cupsd", command, &root.join("cupsd.out"))?;
        process.wait_ready(Duration::from_secs(20), || port_open(port))?;
        let cupsd = Cupsd {
            process,
            port,
            _dir: dir,
        };
        let mut lpadmin = LPADMIN.command()?;
        lpadmin.arg("-h").arg(cupsd.host()).args([
            "-p",
            NULL_QUEUE,
            "-E",
            "-v",
            "file:///dev/null",
            "-m",
            "raw",
        ]);
        run(lpadmin)?;
        Ok(cupsd)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// `ipp://127.0.0.1:PORT/printers/<queue>`.
    pub fn queue_uri(&self, queue: &str) -> String {
        format!("ipp://127.0.0.1:{}/printers/{queue}", self.port)
    }
}
