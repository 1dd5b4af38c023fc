//! The dispatcher against the real SQLite job store, real document directory and real
//! TCP peers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use printfleet_crds::{PrintQueueSpec, PrinterSpec};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::*;
use crate::app::Settings;
use crate::auth::Authenticator;
use crate::backend::ipp::tests::EvePrinter;
use crate::config::Config;
use crate::job::{DocumentBody, Job, JobState, JobTicket, NewDocument, NewJob};
use crate::metrics::Metrics;
use crate::store::UserAction;
use crate::store::documents::LocalDocumentStore;
use crate::store::sqlite::SqliteJobStore;

fn fast_settings() -> DispatchSettings {
    DispatchSettings {
        idle_poll: Duration::from_millis(50),
        probe_backoff_initial: Duration::from_millis(50),
        probe_backoff_max: Duration::from_millis(400),
        health_recheck: Duration::from_millis(300),
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_millis(500),
        depth_interval: Duration::from_millis(100),
        retention_interval: Duration::from_secs(3600),
        multiple_operation_timeout: Duration::from_secs(3600),
        ownership_interval: Duration::from_millis(50),
    }
}

fn config(printers: &[(&str, String)], queues: &[(&str, &[&str])]) -> Config {
    Config {
        printers: printers
            .iter()
            .map(|(name, uri)| {
                let spec = PrinterSpec {
                    uri: uri.clone(),
                    ..PrinterSpec::default()
                };
                (name.to_string(), spec)
            })
            .collect(),
        queues: queues
            .iter()
            .map(|(name, members)| {
                let spec = PrintQueueSpec {
                    printers: members.iter().map(|m| m.to_string()).collect(),
                    ..PrintQueueSpec::default()
                };
                (name.to_string(), spec)
            })
            .collect(),
        policies: BTreeMap::new(),
        queue_shards: BTreeMap::new(),
    }
}

/// A spooler's state around a running (or not yet started) dispatcher.
struct Harness {
    app: Arc<App>,
    config: watch::Sender<Arc<Config>>,
    shutdown: watch::Sender<bool>,
    dispatcher: Option<JoinHandle<()>>,
    settings: DispatchSettings,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new(initial: Config) -> Harness {
        Harness::with_settings(initial, fast_settings())
    }

    fn with_settings(initial: Config, settings: DispatchSettings) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteJobStore::open(&dir.path().join("jobs.db")).unwrap();
        let documents = LocalDocumentStore::open(dir.path().join("documents")).unwrap();
        let (config, config_receiver) = watch::channel(Arc::new(initial));
        let app = Arc::new(App {
            settings: Settings {
                listen: "127.0.0.1:0".parse().unwrap(),
                state_dir: dir.path().to_path_buf(),
                secrets_dir: dir.path().join("secrets"),
                max_document_bytes: 1 << 30,
                inline_document_bytes: 64 * 1024,
                idle_timeout: Duration::from_secs(30),
                tls: false,
                shard: None,
            },
            config: config_receiver,
            store: Arc::new(store),
            documents: Arc::new(documents),
            dispatch: DispatchHandle::new(),
            metrics: Metrics::new(),
            auth: Authenticator::new(dir.path().join("secrets")),
            salt: Default::default(),
        });
        let (shutdown, _) = watch::channel(false);
        Harness {
            app,
            config,
            shutdown,
            dispatcher: None,
            settings,
            dir,
        }
    }

    fn start(&mut self) {
        let claimer = Claimer {
            id: "test-spooler".into(),
            epoch: 1,
            shard: None,
        };
        self.dispatcher = Some(tokio::spawn(run_with(
            self.app.clone(),
            claimer,
            self.settings.clone(),
            self.shutdown.subscribe(),
        )));
    }

    /// Submits a job the way the IPP layer does: durable document, then a wake.
    async fn submit(&self, queue: &str, priority: i32, data: &[u8]) -> Job {
        self.submit_with(queue, priority, data, true).await
    }

    /// Like `submit`; `documents_complete: false` leaves the job open for more documents.
    async fn submit_with(
        &self,
        queue: &str,
        priority: i32,
        data: &[u8],
        documents_complete: bool,
    ) -> Job {
        let body = if data.len() <= self.app.settings.inline_document_bytes {
            DocumentBody::Inline(Bytes::copy_from_slice(data))
        } else {
            let key = format!("doc-{}-{}", queue, data.len());
            let mut writer = self.app.documents.create(&key).await.unwrap();
            for chunk in data.chunks(1 << 20) {
                writer.write(chunk).await.unwrap();
            }
            writer.commit().await.unwrap();
            DocumentBody::Stored { key }
        };
        let job = self
            .app
            .store
            .create_job(NewJob {
                queue: queue.into(),
                owner: "alice".into(),
                name: format!("job with priority {priority}"),
                originating_host: None,
                priority,
                held: false,
                ticket: JobTicket::default(),
                document: Some(NewDocument {
                    format: "text/plain".into(),
                    name: None,
                    size: data.len() as u64,
                    body,
                }),
                documents_complete,
                admission: None,
            })
            .await
            .unwrap();
        self.app.dispatch.wake();
        job
    }

    /// Waits until the job satisfies `done`, failing the test after 20 s.
    async fn wait_for(&self, id: JobId, done: impl Fn(&Job) -> bool) -> Job {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let job = self.app.store.job(id).await.unwrap().unwrap();
            if done(&job) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} stuck: {job:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for_state(&self, id: JobId, state: JobState) -> Job {
        self.wait_for(id, |job| job.state == state).await
    }

    async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(dispatcher) = self.dispatcher.take() {
            tokio::time::timeout(Duration::from_secs(10), dispatcher)
                .await
                .expect("dispatcher stops on shutdown")
                .unwrap();
        }
    }
}

