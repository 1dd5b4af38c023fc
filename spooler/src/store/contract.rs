//! The behaviour every `JobStore` backend must show, as one suite that each backend runs:
//! `job_store_contract!(expression giving a Backend)` expands to one test per check.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use super::{JobQuery, JobStore, Outcome, QueueDepth, StoreError, UserAction, WhichJobs};
use crate::job::{Claimer, DocumentBody, Job, JobId, JobState, JobTicket, NewDocument, NewJob};

/// Opens a backend's store. Every `open` of one backend reaches the same data, so a check
/// can drop a store and open it again.
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    async fn open(&self) -> Arc<dyn JobStore>;
}

/// One `#[tokio::test]` per contract check, each on a fresh backend from `$backend`.
macro_rules! job_store_contract {
    ($backend:expr) => {
        $crate::store::contract::job_store_contract!(@checks $backend;
            create_and_get,
            initial_states,
            add_document,
            list_jobs,
            user_actions,
            claim_order,
            claim_brings_documents,
            concurrent_claims,
            fencing,
            finish_outcomes,
            recorded_outcomes,
            retry_time,
            recover,
            shard_leadership,
            installation_salt,
            queue_hand_off,
            paused_queues,
            purge_history,
            next_epoch,
            queue_depths,
            durable_across_reopen,
            concurrent_creates,
            ledger_estimate_and_settlement,
            ledger_refunds,
            settlement_with_the_completion,
            quota_actions,
            last_document_admission,
            concurrent_quota,
        );
    };
    (@checks $backend:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let backend = $backend;
                $crate::store::contract::$check(&backend).await;
            }
        )*
    };
}
pub(crate) use job_store_contract;

mod ledger;
pub(crate) use ledger::{
    concurrent_quota, last_document_admission, ledger_estimate_and_settlement, ledger_refunds,
    quota_actions, settlement_with_the_completion,
};

fn new_job(queue: &str, owner: &str) -> NewJob {
    NewJob {
        queue: queue.to_string(),
        owner: owner.to_string(),
        name: format!("{owner}'s job"),
        originating_host: Some("127.0.0.1".to_string()),
        priority: 50,
        held: false,
        ticket: JobTicket::default(),
        document: Some(inline_document(b"%PDF-1.7\n")),
        documents_complete: true,
        admission: None,
    }
}

fn inline_document(bytes: &'static [u8]) -> NewDocument {
    NewDocument {
        format: "application/pdf".to_string(),
        name: Some("report.pdf".to_string()),
        size: bytes.len() as u64,
        body: DocumentBody::Inline(Bytes::from_static(bytes)),
    }
}

fn stored_document(key: &str) -> NewDocument {
    NewDocument {
        format: "application/postscript".to_string(),
        name: None,
        size: 1 << 20,
        body: DocumentBody::Stored {
            key: key.to_string(),
        },
    }
}

pub(crate) fn claimer(id: &str, epoch: i64) -> Claimer {
    Claimer {
        id: id.to_string(),
        epoch,
        shard: None,
    }
}

/// A completion on printer `p1` that reported no counts.
fn completed_on_p1() -> Outcome {
    Outcome::Completed {
        printer: "p1".to_string(),
        impressions: None,
        sheets: None,
        settlement: None,
    }
}

fn queues(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("milliseconds fit i64")
}

/// Creates `job`, checking that the job the store answers with (built from the submission,
/// not read back) is the one it then reads.
async fn created(store: &dyn JobStore, job: NewJob) -> crate::job::Job {
    let created = store.create_job(job).await.expect("create_job");
    let stored = store
        .job(created.id)
        .await
        .expect("job")
        .expect("job exists");
    assert_eq!(created, stored, "the created job as answered and as stored");
    created
}

async fn create(store: &dyn JobStore, job: NewJob) -> JobId {
    created(store, job).await.id
}

async fn state_of(store: &dyn JobStore, id: JobId) -> JobState {
    store.job(id).await.expect("job").expect("job exists").state
}

fn reasons(reasons: &[&str]) -> Vec<String> {
    reasons.iter().map(|reason| reason.to_string()).collect()
}

fn ids(jobs: &[crate::job::Job]) -> Vec<JobId> {
    jobs.iter().map(|job| job.id).collect()
}

pub(crate) async fn create_and_get(backend: &dyn Backend) {
    let store = backend.open().await;
    let mut submitted = new_job("office", "alice");
    submitted.priority = 70;
    submitted.ticket = JobTicket {
        copies: Some(2),
        sides: Some("two-sided-long-edge".to_string()),
        page_ranges: vec![(1, 3), (7, 7)],
        job_account_id: Some("project-9".to_string()),
        ..JobTicket::default()
    };
    let created = store.create_job(submitted.clone()).await.expect("create");
    assert!(created.id > 0);
    assert_eq!(created.state, JobState::Pending);
    assert!(created.reasons.is_empty(), "{:?}", created.reasons);
    assert_eq!(created.attempts, 0);
    assert!(created.created_at > 1_600_000_000);
    assert_eq!(created.documents.len(), 1);
    assert_eq!(created.documents[0].number, 1);
    assert_eq!(created.documents[0].format, "application/pdf");
    assert_eq!(created.documents[0].size, 9);
    assert_eq!(created.documents[0].key, None);

    let fetched = store.job(created.id).await.expect("job").expect("exists");
    assert_eq!(fetched, created);
    assert_eq!(fetched.ticket, submitted.ticket);
    assert_eq!(fetched.priority, 70);
    assert_eq!(fetched.originating_host.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        store.inline_document(created.id, 1).await.expect("inline"),
        Some(Bytes::from_static(b"%PDF-1.7\n"))
    );

    let second = create(store.as_ref(), new_job("office", "bob")).await;
    assert!(second > created.id, "ids increase");
    assert_eq!(store.job(second + 1000).await.expect("job"), None);
    assert!(matches!(
        store.inline_document(second + 1000, 1).await,
        Err(StoreError::NotFound(_))
    ));
}

