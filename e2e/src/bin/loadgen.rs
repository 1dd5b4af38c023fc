//! printfleet's load generator and benchmark (not a test).
//!
//! `loadgen run --url ipp://127.0.0.1:8631/ipp/print/demo --watch-dir /tmp/printfleet-demo`
//! loads one IPP server; `loadgen bench` starts the spooler (printing to a raw 9100 sink)
//! and CUPS's cupsd (a raw queue on /dev/null) on this machine and runs the same load
//! against each, printing the figures side by side:
//!
//!     cargo run --release -p printfleet-e2e --bin loadgen -- bench --clients 32 --doc-size 65536 --seconds 10

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use printfleet_e2e::spooler::{config_yaml, delivered_files, printer_yaml, queue_yaml};
use printfleet_e2e::stats::{percentile, proc_status_kib};
use printfleet_e2e::{Cupsd, IppConnection, RawSink, Spooler, documents};

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "IPP load generator and printfleet-vs-CUPS benchmark"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Load one IPP server.
    Run {
        /// The queue's IPP URI.
        #[arg(long)]
        url: String,
        /// Count delivered jobs as files appearing in this directory (a file:// printer).
        #[arg(long)]
        watch_dir: Option<std::path::PathBuf>,
        #[command(flatten)]
        load: Load,
    },
    /// Start the spooler and cupsd here and load both the same way.
    Bench {
        #[command(flatten)]
        load: Load,
    },
}

#[derive(Args, Clone, Copy)]
struct Load {
    /// Concurrent clients, each on its own keep-alive connection.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Size of the PDF each Print-Job carries, in bytes.
    #[arg(long, default_value_t = 65536)]
    doc_size: usize,
    /// How long to submit for.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// What one load run measured.
struct Figures {
    accepted: usize,
    errors: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    delivered: Option<usize>,
    rss_kib: Option<u64>,
    peak_rss_kib: Option<u64>,
}

impl Figures {
    fn accepted_per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64()
    }

    fn delivered_per_second(&self) -> Option<f64> {
        self.delivered
            .map(|delivered| delivered as f64 / self.elapsed.as_secs_f64())
    }

    fn latency_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.latencies, p).map(|latency| latency.as_secs_f64() * 1000.0)
    }
}

/// Outcome of one client's run: (latencies of accepted jobs, errors, first error seen).
type ClientOutcome = (Vec<Duration>, usize, Option<String>);

