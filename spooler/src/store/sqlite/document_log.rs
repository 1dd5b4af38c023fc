//! Larger inline documents, appended to segment files beside the database.
//!
//! SQLite writes a blob twice: into the write-ahead log in 4 KiB frames, then into the
//! database when the log is checkpointed. A document of tens of KiB is instead appended
//! once, as one record, to the current segment of this log; its row keeps the segment and
//! offset. The submitting task appends it before it hands the job to the writer thread (a
//! small record on its own thread, see `log_document`), and the syncer thread fsyncs the
//! segments written alongside the database's log, so the document is on disk before the
//! client hears that its job was accepted.
//!
//! Each record carries its length and a CRC-32 of the bytes. A power loss can leave a row
//! whose commit reached the disk while its record did not (the page cache writes back in
//! any order, so fsyncing the segment first would not prevent it); such a job was never
//! acknowledged, and reading it reports the record as damaged instead of returning wrong
//! bytes. A segment is removed once no document row points into it and no append is on its
//! way to a row; the segment being appended to, and the spare, are never removed.
//!
//! The next segment is made ahead of need (a spare). Making one fsyncs the directory, which
//! took 0.25 to 1.2 ms at 256 clients, and appenders waited behind the lock for up to 7 ms
//! meanwhile, async threads among them (BENCHMARKS.md, seventeenth session); starting the
//! spare is a few assignments.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Error, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::lock;

/// Documents at least this large go to the log; smaller ones stay in their row (one or two
/// database pages, cheaper than a second file to fsync).
pub const LOGGED_DOCUMENT_MIN: usize = 16 * 1024;
/// A new segment is started once the current one reaches this size.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Marks the start of a record (and its format's version).
const MAGIC: [u8; 4] = *b"PFD1";
/// magic, length (u64), CRC-32 (u32); little-endian.
const HEADER_BYTES: usize = 4 + 8 + 4;
/// Segment files are `<number>.log` with the number zero-padded, so they sort in order.
const SEGMENT_SUFFIX: &str = ".log";

/// Where a document's record starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub segment: i64,
    pub offset: i64,
}

/// The log of one database. Appends run on any thread, each writing its record outside the
/// lock once its place is reserved.
pub struct DocumentLog {
    directory: PathBuf,
    segment_bytes: u64,
    segments: Mutex<Segments>,
    /// Held while a segment is made, outside `segments`: one at a time, so the one made is
    /// always the one after the current segment. True once the log is closed: no segment
    /// is made after that, so a reopened log is alone in its directory.
    making: Mutex<bool>,
}

struct Segments {
    /// Every segment file present, the current one included.
    present: BTreeSet<i64>,
    current: i64,
    file: Arc<File>,
    length: u64,
    /// Segments written to since the syncer last took them.
    unsynced: Vec<Arc<File>>,
    /// Records appended (or being appended) whose rows are not inserted yet, per segment:
    /// such a segment is kept even when no row points into it.
    pinned: BTreeMap<i64, usize>,
    /// The segment after the current one, made already (see `DocumentLog::make_spare`).
    spare: Option<Arc<File>>,
}

/// A record appended to the log whose row is not inserted yet. Its segment stays until this
/// is dropped, which the writer does once it has inserted the row (or given up).
pub struct Appended {
    log: Arc<DocumentLog>,
    location: Location,
    started_segment: bool,
}

impl Appended {
    pub fn location(&self) -> Location {
        self.location
    }

    /// Whether this record started the spare segment: the log has none until
    /// [`DocumentLog::make_spare`] makes the next.
    pub fn started_segment(&self) -> bool {
        self.started_segment
    }
}

