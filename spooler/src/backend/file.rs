//! `file:///directory`: writes each document to a file, the out-of-the-box demo printer
//! and a way to capture what would have been printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::{
    Backend, BackendError, Delivery, OutgoingDocument, OutgoingJob, PrinterHealth, copy_document,
    unavailable,
};

/// Local disks do not stall the way devices do; this only catches a hung filesystem.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Writes documents to `<dir>/<job-id>-<document-number>.<ext>`.
pub struct FileBackend {
    dir: PathBuf,
}

/// The directory of a `file://` URI (the part after `file://`): `/dir`, or
/// `localhost/dir`.
pub fn directory_of(rest: &str) -> Result<PathBuf, BackendError> {
    let path = rest.strip_prefix("localhost").unwrap_or(rest);
    if !path.starts_with('/') {
        return Err(BackendError::Config(format!(
            "file URI must name an absolute directory, got file://{rest}"
        )));
    }
    Ok(PathBuf::from(path))
}

/// The file name extension for a document format, so captured output opens in the right
/// viewer.
pub fn extension_for(format: &str) -> &'static str {
    let essence = format.split(';').next().unwrap_or("").trim();
    match essence.to_ascii_lowercase().as_str() {
        "application/pdf" => "pdf",
        "application/postscript" => "ps",
        "image/pwg-raster" => "pwg",
        "image/urf" => "urf",
        "image/jpeg" => "jpg",
        "image/png" => "png",
        "text/plain" => "txt",
        "application/vnd.hp-pcl" => "pcl",
        _ => "bin",
    }
}

impl FileBackend {
    pub fn new(dir: PathBuf) -> FileBackend {
        FileBackend { dir }
    }

