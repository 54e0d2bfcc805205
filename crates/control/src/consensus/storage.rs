//! Raft's durable state on this replica's disk: hard state (term, vote,
//! commit), the log, and the latest state-machine snapshot.
//!
//! `wal` is an append-only file of checksummed records (entries and hard
//! states), synced before raft is told they are persisted. A torn record at
//! the end (a crash mid-write) is cut off on load. Compaction writes the
//! snapshot file, then rewrites the log without the compacted prefix, both
//! by temp file + fsync + rename.
//!
//! A record is `tag (1) | length (4, LE) | payload | crc32 (4, LE)`. Format
//! version 2 (today's) opens with a header record (tag 3, payload the
//! version as a u32) and its checksums cover tag, length and payload.
//! Version 1 had no header and checksummed the payload alone, so a flipped
//! tag could pass an entry off as a hard state; a version-1 log is read and
//! rewritten as version 2 on open. The header itself is framed as in
//! version 1, so a build that predates versions stops at its unknown tag
//! rather than taking the whole log for a torn tail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

const TAG_ENTRY: u8 = 1;
const TAG_HARD_STATE: u8 = 2;
const TAG_FORMAT: u8 = 3;

/// The log format this build writes (and the newest it reads).
pub const WAL_FORMAT: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StorageFailure {
    #[error("raft state in {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("raft state in {dir} is corrupt: {what}")]
    Corrupt { dir: PathBuf, what: String },
    #[error(transparent)]
    NewerFormat(#[from] tandem_core::format::NewerFormat),
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
        let mut version = WAL_FORMAT;
        let wal_exists = wal_path.exists();
        if wal_exists {
            let mut bytes = Vec::new();
            File::open(&wal_path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(io_err)?;
            let mut older_than_snapshot = false;
            let mut term_at_snapshot = None;
            let (v, mut pos) = read_header(&bytes).map_err(|what| match what {
                Header::Newer(found) => {
                    StorageFailure::NewerFormat(tandem_core::format::NewerFormat {
                        what: format!("raft log {}", wal_path.display()),
                        found,
                        supported: WAL_FORMAT,
                    })
                }
                Header::Bad(what) => StorageFailure::Corrupt {
                    dir: dir.to_path_buf(),
                    what,
                },
            })?;
            version = v;
            while let Some((tag, payload, next)) = read_record(&bytes, pos, version) {
                match tag {
                    TAG_ENTRY => {
                        let e = Entry::parse_from_bytes(payload).map_err(|e| {
                            StorageFailure::Corrupt {
                                dir: dir.to_path_buf(),
                                what: format!("log entry: {e}"),
                            }
                        })?;
                        let snap = snapshot.get_metadata();
                        if e.index > snap.index {
                            truncate_and_push(&mut entries, e, snap.index);
                        } else {
                            // Only in a log not yet rewritten after its
                            // snapshot (a crash in between). A write at
                            // an index replaces everything after it.
                            entries.clear();
                            older_than_snapshot = true;
                            if e.index == snap.index {
                                term_at_snapshot = Some(e.term);
                            }
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
            // The snapshot was installed from a leader whose log differs
            // from this one at the snapshot's index: what followed there
            // belongs to the abandoned history (raft keeps the entries after
            // a snapshot only when the entry at its index matches).
            if older_than_snapshot && term_at_snapshot != Some(snapshot.get_metadata().term) {
                entries.clear();
            }
            // A crash mid-write leaves a prefix of the last writes: nothing
            // whole after the damage. A whole record after it means damage
            // to data that was synced (and perhaps acknowledged): cutting
            // there would lose committed entries or roll the term and vote
            // back, so refuse instead.
            if let Some(at) = (pos + 1..bytes.len()).find(|&p| {
                read_record(&bytes, p, version)
                    .is_some_and(|(tag, ..)| tag == TAG_ENTRY || tag == TAG_HARD_STATE)
            }) {
                return Err(StorageFailure::Corrupt {
                    dir: dir.to_path_buf(),
                    what: format!(
                        "the record at byte {pos} of the log is damaged and intact records \
                         follow it (from byte {at}); refusing to drop them"
                    ),
                });
            }
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
        if !wal_exists {
            write_atomically(&wal_path, &header()).map_err(io_err)?;
            valid_len = header().len() as u64;
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
        let mut core = Core {
            dir: dir.to_path_buf(),
            hard_state,
            conf_state,
            snapshot,
            entries,
            wal,
        };
        if version < WAL_FORMAT {
            tracing::info!(
                from = version,
                to = WAL_FORMAT,
                path = %wal_path.display(),
                "rewriting the raft log in the current format"
            );
            core.rewrite_wal().map_err(io_err)?;
        }
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

    /// True when `dir` holds no raft state yet (a new replica, or one
    /// whose disk was wiped).
    pub fn is_fresh(dir: &Path) -> bool {
        !dir.join("snapshot").exists()
    }

    /// The membership as of the last applied change. Durable with the
    /// next snapshot ([`DiskStorage::compact`]); until then the change's
    /// log entry is applied again after a restart.
    pub fn set_conf_state(&self, cs: ConfState) {
        self.lock().conf_state = cs;
    }

    /// Installs a snapshot received from the leader: the log is replaced.
    pub fn apply_snapshot(&self, snap: &Snapshot) -> io::Result<()> {
        let mut core = self.lock();
        let meta = snap.get_metadata();
        core.conf_state = meta.get_conf_state().clone();
        core.hard_state.commit = core.hard_state.commit.max(meta.index);
        core.hard_state.term = core.hard_state.term.max(meta.term);
        // Entries after the snapshot stay only if the log holds the
        // snapshot's last entry (same index and term); otherwise they are
        // another history's (raft installs a snapshot only then).
        let matches = meta.index >= core.first_index()
            && meta.index <= core.last_index()
            && core.entries[(meta.index - core.first_index()) as usize].term == meta.term;
        if matches {
            core.entries.retain(|e| e.index > meta.index);
        } else {
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
        self.rewrite_wal()
    }

    /// Replaces the log file with the hard state and the entries held.
    fn rewrite_wal(&mut self) -> io::Result<()> {
        let mut buf = header();
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

/// Appends a record in the current format: the checksum covers the tag,
/// the length and the payload.
fn push_record(buf: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    let start = buf.len();
    buf.push(tag);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[start..]);
    buf.extend_from_slice(&crc.to_le_bytes());
}

/// The header record that opens a log: framed as in version 1 (checksum
/// of the payload alone) so that every build can read it.
fn header() -> Vec<u8> {
    let payload = WAL_FORMAT.to_le_bytes();
    let mut buf = vec![TAG_FORMAT];
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&payload);
    buf.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    buf
}

enum Header {
    Newer(u32),
    Bad(String),
}

/// The log's format version and where its first record starts. A log
/// without a header is version 1 (an empty file too: it holds nothing).
fn read_header(bytes: &[u8]) -> Result<(u32, usize), Header> {
    if bytes.first() != Some(&TAG_FORMAT) {
        return Ok((1, 0));
    }
    let (_, payload, next) = read_record(bytes, 0, 1)
        .ok_or_else(|| Header::Bad("the format header is damaged".into()))?;
    let version = <[u8; 4]>::try_from(payload)
        .map(u32::from_le_bytes)
        .map_err(|_| {
            Header::Bad(format!(
                "the format header has {} bytes, not 4",
                payload.len()
            ))
        })?;
    match version {
        0 => Err(Header::Bad("format version 0".into())),
        v if v > WAL_FORMAT => Err(Header::Newer(v)),
        v => Ok((v, next)),
    }
}

fn write_record(w: &mut impl Write, tag: u8, payload: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + 9);
    push_record(&mut buf, tag, payload);
    w.write_all(&buf)
}

/// The record at `pos` in a log of format `version`: (tag, payload, next
/// position), or None at the end or at a torn/corrupt record.
fn read_record(bytes: &[u8], pos: usize, version: u32) -> Option<(u8, &[u8], usize)> {
    let tag = *bytes.get(pos)?;
    let len = u32::from_le_bytes(bytes.get(pos + 1..pos + 5)?.try_into().ok()?) as usize;
    let end = pos.checked_add(5)?.checked_add(len)?;
    let payload = bytes.get(pos + 5..end)?;
    let crc = u32::from_le_bytes(bytes.get(end..end.checked_add(4)?)?.try_into().ok()?);
    let covered = if version >= 2 {
        &bytes[pos..end]
    } else {
        payload
    };
    (crc32fast::hash(covered) == crc).then_some((tag, payload, end + 4))
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

    /// Before: entries after an installed snapshot were kept even when the
    /// log disagreed with the snapshot at its index, so entries of an
    /// abandoned history (from a deposed leader) outlived it, in memory and
    /// after a restart.
    #[test]
    fn a_snapshot_from_another_history_drops_the_entries_after_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
            // This replica's log: 1..=6 from a leader of term 2 that lost.
            s.append(&(1..=6).map(|i| entry(i, 2, b"lost")).collect::<Vec<_>>())
                .unwrap();
            s.sync().unwrap();
            // The group committed 1..=4 in term 3: a snapshot at 4.
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 4;
            snap.mut_metadata().term = 3;
            snap.mut_metadata()
                .mut_conf_state()
                .set_voters(vec![1, 2, 3]);
            s.apply_snapshot(&snap).unwrap();
            assert_eq!(s.last_index().unwrap(), 4, "5 and 6 were term 2's");
        }
        let (s, _) = DiskStorage::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(s.last_index().unwrap(), 4);
    }

    /// The same across a crash between writing the snapshot and rewriting
    /// the log; a snapshot of this replica's own log (compaction) keeps
    /// what follows it.
    #[test]
    fn a_crash_between_snapshot_and_log_rewrite_keeps_only_its_own_history() {
        for (snap_term, kept) in [(3, 4), (2, 6)] {
            let dir = tempfile::tempdir().unwrap();
            {
                let (s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
                s.append(&(1..=6).map(|i| entry(i, 2, b"x")).collect::<Vec<_>>())
                    .unwrap();
                s.sync().unwrap();
            }
            // The snapshot file written, the log not yet rewritten.
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 4;
            snap.mut_metadata().term = snap_term;
            snap.mut_metadata().mut_conf_state().set_voters(vec![1]);
            write_atomically(
                &dir.path().join("snapshot"),
                &snap.write_to_bytes().unwrap(),
            )
            .unwrap();
            let (s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
            assert_eq!(s.last_index().unwrap(), kept, "snapshot term {snap_term}");
        }
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

#[cfg(test)]
mod torn_tails {
    //! Randomised crashes and damage: a log written by a random sequence
    //! of appends (some replacing a suffix, as after a leader change),
    //! hard states and a compaction, then cut or damaged.

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// One entry at `back` places before the next index (0: append).
        Append {
            back: u64,
            len: usize,
        },
        HardState {
            vote: u64,
            commit: u64,
        },
        Sync,
        Compact,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (prop_oneof![4 => Just(0u64), 1 => 1..3u64], 0..40usize)
                .prop_map(|(back, len)| Op::Append { back, len }),
            2 => (1..4u64, 0..50u64).prop_map(|(vote, commit)| Op::HardState { vote, commit }),
            2 => Just(Op::Sync),
            1 => Just(Op::Compact),
        ]
    }

    /// What the log holds after each record: the model a reader must
    /// reproduce, written without the storage's own code.
    #[derive(Debug, Clone, PartialEq)]
    struct Model {
        entries: Vec<(u64, u64, Vec<u8>)>,
        hard_state: (u64, u64, u64),
    }

    struct Written {
        /// The model before the last record, and after it.
        before_last: Model,
        after_last: Model,
        /// Where the last record starts in the file.
        last_start: u64,
        snap_index: u64,
    }

    /// Applies `ops`, then one final entry or hard state (the record that
    /// will be damaged), synced.
    fn write(dir: &Path, ops: &[Op], last_is_entry: bool) -> Written {
        let (s, _) = DiskStorage::open(dir, &[1]).unwrap();
        let mut m = Model {
            entries: Vec::new(),
            hard_state: (0, 0, 0),
        };
        let mut term = 1;
        let mut seq = 0u8;
        let mut append = |s: &DiskStorage, m: &mut Model, back: u64, len: usize, term: &mut u64| {
            let next = m.entries.last().map_or(1, |e| e.0 + 1);
            let first = s.first_index_now();
            let index = next.saturating_sub(back).max(first);
            if index < next {
                // A new leader replaces the suffix.
                *term += 1;
            }
            seq = seq.wrapping_add(1);
            let data = vec![seq; len];
            let mut e = Entry {
                index,
                term: *term,
                ..Default::default()
            };
            e.set_data(data.clone().into());
            s.append(&[e]).unwrap();
            m.entries.retain(|e| e.0 < index);
            m.entries.push((index, *term, data));
        };
        for op in ops {
            match *op {
                Op::Append { back, len } => append(&s, &mut m, back, len, &mut term),
                Op::HardState { vote, commit } => {
                    let hs = HardState {
                        term,
                        vote,
                        commit,
                        ..Default::default()
                    };
                    s.set_hard_state(&hs).unwrap();
                    m.hard_state = (term, vote, commit);
                }
                Op::Sync => s.sync().unwrap(),
                Op::Compact => {
                    s.sync().unwrap();
                    if let Some(&(index, ..)) = m.entries.get(m.entries.len() / 2) {
                        s.compact(index, b"state".to_vec()).unwrap();
                    }
                }
            }
        }
        s.sync().unwrap();
        let before_last = m.clone();
        let last_start = fs::metadata(dir.join("wal")).unwrap().len();
        if last_is_entry {
            append(&s, &mut m, 0, 17, &mut term);
        } else {
            s.set_hard_state(&HardState {
                term: term + 1,
                vote: 3,
                commit: 1,
                ..Default::default()
            })
            .unwrap();
            m.hard_state = (term + 1, 3, 1);
        }
        s.sync().unwrap();
        Written {
            before_last,
            after_last: m,
            last_start,
            snap_index: s.snapshot_index(),
        }
    }

    /// What a reopened storage holds (entries after its snapshot).
    fn read(dir: &Path) -> Result<(Model, u64), StorageFailure> {
        let (s, _) = DiskStorage::open(dir, &[1])?;
        let hs = s.hard_state();
        let first = s.first_index().unwrap();
        let last = s.last_index().unwrap();
        let entries = s
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap()
            .into_iter()
            .map(|e| (e.index, e.term, e.get_data().to_vec()))
            .collect();
        Ok((
            Model {
                entries,
                hard_state: (hs.term, hs.vote, hs.commit),
            },
            s.snapshot_index(),
        ))
    }

    /// The model as seen after a compaction at `snap_index`.
    fn visible(m: &Model, snap_index: u64) -> Model {
        Model {
            entries: m
                .entries
                .iter()
                .filter(|e| e.0 > snap_index)
                .cloned()
                .collect(),
            hard_state: (
                m.hard_state.0,
                m.hard_state.1,
                m.hard_state.2.max(snap_index),
            ),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// A crash at any byte of the last record loses that record and
        /// nothing else; the log takes appends again afterwards.
        #[test]
        fn a_cut_anywhere_in_the_last_record_keeps_everything_before_it(
            ops in proptest::collection::vec(op(), 0..30),
            last_is_entry in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let w = write(dir.path(), &ops, last_is_entry);
            let wal = dir.path().join("wal");
            let full = fs::read(&wal).unwrap();
            let (whole, _) = read(dir.path()).unwrap();
            prop_assert_eq!(&whole, &visible(&w.after_last, w.snap_index));
            for cut in w.last_start..full.len() as u64 {
                fs::write(&wal, &full[..cut as usize]).unwrap();
                let (got, snap) = read(dir.path()).unwrap();
                prop_assert_eq!(snap, w.snap_index);
                prop_assert_eq!(&got, &visible(&w.before_last, w.snap_index), "cut at {}", cut);
                prop_assert_eq!(fs::metadata(&wal).unwrap().len(), w.last_start, "the torn bytes are gone");
            }
            // Appending after the cut and reopening keeps the new record.
            let (s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
            let next = s.last_index().unwrap() + 1;
            let term = s.hard_state().term.max(s.term(next - 1).unwrap_or(0));
            let mut e = Entry { index: next, term, ..Default::default() };
            e.set_data(b"after".to_vec().into());
            s.append(&[e]).unwrap();
            s.sync().unwrap();
            drop(s);
            let (got, _) = read(dir.path()).unwrap();
            prop_assert_eq!(got.entries.last().map(|e| (e.0, e.2.clone())), Some((next, b"after".to_vec())));
        }

        /// Damage to any byte of the log never yields a damaged entry or
        /// hard state: the last record may be dropped (a torn write looks
        /// the same), anything earlier makes the open fail loudly.
        #[test]
        fn a_damaged_byte_is_dropped_with_the_last_record_or_refused(
            ops in proptest::collection::vec(op(), 0..30),
            last_is_entry in any::<bool>(),
            at in any::<prop::sample::Index>(),
            flip in 1..=255u8,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let w = write(dir.path(), &ops, last_is_entry);
            let wal = dir.path().join("wal");
            let mut bytes = fs::read(&wal).unwrap();
            let header_len = header().len();
            let at = header_len + at.index(bytes.len() - header_len);
            bytes[at] ^= flip;
            fs::write(&wal, &bytes).unwrap();
            match read(dir.path()) {
                Ok((got, _)) => {
                    prop_assert!(at as u64 >= w.last_start, "damage at byte {} before the last record (at {}) was accepted", at, w.last_start);
                    prop_assert_eq!(&got, &visible(&w.before_last, w.snap_index));
                }
                Err(e) => {
                    prop_assert!(matches!(e, StorageFailure::Corrupt { .. }), "{}", e);
                    prop_assert_eq!(fs::read(&wal).unwrap(), bytes, "a refused log is left as found");
                }
            }
        }
    }

    /// Version 1 did not checksum the tag: an entry whose tag byte turned
    /// into the hard-state tag parsed as a hard state with term 0.
    #[test]
    fn a_damaged_tag_is_not_read_as_another_record() {
        let dir = tempfile::tempdir().unwrap();
        let last_start;
        {
            let (s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
            s.set_hard_state(&HardState {
                term: 5,
                vote: 1,
                commit: 0,
                ..Default::default()
            })
            .unwrap();
            s.sync().unwrap();
            last_start = fs::metadata(dir.path().join("wal")).unwrap().len() as usize;
            let mut e = Entry {
                index: 1,
                term: 5,
                ..Default::default()
            };
            e.set_data(b"x".to_vec().into());
            s.append(&[e]).unwrap();
            s.sync().unwrap();
        }
        let wal = dir.path().join("wal");
        let mut bytes = fs::read(&wal).unwrap();
        assert_eq!(bytes[last_start], TAG_ENTRY);
        bytes[last_start] = TAG_HARD_STATE;
        fs::write(&wal, &bytes).unwrap();
        let (s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
        let hs = s.hard_state();
        assert_eq!((hs.term, hs.vote), (5, 1), "the term and vote stand");
        assert_eq!(s.last_index().unwrap(), 0, "the damaged entry is dropped");
    }

    /// Before: damage in the middle of the log cut it there, silently
    /// dropping every later (synced, perhaps committed) entry and the
    /// latest term and vote.
    #[test]
    fn damage_before_intact_records_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, _) = DiskStorage::open(dir.path(), &[1]).unwrap();
            let ents: Vec<Entry> = (1..=3)
                .map(|i| {
                    let mut e = Entry {
                        index: i,
                        term: 1,
                        ..Default::default()
                    };
                    e.set_data(vec![b'a'; 20].into());
                    e
                })
                .collect();
            s.append(&ents).unwrap();
            s.set_hard_state(&HardState {
                term: 1,
                vote: 1,
                commit: 3,
                ..Default::default()
            })
            .unwrap();
            s.sync().unwrap();
        }
        let wal = dir.path().join("wal");
        let mut bytes = fs::read(&wal).unwrap();
        // Inside the first entry's payload.
        let at = header().len() + 5 + 3;
        bytes[at] ^= 0x40;
        fs::write(&wal, &bytes).unwrap();
        let e = DiskStorage::open(dir.path(), &[1]).err().expect("refused");
        assert!(e.to_string().contains("intact records follow it"), "{e}");
        assert_eq!(fs::read(&wal).unwrap(), bytes, "nothing was cut");
    }
}

#[cfg(test)]
mod golden {
    //! Checked-in logs of every format version (tests/golden/raft-vN): each
    //! must still open to the same state, and today's writer must produce
    //! the current version's files byte for byte. A change that fails the
    //! latter changes the format: bump `WAL_FORMAT` (or `TABLE_FORMAT`),
    //! keep reading the old version, and bless new files with
    //! `TANDEM_BLESS_GOLDEN=1 cargo test -p tandem-control --lib golden`.

    use super::*;
    use crate::consensus::state::{Command, HealthTable};
    use tandem_core::health::{AgentView, BackendKey, HealthState, Transition};
    use tandem_core::{BackendAddr, PoolName};

    fn golden_dir(version: u32) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/raft-v{version}"))
    }

    fn key(addr: &str) -> BackendKey {
        BackendKey {
            pool: PoolName::new("shop").unwrap(),
            address: BackendAddr::new(addr).unwrap(),
        }
    }

    fn commands() -> Vec<Command> {
        let t = |addr: &str, from, to, at_ms| Transition {
            key: key(addr),
            from,
            to,
            reason: format!("golden {addr}"),
            at_ms,
            views: vec![AgentView {
                agent: "agent-a".into(),
                zone: "eu-1".into(),
                verdict: Some(to == HealthState::Healthy),
                last_detail: "HTTP 200".into(),
                last_seen_ms: at_ms,
                live: true,
            }],
        };
        use HealthState::*;
        vec![
            Command::Transitions {
                transitions: vec![t("10.0.0.1:80", Unknown, Healthy, 1000)],
                trace: None,
            },
            Command::Transitions {
                transitions: vec![
                    t("10.0.0.2:80", Unknown, Healthy, 1001),
                    t("10.0.0.1:80", Healthy, Unhealthy, 1002),
                ],
                trace: None,
            },
            Command::Transitions {
                transitions: vec![t("10.0.0.1:80", Unhealthy, Healthy, 1003)],
                trace: None,
            },
            Command::Forget {
                keys: vec![key("10.0.0.2:80")],
            },
        ]
    }

    fn command_entry(index: u64, term: u64, c: &Command) -> Entry {
        let mut e = Entry {
            index,
            term,
            ..Default::default()
        };
        e.set_data(c.encode().into());
        e
    }

    /// Entries 1 (a new leader's empty entry) to 5, compacted at 2, with a
    /// term change and two hard states.
    fn write_sample(dir: &Path) {
        let (s, _) = DiskStorage::open(dir, &[1, 2, 3]).unwrap();
        let cmds = commands();
        let mut ents = vec![Entry {
            index: 1,
            term: 1,
            ..Default::default()
        }];
        ents.extend((0..3).map(|i| command_entry(i as u64 + 2, 1, &cmds[i])));
        s.append(&ents).unwrap();
        let hs = HardState {
            term: 1,
            vote: 1,
            commit: 3,
            ..Default::default()
        };
        s.set_hard_state(&hs).unwrap();
        s.sync().unwrap();
        let mut table = HealthTable::default();
        table.apply(2, &cmds[0]);
        s.compact(2, table.encode()).unwrap();
        s.append(&[command_entry(5, 2, &cmds[3])]).unwrap();
        s.set_commit(5).unwrap();
        s.set_hard_state(&HardState {
            term: 2,
            vote: 2,
            commit: 5,
            ..Default::default()
        })
        .unwrap();
        s.sync().unwrap();
    }

    /// Opens a copy of `golden` (opening may rewrite it) and checks it
    /// holds the sample.
    fn assert_reads_the_sample(golden: &Path) {
        let dir = tempfile::tempdir().unwrap();
        for f in ["wal", "snapshot"] {
            fs::copy(golden.join(f), dir.path().join(f)).unwrap();
        }
        for _reopen in 0..2 {
            let (s, data) = DiskStorage::open(dir.path(), &[7]).unwrap();
            let state = s.initial_state().unwrap();
            let hs = &state.hard_state;
            assert_eq!(
                (hs.term, hs.vote, hs.commit),
                (2, 2, 5),
                "{}",
                golden.display()
            );
            assert_eq!(state.conf_state.get_voters(), &[1, 2, 3]);
            let snap = s.snapshot(0, 0).unwrap();
            assert_eq!(
                (snap.get_metadata().index, snap.get_metadata().term),
                (2, 1)
            );
            let table = HealthTable::decode(&data).unwrap();
            assert_eq!(table.index, 2);
            assert_eq!(
                table.backends[&key("10.0.0.1:80")].state,
                HealthState::Healthy
            );
            assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (3, 5));
            let ents = s
                .entries(3, 6, None, GetEntriesContext::empty(false))
                .unwrap();
            let got: Vec<(u64, u64, Command)> = ents
                .iter()
                .map(|e| (e.index, e.term, Command::decode(e.get_data()).unwrap()))
                .collect();
            let cmds = commands();
            assert_eq!(
                got,
                [
                    (3, 1, cmds[1].clone()),
                    (4, 1, cmds[2].clone()),
                    (5, 2, cmds[3].clone())
                ]
            );
        }
    }

    #[test]
    fn every_golden_version_still_reads() {
        for version in 1..=WAL_FORMAT {
            assert_reads_the_sample(&golden_dir(version));
        }
    }

    #[test]
    fn a_version_one_log_is_rewritten_in_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["wal", "snapshot"] {
            fs::copy(golden_dir(1).join(f), dir.path().join(f)).unwrap();
        }
        drop(DiskStorage::open(dir.path(), &[1]).unwrap());
        let wal = fs::read(dir.path().join("wal")).unwrap();
        assert!(wal.starts_with(&header()), "the rewritten log has a header");
    }

    #[test]
    fn todays_writer_produces_the_current_golden_files() {
        let dir = tempfile::tempdir().unwrap();
        write_sample(dir.path());
        let golden = golden_dir(WAL_FORMAT);
        if std::env::var_os("TANDEM_BLESS_GOLDEN").is_some() {
            fs::create_dir_all(&golden).unwrap();
            for f in ["wal", "snapshot"] {
                fs::copy(dir.path().join(f), golden.join(f)).unwrap();
            }
        }
        for f in ["wal", "snapshot"] {
            assert!(
                fs::read(dir.path().join(f)).unwrap() == fs::read(golden.join(f)).unwrap(),
                "the raft {f} file is no longer written as {}: a format change needs a new \
                 version (WAL_FORMAT / TABLE_FORMAT) and golden files (see this module's docs)",
                golden.display()
            );
        }
    }

    #[test]
    fn a_log_from_a_newer_tandem_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        drop(DiskStorage::open(dir.path(), &[1]).unwrap());
        let payload = (WAL_FORMAT + 1).to_le_bytes();
        let mut newer = vec![TAG_FORMAT];
        newer.extend_from_slice(&4u32.to_le_bytes());
        newer.extend_from_slice(&payload);
        newer.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        fs::write(dir.path().join("wal"), &newer).unwrap();
        let e = DiskStorage::open(dir.path(), &[1]).err().expect("refused");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "was written by a newer Tandem: format version {}, this build reads up to {WAL_FORMAT}",
                WAL_FORMAT + 1
            )),
            "{msg}"
        );
        assert_eq!(
            fs::read(dir.path().join("wal")).unwrap(),
            newer,
            "left untouched"
        );
    }

    #[test]
    fn a_health_table_from_a_newer_tandem_is_refused_by_name() {
        let data = br#"{"format_version":99,"index":1,"backends":[],"recent":[]}"#;
        let e = HealthTable::decode(data).unwrap_err().to_string();
        assert!(
            e.contains("format version 99, this build reads up to 1"),
            "{e}"
        );
        // Written before versions existed.
        let t = HealthTable::decode(br#"{"index":4,"backends":[],"recent":[]}"#).unwrap();
        assert_eq!(t.index, 4);
    }
}
