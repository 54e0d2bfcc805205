//! What keeps the status page live: one task per replica follows the same
//! in-process streams as the proxies' Watch (the hub's committed changes,
//! the health table's committed updates), keeps the feed, and, while any
//! browser is connected, renders the page's sections once and publishes
//! them as a [`Frame`]. Every browser's event stream reads the latest frame
//! from a `watch` channel and sends what changed since it last sent: no
//! per-browser query or rendering of the overview, and a slow browser
//! skips frames instead of queueing them.
//!
//! What is not in memory is read at most once per interval whatever the
//! number of browsers: the nodes' reports (from Postgres, every 2 s while
//! anyone looks) and, on a follower, the leader's view of the raft members
//! (every second).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::sse::Event;
use futures::Stream;
use tandem_proto::v1;
use tokio::sync::{broadcast, watch};

use super::html;
use super::view::{
    self, CopyFrom, DatabaseView, FeedEntry, FeedWhat, Nodes, Overview, Platform, RaftView,
    ViewsFrom,
};
use crate::consensus::aggregator::now_ms;
use crate::consensus::{Aggregator, Consensus, HealthEvent, Peers, RaftStatus};
use crate::hub::{Hub, HubEvent};
use crate::store::{NodeRow, Store};

/// Entries the feed keeps (and the page shows).
pub const FEED_LEN: usize = 100;
/// Event streams served at once by one replica; more are refused (503).
pub const MAX_STREAMS: usize = 256;
/// How often the nodes' reports are read while anyone looks.
const NODES_EVERY: Duration = Duration::from_secs(2);
/// How often a follower asks the leader for its view of the members.
const LEADER_EVERY: Duration = Duration::from_secs(1);
/// How often sections are re-rendered while anyone looks (for what moves
/// without an event: raft progress, nodes' reports, staleness).
const TICK: Duration = Duration::from_secs(1);
/// A burst of events is rendered once, this long after its first.
const COALESCE: Duration = Duration::from_millis(100);
/// The browser reconnects this long after losing the stream.
const RETRY: Duration = Duration::from_secs(2);

/// What the page reads.
#[derive(Clone)]
pub struct Sources {
    pub replica: String,
    pub store: Store,
    pub hub: Hub,
    pub consensus: Consensus,
    pub aggregator: Aggregator,
    pub peers: Option<Peers>,
}

/// One rendered section and its version (bumped when its HTML changes).
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub html: Arc<str>,
    pub version: u64,
}

impl Section {
    fn next(&self, html: String) -> Section {
        if *self.html == *html {
            self.clone()
        } else {
            Section {
                html: html.into(),
                version: self.version + 1,
            }
        }
    }
}

/// The page as last rendered, for every connected browser.
#[derive(Debug, Clone)]
pub struct Frame {
    pub overview: Arc<Overview>,
    pub alerts: Section,
    pub platform: Section,
    pub pools: Section,
    pub nodes: Section,
    pub feed: FeedView,
}

/// The feed as a list (newest first) and its epoch: when entries are
/// inserted anywhere but the top (older ones read from the database), the
/// epoch moves and browsers replace their list.
#[derive(Debug, Clone, Default)]
pub struct FeedView {
    pub epoch: u64,
    pub entries: Arc<[Arc<FeedEntry>]>,
}

#[derive(Default)]
struct Feed {
    entries: VecDeque<Arc<FeedEntry>>,
    epoch: u64,
    next_seq: u64,
    /// The highest raft index whose transitions are in the feed.
    health_index: u64,
    /// Config revisions in the feed.
    revisions: std::collections::BTreeSet<u64>,
    /// Whether the latest changes have been read from the log (again,
    /// after the hub's stream lagged).
    seeded: bool,
}

impl Feed {
    fn push(&mut self, at_ms: u64, what: FeedWhat) {
        self.next_seq += 1;
        if let FeedWhat::Config { revision, .. } = &what {
            self.revisions.insert(*revision);
        }
        self.entries.push_front(Arc::new(FeedEntry {
            seq: self.next_seq,
            at_ms,
            what,
        }));
        self.trim();
    }

