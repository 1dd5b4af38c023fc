//! Operations end to end through `serve_stream`, against a real SQLite store and document
//! directory in a temporary directory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;
use http_body_util::BodyExt;
use printfleet_crds::printer::PrinterCapabilities;
use printfleet_crds::queue::AuthenticationMode;
use printfleet_crds::{PrinterSpec, SecretKeyRef};
use tokio::sync::watch;

use super::*;
use crate::app::{App, Settings};
use crate::auth::Authenticator;
use crate::dispatch::DispatchHandle;
use crate::ipp::codec::{Header, decode};
use crate::job::{Claimer, JobState};
use crate::metrics::Metrics;
use crate::store::documents::LocalDocumentStore;
use crate::store::sqlite::SqliteJobStore;

const LOCAL: &str = "127.0.0.1:40000";
const REMOTE: &str = "192.0.2.7:40000";
const PDF: &[u8] = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n";

struct Harness {
    app: Arc<App>,
    _dir: tempfile::TempDir,
}

fn queue_spec(printer: &str) -> PrintQueueSpec {
    PrintQueueSpec {
        printers: vec![printer.to_string()],
        ..PrintQueueSpec::default()
    }
}

/// Queues `demo` (open), `color` (a color duplex printer) and `secure` (Basic auth,
/// user `alice` password `secret`, operator `alice`).
fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(secrets.join("users")).expect("secrets dir");
    let hash = bcrypt::hash("secret", 4).expect("bcrypt");
    std::fs::write(secrets.join("users/htpasswd"), format!("alice:{hash}\n")).expect("credentials");
    let mut config = Config::default();
    config.printers.insert(
        "plain".into(),
        PrinterSpec {
            uri: "file:///tmp/unused".into(),
            ..PrinterSpec::default()
        },
    );
    config.printers.insert(
        "fancy".into(),
        PrinterSpec {
            uri: "file:///tmp/unused".into(),
            capabilities: Some(PrinterCapabilities {
                color: true,
                duplex: true,
                ..PrinterCapabilities::default()
            }),
            ..PrinterSpec::default()
        },
    );
    config.queues.insert("demo".into(), queue_spec("plain"));
    config.queues.insert("color".into(), queue_spec("fancy"));
    let mut secure = queue_spec("plain");
    secure.access.authentication = AuthenticationMode::Basic;
    secure.access.credentials = Some(SecretKeyRef {
        name: "users".into(),
        key: "htpasswd".into(),
    });
    secure.access.operators = vec!["alice".into()];
    config.queues.insert("secure".into(), secure);
    let (_, config) = watch::channel(Arc::new(config));
    let store = SqliteJobStore::open(&dir.path().join("jobs.sqlite")).expect("sqlite store");
    let documents = LocalDocumentStore::open(dir.path().join("documents")).expect("documents");
    let app = App {
        settings: Settings {
            listen: LOCAL.parse().expect("address"),
            state_dir: dir.path().to_path_buf(),
            secrets_dir: secrets.clone(),
            max_document_bytes: 1 << 20,
            inline_document_bytes: 16,
            idle_timeout: Duration::from_secs(5),
            tls: false,
            shard: None,
        },
        config,
        store: Arc::new(store),
        documents: Arc::new(documents),
        dispatch: DispatchHandle::new(),
        metrics: Metrics::new(),
        auth: Authenticator::new(secrets),
        salt: Default::default(),
    };
    Harness {
        app: Arc::new(app),
        _dir: dir,
    }
}

/// An IPP request under construction.
struct Message {
    version: u16,
    operation: u16,
    request_id: i32,
    operation_attributes: Vec<IppAttribute>,
    job_attributes: Vec<IppAttribute>,
    data: Vec<u8>,
}

