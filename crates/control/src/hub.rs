//! Watch fan-out and the replica's copy of the configuration: one Postgres
//! `LISTEN` per replica, every committed change read once from the change
//! log, converted to its wire form once, applied to the copy in memory and
//! broadcast to every Watch stream on this replica.
//!
//! Notifications carry only the revision; the hub always reads the log from
//! the last revision it broadcast, so a lost notification or a dropped
//! connection (after which `LISTEN` is re-established) loses nothing. A ping
//! every second notices a database that vanished without closing the
//! connection, and any revision a lost notification did not announce. A
//! change this replica commits itself is applied at once, before its caller
//! hears of it, so the replica's own answers include it even if the
//! database goes away before the notification comes back.
//!
//! The hub keeps the replica's [`Availability`] current: down from the
//! first failure until it listens and has caught up again. While the
//! database is away the API answers reads and new Watch streams from the
//! copy, marked stale. A replica that has not reached its database since it
//! started has no copy of its own: it asks the other replicas for theirs
//! (GetSnapshot), keeps the newest, and reads its own from the database as
//! soon as it can.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use sqlx::postgres::PgListener;
use tandem_client::{Backoff, Jitter};
use tandem_core::{ConfigChange, Revision, Snapshot, StoreIdentity};
use tandem_proto::{convert, v1};
use tokio::sync::{Mutex, broadcast, watch};

use crate::consensus::Peers;
use crate::database::Availability;
use crate::error::Error;
use crate::store::{NOTIFY_CHANNEL, Store};

/// How often the hub checks that the database still answers.
const PING_EVERY: Duration = Duration::from_secs(1);
/// A ping without an answer this long means the database is away.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How long another replica gets to hand over its copy.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnect back-off: short, since writes fail until the hub is back.
/// Waits between reconnects to the database: 100 ms doubling to 1 s.
const BACKOFF: Backoff = Backoff::new(
    Duration::from_millis(100),
    Duration::from_secs(1),
    Jitter::None,
);

/// A committed change, with its wire form computed once for all watchers.
#[derive(Debug)]
pub struct Committed {
    pub revision: Revision,
    pub change: ConfigChange,
    pub event: v1::WatchEvent,
}

impl Committed {
    /// A change committed at `revision` of the store `store` by `actor`.
    pub fn new(
        store: Option<&StoreIdentity>,
        revision: Revision,
        change: ConfigChange,
        actor: Option<&str>,
    ) -> Self {
        let event = v1::WatchEvent {
            actor: actor.unwrap_or_default().to_string(),
            revision: revision.0,
            event: Some(v1::watch_event::Event::Change(convert::change_to_proto(
                &change,
            ))),
            store_id: store.map(|s| s.id.clone()).unwrap_or_default(),
            generation: store.map_or(0, |s| s.generation),
        };
        Self {
            revision,
            change,
            event,
        }
    }
}

/// What Watch streams hear from the hub.
#[derive(Debug, Clone)]
pub enum HubEvent {
    /// The next committed change.
    Change(Arc<Committed>),
    /// The copy was replaced whole (read from the database after a copy
    /// from another replica, or a newer copy from one): a watcher behind it
    /// gets this snapshot event.
    Reloaded {
        revision: Revision,
        /// The store identity of the new copy: a watcher of another one
        /// takes this snapshot even when its revision is higher (history
        /// was rewritten).
        store: Option<StoreIdentity>,
        event: Arc<v1::WatchEvent>,
    },
}

/// Where the replica's copy of the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Nowhere yet: nothing to answer from.
    None,
    /// Its own database.
    Database,
    /// Another replica (named), while its own database was out of reach.
    Peer(String),
}

/// The replica's copy of the declared configuration.
#[derive(Debug)]
pub struct ConfigCopy {
    pub snapshot: Arc<Snapshot>,
    pub source: Source,
}

impl ConfigCopy {
    pub fn is_loaded(&self) -> bool {
        self.source != Source::None
    }
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    /// This replica's name, as stale answers give it.
    replica: String,
    availability: Availability,
    changes: broadcast::Sender<HubEvent>,
    copy: ArcSwap<ConfigCopy>,
    latest: watch::Sender<Revision>,
    listening: AtomicBool,
    /// The last revision read from the database (None: the copy, if any,
    /// did not come from it). Held while the copy moves, so changes are
    /// applied and broadcast once each, in order.
    followed: Mutex<Option<Revision>>,
    /// Where the replica notes the newest revision it served and its store
    /// identity (its state directory), so a start-up that finds the
    /// database behind it knows history was rewritten.
    served_file: std::sync::OnceLock<std::path::PathBuf>,
}

