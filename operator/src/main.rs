//! `printfleet-operator`: elects a leader among its replicas (a Lease), and the leader runs
//! the controllers. Health, readiness and metrics are served by every replica.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use printfleet_operator::controller::{self, Settings};
use printfleet_operator::desired::{FIELD_MANAGER, SharedStore, SpoolerSettings};
use printfleet_operator::metrics::Metrics;
use printfleet_operator::shard::ShardSettings;
use printfleet_operator::{server, telemetry};

#[derive(Parser, Debug)]
#[command(
    name = "printfleet-operator",
    version,
    about = "printfleet Kubernetes operator"
)]
struct Cli {
    /// Address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "PRINTFLEET_OPERATOR_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    listen: SocketAddr,
    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "PRINTFLEET_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Queues one spooler shard serves before another is added.
    #[arg(long, env = "PRINTFLEET_QUEUES_PER_SHARD", default_value_t = 50)]
    queues_per_shard: u32,
    #[arg(long, env = "PRINTFLEET_MIN_SHARDS", default_value_t = 1)]
    min_shards: u32,
    #[arg(long, env = "PRINTFLEET_MAX_SHARDS", default_value_t = 16)]
    max_shards: u32,
    /// Spooler pods per shard.
    #[arg(long, env = "PRINTFLEET_REPLICAS_PER_SHARD", default_value_t = 2)]
    replicas_per_shard: u32,
    /// Image of the spooler pods.
    #[arg(long, env = "PRINTFLEET_SPOOLER_IMAGE")]
    spooler_image: String,
    #[arg(long, env = "PRINTFLEET_SPOOLER_CPU_REQUEST", default_value = "100m")]
    spooler_cpu_request: String,
    #[arg(
        long,
        env = "PRINTFLEET_SPOOLER_MEMORY_REQUEST",
        default_value = "128Mi"
    )]
    spooler_memory_request: String,
    #[arg(long, env = "PRINTFLEET_SPOOLER_MEMORY_LIMIT", default_value = "512Mi")]
    spooler_memory_limit: String,
    /// Secret (in each namespace with queues) whose key `dsn` is the PostgreSQL DSN the
    /// spooler pods of a shard share; with --spooler-documents-url. Without both, each
    /// shard runs one pod with its own SQLite store.
    #[arg(long, env = "PRINTFLEET_SPOOLER_STORE_SECRET")]
    spooler_store_secret: Option<String>,
    /// `s3://bucket[/prefix]` where the spooler pods keep documents.
    #[arg(long, env = "PRINTFLEET_SPOOLER_DOCUMENTS_URL")]
    spooler_documents_url: Option<String>,
    /// S3-compatible endpoint of the documents bucket [default: AWS].
    #[arg(long, env = "PRINTFLEET_SPOOLER_S3_ENDPOINT")]
    spooler_s3_endpoint: Option<String>,
    #[arg(long, env = "PRINTFLEET_SPOOLER_S3_REGION")]
    spooler_s3_region: Option<String>,
    /// Secret (in each namespace with queues) with AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY [default: the pods' own identity].
    #[arg(long, env = "PRINTFLEET_SPOOLER_S3_CREDENTIALS_SECRET")]
    spooler_s3_credentials_secret: Option<String>,
    /// Seconds between two probes of a printer.
    #[arg(long, env = "PRINTFLEET_PROBE_INTERVAL", default_value_t = 60)]
    probe_interval: u64,
    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "PRINTFLEET_LEASE_NAME",
        default_value = "printfleet-operator"
    )]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease and in Events.
    #[arg(long, env = "POD_NAME", default_value = "printfleet-operator")]
    identity: String,
    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, env = "PRINTFLEET_LEASE_DURATION", default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(2..))]
    lease_duration: u64,
    /// Log as JSON lines.
    #[arg(long, env = "PRINTFLEET_LOG_JSON")]
    log_json: bool,
}

