//! The real-cluster suite: installs the Helm chart into a cluster, runs a simulated IPP
//! Everywhere printer there, declares a Printer and a PrintQueue, prints one PDF through
//! the spooler Service and checks that the printer completed it.
//!
//! ```sh
//! PRINTFLEET_E2E_KUBECONFIG=$HOME/.kube/config cargo run -p printfleet-e2e --bin cluster-suite
//! ```
//!
//! - The kubeconfig comes from `PRINTFLEET_E2E_KUBECONFIG` (its current context is used);
//!   without it the suite fails, it is never silently skipped.
//! - `helm` and `kubectl` must be on PATH. The cluster must be able to run the operator and
//!   spooler images given (`--operator-image`, `--spooler-image`; with kind, `kind load
//!   docker-image` them first) and to pull `debian:bookworm-slim`, whose pod installs
//!   `cups-ipp-utils` from Debian's mirrors at start.
//! - Steps: (a) `helm upgrade --install`, (b) the ippeveprinter Deployment + Service,
//!   (c) a Printer and a PrintQueue, waited on until Ready, (d) one job printed through a
//!   `kubectl port-forward` to the spooler Service and waited on until completed, (e) the
//!   queue's status and the printer's spool checked. Each step has a time limit and its
//!   errors name it.
//! - At the end, pass or fail, the release is uninstalled and the namespace deleted, unless
//!   `--keep`. Use a namespace of its own: it is deleted whole. The CRDs stay (Helm never
//!   deletes a chart's CRDs). An interrupt (Ctrl-C) skips this clean-up.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::Parser;
use printfleet_e2e::documents::multi_page_pdf;
use printfleet_e2e::process::{log_tail, port_open};
use printfleet_e2e::spooler::workspace_root;
use printfleet_e2e::{ChildGuard, IppConnection, free_port};
use serde_json::{Value, json};

const KUBECONFIG_ENV: &str = "PRINTFLEET_E2E_KUBECONFIG";
/// The Helm release name.
const RELEASE: &str = "printfleet";
/// Name of the printer's Deployment, Service and Printer object.
const PRINTER: &str = "e2e-printer";
const PRINTER_PORT: u16 = 8000;
/// Inside the printer pod; kept (`ippeveprinter -k`) so the suite can see the document.
const PRINTER_SPOOL: &str = "/var/spool/ippeve";
const QUEUE: &str = "e2e";
/// The submission Service the operator creates in each namespace with queues
/// (`SERVICE_NAME` and `SERVICE_PORT` in operator/src/desired.rs).
const SPOOLER_SERVICE: &str = "printfleet";
const SPOOLER_SERVICE_PORT: u16 = 631;
/// `requesting-user-name` of the job.
const USER: &str = "e2e-suite";
const PAGES: usize = 2;
/// Seconds between two probes of a printer by the operator; the chart's default (60) would
/// make a probe that ran before the printer's Service had endpoints cost a minute.
const PROBE_INTERVAL_SECONDS: u32 = 10;

