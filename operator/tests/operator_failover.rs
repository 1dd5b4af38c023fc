//! Operator HA: two operator processes against the API double, one Lease. Only the leader
//! reconciles; when it stops (SIGTERM, as Kubernetes stops a pod) or dies (SIGKILL), a
//! standby takes the Lease within the lease duration and reconciles what changes after.

mod support;

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::PostParams;
use printfleet_crds::{PrintQueue, PrintQueueSpec, Printer};
use printfleet_e2e::apiserver::write_kubeconfig;
use printfleet_e2e::process::eventually;
use support::apiserver::ApiServer;
use support::operator_process::OperatorProcess;

const NS: &str = "office";
const LEASE_SECONDS: u64 = 3;

fn holder(api: &ApiServer) -> Option<String> {
    api.get(
        "coordination.k8s.io/v1/leases",
        "operators",
        "printfleet-operator",
    )?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

async fn add_queue(client: &kube::Client, name: &str) {
    let queues: Api<PrintQueue> = Api::namespaced(client.clone(), NS);
    let queue = PrintQueue::new(
        name,
        PrintQueueSpec {
            printers: vec!["hall".into()],
            ..PrintQueueSpec::default()
        },
    );
    queues
        .create(&PostParams::default(), &queue)
        .await
        .expect("create queue");
}

/// Waits until `queue` is in the shard configuration and has a status, i.e. a leader
/// reconciled it.
async fn reconciled(api: &ApiServer, queue: &str) {
    eventually(
        &format!("{queue} reconciled"),
        Duration::from_secs(20),
        || {
            let config = api.get("/v1/configmaps", NS, "printfleet-shard-0")?;
            let text = config["data"]["printfleet.yaml"].as_str()?;
            let status =
                api.get("printfleet.io/v1alpha1/printqueues", NS, queue)?["status"].clone();
            (text.contains(&format!("name: {queue}\n")) && status["shard"].is_string())
                .then_some(())
        },
    )
    .await;
}

fn other<'a>(
    processes: &'a mut [OperatorProcess],
    identity: &str,
) -> (&'a mut OperatorProcess, Vec<String>) {
    let others = processes
        .iter()
        .filter(|p| p.identity != identity)
        .map(|p| p.identity.clone())
        .collect();
    let leader = processes
        .iter_mut()
        .find(|p| p.identity == identity)
        .expect("the leader is one of ours");
    (leader, others)
}

#[tokio::test]
async fn a_standby_takes_over_when_the_leader_stops_or_dies() {
    let api = ApiServer::start(&[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = write_kubeconfig(dir.path(), api.address);
    let lease = Duration::from_secs(LEASE_SECONDS);
    let mut processes = vec![
        OperatorProcess::start(&kubeconfig, "operator-a", LEASE_SECONDS, &[]),
        OperatorProcess::start(&kubeconfig, "operator-b", LEASE_SECONDS, &[]),
    ];
    let client = api.client();
    let printers: Api<Printer> = Api::namespaced(client.clone(), NS);
    printers
        .create(&PostParams::default(), &support::file_printer("hall"))
        .await
        .expect("create printer");
    add_queue(&client, "first").await;
    reconciled(&api, "first").await;
    let first_leader = eventually("a leader", lease * 2, || holder(&api)).await;

    // A graceful stop (what Kubernetes sends a pod) releases the Lease and exits cleanly.
    let (leader, others) = other(&mut processes, &first_leader);
    leader.signal("TERM");
    let stopped = Instant::now();
    let exit = leader
        .exited_within(Duration::from_secs(5))
        .await
        .expect("the leader exits promptly on SIGTERM");
    assert!(exit.success(), "{exit:?}");
    let second_leader = eventually("the standby leads", lease * 2, || {
        holder(&api).filter(|h| others.contains(h))
    })
    .await;
    let takeover = stopped.elapsed();
    assert!(
        takeover <= lease + Duration::from_millis(500),
        "took {takeover:?} with a {lease:?} lease"
    );
    eprintln!("takeover after SIGTERM: {takeover:?}");
    add_queue(&client, "second").await;
    reconciled(&api, "second").await;

    // A crash (SIGKILL) releases nothing: the Lease expires first. A restarted replica is
    // the standby now.
    processes.retain(|p| p.identity != first_leader);
    processes.push(OperatorProcess::start(
        &kubeconfig,
        "operator-c",
        LEASE_SECONDS,
        &[],
    ));
    // Let the new replica see the Lease held before the leader dies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (leader, others) = other(&mut processes, &second_leader);
    leader.signal("KILL");
    let killed = Instant::now();
    eventually("the restarted replica leads", lease * 3, || {
        holder(&api).filter(|h| others.contains(h))
    })
    .await;
    let takeover = killed.elapsed();
    // The standby waits for the expiry, then up to 1 s (the crate's anti-collision pause)
    // before it claims the Lease.
    assert!(
        takeover <= lease + Duration::from_millis(1500),
        "took {takeover:?} with a {lease:?} lease"
    );
    eprintln!("takeover after SIGKILL: {takeover:?}");
    add_queue(&client, "third").await;
    reconciled(&api, "third").await;
}