/// Makes the next read of the peer fail: a reset, as a printer that hangs up mid-job.
fn hang_up(connection: TcpStream) {
    connection.set_zero_linger().unwrap();
    drop(connection);
}

/// How a test sink treats the connections that carry data (probes carry none).
#[derive(Clone, Copy)]
enum SinkMode {
    Record,
    /// Read nothing of a job until `Sink::release`, then record as `Record` does.
    HoldUntilReleased,
    /// Reset the first connection that carries data, record the rest.
    HangUpOnFirstJob,
    /// Reset every connection that carries data.
    HangUpAlways,
}

/// A raw 9100 sink that records each job's bytes in arrival order.
struct Sink {
    address: SocketAddr,
    jobs: Arc<Mutex<Vec<Vec<u8>>>>,
    release: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Sink {
    async fn start(mode: SinkMode) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let jobs = Arc::new(Mutex::new(Vec::new()));
        let recorded = jobs.clone();
        let (release, mut released) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut hung_up = false;
            loop {
                let Ok((mut connection, _)) = listener.accept().await else {
                    return;
                };
                let mut first = [0u8; 1];
                // A probe connects and leaves without sending anything.
                if !matches!(connection.read(&mut first).await, Ok(1)) {
                    continue;
                }
                let hang_up_now = match mode {
                    SinkMode::Record => false,
                    SinkMode::HoldUntilReleased => {
                        stopped(&mut released).await;
                        false
                    }
                    SinkMode::HangUpOnFirstJob => !hung_up,
                    SinkMode::HangUpAlways => true,
                };
                if hang_up_now {
                    hung_up = true;
                    hang_up(connection);
                    continue;
                }
                let mut data = first.to_vec();
                if connection.read_to_end(&mut data).await.is_ok() {
                    recorded.lock().unwrap().push(data);
                }
            }
        });
        Sink {
            address,
            jobs,
            release,
            task,
        }
    }

    /// Lets a `HoldUntilReleased` sink read its jobs.
    fn release(&self) {
        self.release.send_replace(true);
    }

    /// The jobs recorded once there are `count` of them (or after ten seconds).
    async fn wait_for_jobs(&self, count: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.jobs().len() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.jobs()
    }

    fn uri(&self) -> String {
        format!("socket://127.0.0.1:{}", self.address.port())
    }

    fn jobs(&self) -> Vec<Vec<u8>> {
        self.jobs.lock().unwrap().clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn pool_fails_over_to_the_healthy_member() {
    let broken = Sink::start(SinkMode::HangUpAlways).await;
    let out = tempfile::tempdir().unwrap();
    let mut harness = Harness::new(config(
        &[
            ("broken", broken.uri()),
            ("healthy", format!("file://{}", out.path().display())),
        ],
        &[("office", &["broken", "healthy"])],
    ));
    harness.start();
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(
            harness
                .submit("office", 50, format!("job {n}").as_bytes())
                .await
                .id,
        );
    }
    for &id in &ids {
        let job = harness.wait_for_state(id, JobState::Completed).await;
        assert_eq!(job.printer.as_deref(), Some("healthy"), "{job:?}");
        let printed = std::fs::read(out.path().join(format!("{id}-1.txt"))).unwrap();
        assert!(printed.starts_with(b"job "));
    }
    assert!(broken.jobs().is_empty());
    let metrics = &harness.app.metrics;
    assert_eq!(metrics.printer_up.with_label_values(&["healthy"]).get(), 1);
    assert_eq!(
        metrics
            .jobs_finished
            .with_label_values(&["office", "completed"])
            .get(),
        6
    );
    harness.stop().await;
}