pub(crate) async fn initial_states(backend: &dyn Backend) {
    let store = backend.open().await;
    let mut held = new_job("office", "alice");
    held.held = true;
    let held = created(store.as_ref(), held).await;
    assert_eq!(held.state, JobState::PendingHeld);
    assert_eq!(held.reasons, reasons(&["job-hold-until-specified"]));

    let mut incoming = new_job("office", "alice");
    incoming.document = None;
    incoming.documents_complete = false;
    let incoming = created(store.as_ref(), incoming).await;
    assert_eq!(incoming.state, JobState::Pending);
    assert_eq!(incoming.reasons, reasons(&["job-incoming"]));
    assert!(!incoming.documents_complete);

    let dispatcher = claimer("spooler-0", 1);
    let office = queues(&["office"]);
    assert_eq!(
        store
            .claim_next(&office, "p1", &dispatcher)
            .await
            .expect("claim")
            .map(|claim| claim.job),
        None,
        "neither a held job nor one still receiving documents is claimable"
    );
    let complete = store
        .add_document(incoming.id, Some(inline_document(b"hello")), true)
        .await
        .expect("last document");
    assert!(complete.documents_complete);
    assert!(complete.reasons.is_empty(), "{:?}", complete.reasons);
    let claimed = store
        .claim_next(&office, "p1", &dispatcher)
        .await
        .expect("claim")
        .map(|claim| claim.job)
        .expect("a job");
    assert_eq!(claimed.id, incoming.id);
}

pub(crate) async fn add_document(backend: &dyn Backend) {
    let store = backend.open().await;
    let mut job = new_job("office", "alice");
    job.document = None;
    job.documents_complete = false;
    let id = create(store.as_ref(), job).await;

    let first = store
        .add_document(id, Some(inline_document(b"first")), false)
        .await
        .expect("first document");
    assert_eq!(first.reasons, reasons(&["job-incoming"]));
    let second = store
        .add_document(id, Some(stored_document("doc-2")), true)
        .await
        .expect("second document");
    assert!(second.documents_complete);
    let numbers: Vec<i32> = second.documents.iter().map(|d| d.number).collect();
    assert_eq!(numbers, vec![1, 2]);
    assert_eq!(second.documents[1].key.as_deref(), Some("doc-2"));
    assert_eq!(second.documents[1].size, 1 << 20);
    assert_eq!(
        store.inline_document(id, 1).await.expect("inline"),
        Some(Bytes::from_static(b"first"))
    );
    assert_eq!(store.inline_document(id, 2).await.expect("stored"), None);

    assert!(
        matches!(
            store
                .add_document(id, Some(inline_document(b"late")), true)
                .await,
            Err(StoreError::NotPossible { .. })
        ),
        "no documents after the last one"
    );
    assert!(matches!(
        store.add_document(id + 1000, None, true).await,
        Err(StoreError::NotFound(missing)) if missing == id + 1000
    ));

    let mut open_job = new_job("office", "alice");
    open_job.documents_complete = false;
    let canceled = create(store.as_ref(), open_job).await;
    store
        .apply(canceled, UserAction::Cancel)
        .await
        .expect("cancel");
    match store.add_document(canceled, None, true).await {
        Err(StoreError::NotPossible { id, state, .. }) => {
            assert_eq!((id, state), (canceled, JobState::Canceled));
        }
        other => panic!("add_document on a canceled job: {other:?}"),
    }
    let unchanged = store.job(canceled).await.expect("job").expect("exists");
    assert_eq!(
        unchanged.documents.len(),
        1,
        "a refused request changes nothing"
    );
}

pub(crate) async fn list_jobs(backend: &dyn Backend) {
    let store = backend.open().await;
    let a1 = create(store.as_ref(), new_job("office", "alice")).await;
    let b1 = create(store.as_ref(), new_job("office", "bob")).await;
    let a2 = create(store.as_ref(), new_job("office", "alice")).await;
    let lab = create(store.as_ref(), new_job("lab", "alice")).await;
    let done1 = create(store.as_ref(), new_job("office", "alice")).await;
    let done2 = create(store.as_ref(), new_job("office", "bob")).await;
    store
        .apply(done1, UserAction::Cancel)
        .await
        .expect("cancel");
    store
        .apply(done2, UserAction::Cancel)
        .await
        .expect("cancel");

    let office = |which, owner: Option<&str>, limit| JobQuery {
        queue: Some("office".to_string()),
        which,
        owner: owner.map(str::to_string),
        limit,
    };
    let list = |query: JobQuery| {
        let store = store.clone();
        async move { ids(&store.list_jobs(&query).await.expect("list")) }
    };
    assert_eq!(
        list(office(WhichJobs::NotCompleted, None, None)).await,
        vec![a1, b1, a2]
    );
    assert_eq!(
        list(office(WhichJobs::Completed, None, None)).await,
        vec![done2, done1]
    );
    assert_eq!(
        list(office(WhichJobs::All, None, None)).await,
        vec![a1, b1, a2, done1, done2]
    );
    assert_eq!(
        list(office(WhichJobs::NotCompleted, Some("alice"), None)).await,
        vec![a1, a2]
    );
    assert_eq!(
        list(office(WhichJobs::Completed, Some("alice"), None)).await,
        vec![done1]
    );
    assert_eq!(
        list(office(WhichJobs::NotCompleted, None, Some(2))).await,
        vec![a1, b1]
    );
    assert_eq!(
        list(office(WhichJobs::Completed, None, Some(1))).await,
        vec![done2]
    );
    assert_eq!(
        list(JobQuery {
            owner: Some("alice".to_string()),
            ..JobQuery::default()
        })
        .await,
        vec![a1, a2, lab]
    );
    assert_eq!(
        list(JobQuery {
            queue: Some("nowhere".to_string()),
            which: WhichJobs::All,
            ..JobQuery::default()
        })
        .await,
        Vec::<JobId>::new()
    );
    let listed = store
        .list_jobs(&office(WhichJobs::NotCompleted, None, Some(1)))
        .await
        .expect("list");
    assert_eq!(
        listed[0].documents.len(),
        1,
        "listed jobs carry their documents"
    );
}

