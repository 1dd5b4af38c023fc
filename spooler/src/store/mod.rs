//! Durable job storage: the `JobStore` (job rows, states, claims) and the `DocumentStore`
//! (document bytes too large to keep inline).
//!
//! The contract every backend keeps: when `create_job` or `add_document` returns `Ok`, the
//! row and its document survive a kill -9 or power loss. `claim_next` is one atomic step
//! (pending to processing, recording the claimer), so two dispatchers never print one job.
//! A completed job's ledger settlement is recorded by the `finish` that records the
//! completion, in its transaction.
//!
//! # Admission
//!
//! What admission inside the store does, in the transaction that creates the job or adds
//! its last document, so that concurrent submissions are checked one after another:
//!
//! 1. for each of `admission.quotas`, sum the ledger entries (every kind) of its scope —
//!    the entries of `user` for `Scope::User`, the entries whose `groups` contain the
//!    group for `Scope::Group` — with `at_ms` in `[period.start, period.end)` and in the
//!    admission's currency, into a `quota::Spent`;
//! 2. `quota::decide(&admission.quotas, &spent, &Charge::of(&price, &usage))`;
//! 3. `Reject`: fail with [`StoreError::QuotaExceeded`], storing nothing;
//!    `Hold`: the job is `pending-held` with reason [`REASON_ACCOUNT_LIMIT`] (only an
//!    operator may release it, which `apply(Release)` does, removing that reason);
//!    `AllowAndFlag`: the estimate is flagged; `Accept`: as is;
//! 4. insert the estimate (`Admission::estimate`).

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::accounting::ledger::{Admission, EntryKind, LedgerEntry, LedgerQuery};
use crate::accounting::quota::Tripped;
use crate::job::{Claimer, Job, JobId, JobState, NewDocument, NewJob};

#[cfg(test)]
pub(crate) mod contract;
pub mod documents;
pub mod object;
pub mod postgres;
mod rules;
pub mod spool;
pub mod sqlite;

pub use documents::{DocumentStore, DocumentWriter, LocalDocumentStore};
pub use object::{ObjectDocumentStore, S3Credentials, S3Settings};
pub use postgres::{PostgresJobStore, PostgresOptions};
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
    /// Another dispatcher has led the shard since this one took it (`lead_shard`).
    #[error("this dispatcher no longer leads shard {shard}")]
    NotLeader { shard: String },
    /// The store cannot be reached or is busy; the caller may retry
    /// (IPP `server-error-service-unavailable`).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("document store: {0}")]
    Document(#[from] std::io::Error),
    #[error("store: {0}")]
    Internal(String),
    /// Admission refused the job: a quota whose action is reject would be exceeded
    /// (IPP `client-error-account-limit-reached`). Nothing was stored.
    #[error("quota {} exceeded for {:?}: {:?}", .0.rule, .0.scope, .0.limit)]
    QuotaExceeded(Tripped),
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

/// A queue's unfinished jobs (`queued-job-count`), and how many of them are printing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    pub queue: String,
    pub unfinished: i64,
    pub processing: i64,
}

impl QueueDepth {
    /// `queue`'s entry in `depths` as `JobStore::queue_depths` returns them (in queue
    /// order); `None` when it has no unfinished job.
    pub fn of<'a>(depths: &'a [QueueDepth], queue: &str) -> Option<&'a QueueDepth> {
        depths
            .binary_search_by(|depth| depth.queue.as_str().cmp(queue))
            .ok()
            .map(|index| &depths[index])
    }
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

/// A job claimed for a printer (`JobStore::claim_next`), with what sending and settling
/// it takes, read in the same trip to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub job: Job,
    /// The bytes of each of `job.documents`, in order, when it is kept inline; `None` for
    /// a document in the `DocumentStore`, or for an inline one whose bytes are lost (the
    /// job can never print).
    pub inline: Vec<Option<Bytes>>,
    /// The job's ledger estimate, when it was admitted with one.
    pub estimate: Option<LedgerEntry>,
}

