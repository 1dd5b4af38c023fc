//! kill -9 in the middle of a burst of submissions loses nothing acknowledged, and prints
//! twice only what was already on its way to the printer.
//!
//! Setup: one queue on one raw 9100 printer (the sink), 240 Print-Job submissions at once,
//! each document carrying a marker (`crash-job-NNNN`) so every connection the printer gets
//! can be traced to its submission. Once a third of the submissions are acknowledged the
//! spooler gets SIGKILL, then restarts on the same state directory and finishes the work.
//!
//! The rule checked, from what the printer received and the store's state after restart:
//! - every submission acknowledged with `successful-ok` reaches the printer at least once,
//!   and the restarted spooler reports its job `completed`;
//! - a job reaches the printer at most twice, and twice only when the first delivery began
//!   before the kill and the second after the restart: the spooler had handed the job to
//!   the printer but not yet recorded it as done (the one window `JobStore::recover`
//!   reopens);
//! - one printer is driven by one worker, so at most one job is in transmission at any
//!   moment: at most one job is delivered twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use printfleet_e2e::documents;
use printfleet_e2e::sink::Delivery;
use printfleet_e2e::spooler::{config_yaml, printer_yaml, queue_yaml};
use printfleet_e2e::{IppConnection, RawSink, Spooler};

const SUBMISSIONS: usize = 240;
const KILL_AFTER_ACKS: usize = SUBMISSIONS / 3;
const MARKER: &str = "crash-job-";
const USER: &str = "crash";

fn marker_of(delivery: &Delivery) -> Option<usize> {
    let head = String::from_utf8_lossy(&delivery.head);
    let start = head.find(MARKER)? + MARKER.len();
    head.get(start..start + 4)?.parse().ok()
}

/// The whole document arrived and the sender closed the connection (a kill closes it too,
/// but short).
fn is_complete(delivery: &Delivery, submission: usize) -> bool {
    delivery.finished.is_some() && delivery.bytes == document(submission).len() as u64
}

/// Small documents stay in the job row, those from 16 KiB up to the inline limit (64 KiB)
/// go to the job store's document log, larger ones to the document store: take turns so
/// all three paths are crashed.
fn document(submission: usize) -> Bytes {
    let size = match submission % 3 {
        0 => 4 * 1024,
        1 => 40 * 1024,
        _ => 96 * 1024,
    };
    documents::pdf(&format!("{MARKER}{submission:04}"), size).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_burst_loses_no_acknowledged_job() {
    let sink = RawSink::start(4096).unwrap();
    let config = config_yaml(&[
        printer_yaml("crash-sink", &sink.uri()),
        queue_yaml("crash", &["crash-sink"], ""),
    ]);
    let mut spooler = Spooler::start(&config).unwrap();
    let uri = spooler.queue_uri("crash");

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let submissions: Vec<_> = (0..SUBMISSIONS)
        .map(|submission| {
            let uri = uri.clone();
            let acknowledged = acknowledged.clone();
            tokio::spawn(async move {
                let mut client = IppConnection::new(&uri).ok()?;
                let response = client
                    .print_job(
                        USER,
                        &format!("job {submission}"),
                        "application/pdf",
                        document(submission),
                    )
                    .await
                    .ok()?;
                let job_id = response
                    .integer("job-id")
                    .filter(|_| response.is_success())?;
                acknowledged.fetch_add(1, Ordering::SeqCst);
                Some(job_id)
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.load(Ordering::SeqCst) < KILL_AFTER_ACKS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        acknowledged.load(Ordering::SeqCst) >= KILL_AFTER_ACKS,
        "only {} of {SUBMISSIONS} submissions acknowledged in 60 s; spooler log:\n{}",
        acknowledged.load(Ordering::SeqCst),
        spooler.log()
    );
    spooler.kill9();
    let killed_at = Instant::now();

    // submission -> job-id, for the ones the spooler acknowledged.
    let mut acked: BTreeMap<usize, i32> = BTreeMap::new();
    for (submission, task) in submissions.into_iter().enumerate() {
        if let Some(job_id) = task.await.unwrap() {
            acked.insert(submission, job_id);
        }
    }
    let mut ids: Vec<i32> = acked.values().copied().collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        acked.len(),
        "two submissions were acknowledged with the same job-id"
    );
    let delivered_before_kill: Vec<usize> =
        sink.deliveries().iter().filter_map(marker_of).collect();
    assert!(
        acked
            .keys()
            .any(|submission| !delivered_before_kill.contains(submission)),
        "every acknowledged job was printed before the kill: the kill came too late to test anything"
    );

    spooler.restart().unwrap();
    let all_delivered = |sink: &RawSink| {
        let delivered: Vec<usize> = sink
            .deliveries()
            .iter()
            .filter_map(|delivery| {
                marker_of(delivery).filter(|submission| is_complete(delivery, *submission))
            })
            .collect();
        acked
            .keys()
            .all(|submission| delivered.contains(submission))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !all_delivered(&sink) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The store's view after the restart: every acknowledged job completed.
    let mut client = IppConnection::new(&uri).unwrap();
    if let Err(problem) = client
        .wait_until_completed(&acked, USER, Duration::from_secs(30))
        .await
    {
        panic!("{problem} (after the restart)");
    }
    // Give a wrong extra delivery time to show up before judging.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut deliveries_of: BTreeMap<usize, Vec<Delivery>> = BTreeMap::new();
    let deliveries = sink.deliveries();
    for delivery in &deliveries {
        match marker_of(delivery) {
            Some(submission) => deliveries_of
                .entry(submission)
                .or_default()
                .push(delivery.clone()),
            // Health probes connect without sending; a delivery cut by the kill may have
            // stopped before its marker.
            None => assert!(
                delivery.bytes == 0 || delivery.started < killed_at,
                "{} bytes without a job marker reached the printer",
                delivery.bytes
            ),
        }
    }
    for submission in acked.keys() {
        assert!(
            deliveries_of
                .get(submission)
                .is_some_and(|all| all.iter().any(|d| is_complete(d, *submission))),
            "acknowledged submission {submission} (job {}) never reached the printer; spooler log:\n{}",
            acked[submission],
            spooler.log()
        );
    }
    let mut printed_twice = Vec::new();
    for (submission, all) in &deliveries_of {
        assert!(
            all.len() <= 2,
            "submission {submission} reached the printer {} times",
            all.len()
        );
        if all.len() == 2 {
            assert!(
                all[0].started < killed_at && all[1].started > killed_at,
                "submission {submission} was printed twice, but not across the kill"
            );
            printed_twice.push(*submission);
        }
    }
    assert!(
        printed_twice.len() <= 1,
        "{printed_twice:?} were printed twice; one printer has at most one job in flight at a kill"
    );
}