/// Claim the next job of `queue` as spooler-0 epoch 1, which must be `id`.
async fn claim_exactly(store: &dyn JobStore, queue: &str, id: JobId) {
    let claimed = store
        .claim_next(&queues(&[queue]), "p1", &claimer("spooler-0", 1))
        .await
        .expect("claim")
        .map(|claim| claim.job)
        .expect("claimable");
    assert_eq!(claimed.id, id);
}

/// A job in `state`, reached through the trait alone (on its own queue, so claims are
/// exact; claimed by spooler-0 epoch 1 when it got that far).
async fn job_in_state(store: &dyn JobStore, state: JobState, queue: &str) -> JobId {
    let mut job = new_job(queue, "alice");
    job.held = state == JobState::PendingHeld;
    let id = create(store, job).await;
    let outcome = match state {
        JobState::Pending | JobState::PendingHeld => None,
        JobState::Processing => {
            claim_exactly(store, queue, id).await;
            None
        }
        JobState::Canceled => {
            store.apply(id, UserAction::Cancel).await.expect("cancel");
            None
        }
        JobState::Aborted => Some(Outcome::Aborted {
            printer: "p1".to_string(),
            message: "unsupported format".to_string(),
        }),
        JobState::Completed => Some(completed_on_p1()),
        JobState::ProcessingStopped => unreachable!("no store operation stops a job"),
    };
    if let Some(outcome) = outcome {
        claim_exactly(store, queue, id).await;
        store
            .finish(id, &claimer("spooler-0", 1), outcome)
            .await
            .expect("finish");
    }
    assert_eq!(state_of(store, id).await, state);
    id
}

pub(crate) async fn user_actions(backend: &dyn Backend) {
    use JobState::*;
    use UserAction::*;
    let store = backend.open().await;
    // (from, action, the state it leads to, or None when refused)
    let table = [
        (Pending, Cancel, Some(Canceled)),
        (PendingHeld, Cancel, Some(Canceled)),
        (Processing, Cancel, Some(Canceled)),
        (Canceled, Cancel, None),
        (Aborted, Cancel, None),
        (Completed, Cancel, None),
        (Pending, Hold, Some(PendingHeld)),
        (PendingHeld, Hold, None),
        (Processing, Hold, None),
        (Canceled, Hold, None),
        (Completed, Hold, None),
        (PendingHeld, Release, Some(Pending)),
        (Pending, Release, None),
        (Processing, Release, None),
        (Aborted, Release, None),
        (Completed, Release, None),
    ];
    for (number, (from, action, expected)) in table.into_iter().enumerate() {
        let queue = format!("actions-{number}");
        let id = job_in_state(store.as_ref(), from, &queue).await;
        let result = store.apply(id, action).await;
        match expected {
            Some(to) => {
                let job = result.unwrap_or_else(|e| panic!("{action:?} from {from:?}: {e}"));
                assert_eq!(job.state, to, "{action:?} from {from:?}");
                let expected_reasons = match to {
                    Canceled => reasons(&["job-canceled-by-user"]),
                    PendingHeld => reasons(&["job-hold-until-specified"]),
                    _ => Vec::new(),
                };
                assert_eq!(job.reasons, expected_reasons, "{action:?} from {from:?}");
                assert_eq!(job.completed_at.is_some(), to.is_terminal());
            }
            None => {
                match result {
                    Err(StoreError::NotPossible {
                        id: refused, state, ..
                    }) => {
                        assert_eq!((refused, state), (id, from), "{action:?} from {from:?}");
                    }
                    other => panic!("{action:?} from {from:?} should be refused: {other:?}"),
                }
                assert_eq!(
                    state_of(store.as_ref(), id).await,
                    from,
                    "refusal changes nothing"
                );
            }
        }
    }
    assert!(matches!(
        store.apply(99_999, Cancel).await,
        Err(StoreError::NotFound(99_999))
    ));
    // A released job is claimable again.
    let id = job_in_state(store.as_ref(), PendingHeld, "release").await;
    store.apply(id, Release).await.expect("release");
    let claimed = store
        .claim_next(&queues(&["release"]), "p1", &claimer("spooler-0", 1))
        .await
        .expect("claim")
        .map(|claim| claim.job);
    assert_eq!(claimed.map(|job| job.id), Some(id));
}