impl Message {
    /// A request with charset, language, `printer-uri` for `queue` and `user`.
    fn new(operation: u16, queue: &str, user: &str) -> Message {
        Message {
            version: 0x0200,
            operation,
            request_id: 9,
            operation_attributes: vec![
                codec::charset("attributes-charset", "utf-8"),
                codec::natural_language("attributes-natural-language", "en"),
                codec::uri("printer-uri", &format!("ipp://{LOCAL}/ipp/print/{queue}")),
                codec::name_attribute("requesting-user-name", user),
            ],
            job_attributes: Vec::new(),
            data: Vec::new(),
        }
    }

    fn op(mut self, attribute: IppAttribute) -> Message {
        self.operation_attributes.push(attribute);
        self
    }

    fn job(mut self, attribute: IppAttribute) -> Message {
        self.job_attributes.push(attribute);
        self
    }

    fn data(mut self, data: &[u8]) -> Message {
        self.data = data.to_vec();
        self
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend(self.version.to_be_bytes());
        bytes.extend(self.operation.to_be_bytes());
        bytes.extend(self.request_id.to_be_bytes());
        bytes.push(0x01);
        for attribute in &self.operation_attributes {
            bytes.extend(attribute.to_bytes());
        }
        if !self.job_attributes.is_empty() {
            bytes.push(0x02);
            for attribute in &self.job_attributes {
                bytes.extend(attribute.to_bytes());
            }
        }
        bytes.push(0x03);
        bytes.extend(&self.data);
        bytes
    }
}

/// What came back: the HTTP status and, for IPP answers, the decoded response.
struct Answer {
    http: http::StatusCode,
    www_authenticate: Option<String>,
    ipp: Option<Request>,
}

impl Answer {
    fn status(&self) -> u16 {
        self.ipp.as_ref().map_or(0, |r| r.header.operation)
    }

    fn groups(&self, tag: DelimiterTag) -> Vec<&ipp::attribute::IppAttributeGroup> {
        self.ipp
            .as_ref()
            .map(|r| r.groups.iter().filter(|g| g.tag() == tag).collect())
            .unwrap_or_default()
    }

    /// An attribute of the first group with `tag`.
    fn value(&self, tag: DelimiterTag, name: &str) -> Option<IppValue> {
        self.groups(tag)
            .first()
            .and_then(|g| g.get(name))
            .map(|a| a.value().clone())
    }

    fn job_id(&self) -> i32 {
        match self.value(DelimiterTag::JobAttributes, "job-id") {
            Some(IppValue::Integer(id)) => id,
            other => panic!("no job-id in the answer: {other:?}"),
        }
    }
}

async fn send_chunks(
    harness: &Harness,
    path: &str,
    peer: &str,
    authorization: Option<&str>,
    chunks: Vec<Vec<u8>>,
) -> Answer {
    let ctx = RequestContext {
        app: harness.app.clone(),
        path: path.to_string(),
        host: LOCAL.to_string(),
        tls: false,
        authorization: authorization.map(str::to_string),
        peer: peer.parse::<SocketAddr>().expect("peer address"),
    };
    let body = stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))));
    let response = crate::ipp::serve_stream(ctx, Box::pin(body)).await;
    let http = response.status();
    let www_authenticate = response
        .headers()
        .get(http::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let is_ipp = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/ipp");
    let body = match response.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    let ipp = is_ipp.then(|| decode(body).expect("responses decode"));
    Answer {
        http,
        www_authenticate,
        ipp,
    }
}

async fn send(harness: &Harness, message: &Message) -> Answer {
    send_chunks(
        harness,
        "/ipp/print/demo",
        LOCAL,
        None,
        vec![message.encode()],
    )
    .await
}

async fn send_as(
    harness: &Harness,
    path: &str,
    peer: &str,
    authorization: Option<&str>,
    message: &Message,
) -> Answer {
    send_chunks(harness, path, peer, authorization, vec![message.encode()]).await
}

