//! Dispatch: one worker per printer takes jobs from the store and sends them on.
//!
//! The store's atomic claim is the only guard against printing a job twice: a worker
//! sends nothing it did not claim. A pool fails over by itself, because every member's
//! worker claims from the same queues and a failing printer stops claiming while it is
//! down.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use printfleet_crds::PrinterSpec;
use printfleet_crds::queue::Retention;
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

use crate::app::App;
use crate::job::{Claimer, JobId};
use crate::store::{JobQuery, QueueDepth, WhichJobs};

mod worker;

/// What the rest of the spooler uses to poke the dispatcher.
#[derive(Clone)]
pub struct DispatchHandle {
    wake: Arc<Notify>,
    cancels: broadcast::Sender<JobId>,
}

impl DispatchHandle {
    pub fn new() -> DispatchHandle {
        let (cancels, _) = broadcast::channel(256);
        DispatchHandle {
            wake: Arc::new(Notify::new()),
            cancels,
        }
    }

    /// A job became ready (accepted, released, queue resumed): workers look again.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// A job was canceled: a worker sending it stops.
    pub fn cancel(&self, id: JobId) {
        // No receiver means no worker is running: nothing to stop.
        let _ = self.cancels.send(id);
    }

    /// Wait for `wake`. Calling `enable` on the pinned future registers interest at
    /// once, so a wake that comes before it is awaited is not lost.
    pub fn woken(&self) -> Notified<'_> {
        self.wake.notified()
    }

    /// A stream of canceled job ids.
    pub fn subscribe_cancels(&self) -> broadcast::Receiver<JobId> {
        self.cancels.subscribe()
    }
}

impl Default for DispatchHandle {
    fn default() -> Self {
        DispatchHandle::new()
    }
}

/// The dispatcher's timings; the defaults suit production, tests shorten them.
#[derive(Clone, Debug)]
pub struct DispatchSettings {
    /// Longest wait for work without a wake (so `retry_at` times are honoured).
    pub idle_poll: Duration,
    /// Re-probe a printer that is down after this, doubling up to `probe_backoff_max`.
    pub probe_backoff_initial: Duration,
    pub probe_backoff_max: Duration,
    /// Re-probe a healthy, idle printer this often, so a dead one stops claiming jobs
    /// that a healthy pool member could take.
    pub health_recheck: Duration,
    /// A failed job waits `retry_base` doubled per attempt, at most `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How often the queue depth gauges are refreshed.
    pub depth_interval: Duration,
    /// How often finished jobs beyond their queue's retention are purged, and jobs
    /// abandoned while receiving documents are closed.
    pub retention_interval: Duration,
    /// A job that receives no document for this long is closed (`multiple-operation-time-out`).
    pub multiple_operation_timeout: Duration,
    /// How often a shard leader asks the store again for the queues its configuration
    /// gives it (one another shard still sends jobs of is taken once that shard lets go).
    pub ownership_interval: Duration,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            idle_poll: Duration::from_secs(1),
            probe_backoff_initial: Duration::from_secs(1),
            probe_backoff_max: Duration::from_secs(60),
            health_recheck: Duration::from_secs(30),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            depth_interval: Duration::from_secs(15),
            retention_interval: Duration::from_secs(60),
            multiple_operation_timeout: Duration::from_secs(
                crate::job::MULTIPLE_OPERATION_TIME_OUT_SECONDS
                    .unsigned_abs()
                    .into(),
            ),
            ownership_interval: Duration::from_secs(2),
        }
    }
}

/// Runs the dispatcher with default settings until `shutdown` turns true (or its sender
/// is dropped). Workers finish the job they are sending before they exit.
pub async fn run(app: Arc<App>, claimer: Claimer, shutdown: watch::Receiver<bool>) {
    run_with(app, claimer, DispatchSettings::default(), shutdown).await
}