    fn trim(&mut self) {
        while self.entries.len() > FEED_LEN {
            if let Some(e) = self.entries.pop_back()
                && let FeedWhat::Config { revision, .. } = e.what
            {
                self.revisions.remove(&revision);
            }
        }
    }

    /// Older entries, merged by time: browsers get the whole list again.
    fn merge(&mut self, older: Vec<(u64, FeedWhat)>) {
        if older.is_empty() {
            return;
        }
        for (at_ms, what) in older {
            self.next_seq += 1;
            if let FeedWhat::Config { revision, .. } = &what {
                self.revisions.insert(*revision);
            }
            self.entries.push_back(Arc::new(FeedEntry {
                seq: self.next_seq,
                at_ms,
                what,
            }));
        }
        self.entries
            .make_contiguous()
            .sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then(b.seq.cmp(&a.seq)));
        self.trim();
        self.epoch += 1;
    }

    fn view(&self) -> FeedView {
        FeedView {
            epoch: self.epoch,
            entries: self.entries.iter().cloned().collect(),
        }
    }
}

#[derive(Default)]
struct NodesCache {
    read: Option<Instant>,
    /// The last list read, and when (Unix ms).
    rows: Option<(Vec<NodeRow>, u64)>,
    /// Why the last read failed.
    error: Option<String>,
}

type LeaderView = Option<(Instant, Option<v1::ClusterStatus>)>;

/// The page's live state on this replica (cheap to clone).
#[derive(Clone)]
pub struct Live {
    inner: Arc<Inner>,
}

struct Inner {
    src: Sources,
    feed: Mutex<Feed>,
    frame: watch::Sender<Arc<Frame>>,
    /// One render at a time, so versions move in order.
    publishing: tokio::sync::Mutex<()>,
    nodes: tokio::sync::Mutex<NodesCache>,
    leader: tokio::sync::Mutex<LeaderView>,
    streams: AtomicUsize,
    shutdown: watch::Receiver<bool>,
}

impl Live {
    /// Starts following the replica's streams until `shutdown` flips.
    pub fn start(src: Sources, shutdown: watch::Receiver<bool>) -> Live {
        let changes = src.hub.subscribe();
        let health = src.consensus.subscribe();
        let empty = Frame {
            overview: Arc::new(Overview {
                platform: Platform {
                    replica: src.replica.clone(),
                    now_ms: 0,
                    revision: 0,
                    copy: CopyFrom::Nothing,
                    database: DatabaseView::from_state(
                        src.store.availability().name(),
                        &src.store.availability().state(),
                    ),
                    raft: view::raft_local(&RaftStatus::default(), &BTreeMap::new(), |_| {
                        crate::consensus::Contact {
                            reachable: false,
                            last_heard: None,
                        }
                    }),
                },
                pools: Vec::new(),
                agents_from: ViewsFrom::Decisions { leader: None },
                nodes: Nodes::Known { nodes: Vec::new() },
            }),
            alerts: Section::default(),
            platform: Section::default(),
            pools: Section::default(),
            nodes: Section::default(),
            feed: FeedView::default(),
        };
        let live = Live {
            inner: Arc::new(Inner {
                src,
                feed: Mutex::new(Feed::default()),
                frame: watch::channel(Arc::new(empty)).0,
                publishing: tokio::sync::Mutex::new(()),
                nodes: tokio::sync::Mutex::new(NodesCache::default()),
                leader: tokio::sync::Mutex::new(None),
                streams: AtomicUsize::new(0),
                shutdown,
            }),
        };
        live.record_health();
        tokio::spawn(live.clone().run(changes, health));
        live
    }

    pub fn replica(&self) -> &str {
        &self.inner.src.replica
    }

    pub fn sources(&self) -> &Sources {
        &self.inner.src
    }

    /// The feed, newest first.
    pub fn feed(&self) -> FeedView {
        self.lock_feed().view()
    }