/// Time limits, per step.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(30);
const HELM_TIMEOUT: Duration = Duration::from_secs(300);
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pulling debian:bookworm-slim and apt-get installing CUPS's tools and avahi.
const PRINTER_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(420);
const PRINTER_READY_TIMEOUT: Duration = Duration::from_secs(180);
const QUEUE_READY_TIMEOUT: Duration = Duration::from_secs(300);
const SHARD_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);
const PORT_FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// The queue reaches the spooler pods' configuration around when it turns Ready.
const QUEUE_SERVED_TIMEOUT: Duration = Duration::from_secs(90);
const IPP_CALL_TIMEOUT: Duration = Duration::from_secs(30);
const JOB_COMPLETED_TIMEOUT: Duration = Duration::from_secs(180);
const STATUS_TIMEOUT: Duration = Duration::from_secs(60);
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(300);
/// Any single kubectl read.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Parser)]
#[command(
    name = "cluster-suite",
    about = "Installs printfleet into a real cluster and prints through it \
             (kubeconfig from PRINTFLEET_E2E_KUBECONFIG; helm and kubectl on PATH)"
)]
struct Cli {
    /// Namespace for the release, the printer and the queue; deleted at the end unless --keep.
    #[arg(long, default_value = "printfleet-e2e")]
    namespace: String,
    /// Operator image, REPOSITORY:TAG.
    #[arg(long, default_value = "printfleet-operator:e2e")]
    operator_image: String,
    /// Spooler image, REPOSITORY:TAG.
    #[arg(long, default_value = "printfleet-spooler:e2e")]
    spooler_image: String,
    /// Leave everything installed at the end (to look around, or to run again).
    #[arg(long)]
    keep: bool,
    /// The cluster's DNS domain, in the printer's Service host name.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The chart to install [default: charts/printfleet of this checkout].
    #[arg(long)]
    chart: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cluster-suite FAILED: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let kubeconfig = std::env::var_os(KUBECONFIG_ENV)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| {
            anyhow!(
                "{KUBECONFIG_ENV} is not set: point it at the kubeconfig of the cluster to \
                 test (e.g. {KUBECONFIG_ENV}=$HOME/.kube/config); this suite needs a real cluster"
            )
        })?;
    if !kubeconfig.is_file() {
        bail!("{KUBECONFIG_ENV}={}: no such file", kubeconfig.display());
    }
    check_dns_label("--namespace", &cli.namespace)?;
    for label in cli.cluster_domain.split('.') {
        check_dns_label("--cluster-domain", label)?;
    }
    let operator_image = split_image("--operator-image", &cli.operator_image)?;
    let spooler_image = split_image("--spooler-image", &cli.spooler_image)?;
    let chart = cli
        .chart
        .clone()
        .unwrap_or_else(|| workspace_root().join("charts").join("printfleet"));
    if !chart.join("Chart.yaml").is_file() {
        bail!("{}: not a Helm chart (no Chart.yaml)", chart.display());
    }
    let logs = tempfile::Builder::new()
        .prefix("printfleet-cluster-suite-")
        .tempdir()
        .context("creating a directory for the port-forward's log")?;
    let suite = Suite {
        cluster: Cluster {
            kubeconfig,
            namespace: cli.namespace.clone(),
        },
        chart,
        operator_image,
        spooler_image,
        cluster_domain: cli.cluster_domain.clone(),
        logs: logs.path().to_path_buf(),
        start: Instant::now(),
    };

    // Nothing is installed yet: a failure here needs no diagnostics and no clean-up.
    suite.preflight()?;
    let outcome = suite.run();
    if let Err(error) = &outcome {
        suite.log("!", &format!("failed: {error:#}"));
        suite.diagnostics();
    }
    let cleanup = if cli.keep {
        suite.log(
            "-",
            &format!(
                "--keep: leaving release {RELEASE} and namespace {} in place",
                cli.namespace
            ),
        );
        Ok(())
    } else {
        suite.cleanup()
    };
    match (outcome, cleanup) {
        (Ok(summary), Ok(())) => {
            summary.print(&suite);
            Ok(())
        }
        (Ok(summary), Err(error)) => {
            summary.print(&suite);
            Err(error.context("the suite passed, but cleaning up failed"))
        }
        (Err(error), Ok(())) => Err(error),
        (Err(error), Err(cleanup)) => {
            eprintln!("cleaning up failed too: {cleanup:#}");
            Err(error)
        }
    }
}

/// What the suite found, printed at the end.
struct Summary {
    printer_state: String,
    shard: String,
    endpoint: String,
    job_id: i32,
    impressions_completed: Option<i32>,
    queued_job_count: Option<i32>,
    status_depth: Option<i64>,
    printer_spool_files: Vec<String>,
}

impl Summary {
    fn print(&self, suite: &Suite) {
        let or_unreported = |value: Option<String>| value.unwrap_or_else(|| "not reported".into());
        println!();
        println!("cluster-suite PASSED in {:.0?}", suite.start.elapsed());
        println!("  namespace                  {}", suite.cluster.namespace);
        println!(
            "  printer {PRINTER:<18} printer-state {}",
            self.printer_state
        );
        println!("  queue {QUEUE:<20} Ready, shard {}", self.shard);
        println!("  queue endpoint             {}", self.endpoint);
        println!("  job                        {} completed", self.job_id);
        println!(
            "  job-impressions-completed  {}",
            or_unreported(self.impressions_completed.map(|n| n.to_string()))
        );
        println!(
            "  queued-job-count (IPP)     {}",
            or_unreported(self.queued_job_count.map(|n| n.to_string()))
        );
        println!(
            "  status.depth               {}",
            or_unreported(self.status_depth.map(|n| n.to_string()))
        );
        println!(
            "  printer spool              {}",
            self.printer_spool_files.join(", ")
        );
    }
}

struct Suite {
    cluster: Cluster,
    chart: PathBuf,
    operator_image: (String, String),
    spooler_image: (String, String),
    cluster_domain: String,
    logs: PathBuf,
    start: Instant,
}

impl Suite {
    fn log(&self, step: &str, message: &str) {
        println!(
            "[{:>6.1}s] {step} {message}",
            self.start.elapsed().as_secs_f64()
        );
    }

