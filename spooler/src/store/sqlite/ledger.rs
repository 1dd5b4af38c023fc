//! The ledger in SQLite: one append-only table, written only on the writer thread, so the
//! quota sums and the estimate of one admission are one serial step.
//!
//! `(job_id, kind)` is unique, and so is `job_id` among closing entries (settlement or
//! refund): `INSERT OR IGNORE` makes every recording idempotent.

use rusqlite::{Connection, Row, params};

use super::{conversion_error, json_column, to_json};
use crate::accounting::ledger::{Admission, EntryKind, LedgerEntry, LedgerQuery};
use crate::accounting::quota::{self, Charge, QuotaDecision, Scope, Spent, Totals};
use crate::job::JobId;
use crate::store::StoreError;

/// The schema migration that adds the ledger.
pub(super) const MIGRATION: &str = "
    CREATE TABLE ledger (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('estimate', 'settlement', 'refund')),
        at_ms INTEGER NOT NULL,
        queue TEXT NOT NULL,
        printer TEXT,
        user_name TEXT NOT NULL,
        user_groups TEXT NOT NULL,
        account TEXT,
        impressions INTEGER NOT NULL,
        sheets INTEGER NOT NULL,
        color INTEGER NOT NULL,
        amount INTEGER NOT NULL,
        currency TEXT NOT NULL,
        flagged INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX ledger_once_per_kind ON ledger (job_id, kind);
    CREATE UNIQUE INDEX ledger_closed_once ON ledger (job_id) WHERE kind <> 'estimate';
    -- Covers a user's quota sum without touching the table.
    CREATE INDEX ledger_by_user ON ledger (user_name, currency, at_ms, amount, impressions);
    CREATE INDEX ledger_by_time ON ledger (at_ms);
";

/// Columns in the order `entry_from_row` reads them; `printer` of an estimate is the
/// printer of its job's settlement when there is one.
const SELECT_ENTRIES: &str = "SELECT l.job_id, l.kind, l.at_ms, l.queue, \
     COALESCE(l.printer, (SELECT s.printer FROM ledger s \
                          WHERE s.job_id = l.job_id AND s.kind = 'settlement')), \
     l.user_name, l.user_groups, l.account, l.impressions, l.sheets, l.color, l.amount, \
     l.currency, l.flagged FROM ledger l ";

