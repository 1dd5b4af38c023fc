//! The ledger in PostgreSQL: one append-only table shared by every pod.
//!
//! `(job_id, kind)` is unique, and so is `job_id` among closing entries (settlement or
//! refund): `ON CONFLICT DO NOTHING` makes every recording idempotent, whichever pod
//! records it. Quota checks are exact across pods: an admission takes a transaction-scoped
//! advisory lock per quota scope (user or group) before it sums the ledger, so admissions
//! sharing a scope run one after another, and each one's sums (a fresh snapshot per
//! statement) include the estimates committed before it.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::accounting::ledger::{Admission, EntryKind, LedgerEntry, LedgerQuery};
use crate::accounting::quota::{self, Charge, QuotaDecision, Scope, Spent, Totals};
use crate::job::{JobId, JobState};
use crate::store::{StoreError, filter};

/// The schema migration that adds the ledger.
pub(super) const MIGRATION: &str = "
    CREATE TABLE ledger (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('estimate', 'settlement', 'refund')),
        at_ms BIGINT NOT NULL,
        queue TEXT NOT NULL,
        printer TEXT,
        user_name TEXT NOT NULL,
        user_groups TEXT[] NOT NULL,
        account TEXT,
        impressions BIGINT NOT NULL,
        sheets BIGINT NOT NULL,
        color BOOLEAN NOT NULL,
        amount BIGINT NOT NULL,
        currency TEXT NOT NULL,
        flagged BOOLEAN NOT NULL
    );
    CREATE UNIQUE INDEX ledger_once_per_kind ON ledger (job_id, kind);
    CREATE UNIQUE INDEX ledger_closed_once ON ledger (job_id) WHERE kind <> 'estimate';
    -- Covers a user's quota sum without touching the table.
    CREATE INDEX ledger_by_user ON ledger (user_name, currency, at_ms) INCLUDE (amount, impressions);
    CREATE INDEX ledger_by_group ON ledger USING GIN (user_groups);
    CREATE INDEX ledger_by_time ON ledger (at_ms);
";

/// A ledger row's columns, in the order `entry_from_row` reads them and `EntryParams`
/// binds them.
macro_rules! ledger_columns {
    () => {
        "job_id, kind, at_ms, queue, printer, user_name, user_groups, account, impressions, \
         sheets, color, amount, currency, flagged"
    };
}
pub(super) use ledger_columns;

/// Columns in the order `entry_from_row` reads them; `printer` of an estimate is the
/// printer of its job's settlement when there is one.
macro_rules! select_entries {
    ($rest:literal) => {
        concat!(
            "SELECT l.job_id, l.kind, l.at_ms, l.queue, \
             COALESCE(l.printer, (SELECT s.printer FROM ledger s \
                                  WHERE s.job_id = l.job_id AND s.kind = 'settlement')), \
             l.user_name, l.user_groups, l.account, l.impressions, l.sheets, l.color, \
             l.amount, l.currency, l.flagged FROM ledger l ",
            $rest
        )
    };
}

