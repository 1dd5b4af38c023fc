//! printfleet's load generator and benchmark (not a test).
//!
//! `loadgen run --url ipp://127.0.0.1:8631/ipp/print/demo --watch-dir /tmp/printfleet-demo`
//! loads one IPP server; `loadgen bench` starts the spooler (printing to a raw 9100 sink)
//! and CUPS's cupsd (a raw queue on /dev/null) on this machine and runs the same load
//! against each, printing the figures side by side:
//!
//!     cargo run --release -p printfleet-e2e --bin loadgen -- bench --clients 32 --doc-size 65536 --seconds 10
//!
//! With `--cluster`, three spooler pods of one shard run the same load too: on PostgreSQL
//! (fsyncing its commits) and an S3-protocol server (moto), the clients spread over the
//! pods, the shard's Lease on the Kubernetes API double; then the leader is killed and the
//! time until another pod prints is measured.
//!
//! With `--accounting`, the spooler also runs a second time with an AccountingPolicy on its
//! queue (prices and a per-user quota no run reaches), so admission's accounting cost (page
//! counting, pricing, the atomic quota check and the ledger entry) shows side by side.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use printfleet_e2e::cluster::Shard;
use printfleet_e2e::spooler::{config_yaml, delivered_files, printer_yaml, queue_yaml};
use printfleet_e2e::stats::{percentile, proc_status_kib, spread, tree_cpu_seconds};
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
        /// Also bench the spooler with accounting on its queue, next to accounting off.
        #[arg(long)]
        accounting: bool,
        /// Also bench three pods of one shard on PostgreSQL and S3 (moto), the shard's
        /// Lease on the Kubernetes API double, and time a takeover after kill -9.
        #[arg(long)]
        cluster: bool,
        /// Run the whole comparison this many times, one round after the other, and end
        /// with each figure's median and range over the rounds. This machine's figures
        /// drift from minute to minute; rounds spread the drift over every server.
        #[arg(long, default_value_t = 1)]
        rounds: usize,
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
    /// The backlog's delivery once the load stopped (standalone spooler and cupsd).
    drained: Option<Drained>,
    rss_kib: Option<u64>,
    peak_rss_kib: Option<u64>,
    /// CPU time the server side used during the run (for a cluster: every pod, PostgreSQL
    /// and the S3 server).
    cpu_seconds: Option<f64>,
}

impl Figures {
    fn accepted_per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64()
    }

    fn delivered_per_second(&self) -> Option<f64> {
        self.delivered
            .map(|delivered| delivered as f64 / self.elapsed.as_secs_f64())
    }

    fn drained_per_second(&self) -> Option<f64> {
        let drained = self.drained.as_ref()?;
        let seconds = drained.elapsed.as_secs_f64();
        (seconds > 0.0).then(|| drained.jobs as f64 / seconds)
    }

    fn cpu_ms_per_accepted_job(&self) -> Option<f64> {
        let cpu = self.cpu_seconds?;
        (self.accepted > 0).then(|| cpu * 1000.0 / self.accepted as f64)
    }

    fn latency_ms(&self, p: f64) -> Option<f64> {
        percentile(&self.latencies, p).map(|latency| latency.as_secs_f64() * 1000.0)
    }
}

/// Outcome of one client's run: (latencies of accepted jobs, errors, first error seen).
type ClientOutcome = (Vec<Duration>, usize, Option<String>);

/// `load.clients` clients submit Print-Job back to back until `load.seconds` pass; client
/// `i` submits to `uris[i % uris.len()]`.
async fn generate(uris: &[String], load: Load) -> anyhow::Result<(Vec<Duration>, usize, Duration)> {
    let document = Bytes::from(documents::pdf("printfleet loadgen", load.doc_size));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(load.seconds);
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..load.clients {
        let document = document.clone();
        let mut connection = IppConnection::new(&uris[client % uris.len()])?;
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
        eprintln!(
            "{}: {errors} failed submissions, first: {error}",
            uris.join(", ")
        );
    }
    latencies.sort();
    Ok((latencies, errors, elapsed))
}

