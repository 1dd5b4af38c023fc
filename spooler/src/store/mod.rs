//! Durable job storage: the `JobStore` (job rows, states, claims) and the `DocumentStore`
//! (document bytes too large to keep inline).
//!
//! The contract every backend keeps: when `create_job` or `add_document` returns `Ok`, the
//! row and its document survive a kill -9 or power loss. `claim_next` is one atomic step
//! (pending to processing, recording the claimer), so two dispatchers never print one job.

use async_trait::async_trait;
use bytes::Bytes;

use crate::job::{Claimer, Job, JobId, JobState, NewDocument, NewJob};

#[cfg(test)]
pub(crate) mod contract;
pub mod documents;
pub mod spool;
pub mod sqlite;

pub use documents::{DocumentStore, DocumentWriter, LocalDocumentStore};
pub use spool::{SpoolError, SpoolLimits, SpooledDocument, spool_document};
pub use sqlite::SqliteJobStore;

/// What can go wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} does not exist")]
    NotFound(JobId),
    /// The job is not in a state that allows the change (IPP `client-error-not-possible`).
    #[error("job {id} is {state:?}: {action} is not possible")]
    NotPossible {
        id: JobId,
        state: JobState,
        action: &'static str,
    },
    /// The caller no longer holds the job's claim (another dispatcher took it over).
    #[error("job {0} is no longer claimed by this dispatcher")]
    Fenced(JobId),
    /// The store cannot be reached or is busy; the caller may retry
    /// (IPP `server-error-service-unavailable`).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("document store: {0}")]
    Document(#[from] std::io::Error),
    #[error("store: {0}")]
    Internal(String),
}

/// Which jobs `list_jobs` returns (IPP Get-Jobs `which-jobs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhichJobs {
    /// pending, pending-held, processing, processing-stopped.
    #[default]
    NotCompleted,
    /// canceled, aborted, completed.
    Completed,
    All,
}

/// A Get-Jobs style query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobQuery {
    /// `None` lists every queue.
    pub queue: Option<String>,
    pub which: WhichJobs,
    /// `my-jobs`: only this owner's.
    pub owner: Option<String>,
    /// At most this many, in job-id order (`not-completed` oldest first as CUPS does;
    /// `completed` newest first).
    pub limit: Option<usize>,
}

/// A state change asked for by a user or operator through IPP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserAction {
    /// Cancel-Job: pending/held/processing/stopped to canceled.
    Cancel,
    /// Hold-Job: pending to pending-held (`job-hold-until-specified`).
    Hold,
    /// Release-Job: pending-held to pending.
    Release,
}

/// How a dispatch attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The printer took every document; counts when it reported them.
    Completed {
        printer: String,
        impressions: Option<i64>,
        sheets: Option<i64>,
    },
    /// The job can never print (e.g. the printer rejected its format).
    Aborted { printer: String, message: String },
    /// A transient failure: back to pending, not before `retry_at` (unix ms).
    Retry {
        printer: String,
        message: String,
        retry_at_ms: i64,
    },
}

/// The job store: the same contract for SQLite (standalone) and PostgreSQL (cluster).
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Create a job; durable (row and inline document) when it returns.
    async fn create_job(&self, job: NewJob) -> Result<Job, StoreError>;
    /// Send-Document: add a document and/or mark the job's documents complete.
    async fn add_document(
        &self,
        id: JobId,
        document: Option<NewDocument>,
        last: bool,
    ) -> Result<Job, StoreError>;
    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError>;
    async fn list_jobs(&self, query: &JobQuery) -> Result<Vec<Job>, StoreError>;
    /// Apply a user's Cancel/Hold/Release; `NotPossible` when the state does not allow it.
    async fn apply(&self, id: JobId, action: UserAction) -> Result<Job, StoreError>;
    /// The bytes of an inline document (1-based number); `None` for stored ones.
    async fn inline_document(&self, id: JobId, number: i32) -> Result<Option<Bytes>, StoreError>;
    /// Atomically claim the next job for `printer` among `queues`: highest priority first,
    /// then lowest job-id; only pending jobs with all documents whose retry time has come,
    /// on queues that are not paused.
    async fn claim_next(
        &self,
        queues: &[String],
        printer: &str,
        claimer: &Claimer,
    ) -> Result<Option<Job>, StoreError>;
    /// Record how a claimed job's attempt ended. `Fenced` when the claim was lost; a job
    /// canceled meanwhile stays canceled.
    async fn finish(
        &self,
        id: JobId,
        claimer: &Claimer,
        outcome: Outcome,
    ) -> Result<Job, StoreError>;
    /// After a crash or takeover: jobs left `processing` by claimers other than `current`
    /// (or by an older epoch of it) go back to pending; returns their ids. They may be sent
    /// again: the only case in which a job can print twice.
    async fn recover(&self, current: &Claimer) -> Result<Vec<JobId>, StoreError>;
    /// Pause-Printer / Resume-Printer, persisted.
    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<(), StoreError>;
    async fn paused_queues(&self) -> Result<Vec<String>, StoreError>;
    /// Unfinished jobs per queue.
    async fn queue_depths(&self) -> Result<Vec<(String, i64)>, StoreError>;
    /// Drop finished jobs of `queue` that finished before `finished_before` (unix s), and
    /// beyond the newest `keep_at_most`. Returns the document keys to delete.
    async fn purge_history(
        &self,
        queue: &str,
        finished_before: i64,
        keep_at_most: u32,
    ) -> Result<Vec<String>, StoreError>;
    /// The next unused leadership epoch for `claimer_id` (standalone: one per start).
    async fn next_epoch(&self, claimer_id: &str) -> Result<i64, StoreError>;
}
