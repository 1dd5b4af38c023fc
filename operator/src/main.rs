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
use printfleet_operator::desired::{FIELD_MANAGER, SpoolerSettings};
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
    #[arg(long, env = "PRINTFLEET_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Log as JSON lines.
    #[arg(long, env = "PRINTFLEET_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    telemetry::init(cli.log_json);
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
        },
        probe_interval: Duration::from_secs(cli.probe_interval),
        service_monitors,
        instance: cli.identity.clone(),
        ..Settings::default()
    };

    let manager = LeaseManagerBuilder::new(client.clone(), &cli.lease_name)
        .with_namespace(&cli.lease_namespace)
        .with_identity(&cli.identity)
        .with_field_manager(FIELD_MANAGER)
        .with_duration(cli.lease_duration)
        .with_grace(cli.lease_duration / 3)
        .build()
        .await?;
    let (leader, lease_task) = manager.watch().await;
    ready.store(true, Ordering::Relaxed);
    tracing::info!(identity = %cli.identity, lease = %cli.lease_name, "standing by for the lease");

    let terminate = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut became_leader = leader.clone();
    tokio::select! {
        _ = terminate => {
            tracing::info!("terminating while standing by");
        }
        result = became_leader.wait_for(|is_leader| *is_leader) => {
            if result.is_ok() {
                tracing::info!("leading: starting the controllers");
                let mut lost = leader.clone();
                let shutdown = async move {
                    let signal = async { let _ = tokio::signal::ctrl_c().await; };
                    let lost = async move { let _ = lost.wait_for(|is_leader| !*is_leader).await; };
                    tokio::select! { _ = signal => {}, _ = lost => {} }
                };
                controller::run(client, settings, metrics, cli.watch_namespace.clone(), shutdown).await;
            }
        }
    }
    let still_leader = *leader.borrow();
    drop(leader);
    // With the channel closed the lease task stops; releasing hands over at once.
    if let Ok(Ok(manager)) = lease_task.await
        && let Err(error) = manager.release().await
    {
        tracing::warn!(%error, "releasing the lease");
    }
    health.abort();
    if !still_leader {
        tracing::warn!("lost the lease");
    }
    Ok(())
}
