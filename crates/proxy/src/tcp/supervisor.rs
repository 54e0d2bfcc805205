//! Closing connections that must not go on, and the split-brain alert.
//!
//! After every configuration or health change (and a few times a second),
//! for each pool behind a TCP route whose `on_unhealthy` is `close`, the
//! connections open to a backend that is unhealthy (by the agents'
//! verdict), disabled, removed from the pool, or — in a `single_active`
//! pool — no longer the active member are closed once the pool's grace has
//! passed. A backend that recovers within the grace keeps them.
//!
//! A `single_active` pool with more than one member passing its health
//! check is a split brain (two database primaries): the proxy still sends
//! to the first by declared order only, and says so loudly: an error in
//! the log, the `tandem_proxy_tcp_single_active_claimants` gauge, and an
//! alert in its report to the control plane (`tandemctl status`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tandem_core::health::HealthState;
use tandem_core::lb::{self, Endpoint};
use tandem_core::{AdminState, LbPolicy, OnUnhealthy};

use super::{CloseReason, Tcp, TcpBackend};
use crate::clock;

/// How often the supervisor looks even when nothing told it to.
pub const EVERY: Duration = Duration::from_millis(250);

/// One backend whose connections should be closed.
struct Verdict {
    backend: Arc<TcpBackend>,
    reason: CloseReason,
    grace_ms: u64,
}

/// Runs for the life of the proxy.
pub async fn run(tcp: Arc<Tcp>) {
    // Since when each backend (by address of its state) has been condemned.
    let mut condemned: HashMap<usize, (u64, CloseReason)> = HashMap::new();
    let mut alerts: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let changed = tcp.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        // Never act on half of a health update: evaluate between two
        // updates, or again.
        let generation = tcp.health_generation.load(Ordering::SeqCst);
        if generation % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let (verdicts, now_alerts) = evaluate(&tcp);
        if tcp.health_generation.load(Ordering::SeqCst) != generation {
            continue;
        }
        let now = clock::precise_ms();
        let mut next = EVERY;
        let mut seen = Vec::with_capacity(verdicts.len());
        for v in verdicts {
            let key = Arc::as_ptr(&v.backend) as usize;
            seen.push(key);
            let (since, _) = *condemned.entry(key).or_insert((now, v.reason));
            let waited = now.saturating_sub(since);
            if waited >= v.grace_ms {
                let closed = v.backend.close_all(v.reason);
                condemned.remove(&key);
                tracing::warn!(
                    pool = %v.backend.pool,
                    backend = %v.backend.address,
                    reason = v.reason.as_str(),
                    connections = closed,
                    "closing tcp connections to a backend that must not keep them"
                );
            } else {
                next = next.min(Duration::from_millis(v.grace_ms - waited));
            }
        }
        condemned.retain(|k, _| seen.contains(k));
        report_alerts(&tcp, &mut alerts, now_alerts);
        tokio::select! {
            () = &mut changed => {}
            () = tokio::time::sleep(next) => {}
        }
    }
}

/// The backends whose connections must close, and the pools' alerts.
fn evaluate(tcp: &Tcp) -> (Vec<Verdict>, BTreeMap<String, String>) {
    let mut out = Vec::new();
    let mut alerts = BTreeMap::new();
    let table = tcp.table.load_full();
    for pool in table.iter().flat_map(|t| t.pools.iter()) {
        let eps = &pool.endpoints;
        let single = pool.config.policy == LbPolicy::SingleActive;
        let active = if single {
            lb::single_active(eps, &[]).map(|p| p.index)
        } else {
            None
        };
        if single {
            let claimants = lb::claimants(eps);
            pool.state.m.claimants.set(claimants as f64);
            if claimants > 1 {
                let mut names: Vec<(u32, &str)> = eps
                    .iter()
                    .filter(|e| e.admin_state() != AdminState::Disabled && e.passes_check())
                    .map(|e| (e.order(), e.key()))
                    .collect();
                names.sort();
                let list: Vec<&str> = names.iter().map(|(_, k)| *k).collect();
                let to = active.map_or("none (not usable here)", |i| eps[i].key());
                alerts.insert(
                    pool.config.name.to_string(),
                    format!(
                        "pool/{} (single_active): {claimants} members pass the health check ({}); sending only to {to}",
                        pool.config.name,
                        list.join(", ")
                    ),
                );
            }
        }
        if pool.config.on_unhealthy() != OnUnhealthy::Close {
            continue;
        }
        let grace_ms = u64::from(pool.config.tcp.unhealthy_grace_ms);
        for (i, e) in eps.iter().enumerate() {
            if e.tcp.active.load(Ordering::SeqCst) == 0 {
                continue;
            }
            let reason = if e.backend.declared.admin_state == AdminState::Disabled {
                CloseReason::Disabled
            } else if e.backend.state.health() == HealthState::Unhealthy {
                CloseReason::Unhealthy
            } else if active.is_some_and(|a| a != i) {
                CloseReason::NotActive
            } else {
                continue;
            };
            out.push(Verdict {
                backend: e.tcp.clone(),
                reason,
                grace_ms,
            });
        }
        for r in &pool.retired {
            if r.active.load(Ordering::SeqCst) > 0 {
                out.push(Verdict {
                    backend: r.clone(),
                    reason: CloseReason::Removed,
                    grace_ms,
                });
            }
        }
    }
    // Backends of pools no TCP route leads to any more: by the policy
    // their pool had.
    for o in tcp.orphans() {
        let (close, grace_ms) = o.policy();
        if close && o.active.load(Ordering::SeqCst) > 0 {
            out.push(Verdict {
                backend: o,
                reason: CloseReason::Removed,
                grace_ms,
            });
        }
    }
    (out, alerts)
}

fn report_alerts(tcp: &Tcp, current: &mut BTreeMap<String, String>, now: BTreeMap<String, String>) {
    if *current == now {
        return;
    }
    for (pool, text) in &now {
        if current.get(pool) != Some(text) {
            tracing::error!(pool = %pool, alert = %text, "SPLIT BRAIN? more than one member of a single_active pool passes its health check");
        }
    }
    for pool in current.keys() {
        if !now.contains_key(pool) {
            tracing::info!(pool = %pool, "single_active pool back to at most one member passing its check");
        }
    }
    *current = now;
    let list: Vec<String> = current.values().cloned().collect();
    tcp.node_state.send_if_modified(|s| {
        if s.alerts == list {
            return false;
        }
        s.alerts = list;
        true
    });
}
