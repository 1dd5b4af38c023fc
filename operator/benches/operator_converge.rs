//! Convergence benchmark: 2,000 PrintQueues and 2,000 Printers across 50 namespaces, the
//! operator binary started as its own process against the API double (in this process).
//! Reports the time until every desired object is applied and every status written, the
//! operator's peak RSS (VmHWM), its CPU time and the double's, and the latency of a single
//! queue change reaching its shard's ConfigMap.
//!
//! cargo bench -p printfleet-operator --bench operator_converge

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use printfleet_crds::{PrintQueue, PrintQueueSpec, Printer, PrinterSpec};
use printfleet_e2e::apiserver::write_kubeconfig;
use support::apiserver::ApiServer;
use support::operator_process::OperatorProcess;

const NAMESPACES: usize = 50;
const PER_NAMESPACE: usize = 40;
const QUEUES: &str = "printfleet.io/v1alpha1/printqueues";
const PRINTERS: &str = "printfleet.io/v1alpha1/printers";

fn namespace(index: usize) -> String {
    format!("site-{index:02}")
}

/// Creates every Printer and PrintQueue over HTTP, a namespace at a time in parallel.
async fn populate(api: &ApiServer) {
    let mut tasks = Vec::new();
    for ns in 0..NAMESPACES {
        let client = api.client();
        tasks.push(tokio::spawn(async move {
            let ns = namespace(ns);
            let printers: Api<Printer> = Api::namespaced(client.clone(), &ns);
            let queues: Api<PrintQueue> = Api::namespaced(client, &ns);
            for i in 0..PER_NAMESPACE {
                let printer = Printer::new(
                    &format!("printer-{i}"),
                    PrinterSpec {
                        uri: format!("file:///var/spool/printer-{i}"),
                        ..PrinterSpec::default()
                    },
                );
                printers
                    .create(&PostParams::default(), &printer)
                    .await
                    .expect("create printer");
                let queue = PrintQueue::new(
                    &format!("queue-{i}"),
                    PrintQueueSpec {
                        printers: vec![format!("printer-{i}")],
                        ..PrintQueueSpec::default()
                    },
                );
                queues
                    .create(&PostParams::default(), &queue)
                    .await
                    .expect("create queue");
            }
        }));
    }
    for task in tasks {
        task.await.expect("populate");
    }
}

/// Whether every desired object exists and every status is written.
fn converged(api: &ApiServer) -> bool {
    (0..NAMESPACES).all(|ns| {
        let ns = namespace(ns);
        let config = api
            .get("/v1/configmaps", &ns, "printfleet-shard-0")
            .and_then(|c| c["data"]["printfleet.yaml"].as_str().map(str::to_owned))
            .unwrap_or_default();
        api.count(QUEUES, &ns, |q| q["status"]["shard"].is_string()) == PER_NAMESPACE
            && api.count(PRINTERS, &ns, |p| p["status"]["conditions"].is_array()) == PER_NAMESPACE
            && config.matches("kind: PrintQueue").count() == PER_NAMESPACE
            && [
                ("apps/v1/deployments", "printfleet-shard-0"),
                ("policy/v1/poddisruptionbudgets", "printfleet-shard-0"),
                ("/v1/serviceaccounts", "printfleet-shard-0"),
                ("rbac.authorization.k8s.io/v1/roles", "printfleet-shard-0"),
                (
                    "rbac.authorization.k8s.io/v1/rolebindings",
                    "printfleet-shard-0",
                ),
                ("/v1/services", "printfleet"),
            ]
            .iter()
            .all(|(collection, name)| api.get(collection, &ns, name).is_some())
    })
}

/// A field of /proc/PID/status in KiB (VmHWM, VmRSS).
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// User + system CPU seconds of a process, from /proc/PID/stat.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

#[tokio::main]
async fn main() {
    let api = ApiServer::start(&[]).await;
    let started = Instant::now();
    populate(&api).await;
    println!(
        "populated {} printers and {} queues in {NAMESPACES} namespaces in {:.2} s",
        NAMESPACES * PER_NAMESPACE,
        NAMESPACES * PER_NAMESPACE,
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = write_kubeconfig(dir.path(), api.address);
    let double_cpu_before = cpu_seconds("self").unwrap_or(0.0);
    let requests_before = api.requests();

    let started = Instant::now();
    let operator = OperatorProcess::start(&kubeconfig, "bench", 15, &[]);
    let pid = operator.pid().expect("operator pid");
    let deadline = started + Duration::from_secs(120);
    while !converged(&api) {
        assert!(Instant::now() < deadline, "no convergence in 120 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let converge = started.elapsed();
    let operator_cpu = cpu_seconds(&pid.to_string()).unwrap_or(0.0);
    let double_cpu = cpu_seconds("self").unwrap_or(0.0) - double_cpu_before;
    let requests = api.requests() - requests_before;
    println!(
        "converged: {:.2} s (target < 30 s); operator CPU {operator_cpu:.2} s, API double CPU {double_cpu:.2} s for {requests} requests ({:.0} µs each)",
        converge.as_secs_f64(),
        double_cpu * 1e6 / requests.max(1) as f64
    );
    // Let the operator settle (the follow-up reconciles the statuses trigger), then read
    // its peak.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let peak = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    let rss = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    println!(
        "operator memory: peak RSS (VmHWM) {:.1} MiB, RSS now {:.1} MiB (target < 150 MiB)",
        peak as f64 / 1024.0,
        rss as f64 / 1024.0
    );

    // Single changes: a queue's description reaching its shard's ConfigMap.
    let mut latencies = Vec::new();
    for round in 0..20 {
        let ns = namespace(round % NAMESPACES);
        let queues: Api<PrintQueue> = Api::namespaced(api.client(), &ns);
        let marker = format!("change-{round}");
        let change = serde_json::json!({"spec": {"description": marker}});
        let sent = Instant::now();
        queues
            .patch("queue-7", &PatchParams::default(), &Patch::Merge(&change))
            .await
            .expect("change a queue");
        loop {
            let config = api
                .get("/v1/configmaps", &ns, "printfleet-shard-0")
                .and_then(|c| c["data"]["printfleet.yaml"].as_str().map(str::to_owned))
                .unwrap_or_default();
            if config.contains(&marker) {
                break;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(30),
                "change not applied"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(sent.elapsed());
        // Let the fan-out of the previous change settle, as separate edits would.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    latencies.sort();
    println!(
        "single queue change -> shard ConfigMap: median {:.0} ms, max {:.0} ms over {} changes (target < 1000 ms)",
        latencies[latencies.len() / 2].as_secs_f64() * 1000.0,
        latencies[latencies.len() - 1].as_secs_f64() * 1000.0,
        latencies.len()
    );
    let peak = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    println!(
        "operator peak RSS over the whole run: {:.1} MiB",
        peak as f64 / 1024.0
    );
    drop(operator);
}
