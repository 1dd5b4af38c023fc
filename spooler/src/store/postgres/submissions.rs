//! New jobs go into the database several to a statement: every job that arrived while the
//! previous statements were on their way to the server is inserted, and committed, by the
//! next one. Each statement is a round trip, a plan to start, a commit and a WAL flush the
//! server would otherwise spend per job; under load it spends them per batch, as the
//! SQLite store's group commit does. A job is answered only after its statement committed.

use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::{mpsc, oneshot};

use super::{DocumentRow, now, to_json};
use crate::accounting::ledger::LedgerEntry;
use crate::job::{DocumentBody, Job, JobId, JobState, NewJob};
use crate::store::StoreError;

/// The most jobs one statement inserts.
const MAX_BATCH: usize = 128;

/// The most bytes of inline documents one statement carries (past it, the batch closes).
const MAX_BATCH_BYTES: usize = 4 << 20;

/// A job to insert, in the state its admission decided, with its ledger estimate if any.
pub(super) struct Submission {
    pub job: NewJob,
    pub state: JobState,
    pub reasons: Vec<String>,
    pub estimate: Option<LedgerEntry>,
}

impl Submission {
    fn inline_bytes(&self) -> usize {
        match self.job.document.as_ref().map(|document| &document.body) {
            Some(DocumentBody::Inline(bytes)) => bytes.len(),
            _ => 0,
        }
    }
}

struct Pending {
    submission: Submission,
    reply: oneshot::Sender<Result<Job, StoreError>>,
}

/// The queue of submissions waiting for a statement, and the task that empties it.
pub(super) struct Submissions {
    sender: mpsc::UnboundedSender<Pending>,
}

impl Submissions {
    /// Starts the task that inserts the submissions with connections from `pool`, giving
    /// up on a batch after `timeout`; it ends when this is dropped.
    pub(super) fn start(pool: Pool, timeout: Duration) -> Submissions {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(insert_batches(pool, timeout, receiver));
        Submissions { sender }
    }

    /// Inserts `submission` with whatever else is waiting; the job once committed.
    pub(super) async fn insert(&self, submission: Submission) -> Result<Job, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Pending { submission, reply })
            .map_err(|_| StoreError::Internal("the submission task has stopped".into()))?;
        answer.await.map_err(|_| {
            StoreError::Unavailable("PostgreSQL did not take the job in time".into())
        })?
    }
}

/// How long a batch stays open for more jobs when the last one carried several (under
/// load): the server's cost per statement, its commit included, is then shared by more
/// jobs. A lone submission is sent at once.
const LINGER: Duration = Duration::from_millis(1);

/// One statement at a time per pod: the jobs that arrive meanwhile make the next batch.
/// (In the cluster bench, two statements at a time made batches of under three jobs, one
/// about five, and the server's time per job did not grow with the batch.)
async fn insert_batches(
    pool: Pool,
    timeout: Duration,
    mut receiver: mpsc::UnboundedReceiver<Pending>,
) {
    // Whether the last batch carried several jobs: submissions are arriving together.
    let mut busy = false;
    while let Some(first) = receiver.recv().await {
        let batch = gather(first, &mut receiver, busy).await;
        // A server that stopped answering must not hold up the batches after this one;
        // this batch's jobs hear that they were not taken.
        let jobs = batch.len();
        busy = jobs > 1;
        if tokio::time::timeout(timeout, insert_and_reply(&pool, batch))
            .await
            .is_err()
        {
            tracing::warn!(
                jobs,
                ?timeout,
                "PostgreSQL did not answer a batch of submissions"
            );
        }
    }
}

/// `first` and the submissions waiting behind it, up to a batch's limits; when the last
/// batch carried several jobs (`busy`), after waiting `LINGER` for more to arrive.
async fn gather(
    first: Pending,
    receiver: &mut mpsc::UnboundedReceiver<Pending>,
    busy: bool,
) -> Vec<Pending> {
    if busy {
        tokio::time::sleep(LINGER).await;
    }
    let mut bytes = first.submission.inline_bytes();
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        match receiver.try_recv() {
            Ok(pending) => {
                bytes += pending.submission.inline_bytes();
                batch.push(pending);
            }
            Err(_) => break,
        }
    }
    batch
}