const OK: u16 = 0x0000;
const OK_IGNORED: u16 = 0x0001;
const BAD_REQUEST: u16 = 0x0400;
const FORBIDDEN: u16 = 0x0401;
const NOT_AUTHORIZED: u16 = 0x0403;
const NOT_POSSIBLE: u16 = 0x0404;
const NOT_FOUND: u16 = 0x0406;
const TOO_LARGE: u16 = 0x0408;
const FORMAT_NOT_SUPPORTED: u16 = 0x040A;
const VALUES_NOT_SUPPORTED: u16 = 0x040B;
const OPERATION_NOT_SUPPORTED: u16 = 0x0501;
const VERSION_NOT_SUPPORTED: u16 = 0x0503;

async fn print_pdf(harness: &Harness, user: &str) -> i32 {
    let answer = send(
        harness,
        &Message::new(0x0002, "demo", user)
            .op(codec::name_attribute("job-name", "report"))
            .op(codec::mime("document-format", "application/octet-stream"))
            .data(PDF),
    )
    .await;
    assert_eq!(answer.status(), OK);
    answer.job_id()
}

/// Job `id` as the store holds it.
async fn stored_job(harness: &Harness, id: JobId) -> Job {
    harness
        .app
        .store
        .job(id)
        .await
        .expect("store")
        .expect("job")
}

/// Send-Document of `data` to job `id` as `user`, with `last-document` true when `last` and
/// without it otherwise.
fn send_document(id: JobId, user: &str, last: bool, data: &[u8]) -> Message {
    let message = Message::new(0x0006, "demo", user).op(codec::integer("job-id", id));
    let message = if last {
        message.op(codec::boolean("last-document", true))
    } else {
        message
    };
    message.data(data)
}

#[tokio::test]
async fn print_job_stores_the_job_with_its_detected_format() {
    let harness = harness();
    let id = print_pdf(&harness, "bob").await;
    let job = harness
        .app
        .store
        .job(id)
        .await
        .expect("store")
        .expect("job exists");
    assert_eq!(job.owner, "bob");
    assert_eq!(job.name, "report");
    assert_eq!(job.queue, "demo");
    assert_eq!(job.documents.len(), 1);
    assert_eq!(job.documents[0].format, "application/pdf");
    assert_eq!(job.documents[0].size, PDF.len() as u64);
    assert_eq!(
        harness
            .app
            .metrics
            .jobs_accepted
            .with_label_values(&["demo"])
            .get(),
        1
    );

    let attributes = send(
        &harness,
        &Message::new(0x0009, "demo", "bob").op(codec::integer("job-id", id)),
    )
    .await;
    assert_eq!(attributes.status(), OK);
    assert_eq!(
        attributes.value(DelimiterTag::JobAttributes, "job-originating-user-name"),
        Some(codec::name_value("bob"))
    );
    assert_eq!(
        attributes.value(DelimiterTag::JobAttributes, "job-uri"),
        Some(codec::uri_value(&format!("ipp://{LOCAL}/jobs/{id}")))
    );
}

#[tokio::test]
async fn every_request_gets_the_rfc_8011_checks() {
    let harness = harness();
    let mut zero_id = Message::new(0x000B, "demo", "bob");
    zero_id.request_id = 0;
    assert_eq!(send(&harness, &zero_id).await.status(), BAD_REQUEST);

    let mut old = Message::new(0x000B, "demo", "bob");
    old.version = 0x0000;
    assert_eq!(send(&harness, &old).await.status(), VERSION_NOT_SUPPORTED);

    let mut swapped = Message::new(0x000B, "demo", "bob");
    swapped.operation_attributes.swap(0, 1);
    assert_eq!(send(&harness, &swapped).await.status(), BAD_REQUEST);

    let mut no_uri = Message::new(0x000B, "demo", "bob");
    no_uri.operation_attributes.remove(2);
    assert_eq!(send(&harness, &no_uri).await.status(), BAD_REQUEST);

    assert_eq!(
        send(&harness, &Message::new(0x0030, "demo", "bob"))
            .await
            .status(),
        OPERATION_NOT_SUPPORTED
    );
    let unknown = send_as(
        &harness,
        "/",
        LOCAL,
        None,
        &Message::new(0x000B, "nope", "bob"),
    )
    .await;
    assert_eq!(unknown.status(), NOT_FOUND);
    // The request-id is echoed.
    assert_eq!(unknown.ipp.map(|r| r.header.request_id), Some(9));
}

