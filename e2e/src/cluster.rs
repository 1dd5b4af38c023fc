//! A spooler cluster's shard as the operator runs it: real shared stores (PostgreSQL and
//! the S3-protocol server moto, from `printfleet-testservers`), the Kubernetes API double
//! that holds the shard's Lease, and the shard's pods.

use std::path::PathBuf;

use printfleet_testservers::{MotoServer, PostgresServer};
use tempfile::TempDir;

use crate::apiserver::{ApiServer, write_kubeconfig};
use crate::error::{HarnessError, Result};
use crate::spooler::Spooler;

/// The namespace of the shard's Lease on the API double.
pub const LEASE_NAMESPACE: &str = "printfleet";

/// One shard of spooler pods as the operator runs it: shared PostgreSQL and S3 (moto)
/// stores, and its Lease on the Kubernetes API double.
pub struct Shard {
    pub name: String,
    pub postgres: PostgresServer,
    pub moto: MotoServer,
    pub api: ApiServer,
    bucket: String,
    /// S3 credentials and the kubeconfig.
    files: TempDir,
    kubeconfig: PathBuf,
    lease_seconds: u64,
}

impl Shard {
    /// Starts the stores (PostgreSQL fsyncing or not) and the API double.
    pub async fn start(name: &str, lease_seconds: u64, durable: bool) -> Result<Shard> {
        let postgres = if durable {
            PostgresServer::start_durable()
        } else {
            PostgresServer::start()
        }
        .map_err(HarnessError::io("starting PostgreSQL"))?;
        let moto = MotoServer::start().map_err(HarnessError::io("starting moto"))?;
        let bucket = "printfleet-shard".to_string();
        moto.create_bucket(&bucket)
            .map_err(HarnessError::io("creating the shard's bucket"))?;
        let files = tempfile::tempdir().map_err(HarnessError::io("creating a temp dir"))?;
        moto.write_credentials(files.path())
            .map_err(HarnessError::io("writing the S3 credentials"))?;
        let api = ApiServer::start(&[]).await;
        let kubeconfig = write_kubeconfig(files.path(), api.address);
        Ok(Shard {
            name: name.to_string(),
            postgres,
            moto,
            api,
            bucket,
            files,
            kubeconfig,
            lease_seconds,
        })
    }

    /// Starts pod `pod` of the shard (one of `replicas`) on `config`.
    pub fn pod(&self, config: &str, pod: &str, replicas: u32) -> Result<Spooler> {
        self.pod_of(&self.name, config, pod, replicas)
    }

    /// Starts pod `pod` of another shard, `shard`, on the same stores and API server.
    pub fn pod_of(&self, shard: &str, config: &str, pod: &str, replicas: u32) -> Result<Spooler> {
        let args = [
            "--store-dsn".to_string(),
            self.postgres.dsn("postgres"),
            "--documents-url".into(),
            format!("s3://{}/jobs", self.bucket),
            "--s3-endpoint".into(),
            self.moto.endpoint(),
            "--s3-region".into(),
            "us-east-1".into(),
            "--s3-credentials-dir".into(),
            self.files.path().display().to_string(),
            "--claimer-id".into(),
            pod.into(),
            "--replicas".into(),
            replicas.to_string(),
            "--shard".into(),
            shard.into(),
            "--shard-lease".into(),
            shard.into(),
            "--lease-namespace".into(),
            LEASE_NAMESPACE.into(),
            "--lease-duration".into(),
            self.lease_seconds.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let kubeconfig = self.kubeconfig.display().to_string();
        Spooler::start_with_env(config, &args, &[("KUBECONFIG", &kubeconfig)])
    }

    /// The pod holding the shard's Lease.
    pub fn leader(&self) -> Option<String> {
        self.api
            .get("coordination.k8s.io/v1/leases", LEASE_NAMESPACE, &self.name)?["spec"]
            ["holderIdentity"]
            .as_str()
            .map(str::to_owned)
    }

    /// `queue` annotated as one of this shard's, for the pods' configuration.
    pub fn queue_yaml(&self, queue: &str, printers: &[&str], extra_spec: &str) -> String {
        sharded_queue_yaml(&self.name, queue, printers, extra_spec)
    }
}

/// `queue` annotated as one of `shard`'s, as the operator writes it.
pub fn sharded_queue_yaml(shard: &str, queue: &str, printers: &[&str], extra_spec: &str) -> String {
    crate::spooler::queue_yaml(queue, printers, extra_spec).replace(
        &format!("  name: {queue}\n"),
        &format!("  name: {queue}\n  annotations:\n    printfleet.io/shard: \"{shard}\"\n"),
    )
}
