//! Cluster mode: which stores a spooler pod uses, who it is, and how many pods share them.
//!
//! A pod of a shard keeps its jobs in PostgreSQL and its documents in S3-compatible object
//! storage, shared with the other pods; a standalone spooler keeps both in its state
//! directory. The checks here refuse, before anything is opened, the combinations that
//! would lose or double-print jobs (several replicas each with a private SQLite file or
//! document directory).

use std::path::PathBuf;
use std::time::Duration;

use crate::store::{PostgresJobStore, S3Credentials, S3Settings, StoreError};

/// The identity of the only dispatcher of a standalone spooler.
pub const STANDALONE_CLAIMER: &str = "standalone";

/// Cluster-mode settings, as given on the command line or in the environment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterOptions {
    /// A PostgreSQL DSN; `None`: SQLite in the state directory.
    pub store_dsn: Option<String>,
    /// `s3://bucket[/prefix]`; `None`: the local document directory.
    pub documents_url: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// A mounted Secret with the S3 access keys; `None`: the environment.
    pub s3_credentials_dir: Option<PathBuf>,
    /// This pod's dispatcher identity; `None`: the host (pod) name in cluster mode.
    pub claimer_id: Option<String>,
    /// How many pods run this shard.
    pub replicas: u32,
    /// The shard whose queues this pod dispatches; `None`: every queue.
    pub shard: Option<String>,
    /// The Lease that elects the shard's one dispatching pod.
    pub shard_lease: Option<String>,
}

/// How a pod dispatches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DispatchRole {
    /// The store's only dispatcher: a new epoch per start, and every job left
    /// `processing` by anyone else is recovered.
    Standalone,
    /// The one pod of `shard`: it takes the shard over in the store at start.
    Shard { shard: String },
    /// One of the shard's pods: it dispatches while it holds `lease`.
    LeasedShard { shard: String, lease: String },
}

/// A cluster-mode setting that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClusterError {
    #[error("--replicas must be at least 1")]
    NoReplicas,
    #[error(
        "--replicas {replicas} needs a job store shared by every pod: set --store-dsn \
         (PRINTFLEET_STORE_DSN) to a PostgreSQL DSN; SQLite in --state-dir serves one pod only"
    )]
    PrivateJobStore { replicas: u32 },
    #[error(
        "--replicas {replicas} needs a document store shared by every pod: set \
         --documents-url (PRINTFLEET_DOCUMENTS_URL) to s3://bucket[/prefix]; the local \
         document directory serves one pod only"
    )]
    PrivateDocumentStore { replicas: u32 },
    #[error("{flag} is set but --documents-url is not: the documents would stay local")]
    S3WithoutUrl { flag: &'static str },
    #[error(
        "--replicas {replicas} needs --shard and --shard-lease (PRINTFLEET_SHARD_LEASE): \
         the Lease elects the one pod that dispatches"
    )]
    UnledReplicas { replicas: u32 },
    #[error("--shard-lease needs --shard: a Lease elects the dispatcher of one shard")]
    LeaseWithoutShard,
    #[error("--claimer-id must not be empty")]
    EmptyClaimerId,
    #[error("PostgreSQL at --store-dsn is unreachable after {waited:?}: {last_error}")]
    StoreUnreachable {
        waited: Duration,
        last_error: String,
    },
    #[error("PostgreSQL at --store-dsn: {0}")]
    Store(String),
}