/// `load.clients` clients submit Print-Job back to back until `load.seconds` pass.
async fn generate(uri: &str, load: Load) -> anyhow::Result<(Vec<Duration>, usize, Duration)> {
    let document = Bytes::from(documents::pdf("printfleet loadgen", load.doc_size));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(load.seconds);
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..load.clients {
        let document = document.clone();
        let mut connection = IppConnection::new(uri)?;
        clients.spawn(async move {
            let mut outcome: ClientOutcome = (Vec::new(), 0, None);
            let mut sequence = 0;
            while Instant::now() < deadline {
                sequence += 1;
                let sent = Instant::now();
                let name = format!("loadgen {client}-{sequence}");
                match connection
                    .print_job("loadgen", &name, "application/pdf", document.clone())
                    .await
                {
                    Ok(response) if response.is_success() => outcome.0.push(sent.elapsed()),
                    Ok(response) => {
                        outcome.1 += 1;
                        outcome
                            .2
                            .get_or_insert(format!("IPP status {:#06x}", response.raw_status));
                    }
                    Err(error) => {
                        outcome.1 += 1;
                        outcome.2.get_or_insert(error.to_string());
                        // Do not spin on a refused connection.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            outcome
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(joined) = clients.join_next().await {
        let (client_latencies, client_errors, client_error) =
            joined.context("a client task panicked")?;
        latencies.extend(client_latencies);
        errors += client_errors;
        first_error = first_error.or(client_error);
    }
    let elapsed = start.elapsed();
    if let Some(error) = first_error {
        eprintln!("{uri}: {errors} failed submissions, first: {error}");
    }
    latencies.sort();
    Ok((latencies, errors, elapsed))
}

fn figures(
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
    delivered: Option<usize>,
    pid: Option<u32>,
) -> Figures {
    Figures {
        accepted: latencies.len(),
        errors,
        elapsed,
        latencies,
        delivered,
        rss_kib: pid.and_then(|pid| proc_status_kib(pid, "VmRSS")),
        peak_rss_kib: pid.and_then(|pid| proc_status_kib(pid, "VmHWM")),
    }
}

fn print_single(figures: &Figures) {
    println!("accepted jobs/s   {:>10.1}", figures.accepted_per_second());
    println!("errors            {:>10}", figures.errors);
    println!(
        "p50 latency ms    {:>10}",
        format_option(figures.latency_ms(50.0))
    );
    println!(
        "p99 latency ms    {:>10}",
        format_option(figures.latency_ms(99.0))
    );
    println!(
        "delivered jobs/s  {:>10}",
        format_option(figures.delivered_per_second())
    );
}

fn format_option(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |value| format!("{value:.1}"))
}

fn print_comparison(load: Load, ours: &Figures, cups: &Figures) {
    println!(
        "\n{} clients, {} byte PDF, {} s per server (ratio = printfleet / cupsd)\n",
        load.clients, load.doc_size, load.seconds
    );
    println!(
        "{:<22}{:>14}{:>14}{:>10}",
        "", "printfleet", "cupsd", "ratio"
    );
    let row = |label: &str, ours: Option<f64>, cups: Option<f64>| {
        let ratio = match (ours, cups) {
            (Some(ours), Some(cups)) if cups > 0.0 => format!("{:.2}x", ours / cups),
            _ => "-".to_string(),
        };
        println!(
            "{label:<22}{:>14}{:>14}{ratio:>10}",
            format_option(ours),
            format_option(cups)
        );
    };
    row(
        "accepted jobs/s",
        Some(ours.accepted_per_second()),
        Some(cups.accepted_per_second()),
    );
    row(
        "delivered jobs/s",
        ours.delivered_per_second(),
        cups.delivered_per_second(),
    );
    row(
        "p50 latency ms",
        ours.latency_ms(50.0),
        cups.latency_ms(50.0),
    );
    row(
        "p99 latency ms",
        ours.latency_ms(99.0),
        cups.latency_ms(99.0),
    );
    row(
        "failed submissions",
        Some(ours.errors as f64),
        Some(cups.errors as f64),
    );
    let mib = |kib: Option<u64>| kib.map(|kib| kib as f64 / 1024.0);
    row("RSS MiB (end)", mib(ours.rss_kib), mib(cups.rss_kib));
    row(
        "peak RSS MiB",
        mib(ours.peak_rss_kib),
        mib(cups.peak_rss_kib),
    );
}

async fn bench_spooler(load: Load) -> anyhow::Result<Figures> {
    let sink = RawSink::start(0).await?;
    let config = config_yaml(&[
        printer_yaml("bench-sink", &sink.uri()),
        queue_yaml("bench", &["bench-sink"], ""),
    ]);
    let spooler = tokio::task::block_in_place(|| Spooler::start(&config))?;
    let (latencies, errors, elapsed) = generate(&spooler.queue_uri("bench"), load).await?;
    let delivered = sink.completed_jobs();
    Ok(figures(
        latencies,
        errors,
        elapsed,
        Some(delivered),
        spooler.pid(),
    ))
}

async fn bench_cupsd(load: Load) -> anyhow::Result<Figures> {
    let cupsd = tokio::task::block_in_place(Cupsd::start)?;
    let uri = cupsd.queue_uri(printfleet_e2e::cupsd::NULL_QUEUE);
    let (latencies, errors, elapsed) = generate(&uri, load).await?;
    // cupsd keeps no history here: what it accepted and no longer has queued, it printed.
    let queued = IppConnection::new(&uri)?
        .get_printer_attributes(&["queued-job-count"])
        .await?
        .integer("queued-job-count");
    let delivered = queued.map(|queued| {
        latencies
            .len()
            .saturating_sub(usize::try_from(queued).unwrap_or(0))
    });
    Ok(figures(
        latencies,
        errors,
        elapsed,
        delivered,
        Some(cupsd.pid()),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        Mode::Run {
            url,
            watch_dir,
            load,
        } => {
            if load.clients == 0 {
                bail!("--clients must be at least 1");
            }
            let before = watch_dir.as_deref().map(|dir| delivered_files(dir).len());
            let (latencies, errors, elapsed) = generate(&url, load).await?;
            let delivered = watch_dir
                .as_deref()
                .zip(before)
                .map(|(dir, before)| delivered_files(dir).len().saturating_sub(before));
            print_single(&figures(latencies, errors, elapsed, delivered, None));
        }
        Mode::Bench { load } => {
            if load.clients == 0 {
                bail!("--clients must be at least 1");
            }
            let ours = bench_spooler(load)
                .await
                .context("benchmarking printfleet")?;
            let cups = bench_cupsd(load).await.context("benchmarking cupsd")?;
            print_comparison(load, &ours, &cups);
        }
    }
    Ok(())
}
