//! The health decider: on the raft leader only, feeds agents' observations
//! into `tandem_core::health::Decider` and proposes the transitions it
//! decides. A replica that becomes leader starts from the committed table
//! (so it never re-announces what is already decided) and fresh per-agent
//! counts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem_core::health::{AgentView, BackendKey, Decider, Observation};
use tandem_core::{Revision, Snapshot};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument as _;

use super::{Command, Consensus};

/// How often the leader evaluates (bounds the decision delay).
const EVALUATE_EVERY: Duration = Duration::from_millis(100);

/// Gives the current declared configuration (pools' health specs).
pub type ConfigView = Arc<dyn Fn() -> Arc<Snapshot> + Send + Sync>;

#[derive(Clone)]
pub struct Aggregator {
    tx: mpsc::Sender<Vec<Observation>>,
    views: mpsc::Sender<oneshot::Sender<Option<AgentViews>>>,
}

/// Every agent's current opinion of every declared backend, as the
/// deciding leader holds it (the committed table keeps only the views at
/// each backend's last transition).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentViews {
    /// When they were read, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The term this replica decides in.
    pub term: u64,
    pub backends: BTreeMap<BackendKey, Vec<AgentView>>,
}

impl Aggregator {
    pub fn start(
        consensus: Consensus,
        config: ConfigView,
        mut shutdown: watch::Receiver<bool>,
    ) -> Aggregator {
        let (tx, mut rx) = mpsc::channel::<Vec<Observation>>(1024);
        let (views, mut view_asks) = mpsc::channel::<oneshot::Sender<Option<AgentViews>>>(64);
        tokio::spawn(async move {
            let mut decider = Decider::new();
            let mut led_term: Option<u64> = None;
            let mut ticker = tokio::time::interval(EVALUATE_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.changed() => return,
                    batch = rx.recv() => {
                        let Some(batch) = batch else { return };
                        if !lead(&consensus, &mut decider, &mut led_term) {
                            tracing::debug!(n = batch.len(), status = ?consensus.status(), "observations ignored: not deciding");
                            continue; // not deciding: followers forward before this point
                        }
                        let config = config();
                        for obs in &batch {
                            if let Some(pool) = config.pools.get(&obs.key.pool)
                                && pool.backend(&obs.key.address).is_some()
                            {
                                decider.observe(obs, &pool.config.health_check);
                            } else {
                                tracing::debug!(pool = %obs.key.pool, backend = %obs.key.address, "observation of a backend not in the configuration ignored");
                            }
                        }
                    }
                    Some(ask) = view_asks.recv() => {
                        // Only while deciding: a follower's decider is empty.
                        let term = led_term.filter(|_| consensus.status().is_leader());
                        let _ = ask.send(term.map(|term| current_views(&decider, &config(), term)));
                    }
                    _ = ticker.tick() => {
                        if !lead(&consensus, &mut decider, &mut led_term) {
                            continue;
                        }
                        let config = config();
                        let declared = |k: &BackendKey| config.pools.get(&k.pool).is_some_and(|p| p.backend(&k.address).is_some());
                        decider.retain(declared);
                        // Committed health of backends no longer declared is
                        // dropped, once the configuration has been read at
                        // all (revision 0: not yet, or nothing ever declared).
                        if config.revision > Revision::ZERO {
                            let stale: Vec<BackendKey> = consensus.table().backends.keys().filter(|k| !declared(k)).cloned().collect();
                            if !stale.is_empty() {
                                tracing::info!(backends = stale.len(), "forgetting the health of backends removed from the configuration");
                                if let Err(e) = consensus.propose(&Command::Forget { keys: stale }).await {
                                    tracing::warn!(error = %e, "forgetting removed backends not committed; will try again");
                                }
                            }
                        }
                        let transitions = decider.evaluate(now_ms(), |k| {
                            config.pools.get(&k.pool).map(|p| &p.config.health_check)
                        });
                        if transitions.is_empty() {
                            continue;
                        }
                        // A span per decision: its context rides in the raft
                        // entry to every replica's watchers, so a proxy's
                        // span of the update continues this trace.
                        let span = tracing::info_span!(
                            "health decision",
                            transitions = transitions.len(),
                            raft_index = tracing::field::Empty,
                        );
                        for t in &transitions {
                            span.in_scope(|| tracing::info!(
                                pool = %t.key.pool, backend = %t.key.address,
                                from = t.from.as_str(), to = t.to.as_str(), reason = %t.reason,
                                "health transition decided"
                            ));
                        }
                        let keys: Vec<_> = transitions.iter().map(|t| t.key.clone()).collect();
                        let trace = tandem_telemetry::spans::traceparent_of(&span);
                        let proposed = consensus
                            .propose(&Command::Transitions { transitions, trace })
                            .instrument(span.clone())
                            .await;
                        if let Ok(index) = &proposed {
                            span.record("raft_index", index);
                        }
                        if let Err(e) = proposed {
                            tracing::warn!(error = %e, "health transitions not committed; will decide again");
                            // Back to what is committed, so they are decided again.
                            let table = consensus.table();
                            for k in keys {
                                decider.adopt(&k, table.backends.get(&k).map(|h| h.state).unwrap_or_default());
                            }
                        }
                    }
                }
            }
        });
        Aggregator { tx, views }
    }

    /// The agents' current views of every declared backend, when this
    /// replica is the deciding leader (`None` otherwise, or when the
    /// decider does not answer within a second).
    pub async fn views(&self) -> Option<AgentViews> {
        let (ask, answer) = oneshot::channel();
        self.views.try_send(ask).ok()?;
        tokio::time::timeout(Duration::from_secs(1), answer)
            .await
            .ok()?
            .ok()?
    }

    /// Queues observations; false when the decider is saturated.
    pub fn submit(&self, batch: Vec<Observation>) -> bool {
        self.tx.try_send(batch).is_ok()
    }
}

/// Whether this replica decides now; on becoming leader (in a new term),
/// starts the decider afresh from the committed table.
fn lead(consensus: &Consensus, decider: &mut Decider, led_term: &mut Option<u64>) -> bool {
    let status = consensus.status();
    // A new leader first applies everything committed before it decides.
    if !status.is_leader() || status.applied < status.commit {
        *led_term = None;
        return false;
    }
    if *led_term != Some(status.term) {
        *decider = Decider::new();
        for (key, h) in &consensus.table().backends {
            decider.adopt(key, h.state);
        }
        *led_term = Some(status.term);
        tracing::info!(term = status.term, "deciding backend health as raft leader");
    }
    true
}

fn current_views(decider: &Decider, config: &Snapshot, term: u64) -> AgentViews {
    let at_ms = now_ms();
    let mut backends = BTreeMap::new();
    for pool in config.pools.values() {
        for backend in &pool.backends {
            let key = BackendKey {
                pool: pool.config.name.clone(),
                address: backend.address.clone(),
            };
            let views = decider.views(&key, &pool.config.health_check, at_ms);
            backends.insert(key, views);
        }
    }
    AgentViews {
        at_ms,
        term,
        backends,
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
