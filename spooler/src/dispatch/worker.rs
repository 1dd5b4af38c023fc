//! One printer's worker: probe the printer, claim its queues' jobs, send them one at a
//! time, and record how each attempt ended. Each job costs two trips to the store: its
//! claim (with its inline documents and its estimate), made while the previous job is
//! sent, and its outcome (with its settlement). The next job goes out once the outcome is
//! recorded, which the standalone store does before it commits it (`record_outcome`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use printfleet_crds::PrinterSpec;
use tokio::sync::{broadcast, watch};
use tracing::Instrument;

use super::{DispatchSettings, now_millis, stopped};
use crate::accounting;
use crate::accounting::ledger::LedgerEntry;
use crate::app::App;
use crate::backend::{self, Backend, BackendError, Delivery, OutgoingDocument, OutgoingJob};
use crate::config::Config;
use crate::job::{Claimer, Job, JobId, JobState};
use crate::store::{Claim, Outcome, Recorded, StoreError};

/// The wait before a failed job is tried again: `base` doubled per earlier attempt, at
/// most `max`. `attempts` counts the attempt that just failed.
pub(crate) fn retry_delay(attempts: i32, base: Duration, max: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 20) as u32;
    base.saturating_mul(1 << doublings).min(max)
}

/// Why serving a healthy printer stopped.
enum ServeEnd {
    Stopped,
    /// Time to ask the printer again how it is.
    Recheck,
    /// A job could not be delivered: the printer is treated as down.
    PrinterFailed,
}

/// How one job's attempt ended, as far as the worker is concerned (its outcome is recorded,
/// or not ours to record).
enum JobEnd {
    Done,
    PrinterFailed,
}

/// A job claimed for this printer, with its documents opened (or why they could not be).
struct Claimed {
    job: Job,
    /// Its ledger estimate, settled when it completes.
    estimate: Option<LedgerEntry>,
    documents: Result<Vec<OutgoingDocument>, OpenError>,
}

/// Cancels the worker saw while it sent a job, for jobs other than that one: the next job,
/// claimed meanwhile, may be among them.
#[derive(Default)]
struct CancelsSeen {
    ids: Vec<JobId>,
    /// Some cancels were missed (the channel lagged): ask the store.
    lagged: bool,
}

/// Why a job's documents could not be opened.
enum OpenError {
    /// The bytes are gone: the job can never print.
    Missing(String),
    /// The document or job store is failing now.
    Transient(String),
}

pub(super) struct PrinterWorker {
    pub app: Arc<App>,
    pub claimer: Claimer,
    pub settings: DispatchSettings,
    pub name: String,
    pub spec: PrinterSpec,
    pub stop: watch::Receiver<bool>,
}