impl Drop for Appended {
    fn drop(&mut self) {
        let mut segments = lock(&self.log.segments);
        if let Some(count) = segments.pinned.get_mut(&self.location.segment) {
            *count -= 1;
            if *count == 0 {
                segments.pinned.remove(&self.location.segment);
            }
        }
    }
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
    /// Open the log in `directory` (created when missing), with a spare segment made.
    /// Appending starts in a new segment after the last one present, so a record half
    /// written before a crash is never followed by new ones.
    pub fn open(directory: &Path, segment_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(directory)?;
        let mut present = BTreeSet::new();
        for entry in std::fs::read_dir(directory)? {
            let name = entry?.file_name();
            let number = name
                .to_str()
                .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|number| number.parse::<i64>().ok());
            if let Some(number) = number {
                present.insert(number);
            }
        }
        let first = present.last().map_or(1, |last| last + 1);
        let file = create_segment(directory, first)?;
        present.insert(first);
        let log = DocumentLog {
            directory: directory.to_path_buf(),
            segment_bytes,
            segments: Mutex::new(Segments {
                present,
                current: first,
                file,
                length: 0,
                unsynced: Vec::new(),
                pinned: BTreeMap::new(),
                spare: None,
            }),
            making: Mutex::new(false),
        };
        log.make_spare()?;
        Ok(log)
    }

    /// Append `bytes` as one record (a blocking write, which makes a new segment when the
    /// record needs one and no spare is ready: call it off the async threads). It is
    /// durable once the files from [`DocumentLog::take_unsynced`] are fsynced.
    pub fn append(self: &Arc<Self>, bytes: &[u8]) -> std::io::Result<Appended> {
        self.append_within(bytes, true)?
            .ok_or_else(|| Error::other("document log: a new segment was refused"))
    }

    /// Like `append`, but never makes a segment: `None`, with nothing written, when the
    /// record needs a new one and no spare is ready. What is left is a write into the
    /// page cache, cheap enough for a small record to be made on an async thread.
    pub fn try_append(self: &Arc<Self>, bytes: &[u8]) -> std::io::Result<Option<Appended>> {
        self.append_within(bytes, false)
    }

    /// Makes the segment after the current one, unless it is made already, so that the
    /// next record to need a segment finds it ready. Blocking (it fsyncs the directory).
    pub fn make_spare(&self) -> std::io::Result<()> {
        let closed = lock(&self.making);
        if *closed {
            return Ok(());
        }
        let next = {
            let segments = lock(&self.segments);
            if segments.spare.is_some() {
                return Ok(());
            }
            segments.current + 1
        };
        // Only a spare starts a segment, and only under `making` is one made: the current
        // segment is still the one before `next` once this is done.
        let file = create_segment(&self.directory, next)?;
        let mut segments = lock(&self.segments);
        segments.present.insert(next);
        segments.spare = Some(file);
        Ok(())
    }

    /// Waits for a segment being made, if any, and makes no more; appends into the segments
    /// made already still work.
    pub fn close(&self) {
        *lock(&self.making) = true;
    }

    fn append_within(
        self: &Arc<Self>,
        bytes: &[u8],
        may_make_segment: bool,
    ) -> std::io::Result<Option<Appended>> {
        let length = HEADER_BYTES + bytes.len();
        let Some((file, appended)) = self.reserve(length as u64, may_make_segment)? else {
            return Ok(None);
        };
        // Its segment is pinned already, so a failed write leaves a hole nobody points to.
        // The header and the bytes are written in two calls rather than copied into one
        // record first: the copy, into fresh memory, cost more than the second call
        // (BENCHMARKS.md, sixteenth session).
        let offset = appended.location.offset as u64;
        file.write_all_at(&header(bytes), offset)?;
        file.write_all_at(bytes, offset + HEADER_BYTES as u64)?;
        // Only now may the syncer see the segment as written: an fsync taken earlier would
        // not cover this record.
        let mut segments = lock(&self.segments);
        if !segments.unsynced.iter().any(|f| Arc::ptr_eq(f, &file)) {
            segments.unsynced.push(file);
        }
        Ok(Some(appended))
    }

    /// The place of a record of `length` bytes, pinned, and the file of its segment. When
    /// the current segment has no room the spare is started; without one, a segment is
    /// made first if `may_make_segment`, else `None`.
    fn reserve(
        self: &Arc<Self>,
        length: u64,
        may_make_segment: bool,
    ) -> std::io::Result<Option<(Arc<File>, Appended)>> {
        if let Some(reserved) = self.reserve_in_made(length)? {
            return Ok(Some(reserved));
        }
        if !may_make_segment {
            return Ok(None);
        }
        self.make_spare()?;
        match self.reserve_in_made(length)? {
            Some(reserved) => Ok(Some(reserved)),
            None => Err(Error::other(
                "document log: no segment to append to (the log is closed)",
            )),
        }
    }

    /// Like `reserve`, in the current segment or the spare only.
    fn reserve_in_made(
        self: &Arc<Self>,
        length: u64,
    ) -> std::io::Result<Option<(Arc<File>, Appended)>> {
        let mut segments = lock(&self.segments);
        if segments.length == 0 || segments.length + length <= self.segment_bytes {
            return segments.place(self, length, false).map(Some);
        }
        let Some(spare) = segments.spare.take() else {
            return Ok(None);
        };
        segments.file = spare;
        segments.current += 1;
        segments.length = 0;
        segments.place(self, length, true).map(Some)
    }

    /// The segments written to since the last call, for the syncer to fsync.
    pub fn take_unsynced(&self) -> Vec<Arc<File>> {
        std::mem::take(&mut lock(&self.segments).unsynced)
    }

    /// Remove every segment older than the current one for which `referenced` says no
    /// document row points into it any more and no append is still on its way to a row.
    pub fn remove_unreferenced<E>(
        &self,
        mut referenced: impl FnMut(i64) -> Result<bool, E>,
    ) -> Result<(), E>
    where
        E: From<std::io::Error>,
    {
        // Records only go into the current segment or the spare, so an older segment with
        // no append on its way now never gets one: the lock is not held while rows are
        // looked up and files removed (a 64 MiB one takes a while), so appends go on.
        let unpinned: Vec<i64> = {
            let segments = lock(&self.segments);
            segments
                .present
                .range(..segments.current)
                .filter(|segment| !segments.pinned.contains_key(segment))
                .copied()
                .collect()
        };
        for segment in unpinned {
            if referenced(segment)? {
                continue;
            }
            match std::fs::remove_file(segment_path(&self.directory, segment)) {
                Err(error) if error.kind() != ErrorKind::NotFound => return Err(error.into()),
                _ => {
                    lock(&self.segments).present.remove(&segment);
                }
            }
        }
        Ok(())
    }

    /// Read the record of `size` bytes at `location`, checking that it is whole.
    pub fn read(&self, location: Location, size: u64) -> std::io::Result<Bytes> {
        let damaged = |what: &str| {
            Error::new(
                ErrorKind::InvalidData,
                format!(
                    "document log segment {} at {}: {what}",
                    location.segment, location.offset
                ),
            )
        };
        let offset = u64::try_from(location.offset).map_err(|_| damaged("negative offset"))?;
        let length = usize::try_from(size).map_err(|_| damaged("too large to read"))?;
        let file = File::open(segment_path(&self.directory, location.segment))?;
        let mut record = vec![0; HEADER_BYTES + length];
        file.read_exact_at(&mut record, offset).map_err(|error| {
            if error.kind() == ErrorKind::UnexpectedEof {
                damaged("the record is cut short")
            } else {
                error
            }
        })?;
        // The bytes after the header, without copying them out of the record.
        let record = Bytes::from(record);
        let body = record.slice(HEADER_BYTES..);
        if record[..HEADER_BYTES] != header(&body)[..] {
            return Err(damaged("the record is damaged or is not this document's"));
        }
        Ok(body)
    }
}