    fn run(&self) -> Result<Summary> {
        self.install_chart()?;
        self.deploy_printer()?;
        let (printer_state, shard, endpoint) = self.declare_queue()?;
        let printed = self.print_through_spooler()?;
        let (status_depth, printer_spool_files) = self.check_status()?;
        Ok(Summary {
            printer_state,
            shard,
            endpoint,
            job_id: printed.job_id,
            impressions_completed: printed.impressions_completed,
            queued_job_count: printed.queued_job_count,
            status_depth,
            printer_spool_files,
        })
    }

    /// Both tools are there and the API server answers.
    fn preflight(&self) -> Result<()> {
        let step = "0. preflight";
        self.log(step, "checking helm, kubectl and the cluster");
        run_command(
            step,
            Command::new("helm").args(["version", "--short"]),
            None,
            PREFLIGHT_TIMEOUT,
        )?;
        let server = run_command(
            step,
            &mut self.cluster.kubectl(&["version", "-o", "json"]),
            None,
            PREFLIGHT_TIMEOUT,
        )
        .context("the cluster's API server must answer")?;
        let version: Value = serde_json::from_str(&server)
            .with_context(|| format!("{step}: parsing `kubectl version -o json`"))?;
        self.log(
            step,
            &format!(
                "API server {}",
                version["serverVersion"]["gitVersion"]
                    .as_str()
                    .unwrap_or("(version not reported)")
            ),
        );
        Ok(())
    }

    /// a. The chart, with this run's images, and wait for the operator.
    fn install_chart(&self) -> Result<()> {
        let step = "a. helm install";
        let (operator_repository, operator_tag) = &self.operator_image;
        let (spooler_repository, spooler_tag) = &self.spooler_image;
        self.log(
            step,
            &format!(
                "{RELEASE} from {} into {} (operator {operator_repository}:{operator_tag}, spooler {spooler_repository}:{spooler_tag})",
                self.chart.display(),
                self.cluster.namespace
            ),
        );
        let chart = self.chart.to_string_lossy();
        let helm_timeout = format!("{}s", HELM_TIMEOUT.as_secs());
        let settings = [
            format!("image.repository={operator_repository}"),
            format!("image.tag={operator_tag}"),
            format!("spoolerImage.repository={spooler_repository}"),
            format!("spoolerImage.tag={spooler_tag}"),
            format!("probeIntervalSeconds={PROBE_INTERVAL_SECONDS}"),
        ];
        let mut args: Vec<&str> = vec![
            "upgrade",
            "--install",
            RELEASE,
            chart.as_ref(),
            "--create-namespace",
            "--wait",
            "--timeout",
            &helm_timeout,
        ];
        for setting in &settings {
            args.extend(["--set", setting.as_str()]);
        }
        // Helm stops itself at --timeout; the margin covers its own start and teardown.
        run_command(
            step,
            &mut self.cluster.helm(&args),
            None,
            HELM_TIMEOUT + Duration::from_secs(60),
        )?;
        self.log(step, "operator ready");
        Ok(())
    }

    /// b. ippeveprinter in a pod, behind a Service, waited on until it listens.
    fn deploy_printer(&self) -> Result<()> {
        let step = "b. deploy ippeveprinter";
        self.log(
            step,
            &format!("Deployment + Service {PRINTER} (debian:bookworm-slim, port {PRINTER_PORT})"),
        );
        let manifest = printer_manifest(&self.cluster.namespace);
        self.cluster.apply(step, &manifest)?;
        self.log(
            step,
            "waiting for the pod (it apt-get installs cups-ipp-utils, dbus and avahi-daemon first)",
        );
        self.cluster
            .rollout_status(step, PRINTER, PRINTER_ROLLOUT_TIMEOUT)
            .context("the ippeveprinter pod did not become ready")?;
        self.log(step, "ippeveprinter listening");
        Ok(())
    }