    fn lock_feed(&self) -> std::sync::MutexGuard<'_, Feed> {
        // A panic while holding it leaves a feed that is still a list.
        self.inner
            .feed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn run(
        self,
        mut changes: broadcast::Receiver<HubEvent>,
        mut health: broadcast::Receiver<HealthEvent>,
    ) {
        let mut shutdown = self.inner.shutdown.clone();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = tokio::select! {
                _ = shutdown.changed() => return,
                c = changes.recv() => { self.on_change(c); true }
                h = health.recv() => { self.on_health(h); true }
                _ = tick.tick() => {
                    // Transitions applied before this task subscribed (a
                    // replica replaying its log) announce nothing more.
                    self.record_health();
                    false
                }
            };
            if *shutdown.borrow() {
                return;
            }
            if !self.lock_feed().seeded {
                self.seed_changes().await;
            }
            if self.inner.frame.receiver_count() == 0 {
                continue;
            }
            if event {
                // Render a burst once.
                let until = tokio::time::Instant::now() + COALESCE;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => break,
                        c = changes.recv() => self.on_change(c),
                        h = health.recv() => self.on_health(h),
                    }
                }
            }
            self.publish().await;
        }
    }

    fn on_change(&self, c: Result<HubEvent, broadcast::error::RecvError>) {
        match c {
            Ok(HubEvent::Change(c)) => {
                let mut feed = self.lock_feed();
                if !feed.revisions.contains(&c.revision.0) {
                    feed.push(now_ms(), FeedWhat::config(c.revision.0, &c.change));
                }
            }
            Ok(HubEvent::Reloaded { revision, .. }) => {
                let from = CopyFrom::from(&self.inner.src.hub.copy().source);
                self.lock_feed().push(
                    now_ms(),
                    FeedWhat::Reloaded {
                        revision: revision.0,
                        from,
                    },
                );
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(
                    skipped = n,
                    "status page lagged behind the hub; reading the change log"
                );
                self.lock_feed().seeded = false;
            }
            Err(broadcast::error::RecvError::Closed) => {}
        }
    }

    fn on_health(&self, _h: Result<HealthEvent, broadcast::error::RecvError>) {
        // The table's recent transitions say everything the update (or a
        // lagged stream) would, with where each one came from.
        self.record_health();
    }

    /// Adds the committed transitions not in the feed yet.
    fn record_health(&self) {
        let table = self.inner.src.consensus.table();
        let mut feed = self.lock_feed();
        let fresh: Vec<_> = table
            .recent
            .iter()
            .rev()
            .take_while(|(i, _)| *i > feed.health_index)
            .take(FEED_LEN)
            .collect();
        for (index, t) in fresh.into_iter().rev() {
            feed.push(t.at_ms, FeedWhat::health(*index, t));
        }
        if let Some((last, _)) = table.recent.back() {
            feed.health_index = feed.health_index.max(*last);
        }
    }

    /// Reads the latest changes from the log into the feed (once the
    /// database answers).
    async fn seed_changes(&self) {
        let src = &self.inner.src;
        if !src.store.availability().is_up() {
            return;
        }
        let read = tokio::time::timeout(
            Duration::from_secs(2),
            super::data::recent_changes(src.store.pg(), FEED_LEN),
        )
        .await;
        let changes = match read {
            Ok(Ok(changes)) => changes,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "status page: cannot read the change log yet");
                return;
            }
            Err(_) => return,
        };
        let mut feed = self.lock_feed();
        let older = changes
            .into_iter()
            .filter(|(revision, _, _)| !feed.revisions.contains(revision))
            .map(|(revision, change, at)| (at, FeedWhat::config(revision, &change)))
            .collect();
        feed.merge(older);
        feed.seeded = true;
    }

    // === the model ===

    /// Everything the overview shows, now.
    pub async fn overview(&self) -> Overview {
        let src = &self.inner.src;
        let now = now_ms();
        let copy = src.hub.copy();
        let availability = src.store.availability();
        let status = src.consensus.status();
        let raft = self.raft(&status).await;
        let table = src.consensus.table();
        let live_views = if status.is_leader() {
            src.aggregator.views().await
        } else {
            None
        };
        let agents_from = match &live_views {
            Some(v) => ViewsFrom::Live { at_ms: v.at_ms },
            None => ViewsFrom::Decisions {
                leader: (status.leader != 0).then(|| format!("control-{}", status.leader)),
            },
        };
        let revision = copy.snapshot.revision.0;
        let mut pools = view::pools(&copy.snapshot, &table.backends, live_views.as_ref());
        let nodes = self.nodes(revision, now).await;
        if let Some((rows, _)) = &self.inner.nodes.lock().await.rows {
            view::attach_traffic(&mut pools, rows, now);
        }
        Overview {
            platform: Platform {
                replica: src.replica.clone(),
                now_ms: now,
                revision,
                copy: CopyFrom::from(&copy.source),
                database: DatabaseView::from_state(availability.name(), &availability.state()),
                raft,
            },
            pools,
            agents_from,
            nodes,
        }
    }

    /// The members as the leader sees them when it answers (read at most
    /// once a second), else this replica's own view.
    async fn raft(&self, s: &RaftStatus) -> RaftView {
        let src = &self.inner.src;
        let local = || view::raft_local(s, &s.addresses, |id| src.consensus.contact(id));
        let (Some(peers), false, true) = (&src.peers, s.is_leader(), s.leader != 0) else {
            return local();
        };
        let mut cached = self.inner.leader.lock().await;
        let fresh = cached
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < LEADER_EVERY);
        if !fresh {
            let answer = match peers.client(s.leader) {
                Some(mut client) => tokio::time::timeout(
                    LEADER_EVERY,
                    client.get_cluster_status(v1::GetClusterStatusRequest {}),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .map(tonic::Response::into_inner),
                None => None,
            };
            *cached = Some((Instant::now(), answer));
        }
        match cached.as_ref().and_then(|(_, a)| a.as_ref()) {
            Some(reply) if reply.replica_id == s.leader && reply.role == "leader" => {
                view::raft_from_leader(s, reply)
            }
            _ => local(),
        }
    }

    /// The nodes as last reported (read at most every 2 s).
    async fn nodes(&self, revision: u64, now: u64) -> Nodes {
        let store = &self.inner.src.store;
        let mut cache = self.inner.nodes.lock().await;
        if cache.read.is_none_or(|t| t.elapsed() >= NODES_EVERY) {
            let availability = store.availability();
            cache.error = if availability.is_up() {
                match tokio::time::timeout(Duration::from_secs(2), store.nodes()).await {
                    Ok(Ok(rows)) => {
                        cache.rows = Some((rows, now));
                        None
                    }
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("no answer within 2s".into()),
                }
            } else {
                Some(unreachable(availability))
            };
            cache.read = Some(Instant::now());
        }
        match (&cache.error, &cache.rows) {
            (None, Some((rows, _))) => Nodes::Known {
                nodes: view::nodes(rows, revision, now),
            },
            (None, None) => Nodes::Known { nodes: Vec::new() },
            (Some(why), last) => Nodes::Unknown {
                why: why.clone(),
                last: last
                    .as_ref()
                    .map(|(rows, at)| (view::nodes(rows, revision, now), *at)),
            },
        }
    }

    /// Renders the sections and publishes a frame when anything changed.
    pub async fn publish(&self) {
        let _one = self.inner.publishing.lock().await;
        let overview = self.overview().await;
        let feed = self.feed();
        let prev = self.inner.frame.borrow().clone();
        let frame = Frame {
            alerts: prev.alerts.next(html::alerts(&view::alerts(
                &overview.pools,
                &overview.nodes,
            ))),
            platform: prev.platform.next(html::platform(&overview.platform)),
            pools: prev
                .pools
                .next(html::pools(&overview.pools, &overview.agents_from)),
            nodes: prev.nodes.next(html::nodes(&overview.nodes)),
            feed,
            overview: Arc::new(overview),
        };
        let changed = frame.alerts.version != prev.alerts.version
            || frame.platform.version != prev.platform.version
            || frame.pools.version != prev.pools.version
            || frame.nodes.version != prev.nodes.version
            || frame.feed.epoch != prev.feed.epoch
            || frame.feed.entries.first().map(|e| e.seq)
                != prev.feed.entries.first().map(|e| e.seq)
            || !same_model(&frame.overview, &prev.overview);
        if changed {
            self.inner.frame.send_replace(Arc::new(frame));
        }
    }

    // === event streams ===

    /// A slot for one more event stream, unless there are too many.
    fn admit(&self) -> Option<StreamSlot> {
        let n = self.inner.streams.fetch_add(1, Ordering::Relaxed);
        if n >= MAX_STREAMS {
            self.inner.streams.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        metrics::gauge!("tandem_control_ui_streams").increment(1.0);
        Some(StreamSlot(self.clone()))
    }

    /// The overview's events: every section on connecting, then what
    /// changes. `None`: too many streams already.
    pub async fn overview_stream(
        &self,
    ) -> Option<impl Stream<Item = Result<Event, Infallible>> + use<>> {
        let slot = self.admit()?;
        self.publish().await;
        Some(stream(self, slot, Follow::Overview(Sent::default())))
    }

    /// A backend's events: its state, and its transitions as they commit.
    pub async fn backend_stream(
        &self,
        pool: String,
        address: String,
    ) -> Option<impl Stream<Item = Result<Event, Infallible>> + use<>> {
        let slot = self.admit()?;
        self.publish().await;
        let feed = self.feed();
        Some(stream(
            self,
            slot,
            Follow::Backend {
                pool,
                address,
                body: None,
                epoch: feed.epoch,
                last_seq: feed.entries.first().map(|e| e.seq).unwrap_or(0),
            },
        ))
    }
}

