//! The ledger: append-only charges of jobs, kept in the job store.
//!
//! Every entry is a *delta*, so any sum of entries (a user's month, a queue's report) is
//! the money actually charged, with nothing to subtract or replace afterwards:
//!
//! - `estimate`, written at admission in the same store transaction as the job (or as its
//!   last document), after the quota check: the estimated usage and price;
//! - `settlement`, when the job completed: the printer's counts (`job-impressions-completed`,
//!   `job-media-sheets-completed`) priced, *minus* the estimate; zero when the printer
//!   reported nothing (the estimate stands: a job is never free);
//! - `refund`, when the job was canceled or aborted before it completed: minus the estimate.
//!
//! A job has at most one estimate and at most one closing entry (settlement or refund):
//! the store refuses a second one, which is what makes retries, failovers and restarts
//! charge a job exactly once. The estimate plus its closing entry is the job's final charge.
//!
//! Entries carry their own time (unix milliseconds); a period's spending is the sum of the
//! entries whose time falls in it, so a settlement that comes after midnight corrects the
//! day it was recorded in.

use serde::{Deserialize, Serialize};

use super::pricing::{Money, PriceList};
use super::quota::ApplicableQuota;
use super::usage::Usage;
use crate::job::{Job, JobId};

/// What an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Estimate,
    Settlement,
    Refund,
}

impl EntryKind {
    pub fn keyword(self) -> &'static str {
        match self {
            EntryKind::Estimate => "estimate",
            EntryKind::Settlement => "settlement",
            EntryKind::Refund => "refund",
        }
    }

    pub fn from_keyword(keyword: &str) -> Option<EntryKind> {
        Some(match keyword {
            "estimate" => EntryKind::Estimate,
            "settlement" => EntryKind::Settlement,
            "refund" => EntryKind::Refund,
            _ => return None,
        })
    }
}

/// One ledger entry. Counts and amount are deltas (negative in refunds and in settlements
/// below the estimate).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub job: JobId,
    pub kind: EntryKind,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub queue: String,
    /// The printer the job printed on. An estimate is written before any printer is chosen:
    /// stores report it with the printer of the job's settlement when there is one.
    pub printer: Option<String>,
    pub user: String,
    /// The user's groups at admission (group quotas and group reports).
    pub groups: Vec<String>,
    /// The billing code (`job-account-id`).
    pub account: Option<String>,
    pub impressions: i64,
    pub sheets: i64,
    pub color: bool,
    /// Minor units of `currency`.
    pub amount: i64,
    pub currency: String,
    /// Admitted over an allow-and-flag quota (the closing entry copies the flag).
    pub flagged: bool,
}

/// What the store needs to admit a job: who pays, the estimate, and the quotas to check
/// against the ledger in the same transaction that records the estimate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Unix milliseconds: the estimate's time (the quotas' periods were computed for it).
    pub at_ms: i64,
    pub user: String,
    pub groups: Vec<String>,
    pub account: Option<String>,
    pub usage: Usage,
    pub price: Money,
    /// The quotas that apply; each is summed over the ledger entries of its scope in its
    /// period, in `price.currency`.
    pub quotas: Vec<ApplicableQuota>,
}

impl Admission {
    /// The estimate entry for job `job` on `queue`.
    pub fn estimate(&self, job: JobId, queue: &str, flagged: bool) -> LedgerEntry {
        LedgerEntry {
            job,
            kind: EntryKind::Estimate,
            at_ms: self.at_ms,
            queue: queue.to_owned(),
            printer: None,
            user: self.user.clone(),
            groups: self.groups.clone(),
            account: self.account.clone(),
            impressions: saturating_i64(self.usage.impressions),
            sheets: saturating_i64(self.usage.sheets),
            color: self.usage.color,
            amount: self.price.minor,
            currency: self.price.currency.clone(),
            flagged,
        }
    }
}

/// Which entries `JobStore::ledger` returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerQuery {
    /// Entries at or after this time (unix ms).
    pub from_ms: Option<i64>,
    /// Entries before this time (unix ms).
    pub to_ms: Option<i64>,
    /// Only this job's entries.
    pub job: Option<JobId>,
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The settlement of a completed job: what its printer reported (impressions, sheets),
/// priced with the queue's current prices, minus the estimate. Without a printer count (or
/// with a count of zero for a job estimated at some pages) the estimate stands (a zero
/// delta). Sheets not reported are derived from the impressions and the job's sides. When
/// the queue's currency changed since admission, the estimate stands too: a job is charged
/// in one currency only.
pub fn settlement(
    estimate: &LedgerEntry,
    job: &Job,
    (reported_impressions, reported_sheets): (Option<i64>, Option<i64>),
    prices: &PriceList,
    at_ms: i64,
) -> LedgerEntry {
    // A completed job of counted pages reported at zero impressions is a printer that does
    // not count (ippeveprinter without a print command, some drivers), not a free job.
    let reported = reported_impressions
        .and_then(|n| u64::try_from(n).ok())
        .filter(|&n| n > 0 || estimate.impressions <= 0);
    let actual = match reported {
        Some(impressions) if prices.currency() == estimate.currency => {
            let two_sided = job
                .ticket
                .sides
                .as_deref()
                .is_some_and(|sides| sides.starts_with("two-sided"));
            let sheets = reported_sheets
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(if two_sided {
                    impressions.div_ceil(2)
                } else {
                    impressions
                });
            let usage = Usage {
                impressions,
                sheets,
                color: estimate.color,
                two_sided,
            };
            let price = prices.price(&usage, job.ticket.media.as_deref());
            Some((
                saturating_i64(impressions),
                saturating_i64(sheets),
                price.minor,
            ))
        }
        _ => None,
    };
    let (impressions, sheets, amount) = match actual {
        Some((impressions, sheets, amount)) => (
            impressions.saturating_sub(estimate.impressions),
            sheets.saturating_sub(estimate.sheets),
            amount.saturating_sub(estimate.amount),
        ),
        None => (0, 0, 0),
    };
    LedgerEntry {
        kind: EntryKind::Settlement,
        at_ms,
        printer: job.printer.clone(),
        impressions,
        sheets,
        amount,
        ..estimate.clone()
    }
}

