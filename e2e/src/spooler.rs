//! The spooler under test: built once per process, started on a temp config and state
//! directory, killed (or restarted on the same state) at will.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use crate::error::{HarnessError, Result};
use crate::process::{ChildGuard, free_port, run};

/// How long a spooler may take from spawn to `/readyz` answering 200.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The spooler binary, built by `cargo build` the first time a process asks (the build's
/// profile follows this crate's: release for `cargo run --release`, debug for tests).
pub fn spooler_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| build_spooler().map_err(|error| error.to_string()))
        .clone()
        .map_err(HarnessError::Build)
}

fn build_spooler() -> Result<PathBuf> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(&root).args([
        "build",
        "-p",
        "printfleet-spooler",
        "--bin",
        "printfleet-spooler",
    ]);
    // Cargo gives a program it runs (a test, `cargo run`) variables describing that
    // program's package. Some build scripts (ring's) rerun when those change, so passing
    // them on would rebuild half the dependency tree here and again at the next plain build.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(describes_the_running_package) {
            command.env_remove(name);
        }
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    if profile == "release" {
        command.arg("--release");
    }
    run(command)?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let binary = target.join(profile).join("printfleet-spooler");
    if binary.is_file() {
        Ok(binary)
    } else {
        Err(HarnessError::Build(format!(
            "{} missing after the build",
            binary.display()
        )))
    }
}

/// Whether `variable` is one that Cargo sets for the program it runs, about that program.
fn describes_the_running_package(variable: &str) -> bool {
    variable.starts_with("CARGO_PKG_")
        || variable.starts_with("CARGO_MANIFEST_")
        || matches!(
            variable,
            "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
        )
}

/// Status and body of a plain `GET path` on 127.0.0.1:`port`, or `None` when nothing
/// answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.get(9..12)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Status code of a plain `GET path` on 127.0.0.1:`port`, or `None` when nothing answers.
pub fn http_get_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// A running spooler. Dropping it kills the process and removes its directories.
pub struct Spooler {
    // Fields drop in order: the process stops before its directories are removed.
    process: Option<ChildGuard>,
    dir: TempDir,
    port: u16,
    extra_args: Vec<String>,
    extra_env: Vec<(String, String)>,
}

impl Spooler {
    /// Writes `config_yaml` to a temp config file, starts the spooler on a free port with a
    /// fresh state directory, and waits for `/readyz`.
    pub fn start(config_yaml: &str) -> Result<Spooler> {
        Spooler::start_with_args(config_yaml, &[])
    }

    /// As `start`, with extra command-line arguments (e.g. `--max-document-size`).
    pub fn start_with_args(config_yaml: &str, extra_args: &[&str]) -> Result<Spooler> {
        Spooler::start_with_env(config_yaml, extra_args, &[])
    }

    /// As `start_with_args`, with extra environment variables (e.g. `KUBECONFIG`).
    pub fn start_with_env(
        config_yaml: &str,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Result<Spooler> {
        let binary = spooler_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("printfleet-spooler-")
            .tempdir()
            .map_err(HarnessError::io("creating the spooler's temp dir"))?;
        for sub in ["state", "secrets"] {
            std::fs::create_dir(dir.path().join(sub))
                .map_err(HarnessError::io(format!("creating {sub}")))?;
        }
        std::fs::write(dir.path().join("config.yaml"), config_yaml)
            .map_err(HarnessError::io("writing the spooler config"))?;
        let mut spooler = Spooler {
            dir,
            port: free_port()?,
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
            extra_env: extra_env
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
            process: None,
        };
        spooler.spawn(&binary)?;
        Ok(spooler)
    }

    fn spawn(&mut self, binary: &Path) -> Result<()> {
        let dir = self.dir.path();
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(dir.join("config.yaml"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--secrets-dir")
            .arg(dir.join("secrets"))
            .args(&self.extra_args)
            .envs(self.extra_env.iter().map(|(name, value)| (name, value)))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        let mut process =
            ChildGuard::spawn("printfleet-spooler", command, &dir.join("spooler.log"))?;
        let port = self.port;
        process.wait_ready(READY_TIMEOUT, || {
            http_get_status(port, "/readyz") == Some(200)
        })?;
        self.process = Some(process);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ipp://127.0.0.1:PORT/ipp/print/<queue>`.
    pub fn queue_uri(&self, queue: &str) -> String {
        format!("ipp://127.0.0.1:{}/ipp/print/{queue}", self.port)
    }

    /// `http://127.0.0.1:PORT/ipp/print/<queue>`, what an HTTP client posts to.
    pub fn queue_url(&self, queue: &str) -> String {
        format!("http://127.0.0.1:{}/ipp/print/{queue}", self.port)
    }

    /// `127.0.0.1:PORT`, for the CUPS clients' `-h`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// Replaces the configuration file (a rename, as a ConfigMap update lands); the
    /// spooler reloads it within its poll interval.
    pub fn write_config(&self, config_yaml: &str) -> Result<()> {
        let temporary = self.dir.path().join("config.yaml.new");
        std::fs::write(&temporary, config_yaml)
            .and_then(|()| std::fs::rename(&temporary, self.config_path()))
            .map_err(HarnessError::io("replacing the spooler config"))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Where secrets are read from: `<secrets-dir>/<name>/<key>`.
    pub fn secrets_dir(&self) -> PathBuf {
        self.dir.path().join("secrets")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("spooler.log")
    }

    /// The spooler's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildGuard::id)
    }

    /// SIGKILL: nothing is flushed, nothing is said goodbye to.
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// SIGTERM and wait up to `grace` for the exit; returns whether it exited by itself
    /// and with success.
    pub fn shutdown(&mut self, grace: Duration) -> bool {
        match self.process.take() {
            Some(mut process) => {
                let exited = process.terminate(grace);
                exited && process.exit_status().is_some_and(|status| status.success())
            }
            None => false,
        }
    }

    /// Starts the spooler again on the same port, config and state directory.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        let binary = spooler_binary()?;
        self.spawn(&binary)
    }
}

/// A `Printer` document for the spooler's config.
pub fn printer_yaml(name: &str, uri: &str) -> String {
    format!(
        "apiVersion: printfleet.io/v1alpha1\nkind: Printer\nmetadata:\n  name: {name}\nspec:\n  uri: {uri}\n"
    )
}

/// A `PrintQueue` document over `printers`; `extra_spec` is more YAML under `spec:`
/// (indented two spaces), e.g. `"  holdUntilRelease: true\n"`.
pub fn queue_yaml(name: &str, printers: &[&str], extra_spec: &str) -> String {
    format!(
        "apiVersion: printfleet.io/v1alpha1\nkind: PrintQueue\nmetadata:\n  name: {name}\nspec:\n  printers: [{}]\n{extra_spec}",
        printers.join(", ")
    )
}

/// Joins documents into one multi-document YAML file.
pub fn config_yaml(documents: &[String]) -> String {
    documents.join("---\n")
}

/// The documents a `file://` printer has finished writing in `dir` (not its partial files
/// or probes), sorted by name.
pub fn delivered_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or(".");
            path.is_file() && !name.starts_with('.') && !name.ends_with(".partial")
        })
        .collect();
    files.sort();
    files
}
