use std::io::ErrorKind;
use std::time::Instant;

use futures_util::StreamExt;
use tempfile::TempDir;

use super::*;
use printfleet_testservers::{MotoServer, free_port};

/// A bucket of its own on the moto server shared by this process's tests, reached with
/// credentials from a Secret-like directory.
struct Bucket {
    documents: ObjectDocumentStore,
    settings: S3Settings,
    _secret: TempDir,
    _server: Arc<MotoServer>,
}

fn secret_dir(token: Option<&str>) -> TempDir {
    let dir = tempfile::tempdir().expect("secret dir");
    std::fs::write(dir.path().join("AWS_ACCESS_KEY_ID"), "testing\n").expect("key id");
    std::fs::write(dir.path().join("AWS_SECRET_ACCESS_KEY"), "testing-secret\n").expect("secret");
    if let Some(token) = token {
        std::fs::write(dir.path().join("AWS_SESSION_TOKEN"), token).expect("token");
    }
    dir
}

impl Bucket {
    async fn new(prefix: &str) -> Bucket {
        let (server, bucket) = tokio::task::spawn_blocking(|| {
            let server = MotoServer::shared()?;
            let bucket = server.new_bucket()?;
            std::io::Result::Ok((server, bucket))
        })
        .await
        .expect("server task")
        .expect("a bucket on moto");
        let secret = secret_dir(None);
        let settings = S3Settings {
            endpoint: Some(server.endpoint()),
            region: Some("us-east-1".into()),
            credentials: S3Credentials::SecretDir(secret.path().to_path_buf()),
            part_size: MIN_PART_SIZE,
            ..S3Settings::new(format!("s3://{bucket}{prefix}"))
        };
        Bucket {
            documents: ObjectDocumentStore::connect(&settings).expect("connect"),
            settings,
            _secret: secret,
            _server: server,
        }
    }

    /// Every object in the bucket, whatever the prefix.
    async fn objects(&self) -> Vec<String> {
        let (bucket, _) = parse_bucket_url(&self.settings.url).expect("url");
        let whole = S3Settings {
            url: format!("s3://{bucket}"),
            ..self.settings.clone()
        };
        let store = ObjectDocumentStore::connect(&whole).expect("connect");
        let mut names: Vec<String> = store
            .store
            .list(None)
            .map(|meta| meta.expect("list").location.to_string())
            .collect()
            .await;
        names.sort();
        names
    }
}

async fn write_document(
    documents: &ObjectDocumentStore,
    key: &str,
    body: &[u8],
    chunk: usize,
) -> Box<dyn DocumentWriter> {
    let mut writer = documents.create(key).await.expect("create");
    for piece in body.chunks(chunk) {
        writer.write(piece).await.expect("write");
    }
    writer
}