#[tokio::test]
async fn malformed_bodies_get_bad_request_or_http_400() {
    let harness = harness();
    let mut truncated = Message::new(0x000B, "demo", "bob").encode();
    truncated.truncate(truncated.len() - 5);
    let answer = send_chunks(&harness, "/ipp/print/demo", LOCAL, None, vec![truncated]).await;
    assert_eq!(answer.status(), BAD_REQUEST);

    let answer = send_chunks(
        &harness,
        "/ipp/print/demo",
        LOCAL,
        None,
        vec![b"GET".to_vec()],
    )
    .await;
    assert_eq!(answer.http, http::StatusCode::BAD_REQUEST);
    assert!(answer.ipp.is_none());

    // Attributes beyond 1 MiB, sent in many small chunks.
    let mut huge = Message::new(0x000B, "demo", "bob").encode();
    huge.pop();
    let filler = codec::text("printer-info", &"x".repeat(1000)).to_bytes();
    let chunks: Vec<Vec<u8>> = std::iter::once(huge)
        .chain(std::iter::repeat_n(filler.to_vec(), 1100))
        .collect();
    let answer = send_chunks(&harness, "/ipp/print/demo", LOCAL, None, chunks).await;
    assert_eq!(answer.status(), TOO_LARGE);
}

#[tokio::test]
async fn the_request_is_read_whatever_the_chunking() {
    let harness = harness();
    let bytes = Message::new(0x0002, "demo", "bob").data(PDF).encode();
    let chunks: Vec<Vec<u8>> = bytes.chunks(3).map(<[u8]>::to_vec).collect();
    let answer = send_chunks(&harness, "/ipp/print/demo", LOCAL, None, chunks).await;
    assert_eq!(answer.status(), OK);
    let job = stored_job(&harness, answer.job_id()).await;
    assert_eq!(job.documents[0].size, PDF.len() as u64);
}

#[tokio::test]
async fn unsupported_attributes_are_ignored_or_rejected_with_fidelity() {
    let harness = harness();
    let lenient = send(
        &harness,
        &Message::new(0x0002, "demo", "bob")
            .job(codec::keyword("sides", "two-sided-long-edge"))
            .data(PDF),
    )
    .await;
    assert_eq!(lenient.status(), OK_IGNORED);
    assert!(
        lenient
            .value(DelimiterTag::UnsupportedAttributes, "sides")
            .is_some()
    );
    let strict = send(
        &harness,
        &Message::new(0x0004, "demo", "bob")
            .op(codec::boolean("ipp-attribute-fidelity", true))
            .job(codec::keyword("sides", "two-sided-long-edge")),
    )
    .await;
    assert_eq!(strict.status(), VALUES_NOT_SUPPORTED);
    // The duplex queue takes it.
    let duplex = send_as(
        &harness,
        "/printers/color",
        LOCAL,
        None,
        &Message::new(0x0004, "color", "bob")
            .op(codec::boolean("ipp-attribute-fidelity", true))
            .job(codec::keyword("sides", "two-sided-long-edge")),
    )
    .await;
    assert_eq!(duplex.status(), OK);
    let format = send(
        &harness,
        &Message::new(0x0002, "demo", "bob")
            .op(codec::mime("document-format", "application/x-nope"))
            .data(PDF),
    )
    .await;
    assert_eq!(format.status(), FORMAT_NOT_SUPPORTED);
}

