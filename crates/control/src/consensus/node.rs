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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, Snapshot,
};
use raft::{ProgressState, RawNode, StateRole};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::state::{Command, HealthEvent, HealthTable};
use super::storage::DiskStorage;

/// Why a membership change waits: raft takes one at a time.
pub const PENDING_CHANGE: &str = "another membership change is still being applied";

/// Log entries applied between snapshots (log compaction).
const SNAPSHOT_EVERY: u64 = 1_000;

#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub id: u64,
    /// The voters a new state directory starts with (including this
    /// one); empty for a replica joining an existing group (`--join`),
    /// which learns the members from the leader's snapshot.
    pub voters: Vec<u64>,
    /// Members' gRPC addresses known from the command line
    /// (`TANDEM_PEERS`); the replicated address book replaces them after
    /// the first membership change.
    pub addresses: BTreeMap<u64, String>,
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

    /// The members' addresses changed (a membership change was applied).
    fn set_members(&self, _members: &BTreeMap<u64, String>) {}
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
    /// The membership as this replica last applied it.
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Members' gRPC addresses (the replicated address book).
    pub addresses: Arc<BTreeMap<u64, String>>,
    /// Set when this replica stopped applying the log: an entry it cannot
    /// decode (written by a newer version). It says which and why.
    pub apply_error: Option<String>,
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
    /// Milliseconds after `start`, plus one (0: never). Members added
    /// later get an entry when first heard from.
    heard: RwLock<BTreeMap<u64, AtomicU64>>,
}

impl Contacts {
    fn new(voters: &[u64]) -> Contacts {
        Contacts {
            start: Instant::now(),
            heard: RwLock::new(voters.iter().map(|&id| (id, AtomicU64::new(0))).collect()),
        }
    }

    fn heard_from(&self, id: u64) {
        let ms = self.start.elapsed().as_millis() as u64 + 1;
        {
            let heard = self.heard.read().unwrap_or_else(|p| p.into_inner());
            if let Some(at) = heard.get(&id) {
                at.store(ms, Ordering::Relaxed);
                return;
            }
        }
        self.heard
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, AtomicU64::new(ms));
    }

    fn since(&self, id: u64) -> Option<Duration> {
        let at = self
            .heard
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)?
            .load(Ordering::Relaxed);
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
    /// A membership change this replica declines (it says why).
    #[error("{0}")]
    Membership(String),
}

/// One membership change (`tandemctl cluster add-member/remove-member`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberChange {
    /// Joins as a learner; the leader promotes it to voter once it has
    /// caught up.
    Add {
        id: u64,
        address: String,
    },
    Remove {
        id: u64,
    },
}

/// Carried in a conf change's context: the whole address book after the
/// change, so every replica (and a snapshot) holds the same one.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ConfContext {
    members: BTreeMap<u64, String>,
}

enum Inbound {
    Message(Message),
    Snapshot {
        to: u64,
        ok: bool,
    },
    Unreachable(u64),
    /// Hand leadership to `to` (this replica must be the leader).
    Transfer(u64),
}

enum Payload {
    Command(Vec<u8>),
    Members(MemberChange),
}

struct Proposal {
    data: Payload,
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
        let conf = raft::Storage::initial_state(&storage)?.conf_state;
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
        if conf.voters == [settings.id] {
            // A cluster of one elects itself without waiting a timeout.
            node.campaign()?;
        }
        tracing::info!(
            id = settings.id,
            voters = ?conf.voters,
            learners = ?conf.learners,
            term = hs.term,
            vote = hs.vote,
            commit = hs.commit,
            applied = table.index,
            dir = %settings.state_dir.display(),
            "raft state opened"
        );

