//! The raft driver: one task owning the `RawNode`, ticking it, feeding it
//! proposals and peers' messages, persisting what it must before it may be
//! acted on, sending messages, and applying committed entries to the
//! [`HealthTable`].
//!
//! The term is the fencing token: a deposed leader's proposals are never
//! committed under its term, and a proposal only succeeds when the entry
//! applied at its index carries the term it was proposed in.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use raft::prelude::{Entry, EntryType, Message, Snapshot};
use raft::{ProgressState, RawNode, StateRole};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::state::{Command, HealthEvent, HealthTable};
use super::storage::DiskStorage;

/// Log entries applied between snapshots (log compaction).
const SNAPSHOT_EVERY: u64 = 1_000;

#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub id: u64,
    /// Every member's id (including this one).
    pub voters: Vec<u64>,
    pub state_dir: PathBuf,
    /// One raft tick.
    pub tick: Duration,
    /// Ticks without a leader before an election (randomised up to 2x).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
}

/// Delivers raft messages to peers. Must not block: queue and drop.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, msgs: Vec<Message>);
}

/// A cluster of one has nobody to talk to.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            tracing::debug!(n = msgs.len(), "dropping raft messages: no peers");
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    pub leader: u64,
    pub term: u64,
    pub role: &'static str,
    pub commit: u64,
    pub applied: u64,
    /// The last index in this replica's log.
    pub last_index: u64,
    /// Leader only: each member's replication progress.
    pub progress: BTreeMap<u64, MemberProgress>,
}

/// The leader's knowledge of one member's log (raft's `Progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberProgress {
    /// The highest index known to be in the member's log.
    pub matched: u64,
    /// `replicate`, `probe` or `snapshot` (raft's `ProgressState`).
    pub state: &'static str,
}

/// When this replica last heard from each member: a raft message from it
/// (heartbeat responses, appends, votes). Written by the driver, read by
/// status calls, without a lock.
struct Contacts {
    start: Instant,
    /// Milliseconds after `start`, plus one (0: never).
    heard: BTreeMap<u64, AtomicU64>,
}

impl Contacts {
    fn new(voters: &[u64]) -> Contacts {
        Contacts {
            start: Instant::now(),
            heard: voters.iter().map(|&id| (id, AtomicU64::new(0))).collect(),
        }
    }

    fn heard_from(&self, id: u64) {
        if let Some(at) = self.heard.get(&id) {
            let ms = self.start.elapsed().as_millis() as u64;
            at.store(ms + 1, Ordering::Relaxed);
        }
    }

    fn since(&self, id: u64) -> Option<Duration> {
        let at = self.heard.get(&id)?.load(Ordering::Relaxed);
        let now = self.start.elapsed().as_millis() as u64 + 1;
        (at > 0).then(|| Duration::from_millis(now.saturating_sub(at)))
    }
}

/// What this replica knows of how recently a member spoke to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact {
    /// Heard from within an election timeout (this replica itself: always).
    pub reachable: bool,
    /// Time since it was last heard from (itself: zero); `None` if never
    /// since this replica started.
    pub last_heard: Option<Duration>,
}

impl RaftStatus {
    pub fn is_leader(&self) -> bool {
        self.role == "leader"
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("this replica is not the leader (leader: {leader})")]
    NotLeader { leader: u64 },
    #[error("the proposal was not committed: leadership changed")]
    Lost,
    #[error("the raft driver has stopped")]
    Stopped,
    #[error("raft refused the proposal: {0}")]
    Refused(String),
}

enum Inbound {
    Message(Message),
    Snapshot { to: u64, ok: bool },
    Unreachable(u64),
}

struct Proposal {
    data: Vec<u8>,
    done: oneshot::Sender<Result<u64, ProposeError>>,
}