/// Sums the ledger for each quota and decides. `Reject` is an error (the caller's savepoint
/// rolls the whole request back).
pub(super) fn decide(
    conn: &Connection,
    admission: &Admission,
) -> Result<QuotaDecision, StoreError> {
    if admission.quotas.is_empty() {
        return Ok(QuotaDecision::Accept);
    }
    let mut spent = Spent::default();
    for quota in &admission.quotas {
        let (start, end) = (
            quota.period.start.as_millisecond(),
            quota.period.end.as_millisecond(),
        );
        let currency = &admission.price.currency;
        let (amount, impressions): (i64, i64) = match &quota.scope {
            Scope::User(user) => conn
                .prepare_cached(
                    "SELECT COALESCE(SUM(amount), 0), COALESCE(SUM(impressions), 0) FROM ledger \
                     WHERE user_name = ?1 AND currency = ?2 AND at_ms >= ?3 AND at_ms < ?4",
                )?
                .query_row(params![user, currency, start, end], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?,
            Scope::Group(group) => conn
                .prepare_cached(
                    "SELECT COALESCE(SUM(amount), 0), COALESCE(SUM(impressions), 0) FROM ledger \
                     WHERE currency = ?2 AND at_ms >= ?3 AND at_ms < ?4 \
                       AND EXISTS (SELECT 1 FROM json_each(user_groups) WHERE value = ?1)",
                )?
                .query_row(params![group, currency, start, end], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?,
        };
        spent.set(
            quota.scope.clone(),
            quota.period,
            Totals {
                amount,
                // Refunds can only bring a sum back to what was charged: never below zero.
                impressions: u64::try_from(impressions).unwrap_or(0),
            },
        );
    }
    let charge = Charge::of(&admission.price, &admission.usage);
    match quota::decide(&admission.quotas, &spent, &charge) {
        QuotaDecision::Reject(tripped) => Err(StoreError::QuotaExceeded(tripped)),
        decision => Ok(decision),
    }
}

/// Inserts `entry` unless the job already has one of its kind (or, for a closing entry,
/// any closing entry); returns whether it was inserted.
pub(super) fn insert(conn: &Connection, entry: &LedgerEntry) -> Result<bool, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO ledger (job_id, kind, at_ms, queue, printer, user_name, \
             user_groups, account, impressions, sheets, color, amount, currency, flagged) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?
        .execute(params![
            entry.job,
            entry.kind.keyword(),
            entry.at_ms,
            entry.queue,
            entry.printer,
            entry.user,
            to_json(&entry.groups)?,
            entry.account,
            entry.impressions,
            entry.sheets,
            entry.color,
            entry.amount,
            entry.currency,
            entry.flagged,
        ])?;
    Ok(inserted == 1)
}

/// Records the refund of job `id` (its estimate negated) unless it has no estimate or
/// already has a closing entry.
pub(super) fn refund(
    conn: &Connection,
    id: JobId,
    printer: Option<&str>,
    at_ms: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO ledger (job_id, kind, at_ms, queue, printer, user_name, \
         user_groups, account, impressions, sheets, color, amount, currency, flagged) \
         SELECT job_id, 'refund', ?2, queue, ?3, user_name, user_groups, account, \
                -impressions, -sheets, color, -amount, currency, flagged \
         FROM ledger WHERE job_id = ?1 AND kind = 'estimate'",
    )?
    .execute(params![id, at_ms, printer])?;
    Ok(())
}

pub(super) fn entries(
    conn: &Connection,
    query: &LedgerQuery,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let sql = format!(
        "{SELECT_ENTRIES} WHERE (?1 IS NULL OR l.at_ms >= ?1) AND (?2 IS NULL OR l.at_ms < ?2) \
         AND (?3 IS NULL OR l.job_id = ?3) ORDER BY l.at_ms, l.job_id, l.seq"
    );
    let entries = conn
        .prepare_cached(&sql)?
        .query_map(
            params![query.from_ms, query.to_ms, query.job],
            entry_from_row,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(entries)
}

pub(super) fn unsettled(
    conn: &Connection,
    completed: i32,
    limit: usize,
) -> Result<Vec<JobId>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let ids = conn
        .prepare_cached(
            "SELECT j.id FROM jobs j JOIN ledger e ON e.job_id = j.id AND e.kind = 'estimate' \
             WHERE j.state = ?1 AND NOT EXISTS \
                 (SELECT 1 FROM ledger c WHERE c.job_id = j.id AND c.kind <> 'estimate') \
             ORDER BY j.id LIMIT ?2",
        )?
        .query_map(params![completed, limit], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<JobId>>>()?;
    Ok(ids)
}

#[derive(Debug, thiserror::Error)]
#[error("unknown ledger entry kind {0:?}")]
struct UnknownKind(String);

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<LedgerEntry> {
    let kind: String = row.get(1)?;
    Ok(LedgerEntry {
        job: row.get(0)?,
        kind: EntryKind::from_keyword(&kind)
            .ok_or_else(|| conversion_error(1, UnknownKind(kind)))?,
        at_ms: row.get(2)?,
        queue: row.get(3)?,
        printer: row.get(4)?,
        user: row.get(5)?,
        groups: json_column(row, 6)?,
        account: row.get(7)?,
        impressions: row.get(8)?,
        sheets: row.get(9)?,
        color: row.get(10)?,
        amount: row.get(11)?,
        currency: row.get(12)?,
        flagged: row.get(13)?,
    })
}
