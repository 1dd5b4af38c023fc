//! The job state machine both job stores share (RFC 8011 job states and reasons): what a
//! new job starts as, which user actions each state allows, the claim fence, and what an
//! attempt's outcome writes. Pure functions; the backends only store the results.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{Outcome, REASON_ACCOUNT_LIMIT, StoreError, UserAction, WhichJobs, settlement_of};
use crate::accounting::ledger::LedgerEntry;
use crate::job::{Claimer, JobId, JobState};

/// `job-state-reasons` keywords the store sets (RFC 8011 section 5.3.8).
pub(crate) const REASON_INCOMING: &str = "job-incoming";
pub(crate) const REASON_HOLD: &str = "job-hold-until-specified";
pub(crate) const REASON_CANCELED: &str = "job-canceled-by-user";
pub(crate) const REASON_PRINTING: &str = "job-printing";
pub(crate) const REASON_COMPLETED: &str = "job-completed-successfully";
pub(crate) const REASON_ABORTED: &str = "aborted-by-system";

/// A claimed job's reasons (`[REASON_PRINTING]`) as both stores keep reasons, in JSON:
/// encoded once, as every claim writes them.
pub(crate) static PRINTING_REASONS: LazyLock<String> =
    LazyLock::new(|| serde_json::json!([REASON_PRINTING]).to_string());

/// `value` as the JSON text both stores keep lists and tickets in.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Internal(format!("encoding: {e}")))
}

/// Now, as unix seconds and unix milliseconds.
pub(crate) fn now() -> (i64, i64) {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    (millis / 1000, millis)
}

/// The state and reasons a new job starts with.
pub(crate) fn initial_state(held: bool, documents_complete: bool) -> (JobState, Vec<String>) {
    let mut reasons = Vec::new();
    if held {
        reasons.push(REASON_HOLD.to_string());
    }
    if !documents_complete {
        reasons.push(REASON_INCOMING.to_string());
    }
    let state = if held {
        JobState::PendingHeld
    } else {
        JobState::Pending
    };
    (state, reasons)
}

/// The state and reasons a user's action leads to, or `None` when RFC 8011 does not allow
/// it from `state`.
pub(crate) fn user_transition(
    state: JobState,
    reasons: &[String],
    action: UserAction,
) -> Option<(JobState, Vec<String>)> {
    match (action, state) {
        (
            UserAction::Cancel,
            JobState::Pending
            | JobState::PendingHeld
            | JobState::Processing
            | JobState::ProcessingStopped,
        ) => Some((JobState::Canceled, vec![REASON_CANCELED.to_string()])),
        (UserAction::Hold, JobState::Pending) => {
            let mut held = reasons.to_vec();
            if !held.iter().any(|reason| reason == REASON_HOLD) {
                held.push(REASON_HOLD.to_string());
            }
            Some((JobState::PendingHeld, held))
        }
        (UserAction::Release, JobState::PendingHeld) => Some((
            JobState::Pending,
            without(&without(reasons, REASON_HOLD), REASON_ACCOUNT_LIMIT),
        )),
        _ => None,
    }
}

/// The operation name a refusal reports.
pub(crate) fn action_name(action: UserAction) -> &'static str {
    match action {
        UserAction::Cancel => "cancel-job",
        UserAction::Hold => "hold-job",
        UserAction::Release => "release-job",
    }
}

pub(crate) fn without(reasons: &[String], removed: &str) -> Vec<String> {
    reasons
        .iter()
        .filter(|reason| *reason != removed)
        .cloned()
        .collect()
}

/// What `finish` may do with a job, given the claim the store records.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fence {
    /// The caller holds the claim of a processing job: record the outcome.
    Holds,
    /// The caller's job was canceled while it printed: it stays canceled.
    Canceled,
    /// Someone else holds the job now, or it is not being processed.
    Lost,
}

pub(crate) fn fence(
    state: JobState,
    claimer_id: Option<&str>,
    claimer_epoch: Option<i64>,
    caller: &Claimer,
) -> Fence {
    let ours = claimer_id == Some(caller.id.as_str()) && claimer_epoch == Some(caller.epoch);
    match state {
        JobState::Processing if ours => Fence::Holds,
        JobState::Canceled if ours => Fence::Canceled,
        _ => Fence::Lost,
    }
}

/// The row values an attempt's outcome writes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Finished {
    pub state: JobState,
    pub reasons: Vec<String>,
    pub message: Option<String>,
    pub printer: String,
    pub completed_at: Option<i64>,
    pub retry_at_ms: Option<i64>,
    pub impressions: Option<i64>,
    pub sheets: Option<i64>,
    /// Recorded with the completion (see `Outcome::Completed`).
    pub settlement: Option<LedgerEntry>,
}