/// Why the database cannot be read, in words that stay the same while the
/// outage lasts (the platform card says since when).
pub fn unreachable(availability: &crate::database::Availability) -> String {
    format!(
        "{} is unreachable: {}",
        availability.name(),
        availability.state().cause
    )
}

/// Whether two overviews show the same thing, whenever they were made.
fn same_model(a: &Overview, b: &Overview) -> bool {
    a.pools == b.pools
        && a.nodes == b.nodes
        && a.agents_from == b.agents_from
        && a.platform.revision == b.platform.revision
}

/// Counts an event stream for as long as it lives.
struct StreamSlot(Live);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.inner.streams.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("tandem_control_ui_streams").decrement(1.0);
    }
}

/// What a browser was last sent.
#[derive(Default)]
struct Sent {
    alerts: Option<u64>,
    platform: Option<u64>,
    pools: Option<u64>,
    nodes: Option<u64>,
    feed: Option<(u64, u64)>,
}

enum Follow {
    Overview(Sent),
    Backend {
        pool: String,
        address: String,
        body: Option<String>,
        epoch: u64,
        last_seq: u64,
    },
}

impl Follow {
    /// The events that bring a browser from what it was sent to `frame`.
    fn events(&mut self, frame: &Frame, out: &mut VecDeque<Event>) {
        match self {
            Follow::Overview(sent) => {
                for (name, section, at) in [
                    ("alerts", &frame.alerts, &mut sent.alerts),
                    ("platform", &frame.platform, &mut sent.platform),
                    ("pools", &frame.pools, &mut sent.pools),
                    ("nodes", &frame.nodes, &mut sent.nodes),
                ] {
                    if *at != Some(section.version) {
                        out.push_back(Event::default().event(name).data(&*section.html));
                        *at = Some(section.version);
                    }
                }
                let entries = &frame.feed.entries;
                let top = entries.first().map(|e| e.seq).unwrap_or(0);
                match sent.feed {
                    Some((epoch, last)) if epoch == frame.feed.epoch => {
                        let fresh: Vec<Arc<FeedEntry>> = entries
                            .iter()
                            .take_while(|e| e.seq > last)
                            .cloned()
                            .collect();
                        if !fresh.is_empty() {
                            out.push_back(
                                Event::default()
                                    .event("feed")
                                    .data(html::feed_items(&fresh)),
                            );
                        }
                    }
                    _ => out.push_back(
                        Event::default()
                            .event("feed-all")
                            .data(html::feed_items(entries)),
                    ),
                }
                sent.feed = Some((frame.feed.epoch, top));
            }
            Follow::Backend {
                pool,
                address,
                body,
                epoch,
                last_seq,
            } => {
                let state = view::backend_state(&frame.overview, pool, address);
                let html = html::backend_body(&state);
                if body.as_deref() != Some(html.as_str()) {
                    out.push_back(Event::default().event("backend").data(&html));
                    *body = Some(html);
                }
                let entries = &frame.feed.entries;
                if *epoch == frame.feed.epoch {
                    let rows: Vec<_> = entries
                        .iter()
                        .take_while(|e| e.seq > *last_seq)
                        .filter_map(|e| e.what.history_of(pool, address, e.at_ms))
                        .collect();
                    if !rows.is_empty() {
                        let html: String = rows.iter().map(html::history_row).collect();
                        out.push_back(Event::default().event("history").data(html));
                    }
                }
                // After a reload of older entries nothing new is at the
                // top; the history on the page came from the database.
                *epoch = frame.feed.epoch;
                *last_seq = entries.first().map(|e| e.seq).unwrap_or(*last_seq);
            }
        }
    }
}