/// What [`Hub::remember_served_in`]'s file holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Served {
    pub store: StoreIdentity,
    pub revision: Revision,
}

/// The file, in the replica's state directory.
pub const SERVED_FILE: &str = "config-served.json";

impl Hub {
    pub fn new(replica: &str, availability: Availability) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                replica: replica.to_string(),
                availability,
                changes: broadcast::channel(4096).0,
                copy: ArcSwap::from_pointee(ConfigCopy {
                    snapshot: Arc::new(Snapshot::default()),
                    source: Source::None,
                }),
                latest: watch::channel(Revision::ZERO).0,
                listening: AtomicBool::new(false),
                followed: Mutex::new(None),
                served_file: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Changes broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.inner.changes.subscribe()
    }

    /// The newest revision this hub holds.
    pub fn latest(&self) -> Revision {
        *self.inner.latest.borrow()
    }

    /// The declared configuration as of [`Hub::latest`] (empty, at revision
    /// 0, until loaded).
    pub fn config(&self) -> Arc<Snapshot> {
        self.inner.copy.load().snapshot.clone()
    }

    /// The copy and where it came from.
    pub fn copy(&self) -> Arc<ConfigCopy> {
        self.inner.copy.load_full()
    }

    /// The copy is now at `revision` (also in /metrics, so an operator
    /// can see what each replica holds).
    fn advance(&self, revision: Revision) {
        self.inner.latest.send_replace(revision);
        metrics::gauge!("tandem_control_copy_revision").set(revision.0 as f64);
        let (Some(path), Some(store)) = (self.inner.served_file.get(), self.config().store.clone())
        else {
            return;
        };
        let served = Served { store, revision };
        if let Err(e) = write_served(path, &served) {
            tracing::warn!(path = %path.display(), error = %e, "cannot note the revision served");
        }
    }

    /// Notes every revision this replica's copy reaches, with its store
    /// identity, in `dir`/[`SERVED_FILE`]. Set once, before [`Hub::run`].
    pub fn remember_served_in(&self, dir: &std::path::Path) {
        let _ = self.inner.served_file.set(dir.join(SERVED_FILE));
    }

    /// What the file says this replica served before, if anything.
    fn served_before(&self) -> Option<Served> {
        let path = self.inner.served_file.get()?;
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable note of the revision served; ignored");
                None
            }
        }
    }

    /// Whether the hub currently holds a live `LISTEN` connection.
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::Relaxed)
    }

    /// The mark on an answer served from `copy` because the database is
    /// away; `cause`, when given, is the failure of the query just tried.
    pub fn stale_read(&self, copy: &ConfigCopy, cause: Option<String>) -> v1::StaleRead {
        let outage = self.inner.availability.outage(cause);
        v1::StaleRead {
            replica: self.inner.replica.clone(),
            database: outage.database,
            cause: outage.cause,
            since_unix_ms: outage.since_unix_ms,
            copied_from: match &copy.source {
                Source::Peer(name) => name.clone(),
                Source::None | Source::Database => String::new(),
            },
        }
    }

    /// Installs `snapshot` as the copy; tells watchers when it replaces one
    /// they may have followed.
    fn install(&self, snapshot: Arc<Snapshot>, source: Source) {
        let had_copy = self.copy().is_loaded();
        let revision = snapshot.revision;
        let store = snapshot.store.clone();
        let copy = ConfigCopy { snapshot, source };
        let event = had_copy.then(|| {
            let mut message = convert::snapshot_to_proto(&copy.snapshot);
            if copy.source != Source::Database {
                message.stale = Some(self.stale_read(&copy, None));
            }
            v1::WatchEvent {
                revision: revision.0,
                store_id: message.store_id.clone(),
                generation: message.generation,
                event: Some(v1::watch_event::Event::Snapshot(message)),
                ..Default::default()
            }
        });
        self.inner.copy.store(Arc::new(copy));
        self.advance(revision);
        if let Some(event) = event {
            // No receivers is fine: nobody is watching this replica.
            let _ = self.inner.changes.send(HubEvent::Reloaded {
                revision,
                store,
                event: Arc::new(event),
            });
        }
    }

    /// A change this replica just committed: applied and broadcast now if
    /// it is the next one, else left to the log (the hub is catching up,
    /// or another replica's change came between).
    pub fn committed(&self, revision: Revision, change: &ConfigChange, actor: Option<&str>) {
        let Ok(mut followed) = self.inner.followed.try_lock() else {
            return;
        };
        if followed.map(Revision::next) != Some(revision) {
            return;
        }
        let mut config = (*self.config()).clone();
        if config.apply(revision, change).is_err() {
            return;
        }
        let _ = self
            .inner
            .changes
            .send(HubEvent::Change(Arc::new(Committed::new(
                config.store.as_ref(),
                revision,
                change.clone(),
                actor,
            ))));
        self.inner.copy.store(Arc::new(ConfigCopy {
            snapshot: Arc::new(config),
            source: Source::Database,
        }));
        *followed = Some(revision);
        self.advance(revision);
    }

    /// Asks every other replica for its configuration and keeps the newest
    /// answer, unless this replica's copy came from its own database (that
    /// one stays until the database says otherwise). For a replica that
    /// has not reached its database since it started.
    pub async fn copy_from_peers(&self, peers: &Peers) {
        let held = self.copy();
        if held.source == Source::Database {
            return;
        }
        let asks = peers.ids().map(|id| async move {
            let name = format!("control-{id}");
            let mut client = peers.client(id)?;
            let answer = tokio::time::timeout(
                PEER_TIMEOUT,
                client.get_snapshot(v1::GetSnapshotRequest {}),
            )
            .await;
            match answer {
                Ok(Ok(reply)) => Some((name, reply.into_inner())),
                Ok(Err(status)) => {
                    tracing::debug!(peer = %name, error = %status.message(), "no configuration from this replica");
                    None
                }
                Err(_) => {
                    tracing::debug!(peer = %name, "no configuration from this replica in time");
                    None
                }
            }
        });
        let best = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .max_by_key(|(_, s)| s.revision);
        let Some((name, message)) = best else {
            return;
        };
        if held.is_loaded() && message.revision <= held.snapshot.revision.0 {
            return;
        }
        match convert::snapshot_from_proto(&message) {
            Ok(snapshot) => {
                tracing::info!(peer = %name, revision = snapshot.revision.0, "copied the configuration from another replica while the database is away");
                self.install(Arc::new(snapshot), Source::Peer(name));
            }
            Err(e) => {
                tracing::warn!(peer = %name, error = %e, "another replica's configuration does not convert; ignored")
            }
        }
    }

    /// Listens until `shutdown` flips to true, reconnecting with back-off
    /// while the database is away (and, while this replica has no copy of
    /// its own, asking `peers` for theirs).
    pub async fn run(
        self,
        store: Store,
        peers: Option<Peers>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut backoff = BACKOFF;
        loop {
            if *shutdown.borrow() {
                return;
            }
            // While the database is away, a direct connection says why
            // at once; the pool would only time out.
            let probed = if self.inner.availability.is_up() {
                Ok(())
            } else {
                store.probe().await
            };
            let attempt = match probed {
                Ok(()) => self.listen(&store, &mut shutdown).await,
                Err(e) => Err(e),
            };
            let retry_in = match attempt {
                Ok(()) => return,
                Err(e) => {
                    self.inner.listening.store(false, Ordering::Relaxed);
                    if self.inner.availability.is_up() {
                        // An outage starts: reconnect quickly.
                        backoff.reset();
                    }
                    self.inner.availability.down(cause_of(&e));
                    let retry_in = backoff.next_wait();
                    tracing::debug!(error = %e, ?retry_in, "config listener lost the database");
                    retry_in
                }
            };
            if let Some(peers) = &peers {
                self.copy_from_peers(peers).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(retry_in) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn listen(
        &self,
        store: &Store,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let mut listener = PgListener::connect_with(store.pg()).await?;
        // A lost connection ends this listen (the replica then counts the
        // database as away until it listens again) rather than being
        // re-established inside `try_recv`, which waits out the pool's
        // acquire timeout while the database is down.
        listener.eager_reconnect(false);
        listener.listen(NOTIFY_CHANNEL).await?;
        self.catch_up(store).await?;
        self.inner.listening.store(true, Ordering::Relaxed);
        self.inner.availability.up();
        tracing::info!(
            channel = NOTIFY_CHANNEL,
            revision = self.latest().0,
            "listening for config changes"
        );
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            let notified = tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = ping.tick() => false,
                n = listener.try_recv() => match n? {
                    Some(_) => true,
                    None => return Err(Error::Unavailable("the connection to the database was lost".into())),
                },
            };
            if notified {
                self.catch_up(store).await?;
                continue;
            }
            // On the listening connection itself: notices a database that
            // vanished without closing it (a dead host, a cut network), and
            // catches up on a change whose notification was lost.
            // A primary demoted under us (a Patroni switchover) still
            // answers, read-only: the database counts as away until the
            // probe finds the new primary.
            let ping = sqlx::query_as::<_, (i64, bool, i64)>(
                "SELECT r.revision, pg_is_in_recovery(), i.generation FROM config_revision r, store_identity i",
            )
            .fetch_one(&mut listener);
            let (revision, in_recovery, generation) = tokio::time::timeout(PING_TIMEOUT, ping)
                .await
                .map_err(|_| {
                    Error::Unavailable(format!(
                        "no answer to a ping within {}",
                        crate::database::format_duration(PING_TIMEOUT)
                    ))
                })??;
            if in_recovery && store.requires_primary() {
                return Err(Error::Unavailable(
                    "the database is a read-only replica now (demoted)".into(),
                ));
            }
            let held = self.config().store.as_ref().map(|s| s.generation);
            if revision as u64 != self.latest().0 || held != Some(generation as u64) {
                self.catch_up(store).await?;
            }
        }
    }

    /// Broadcasts every logged change after the last one followed,
    /// keeping the copy current. With none followed yet, first reads the
    /// whole configuration.
    ///
    /// Reads the whole configuration again when the store's identity is not
    /// the copy's (a restore, another replica's new generation) or the
    /// database is behind the copy. Behind what this replica served under
    /// the same identity (its copy, a peer's copy, the revision noted in
    /// its state directory before a restart), history was rewritten (a
    /// failover lost the last transactions): it starts a new generation
    /// first, so no follower takes the new revisions for the old ones.
    async fn catch_up(&self, store: &Store) -> Result<(), Error> {
        let mut last = self.inner.followed.lock().await;
        let (identity, db_revision) = store.identity().await?;
        let held = self.copy();
        let held_store = held.snapshot.store.as_ref();
        let reload = match *last {
            None => true,
            Some(r) => held_store != Some(&identity) || db_revision < r,
        };
        let mut from = if reload {
            // The newest revision served under this identity.
            let mut served = None::<Revision>;
            if held.is_loaded() && held_store == Some(&identity) {
                served = Some(held.snapshot.revision);
            }
            if let Some(before) = self.served_before()
                && before.store == identity
            {
                served = served.max(Some(before.revision));
            }
            if let Some(served) = served
                && served > db_revision
            {
                let reason = format!(
                    "the database is at revision {}, behind revision {} served before (a failover that lost its last transactions, or a database restored underneath)",
                    db_revision.0, served.0
                );
                tracing::warn!(store = %identity, database = db_revision.0, served = served.0, "the control database is behind what was served: history was rewritten");
                store.new_generation(&identity, &reason).await?;
            }
            let snapshot = store.snapshot().await?;
            let revision = snapshot.revision;
            if held.is_loaded() && held_store != snapshot.store.as_ref() {
                tracing::warn!(
                    from = %held_store.map(ToString::to_string).unwrap_or_else(|| "unknown".into()),
                    to = %snapshot.store.as_ref().map(ToString::to_string).unwrap_or_default(),
                    revision = revision.0,
                    "store identity changed: the configuration is read whole and every watcher gets a full snapshot"
                );
            }
            // First read from this database (followers get history
            // through snapshots, not from here), or history rewritten.
            self.install(Arc::new(snapshot), Source::Database);
            *last = Some(revision);
            revision
        } else {
            last.unwrap_or(Revision::ZERO)
        };
        let mut config = (*self.config()).clone();
        let identity = config.store.clone();
        let mut diverged = false;
        loop {
            let batch = store.changes_with_actors_since(from, 1000).await?;
            let n = batch.len();
            for (revision, change, actor) in batch {
                from = revision;
                if !diverged && config.apply(revision, &change).is_err() {
                    diverged = true;
                }
                // No receivers is fine: nobody is watching this replica.
                let _ = self
                    .inner
                    .changes
                    .send(HubEvent::Change(Arc::new(Committed::new(
                        identity.as_ref(),
                        revision,
                        change,
                        actor.as_deref(),
                    ))));
            }
            if n < 1000 {
                break;
            }
        }
        if diverged {
            // A restore's revision has no log entry: its generation starts
            // from a snapshot, which watchers get too.
            tracing::warn!("configuration copy diverged from the log; reloading it");
            let snapshot = store.snapshot().await?;
            let revision = snapshot.revision;
            self.install(Arc::new(snapshot), Source::Database);
            *last = Some(revision);
            return Ok(());
        }
        self.inner.copy.store(Arc::new(ConfigCopy {
            snapshot: Arc::new(config),
            source: Source::Database,
        }));
        *last = Some(from);
        self.advance(from);
        Ok(())
    }
}

