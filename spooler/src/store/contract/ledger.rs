//! The ledger's part of the contract: admission with quotas in the job's transaction,
//! settlement and refunds exactly once, reports' raw material.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use printfleet_crds::policy::QuotaAction;

use super::{Backend, claimer, create, new_job, now_ms, queues, state_of};
use crate::accounting::ledger::{self, Admission, EntryKind, LedgerEntry, LedgerQuery};
use crate::accounting::pricing::Money;
use crate::accounting::quota::{ApplicableQuota, Period, Scope};
use crate::accounting::usage::Usage;
use crate::job::{JobId, JobState, NewJob};
use crate::store::{JobStore, Outcome, REASON_ACCOUNT_LIMIT, StoreError, UserAction};

/// The period around now, so entries written now fall in it.
fn this_period() -> Period {
    let now = Timestamp::now();
    Period {
        start: now - SignedDuration::from_hours(1),
        end: now + SignedDuration::from_hours(1),
    }
}

fn quota(scope: Scope, max_amount: i64, action: QuotaAction) -> ApplicableQuota {
    ApplicableQuota {
        rule: 0,
        scope,
        period: this_period(),
        max_amount: Some(max_amount),
        max_impressions: None,
        action,
    }
}

/// An admission of `user` for `impressions` mono impressions at 5 cents each.
fn admission(user: &str, impressions: u64, quotas: Vec<ApplicableQuota>) -> Admission {
    Admission {
        at_ms: now_ms(),
        user: user.to_string(),
        groups: vec!["staff".to_string()],
        account: Some("client-7".to_string()),
        usage: Usage {
            impressions,
            sheets: impressions,
            color: false,
            two_sided: false,
        },
        price: Money {
            minor: 5 * impressions as i64,
            currency: "EUR".to_string(),
        },
        quotas,
    }
}

fn admitted(queue: &str, user: &str, admission: Admission) -> NewJob {
    NewJob {
        admission: Some(admission),
        ..new_job(queue, user)
    }
}

async fn entries_of(store: &dyn JobStore, id: JobId) -> Vec<LedgerEntry> {
    store
        .ledger(&LedgerQuery {
            job: Some(id),
            ..LedgerQuery::default()
        })
        .await
        .expect("ledger")
}

fn kinds(entries: &[LedgerEntry]) -> Vec<EntryKind> {
    entries.iter().map(|entry| entry.kind).collect()
}

fn total(entries: &[LedgerEntry]) -> i64 {
    entries.iter().map(|entry| entry.amount).sum()
}

/// Claims job `id` (the only pending one of `queue`) and completes it with `impressions`.
async fn complete(store: &dyn JobStore, queue: &str, id: JobId, impressions: Option<i64>) {
    let me = claimer("ledger", 1);
    let claimed = store
        .claim_next(&queues(&[queue]), "printer-1", &me)
        .await
        .expect("claim")
        .map(|claim| claim.job)
        .expect("a job to claim");
    assert_eq!(claimed.id, id);
    store
        .finish(
            id,
            &me,
            Outcome::Completed {
                printer: "printer-1".into(),
                impressions,
                sheets: impressions,
                settlement: None,
            },
        )
        .await
        .expect("finish");
}

pub(crate) async fn ledger_estimate_and_settlement(backend: &dyn Backend) {
    let store = backend.open().await;
    let id = create(
        store.as_ref(),
        admitted("office", "alice", admission("alice", 4, Vec::new())),
    )
    .await;
    let entries = entries_of(store.as_ref(), id).await;
    assert_eq!(kinds(&entries), vec![EntryKind::Estimate]);
    let estimate = &entries[0];
    assert_eq!(
        (
            estimate.impressions,
            estimate.amount,
            estimate.currency.as_str()
        ),
        (4, 20, "EUR")
    );
    assert_eq!(estimate.account.as_deref(), Some("client-7"));
    assert_eq!(estimate.groups, vec!["staff".to_string()]);
    assert_eq!(estimate.printer, None);
    assert!(!estimate.flagged);

    complete(store.as_ref(), "office", id, Some(6)).await;
    assert_eq!(
        store.unsettled_jobs(10).await.expect("unsettled"),
        vec![id],
        "a completed job without settlement is unsettled"
    );
    let job = store.job(id).await.expect("job").expect("exists");
    let settlement = LedgerEntry {
        kind: EntryKind::Settlement,
        printer: job.printer.clone(),
        impressions: 2,
        sheets: 2,
        amount: 10,
        ..estimate.clone()
    };
    assert!(
        store
            .record_settlement(settlement.clone())
            .await
            .expect("settle")
    );
    // A retry, or a second dispatcher, settles nothing more.
    assert!(
        !store
            .record_settlement(settlement)
            .await
            .expect("settle again")
    );
    assert!(
        store
            .unsettled_jobs(10)
            .await
            .expect("unsettled")
            .is_empty()
    );
    let entries = entries_of(store.as_ref(), id).await;
    assert_eq!(
        kinds(&entries),
        vec![EntryKind::Estimate, EntryKind::Settlement]
    );
    assert_eq!(total(&entries), 30);
    // The estimate is reported with the printer its job settled on.
    assert!(
        entries
            .iter()
            .all(|e| e.printer.as_deref() == Some("printer-1"))
    );
    // A refund can no longer be recorded: canceling a completed job is not possible.
    assert!(matches!(
        store.apply(id, UserAction::Cancel).await,
        Err(StoreError::NotPossible { .. })
    ));
    // Only settlements go through record_settlement.
    let refund = ledger::refund(&entries[0], None, now_ms());
    assert!(store.record_settlement(refund).await.is_err());

    // The ledger survives a reopen and the job's purge.
    drop(store);
    let store = backend.open().await;
    store
        .purge_history("office", i64::MAX, 0)
        .await
        .expect("purge");
    assert!(store.job(id).await.expect("job").is_none());
    assert_eq!(total(&entries_of(store.as_ref(), id).await), 30);
}