pub(crate) async fn claim_order(backend: &dyn Backend) {
    let store = backend.open().await;
    let with_priority = |queue: &str, priority| {
        let mut job = new_job(queue, "alice");
        job.priority = priority;
        job
    };
    let low = create(store.as_ref(), with_priority("office", 10)).await;
    let normal_1 = create(store.as_ref(), with_priority("office", 50)).await;
    let elsewhere = create(store.as_ref(), with_priority("lab", 100)).await;
    let normal_2 = create(store.as_ref(), with_priority("office", 50)).await;
    let urgent = create(store.as_ref(), with_priority("office", 90)).await;
    let mut held = with_priority("office", 100);
    held.held = true;
    create(store.as_ref(), held).await;

    let dispatcher = claimer("spooler-0", 3);
    // A printer serving several queues takes the highest priority of any of them.
    let both = queues(&["office", "lab"]);
    let first = store
        .claim_next(&both, "p2", &dispatcher)
        .await
        .expect("claim")
        .map(|claim| claim.job);
    assert_eq!(first.map(|job| job.id), Some(elsewhere));
    let office = queues(&["office"]);
    let mut order = Vec::new();
    while let Some(job) = store
        .claim_next(&office, "p1", &dispatcher)
        .await
        .expect("claim")
        .map(|claim| claim.job)
    {
        assert_eq!(job.state, JobState::Processing);
        assert_eq!(job.reasons, reasons(&["job-printing"]));
        assert_eq!(job.printer.as_deref(), Some("p1"));
        assert_eq!(job.attempts, 1);
        assert!(job.processing_at.is_some());
        order.push(job.id);
    }
    assert_eq!(order, vec![urgent, normal_1, normal_2, low]);
    assert_eq!(
        store
            .claim_next(&[], "p1", &dispatcher)
            .await
            .expect("claim")
            .map(|claim| claim.job),
        None
    );
    // At equal priority, the oldest job of any of its queues.
    let older = create(store.as_ref(), with_priority("lab", 50)).await;
    let newer = create(store.as_ref(), with_priority("office", 50)).await;
    let mut across = Vec::new();
    while let Some(job) = store
        .claim_next(&both, "p2", &dispatcher)
        .await
        .expect("claim")
        .map(|claim| claim.job)
    {
        across.push(job.id);
    }
    assert_eq!(across, vec![older, newer]);
}

/// A claim brings the bytes of the job's inline documents (small ones and large ones, which
/// a backend may keep apart from the row), in order, and none for a stored document.
pub(crate) async fn claim_brings_documents(backend: &dyn Backend) {
    let store = backend.open().await;
    let large = Bytes::from(vec![7_u8; 50_000]);
    let id = create(
        store.as_ref(),
        NewJob {
            documents_complete: false,
            ..new_job("office", "alice")
        },
    )
    .await;
    let large_document = NewDocument {
        size: large.len() as u64,
        body: DocumentBody::Inline(large.clone()),
        ..inline_document(b"")
    };
    for (document, last) in [
        (large_document, false),
        (stored_document("documents/2"), true),
    ] {
        store
            .add_document(id, Some(document), last)
            .await
            .expect("add document");
    }
    let claim = store
        .claim_next(&queues(&["office"]), "p1", &claimer("spooler-0", 1))
        .await
        .expect("claim")
        .expect("claimable");
    assert_eq!(claim.job.id, id);
    assert_eq!(claim.job.documents.len(), 3);
    assert_eq!(
        claim.inline,
        vec![Some(Bytes::from_static(b"%PDF-1.7\n")), Some(large), None]
    );
    assert_eq!(claim.estimate, None, "a job admitted without accounting");
}

pub(crate) async fn concurrent_claims(backend: &dyn Backend) {
    const JOBS: usize = 200;
    const DISPATCHERS: usize = 8;
    let store = backend.open().await;
    let creates = (0..JOBS).map(|_| store.create_job(new_job("office", "alice")));
    let created: HashSet<JobId> = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .map(|job| job.expect("create").id)
        .collect();
    let dispatchers = (0..DISPATCHERS).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            let me = claimer(&format!("spooler-{n}"), 1);
            let mut claimed = Vec::new();
            while let Some(job) = store
                .claim_next(&queues(&["office"]), "p1", &me)
                .await
                .expect("claim")
                .map(|claim| claim.job)
            {
                claimed.push(job.id);
            }
            claimed
        })
    });
    let mut claimed = Vec::new();
    for dispatcher in futures_util::future::join_all(dispatchers).await {
        claimed.extend(dispatcher.expect("dispatcher task"));
    }
    assert_eq!(claimed.len(), JOBS, "each job claimed exactly once");
    assert_eq!(claimed.into_iter().collect::<HashSet<_>>(), created);
}

pub(crate) async fn fencing(backend: &dyn Backend) {
    let store = backend.open().await;
    let id = job_in_state(store.as_ref(), JobState::Processing, "fenced").await;
    let done = completed_on_p1;
    // job_in_state claims as spooler-0 epoch 1.
    let rightful = claimer("spooler-0", 1);
    for intruder in [
        claimer("spooler-0", 0),
        claimer("spooler-0", 2),
        claimer("spooler-1", 1),
    ] {
        assert!(
            matches!(store.finish(id, &intruder, done()).await, Err(StoreError::Fenced(f)) if f == id),
            "{intruder:?} must be fenced"
        );
    }
    assert_eq!(state_of(store.as_ref(), id).await, JobState::Processing);
    let finished = store.finish(id, &rightful, done()).await.expect("finish");
    assert_eq!(finished.state, JobState::Completed);
    assert!(
        matches!(
            store.finish(id, &rightful, done()).await,
            Err(StoreError::Fenced(_))
        ),
        "a finished job cannot be finished again"
    );
    let pending = job_in_state(store.as_ref(), JobState::Pending, "fenced-pending").await;
    assert!(matches!(
        store.finish(pending, &rightful, done()).await,
        Err(StoreError::Fenced(_))
    ));
    assert!(matches!(
        store.finish(99_999, &rightful, done()).await,
        Err(StoreError::NotFound(99_999))
    ));

    // Canceled while printing: finishing reports the cancel and changes nothing.
    let printing = job_in_state(store.as_ref(), JobState::Processing, "fenced-cancel").await;
    let canceled = store
        .apply(printing, UserAction::Cancel)
        .await
        .expect("cancel");
    let after = store
        .finish(printing, &rightful, done())
        .await
        .expect("finish");
    assert_eq!(after, canceled);
    assert!(matches!(
        store
            .finish(printing, &claimer("spooler-1", 1), done())
            .await,
        Err(StoreError::Fenced(_))
    ));
}

