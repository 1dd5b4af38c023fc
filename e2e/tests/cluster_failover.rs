//! Failover of a shard's dispatcher: three spooler pods of one shard on one PostgreSQL job
//! store and one S3 document store (moto), electing their dispatcher with the shard's
//! Lease on the Kubernetes API double.
//!
//! While a load generator submits 1,000 jobs round-robin to every pod still alive, the
//! leader is killed with SIGKILL, and then the next one. What is checked, from what the
//! printers (a raw 9100 sink and `ippeveprinter`) received and from the ledger:
//! - every job acknowledged by any pod reaches its printer;
//! - a job reaches a printer twice only when its first delivery began before a takeover
//!   and the second after it (the one job in transmission when its leader stopped), at most
//!   once per printer per takeover (the kills, and any step-down of a leader too slow to
//!   renew on this busy machine); a submission sent again after its pod went away carries
//!   its attempt in the document, so the two jobs it may make are told apart from a job
//!   printed twice;
//! - dispatch resumes, on another pod, within 10 s of each kill;
//! - the ledger charges each acknowledged job exactly once.
//!
//! Besides: a leader cut off from the API server steps down; a queue moved between shards
//! is dispatched by one shard at a time; PostgreSQL restarting under load loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use printfleet_e2e::cluster::{Shard, sharded_queue_yaml};
use printfleet_e2e::documents;
use printfleet_e2e::process::eventually;
use printfleet_e2e::spooler::{config_yaml, http_get, printer_yaml, spooler_binary};
use printfleet_e2e::{IppConnection, IppEvePrinter, RawSink, Spooler};

const SHARD: &str = "printfleet-shard-0";
const LEASE_SECONDS: u64 = 4;
const MARKER: &str = "failover-job-";
const USER: &str = "failover";
const JOBS: usize = 1000;
/// Every tenth job goes to the queue of the IPP printer, the others to the 9100 sink.
const IPP_EVERY: usize = 10;
/// Submissions per second, so the load spans both kills and both takeovers.
const RATE: usize = 40;
const RESUME_LIMIT: Duration = Duration::from_secs(10);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(180);
/// 0.10 EUR per impression.
const PRICE_MINOR: i64 = 10;

fn queue_of(submission: usize) -> &'static str {
    if submission.is_multiple_of(IPP_EVERY) {
        "failover-ipp"
    } else {
        "failover-raw"
    }
}

/// A Print-Job's document: (submission, attempt), the attempt counted from 0. A client
/// that sends a submission again after a pod went away sends it marked with the next
/// attempt, so the printers tell the two jobs it may make apart.
type Sent = (usize, usize);

/// Small documents stay inline in the job row, larger ones go to S3: alternate, so both
/// shared stores are used.
fn document((submission, attempt): Sent) -> Bytes {
    let size = if submission.is_multiple_of(2) {
        4 * 1024
    } else {
        80 * 1024
    };
    documents::pdf(&format!("{MARKER}{submission:04}.{attempt}"), size).into()
}

fn marker_in(bytes: &[u8]) -> Option<Sent> {
    let text = String::from_utf8_lossy(bytes);
    let start = text.find(MARKER)? + MARKER.len();
    let submission = text.get(start..start + 4)?.parse().ok()?;
    let attempt = text.get(start + 5..start + 6)?.parse().ok()?;
    Some((submission, attempt))
}

async fn start_shard() -> Shard {
    Shard::start(SHARD, LEASE_SECONDS, false)
        .await
        .expect("PostgreSQL, moto and the API double")
}

/// Pod `name` of three.
fn pod(shard: &Shard, config: &str, name: &str) -> Spooler {
    shard.pod(config, name, 3).unwrap_or_else(|error| {
        panic!(
            "pod {name} did not start: {error}\n--- postgres ---\n{}",
            shard.postgres.log()
        )
    })
}

/// Each printer's deliveries: what was sent -> start times of its complete deliveries.
struct Printed {
    sink: RawSink,
    eve: IppEvePrinter,
    /// ippeveprinter's spool files already read, with what each carries and when it was
    /// first seen.
    eve_files: Mutex<BTreeMap<PathBuf, (Sent, Instant)>>,
}