/// How a dispatch attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The printer took every document; counts when it reported them.
    Completed {
        printer: String,
        impressions: Option<i64>,
        sheets: Option<i64>,
        /// The job's settlement (`accounting::ledger::settlement`), for an accounted job:
        /// recorded in the transaction that records the completion, unless the job has a
        /// closing entry already.
        settlement: Option<LedgerEntry>,
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

/// An outcome `JobStore::record_outcome` recorded: the job as `finish` returns it, once
/// the store has it (`Fenced` and the like arrive here too).
pub struct Recorded(Pin<Box<dyn Future<Output = Result<Job, StoreError>> + Send>>);

impl Recorded {
    /// An outcome the store has already answered for.
    pub fn answered(job: Job) -> Recorded {
        Recorded(Box::pin(std::future::ready(Ok(job))))
    }

    pub async fn finished(self) -> Result<Job, StoreError> {
        self.0.await
    }
}

/// The job store: the same contract for SQLite (standalone) and PostgreSQL (cluster).
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Create a job; durable (row and inline document) when it returns.
    ///
    /// With `job.admission`, admission happens in the same transaction (see the module docs,
    /// # Admission).
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
    /// on queues that are not paused. With `claimer.shard`, `NotLeader` once another
    /// dispatcher has led the shard since the claimer took it.
    async fn claim_next(
        &self,
        queues: &[String],
        printer: &str,
        claimer: &Claimer,
    ) -> Result<Option<Claim>, StoreError>;
    /// Record how a claimed job's attempt ended. `Fenced` when the claim was lost; a job
    /// canceled meanwhile stays canceled.
    async fn finish(
        &self,
        id: JobId,
        claimer: &Claimer,
        outcome: Outcome,
    ) -> Result<Job, StoreError>;
    /// `finish`, returning as soon as the outcome survives the process being killed (a
    /// printer's next job may start then: a kill resends at most the job in transmission),
    /// with the job as recorded to come. A backend that records outcomes no faster than it
    /// commits them keeps this default, which waits for `finish`.
    async fn record_outcome(
        &self,
        id: JobId,
        claimer: &Claimer,
        outcome: Outcome,
    ) -> Result<Recorded, StoreError> {
        Ok(Recorded::answered(self.finish(id, claimer, outcome).await?))
    }
    /// After a crash or takeover: jobs left `processing` by claimers other than `current`
    /// (or by an older epoch of it) go back to pending; returns their ids. They may be sent
    /// again: the only case in which a job can print twice.
    async fn recover(&self, current: &Claimer) -> Result<Vec<JobId>, StoreError>;
    /// Takes over dispatch of `shard` for `claimer_id`, in one transaction: the shard's
    /// next epoch names it the leader, which fences every earlier leader (its claims fail
    /// with `NotLeader` from then on), and the jobs earlier leaders left `processing` go
    /// back to pending (returned; like `recover`, they may be sent again).
    async fn lead_shard(
        &self,
        shard: &str,
        claimer_id: &str,
    ) -> Result<(Claimer, Vec<JobId>), StoreError>;
    /// Hands queues between shards. A shard-led claimer claims only jobs of the queues its
    /// shard owns here, so which shard dispatches a queue is decided by the store, never by
    /// when each pod sees a new configuration. In one transaction, for the claimer's shard:
    /// - it gives up its queues that are not in `queues`, each once none of its jobs is
    ///   being sent by the shard;
    /// - it takes the queues of `queues` that nobody owns, or whose owner is not among
    ///   `shards` (the shards the configuration names: the owner was removed). The jobs
    ///   such an owner left `processing` go back to pending, as at a takeover;
    /// - it returns the queues it owns.
    ///
    /// `NotLeader` once another dispatcher leads the shard.
    async fn own_queues(
        &self,
        claimer: &Claimer,
        queues: &[String],
        shards: &[String],
    ) -> Result<Vec<String>, StoreError>;
    /// The installation's salt for hashed user labels: the one stored, or `proposed`, stored
    /// now, when there is none yet. The first caller wins, so every pod of a cluster gets
    /// the same.
    async fn installation_salt(&self, proposed: &[u8]) -> Result<Vec<u8>, StoreError>;
    /// Pause-Printer / Resume-Printer, persisted.
    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<(), StoreError>;
    async fn paused_queues(&self) -> Result<Vec<String>, StoreError>;
    /// Unfinished jobs per queue that has any, ordered by queue name byte by byte (as
    /// `QueueDepth::of` looks them up); only `queue`'s when given.
    /// Counted in the store, so a printer's status costs no read of its jobs.
    async fn queue_depths(&self, queue: Option<&str>) -> Result<Vec<QueueDepth>, StoreError>;
    /// Whether the store can take jobs now (`/readyz`): it answers, and it can still make
    /// writes durable (`Unavailable` otherwise).
    async fn ready(&self) -> Result<(), StoreError>;
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

    // Ledger (see `accounting::ledger`). Entries are never changed or deleted (not even by
    // `purge_history`). Besides these methods, the ledger is written by:
    // - admission (`create_job` / `add_last_document` with an `Admission`): the `estimate`;
    // - `apply(Cancel)` and `finish(Aborted)`: a `refund` (the estimate negated, with the
    //   job's printer and the time of the change), in the same transaction as the state
    //   change, when the job has an estimate and no closing entry yet.
    // The defaults are for a backend without a ledger: they refuse, and the ledger checks
    // of the contract suite fail for it.

    /// `add_document(id, document, last = true)` of an accounted job: admission happens in
    /// the same transaction (see the module docs, # Admission).
    async fn add_last_document(
        &self,
        id: JobId,
        document: Option<NewDocument>,
        admission: Admission,
    ) -> Result<Job, StoreError> {
        let _ = (id, document, admission);
        Err(no_ledger())
    }

    /// Record a job's `settlement` unless it already has a closing entry (settlement or
    /// refund); returns whether it was recorded. Idempotent: retries and a second
    /// dispatcher settling the same job charge it once. (Dispatch settles with the
    /// completion, in `finish`; this is for completions recorded without one.)
    async fn record_settlement(&self, entry: LedgerEntry) -> Result<bool, StoreError> {
        let _ = entry;
        Err(no_ledger())
    }
    /// Entries matching `query`, oldest first (by time, then job, then estimate before
    /// settlement before refund). An estimate's `printer` is reported as the printer of the
    /// job's settlement when it has one, so reports by printer attribute whole jobs.
    async fn ledger(&self, query: &LedgerQuery) -> Result<Vec<LedgerEntry>, StoreError> {
        let _ = query;
        Err(no_ledger())
    }
    /// Completed jobs with an estimate and no closing entry (their settlement was not
    /// recorded, e.g. the spooler stopped in between), at most `limit`, lowest id first.
    async fn unsettled_jobs(&self, limit: usize) -> Result<Vec<JobId>, StoreError> {
        let _ = limit;
        Err(no_ledger())
    }
}