/// `record_outcome`, with the store's answer: what `finish` returns.
async fn recorded(
    store: &dyn JobStore,
    id: JobId,
    claimer: &Claimer,
    outcome: Outcome,
) -> Result<Job, StoreError> {
    store
        .record_outcome(id, claimer, outcome)
        .await?
        .finished()
        .await
}

/// `record_outcome` records what `finish` would, through the same fence.
pub(crate) async fn recorded_outcomes(backend: &dyn Backend) {
    let store = backend.open().await;
    let rightful = claimer("spooler-0", 1);
    let id = job_in_state(store.as_ref(), JobState::Processing, "recorded").await;
    assert!(matches!(
        recorded(store.as_ref(), id, &claimer("spooler-1", 1), completed_on_p1()).await,
        Err(StoreError::Fenced(f)) if f == id
    ));
    let finished = recorded(store.as_ref(), id, &rightful, completed_on_p1())
        .await
        .expect("record the completion");
    assert_eq!(finished.state, JobState::Completed);
    assert_eq!(finished.printer.as_deref(), Some("p1"));
    assert_eq!(store.job(id).await.expect("read"), Some(finished));
    assert!(
        matches!(
            recorded(store.as_ref(), id, &rightful, completed_on_p1()).await,
            Err(StoreError::Fenced(_))
        ),
        "a completed job cannot be completed again"
    );

    let printing = job_in_state(store.as_ref(), JobState::Processing, "recorded-cancel").await;
    let canceled = store
        .apply(printing, UserAction::Cancel)
        .await
        .expect("cancel");
    let after = recorded(store.as_ref(), printing, &rightful, completed_on_p1())
        .await
        .expect("record");
    assert_eq!(after, canceled, "a job canceled meanwhile stays canceled");
}

pub(crate) async fn finish_outcomes(backend: &dyn Backend) {
    let store = backend.open().await;
    let dispatcher = claimer("spooler-0", 1);
    let completed = job_in_state(store.as_ref(), JobState::Processing, "completed").await;
    let job = store
        .finish(
            completed,
            &dispatcher,
            Outcome::Completed {
                printer: "p2".to_string(),
                impressions: Some(12),
                sheets: Some(6),
                settlement: None,
            },
        )
        .await
        .expect("finish completed");
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.reasons, reasons(&["job-completed-successfully"]));
    assert_eq!(
        (job.impressions_completed, job.sheets_completed),
        (Some(12), Some(6))
    );
    assert_eq!(job.printer.as_deref(), Some("p2"));
    assert!(job.completed_at.is_some());

    let aborted = job_in_state(store.as_ref(), JobState::Processing, "aborted").await;
    let job = store
        .finish(
            aborted,
            &dispatcher,
            Outcome::Aborted {
                printer: "p1".to_string(),
                message: "document-format not supported".to_string(),
            },
        )
        .await
        .expect("finish aborted");
    assert_eq!(job.state, JobState::Aborted);
    assert_eq!(job.reasons, reasons(&["aborted-by-system"]));
    assert_eq!(
        job.message.as_deref(),
        Some("document-format not supported")
    );
    assert!(job.completed_at.is_some());

    let retried = job_in_state(store.as_ref(), JobState::Processing, "retried").await;
    let job = store
        .finish(
            retried,
            &dispatcher,
            Outcome::Retry {
                printer: "p1".to_string(),
                message: "printer unreachable".to_string(),
                retry_at_ms: 0,
            },
        )
        .await
        .expect("finish retry");
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.message.as_deref(), Some("printer unreachable"));
    assert_eq!(job.completed_at, None);
    let again = store
        .claim_next(&queues(&["retried"]), "p3", &claimer("spooler-1", 1))
        .await
        .expect("claim")
        .map(|claim| claim.job)
        .expect("claimable again");
    assert_eq!(again.id, retried);
    assert_eq!(again.attempts, 2);
    assert!(
        matches!(
            store.finish(retried, &dispatcher, completed_on_p1()).await,
            Err(StoreError::Fenced(_))
        ),
        "the claim was cleared by the retry"
    );
}

pub(crate) async fn retry_time(backend: &dyn Backend) {
    let store = backend.open().await;
    let dispatcher = claimer("spooler-0", 1);
    let later = job_in_state(store.as_ref(), JobState::Processing, "retry").await;
    store
        .finish(
            later,
            &dispatcher,
            Outcome::Retry {
                printer: "p1".to_string(),
                message: "busy".to_string(),
                retry_at_ms: now_ms() + 3_600_000,
            },
        )
        .await
        .expect("retry later");
    let soon = job_in_state(store.as_ref(), JobState::Processing, "retry").await;
    store
        .finish(
            soon,
            &dispatcher,
            Outcome::Retry {
                printer: "p1".to_string(),
                message: "busy".to_string(),
                retry_at_ms: now_ms() - 1,
            },
        )
        .await
        .expect("retry now");
    let retry = queues(&["retry"]);
    let claimed = store
        .claim_next(&retry, "p1", &dispatcher)
        .await
        .expect("claim")
        .map(|claim| claim.job);
    assert_eq!(
        claimed.map(|job| job.id),
        Some(soon),
        "the earlier job waits for its time"
    );
    assert_eq!(
        store
            .claim_next(&retry, "p1", &dispatcher)
            .await
            .expect("claim")
            .map(|claim| claim.job),
        None
    );
    assert_eq!(state_of(store.as_ref(), later).await, JobState::Pending);
}