/// A handle on the replica's raft group and its health state machine.
#[derive(Clone)]
pub struct Consensus {
    proposals: mpsc::Sender<Proposal>,
    inbound: mpsc::Sender<Inbound>,
    status: watch::Receiver<RaftStatus>,
    table: Arc<ArcSwap<HealthTable>>,
    events: broadcast::Sender<HealthEvent>,
    contacts: Arc<Contacts>,
    id: u64,
    /// A member not heard from for this long counts as unreachable: what
    /// a follower waits before it calls an election.
    election_timeout: Duration,
}

impl Consensus {
    /// Opens the raft state under `settings.state_dir` and starts the driver.
    pub fn start(
        settings: RaftSettings,
        transport: Arc<dyn Transport>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Consensus> {
        let (storage, data) = DiskStorage::open(&settings.state_dir, &settings.voters)?;
        let mut table = HealthTable::decode(&data)?;
        table.index = storage.snapshot_index().max(table.index);
        let hs = storage.hard_state();
        let config = raft::Config {
            id: settings.id,
            election_tick: settings.election_ticks,
            heartbeat_tick: settings.heartbeat_ticks,
            applied: table.index,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        config.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(&config, storage.clone(), &logger)?;
        if settings.voters == [settings.id] {
            // A cluster of one elects itself without waiting a timeout.
            node.campaign()?;
        }
        tracing::info!(
            id = settings.id,
            voters = ?settings.voters,
            term = hs.term,
            vote = hs.vote,
            commit = hs.commit,
            applied = table.index,
            dir = %settings.state_dir.display(),
            "raft state opened"
        );

        let (ptx, mut prx) = mpsc::channel::<Proposal>(1024);
        let (itx, mut irx) = mpsc::channel::<Inbound>(4096);
        let (stx, srx) = watch::channel(RaftStatus::default());
        let shared = Arc::new(ArcSwap::from_pointee(table.clone()));
        let (events, _) = broadcast::channel(1024);
        let contacts = Arc::new(Contacts::new(&settings.voters));
        let consensus = Consensus {
            proposals: ptx,
            inbound: itx,
            status: srx,
            table: shared.clone(),
            events: events.clone(),
            contacts: contacts.clone(),
            id: settings.id,
            election_timeout: settings.tick * settings.election_ticks as u32,
        };

        let mut driver = Driver {
            node,
            storage,
            transport,
            table,
            shared,
            events,
            pending: BTreeMap::new(),
            status: stx,
            applied_since_snapshot: 0,
        };
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(settings.tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => { driver.node.tick(); }
                    Some(p) = prx.recv() => driver.propose(p),
                    Some(i) = irx.recv() => match i {
                        Inbound::Message(m) => {
                            contacts.heard_from(m.from);
                            if let Err(e) = driver.node.step(m) {
                                tracing::debug!(error = %e, "raft ignored a message");
                            }
                        }
                        Inbound::Snapshot { to, ok } => {
                            let status = if ok { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
                            driver.node.report_snapshot(to, status);
                        }
                        Inbound::Unreachable(to) => driver.node.report_unreachable(to),
                    },
                    _ = shutdown.changed() => break,
                }
                if let Err(e) = driver.on_ready() {
                    // Without durable storage raft's promises break: stop.
                    tracing::error!(error = %e, "raft storage failed; stopping the raft driver");
                    break;
                }
                driver.publish_status();
            }
            for (_, (_, done)) in std::mem::take(&mut driver.pending) {
                let _ = done.send(Err(ProposeError::Stopped));
            }
            tracing::info!("raft driver stopped");
        });
        Ok(consensus)
    }

