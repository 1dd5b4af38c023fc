//! Larger inline documents, appended to segment files beside the database.
//!
//! SQLite writes a blob twice: into the write-ahead log in 4 KiB frames, then into the
//! database when the log is checkpointed. A document of tens of KiB is instead appended
//! once, as one record, to the current segment of this log; its row keeps the segment and
//! offset. The writer thread appends while it applies the request, and the syncer thread
//! fsyncs the segments written alongside the database's log, so the document is on disk
//! before the client hears that its job was accepted.
//!
//! Each record carries its job, number, length and a CRC-32 of the bytes. A power loss can
//! leave a row whose commit reached the disk while its record did not (the page cache writes
//! back in any order, so fsyncing the segment first would not prevent it); such a job was
//! never acknowledged, and reading it reports the record as damaged instead of returning
//! wrong bytes. A segment is removed once no
//! document row points into it; the segment being appended to is never removed.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Error, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::job::JobId;

/// Documents at least this large go to the log; smaller ones stay in their row (one or two
/// database pages, cheaper than a second file to fsync).
pub const LOGGED_DOCUMENT_MIN: usize = 16 * 1024;
/// A new segment is started once the current one reaches this size.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Marks the start of a record (and its format's version).
const MAGIC: [u8; 4] = *b"PFD1";
/// magic, job id (i64), document number (i32), length (u64), CRC-32 (u32); little-endian.
const HEADER_BYTES: usize = 4 + 8 + 4 + 8 + 4;
/// Segment files are `<number>.log` with the number zero-padded, so they sort in order.
const SEGMENT_SUFFIX: &str = ".log";

/// Where a document's record starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub segment: i64,
    pub offset: i64,
}

/// The appending side, used by the writer thread only.
pub struct DocumentLog {
    directory: PathBuf,
    segment_bytes: u64,
    /// Every segment file present, the current one included.
    segments: BTreeSet<i64>,
    current: i64,
    file: Arc<File>,
    length: u64,
    /// Segments appended to since the syncer last took them.
    unsynced: Vec<Arc<File>>,
}

/// The directory of the log that belongs to the database at `database`.
pub fn directory_of(database: &Path) -> PathBuf {
    let mut directory = database.as_os_str().to_owned();
    directory.push("-documents");
    PathBuf::from(directory)
}

fn segment_path(directory: &Path, segment: i64) -> PathBuf {
    directory.join(format!("{segment:012}{SEGMENT_SUFFIX}"))
}

impl DocumentLog {
    /// Open the log in `directory` (created when missing). Appending starts in a new
    /// segment after the last one present, so a record half written before a crash is
    /// never followed by new ones.
    pub fn open(directory: &Path, segment_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(directory)?;
        let mut segments = BTreeSet::new();
        for entry in std::fs::read_dir(directory)? {
            let name = entry?.file_name();
            let number = name
                .to_str()
                .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|number| number.parse::<i64>().ok());
            if let Some(number) = number {
                segments.insert(number);
            }
        }
        let first = segments.last().map_or(1, |last| last + 1);
        let file = create_segment(directory, first)?;
        segments.insert(first);
        Ok(DocumentLog {
            directory: directory.to_path_buf(),
            segment_bytes,
            segments,
            current: first,
            file,
            length: 0,
            unsynced: Vec::new(),
        })
    }

    /// Append the record of document `number` of job `job`; it is durable once the files
    /// from [`DocumentLog::take_unsynced`] are fsynced.
    pub fn append(&mut self, job: JobId, number: i32, bytes: &[u8]) -> std::io::Result<Location> {
        let record_bytes = (HEADER_BYTES + bytes.len()) as u64;
        if self.length > 0 && self.length + record_bytes > self.segment_bytes {
            self.start_segment()?;
        }
        let mut record = Vec::with_capacity(HEADER_BYTES + bytes.len());
        record.extend_from_slice(&header(job, number, bytes));
        record.extend_from_slice(bytes);
        let offset = self.length;
        self.file.write_all_at(&record, offset)?;
        self.length += record_bytes;
        if !self
            .unsynced
            .iter()
            .any(|file| Arc::ptr_eq(file, &self.file))
        {
            self.unsynced.push(self.file.clone());
        }
        Ok(Location {
            segment: self.current,
            offset: i64::try_from(offset).map_err(|_| Error::other("segment too long"))?,
        })
    }

    /// The segments appended to since the last call, for the syncer to fsync.
    pub fn take_unsynced(&mut self) -> Vec<Arc<File>> {
        std::mem::take(&mut self.unsynced)
    }

    /// Remove every segment but the current one for which `referenced` says no document
    /// row points into it any more.
    pub fn remove_unreferenced<E>(
        &mut self,
        mut referenced: impl FnMut(i64) -> Result<bool, E>,
    ) -> Result<(), E>
    where
        E: From<std::io::Error>,
    {
        let older: Vec<i64> = self.segments.range(..self.current).copied().collect();
        for segment in older {
            if referenced(segment)? {
                continue;
            }
            match std::fs::remove_file(segment_path(&self.directory, segment)) {
                Err(error) if error.kind() != ErrorKind::NotFound => return Err(error.into()),
                _ => {
                    self.segments.remove(&segment);
                }
            }
        }
        Ok(())
    }

    fn start_segment(&mut self) -> std::io::Result<()> {
        let next = self.current + 1;
        self.file = create_segment(&self.directory, next)?;
        self.segments.insert(next);
        self.current = next;
        self.length = 0;
        Ok(())
    }
}