    /// c. The Printer and the PrintQueue, waited on until the operator reports them Ready;
    /// then the queue's shard Deployment until all its pods are. Returns the printer's
    /// state, the queue's shard and its endpoint.
    fn declare_queue(&self) -> Result<(String, String, String)> {
        let step = "c. Printer + PrintQueue";
        let printer_uri = format!(
            "ipp://{PRINTER}.{}.svc.{}:{PRINTER_PORT}/ipp/print",
            self.cluster.namespace, self.cluster_domain
        );
        self.log(
            step,
            &format!("Printer {PRINTER} ({printer_uri}) and PrintQueue {QUEUE}"),
        );
        let manifest = queue_manifest(&self.cluster.namespace, &printer_uri);
        // The CRDs were installed moments ago: kubectl's discovery may not list them yet.
        wait_for(
            step,
            "the Printer and PrintQueue applied",
            APPLY_TIMEOUT,
            || self.cluster.apply(step, &manifest).map(Check::Done),
        )?;

        self.log(step, "waiting for the Printer to be Reachable and Ready");
        let printer = wait_for(
            step,
            &format!("Printer {PRINTER} Reachable=True and Ready=True"),
            PRINTER_READY_TIMEOUT,
            || {
                let printer = self.cluster.get_json(step, "printer", PRINTER)?;
                Ok(if conditions_true(&printer, &["Reachable", "Ready"]) {
                    Check::Done(printer)
                } else {
                    Check::Waiting(describe_conditions(&printer))
                })
            },
        )?;
        let printer_state = printer["status"]["printerState"]
            .as_str()
            .unwrap_or("not reported")
            .to_owned();
        self.log(
            step,
            &format!("Printer ready: printer-state {printer_state}"),
        );

        self.log(step, "waiting for the PrintQueue to be Ready");
        let queue = wait_for(
            step,
            &format!("PrintQueue {QUEUE} Ready=True"),
            QUEUE_READY_TIMEOUT,
            || {
                let queue = self.cluster.get_json(step, "printqueue", QUEUE)?;
                Ok(if conditions_true(&queue, &["Ready"]) {
                    Check::Done(queue)
                } else {
                    Check::Waiting(describe_conditions(&queue))
                })
            },
        )?;
        let shard = queue["status"]["shard"]
            .as_str()
            .ok_or_else(|| anyhow!("{step}: PrintQueue {QUEUE} is Ready but has no status.shard"))?
            .to_owned();
        let endpoint = queue["status"]["endpoint"]
            .as_str()
            .ok_or_else(|| {
                anyhow!("{step}: PrintQueue {QUEUE} is Ready but has no status.endpoint")
            })?
            .to_owned();
        // The address users are told to print to names the queue (the chart's README).
        if !endpoint.ends_with(&format!("/ipp/print/{QUEUE}")) {
            bail!(
                "{step}: PrintQueue {QUEUE} has status.endpoint {endpoint}, not a path of the queue"
            );
        }
        self.log(
            step,
            &format!("PrintQueue ready on {shard}, endpoint {endpoint}"),
        );

        // Ready needs one available spooler pod; the port-forward must not pick one that is
        // still starting, or one of a replica set that a configuration change is replacing.
        self.cluster
            .rollout_status(step, &shard, SHARD_ROLLOUT_TIMEOUT)
            .with_context(|| format!("{step}: the spooler pods of {shard} did not become ready"))?;
        self.log(step, &format!("{shard} rolled out"));
        Ok((printer_state, shard, endpoint))
    }

