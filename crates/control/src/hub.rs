//! Watch fan-out: one Postgres `LISTEN` per replica, every committed change
//! read once from the change log, converted to its wire form once, and
//! broadcast to every Watch stream on this replica.
//!
//! Notifications carry only the revision; the hub always reads the log from
//! the last revision it broadcast, so a lost notification or a dropped
//! connection (after which `LISTEN` is re-established) loses nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use sqlx::postgres::PgListener;
use tandem_core::{ConfigChange, Revision, Snapshot};
use tandem_proto::{convert, v1};
use tokio::sync::{broadcast, watch};

use crate::store::{NOTIFY_CHANNEL, Store};

/// A committed change, with its wire form computed once for all watchers.
#[derive(Debug)]
pub struct Committed {
    pub revision: Revision,
    pub change: ConfigChange,
    pub event: v1::WatchEvent,
}

impl Committed {
    pub fn new(revision: Revision, change: ConfigChange) -> Self {
        let event = v1::WatchEvent {
            revision: revision.0,
            event: Some(v1::watch_event::Event::Change(convert::change_to_proto(
                &change,
            ))),
        };
        Self {
            revision,
            change,
            event,
        }
    }
}

#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    changes: broadcast::Sender<Arc<Committed>>,
    /// The declared configuration as of `latest` (for the health decider).
    config: ArcSwap<Snapshot>,
    latest: watch::Sender<Revision>,
    listening: AtomicBool,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            inner: Arc::new(Inner {
                changes: broadcast::channel(4096).0,
                config: ArcSwap::from_pointee(Snapshot::default()),
                latest: watch::channel(Revision::ZERO).0,
                listening: AtomicBool::new(false),
            }),
        }
    }

    /// Changes broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Committed>> {
        self.inner.changes.subscribe()
    }

    /// The newest revision this hub has broadcast.
    pub fn latest(&self) -> Revision {
        *self.inner.latest.borrow()
    }

    /// The declared configuration as of [`Hub::latest`].
    pub fn config(&self) -> Arc<Snapshot> {
        self.inner.config.load_full()
    }

    /// Whether the hub currently holds a live `LISTEN` connection.
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::Relaxed)
    }

    /// Listens until `shutdown` flips to true, reconnecting with back-off
    /// while the database is away.
    pub async fn run(self, store: Store, mut shutdown: watch::Receiver<bool>) {
        let mut last: Option<Revision> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.listen(&store, &mut last, &mut shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    self.inner.listening.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %e, retry_in = ?backoff, "config listener lost the database");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn listen(
        &self,
        store: &Store,
        last: &mut Option<Revision>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), crate::Error> {
        let mut listener = PgListener::connect_with(store.pg()).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        self.inner.listening.store(true, Ordering::Relaxed);
        tracing::info!(channel = NOTIFY_CHANNEL, "listening for config changes");
        self.catch_up(store, last).await?;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                n = listener.try_recv() => match n? {
                    Some(_) => self.catch_up(store, last).await?,
                    // The connection dropped and will be re-established by
                    // the next call; notifications sent meanwhile are lost,
                    // so read the log again.
                    None => {
                        self.inner.listening.store(false, Ordering::Relaxed);
                        tracing::warn!("config listener reconnecting");
                        self.catch_up(store, last).await?;
                        self.inner.listening.store(true, Ordering::Relaxed);
                    }
                },
            }
        }
    }

    /// Broadcasts every logged change after `last`, keeping the
    /// configuration copy current.
    async fn catch_up(
        &self,
        store: &Store,
        last: &mut Option<Revision>,
    ) -> Result<(), crate::Error> {
        let mut from = match *last {
            Some(r) => r,
            // First start: load the configuration; followers get history
            // through snapshots, not from here.
            None => {
                let snapshot = store.snapshot().await?;
                let rev = snapshot.revision;
                self.inner.config.store(Arc::new(snapshot));
                rev
            }
        };
        let mut config = (*self.inner.config.load_full()).clone();
        let mut diverged = false;
        loop {
            let batch = store.changes_since(from, 1000).await?;
            let n = batch.len();
            for (revision, change) in batch {
                from = revision;
                if !diverged && config.apply(revision, &change).is_err() {
                    diverged = true;
                }
                // No receivers is fine: nobody is watching this replica.
                let _ = self
                    .inner
                    .changes
                    .send(Arc::new(Committed::new(revision, change)));
            }
            if n < 1000 {
                break;
            }
        }
        if diverged {
            tracing::warn!("configuration copy diverged from the log; reloading it");
            config = store.snapshot().await?;
        }
        self.inner.config.store(Arc::new(config));
        *last = Some(from);
        self.inner.latest.send_replace(from);
        Ok(())
    }
}
