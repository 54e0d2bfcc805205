//! Raft's durable state on this replica's disk: hard state (term, vote,
//! commit), the log, and the latest state-machine snapshot.
//!
//! `wal` is an append-only file of checksummed records (entries and hard
//! states), synced before raft is told they are persisted. A torn record at
//! the end (a crash mid-write) is cut off on load. Compaction writes the
//! snapshot file, then rewrites the log without the compacted prefix, both
//! by temp file + fsync + rename.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

const TAG_ENTRY: u8 = 1;
const TAG_HARD_STATE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StorageFailure {
    #[error("raft state in {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("raft state in {dir} is corrupt: {what}")]
    Corrupt { dir: PathBuf, what: String },
}

/// Shared handle: raft reads through [`Storage`], the driver writes.
#[derive(Clone)]
pub struct DiskStorage {
    core: Arc<Mutex<Core>>,
}

struct Core {
    dir: PathBuf,
    hard_state: HardState,
    conf_state: ConfState,
    /// Latest snapshot; its metadata's index is the last compacted entry.
    snapshot: Snapshot,
    /// Entries after the snapshot: `entries[0].index == snapshot.index + 1`.
    entries: Vec<Entry>,
    wal: BufWriter<File>,
}

impl DiskStorage {
    /// Opens the state in `dir`, or creates a new one whose members are
    /// `voters`. Returns the storage and the snapshot data to restore the
    /// state machine from (empty when there is none).
    pub fn open(dir: &Path, voters: &[u64]) -> Result<(DiskStorage, Vec<u8>), StorageFailure> {
        let io_err = |source| StorageFailure::Io {
            dir: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        let mut snapshot = Snapshot::default();
        let snap_path = dir.join("snapshot");
        if snap_path.exists() {
            let bytes = fs::read(&snap_path).map_err(io_err)?;
            snapshot = Snapshot::parse_from_bytes(&bytes).map_err(|e| StorageFailure::Corrupt {
                dir: dir.to_path_buf(),
                what: format!("snapshot: {e}"),
            })?;
        }
        let fresh = !snap_path.exists();
        if fresh {
            // The membership lives in the snapshot's metadata: write an
            // empty snapshot holding it, so a restart knows the members.
            snapshot
                .mut_metadata()
                .mut_conf_state()
                .set_voters(voters.to_vec());
            let bytes = snapshot
                .write_to_bytes()
                .map_err(|e| io_err(io::Error::other(e)))?;
            write_atomically(&snap_path, &bytes).map_err(io_err)?;
        }
        let conf_state = snapshot.get_metadata().get_conf_state().clone();
        let mut hard_state = HardState {
            commit: snapshot.get_metadata().index,
            term: snapshot.get_metadata().term,
            ..Default::default()
        };
        let mut entries: Vec<Entry> = Vec::new();

        let wal_path = dir.join("wal");
        let mut valid_len = 0u64;
        if wal_path.exists() {
            let mut bytes = Vec::new();
            File::open(&wal_path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_err)?;
            let mut pos = 0usize;
            while let Some((tag, payload, next)) = read_record(&bytes, pos) {
                match tag {
                    TAG_ENTRY => {
                        let e = Entry::parse_from_bytes(payload).map_err(|e| {
                            StorageFailure::Corrupt {
                                dir: dir.to_path_buf(),
                                what: format!("log entry: {e}"),
                            }
                        })?;
                        if e.index > snapshot.get_metadata().index {
                            truncate_and_push(&mut entries, e, snapshot.get_metadata().index);
                        }
                    }
                    TAG_HARD_STATE => {
                        hard_state = HardState::parse_from_bytes(payload).map_err(|e| {
                            StorageFailure::Corrupt {
                                dir: dir.to_path_buf(),
                                what: format!("hard state: {e}"),
                            }
                        })?;
                    }
                    other => {
                        return Err(StorageFailure::Corrupt {
                            dir: dir.to_path_buf(),
                            what: format!("unknown record tag {other}"),
                        });
                    }
                }
                pos = next;
            }
            valid_len = pos as u64;
            if (valid_len as usize) < bytes.len() {
                tracing::warn!(
                    kept = valid_len,
                    dropped = bytes.len() as u64 - valid_len,
                    "raft log ends in a torn record (crash mid-write); cutting it off"
                );
            }
        }
        if hard_state.commit < snapshot.get_metadata().index {
            hard_state.commit = snapshot.get_metadata().index;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(false)
            .write(true)
            .truncate(false)
            .open(&wal_path)
            .map_err(io_err)?;
        file.set_len(valid_len).map_err(io_err)?;
        let mut wal = BufWriter::new(file);
        io::Seek::seek(&mut wal, io::SeekFrom::End(0)).map_err(io_err)?;
        let data = snapshot.get_data().to_vec();
        let core = Core {
            dir: dir.to_path_buf(),
            hard_state,
            conf_state,
            snapshot,
            entries,
            wal,
        };
        Ok((
            DiskStorage {
                core: Arc::new(Mutex::new(core)),
            },
            data,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding this lock already crashed the raft driver.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends entries (replacing any conflicting suffix) to the log.
    /// Call [`DiskStorage::sync`] before reporting them persisted.
    pub fn append(&self, ents: &[Entry]) -> io::Result<()> {
        let mut core = self.lock();
        let snap_index = core.snapshot.get_metadata().index;
        for e in ents {
            write_record(
                &mut core.wal,
                TAG_ENTRY,
                &e.write_to_bytes().map_err(io::Error::other)?,
            )?;
            truncate_and_push(&mut core.entries, e.clone(), snap_index);
        }
        Ok(())
    }

    pub fn set_hard_state(&self, hs: &HardState) -> io::Result<()> {
        let mut core = self.lock();
        write_record(
            &mut core.wal,
            TAG_HARD_STATE,
            &hs.write_to_bytes().map_err(io::Error::other)?,
        )?;
        core.hard_state = hs.clone();
        Ok(())
    }

    pub fn set_commit(&self, commit: u64) -> io::Result<()> {
        let mut hs = self.lock().hard_state.clone();
        if hs.commit != commit {
            hs.commit = commit;
            self.set_hard_state(&hs)?;
        }
        Ok(())
    }

    /// Flushes and fsyncs the log.
    pub fn sync(&self) -> io::Result<()> {
        let mut core = self.lock();
        core.wal.flush()?;
        core.wal.get_ref().sync_data()
    }

    pub fn hard_state(&self) -> HardState {
        self.lock().hard_state.clone()
    }

    pub fn first_index_now(&self) -> u64 {
        self.lock().snapshot.get_metadata().index + 1
    }

    pub fn snapshot_index(&self) -> u64 {
        self.lock().snapshot.get_metadata().index
    }

    /// Installs a snapshot received from the leader: the log is replaced.
    pub fn apply_snapshot(&self, snap: &Snapshot) -> io::Result<()> {
        let mut core = self.lock();
        let meta = snap.get_metadata();
        core.conf_state = meta.get_conf_state().clone();
        core.hard_state.commit = core.hard_state.commit.max(meta.index);
        core.hard_state.term = core.hard_state.term.max(meta.term);
        core.entries.retain(|e| e.index > meta.index);
        if core
            .entries
            .first()
            .is_some_and(|e| e.index != meta.index + 1)
        {
            core.entries.clear();
        }
        core.snapshot = snap.clone();
        core.persist_snapshot_and_rewrite()
    }

    /// Compacts the log up to `index` (applied), keeping `data` (the state
    /// machine at `index`) as the snapshot served to lagging followers.
    pub fn compact(&self, index: u64, data: Vec<u8>) -> io::Result<()> {
        let mut core = self.lock();
        let snap_index = core.snapshot.get_metadata().index;
        if index <= snap_index {
            return Ok(());
        }
        let Some(term) = core
            .entries
            .get((index - snap_index - 1) as usize)
            .map(|e| e.term)
        else {
            return Ok(());
        };
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(core.conf_state.clone());
        core.snapshot = snap;
        core.entries.retain(|e| e.index > index);
        core.persist_snapshot_and_rewrite()
    }
}

impl Core {
    fn persist_snapshot_and_rewrite(&mut self) -> io::Result<()> {
        write_atomically(
            &self.dir.join("snapshot"),
            &self.snapshot.write_to_bytes().map_err(io::Error::other)?,
        )?;
        let mut buf = Vec::new();
        push_record(
            &mut buf,
            TAG_HARD_STATE,
            &self.hard_state.write_to_bytes().map_err(io::Error::other)?,
        );
        for e in &self.entries {
            push_record(
                &mut buf,
                TAG_ENTRY,
                &e.write_to_bytes().map_err(io::Error::other)?,
            );
        }
        let wal_path = self.dir.join("wal");
        write_atomically(&wal_path, &buf)?;
        let file = OpenOptions::new().append(true).open(&wal_path)?;
        self.wal = BufWriter::new(file);
        Ok(())
    }

    fn first_index(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last_index(&self) -> u64 {
        self.snapshot.get_metadata().index + self.entries.len() as u64
    }
}

fn truncate_and_push(entries: &mut Vec<Entry>, e: Entry, snap_index: u64) {
    let pos = (e.index - snap_index - 1) as usize;
    if pos < entries.len() {
        entries.truncate(pos);
    }
    if pos == entries.len() {
        entries.push(e);
    }
}

fn push_record(buf: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    buf.push(tag);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
}

fn write_record(w: &mut impl Write, tag: u8, payload: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + 9);
    push_record(&mut buf, tag, payload);
    w.write_all(&buf)
}

/// The record at `pos`: (tag, payload, next position), or None at the end
/// or at a torn/corrupt record.
fn read_record(bytes: &[u8], pos: usize) -> Option<(u8, &[u8], usize)> {
    let tag = *bytes.get(pos)?;
    let len = u32::from_le_bytes(bytes.get(pos + 1..pos + 5)?.try_into().ok()?) as usize;
    let payload = bytes.get(pos + 5..pos + 5 + len)?;
    let crc = u32::from_le_bytes(bytes.get(pos + 5 + len..pos + 9 + len)?.try_into().ok()?);
    (crc32fast::hash(payload) == crc).then_some((tag, payload, pos + 9 + len))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.lock();
        Ok(RaftState::new(
            core.hard_state.clone(),
            core.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.lock();
        if low < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > core.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = core.first_index();
        let mut ents = core.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let core = self.lock();
        let snap = core.snapshot.get_metadata();
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > core.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(core.entries[(idx - core.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.lock().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.lock().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let core = self.lock();
        if core.snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(core.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry {
            index,
            term,
            ..Default::default()
        };
        e.set_data(data.to_vec().into());
        e
    }

    #[test]
    fn log_and_hard_state_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, data) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
            assert!(data.is_empty());
            s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .unwrap();
            // A new leader overwrites a conflicting suffix.
            s.append(&[entry(3, 2, b"C"), entry(4, 2, b"d")]).unwrap();
            let hs = HardState {
                term: 2,
                vote: 3,
                commit: 3,
                ..Default::default()
            };
            s.set_hard_state(&hs).unwrap();
            s.sync().unwrap();
        }
        let (s, _) = DiskStorage::open(dir.path(), &[9]).unwrap();
        let state = s.initial_state().unwrap();
        assert_eq!(
            (
                state.hard_state.term,
                state.hard_state.vote,
                state.hard_state.commit
            ),
            (2, 3, 3)
        );
        assert_eq!(
            state.conf_state.get_voters(),
            &[1, 2, 3],
            "members come from disk, not the new list"
        );
        assert_eq!(s.last_index().unwrap(), 4);
        let ents = s
            .entries(1, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        let datas: Vec<&[u8]> = ents.iter().map(|e| e.get_data()).collect();
        assert_eq!(datas, [&b"a"[..], b"b", b"C", b"d"]);
        assert_eq!(s.term(3).unwrap(), 2);
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
            s.append(&[entry(1, 1, b"a"), entry(2, 1, b"b")]).unwrap();
            s.sync().unwrap();
        }
        let wal = dir.path().join("wal");
        let len = fs::metadata(&wal).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&wal)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
        assert_eq!(s.last_index().unwrap(), 1);
        s.append(&[entry(2, 1, b"b2")]).unwrap();
        s.sync().unwrap();
        let (s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
        assert_eq!(s.last_index().unwrap(), 2);
    }

    #[test]
    fn compaction_keeps_the_tail_and_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
            s.append(&(1..=10).map(|i| entry(i, 1, b"x")).collect::<Vec<_>>())
                .unwrap();
            s.set_commit(10).unwrap();
            s.sync().unwrap();
            s.compact(7, b"state@7".to_vec()).unwrap();
            assert_eq!(s.first_index().unwrap(), 8);
            assert!(matches!(
                s.entries(5, 8, None, GetEntriesContext::empty(false)),
                Err(raft::Error::Store(StorageError::Compacted))
            ));
            assert_eq!(s.term(7).unwrap(), 1);
            s.append(&[entry(11, 2, b"y")]).unwrap();
            s.sync().unwrap();
        }
        let (s, data) = DiskStorage::open(dir.path(), &[1]).unwrap();
        assert_eq!(data, b"state@7");
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (8, 11));
        assert_eq!(s.hard_state().commit, 10);
        assert_eq!(s.snapshot(0, 0).unwrap().get_metadata().index, 7);
    }
}
