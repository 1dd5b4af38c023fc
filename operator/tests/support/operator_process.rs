//! The operator binary run as its own process against the API double, as a pod runs it.

use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

/// A running `printfleet-operator`; killed when dropped.
pub struct OperatorProcess {
    pub identity: String,
    child: Child,
}

impl OperatorProcess {
    /// Starts the operator as `identity` with a Lease of `lease_seconds`, plus `extra` args.
    pub fn start(kubeconfig: &Path, identity: &str, lease_seconds: u64, extra: &[&str]) -> Self {
        Self::start_with_env(kubeconfig, identity, lease_seconds, extra, &[])
    }

    /// Like [`OperatorProcess::start`], with more environment variables.
    pub fn start_with_env(
        kubeconfig: &Path,
        identity: &str,
        lease_seconds: u64,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_printfleet-operator"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--spooler-image",
                "registry.example/printfleet-spooler:test",
                "--identity",
                identity,
                "--lease-namespace",
                "operators",
                "--lease-duration",
                &lease_seconds.to_string(),
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start printfleet-operator");
        Self {
            identity: identity.to_owned(),
            child,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal` (SIGTERM, SIGKILL) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the process is running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Waits for the process to exit, up to `limit`; its exit status.
    pub async fn exited_within(
        &mut self,
        limit: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }
}