/// `lead_shard`: each takeover is a new epoch that fences the earlier leaders' claims, and
/// returns to pending exactly the jobs the shard's earlier leaders left processing.
pub(crate) async fn shard_leadership(backend: &dyn Backend) {
    let store = backend.open().await;
    let claim = |claimer: Claimer, queue: &'static str| {
        let store = store.clone();
        async move {
            let claim = store.claim_next(&queues(&[queue]), "p1", &claimer).await;
            claim.map(|claim| claim.map(|claim| claim.job))
        }
    };
    let (first, none) = store.lead_shard("east", "pod-a").await.expect("lead");
    assert_eq!(first.shard.as_deref(), Some("east"));
    assert!(none.is_empty());
    let (west, _) = store.lead_shard("west", "pod-w").await.expect("lead west");
    let shards = queues(&["east", "west"]);
    let owned = store
        .own_queues(&first, &queues(&["e1"]), &shards)
        .await
        .expect("own");
    assert_eq!(owned, queues(&["e1"]));
    store
        .own_queues(&west, &queues(&["w1"]), &shards)
        .await
        .expect("own");

    let in_flight = create(store.as_ref(), new_job("e1", "alice")).await;
    let west_job = create(store.as_ref(), new_job("w1", "alice")).await;
    let waiting = create(store.as_ref(), new_job("e1", "alice")).await;
    let claimed = claim(first.clone(), "e1")
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(claimed.id, in_flight);
    let claimed = claim(west.clone(), "w1")
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(claimed.id, west_job);

    let (second, recovered) = store.lead_shard("east", "pod-b").await.expect("take over");
    assert!(second.epoch > first.epoch);
    assert_eq!(recovered, vec![in_flight], "only the east leader's job");
    assert_eq!(state_of(store.as_ref(), in_flight).await, JobState::Pending);
    assert_eq!(
        state_of(store.as_ref(), west_job).await,
        JobState::Processing,
        "another shard's job is left to its leader"
    );

    // The deposed leader claims nothing more and cannot finish what was taken back.
    assert!(matches!(
        claim(first.clone(), "e1").await,
        Err(StoreError::NotLeader { shard }) if shard == "east"
    ));
    let completed = completed_on_p1();
    assert!(matches!(
        store.finish(in_flight, &first, completed.clone()).await,
        Err(StoreError::Fenced(_))
    ));
    let mut sent = Vec::new();
    while let Some(job) = claim(second.clone(), "e1").await.expect("claim") {
        sent.push(job.id);
        store
            .finish(job.id, &second, completed.clone())
            .await
            .expect("finish");
    }
    assert_eq!(sent, vec![in_flight, waiting]);

    // The same pod leading again is a new term too: its old claim is fenced.
    let (third, _) = store.lead_shard("east", "pod-b").await.expect("lead again");
    assert!(third.epoch > second.epoch);
    assert!(matches!(
        claim(second, "e1").await,
        Err(StoreError::NotLeader { .. })
    ));
    assert!(claim(third, "e1").await.expect("claim").is_none());
    store
        .finish(west_job, &west, completed)
        .await
        .expect("the west leader is unaffected");
}

/// `own_queues`: a shard claims only the queues it owns; a queue moves to another shard
/// only once its old shard lets go of it with nothing in flight, or when the old shard is
/// no longer named.
pub(crate) async fn queue_hand_off(backend: &dyn Backend) {
    let store = backend.open().await;
    let (east, _) = store.lead_shard("east", "pod-e").await.expect("lead");
    let (west, _) = store.lead_shard("west", "pod-w").await.expect("lead");
    let both = queues(&["east", "west"]);
    let own = |claimer: Claimer, mine: &'static [&'static str], shards: Vec<String>| {
        let store = store.clone();
        async move {
            store
                .own_queues(&claimer, &queues(mine), &shards)
                .await
                .expect("own queues")
        }
    };
    let claim = |claimer: Claimer| {
        let store = store.clone();
        async move {
            store
                .claim_next(&queues(&["lobby"]), "p1", &claimer)
                .await
                .expect("claim")
                .map(|claim| claim.job)
        }
    };
    let first = create(store.as_ref(), new_job("lobby", "alice")).await;
    let second = create(store.as_ref(), new_job("lobby", "alice")).await;
    assert!(
        claim(east.clone()).await.is_none(),
        "not owned yet: nothing to claim"
    );
    assert_eq!(
        own(east.clone(), &["lobby"], both.clone()).await,
        queues(&["lobby"])
    );
    assert_eq!(claim(east.clone()).await.map(|job| job.id), Some(first));

    // The configuration moves lobby to west; east still sends `first`.
    assert!(own(west.clone(), &["lobby"], both.clone()).await.is_empty());
    assert!(
        own(east.clone(), &[], both.clone())
            .await
            .contains(&"lobby".to_string())
    );
    assert!(claim(west.clone()).await.is_none(), "east still owns lobby");
    let done = completed_on_p1();
    store.finish(first, &east, done).await.expect("finish");
    assert!(
        own(east.clone(), &[], both.clone()).await.is_empty(),
        "let go"
    );
    assert!(
        claim(east.clone()).await.is_none(),
        "east no longer claims lobby"
    );
    assert_eq!(
        own(west.clone(), &["lobby"], both.clone()).await,
        queues(&["lobby"])
    );
    assert_eq!(claim(west.clone()).await.map(|job| job.id), Some(second));

    // A removed shard (no longer named) loses its queues at once; what it was sending
    // goes back to the queue.
    let third = create(store.as_ref(), new_job("lobby", "alice")).await;
    assert_eq!(claim(west.clone()).await.map(|job| job.id), Some(third));
    let (north, _) = store.lead_shard("north", "pod-n").await.expect("lead");
    assert!(own(north.clone(), &["lobby"], both).await.is_empty());
    let taken = own(north.clone(), &["lobby"], queues(&["north"])).await;
    assert_eq!(taken, queues(&["lobby"]));
    for id in [second, third] {
        assert_eq!(state_of(store.as_ref(), id).await, JobState::Pending);
    }
    assert_eq!(claim(north.clone()).await.map(|job| job.id), Some(second));
    assert_eq!(claim(north).await.map(|job| job.id), Some(third));
    assert!(claim(west).await.is_none());
}

