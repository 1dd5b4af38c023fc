//! Completions of delivered jobs, appended to a file beside the database before the
//! writer thread commits them.
//!
//! A printer's next job may start only once the previous one's outcome survives the
//! process being killed: otherwise a kill would have both sent again. A commit by the
//! writer thread gives that, but waiting for it (a hand-over to the writer and a wake-up
//! back) took longer than sending a 64 KiB job to the printer. Appending one line to this
//! file, on the worker's own thread, gives the same: the line is in the page cache when
//! `write` returns, as a commit is in the log (neither is fsynced; after a power loss a
//! job whose outcome is lost is sent again, as before). The writer then commits the
//! outcome with the next batch, and at the next start every line is applied again, the
//! newest per job, through the same fence as a live outcome: one already recorded, or
//! whose claim was lost, changes nothing. Only completions come here: a completed job is
//! never claimed again, so an old line cannot undo a later attempt.
//!
//! The file is emptied once every line appended has been committed and it has grown past
//! [`EMPTY_AT_BYTES`]; it is read whole at the next start, so emptying keeps that short.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::lock;
use crate::job::{Claimer, JobId};
use crate::store::Outcome;

/// The file is emptied once it is this long and every outcome in it is committed.
const EMPTY_AT_BYTES: u64 = 64 * 1024;

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct OutcomeRecord {
    pub job: JobId,
    pub claimer: Claimer,
    pub outcome: Outcome,
}

pub(super) struct OutcomeLog {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    file: File,
    /// The file's length: where the next line starts.
    length: u64,
    /// Lines appended since the file was last emptied, and how many of them the writer
    /// has committed (or failed to, which it reported to their callers).
    appended: u64,
    settled: u64,
}

/// The outcome log beside the database at `database`.
pub(super) fn path_of(database: &Path) -> PathBuf {
    let mut path = database.as_os_str().to_owned();
    path.push("-outcomes");
    PathBuf::from(path)
}

impl OutcomeLog {
    /// Opens (creating) the log at `path`, with the outcomes it holds: the newest line of
    /// each job, in job order. A line that cannot be read (cut short by a power loss) is
    /// skipped.
    pub fn open(path: &Path) -> std::io::Result<(OutcomeLog, Vec<OutcomeRecord>)> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(error) if error.kind() == ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(error),
        };
        let mut newest = BTreeMap::new();
        for line in text
            .split(|&byte| byte == b'\n')
            .filter(|line| !line.is_empty())
        {
            match serde_json::from_slice::<OutcomeRecord>(line) {
                Ok(record) => {
                    newest.insert(record.job, record);
                }
                Err(error) => {
                    tracing::warn!(
                        file = %path.display(),
                        %error,
                        "skipping a damaged outcome record"
                    );
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let length = file.metadata()?.len();
        let log = OutcomeLog {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                file,
                length,
                appended: 0,
                settled: 0,
            }),
        };
        Ok((log, newest.into_values().collect()))
    }

    /// Appends `record`: once this returns, a kill of the process no longer loses it.
    pub fn append(&self, record: &OutcomeRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        let mut state = lock(&self.state);
        if let Err(error) = state.file.write_all(&line) {
            // A part-written line would spoil the next one appended after it.
            let length = state.length;
            let _ = state.file.set_len(length);
            return Err(error);
        }
        state.length += line.len() as u64;
        state.appended += 1;
        Ok(())
    }

    /// The writer is done with `count` appended outcomes: committed, or failed and
    /// reported to their callers.
    pub fn settled(&self, count: u64) {
        if count == 0 {
            return;
        }
        let mut state = lock(&self.state);
        state.settled += count;
        if state.settled >= state.appended
            && state.length >= EMPTY_AT_BYTES
            && let Err(error) = Self::empty(&mut state)
        {
            tracing::warn!(file = %self.path.display(), %error, "cannot empty the outcome log");
        }
    }

    /// Empties the log: every outcome in it is recorded in the database.
    pub fn clear(&self) -> std::io::Result<()> {
        Self::empty(&mut lock(&self.state))
    }

    fn empty(state: &mut State) -> std::io::Result<()> {
        state.file.set_len(0)?;
        state.length = 0;
        state.appended = 0;
        state.settled = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::ledger::LedgerEntry;

    fn claimer() -> Claimer {
        Claimer {
            id: "spooler".into(),
            epoch: 3,
            shard: None,
        }
    }

    fn completed(job: JobId, impressions: i64) -> OutcomeRecord {
        OutcomeRecord {
            job,
            claimer: claimer(),
            outcome: Outcome::Completed {
                printer: "p1".into(),
                impressions: Some(impressions),
                sheets: None,
                settlement: None::<LedgerEntry>,
            },
        }
    }

    /// A new, empty log in a directory of its own (kept alive by the first value).
    fn new_log() -> (tempfile::TempDir, PathBuf, OutcomeLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = path_of(&dir.path().join("jobs.db"));
        let (log, records) = OutcomeLog::open(&path).unwrap();
        assert!(records.is_empty());
        (dir, path, log)
    }

    /// What the next start would read from the log at `path`.
    fn read_back(path: &Path) -> Vec<OutcomeRecord> {
        OutcomeLog::open(path).unwrap().1
    }

    #[test]
    fn the_newest_record_of_each_job_is_read_back_at_the_next_open() {
        let (_dir, path, log) = new_log();
        let retry = OutcomeRecord {
            outcome: Outcome::Retry {
                printer: "p1".into(),
                message: "hung up".into(),
                retry_at_ms: 1,
            },
            ..completed(7, 0)
        };
        for record in [&retry, &completed(5, 1), &completed(7, 2)] {
            log.append(record).unwrap();
        }
        drop(log);
        assert_eq!(read_back(&path), vec![completed(5, 1), completed(7, 2)]);
    }

    #[test]
    fn a_line_cut_short_is_skipped_and_the_next_append_starts_clean() {
        let (_dir, path, log) = new_log();
        log.append(&completed(1, 1)).unwrap();
        drop(log);
        let mut text = std::fs::read(&path).unwrap();
        let mut line = serde_json::to_vec(&completed(2, 1)).unwrap();
        line.truncate(line.len() / 2);
        text.extend_from_slice(&line);
        text.push(b'\n');
        std::fs::write(&path, text).unwrap();
        let (log, records) = OutcomeLog::open(&path).unwrap();
        assert_eq!(records, vec![completed(1, 1)]);
        log.append(&completed(3, 1)).unwrap();
        drop(log);
        assert_eq!(read_back(&path), vec![completed(1, 1), completed(3, 1)]);
    }

    #[test]
    fn the_log_is_emptied_once_long_and_every_outcome_is_settled() {
        let (_dir, path, log) = new_log();
        let length = || std::fs::metadata(&path).unwrap().len();
        let mut job = 0;
        while length() < EMPTY_AT_BYTES {
            job += 1;
            log.append(&completed(job, 1)).unwrap();
        }
        // One outcome is still on its way to the database: nothing is emptied.
        log.settled(job as u64 - 1);
        assert!(length() >= EMPTY_AT_BYTES);
        log.settled(1);
        assert_eq!(length(), 0);
        log.append(&completed(job + 1, 1)).unwrap();
        drop(log);
        assert_eq!(read_back(&path), vec![completed(job + 1, 1)]);
    }

    #[test]
    fn clear_empties_the_log() {
        let (_dir, path, log) = new_log();
        log.append(&completed(1, 1)).unwrap();
        log.clear().unwrap();
        drop(log);
        assert!(read_back(&path).is_empty());
    }
}
