//! Documents in S3-compatible object storage, shared by every spooler pod of a cluster.
//!
//! A document is written as one `PUT` when it is small, or as a multipart upload once it
//! outgrows one part; either way nothing is visible under its key until `commit`, and
//! `commit` returns only once the store acknowledged the whole object (S3 acknowledges a
//! `PUT` or `CompleteMultipartUpload` once the object is durable).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use futures_util::stream::BoxStream;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};

use super::documents::{DocumentStore, DocumentWriter, validate_key};

/// Where the documents go and how to reach the store.
#[derive(Clone, Debug)]
pub struct S3Settings {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// An S3-compatible endpoint (`http://minio.storage:9000`); `None` for AWS itself
    /// (or `AWS_ENDPOINT` from the environment). Requests use path-style addressing.
    pub endpoint: Option<String>,
    /// `None`: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    pub credentials: S3Credentials,
    /// Transient failures are retried for at most this long, then reported.
    pub retry_timeout: Duration,
    pub connect_timeout: Duration,
    /// Longest one request (one part of a document, at most) may take.
    pub request_timeout: Duration,
    /// Documents larger than this are uploaded in parts of this size (at least 5 MiB, as
    /// S3 requires of every part but the last).
    pub part_size: usize,
}

/// Where the access keys come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum S3Credentials {
    /// The environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// or what else the AWS SDKs read there (web identity, container and instance
    /// credentials).
    Environment,
    /// A mounted Kubernetes Secret: the files `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`
    /// and optionally `AWS_SESSION_TOKEN` in this directory.
    SecretDir(PathBuf),
}

/// Smallest part S3 accepts (but for the last one).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts of one document uploading at once.
const PARTS_IN_FLIGHT: usize = 2;

impl S3Settings {
    /// Settings for `url` with credentials from the environment and default limits.
    pub fn new(url: impl Into<String>) -> Self {
        S3Settings {
            url: url.into(),
            endpoint: None,
            region: None,
            credentials: S3Credentials::Environment,
            retry_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            part_size: 8 * 1024 * 1024,
        }
    }
}

/// Static access keys, as a mounted Secret holds them.
#[derive(Clone, PartialEq, Eq)]
struct AccessKeys {
    id: String,
    secret: String,
    token: Option<String>,
}

/// Read the access keys of a mounted Secret (trailing newlines, which `kubectl create
/// secret --from-file` keeps, are not part of a key).
fn read_secret_dir(dir: &Path) -> std::io::Result<AccessKeys> {
    let read = |name: &str| -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(text) => Ok(Some(text.trim_end_matches(['\r', '\n']).to_string())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(std::io::Error::new(
                error.kind(),
                format!("reading {}: {error}", dir.join(name).display()),
            )),
        }
    };
    let required = |name: &str| {
        read(name)?
            .filter(|value| !value.is_empty())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("the S3 credentials in {} lack {name}", dir.display()),
                )
            })
    };
    Ok(AccessKeys {
        id: required("AWS_ACCESS_KEY_ID")?,
        secret: required("AWS_SECRET_ACCESS_KEY")?,
        token: read("AWS_SESSION_TOKEN")?.filter(|token| !token.is_empty()),
    })
}

/// The bucket and key prefix of an `s3://bucket[/prefix]` URL.
fn parse_bucket_url(url: &str) -> std::io::Result<(String, Option<ObjectPath>)> {
    let invalid = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid object store URL {url:?}: {why}"),
        )
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| invalid("expected s3://bucket[/prefix]"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid("no bucket"));
    }
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        None
    } else {
        Some(ObjectPath::parse(prefix).map_err(|e| invalid(&e.to_string()))?)
    };
    Ok((bucket.to_string(), prefix))
}

/// Documents as objects in an S3-compatible bucket.
pub struct ObjectDocumentStore {
    store: Arc<dyn ObjectStore>,
    prefix: Option<ObjectPath>,
    part_size: usize,
}