impl ClusterOptions {
    /// Refuses inconsistent settings; nothing is opened or contacted.
    pub fn check(&self) -> Result<(), ClusterError> {
        if self.replicas == 0 {
            return Err(ClusterError::NoReplicas);
        }
        if self.claimer_id.as_deref().is_some_and(str::is_empty) {
            return Err(ClusterError::EmptyClaimerId);
        }
        if self.documents_url.is_none() {
            let s3_flags = [
                ("--s3-endpoint", self.s3_endpoint.is_some()),
                ("--s3-region", self.s3_region.is_some()),
                ("--s3-credentials-dir", self.s3_credentials_dir.is_some()),
            ];
            if let Some((flag, _)) = s3_flags.iter().find(|(_, set)| *set) {
                return Err(ClusterError::S3WithoutUrl { flag });
            }
        }
        if self.shard_lease.is_some() && self.shard.is_none() {
            return Err(ClusterError::LeaseWithoutShard);
        }
        if self.replicas > 1 {
            if self.store_dsn.is_none() {
                return Err(ClusterError::PrivateJobStore {
                    replicas: self.replicas,
                });
            }
            if self.documents_url.is_none() {
                return Err(ClusterError::PrivateDocumentStore {
                    replicas: self.replicas,
                });
            }
            if self.shard_lease.is_none() {
                return Err(ClusterError::UnledReplicas {
                    replicas: self.replicas,
                });
            }
        }
        Ok(())
    }

    /// How this pod dispatches (after [`check`](Self::check)).
    pub fn dispatch_role(&self) -> DispatchRole {
        match (&self.shard, &self.shard_lease) {
            (None, _) => DispatchRole::Standalone,
            (Some(shard), None) => DispatchRole::Shard {
                shard: shard.clone(),
            },
            (Some(shard), Some(lease)) => DispatchRole::LeasedShard {
                shard: shard.clone(),
                lease: lease.clone(),
            },
        }
    }

    /// The object store settings, when documents go to S3.
    pub fn s3_settings(&self) -> Option<S3Settings> {
        let mut settings = S3Settings::new(self.documents_url.clone()?);
        settings.endpoint = self.s3_endpoint.clone();
        settings.region = self.s3_region.clone();
        if let Some(dir) = &self.s3_credentials_dir {
            settings.credentials = S3Credentials::SecretDir(dir.clone());
        }
        Some(settings)
    }

    /// This pod's dispatcher identity (also its name in the shard Lease): the explicit
    /// one, else in cluster mode the host name (a pod's name), so every pod has its own
    /// epochs and Lease identity; standalone, a fixed name.
    pub fn claimer_id(&self, host_name: Option<String>) -> String {
        if let Some(id) = &self.claimer_id {
            return id.clone();
        }
        let clustered = self.store_dsn.is_some() || self.shard_lease.is_some();
        match host_name {
            Some(host) if clustered && !host.is_empty() => host,
            _ => STANDALONE_CLAIMER.to_string(),
        }
    }
}

/// The host name: `HOSTNAME` (a pod's name in Kubernetes), else the kernel's.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

/// The waits between connection attempts: doubling from 250 ms up to 5 s, adding up to
/// no more than `budget`.
pub fn retry_delays(budget: Duration) -> Vec<Duration> {
    let mut delays = Vec::new();
    let mut next = Duration::from_millis(250);
    let mut total = Duration::ZERO;
    while total + next <= budget {
        delays.push(next);
        total += next;
        next = (next * 2).min(Duration::from_secs(5));
    }
    let rest = budget - total;
    if !rest.is_zero() {
        delays.push(rest);
    }
    delays
}

/// Connect to PostgreSQL, waiting for it for up to `budget` when it is unreachable (a
/// database pod starting beside the spooler); a bad DSN or schema fails at once.
pub async fn connect_postgres(
    dsn: &str,
    budget: Duration,
) -> Result<PostgresJobStore, ClusterError> {
    let mut delays = retry_delays(budget).into_iter();
    loop {
        match PostgresJobStore::connect(dsn).await {
            Ok(store) => return Ok(store),
            Err(StoreError::Unavailable(error)) => match delays.next() {
                Some(delay) => {
                    tracing::warn!(%error, retry_in = ?delay, "PostgreSQL unreachable");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    return Err(ClusterError::StoreUnreachable {
                        waited: budget,
                        last_error: error,
                    });
                }
            },
            Err(error) => return Err(ClusterError::Store(error.to_string())),
        }
    }
}

pub mod leadership;

#[cfg(test)]
mod tests;
