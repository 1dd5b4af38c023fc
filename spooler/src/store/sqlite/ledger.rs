//! The ledger in SQLite: one append-only table, written only on the writer thread, so the
//! quota sums and the estimate of one admission are one serial step.
//!
//! `(job_id, kind)` is unique, and so is `job_id` among closing entries (settlement or
//! refund): `INSERT OR IGNORE` makes every recording idempotent.
//!
//! Quota sums are kept running in `quota_totals`, one row per scope, currency and period:
//! a row is seeded from the ledger the first time a quota asks for it, and every later
//! ledger entry is added to the rows it falls in, in the same transaction. Checking a quota
//! is then a point lookup, however long the ledger grows.

use std::sync::LazyLock;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{conversion_error, json_column, to_json};
use crate::accounting;
use crate::accounting::ledger::{Admission, EntryKind, LedgerEntry, LedgerQuery};
use crate::accounting::quota::{self, Charge, QuotaDecision, Scope, Spent, Totals};
use crate::job::JobId;
use crate::store::StoreError;
use crate::store::filter;

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

/// The schema migration that adds the running quota sums. Rows are a cache of ledger sums:
/// any row may be deleted at any time (it is seeded again from the ledger when needed).
pub(super) const QUOTA_TOTALS_MIGRATION: &str = "
    CREATE TABLE quota_totals (
        scope_kind TEXT NOT NULL CHECK (scope_kind IN ('user', 'group')),
        scope TEXT NOT NULL,
        currency TEXT NOT NULL,
        period_start INTEGER NOT NULL,
        period_end INTEGER NOT NULL,
        amount INTEGER NOT NULL,
        impressions INTEGER NOT NULL,
        PRIMARY KEY (scope_kind, scope, currency, period_start, period_end)
    ) WITHOUT ROWID;
    CREATE INDEX quota_totals_by_end ON quota_totals (period_end);
    CREATE TRIGGER ledger_entries_add_to_quota_totals AFTER INSERT ON ledger BEGIN
        UPDATE quota_totals
        SET amount = amount + NEW.amount, impressions = impressions + NEW.impressions
        WHERE scope_kind = 'user' AND scope = NEW.user_name AND currency = NEW.currency
          AND period_start <= NEW.at_ms AND period_end > NEW.at_ms;
        UPDATE quota_totals
        SET amount = amount + NEW.amount, impressions = impressions + NEW.impressions
        WHERE scope_kind = 'group' AND scope IN (SELECT value FROM json_each(NEW.user_groups))
          AND currency = NEW.currency AND period_start <= NEW.at_ms AND period_end > NEW.at_ms;
    END;
";