impl ObjectDocumentStore {
    /// A store for `settings`. Nothing is sent yet: an unreachable store shows in the
    /// first request, as an I/O error.
    pub fn connect(settings: &S3Settings) -> std::io::Result<Self> {
        let (bucket, prefix) = parse_bucket_url(&settings.url)?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(RetryConfig {
                retry_timeout: settings.retry_timeout,
                max_retries: 5,
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(settings.connect_timeout)
                    .with_timeout(settings.request_timeout),
            );
        if let Some(endpoint) = &settings.endpoint {
            builder = builder
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        if let Some(region) = &settings.region {
            builder = builder.with_region(region);
        }
        if let S3Credentials::SecretDir(dir) = &settings.credentials {
            let keys = read_secret_dir(dir)?;
            builder = builder
                .with_access_key_id(keys.id)
                .with_secret_access_key(keys.secret);
            if let Some(token) = keys.token {
                builder = builder.with_token(token);
            }
        }
        let store = builder.build().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("object store settings: {e}"),
            )
        })?;
        Ok(Self::new(Arc::new(store), prefix, settings.part_size))
    }

    /// Documents in `store`, under `prefix`, uploaded in parts of `part_size` (raised to
    /// S3's minimum) once they outgrow one.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Option<ObjectPath>, part_size: usize) -> Self {
        ObjectDocumentStore {
            store,
            prefix,
            part_size: part_size.max(MIN_PART_SIZE),
        }
    }

    fn location(&self, key: &str) -> std::io::Result<ObjectPath> {
        // Valid keys are single path segments: nothing to escape, no way out of the prefix.
        validate_key(key)?;
        Ok(match &self.prefix {
            Some(prefix) => prefix.clone().join(key),
            None => ObjectPath::from(key),
        })
    }
}

#[async_trait]
impl DocumentStore for ObjectDocumentStore {
    async fn create(&self, key: &str) -> std::io::Result<Box<dyn DocumentWriter>> {
        Ok(Box::new(ObjectDocumentWriter {
            store: self.store.clone(),
            location: self.location(key)?,
            part_size: self.part_size,
            upload: Some(Upload::Buffered(BytesMut::new())),
            size: 0,
        }))
    }

    async fn open(&self, key: &str) -> std::io::Result<BoxStream<'static, std::io::Result<Bytes>>> {
        let object = self
            .store
            .get(&self.location(key)?)
            .await
            .map_err(std::io::Error::from)?;
        Ok(Box::pin(object.into_stream().map_err(std::io::Error::from)))
    }

    async fn delete(&self, key: &str) -> std::io::Result<()> {
        match self.store.delete(&self.location(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// How far a document's upload got.
enum Upload {
    /// Still smaller than one part: kept in memory, sent as one `PUT` at commit.
    Buffered(BytesMut),
    /// A multipart upload, parts sent as they fill.
    Multipart(WriteMultipart),
}

struct ObjectDocumentWriter {
    store: Arc<dyn ObjectStore>,
    location: ObjectPath,
    part_size: usize,
    /// `None` once committed or aborted.
    upload: Option<Upload>,
    size: u64,
}

fn finished() -> std::io::Error {
    std::io::Error::other("the document was already committed or aborted")
}

#[async_trait]
impl DocumentWriter for ObjectDocumentWriter {
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match self.upload.as_mut().ok_or_else(finished)? {
            Upload::Buffered(buffer) => {
                buffer.extend_from_slice(chunk);
                if buffer.len() >= self.part_size {
                    let first = buffer.split().freeze();
                    let upload = self
                        .store
                        .put_multipart(&self.location)
                        .await
                        .map_err(std::io::Error::from)?;
                    let mut parts = WriteMultipart::new_with_chunk_size(upload, self.part_size);
                    parts.put(first);
                    self.upload = Some(Upload::Multipart(parts));
                }
            }
            Upload::Multipart(parts) => {
                // Bounded memory: wait while enough parts are on their way.
                parts
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(std::io::Error::from)?;
                parts.write(chunk);
            }
        }
        self.size += chunk.len() as u64;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> std::io::Result<u64> {
        match self.upload.take().ok_or_else(finished)? {
            Upload::Buffered(buffer) => {
                self.store
                    .put(&self.location, PutPayload::from(buffer.freeze()))
                    .await
                    .map_err(std::io::Error::from)?;
            }
            Upload::Multipart(mut parts) => {
                // A part that failed leaves the upload to abort here; a failed completion
                // `finish` aborts itself.
                if let Err(error) = parts.wait_for_capacity(0).await {
                    abort_upload(parts, &self.location).await;
                    return Err(error.into());
                }
                parts.finish().await.map_err(std::io::Error::from)?;
            }
        }
        Ok(self.size)
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(Upload::Multipart(parts)) = self.upload.take() {
            abort_upload(parts, &self.location).await;
        }
    }
}

async fn abort_upload(parts: WriteMultipart, location: &ObjectPath) {
    if let Err(error) = parts.abort().await {
        // The bucket's lifecycle rule for incomplete uploads collects what is left.
        tracing::warn!(%error, %location, "cannot abort a multipart upload");
    }
}

impl Drop for ObjectDocumentWriter {
    fn drop(&mut self) {
        // An abandoned document (its request gone mid-body) leaves no upload behind.
        if let Some(Upload::Multipart(parts)) = self.upload.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let location = self.location.clone();
            runtime.spawn(async move { abort_upload(parts, &location).await });
        }
    }
}

#[cfg(test)]
mod tests;