/// Jobs delivered after the load stopped, and how long until the last of them.
struct Drained {
    jobs: usize,
    elapsed: Duration,
}

/// Longest wait for a backlog to reach the printer after the load stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Once the load has stopped, waits (up to `DRAIN_LIMIT`) until `delivered` (a count of
/// delivered jobs, asked of the printer or the server) reaches `accepted`: with nothing
/// else to do, how fast the server empties its queue.
async fn drain(
    accepted: usize,
    mut delivered: impl AsyncFnMut() -> anyhow::Result<usize>,
) -> anyhow::Result<Drained> {
    let start = Instant::now();
    let first = delivered().await?;
    let (mut last, mut last_at) = (first, start);
    while last < accepted && start.elapsed() < DRAIN_LIMIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = delivered().await?;
        if now != last {
            (last, last_at) = (now, Instant::now());
        }
    }
    Ok(Drained {
        jobs: last.saturating_sub(first),
        elapsed: last_at - start,
    })
}

/// What a run measured, with the server's process `pid` for its memory figures.
fn figures(
    (latencies, errors, elapsed): (Vec<Duration>, usize, Duration),
    delivered: Option<usize>,
    pid: Option<u32>,
    cpu_seconds: Option<f64>,
) -> Figures {
    Figures {
        accepted: latencies.len(),
        errors,
        elapsed,
        latencies,
        delivered,
        drained: None,
        rss_kib: pid.and_then(|pid| proc_status_kib(pid, "VmRSS")),
        peak_rss_kib: pid.and_then(|pid| proc_status_kib(pid, "VmHWM")),
        cpu_seconds,
    }
}

/// CPU seconds used so far by the processes `pids` and their children.
fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|pid| tree_cpu_seconds(*pid)).sum()
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

/// A column of the comparison: a server's name and what its run measured.
struct Column {
    name: &'static str,
    figures: Figures,
}

/// A ratio column: (heading, index of the numerator column, index of the denominator).
type Ratio = (&'static str, usize, usize);

/// One round of the bench: each server's column, the ratios between them, and what the
/// cluster run measured besides (with `--cluster`).
struct Comparison {
    columns: Vec<Column>,
    ratios: Vec<Ratio>,
    cluster: Option<ClusterExtras>,
}

/// Runs each server's load in turn: the standalone spooler, with `--accounting` the spooler
/// with a policy, with `--cluster` three pods, then cupsd.
async fn bench_round(load: Load, accounting: bool, cluster: bool) -> anyhow::Result<Comparison> {
    let mut columns = vec![Column {
        name: "printfleet",
        figures: bench_spooler(load, None)
            .await
            .context("benchmarking printfleet")?,
    }];
    let mut ratios: Vec<Ratio> = Vec::new();
    if accounting {
        columns.push(Column {
            name: "+accounting",
            figures: bench_spooler(load, Some(BENCH_POLICY))
                .await
                .context("benchmarking printfleet with accounting")?,
        });
        ratios.push(("accounting/off", 1, 0));
    }
    let mut extras = None;
    if cluster {
        let (figures, cluster_extras) = bench_cluster(load)
            .await
            .context("benchmarking three pods on PostgreSQL and S3")?;
        columns.push(Column {
            name: "3 pods",
            figures,
        });
        ratios.push(("3 pods/standalone", columns.len() - 1, 0));
        extras = Some(cluster_extras);
    }
    columns.push(Column {
        name: "cupsd",
        figures: bench_cupsd(load).await.context("benchmarking cupsd")?,
    });
    ratios.push(("printfleet/cupsd", 0, columns.len() - 1));
    Ok(Comparison {
        columns,
        ratios,
        cluster: extras,
    })
}

/// One figure read from a server's run.
type Figure = fn(&Figures) -> Option<f64>;

/// The comparison's rows: label, figure, and whether the summary over rounds repeats it.
const ROWS: [(&str, Figure, bool); 9] = [
    ("accepted jobs/s", |f| Some(f.accepted_per_second()), true),
    ("delivered jobs/s", Figures::delivered_per_second, true),
    ("drained jobs/s (after)", Figures::drained_per_second, true),
    ("p50 latency ms", |f| f.latency_ms(50.0), false),
    ("p99 latency ms", |f| f.latency_ms(99.0), true),
    ("failed submissions", |f| Some(f.errors as f64), false),
    (
        "CPU ms/accepted job",
        Figures::cpu_ms_per_accepted_job,
        true,
    ),
    ("RSS MiB (end)", |f| mib(f.rss_kib), false),
    ("peak RSS MiB", |f| mib(f.peak_rss_kib), false),
];

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|kib| kib as f64 / 1024.0)
}

