//! Answers received that the store could not take yet (it was down, or its disk full): a
//! ticket Visibuild created, a file S3 confirmed. Kept in memory and in a file of this
//! process's own beside the store, written to the store as soon as it answers again — by
//! this run, or by the next one before it claims anything — so that nothing the program saw
//! succeed is ever sent again or taken for a create that may not have landed.
//!
//! The file is reserved at its full size when the run starts, and entries overwrite that
//! reserved space in place: a journal still takes entries on the disk that filled up under
//! the store. Each process writes its own file (`BASE.PID`) and holds a lock on it; a file
//! whose lock is free belongs to a process that is gone, and the next run takes its entries.

use crate::domain::{AttachmentId, TicketId};
use crate::store::{Store, StoreError, tickets};
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bytes reserved for a process's journal when it opens (a few thousand entries).
const RESERVED: u64 = 512 * 1024;

/// One answer to record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Entry {
    /// Visibuild created the ticket (with its id, when the answer said it).
    Created {
        ticket: TicketId,
        visibuild_id: Option<String>,
    },
    /// S3 has the attachment's file under `key`.
    Uploaded {
        attachment: AttachmentId,
        key: String,
        resolved_path: String,
        size: i64,
        mtime_ns: i64,
        md5: String,
        change: Option<String>,
    },
}

impl Entry {
    pub fn uploaded(attachment: AttachmentId, u: &tickets::Uploaded) -> Self {
        Entry::Uploaded {
            attachment,
            key: u.key.clone(),
            resolved_path: u.resolved_path.clone(),
            size: u.size,
            mtime_ns: u.mtime_ns,
            md5: u.md5.clone(),
            change: u.change.clone(),
        }
    }
}

/// The journal of one process.
pub struct Journal {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// This process's file, locked; `None` when it could not be opened (memory only).
    file: Option<std::fs::File>,
    /// Bytes of the file in use by entries.
    used: u64,
    /// Entries not yet in the store (those of gone processes' files included).
    pending: Vec<Entry>,
    /// Gone processes' files whose entries are in `pending`: removed once replayed.
    orphans: Vec<PathBuf>,
}

impl Journal {
    /// Opens this process's journal `BASE.PID` (reserving its space) and takes the entries of
    /// gone processes' journals beside it. Never fails: a journal that cannot be written
    /// keeps its entries in memory, and says so once.
    pub fn open(base: &Path) -> Self {
        let path = own_path(base);
        let mut state = State::default();
        for orphan in orphans(base) {
            match read_entries(&orphan) {
                Ok(entries) => {
                    if !entries.is_empty() {
                        tracing::info!(journal = %orphan.display(), answers = entries.len(),
                            "answers a previous run received but could not record: recording them first");
                    }
                    state.pending.extend(entries);
                    // Our own pid's file (a gone process had our pid) is cleared, not removed.
                    if orphan != path {
                        state.orphans.push(orphan);
                    }
                }
                Err(e) => {
                    tracing::warn!(journal = %orphan.display(), error = %e, "cannot read an earlier run's journal")
                }
            }
        }
        match open_own(&path) {
            Ok(file) => state.file = Some(file),
            Err(e) => tracing::warn!(journal = %path.display(), error = %e,
                "cannot open the answers journal; answers the store cannot take are kept in memory only"),
        }
        Self {
            path,
            state: Mutex::new(state),
        }
    }