/// Writes the note atomically (temp file, rename).
fn write_served(path: &std::path::Path, served: &Served) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(served).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

/// Why the database is away, as a person reads it.
fn cause_of(e: &Error) -> String {
    match e {
        Error::Unavailable(cause) => cause.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replaced_copy_is_announced_and_marked_with_where_it_came_from() {
        let availability = Availability::new("127.0.0.1:5432/tandem");
        availability.down("connection refused");
        let hub = Hub::new("control-2", availability);
        assert!(!hub.copy().is_loaded(), "nothing to answer from yet");
        let mut events = hub.subscribe();

        // The first copy replaces nothing anyone followed: no event.
        let first = Snapshot {
            revision: Revision(4),
            ..Default::default()
        };
        hub.install(Arc::new(first), Source::Peer("control-1".into()));
        assert!(events.try_recv().is_err());
        assert_eq!(hub.latest(), Revision(4));
        let copy = hub.copy();
        let stale = hub.stale_read(&copy, None);
        assert_eq!(stale.replica, "control-2");
        assert_eq!(stale.copied_from, "control-1");
        assert_eq!(stale.database, "127.0.0.1:5432/tandem");
        assert_eq!(stale.cause, "connection refused");

        // A newer one is announced as a snapshot, still marked stale.
        let newer = Snapshot {
            revision: Revision(6),
            ..Default::default()
        };
        hub.install(Arc::new(newer), Source::Peer("control-3".into()));
        let Ok(HubEvent::Reloaded {
            revision, event, ..
        }) = events.try_recv()
        else {
            panic!("a reload event");
        };
        assert_eq!(revision, Revision(6));
        let Some(v1::watch_event::Event::Snapshot(s)) = &event.event else {
            panic!("a snapshot event");
        };
        assert_eq!(
            s.stale.as_ref().map(|s| s.copied_from.as_str()),
            Some("control-3")
        );

        // Read from the database: announced, and not marked.
        let own = Snapshot {
            revision: Revision(7),
            ..Default::default()
        };
        hub.install(Arc::new(own), Source::Database);
        let Ok(HubEvent::Reloaded { event, .. }) = events.try_recv() else {
            panic!("a reload event");
        };
        let Some(v1::watch_event::Event::Snapshot(s)) = &event.event else {
            panic!("a snapshot event");
        };
        assert!(s.stale.is_none());
    }

    #[tokio::test]
    async fn its_own_commits_move_the_copy_in_order_and_only_then() {
        let hub = Hub::new("control-1", Availability::new("db"));
        let snapshot = Snapshot {
            revision: Revision(3),
            ..Default::default()
        };
        hub.install(Arc::new(snapshot), Source::Database);
        *hub.inner.followed.lock().await = Some(Revision(3));
        let mut events = hub.subscribe();
        let pool = |name: &str| {
            ConfigChange::PoolUpserted(tandem_core::PoolConfig::new(
                tandem_core::PoolName::new(name).expect("a valid name"),
            ))
        };

        // Not the next revision (another replica's change came between):
        // left to the log.
        hub.committed(Revision(5), &pool("web"), None);
        assert_eq!(hub.latest(), Revision(3));
        assert!(events.try_recv().is_err());

        // The next one: applied and broadcast once.
        hub.committed(Revision(4), &pool("shop"), None);
        assert_eq!(hub.latest(), Revision(4));
        assert_eq!(hub.config().pools.len(), 1);
        assert!(matches!(events.try_recv(), Ok(HubEvent::Change(c)) if c.revision == Revision(4)));
        hub.committed(Revision(4), &pool("shop"), None);
        assert!(events.try_recv().is_err(), "not twice");

        // While the hub reads the log, it is left to the log.
        let held = hub.inner.followed.lock().await;
        hub.committed(Revision(5), &pool("web"), None);
        drop(held);
        assert_eq!(hub.latest(), Revision(4));
    }
}