/// Inserts `batch` in one statement; if the statement fails, each job on its own, so a job
/// the database refuses fails alone and every job hears its own error.
async fn insert_and_reply(pool: &Pool, batch: Vec<Pending>) {
    let client = match pool.get().await {
        Ok(client) => client,
        Err(error) => {
            // Every job hears the same error (the pool's are all text).
            let error = super::pool_error(error);
            for pending in batch {
                let copy = match &error {
                    StoreError::Unavailable(reason) => StoreError::Unavailable(reason.clone()),
                    other => StoreError::Internal(other.to_string()),
                };
                let _ = pending.reply.send(Err(copy));
            }
            return;
        }
    };
    let submissions: Vec<&Submission> = batch.iter().map(|p| &p.submission).collect();
    if batch.len() > 1
        && let Ok(jobs) = insert_jobs(&client, &submissions).await
    {
        for (pending, job) in batch.into_iter().zip(jobs) {
            let _ = pending.reply.send(Ok(job));
        }
        return;
    }
    for pending in batch {
        let inserted = insert_jobs(&client, &[&pending.submission]).await;
        let _ = pending.reply.send(inserted.and_then(|jobs| {
            jobs.into_iter()
                .next()
                .ok_or_else(|| StoreError::Internal("the insert returned no job".into()))
        }));
    }
}

/// Inserts `submissions` (their jobs, first documents and ledger estimates) in one
/// statement; the jobs in the same order, with ids in that order.
pub(super) async fn insert_jobs(
    client: &impl GenericClient,
    submissions: &[&Submission],
) -> Result<Vec<Job>, StoreError> {
    let columns = Columns::of(submissions)?;
    let statement = client.prepare_cached(INSERT_JOBS).await?;
    let rows = client.query(&statement, &columns.params()).await?;
    if rows.len() != submissions.len() {
        return Err(StoreError::Internal(format!(
            "inserted {} jobs for {} submissions",
            rows.len(),
            submissions.len()
        )));
    }
    rows.iter()
        .zip(submissions)
        .zip(columns.created_at)
        .map(|((row, submission), created_at)| {
            let id: JobId = row.try_get(0)?;
            let reasons = submission.reasons.clone();
            Ok(submission
                .job
                .created(id, submission.state, reasons, created_at))
        })
        .collect()
}

/// One array per column, a row per submission; `unnest` turns them back into rows. The
/// ids are drawn in submission order (the `ORDER BY` comes before the volatile
/// `nextval`), so jobs submitted together keep their order in the queue.
const INSERT_JOBS: &str = "WITH input AS MATERIALIZED (
            SELECT nextval(pg_get_serial_sequence('jobs', 'id'))::integer AS id, i.*
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::integer[],
                        $6::integer[], $7::text[], $8::text[], $9::boolean[], $10::bigint[],
                        $11::text[], $12::text[], $13::bigint[], $14::text[], $15::bytea[],
                        $16::text[], $17::bigint[], $18::text[], $19::text[], $20::text[],
                        $21::text[], $22::text[], $23::bigint[], $24::bigint[],
                        $25::boolean[], $26::bigint[], $27::text[], $28::boolean[])
                 WITH ORDINALITY AS i(queue, owner, name, originating_host, priority, state,
                      reasons, ticket, documents_complete, created_at,
                      d_format, d_name, d_size, d_key, d_inline,
                      l_kind, l_at_ms, l_queue, l_printer, l_user, l_groups, l_account,
                      l_impressions, l_sheets, l_color, l_amount, l_currency, l_flagged, ord)
            ORDER BY ord
         ), jobs AS (
            INSERT INTO jobs (id, queue, owner, name, originating_host, priority, state,
                              reasons, ticket, documents_complete, created_at)
            SELECT id, queue, owner, name, originating_host, priority, state, reasons, ticket,
                   documents_complete, created_at
            FROM input
         ), document AS (
            INSERT INTO documents (job_id, number, format, name, size, key, inline)
            SELECT id, 1, d_format, d_name, d_size, d_key, d_inline
            FROM input WHERE d_format IS NOT NULL
         ), estimate AS (
            INSERT INTO ledger (job_id, kind, at_ms, queue, printer, user_name, user_groups,
                                account, impressions, sheets, color, amount, currency, flagged)
            SELECT id, l_kind, l_at_ms, l_queue, l_printer, l_user,
                   ARRAY(SELECT jsonb_array_elements_text(l_groups::jsonb)), l_account,
                   l_impressions, l_sheets, l_color, l_amount, l_currency, l_flagged
            FROM input WHERE l_kind IS NOT NULL
         )
         SELECT id FROM input ORDER BY ord";

