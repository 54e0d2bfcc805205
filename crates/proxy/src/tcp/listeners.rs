//! One listening socket per TCP route, kept in step with the
//! configuration: a new route is bound at once, a deleted one closed (its
//! connections go on), others are not touched. A port that cannot be bound
//! (already taken, not an address of this host, a privileged port) is
//! logged, reported to the control plane (`tandemctl status`) and tried
//! again every few seconds.
//!
//! Listeners are bound with `SO_REUSEPORT`, as HAProxy's are by default on
//! Linux: several proxies on one host serve a route's address together
//! (the kernel spreads new connections over them), so when one stops the
//! others go on accepting at once instead of a client seeing refused
//! connections until another proxy's next attempt to bind. Only sockets
//! that also ask for it share (and only within one user); a port held by
//! any other socket is still reported as not bound.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_core::PoolName;
use tandem_proto::v1::ListenerStatus;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Tcp, conn, wanted_listeners};

struct Listener {
    pool: PoolName,
    /// Stops the accept loop; `Err` holds why it could not bind.
    state: Result<CancellationToken, String>,
    up: metrics::Gauge,
}

/// Runs until `shutdown` says true, then closes every listener.
pub async fn run(tcp: Arc<Tcp>, mut shutdown: watch::Receiver<bool>) {
    let mut running: HashMap<SocketAddr, Listener> = HashMap::new();
    loop {
        let changed = tcp.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        reconcile(&tcp, &mut running);
        let failing = running.values().any(|l| l.state.is_err());
        tokio::select! {
            () = &mut changed => {}
            () = tokio::time::sleep(tcp.options.rebind_every), if failing => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    for (addr, l) in running {
        if let Ok(stop) = l.state {
            stop.cancel();
            tracing::info!(listen = %addr, pool = %l.pool, "tcp listener closed: shutting down");
        }
        l.up.set(0.0);
    }
}

fn reconcile(tcp: &Arc<Tcp>, running: &mut HashMap<SocketAddr, Listener>) {
    let wanted: BTreeMap<SocketAddr, PoolName> = tcp
        .table
        .load()
        .as_ref()
        .map(|t| wanted_listeners(t))
        .unwrap_or_default();
    running.retain(|addr, l| {
        let keep = wanted.contains_key(addr);
        if !keep {
            if let Ok(stop) = &l.state {
                stop.cancel();
                tracing::info!(listen = %addr, pool = %l.pool, "tcp listener closed: route deleted; its connections go on");
            }
            l.up.set(0.0);
        }
        keep
    });
    for (addr, pool) in wanted {
        if let Some(l) = running.get_mut(&addr) {
            if l.pool != pool {
                // Each connection looks its route up: nothing to rebind.
                tracing::info!(listen = %addr, from = %l.pool, to = %pool, "tcp route now leads to another pool");
                l.pool = pool.clone();
            }
            if l.state.is_ok() {
                continue;
            }
        }
        let up = metrics::gauge!("tandem_proxy_tcp_listener_up", "listen" => addr.to_string(), "pool" => pool.to_string());
        let previous = running.remove(&addr).and_then(|l| l.state.err());
        let state = match bind(addr) {
            Ok(listener) => {
                let stop = CancellationToken::new();
                tokio::spawn(accept(tcp.clone(), listener, addr, stop.clone()));
                tracing::info!(listen = %addr, pool = %pool, "tcp listener bound");
                up.set(1.0);
                Ok(stop)
            }
            Err(e) => {
                let error = e.to_string();
                // Loud once per distinct problem, quiet while it lasts.
                if previous.as_deref() != Some(error.as_str()) {
                    tracing::error!(listen = %addr, pool = %pool, error = %error, "cannot bind the tcp listener of a route; trying again every {:?}", tcp.options.rebind_every);
                }
                up.set(0.0);
                Err(error)
            }
        };
        running.insert(addr, Listener { pool, state, up });
    }
    publish(tcp, running);
}

/// Reports the listeners (sorted by address) when they changed.
fn publish(tcp: &Tcp, running: &HashMap<SocketAddr, Listener>) {
    let mut list: Vec<ListenerStatus> = running
        .iter()
        .map(|(addr, l)| ListenerStatus {
            listen: addr.to_string(),
            pool: l.pool.to_string(),
            bound: l.state.is_ok(),
            error: l.state.as_ref().err().cloned().unwrap_or_default(),
        })
        .collect();
    list.sort_by(|a, b| a.listen.cmp(&b.listen));
    tcp.node_state.send_if_modified(|s| {
        if s.listeners == list {
            return false;
        }
        s.listeners = list;
        true
    });
}

async fn accept(tcp: Arc<Tcp>, listener: TcpListener, listen: SocketAddr, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off a
                    // little rather than spin.
                    tracing::warn!(listen = %listen, error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        // Boxed: the connection's future is large (both directions'
        // state), and tokio moves an unboxed future by value several times
        // on spawn; a box moves as a pointer (measured with
        // scripts/bench/tcp-instructions.sh, docs/benchmarks.md).
        tokio::spawn(Box::pin(conn::serve(tcp.clone(), stream, peer, listen)));
    }
}

/// A listening socket on `addr` that other proxies of this host may share
/// (`SO_REUSEPORT`; `SO_REUSEADDR` as tokio's own `bind` sets it).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
