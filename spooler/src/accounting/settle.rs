//! Settlement of completed jobs: the printer's counts priced, recorded once in the ledger,
//! and counted in the metrics. Dispatch records a job's settlement with its completion
//! (`Outcome::Completed`); the sweep here settles completions recorded without one (by an
//! earlier version of the spooler).

use crate::app::App;
use crate::job::{Job, JobId, JobState};
use crate::store::StoreError;

use super::admission::{policy_of_queue, privacy_of_queue};
use super::ledger::{self, EntryKind, LedgerEntry, LedgerQuery};
use super::pricing::PriceList;
use super::privacy::user_label;

/// Jobs settled per sweep query.
const SWEEP_BATCH: usize = 256;

/// The settlement of `job`, estimated at admission as `estimate`, whose printer reported
/// `counts` (impressions, sheets): priced with its queue's current prices.
pub fn settlement(
    app: &App,
    estimate: &LedgerEntry,
    job: &Job,
    counts: (Option<i64>, Option<i64>),
) -> LedgerEntry {
    let config = app.config();
    let policy = policy_of_queue(&config, &job.queue);
    let free;
    let prices = match &policy {
        Some(policy) => &policy.prices,
        None => {
            free = PriceList::free();
            &free
        }
    };
    let now_ms = jiff::Timestamp::now().as_millisecond();
    ledger::settlement(estimate, job, counts, prices, now_ms)
}

/// Records the settlement of a completed job (nothing when it has no estimate or is already
/// closed) and counts its final usage and cost in the metrics when this call recorded it.
async fn settle(app: &App, job: &Job) -> Result<(), StoreError> {
    if job.state != JobState::Completed {
        return Ok(());
    }
    let entries = app
        .store
        .ledger(&LedgerQuery {
            job: Some(job.id),
            ..LedgerQuery::default()
        })
        .await?;
    let Some(estimate) = entries.iter().find(|e| e.kind == EntryKind::Estimate) else {
        return Ok(());
    };
    let counts = (job.impressions_completed, job.sheets_completed);
    let settlement = settlement(app, estimate, job, counts);
    if app.store.record_settlement(settlement.clone()).await? {
        count(app, estimate, &settlement).await;
    }
    Ok(())
}

/// Settles every completed job whose settlement was never recorded (the spooler stopped
/// between the job's completion and its settlement). Safe to run anywhere, any number of
/// times: the store records one closing entry per job.
pub async fn settle_unsettled(app: &App) -> Result<usize, StoreError> {
    let mut settled = 0;
    let mut last_seen: Option<JobId> = None;
    loop {
        let ids = app.store.unsettled_jobs(SWEEP_BATCH).await?;
        // A job that cannot be settled (purged meanwhile) would come back forever.
        let fresh: Vec<JobId> = ids
            .into_iter()
            .filter(|id| last_seen.is_none_or(|last| *id > last))
            .collect();
        let Some(&highest) = fresh.last() else {
            return Ok(settled);
        };
        for id in fresh {
            if let Some(job) = app.store.job(id).await? {
                settle(app, &job).await?;
                settled += 1;
            }
        }
        last_seen = Some(highest);
    }
}

/// Counts a completed job's final usage and cost (estimate plus settlement), once its
/// settlement is recorded.
pub async fn count(app: &App, estimate: &LedgerEntry, settlement: &LedgerEntry) {
    let salt = app.installation_salt().await;
    let config = app.config();
    let privacy = privacy_of_queue(&config, &estimate.queue);
    let label = match salt {
        Ok(salt) => user_label(privacy, &salt, &estimate.user),
        Err(error) => {
            // Never export a name that should have been hashed.
            tracing::error!(%error, "the installation salt cannot be read; user label omitted");
            None
        }
    };
    let metrics = &app.metrics;
    let user = metrics.user_label(label);
    let printer = settlement.printer.as_deref().unwrap_or("");
    let color = if estimate.color { "color" } else { "mono" };
    let total = |a: i64, b: i64| u64::try_from(a.saturating_add(b)).unwrap_or(0);
    metrics
        .impressions
        .with_label_values(&[estimate.queue.as_str(), printer, user.as_str(), color])
        .inc_by(total(estimate.impressions, settlement.impressions));
    metrics
        .sheets
        .with_label_values(&[estimate.queue.as_str(), printer, user.as_str(), color])
        .inc_by(total(estimate.sheets, settlement.sheets));
    metrics
        .cost
        .with_label_values(&[
            estimate.queue.as_str(),
            user.as_str(),
            estimate.currency.as_str(),
        ])
        .inc_by(total(estimate.amount, settlement.amount));
}