/// The rates whose ratios the summary over rounds gives.
const RATES: [(&str, Figure); 3] = [
    ("accepted", |f| Some(f.accepted_per_second())),
    ("delivered", Figures::delivered_per_second),
    ("drained", Figures::drained_per_second),
];

/// Each server's main figures and each ratio of its rates as median (least to greatest)
/// over `rounds`; every round has the same columns.
fn print_rounds(rounds: &[Comparison]) {
    let Some(first) = rounds.first() else {
        return;
    };
    let over_rounds = |value: &dyn Fn(&Comparison) -> Option<f64>| {
        let values: Vec<f64> = rounds.iter().filter_map(value).collect();
        spread(&values).map_or_else(
            || "-".to_string(),
            |s| format!("{:.2} ({:.2} to {:.2})", s.median, s.min, s.max),
        )
    };
    println!("\nover {} rounds: median (least to greatest)", rounds.len());
    for (index, column) in first.columns.iter().enumerate() {
        for (label, value, _) in ROWS.into_iter().filter(|&(_, _, summed)| summed) {
            let figure = over_rounds(&|round| value(&round.columns[index].figures));
            println!("{:<14}{label:<24}{figure}", column.name);
        }
    }
    for &(name, numerator, denominator) in &first.ratios {
        for (rate, value) in RATES {
            let ratio = over_rounds(&|round| {
                let of = |index: usize| value(&round.columns[index].figures);
                let denominator = of(denominator).filter(|&rate| rate > 0.0)?;
                Some(of(numerator)? / denominator)
            });
            println!("{:<38}{ratio}", format!("{name} {rate}"));
        }
    }
    if first.cluster.is_some() {
        let resumed = over_rounds(&|round| {
            round
                .cluster
                .as_ref()
                .map(|extras| extras.resumed_after.as_secs_f64())
        });
        println!("{:<38}{resumed}", "3 pods: resumed after kill -9, s");
    }
}

fn print_comparison(load: Load, comparison: &Comparison) {
    let Comparison {
        columns,
        ratios,
        cluster,
    } = comparison;
    println!(
        "\n{} clients, {} byte PDF, {} s per server\n",
        load.clients, load.doc_size, load.seconds
    );
    let mut heading = format!("{:<22}", "");
    for column in columns {
        heading.push_str(&format!("{:>14}", column.name));
    }
    for (name, _, _) in ratios {
        heading.push_str(&format!("{name:>18}"));
    }
    println!("{heading}");
    let row = |label: &str, value: Figure| {
        let values: Vec<Option<f64>> = columns.iter().map(|c| value(&c.figures)).collect();
        let mut line = format!("{label:<22}");
        for value in &values {
            line.push_str(&format!("{:>14}", format_option(*value)));
        }
        for &(_, numerator, denominator) in ratios {
            let ratio = match (values[numerator], values[denominator]) {
                (Some(numerator), Some(denominator)) if denominator > 0.0 => {
                    format!("{:.2}x", numerator / denominator)
                }
                _ => "-".to_string(),
            };
            line.push_str(&format!("{ratio:>18}"));
        }
        println!("{line}");
    };
    for (label, value, _) in ROWS {
        row(label, value);
    }
    if let (Some(extras), Some(pods)) = (cluster, columns.iter().find(|c| c.name == "3 pods")) {
        let accepted = pods.figures.accepted.max(1) as f64;
        println!(
            "\n3 pods: CPU ms/accepted job of the pods alone {:.2} (the rest is PostgreSQL and the S3 server)",
            extras.pods_cpu_seconds * 1000.0 / accepted
        );
        println!(
            "3 pods: dispatch resumed {:.2} s after kill -9 of the leader (Lease {BENCH_LEASE_SECONDS} s)",
            extras.resumed_after.as_secs_f64()
        );
    }
}

