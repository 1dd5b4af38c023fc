//! The embedded job store: one SQLite file, for a spooler that runs alone.
//!
//! Every write goes through one writer thread that owns the only write connection. It takes
//! every request waiting in its channel, applies each inside its own SAVEPOINT of a single
//! transaction and commits once, so a request that fails never spoils its neighbours. The
//! commit only writes the log (WAL); a second thread fsyncs it and then answers the requests
//! that must survive a power loss, all those committed since its last fsync at once (group
//! commit). The writer goes on with the next batch meanwhile, so the dispatcher's
//! bookkeeping, which needs no fsync, never waits for one. A third thread copies the log
//! into the database (checkpoints); when the log grows long anyway, the writer finishes a
//! checkpoint itself between two commits so the log starts over. Reads run on a small pool
//! of read-only connections, which WAL lets proceed while the writer commits. A printer's
//! outcome is appended to a file of its own before the writer commits it, so the printer's
//! next job need not wait for the writer (see `outcome_log`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, SendError, Sender, select};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use rusqlite::{params, types::Type};
use tokio::sync::oneshot;

use super::rules::{
    Fence, PRINTING_REASONS, REASON_INCOMING, action_name, fence, finished, initial_state, now,
    state_range, to_json, user_transition, without,
};
use super::{
    Claim, JobQuery, JobStore, Outcome, QueueDepth, REASON_ACCOUNT_LIMIT, Recorded, StoreError,
    UserAction, WhichJobs, filter,
};
use crate::accounting::ledger::{Admission, LedgerEntry, LedgerQuery};
use crate::accounting::quota::QuotaDecision;
use crate::job::{
    Claimer, DocumentBody, DocumentInfo, Job, JobId, JobState, JobTicket, NewDocument, NewJob,
};

/// Schema migrations; `PRAGMA user_version` counts how many were applied.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        originating_host TEXT,
        priority INTEGER NOT NULL,
        state INTEGER NOT NULL,
        reasons TEXT NOT NULL,
        message TEXT,
        ticket TEXT NOT NULL,
        documents_complete INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        processing_at INTEGER,
        completed_at INTEGER,
        printer TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        impressions_completed INTEGER,
        sheets_completed INTEGER,
        claimer_id TEXT,
        claimer_epoch INTEGER,
        retry_at_ms INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_by_claim_order ON jobs (state, priority DESC, id);
    CREATE INDEX jobs_by_queue ON jobs (queue, state, completed_at);
    CREATE TABLE documents (
        job_id INTEGER NOT NULL REFERENCES jobs (id),
        number INTEGER NOT NULL,
        format TEXT NOT NULL,
        name TEXT,
        size INTEGER NOT NULL,
        key TEXT,
        inline BLOB,
        PRIMARY KEY (job_id, number)
    );
    CREATE TABLE paused_queues (queue TEXT PRIMARY KEY) WITHOUT ROWID;
    CREATE TABLE epochs (claimer_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL) WITHOUT ROWID;
",
    ledger::MIGRATION,
    ledger::QUOTA_TOTALS_MIGRATION,
    SHARD_LEADERS_MIGRATION,
    ledger::NO_TEMPORARY_TABLES_MIGRATION,
    DOCUMENT_LOG_MIGRATION,
];

/// Documents kept in the document log (see `document_log`): the segment and offset of
/// their record, with `inline` and `key` both NULL.
const DOCUMENT_LOG_MIGRATION: &str = "
    ALTER TABLE documents ADD COLUMN log_segment INTEGER;
    ALTER TABLE documents ADD COLUMN log_offset INTEGER;
    CREATE INDEX documents_by_log_segment ON documents (log_segment)
        WHERE log_segment IS NOT NULL;
";

/// Shard leadership (see `JobStore::lead_shard`): the current leader and epoch per shard,
/// the shard a processing job was claimed for, and the shard that owns each queue
/// (`JobStore::own_queues`); facts about the installation (its accounting salt).
const SHARD_LEADERS_MIGRATION: &str = "
    CREATE TABLE shard_leaders (
        shard TEXT PRIMARY KEY,
        claimer_id TEXT NOT NULL,
        epoch INTEGER NOT NULL
    ) WITHOUT ROWID;
    ALTER TABLE jobs ADD COLUMN claimer_shard TEXT;
    CREATE TABLE queue_owners (queue TEXT PRIMARY KEY, shard TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE installation (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
";

mod document_log;
mod ledger;
mod outcome_log;

use document_log::{Appended, DocumentLog, LOGGED_DOCUMENT_MIN, Location};
use outcome_log::{OutcomeLog, OutcomeRecord};

/// Records of at most this many bytes are appended to the document log by the submitting
/// task itself. With 256 clients sending 64 KiB documents, copying one into the page cache
/// took 60 µs on average (1.4 ms at the 99th percentile); handing it to a blocking thread
/// and waking the task again took 5.7 ms (28 ms), the task waiting for a busy async thread
/// (BENCHMARKS.md, thirteenth session). Larger records (the inline limit is configurable),
/// and one that needs a segment when none is made ahead (making one fsyncs the directory),
/// are written on a blocking thread.
const APPEND_IN_PLACE_MAX: usize = 256 * 1024;

/// Most requests committed by one transaction, so one batch cannot starve the next callers.
const MAX_BATCH: usize = 1024;
/// How long a connection waits for another process holding the database lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read connections kept open between reads.
const IDLE_READERS: usize = 4;

/// `SELECT` of every job column, in the order `job_from_row` reads them.
macro_rules! select_jobs {
    ($rest:literal) => {
        concat!(
            "SELECT id, queue, owner, name, originating_host, priority, state, reasons, message, \
             ticket, documents_complete, created_at, processing_at, completed_at, printer, \
             attempts, impressions_completed, sheets_completed FROM jobs ",
            $rest
        )
    };
}

/// The statement that hands processing jobs back to the queue (recovery, takeover, a
/// removed shard's queues): `?1` is pending, `?2` processing, `$cond` picks the jobs.
macro_rules! requeue_where {
    ($cond:literal) => {
        concat!(
            "UPDATE jobs SET state = ?1, reasons = '[]', claimer_id = NULL, \
             claimer_epoch = NULL, claimer_shard = NULL WHERE state = ?2 AND ",
            $cond
        )
    };
}

/// A job store in one SQLite file (WAL; a durable write is answered once the log is fsynced).
pub struct SqliteJobStore {
    /// `None` only while dropping, so the writer thread sees the channel close.
    writer: Option<Sender<Box<dyn WriteRequest>>>,
    writer_thread: Option<JoinHandle<()>>,
    /// Ends after the writer (which holds its channel) has ended.
    syncer_thread: Option<JoinHandle<()>>,
    /// Dropping it stops the checkpoint thread.
    checkpointer: Option<(Sender<()>, JoinHandle<()>)>,
    readers: Arc<ReadPool>,
    commits: Arc<AtomicU64>,
    /// Larger inline documents (see `document_log`).
    documents: Arc<DocumentLog>,
    outcomes: Arc<OutcomeLog>,
    /// Set by the syncer at the first fsync that fails (see `run_syncer`).
    sync_failure: Arc<OnceLock<String>>,
}

impl SqliteJobStore {
    /// Open (creating or migrating) the database at `path` and start its writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_segments(path, document_log::SEGMENT_BYTES)
    }

    fn open_with_segments(path: &Path, segment_bytes: u64) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        configure_writer(&conn)?;
        migrate(&mut conn)?;
        let documents = DocumentLog::open(&document_log::directory_of(path), segment_bytes)?;
        documents.remove_unreferenced(|segment| segment_referenced(&conn, segment))?;
        let documents = Arc::new(documents);
        let writer_documents = documents.clone();
        let (outcomes, recorded) = OutcomeLog::open(&outcome_log::path_of(path))?;
        apply_recorded_outcomes(&mut conn, recorded)?;
        // Committed with `synchronous = FULL`: on disk, so the log may forget them.
        outcomes.clear()?;
        let outcomes = Arc::new(outcomes);
        let writer_outcomes = outcomes.clone();
        // From here on commits only write the log; the syncer thread fsyncs it.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let (writer, requests) = crossbeam_channel::unbounded();
        let (syncer, committed) = crossbeam_channel::unbounded();
        let (report_synced, synced) = crossbeam_channel::unbounded();
        let commits = Arc::new(AtomicU64::new(0));
        let writer_commits = commits.clone();
        let wal_frames = Arc::new(AtomicI64::new(0));
        let checkpointer = start_checkpointer(path, wal_frames.clone())?;
        let log = log_path(path);
        let sync_failure = Arc::new(OnceLock::new());
        let syncer_failure = sync_failure.clone();
        let syncer_thread = std::thread::Builder::new()
            .name("sqlite-syncer".into())
            .spawn(move || run_syncer(&log, committed, &report_synced, &syncer_failure))
            .map_err(|e| StoreError::Internal(format!("cannot start the syncer thread: {e}")))?;
        let writer_thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let writer = Writer {
                    syncer,
                    commits: writer_commits,
                    documents: writer_documents,
                    outcomes: writer_outcomes,
                    wal_frames,
                };
                writer.run(conn, Inbox::new(requests, synced));
            })
            .map_err(|e| StoreError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteJobStore {
            writer: Some(writer),
            writer_thread: Some(writer_thread),
            syncer_thread: Some(syncer_thread),
            checkpointer: Some(checkpointer),
            readers: Arc::new(ReadPool {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
            commits,
            documents,
            outcomes,
            sync_failure,
        })
    }

    /// `Unavailable` once an fsync of the log has failed (see `run_syncer`).
    fn not_failed(&self) -> Result<(), StoreError> {
        match self.sync_failure.get() {
            Some(failure) => Err(StoreError::Unavailable(failure.clone())),
            None => Ok(()),
        }
    }

    /// Write transactions committed since `open` (however many requests each carried).
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Run `work` on the writer thread inside the next group-committed transaction; the
    /// answer arrives once that transaction is durable (its log fsynced).
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_with(Durability::Fsync, work).await
    }

    /// Like `write`, for the dispatcher's own bookkeeping (claims and outcomes): the
    /// answer arrives once the transaction is in the write-ahead log, which survives the
    /// process being killed but not a power loss. What a power loss can undo is only a
    /// claim or an outcome, and recovery sends such a job again; acceptance never
    /// takes this path.
    async fn write_relaxed<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_with(Durability::ProcessCrash, work).await
    }

    /// Like `write_relaxed`, for bookkeeping nobody waits for yet: it joins the batch
    /// being built instead of having it committed early.
    async fn write_relaxed_with_batch<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_with(Durability::ProcessCrashWithBatch, work)
            .await
    }

    async fn write_with<T, F>(&self, durability: Durability, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // After a failed fsync nothing more is changed, not even dispatch's bookkeeping: a
        // job whose submission was refused must not print, and the restart recovers from
        // what is on disk.
        self.not_failed()?;
        received(self.send(durability, work)?).await
    }

    /// Hands `work` to the writer thread; its answer comes on the returned channel.
    fn send<T, F>(&self, durability: Durability, work: F) -> Result<Answer<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let request = Box::new(Request {
            work: Some(work),
            durability,
            result: None,
            reply,
        });
        self.writer
            .as_ref()
            .ok_or_else(writer_stopped)?
            .send(request)
            .map_err(|_| writer_stopped())?;
        Ok(answer)
    }

    /// Append an inline document large enough for the document log to it before its job
    /// goes to the writer: the writer only records where it is. A record of at most
    /// [`APPEND_IN_PLACE_MAX`] bytes is written here, on the async thread, unless it needs
    /// a segment and none is made yet; the others go to a blocking thread.
    async fn log_document(
        &self,
        document: Option<&NewDocument>,
    ) -> Result<Option<Appended>, StoreError> {
        let bytes = match document.map(|document| &document.body) {
            Some(DocumentBody::Inline(bytes)) if bytes.len() >= LOGGED_DOCUMENT_MIN => {
                bytes.clone()
            }
            _ => return Ok(None),
        };
        let in_place = if bytes.len() <= APPEND_IN_PLACE_MAX {
            self.documents.try_append(&bytes)?
        } else {
            None
        };
        let appended = match in_place {
            Some(appended) => appended,
            None => {
                let log = self.documents.clone();
                tokio::task::spawn_blocking(move || log.append(&bytes))
                    .await
                    .map_err(|e| StoreError::Internal(format!("document log task failed: {e}")))??
            }
        };
        if appended.started_segment() {
            self.make_spare_segment();
        }
        Ok(Some(appended))
    }

    /// Makes the document log's next segment on a blocking thread, while submissions go on
    /// into the one just started.
    fn make_spare_segment(&self) {
        let log = self.documents.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = log.make_spare() {
                // The record that needs a segment makes one then, and hears of any error.
                tracing::warn!(%error, "cannot make the document log's next segment ahead");
            }
        });
    }

    /// Run `work` on a read-only connection, inside one read transaction (a consistent
    /// snapshot), off the async threads.
    async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // After a failed fsync the database holds rows of submissions whose clients heard a
        // refusal, and the restart may not find them: nobody is shown any of it.
        self.not_failed()?;
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.run(work))
            .await
            .map_err(|e| StoreError::Internal(format!("read task failed: {e}")))?
    }
}