/// What the outcome of job `id`'s attempt writes; an error for a settlement that is not
/// this job's.
pub(crate) fn finished(id: JobId, outcome: Outcome, now_s: i64) -> Result<Finished, StoreError> {
    Ok(match outcome {
        Outcome::Completed {
            printer,
            impressions,
            sheets,
            settlement,
        } => Finished {
            state: JobState::Completed,
            reasons: vec![REASON_COMPLETED.to_string()],
            message: None,
            printer,
            completed_at: Some(now_s),
            retry_at_ms: None,
            impressions,
            sheets,
            settlement: settlement
                .map(|entry| settlement_of(&entry, id).map(|()| entry))
                .transpose()?,
        },
        Outcome::Aborted { printer, message } => Finished {
            state: JobState::Aborted,
            reasons: vec![REASON_ABORTED.to_string()],
            message: Some(message),
            printer,
            completed_at: Some(now_s),
            retry_at_ms: None,
            impressions: None,
            sheets: None,
            settlement: None,
        },
        Outcome::Retry {
            printer,
            message,
            retry_at_ms,
        } => Finished {
            state: JobState::Pending,
            reasons: Vec::new(),
            message: Some(message),
            printer,
            completed_at: None,
            retry_at_ms: Some(retry_at_ms),
            impressions: None,
            sheets: None,
            settlement: None,
        },
    })
}

/// The range of IPP state values a `which-jobs` selects.
pub(crate) fn state_range(which: WhichJobs) -> (i32, i32) {
    match which {
        WhichJobs::NotCompleted => (
            JobState::Pending.as_i32(),
            JobState::ProcessingStopped.as_i32(),
        ),
        WhichJobs::Completed => (JobState::Canceled.as_i32(), JobState::Completed.as_i32()),
        WhichJobs::All => (JobState::Pending.as_i32(), JobState::Completed.as_i32()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_state_of_new_jobs() {
        assert_eq!(initial_state(false, true), (JobState::Pending, vec![]));
        assert_eq!(
            initial_state(false, false),
            (JobState::Pending, vec![REASON_INCOMING.to_string()])
        );
        assert_eq!(
            initial_state(true, false),
            (
                JobState::PendingHeld,
                vec![REASON_HOLD.to_string(), REASON_INCOMING.to_string()]
            )
        );
    }

    #[test]
    fn user_transitions() {
        let incoming = vec![REASON_INCOMING.to_string()];
        assert_eq!(
            user_transition(JobState::ProcessingStopped, &[], UserAction::Cancel),
            Some((JobState::Canceled, vec![REASON_CANCELED.to_string()]))
        );
        assert_eq!(
            user_transition(JobState::ProcessingStopped, &[], UserAction::Hold),
            None
        );
        assert_eq!(
            user_transition(JobState::ProcessingStopped, &[], UserAction::Release),
            None
        );
        // Holding and releasing a job still receiving documents keeps `job-incoming`.
        let (held, held_reasons) =
            user_transition(JobState::Pending, &incoming, UserAction::Hold).expect("hold");
        assert_eq!(held, JobState::PendingHeld);
        assert_eq!(
            held_reasons,
            vec![REASON_INCOMING.to_string(), REASON_HOLD.to_string()]
        );
        assert_eq!(
            user_transition(held, &held_reasons, UserAction::Release),
            Some((JobState::Pending, incoming))
        );
    }

    #[test]
    fn fences() {
        let me = Claimer {
            id: "a".into(),
            epoch: 2,
            shard: None,
        };
        assert_eq!(
            fence(JobState::Processing, Some("a"), Some(2), &me),
            Fence::Holds
        );
        assert_eq!(
            fence(JobState::Canceled, Some("a"), Some(2), &me),
            Fence::Canceled
        );
        assert_eq!(
            fence(JobState::Processing, Some("a"), Some(1), &me),
            Fence::Lost
        );
        assert_eq!(
            fence(JobState::Processing, Some("b"), Some(2), &me),
            Fence::Lost
        );
        assert_eq!(fence(JobState::Canceled, None, None, &me), Fence::Lost);
        assert_eq!(
            fence(JobState::Pending, Some("a"), Some(2), &me),
            Fence::Lost
        );
    }

    #[test]
    fn retry_keeps_the_job_pending_with_its_message() {
        let update = finished(
            1,
            Outcome::Retry {
                printer: "p".into(),
                message: "offline".into(),
                retry_at_ms: 42,
            },
            7,
        )
        .expect("a retry writes");
        assert_eq!(update.state, JobState::Pending);
        assert_eq!(update.retry_at_ms, Some(42));
        assert_eq!(update.completed_at, None);
        assert_eq!(update.message.as_deref(), Some("offline"));
    }
}