    /// Proposes a command; resolves with its index once committed and
    /// applied here, or an error if it cannot be.
    pub async fn propose(&self, cmd: &Command) -> Result<u64, ProposeError> {
        let (done, rx) = oneshot::channel();
        self.proposals
            .send(Proposal {
                data: cmd.encode(),
                done,
            })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// Hands a message from a peer to the driver (drops it when the driver
    /// is saturated: raft retransmits).
    pub fn step(&self, msg: Message) {
        let _ = self.inbound.try_send(Inbound::Message(msg));
    }

    /// The transport's word on a snapshot it tried to send.
    pub fn report_snapshot(&self, to: u64, ok: bool) {
        let _ = self.inbound.try_send(Inbound::Snapshot { to, ok });
    }

    /// The transport could not reach `to`.
    pub fn report_unreachable(&self, to: u64) {
        let _ = self.inbound.try_send(Inbound::Unreachable(to));
    }

    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// How recently `member` spoke to this replica.
    pub fn contact(&self, member: u64) -> Contact {
        if member == self.id {
            return Contact {
                reachable: true,
                last_heard: Some(Duration::ZERO),
            };
        }
        let last_heard = self.contacts.since(member);
        Contact {
            reachable: last_heard.is_some_and(|d| d <= self.election_timeout),
            last_heard,
        }
    }

    /// The committed health table (cheap: an `Arc`).
    pub fn table(&self) -> Arc<HealthTable> {
        self.table.load_full()
    }

    /// Committed health changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HealthEvent> {
        self.events.subscribe()
    }
}

struct Driver {
    node: RawNode<DiskStorage>,
    storage: DiskStorage,
    transport: Arc<dyn Transport>,
    table: HealthTable,
    shared: Arc<ArcSwap<HealthTable>>,
    events: broadcast::Sender<HealthEvent>,
    /// Proposals awaiting their entry: index → (term, reply).
    pending: BTreeMap<u64, (u64, oneshot::Sender<Result<u64, ProposeError>>)>,
    status: watch::Sender<RaftStatus>,
    applied_since_snapshot: u64,
}

impl Driver {
    fn propose(&mut self, p: Proposal) {
        if self.node.raft.state != StateRole::Leader {
            let _ = p.done.send(Err(ProposeError::NotLeader {
                leader: self.node.raft.leader_id,
            }));
            return;
        }
        let before = self.node.raft.raft_log.last_index();
        if let Err(e) = self.node.propose(Vec::new(), p.data) {
            let _ = p.done.send(Err(ProposeError::Refused(e.to_string())));
            return;
        }
        let index = self.node.raft.raft_log.last_index();
        if index == before {
            let _ = p.done.send(Err(ProposeError::Refused("dropped".into())));
            return;
        }
        self.pending.insert(index, (self.node.raft.term, p.done));
    }