    /// d. One PDF through a port-forward to the spooler Service, until completed.
    fn print_through_spooler(&self) -> Result<Printed> {
        let step = "d. print through the spooler";
        let local_port =
            free_port().with_context(|| format!("{step}: finding a free local port"))?;
        let log = self.logs.join("port-forward.log");
        let service = format!("svc/{SPOOLER_SERVICE}");
        let ports = format!("{local_port}:{SPOOLER_SERVICE_PORT}");
        self.log(step, &format!("kubectl port-forward {service} {ports}"));
        let command =
            self.cluster
                .kubectl(&["port-forward", "--address", "127.0.0.1", &service, &ports]);
        // Dropping the guard kills kubectl: on every way out of this function.
        let mut forward = ChildGuard::spawn("kubectl port-forward", command, &log)
            .with_context(|| format!("{step}: starting kubectl port-forward"))?;
        forward
            .wait_ready(PORT_FORWARD_TIMEOUT, || port_open(local_port))
            .with_context(|| format!("{step}: port-forward to {service}"))?;

        let uri = format!("ipp://127.0.0.1:{local_port}/ipp/print/{QUEUE}");
        self.log(
            step,
            &format!("Print-Job of a {PAGES}-page PDF to {uri} as {USER}"),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .with_context(|| format!("{step}: starting the async runtime"))?;
        let printed = runtime
            .block_on(print_one_job(&uri))
            .with_context(|| format!("{step} ({uri}){}", log_tail(&log, 20)))?;
        self.log(step, &format!("job {} completed", printed.job_id));
        drop(forward);
        Ok(printed)
    }

    /// e. The queue's status after the job, and the document on the printer's side.
    /// Returns `status.depth` (when reported) and the files in the printer's spool.
    fn check_status(&self) -> Result<(Option<i64>, Vec<String>)> {
        let step = "e. status";
        self.log(
            step,
            &format!("PrintQueue {QUEUE} still Ready, depth back to 0"),
        );
        let depth = wait_for(
            step,
            &format!("PrintQueue {QUEUE} Ready=True with status.depth 0 or unreported"),
            STATUS_TIMEOUT,
            || {
                let queue = self.cluster.get_json(step, "printqueue", QUEUE)?;
                let depth = queue["status"]["depth"].as_i64();
                Ok(
                    if conditions_true(&queue, &["Ready"]) && depth.is_none_or(|n| n == 0) {
                        Check::Done(depth)
                    } else {
                        Check::Waiting(format!(
                            "{}; status.depth {}",
                            describe_conditions(&queue),
                            depth.map_or_else(|| "unreported".into(), |n| n.to_string())
                        ))
                    },
                )
            },
        )?;
        if depth.is_none() {
            self.log(step, "status.depth is not reported by the operator");
        }

        self.log(step, &format!("the document in {PRINTER}'s spool"));
        let deployment = format!("deployment/{PRINTER}");
        let listing = run_command(
            step,
            &mut self
                .cluster
                .kubectl(&["exec", &deployment, "--", "ls", "-1", PRINTER_SPOOL]),
            None,
            KUBECTL_TIMEOUT,
        )?;
        let files: Vec<String> = listing
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect();
        if files.is_empty() {
            bail!(
                "{step}: the spooler reported the job completed, but {PRINTER_SPOOL} in the \
                 {PRINTER} pod is empty: the document never reached the printer"
            );
        }
        Ok((depth, files))
    }

    /// Best effort, after a failure: what a human needs to see why.
    fn diagnostics(&self) {
        let operator = format!("deployment/{RELEASE}-operator");
        let printer = format!("deployment/{PRINTER}");
        let reads: [(&str, Vec<&str>); 5] = [
            (
                "objects",
                vec![
                    "get",
                    "pods,deployments,services,printers,printqueues",
                    "-o",
                    "wide",
                ],
            ),
            ("events", vec!["get", "events", "--sort-by=.lastTimestamp"]),
            (
                "operator log",
                vec!["logs", &operator, "--all-containers", "--tail=40"],
            ),
            (
                "spooler logs",
                vec![
                    "logs",
                    "-l",
                    "app.kubernetes.io/name=printfleet-spooler",
                    "--prefix",
                    "--tail=40",
                ],
            ),
            ("printer log", vec!["logs", &printer, "--tail=40"]),
        ];
        println!("--- diagnostics (namespace {}) ---", self.cluster.namespace);
        for (what, args) in reads {
            match run_command(
                "diagnostics",
                &mut self.cluster.kubectl(&args),
                None,
                KUBECTL_TIMEOUT,
            ) {
                Ok(output) => println!("--- {what} ---\n{}", last_lines(&output, 60)),
                Err(error) => println!("--- {what}: unavailable: {error:#}"),
            }
        }
        println!("--- end of diagnostics ---");
    }

    /// Uninstall the release, then delete the namespace (with everything in it); both are
    /// tried even when the first fails, and a missing release is not an error.
    fn cleanup(&self) -> Result<()> {
        let step = "cleanup";
        self.log(
            step,
            &format!(
                "helm uninstall {RELEASE}, delete namespace {}",
                self.cluster.namespace
            ),
        );
        let uninstall = run_command(
            step,
            &mut self.cluster.helm(&["uninstall", RELEASE]),
            None,
            CLEANUP_TIMEOUT,
        );
        let uninstall = match uninstall {
            Err(error) if format!("{error:#}").contains("not found") => Ok(String::new()),
            other => other,
        };
        let timeout = format!("--timeout={}s", CLEANUP_TIMEOUT.as_secs());
        let delete = run_command(
            step,
            &mut self.cluster.kubectl(&[
                "delete",
                "namespace",
                &self.cluster.namespace,
                "--ignore-not-found",
                "--wait=true",
                &timeout,
            ]),
            None,
            CLEANUP_TIMEOUT + KUBECTL_TIMEOUT,
        );
        match (uninstall, delete) {
            (Ok(_), Ok(_)) => {
                self.log(step, "done");
                Ok(())
            }
            (Err(error), Ok(_)) | (Ok(_), Err(error)) => Err(error),
            (Err(uninstall), Err(delete)) => Err(anyhow!("{uninstall:#}\n{delete:#}")),
        }
    }
}

/// What printing found.
struct Printed {
    job_id: i32,
    impressions_completed: Option<i32>,
    queued_job_count: Option<i32>,
}

/// Waits until the spooler serves the queue, prints one PDF, waits until the job is
/// completed, and reads the job's and the queue's counts.
async fn print_one_job(uri: &str) -> Result<Printed> {
    let mut ipp = IppConnection::new(uri)?;

    // The queue's Ready condition can come a moment before every pod has loaded it.
    let deadline = Instant::now() + QUEUE_SERVED_TIMEOUT;
    loop {
        let last = match tokio::time::timeout(
            IPP_CALL_TIMEOUT,
            ipp.get_printer_attributes(&["printer-state", "queued-job-count"]),
        )
        .await
        {
            Ok(Ok(response)) if response.is_success() => break,
            Ok(Ok(response)) => format!("status {:#06x}", response.raw_status),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {}s", IPP_CALL_TIMEOUT.as_secs()),
        };
        if Instant::now() >= deadline {
            bail!(
                "Get-Printer-Attributes on queue {QUEUE} did not succeed within {}s: {last}",
                QUEUE_SERVED_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let document = Bytes::from(multi_page_pdf(PAGES));
    let response = tokio::time::timeout(
        IPP_CALL_TIMEOUT,
        ipp.print_job(
            USER,
            "printfleet cluster-suite",
            "application/pdf",
            document,
        ),
    )
    .await
    .map_err(|_| {
        anyhow!(
            "Print-Job: no answer within {}s",
            IPP_CALL_TIMEOUT.as_secs()
        )
    })?
    .context("Print-Job")?;
    if !response.is_success() {
        bail!(
            "Print-Job refused: status {:#06x} ({:?})",
            response.raw_status,
            response.status
        );
    }
    let job_id = response
        .integer("job-id")
        .ok_or_else(|| anyhow!("the Print-Job response has no job-id"))?;

    let jobs = BTreeMap::from([(1, job_id)]);
    // The outer limit also covers a Get-Job-Attributes that never answers.
    tokio::time::timeout(
        JOB_COMPLETED_TIMEOUT + IPP_CALL_TIMEOUT,
        ipp.wait_until_completed(&jobs, USER, JOB_COMPLETED_TIMEOUT),
    )
    .await
    .map_err(|_| anyhow!("job {job_id}: Get-Job-Attributes stopped answering"))?
    .map_err(|error| anyhow!("job {job_id} did not complete: {error}"))?;

    let job = tokio::time::timeout(IPP_CALL_TIMEOUT, ipp.get_job_attributes(job_id, USER))
        .await
        .map_err(|_| {
            anyhow!(
                "Get-Job-Attributes: no answer within {}s",
                IPP_CALL_TIMEOUT.as_secs()
            )
        })?
        .context("Get-Job-Attributes")?;
    let queue = tokio::time::timeout(
        IPP_CALL_TIMEOUT,
        ipp.get_printer_attributes(&["queued-job-count"]),
    )
    .await
    .map_err(|_| {
        anyhow!(
            "Get-Printer-Attributes: no answer within {}s",
            IPP_CALL_TIMEOUT.as_secs()
        )
    })?
    .context("Get-Printer-Attributes")?;
    let queued_job_count = queue.integer("queued-job-count");
    if let Some(queued) = queued_job_count.filter(|&queued| queued != 0) {
        bail!("job {job_id} completed, but queue {QUEUE} still has {queued} queued job(s)");
    }
    Ok(Printed {
        job_id,
        impressions_completed: job.integer("job-impressions-completed"),
        queued_job_count,
    })
}

/// kubectl and helm against the suite's kubeconfig and namespace.
struct Cluster {
    kubeconfig: PathBuf,
    namespace: String,
}

impl Cluster {
    /// Waits until every pod of Deployment `name` is updated and ready.
    fn rollout_status(&self, step: &str, name: &str, timeout: Duration) -> Result<String> {
        let deployment = format!("deployment/{name}");
        let limit = format!("--timeout={}s", timeout.as_secs());
        run_command(
            step,
            &mut self.kubectl(&["rollout", "status", &deployment, &limit]),
            None,
            timeout + KUBECTL_TIMEOUT,
        )
    }

    fn kubectl(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        // Global flags go first: what follows a `--` (kubectl exec) belongs to the container.
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--namespace", &self.namespace])
            .args(args);
        command
    }

    fn helm(&self, args: &[&str]) -> Command {
        let mut command = Command::new("helm");
        command
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--namespace", &self.namespace]);
        command
    }

    /// `kubectl apply -f -` of one object (a `v1` List for several).
    fn apply(&self, step: &str, manifest: &Value) -> Result<String> {
        // JSON is YAML: kubectl reads either from stdin.
        let body = serde_json::to_string_pretty(manifest)
            .with_context(|| format!("{step}: rendering the manifest"))?;
        run_command(
            step,
            &mut self.kubectl(&["apply", "-f", "-"]),
            Some(body),
            APPLY_TIMEOUT,
        )
    }

    /// One object, as JSON.
    fn get_json(&self, step: &str, kind: &str, name: &str) -> Result<Value> {
        let output = run_command(
            step,
            &mut self.kubectl(&["get", kind, name, "-o", "json"]),
            None,
            KUBECTL_TIMEOUT,
        )?;
        serde_json::from_str(&output).with_context(|| format!("{step}: parsing {kind}/{name}"))
    }
}

/// Runs `command` to completion within `timeout` (killing it otherwise) with `stdin` fed
/// to it; returns its stdout. Errors name the step, the command and its output.
fn run_command(
    step: &str,
    command: &mut Command,
    stdin: Option<String>,
    timeout: Duration,
) -> Result<String> {
    let rendered = format!("{command:?}");
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("{step}: starting {rendered} (is it on PATH?)"))?;
    // Threads feed and drain the pipes, so a full pipe never blocks the child while we wait.
    let feeder = child.stdin.take().zip(stdin).map(|(mut pipe, input)| {
        thread::spawn(move || {
            // An error here means the child exited early; its status tells why.
            let _ = pipe.write_all(input.as_bytes());
        })
    });
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buffer = Vec::new();
            if let Some(mut pipe) = pipe {
                // A read error ends the output early; what was read is still worth showing.
                let _ = pipe.read_to_end(&mut buffer);
            }
            String::from_utf8_lossy(&buffer).into_owned()
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
    );

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                // Errors mean it is already gone, which is what we want.
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(100)),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(anyhow!(error).context(format!("{step}: waiting for {rendered}")));
            }
        }
    };
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    // A drain thread cannot panic; an empty string stands in if one somehow did.
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(stdout),
        Some(status) => Err(anyhow!(
            "{step}: {rendered} failed ({status}):\n{}",
            last_lines(&format!("{stderr}{stdout}"), 40)
        )),
        None => Err(anyhow!(
            "{step}: {rendered} did not finish within {}s and was killed:\n{}",
            timeout.as_secs(),
            last_lines(&format!("{stderr}{stdout}"), 40)
        )),
    }
}