        metrics::gauge!("tandem_raft_apply_stopped").set(0.0);
        let (ptx, mut prx) = mpsc::channel::<Proposal>(1024);
        let (itx, mut irx) = mpsc::channel::<Inbound>(4096);
        let (stx, srx) = watch::channel(RaftStatus::default());
        let shared = Arc::new(ArcSwap::from_pointee(table.clone()));
        let (events, _) = broadcast::channel(1024);
        let known: Vec<u64> = conf.voters.iter().chain(&conf.learners).copied().collect();
        let contacts = Arc::new(Contacts::new(&known));
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
            seeds: settings.addresses.clone(),
            book: Arc::new(BTreeMap::new()),
            conf_changed: false,
            apply_error: None,
            contacts: contacts.clone(),
            election_timeout: settings.tick * settings.election_ticks as u32,
        };
        driver.refresh_book();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(settings.tick);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        driver.node.tick();
                        driver.promote_caught_up_learners();
                        driver.step_down_if_stuck();
                    }
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
                        Inbound::Transfer(to) => {
                            tracing::info!(to, "transferring raft leadership");
                            driver.node.transfer_leader(to);
                        }
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
        self.submit(Payload::Command(cmd.encode())).await
    }

    /// Proposes a membership change (this replica must be the leader);
    /// resolves once it is committed and applied here. Only one change is
    /// in flight at a time, an added member starts as a learner, and the
    /// leader does not remove itself: transfer leadership first.
    pub async fn change_members(&self, change: MemberChange) -> Result<u64, ProposeError> {
        self.submit(Payload::Members(change)).await
    }

    /// Asks raft to hand leadership to `to` (a no-op unless this replica
    /// leads and `to` is a voter).
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.inbound.try_send(Inbound::Transfer(to));
    }

    async fn submit(&self, data: Payload) -> Result<u64, ProposeError> {
        let (done, rx) = oneshot::channel();
        self.proposals
            .send(Proposal { data, done })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)?
    }

    /// The raft id of this replica.
    pub fn id(&self) -> u64 {
        self.id
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

/// A conf change of one member (raft applies it without a joint phase).
fn single(id: u64, change: ConfChangeType) -> ConfChangeV2 {
    let mut one = raft::prelude::ConfChangeSingle {
        node_id: id,
        ..Default::default()
    };
    one.set_change_type(change);
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![one].into());
    cc
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
    /// Addresses from the command line (before any membership change).
    seeds: BTreeMap<u64, String>,
    /// The address book in use: the replicated one, else `seeds`.
    book: Arc<BTreeMap<u64, String>>,
    /// A membership change was applied since the last snapshot: take one
    /// now, so the snapshot a new member receives names it.
    conf_changed: bool,
    /// Set once an entry cannot be applied: nothing is applied after it.
    apply_error: Option<String>,
    contacts: Arc<Contacts>,
    election_timeout: Duration,
}

