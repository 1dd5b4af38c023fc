//! Document bytes too large to keep inline in the job store.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

/// Receives one document's bytes; nothing is visible to readers until `commit`.
#[async_trait]
pub trait DocumentWriter: Send {
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()>;
    /// Make the document durable (fsync) and return its size.
    async fn commit(self: Box<Self>) -> std::io::Result<u64>;
    /// Throw the partial document away.
    async fn abort(self: Box<Self>);
}

/// Where documents live: a local directory (standalone) or object storage (cluster).
#[async_trait]
pub trait DocumentStore: Send + Sync {
    /// Start writing a new document under `key` (keys are unique, chosen by the caller).
    async fn create(&self, key: &str) -> std::io::Result<Box<dyn DocumentWriter>>;
    /// Read a committed document.
    async fn open(&self, key: &str) -> std::io::Result<BoxStream<'static, std::io::Result<Bytes>>>;
    /// Delete a document; deleting a missing one is not an error.
    async fn delete(&self, key: &str) -> std::io::Result<()>;
}