enum Check<T> {
    Done(T),
    /// Not yet; what was seen instead.
    Waiting(String),
}

/// Calls `check` every [`POLL_INTERVAL`] until it is done or `timeout` passes. A failed
/// check (the API server busy, an object not there yet) counts as not yet; the error names
/// the step, what was awaited and the last thing seen.
fn wait_for<T>(
    step: &str,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Check<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(Check::Done(value)) => return Ok(value),
            Ok(Check::Waiting(seen)) => seen,
            Err(error) => format!("{error:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "{step}: {what} not reached within {}s; last seen: {last}",
                timeout.as_secs()
            );
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Whether every condition in `types` is `True` and describes the object's current
/// generation (when both are known).
fn conditions_true(object: &Value, types: &[&str]) -> bool {
    let generation = object["metadata"]["generation"].as_i64();
    let conditions = object["status"]["conditions"].as_array();
    types.iter().all(|type_| {
        conditions
            .and_then(|conditions| conditions.iter().find(|c| c["type"] == *type_))
            .is_some_and(|condition| {
                condition["status"] == "True"
                    && match (condition["observedGeneration"].as_i64(), generation) {
                        (Some(observed), Some(current)) => observed == current,
                        _ => true,
                    }
            })
    })
}

/// `Ready=False (ShardUnavailable: ...); ...`, or that there are none yet.
fn describe_conditions(object: &Value) -> String {
    let Some(conditions) = object["status"]["conditions"]
        .as_array()
        .filter(|conditions| !conditions.is_empty())
    else {
        return "no conditions yet".into();
    };
    conditions
        .iter()
        .map(|condition| {
            let text = |key: &str| condition[key].as_str().unwrap_or("").to_owned();
            format!(
                "{}={} ({}: {})",
                text("type"),
                text("status"),
                text("reason"),
                text("message")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The printer: a Deployment running CUPS's ippeveprinter on port 8000, and its Service.
fn printer_manifest(namespace: &str) -> Value {
    let labels = json!({
        "app.kubernetes.io/name": PRINTER,
        "app.kubernetes.io/part-of": "printfleet-e2e",
    });
    // ippeveprinter exits with "Unable to initialize DNS-SD" when it cannot reach avahi
    // over the system D-Bus, even with `-r off` (checked with CUPS 2.4.2, as in bookworm),
    // so the pod runs both daemons first, as e2e/src/ippeve.rs does on a machine.
    let script = format!(
        "set -eu\n\
         export DEBIAN_FRONTEND=noninteractive\n\
         apt-get update\n\
         apt-get install -y --no-install-recommends cups-ipp-utils dbus avahi-daemon\n\
         mkdir -p /run/dbus {PRINTER_SPOOL}\n\
         rm -f /run/dbus/pid /run/avahi-daemon/pid\n\
         dbus-daemon --system --fork\n\
         avahi-daemon --daemonize --no-drop-root --no-chroot --no-rlimits\n\
         exec ippeveprinter -p {PRINTER_PORT} -r off -k -d {PRINTER_SPOOL} \
         -f application/pdf,image/pwg-raster,text/plain {PRINTER}\n"
    );
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": PRINTER, "namespace": namespace, "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "terminationGracePeriodSeconds": 5,
                            "containers": [{
                                "name": "ippeveprinter",
                                "image": "debian:bookworm-slim",
                                "command": ["/bin/sh", "-c", script],
                                "ports": [{
                                    "name": "ipp",
                                    "containerPort": PRINTER_PORT,
                                    "protocol": "TCP",
                                }],
                                // Ready once ippeveprinter listens, after the installs.
                                "readinessProbe": {
                                    "tcpSocket": {"port": "ipp"},
                                    "periodSeconds": 2,
                                },
                            }],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": PRINTER, "namespace": namespace, "labels": labels},
                "spec": {
                    "selector": labels,
                    "ports": [{
                        "name": "ipp",
                        "port": PRINTER_PORT,
                        "targetPort": "ipp",
                        "protocol": "TCP",
                    }],
                },
            },
        ],
    })
}

/// The Printer (the ippeveprinter Service) and the queue printing to it.
fn queue_manifest(namespace: &str, printer_uri: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "printfleet.io/v1alpha1",
                "kind": "Printer",
                "metadata": {"name": PRINTER, "namespace": namespace},
                "spec": {
                    "uri": printer_uri,
                    "description": "ippeveprinter of the cluster suite",
                },
            },
            {
                "apiVersion": "printfleet.io/v1alpha1",
                "kind": "PrintQueue",
                "metadata": {"name": QUEUE, "namespace": namespace},
                "spec": {
                    "printers": [PRINTER],
                    "description": "queue of the cluster suite",
                },
            },
        ],
    })
}