    /// A journal in memory only (tests, library users without a store file).
    pub fn in_memory() -> Self {
        Self {
            path: PathBuf::new(),
            state: Mutex::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keep `entry` until the store takes it: in memory, and written to the file and synced
    /// before this returns (so a run that must exit first leaves it for the next).
    pub fn record(&self, entry: Entry) {
        let mut state = self.lock();
        if let Some(file) = &state.file {
            let mut line = serde_json::to_vec(&entry).expect("entries serialize");
            line.push(b'\n');
            let at = state.used;
            match file.write_all_at(&line, at).and_then(|()| file.sync_data()) {
                Ok(()) => state.used += line.len() as u64,
                Err(e) => tracing::error!(journal = %self.path.display(), error = %e,
                    "cannot write an answer to the journal; it is kept in memory only"),
            }
        }
        state.pending.push(entry);
    }

    pub fn has_entries(&self) -> bool {
        !self.lock().pending.is_empty()
    }

    /// Write every kept answer to the store, in one transaction; then the file is cleared
    /// (its space kept) and gone processes' files removed. On failure everything stays.
    pub async fn replay(&self, db: &Store) -> Result<usize, StoreError> {
        let entries = self.lock().pending.clone();
        if entries.is_empty() {
            return Ok(0);
        }
        let mut tx = db.begin().await?;
        let mut conn = tx.conn();
        for entry in &entries {
            match entry {
                Entry::Created {
                    ticket,
                    visibuild_id,
                } => tickets::record_created(&mut conn, *ticket, visibuild_id.as_deref()).await?,
                Entry::Uploaded {
                    attachment,
                    key,
                    resolved_path,
                    size,
                    mtime_ns,
                    md5,
                    change,
                } => {
                    let uploaded = tickets::Uploaded {
                        key: key.clone(),
                        resolved_path: resolved_path.clone(),
                        size: *size,
                        mtime_ns: *mtime_ns,
                        md5: md5.clone(),
                        change: change.clone(),
                    };
                    tickets::record_upload_found(&mut conn, *attachment, &uploaded).await?
                }
            }
        }
        tx.commit().await?;
        let mut state = self.lock();
        // Entries recorded while the transaction ran stay for the next replay.
        state.pending.drain(..entries.len());
        if state.pending.is_empty() {
            if let Some(file) = &state.file
                && let Err(e) = file.write_all_at(&vec![0u8; state.used as usize], 0)
            {
                tracing::warn!(journal = %self.path.display(), error = %e, "cannot clear the journal");
            } else {
                state.used = 0;
            }
        }
        for orphan in std::mem::take(&mut state.orphans) {
            let _ = std::fs::remove_file(&orphan);
        }
        tracing::info!(
            answers = entries.len(),
            "recorded answers received while the store was down"
        );
        Ok(entries.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Journal {
    /// A journal left empty is removed; one with entries stays for the next run.
    fn drop(&mut self) {
        let state = self.lock();
        if state.file.is_some() && state.pending.is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn own_path(base: &Path) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{}", std::process::id()));
    PathBuf::from(name)
}

/// This process's journal: created owner-only, locked, its space reserved, empty.
fn open_own(path: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
    // A file of a process that had our pid: its entries were taken as an orphan's already
    // (it was unlocked), so it is cleared. Zeros, written, so the space is really ours.
    file.seek(SeekFrom::Start(0))?;
    let zeros = vec![0u8; 64 * 1024];
    let mut left = RESERVED;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// The other journals beside `base` (`BASE.PID`) whose lock is free: their processes are
/// gone.
fn orphans(base: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(stem)) = (base.parent(), base.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = format!("{}.", stem.to_string_lossy());
    let mut found = Vec::new();
    for entry in read.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix) else {
            continue;
        };
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let path = dir.join(&name);
        // (Our own pid's file is found too when it is unlocked: a gone process had our pid.)
        if let Ok(file) = std::fs::File::open(&path)
            && rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok()
        {
            found.push(path);
        }
    }
    found
}

/// The entries of a journal file: JSON lines up to the first NUL of its reserved space.
fn read_entries(path: &Path) -> std::io::Result<Vec<Entry>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let mut entries = Vec::new();
    for line in bytes[..end].split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(entry) => entries.push(entry),
            // A line cut short by a crash mid-write: the answer it held is lost, as it would
            // have been without a journal.
            Err(e) => {
                tracing::warn!(journal = %path.display(), error = %e, "skipping a damaged journal line")
            }
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_process_and_a_later_journal_takes_them() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("queue.db-answers");
        // Another (gone) process's journal: written, then unlocked by closing it.
        let gone = dir.path().join("queue.db-answers.999999999");
        let entry = Entry::Created {
            ticket: TicketId(uuid::Uuid::nil()),
            visibuild_id: Some("T-1".into()),
        };
        {
            let file = open_own(&gone).unwrap();
            let mut line = serde_json::to_vec(&entry).unwrap();
            line.push(b'\n');
            file.write_all_at(&line, 0).unwrap();
        }
        let journal = Journal::open(&base);
        assert!(journal.has_entries());
        assert_eq!(journal.lock().pending, vec![entry.clone()]);
        // Our own file is reserved and, while we live, not an orphan for anyone.
        let own = own_path(&base);
        assert_eq!(std::fs::metadata(&own).unwrap().len(), RESERVED);
        assert!(orphans(&base).iter().all(|p| *p != own));
        journal.record(entry.clone());
        assert_eq!(read_entries(&own).unwrap(), vec![entry]);
    }
}