/// Dispatch settles in its two trips to the store: the claim brings the job's estimate, and
/// the completion records the settlement with it, never for a job canceled meanwhile.
pub(crate) async fn settlement_with_the_completion(backend: &dyn Backend) {
    let store = backend.open().await;
    let me = claimer("ledger", 1);
    // Claims the only pending job of "office", admitted for `user`: its id and estimate.
    let admit_and_claim = |user: &'static str| {
        let (store, me) = (store.clone(), me.clone());
        async move {
            let id = create(
                store.as_ref(),
                admitted("office", user, admission(user, 4, Vec::new())),
            )
            .await;
            let claimed = store
                .claim_next(&queues(&["office"]), "printer-1", &me)
                .await
                .expect("claim")
                .expect("a job to claim");
            assert_eq!(claimed.job.id, id);
            (id, claimed.estimate.expect("the claim brings the estimate"))
        }
    };
    // Completes job `id` with `settlement`: the job's state and its ledger entries after.
    let complete = |id: JobId, settlement: LedgerEntry| {
        let (store, me) = (store.clone(), me.clone());
        async move {
            let outcome = Outcome::Completed {
                printer: "printer-1".into(),
                impressions: Some(6),
                sheets: Some(6),
                settlement: Some(settlement),
            };
            let state = store.finish(id, &me, outcome).await.map(|job| job.state);
            (state, entries_of(store.as_ref(), id).await)
        }
    };
    let settlement_of = |estimate: &LedgerEntry| LedgerEntry {
        kind: EntryKind::Settlement,
        printer: Some("printer-1".into()),
        impressions: 2,
        sheets: 2,
        amount: 10,
        ..estimate.clone()
    };

    let (id, estimate) = admit_and_claim("alice").await;
    assert_eq!(entries_of(store.as_ref(), id).await, vec![estimate.clone()]);
    // Another job's settlement is refused, and the job stays as it was.
    let elsewhere = LedgerEntry {
        job: id + 1000,
        ..settlement_of(&estimate)
    };
    let (refused, entries) = complete(id, elsewhere).await;
    assert!(
        matches!(refused, Err(StoreError::Internal(_))),
        "{refused:?}"
    );
    assert_eq!(kinds(&entries), vec![EntryKind::Estimate]);
    assert_eq!(state_of(store.as_ref(), id).await, JobState::Processing);

    let (state, entries) = complete(id, settlement_of(&estimate)).await;
    assert_eq!(state.expect("finish"), JobState::Completed);
    assert_eq!(
        kinds(&entries),
        vec![EntryKind::Estimate, EntryKind::Settlement]
    );
    assert_eq!(total(&entries), 30);
    assert!(
        store
            .unsettled_jobs(10)
            .await
            .expect("unsettled")
            .is_empty(),
        "settled with its completion"
    );

    // Canceled while it printed: refunded, and the late completion settles nothing.
    let (canceled, estimate) = admit_and_claim("bob").await;
    store
        .apply(canceled, UserAction::Cancel)
        .await
        .expect("cancel");
    let (state, entries) = complete(canceled, settlement_of(&estimate)).await;
    assert_eq!(state.expect("finish"), JobState::Canceled);
    assert_eq!(
        kinds(&entries),
        vec![EntryKind::Estimate, EntryKind::Refund]
    );
    assert_eq!(total(&entries), 0);
}