async fn read_all(documents: &ObjectDocumentStore, key: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = documents.open(key).await?;
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk?);
    }
    Ok(body)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|n| (n % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_visible_only_after_commit() {
    let bucket = Bucket::new("").await;
    let body = pattern(150_000);
    let writer = write_document(&bucket.documents, "job-1.doc-1", &body, 10_000).await;
    assert!(
        matches!(bucket.documents.open("job-1.doc-1").await, Err(e) if e.kind() == ErrorKind::NotFound),
        "invisible before commit"
    );
    assert_eq!(writer.commit().await.expect("commit"), body.len() as u64);
    assert_eq!(bucket.objects().await, vec!["job-1.doc-1"]);
    assert_eq!(
        read_all(&bucket.documents, "job-1.doc-1")
            .await
            .expect("read"),
        body
    );

    let empty = bucket.documents.create("empty").await.expect("create");
    assert_eq!(empty.commit().await.expect("commit"), 0);
    assert!(
        read_all(&bucket.documents, "empty")
            .await
            .expect("read")
            .is_empty()
    );

    bucket
        .documents
        .delete("job-1.doc-1")
        .await
        .expect("delete");
    bucket
        .documents
        .delete("job-1.doc-1")
        .await
        .expect("deleting a missing document");
    assert_eq!(bucket.objects().await, vec!["empty"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_documents_upload_in_parts() {
    let bucket = Bucket::new("").await;
    // Three parts: two of 5 MiB and the rest.
    let body = pattern(12 * 1024 * 1024 + 123);
    let writer = write_document(&bucket.documents, "large", &body, 64 * 1024).await;
    assert!(
        matches!(bucket.documents.open("large").await, Err(e) if e.kind() == ErrorKind::NotFound),
        "invisible before commit"
    );
    assert_eq!(writer.commit().await.expect("commit"), body.len() as u64);
    let meta = bucket
        .documents
        .store
        .head(&ObjectPath::from("large"))
        .await
        .expect("head");
    assert_eq!(meta.size, body.len() as u64);
    // S3 gives a multipart object the ETag `"<md5 of the part md5s>-<parts>"`.
    let e_tag = meta.e_tag.expect("an ETag");
    assert!(e_tag.trim_matches('"').ends_with("-3"), "{e_tag}");
    let read = read_all(&bucket.documents, "large").await.expect("read");
    assert!(read == body, "the large document reads back unchanged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_abandon_leave_nothing() {
    let bucket = Bucket::new("").await;
    let body = pattern(6 * 1024 * 1024);
    let aborted = write_document(&bucket.documents, "aborted", &body, 1024 * 1024).await;
    aborted.abort().await;
    let small = write_document(&bucket.documents, "small", b"half a document", 4).await;
    small.abort().await;
    let abandoned = write_document(&bucket.documents, "abandoned", &body, 1024 * 1024).await;
    drop(abandoned);
    assert!(bucket.objects().await.is_empty());
    for key in ["aborted", "small", "abandoned"] {
        assert!(
            matches!(bucket.documents.open(key).await, Err(e) if e.kind() == ErrorKind::NotFound),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_keys_and_bad_keys() {
    let bucket = Bucket::new("").await;
    assert!(matches!(
        read_all(&bucket.documents, "never-written").await,
        Err(e) if e.kind() == ErrorKind::NotFound
    ));
    bucket
        .documents
        .delete("never-written")
        .await
        .expect("deleting a missing document");
    for key in ["", "..", "a/b", "../escape", "x.partial", "a b"] {
        let refused = |result: std::io::Result<()>| matches!(result, Err(e) if e.kind() == ErrorKind::InvalidInput);
        assert!(
            refused(bucket.documents.create(key).await.map(drop)),
            "create {key:?}"
        );
        assert!(
            refused(bucket.documents.open(key).await.map(drop)),
            "open {key:?}"
        );
        assert!(
            refused(bucket.documents.delete(key).await),
            "delete {key:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_live_under_the_url_prefix() {
    let bucket = Bucket::new("/spool/documents/").await;
    let writer = write_document(&bucket.documents, "job-7.doc-1", b"%PDF-1.7\n", 1024).await;
    writer.commit().await.expect("commit");
    assert_eq!(bucket.objects().await, vec!["spool/documents/job-7.doc-1"]);
    assert_eq!(
        read_all(&bucket.documents, "job-7.doc-1")
            .await
            .expect("read"),
        b"%PDF-1.7\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_is_an_io_error() {
    let port = free_port().expect("free port");
    let secret = secret_dir(Some("session"));
    let settings = S3Settings {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        credentials: S3Credentials::SecretDir(secret.path().to_path_buf()),
        retry_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        part_size: MIN_PART_SIZE,
        ..S3Settings::new("s3://nowhere")
    };
    let documents = ObjectDocumentStore::connect(&settings).expect("connect sends nothing");
    let started = Instant::now();
    let writer = write_document(&documents, "doc", b"bytes", 2).await;
    let committed = writer.commit().await;
    assert!(
        matches!(&committed, Err(e) if e.kind() != ErrorKind::NotFound),
        "{committed:?}"
    );
    let large = pattern(MIN_PART_SIZE + 1);
    let mut writer = documents.create("large").await.expect("create");
    let written = writer.write(&large).await;
    assert!(written.is_err(), "starting a multipart upload fails");
    writer.abort().await;
    assert!(matches!(
        documents.open("doc").await.map(drop),
        Err(e) if e.kind() != ErrorKind::NotFound
    ));
    assert!(documents.delete("doc").await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "errors come promptly"
    );
}

#[test]
fn bucket_urls() {
    let parse = |url: &str| {
        parse_bucket_url(url).map(|(bucket, prefix)| (bucket, prefix.map(|p| p.to_string())))
    };
    assert_eq!(parse("s3://docs").expect("bucket"), ("docs".into(), None));
    assert_eq!(parse("s3://docs/").expect("bucket"), ("docs".into(), None));
    assert_eq!(
        parse("s3://docs/a/b/").expect("prefix"),
        ("docs".into(), Some("a/b".into()))
    );
    for bad in [
        "docs",
        "https://docs",
        "s3://",
        "s3:///prefix",
        "s3://docs/a//b",
    ] {
        assert!(
            matches!(parse(bad), Err(e) if e.kind() == ErrorKind::InvalidInput),
            "{bad}"
        );
    }
}

#[test]
fn secret_dirs() {
    let dir = secret_dir(None);
    let keys = read_secret_dir(dir.path()).expect("keys");
    assert_eq!(
        (keys.id.as_str(), keys.secret.as_str(), keys.token),
        ("testing", "testing-secret", None)
    );
    let with_token = secret_dir(Some("t0ken\r\n"));
    assert_eq!(
        read_secret_dir(with_token.path())
            .expect("keys")
            .token
            .as_deref(),
        Some("t0ken")
    );
    std::fs::write(dir.path().join("AWS_SECRET_ACCESS_KEY"), "\n").expect("blank secret");
    let error = read_secret_dir(dir.path())
        .err()
        .expect("a blank secret is refused");
    assert_eq!(error.kind(), ErrorKind::InvalidInput);
    assert!(
        error.to_string().contains("AWS_SECRET_ACCESS_KEY"),
        "{error}"
    );
    let empty = tempfile::tempdir().expect("dir");
    assert!(read_secret_dir(empty.path()).is_err());
}

#[test]
fn parts_are_never_below_the_s3_minimum() {
    let store = Arc::new(object_store::memory::InMemory::new());
    assert_eq!(
        ObjectDocumentStore::new(store, None, 1024).part_size,
        MIN_PART_SIZE
    );
}