impl Printed {
    fn raw(&self) -> BTreeMap<Sent, Vec<Instant>> {
        let mut by_sent: BTreeMap<Sent, Vec<Instant>> = BTreeMap::new();
        for delivery in self.sink.deliveries() {
            if let Some(sent) = marker_in(&delivery.head)
                && delivery.finished.is_some()
                && delivery.bytes == document(sent).len() as u64
            {
                by_sent.entry(sent).or_default().push(delivery.started);
            }
        }
        by_sent
    }

    /// ippeveprinter keeps one spool file per job it received; a file counts from when it
    /// is seen complete (it holds the whole document).
    fn ipp(&self) -> BTreeMap<Sent, Vec<Instant>> {
        let mut seen = self.eve_files.lock().expect("lock");
        for path in self.eve.received_files() {
            if seen.contains_key(&path) {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            if let Some(sent) = marker_in(&bytes)
                && bytes.len() == document(sent).len()
            {
                seen.insert(path, (sent, Instant::now()));
            }
        }
        let mut by_sent: BTreeMap<Sent, Vec<Instant>> = BTreeMap::new();
        for (sent, at) in seen.values() {
            by_sent.entry(*sent).or_default().push(*at);
        }
        by_sent
    }

    fn all(&self) -> BTreeMap<Sent, Vec<Instant>> {
        let mut all = self.raw();
        all.extend(self.ipp());
        all
    }

    /// When the first delivery to the raw printer that began after `since` began: only a
    /// live pod can begin one (a file the IPP printer finishes after a kill may have been
    /// sent before it).
    fn first_after(&self, since: Instant) -> Option<Instant> {
        self.raw()
            .into_values()
            .flatten()
            .filter(|started| *started > since)
            .min()
    }
}

/// Why a submission was not acknowledged.
enum Refused {
    /// Nobody answered (a killed pod).
    Unreachable(String),
    /// The pod answered with an error.
    Status(String),
}

/// Print-Job of `sent` to `uri` (`{queue}` in it names the queue); its job-id.
async fn print(uri: &str, sent: Sent) -> Result<i32, Refused> {
    let submission = sent.0;
    let uri = uri.replace("{queue}", queue_of(submission));
    let mut client = IppConnection::new(&uri).map_err(|e| Refused::Unreachable(e.to_string()))?;
    let response = client
        .print_job(
            USER,
            &format!("job {submission}"),
            "application/pdf",
            document(sent),
        )
        .await
        .map_err(|e| Refused::Unreachable(e.to_string()))?;
    match response.integer("job-id") {
        Some(job_id) if response.is_success() => Ok(job_id),
        _ => Err(Refused::Status(format!(
            "submission {submission} to {uri}: status {:#06x}",
            response.raw_status
        ))),
    }
}

/// Submits `JOBS` jobs at `RATE` per second, job `i` to pod `i % 3`, or to the next pod
/// alive when that one does not answer (as a Service would). Records the acknowledged
/// attempt of each submission and its job-id. Returns the failures, and the submissions
/// sent again after a pod went away during the request: that pod may have stored the job
/// before it died, so the second Print-Job can make a second job (IPP gives a client no
/// way to tell).
async fn load(
    uris: Vec<String>,
    acked: Arc<Mutex<BTreeMap<Sent, i32>>>,
) -> (Vec<String>, BTreeSet<usize>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for submission in 0..JOBS {
        let due = started + Duration::from_secs_f64(submission as f64 / RATE as f64);
        tokio::time::sleep_until(due.into()).await;
        let uris = uris.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut last_error = String::new();
            for attempt in 0..uris.len() {
                let uri = &uris[(submission + attempt) % uris.len()];
                match print(uri, (submission, attempt)).await {
                    Ok(job_id) => {
                        acked
                            .lock()
                            .expect("lock")
                            .insert((submission, attempt), job_id);
                        return Ok(attempt > 0);
                    }
                    Err(Refused::Status(status)) => return Err(status),
                    Err(Refused::Unreachable(error)) => last_error = error,
                }
            }
            Err(format!(
                "submission {submission}: no pod answered: {last_error}"
            ))
        }));
    }
    let mut failures = Vec::new();
    let mut resent = BTreeSet::new();
    for (submission, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok(false)) => {}
            Ok(Ok(true)) => {
                resent.insert(submission);
            }
            Ok(Err(failure)) => failures.push(failure),
            Err(panic) => failures.push(panic.to_string()),
        }
    }
    (failures, resent)
}