/// The bench queue's AccountingPolicy with `--accounting`: every price set, and a per-user
/// quota far beyond what a run spends, so every admission prices the document and checks
/// the quota but none is refused.
const BENCH_POLICY: &str = "apiVersion: printfleet.io/v1alpha1\nkind: AccountingPolicy\nmetadata:\n  name: bench\nspec:\n  currency: EUR\n  prices:\n    monoImpression: \"0.05\"\n    colorImpression: \"0.20\"\n    perJob: \"0.10\"\n    duplexFactor: \"0.8\"\n  quotas:\n    - allUsers: true\n      period: day\n      maxAmount: \"1000000000.00\"\n      action: reject\n";

/// Benches the spooler printing to a raw sink, with `policy` (an AccountingPolicy document
/// named `bench`) on its queue when given.
async fn bench_spooler(load: Load, policy: Option<&str>) -> anyhow::Result<Figures> {
    let sink = RawSink::start(0)?;
    let mut documents = vec![printer_yaml("bench-sink", &sink.uri())];
    match policy {
        Some(policy) => {
            documents.push(queue_yaml(
                "bench",
                &["bench-sink"],
                "  accountingPolicy: bench\n",
            ));
            documents.push(policy.to_string());
        }
        None => documents.push(queue_yaml("bench", &["bench-sink"], "")),
    }
    let config = config_yaml(&documents);
    let spooler = tokio::task::block_in_place(|| Spooler::start(&config))?;
    let pid = spooler.pid().context("the spooler is running")?;
    let cpu_before = cpu_of(&[pid]);
    let run = generate(&[spooler.queue_uri("bench")], load).await?;
    let cpu = cpu_of(&[pid]) - cpu_before;
    let delivered = sink.completed_jobs();
    let mut figures = figures(run, Some(delivered), Some(pid), Some(cpu));
    let drained = drain(figures.accepted, async || Ok(sink.completed_jobs())).await?;
    figures.drained = Some(drained);
    Ok(figures)
}

async fn bench_cupsd(load: Load) -> anyhow::Result<Figures> {
    let cupsd = tokio::task::block_in_place(Cupsd::start)?;
    let uri = cupsd.queue_uri(printfleet_e2e::cupsd::NULL_QUEUE);
    let cpu_before = cpu_of(&[cupsd.pid()]);
    let run = generate(std::slice::from_ref(&uri), load).await?;
    let cpu = cpu_of(&[cupsd.pid()]) - cpu_before;
    // cupsd keeps no history here: what it accepted and no longer has queued, it printed.
    let accepted = run.0.len();
    let mut connection = IppConnection::new(&uri)?;
    let mut printed = async || -> anyhow::Result<usize> {
        let queued = connection
            .get_printer_attributes(&["queued-job-count"])
            .await?
            .integer("queued-job-count")
            .context("cupsd did not say how many jobs it has queued")?;
        Ok(accepted.saturating_sub(usize::try_from(queued).unwrap_or(0)))
    };
    let delivered = printed().await?;
    let mut figures = figures(run, Some(delivered), Some(cupsd.pid()), Some(cpu));
    figures.drained = Some(drain(accepted, printed).await?);
    Ok(figures)
}

/// Seconds a leader holds the bench shard's Lease without renewing it.
const BENCH_LEASE_SECONDS: u64 = 4;

/// What the cluster run measured besides the load figures.
struct ClusterExtras {
    /// CPU of the three pods alone (without PostgreSQL and the S3 server).
    pods_cpu_seconds: f64,
    /// From the kill -9 of the leader to the first job another pod sent to the printer.
    resumed_after: Duration,
}

