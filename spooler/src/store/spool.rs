//! Receiving a document body: small ones stay in memory (committed inline with the job
//! row), larger ones stream to the `DocumentStore`, and slow or oversized bodies are cut off.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use super::documents::{DocumentStore, DocumentWriter};
use crate::job::DocumentBody;

/// How much of the start of a document is kept for format detection.
pub const HEAD_BYTES: usize = 4096;

/// Bounds on one document body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpoolLimits {
    /// A larger body is refused (IPP `client-error-request-entity-too-large`).
    pub max_bytes: u64,
    /// Bodies up to this size are returned inline instead of stored.
    pub inline_max: usize,
    /// Longest wait for the next piece of the body (slow-loris guard).
    pub idle_timeout: Duration,
}

/// A received document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpooledDocument {
    pub size: u64,
    pub body: DocumentBody,
    /// The first bytes (up to `HEAD_BYTES`), for format detection.
    pub head: Bytes,
}

/// Why a body could not be received. A document already started in the store is aborted.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the client sent nothing for too long")]
    Timeout,
    #[error("the document is larger than allowed")]
    TooLarge,
    #[error("reading the document from the client: {0}")]
    Client(std::io::Error),
    #[error("storing the document: {0}")]
    Store(std::io::Error),
}

/// Receive a document body: `first` (what already arrived with the request) then `rest`.
/// Returns it inline when it is at most `limits.inline_max` bytes, otherwise committed to
/// `documents` under `key`. An empty body is returned as an empty inline document.
pub async fn spool_document<S>(
    documents: &dyn DocumentStore,
    key: &str,
    first: Bytes,
    mut rest: S,
    limits: SpoolLimits,
) -> Result<SpooledDocument, SpoolError>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin,
{
    let mut spool = Spool::default();
    let received = async {
        spool.push(documents, key, first, &limits).await?;
        loop {
            match tokio::time::timeout(limits.idle_timeout, rest.next()).await {
                Err(_) => return Err(SpoolError::Timeout),
                Ok(None) => return Ok(()),
                Ok(Some(Err(error))) => return Err(SpoolError::Client(error)),
                Ok(Some(Ok(chunk))) => spool.push(documents, key, chunk, &limits).await?,
            }
        }
    }
    .await;
    match received {
        Ok(()) => spool.finish(key).await,
        Err(error) => {
            if let Some(writer) = spool.writer.take() {
                writer.abort().await;
            }
            Err(error)
        }
    }
}

/// A body being received: in memory until it outgrows the inline limit, then in a writer.
#[derive(Default)]
struct Spool {
    size: u64,
    head: BytesMut,
    /// The chunks held in memory while the body is small enough to stay inline.
    buffered: Vec<Bytes>,
    writer: Option<Box<dyn DocumentWriter>>,
}

impl Spool {
    async fn push(
        &mut self,
        documents: &dyn DocumentStore,
        key: &str,
        chunk: Bytes,
        limits: &SpoolLimits,
    ) -> Result<(), SpoolError> {
        self.size += chunk.len() as u64;
        if self.size > limits.max_bytes {
            return Err(SpoolError::TooLarge);
        }
        let wanted = HEAD_BYTES.saturating_sub(self.head.len()).min(chunk.len());
        self.head.extend_from_slice(&chunk[..wanted]);
        if let Some(writer) = self.writer.as_mut() {
            return writer.write(&chunk).await.map_err(SpoolError::Store);
        }
        self.buffered.push(chunk);
        if self.size <= limits.inline_max as u64 {
            return Ok(());
        }
        // Outgrew the inline limit: move what is buffered to the store, then stream.
        let writer = self
            .writer
            .insert(documents.create(key).await.map_err(SpoolError::Store)?);
        for buffered in self.buffered.drain(..) {
            writer.write(&buffered).await.map_err(SpoolError::Store)?;
        }
        Ok(())
    }

    async fn finish(mut self, key: &str) -> Result<SpooledDocument, SpoolError> {
        let body = match self.writer.take() {
            Some(writer) => {
                writer.commit().await.map_err(SpoolError::Store)?;
                DocumentBody::Stored {
                    key: key.to_string(),
                }
            }
            None => DocumentBody::Inline(concatenate(self.buffered)),
        };
        Ok(SpooledDocument {
            size: self.size,
            body,
            head: self.head.freeze(),
        })
    }
}

/// One `Bytes` of all chunks, without copying when there is only one.
fn concatenate(mut chunks: Vec<Bytes>) -> Bytes {
    if chunks.len() == 1 {
        return chunks.remove(0);
    }
    let mut whole = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        whole.extend_from_slice(&chunk);
    }
    whole.freeze()
}

#[cfg(test)]
mod tests {
    use crate::store::documents::tests::files_in;
    use futures_util::TryStreamExt;

    use super::*;
    use crate::store::LocalDocumentStore;

    const LIMITS: SpoolLimits = SpoolLimits {
        max_bytes: 1 << 20,
        inline_max: 16 * 1024,
        idle_timeout: Duration::from_millis(200),
    };