/// `REPOSITORY:TAG` as the chart's two values. The tag follows the last `:` after the last
/// `/`, so a registry's port (`localhost:5000/x:tag`) is not taken for one.
fn split_image(flag: &str, image: &str) -> Result<(String, String)> {
    if image.contains('@') {
        bail!("{flag} {image}: digests are not supported (the chart takes a repository and a tag)");
    }
    // `helm --set` splits its argument at commas.
    if image.contains(',') || image.contains('=') {
        bail!("{flag} {image}: not an image reference");
    }
    let name_start = image.rfind('/').map_or(0, |slash| slash + 1);
    let Some(colon) = image[name_start..]
        .rfind(':')
        .map(|colon| name_start + colon)
    else {
        bail!("{flag} {image}: needs a tag (REPOSITORY:TAG)");
    };
    let (repository, tag) = (&image[..colon], &image[colon + 1..]);
    if repository.is_empty() || tag.is_empty() {
        bail!("{flag} {image}: needs a repository and a tag (REPOSITORY:TAG)");
    }
    Ok((repository.to_owned(), tag.to_owned()))
}

/// Namespaces are DNS labels; checking here also keeps the name safe inside host names.
fn check_dns_label(flag: &str, name: &str) -> Result<()> {
    let valid = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        bail!("{flag} {name}: not a DNS label (lowercase letters, digits and '-', at most 63)")
    }
}