/// The advisory lock of a quota scope: a stable 64-bit FNV-1a hash of its name (a
/// collision only makes two scopes' admissions wait for each other).
fn scope_lock(scope: &Scope) -> i64 {
    let name = match scope {
        Scope::User(user) => format!("printfleet-quota-user:{user}"),
        Scope::Group(group) => format!("printfleet-quota-group:{group}"),
    };
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// The locks an admission takes, each once, in one global order (so two admissions never
/// wait for each other crosswise).
fn admission_locks(admission: &Admission) -> Vec<i64> {
    let mut locks: Vec<i64> = admission
        .quotas
        .iter()
        .map(|quota| scope_lock(&quota.scope))
        .collect();
    locks.sort_unstable();
    locks.dedup();
    locks
}

/// Sums the ledger for each quota and decides, in the caller's transaction (which holds
/// the scopes' locks until it ends). `Reject` is an error: the caller's transaction rolls
/// back.
pub(super) async fn decide(
    tx: &impl GenericClient,
    admission: &Admission,
) -> Result<QuotaDecision, StoreError> {
    if admission.quotas.is_empty() {
        return Ok(QuotaDecision::Accept);
    }
    for lock in admission_locks(admission) {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
            .await?;
    }
    let mut spent = Spent::default();
    let currency = &admission.price.currency;
    for quota in &admission.quotas {
        let (start, end) = (
            quota.period.start.as_millisecond(),
            quota.period.end.as_millisecond(),
        );
        let row = match &quota.scope {
            Scope::User(user) => {
                tx.query_one(
                    "SELECT COALESCE(SUM(amount), 0)::BIGINT, \
                            COALESCE(SUM(impressions), 0)::BIGINT FROM ledger \
                     WHERE user_name = $1 AND currency = $2 AND at_ms >= $3 AND at_ms < $4",
                    &[user, currency, &start, &end],
                )
                .await?
            }
            Scope::Group(group) => {
                tx.query_one(
                    "SELECT COALESCE(SUM(amount), 0)::BIGINT, \
                            COALESCE(SUM(impressions), 0)::BIGINT FROM ledger \
                     WHERE user_groups @> ARRAY[$1::TEXT] AND currency = $2 \
                       AND at_ms >= $3 AND at_ms < $4",
                    &[group, currency, &start, &end],
                )
                .await?
            }
        };
        let impressions: i64 = row.try_get(1)?;
        spent.set(
            quota.scope.clone(),
            quota.period,
            Totals {
                amount: row.try_get(0)?,
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

/// Records the estimate of an admitted job; `NotPossible` when it already has one.
pub(super) async fn record_estimate(
    tx: &impl GenericClient,
    id: JobId,
    state: JobState,
    queue: &str,
    admission: &Admission,
    decision: &QuotaDecision,
) -> Result<(), StoreError> {
    let flagged = matches!(decision, QuotaDecision::AllowAndFlag(_));
    if !insert(tx, &admission.estimate(id, queue, flagged)).await? {
        return Err(StoreError::NotPossible {
            id,
            state,
            action: "admission (the job already has an estimate)",
        });
    }
    Ok(())
}

/// Inserts `entry` unless the job already has one of its kind (or, for a closing entry,
/// any closing entry); returns whether it was inserted.
pub(super) async fn insert(
    client: &impl GenericClient,
    entry: &LedgerEntry,
) -> Result<bool, StoreError> {
    // Prepared once per connection: every submission records an estimate.
    let statement = client
        .prepare_cached(concat!(
            "INSERT INTO ledger (",
            ledger_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT DO NOTHING"
        ))
        .await?;
    let inserted = client
        .execute(&statement, &EntryParams::of(Some(entry)).params())
        .await?;
    Ok(inserted == 1)
}

/// A ledger entry as statement parameters, in `ledger_columns!` order: all NULL for none.
#[derive(Default)]
pub(super) struct EntryParams<'a> {
    job: Option<JobId>,
    kind: Option<&'static str>,
    at_ms: Option<i64>,
    queue: Option<&'a str>,
    printer: Option<&'a str>,
    user: Option<&'a str>,
    groups: Option<&'a [String]>,
    account: Option<&'a str>,
    impressions: Option<i64>,
    sheets: Option<i64>,
    color: Option<bool>,
    amount: Option<i64>,
    currency: Option<&'a str>,
    flagged: Option<bool>,
}

impl<'a> EntryParams<'a> {
    pub(super) fn of(entry: Option<&'a LedgerEntry>) -> EntryParams<'a> {
        let Some(entry) = entry else {
            return EntryParams::default();
        };
        EntryParams {
            job: Some(entry.job),
            kind: Some(entry.kind.keyword()),
            at_ms: Some(entry.at_ms),
            queue: Some(&entry.queue),
            printer: entry.printer.as_deref(),
            user: Some(&entry.user),
            groups: Some(&entry.groups),
            account: entry.account.as_deref(),
            impressions: Some(entry.impressions),
            sheets: Some(entry.sheets),
            color: Some(entry.color),
            amount: Some(entry.amount),
            currency: Some(&entry.currency),
            flagged: Some(entry.flagged),
        }
    }

    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 14] {
        [
            &self.job,
            &self.kind,
            &self.at_ms,
            &self.queue,
            &self.printer,
            &self.user,
            &self.groups,
            &self.account,
            &self.impressions,
            &self.sheets,
            &self.color,
            &self.amount,
            &self.currency,
            &self.flagged,
        ]
    }
}

/// Records the refund of job `id` (its estimate negated) unless it has no estimate or
/// already has a closing entry.
pub(super) async fn refund(
    tx: &impl GenericClient,
    id: JobId,
    printer: Option<&str>,
    at_ms: i64,
) -> Result<(), StoreError> {
    tx.execute(
        concat!(
            "INSERT INTO ledger (",
            ledger_columns!(),
            ") SELECT job_id, 'refund', $2, queue, $3, user_name, user_groups, account, \
                -impressions, -sheets, color, -amount, currency, flagged \
             FROM ledger WHERE job_id = $1 AND kind = 'estimate' \
             ON CONFLICT DO NOTHING"
        ),
        &[&id, &at_ms, &printer],
    )
    .await?;
    Ok(())
}

pub(super) async fn entries(
    client: &impl GenericClient,
    query: &LedgerQuery,
) -> Result<Vec<LedgerEntry>, StoreError> {
    let sql = format!(
        "{}WHERE {} AND {} AND {} ORDER BY l.at_ms, l.job_id, l.seq",
        select_entries!(""),
        filter(query.from_ms.is_some(), "l.at_ms >= $1", "$1::BIGINT"),
        filter(query.to_ms.is_some(), "l.at_ms < $2", "$2::BIGINT"),
        filter(query.job.is_some(), "l.job_id = $3", "$3::INTEGER"),
    );
    // Prepared once per connection and shape: each settlement reads its job's entries.
    let statement = client.prepare_cached(&sql).await?;
    let rows = client
        .query(&statement, &[&query.from_ms, &query.to_ms, &query.job])
        .await?;
    rows.iter().map(|row| entry_from_row(row, 0)).collect()
}

pub(super) async fn unsettled(
    client: &impl GenericClient,
    limit: usize,
) -> Result<Vec<JobId>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT j.id FROM jobs j JOIN ledger e ON e.job_id = j.id AND e.kind = 'estimate' \
             WHERE j.state = $1 AND NOT EXISTS \
                 (SELECT 1 FROM ledger c WHERE c.job_id = j.id AND c.kind <> 'estimate') \
             ORDER BY j.id LIMIT $2",
            &[&JobState::Completed.as_i32(), &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?)
}

/// The entry whose `ledger_columns!` start at column `first` of `row`.
pub(super) fn entry_from_row(row: &Row, first: usize) -> Result<LedgerEntry, StoreError> {
    let kind: &str = row.try_get(first + 1)?;
    Ok(LedgerEntry {
        job: row.try_get(first)?,
        kind: EntryKind::from_keyword(kind).ok_or_else(|| {
            StoreError::Internal(format!("unknown ledger entry kind {kind:?} in the store"))
        })?,
        at_ms: row.try_get(first + 2)?,
        queue: row.try_get(first + 3)?,
        printer: row.try_get(first + 4)?,
        user: row.try_get(first + 5)?,
        groups: row.try_get(first + 6)?,
        account: row.try_get(first + 7)?,
        impressions: row.try_get(first + 8)?,
        sheets: row.try_get(first + 9)?,
        color: row.try_get(first + 10)?,
        amount: row.try_get(first + 11)?,
        currency: row.try_get(first + 12)?,
        flagged: row.try_get(first + 13)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::pricing::Money;
    use crate::accounting::quota::{ApplicableQuota, Period};
    use crate::accounting::usage::Usage;
    use printfleet_crds::policy::QuotaAction;

    fn admission(scopes: &[Scope]) -> Admission {
        let period = Period {
            start: jiff::Timestamp::UNIX_EPOCH,
            end: jiff::Timestamp::MAX,
        };
        Admission {
            at_ms: 0,
            user: "alice".into(),
            groups: vec!["staff".into()],
            account: None,
            usage: Usage {
                impressions: 1,
                sheets: 1,
                color: false,
                two_sided: false,
            },
            price: Money {
                minor: 5,
                currency: "EUR".into(),
            },
            quotas: scopes
                .iter()
                .enumerate()
                .map(|(rule, scope)| ApplicableQuota {
                    rule,
                    scope: scope.clone(),
                    period,
                    max_amount: Some(100),
                    max_impressions: None,
                    action: QuotaAction::Reject,
                })
                .collect(),
        }
    }

    #[test]
    fn scopes_lock_distinctly_and_stably() {
        let alice = scope_lock(&Scope::User("alice".into()));
        assert_eq!(alice, scope_lock(&Scope::User("alice".into())));
        assert_ne!(alice, scope_lock(&Scope::Group("alice".into())));
        assert_ne!(alice, scope_lock(&Scope::User("bob".into())));
    }

    #[test]
    fn admission_locks_are_sorted_and_unique() {
        let scopes = [
            Scope::Group("staff".into()),
            Scope::User("alice".into()),
            Scope::Group("staff".into()),
        ];
        let locks = admission_locks(&admission(&scopes));
        assert_eq!(locks.len(), 2);
        assert!(locks[0] < locks[1]);
        let reversed: Vec<Scope> = scopes.iter().rev().cloned().collect();
        assert_eq!(admission_locks(&admission(&reversed)), locks);
        assert!(admission_locks(&admission(&[])).is_empty());
    }
}