/// When each pod began to lead the shard (the spooler logs it with each new epoch), on
/// the test's clock: `clock` is the same moment as an `Instant` and a `SystemTime`.
fn takeovers<'a>(
    pods: impl Iterator<Item = &'a Spooler>,
    clock: (Instant, SystemTime),
) -> Vec<Instant> {
    let mut times = Vec::new();
    for pod in pods {
        for line in pod.log().lines() {
            if !line.contains("leading the shard: dispatching") {
                continue;
            }
            let plain: String = strip_ansi(line);
            let Some(stamp) = plain.split_whitespace().next() else {
                continue;
            };
            let Ok(at) = stamp.parse::<jiff::Timestamp>() else {
                continue;
            };
            let at = SystemTime::from(at);
            let instant = match at.duration_since(clock.1) {
                Ok(after) => clock.0 + after,
                Err(before) => clock.0 - before.duration(),
            };
            times.push(instant);
        }
    }
    times.sort();
    times
}

fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Kills the current leader once it has printed something since `since`; returns when
/// and whom, and how long until another pod printed.
async fn kill_leader(
    cluster: &Shard,
    pods: &mut BTreeMap<String, Spooler>,
    printed: &Printed,
    since: Instant,
) -> (Instant, String, Duration) {
    eventually("the leader to print", Duration::from_secs(60), || {
        printed.first_after(since)
    })
    .await;
    let leader = eventually("a leader", Duration::from_secs(30), || cluster.leader()).await;
    let pod = pods
        .get_mut(&leader)
        .expect("the leader is one of the pods");
    pod.kill9();
    let killed_at = Instant::now();
    let resumed = eventually(
        "dispatch to resume on another pod",
        Duration::from_secs(60),
        || printed.first_after(killed_at),
    )
    .await;
    let new_leader = cluster.leader().unwrap_or_default();
    assert_ne!(new_leader, leader, "the killed pod cannot lead");
    (killed_at, leader, resumed - killed_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_survives_two_leader_kills_under_load_without_losing_or_doubling_jobs() {
    let cluster = start_shard().await;
    let sink = RawSink::start(4096).expect("sink");
    let eve = IppEvePrinter::start_quick("failover-eve").expect("ippeveprinter");
    let queue = |name: &str, printer: &str| {
        cluster.queue_yaml(name, &[printer], "  accountingPolicy: failover\n")
    };
    let config = config_yaml(&[
        printer_yaml("raw", &sink.uri()),
        printer_yaml("eve", &eve.uri()),
        queue("failover-raw", "raw"),
        queue("failover-ipp", "eve"),
        "apiVersion: printfleet.io/v1alpha1\nkind: AccountingPolicy\nmetadata:\n  name: failover\nspec:\n  currency: EUR\n  prices:\n    monoImpression: \"0.10\"\n".to_string(),
    ]);
    let printed = Arc::new(Printed {
        sink,
        eve,
        eve_files: Mutex::default(),
    });
    // The IPP printer's files are looked at all the time, so each is timed within moments
    // of its arrival.
    let watcher = tokio::spawn({
        let printed = printed.clone();
        async move {
            loop {
                printed.ipp();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let mut pods: BTreeMap<String, Spooler> = ["pod-0", "pod-1", "pod-2"]
        .into_iter()
        .map(|name| (name.to_string(), pod(&cluster, &config, name)))
        .collect();
    let uris: Vec<String> = pods.values().map(|pod| pod.queue_uri("{queue}")).collect();
    eventually(
        "a pod to take the shard Lease",
        Duration::from_secs(30),
        || cluster.leader(),
    )
    .await;

    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let started = Instant::now();
    let clock = (started, SystemTime::now());
    let load = tokio::spawn(load(uris, acked.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first = kill_leader(&cluster, &mut pods, &printed, started).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = kill_leader(&cluster, &mut pods, &printed, first.0).await;
    let (failures, resent) = load.await.expect("load generator");
    let load_ended = Instant::now();
    let acked = acked.lock().expect("lock").clone();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        acked.len(),
        JOBS,
        "every submission is acknowledged by some pod"
    );
    assert!(
        second.0 < load_ended,
        "both kills came while jobs were still being submitted"
    );

    // Every acknowledged job reaches its printer.
    let survivor = pods
        .values()
        .find(|pod| pod.pid().is_some())
        .expect("one pod is left");
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let delivered = printed.all();
        let missing: Vec<Sent> = acked
            .keys()
            .filter(|sent| !delivered.contains_key(sent))
            .copied()
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged jobs never printed: {missing:?}\n{}",
            survivor.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut client = IppConnection::new(&survivor.queue_uri("failover-raw")).expect("client");
    let raw_jobs: BTreeMap<usize, i32> = acked
        .iter()
        .filter(|((submission, _), _)| queue_of(*submission) == "failover-raw")
        .map(|((submission, _), id)| (*submission, *id))
        .collect();
    if let Err(problem) = client
        .wait_until_completed(&raw_jobs, USER, Duration::from_secs(60))
        .await
    {
        panic!("{problem}");
    }
    // Time for a wrong extra delivery to show up before judging.
    tokio::time::sleep(Duration::from_secs(2)).await;

    watcher.abort();
    // The first leader's start is not a takeover; every later one is.
    let takeovers = takeovers(pods.values(), clock);
    let takeovers = &takeovers[1.min(takeovers.len())..];
    for kill in [first.0, second.0] {
        assert!(
            takeovers.iter().any(|at| *at > kill),
            "no pod took over after the kill at {kill:?}"
        );
    }
    let acked_submissions: BTreeSet<usize> =
        acked.keys().map(|(submission, _)| *submission).collect();
    let mut printed_twice = BTreeSet::new();
    // Second jobs made by a client's second Print-Job, per printer.
    let mut second_jobs = BTreeMap::new();
    for (name, deliveries) in [("raw", printed.raw()), ("ipp", printed.ipp())] {
        let mut twice_per_takeover = vec![0; takeovers.len()];
        for (sent @ (submission, _), starts) in &deliveries {
            assert!(
                acked_submissions.contains(submission),
                "submission {submission} was printed but never acknowledged"
            );
            match starts.as_slice() {
                [_] => {}
                // The job in transmission at a kill, sent again by the next leader.
                [a, b] => {
                    let (early, late) = if a < b { (a, b) } else { (b, a) };
                    let across = takeovers
                        .iter()
                        .rposition(|takeover| early < takeover && late > takeover)
                        .unwrap_or_else(|| {
                            panic!(
                                "{sent:?} was printed twice, not across a takeover ({takeovers:?})"
                            )
                        });
                    twice_per_takeover[across] += 1;
                    printed_twice.insert(*sent);
                }
                all => panic!("{sent:?} was printed {} times", all.len()),
            }
        }
        assert!(
            twice_per_takeover.iter().all(|twice| *twice <= 1),
            "{name}: more than the one job in transmission was printed again: \
             {twice_per_takeover:?}"
        );
        let submissions: BTreeSet<usize> = deliveries
            .keys()
            .map(|(submission, _)| *submission)
            .collect();
        for (submission, attempt) in deliveries.keys() {
            assert!(
                *attempt == 0 || resent.contains(submission),
                "attempt {attempt} of submission {submission}, which was not sent again"
            );
        }
        second_jobs.insert(name, deliveries.len() - submissions.len());
    }

    // The ledger charges each job once: the raw printer reports nothing, so its jobs are
    // settled at the estimate (1 impression, 0.10 EUR); the IPP printer's jobs at what it
    // reports, the same for each.
    let ipp_submissions = acked
        .keys()
        .filter(|(submission, _)| queue_of(*submission) == "failover-ipp")
        .count();
    let raw_jobs = JOBS - ipp_submissions + second_jobs.get("raw").copied().unwrap_or(0);
    let ipp_jobs = ipp_submissions + second_jobs.get("ipp").copied().unwrap_or(0);
    let rows = eventually("the ledger report", Duration::from_secs(30), || {
        let (status, body) = http_get(survivor.port(), "/api/v1/reports/queue")?;
        let report: serde_json::Value = serde_json::from_str(&body).ok()?;
        let rows: BTreeMap<String, serde_json::Value> = report["rows"]
            .as_array()?
            .iter()
            .map(|row| {
                (
                    row["key"].as_str().unwrap_or_default().to_string(),
                    row.clone(),
                )
            })
            .collect();
        let settled = rows.get("failover-raw")?["impressions"] == raw_jobs as i64;
        (status == 200 && settled).then_some(rows)
    })
    .await;
    let raw = &rows["failover-raw"];
    assert_eq!(raw["jobs"], raw_jobs as u64, "{raw}");
    assert_eq!(raw["amount_minor"], raw_jobs as i64 * PRICE_MINOR, "{raw}");
    let ipp = &rows["failover-ipp"];
    assert_eq!(ipp["jobs"], ipp_jobs as u64, "{ipp}");
    let per_job = ipp["impressions"].as_i64().unwrap_or(-1) / ipp_jobs as i64;
    assert_eq!(
        ipp["amount_minor"],
        ipp_jobs as i64 * per_job * PRICE_MINOR,
        "{ipp}"
    );

    eprintln!(
        "{JOBS} jobs acknowledged by 3 pods; leader {} killed, dispatch resumed after {:.2} s; \
         leader {} killed, resumed after {:.2} s; {} takeovers; printed twice: \
         {printed_twice:?}; second jobs from resent submissions: {second_jobs:?}",
        first.1,
        first.2.as_secs_f64(),
        second.1,
        second.2.as_secs_f64(),
        takeovers.len()
    );
    for (_, _, resumed) in [first, second] {
        assert!(
            resumed < RESUME_LIMIT,
            "dispatch resumed {resumed:?} after a leader kill"
        );
    }
}

/// A leader cut off from the API server cannot renew its Lease: it stops dispatching before
/// the Lease could expire (so before any other pod could take it), and dispatch resumes
/// when the API server is reachable again. Submissions are taken all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_the_api_server_steps_down_before_its_lease_expires() {
    let cluster = start_shard().await;
    let sink = RawSink::start(4096).expect("sink");
    let config = config_yaml(&[
        printer_yaml("raw", &sink.uri()),
        cluster.queue_yaml("failover-raw", &["raw"], ""),
    ]);
    let pods = [
        pod(&cluster, &config, "pod-0"),
        pod(&cluster, &config, "pod-1"),
    ];
    let uri = pods[0].queue_uri("{queue}");
    let leader = eventually("a leader", Duration::from_secs(30), || cluster.leader()).await;
    let printed = |since: Instant| {
        sink.deliveries()
            .into_iter()
            .filter(|delivery| delivery.started > since)
            .filter_map(|delivery| marker_in(&delivery.head))
            .map(|(submission, _)| submission)
            .collect::<BTreeSet<usize>>()
    };
    // Raw-queue submissions only (not multiples of IPP_EVERY).
    let submissions = |range: std::ops::Range<usize>| range.map(|n| n * IPP_EVERY + 1);
    for submission in submissions(0..5) {
        assert!(print(&uri, (submission, 0)).await.is_ok());
    }
    let start = Instant::now() - Duration::from_secs(3600);
    eventually("the first jobs printed", Duration::from_secs(30), || {
        (printed(start).len() == 5).then_some(())
    })
    .await;

    cluster.api.set_partitioned(true);
    let cut_at = Instant::now();
    // Whenever the leader last renewed, its Lease expires within LEASE_SECONDS of the cut.
    let expiry = cut_at + Duration::from_secs(LEASE_SECONDS);
    tokio::time::sleep_until(expiry.into()).await;
    for submission in submissions(5..15) {
        assert!(
            print(&uri, (submission, 0)).await.is_ok(),
            "submissions do not need the API server"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_expiry = printed(expiry);
    assert!(
        after_expiry.is_empty(),
        "printed {after_expiry:?} after the leader's Lease had expired"
    );
    let stepped_down = pods.iter().any(|pod| {
        pod.log()
            .contains("cannot renew the shard lease: stepping down")
    });
    assert!(stepped_down, "leader {leader} did not step down");

    cluster.api.set_partitioned(false);
    let healed_at = Instant::now();
    let expected: BTreeSet<usize> = submissions(5..15).collect();
    eventually(
        "the jobs taken during the partition to print",
        Duration::from_secs(30),
        || (printed(cut_at) == expected).then_some(()),
    )
    .await;
    eprintln!(
        "dispatch resumed {:.2} s after the partition healed",
        (printed_first(&sink, healed_at) - healed_at).as_secs_f64()
    );
}

fn printed_first(sink: &RawSink, since: Instant) -> Instant {
    sink.deliveries()
        .into_iter()
        .map(|delivery| delivery.started)
        .filter(|started| *started > since)
        .min()
        .unwrap_or(since)
}

/// Who printed each job, from the pods' logs ("job delivered" with its job-id).
fn delivered_by(pod: &Spooler) -> BTreeSet<i32> {
    pod.log()
        .lines()
        .filter(|line| line.contains("job delivered"))
        .filter_map(|line| {
            let plain = strip_ansi(line);
            let start = plain.find("job_id=")? + "job_id=".len();
            let digits: String = plain[start..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// Gives `pod` a new configuration and waits until it has loaded it (once per pod).
async fn reload(pod: &Spooler, config: &str) {
    pod.write_config(config).expect("config");
    eventually("the configuration reload", Duration::from_secs(20), || {
        pod.log().contains("configuration reloaded").then_some(())
    })
    .await;
}

/// When the operator moves a queue to another shard, each shard's pods see the new
/// configuration at their own moment. The store decides who dispatches: the new shard
/// takes the queue only once the old one has let go of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_moved_between_shards_is_dispatched_by_one_shard_at_a_time() {
    const OTHER: &str = "printfleet-shard-1";
    let cluster = start_shard().await;
    let sink = RawSink::start(4096).expect("sink");
    let config_on = |shard: &str| {
        config_yaml(&[
            printer_yaml("raw", &sink.uri()),
            sharded_queue_yaml(shard, "failover-raw", &["raw"], ""),
            // Each shard has a queue of its own besides, so both stay named.
            sharded_queue_yaml(SHARD, "stays-0", &["raw"], ""),
            sharded_queue_yaml(OTHER, "stays-1", &["raw"], ""),
        ])
    };
    let start = |shard: &str, name: &str| {
        cluster
            .pod_of(shard, &config_on(SHARD), name, 1)
            .unwrap_or_else(|error| panic!("pod {name}: {error}"))
    };
    let old = start(SHARD, "old-0");
    let new = start(OTHER, "new-0");
    let uri = new.queue_uri("{queue}");
    let all_printed = |ids: &BTreeSet<i32>| {
        let (old, new) = (delivered_by(&old), delivered_by(&new));
        ids.iter().all(|id| old.contains(id) || new.contains(id))
    };
    // Submits a few jobs and waits until some shard has printed them all.
    let print_some = |range: std::ops::Range<usize>, what: &'static str| {
        let (uri, all_printed) = (uri.clone(), &all_printed);
        async move {
            let mut ids = BTreeSet::new();
            for submission in range.map(|n| n * IPP_EVERY + 1) {
                match print(&uri, (submission, 0)).await {
                    Ok(id) => ids.insert(id),
                    Err(_) => panic!("submission {submission} refused"),
                };
            }
            eventually(what, Duration::from_secs(30), || {
                all_printed(&ids).then_some(())
            })
            .await;
            ids
        }
    };
    let printed_by =
        |pod: &Spooler, ids: &BTreeSet<i32>| delivered_by(pod).intersection(ids).count();

    let before = print_some(0..5, "jobs on the old shard").await;
    assert_eq!(printed_by(&old, &before), before.len());

    // The new shard's pod sees the move first: the old shard still owns the queue.
    reload(&new, &config_on(OTHER)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = print_some(5..10, "jobs during the move").await;
    assert_eq!(
        printed_by(&old, &during),
        during.len(),
        "only the old shard dispatches until it lets go"
    );

    // Then the old shard's pod: it lets go, and the new shard takes the queue.
    reload(&old, &config_on(OTHER)).await;
    let after = print_some(10..15, "jobs after the move").await;
    assert_eq!(
        printed_by(&new, &after),
        after.len(),
        "the new shard took over"
    );
    let everything: BTreeSet<i32> = before.union(&during).chain(after.iter()).copied().collect();
    let (by_old, by_new) = (delivered_by(&old), delivered_by(&new));
    let twice: Vec<&i32> = by_old
        .intersection(&by_new)
        .filter(|id| everything.contains(id))
        .collect();
    assert!(twice.is_empty(), "printed by both shards: {twice:?}");
}

/// PostgreSQL stopped (`pg_ctl stop -m fast`) for a few seconds and started again while
/// jobs are submitted to two pods with accounting: submissions meanwhile get a retryable
/// IPP status and the clients try again; every acknowledged job is printed, and the ledger
/// charges each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarting_under_load_loses_nothing_and_charges_each_job_once() {
    const SUBMISSIONS: usize = 300;
    let cluster = start_shard().await;
    let sink = RawSink::start(4096).expect("sink");
    let config = config_yaml(&[
        printer_yaml("raw", &sink.uri()),
        cluster.queue_yaml("failover-raw", &["raw"], "  accountingPolicy: failover\n"),
        "apiVersion: printfleet.io/v1alpha1\nkind: AccountingPolicy\nmetadata:\n  name: failover\nspec:\n  currency: EUR\n  prices:\n    monoImpression: \"0.10\"\n".to_string(),
    ]);
    let pods = [
        pod(&cluster, &config, "pod-0"),
        pod(&cluster, &config, "pod-1"),
    ];
    eventually("a leader", Duration::from_secs(30), || cluster.leader()).await;
    let uris: Vec<String> = pods.iter().map(|pod| pod.queue_uri("{queue}")).collect();

    let retried = Arc::new(Mutex::new(0usize));
    let started = Instant::now();
    let submitter = tokio::spawn({
        let retried = retried.clone();
        async move {
            let mut acked = BTreeMap::new();
            for n in 0..SUBMISSIONS {
                let submission = n * IPP_EVERY + 1;
                let due = started + Duration::from_secs_f64(n as f64 / RATE as f64);
                tokio::time::sleep_until(due.into()).await;
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match print(&uris[n % uris.len()], (submission, 0)).await {
                        Ok(job_id) => {
                            acked.insert(submission, job_id);
                            break;
                        }
                        // server-error-service-unavailable / -busy: try again, as CUPS's
                        // clients do.
                        Err(Refused::Status(status))
                            if status.ends_with("0x0502") || status.ends_with("0x0507") =>
                        {
                            *retried.lock().expect("lock") += 1;
                        }
                        Err(Refused::Status(status)) => panic!("{status}"),
                        Err(Refused::Unreachable(error)) => panic!("a pod is down: {error}"),
                    }
                    assert!(
                        Instant::now() < deadline,
                        "submission {submission} never taken"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            acked
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| cluster.postgres.restart(Duration::from_secs(3)))
        .expect("restart PostgreSQL");
    let acked = submitter.await.expect("submitter");
    let retried = *retried.lock().expect("lock");
    assert!(
        retried > 0,
        "the restart came while jobs were being submitted"
    );
    assert_eq!(acked.len(), SUBMISSIONS);

    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    loop {
        let delivered: BTreeSet<usize> = sink
            .deliveries()
            .iter()
            .filter(|delivery| delivery.finished.is_some())
            .filter_map(|delivery| marker_in(&delivery.head))
            .map(|(submission, _)| submission)
            .collect();
        let missing: Vec<&usize> = acked.keys().filter(|s| !delivered.contains(s)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged jobs never printed: {missing:?}\n{}",
            pods[0].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut client = IppConnection::new(&pods[1].queue_uri("failover-raw")).expect("client");
    if let Err(problem) = client
        .wait_until_completed(&acked, USER, Duration::from_secs(60))
        .await
    {
        panic!("{problem}");
    }
    let row = eventually("the ledger report", Duration::from_secs(30), || {
        let (status, body) = http_get(pods[0].port(), "/api/v1/reports/queue")?;
        let report: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 200).then(|| report["rows"][0].clone())
    })
    .await;
    assert_eq!(row["key"], "failover-raw", "{row}");
    assert_eq!(row["jobs"], SUBMISSIONS as u64, "{row}");
    assert_eq!(
        row["impressions"], SUBMISSIONS as i64,
        "charged once each: {row}"
    );
    assert_eq!(
        row["amount_minor"],
        SUBMISSIONS as i64 * PRICE_MINOR,
        "{row}"
    );
    // The report command in a pod (PRINTFLEET_STORE_DSN set) reads the same shared ledger.
    let output = std::process::Command::new(spooler_binary().expect("spooler binary"))
        .args(["report", "--by", "queue", "--format", "json", "--config"])
        .arg(pods[1].config_path())
        .arg("--state-dir")
        .arg(pods[1].state_dir())
        .env("PRINTFLEET_STORE_DSN", cluster.postgres.dsn("postgres"))
        .output()
        .expect("run the report command");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["rows"][0], row, "the command and HTTP agree");
    eprintln!("{SUBMISSIONS} jobs through a PostgreSQL restart; {retried} submissions retried");
}