impl Drop for SqliteJobStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish the requests already sent, then exit;
        // joining it means the file is quiet once the store is gone (a reopen sees all).
        self.writer.take();
        for (thread, name) in [
            (self.writer_thread.take(), "writer"),
            (self.syncer_thread.take(), "syncer"),
        ] {
            if let Some(thread) = thread
                && thread.join().is_err()
            {
                tracing::error!("the SQLite {name} thread panicked");
            }
        }
        if let Some((stop, thread)) = self.checkpointer.take() {
            drop(stop);
            if thread.join().is_err() {
                tracing::error!("the SQLite checkpoint thread panicked");
            }
        }
        // A segment still being made ahead is finished first, and none is made after.
        self.documents.close();
    }
}

/// How often the checkpoint thread copies the write-ahead log into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// Once the write-ahead log holds this many frames (4 KiB pages), the writer finishes the
/// checkpoint itself so that the log starts over (see `Writer::restart_log`).
const RESTART_LOG_FRAMES: i64 = 4096;

/// Checkpoints run on their own connection and thread (the writer's automatic checkpoint
/// is off), so copying the log into the database never stalls a commit that clients or
/// printers are waiting for. Each one tells `wal_frames` how long the log is.
fn start_checkpointer(
    path: &Path,
    wal_frames: Arc<AtomicI64>,
) -> Result<(Sender<()>, JoinHandle<()>), StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let (stop, stopped) = crossbeam_channel::unbounded::<()>();
    let thread = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_INTERVAL) {
                // PASSIVE never blocks the writer or readers; what it cannot copy now it
                // copies next time.
                match checkpoint(&conn) {
                    Ok(frames) => wal_frames.store(frames, Ordering::Relaxed),
                    Err(error) => tracing::warn!(%error, "SQLite checkpoint failed"),
                }
            }
        })
        .map_err(|e| StoreError::Internal(format!("cannot start the checkpoint thread: {e}")))?;
    Ok((stop, thread))
}

/// A PASSIVE checkpoint on `conn`: how many frames the log held.
fn checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
}

fn writer_stopped() -> StoreError {
    StoreError::Unavailable("the SQLite writer thread has stopped".into())
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        classify(&error)
    }
}

/// A lock held elsewhere or a full disk may pass: the caller may retry later.
fn classify(error: &rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::DiskFull) => {
            StoreError::Unavailable(error.to_string())
        }
        _ => StoreError::Internal(error.to_string()),
    }
}

/// Prepared statements kept per connection: the writer runs some forty distinct ones.
const STATEMENT_CACHE: usize = 128;

/// Keeps prepared statements prepared. SQLite as bundled plans with STAT4, and then
/// re-prepares a statement whenever a parameter it planned with is bound to a new value:
/// every `WHERE job_id = ?1`, on every call, an eighth of the spooler's CPU under load.
/// The query planner stability guarantee plans once for all values; the plans are the same.
fn configure_statements(conn: &Connection) -> Result<(), StoreError> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

fn configure_writer(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    configure_statements(conn)?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!(
            "the database refused WAL mode (journal_mode is {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // The checkpoint thread copies the log; after a checkpoint the log file is cut back.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let applied: i64 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let known = MIGRATIONS.len();
    let applied = usize::try_from(applied)
        .ok()
        .filter(|applied| *applied <= known)
        .ok_or_else(|| {
            StoreError::Internal(format!(
                "the database has schema version {applied}, newer than this spooler's {known}"
            ))
        })?;
    for migration in &MIGRATIONS[applied..] {
        tx.execute_batch(migration)?;
    }
    tx.pragma_update(None, "user_version", known as i64)?;
    tx.commit()?;
    Ok(())
}

/// Where the writer thread's answer to a request arrives.
type Answer<T> = oneshot::Receiver<Result<T, StoreError>>;

/// The writer thread's answer, or `writer_stopped` when it went away without one.
async fn received<T>(answer: Answer<T>) -> Result<T, StoreError> {
    answer.await.map_err(|_| writer_stopped())?
}

/// What a committed write must survive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Power loss: answered once the log holding the commit is fsynced.
    Fsync,
    /// The process being killed: answered once the commit is in the log, in the OS page
    /// cache. Applied before waiting submissions, and its batch commits as soon as no other
    /// such request waits: a printer waits for it.
    ProcessCrash,
    /// Like `ProcessCrash`, but committed with whatever batch it lands in, without cutting
    /// it short: nobody waits for it yet (a printer's next job, claimed while the printer
    /// receives the current one).
    ProcessCrashWithBatch,
    /// Nothing: an outcome the outcome log holds already (`record_outcome`). Nobody waits
    /// for it, but its batch commits as soon as no other such request waits, as for
    /// `ProcessCrash`: left to the end of a batch of submissions, the printer's next
    /// claims waited there too, and deliveries during a load at 256 clients fell by up to
    /// 40% (BENCHMARKS.md, fourteenth session).
    Recorded,
}

impl Durability {
    /// Whether a batch holding such a request commits as soon as no other bookkeeping
    /// waits, rather than taking every submission waiting first.
    fn commits_promptly(self) -> bool {
        matches!(self, Durability::ProcessCrash | Durability::Recorded)
    }
}

/// One caller's write, as the writer thread sees it.
trait WriteRequest: Send {
    fn durability(&self) -> Durability;
    /// Apply the request on the batch's connection (inside its savepoint); false when it
    /// failed, so its savepoint is rolled back.
    fn apply(&mut self, conn: &Connection) -> bool;
    /// Answer the caller once its batch is committed (and, for [`Durability::Fsync`],
    /// synced), or failed as a whole.
    fn answer(self: Box<Self>, batch: Result<(), StoreError>);
}

struct Request<T, F> {
    work: Option<F>,
    durability: Durability,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> WriteRequest for Request<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn durability(&self) -> Durability {
        self.durability
    }

    fn apply(&mut self, conn: &Connection) -> bool {
        let result = match self.work.take() {
            Some(work) => work(conn),
            None => Err(StoreError::Internal("write request applied twice".into())),
        };
        let applied = result.is_ok();
        self.result = Some(result);
        applied
    }

    fn answer(self: Box<Self>, batch: Result<(), StoreError>) {
        let answer = match (self.result, batch) {
            (Some(Err(own)), _) => Err(own),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(batch)) => Err(batch),
            (None, Ok(())) => Err(StoreError::Internal("write request not applied".into())),
        };
        // The caller may have gone away (its future dropped): nothing to tell then.
        let _ = self.reply.send(answer);
    }
}

/// Requests committed to the log that wait for its fsync, with the document log segments
/// written for them (fsynced alongside it).
struct Committed {
    requests: Vec<Box<dyn WriteRequest>>,
    documents: Vec<Arc<std::fs::File>>,
}

/// Requests received and not yet applied. The dispatcher's bookkeeping goes first: a
/// printer waits on it, a submission already waits on an fsync.
#[derive(Default)]
struct Waiting {
    relaxed: VecDeque<Box<dyn WriteRequest>>,
    durable: VecDeque<Box<dyn WriteRequest>>,
}

impl Waiting {
    fn push(&mut self, request: Box<dyn WriteRequest>) {
        match request.durability() {
            Durability::ProcessCrash | Durability::ProcessCrashWithBatch | Durability::Recorded => {
                self.relaxed.push_back(request)
            }
            Durability::Fsync => self.durable.push_back(request),
        }
    }

    fn next(&mut self) -> Option<Box<dyn WriteRequest>> {
        self.relaxed
            .pop_front()
            .or_else(|| self.durable.pop_front())
    }

    fn is_empty(&self) -> bool {
        self.relaxed.is_empty() && self.durable.is_empty()
    }
}

/// What the writer thread receives: the callers' requests, and the syncer's word that the
/// groups of submissions handed to it are on disk.
struct Inbox {
    requests: Receiver<Box<dyn WriteRequest>>,
    /// How many groups each fsync covered.
    synced: Receiver<usize>,
    waiting: Waiting,
    /// Groups of committed submissions handed to the syncer and not yet synced.
    unsynced: usize,
}

impl Inbox {
    fn new(requests: Receiver<Box<dyn WriteRequest>>, synced: Receiver<usize>) -> Self {
        Inbox {
            requests,
            synced,
            waiting: Waiting::default(),
            unsynced: 0,
        }
    }

    /// Takes in what has arrived, without waiting.
    fn receive_more(&mut self) {
        for request in self.requests.try_iter() {
            self.waiting.push(request);
        }
        let synced: usize = self.synced.try_iter().sum();
        self.unsynced = self.unsynced.saturating_sub(synced);
    }

    /// Whether the syncer is still busy with submissions committed earlier. Those
    /// applied now would wait for it anyway before their own fsync: kept in the open
    /// transaction until it is done, they take one commit, not one per lull between
    /// arrivals, and so fewer pages of the log per job (BENCHMARKS.md, fifteenth session).
    fn syncer_busy(&self) -> bool {
        self.unsynced > 0
    }

    /// Waits for the next request or for the syncer's word, whichever comes first; false
    /// once no request can come (the store is dropped).
    fn wait_for_more(&mut self) -> bool {
        select! {
            recv(self.requests) -> request => match request {
                Ok(request) => {
                    self.waiting.push(request);
                    true
                }
                Err(_) => false,
            },
            recv(self.synced) -> synced => {
                // A syncer that has stopped answers nothing more: waiting for it is over.
                let synced = synced.unwrap_or(usize::MAX);
                self.unsynced = self.unsynced.saturating_sub(synced);
                true
            }
        }
    }
}

/// The writer thread: what it hands committed requests to and keeps up to date.
struct Writer {
    syncer: Sender<Committed>,
    commits: Arc<AtomicU64>,
    documents: Arc<DocumentLog>,
    outcomes: Arc<OutcomeLog>,
    /// The log's length in frames, as the checkpoint thread last found it.
    wal_frames: Arc<AtomicI64>,
}