/// Benches three pods of one shard on PostgreSQL (fsyncing its commits) and S3 (moto),
/// the leader printing to a raw sink, the clients spread over the pods; then kills the
/// leader and times the takeover.
async fn bench_cluster(load: Load) -> anyhow::Result<(Figures, ClusterExtras)> {
    let shard = Shard::start("bench-shard", BENCH_LEASE_SECONDS, true).await?;
    let sink = RawSink::start(0)?;
    let config = config_yaml(&[
        printer_yaml("bench-sink", &sink.uri()),
        shard.queue_yaml("bench", &["bench-sink"], ""),
    ]);
    let mut pods = Vec::new();
    for name in ["pod-0", "pod-1", "pod-2"] {
        pods.push((
            name,
            tokio::task::block_in_place(|| shard.pod(&config, name, 3))?,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while shard.leader().is_none() {
        if Instant::now() > deadline {
            bail!("no pod took the shard Lease");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pod_pids: Vec<u32> = pods.iter().filter_map(|(_, pod)| pod.pid()).collect();
    let store_pids: Vec<u32> = [shard.postgres.pid(), Some(shard.moto.pid())]
        .into_iter()
        .flatten()
        .collect();
    let (pods_before, stores_before) = (cpu_of(&pod_pids), cpu_of(&store_pids));
    let uris: Vec<String> = pods.iter().map(|(_, pod)| pod.queue_uri("bench")).collect();
    let run = generate(&uris, load).await?;
    let pods_cpu = cpu_of(&pod_pids) - pods_before;
    let stores_cpu = cpu_of(&store_pids) - stores_before;
    let delivered = sink.completed_jobs();
    let figures = figures(run, Some(delivered), None, Some(pods_cpu + stores_cpu));

    // Let the leader drain what it has, then kill it and submit to the others until one
    // of them prints.
    let leader = shard.leader().context("the shard has a leader")?;
    let drained = Instant::now() + Duration::from_secs(60);
    while sink.completed_jobs() < figures.accepted && Instant::now() < drained {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, killed) = pods
        .iter_mut()
        .find(|(name, _)| *name == leader)
        .context("the leader is one of the pods")?;
    killed.kill9();
    let killed_at = Instant::now();
    let standby_uri = pods
        .iter()
        .find(|(name, _)| *name != leader)
        .map(|(_, pod)| pod.queue_uri("bench"))
        .context("a standby")?;
    let document = Bytes::from(documents::pdf("printfleet takeover", 1024));
    let mut connection = IppConnection::new(&standby_uri)?;
    let resumed_at = loop {
        if let Some(started) = sink
            .deliveries()
            .iter()
            .map(|delivery| delivery.started)
            .filter(|started| *started > killed_at)
            .min()
        {
            break started;
        }
        if killed_at.elapsed() > Duration::from_secs(60) {
            bail!("no pod printed within 60 s of the leader's kill");
        }
        let _ = connection
            .print_job("loadgen", "takeover", "application/pdf", document.clone())
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Ok((
        figures,
        ClusterExtras {
            pods_cpu_seconds: pods_cpu,
            resumed_after: resumed_at - killed_at,
        },
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
            let run = generate(&[url], load).await?;
            let delivered = watch_dir
                .as_deref()
                .zip(before)
                .map(|(dir, before)| delivered_files(dir).len().saturating_sub(before));
            print_single(&figures(run, delivered, None, None));
        }
        Mode::Bench {
            load,
            accounting,
            cluster,
            rounds,
        } => {
            if load.clients == 0 {
                bail!("--clients must be at least 1");
            }
            if rounds == 0 {
                bail!("--rounds must be at least 1");
            }
            let mut done = Vec::new();
            for round in 1..=rounds {
                if rounds > 1 {
                    println!("\nround {round} of {rounds}");
                }
                let comparison = bench_round(load, accounting, cluster).await?;
                print_comparison(load, &comparison);
                done.push(comparison);
            }
            if rounds > 1 {
                print_rounds(&done);
            }
        }
    }
    Ok(())
}