struct StreamState {
    frames: watch::Receiver<Arc<Frame>>,
    shutdown: watch::Receiver<bool>,
    follow: Follow,
    queue: VecDeque<Event>,
    first: bool,
    _slot: StreamSlot,
}

fn stream(
    live: &Live,
    slot: StreamSlot,
    follow: Follow,
) -> impl Stream<Item = Result<Event, Infallible>> + use<> {
    let state = StreamState {
        frames: live.inner.frame.subscribe(),
        shutdown: live.inner.shutdown.clone(),
        follow,
        queue: VecDeque::new(),
        first: true,
        _slot: slot,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.queue.pop_front() {
                return Some((Ok(event), st));
            }
            if *st.shutdown.borrow() {
                return None;
            }
            if st.first {
                st.first = false;
                // Tells the browser how soon to come back if the stream
                // ends (a replica restarting).
                st.queue
                    .push_back(Event::default().retry(RETRY).comment("live"));
            } else {
                tokio::select! {
                    changed = st.frames.changed() => if changed.is_err() { return None },
                    _ = st.shutdown.changed() => return None,
                }
            }
            let frame = st.frames.borrow_and_update().clone();
            st.follow.events(&frame, &mut st.queue);
        }
    })
}

#[cfg(test)]
mod tests {
    use tandem_core::health::HealthState;