impl Segments {
    /// Reserves `length` bytes at the end of the current segment for a record of `log`.
    fn place(
        &mut self,
        log: &Arc<DocumentLog>,
        length: u64,
        started_segment: bool,
    ) -> std::io::Result<(Arc<File>, Appended)> {
        let offset = i64::try_from(self.length)
            .map_err(|_| Error::other("document log segment too long"))?;
        self.length += length;
        let segment = self.current;
        *self.pinned.entry(segment).or_default() += 1;
        let appended = Appended {
            log: log.clone(),
            location: Location { segment, offset },
            started_segment,
        };
        Ok((self.file.clone(), appended))
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

fn header(bytes: &[u8]) -> [u8; HEADER_BYTES] {
    let mut header = [0; HEADER_BYTES];
    header[..4].copy_from_slice(&MAGIC);
    header[4..12].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    header[12..16].copy_from_slice(&crc32fast::hash(bytes).to_le_bytes());
    header
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|n| (n as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    use crate::store::documents::tests::files_in as segments;

    fn open(directory: &Path, segment_bytes: u64) -> Arc<DocumentLog> {
        Arc::new(DocumentLog::open(directory, segment_bytes).expect("open"))
    }

    #[test]
    fn records_read_back_and_segments_roll_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), 100_000);
        let documents: Vec<Vec<u8>> = (0..5).map(|n| pattern(40_000, n)).collect();
        let locations: Vec<Location> = documents
            .iter()
            .map(|bytes| log.append(bytes).expect("append").location())
            .collect();
        // Two 40 KB records fit in a 100 KB segment; the third starts a new one (the spare
        // made at opening), the fifth one made for it.
        let numbers: Vec<i64> = locations.iter().map(|l| l.segment).collect();
        assert_eq!(numbers, vec![1, 1, 2, 2, 3]);
        assert_eq!(
            log.take_unsynced().len(),
            3,
            "every segment written awaits an fsync"
        );
        assert!(log.take_unsynced().is_empty());
        for (bytes, location) in documents.iter().zip(&locations) {
            assert_eq!(log.read(*location, 40_000).expect("read"), *bytes);
        }
    }