/// The schema migration that keeps temporary b-trees off the path of every ledger insert.
/// SQLite builds one, and frees it, each time it evaluates `x IN (list)` in a CHECK, and
/// each time it runs an UPDATE that may touch several rows of a WITHOUT ROWID table or
/// whose WHERE holds a subquery. The insert of each job's estimate did all of these (the
/// CHECK on `kind` and the trigger's two UPDATEs of the running sums): a quarter of a
/// submission's CPU. Now the CHECKs compare with `=`, the running sums are a rowid table,
/// and `add_to_running_totals` updates them one scope at a time instead of a trigger. The
/// running sums are a cache, so their table is simply made again.
pub(super) const NO_TEMPORARY_TABLES_MIGRATION: &str = "
    DROP TRIGGER ledger_entries_add_to_quota_totals;
    CREATE TABLE ledger_new (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id INTEGER NOT NULL,
        kind TEXT NOT NULL
            CHECK (kind = 'estimate' OR kind = 'settlement' OR kind = 'refund'),
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
    INSERT INTO ledger_new SELECT * FROM ledger;
    DROP TABLE ledger;
    ALTER TABLE ledger_new RENAME TO ledger;
    CREATE UNIQUE INDEX ledger_once_per_kind ON ledger (job_id, kind);
    CREATE UNIQUE INDEX ledger_closed_once ON ledger (job_id) WHERE kind <> 'estimate';
    CREATE INDEX ledger_by_user ON ledger (user_name, currency, at_ms, amount, impressions);
    CREATE INDEX ledger_by_time ON ledger (at_ms);
    DROP TABLE quota_totals;
    CREATE TABLE quota_totals (
        scope_kind TEXT NOT NULL CHECK (scope_kind = 'user' OR scope_kind = 'group'),
        scope TEXT NOT NULL,
        currency TEXT NOT NULL,
        period_start INTEGER NOT NULL,
        period_end INTEGER NOT NULL,
        amount INTEGER NOT NULL,
        impressions INTEGER NOT NULL,
        UNIQUE (scope_kind, scope, currency, period_start, period_end)
    );
    CREATE INDEX quota_totals_by_end ON quota_totals (period_end);
";

/// Columns in the order `entry_from_row` reads them; `printer` of an estimate is the
/// printer of its job's settlement when there is one.
const SELECT_ENTRIES: &str = "SELECT l.job_id, l.kind, l.at_ms, l.queue, \
     COALESCE(l.printer, (SELECT s.printer FROM ledger s \
                          WHERE s.job_id = l.job_id AND s.kind = 'settlement')), \
     l.user_name, l.user_groups, l.account, l.impressions, l.sheets, l.color, l.amount, \
     l.currency, l.flagged FROM ledger l ";

/// Looks up each quota's running sum and decides. `Reject` is an error (the caller's
/// savepoint rolls the whole request back).
pub(super) fn decide(
    conn: &Connection,
    admission: &Admission,
) -> Result<QuotaDecision, StoreError> {
    if admission.quotas.is_empty() {
        return Ok(QuotaDecision::Accept);
    }
    let mut spent = Spent::default();
    for quota in &admission.quotas {
        let (amount, impressions) = quota_total(
            conn,
            &quota.scope,
            &admission.price.currency,
            quota.period.start.as_millisecond(),
            quota.period.end.as_millisecond(),
        )?;
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

/// The amount and impressions `scope` spent in `currency` during `[start, end)`: the running
/// row when there is one, otherwise the ledger's sum, which then seeds the row (and rows of
/// periods that have ended are dropped: nothing asks for them in the normal course).
fn quota_total(
    conn: &Connection,
    scope: &Scope,
    currency: &str,
    start: i64,
    end: i64,
) -> Result<(i64, i64), StoreError> {
    let (kind, name) = match scope {
        Scope::User(user) => ("user", user),
        Scope::Group(group) => ("group", group),
    };
    let running = conn
        .prepare_cached(
            "SELECT amount, impressions FROM quota_totals WHERE scope_kind = ?1 AND scope = ?2 \
             AND currency = ?3 AND period_start = ?4 AND period_end = ?5",
        )?
        .query_row(params![kind, name, currency, start, end], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    if let Some(totals) = running {
        return Ok(totals);
    }
    let sum = match scope {
        Scope::User(_) => conn.prepare_cached(
            "SELECT COALESCE(SUM(amount), 0), COALESCE(SUM(impressions), 0) FROM ledger \
             WHERE user_name = ?1 AND currency = ?2 AND at_ms >= ?3 AND at_ms < ?4",
        )?,
        Scope::Group(_) => conn.prepare_cached(
            "SELECT COALESCE(SUM(amount), 0), COALESCE(SUM(impressions), 0) FROM ledger \
             WHERE currency = ?2 AND at_ms >= ?3 AND at_ms < ?4 \
               AND EXISTS (SELECT 1 FROM json_each(user_groups) WHERE value = ?1)",
        )?,
    }
    .query_row(params![name, currency, start, end], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })?;
    conn.prepare_cached("DELETE FROM quota_totals WHERE period_end <= ?1")?
        .execute([super::now_ms()])?;
    conn.prepare_cached(
        "INSERT INTO quota_totals (scope_kind, scope, currency, period_start, period_end, \
         amount, impressions) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![kind, name, currency, start, end, sum.0, sum.1])?;
    Ok(sum)
}

/// Inserts `entry` unless the job already has one of its kind (or, for a closing entry,
/// any closing entry); returns whether it was inserted.
const INSERT_ENTRY: &str = "INSERT OR IGNORE INTO ledger (job_id, kind, at_ms, queue, printer, \
     user_name, user_groups, account, impressions, sheets, color, amount, currency, flagged) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

pub(super) fn insert(conn: &Connection, entry: &LedgerEntry) -> Result<bool, StoreError> {
    let inserted = conn.prepare_cached(INSERT_ENTRY)?.execute(params![
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
    if inserted == 1 {
        add_to_running_totals(conn, entry)?;
    }
    Ok(inserted == 1)
}

const ADD_TO_RUNNING_TOTAL: &str = "UPDATE quota_totals \
     SET amount = amount + ?1, impressions = impressions + ?2 \
     WHERE scope_kind = ?3 AND scope = ?4 AND currency = ?5 \
       AND period_start <= ?6 AND period_end > ?6";

/// Adds a just-recorded entry to the running sums it falls in (its user's, and each of its
/// groups'), in the entry's transaction, so a rolled-back entry is never counted.
fn add_to_running_totals(conn: &Connection, entry: &LedgerEntry) -> Result<(), StoreError> {
    let mut add = conn.prepare_cached(ADD_TO_RUNNING_TOTAL)?;
    let user = std::iter::once(("user", &entry.user));
    let groups = entry.groups.iter().map(|group| ("group", group));
    for (kind, scope) in user.chain(groups) {
        add.execute(params![
            entry.amount,
            entry.impressions,
            kind,
            scope,
            entry.currency,
            entry.at_ms
        ])?;
    }
    Ok(())
}

/// Records the refund of job `id` (its estimate negated) unless it has no estimate or
/// already has a closing entry.
pub(super) fn refund(
    conn: &Connection,
    id: JobId,
    printer: Option<&str>,
    at_ms: i64,
) -> Result<(), StoreError> {
    if let Some(estimate) = estimate(conn, id)? {
        // Ignored (like any second closing entry) when the job already has one.
        insert(
            conn,
            &accounting::ledger::refund(&estimate, printer.map(str::to_owned), at_ms),
        )?;
    }
    Ok(())
}

/// Job `id`'s estimate, if it has one. (Read at every claim: the statement's text is
/// built once.)
pub(super) fn estimate(conn: &Connection, id: JobId) -> Result<Option<LedgerEntry>, StoreError> {
    static SELECT_ESTIMATE: LazyLock<String> =
        LazyLock::new(|| format!("{SELECT_ENTRIES} WHERE l.job_id = ?1 AND l.kind = 'estimate'"));
    Ok(conn
        .prepare_cached(&SELECT_ESTIMATE)?
        .query_row([id], entry_from_row)
        .optional()?)
}

pub(super) fn entries(
    conn: &Connection,
    query: &LedgerQuery,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let sql = format!(
        "{SELECT_ENTRIES} WHERE {} AND {} AND {} ORDER BY l.at_ms, l.job_id, l.seq",
        filter(query.from_ms.is_some(), "l.at_ms >= ?1", "?1"),
        filter(query.to_ms.is_some(), "l.at_ms < ?2", "?2"),
        filter(query.job.is_some(), "l.job_id = ?3", "?3"),
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

#[cfg(test)]
mod tests {
    use super::super::now_ms;
    use super::*;

    const HOUR_MS: i64 = 3_600_000;

    fn ledger() -> Connection {
        let mut conn = Connection::open_in_memory().expect("in-memory database");
        super::super::migrate(&mut conn).expect("schema");
        conn
    }

    struct Spend<'a> {
        job: JobId,
        kind: EntryKind,
        at_ms: i64,
        user: &'a str,
        groups: &'a [&'a str],
        amount: i64,
        impressions: i64,
        currency: &'a str,
    }

    fn record(conn: &Connection, spend: Spend<'_>) {
        let entry = LedgerEntry {
            job: spend.job,
            kind: spend.kind,
            at_ms: spend.at_ms,
            queue: "office".into(),
            printer: None,
            user: spend.user.into(),
            groups: spend.groups.iter().map(|group| (*group).into()).collect(),
            account: None,
            impressions: spend.impressions,
            sheets: spend.impressions,
            color: false,
            amount: spend.amount,
            currency: spend.currency.into(),
            flagged: false,
        };
        assert!(insert(conn, &entry).expect("insert"), "recorded once");
    }

    fn estimate<'a>(
        job: JobId,
        at_ms: i64,
        user: &'a str,
        groups: &'a [&'a str],
        amount: i64,
    ) -> Spend<'a> {
        Spend {
            job,
            kind: EntryKind::Estimate,
            at_ms,
            user,
            groups,
            amount,
            impressions: 1,
            currency: "EUR",
        }
    }

    #[test]
    fn recording_an_entry_builds_no_temporary_table() {
        let conn = ledger();
        for statement in [INSERT_ENTRY, ADD_TO_RUNNING_TOTAL] {
            let mut explain = conn
                .prepare(&format!("EXPLAIN {statement}"))
                .expect("explain");
            let unbound = std::iter::repeat_n(rusqlite::types::Null, explain.parameter_count());
            let opcodes = explain
                .query_map(rusqlite::params_from_iter(unbound), |row| {
                    row.get::<_, String>(1)
                })
                .expect("program")
                .collect::<rusqlite::Result<Vec<_>>>()
                .expect("opcodes");
            assert!(
                !opcodes.iter().any(|op| op == "OpenEphemeral"),
                "{statement}: {opcodes:?}"
            );
        }
    }

    #[test]
    fn entries_recorded_before_the_ledger_was_rebuilt_are_kept() {
        let migrations = &super::super::MIGRATIONS;
        let rebuilt = migrations
            .iter()
            .position(|migration| *migration == NO_TEMPORARY_TABLES_MIGRATION)
            .expect("the rebuild is a migration");
        let mut conn = Connection::open_in_memory().expect("in-memory database");
        for migration in &migrations[..rebuilt] {
            conn.execute_batch(migration).expect("older schema");
        }
        conn.pragma_update(None, "user_version", rebuilt as i64)
            .expect("version");
        let start = now_ms();
        record(&conn, estimate(1, start, "alice", &["staff"], 5));
        super::super::migrate(&mut conn).expect("rebuild");
        let staff = Scope::Group("staff".into());
        let period = (start, start + HOUR_MS);
        let seeded = quota_total(&conn, &staff, "EUR", period.0, period.1).expect("seeded");
        assert_eq!(seeded.0, 5);

        record(&conn, estimate(2, start + 1, "alice", &["staff"], 7));
        let kept = entries(&conn, &LedgerQuery::default()).expect("entries");
        assert_eq!(
            kept.iter()
                .map(|entry| (entry.job, entry.amount))
                .collect::<Vec<_>>(),
            [(1, 5), (2, 7)]
        );
        let sequence: i64 = conn
            .query_row("SELECT MAX(seq) FROM ledger", [], |row| row.get(0))
            .expect("seq");
        assert_eq!(sequence, 2, "numbering goes on");
        let running = quota_total(&conn, &staff, "EUR", period.0, period.1).expect("running");
        assert_eq!(running.0, 12, "the trigger adds to the seeded sum");
    }

    #[test]
    fn running_totals_follow_every_entry_and_agree_with_the_ledger() {
        let conn = ledger();
        let (start, end) = (now_ms() + HOUR_MS, now_ms() + 3 * HOUR_MS);
        let alice = Scope::User("alice".into());
        let staff = Scope::Group("staff".into());
        let total = |scope: &Scope| quota_total(&conn, scope, "EUR", start, end).expect("sum");

        // Before the first lookup: the row is seeded from the ledger.
        record(&conn, estimate(1, start + 1, "alice", &["staff"], 10));
        record(&conn, estimate(2, start + 2, "bob", &["staff"], 7));
        assert_eq!(total(&alice), (10, 1));
        assert_eq!(total(&staff), (17, 2));

        // After it: the trigger keeps the rows running.
        record(&conn, estimate(3, start + 3, "alice", &["staff"], 6));
        record(
            &conn,
            Spend {
                kind: EntryKind::Settlement,
                amount: -3,
                impressions: 0,
                ..estimate(3, start + 4, "alice", &["staff"], 0)
            },
        );
        refund(&conn, 1, None, start + 5).expect("refund");
        record(
            &conn,
            estimate(4, start + 6, "carol", &["print", "staff"], 4),
        );
        // Outside the period, in another currency, or rolled back: not counted.
        record(&conn, estimate(5, end, "alice", &["staff"], 100));
        record(
            &conn,
            Spend {
                currency: "USD",
                ..estimate(6, start + 7, "alice", &["staff"], 50)
            },
        );
        conn.execute_batch("SAVEPOINT request").expect("savepoint");
        record(&conn, estimate(7, start + 8, "alice", &["staff"], 1000));
        conn.execute_batch("ROLLBACK TO request; RELEASE request")
            .expect("rollback");

        let running = (total(&alice), total(&staff));
        assert_eq!(running, ((6 - 3, 1), (6 - 3 + 7 + 4, 3)));
        conn.execute("DELETE FROM quota_totals", [])
            .expect("drop rows");
        assert_eq!(
            (total(&alice), total(&staff)),
            running,
            "reseeded from the ledger"
        );
    }

    #[test]
    fn rows_of_ended_periods_are_dropped_when_a_new_row_is_seeded() {
        let conn = ledger();
        let now = now_ms();
        let alice = Scope::User("alice".into());
        quota_total(&conn, &alice, "EUR", now - 2 * HOUR_MS, now - HOUR_MS).expect("old period");
        quota_total(&conn, &alice, "EUR", now - HOUR_MS, now + HOUR_MS).expect("this period");
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM quota_totals", [], |row| row.get(0))
            .expect("count");
        assert_eq!(rows, 1);
    }
}
