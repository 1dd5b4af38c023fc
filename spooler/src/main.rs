//! `printfleet-spooler`: the print server, standalone or as one pod of a shard.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use tokio::sync::watch;

use printfleet_spooler::accounting::report::ReportArgs;
use printfleet_spooler::app::{App, Settings};
use printfleet_spooler::auth::Authenticator;
use printfleet_spooler::cluster::leadership::{self, LeaseSettings};
use printfleet_spooler::cluster::{self, ClusterOptions, DispatchRole};
use printfleet_spooler::config::{self, Config};
use printfleet_spooler::dispatch::{self, DispatchHandle};
use printfleet_spooler::job::{Claimer, JobId};
use printfleet_spooler::metrics::Metrics;
use printfleet_spooler::store::{
    DocumentStore, JobStore, LocalDocumentStore, ObjectDocumentStore, SqliteJobStore,
};

/// The job database in the state directory.
const DATABASE_FILE: &str = "jobs.sqlite";

#[derive(Parser, Debug)]
#[command(
    name = "printfleet-spooler",
    version,
    about = "printfleet print server"
)]
struct Cli {
    /// YAML file of Printer, PrintQueue and AccountingPolicy documents (watched for changes).
    #[arg(long, env = "PRINTFLEET_CONFIG")]
    config: PathBuf,
    /// Address to serve IPP, health and metrics on.
    #[arg(long, env = "PRINTFLEET_LISTEN", default_value = "127.0.0.1:8631")]
    listen: SocketAddr,
    /// Directory for the job database and spooled documents.
    #[arg(long, env = "PRINTFLEET_STATE_DIR", default_value = "printfleet-state")]
    state_dir: PathBuf,
    /// Where Secret references resolve: <dir>/<secret name>/<key> [default: <config dir>/secrets].
    #[arg(long, env = "PRINTFLEET_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
    /// Largest document accepted, in bytes, unless a queue sets its own.
    #[arg(long, env = "PRINTFLEET_MAX_DOCUMENT_SIZE", default_value_t = 512 * 1024 * 1024)]
    max_document_size: u64,
    /// Documents up to this many bytes are committed with the job row (group commit).
    #[arg(long, env = "PRINTFLEET_INLINE_DOCUMENT_SIZE", default_value_t = 64 * 1024)]
    inline_document_size: usize,
    /// Seconds a client may stay silent in the middle of a request.
    #[arg(long, env = "PRINTFLEET_IDLE_TIMEOUT", default_value_t = 30)]
    idle_timeout: u64,
    /// Log format.
    #[arg(long, env = "PRINTFLEET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// PEM certificate chain: serve IPPS (IPP over TLS) instead of plain IPP.
    #[arg(long, env = "PRINTFLEET_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "PRINTFLEET_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Dispatch only the queues whose `printfleet.io/shard` annotation names this shard
    /// (set by the operator); without it, every queue.
    #[arg(long, env = "PRINTFLEET_SHARD")]
    shard: Option<String>,
    /// PostgreSQL DSN of the job store shared by a shard's pods [default: SQLite in
    /// --state-dir].
    #[arg(long, env = "PRINTFLEET_STORE_DSN", hide_env_values = true)]
    store_dsn: Option<String>,
    /// Seconds to wait at start-up for an unreachable PostgreSQL before giving up.
    #[arg(long, env = "PRINTFLEET_STORE_CONNECT_TIMEOUT", default_value_t = 60)]
    store_connect_timeout: u64,
    /// `s3://bucket[/prefix]` of the document store shared by a shard's pods [default: the
    /// documents directory in --state-dir].
    #[arg(long, env = "PRINTFLEET_DOCUMENTS_URL")]
    documents_url: Option<String>,
    /// S3-compatible endpoint (`http://minio:9000`) [default: AWS, or AWS_ENDPOINT].
    #[arg(long, env = "PRINTFLEET_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION, else us-east-1].
    #[arg(long, env = "PRINTFLEET_S3_REGION")]
    s3_region: Option<String>,
    /// Mounted Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY [default: the
    /// environment].
    #[arg(long, env = "PRINTFLEET_S3_CREDENTIALS_DIR")]
    s3_credentials_dir: Option<PathBuf>,
    /// This pod's dispatcher identity [default: the host (pod) name with --store-dsn].
    #[arg(long, env = "PRINTFLEET_CLAIMER_ID")]
    claimer_id: Option<String>,
    /// How many pods run this shard (more than one needs --store-dsn, --documents-url and
    /// --shard-lease).
    #[arg(long, env = "PRINTFLEET_REPLICAS", default_value_t = 1)]
    replicas: u32,
    /// Dispatch --shard only while holding this `coordination.k8s.io/v1` Lease (set by the
    /// operator). The Kubernetes API is the pod's service account, else KUBECONFIG.
    #[arg(long, env = "PRINTFLEET_SHARD_LEASE")]
    shard_lease: Option<String>,
    /// Namespace of the shard Lease [default: the client's, a pod's own].
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a leader holds the shard Lease without renewing it; a leader that cannot
    /// renew stops dispatching before then.
    #[arg(long, env = "PRINTFLEET_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "report")
    {
        return report(ReportArgs::parse_from(std::env::args_os().skip(1)));
    }
    let cli = Cli::parse();
    init_logging(cli.log_format);
    cli.cluster_options().check()?;
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => bail!("{error}"),
    };
    if cli.check {
        println!(
            "{}: {} printers, {} queues, {} accounting policies: ok",
            cli.config.display(),
            config.printers.len(),
            config.queues.len(),
            config.policies.len()
        );
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(cli, config))
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    let secrets_dir = cli
        .secrets_dir
        .clone()
        .unwrap_or_else(|| default_secrets_dir(&cli.config));
    std::fs::create_dir_all(&cli.state_dir)
        .with_context(|| format!("creating the state directory {}", cli.state_dir.display()))?;
    let cluster = cli.cluster_options();
    let store = open_job_store(
        cli.store_dsn.as_deref(),
        &cli.state_dir,
        Duration::from_secs(cli.store_connect_timeout),
    )
    .await?;
    let documents = open_document_store(&cli, &cluster)?;

    let claimer_id = cluster.claimer_id(cluster::host_name());
    let role = cluster.dispatch_role();

    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => Some(printfleet_spooler::http::tls_acceptor(cert, key)?),
        _ => None,
    };
    let (config_rx, _watcher) = config::watch(cli.config.clone(), Arc::new(config));
    let app = Arc::new(App {
        settings: Settings {
            listen: cli.listen,
            state_dir: cli.state_dir.clone(),
            secrets_dir: secrets_dir.clone(),
            max_document_bytes: cli.max_document_size,
            inline_document_bytes: cli.inline_document_size,
            idle_timeout: Duration::from_secs(cli.idle_timeout.max(1)),
            tls: tls.is_some(),
            shard: cli.shard.clone(),
        },
        config: config_rx,
        store,
        documents,
        dispatch: DispatchHandle::new(),
        metrics: Metrics::new(),
        auth: Authenticator::new(secrets_dir),
        salt: Default::default(),
    });

    let listener = printfleet_spooler::http::listen(cli.listen)
        .with_context(|| format!("listening on {}", cli.listen))?;
    tracing::info!(
        listen = %cli.listen,
        state_dir = %cli.state_dir.display(),
        claimer = %claimer_id,
        ?role,
        "printfleet spooler ready"
    );

    let (stop_dispatch, dispatch_stopped) = watch::channel(false);
    let (release_lease, lease_released) = watch::channel(false);
    let mut lease_task = None;
    let dispatcher = match role {
        DispatchRole::Standalone => {
            let claimer = standalone_takeover(app.store.as_ref(), claimer_id.clone()).await?;
            start_dispatcher(dispatch::run(app.clone(), claimer, dispatch_stopped))?
        }
        DispatchRole::Shard { shard } => {
            let (claimer, recovered) = app.store.lead_shard(&shard, &claimer_id).await?;
            warn_recovered(&recovered);
            start_dispatcher(dispatch::run(app.clone(), claimer, dispatch_stopped))?
        }
        DispatchRole::LeasedShard { shard, lease } => {
            let settings = LeaseSettings {
                name: lease,
                namespace: cli.lease_namespace.clone(),
                identity: claimer_id.clone(),
                duration_seconds: cli.lease_duration,
            };
            let client = leadership::lease_client(&settings).await?;
            let (leading_tx, leading) = watch::channel(false);
            lease_task = Some(tokio::spawn(leadership::hold_lease(
                client,
                settings,
                leading_tx,
                lease_released,
            )));
            start_dispatcher(leadership::dispatch_while_leading(
                app.clone(),
                shard,
                claimer_id,
                leading,
                dispatch_stopped,
            ))?
        }
    };
    printfleet_spooler::http::serve(app.clone(), listener, tls, shutdown_signal()).await?;

    // Jobs not yet sent stay pending in the store for the next start.
    let _ = stop_dispatch.send(true);
    if tokio::time::timeout(Duration::from_secs(30), dispatcher)
        .await
        .is_err()
    {
        tracing::warn!(
            "a printer was still receiving a job at shutdown; it will be sent again at the next start"
        );
    }
    // Only now may a standby lead: this pod sends nothing more.
    let _ = release_lease.send(true);
    if let Some(task) = lease_task {
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// A standalone spooler's dispatcher identity: a new epoch per start fences anything a
/// previous run left claimed; those jobs go back to pending and are the only ones that may
/// print twice.
async fn standalone_takeover(store: &dyn JobStore, claimer_id: String) -> anyhow::Result<Claimer> {
    let claimer = Claimer {
        epoch: store.next_epoch(&claimer_id).await?,
        id: claimer_id,
        shard: None,
    };
    warn_recovered(&store.recover(&claimer).await?);
    Ok(claimer)
}

fn warn_recovered(recovered: &[JobId]) {
    if !recovered.is_empty() {
        tracing::warn!(jobs = ?recovered, "jobs that were being sent when their dispatcher stopped will be sent again");
    }
}

/// Dispatch runs on a runtime of its own, on a thread of its own: under a flood of
/// submissions the operating system still gives it its share of the CPU, where on the
/// submissions' runtime its few tasks would queue behind every connection's. The receiver
/// hears when dispatch has stopped.
fn start_dispatcher(
    dispatch: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the dispatch runtime")?;
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("dispatch".into())
        .spawn(move || {
            runtime.block_on(dispatch);
            let _ = done.send(());
        })
        .context("starting the dispatch thread")?;
    Ok(finished)
}

impl Cli {
    fn cluster_options(&self) -> ClusterOptions {
        ClusterOptions {
            store_dsn: self.store_dsn.clone(),
            documents_url: self.documents_url.clone(),
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_credentials_dir: self.s3_credentials_dir.clone(),
            claimer_id: self.claimer_id.clone(),
            replicas: self.replicas,
            shard: self.shard.clone(),
            shard_lease: self.shard_lease.clone(),
        }
    }
}

/// PostgreSQL when a DSN is given (waiting for it up to `budget`), else SQLite in the
/// state directory.
async fn open_job_store(
    store_dsn: Option<&str>,
    state_dir: &Path,
    budget: Duration,
) -> anyhow::Result<Arc<dyn JobStore>> {
    match store_dsn {
        Some(dsn) => Ok(Arc::new(cluster::connect_postgres(dsn, budget).await?)),
        None => {
            let store = SqliteJobStore::open(&state_dir.join(DATABASE_FILE))
                .with_context(|| format!("opening the job store in {}", state_dir.display()))?;
            Ok(Arc::new(store))
        }
    }
}

/// S3 when a documents URL is given, else the documents directory in the state directory.
fn open_document_store(
    cli: &Cli,
    cluster: &ClusterOptions,
) -> anyhow::Result<Arc<dyn DocumentStore>> {
    match cluster.s3_settings() {
        Some(settings) => Ok(Arc::new(
            ObjectDocumentStore::connect(&settings).context("opening the object store")?,
        )),
        None => {
            let documents = LocalDocumentStore::open(cli.state_dir.join("documents"))
                .with_context(|| {
                    format!("opening the document store in {}", cli.state_dir.display())
                })?;
            Ok(Arc::new(documents))
        }
    }
}

/// `printfleet-spooler report ...`: an accounting report from the state directory.
fn report(args: ReportArgs) -> anyhow::Result<()> {
    init_logging(LogFormat::Text);
    let text = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            let store = open_job_store(
                args.store_dsn.as_deref(),
                &args.state_dir,
                Duration::from_secs(10),
            )
            .await?;
            let text =
                printfleet_spooler::accounting::report::run_command(&args, store.as_ref()).await?;
            anyhow::Ok(text)
        })?;
    print!("{text}");
    Ok(())
}

/// SIGTERM (Kubernetes, systemd) or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested");
}

fn default_secrets_dir(config: &Path) -> PathBuf {
    config
        .parent()
        .map(|dir| dir.join("secrets"))
        .unwrap_or_else(|| PathBuf::from("secrets"))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a log file or a collector gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