/// Create segment `number` and make its name durable (the directory fsynced), so the
/// fsync of its data later is enough for its records to survive.
fn create_segment(directory: &Path, number: i64) -> std::io::Result<Arc<File>> {
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(segment_path(directory, number))?;
    File::open(directory)?.sync_all()?;
    Ok(Arc::new(file))
}

fn header(job: JobId, number: i32, bytes: &[u8]) -> [u8; HEADER_BYTES] {
    let mut header = [0; HEADER_BYTES];
    header[..4].copy_from_slice(&MAGIC);
    header[4..12].copy_from_slice(&i64::from(job).to_le_bytes());
    header[12..16].copy_from_slice(&number.to_le_bytes());
    header[16..24].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    header[24..28].copy_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    header
}

/// Read the record of document `number` of job `job` (of `size` bytes) at `location`,
/// checking that it is whole and is that document's.
pub fn read(
    directory: &Path,
    location: Location,
    job: JobId,
    number: i32,
    size: u64,
) -> std::io::Result<Vec<u8>> {
    let damaged = |what: &str| {
        Error::new(
            ErrorKind::InvalidData,
            format!(
                "document {number} of job {job} in log segment {} at {}: {what}",
                location.segment, location.offset
            ),
        )
    };
    let offset = u64::try_from(location.offset).map_err(|_| damaged("negative offset"))?;
    let length = usize::try_from(size).map_err(|_| damaged("too large to read"))?;
    let file = File::open(segment_path(directory, location.segment))?;
    let mut record = vec![0; HEADER_BYTES + length];
    file.read_exact_at(&mut record, offset).map_err(|error| {
        if error.kind() == ErrorKind::UnexpectedEof {
            damaged("the record is cut short")
        } else {
            error
        }
    })?;
    let body = record.split_off(HEADER_BYTES);
    if record[..] != header(job, number, &body)[..] {
        return Err(damaged(
            "the record is damaged or belongs to another document",
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|n| (n as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn segments(directory: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(directory)
            .expect("list")
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

    #[test]
    fn records_read_back_and_segments_roll_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = DocumentLog::open(dir.path(), 100_000).expect("open");
        let documents: Vec<Vec<u8>> = (0..5).map(|n| pattern(40_000, n)).collect();
        let locations: Vec<Location> = documents
            .iter()
            .enumerate()
            .map(|(n, bytes)| {
                log.append(JobId::from(n as i32 + 1), 1, bytes)
                    .expect("append")
            })
            .collect();
        // Two 40 KB records fit in a 100 KB segment; the third starts a new one.
        let numbers: Vec<i64> = locations.iter().map(|l| l.segment).collect();
        assert_eq!(numbers, vec![1, 1, 2, 2, 3]);
        assert_eq!(
            log.take_unsynced().len(),
            3,
            "every segment written awaits an fsync"
        );
        assert!(log.take_unsynced().is_empty());
        for (n, (bytes, location)) in documents.iter().zip(&locations).enumerate() {
            let read = read(dir.path(), *location, JobId::from(n as i32 + 1), 1, 40_000);
            assert_eq!(read.expect("read"), *bytes);
        }
    }

    #[test]
    fn a_damaged_or_misplaced_record_is_an_error_never_other_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = DocumentLog::open(dir.path(), SEGMENT_BYTES).expect("open");
        let bytes = pattern(20_000, 7);
        let location = log.append(JobId::from(9), 2, &bytes).expect("append");
        let job = JobId::from(9);
        let wrong_document = read(dir.path(), location, job, 1, 20_000).expect_err("number");
        assert_eq!(wrong_document.kind(), ErrorKind::InvalidData);
        let cut_short = read(dir.path(), location, job, 2, 30_000).expect_err("length");
        assert_eq!(cut_short.kind(), ErrorKind::InvalidData, "{cut_short}");

        let path = segment_path(dir.path(), location.segment);
        let file = File::options().write(true).open(&path).expect("segment");
        file.write_all_at(b"\xff", HEADER_BYTES as u64 + 1000)
            .expect("damage");
        let damaged = read(dir.path(), location, job, 2, 20_000).expect_err("damaged");
        assert_eq!(damaged.kind(), ErrorKind::InvalidData);
        assert!(damaged.to_string().contains("damaged"), "{damaged}");
    }

    #[test]
    fn reopening_appends_to_a_new_segment_and_unreferenced_ones_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = DocumentLog::open(dir.path(), 50_000).expect("open");
        for job in 1..=3 {
            log.append(JobId::from(job), 1, &pattern(30_000, 1))
                .expect("append");
        }
        assert_eq!(segments(dir.path()).len(), 3);
        drop(log);
        let mut log = DocumentLog::open(dir.path(), 50_000).expect("reopen");
        let location = log
            .append(JobId::from(4), 1, &pattern(100, 2))
            .expect("append");
        assert_eq!(
            location.segment, 4,
            "a reopened log never appends to an old segment"
        );
        // Only segment 2 still holds a document some row points to.
        log.remove_unreferenced(|segment| Ok::<_, Error>(segment == 2))
            .expect("remove");
        assert_eq!(
            segments(dir.path()),
            vec![
                "000000000002.log".to_string(),
                "000000000004.log".to_string()
            ]
        );
        log.remove_unreferenced(|_| Ok::<_, Error>(false))
            .expect("remove");
        assert_eq!(segments(dir.path()), vec!["000000000004.log".to_string()]);
    }
}