/// The refund of a job that never completed: minus its estimate.
pub fn refund(estimate: &LedgerEntry, printer: Option<String>, at_ms: i64) -> LedgerEntry {
    LedgerEntry {
        kind: EntryKind::Refund,
        at_ms,
        printer,
        impressions: estimate.impressions.saturating_neg(),
        sheets: estimate.sheets.saturating_neg(),
        amount: estimate.amount.saturating_neg(),
        ..estimate.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobState, JobTicket};
    use printfleet_crds::AccountingPolicySpec;
    use printfleet_crds::policy::Prices;

    fn prices() -> PriceList {
        PriceList::from_policy(&AccountingPolicySpec {
            currency: "EUR".into(),
            prices: Prices {
                mono_impression: Some("0.05".into()),
                color_impression: Some("0.20".into()),
                per_job: Some("0.10".into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .expect("valid policy")
    }

    fn estimate() -> LedgerEntry {
        Admission {
            at_ms: 1_000,
            user: "alice".into(),
            groups: vec!["staff".into()],
            account: Some("p-1".into()),
            usage: Usage {
                impressions: 4,
                sheets: 4,
                color: false,
                two_sided: false,
            },
            price: Money {
                minor: 30,
                currency: "EUR".into(),
            },
            quotas: Vec::new(),
        }
        .estimate(7, "office", false)
    }

    fn completed() -> Job {
        Job {
            id: 7,
            queue: "office".into(),
            owner: "alice".into(),
            name: "j".into(),
            originating_host: None,
            priority: 50,
            state: JobState::Completed,
            reasons: Vec::new(),
            message: None,
            ticket: JobTicket::default(),
            documents: Vec::new(),
            documents_complete: true,
            created_at: 1,
            processing_at: Some(1),
            completed_at: Some(2),
            printer: Some("p1".into()),
            attempts: 1,
            impressions_completed: None,
            sheets_completed: None,
        }
    }

    #[test]
    fn settlement_is_the_difference_to_the_estimate() {
        let estimate = estimate();
        let settled = settlement(&estimate, &completed(), (Some(6), None), &prices(), 2_000);
        assert_eq!(settled.kind, EntryKind::Settlement);
        assert_eq!(settled.printer.as_deref(), Some("p1"));
        assert_eq!((settled.impressions, settled.sheets), (2, 2));
        // 6 × 0.05 + 0.10 = 0.40, estimate 0.30.
        assert_eq!(settled.amount, 10);
        assert_eq!(estimate.amount + settled.amount, 40);
    }

    #[test]
    fn settlement_without_printer_counts_keeps_the_estimate() {
        let settled = settlement(&estimate(), &completed(), (None, None), &prices(), 2_000);
        assert_eq!(
            (settled.impressions, settled.sheets, settled.amount),
            (0, 0, 0)
        );
        assert_eq!(settled.account.as_deref(), Some("p-1"));
    }

    #[test]
    fn a_zero_count_is_no_count() {
        let settled = settlement(
            &estimate(),
            &completed(),
            (Some(0), Some(0)),
            &prices(),
            2_000,
        );
        assert_eq!(settled.amount, 0);
    }

    #[test]
    fn settlement_in_another_currency_keeps_the_estimate() {
        let settled = settlement(
            &estimate(),
            &completed(),
            (Some(100), Some(100)),
            &PriceList::free(),
            2_000,
        );
        assert_eq!(settled.amount, 0);
    }

    #[test]
    fn refund_cancels_the_estimate() {
        let estimate = estimate();
        let refunded = refund(&estimate, None, 3_000);
        assert_eq!(refunded.kind, EntryKind::Refund);
        assert_eq!(refunded.amount + estimate.amount, 0);
        assert_eq!(refunded.impressions + estimate.impressions, 0);
    }

    #[test]
    fn kinds_round_trip() {
        for kind in [
            EntryKind::Estimate,
            EntryKind::Settlement,
            EntryKind::Refund,
        ] {
            assert_eq!(EntryKind::from_keyword(kind.keyword()), Some(kind));
        }
        assert_eq!(EntryKind::from_keyword("bonus"), None);
    }
}