impl PrinterWorker {
    /// Runs until told to stop; the job being sent when the stop comes is finished first.
    /// `previous` is the worker this one replaces (the printer's spec changed): it is
    /// waited for, so one device never gets two jobs at once from us.
    pub async fn run(mut self, previous: Option<tokio::task::JoinHandle<()>>) {
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        let span = tracing::info_span!("printer", printer = %self.name);
        async move {
            match backend::connect(&self.name, &self.spec, &self.app.settings.secrets_dir) {
                Ok(backend) => self.drive(backend).await,
                Err(error) => {
                    tracing::error!(%error, "printer cannot be used");
                    self.set_up(false);
                    stopped(&mut self.stop).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    fn is_stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn set_up(&self, up: bool) {
        self.app
            .metrics
            .printer_up
            .with_label_values(&[self.name.as_str()])
            .set(i64::from(up));
    }

    /// Sleeps for `delay` unless told to stop first; true when stopped.
    async fn sleep_or_stop(&mut self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => self.is_stopped(),
            _ = stopped(&mut self.stop) => true,
        }
    }

    async fn drive(&mut self, backend: Arc<dyn Backend>) {
        // Subscribed for the worker's life, so a cancel sent between a claim and the start
        // of the transmission is not missed.
        let mut cancels = self.app.dispatch.subscribe_cancels();
        // Jobs that completed without their settlement recorded (a stop in between).
        if let Err(error) = accounting::settle::settle_unsettled(&self.app).await {
            tracing::warn!(%error, "settling completed jobs");
        }
        let mut backoff = self.settings.probe_backoff_initial;
        let mut was_up = None;
        while !self.is_stopped() {
            let healthy = match backend.probe().await {
                Ok(health) if health.accepting => true,
                Ok(health) => {
                    if was_up != Some(false) {
                        tracing::warn!(state = health.state, reasons = ?health.reasons, "printer is not accepting jobs");
                    }
                    false
                }
                Err(error) => {
                    if was_up != Some(false) {
                        tracing::warn!(%error, "printer probe failed");
                    }
                    false
                }
            };
            self.set_up(healthy);
            if healthy {
                if was_up != Some(true) {
                    tracing::info!("printer is up");
                }
                was_up = Some(true);
                backoff = self.settings.probe_backoff_initial;
                match self.serve(&*backend, &mut cancels).await {
                    ServeEnd::Stopped => return,
                    ServeEnd::Recheck => continue,
                    ServeEnd::PrinterFailed => self.set_up(false),
                }
            }
            was_up = Some(false);
            if self.sleep_or_stop(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(self.settings.probe_backoff_max);
        }
    }

    /// Claims and sends jobs while the printer is healthy.
    async fn serve(
        &mut self,
        backend: &dyn Backend,
        cancels: &mut broadcast::Receiver<JobId>,
    ) -> ServeEnd {
        let mut healthy_at = Instant::now();
        let app = self.app.clone();
        // The queues this printer serves change only with the configuration: computed
        // once per configuration, not on every look for work.
        let mut served: Option<(Arc<Config>, Vec<String>)> = None;
        // The next job, claimed and read while the previous one was sent.
        let mut claimed_ahead: Option<Claimed> = None;
        loop {
            if self.is_stopped() {
                if let Some(next) = claimed_ahead {
                    // Not sent yet: handed back, so a stop (or a lost lease) never starts
                    // a transmission.
                    self.finish(&next.job, self.hand_back()).await;
                }
                return ServeEnd::Stopped;
            }
            if claimed_ahead.is_none() && healthy_at.elapsed() >= self.settings.health_recheck {
                return ServeEnd::Recheck;
            }
            // Registered before looking, so a wake between an empty claim and the wait
            // is not lost.
            let woken = app.dispatch.woken();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let config = app.config();
            if !served
                .as_ref()
                .is_some_and(|(seen, _)| Arc::ptr_eq(seen, &config))
            {
                let queues = config.queues_of_printer(&self.name, app.settings.shard.as_deref());
                served = Some((config, queues));
            }
            let queues = served
                .as_ref()
                .map_or(&[][..], |(_, queues)| queues.as_slice());
            let claimed = match claimed_ahead.take() {
                Some(claimed) => Some(claimed),
                None => self.claim(queues).await,
            };
            let Some(Claimed {
                job,
                estimate,
                documents,
            }) = claimed
            else {
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep(self.settings.idle_poll) => {}
                    _ = stopped(&mut self.stop) => return ServeEnd::Stopped,
                }
                continue;
            };
            // The next job is claimed and read while this one is sent, so the printer gets
            // it as soon as this one's outcome is recorded.
            let mut seen = CancelsSeen::default();
            let (end, next) = tokio::join!(
                self.attempt(
                    backend,
                    &job,
                    estimate.as_ref(),
                    documents,
                    cancels,
                    &mut seen
                )
                .instrument(self.job_span(&job)),
                self.claim(queues),
            );
            let next_id = next.as_ref().map(|next| next.job.id);
            claimed_ahead = next;
            if let Some(id) = next_id
                && self.canceled_meanwhile(id, &seen).await
            {
                claimed_ahead = None;
            }
            match end {
                JobEnd::Done => healthy_at = Instant::now(),
                JobEnd::PrinterFailed => {
                    if let Some(next) = claimed_ahead {
                        self.finish(&next.job, self.hand_back()).await;
                    }
                    return ServeEnd::PrinterFailed;
                }
            }
        }
    }

    /// The next job of `queues` for this printer, with its documents opened, if there is
    /// one and we may have it.
    async fn claim(&self, queues: &[String]) -> Option<Claimed> {
        if queues.is_empty() {
            return None;
        }
        let Claim {
            job,
            inline,
            estimate,
        } = match self
            .app
            .store
            .claim_next(queues, &self.name, &self.claimer)
            .await
        {
            Ok(claim) => claim?,
            Err(error) => {
                tracing::warn!(%error, "claiming a job");
                return None;
            }
        };
        let documents = self.open_documents(&job, inline).await;
        Some(Claimed {
            job,
            estimate,
            documents,
        })
    }

    /// Whether job `id`, claimed while another was sent, was canceled meanwhile (the store
    /// holds it canceled already: nothing is left to do with it).
    async fn canceled_meanwhile(&self, id: JobId, seen: &CancelsSeen) -> bool {
        if seen.ids.contains(&id) {
            return true;
        }
        seen.lagged
            && matches!(
                self.app.store.job(id).await,
                Ok(Some(current)) if current.state == JobState::Canceled
            )
    }

    fn job_span(&self, job: &Job) -> tracing::Span {
        tracing::info_span!(
            "job",
            job_id = job.id,
            queue = %job.queue,
            printer = %self.name,
            attempt = job.attempts,
        )
    }

    /// Sends `job` and records its outcome (settling `estimate` when it completes).
    async fn attempt(
        &self,
        backend: &dyn Backend,
        job: &Job,
        estimate: Option<&LedgerEntry>,
        documents: Result<Vec<OutgoingDocument>, OpenError>,
        cancels: &mut broadcast::Receiver<JobId>,
        seen: &mut CancelsSeen,
    ) -> JobEnd {
        if job.documents.is_empty() {
            self.finish(job, self.aborted("the job has no document"))
                .await;
            return JobEnd::Done;
        }
        let documents = match documents {
            Ok(documents) => documents,
            Err(OpenError::Missing(message)) => {
                tracing::error!(%message, "job documents are missing");
                self.finish(job, self.aborted(&message)).await;
                return JobEnd::Done;
            }
            Err(OpenError::Transient(message)) => {
                // Our storage, not the printer, failed: try later, printer stays up.
                tracing::warn!(%message, "opening the job's documents");
                self.finish(job, self.retry(job, &message)).await;
                return JobEnd::Done;
            }
        };
        tracing::debug!(documents = documents.len(), "sending job");
        let started = Instant::now();
        let Some(result) = self
            .print_unless_canceled(backend, job, documents, cancels, seen)
            .await
        else {
            // The store already holds the job as canceled; finishing is not ours to do.
            tracing::info!("job canceled while printing; transmission abandoned");
            return JobEnd::Done;
        };
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(delivery) => {
                tracing::info!(
                    seconds,
                    impressions = ?delivery.impressions,
                    sheets = ?delivery.sheets,
                    "job delivered"
                );
                self.complete(job, estimate, delivery).await;
                JobEnd::Done
            }
            Err(BackendError::Refused(message)) => {
                tracing::warn!(%message, "printer refused the job");
                self.finish(job, self.aborted(&message)).await;
                JobEnd::Done
            }
            Err(error @ (BackendError::Unavailable(_) | BackendError::Config(_))) => {
                tracing::warn!(%error, seconds, "delivery failed; the job will be retried");
                self.finish(job, self.retry(job, &error.to_string())).await;
                JobEnd::PrinterFailed
            }
        }
    }

    /// Records the completion of `job`, with its settlement when it was admitted with
    /// `estimate`, and counts its usage and cost once the settlement is recorded (with the
    /// completion, so whoever completes the job counts it, once). Returns once the
    /// completion is recorded; the store's answer is counted when it comes, while the
    /// printer gets its next job.
    async fn complete(&self, job: &Job, estimate: Option<&LedgerEntry>, delivery: Delivery) {
        let Delivery {
            impressions,
            sheets,
        } = delivery;
        let settlement = estimate.map(|estimate| {
            accounting::settle::settlement(&self.app, estimate, job, (impressions, sheets))
        });
        let outcome = Outcome::Completed {
            printer: self.name.clone(),
            impressions,
            sheets,
            settlement: settlement.clone(),
        };
        let Some(recorded) = self.record(job, outcome).await else {
            return;
        };
        let app = self.app.clone();
        let printer = self.name.clone();
        let estimate = estimate.cloned();
        tokio::spawn(
            async move {
                let Some(finished) = answered(recorded.finished().await) else {
                    return;
                };
                count_finished(&app, &printer, &finished, false);
                if finished.state == JobState::Completed
                    && let (Some(estimate), Some(settlement)) = (estimate, settlement)
                {
                    accounting::settle::count(&app, &estimate, &settlement).await;
                }
            }
            .in_current_span(),
        );
    }

    /// Runs the transmission, dropping it if the job is canceled meanwhile; `None` when
    /// it was. Cancels of other jobs go to `seen`.
    async fn print_unless_canceled(
        &self,
        backend: &dyn Backend,
        job: &Job,
        documents: Vec<OutgoingDocument>,
        cancels: &mut broadcast::Receiver<JobId>,
        seen: &mut CancelsSeen,
    ) -> Option<Result<Delivery, BackendError>> {
        let print = backend.print(
            OutgoingJob {
                job,
                ticket: &job.ticket,
            },
            documents,
        );
        tokio::pin!(print);
        let mut listening = true;
        loop {
            tokio::select! {
                result = &mut print => return Some(result),
                canceled = cancels.recv(), if listening => match canceled {
                    Ok(id) if id == job.id => return None,
                    Ok(id) => seen.ids.push(id),
                    // Missed some cancels: ask the store whether ours was one.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        seen.lagged = true;
                        if let Ok(Some(current)) = self.app.store.job(job.id).await
                            && current.state == JobState::Canceled
                        {
                            return None;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => listening = false,
                },
            }
        }
    }

    /// Opens `job`'s documents: those in the document store from it, the inline ones from
    /// the bytes the claim brought (`inline`, in order).
    async fn open_documents(
        &self,
        job: &Job,
        inline: Vec<Option<Bytes>>,
    ) -> Result<Vec<OutgoingDocument>, OpenError> {
        let mut documents = Vec::with_capacity(job.documents.len());
        for (info, inline) in job.documents.iter().zip(inline) {
            let data: BoxStream<'static, std::io::Result<Bytes>> = match (&info.key, inline) {
                (Some(key), _) => self.app.documents.open(key).await.map_err(|error| {
                    let message = format!("document {}: {error}", info.number);
                    if error.kind() == std::io::ErrorKind::NotFound {
                        OpenError::Missing(message)
                    } else {
                        OpenError::Transient(message)
                    }
                })?,
                (None, Some(bytes)) => Box::pin(stream::once(async move { Ok(bytes) })),
                (None, None) => {
                    return Err(OpenError::Missing(format!(
                        "document {} has no bytes",
                        info.number
                    )));
                }
            };
            documents.push(OutgoingDocument {
                format: info.format.clone(),
                name: info.name.clone(),
                size: info.size,
                data,
            });
        }
        Ok(documents)
    }

    fn aborted(&self, message: &str) -> Outcome {
        Outcome::Aborted {
            printer: self.name.clone(),
            message: message.to_owned(),
        }
    }

    /// Back to pending at once: for a job claimed but never sent.
    fn hand_back(&self) -> Outcome {
        Outcome::Retry {
            printer: self.name.clone(),
            message: "the printer's worker stopped before sending the job".to_owned(),
            retry_at_ms: now_millis(),
        }
    }

    fn retry(&self, job: &Job, message: &str) -> Outcome {
        let delay = retry_delay(
            job.attempts,
            self.settings.retry_base,
            self.settings.retry_max,
        );
        Outcome::Retry {
            printer: self.name.clone(),
            message: message.to_owned(),
            retry_at_ms: now_millis().saturating_add(delay.as_millis() as i64),
        }
    }

    /// Records the outcome and counts it; the job as recorded, or `None` when the outcome
    /// was not ours to record (the claim was lost) or could not be recorded.
    async fn finish(&self, job: &Job, outcome: Outcome) -> Option<Job> {
        let is_retry = matches!(outcome, Outcome::Retry { .. });
        let recorded = self.record(job, outcome).await?;
        let finished = answered(recorded.finished().await)?;
        count_finished(&self.app, &self.name, &finished, is_retry);
        Some(finished)
    }

    /// Records the outcome (`JobStore::record_outcome`); `None` when it could not be. While
    /// the store is unavailable (PostgreSQL restarting) it tries again, waiting longer each
    /// time, until the worker is stopped.
    async fn record(&self, job: &Job, outcome: Outcome) -> Option<Recorded> {
        let mut wait = Duration::from_millis(250);
        loop {
            match self
                .app
                .store
                .record_outcome(job.id, &self.claimer, outcome.clone())
                .await
            {
                Err(StoreError::Unavailable(error)) if !self.is_stopped() => {
                    tracing::warn!(
                        %error,
                        retry_in = ?wait,
                        "store unavailable while recording the outcome"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                recorded => return answered(recorded),
            }
        }
    }
}

/// The store's answer to an outcome, with what went wrong logged.
fn answered<T>(answer: Result<T, StoreError>) -> Option<T> {
    match answer {
        Ok(value) => Some(value),
        Err(StoreError::Fenced(_)) => {
            tracing::warn!("claim lost to another dispatcher; leaving the job to it");
            None
        }
        Err(error) => {
            // The job stays processing under our claim until the next start or takeover,
            // which puts it back (or, standalone, records the outcome left in its log).
            tracing::error!(%error, "recording the job's outcome");
            None
        }
    }
}

/// Counts how an attempt on `printer` ended, from the job as the store recorded it.
fn count_finished(app: &App, printer: &str, finished: &Job, is_retry: bool) {
    let metrics = &app.metrics;
    if is_retry {
        metrics.dispatch_retries.with_label_values(&[printer]).inc();
        return;
    }
    let outcome = match finished.state {
        JobState::Completed => "completed",
        JobState::Aborted => "aborted",
        // Canceled meanwhile: counted by whoever canceled it.
        _ => return,
    };
    metrics
        .jobs_finished
        .with_label_values(&[finished.queue.as_str(), outcome])
        .inc();
    if finished.state == JobState::Completed {
        let end = finished.completed_at.unwrap_or(now_millis() / 1000);
        metrics
            .completion_seconds
            .with_label_values(&[finished.queue.as_str()])
            .observe(end.saturating_sub(finished.created_at).max(0) as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_per_attempt_up_to_the_cap() {
        let base = Duration::from_secs(5);
        let max = Duration::from_secs(300);
        assert_eq!(retry_delay(1, base, max), Duration::from_secs(5));
        assert_eq!(retry_delay(2, base, max), Duration::from_secs(10));
        assert_eq!(retry_delay(4, base, max), Duration::from_secs(40));
        assert_eq!(retry_delay(7, base, max), max);
        assert_eq!(retry_delay(i32::MAX, base, max), max);
        assert_eq!(retry_delay(0, base, max), base);
    }
}
