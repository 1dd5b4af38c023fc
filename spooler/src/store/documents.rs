//! Document bytes too large to keep inline in the job store.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// Documents as files in one directory (the standalone spooler's document store).
///
/// A document is written to `<root>/<key>.partial` and renamed to `<root>/<key>` only once
/// its bytes are on disk, so a crash leaves at worst a `.partial` file, removed at the next
/// `open`.
pub struct LocalDocumentStore {
    root: PathBuf,
}

/// Suffix of documents still being written.
const PARTIAL_SUFFIX: &str = ".partial";
/// Size of the chunks `open` reads.
const READ_CHUNK: usize = 64 * 1024;

impl LocalDocumentStore {
    /// Use `root` (created when missing), removing documents a crash left half written.
    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_string_lossy()
                .ends_with(PARTIAL_SUFFIX)
            {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(LocalDocumentStore { root })
    }

    fn path(&self, key: &str) -> std::io::Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

/// Keys become file names: only `[A-Za-z0-9._-]`, not hidden (no `.` or `..`), and never
/// the name of a partial file.
pub fn validate_key(key: &str) -> std::io::Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if key.is_empty()
        || key.starts_with('.')
        || key.ends_with(PARTIAL_SUFFIX)
        || !key.chars().all(allowed)
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid document key {key:?}"),
        ));
    }
    Ok(())
}

#[async_trait]
impl DocumentStore for LocalDocumentStore {
    async fn create(&self, key: &str) -> std::io::Result<Box<dyn DocumentWriter>> {
        let destination = self.path(key)?;
        let partial = self.root.join(format!("{key}{PARTIAL_SUFFIX}"));
        let file = tokio::fs::File::create(&partial).await?;
        Ok(Box::new(LocalDocumentWriter {
            file,
            partial,
            destination,
            root: self.root.clone(),
            size: 0,
            committed: false,
        }))
    }

    async fn open(&self, key: &str) -> std::io::Result<BoxStream<'static, std::io::Result<Bytes>>> {
        let file = tokio::fs::File::open(self.path(key)?).await?;
        let chunks = futures_util::stream::try_unfold(file, |mut file| async move {
            let mut chunk = BytesMut::with_capacity(READ_CHUNK);
            while chunk.len() < READ_CHUNK {
                if file.read_buf(&mut chunk).await? == 0 {
                    break;
                }
            }
            Ok::<_, std::io::Error>((!chunk.is_empty()).then(|| (chunk.freeze(), file)))
        });
        Ok(Box::pin(chunks))
    }

    async fn delete(&self, key: &str) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            result => result,
        }
    }
}

struct LocalDocumentWriter {
    file: tokio::fs::File,
    partial: PathBuf,
    destination: PathBuf,
    root: PathBuf,
    size: u64,
    committed: bool,
}

#[async_trait]
impl DocumentWriter for LocalDocumentWriter {
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.file.write_all(chunk).await?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> std::io::Result<u64> {
        self.file.flush().await?;
        self.file.sync_data().await?;
        tokio::fs::rename(&self.partial, &self.destination).await?;
        self.committed = true;
        // The rename is durable only once the directory itself is synced; a document that
        // may not survive a crash is not reported as stored, nor left behind.
        let root = self.root.clone();
        let synced = tokio::task::spawn_blocking(move || std::fs::File::open(root)?.sync_all())
            .await
            .map_err(std::io::Error::other)
            .and_then(|synced| synced);
        if let Err(error) = synced {
            let _ = tokio::fs::remove_file(&self.destination).await;
            return Err(error);
        }
        Ok(self.size)
    }

    async fn abort(self: Box<Self>) {
        // Drop removes the partial file.
    }
}

impl Drop for LocalDocumentWriter {
    fn drop(&mut self) {
        // An aborted or abandoned document (its request gone mid-body) leaves no file.
        if !self.committed
            && let Err(error) = std::fs::remove_file(&self.partial)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%error, path = %self.partial.display(), "cannot remove a partial document");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use futures_util::TryStreamExt;

    use super::*;

    async fn read_all(store: &LocalDocumentStore, key: &str) -> std::io::Result<Vec<Vec<u8>>> {
        store
            .open(key)
            .await?
            .map_ok(|chunk| chunk.to_vec())
            .try_collect()
            .await
    }

    /// The names in a directory, sorted.
    pub(crate) fn files_in(root: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root)
            .expect("read_dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn commit_then_open_round_trips_in_64k_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalDocumentStore::open(dir.path()).expect("open");
        let body: Vec<u8> = (0..150_000u32).map(|n| (n % 251) as u8).collect();
        let mut writer = store.create("job-1.doc-1").await.expect("create");
        for piece in body.chunks(10_000) {
            writer.write(piece).await.expect("write");
        }
        assert!(
            matches!(store.open("job-1.doc-1").await, Err(e) if e.kind() == std::io::ErrorKind::NotFound),
            "invisible before commit"
        );
        assert_eq!(writer.commit().await.expect("commit"), body.len() as u64);
        assert_eq!(files_in(dir.path()), vec!["job-1.doc-1"]);

        let chunks = read_all(&store, "job-1.doc-1").await.expect("read");
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            vec![READ_CHUNK, READ_CHUNK, 150_000 - 2 * READ_CHUNK]
        );
        assert_eq!(chunks.concat(), body);

        store.delete("job-1.doc-1").await.expect("delete");
        store
            .delete("job-1.doc-1")
            .await
            .expect("deleting a missing document");
        assert!(files_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn empty_document_round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalDocumentStore::open(dir.path()).expect("open");
        let writer = store.create("empty").await.expect("create");
        assert_eq!(writer.commit().await.expect("commit"), 0);
        assert!(read_all(&store, "empty").await.expect("read").is_empty());
    }

    #[tokio::test]
    async fn abort_and_abandon_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalDocumentStore::open(dir.path()).expect("open");
        let mut aborted = store.create("aborted").await.expect("create");
        aborted.write(b"half a document").await.expect("write");
        aborted.abort().await;
        let mut abandoned = store.create("abandoned").await.expect("create");
        abandoned
            .write(b"the client went away")
            .await
            .expect("write");
        drop(abandoned);
        assert!(files_in(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn open_removes_partial_documents_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("crashed.partial"), b"half").expect("write");
        std::fs::write(dir.path().join("kept"), b"whole").expect("write");
        let store = LocalDocumentStore::open(dir.path()).expect("open");
        assert_eq!(files_in(dir.path()), vec!["kept"]);
        assert_eq!(
            read_all(&store, "kept").await.expect("read"),
            vec![b"whole".to_vec()]
        );
    }

    #[tokio::test]
    async fn open_creates_a_missing_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("spool").join("documents");
        LocalDocumentStore::open(&root).expect("open");
        assert!(root.is_dir());
    }

    #[tokio::test]
    async fn bad_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalDocumentStore::open(dir.path()).expect("open");
        for key in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "a b",
            ".hidden",
            "x.partial",
            "é",
        ] {
            let refused = |result: std::io::Result<()>| matches!(result, Err(e) if e.kind() == std::io::ErrorKind::InvalidInput);
            assert!(refused(store.create(key).await.map(drop)), "create {key:?}");
            assert!(refused(store.open(key).await.map(drop)), "open {key:?}");
            assert!(refused(store.delete(key).await), "delete {key:?}");
        }
        assert!(files_in(dir.path()).is_empty());
        validate_key("job-12_doc.3").expect("a good key");
    }
}