/// A printer's running worker.
struct WorkerSlot {
    spec: PrinterSpec,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Runs the dispatcher: one worker per configured printer, reconciled whenever the
/// configuration changes, plus the housekeeping (queue depths, history retention).
pub async fn run_with(
    app: Arc<App>,
    claimer: Claimer,
    settings: DispatchSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let housekeeping = tokio::spawn(housekeeping(
        app.clone(),
        settings.clone(),
        shutdown.clone(),
    ));
    let hand_off = tokio::spawn(hand_off(
        app.clone(),
        claimer.clone(),
        settings.ownership_interval,
        shutdown.clone(),
    ));
    let mut config = app.config.clone();
    let mut workers: BTreeMap<String, WorkerSlot> = BTreeMap::new();
    let mut retiring: Vec<JoinHandle<()>> = Vec::new();
    loop {
        config.borrow_and_update();
        reconcile(&app, &claimer, &settings, &mut workers, &mut retiring);
        tokio::select! {
            changed = config.changed() => {
                if changed.is_err() {
                    // The configuration can no longer change; serve it until shutdown.
                    stopped(&mut shutdown).await;
                    break;
                }
            }
            _ = stopped(&mut shutdown) => break,
        }
    }
    for slot in workers.values() {
        let _ = slot.stop.send(true);
    }
    for task in workers.into_values().map(|slot| slot.task).chain(retiring) {
        let _ = task.await;
    }
    let _ = housekeeping.await;
    let _ = hand_off.await;
}

/// Keeps a shard leader's queues owned in the store (`JobStore::own_queues`): at start, on
/// every configuration change and every `interval`, so a queue moved here is taken as soon
/// as its old shard lets go of it, and one moved away is let go once its jobs in flight
/// are done. A claimer without a shard dispatches every queue it is given: nothing to do.
async fn hand_off(
    app: Arc<App>,
    claimer: Claimer,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(shard) = claimer.shard.clone() else {
        return;
    };
    let mut config = app.config.clone();
    // The first look is now, below; the ticks come after it.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut owned: Vec<String> = Vec::new();
    loop {
        let (queues, shards) = {
            let config = config.borrow_and_update();
            (config.queues_of_shard(&shard), config.shards())
        };
        match app.store.own_queues(&claimer, &queues, &shards).await {
            Ok(now) if now != owned => {
                tracing::info!(%shard, queues = ?now, "queues owned");
                owned = now;
                app.dispatch.wake();
            }
            Ok(_) => {}
            Err(crate::store::StoreError::NotLeader { .. }) => {
                tracing::warn!(%shard, "no longer the shard's leader: queue hand-off stops");
                return;
            }
            Err(error) => tracing::warn!(%error, "handing queues between shards"),
        }
        tokio::select! {
            _ = tick.tick() => {}
            changed = config.changed() => if changed.is_err() {
                stopped(&mut shutdown).await;
                return;
            },
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Starts workers for new printers, replaces those whose spec changed, and stops those
/// that were removed (after their current job).
fn reconcile(
    app: &Arc<App>,
    claimer: &Claimer,
    settings: &DispatchSettings,
    workers: &mut BTreeMap<String, WorkerSlot>,
    retiring: &mut Vec<JoinHandle<()>>,
) {
    let config = app.config();
    let printers = config.dispatched_printers(app.settings.shard.as_deref());
    retiring.retain(|task| !task.is_finished());
    let outdated: Vec<String> = workers
        .iter()
        .filter(|(name, slot)| printers.get(name.as_str()) != Some(&&slot.spec))
        .map(|(name, _)| name.clone())
        .collect();
    for name in outdated {
        let Some(slot) = workers.remove(&name) else {
            continue;
        };
        let _ = slot.stop.send(true);
        if let Some(spec) = printers.get(name.as_str()) {
            tracing::info!(printer = %name, "printer changed; restarting its worker");
            let replacement = start_worker(app, claimer, settings, &name, spec, Some(slot.task));
            workers.insert(name, replacement);
        } else {
            tracing::info!(printer = %name, "printer removed (or no longer dispatched here); its worker stops after its current job");
            let _ = app.metrics.printer_up.remove_label_values(&[name.as_str()]);
            retiring.push(slot.task);
        }
    }
    for (name, spec) in printers {
        if !workers.contains_key(name) {
            tracing::info!(printer = %name, "starting a worker");
            let slot = start_worker(app, claimer, settings, name, spec, None);
            workers.insert(name.to_string(), slot);
        }
    }
}

fn start_worker(
    app: &Arc<App>,
    claimer: &Claimer,
    settings: &DispatchSettings,
    name: &str,
    spec: &PrinterSpec,
    previous: Option<JoinHandle<()>>,
) -> WorkerSlot {
    let (stop, stop_receiver) = watch::channel(false);
    let worker = worker::PrinterWorker {
        app: app.clone(),
        claimer: claimer.clone(),
        settings: settings.clone(),
        name: name.to_owned(),
        spec: spec.clone(),
        stop: stop_receiver,
    };
    WorkerSlot {
        spec: spec.clone(),
        stop,
        task: tokio::spawn(worker.run(previous)),
    }
}

/// Resolves once `signal` is true or its sender is gone.
/// Waits until `signal` turns true (or its sender is gone).
pub async fn stopped(signal: &mut watch::Receiver<bool>) {
    loop {
        if *signal.borrow_and_update() {
            return;
        }
        if signal.changed().await.is_err() {
            return;
        }
    }
}

pub(crate) fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Finished jobs are kept this long by default (7 days)...
const DEFAULT_HISTORY_SECONDS: u64 = 7 * 24 * 3600;
/// ...and at most this many per queue.
const DEFAULT_MAX_JOBS: u32 = 1000;

/// The history a queue keeps: finished before which unix second jobs go, and how many
/// newer ones stay at most.
fn retention_limits(retention: &Retention, now_seconds: i64) -> (i64, u32) {
    let keep_seconds = retention.history_seconds.unwrap_or(DEFAULT_HISTORY_SECONDS);
    let finished_before =
        now_seconds.saturating_sub(i64::try_from(keep_seconds).unwrap_or(i64::MAX));
    (
        finished_before,
        retention.max_jobs.unwrap_or(DEFAULT_MAX_JOBS),
    )
}

/// Periodic work that is no single printer's: queue depth gauges and history retention.
async fn housekeeping(
    app: Arc<App>,
    settings: DispatchSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut depths = tokio::time::interval(settings.depth_interval);
    let mut retention = tokio::time::interval(settings.retention_interval);
    depths.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open_jobs = OpenJobs::default();
    loop {
        tokio::select! {
            _ = depths.tick() => update_queue_depths(&app).await,
            _ = retention.tick() => {
                purge_history(&app).await;
                close_abandoned_jobs(&app, &mut open_jobs, settings.multiple_operation_timeout).await;
            }
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Jobs still receiving documents: how many they had when last seen, and since when.
/// Kept in memory, so a restart gives every open job a fresh time-out (never a shorter one).
#[derive(Default)]
struct OpenJobs(HashMap<JobId, (usize, Instant)>);

impl OpenJobs {
    /// Record what was seen now; returns the jobs without a new document for `timeout`.
    fn idle_beyond(
        &mut self,
        seen: &[(JobId, usize)],
        now: Instant,
        timeout: Duration,
    ) -> Vec<JobId> {
        let previous = std::mem::take(&mut self.0);
        let mut idle = Vec::new();
        for &(id, documents) in seen {
            let since = match previous.get(&id) {
                Some(&(count, since)) if count == documents => since,
                _ => now,
            };
            if now.duration_since(since) >= timeout {
                idle.push(id);
            }
            self.0.insert(id, (documents, since));
        }
        idle
    }
}

/// Close jobs whose client stopped sending documents (`multiple-operation-time-out`):
/// they print with the documents they have; one with none is aborted by its worker.
async fn close_abandoned_jobs(app: &App, open_jobs: &mut OpenJobs, timeout: Duration) {
    let query = JobQuery {
        which: WhichJobs::NotCompleted,
        ..JobQuery::default()
    };
    let jobs = match app.store.list_jobs(&query).await {
        Ok(jobs) => jobs,
        Err(error) => {
            tracing::warn!(%error, "listing jobs still receiving documents");
            return;
        }
    };
    let seen: Vec<(JobId, usize)> = jobs
        .iter()
        .filter(|job| !job.documents_complete)
        .map(|job| (job.id, job.documents.len()))
        .collect();
    for id in open_jobs.idle_beyond(&seen, Instant::now(), timeout) {
        match app.store.add_document(id, None, true).await {
            Ok(_) => {
                tracing::warn!(
                    job_id = id,
                    "no document for the multiple-operation-time-out; closing the job"
                );
                app.dispatch.wake();
            }
            Err(error) => tracing::warn!(%error, job_id = id, "closing an abandoned job"),
        }
    }
}

async fn update_queue_depths(app: &App) {
    let depths = match app.store.queue_depths(None).await {
        Ok(depths) => depths,
        Err(error) => {
            tracing::warn!(%error, "reading queue depths");
            return;
        }
    };
    // Only configured queues get a label: the label set stays bounded.
    for queue in app.config().queues.keys() {
        let depth = QueueDepth::of(&depths, queue).map_or(0, |depth| depth.unfinished);
        app.metrics
            .queue_depth
            .with_label_values(&[queue.as_str()])
            .set(depth);
    }
}

async fn purge_history(app: &App) {
    let now_seconds = now_millis() / 1000;
    for (queue, spec) in &app.config().queues {
        let (finished_before, keep_at_most) = retention_limits(&spec.retention, now_seconds);
        let keys = match app
            .store
            .purge_history(queue, finished_before, keep_at_most)
            .await
        {
            Ok(keys) => keys,
            Err(error) => {
                tracing::warn!(%error, queue = %queue, "purging job history");
                continue;
            }
        };
        for key in keys {
            if let Err(error) = app.documents.delete(&key).await {
                tracing::warn!(%error, queue = %queue, key = %key, "deleting a purged job's document");
            }
        }
    }
}

#[cfg(test)]
mod tests;