    use super::*;

    fn health(i: u64) -> FeedWhat {
        FeedWhat::Health {
            index: i,
            pool: "shop".into(),
            address: "10.0.0.1:80".into(),
            from: HealthState::Healthy,
            to: HealthState::Unhealthy,
            reason: "x".into(),
        }
    }

    #[test]
    fn the_feed_keeps_the_newest_and_merges_older_entries_by_time() {
        let mut feed = Feed::default();
        for i in 0..(FEED_LEN as u64 + 5) {
            feed.push(1_000 + i, health(i));
        }
        assert_eq!(feed.entries.len(), FEED_LEN);
        assert_eq!(feed.entries[0].at_ms, 1_000 + FEED_LEN as u64 + 4);
        let epoch = feed.epoch;

        let mut feed = Feed::default();
        feed.push(5_000, health(1));
        let top = feed.entries[0].seq;
        feed.merge(vec![(
            4_000,
            FeedWhat::Config {
                revision: 3,
                kind: "pool_upserted".into(),
                fields: vec![],
            },
        )]);
        assert_eq!(feed.epoch, epoch + 1, "browsers replace their list");
        assert_eq!(feed.entries[0].seq, top, "newest first by time");
        assert_eq!(feed.entries[1].at_ms, 4_000);
        assert!(feed.revisions.contains(&3));
    }
}