impl Writer {
    fn run(&self, mut conn: Connection, mut inbox: Inbox) {
        let mut watch = Duration::ZERO;
        loop {
            if inbox.waiting.is_empty() {
                match next_request(&inbox.requests, watch) {
                    Ok(request) => inbox.waiting.push(request),
                    // Every sender is gone and nothing waits: the store was dropped.
                    Err(crossbeam_channel::RecvError) => return,
                }
            }
            let mut batch = Vec::new();
            let applied = apply_batch(&mut conn, &mut inbox, &mut batch);
            watch = watch_after(&batch);
            let recorded = batch
                .iter()
                .filter(|request| request.durability() == Durability::Recorded)
                .count();
            let committed = match applied {
                Ok(()) => {
                    self.commits.fetch_add(1, Ordering::Relaxed);
                    if self.hand_over(batch) {
                        inbox.unsynced += 1;
                    }
                    true
                }
                Err(error) => {
                    tracing::warn!(%error, requests = batch.len(), "SQLite batch failed");
                    for request in batch {
                        request.answer(Err(classify(&error)));
                    }
                    false
                }
            };
            // Failed ones too, so the log can still be emptied: such a job stays
            // processing, as after any failed outcome, and the next start records the
            // outcome if its line is still there, or sends the job again.
            self.outcomes.settled(recorded as u64);
            if committed && self.wal_frames.load(Ordering::Relaxed) >= RESTART_LOG_FRAMES {
                self.restart_log(&conn);
            }
        }
    }

    /// Answers the requests of a committed batch that needed no fsync; passes the others,
    /// with the document log segments written for them, to the syncer. True when the
    /// syncer took a group.
    fn hand_over(&self, batch: Vec<Box<dyn WriteRequest>>) -> bool {
        let (durable, relaxed): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|request| request.durability() == Durability::Fsync);
        for request in relaxed {
            request.answer(Ok(()));
        }
        if durable.is_empty() {
            return false;
        }
        let committed = Committed {
            requests: durable,
            documents: self.documents.take_unsynced(),
        };
        if let Err(SendError(committed)) = self.syncer.send(committed) {
            for request in committed.requests {
                request.answer(Err(StoreError::Unavailable(
                    "the SQLite syncer thread has stopped".into(),
                )));
            }
            return false;
        }
        true
    }

    /// SQLite writes the log from its start again only once a checkpoint has copied all of
    /// it, and the checkpoint thread never gets there while commits keep coming: the log
    /// would grow without end (hundreds of MB under load), every new page of it zeroed by
    /// the kernel, every read searching its whole index. Checkpointing here, between two
    /// commits, copies the little the checkpoint thread left, so the next commit starts
    /// the log over.
    fn restart_log(&self, conn: &Connection) {
        self.wal_frames.store(0, Ordering::Relaxed);
        if let Err(error) = checkpoint(conn) {
            tracing::warn!(%error, "SQLite checkpoint failed");
        }
    }
}

/// How long the writer watches for the next request, without sleeping, after a batch that
/// carried the dispatcher's bookkeeping. A printer's worker sends its next outcome or claim
/// within one transmission, usually well under this, and waking a sleeping thread costs
/// tens of microseconds on a virtual machine, twice per job: a backlog drains 5 to 14%
/// faster when the writer watches. Never after submissions alone, so an idle spooler does
/// not spin.
const BOOKKEEPING_WATCH: Duration = Duration::from_micros(100);

/// How long to watch for the next request after `batch` (see [`BOOKKEEPING_WATCH`]).
fn watch_after(batch: &[Box<dyn WriteRequest>]) -> Duration {
    if batch
        .iter()
        .any(|request| request.durability() != Durability::Fsync)
    {
        BOOKKEEPING_WATCH
    } else {
        Duration::ZERO
    }
}

/// The next request: looked for without sleeping for up to `watch`, then waited for.
fn next_request(
    requests: &Receiver<Box<dyn WriteRequest>>,
    watch: Duration,
) -> Result<Box<dyn WriteRequest>, crossbeam_channel::RecvError> {
    let until = Instant::now() + watch;
    while Instant::now() < until {
        match requests.try_recv() {
            Ok(request) => return Ok(request),
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                return Err(crossbeam_channel::RecvError);
            }
            Err(crossbeam_channel::TryRecvError::Empty) => std::hint::spin_loop(),
        }
    }
    requests.recv()
}

/// The write-ahead log SQLite keeps beside the database at `database`.
fn log_path(database: &Path) -> PathBuf {
    let mut log = database.as_os_str().to_owned();
    log.push("-wal");
    PathBuf::from(log)
}

/// Fsyncs the log for every group of committed requests waiting (one fsync for all of
/// them), then answers them. An fsync that fails leaves their durability unknown: each
/// caller hears an error, never success. Nor does anyone after them: the kernel may have
/// dropped the pages it could not write and report the next fsync clean, and recovery
/// stops at the first damaged frame of the log, taking later commits with it. So the
/// first failure is kept in `failure` and answers every later request until the spooler
/// restarts and recovers from what is on disk (as PostgreSQL does after a failed fsync).
/// After each fsync the writer hears how many groups it covered (`synced`).
fn run_syncer(
    log: &Path,
    committed: Receiver<Committed>,
    synced: &Sender<usize>,
    failure: &OnceLock<String>,
) {
    while let Ok(mut waiting) = committed.recv() {
        let mut groups = 1;
        for more in committed.try_iter() {
            waiting.requests.extend(more.requests);
            waiting.documents.extend(more.documents);
            groups += 1;
        }
        sync_and_answer(log, waiting, failure);
        // The writer is gone only when the store is: nobody to tell then.
        let _ = synced.send(groups);
    }
}

/// One fsync for the requests `waiting` and the document log segments written for them
/// (see `run_syncer`), then their answers.
fn sync_and_answer(log: &Path, mut waiting: Committed, failure: &OnceLock<String>) {
    if let Some(failure) = failure.get() {
        for request in waiting.requests {
            request.answer(Err(StoreError::Unavailable(failure.clone())));
        }
        return;
    }
    waiting
        .documents
        .dedup_by(|later, earlier| Arc::ptr_eq(later, earlier));
    // The document log's segments are fsynced beside the database's log, at the same
    // time: the order they reach the disk in does not matter (see `document_log`), only
    // that both have before anyone hears of it. The log is opened each time: its inode
    // is the one SQLite writes now, and fsync flushes the file's data whichever
    // descriptor asks.
    let sync_log = || std::fs::File::open(log)?.sync_data();
    let synced = if waiting.documents.is_empty() {
        sync_log()
    } else {
        std::thread::scope(|scope| {
            let documents = scope.spawn(|| {
                waiting
                    .documents
                    .iter()
                    .try_for_each(|segment| segment.sync_data())
            });
            let logged = sync_log();
            let documents = documents
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("document fsync panicked")));
            logged.and(documents)
        })
    };
    if let Err(error) = &synced {
        tracing::error!(
            %error,
            log = %log.display(),
            "cannot fsync the job store's log; no write is acknowledged until a restart"
        );
        let _ = failure.set(format!(
            "cannot fsync the job store's log ({error}); the spooler must restart"
        ));
    }
    for request in waiting.requests {
        request.answer(match failure.get() {
            None => Ok(()),
            Some(failure) => Err(StoreError::Unavailable(failure.clone())),
        });
    }
}

/// Applies waiting requests (each in its own savepoint, so one that fails is undone alone)
/// in one transaction and commits it; `batch` gets the requests applied. Requests that
/// arrive meanwhile join the batch, but once the bookkeeping requests are applied and none
/// is left waiting the transaction commits at once: a claim or an outcome waits for at
/// most one submission, never for a whole batch of them. Submissions alone commit once
/// none waits and the syncer is done with the earlier ones (`Inbox::syncer_busy`).
fn apply_batch(
    conn: &mut Connection,
    inbox: &mut Inbox,
    batch: &mut Vec<Box<dyn WriteRequest>>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    inbox.receive_more();
    // Prepared once: a savepoint per request is two or three statements each time.
    let run = |sql: &str| {
        tx.prepare_cached(sql)
            .and_then(|mut statement| statement.execute([]))
    };
    // Whether this batch carries bookkeeping to commit promptly.
    let mut prompt = false;
    while batch.len() < MAX_BATCH {
        let Some(mut request) = inbox.waiting.next() else {
            if !prompt && inbox.syncer_busy() && inbox.wait_for_more() {
                continue;
            }
            break;
        };
        run("SAVEPOINT request")?;
        let applied = request.apply(&tx);
        prompt |= request.durability().commits_promptly();
        batch.push(request);
        if !applied {
            // Undo this request only.
            run("ROLLBACK TO request")?;
        }
        run("RELEASE request")?;
        inbox.receive_more();
        if prompt && inbox.waiting.relaxed.is_empty() {
            break;
        }
    }
    tx.commit()
}

/// Read-only connections, opened on demand and kept for reuse.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    fn run<T>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = match self.idle().pop() {
            Some(conn) => conn,
            None => open_reader(&self.path)?,
        };
        let result = {
            let snapshot = conn.unchecked_transaction()?;
            work(&snapshot)
        };
        let mut idle = self.idle();
        if idle.len() < IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        lock(&self.idle)
    }
}

/// Poisoning is ignored: nothing done under this store's mutexes (idle readers, the
/// document log's segments) can be left half done in a way a later holder would misread.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    configure_statements(&conn)?;
    Ok(conn)
}

fn conversion_error(
    column: usize,
    error: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Text, Box::new(error))
}

fn json_column<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    column: usize,
) -> rusqlite::Result<T> {
    let text: String = row.get(column)?;
    serde_json::from_str(&text).map_err(|e| conversion_error(column, e))
}

#[derive(Debug, thiserror::Error)]
#[error("unknown job state {0}")]
struct UnknownState(i32);

/// A job from a `select_jobs!` row, without its documents.
fn job_from_row(row: &Row<'_>) -> rusqlite::Result<Job> {
    let state: i32 = row.get(6)?;
    Ok(Job {
        id: row.get(0)?,
        queue: row.get(1)?,
        owner: row.get(2)?,
        name: row.get(3)?,
        originating_host: row.get(4)?,
        priority: row.get(5)?,
        state: JobState::from_i32(state).ok_or_else(|| conversion_error(6, UnknownState(state)))?,
        reasons: json_column(row, 7)?,
        message: row.get(8)?,
        ticket: json_column::<JobTicket>(row, 9)?,
        documents: Vec::new(),
        documents_complete: row.get(10)?,
        created_at: row.get(11)?,
        processing_at: row.get(12)?,
        completed_at: row.get(13)?,
        printer: row.get(14)?,
        attempts: row.get(15)?,
        impressions_completed: row.get(16)?,
        sheets_completed: row.get(17)?,
    })
}

fn load_documents(conn: &Connection, id: JobId) -> Result<Vec<DocumentInfo>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT number, format, name, size, key FROM documents WHERE job_id = ?1 ORDER BY number",
    )?;
    let documents = statement
        .query_map([id], |row| {
            let size: i64 = row.get(3)?;
            Ok(DocumentInfo {
                number: row.get(0)?,
                format: row.get(1)?,
                name: row.get(2)?,
                size: u64::try_from(size).map_err(|e| conversion_error(3, e))?,
                key: row.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(documents)
}

fn load_job(conn: &Connection, id: JobId) -> Result<Option<Job>, StoreError> {
    let job = conn
        .prepare_cached(select_jobs!("WHERE id = ?1"))?
        .query_row([id], job_from_row)
        .optional()?;
    match job {
        Some(mut job) => {
            job.documents = load_documents(conn, id)?;
            Ok(Some(job))
        }
        None => Ok(None),
    }
}

fn existing_job(conn: &Connection, id: JobId) -> Result<Job, StoreError> {
    load_job(conn, id)?.ok_or(StoreError::NotFound(id))
}

/// Insert document `number` of job `id`; `logged` is where its record is when its bytes
/// went to the document log.
fn insert_document(
    conn: &Connection,
    id: JobId,
    number: i32,
    document: &NewDocument,
    logged: Option<Location>,
) -> Result<(), StoreError> {
    let (key, inline): (Option<&str>, Option<&[u8]>) = match (&document.body, logged) {
        (_, Some(_)) => (None, None),
        (DocumentBody::Inline(bytes), None) => (None, Some(bytes)),
        (DocumentBody::Stored { key }, None) => (Some(key), None),
    };
    let size = i64::try_from(document.size)
        .map_err(|_| StoreError::Internal(format!("document size {} too large", document.size)))?;
    conn.prepare_cached(
        "INSERT INTO documents (job_id, number, format, name, size, key, inline, log_segment, \
         log_offset) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        id,
        number,
        document.format,
        document.name,
        size,
        key,
        inline,
        logged.map(|location| location.segment),
        logged.map(|location| location.offset),
    ])?;
    Ok(())
}

/// Whether some document row still points into segment `segment` of the document log.
fn segment_referenced(conn: &Connection, segment: i64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM documents WHERE log_segment = ?1)")?
        .query_row([segment], |row| row.get(0))?)
}