#[tokio::test]
async fn create_job_then_send_document_completes_the_job() {
    let harness = harness();
    let created = send(&harness, &Message::new(0x0005, "demo", "bob")).await;
    assert_eq!(created.status(), OK);
    let id = created.job_id();
    let missing_last = send(&harness, &send_document(id, "bob", false, b"hello\n")).await;
    assert_eq!(missing_last.status(), BAD_REQUEST);
    let stranger = send(&harness, &send_document(id, "eve", true, b"hello\n")).await;
    assert_eq!(stranger.status(), NOT_AUTHORIZED);
    let sent = send(&harness, &send_document(id, "bob", true, b"hello, world\n")).await;
    assert_eq!(sent.status(), OK);
    let job = stored_job(&harness, id).await;
    assert!(job.documents_complete);
    assert_eq!(job.documents[0].format, "text/plain");
    let again = send(&harness, &send_document(id, "bob", true, b"more")).await;
    assert_eq!(again.status(), NOT_POSSIBLE);
}

#[tokio::test]
async fn close_job_ends_a_job_without_a_document() {
    let harness = harness();
    let id = send(&harness, &Message::new(0x0005, "demo", "bob"))
        .await
        .job_id();
    let closed = send(
        &harness,
        &Message::new(0x003B, "demo", "bob").op(codec::integer("job-id", id)),
    )
    .await;
    assert_eq!(closed.status(), OK);
    let job = stored_job(&harness, id).await;
    assert!(job.documents_complete);
}

#[tokio::test]
async fn only_the_owner_cancels_holds_and_releases() {
    let harness = harness();
    let id = print_pdf(&harness, "bob").await;
    let by_job_id = |user: &str, operation: u16| {
        Message::new(operation, "demo", user).op(codec::integer("job-id", id))
    };
    assert_eq!(
        send(&harness, &by_job_id("eve", 0x0008)).await.status(),
        NOT_AUTHORIZED
    );
    assert_eq!(
        send(&harness, &by_job_id("eve", 0x0009)).await.status(),
        NOT_AUTHORIZED
    );
    assert_eq!(send(&harness, &by_job_id("bob", 0x000C)).await.status(), OK);
    let held = stored_job(&harness, id).await;
    assert_eq!(held.state, JobState::PendingHeld);
    assert_eq!(send(&harness, &by_job_id("bob", 0x000D)).await.status(), OK);
    // Cancel through the CUPS path and job-uri, as `cancel -h` does.
    let mut cancel = Message::new(0x0008, "demo", "bob");
    cancel.operation_attributes[2] = codec::uri("job-uri", &format!("ipp://{LOCAL}/jobs/{id}"));
    assert_eq!(
        send_as(&harness, &format!("/jobs/{id}"), LOCAL, None, &cancel)
            .await
            .status(),
        OK
    );
    let canceled = stored_job(&harness, id).await;
    assert_eq!(canceled.state, JobState::Canceled);
    assert_eq!(
        send_as(&harness, "/jobs", LOCAL, None, &cancel)
            .await
            .status(),
        NOT_POSSIBLE
    );
    let purge = by_job_id("bob", 0x0008).op(codec::boolean("purge-job", true));
    assert_eq!(send(&harness, &purge).await.status(), OK);
}

#[tokio::test]
async fn hold_until_creates_held_jobs() {
    let harness = harness();
    let answer = send(
        &harness,
        &Message::new(0x0002, "demo", "bob")
            .job(codec::keyword("job-hold-until", "indefinite"))
            .data(PDF),
    )
    .await;
    assert_eq!(answer.status(), OK);
    assert_eq!(
        answer.value(DelimiterTag::JobAttributes, "job-state"),
        Some(IppValue::Enum(JobState::PendingHeld.as_i32()))
    );
}