impl Driver {
    fn propose(&mut self, p: Proposal) {
        if self.node.raft.state != StateRole::Leader {
            let _ = p.done.send(Err(ProposeError::NotLeader {
                leader: self.node.raft.leader_id,
            }));
            return;
        }
        if let Some(why) = &self.apply_error {
            let _ = p.done.send(Err(ProposeError::Refused(why.clone())));
            return;
        }
        let before = self.node.raft.raft_log.last_index();
        let proposed = match p.data {
            Payload::Command(data) => self.node.propose(Vec::new(), data),
            Payload::Members(change) => match self.conf_change(&change) {
                Ok(cc) => {
                    tracing::info!(?change, "proposing a membership change");
                    self.node.propose_conf_change(Vec::new(), cc)
                }
                Err(why) => {
                    let _ = p.done.send(Err(ProposeError::Membership(why)));
                    return;
                }
            },
        };
        if let Err(e) = proposed {
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
            self.refresh_book();
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
        if self.apply_error.is_none()
            && (self.conf_changed || self.applied_since_snapshot >= SNAPSHOT_EVERY)
        {
            self.storage
                .compact(self.table.index, self.table.encode())?;
            self.applied_since_snapshot = 0;
            self.conf_changed = false;
            tracing::debug!(index = self.table.index, "raft log compacted");
        }
        Ok(())
    }

    /// An entry this build cannot decode: stop applying (a replica that
    /// skipped it would silently disagree with the others), keep taking
    /// part in replication so the log stays whole, and say so loudly: an
    /// error log, `tandem_raft_apply_stopped`, and `cluster status`.
    fn stop_applying(&mut self, e: &Entry, err: &str) {
        let why = format!(
            "cannot decode raft entry {} (term {}): {err}; this replica stopped applying \
             the log at index {} (upgrade it to the version the leader runs)",
            e.index, e.term, self.table.index
        );
        tracing::error!(index = e.index, term = e.term, error = %err, "raft entry cannot be decoded: stopped applying");
        metrics::gauge!("tandem_raft_apply_stopped").set(1.0);
        self.apply_error = Some(why);
        for (_, (_, done)) in std::mem::take(&mut self.pending) {
            let _ = done.send(Err(ProposeError::Refused(
                "this replica stopped applying the raft log".into(),
            )));
        }
    }

    /// A replica that cannot apply must not decide: hand leadership to a
    /// voter that can (raft ignores this while a transfer is under way).
    fn step_down_if_stuck(&mut self) {
        if self.apply_error.is_none() || self.node.raft.state != StateRole::Leader {
            return;
        }
        let me = self.node.raft.id;
        let voters = self.node.raft.prs().conf().to_conf_state().voters;
        let best = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me && voters.contains(id))
            .max_by_key(|(_, p)| p.matched)
            .map(|(id, _)| *id);
        if let Some(to) = best
            && self.node.raft.lead_transferee.is_none()
        {
            tracing::warn!(to, "cannot apply the log: handing leadership over");
            self.node.transfer_leader(to);
        }
    }

