//! The spooler's shared state: what every request handler and worker can reach.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::accounting::admission::{InstallationSalt, SaltError};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::dispatch::DispatchHandle;
use crate::metrics::Metrics;
use crate::store::{DocumentStore, JobStore};

/// Process settings from flags and environment (not from the YAML documents).
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// Holds the SQLite database and the document directory.
    pub state_dir: PathBuf,
    /// Where Secret references resolve in standalone mode: `<secrets_dir>/<name>/<key>`.
    pub secrets_dir: PathBuf,
    /// Largest document accepted when the queue does not say.
    pub max_document_bytes: u64,
    /// Documents up to this size are committed inside the job store with the job row
    /// (group commit); larger ones go to the document store.
    pub inline_document_bytes: usize,
    /// Longest time between two pieces of a request before the connection is dropped.
    pub idle_timeout: std::time::Duration,
    /// Connections are IPPS (TLS); URIs in responses say `ipps://`.
    pub tls: bool,
    /// Dispatch only the queues annotated with this shard (all queues when `None`); jobs
    /// for every queue are accepted either way.
    pub shard: Option<String>,
}

/// Everything a handler or worker needs, shared behind an `Arc`.
pub struct App {
    pub settings: Settings,
    pub config: watch::Receiver<Arc<Config>>,
    pub store: Arc<dyn JobStore>,
    pub documents: Arc<dyn DocumentStore>,
    pub dispatch: DispatchHandle,
    pub metrics: Metrics,
    pub auth: Authenticator,
    /// Read through `installation_salt`.
    pub salt: InstallationSalt,
}

impl App {
    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// The installation's salt for hashed user labels, read from the job store once.
    pub async fn installation_salt(&self) -> Result<Arc<Vec<u8>>, SaltError> {
        self.salt
            .get(self.store.as_ref(), &self.settings.state_dir)
            .await
    }
}