#[tokio::test]
async fn get_jobs_filters_and_hides_other_users_job_names() {
    let harness = harness();
    let bobs = print_pdf(&harness, "bob").await;
    let eves = print_pdf(&harness, "eve").await;
    let list = |user: &str| {
        Message::new(0x000A, "demo", user).op(codec::keywords(
            "requested-attributes",
            ["job-id", "job-name", "job-state"],
        ))
    };
    let answer = send(&harness, &list("bob")).await;
    assert_eq!(answer.status(), OK);
    let groups = answer.groups(DelimiterTag::JobAttributes);
    assert_eq!(groups.len(), 2);
    for group in groups {
        let id = group.get("job-id").map(|a| a.value().clone());
        let named = group.get("job-name").is_some();
        if id == Some(IppValue::Integer(bobs)) {
            assert!(named, "bob sees his own job's name");
        } else {
            assert_eq!(id, Some(IppValue::Integer(eves)));
            assert!(!named, "bob does not see eve's job name");
        }
    }
    let mine = send(&harness, &list("bob").op(codec::boolean("my-jobs", true))).await;
    assert_eq!(mine.groups(DelimiterTag::JobAttributes).len(), 1);
    let limited = send(&harness, &list("bob").op(codec::integer("limit", 1))).await;
    assert_eq!(limited.groups(DelimiterTag::JobAttributes).len(), 1);
    let completed = send(
        &harness,
        &list("bob").op(codec::keyword("which-jobs", "completed")),
    )
    .await;
    assert_eq!(completed.groups(DelimiterTag::JobAttributes).len(), 0);
    let bad = send(
        &harness,
        &list("bob").op(codec::keyword("which-jobs", "fetchable")),
    )
    .await;
    assert_eq!(bad.status(), VALUES_NOT_SUPPORTED);
    // `lpstat -h` asks the server for every queue's jobs.
    let mut everywhere = list("bob");
    everywhere.operation_attributes[2] = codec::uri("printer-uri", &format!("ipp://{LOCAL}/"));
    let all = send_as(&harness, "/", LOCAL, None, &everywhere).await;
    assert_eq!(all.groups(DelimiterTag::JobAttributes).len(), 2);
}

#[tokio::test]
async fn cancel_my_jobs_cancels_only_the_requesters_jobs() {
    let harness = harness();
    let bobs = print_pdf(&harness, "bob").await;
    let eves = print_pdf(&harness, "eve").await;
    let answer = send(&harness, &Message::new(0x0039, "demo", "bob")).await;
    assert_eq!(answer.status(), OK);
    assert_eq!(stored_job(&harness, bobs).await.state, JobState::Canceled);
    assert_eq!(stored_job(&harness, eves).await.state, JobState::Pending);
}

#[tokio::test]
async fn cancel_jobs_cancels_everything_only_for_an_operator() {
    let harness = harness();
    let bobs = print_pdf(&harness, "bob").await;
    let eves = print_pdf(&harness, "eve").await;
    // From another host, with no operators configured: only bob's own job.
    let remote = send_as(
        &harness,
        "/ipp/print/demo",
        REMOTE,
        None,
        &Message::new(0x0038, "demo", "bob"),
    )
    .await;
    assert_eq!(remote.status(), OK);
    assert_eq!(stored_job(&harness, bobs).await.state, JobState::Canceled);
    assert_eq!(stored_job(&harness, eves).await.state, JobState::Pending);
    // The local administrator cancels everyone's.
    assert_eq!(
        send(&harness, &Message::new(0x0038, "demo", "root"))
            .await
            .status(),
        OK
    );
    assert_eq!(stored_job(&harness, eves).await.state, JobState::Canceled);
}

async fn printer_state(harness: &Harness) -> Option<IppValue> {
    let message = Message::new(0x000B, "demo", "bob").op(codec::keywords(
        "requested-attributes",
        ["printer-state", "printer-state-reasons"],
    ));
    send(harness, &message)
        .await
        .value(DelimiterTag::PrinterAttributes, "printer-state")
}