fn no_ledger() -> StoreError {
    StoreError::Internal("this job store keeps no ledger".into())
}

/// What `record_settlement` accepts: a settlement entry, nothing else.
fn settlement_only(entry: &LedgerEntry) -> Result<(), StoreError> {
    if entry.kind == EntryKind::Settlement {
        Ok(())
    } else {
        Err(StoreError::Internal(format!(
            "a {} entry given as a settlement",
            entry.kind.keyword()
        )))
    }
}

/// What a completion of job `job` accepts: that job's settlement, nothing else.
fn settlement_of(entry: &LedgerEntry, job: JobId) -> Result<(), StoreError> {
    settlement_only(entry)?;
    if entry.job != job {
        return Err(StoreError::Internal(format!(
            "the settlement of job {} given for job {job}",
            entry.job
        )));
    }
    Ok(())
}

/// `job-state-reasons` of a job held by admission over a quota (PWG 5100.7).
pub const REASON_ACCOUNT_LIMIT: &str = "account-limit-reached";

/// `condition` when an optional filter is set, else a test that its parameter is NULL (so
/// every parameter stays bound). A statement is planned once for all bindings (SQLite
/// always, PostgreSQL once a prepared statement goes generic), so the usual
/// `(?1 IS NULL OR queue = ?1)` would never use an index.
pub(crate) fn filter(set: bool, condition: &str, parameter: &str) -> String {
    if set {
        condition.to_owned()
    } else {
        format!("{parameter} IS NULL")
    }
}

#[cfg(test)]
mod tests {
    use super::QueueDepth;

    #[test]
    fn a_queues_depth_is_found_among_depths_in_queue_order() {
        let depths: Vec<QueueDepth> = ["Lab", "lab", "office"]
            .into_iter()
            .zip(1..)
            .map(|(queue, unfinished)| QueueDepth {
                queue: queue.to_string(),
                unfinished,
                processing: 0,
            })
            .collect();
        let unfinished = |queue| QueueDepth::of(&depths, queue).map(|depth| depth.unfinished);
        assert_eq!(unfinished("Lab"), Some(1));
        assert_eq!(unfinished("lab"), Some(2));
        assert_eq!(unfinished("office"), Some(3));
        assert_eq!(unfinished("annex"), None);
        assert_eq!(unfinished("zoo"), None);
    }
}