/// The bytes of an inline document (1-based `number`), from its row or the document log;
/// `None` for a document in the `DocumentStore`.
fn inline_document(
    conn: &Connection,
    log: &DocumentLog,
    id: JobId,
    number: i32,
) -> Result<Option<Bytes>, StoreError> {
    type Row = (Option<Vec<u8>>, Option<i64>, Option<i64>, i64);
    let document: Option<Row> = conn
        .prepare_cached(
            "SELECT inline, log_segment, log_offset, size FROM documents \
             WHERE job_id = ?1 AND number = ?2",
        )?
        .query_row(params![id, number], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .optional()?;
    match document {
        Some((_, Some(segment), Some(offset), size)) => {
            let size = u64::try_from(size).map_err(|e| StoreError::Internal(e.to_string()))?;
            let bytes = log.read(Location { segment, offset }, size)?;
            Ok(Some(bytes))
        }
        Some((inline, ..)) => Ok(inline.map(Bytes::from)),
        None if load_job(conn, id)?.is_none() => Err(StoreError::NotFound(id)),
        None => Ok(None),
    }
}

/// Creates `job`, whose ticket `ticket` is already encoded (off the writer thread).
fn create_job(
    conn: &Connection,
    job: &NewJob,
    ticket: &str,
    logged: Option<Location>,
) -> Result<Job, StoreError> {
    let decision = job
        .admission
        .as_ref()
        .map(|admission| ledger::decide(conn, admission))
        .transpose()?;
    let (mut state, mut reasons) = initial_state(job.held, job.documents_complete);
    if matches!(decision, Some(QuotaDecision::Hold(_))) {
        state = JobState::PendingHeld;
        reasons.push(REASON_ACCOUNT_LIMIT.to_string());
    }
    let (now_s, _) = now();
    conn.prepare_cached(
        "INSERT INTO jobs (queue, owner, name, originating_host, priority, state, reasons, \
         ticket, documents_complete, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        job.queue,
        job.owner,
        job.name,
        job.originating_host,
        job.priority,
        state.as_i32(),
        to_json(&reasons)?,
        ticket,
        job.documents_complete,
        now_s,
    ])?;
    let id = JobId::try_from(conn.last_insert_rowid())
        .map_err(|_| StoreError::Internal("job ids are exhausted".into()))?;
    if let Some(document) = &job.document {
        insert_document(conn, id, 1, document, logged)?;
    }
    if let (Some(admission), Some(decision)) = (&job.admission, &decision) {
        record_estimate(conn, id, &job.queue, admission, decision)?;
    }
    Ok(job.created(id, state, reasons, now_s))
}

fn record_estimate(
    conn: &Connection,
    id: JobId,
    queue: &str,
    admission: &Admission,
    decision: &QuotaDecision,
) -> Result<(), StoreError> {
    let flagged = matches!(decision, QuotaDecision::AllowAndFlag(_));
    if !ledger::insert(conn, &admission.estimate(id, queue, flagged))? {
        return Err(StoreError::NotPossible {
            id,
            state: existing_job(conn, id)?.state,
            action: "admission (the job already has an estimate)",
        });
    }
    Ok(())
}

fn add_document(
    conn: &Connection,
    id: JobId,
    document: Option<&NewDocument>,
    logged: Option<Location>,
    last: bool,
    admission: Option<&Admission>,
) -> Result<Job, StoreError> {
    let job = existing_job(conn, id)?;
    if job.state.is_terminal() || job.documents_complete {
        return Err(StoreError::NotPossible {
            id,
            state: job.state,
            action: "send-document",
        });
    }
    if let Some(document) = document {
        let number = i32::try_from(job.documents.len() + 1)
            .map_err(|_| StoreError::Internal("too many documents".into()))?;
        insert_document(conn, id, number, document, logged)?;
    }
    if last {
        let mut reasons = without(&job.reasons, REASON_INCOMING);
        let mut state = job.state;
        if let Some(admission) = admission {
            let decision = ledger::decide(conn, admission)?;
            if matches!(decision, QuotaDecision::Hold(_)) {
                state = JobState::PendingHeld;
                reasons.push(REASON_ACCOUNT_LIMIT.to_string());
            }
            record_estimate(conn, id, &job.queue, admission, &decision)?;
        }
        conn.prepare_cached(
            "UPDATE jobs SET documents_complete = 1, reasons = ?2, state = ?3 WHERE id = ?1",
        )?
        .execute(params![id, to_json(&reasons)?, state.as_i32()])?;
    }
    existing_job(conn, id)
}

fn apply_action(conn: &Connection, id: JobId, action: UserAction) -> Result<Job, StoreError> {
    let job = existing_job(conn, id)?;
    let (state, reasons) =
        user_transition(job.state, &job.reasons, action).ok_or(StoreError::NotPossible {
            id,
            state: job.state,
            action: action_name(action),
        })?;
    let (now_s, _) = now();
    let completed_at = state.is_terminal().then_some(now_s);
    conn.prepare_cached(
        "UPDATE jobs SET state = ?2, reasons = ?3, completed_at = COALESCE(?4, completed_at) \
         WHERE id = ?1",
    )?
    .execute(params![
        id,
        state.as_i32(),
        to_json(&reasons)?,
        completed_at
    ])?;
    if state == JobState::Canceled {
        ledger::refund(conn, id, job.printer.as_deref(), now_ms())?;
    }
    existing_job(conn, id)
}

fn now_ms() -> i64 {
    now().1
}

/// `NotLeader` unless `claimer` (when shard-led) still leads its shard.
fn check_leads(conn: &Connection, claimer: &Claimer) -> Result<(), StoreError> {
    let Some(shard) = &claimer.shard else {
        return Ok(());
    };
    let leads = conn
        .prepare_cached(
            "SELECT 1 FROM shard_leaders WHERE shard = ?1 AND claimer_id = ?2 AND epoch = ?3",
        )?
        .exists(params![shard, claimer.id, claimer.epoch])?;
    if leads {
        Ok(())
    } else {
        Err(StoreError::NotLeader {
            shard: shard.clone(),
        })
    }
}

/// The next job a printer of `?3` (a JSON array of queue names) may have: pending, complete,
/// due, its queue not paused and (for a shard-led claimer, `?4`) owned by the claimer's
/// shard; highest priority first, then oldest. Each condition on the queue is a correlated
/// lookup rather than `IN (SELECT ...)`: SQLite builds an `IN` list, and the rows of an
/// `UPDATE ... RETURNING`, in an ephemeral table with a page cache of its own, allocated
/// and freed on every claim (two thirds of the claim's time in the writer). A test holds
/// it so.
const CLAIM_NEXT: &str = "SELECT id FROM jobs \
     WHERE state = ?1 AND documents_complete = 1 AND retry_at_ms <= ?2 \
       AND EXISTS (SELECT 1 FROM json_each(?3) WHERE value = jobs.queue) \
       AND NOT EXISTS (SELECT 1 FROM paused_queues WHERE queue = jobs.queue) \
       AND (?4 IS NULL OR EXISTS \
            (SELECT 1 FROM queue_owners WHERE queue = jobs.queue AND shard = ?4)) \
     ORDER BY priority DESC, id ASC LIMIT 1";

/// Job `?1`, found by [`CLAIM_NEXT`] in the same transaction, claimed.
const MARK_CLAIMED: &str = "UPDATE jobs SET state = ?2, processing_at = ?3, printer = ?4, \
     attempts = attempts + 1, claimer_id = ?5, claimer_epoch = ?6, claimer_shard = ?7, \
     reasons = ?8, message = NULL \
     WHERE id = ?1";

fn claim_next(
    conn: &Connection,
    log: &DocumentLog,
    queues: &str,
    printer: &str,
    claimer: &Claimer,
) -> Result<Option<Claim>, StoreError> {
    check_leads(conn, claimer)?;
    let (now_s, now_ms) = now();
    let claimed: Option<JobId> = conn
        .prepare_cached(CLAIM_NEXT)?
        .query_row(
            params![JobState::Pending.as_i32(), now_ms, queues, claimer.shard],
            |row| row.get(0),
        )
        .optional()?;
    let Some(id) = claimed else {
        return Ok(None);
    };
    conn.prepare_cached(MARK_CLAIMED)?.execute(params![
        id,
        JobState::Processing.as_i32(),
        now_s,
        printer,
        claimer.id,
        claimer.epoch,
        claimer.shard,
        PRINTING_REASONS.as_str(),
    ])?;
    let job = existing_job(conn, id)?;
    let inline = job
        .documents
        .iter()
        .map(|document| match inline_document(conn, log, id, document.number) {
            // Lost for good: claimed without its bytes, so dispatch aborts the job rather
            // than every claim of the queue failing on it.
            Err(StoreError::Document(error)) if error.kind() == std::io::ErrorKind::InvalidData => {
                tracing::error!(job = id, document = document.number, %error, "the document's record in the document log is damaged");
                Ok(None)
            }
            read => read,
        })
        .collect::<Result<_, _>>()?;
    let estimate = ledger::estimate(conn, id)?;
    Ok(Some(Claim {
        job,
        inline,
        estimate,
    }))
}

fn finish(
    conn: &Connection,
    id: JobId,
    claimer: &Claimer,
    outcome: Outcome,
) -> Result<Job, StoreError> {
    let (state, claimer_id, claimer_epoch): (i32, Option<String>, Option<i64>) = conn
        .prepare_cached("SELECT state, claimer_id, claimer_epoch FROM jobs WHERE id = ?1")?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?
        .ok_or(StoreError::NotFound(id))?;
    let state = JobState::from_i32(state)
        .ok_or_else(|| StoreError::Internal(format!("job {id} has unknown state {state}")))?;
    match fence(state, claimer_id.as_deref(), claimer_epoch, claimer) {
        Fence::Lost => return Err(StoreError::Fenced(id)),
        Fence::Canceled => return existing_job(conn, id),
        Fence::Holds => {}
    }
    let (now_s, _) = now();
    let update = finished(id, outcome, now_s)?;
    conn.prepare_cached(
        "UPDATE jobs SET state = ?2, reasons = ?3, message = ?4, printer = ?5, \
         completed_at = ?6, retry_at_ms = COALESCE(?7, retry_at_ms), \
         impressions_completed = ?8, sheets_completed = ?9, \
         claimer_id = NULL, claimer_epoch = NULL, claimer_shard = NULL WHERE id = ?1",
    )?
    .execute(params![
        id,
        update.state.as_i32(),
        to_json(&update.reasons)?,
        update.message,
        update.printer,
        update.completed_at,
        update.retry_at_ms,
        update.impressions,
        update.sheets,
    ])?;
    if update.state == JobState::Aborted {
        ledger::refund(conn, id, Some(&update.printer), now_ms())?;
    }
    if let Some(settlement) = &update.settlement {
        ledger::insert(conn, settlement)?;
    }
    existing_job(conn, id)
}