#[tokio::test]
async fn jobs_print_by_priority_then_in_arrival_order() {
    let sink = Sink::start(SinkMode::Record).await;
    let mut harness = Harness::new(config(&[("laser", sink.uri())], &[("office", &["laser"])]));
    // Everything is queued before the dispatcher starts, so only the order can differ.
    let queued = [("a", 50), ("b", 50), ("c", 90), ("d", 10), ("e", 90)];
    let mut ids = Vec::new();
    for (label, priority) in queued {
        ids.push(
            harness
                .submit("office", priority, label.as_bytes())
                .await
                .id,
        );
    }
    harness.start();
    for &id in &ids {
        harness.wait_for_state(id, JobState::Completed).await;
    }
    let order: Vec<Vec<u8>> = sink.jobs();
    assert_eq!(
        order,
        [b"c", b"e", b"a", b"b", b"d"].map(|label| label.to_vec())
    );
    harness.stop().await;
}

#[tokio::test]
async fn a_hang_up_mid_job_is_retried_not_lost() {
    let sink = Sink::start(SinkMode::HangUpOnFirstJob).await;
    let mut harness = Harness::new(config(&[("laser", sink.uri())], &[("office", &["laser"])]));
    harness.start();
    let document: Vec<u8> = (0..200_000u32).map(|n| (n % 253) as u8).collect();
    let job = harness.submit("office", 50, &document).await;
    let job = harness.wait_for_state(job.id, JobState::Completed).await;
    assert_eq!(job.attempts, 2, "{job:?}");
    assert_eq!(sink.jobs(), vec![document]);
    assert_eq!(
        harness
            .app
            .metrics
            .dispatch_retries
            .with_label_values(&["laser"])
            .get(),
        1
    );
    harness.stop().await;
}

#[tokio::test]
async fn canceling_a_printing_job_abandons_the_transmission() {
    let printer = Sink::start(SinkMode::HoldUntilReleased).await;
    let mut harness = Harness::new(config(
        &[("laser", printer.uri())],
        &[("office", &["laser"])],
    ));
    harness.start();
    let size = 64 << 20;
    let job = harness.submit("office", 50, &vec![b'x'; size]).await;
    harness.wait_for_state(job.id, JobState::Processing).await;
    // Give the transmission time to fill the socket buffers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    harness
        .app
        .store
        .apply(job.id, UserAction::Cancel)
        .await
        .unwrap();
    harness.app.dispatch.cancel(job.id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    printer.release();
    let received = printer.wait_for_jobs(1).await;
    assert_eq!(received.len(), 1, "the worker closed the connection");
    assert!(
        received[0].len() < size,
        "only part of the job went out ({} bytes)",
        received[0].len()
    );
    let job = harness.app.store.job(job.id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Canceled);
    harness.stop().await;
}

#[tokio::test]
async fn a_job_claimed_while_another_is_sent_and_canceled_meanwhile_is_never_sent() {
    let printer = Sink::start(SinkMode::HoldUntilReleased).await;
    let mut harness = Harness::new(config(
        &[("laser", printer.uri())],
        &[("office", &["laser"])],
    ));
    harness.start();
    let first = harness.submit("office", 50, &vec![b'1'; 4 << 20]).await;
    let second = harness.submit("office", 50, b"second job").await;
    harness.wait_for_state(first.id, JobState::Processing).await;
    // Claimed (and read) while the first one is on its way.
    harness
        .wait_for_state(second.id, JobState::Processing)
        .await;
    harness
        .app
        .store
        .apply(second.id, UserAction::Cancel)
        .await
        .unwrap();
    harness.app.dispatch.cancel(second.id);
    tokio::time::sleep(Duration::from_millis(100)).await;
    printer.release();
    harness.wait_for_state(first.id, JobState::Completed).await;
    // Room for a wrongly sent second job to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = printer.jobs();
    assert_eq!(received.len(), 1, "only the first job reached the printer");
    assert!(received[0].iter().all(|byte| *byte == b'1'));
    let second = harness.app.store.job(second.id).await.unwrap().unwrap();
    assert_eq!(second.state, JobState::Canceled);
    harness.stop().await;
}

#[tokio::test]
async fn workers_follow_configuration_changes() {
    let out = tempfile::tempdir().unwrap();
    let mut harness = Harness::new(config(&[], &[]));
    harness.start();
    let job = harness.submit("office", 50, b"waiting for a printer").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        harness.app.store.job(job.id).await.unwrap().unwrap().state,
        JobState::Pending
    );
    harness
        .config
        .send(Arc::new(config(
            &[("demo", format!("file://{}", out.path().display()))],
            &[("office", &["demo"])],
        )))
        .unwrap();
    let job = harness.wait_for_state(job.id, JobState::Completed).await;
    assert_eq!(job.printer.as_deref(), Some("demo"));
    assert_eq!(
        std::fs::read(out.path().join(format!("{}-1.txt", job.id))).unwrap(),
        b"waiting for a printer"
    );
    harness.stop().await;
}