#[tokio::test]
async fn printer_attributes_follow_pause_and_resume() {
    let harness = harness();
    assert_eq!(printer_state(&harness).await, Some(IppValue::Enum(3)));
    let pause = Message::new(0x0010, "demo", "bob");
    let remote = send_as(&harness, "/ipp/print/demo", REMOTE, None, &pause).await;
    assert_eq!(remote.status(), NOT_AUTHORIZED);
    assert_eq!(send(&harness, &pause).await.status(), OK);
    assert_eq!(printer_state(&harness).await, Some(IppValue::Enum(5)));
    assert_eq!(
        send(&harness, &Message::new(0x0011, "demo", "bob"))
            .await
            .status(),
        OK
    );
    assert_eq!(printer_state(&harness).await, Some(IppValue::Enum(3)));
}

#[tokio::test]
async fn printer_status_counts_the_queues_unfinished_jobs() {
    let harness = harness();
    let queued = async || {
        let message = Message::new(0x000B, "demo", "bob").op(codec::keywords(
            "requested-attributes",
            ["queued-job-count"],
        ));
        send(&harness, &message)
            .await
            .value(DelimiterTag::PrinterAttributes, "queued-job-count")
    };
    assert_eq!(queued().await, Some(IppValue::Integer(0)));
    print_pdf(&harness, "bob").await;
    print_pdf(&harness, "alice").await;
    assert_eq!(queued().await, Some(IppValue::Integer(2)));
    assert_eq!(printer_state(&harness).await, Some(IppValue::Enum(3)));
    // One of them goes to the printer: still queued, and the printer is processing.
    let store = &harness.app.store;
    let me = Claimer {
        id: "spooler-0".into(),
        epoch: store.next_epoch("spooler-0").await.expect("epoch"),
        shard: None,
    };
    let claimed = store
        .claim_next(&["demo".to_string()], "plain", &me)
        .await
        .expect("claim");
    assert!(claimed.is_some(), "nothing to claim");
    assert_eq!(queued().await, Some(IppValue::Integer(2)));
    assert_eq!(printer_state(&harness).await, Some(IppValue::Enum(4)));
}

#[tokio::test]
async fn printer_attributes_reflect_the_queue() {
    let harness = harness();
    let all = send(&harness, &Message::new(0x000B, "demo", "bob")).await;
    assert_eq!(all.status(), OK);
    assert_eq!(
        all.value(DelimiterTag::PrinterAttributes, "printer-name"),
        Some(codec::name_value("demo"))
    );
    assert_eq!(
        all.value(DelimiterTag::PrinterAttributes, "color-supported"),
        Some(IppValue::Boolean(false))
    );
    assert_eq!(
        all.value(
            DelimiterTag::PrinterAttributes,
            "uri-authentication-supported"
        ),
        Some(codec::keyword_value("requesting-user-name"))
    );
    let color = send_as(
        &harness,
        "/printers/color",
        LOCAL,
        None,
        &Message::new(0x000B, "color", "bob"),
    )
    .await;
    assert_eq!(
        color.value(DelimiterTag::PrinterAttributes, "color-supported"),
        Some(IppValue::Boolean(true))
    );
    let secure = send_as(
        &harness,
        "/ipp/print/secure",
        LOCAL,
        None,
        &Message::new(0x000B, "secure", "bob"),
    )
    .await;
    assert_eq!(
        secure.value(
            DelimiterTag::PrinterAttributes,
            "uri-authentication-supported"
        ),
        Some(codec::keyword_value("basic"))
    );
}

#[tokio::test]
async fn cups_operations_list_queues() {
    let harness = harness();
    let mut printers = Message::new(0x4002, "demo", "bob")
        .op(codec::keywords("requested-attributes", ["printer-name"]));
    printers.operation_attributes.remove(2);
    let answer = send_as(&harness, "/", LOCAL, None, &printers).await;
    assert_eq!(answer.status(), OK);
    let names: Vec<IppValue> = answer
        .groups(DelimiterTag::PrinterAttributes)
        .iter()
        .filter_map(|g| g.get("printer-name").map(|a| a.value().clone()))
        .collect();
    assert_eq!(
        names,
        ["color", "demo", "secure"].map(codec::name_value).to_vec()
    );
    let mut default = Message::new(0x4001, "demo", "bob");
    default.operation_attributes.remove(2);
    let answer = send_as(&harness, "/", LOCAL, None, &default).await;
    assert_eq!(
        answer.value(DelimiterTag::PrinterAttributes, "printer-name"),
        Some(codec::name_value("color"))
    );
}