/// Applies the outcomes the outcome log kept from before the last stop, in one
/// transaction; those already recorded, or whose claim was lost, change nothing. One that
/// fails (as it did when it was first committed, if it was) is left out, and its job is
/// sent again, rather than keeping the spooler from starting.
fn apply_recorded_outcomes(
    conn: &mut Connection,
    recorded: Vec<OutcomeRecord>,
) -> Result<(), StoreError> {
    if recorded.is_empty() {
        return Ok(());
    }
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut applied = 0;
    for OutcomeRecord {
        job,
        claimer,
        outcome,
    } in recorded
    {
        // Dropped without a commit, it undoes this outcome alone.
        let outcome_alone = tx.savepoint()?;
        match finish(&outcome_alone, job, &claimer, outcome) {
            Ok(_) => {
                outcome_alone.commit()?;
                applied += 1;
            }
            Err(StoreError::Fenced(_) | StoreError::NotFound(_)) => {}
            Err(error) => {
                tracing::warn!(
                    job,
                    %error,
                    "an outcome left in the outcome log cannot be recorded; the job will be sent again"
                );
            }
        }
    }
    tx.commit()?;
    if applied > 0 {
        tracing::info!(
            jobs = applied,
            "outcomes recorded before the last stop applied"
        );
    }
    Ok(())
}

fn recover(conn: &Connection, current: &Claimer) -> Result<Vec<JobId>, StoreError> {
    let ids = conn
        .prepare_cached(requeue_where!(
            "(claimer_id IS NOT ?3 OR claimer_epoch < ?4) RETURNING id"
        ))?
        .query_map(
            params![
                JobState::Pending.as_i32(),
                JobState::Processing.as_i32(),
                current.id,
                current.epoch
            ],
            |row| row.get(0),
        )?
        .collect::<rusqlite::Result<Vec<JobId>>>()?;
    Ok(sorted(ids))
}

fn lead_shard(
    conn: &Connection,
    shard: &str,
    claimer_id: &str,
) -> Result<(Claimer, Vec<JobId>), StoreError> {
    let epoch: i64 = conn
        .prepare_cached(
            "INSERT INTO shard_leaders (shard, claimer_id, epoch) VALUES (?1, ?2, 1) \
             ON CONFLICT (shard) DO UPDATE SET claimer_id = excluded.claimer_id, \
             epoch = epoch + 1 RETURNING epoch",
        )?
        .query_row(params![shard, claimer_id], |row| row.get(0))?;
    let ids = conn
        .prepare_cached(requeue_where!("claimer_shard = ?3 RETURNING id"))?
        .query_map(
            params![
                JobState::Pending.as_i32(),
                JobState::Processing.as_i32(),
                shard
            ],
            |row| row.get(0),
        )?
        .collect::<rusqlite::Result<Vec<JobId>>>()?;
    let claimer = Claimer {
        id: claimer_id.to_string(),
        epoch,
        shard: Some(shard.to_string()),
    };
    Ok((claimer, sorted(ids)))
}