    /// Write one document under a temporary name, make it durable, then give it its name:
    /// readers of the directory never see half a document.
    async fn write_document(
        &self,
        target: &Path,
        document: &mut OutgoingDocument,
    ) -> Result<(), BackendError> {
        let partial = target.with_extension("partial");
        let result = async {
            let mut file = tokio::fs::File::create(&partial)
                .await
                .map_err(|error| unavailable(&format!("creating {}", partial.display()), error))?;
            copy_document(document, &mut file, WRITE_TIMEOUT).await?;
            file.flush()
                .await
                .map_err(|error| unavailable("writing the document", error))?;
            file.sync_all()
                .await
                .map_err(|error| unavailable("syncing the document", error))?;
            tokio::fs::rename(&partial, target)
                .await
                .map_err(|error| unavailable(&format!("renaming to {}", target.display()), error))
        }
        .await;
        if result.is_err() {
            // Best effort: a leftover .partial is harmless but untidy.
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result
    }

    /// Make the renames durable: the directory entry is what a crash would lose.
    async fn sync_directory(&self) -> Result<(), BackendError> {
        let dir = tokio::fs::File::open(&self.dir)
            .await
            .map_err(|error| unavailable("opening the output directory", error))?;
        dir.sync_all()
            .await
            .map_err(|error| unavailable("syncing the output directory", error))
    }
}

#[async_trait]
impl Backend for FileBackend {
    async fn probe(&self) -> Result<PrinterHealth, BackendError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|error| unavailable(&format!("creating {}", self.dir.display()), error))?;
        // Permission bits do not tell (root ignores them, read-only mounts do not show):
        // writing is the only honest test.
        let probe = self
            .dir
            .join(format!(".printfleet-probe-{}", std::process::id()));
        tokio::fs::write(&probe, b"")
            .await
            .map_err(|error| unavailable(&format!("writing in {}", self.dir.display()), error))?;
        let _ = tokio::fs::remove_file(&probe).await;
        Ok(PrinterHealth::reachable())
    }

    async fn print(
        &self,
        job: OutgoingJob<'_>,
        documents: Vec<OutgoingDocument>,
    ) -> Result<Delivery, BackendError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|error| unavailable(&format!("creating {}", self.dir.display()), error))?;
        for (index, mut document) in documents.into_iter().enumerate() {
            let file_name = format!(
                "{}-{}.{}",
                job.job.id,
                index + 1,
                extension_for(&document.format)
            );
            self.write_document(&self.dir.join(file_name), &mut document)
                .await?;
        }
        self.sync_directory().await?;
        Ok(Delivery::default())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;
    use futures_util::stream;

    use super::*;
    use crate::job::{Job, JobState, JobTicket};

    /// A job as the store would hand it to a backend.
    pub(crate) fn sample_job(id: i32) -> Job {
        Job {
            id,
            queue: "office".into(),
            owner: "alice".into(),
            name: "quarterly report".into(),
            originating_host: None,
            priority: 50,
            state: JobState::Processing,
            reasons: Vec::new(),
            message: None,
            ticket: JobTicket::default(),
            documents: Vec::new(),
            documents_complete: true,
            created_at: 0,
            processing_at: None,
            completed_at: None,
            printer: None,
            attempts: 1,
            impressions_completed: None,
            sheets_completed: None,
        }
    }

    /// A document whose bytes arrive in several chunks, as a store streams them.
    pub(crate) fn document(format: &str, data: &[u8]) -> OutgoingDocument {
        let chunks: Vec<std::io::Result<Bytes>> = data
            .chunks(4096)
            .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
            .collect();
        OutgoingDocument {
            format: format.to_owned(),
            name: Some("report.pdf".into()),
            size: data.len() as u64,
            data: Box::pin(stream::iter(chunks)),
        }
    }

    #[test]
    fn extension_follows_the_format() {
        assert_eq!(extension_for("application/pdf"), "pdf");
        assert_eq!(extension_for("text/plain; charset=utf-8"), "txt");
        assert_eq!(extension_for("Image/PWG-Raster"), "pwg");
        assert_eq!(extension_for("application/octet-stream"), "bin");
    }

    #[test]
    fn directory_of_wants_an_absolute_path() {
        assert_eq!(directory_of("/var/out").unwrap(), PathBuf::from("/var/out"));
        assert_eq!(
            directory_of("localhost/var/out").unwrap(),
            PathBuf::from("/var/out")
        );
        assert!(directory_of("relative/dir").is_err());
    }

    #[tokio::test]
    async fn file_backend_writes_every_document_atomically() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("created/on/demand");
        let backend = FileBackend::new(out.clone());
        assert!(backend.probe().await.unwrap().accepting);

        let job = sample_job(42);
        let pdf: Vec<u8> = (0..10_000u32).flat_map(|n| n.to_le_bytes()).collect();
        let delivery = backend
            .print(
                OutgoingJob {
                    job: &job,
                    ticket: &job.ticket,
                },
                vec![
                    document("application/pdf", &pdf),
                    document("text/plain", b"hello\n"),
                ],
            )
            .await
            .unwrap();
        assert_eq!(delivery, Delivery::default());
        assert_eq!(std::fs::read(out.join("42-1.pdf")).unwrap(), pdf);
        assert_eq!(std::fs::read(out.join("42-2.txt")).unwrap(), b"hello\n");
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["42-1.pdf", "42-2.txt"],
            "no partial or probe files left"
        );
    }

    #[tokio::test]
    async fn file_backend_leaves_no_partial_file_when_the_source_fails() {
        let root = tempfile::tempdir().unwrap();
        let backend = FileBackend::new(root.path().to_path_buf());
        let job = sample_job(7);
        let failing = OutgoingDocument {
            format: "application/pdf".into(),
            name: None,
            size: 10,
            data: Box::pin(stream::iter(vec![
                Ok(Bytes::from_static(b"%PDF")),
                Err(std::io::Error::other("disk gone")),
            ])),
        };
        let result = backend
            .print(
                OutgoingJob {
                    job: &job,
                    ticket: &job.ticket,
                },
                vec![failing],
            )
            .await;
        assert!(matches!(result, Err(BackendError::Unavailable(_))));
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn file_probe_fails_when_the_directory_cannot_exist() {
        let root = tempfile::tempdir().unwrap();
        let blocker = root.path().join("not-a-directory");
        std::fs::write(&blocker, b"").unwrap();
        let backend = FileBackend::new(blocker.join("out"));
        assert!(matches!(
            backend.probe().await,
            Err(BackendError::Unavailable(_))
        ));
    }
}