/// The first salt proposed is kept, for every store opened on the same data.
pub(crate) async fn installation_salt(backend: &dyn Backend) {
    let first = backend.open().await;
    let second = backend.open().await;
    let kept = first.installation_salt(&[1; 32]).await.expect("salt");
    assert_eq!(kept, vec![1; 32]);
    assert_eq!(
        second.installation_salt(&[2; 32]).await.expect("salt"),
        kept,
        "a later proposal does not replace it"
    );
    drop((first, second));
    let reopened = backend.open().await;
    assert_eq!(
        reopened.installation_salt(&[3; 32]).await.expect("salt"),
        kept
    );
}

pub(crate) async fn recover(backend: &dyn Backend) {
    let store = backend.open().await;
    let claim_as = |id: &'static str, epoch, queue: &'static str| {
        let store = store.clone();
        async move {
            let job = create(store.as_ref(), new_job(queue, "alice")).await;
            let claimed = store
                .claim_next(&queues(&[queue]), "p1", &claimer(id, epoch))
                .await
                .expect("claim")
                .map(|claim| claim.job)
                .expect("claimable");
            assert_eq!(claimed.id, job);
            job
        }
    };
    let old_epoch = claim_as("spooler-0", 1, "q1").await;
    let other = claim_as("spooler-1", 7, "q2").await;
    let current = claim_as("spooler-0", 2, "q3").await;
    let waiting = create(store.as_ref(), new_job("q4", "alice")).await;

    let me = claimer("spooler-0", 2);
    let recovered = store.recover(&me).await.expect("recover");
    assert_eq!(recovered, vec![old_epoch, other]);
    for id in [old_epoch, other] {
        let job = store.job(id).await.expect("job").expect("exists");
        assert_eq!(job.state, JobState::Pending);
        assert_eq!(job.attempts, 1, "attempts are kept");
        assert!(
            matches!(
                store
                    .finish(id, &claimer("spooler-1", 7), completed_on_p1())
                    .await,
                Err(StoreError::Fenced(_))
            ),
            "the old claim is gone"
        );
    }
    assert_eq!(
        state_of(store.as_ref(), current).await,
        JobState::Processing
    );
    assert_eq!(state_of(store.as_ref(), waiting).await, JobState::Pending);
    assert_eq!(
        store.recover(&me).await.expect("recover again"),
        Vec::<JobId>::new()
    );
    let reclaimed = store
        .claim_next(&queues(&["q1"]), "p1", &me)
        .await
        .expect("claim")
        .map(|claim| claim.job)
        .expect("recovered job is claimable");
    assert_eq!((reclaimed.id, reclaimed.attempts), (old_epoch, 2));
}

pub(crate) async fn paused_queues(backend: &dyn Backend) {
    let store = backend.open().await;
    let dispatcher = claimer("spooler-0", 1);
    let both = queues(&["office", "lab"]);
    let office_job = create(store.as_ref(), new_job("office", "alice")).await;
    let lab_job = create(store.as_ref(), new_job("lab", "alice")).await;
    store.set_queue_paused("office", true).await.expect("pause");
    store
        .set_queue_paused("office", true)
        .await
        .expect("pause twice");
    store.set_queue_paused("zeta", true).await.expect("pause");
    assert_eq!(
        store.paused_queues().await.expect("paused"),
        queues(&["office", "zeta"])
    );
    let claimed = store
        .claim_next(&both, "p1", &dispatcher)
        .await
        .expect("claim")
        .map(|claim| claim.job);
    assert_eq!(claimed.map(|job| job.id), Some(lab_job));
    assert_eq!(
        store
            .claim_next(&both, "p1", &dispatcher)
            .await
            .expect("claim")
            .map(|claim| claim.job),
        None
    );
    store
        .set_queue_paused("office", false)
        .await
        .expect("resume");
    store
        .set_queue_paused("office", false)
        .await
        .expect("resume twice");
    drop(store);
    let store = backend.open().await;
    assert_eq!(
        store.paused_queues().await.expect("paused"),
        queues(&["zeta"]),
        "persisted"
    );
    let claimed = store
        .claim_next(&both, "p1", &dispatcher)
        .await
        .expect("claim")
        .map(|claim| claim.job);
    assert_eq!(claimed.map(|job| job.id), Some(office_job));
}