#[tokio::test]
async fn a_queue_the_lpd_server_refuses_is_retried_not_aborted() {
    // An LPD server that refuses the queue: a configuration problem that an operator can
    // fix, so the job waits instead of being thrown away.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let refuser = tokio::spawn(async move {
        loop {
            let (mut connection, _) = listener.accept().await.unwrap();
            let mut command = [0u8; 64];
            if matches!(connection.read(&mut command).await, Ok(n) if n > 0) {
                use tokio::io::AsyncWriteExt;
                let _ = connection.write_all(&[1]).await;
            }
        }
    });
    let mut harness = Harness::new(config(
        &[("lpd", format!("lpd://127.0.0.1:{port}/missing"))],
        &[("office", &["lpd"])],
    ));
    harness.start();
    let job = harness.submit("office", 50, b"never printed").await;
    let job = harness
        .wait_for(job.id, |job| {
            job.state.is_terminal() || (job.attempts >= 2 && job.state == JobState::Pending)
        })
        .await;
    assert_eq!(job.state, JobState::Pending, "{job:?}");
    assert!(job.message.is_some(), "the job says why it waits: {job:?}");
    refuser.abort();
    harness.stop().await;
}

#[tokio::test]
async fn a_job_the_printer_refuses_is_aborted() {
    let printer = EvePrinter::start();
    let mut harness = Harness::new(config(
        &[("eve", format!("ipp://127.0.0.1:{}/ipp/print", printer.port))],
        &[("office", &["eve"])],
    ));
    harness.start();
    let job = harness
        .app
        .store
        .create_job(NewJob {
            queue: "office".into(),
            owner: "alice".into(),
            name: "unprintable".into(),
            originating_host: None,
            priority: 50,
            held: false,
            ticket: JobTicket::default(),
            document: Some(NewDocument {
                format: "application/x-printfleet-unknown".into(),
                name: None,
                size: 2,
                body: DocumentBody::Inline(Bytes::from_static(b"??")),
            }),
            documents_complete: true,
            admission: None,
        })
        .await
        .unwrap();
    harness.app.dispatch.wake();
    let job = harness
        .wait_for(job.id, |job| job.state.is_terminal())
        .await;
    assert_eq!(job.state, JobState::Aborted, "{job:?}");
    assert_eq!(job.attempts, 1);
    harness.stop().await;
}

#[tokio::test]
async fn a_job_whose_document_is_gone_is_aborted() {
    let out = tempfile::tempdir().unwrap();
    let mut harness = Harness::new(config(
        &[("demo", format!("file://{}", out.path().display()))],
        &[("office", &["demo"])],
    ));
    let big = vec![b'y'; 100_000];
    let job = harness.submit("office", 50, &big).await;
    let key = job.documents[0].key.clone().expect("a stored document");
    harness.app.documents.delete(&key).await.unwrap();
    harness.start();
    let job = harness
        .wait_for(job.id, |job| job.state.is_terminal())
        .await;
    assert_eq!(job.state, JobState::Aborted, "{job:?}");
    assert_eq!(
        harness
            .app
            .metrics
            .jobs_finished
            .with_label_values(&["office", "aborted"])
            .get(),
        1
    );
    harness.stop().await;
}

