//! The job model shared by the IPP layer, the store and the dispatcher.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// IPP `multiple-operation-time-out`: a job still receiving documents (Create-Job,
/// Send-Document) that gets none for this many seconds is closed and printed with what it
/// has (`multiple-operation-time-out-action` `process-job`).
pub const MULTIPLE_OPERATION_TIME_OUT_SECONDS: i32 = 900;

/// IPP `job-id`: a positive 32-bit integer, unique per spooler store.
pub type JobId = i32;

/// Job states as RFC 8011 section 5.3.7 defines them (the enum values are the wire values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(i32)]
pub enum JobState {
    Pending = 3,
    PendingHeld = 4,
    Processing = 5,
    ProcessingStopped = 6,
    Canceled = 7,
    Aborted = 8,
    Completed = 9,
}

impl JobState {
    /// The IPP enum value.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The state for an IPP enum value.
    pub fn from_i32(value: i32) -> Option<JobState> {
        Some(match value {
            3 => JobState::Pending,
            4 => JobState::PendingHeld,
            5 => JobState::Processing,
            6 => JobState::ProcessingStopped,
            7 => JobState::Canceled,
            8 => JobState::Aborted,
            9 => JobState::Completed,
            _ => return None,
        })
    }

    /// The keyword used in logs, metrics and `which-jobs`.
    pub fn keyword(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::PendingHeld => "pending-held",
            JobState::Processing => "processing",
            JobState::ProcessingStopped => "processing-stopped",
            JobState::Canceled => "canceled",
            JobState::Aborted => "aborted",
            JobState::Completed => "completed",
        }
    }

    /// Canceled, aborted and completed jobs are finished: nothing changes them any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Canceled | JobState::Aborted | JobState::Completed
        )
    }
}

/// The job template attributes a job carries (RFC 8011 section 5.2, PWG 5100.x), after the
/// queue's defaults were applied. Absent means the printer's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTicket {
    pub copies: Option<i32>,
    pub sides: Option<String>,
    pub media: Option<String>,
    pub print_color_mode: Option<String>,
    pub print_quality: Option<i32>,
    pub orientation_requested: Option<i32>,
    pub number_up: Option<i32>,
    /// Inclusive 1-based ranges.
    pub page_ranges: Vec<(i32, i32)>,
    pub job_hold_until: Option<String>,
    /// PWG 5100.3 billing code.
    pub job_account_id: Option<String>,
    pub job_accounting_user_id: Option<String>,
}

/// Where a document's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocumentBody {
    /// Small documents live in the job store itself, committed with the job row.
    Inline(Bytes),
    /// Larger ones live in the `DocumentStore` under this key, fsynced before the row.
    Stored { key: String },
}

/// A document as it is handed to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDocument {
    /// The MIME type after detection (never `application/octet-stream` when detection knew better).
    pub format: String,
    /// `document-name`, when the client sent one.
    pub name: Option<String>,
    pub size: u64,
    pub body: DocumentBody,
}

impl NewDocument {
    /// The document as the store reports it once recorded as document `number`.
    pub fn info(&self, number: i32) -> DocumentInfo {
        DocumentInfo {
            number,
            format: self.format.clone(),
            name: self.name.clone(),
            size: self.size,
            key: match &self.body {
                DocumentBody::Inline(_) => None,
                DocumentBody::Stored { key } => Some(key.clone()),
            },
        }
    }
}

/// A document as the store reports it (the bytes are fetched separately).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentInfo {
    /// 1-based `document-number`.
    pub number: i32,
    pub format: String,
    pub name: Option<String>,
    pub size: u64,
    /// Set for documents in the `DocumentStore`; `None` for inline ones.
    pub key: Option<String>,
}

/// A job to be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    pub queue: String,
    /// The user who owns the job (authenticated name, or the trusted `requesting-user-name`).
    pub owner: String,
    pub name: String,
    pub originating_host: Option<String>,
    /// 1..=100, 50 by default; higher prints first.
    pub priority: i32,
    /// Created `pending-held` (hold-until-release queue, or `job-hold-until` other than `no-hold`).
    pub held: bool,
    pub ticket: JobTicket,
    /// Print-Job carries its document; Create-Job has none yet.
    pub document: Option<NewDocument>,
    /// No more documents will follow (true for Print-Job).
    pub documents_complete: bool,
    /// Accounting admission, checked and recorded in the transaction that creates the job
    /// (see `store` § Admission); `None` records nothing in the ledger.
    pub admission: Option<crate::accounting::ledger::Admission>,
}

impl NewJob {
    /// The job as a store has just created it: what was submitted, with the id, initial
    /// state and reasons and creation time (Unix seconds) the store gave it. The stores
    /// answer a submission with this rather than reading back the row they wrote.
    pub fn created(
        &self,
        id: JobId,
        state: JobState,
        reasons: Vec<String>,
        created_at: i64,
    ) -> Job {
        Job {
            id,
            queue: self.queue.clone(),
            owner: self.owner.clone(),
            name: self.name.clone(),
            originating_host: self.originating_host.clone(),
            priority: self.priority,
            state,
            reasons,
            message: None,
            ticket: self.ticket.clone(),
            documents: self.document.iter().map(|d| d.info(1)).collect(),
            documents_complete: self.documents_complete,
            created_at,
            processing_at: None,
            completed_at: None,
            printer: None,
            attempts: 0,
            impressions_completed: None,
            sheets_completed: None,
        }
    }
}

/// Who dispatches a job: a spooler process and its leadership epoch. The store's claim
/// records both, and only the same claimer may finish or requeue the job (the fence).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claimer {
    pub id: String,
    pub epoch: i64,
    /// The shard it leads (`JobStore::lead_shard`): it claims only while the store still
    /// names it the shard's leader at this epoch. `None`: the only dispatcher of its store.
    pub shard: Option<String>,
}

/// A job as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub queue: String,
    pub owner: String,
    pub name: String,
    pub originating_host: Option<String>,
    pub priority: i32,
    pub state: JobState,
    /// IPP `job-state-reasons` keywords (never empty on the wire: `none` is added there).
    pub reasons: Vec<String>,
    /// `job-state-message`.
    pub message: Option<String>,
    pub ticket: JobTicket,
    pub documents: Vec<DocumentInfo>,
    pub documents_complete: bool,
    /// Unix seconds.
    pub created_at: i64,
    pub processing_at: Option<i64>,
    pub completed_at: Option<i64>,
    /// The printer the job was (last) sent to.
    pub printer: Option<String>,
    /// How many times the job was handed to a printer.
    pub attempts: i32,
    pub impressions_completed: Option<i64>,
    pub sheets_completed: Option<i64>,
}