pub(crate) async fn purge_history(backend: &dyn Backend) {
    let store = backend.open().await;
    let mut finished = Vec::new();
    for n in 0..5 {
        let mut job = new_job("office", "alice");
        job.document = Some(stored_document(&format!("doc-{n}")));
        job.documents_complete = false;
        let id = create(store.as_ref(), job).await;
        store
            .add_document(id, Some(stored_document(&format!("doc-{n}-b"))), true)
            .await
            .expect("second document");
        store.apply(id, UserAction::Cancel).await.expect("cancel");
        finished.push(id);
    }
    let unfinished = create(store.as_ref(), new_job("office", "alice")).await;
    let other_queue = job_in_state(store.as_ref(), JobState::Canceled, "lab").await;

    // Nothing is old yet, but only the newest two may stay.
    let mut keys = store.purge_history("office", 0, 2).await.expect("purge");
    keys.sort();
    assert_eq!(
        keys,
        vec!["doc-0", "doc-0-b", "doc-1", "doc-1-b", "doc-2", "doc-2-b"]
    );
    for id in &finished[..3] {
        assert_eq!(store.job(*id).await.expect("job"), None, "job {id} purged");
    }
    for id in finished[3..].iter().chain([&unfinished, &other_queue]) {
        assert!(
            store.job(*id).await.expect("job").is_some(),
            "job {id} kept"
        );
    }
    // Everything finished before an hour from now is old enough.
    let an_hour_ahead = now_ms() / 1000 + 3600;
    let mut keys = store
        .purge_history("office", an_hour_ahead, 100)
        .await
        .expect("purge");
    keys.sort();
    assert_eq!(keys, vec!["doc-3", "doc-3-b", "doc-4", "doc-4-b"]);
    let left = store
        .list_jobs(&JobQuery {
            which: WhichJobs::All,
            ..JobQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(&left), vec![unfinished, other_queue]);
    let next = create(store.as_ref(), new_job("office", "alice")).await;
    assert!(next > other_queue, "purged ids are not reused");
    assert_eq!(
        store
            .purge_history("office", an_hour_ahead, 0)
            .await
            .expect("purge"),
        Vec::<String>::new()
    );
}

pub(crate) async fn next_epoch(backend: &dyn Backend) {
    let store = backend.open().await;
    assert_eq!(store.next_epoch("spooler-0").await.expect("epoch"), 1);
    assert_eq!(store.next_epoch("spooler-0").await.expect("epoch"), 2);
    assert_eq!(store.next_epoch("spooler-1").await.expect("epoch"), 1);
    drop(store);
    let store = backend.open().await;
    assert_eq!(
        store.next_epoch("spooler-0").await.expect("epoch"),
        3,
        "persisted"
    );
}

pub(crate) async fn queue_depths(backend: &dyn Backend) {
    let store = backend.open().await;
    store.ready().await.expect("a store that answers is ready");
    for _ in 0..3 {
        create(store.as_ref(), new_job("office", "alice")).await;
    }
    job_in_state(store.as_ref(), JobState::Processing, "lab").await;
    job_in_state(store.as_ref(), JobState::PendingHeld, "lab").await;
    job_in_state(store.as_ref(), JobState::Completed, "lab").await;
    job_in_state(store.as_ref(), JobState::Canceled, "empty").await;
    let depth = |queue: &str, unfinished, processing| QueueDepth {
        queue: queue.to_string(),
        unfinished,
        processing,
    };
    assert_eq!(
        store.queue_depths(None).await.expect("depths"),
        vec![depth("lab", 2, 1), depth("office", 3, 0)]
    );
    assert_eq!(
        store.queue_depths(Some("lab")).await.expect("one queue"),
        vec![depth("lab", 2, 1)]
    );
    assert_eq!(
        store
            .queue_depths(Some("empty"))
            .await
            .expect("a queue of finished jobs"),
        vec![]
    );
}

pub(crate) async fn durable_across_reopen(backend: &dyn Backend) {
    let store = backend.open().await;
    let mut stored = new_job("office", "alice");
    stored.document = Some(stored_document("big-1"));
    let stored = store.create_job(stored).await.expect("create");
    let inline = store
        .create_job(new_job("office", "bob"))
        .await
        .expect("create");
    let canceled = store
        .apply(inline.id, UserAction::Cancel)
        .await
        .expect("cancel");
    drop(store);

    let store = backend.open().await;
    assert_eq!(
        store.job(stored.id).await.expect("job"),
        Some(stored.clone())
    );
    assert_eq!(store.job(inline.id).await.expect("job"), Some(canceled));
    assert_eq!(
        store.inline_document(inline.id, 1).await.expect("inline"),
        Some(Bytes::from_static(b"%PDF-1.7\n"))
    );
    let next = create(store.as_ref(), new_job("office", "carol")).await;
    assert!(next > inline.id, "ids are never reused");
}

pub(crate) async fn concurrent_creates(backend: &dyn Backend) {
    const JOBS: usize = 500;
    let store = backend.open().await;
    let creates = (0..JOBS).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .create_job(new_job("office", &format!("user-{n}")))
                .await
        })
    });
    let mut created = HashSet::new();
    for create in futures_util::future::join_all(creates).await {
        let job = create.expect("task").expect("create");
        created.insert(job.id);
    }
    assert_eq!(created.len(), JOBS, "distinct ids");
    drop(store);

    let store = backend.open().await;
    let listed = store.list_jobs(&JobQuery::default()).await.expect("list");
    assert_eq!(
        listed.iter().map(|job| job.id).collect::<HashSet<_>>(),
        created
    );
}