pub(crate) async fn ledger_refunds(backend: &dyn Backend) {
    let store = backend.open().await;
    // Canceled while pending.
    let canceled = create(
        store.as_ref(),
        admitted("office", "alice", admission("alice", 3, Vec::new())),
    )
    .await;
    store
        .apply(canceled, UserAction::Cancel)
        .await
        .expect("cancel");
    let entries = entries_of(store.as_ref(), canceled).await;
    assert_eq!(
        kinds(&entries),
        vec![EntryKind::Estimate, EntryKind::Refund]
    );
    assert_eq!(total(&entries), 0);
    assert_eq!(entries.iter().map(|e| e.impressions).sum::<i64>(), 0);

    // Aborted by the printer.
    let aborted = create(
        store.as_ref(),
        admitted("lab", "bob", admission("bob", 2, Vec::new())),
    )
    .await;
    let me = claimer("ledger", 1);
    store
        .claim_next(&queues(&["lab"]), "printer-2", &me)
        .await
        .expect("claim")
        .map(|claim| claim.job)
        .expect("claimed");
    store
        .finish(
            aborted,
            &me,
            Outcome::Aborted {
                printer: "printer-2".into(),
                message: "unprintable".into(),
            },
        )
        .await
        .expect("finish");
    let entries = entries_of(store.as_ref(), aborted).await;
    assert_eq!(
        kinds(&entries),
        vec![EntryKind::Estimate, EntryKind::Refund]
    );
    assert_eq!(entries[1].printer.as_deref(), Some("printer-2"));
    assert_eq!(total(&entries), 0);
    // A refunded job is closed: no settlement on top.
    let settlement = LedgerEntry {
        kind: EntryKind::Settlement,
        ..entries[0].clone()
    };
    assert!(!store.record_settlement(settlement).await.expect("settle"));
    assert!(
        store
            .unsettled_jobs(10)
            .await
            .expect("unsettled")
            .is_empty()
    );

    // A job without admission has no ledger entries, whatever happens to it.
    let plain = create(store.as_ref(), new_job("office", "carol")).await;
    store
        .apply(plain, UserAction::Cancel)
        .await
        .expect("cancel");
    assert!(entries_of(store.as_ref(), plain).await.is_empty());

    // Time ranges select entries by their own time.
    let all = store.ledger(&LedgerQuery::default()).await.expect("all");
    assert_eq!(all.len(), 4);
    let future = store
        .ledger(&LedgerQuery {
            from_ms: Some(now_ms() + 60_000),
            ..LedgerQuery::default()
        })
        .await
        .expect("future");
    assert!(future.is_empty());
}

pub(crate) async fn quota_actions(backend: &dyn Backend) {
    let store = backend.open().await;
    let user = || Scope::User("alice".into());
    // 20 cents charged already.
    create(
        store.as_ref(),
        admitted("office", "alice", admission("alice", 4, Vec::new())),
    )
    .await;
    // 20 + 20 > 30: rejected, and nothing stored.
    let over = admission("alice", 4, vec![quota(user(), 30, QuotaAction::Reject)]);
    match store.create_job(admitted("office", "alice", over)).await {
        Err(StoreError::QuotaExceeded(tripped)) => assert_eq!(tripped.scope, user()),
        other => panic!("over a reject quota: {other:?}"),
    }
    assert_eq!(
        store
            .ledger(&LedgerQuery::default())
            .await
            .expect("ledger")
            .len(),
        1
    );
    // Exactly up to the limit is allowed.
    let fits = admission("alice", 2, vec![quota(user(), 30, QuotaAction::Reject)]);
    create(store.as_ref(), admitted("office", "alice", fits)).await;

    // Hold: created pending-held with account-limit-reached, charged.
    let held = admission("alice", 1, vec![quota(user(), 30, QuotaAction::Hold)]);
    let held = create(store.as_ref(), admitted("office", "alice", held)).await;
    let job = store.job(held).await.expect("job").expect("exists");
    assert_eq!(job.state, JobState::PendingHeld);
    assert!(
        job.reasons.iter().any(|r| r == REASON_ACCOUNT_LIMIT),
        "{:?}",
        job.reasons
    );
    assert_eq!(total(&entries_of(store.as_ref(), held).await), 5);
    // Release (the operator's decision) clears the reason.
    let released = store
        .apply(held, UserAction::Release)
        .await
        .expect("release");
    assert_eq!(released.state, JobState::Pending);
    assert!(!released.reasons.iter().any(|r| r == REASON_ACCOUNT_LIMIT));

    // Allow and flag: printed, flagged.
    let flagged = admission(
        "alice",
        1,
        vec![quota(user(), 30, QuotaAction::AllowAndFlag)],
    );
    let flagged = create(store.as_ref(), admitted("office", "alice", flagged)).await;
    assert_eq!(state_of(store.as_ref(), flagged).await, JobState::Pending);
    assert!(entries_of(store.as_ref(), flagged).await[0].flagged);

    // Another user's spending does not count against alice; a group's does.
    let bob = admission(
        "bob",
        1,
        vec![quota(Scope::User("bob".into()), 5, QuotaAction::Reject)],
    );
    create(store.as_ref(), admitted("office", "bob", bob)).await;
    let group = admission(
        "bob",
        1,
        vec![quota(Scope::Group("staff".into()), 45, QuotaAction::Reject)],
    );
    assert!(matches!(
        store.create_job(admitted("office", "bob", group)).await,
        Err(StoreError::QuotaExceeded(_))
    ));
    // Entries in another currency do not count against a EUR quota.
    let mut dollars = admission("alice", 1, vec![quota(user(), 30, QuotaAction::Reject)]);
    dollars.price.currency = "USD".into();
    create(store.as_ref(), admitted("office", "alice", dollars)).await;
    // A refund gives the money back to the period.
    let spent_before_refund = admission("alice", 1, vec![quota(user(), 40, QuotaAction::Reject)]);
    assert!(
        store
            .create_job(admitted("office", "alice", spent_before_refund.clone()))
            .await
            .is_err()
    );
    store
        .apply(flagged, UserAction::Cancel)
        .await
        .expect("cancel");
    store.apply(held, UserAction::Cancel).await.expect("cancel");
    create(
        store.as_ref(),
        admitted("office", "alice", spent_before_refund),
    )
    .await;
}