/// Completes on SIGTERM (what Kubernetes sends a pod it stops) or SIGINT, so the leader
/// releases its Lease and the standby takes over at once rather than after it expires.
async fn terminated() {
    let sigterm = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot handle SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = sigterm => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    let _telemetry = telemetry::init(cli.log_json)?;
    let shared_store = SharedStore::from_flags(
        cli.spooler_store_secret.clone(),
        cli.spooler_documents_url.clone(),
        cli.spooler_s3_endpoint.clone(),
        cli.spooler_s3_region.clone(),
        cli.spooler_s3_credentials_secret.clone(),
    )?;
    if shared_store.is_none() {
        tracing::warn!(
            "no shared spooler store (--spooler-store-secret, --spooler-documents-url): each shard runs one pod whose jobs live in the pod"
        );
    }
    let client = Client::try_default().await?;
    let metrics = Metrics::new()?;
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    let health = tokio::spawn(server::serve(listener, metrics.clone(), ready.clone()));

    let service_monitors = controller::has_service_monitors(&client).await?;
    let settings = Settings {
        shards: ShardSettings {
            queues_per_shard: cli.queues_per_shard,
            min_shards: cli.min_shards,
            max_shards: cli.max_shards,
            replicas_per_shard: cli.replicas_per_shard,
        },
        spooler: SpoolerSettings {
            image: cli.spooler_image.clone(),
            cpu_request: cli.spooler_cpu_request.clone(),
            memory_request: cli.spooler_memory_request.clone(),
            memory_limit: cli.spooler_memory_limit.clone(),
            shared_store,
        },
        probe_interval: Duration::from_secs(cli.probe_interval),
        service_monitors,
        instance: cli.identity.clone(),
        ..Settings::default()
    };

    let manager = LeaseManagerBuilder::new(client.clone(), &cli.lease_name)
        .with_namespace(&cli.lease_namespace)
        .with_identity(&cli.identity)
        // One field manager per replica: server-side apply then refuses a second replica's
        // claim of a free Lease (409) instead of letting both believe they lead.
        .with_field_manager(format!("{FIELD_MANAGER}-lease-{}", cli.identity))
        .with_duration(cli.lease_duration)
        // Renew a third of the duration before expiry (the crate needs 0 < grace < duration).
        .with_grace((cli.lease_duration / 3).max(1))
        .build()
        .await?;
    let (leader, lease_task) = manager.watch().await;
    ready.store(true, Ordering::Relaxed);
    tracing::info!(identity = %cli.identity, lease = %cli.lease_name, "standing by for the lease");

    // A watch::Ref locks the channel: never hold one across an await, or the lease task
    // cannot report a change.
    let mut became_leader = leader.clone();
    let leading = tokio::select! {
        _ = terminated() => false,
        result = became_leader.wait_for(|is_leader| *is_leader) => result.is_ok(),
    };
    drop(became_leader);
    if leading {
        tracing::info!("leading: starting the controllers");
        let mut lost = leader.clone();
        let shutdown = async move {
            tokio::select! {
                _ = terminated() => {}
                _ = lost.wait_for(|is_leader| !*is_leader) => {}
            }
        };
        controller::run(
            client,
            settings,
            metrics,
            cli.watch_namespace.clone(),
            shutdown,
        )
        .await;
        if !*leader.borrow() {
            tracing::warn!("lost the lease: exiting so the pod restarts as a standby");
        }
    } else {
        tracing::info!("terminating while standing by");
    }
    drop(leader);
    // With every receiver gone the lease task releases the Lease and stops: the standby
    // takes over at once instead of waiting for the Lease to expire.
    match lease_task.await {
        Ok(Ok(_)) => tracing::info!("released the lease"),
        Ok(Err(error)) => tracing::warn!(%error, "releasing the lease"),
        Err(error) => tracing::warn!(%error, "the lease task failed"),
    }
    health.abort();
    Ok(())
}
