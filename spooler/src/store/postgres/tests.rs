use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::*;
use crate::store::contract::{Backend, job_store_contract};
use printfleet_testservers::{PostgresServer, free_port};

/// A database of its own on the PostgreSQL server shared by this process's tests.
struct PostgresBackend {
    _server: Arc<PostgresServer>,
    dsn: String,
}

impl PostgresBackend {
    async fn new() -> Self {
        let (server, dsn) = tokio::task::spawn_blocking(|| {
            let server = PostgresServer::shared()?;
            let dsn = server.create_database()?;
            std::io::Result::Ok((server, dsn))
        })
        .await
        .expect("server task")
        .expect("a database on PostgreSQL");
        PostgresBackend {
            _server: server,
            dsn,
        }
    }

    async fn connect(&self) -> PostgresJobStore {
        PostgresJobStore::connect(&self.dsn)
            .await
            .expect("connect to PostgreSQL")
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    async fn open(&self) -> Arc<dyn JobStore> {
        Arc::new(self.connect().await)
    }
}

job_store_contract!(PostgresBackend::new().await);

fn new_job(queue: &str, owner: &str) -> NewJob {
    NewJob {
        queue: queue.into(),
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

async fn raw_client(dsn: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(dsn, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// The first column of every row `sql` returns.
async fn first_column<T>(client: &tokio_postgres::Client, sql: &str) -> Vec<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query(sql, &[])
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_starting_together_migrate_once() {
    let backend = PostgresBackend::new().await;
    let starts = (0..4).map(|_| PostgresJobStore::connect(&backend.dsn));
    for store in futures_util::future::join_all(starts).await {
        store.expect("every pod starts");
    }
    let client = raw_client(&backend.dsn).await;
    let versions: Vec<i32> = first_column(
        &client,
        "SELECT version FROM schema_migrations ORDER BY version",
    )
    .await;
    assert_eq!(versions, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>());
    // Debian's PostgreSQL is built with lz4: inline documents use it.
    let compression: i8 = client
        .query_one(
            "SELECT attcompression FROM pg_attribute \
             WHERE attrelid = 'documents'::regclass AND attname = 'inline'",
            &[],
        )
        .await
        .expect("the inline column")
        .get(0);
    assert_eq!(
        compression as u8, b'l',
        "inline documents compress with lz4"
    );

    client
        .execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (99, 0)",
            &[],
        )
        .await
        .expect("a newer version");
    match PostgresJobStore::connect(&backend.dsn).await {
        Err(StoreError::Internal(message)) => assert!(message.contains("newer"), "{message}"),
        Err(other) => panic!("expected a schema error, got {other:?}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

#[test]
fn migrations_still_to_apply() {
    let all = pending_migrations(0).expect("fresh database");
    assert_eq!(all.len(), MIGRATIONS.len());
    assert_eq!(all[0].0, 1);
    assert!(
        pending_migrations(MIGRATIONS.len() as i32)
            .expect("up to date")
            .is_empty()
    );
    assert!(matches!(
        pending_migrations(MIGRATIONS.len() as i32 + 1),
        Err(StoreError::Internal(_))
    ));
    assert!(matches!(
        pending_migrations(-1),
        Err(StoreError::Internal(_))
    ));
}

#[test]
fn retryable_sqlstates() {
    for code in [
        SqlState::CONNECTION_FAILURE,
        SqlState::CONNECTION_EXCEPTION,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
        SqlState::TOO_MANY_CONNECTIONS,
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::QUERY_CANCELED,
    ] {
        assert!(retryable_code(&code), "{code:?} is retryable");
    }
    for code in [
        SqlState::UNIQUE_VIOLATION,
        SqlState::SYNTAX_ERROR,
        SqlState::INVALID_PASSWORD,
        SqlState::UNDEFINED_TABLE,
    ] {
        assert!(!retryable_code(&code), "{code:?} is not retryable");
    }
}

/// Three pods, each with several dispatchers, against one database: every job is
/// claimed by exactly one of them, and only its claimer may finish it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_claim_each_job_once() {
    const JOBS: usize = 150;
    let backend = PostgresBackend::new().await;
    let mut pods = Vec::new();
    for _ in 0..3 {
        pods.push(Arc::new(backend.connect().await));
    }
    let creates = (0..JOBS).map(|n| pods[n % 3].create_job(new_job("office", "alice")));
    let created: HashSet<JobId> = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .map(|job| job.expect("create").id)
        .collect();
    let dispatchers = (0..9).map(|n| {
        let pod = pods[n % 3].clone();
        tokio::spawn(async move {
            let me = Claimer {
                id: format!("pod-{}", n % 3),
                epoch: n as i64,
                shard: None,
            };
            let mut claimed = Vec::new();
            while let Some(job) = pod
                .claim_next(&["office".to_string()], "p1", &me)
                .await
                .expect("claim")
                .map(|claim| claim.job)
            {
                claimed.push((job.id, me.clone()));
            }
            claimed
        })
    });
    let mut claims = Vec::new();
    for dispatcher in futures_util::future::join_all(dispatchers).await {
        claims.extend(dispatcher.expect("dispatcher"));
    }
    assert_eq!(claims.len(), JOBS, "each job claimed once");
    let claimed: HashSet<JobId> = claims.iter().map(|(id, _)| *id).collect();
    assert_eq!(claimed, created);

    let done = || Outcome::Completed {
        printer: "p1".into(),
        impressions: Some(1),
        sheets: Some(1),
        settlement: None,
    };
    for (n, (id, claimer)) in claims.iter().enumerate() {
        let intruder = Claimer {
            id: claimer.id.clone(),
            epoch: claimer.epoch + 100,
            shard: None,
        };
        let pod = &pods[n % 3];
        assert!(matches!(
            pod.finish(*id, &intruder, done()).await,
            Err(StoreError::Fenced(fenced)) if fenced == *id
        ));
        let job = pod.finish(*id, claimer, done()).await.expect("finish");
        assert_eq!(job.state, JobState::Completed);
    }
}

/// A takeover while the old leader is claiming as fast as it can: every job the old
/// leader claimed is either handed back by the takeover or was claimed before it, and none
/// after it; nothing is left processing under the old epoch.
/// Submits `jobs` at once to `store`, job `n` owned by `u<n>` and named by `name(n)`.
async fn submit_together(
    store: &Arc<PostgresJobStore>,
    jobs: usize,
    name: impl Fn(usize) -> String,
) -> Vec<Result<Job, StoreError>> {
    let creates = (0..jobs).map(|n| {
        let store = store.clone();
        let mut job = new_job("office", &format!("u{n}"));
        job.name = name(n);
        tokio::spawn(async move { store.create_job(job).await })
    });
    futures_util::future::join_all(creates)
        .await
        .into_iter()
        .map(|create| create.expect("task"))
        .collect()
}

/// The owner of each stored job by id, and how many transactions wrote them.
async fn stored_owners(dsn: &str) -> (HashMap<JobId, String>, usize) {
    let client = raw_client(dsn).await;
    let rows = client
        .query("SELECT id, owner, xmin::text FROM jobs", &[])
        .await
        .expect("jobs");
    let transactions: HashSet<String> = rows.iter().map(|row| row.get(2)).collect();
    let owners = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    (owners, transactions.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submissions_arriving_together_share_a_statement() {
    const JOBS: usize = 300;
    let backend = PostgresBackend::new().await;
    let store = Arc::new(backend.connect().await);
    let created = submit_together(&store, JOBS, |_| "job".into()).await;
    let (owners, transactions) = stored_owners(&backend.dsn).await;
    assert_eq!(owners.len(), JOBS);
    for job in created {
        let job = job.expect("create");
        assert_eq!(
            owners.get(&job.id),
            Some(&job.owner),
            "job {} answered as stored",
            job.id
        );
    }
    assert!(
        transactions < JOBS / 2,
        "{JOBS} submissions took {transactions} transactions: not batched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submission_the_database_refuses_fails_alone() {
    const JOBS: usize = 200;
    const BAD: usize = 100;
    let backend = PostgresBackend::new().await;
    let store = Arc::new(backend.connect().await);
    // PostgreSQL text cannot hold a NUL: the server refuses that one job's row.
    let created = submit_together(&store, JOBS, |n| {
        if n == BAD {
            "bad\0name".into()
        } else {
            "job".into()
        }
    })
    .await;
    let (owners, transactions) = stored_owners(&backend.dsn).await;
    for (n, job) in created.iter().enumerate() {
        match job {
            Ok(_) => assert_ne!(n, BAD, "the NUL name was stored"),
            Err(error) => assert_eq!(n, BAD, "submission {n} failed: {error}"),
        }
    }
    assert_eq!(owners.len(), JOBS - 1);
    assert!(!owners.values().any(|owner| owner == &format!("u{BAD}")));
    assert!(transactions < JOBS - 1, "the submissions were batched");
}

#[tokio::test]
async fn purging_jobs_removes_their_documents_rows() {
    let backend = PostgresBackend::new().await;
    let store = backend.connect().await;
    let mut purged = Vec::new();
    for owner in ["alice", "bob"] {
        let mut job = new_job("office", owner);
        job.document = Some(NewDocument {
            format: "application/pdf".into(),
            name: None,
            size: 9,
            body: DocumentBody::Inline(Bytes::from_static(b"%PDF-1.7\n")),
        });
        let id = store.create_job(job).await.expect("create").id;
        store.apply(id, UserAction::Cancel).await.expect("cancel");
        purged.push(id);
    }
    let kept = store
        .create_job(new_job("office", "carol"))
        .await
        .expect("create")
        .id;
    store.purge_history("office", 0, 0).await.expect("purge");
    let client = raw_client(&backend.dsn).await;
    let left: Vec<JobId> = first_column(&client, "SELECT job_id FROM documents").await;
    assert!(
        left.iter().all(|id| !purged.contains(id)),
        "documents of purged jobs {purged:?} left: {left:?}"
    );
    for id in purged {
        assert!(matches!(
            store.inline_document(id, 1).await,
            Err(StoreError::NotFound(_))
        ));
    }
    assert!(store.job(kept).await.expect("job").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_takeover_during_claims_leaves_no_job_to_the_old_leader() {
    const JOBS: usize = 1500;
    let backend = PostgresBackend::new().await;
    let old_pod = Arc::new(backend.connect().await);
    let new_pod = backend.connect().await;
    for _ in 0..JOBS {
        old_pod
            .create_job(new_job("office", "alice"))
            .await
            .expect("create");
    }
    let (old, _) = old_pod.lead_shard("east", "pod-a").await.expect("lead");
    let queues = ["office".to_string()];
    old_pod
        .own_queues(&old, &queues, &["east".to_string()])
        .await
        .expect("own the queue");
    let claiming = tokio::spawn({
        let (pod, old, queues) = (old_pod.clone(), old.clone(), queues.clone());
        async move {
            let mut claimed = Vec::new();
            loop {
                match pod.claim_next(&queues, "p1", &old).await {
                    Ok(Some(claim)) => claimed.push(claim.job.id),
                    Ok(None) => panic!("the jobs ran out before the takeover"),
                    Err(StoreError::NotLeader { .. }) => return claimed,
                    Err(error) => panic!("claim: {error}"),
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (new, recovered) = new_pod
        .lead_shard("east", "pod-b")
        .await
        .expect("take over");
    let claimed = claiming.await.expect("claiming task");
    assert!(
        !claimed.is_empty(),
        "the old leader claimed before the takeover"
    );
    let claimed: HashSet<JobId> = claimed.into_iter().collect();
    let recovered: HashSet<JobId> = recovered.into_iter().collect();
    assert_eq!(
        claimed, recovered,
        "exactly the old leader's claims are handed back"
    );
    let mut sent = HashSet::new();
    while let Some(job) = new_pod
        .claim_next(&queues, "p1", &new)
        .await
        .expect("claim")
        .map(|claim| claim.job)
    {
        sent.insert(job.id);
    }
    assert_eq!(sent.len(), JOBS, "the new leader has every job to send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn epochs_are_unique_across_pods() {
    const EPOCHS: i64 = 60;
    let backend = PostgresBackend::new().await;
    let mut pods = Vec::new();
    for _ in 0..3 {
        pods.push(Arc::new(backend.connect().await));
    }
    let epochs = (0..EPOCHS).map(|n| {
        let pod = pods[n as usize % 3].clone();
        tokio::spawn(async move { pod.next_epoch("shard-0").await })
    });
    let mut seen = HashSet::new();
    for epoch in futures_util::future::join_all(epochs).await {
        assert!(seen.insert(epoch.expect("task").expect("epoch")));
    }
    assert_eq!(seen, (1..=EPOCHS).collect::<HashSet<_>>());
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let port = free_port().expect("free port");
    let started = Instant::now();
    let result = PostgresJobStore::connect_with(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=none"),
        PostgresOptions {
            operation_timeout: Duration::from_secs(3),
            ..PostgresOptions::default()
        },
    )
    .await;
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{:?}",
        result.err()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(
        PostgresJobStore::connect("host=127.0.0.1 port=notaport").await,
        Err(StoreError::Internal(message)) if message.contains("DSN")
    ));
}

/// What a client submitting without pause saw.
#[derive(Default)]
struct Submissions {
    acknowledged: Vec<JobId>,
    unavailable: usize,
    other_errors: Vec<String>,
}

/// PostgreSQL crashing and coming back while jobs are submitted: submissions fail with
/// `Unavailable` while it is down and succeed again once it is back, through the same
/// store; every acknowledged job is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_is_unavailable_meanwhile_and_loses_nothing() {
    let (server, dsn) = tokio::task::spawn_blocking(|| {
        let server = PostgresServer::start()?;
        let dsn = server.create_database()?;
        std::io::Result::Ok((Arc::new(server), dsn))
    })
    .await
    .expect("server task")
    .expect("a database on PostgreSQL");
    let options = PostgresOptions {
        operation_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        ..PostgresOptions::default()
    };
    let store = Arc::new(
        PostgresJobStore::connect_with(&dsn, options.clone())
            .await
            .expect("connect"),
    );
    let seen = Arc::new(Mutex::new(Submissions::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let submitters: Vec<_> = (0..4)
        .map(|n| {
            let (store, seen, stop) = (store.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let result = store.create_job(new_job("office", &format!("u{n}"))).await;
                    let mut seen = seen.lock().await;
                    match result {
                        Ok(job) => seen.acknowledged.push(job.id),
                        Err(StoreError::Unavailable(_)) => seen.unavailable += 1,
                        Err(other) => seen.other_errors.push(other.to_string()),
                    }
                    drop(seen);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let wait_for = |what: &'static str, done: Box<dyn Fn(&Submissions) -> bool + Send>| {
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !done(&*seen.lock().await) {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    wait_for("acknowledgements", Box::new(|s| s.acknowledged.len() >= 20)).await;
    let crashing = server.clone();
    tokio::task::spawn_blocking(move || crashing.crash())
        .await
        .expect("crash task")
        .expect("crash PostgreSQL");
    let acknowledged_before = seen.lock().await.acknowledged.len();
    wait_for("refusals", Box::new(|s| s.unavailable >= 8)).await;
    let while_down = seen.lock().await.acknowledged.len();
    assert!(
        while_down <= acknowledged_before + 4,
        "at most the submissions in flight at the crash are acknowledged after it"
    );

    let resuming = server.clone();
    tokio::task::spawn_blocking(move || resuming.resume())
        .await
        .expect("resume task")
        .expect("restart PostgreSQL");
    let resumed_at = Instant::now();
    wait_for(
        "acknowledgements after the restart",
        Box::new(move |s| s.acknowledged.len() >= while_down + 20),
    )
    .await;
    assert!(
        resumed_at.elapsed() < Duration::from_secs(15),
        "submissions resume soon after PostgreSQL is back"
    );
    stop.store(true, Ordering::Relaxed);
    for submitter in submitters {
        submitter.await.expect("submitter");
    }

    let seen = seen.lock().await;
    assert!(
        seen.other_errors.is_empty(),
        "only Unavailable while PostgreSQL is away: {:?}",
        seen.other_errors
    );
    let reopened = PostgresJobStore::connect_with(&dsn, options)
        .await
        .expect("reconnect");
    let stored: HashSet<JobId> = reopened
        .list_jobs(&JobQuery {
            which: WhichJobs::All,
            ..JobQuery::default()
        })
        .await
        .expect("list")
        .iter()
        .map(|job| job.id)
        .collect();
    let lost: Vec<&JobId> = seen
        .acknowledged
        .iter()
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(lost.is_empty(), "acknowledged jobs lost: {lost:?}");
}

/// A group quota checked by three pods at once, for users of the group who also have
/// quotas of their own: exactly the group's limit is admitted, whichever pod admits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_quota_is_exact_across_pods() {
    use crate::accounting::ledger::{Admission, LedgerQuery};
    use crate::accounting::pricing::Money;
    use crate::accounting::quota::{ApplicableQuota, Period, Scope};
    use crate::accounting::usage::Usage;
    use printfleet_crds::policy::QuotaAction;

    const SUBMISSIONS: usize = 60;
    const GROUP_LIMIT: i64 = 200;
    let backend = PostgresBackend::new().await;
    let mut pods = Vec::new();
    for _ in 0..3 {
        pods.push(Arc::new(backend.connect().await));
    }
    let now = jiff::Timestamp::now();
    let period = Period {
        start: now - jiff::SignedDuration::from_hours(1),
        end: now + jiff::SignedDuration::from_hours(1),
    };
    let quota = |scope, max_amount| ApplicableQuota {
        rule: 0,
        scope,
        period,
        max_amount: Some(max_amount),
        max_impressions: None,
        action: QuotaAction::Reject,
    };
    let submissions = (0..SUBMISSIONS).map(|n| {
        let pod = pods[n % 3].clone();
        let user = format!("user-{}", n % 6);
        let admission = Admission {
            at_ms: now.as_millisecond(),
            user: user.clone(),
            groups: vec!["staff".into(), format!("team-{}", n % 2)],
            account: None,
            usage: Usage {
                impressions: 1,
                sheets: 1,
                color: false,
                two_sided: false,
            },
            price: Money {
                minor: 10,
                currency: "EUR".into(),
            },
            quotas: vec![
                quota(Scope::User(user.clone()), 1_000),
                quota(Scope::Group("staff".into()), GROUP_LIMIT),
            ],
        };
        let job = NewJob {
            admission: Some(admission),
            ..new_job("office", &user)
        };
        tokio::spawn(async move { pod.create_job(job).await })
    });
    let (mut accepted, mut rejected) = (0, 0);
    for result in futures_util::future::join_all(submissions).await {
        match result.expect("task") {
            Ok(_) => accepted += 1,
            Err(StoreError::QuotaExceeded(_)) => rejected += 1,
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert_eq!((accepted, rejected), (20, 40));
    let entries = pods[0]
        .ledger(&LedgerQuery::default())
        .await
        .expect("ledger");
    assert_eq!(entries.len(), 20);
    assert_eq!(
        entries.iter().map(|entry| entry.amount).sum::<i64>(),
        GROUP_LIMIT
    );
}

/// Claiming from a backlog that arrived in one burst reads a row or two of the jobs table:
/// not the queue's whole backlog (a claim over the other indexes read and sorted every
/// pending job of the queue, so dispatch slowed down as the queue grew), nor another
/// queue's; likewise for the documents and the estimate it reads with the job (a plan
/// once joined every estimate of the ledger). The claim is prepared and run while the table holds a few jobs, as a pod's is
/// at start, so PostgreSQL may cache a plan made for them; it is then explained at a
/// backlog of 2,000 jobs in each of two queues with each way PostgreSQL may plan it. Which
/// index a plan for a near-empty table takes is close to a coin toss, so the test also
/// checks that no other index of jobs leads with the queue and holds pending jobs (the
/// cluster bench once cached a plan over such an index: 5 ms a claim).
#[tokio::test]
async fn a_claim_reads_a_row_or_two_of_a_long_backlog() {
    const BACKLOG: i32 = 2_000;
    let ready = format!(
        "WHERE state = {} AND documents_complete",
        JobState::Pending.as_i32()
    );
    assert!(
        MIGRATIONS
            .iter()
            .any(|migration| migration.contains(&ready)),
        "the index of jobs ready to claim is not over pending jobs"
    );
    let backend = PostgresBackend::new().await;
    let _migrated = backend.connect().await;
    let client = raw_client(&backend.dsn).await;
    client
        .batch_execute(
            "INSERT INTO shard_leaders VALUES ('s1', 'pod-0', 1); \
             INSERT INTO queue_owners VALUES ('office', 's1');",
        )
        .await
        .expect("lead the shard");
    let execute = format!(
        "EXECUTE claim({}, 0, 'p1', 'pod-0', 1, '[]', {}, '{{office}}', 's1')",
        JobState::Processing.as_i32(),
        i64::MAX
    );
    insert_pending(&client, "office", 3).await;
    client
        .batch_execute(&format!("PREPARE claim AS {}", *CLAIM_NEXT))
        .await
        .expect("prepare");
    for _ in 0..8 {
        client.batch_execute(&execute).await.expect("claim");
    }
    // Another queue's backlog first, so a plan that walks every pending job in claim
    // order (rather than the queue's own entries) reads it all before reaching `office`.
    insert_pending(&client, "lab", BACKLOG).await;
    insert_pending(&client, "office", BACKLOG).await;
    // Each with a document and an estimate, which the claim reads for the job it takes.
    client
        .batch_execute(
            "INSERT INTO documents (job_id, number, format, size, inline) \
             SELECT id, 1, 'application/pdf', 4, '%PDF' FROM jobs; \
             INSERT INTO ledger (job_id, kind, at_ms, queue, user_name, user_groups, \
                                 impressions, sheets, color, amount, currency, flagged) \
             SELECT id, 'estimate', 0, queue, owner, '{}', 1, 1, false, 5, 'EUR', false \
             FROM jobs;",
        )
        .await
        .expect("documents and estimates");
    for mode in ["auto", "force_generic_plan", "force_custom_plan"] {
        let plan = client
            .simple_query(&format!(
                "SET plan_cache_mode = {mode}; EXPLAIN (ANALYZE, FORMAT TEXT) {execute}"
            ))
            .await
            .expect("explain a claim");
        let plan: Vec<&str> = plan
            .iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
                _ => None,
            })
            .collect();
        assert_reads_a_row_or_two(mode, &plan);
    }
    let rivals: Vec<String> = first_column(
        &client,
        "SELECT indexrelid::regclass::text FROM pg_index \
         WHERE indrelid = 'jobs'::regclass AND indexrelid <> 'jobs_ready_to_claim'::regclass \
           AND indkey[0] = (SELECT attnum FROM pg_attribute \
                            WHERE attrelid = 'jobs'::regclass AND attname = 'queue') \
           AND (indpred IS NULL OR pg_get_expr(indpred, indrelid) NOT LIKE '%state >= 7%')",
    )
    .await;
    assert!(
        rivals.is_empty(),
        "indexes a claim's cached plan may take over jobs_ready_to_claim: {rivals:?}"
    );
}

/// `jobs` pending jobs in `queue`, written directly.
async fn insert_pending(client: &tokio_postgres::Client, queue: &str, jobs: i32) {
    client
        .execute(
            "INSERT INTO jobs (queue, owner, name, priority, state, reasons, ticket, \
             documents_complete, created_at) \
             SELECT $1, 'alice', 'job', 50, $2, '[]', $3, true, 0 FROM generate_series(1, $4)",
            &[
                &queue,
                &JobState::Pending.as_i32(),
                &to_json(&JobTicket::default()).expect("ticket"),
                &jobs,
            ],
        )
        .await
        .expect("pending jobs");
}

/// `plan` (EXPLAIN ANALYZE's text) read at most two rows of any scan of jobs, of the
/// documents and of the ledger, did read jobs and the ledger, and read the documents once.
fn assert_reads_a_row_or_two(mode: &str, plan: &[&str]) {
    // "... on jobs  (cost=... rows=N ...) (actual time=... rows=N loops=M)"
    let rows_read = |line: &str| -> i64 {
        let actual = line.split("(actual").nth(1).unwrap_or_default();
        let number = |key: &str| -> i64 {
            actual
                .split(key)
                .nth(1)
                .and_then(|rest| rest.split([' ', ')']).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        number("rows=") * number("loops=")
    };
    for table in ["jobs", "documents", "ledger"] {
        let scans: Vec<&&str> = plan
            .iter()
            .filter(|line| line.contains(&format!(" on {table} ")))
            .collect();
        assert!(
            !scans.is_empty() || table == "documents",
            "{mode}: no scan of {table} in:\n{}",
            plan.join("\n")
        );
        assert!(
            table != "documents" || scans.len() <= 1,
            "{mode}: a claim read the job's documents {} times:\n{}",
            scans.len(),
            plan.join("\n")
        );
        let most = scans.iter().map(|line| rows_read(line)).max().unwrap_or(0);
        assert!(
            most <= 2 && (most >= 1 || table != "jobs"),
            "{mode}: a claim read {most} rows of {table}:\n{}",
            plan.join("\n")
        );
    }
}