/// The statement's parameters, `$1` to `$28` in order.
#[derive(Default)]
struct Columns<'a> {
    queue: Vec<&'a str>,
    owner: Vec<&'a str>,
    name: Vec<&'a str>,
    originating_host: Vec<Option<&'a str>>,
    priority: Vec<i32>,
    state: Vec<i32>,
    reasons: Vec<String>,
    ticket: Vec<String>,
    documents_complete: Vec<bool>,
    created_at: Vec<i64>,
    document_format: Vec<Option<&'a str>>,
    document_name: Vec<Option<&'a str>>,
    document_size: Vec<Option<i64>>,
    document_key: Vec<Option<&'a str>>,
    document_inline: Vec<Option<&'a [u8]>>,
    estimate_kind: Vec<Option<&'static str>>,
    estimate_at_ms: Vec<Option<i64>>,
    estimate_queue: Vec<Option<&'a str>>,
    estimate_printer: Vec<Option<&'a str>>,
    estimate_user: Vec<Option<&'a str>>,
    estimate_groups: Vec<Option<String>>,
    estimate_account: Vec<Option<&'a str>>,
    estimate_impressions: Vec<Option<i64>>,
    estimate_sheets: Vec<Option<i64>>,
    estimate_color: Vec<Option<bool>>,
    estimate_amount: Vec<Option<i64>>,
    estimate_currency: Vec<Option<&'a str>>,
    estimate_flagged: Vec<Option<bool>>,
}