    #[test]
    fn trying_to_append_starts_the_spare_segment_but_never_makes_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), 100_000);
        assert_eq!(
            segments(dir.path()),
            ["000000000001.log", "000000000002.log"],
            "the spare is made at opening"
        );
        let documents: Vec<Vec<u8>> = (0..6).map(|n| pattern(40_000, n)).collect();
        let segment_of = |appended: Option<Appended>| {
            appended.map(|a| (a.location().segment, a.started_segment()))
        };
        let try_append = |n: usize| segment_of(log.try_append(&documents[n]).expect("append"));
        assert_eq!(try_append(0), Some((1, false)));
        assert_eq!(try_append(1), Some((1, false)));
        // A third 40 KB record does not fit the 100 KB segment: it starts the spare.
        assert_eq!(try_append(2), Some((2, true)));
        assert_eq!(try_append(3), Some((2, false)));
        // No spare now: nothing is written, and no segment made.
        assert_eq!(try_append(4), None);
        assert_eq!(
            segments(dir.path()),
            ["000000000001.log", "000000000002.log"]
        );
        let length = std::fs::metadata(segment_path(dir.path(), 2))
            .expect("segment")
            .len();
        assert_eq!(length, 2 * (HEADER_BYTES as u64 + 40_000));
        log.make_spare().expect("make the spare");
        assert_eq!(try_append(4), Some((3, true)));
        assert_eq!(try_append(5), Some((3, false)));
        // Without a spare, `append` makes the segment it needs.
        let sixth = log.append(&documents[5]).expect("append");
        assert_eq!(
            (sixth.location().segment, sixth.started_segment()),
            (4, true)
        );
        assert_eq!(
            log.read(sixth.location(), 40_000).expect("read"),
            documents[5]
        );
    }

    #[test]
    fn a_closed_log_makes_no_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), 50_000);
        log.close();
        let record = pattern(30_000, 1);
        assert_eq!(log.append(&record).expect("append").location().segment, 1);
        assert_eq!(log.append(&record).expect("append").location().segment, 2);
        log.make_spare().expect("nothing to do");
        assert!(
            log.append(&record).is_err(),
            "no segment is left to append to"
        );
        assert_eq!(
            segments(dir.path()),
            ["000000000001.log", "000000000002.log"]
        );
    }

    #[test]
    fn a_damaged_or_cut_short_record_is_an_error_never_other_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), SEGMENT_BYTES);
        let location = log.append(&pattern(20_000, 7)).expect("append").location();
        let wrong_length = log.read(location, 19_000).expect_err("length");
        assert_eq!(wrong_length.kind(), ErrorKind::InvalidData);
        let cut_short = log.read(location, 30_000).expect_err("past the end");
        assert_eq!(cut_short.kind(), ErrorKind::InvalidData, "{cut_short}");

        let path = segment_path(dir.path(), location.segment);
        let file = File::options().write(true).open(&path).expect("segment");
        file.write_all_at(b"\xff", HEADER_BYTES as u64 + 1000)
            .expect("damage");
        let damaged = log.read(location, 20_000).expect_err("damaged");
        assert_eq!(damaged.kind(), ErrorKind::InvalidData);
        assert!(damaged.to_string().contains("damaged"), "{damaged}");
    }

    #[test]
    fn reopening_appends_to_a_new_segment_and_unreferenced_ones_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), 50_000);
        for _ in 0..3 {
            log.append(&pattern(30_000, 1)).expect("append");
        }
        assert_eq!(segments(dir.path()).len(), 3);
        drop(log);
        let log = open(dir.path(), 50_000);
        let appended = log.append(&pattern(100, 2)).expect("append");
        assert_eq!(
            appended.location().segment,
            4,
            "never appends to an old segment"
        );
        // Only segment 2 still holds a document some row points to; 5 is the spare.
        log.remove_unreferenced(|segment| Ok::<_, Error>(segment == 2))
            .expect("remove");
        assert_eq!(
            segments(dir.path()),
            ["000000000002.log", "000000000004.log", "000000000005.log"]
        );
        log.remove_unreferenced(|_| Ok::<_, Error>(false))
            .expect("remove");
        assert_eq!(
            segments(dir.path()),
            ["000000000004.log", "000000000005.log"]
        );
    }

    #[test]
    fn appends_go_on_while_unreferenced_segments_are_looked_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), 50_000);
        log.append(&pattern(30_000, 1)).expect("append");
        log.append(&pattern(30_000, 2)).expect("append");
        log.make_spare().expect("make the spare");
        let (appended, appended_meanwhile) = std::sync::mpsc::channel();
        log.remove_unreferenced(|_| {
            let log = log.clone();
            let appended = appended.clone();
            std::thread::spawn(move || {
                let _ = appended.send(log.try_append(&pattern(100, 3)).map(|a| a.is_some()));
            });
            let meanwhile = appended_meanwhile.recv_timeout(Duration::from_secs(5));
            assert!(
                matches!(meanwhile, Ok(Ok(true))),
                "an append waited for the lookup: {meanwhile:?}"
            );
            Ok::<_, Error>(false)
        })
        .expect("remove");
        assert_eq!(
            segments(dir.path()),
            ["000000000002.log", "000000000003.log"]
        );
    }

    #[test]
    fn a_segment_with_an_append_on_its_way_to_a_row_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open(dir.path(), 50_000);
        let in_flight = log.append(&pattern(30_000, 1)).expect("append");
        // The next append starts segment 2, so segment 1 is no longer the current one.
        drop(log.append(&pattern(30_000, 2)).expect("append"));
        log.remove_unreferenced(|_| Ok::<_, Error>(false))
            .expect("remove");
        assert_eq!(
            segments(dir.path()),
            ["000000000001.log", "000000000002.log"]
        );
        drop(in_flight);
        log.remove_unreferenced(|_| Ok::<_, Error>(false))
            .expect("remove");
        assert_eq!(segments(dir.path()), ["000000000002.log"]);
    }
}