    fn chunks(
        pieces: Vec<Vec<u8>>,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin {
        futures_util::stream::iter(pieces.into_iter().map(|piece| Ok(Bytes::from(piece))))
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|n| (n % 253) as u8).collect()
    }

    fn store() -> (tempfile::TempDir, LocalDocumentStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalDocumentStore::open(dir.path()).expect("open");
        (dir, store)
    }

    #[tokio::test]
    async fn small_documents_stay_inline() {
        let (dir, documents) = store();
        let body = pattern(10_000);
        let spooled = spool_document(
            &documents,
            "doc",
            Bytes::copy_from_slice(&body[..100]),
            chunks(vec![body[100..6000].to_vec(), body[6000..].to_vec()]),
            LIMITS,
        )
        .await
        .expect("spool");
        assert_eq!(spooled.size, 10_000);
        assert_eq!(
            spooled.body,
            DocumentBody::Inline(Bytes::from(body.clone()))
        );
        assert_eq!(spooled.head, Bytes::copy_from_slice(&body[..HEAD_BYTES]));
        assert!(
            files_in(dir.path()).is_empty(),
            "nothing written to the store"
        );
    }

    #[tokio::test]
    async fn exactly_inline_max_stays_inline() {
        let (_dir, documents) = store();
        let body = Bytes::from(pattern(LIMITS.inline_max));
        let spooled = spool_document(&documents, "doc", body.clone(), chunks(vec![]), LIMITS)
            .await
            .expect("spool");
        assert_eq!(spooled.body, DocumentBody::Inline(body));
    }

    #[tokio::test]
    async fn empty_documents_are_inline_and_empty() {
        let (_dir, documents) = store();
        let spooled = spool_document(&documents, "doc", Bytes::new(), chunks(vec![]), LIMITS)
            .await
            .expect("spool");
        assert_eq!(spooled.size, 0);
        assert_eq!(spooled.body, DocumentBody::Inline(Bytes::new()));
        assert!(spooled.head.is_empty());
    }

    #[tokio::test]
    async fn large_documents_are_stored() {
        let (dir, documents) = store();
        let body = pattern(300_000);
        let pieces = body[1000..].chunks(7000).map(<[u8]>::to_vec).collect();
        let spooled = spool_document(
            &documents,
            "job-7.doc-1",
            Bytes::copy_from_slice(&body[..1000]),
            chunks(pieces),
            LIMITS,
        )
        .await
        .expect("spool");
        assert_eq!(spooled.size, 300_000);
        assert_eq!(
            spooled.body,
            DocumentBody::Stored {
                key: "job-7.doc-1".into()
            }
        );
        assert_eq!(spooled.head, Bytes::copy_from_slice(&body[..HEAD_BYTES]));
        assert_eq!(files_in(dir.path()), vec!["job-7.doc-1"]);
        let stored: Vec<Bytes> = documents
            .open("job-7.doc-1")
            .await
            .expect("open")
            .try_collect()
            .await
            .expect("read");
        assert_eq!(stored.concat(), body);
    }

    #[tokio::test]
    async fn too_large_is_refused_and_nothing_kept() {
        let (dir, documents) = store();
        let limits = SpoolLimits {
            max_bytes: 100_000,
            ..LIMITS
        };
        // After the limit, the stream errs: reading it would fail the test differently.
        let pieces = futures_util::stream::iter(
            vec![
                Ok(Bytes::from(pattern(60_000))),
                Ok(Bytes::from(pattern(60_000))),
            ]
            .into_iter()
            .chain([Err(std::io::Error::other("read past the limit"))]),
        );
        let result = spool_document(&documents, "big", Bytes::new(), pieces, limits).await;
        assert!(matches!(result, Err(SpoolError::TooLarge)), "{result:?}");
        assert!(
            files_in(dir.path()).is_empty(),
            "the partial document is gone"
        );
    }

    #[tokio::test]
    async fn a_stalled_client_times_out() {
        let (dir, documents) = store();
        let stalled = chunks(vec![pattern(20_000)]).chain(futures_util::stream::pending());
        let started = std::time::Instant::now();
        let result = spool_document(
            &documents,
            "slow",
            Bytes::from(pattern(100)),
            Box::pin(stalled),
            LIMITS,
        )
        .await;
        assert!(matches!(result, Err(SpoolError::Timeout)), "{result:?}");
        assert!(started.elapsed() >= LIMITS.idle_timeout);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            files_in(dir.path()).is_empty(),
            "the partial document is gone"
        );
    }

    #[tokio::test]
    async fn client_errors_are_reported() {
        let (_dir, documents) = store();
        let broken = futures_util::stream::iter([Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ))]);
        let result = spool_document(&documents, "doc", Bytes::new(), broken, LIMITS).await;
        assert!(
            matches!(&result, Err(SpoolError::Client(e)) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn store_failures_are_reported() {
        let (_dir, documents) = store();
        let result = spool_document(
            &documents,
            "../escape",
            Bytes::from(pattern(LIMITS.inline_max + 1)),
            chunks(vec![]),
            LIMITS,
        )
        .await;
        assert!(matches!(result, Err(SpoolError::Store(_))), "{result:?}");
    }
}