    /// The raft conf change for `change`, or why it is declined: only the
    /// leader changes members, one change at a time, never the leader
    /// itself, and never so that the remaining voters lack a quorum of
    /// reachable members.
    fn conf_change(&self, change: &MemberChange) -> Result<ConfChangeV2, String> {
        let raft = &self.node.raft;
        if raft.has_pending_conf() {
            return Err(format!("{PENDING_CHANGE}; retry when it is done"));
        }
        if self.apply_error.is_some() {
            return Err("this replica stopped applying the raft log".into());
        }
        let cs = raft.prs().conf().to_conf_state();
        let is_member = |id: &u64| cs.voters.contains(id) || cs.learners.contains(id);
        let mut book = (*self.book).clone();
        let single = match change {
            MemberChange::Add { id, address } => {
                if is_member(id) {
                    let what = if cs.voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    };
                    return Err(format!("raft id {id} is already a member (a {what})"));
                }
                if let Some((other, _)) = book.iter().find(|(i, a)| *a == address && is_member(i)) {
                    return Err(format!(
                        "{address} is already the address of member {other}"
                    ));
                }
                book.insert(*id, address.clone());
                single(*id, ConfChangeType::AddLearnerNode)
            }
            MemberChange::Remove { id } => {
                if !is_member(id) {
                    return Err(format!("raft id {id} is not a member"));
                }
                if *id == raft.id {
                    return Err(format!(
                        "raft id {id} is the leader: transfer leadership before removing it"
                    ));
                }
                if cs.voters.contains(id) {
                    let remaining: Vec<u64> =
                        cs.voters.iter().copied().filter(|v| v != id).collect();
                    let reachable = remaining
                        .iter()
                        .filter(|v| **v == raft.id || self.recently_heard(**v))
                        .count();
                    let quorum = remaining.len() / 2 + 1;
                    if reachable < quorum {
                        return Err(format!(
                            "removing {id} would leave {reachable} of {} remaining voters reachable, \
                             fewer than a quorum ({quorum}): bring members back first",
                            remaining.len()
                        ));
                    }
                }
                book.remove(id);
                single(*id, ConfChangeType::RemoveNode)
            }
        };
        let mut cc = single;
        cc.set_context(
            serde_json::to_vec(&ConfContext { members: book })
                .expect("an address book serialises")
                .into(),
        );
        Ok(cc)
    }

    fn recently_heard(&self, id: u64) -> bool {
        self.contacts
            .since(id)
            .is_some_and(|d| d <= self.election_timeout)
    }

    /// Applies a committed membership change: raft's configuration, the
    /// storage's (durable with the snapshot taken right after), the
    /// address book, and the transport's connections.
    fn apply_conf_change(&mut self, index: u64, cc: &ConfChangeV2) -> Result<u64, ProposeError> {
        match self.node.apply_conf_change(cc) {
            Ok(cs) => {
                if let Ok(ctx) = serde_json::from_slice::<ConfContext>(cc.get_context()) {
                    self.table.members = ctx.members;
                }
                tracing::info!(
                    index,
                    voters = ?cs.voters,
                    learners = ?cs.learners,
                    "membership changed"
                );
                self.storage.set_conf_state(cs);
                self.refresh_book();
                self.conf_changed = true;
                metrics::counter!("tandem_raft_membership_changes_total").increment(1);
                Ok(index)
            }
            Err(e) => {
                // Deterministic: every replica declines the same change.
                tracing::warn!(index, error = %e, "raft declined a membership change");
                Err(ProposeError::Refused(e.to_string()))
            }
        }
    }

    /// Rebuilds the address book (replicated, else the command line's)
    /// and hands it to the transport when it changed.
    fn refresh_book(&mut self) {
        let book = if self.table.members.is_empty() {
            self.seeds.clone()
        } else {
            self.table.members.clone()
        };
        if *self.book != book {
            self.transport.set_members(&book);
            self.book = Arc::new(book);
        }
    }

    /// The leader promotes a learner to voter once it has caught up: in
    /// the replicate state and within a few entries of the commit index.
    fn promote_caught_up_learners(&mut self) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader || raft.has_pending_conf() || self.apply_error.is_some()
        {
            return;
        }
        let learners = raft.prs().conf().learners();
        if learners.is_empty() {
            return;
        }
        let committed = raft.raft_log.committed;
        let Some(id) = raft
            .prs()
            .iter()
            .find(|(id, p)| {
                learners.contains(id)
                    && p.state == ProgressState::Replicate
                    && p.matched + 16 >= committed
                    && self.recently_heard(**id)
            })
            .map(|(id, _)| *id)
        else {
            return;
        };
        let mut cc = single(id, ConfChangeType::AddNode);
        cc.set_context(
            serde_json::to_vec(&ConfContext {
                members: (*self.book).clone(),
            })
            .expect("an address book serialises")
            .into(),
        );
        tracing::info!(id, "learner caught up: promoting it to voter");
        if let Err(e) = self.node.propose_conf_change(Vec::new(), cc) {
            tracing::warn!(id, error = %e, "could not propose the promotion; will retry");
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> anyhow::Result<()> {
        if entries.is_empty() || self.apply_error.is_some() {
            return Ok(());
        }
        let mut changed = Vec::new();
        let mut trace = None;
        for e in entries {
            let result = match e.get_entry_type() {
                EntryType::EntryNormal if !e.get_data().is_empty() => {
                    match Command::decode(e.get_data()) {
                        Ok(cmd) => {
                            changed.extend(self.table.apply(e.index, &cmd));
                            if let Command::Transitions { trace: Some(t), .. } = &cmd {
                                trace = Some(t.clone());
                            }
                            Ok(e.index)
                        }
                        Err(err) => {
                            self.stop_applying(&e, &err);
                            break;
                        }
                    }
                }
                EntryType::EntryNormal => Ok(e.index),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let cc = if e.get_entry_type() == EntryType::EntryConfChange {
                        ConfChange::parse_from_bytes(e.get_data()).map(|c| {
                            let mut v2 = single(c.node_id, c.get_change_type());
                            v2.set_context(c.context);
                            v2
                        })
                    } else {
                        ConfChangeV2::parse_from_bytes(e.get_data())
                    };
                    match cc {
                        Ok(cc) => self.apply_conf_change(e.index, &cc),
                        Err(err) => {
                            self.stop_applying(&e, &format!("membership change: {err}"));
                            break;
                        }
                    }
                }
            };
            self.table.index = e.index;
            self.applied_since_snapshot += 1;
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
        let conf = raft.prs().conf();
        let mut voters: Vec<u64> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<u64> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        let status = RaftStatus {
            id: raft.id,
            leader: raft.leader_id,
            term: raft.term,
            role,
            commit: raft.raft_log.committed,
            applied: self.table.index,
            last_index: raft.raft_log.last_index(),
            progress,
            voters,
            learners,
            addresses: self.book.clone(),
            apply_error: self.apply_error.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path) -> RaftSettings {
        RaftSettings {
            id: 1,
            voters: vec![1],
            addresses: BTreeMap::from([(1, "127.0.0.1:1".to_string())]),
            state_dir: dir.to_path_buf(),
            tick: Duration::from_millis(10),
            election_ticks: 10,
            heartbeat_ticks: 1,
        }
    }

    async fn leader(c: &Consensus) {
        for _ in 0..500 {
            if c.status().is_leader() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no leader: {:?}", c.status());
    }

    /// Before: "undecodable raft entry skipped", and the replica went on
    /// applying what followed, disagreeing with replicas that could read it.
    #[tokio::test]
    async fn an_entry_it_cannot_decode_stops_applying_loudly() {
        let dir = tempfile::tempdir().unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        let c = Consensus::start(settings(dir.path()), Arc::new(NoPeers), stop).unwrap();
        leader(&c).await;
        let forget = Command::Forget { keys: vec![] };
        let ok = c.propose(&forget).await.unwrap();
        assert_eq!(c.table().index, ok);
        // An entry from a newer version.
        let newer = br#"{"format_version":2,"type":"override","backend":"x"}"#.to_vec();
        let r = c.submit(Payload::Command(newer)).await;
        assert!(r.is_err(), "{r:?}");
        let later = c.propose(&forget).await;
        assert!(later.is_err(), "nothing is applied after it: {later:?}");
        let s = c.status();
        let why = s.apply_error.expect("the status says it stopped");
        assert!(
            why.contains(&format!("cannot decode raft entry {}", ok + 1)),
            "{why}"
        );
        assert!(why.contains("entry format version 2"), "{why}");
        assert_eq!(
            s.applied, ok,
            "the table stays at the last entry it applied"
        );
        assert_eq!(c.table().index, ok);
    }

    #[tokio::test]
    async fn membership_changes_are_checked_before_they_are_proposed() {
        let dir = tempfile::tempdir().unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        let c = Consensus::start(settings(dir.path()), Arc::new(NoPeers), stop).unwrap();
        leader(&c).await;
        let e = c
            .change_members(MemberChange::Remove { id: 1 })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("is the leader"), "{e}");
        let e = c
            .change_members(MemberChange::Remove { id: 7 })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not a member"), "{e}");
        let add = MemberChange::Add {
            id: 2,
            address: "127.0.0.1:2".into(),
        };
        c.change_members(add.clone()).await.unwrap();
        let s = c.status();
        assert_eq!((s.voters.clone(), s.learners.clone()), (vec![1], vec![2]));
        assert_eq!(s.addresses.get(&2).map(String::as_str), Some("127.0.0.1:2"));
        let e = c.change_members(add).await.unwrap_err();
        assert!(
            e.to_string().contains("already a member (a learner)"),
            "{e}"
        );
        // The address book and the membership survive a restart.
        drop(_stop_tx);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_stop_tx, stop) = watch::channel(false);
        let mut again = settings(dir.path());
        again.addresses = BTreeMap::new();
        let c = Consensus::start(again, Arc::new(NoPeers), stop).unwrap();
        leader(&c).await;
        let s = c.status();
        assert_eq!((s.voters.clone(), s.learners.clone()), (vec![1], vec![2]));
        assert_eq!(s.addresses.get(&2).map(String::as_str), Some("127.0.0.1:2"));
    }
}