impl<'a> Columns<'a> {
    fn of(submissions: &[&'a Submission]) -> Result<Columns<'a>, StoreError> {
        let (now_s, _) = now();
        let mut columns = Columns::default();
        for submission in submissions {
            let job = &submission.job;
            columns.queue.push(&job.queue);
            columns.owner.push(&job.owner);
            columns.name.push(&job.name);
            columns
                .originating_host
                .push(job.originating_host.as_deref());
            columns.priority.push(job.priority);
            columns.state.push(submission.state.as_i32());
            columns.reasons.push(to_json(&submission.reasons)?);
            columns.ticket.push(to_json(&job.ticket)?);
            columns.documents_complete.push(job.documents_complete);
            columns.created_at.push(now_s);
            let document = job.document.as_ref().map(DocumentRow::new).transpose()?;
            columns
                .document_format
                .push(document.as_ref().map(|d| d.format));
            columns
                .document_name
                .push(document.as_ref().and_then(|d| d.name));
            columns
                .document_size
                .push(document.as_ref().map(|d| d.size));
            columns
                .document_key
                .push(document.as_ref().and_then(|d| d.key));
            columns
                .document_inline
                .push(document.as_ref().and_then(|d| d.inline));
            let estimate = submission.estimate.as_ref();
            columns
                .estimate_kind
                .push(estimate.map(|e| e.kind.keyword()));
            columns.estimate_at_ms.push(estimate.map(|e| e.at_ms));
            columns
                .estimate_queue
                .push(estimate.map(|e| e.queue.as_str()));
            columns
                .estimate_printer
                .push(estimate.and_then(|e| e.printer.as_deref()));
            columns
                .estimate_user
                .push(estimate.map(|e| e.user.as_str()));
            columns
                .estimate_groups
                .push(estimate.map(|e| to_json(&e.groups)).transpose()?);
            columns
                .estimate_account
                .push(estimate.and_then(|e| e.account.as_deref()));
            columns
                .estimate_impressions
                .push(estimate.map(|e| e.impressions));
            columns.estimate_sheets.push(estimate.map(|e| e.sheets));
            columns.estimate_color.push(estimate.map(|e| e.color));
            columns.estimate_amount.push(estimate.map(|e| e.amount));
            columns
                .estimate_currency
                .push(estimate.map(|e| e.currency.as_str()));
            columns.estimate_flagged.push(estimate.map(|e| e.flagged));
        }
        Ok(columns)
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 28] {
        [
            &self.queue,
            &self.owner,
            &self.name,
            &self.originating_host,
            &self.priority,
            &self.state,
            &self.reasons,
            &self.ticket,
            &self.documents_complete,
            &self.created_at,
            &self.document_format,
            &self.document_name,
            &self.document_size,
            &self.document_key,
            &self.document_inline,
            &self.estimate_kind,
            &self.estimate_at_ms,
            &self.estimate_queue,
            &self.estimate_printer,
            &self.estimate_user,
            &self.estimate_groups,
            &self.estimate_account,
            &self.estimate_impressions,
            &self.estimate_sheets,
            &self.estimate_color,
            &self.estimate_amount,
            &self.estimate_currency,
            &self.estimate_flagged,
        ]
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::time::{Instant, sleep};

    use super::*;
    use crate::job::{JobTicket, NewDocument};

    /// A submission with an inline document of `size` bytes, named `name`.
    fn pending(name: &str, size: usize) -> Pending {
        let job = NewJob {
            queue: "office".into(),
            owner: "alice".into(),
            name: name.into(),
            originating_host: None,
            priority: 50,
            held: false,
            ticket: JobTicket::default(),
            document: Some(NewDocument {
                format: "application/pdf".into(),
                name: None,
                size: size as u64,
                body: DocumentBody::Inline(Bytes::from(vec![b'x'; size])),
            }),
            documents_complete: true,
            admission: None,
        };
        Pending {
            submission: Submission {
                job,
                state: JobState::Pending,
                reasons: Vec::new(),
                estimate: None,
            },
            reply: oneshot::channel().0,
        }
    }

    /// Gathers a batch from `pending("a")`, with `pending("b")` sent as soon as the
    /// gathering lets anything else run and `pending("c")` two LINGERs later (paused time
    /// moves in whole milliseconds): the batch's names, and how long the gathering took.
    async fn gather_with_late_company(busy: bool) -> (Vec<String>, Duration) {
        let (sender, mut receiver) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _ = sender.send(pending("b", 10));
            sleep(LINGER * 2).await;
            let _ = sender.send(pending("c", 10));
        });
        let start = Instant::now();
        let batch = gather(pending("a", 10), &mut receiver, busy).await;
        let names = batch
            .iter()
            .map(|p| p.submission.job.name.clone())
            .collect();
        (names, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_submission_is_sent_at_once() {
        let (names, took) = gather_with_late_company(false).await;
        assert_eq!(names, ["a"]);
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn under_load_a_batch_waits_a_linger_for_company() {
        let (names, took) = gather_with_late_company(true).await;
        assert_eq!(names, ["a", "b"], "c comes after the linger");
        assert_eq!(took, LINGER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_closes_at_its_job_and_byte_limits() {
        let (sender, mut receiver) = mpsc::unbounded_channel();
        for n in 0..MAX_BATCH + 5 {
            sender.send(pending(&format!("{n}"), 10)).expect("send");
        }
        let batch = gather(pending("first", 10), &mut receiver, false).await;
        assert_eq!(batch.len(), MAX_BATCH);

        let (sender, mut receiver) = mpsc::unbounded_channel();
        let quarter = MAX_BATCH_BYTES / 4;
        for n in 0..5 {
            sender
                .send(pending(&format!("{n}"), quarter))
                .expect("send");
        }
        let batch = gather(pending("first", quarter), &mut receiver, false).await;
        assert_eq!(batch.len(), 4, "the fourth quarter fills the batch");
    }
}