pub(crate) async fn last_document_admission(backend: &dyn Backend) {
    let store = backend.open().await;
    let mut incoming = new_job("office", "alice");
    incoming.documents_complete = false;
    let open = create(store.as_ref(), incoming.clone()).await;
    assert!(entries_of(store.as_ref(), open).await.is_empty());
    let job = store
        .add_last_document(open, None, admission("alice", 3, Vec::new()))
        .await
        .expect("last document");
    assert!(job.documents_complete);
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(total(&entries_of(store.as_ref(), open).await), 15);
    // The job is complete: a second last document is not possible, nor charged.
    assert!(
        store
            .add_last_document(open, None, admission("alice", 3, Vec::new()))
            .await
            .is_err()
    );
    assert_eq!(entries_of(store.as_ref(), open).await.len(), 1);

    // Over a hold quota: held; over a reject quota: refused, the job unchanged.
    let user = || Scope::User("alice".into());
    let held = create(store.as_ref(), incoming.clone()).await;
    let job = store
        .add_last_document(
            held,
            None,
            admission("alice", 3, vec![quota(user(), 20, QuotaAction::Hold)]),
        )
        .await
        .expect("held");
    assert_eq!(job.state, JobState::PendingHeld);
    assert!(job.reasons.iter().any(|r| r == REASON_ACCOUNT_LIMIT));
    let refused = create(store.as_ref(), incoming).await;
    assert!(matches!(
        store
            .add_last_document(
                refused,
                None,
                admission("alice", 3, vec![quota(user(), 20, QuotaAction::Reject)])
            )
            .await,
        Err(StoreError::QuotaExceeded(_))
    ));
    let job = store.job(refused).await.expect("job").expect("exists");
    assert!(!job.documents_complete);
    assert!(entries_of(store.as_ref(), refused).await.is_empty());
}

/// 60 simultaneous submissions of 10 cents against a 2.00 quota: exactly 20 get in, and
/// the ledger never holds more than the quota.
pub(crate) async fn concurrent_quota(backend: &dyn Backend) {
    const SUBMISSIONS: usize = 60;
    const LIMIT: i64 = 200;
    let store: Arc<dyn JobStore> = backend.open().await;
    let period = this_period();
    let submissions = (0..SUBMISSIONS).map(|_| {
        let store = store.clone();
        let mut quota = quota(Scope::User("alice".into()), LIMIT, QuotaAction::Reject);
        quota.period = period;
        tokio::spawn(async move {
            store
                .create_job(admitted(
                    "office",
                    "alice",
                    admission("alice", 2, vec![quota]),
                ))
                .await
        })
    });
    let mut accepted = 0;
    let mut rejected = 0;
    for result in futures_util::future::join_all(submissions).await {
        match result.expect("task") {
            Ok(_) => accepted += 1,
            Err(StoreError::QuotaExceeded(_)) => rejected += 1,
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!((accepted, rejected), (20, 40));
    let charged = total(&store.ledger(&LedgerQuery::default()).await.expect("ledger"));
    assert_eq!(charged, LIMIT);
}