    fn on_ready(&mut self) -> anyhow::Result<()> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        self.transport.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snap: &Snapshot = ready.snapshot();
            self.storage.apply_snapshot(snap)?;
            self.table = HealthTable::decode(snap.get_data())?;
            self.table.index = snap.get_metadata().index;
            self.shared.store(Arc::new(self.table.clone()));
            let _ = self.events.send(Arc::new(self.table.full_update()));
            tracing::info!(
                index = self.table.index,
                "installed a snapshot from the leader"
            );
        }
        self.apply(ready.take_committed_entries())?;
        let mut wrote = false;
        if !ready.entries().is_empty() {
            self.storage.append(ready.entries())?;
            wrote = true;
        }
        if let Some(hs) = ready.hs() {
            self.storage.set_hard_state(hs)?;
            wrote = true;
        }
        if wrote {
            // Votes and entries must be durable before anyone hears of them.
            self.storage.sync()?;
        }
        self.transport.send(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.storage.set_commit(commit)?;
        }
        self.transport.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        if self.applied_since_snapshot >= SNAPSHOT_EVERY {
            self.storage
                .compact(self.table.index, self.table.encode())?;
            self.applied_since_snapshot = 0;
            tracing::debug!(index = self.table.index, "raft log compacted");
        }
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut changed = Vec::new();
        let mut trace = None;
        for e in entries {
            self.table.index = e.index;
            self.applied_since_snapshot += 1;
            let result = if e.get_entry_type() == EntryType::EntryNormal && !e.get_data().is_empty()
            {
                match Command::decode(e.get_data()) {
                    Ok(cmd) => {
                        changed.extend(self.table.apply(e.index, &cmd));
                        if let Command::Transitions { trace: Some(t), .. } = &cmd {
                            trace = Some(t.clone());
                        }
                        Ok(e.index)
                    }
                    Err(err) => {
                        tracing::error!(index = e.index, error = %err, "undecodable raft entry skipped");
                        Err(ProposeError::Refused(err.to_string()))
                    }
                }
            } else {
                Ok(e.index)
            };
            // Resolve proposals at or below this index.
            while let Some((&idx, _)) = self.pending.first_key_value() {
                if idx > e.index {
                    break;
                }
                let (_, (term, done)) = self.pending.pop_first().expect("non-empty");
                let r = if idx == e.index && term == e.term {
                    result.as_ref().map(|i| *i).map_err(|_| ProposeError::Lost)
                } else {
                    Err(ProposeError::Lost)
                };
                let _ = done.send(r);
            }
        }
        self.shared.store(Arc::new(self.table.clone()));
        if !changed.is_empty() {
            let forgotten = changed
                .iter()
                .filter(|k| !self.table.backends.contains_key(k))
                .count();
            metrics::counter!("tandem_health_transitions_total")
                .increment((changed.len() - forgotten) as u64);
            // A forgotten backend has nothing to send in a partial update:
            // a full one tells every watcher to drop what is not in it.
            let mut update = if forgotten > 0 {
                self.table.full_update()
            } else {
                self.table.partial_update(&changed)
            };
            update.traceparent = trace.unwrap_or_default();
            let _ = self.events.send(Arc::new(update));
        }
        Ok(())
    }

    fn publish_status(&self) {
        let raft = &self.node.raft;
        let role = match raft.state {
            StateRole::Leader => "leader",
            StateRole::Follower => "follower",
            StateRole::Candidate => "candidate",
            StateRole::PreCandidate => "pre-candidate",
        };
        let progress = if raft.state == StateRole::Leader {
            raft.prs()
                .iter()
                .map(|(id, p)| {
                    let state = match p.state {
                        ProgressState::Probe => "probe",
                        ProgressState::Replicate => "replicate",
                        ProgressState::Snapshot => "snapshot",
                    };
                    (
                        *id,
                        MemberProgress {
                            matched: p.matched,
                            state,
                        },
                    )
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        let status = RaftStatus {
            id: raft.id,
            leader: raft.leader_id,
            term: raft.term,
            role,
            commit: raft.raft_log.committed,
            applied: self.table.index,
            last_index: raft.raft_log.last_index(),
            progress,
        };
        self.status.send_if_modified(|s| {
            if *s == status {
                false
            } else {
                if s.term != status.term || s.leader != status.leader {
                    tracing::info!(
                        term = status.term,
                        leader = status.leader,
                        role,
                        "raft leadership"
                    );
                    metrics::gauge!("tandem_raft_term").set(status.term as f64);
                    metrics::gauge!("tandem_raft_leader").set(status.leader as f64);
                    metrics::gauge!("tandem_raft_is_leader")
                        .set(f64::from(u8::from(status.is_leader())));
                }
                metrics::gauge!("tandem_raft_commit_index").set(status.commit as f64);
                metrics::gauge!("tandem_raft_applied_index").set(status.applied as f64);
                // The leader's view of each member (followers export none).
                for (id, p) in &status.progress {
                    let member = id.to_string();
                    metrics::gauge!("tandem_raft_member_matched_index", "member" => member.clone())
                        .set(p.matched as f64);
                    metrics::gauge!("tandem_raft_member_lag", "member" => member)
                        .set(status.last_index.saturating_sub(p.matched) as f64);
                }
                *s = status;
                true
            }
        });
    }
}