/// The last `count` lines of `text`.
fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_split_at_the_tag_not_the_registry_port() {
        assert_eq!(
            split_image("--x", "printfleet-operator:e2e").ok(),
            Some(("printfleet-operator".into(), "e2e".into()))
        );
        assert_eq!(
            split_image("--x", "localhost:5000/team/spooler:1.2").ok(),
            Some(("localhost:5000/team/spooler".into(), "1.2".into()))
        );
        assert!(split_image("--x", "localhost:5000/spooler").is_err());
        assert!(split_image("--x", "spooler@sha256:abc").is_err());
        assert!(split_image("--x", ":tag").is_err());
    }

    #[test]
    fn conditions_must_be_true_for_the_current_generation() {
        let object = json!({
            "metadata": {"generation": 2},
            "status": {"conditions": [
                {"type": "Reachable", "status": "True", "observedGeneration": 2},
                {"type": "Ready", "status": "True", "observedGeneration": 1},
            ]},
        });
        assert!(conditions_true(&object, &["Reachable"]));
        assert!(!conditions_true(&object, &["Ready"]));
        assert!(!conditions_true(&json!({}), &["Ready"]));
        assert_eq!(describe_conditions(&json!({})), "no conditions yet");
    }

    #[test]
    fn namespaces_are_dns_labels() {
        assert!(check_dns_label("--namespace", "printfleet-e2e").is_ok());
        assert!(check_dns_label("--namespace", "Bad_Name").is_err());
        assert!(check_dns_label("--namespace", "-x").is_err());
        assert!(check_dns_label("--namespace", "").is_err());
    }
}