#[tokio::test]
async fn retention_purges_finished_jobs_and_their_documents() {
    let out = tempfile::tempdir().unwrap();
    let mut printers_config = config(
        &[("demo", format!("file://{}", out.path().display()))],
        &[("office", &["demo"])],
    );
    if let Some(queue) = printers_config.queues.get_mut("office") {
        queue.retention.max_jobs = Some(0);
    }
    let mut settings = fast_settings();
    settings.retention_interval = Duration::from_millis(100);
    let mut harness = Harness::with_settings(printers_config, settings);
    harness.start();
    let job = harness.submit("office", 50, &vec![b'z'; 100_000]).await;
    let key = job.documents[0].key.clone().expect("a stored document");
    // The purge removes the row first and the document right after, so a
    // look between the two sees the row gone and the document still there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while harness.app.store.job(job.id).await.unwrap().is_some()
        || harness.app.documents.open(&key).await.is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job or its document was never purged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(std::fs::read(out.path().join(format!("{}-1.txt", job.id))).is_ok());
    assert!(harness.dir.path().exists());
    harness.stop().await;
}

#[test]
fn retention_defaults_to_a_week_and_a_thousand_jobs() {
    let now = 1_000_000_000;
    assert_eq!(
        retention_limits(&Retention::default(), now),
        (now - 7 * 24 * 3600, 1000)
    );
    let custom = Retention {
        history_seconds: Some(60),
        max_jobs: Some(5),
    };
    assert_eq!(retention_limits(&custom, now), (now - 60, 5));
}

#[tokio::test]
async fn a_job_left_open_is_closed_and_printed_after_the_time_out() {
    let out = tempfile::tempdir().unwrap();
    let printers = config(
        &[("demo", format!("file://{}", out.path().display()))],
        &[("office", &["demo"])],
    );
    let mut settings = fast_settings();
    settings.retention_interval = Duration::from_millis(100);
    settings.multiple_operation_timeout = Duration::from_millis(500);
    let mut harness = Harness::with_settings(printers, settings);
    harness.start();
    let job = harness
        .submit_with("office", 50, b"first and only document\n", false)
        .await;
    assert!(!job.documents_complete);
    let done = harness
        .wait_for(job.id, |job| job.state == JobState::Completed)
        .await;
    assert!(done.documents_complete, "closed by the time-out");
    assert_eq!(
        std::fs::read(out.path().join(format!("{}-1.txt", job.id))).unwrap(),
        b"first and only document\n"
    );
    harness.stop().await;
}

#[test]
fn open_jobs_time_out_only_without_new_documents() {
    let timeout = Duration::from_secs(900);
    let start = Instant::now();
    let mut open = OpenJobs::default();
    assert!(
        open.idle_beyond(&[(1, 1), (2, 1)], start, timeout)
            .is_empty()
    );
    // Job 2 got a second document: its clock starts again.
    let later = start + Duration::from_secs(600);
    assert!(
        open.idle_beyond(&[(1, 1), (2, 2)], later, timeout)
            .is_empty()
    );
    let past_first = start + Duration::from_secs(901);
    assert_eq!(
        open.idle_beyond(&[(1, 1), (2, 2)], past_first, timeout),
        [1]
    );
    // A job that closed or finished is forgotten.
    assert!(open.idle_beyond(&[(2, 2)], past_first, timeout).is_empty());
    assert_eq!(open.idle_beyond(&[(2, 2)], later + timeout, timeout), [2]);
}

#[tokio::test]
async fn a_stop_mid_stream_leaves_no_job_processing_and_nothing_sent_unrecorded() {
    // The worker claims the next job while recording the last one's outcome; a stop that
    // comes in between must hand that job back, not strand or send it.
    for stop_after_ms in [2, 5, 10, 20, 30, 45, 60, 80] {
        let out = tempfile::tempdir().unwrap();
        let mut harness = Harness::new(config(
            &[("demo", format!("file://{}", out.path().display()))],
            &[("office", &["demo"])],
        ));
        let mut ids = Vec::new();
        for n in 0..300 {
            ids.push(
                harness
                    .submit("office", 50, format!("job {n}").as_bytes())
                    .await
                    .id,
            );
        }
        harness.start();
        tokio::time::sleep(Duration::from_millis(stop_after_ms)).await;
        let store = harness.app.store.clone();
        harness.stop().await;

        let mut completed = 0;
        for id in ids {
            let job = store.job(id).await.unwrap().unwrap();
            let printed = out.path().join(format!("{id}-1.txt")).exists();
            match job.state {
                JobState::Completed => {
                    assert!(printed, "job {id} completed without being printed");
                    completed += 1;
                }
                JobState::Pending => assert!(!printed, "job {id} printed but pending"),
                state => panic!("job {id} left {state:?} after {stop_after_ms} ms"),
            }
        }
        assert!(
            completed < 300,
            "the stop came before the end ({stop_after_ms} ms)"
        );
    }
}