#[tokio::test]
async fn authenticated_queues_challenge_and_check_access() {
    let harness = harness();
    let print = Message::new(0x0002, "secure", "mallory").data(PDF);
    let challenge = send_as(&harness, "/ipp/print/secure", LOCAL, None, &print).await;
    assert_eq!(challenge.http, http::StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge.www_authenticate.as_deref(),
        Some("Basic realm=\"printfleet\"")
    );
    let wrong = send_as(
        &harness,
        "/ipp/print/secure",
        LOCAL,
        Some("Basic YWxpY2U6d3Jvbmc="),
        &print,
    )
    .await;
    assert_eq!(wrong.http, http::StatusCode::UNAUTHORIZED);
    // alice:secret; the authenticated name wins over requesting-user-name.
    let accepted = send_as(
        &harness,
        "/ipp/print/secure",
        REMOTE,
        Some("Basic YWxpY2U6c2VjcmV0"),
        &print,
    )
    .await;
    assert_eq!(accepted.status(), OK);
    let job = stored_job(&harness, accepted.job_id()).await;
    assert_eq!(job.owner, "alice");
    // alice is the queue's operator: she may pause it from anywhere.
    let pause = Message::new(0x0010, "secure", "alice");
    let paused = send_as(
        &harness,
        "/ipp/print/secure",
        REMOTE,
        Some("Basic YWxpY2U6c2VjcmV0"),
        &pause,
    )
    .await;
    assert_eq!(paused.status(), OK);
}

#[tokio::test]
async fn access_lists_forbid_other_users() {
    let harness = harness();
    let mut config = (*harness.app.config()).clone();
    if let Some(queue) = config.queues.get_mut("demo") {
        queue.access.allowed_users = vec!["bob".into()];
    }
    let (_, receiver) = watch::channel(Arc::new(config));
    let app = App {
        settings: harness.app.settings.clone(),
        config: receiver,
        store: harness.app.store.clone(),
        documents: harness.app.documents.clone(),
        dispatch: DispatchHandle::new(),
        metrics: Metrics::new(),
        auth: Authenticator::new(harness.app.settings.secrets_dir.clone()),
        salt: Default::default(),
    };
    let restricted = Harness {
        app: Arc::new(app),
        _dir: tempfile::tempdir().expect("temp dir"),
    };
    let eve = send(&restricted, &Message::new(0x0002, "demo", "eve").data(PDF)).await;
    assert_eq!(eve.status(), FORBIDDEN);
    let bob = send(&restricted, &Message::new(0x0002, "demo", "bob").data(PDF)).await;
    assert_eq!(bob.status(), OK);
}

#[test]
fn paths_and_uris_address_queues_jobs_and_the_server() {
    assert_eq!(
        parse_path("/ipp/print/demo"),
        Some(Address::Queue("demo".into()))
    );
    assert_eq!(
        parse_path("/printers/demo/"),
        Some(Address::Queue("demo".into()))
    );
    assert_eq!(parse_path("/"), Some(Address::Server));
    assert_eq!(parse_path("/jobs"), Some(Address::Server));
    assert_eq!(parse_path("/jobs/12"), Some(Address::Job(12)));
    assert_eq!(parse_path("/jobs/0"), None);
    assert_eq!(parse_path("/admin/"), Some(Address::Server));
    assert_eq!(parse_path("/cgi-bin/x"), None);
    assert_eq!(uri_path("ipp://h:631/printers/x"), Some("/printers/x"));
    assert_eq!(uri_path("ipps://h"), Some("/"));
    assert_eq!(uri_path("ftp://h/x"), None);
    assert!(Header::read(&[1, 1, 0, 2, 0, 0, 0, 1]).is_some());
}
