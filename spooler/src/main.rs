//! `printfleet-spooler`: the print server, standalone or as one pod of a shard.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;

use printfleet_spooler::accounting::report::ReportArgs;
use printfleet_spooler::app::{App, Settings};
use printfleet_spooler::auth::Authenticator;
use printfleet_spooler::config::{self, Config};
use printfleet_spooler::dispatch::{self, DispatchHandle};
use printfleet_spooler::job::Claimer;
use printfleet_spooler::metrics::Metrics;
use printfleet_spooler::store::{JobStore, LocalDocumentStore, SqliteJobStore};

/// The job database in the state directory.
const DATABASE_FILE: &str = "jobs.sqlite";

/// The identity of the only dispatcher of a standalone spooler.
const STANDALONE_CLAIMER: &str = "standalone";

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
    let store = SqliteJobStore::open(&cli.state_dir.join(DATABASE_FILE))
        .with_context(|| format!("opening the job store in {}", cli.state_dir.display()))?;
    let documents = LocalDocumentStore::open(cli.state_dir.join("documents"))
        .with_context(|| format!("opening the document store in {}", cli.state_dir.display()))?;
    let store: Arc<dyn JobStore> = Arc::new(store);

    // A new epoch per start fences anything a previous run of this process left claimed;
    // those jobs go back to pending and are the only ones that may print twice.
    let claimer = Claimer {
        id: STANDALONE_CLAIMER.into(),
        epoch: store.next_epoch(STANDALONE_CLAIMER).await?,
    };
    let recovered = store.recover(&claimer).await?;
    if !recovered.is_empty() {
        tracing::warn!(jobs = ?recovered, "jobs that were being sent when the spooler stopped will be sent again");
    }

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
        documents: Arc::new(documents),
        dispatch: DispatchHandle::new(),
        metrics: Metrics::new(),
        auth: Authenticator::new(secrets_dir),
    });

    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    tracing::info!(listen = %cli.listen, state_dir = %cli.state_dir.display(), "printfleet spooler ready");

    let (stop_dispatch, dispatch_stopped) = tokio::sync::watch::channel(false);
    let dispatcher = tokio::spawn(dispatch::run(app.clone(), claimer, dispatch_stopped));
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
    tracing::info!("stopped");
    Ok(())
}

/// `printfleet-spooler report ...`: an accounting report from the state directory.
fn report(args: ReportArgs) -> anyhow::Result<()> {
    init_logging(LogFormat::Text);
    let database = args.state_dir.join(DATABASE_FILE);
    let text = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(printfleet_spooler::accounting::report::run_command(
            &args, &database,
        ))?;
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