fn own_queues(
    conn: &Connection,
    claimer: &Claimer,
    queues: &str,
    shards: &str,
) -> Result<Vec<String>, StoreError> {
    check_leads(conn, claimer)?;
    let Some(shard) = &claimer.shard else {
        return Err(StoreError::Internal(
            "only a shard leader owns queues".into(),
        ));
    };
    conn.prepare_cached(
        "DELETE FROM queue_owners WHERE shard = ?1 \
           AND queue NOT IN (SELECT value FROM json_each(?2)) \
           AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.queue = queue_owners.queue \
                           AND jobs.state = ?3 AND jobs.claimer_shard = ?1)",
    )?
    .execute(params![shard, queues, JobState::Processing.as_i32()])?;
    // Queues of removed shards: their jobs in flight go back to pending, then the queues
    // are free.
    conn.prepare_cached(requeue_where!(
        "queue IN (SELECT queue FROM queue_owners \
             WHERE queue IN (SELECT value FROM json_each(?3)) \
               AND shard NOT IN (SELECT value FROM json_each(?4)) AND shard <> ?5)"
    ))?
    .execute(params![
        JobState::Pending.as_i32(),
        JobState::Processing.as_i32(),
        queues,
        shards,
        shard
    ])?;
    conn.prepare_cached(
        "DELETE FROM queue_owners WHERE queue IN (SELECT value FROM json_each(?1)) \
           AND shard NOT IN (SELECT value FROM json_each(?2)) AND shard <> ?3",
    )?
    .execute(params![queues, shards, shard])?;
    conn.prepare_cached(
        "INSERT INTO queue_owners (queue, shard) SELECT value, ?2 FROM json_each(?1) WHERE true \
         ON CONFLICT (queue) DO NOTHING",
    )?
    .execute(params![queues, shard])?;
    let owned = conn
        .prepare_cached("SELECT queue FROM queue_owners WHERE shard = ?1 ORDER BY queue")?
        .query_map([shard], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(owned)
}

fn sorted(mut ids: Vec<JobId>) -> Vec<JobId> {
    ids.sort_unstable();
    ids
}

/// Finished jobs of `queue` that finished before `finished_before` or are beyond the newest
/// `keep_at_most`: both retention limits of a PrintQueue apply.
fn purge_history(
    conn: &Connection,
    log: &DocumentLog,
    queue: &str,
    finished_before: i64,
    keep_at_most: u32,
) -> Result<Vec<String>, StoreError> {
    let doomed = conn
        .prepare_cached(
            "SELECT id FROM jobs WHERE queue = ?1 AND state >= ?2 AND (completed_at < ?3 \
             OR id NOT IN (SELECT id FROM jobs WHERE queue = ?1 AND state >= ?2 \
                           ORDER BY completed_at DESC, id DESC LIMIT ?4))",
        )?
        .query_map(
            params![
                queue,
                JobState::Canceled.as_i32(),
                finished_before,
                keep_at_most
            ],
            |row| row.get::<_, JobId>(0),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut keys = Vec::new();
    let mut stored_keys = conn.prepare_cached(
        "SELECT key FROM documents WHERE job_id = ?1 AND key IS NOT NULL ORDER BY number",
    )?;
    let mut delete_documents = conn.prepare_cached("DELETE FROM documents WHERE job_id = ?1")?;
    let mut delete_job = conn.prepare_cached("DELETE FROM jobs WHERE id = ?1")?;
    let purged_any = !doomed.is_empty();
    for id in doomed {
        for key in stored_keys.query_map([id], |row| row.get::<_, String>(0))? {
            keys.push(key?);
        }
        delete_documents.execute([id])?;
        delete_job.execute([id])?;
    }
    // Only a purge frees a segment, so one that removed nothing does not look (it runs for
    // every queue). Only finished jobs' rows are gone, so should this transaction not
    // commit, the documents of a removed segment belong to jobs that are never sent again.
    if purged_any {
        log.remove_unreferenced(|segment| segment_referenced(conn, segment))?;
    }
    Ok(keys)
}

fn list_jobs(conn: &Connection, query: &JobQuery) -> Result<Vec<Job>, StoreError> {
    let (lowest, highest) = state_range(query.which);
    // A negative LIMIT is no limit in SQLite.
    let limit = query
        .limit
        .map_or(-1, |limit| i64::try_from(limit).unwrap_or(i64::MAX));
    let order = if query.which == WhichJobs::Completed {
        "DESC"
    } else {
        "ASC"
    };
    let sql = format!(
        "{} WHERE {} AND {} AND state BETWEEN ?3 AND ?4 ORDER BY id {order} LIMIT ?5",
        select_jobs!(""),
        filter(query.queue.is_some(), "queue = ?1", "?1"),
        filter(query.owner.is_some(), "owner = ?2", "?2"),
    );
    let mut jobs = conn
        .prepare_cached(&sql)?
        .query_map(
            params![query.queue, query.owner, lowest, highest, limit],
            job_from_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for job in &mut jobs {
        job.documents = load_documents(conn, job.id)?;
    }
    Ok(jobs)
}

#[async_trait]
impl JobStore for SqliteJobStore {
    async fn create_job(&self, job: NewJob) -> Result<Job, StoreError> {
        let appended = self.log_document(job.document.as_ref()).await?;
        let ticket = to_json(&job.ticket)?;
        self.write(move |conn| {
            create_job(
                conn,
                &job,
                &ticket,
                appended.as_ref().map(Appended::location),
            )
        })
        .await
    }

    async fn add_document(
        &self,
        id: JobId,
        document: Option<NewDocument>,
        last: bool,
    ) -> Result<Job, StoreError> {
        let appended = self.log_document(document.as_ref()).await?;
        self.write(move |conn| {
            let logged = appended.as_ref().map(Appended::location);
            add_document(conn, id, document.as_ref(), logged, last, None)
        })
        .await
    }

    async fn add_last_document(
        &self,
        id: JobId,
        document: Option<NewDocument>,
        admission: Admission,
    ) -> Result<Job, StoreError> {
        let appended = self.log_document(document.as_ref()).await?;
        self.write(move |conn| {
            let logged = appended.as_ref().map(Appended::location);
            add_document(conn, id, document.as_ref(), logged, true, Some(&admission))
        })
        .await
    }

    async fn job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.read(move |conn| load_job(conn, id)).await
    }

    async fn list_jobs(&self, query: &JobQuery) -> Result<Vec<Job>, StoreError> {
        let query = query.clone();
        self.read(move |conn| list_jobs(conn, &query)).await
    }

    async fn apply(&self, id: JobId, action: UserAction) -> Result<Job, StoreError> {
        self.write(move |conn| apply_action(conn, id, action)).await
    }

    async fn inline_document(&self, id: JobId, number: i32) -> Result<Option<Bytes>, StoreError> {
        let log = self.documents.clone();
        self.read(move |conn| inline_document(conn, &log, id, number))
            .await
    }

    async fn claim_next(
        &self,
        queues: &[String],
        printer: &str,
        claimer: &Claimer,
    ) -> Result<Option<Claim>, StoreError> {
        if queues.is_empty() {
            return Ok(None);
        }
        let queues = to_json(queues)?;
        let printer = printer.to_string();
        let claimer = claimer.clone();
        let log = self.documents.clone();
        // Usually made while the printer receives its current job (see `dispatch`).
        self.write_relaxed_with_batch(move |conn| {
            claim_next(conn, &log, &queues, &printer, &claimer)
        })
        .await
    }

    async fn finish(
        &self,
        id: JobId,
        claimer: &Claimer,
        outcome: Outcome,
    ) -> Result<Job, StoreError> {
        let claimer = claimer.clone();
        self.write_relaxed(move |conn| finish(conn, id, &claimer, outcome))
            .await
    }

    async fn record_outcome(
        &self,
        id: JobId,
        claimer: &Claimer,
        outcome: Outcome,
    ) -> Result<Recorded, StoreError> {
        if !matches!(outcome, Outcome::Completed { .. }) {
            // Only a completion is final. A line for a retry could be applied at the next
            // start over a later claim of the same job; these outcomes are rare, and
            // dispatch waits for them anyway.
            return Ok(Recorded::answered(self.finish(id, claimer, outcome).await?));
        }
        self.not_failed()?;
        let record = OutcomeRecord {
            job: id,
            claimer: claimer.clone(),
            outcome,
        };
        // A line of a few hundred bytes into the page cache: written on the caller's
        // thread, which is what makes this faster than `finish`.
        self.outcomes.append(&record).map_err(|error| {
            StoreError::Unavailable(format!("cannot append to the outcome log: {error}"))
        })?;
        let answer = self.send(Durability::Recorded, move |conn| {
            finish(conn, record.job, &record.claimer, record.outcome)
        })?;
        Ok(Recorded(Box::pin(received(answer))))
    }

    async fn recover(&self, current: &Claimer) -> Result<Vec<JobId>, StoreError> {
        let current = current.clone();
        self.write(move |conn| recover(conn, &current)).await
    }

    async fn own_queues(
        &self,
        claimer: &Claimer,
        queues: &[String],
        shards: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let (claimer, queues, shards) = (claimer.clone(), to_json(queues)?, to_json(shards)?);
        self.write(move |conn| own_queues(conn, &claimer, &queues, &shards))
            .await
    }

    async fn installation_salt(&self, proposed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let proposed = proposed.to_vec();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO installation (name, value) VALUES ('accounting-salt', ?1) \
                 ON CONFLICT (name) DO NOTHING",
            )?
            .execute([proposed])?;
            let salt = conn
                .prepare_cached("SELECT value FROM installation WHERE name = 'accounting-salt'")?
                .query_row([], |row| row.get(0))?;
            Ok(salt)
        })
        .await
    }

    async fn lead_shard(
        &self,
        shard: &str,
        claimer_id: &str,
    ) -> Result<(Claimer, Vec<JobId>), StoreError> {
        let (shard, claimer_id) = (shard.to_string(), claimer_id.to_string());
        self.write(move |conn| lead_shard(conn, &shard, &claimer_id))
            .await
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<(), StoreError> {
        let queue = queue.to_string();
        self.write(move |conn| {
            let sql = if paused {
                "INSERT OR IGNORE INTO paused_queues (queue) VALUES (?1)"
            } else {
                "DELETE FROM paused_queues WHERE queue = ?1"
            };
            conn.prepare_cached(sql)?.execute([queue])?;
            Ok(())
        })
        .await
    }

    async fn paused_queues(&self) -> Result<Vec<String>, StoreError> {
        self.read(|conn| {
            let queues = conn
                .prepare_cached("SELECT queue FROM paused_queues ORDER BY queue")?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(queues)
        })
        .await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        // Refused once an fsync has failed, as every read is.
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn queue_depths(&self, queue: Option<&str>) -> Result<Vec<QueueDepth>, StoreError> {
        let queue = queue.map(str::to_string);
        self.read(move |conn| {
            let sql = format!(
                "SELECT queue, COUNT(*), SUM(state = ?2) FROM jobs WHERE state < ?1 AND {} \
                 GROUP BY queue ORDER BY queue",
                filter(queue.is_some(), "queue = ?3", "?3")
            );
            let depths = conn
                .prepare_cached(&sql)?
                .query_map(
                    params![
                        JobState::Canceled.as_i32(),
                        JobState::Processing.as_i32(),
                        queue
                    ],
                    |row| {
                        Ok(QueueDepth {
                            queue: row.get(0)?,
                            unfinished: row.get(1)?,
                            processing: row.get(2)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(depths)
        })
        .await
    }

    async fn purge_history(
        &self,
        queue: &str,
        finished_before: i64,
        keep_at_most: u32,
    ) -> Result<Vec<String>, StoreError> {
        let queue = queue.to_string();
        let log = self.documents.clone();
        self.write(move |conn| purge_history(conn, &log, &queue, finished_before, keep_at_most))
            .await
    }

    async fn next_epoch(&self, claimer_id: &str) -> Result<i64, StoreError> {
        let claimer_id = claimer_id.to_string();
        self.write(move |conn| {
            let epoch = conn
                .prepare_cached(
                    "INSERT INTO epochs (claimer_id, epoch) VALUES (?1, 1) \
                     ON CONFLICT (claimer_id) DO UPDATE SET epoch = epoch + 1 RETURNING epoch",
                )?
                .query_row([claimer_id], |row| row.get(0))?;
            Ok(epoch)
        })
        .await
    }

    async fn record_settlement(&self, entry: LedgerEntry) -> Result<bool, StoreError> {
        super::settlement_only(&entry)?;
        // Bookkeeping after a completion, like the completion itself: one lost to a power
        // loss is made again by the sweep of completed, unsettled jobs at the next start.
        self.write_relaxed(move |conn| ledger::insert(conn, &entry))
            .await
    }

    async fn ledger(&self, query: &LedgerQuery) -> Result<Vec<LedgerEntry>, StoreError> {
        let query = query.clone();
        self.read(move |conn| ledger::entries(conn, &query)).await
    }

    async fn unsettled_jobs(&self, limit: usize) -> Result<Vec<JobId>, StoreError> {
        self.read(move |conn| ledger::unsettled(conn, JobState::Completed.as_i32(), limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;

    use super::*;
    use crate::accounting::ledger::EntryKind;
    use crate::job::{DocumentBody, JobTicket};
    use crate::store::contract::{Backend, claimer, job_store_contract};
    use crate::store::documents::tests::files_in;
    use rusqlite::StatementStatus;

    /// A database file in a temporary directory that lives as long as the backend.
    struct SqliteBackend {
        dir: tempfile::TempDir,
    }

    impl SqliteBackend {
        fn new() -> Self {
            SqliteBackend {
                dir: tempfile::tempdir().expect("temporary directory"),
            }
        }

        fn path(&self) -> PathBuf {
            self.dir.path().join("jobs.db")
        }

        /// A connection set up as the writer thread's, on the migrated database.
        fn writer_connection(&self) -> Connection {
            let mut conn = Connection::open(self.path()).expect("open");
            configure_writer(&conn).expect("configure");
            migrate(&mut conn).expect("schema");
            conn
        }
    }

    #[async_trait]
    impl Backend for SqliteBackend {
        async fn open(&self) -> Arc<dyn JobStore> {
            Arc::new(SqliteJobStore::open(&self.path()).expect("open the SQLite store"))
        }
    }

    job_store_contract!(SqliteBackend::new());

    fn new_job(owner: &str) -> NewJob {
        NewJob {
            queue: "office".into(),
            owner: owner.into(),
            name: "job".into(),
            originating_host: None,
            priority: 50,
            held: false,
            ticket: JobTicket::default(),
            document: None,
            documents_complete: true,
            admission: None,
        }
    }

    fn with_document(owner: &str, bytes: Vec<u8>) -> NewJob {
        NewJob {
            document: Some(NewDocument {
                format: "application/pdf".into(),
                name: None,
                size: bytes.len() as u64,
                body: DocumentBody::Inline(Bytes::from(bytes)),
            }),
            ..new_job(owner)
        }
    }

    fn segment_files(backend: &SqliteBackend) -> Vec<String> {
        files_in(&document_log::directory_of(&backend.path()))
    }

    #[tokio::test]
    async fn larger_inline_documents_live_in_the_document_log_and_survive_a_reopen() {
        let backend = SqliteBackend::new();
        let large: Vec<u8> = (0..LOGGED_DOCUMENT_MIN * 4)
            .map(|n| (n % 251) as u8)
            .collect();
        let small = vec![b'x'; LOGGED_DOCUMENT_MIN - 1];
        // Appended on a blocking thread rather than in place.
        let larger = vec![b'y'; APPEND_IN_PLACE_MAX + 1];
        let (large_id, small_id, larger_id) = {
            let store = SqliteJobStore::open(&backend.path()).expect("open");
            let large_job = store.create_job(with_document("a", large.clone())).await;
            let small_job = store.create_job(with_document("b", small.clone())).await;
            let larger_job = store.create_job(with_document("c", larger.clone())).await;
            (
                large_job.expect("large").id,
                small_job.expect("small").id,
                larger_job.expect("larger").id,
            )
        };
        let conn = Connection::open(backend.path()).expect("inspect");
        let row = |id: JobId| -> (Option<Vec<u8>>, Option<i64>) {
            conn.query_row(
                "SELECT inline, log_segment FROM documents WHERE job_id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .expect("row")
        };
        assert_eq!(
            row(large_id),
            (None, Some(1)),
            "the large one is in the log"
        );
        assert_eq!(
            row(small_id),
            (Some(small.clone()), None),
            "the small one in its row"
        );
        assert_eq!(row(larger_id), (None, Some(1)), "the larger one in the log");

        let store = SqliteJobStore::open(&backend.path()).expect("reopen");
        let read = |id| store.inline_document(id, 1);
        assert_eq!(
            read(large_id).await.expect("large"),
            Some(Bytes::from(large))
        );
        assert_eq!(
            read(small_id).await.expect("small"),
            Some(Bytes::from(small))
        );
        assert_eq!(
            read(larger_id).await.expect("larger"),
            Some(Bytes::from(larger))
        );
        // The reopened log appends to segment 3 and has 4 made ahead; the first opening's
        // spare, 2, held nothing and is gone.
        assert_eq!(
            segment_files(&backend),
            ["000000000001.log", "000000000003.log", "000000000004.log"]
        );
    }

    #[tokio::test]
    async fn the_next_segment_is_made_ahead_while_submissions_go_on() {
        let backend = SqliteBackend::new();
        let store = SqliteJobStore::open_with_segments(&backend.path(), 100_000).expect("open");
        for n in 0..3 {
            let job = store.create_job(with_document("a", vec![n; 40_000])).await;
            job.expect("create");
        }
        // The third job started segment 2, made at opening; 3 is made on another thread.
        let deadline = Instant::now() + Duration::from_secs(10);
        while segment_files(&backend).len() < 3 {
            assert!(
                Instant::now() < deadline,
                "no segment made ahead: {:?}",
                segment_files(&backend)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            segment_files(&backend),
            ["000000000001.log", "000000000002.log", "000000000003.log"]
        );
    }

    #[tokio::test]
    async fn purging_finished_jobs_removes_the_segments_no_document_points_into() {
        let backend = SqliteBackend::new();
        let store = SqliteJobStore::open_with_segments(&backend.path(), 100_000).expect("open");
        let mut ids = Vec::new();
        for n in 0..6 {
            let job = store.create_job(with_document("a", vec![n; 40_000])).await;
            ids.push(job.expect("create").id);
        }
        // Two 40 KB records fit in a segment: jobs 1-2 in segment 1, 3-4 in 2, 5-6 in 3.
        // Segment 4 is made ahead, maybe still now: made here, the list cannot change.
        store.documents.make_spare().expect("make the spare");
        assert_eq!(segment_files(&backend).len(), 4);
        for id in &ids[..3] {
            store.apply(*id, UserAction::Cancel).await.expect("cancel");
        }
        let far_future = i64::MAX;
        store
            .purge_history("office", far_future, 0)
            .await
            .expect("purge");
        // Segment 2 still holds job 4's document, pending; segment 3 is being appended to,
        // 4 is the spare.
        assert_eq!(
            segment_files(&backend),
            ["000000000002.log", "000000000003.log", "000000000004.log"]
        );
        for (n, id) in ids.iter().enumerate().skip(3) {
            let bytes = store.inline_document(*id, 1).await.expect("read");
            assert_eq!(bytes, Some(Bytes::from(vec![n as u8; 40_000])));
        }
    }

    #[tokio::test]
    async fn a_damaged_record_is_reported_as_such() {
        let backend = SqliteBackend::new();
        let store = SqliteJobStore::open(&backend.path()).expect("open");
        let id = store
            .create_job(with_document("a", vec![7; 50_000]))
            .await
            .expect("create")
            .id;
        let segment = document_log::directory_of(&backend.path()).join("000000000001.log");
        std::fs::OpenOptions::new()
            .write(true)
            .open(segment)
            .and_then(|file| file.set_len(30_000))
            .expect("cut the segment short");
        let error = store.inline_document(id, 1).await.expect_err("damaged");
        assert!(
            matches!(&error, StoreError::Document(io) if io.kind() == std::io::ErrorKind::InvalidData),
            "{error:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_share_commits() {
        let backend = SqliteBackend::new();
        let store = Arc::new(SqliteJobStore::open(&backend.path()).expect("open"));
        let creates = (0..500).map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.create_job(new_job(&format!("u{n}"))).await })
        });
        for create in futures_util::future::join_all(creates).await {
            create.expect("task").expect("create");
        }
        let commits = store.commit_count();
        assert!(commits >= 1);
        assert!(
            commits < 250,
            "500 creates took {commits} commits: not grouped"
        );
    }

    #[tokio::test]
    async fn the_checkpoint_thread_moves_the_log_into_the_database() {
        let backend = SqliteBackend::new();
        let path = backend.path();
        let store = SqliteJobStore::open(&path).expect("open");
        let empty = std::fs::metadata(&path).expect("database file").len();
        for n in 0..50 {
            store
                .create_job(new_job(&format!("u{n}")))
                .await
                .expect("create");
        }
        // The writer never checkpoints itself; only the checkpoint thread can grow the file.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).expect("database file").len() == empty {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn relaxed_and_durable_requests_both_answer_and_survive_a_reopen() {
        let backend = SqliteBackend::new();
        let store = SqliteJobStore::open(&backend.path()).expect("open");
        let job = store.create_job(new_job("alice")).await.expect("create");
        let claimer = claimer("test", 1);
        let queues = vec![job.queue.clone()];
        let (claimed, created) = tokio::join!(
            store.claim_next(&queues, "printer", &claimer),
            store.create_job(new_job("bob")),
        );
        assert_eq!(
            claimed.expect("claim").map(|claim| claim.job.id),
            Some(job.id)
        );
        let created = created.expect("create");
        drop(store);
        let reopened = SqliteJobStore::open(&backend.path()).expect("reopen");
        assert_eq!(
            reopened.job(job.id).await.expect("read").map(|j| j.state),
            Some(JobState::Processing)
        );
        assert!(reopened.job(created.id).await.expect("read").is_some());
    }

    type Answer = oneshot::Receiver<Result<(), StoreError>>;

    /// A write request pausing `queue`, failing after its write when `fail` is set.
    fn pause(queue: &'static str, fail: bool) -> (Box<dyn WriteRequest>, Answer) {
        pause_with(queue, fail, Durability::Fsync)
    }

    fn pause_with(
        queue: &'static str,
        fail: bool,
        durability: Durability,
    ) -> (Box<dyn WriteRequest>, Answer) {
        let (reply, answer) = oneshot::channel();
        let work = move |conn: &Connection| {
            conn.execute("INSERT INTO paused_queues (queue) VALUES (?1)", [queue])?;
            match fail {
                true => Err(StoreError::Internal("refused".into())),
                false => Ok(()),
            }
        };
        let request = Request {
            work: Some(work),
            durability,
            result: None,
            reply,
        };
        (Box::new(request), answer)
    }

    #[tokio::test]
    async fn failing_request_does_not_spoil_its_batch() {
        let backend = SqliteBackend::new();
        let mut conn = backend.writer_connection();
        let (requests, answers): (Vec<_>, Vec<_>) =
            [pause("a", false), pause("b", true), pause("c", false)]
                .into_iter()
                .unzip();
        let (_senders, mut inbox) = test_inbox();
        for request in requests {
            inbox.waiting.push(request);
        }
        let mut batch = Vec::new();
        let outcome = apply_batch(&mut conn, &mut inbox, &mut batch);
        assert!(outcome.is_ok(), "{outcome:?}");
        for request in batch {
            request.answer(Ok(()));
        }
        let mut results = Vec::new();
        for answer in answers {
            results.push(answer.await.expect("answered").is_ok());
        }
        assert_eq!(results, vec![true, false, true]);
        drop(conn);
        let store = SqliteJobStore::open(&backend.path()).expect("open");
        assert_eq!(store.paused_queues().await.expect("paused"), vec!["a", "c"]);
    }

    /// What the store's callers and the syncer send to the writer's inbox.
    struct InboxSenders {
        requests: Sender<Box<dyn WriteRequest>>,
        synced: Sender<usize>,
    }

    fn test_inbox() -> (InboxSenders, Inbox) {
        let (requests, requests_received) = crossbeam_channel::unbounded();
        let (synced, synced_received) = crossbeam_channel::unbounded();
        (
            InboxSenders { requests, synced },
            Inbox::new(requests_received, synced_received),
        )
    }

    /// A writer's connection, with two submissions waiting for it.
    fn two_submissions_waiting(backend: &SqliteBackend) -> (Connection, InboxSenders, Inbox) {
        let conn = backend.writer_connection();
        let (senders, mut inbox) = test_inbox();
        inbox.waiting.push(pause("submission-1", false).0);
        inbox.waiting.push(pause("submission-2", false).0);
        (conn, senders, inbox)
    }

    fn kinds(batch: &[Box<dyn WriteRequest>]) -> Vec<Durability> {
        batch.iter().map(|request| request.durability()).collect()
    }

    #[test]
    fn bookkeeping_goes_first_and_commits_without_waiting_for_submissions() {
        let backend = SqliteBackend::new();
        let (mut conn, senders, mut inbox) = two_submissions_waiting(&backend);
        // Arrives after the submissions.
        senders
            .requests
            .send(pause_with("claim", false, Durability::ProcessCrash).0)
            .expect("send");
        let mut first = Vec::new();
        apply_batch(&mut conn, &mut inbox, &mut first).expect("first batch");
        assert_eq!(kinds(&first), vec![Durability::ProcessCrash]);
        let mut second = Vec::new();
        apply_batch(&mut conn, &mut inbox, &mut second).expect("second batch");
        assert_eq!(kinds(&second), vec![Durability::Fsync, Durability::Fsync]);
        assert!(inbox.waiting.is_empty());
    }

    /// `apply_batch` on a thread of its own, so that a batch that waits for good fails the
    /// test rather than hanging it: what the batch committed, and the connection and inbox
    /// back.
    fn apply_in_time(
        mut conn: Connection,
        mut inbox: Inbox,
    ) -> (Vec<Durability>, Connection, Inbox) {
        let applying = std::thread::spawn(move || {
            let mut batch = Vec::new();
            apply_batch(&mut conn, &mut inbox, &mut batch).expect("batch");
            (kinds(&batch), conn, inbox)
        });
        let started = Instant::now();
        while !applying.is_finished() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the batch still waits"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        applying.join().expect("batch thread")
    }

    /// Sends each request after a pause, from a thread of its own, then says the syncer
    /// is done when `synced` (and not before).
    fn send_later(
        senders: InboxSenders,
        requests: Vec<Box<dyn WriteRequest>>,
        synced: bool,
    ) -> JoinHandle<InboxSenders> {
        std::thread::spawn(move || {
            for request in requests {
                std::thread::sleep(Duration::from_millis(50));
                senders.requests.send(request).expect("send");
            }
            std::thread::sleep(Duration::from_millis(50));
            if synced {
                senders.synced.send(1).expect("send");
            }
            senders
        })
    }

    #[test]
    fn submissions_wait_in_the_open_transaction_while_the_syncer_is_busy() {
        use Durability::*;
        let backend = SqliteBackend::new();
        let (conn, senders, mut inbox) = two_submissions_waiting(&backend);
        inbox.unsynced = 1;
        let later = send_later(senders, vec![pause("submission-3", false).0], true);
        let (batch, conn, mut inbox) = apply_in_time(conn, inbox);
        assert_eq!(
            batch,
            vec![Fsync, Fsync, Fsync],
            "one commit once the syncer is done"
        );
        assert!(!inbox.syncer_busy());
        let senders = later.join().expect("sender thread");
        // With the syncer idle, they commit as soon as none waits.
        inbox.waiting.push(pause("submission-4", false).0);
        let (next, ..) = apply_in_time(conn, inbox);
        assert_eq!(next, vec![Fsync]);
        drop(senders);
    }

    #[test]
    fn bookkeeping_commits_the_submissions_waiting_for_the_syncer_with_it() {
        use Durability::*;
        let backend = SqliteBackend::new();
        let (conn, senders, mut inbox) = two_submissions_waiting(&backend);
        inbox.unsynced = 1;
        // The syncer never says it is done.
        let outcome = pause_with("outcome", false, ProcessCrash).0;
        let later = send_later(senders, vec![outcome], false);
        let (batch, _, inbox) = apply_in_time(conn, inbox);
        assert_eq!(batch, vec![Fsync, Fsync, ProcessCrash]);
        assert!(inbox.syncer_busy());
        drop(later.join().expect("sender thread"));
    }

    /// What two submissions waiting for a busy syncer commit as, once the syncer
    /// (`syncer_gone`) or the store has dropped its sender to the writer, and whether the
    /// writer still counts the syncer busy after.
    fn batch_once_a_sender_is_gone(syncer_gone: bool) -> (Vec<Durability>, bool) {
        let backend = SqliteBackend::new();
        let (conn, senders, mut inbox) = two_submissions_waiting(&backend);
        inbox.unsynced = 1;
        let InboxSenders { requests, synced } = senders;
        let kept = if syncer_gone {
            drop(synced);
            (Some(requests), None)
        } else {
            drop(requests);
            (None, Some(synced))
        };
        let (batch, _, inbox) = apply_in_time(conn, inbox);
        drop(kept);
        (batch, inbox.syncer_busy())
    }

    #[test]
    fn submissions_stop_waiting_for_the_syncer_once_it_or_the_store_is_gone() {
        // A stopped syncer never says it is done; a dropped store sends nothing more.
        for syncer_gone in [true, false] {
            let (batch, syncer_busy) = batch_once_a_sender_is_gone(syncer_gone);
            assert_eq!(
                batch,
                vec![Durability::Fsync, Durability::Fsync],
                "syncer gone: {syncer_gone}"
            );
            if syncer_gone {
                assert!(!syncer_busy, "a stopped syncer is waited for no more");
            }
        }
    }

    #[test]
    fn the_writer_watches_for_requests_only_after_bookkeeping() {
        use Durability::*;
        let batch = |kinds: &[Durability]| -> Vec<Box<dyn WriteRequest>> {
            kinds
                .iter()
                .map(|durability| pause_with("q", false, *durability).0)
                .collect()
        };
        assert_eq!(watch_after(&batch(&[Fsync, Fsync])), Duration::ZERO);
        assert_eq!(watch_after(&batch(&[])), Duration::ZERO);
        assert_eq!(
            watch_after(&batch(&[Fsync, ProcessCrash])),
            BOOKKEEPING_WATCH
        );
        assert_eq!(
            watch_after(&batch(&[ProcessCrashWithBatch, Fsync])),
            BOOKKEEPING_WATCH
        );
    }

    #[test]
    fn watching_for_requests_takes_what_waits_and_ends_with_the_store() {
        let (sender, receiver) = crossbeam_channel::unbounded();
        sender
            .send(pause_with("q", false, Durability::ProcessCrash).0)
            .expect("send");
        let long = Duration::from_secs(30);
        let request = next_request(&receiver, long).expect("the waiting request");
        assert_eq!(request.durability(), Durability::ProcessCrash);
        // Dropped senders end the watch at once, however long it was to be.
        drop(sender);
        let started = Instant::now();
        assert!(next_request(&receiver, long).is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_claim_made_ahead_rides_with_the_batch_it_lands_in() {
        use Durability::*;
        let backend = SqliteBackend::new();
        let (mut conn, senders, mut inbox) = two_submissions_waiting(&backend);
        let sender = &senders.requests;
        let ahead = |name| pause_with(name, false, ProcessCrashWithBatch).0;
        sender.send(ahead("claim-1")).expect("send");
        let mut first = Vec::new();
        apply_batch(&mut conn, &mut inbox, &mut first).expect("first batch");
        // Applied first, but the submissions waiting are committed with it.
        assert_eq!(
            kinds(&first),
            vec![ProcessCrashWithBatch, Fsync, Fsync],
            "one commit for the claim and the submissions"
        );
        // With an outcome a printer waits for, the batch commits without the submission.
        inbox.waiting.push(pause("submission-3", false).0);
        sender.send(ahead("claim-2")).expect("send");
        sender
            .send(pause_with("outcome", false, ProcessCrash).0)
            .expect("send");
        let mut second = Vec::new();
        apply_batch(&mut conn, &mut inbox, &mut second).expect("second batch");
        assert_eq!(kinds(&second), vec![ProcessCrashWithBatch, ProcessCrash]);
        assert_eq!(
            inbox.waiting.durable.len(),
            1,
            "the submission waits for the next batch"
        );
    }

    #[tokio::test]
    async fn durable_requests_hear_of_an_fsync_that_fails() {
        let backend = SqliteBackend::new();
        let log = backend.path();
        std::fs::write(&log, b"log").expect("log file");
        for (path, synced) in [(log.clone(), true), (log.with_extension("gone"), false)] {
            let mut conn = Connection::open_in_memory().expect("database");
            migrate(&mut conn).expect("schema");
            let (committed, waiting) = crossbeam_channel::unbounded();
            let (mut request, answer) = pause("a", false);
            assert!(request.apply(&conn), "applied");
            committed
                .send(Committed {
                    requests: vec![request],
                    documents: Vec::new(),
                })
                .expect("send");
            drop(committed);
            let (report, groups) = crossbeam_channel::unbounded();
            run_syncer(&path, waiting, &report, &OnceLock::new());
            assert_eq!(groups.try_recv(), Ok(1), "the writer hears of one group");
            let answer = answer.await.expect("answered");
            assert_eq!(answer.is_ok(), synced, "{path:?}: {answer:?}");
            if !synced {
                assert!(
                    matches!(&answer, Err(StoreError::Unavailable(message)) if message.contains("fsync")),
                    "{answer:?}"
                );
            }
        }
    }

    /// After an fsync of the log fails, no write is acknowledged or made, even once fsyncs
    /// succeed again, and the store is not ready. The log's path vanishing makes the syncer's fsync
    /// fail; a new file at that path then lets fsyncs succeed, of a file that is not the log.
    #[tokio::test]
    async fn after_a_failed_fsync_nothing_is_acknowledged_until_a_restart() {
        let backend = SqliteBackend::new();
        let store = SqliteJobStore::open(&backend.path()).expect("open");
        let before = store.create_job(new_job("before")).await.expect("create");
        store.ready().await.expect("ready");
        let log = log_path(&backend.path());
        std::fs::remove_file(&log).expect("remove the log's name");
        for attempt in ["fsync fails", "fsync of another file succeeds"] {
            let refused = store.create_job(new_job("after")).await;
            assert!(
                matches!(&refused, Err(StoreError::Unavailable(message)) if message.contains("fsync")),
                "{attempt}: {refused:?}"
            );
            std::fs::write(&log, b"").expect("a file where the log was");
        }
        assert!(
            matches!(store.ready().await, Err(StoreError::Unavailable(_))),
            "ready after a failed fsync"
        );
        // Nor is anything shown: the rows of the refused submissions are in the database.
        assert!(
            matches!(store.job(before.id).await, Err(StoreError::Unavailable(_))),
            "a job read after a failed fsync"
        );
        assert!(
            matches!(
                store.list_jobs(&JobQuery::default()).await,
                Err(StoreError::Unavailable(_))
            ),
            "jobs listed after a failed fsync"
        );
        // Nor does dispatch go on: a refused submission's row must not print.
        let me = claimer("spooler-0", 1);
        assert!(
            matches!(
                store.claim_next(&["office".to_string()], "p1", &me).await,
                Err(StoreError::Unavailable(_))
            ),
            "claimed after a failed fsync"
        );
    }

    /// A kill between an outcome's append to the outcome log and its commit: the next
    /// open records it, through the same fence as a live outcome; one that cannot be
    /// recorded is left out, and its job is sent again.
    #[tokio::test]
    async fn outcomes_left_in_the_outcome_log_are_recorded_at_the_next_open() {
        let backend = SqliteBackend::new();
        let me = claimer("spooler", 1);
        let completion = |impressions| Outcome::Completed {
            printer: "p1".into(),
            impressions: Some(impressions),
            sheets: None,
            settlement: None,
        };
        let store = backend.open().await;
        let mut ids = Vec::new();
        for _ in 0..4 {
            let id = store.create_job(new_job("alice")).await.expect("create").id;
            let claim = store
                .claim_next(&["office".to_string()], "p1", &me)
                .await
                .expect("claim");
            assert_eq!(claim.map(|claim| claim.job.id), Some(id));
            ids.push(id);
        }
        let [recorded_before, only_logged, canceled, refused] = ids[..] else {
            unreachable!("four jobs")
        };
        let before = store
            .finish(recorded_before, &me, completion(1))
            .await
            .expect("finish");
        let canceled_job = store
            .apply(canceled, UserAction::Cancel)
            .await
            .expect("cancel");
        drop(store);

        let path = outcome_log::path_of(&backend.path());
        let (log, _) = OutcomeLog::open(&path).expect("outcome log");
        for job in ids {
            let outcome = if job == refused {
                // Another job's settlement: `finish` refuses it.
                Outcome::Completed {
                    printer: "p1".into(),
                    impressions: Some(7),
                    sheets: None,
                    settlement: Some(LedgerEntry {
                        job: only_logged,
                        kind: EntryKind::Settlement,
                        at_ms: 0,
                        queue: "office".into(),
                        printer: Some("p1".into()),
                        user: "alice".into(),
                        groups: Vec::new(),
                        account: None,
                        impressions: 7,
                        sheets: 7,
                        color: false,
                        amount: 0,
                        currency: "EUR".into(),
                        flagged: false,
                    }),
                }
            } else {
                completion(7)
            };
            let record = OutcomeRecord {
                job,
                claimer: me.clone(),
                outcome,
            };
            log.append(&record).expect("append");
        }
        drop(log);

        let store = backend.open().await;
        let job = |id| {
            let store = store.clone();
            async move { store.job(id).await.expect("read").expect("job") }
        };
        let logged = job(only_logged).await;
        assert_eq!(logged.state, JobState::Completed);
        assert_eq!(logged.impressions_completed, Some(7));
        assert_eq!(
            job(recorded_before).await,
            before,
            "recorded once, not again"
        );
        assert_eq!(job(canceled).await, canceled_job, "canceled stays canceled");
        assert_eq!(job(refused).await.state, JobState::Processing);
        assert_eq!(std::fs::metadata(&path).expect("outcome log").len(), 0);
        let next_start = Claimer { epoch: 2, ..me };
        assert_eq!(
            store.recover(&next_start).await.expect("recover"),
            vec![refused]
        );
    }

    /// A retry's line could undo a later attempt of the same job at the next start.
    #[tokio::test]
    async fn only_completions_go_to_the_outcome_log() {
        let backend = SqliteBackend::new();
        let me = claimer("spooler", 1);
        let store = backend.open().await;
        let id = store.create_job(new_job("alice")).await.expect("create").id;
        let log_length = || {
            std::fs::metadata(outcome_log::path_of(&backend.path()))
                .expect("outcome log")
                .len()
        };
        let queues = ["office".to_string()];
        let claim = || store.claim_next(&queues, "p1", &me);
        assert!(claim().await.expect("claim").is_some());
        let retry = Outcome::Retry {
            printer: "p1".into(),
            message: "hung up".into(),
            retry_at_ms: 0,
        };
        let recorded = store.record_outcome(id, &me, retry).await.expect("retry");
        assert_eq!(
            recorded.finished().await.expect("answer").state,
            JobState::Pending
        );
        assert_eq!(log_length(), 0);
        assert!(claim().await.expect("claim again").is_some());
        let completion = Outcome::Completed {
            printer: "p1".into(),
            impressions: None,
            sheets: None,
            settlement: None,
        };
        let recorded = store
            .record_outcome(id, &me, completion)
            .await
            .expect("complete");
        assert!(
            log_length() > 0,
            "the completion is in the log before its commit"
        );
        assert_eq!(
            recorded.finished().await.expect("answer").state,
            JobState::Completed
        );
    }

    #[test]
    fn the_writers_checkpoint_lets_the_log_start_over() {
        let backend = SqliteBackend::new();
        let conn = backend.writer_connection();
        let wal = log_path(&backend.path());
        let wal_bytes = || std::fs::metadata(&wal).expect("log").len();
        // Three hundred commits of a page or more each; nothing checkpoints meanwhile.
        let commit_pages = |round: usize| {
            for n in 0..300 {
                conn.execute(
                    "INSERT INTO installation (name, value) VALUES (?1, zeroblob(3000))",
                    [format!("{round}-{n}")],
                )
                .expect("insert");
            }
        };
        commit_pages(0);
        let grown = wal_bytes();
        let writer = Writer {
            syncer: crossbeam_channel::unbounded().0,
            commits: Arc::default(),
            documents: Arc::new(
                DocumentLog::open(&document_log::directory_of(&backend.path()), 1 << 20)
                    .expect("document log"),
            ),
            outcomes: Arc::new(
                OutcomeLog::open(&outcome_log::path_of(&backend.path()))
                    .expect("outcome log")
                    .0,
            ),
            wal_frames: Arc::new(AtomicI64::new(RESTART_LOG_FRAMES)),
        };
        writer.restart_log(&conn);
        assert_eq!(writer.wal_frames.load(Ordering::Relaxed), 0);
        commit_pages(1);
        // Without the checkpoint the log would have grown to about twice its size.
        assert!(
            wal_bytes() < grown * 5 / 4,
            "the log grew from {grown} to {} bytes: it did not start over",
            wal_bytes()
        );
    }

    #[test]
    fn binding_new_values_does_not_prepare_a_statement_again() {
        let backend = SqliteBackend::new();
        let conn = backend.writer_connection();
        let job = NewJob {
            document: Some(NewDocument {
                format: "text/plain".into(),
                name: None,
                size: 2,
                body: DocumentBody::Inline(Bytes::from_static(b"hi")),
            }),
            ..new_job("alice")
        };
        for _ in 0..3 {
            create_job(&conn, &job, "{}", None).expect("create");
        }
        let sql = "SELECT number FROM documents WHERE job_id = ?1 ORDER BY number";
        for id in 1..=3 {
            let mut statement = conn.prepare_cached(sql).expect("prepare");
            let numbers: Vec<i32> = statement
                .query_map([id], |row| row.get(0))
                .expect("query")
                .collect::<rusqlite::Result<_>>()
                .expect("rows");
            assert_eq!(numbers, [1]);
            assert_eq!(statement.get_status(StatementStatus::RePrepare), 0);
        }
    }

    /// The opcodes of the program SQLite compiles `sql` into that build ephemeral tables.
    fn ephemeral_tables(conn: &Connection, sql: &str) -> Vec<String> {
        let mut statement = conn.prepare(&format!("EXPLAIN {sql}")).expect("explain");
        let unbound = vec![rusqlite::types::Null; statement.parameter_count()];
        let opcodes: Vec<String> = statement
            .query_map(rusqlite::params_from_iter(unbound), |row| row.get("opcode"))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert!(opcodes.iter().any(|opcode| opcode == "Halt"), "{opcodes:?}");
        opcodes
            .into_iter()
            .filter(|opcode| matches!(opcode.as_str(), "OpenEphemeral" | "OpenAutoindex"))
            .collect()
    }

    #[test]
    fn a_claim_builds_no_ephemeral_table() {
        let backend = SqliteBackend::new();
        let conn = backend.writer_connection();
        for sql in [CLAIM_NEXT, MARK_CLAIMED] {
            assert_eq!(ephemeral_tables(&conn, sql), Vec::<String>::new(), "{sql}");
        }
        // What the check looks for: the claim as it was written before.
        let in_list = "UPDATE jobs SET attempts = attempts + 1 WHERE id = (SELECT id FROM jobs \
             WHERE queue IN (SELECT value FROM json_each(?1)) LIMIT 1) RETURNING id";
        assert_eq!(ephemeral_tables(&conn, in_list).len(), 2);
    }

    #[tokio::test]
    async fn schema_is_versioned_and_reopens() {
        let backend = SqliteBackend::new();
        drop(SqliteJobStore::open(&backend.path()).expect("create"));
        drop(SqliteJobStore::open(&backend.path()).expect("reopen migrates nothing"));
        let conn = Connection::open(backend.path()).expect("open");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .expect("version");
        assert_eq!(version, MIGRATIONS.len() as i64);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        conn.pragma_update(None, "user_version", 99)
            .expect("set version");
        drop(conn);
        assert!(matches!(
            SqliteJobStore::open(&backend.path()),
            Err(StoreError::Internal(message)) if message.contains("newer")
        ));
    }
}
