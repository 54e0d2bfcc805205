//! The pace and the condition of the raft leader's own work on the control
//! database: recording health history ([`crate::history`]), applying
//! raft overrides ([`crate::overrides`]) and recording the membership
//! ([`crate::membership::record`]). Each runs on every replica, on a
//! ticker, and acts only while its replica leads and its database is up.

use std::time::Duration;

use tokio::sync::watch;

use crate::consensus::{Consensus, RaftStatus};
use crate::store::Store;

/// A tick every period until shutdown.
pub(crate) struct Ticks {
    ticker: tokio::time::Interval,
    shutdown: watch::Receiver<bool>,
}

impl Ticks {
    pub(crate) fn new(every: Duration, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            ticker: tokio::time::interval(every),
            shutdown,
        }
    }

    /// Waits for the next tick; false at shutdown.
    pub(crate) async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.shutdown.changed() => false,
            _ = self.ticker.tick() => true,
        }
    }
}

/// Raft's status when this replica leads and its database is known to be
/// up; `None` otherwise.
pub(crate) fn on_duty(consensus: &Consensus, store: &Store) -> Option<RaftStatus> {
    let s = consensus.status();
    (s.is_leader() && store.availability().is_up()).then_some(s)
}
