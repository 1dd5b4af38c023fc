//! Shard leadership: a pod dispatches its shard's queues only while it holds the shard's
//! `coordination.k8s.io/v1` Lease, and only at the epoch the store gave it when it took
//! over (`JobStore::lead_shard`).
//!
//! The Lease decides who should dispatch; the store decides who may. A leader that cannot
//! renew in time (API server unreachable, a partition) stops dispatching before the Lease
//! could expire: the Kubernetes client gives up on a request well within the renewal grace
//! period, and any error steps down. A leader that was paused past its Lease and wakes up
//! still believing it leads is refused by the store: its claims carry an epoch that is no
//! longer the shard's, and `claim_next` answers `NotLeader`.

use std::sync::Arc;
use std::time::Duration;

use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;

use crate::app::App;
use crate::dispatch;
use crate::store::StoreError;

/// How long a step-down waits for the job in transmission before leaving it: it is the
/// one job the next leader may send again.
const STEP_DOWN_WAIT: Duration = Duration::from_secs(2);

/// The Lease a pod contends for.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    /// `None`: the client's default namespace (the pod's own in a cluster).
    pub namespace: Option<String>,
    /// This pod's name in the Lease.
    pub identity: String,
    /// Seconds a leader holds the Lease without renewing it.
    pub duration_seconds: u64,
}

impl LeaseSettings {
    /// The leader renews this long before the Lease expires: half of it, so a renewal
    /// that is slow once (a busy node) is not yet a lost Lease.
    pub fn grace_seconds(&self) -> u64 {
        (self.duration_seconds / 2).max(1)
    }

    /// The longest one API request may take: a renewal that fails still fails before the
    /// Lease expires, so the leader steps down before anyone else can take it.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.grace_seconds()) / 2
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeadershipError {
    #[error("--lease-duration must be at least 2 seconds")]
    DurationTooShort,
    #[error("no Kubernetes API for the shard Lease: {0}")]
    Kubernetes(String),
}

/// A client for the Lease: in a pod its service account, elsewhere `KUBECONFIG`; every
/// request bounded by [`LeaseSettings::request_timeout`].
pub async fn lease_client(settings: &LeaseSettings) -> Result<kube::Client, LeadershipError> {
    if settings.duration_seconds < 2 {
        return Err(LeadershipError::DurationTooShort);
    }
    let mut config = kube::Config::infer()
        .await
        .map_err(|error| LeadershipError::Kubernetes(error.to_string()))?;
    let timeout = Some(settings.request_timeout());
    config.connect_timeout = timeout;
    config.read_timeout = timeout;
    config.write_timeout = timeout;
    kube::Client::try_from(config).map_err(|error| LeadershipError::Kubernetes(error.to_string()))
}

/// Contends for the Lease and publishes whether this pod holds it, until `release` turns
/// true; then gives the Lease up (if held) so a standby takes over at once.
pub async fn hold_lease(
    client: kube::Client,
    settings: LeaseSettings,
    leading: watch::Sender<bool>,
    mut release: watch::Receiver<bool>,
) {
    let mut retry = Duration::from_millis(250);
    loop {
        let manager = tokio::select! {
            built = lease_manager(&client, &settings) => built,
            _ = dispatch::stopped(&mut release) => return,
        };
        match manager {
            Ok(manager) => {
                if follow(&manager, &leading, &mut release).await {
                    if let Err(error) = manager.release().await {
                        tracing::warn!(%error, "releasing the shard lease");
                    }
                    return;
                }
                retry = Duration::from_millis(250);
            }
            Err(error) => tracing::warn!(%error, lease = %settings.name, "shard lease unavailable"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = dispatch::stopped(&mut release) => return,
        }
        retry = (retry * 2).min(Duration::from_secs(5));
    }
}

async fn lease_manager(
    client: &kube::Client,
    settings: &LeaseSettings,
) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
    let mut builder = LeaseManagerBuilder::new(client.clone(), &settings.name)
        .with_identity(&settings.identity)
        // One field manager per pod: server-side apply then refuses a second pod's claim
        // of a free Lease (409) instead of letting both believe they lead.
        .with_field_manager(format!("printfleet-spooler-{}", settings.identity))
        .with_duration(settings.duration_seconds)
        .with_grace(settings.grace_seconds());
    if let Some(namespace) = &settings.namespace {
        builder = builder.with_namespace(namespace);
    }
    builder.build().await
}

/// Publishes the manager's view until it fails (false: build a new one; its view starts
/// from "not leading", so holding the Lease still is reported again) or `release` (true).
async fn follow(
    manager: &LeaseManager,
    leading: &watch::Sender<bool>,
    release: &mut watch::Receiver<bool>,
) -> bool {
    loop {
        tokio::select! {
            changed = manager.changed() => match changed {
                Ok(holds) => {
                    tracing::info!(leading = holds, "shard lease changed hands");
                    leading.send_replace(holds);
                }
                Err(error) => {
                    // A renewal that failed: the Lease may expire before the next one.
                    if leading.send_replace(false) {
                        tracing::warn!(%error, "cannot renew the shard lease: stepping down");
                    } else {
                        tracing::warn!(%error, "shard lease");
                    }
                    return false;
                }
            },
            _ = dispatch::stopped(release) => return true,
        }
    }
}

/// Dispatches `shard` whenever `leading` says this pod holds its Lease, until `shutdown`.
/// Each time it leads it first takes the shard over in the store.
pub async fn dispatch_while_leading(
    app: Arc<App>,
    shard: String,
    claimer_id: String,
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            led = leading.wait_for(|leads| *leads) => if led.is_err() { return },
            _ = dispatch::stopped(&mut shutdown) => return,
        }
        let claimer = tokio::select! {
            taken = take_over(&app, &shard, &claimer_id) => taken,
            _ = leading.wait_for(|leads| !*leads) => continue,
            _ = dispatch::stopped(&mut shutdown) => return,
        };
        tracing::info!(%shard, epoch = claimer.epoch, "leading the shard: dispatching");
        let (stop, stopped) = watch::channel(false);
        let run = dispatch::run(app.clone(), claimer, stopped);
        tokio::pin!(run);
        let ends = tokio::select! {
            () = &mut run => return,
            _ = leading.wait_for(|leads| !*leads) => false,
            _ = dispatch::stopped(&mut shutdown) => true,
        };
        let _ = stop.send(true);
        if ends {
            run.await;
            return;
        }
        if tokio::time::timeout(STEP_DOWN_WAIT, &mut run)
            .await
            .is_err()
        {
            tracing::warn!(
                %shard,
                "stepped down while a printer was receiving a job: the next leader may send it again"
            );
        } else {
            tracing::info!(%shard, "stepped down: dispatch stopped");
        }
    }
}

/// `lead_shard`, retried while the store is unavailable.
async fn take_over(app: &App, shard: &str, claimer_id: &str) -> crate::job::Claimer {
    let mut retry = Duration::from_millis(250);
    loop {
        match app.store.lead_shard(shard, claimer_id).await {
            Ok((claimer, recovered)) => {
                if !recovered.is_empty() {
                    tracing::warn!(jobs = ?recovered, "jobs that were being sent when the last leader stopped will be sent again");
                }
                return claimer;
            }
            Err(StoreError::Unavailable(error)) => {
                tracing::warn!(%error, retry_in = ?retry, "cannot take the shard over yet");
            }
            Err(error) => tracing::error!(%error, "taking the shard over"),
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(Duration::from_secs(5));
    }
}
