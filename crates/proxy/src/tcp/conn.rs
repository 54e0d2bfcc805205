//! One client connection on a TCP route: a backend slot (waiting in the
//! pool's bounded queue when every backend is at its limit), a connection
//! to the backend within the connect-timeout budget (the next backend on
//! failure), the PROXY header if asked, then the bytes both ways until
//! either side is done, the connection idles out, or the supervisor closes
//! it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tandem_core::lb::{PickContext, client_hash};
use tandem_core::{LbPolicy, OnUnhealthy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::pump::{self, End};
use super::{TcpBackend, TcpPool, TcpPoolState, TcpTable, proxy_protocol};
use crate::tcp::Tcp;

/// Why a client was turned away before reaching a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No backend of the pool may take connections.
    NoBackend,
    /// Every backend is at its limit and the queue is full.
    QueueFull,
    /// Waited the pool's queue timeout for a slot.
    QueueTimeout,
    /// Every try to connect failed within the connect timeout.
    ConnectFailed,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoBackend => "no usable backend",
            Self::QueueFull => "every backend is at its connection limit and the queue is full",
            Self::QueueTimeout => "waited the queue timeout for a backend slot",
            Self::ConnectFailed => "no backend could be connected within the connect timeout",
        }
    }
}

/// Serves one accepted connection until it ends.
pub async fn serve(tcp: Arc<Tcp>, client: TcpStream, peer: SocketAddr, listen: SocketAddr) {
    let Some(table) = tcp.table.load_full() else {
        return;
    };
    let Some(pool) = table.route(listen) else {
        return; // the route went away meanwhile
    };
    let _open = Open::new(&tcp);
    let state = &pool.state;
    state.m.accepted.increment(1);
    state.m.active.increment(1.0);
    let _active = scopeguard(|| state.m.active.decrement(1.0));

    let (mut backend, slot) = match establish(&table, pool, peer).await {
        Ok(ok) => ok,
        Err(why) => {
            let counter = match why {
                Refused::NoBackend => &state.m.no_backend,
                Refused::QueueFull => &state.m.queue_full,
                Refused::QueueTimeout => &state.m.queue_timeout,
                Refused::ConnectFailed => &state.m.connect_failed,
            };
            counter.increment(1);
            tracing::debug!(pool = %state.name, client = %peer, reason = why.as_str(), "tcp connection refused");
            return;
        }
    };
    let b = slot.backend;
    b.m.connections.increment(1);
    // Taken before the first byte: a kill decided from now on reaches us.
    let kill = b.kill_switch();
    let mut client = client;
    if pool.config.tcp.proxy_protocol {
        let local = client.local_addr().unwrap_or(listen);
        let header = proxy_protocol::v2(peer, local);
        if let Err(e) = backend.write_all(header.as_bytes()).await {
            tracing::debug!(pool = %state.name, backend = %b.address, error = %e, "cannot send the PROXY header");
            return;
        }
    }
    let idle = match pool.config.tcp.idle_timeout_ms {
        0 => None,
        ms => Some(Duration::from_millis(ms.into())),
    };
    let http_pool = &table.http.pools[pool.http_index];
    let index = slot.index;
    let meter = pump::Meter {
        to_backend: &b.m.to_backend,
        to_client: &b.m.to_client,
    };
    let end = pump::run(
        &mut client,
        &mut backend,
        &pump::Settings {
            mode: tcp.options.copy,
            buffer: tcp.options.buffer,
            idle,
        },
        &kill,
        &meter,
        || http_pool.record(index, true),
    )
    .await;
    match end {
        End::BackendResetEarly => {
            // Passive health: a backend that resets connections before
            // saying anything counts as failing, like a refused connect.
            http_pool.record(index, false);
            tracing::debug!(pool = %state.name, backend = %b.address, "backend reset the connection before any byte");
        }
        End::Idle => {
            b.m.closed_idle.increment(1);
            tracing::debug!(pool = %state.name, backend = %b.address, client = %peer, "idle tcp connection closed");
        }
        End::Killed => {
            tracing::debug!(pool = %state.name, backend = %b.address, client = %peer, "tcp connection closed by policy")
        }
        End::Error(e) => {
            tracing::debug!(pool = %state.name, backend = %b.address, client = %peer, error = %e, "tcp connection ended with an error")
        }
        End::Closed => {}
    }
    drop(slot);
}

/// Counts the connections open through TCP routes, for the drain.
struct Open<'a>(&'a Tcp);

impl<'a> Open<'a> {
    fn new(tcp: &'a Tcp) -> Self {
        tcp.open.fetch_add(1, Ordering::SeqCst);
        Self(tcp)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.drained.notify_waiters();
        }
    }
}

struct Guard<F: FnMut()>(F);

impl<F: FnMut()> Drop for Guard<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

fn scopeguard<F: FnMut()>(f: F) -> Guard<F> {
    Guard(f)
}

// === a backend slot ===

/// A connection slot on one backend, given back on drop (which wakes a
/// waiting client).
pub struct Slot<'t> {
    pub backend: &'t TcpBackend,
    pub index: usize,
    state: &'t TcpPoolState,
}

impl Slot<'_> {
    fn give_back(&self) {
        self.backend.active.fetch_sub(1, Ordering::SeqCst);
        self.backend.m.active.decrement(1.0);
    }

    /// Gives the slot back without waking anyone: for a client that took
    /// it only to find it must wait, whose wake-up would be its own.
    fn give_back_quietly(self) {
        self.give_back();
        std::mem::forget(self);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.give_back();
        // One waiting client looks again (and passes the turn on if it
        // gets one).
        self.state.changed.notify_one();
    }
}

/// A place in the pool's queue, left on drop.
struct Ticket<'t>(&'t TcpPoolState);

impl<'t> Ticket<'t> {
    fn take(state: &'t TcpPoolState, max: u32) -> Result<Self, Refused> {
        let before = state.queued.fetch_add(1, Ordering::SeqCst);
        if before >= u64::from(max) {
            state.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Refused::QueueFull);
        }
        state.m.queued.increment(1.0);
        Ok(Self(state))
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
        self.0.m.queued.decrement(1.0);
    }
}

/// A backend slot: the balancer's pick among backends below their limit;
/// when all are at it, a wait in the pool's queue (bounded in length and
/// time) for one to free up. A `single_active` pool that closes
/// connections of members it leaves also waits, within the same time,
/// until no connection to another member is open: it never sends to two
/// members at once.
pub async fn acquire<'t>(
    pool: &'t TcpPool,
    hash: u64,
    tried: &[usize],
    deadline: Instant,
) -> Result<Slot<'t>, Refused> {
    let max = pool.config.tcp.max_connections;
    let exclusive = pool.config.policy == LbPolicy::SingleActive
        && pool.config.on_unhealthy() == OnUnhealthy::Close;
    let state = &*pool.state;
    let mut ticket = None;
    let mut waited = false;
    loop {
        let notified = state.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let cx = PickContext {
            cursor: &state.cursor,
            hash,
            exclude: tried,
            random: [rand::random(), rand::random()],
        };
        let admit = |i: usize| {
            max == 0 || pool.endpoints[i].tcp.active.load(Ordering::Relaxed) < u64::from(max)
        };
        match pool.balancer.pick_admitted(&pool.endpoints, &cx, &admit) {
            Some(p) => {
                let backend = &*pool.endpoints[p.index].tcp;
                if !backend.try_reserve(max) {
                    continue; // another client took the last slot: look again
                }
                backend.m.active.increment(1.0);
                let slot = Slot {
                    backend,
                    index: p.index,
                    state,
                };
                if !exclusive || others_closed(pool, p.index) {
                    if waited {
                        // Pass the turn on: another waiter may fit too.
                        state.changed.notify_one();
                    }
                    return Ok(slot);
                }
                // Connections to the member we leave are still open: the
                // supervisor is closing them (each close wakes a waiter).
                // Look again then, or shortly: two clients that picked
                // different members at once both step back, and nothing
                // else may wake them.
                slot.give_back_quietly();
                waited = true;
                let wait = tokio::time::timeout_at(deadline, async {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep(GATE_RETRY) => {}
                    }
                });
                if wait.await.is_err() {
                    return Err(Refused::QueueTimeout);
                }
                continue;
            }
            None => {
                if pool.balancer.pick(&pool.endpoints, &cx).is_none() {
                    return Err(Refused::NoBackend);
                }
                if ticket.is_none() {
                    ticket = Some(Ticket::take(state, pool.config.tcp.max_queue)?);
                }
            }
        }
        waited = true;
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(Refused::QueueTimeout);
        }
    }
}

/// How often a client waiting for the previous member's connections to
/// close looks again without being told.
const GATE_RETRY: Duration = Duration::from_millis(10);

/// Is every connection to the pool's other members (and to members that
/// left it) closed? Read after our own slot was taken, both sequentially
/// consistent: of two clients picking different members at once, at least
/// one sees the other and waits.
fn others_closed(pool: &TcpPool, me: usize) -> bool {
    pool.endpoints
        .iter()
        .enumerate()
        .all(|(i, e)| i == me || e.tcp.active.load(Ordering::SeqCst) == 0)
        && pool
            .retired
            .iter()
            .all(|b| b.active.load(Ordering::SeqCst) == 0)
}

/// A slot and a connection to its backend. The connect-timeout budget
/// starts with the first try: each try gets what is left of it, at most
/// half while another backend could still be tried.
async fn establish<'t>(
    table: &'t TcpTable,
    pool: &'t TcpPool,
    peer: SocketAddr,
) -> Result<(TcpStream, Slot<'t>), Refused> {
    let hash = client_hash(peer.ip());
    let queue_deadline =
        Instant::now() + Duration::from_millis(pool.config.tcp.queue_timeout_ms.into());
    let budget = Duration::from_millis(pool.config.connect_timeout_ms.into());
    let mut tried: Vec<usize> = Vec::new();
    let mut deadline = None;
    loop {
        let slot = acquire(pool, hash, &tried, queue_deadline).await?;
        let now = Instant::now();
        let deadline = *deadline.get_or_insert(now + budget);
        if now >= deadline {
            return Err(Refused::ConnectFailed);
        }
        let left = deadline - now;
        let others = pool
            .endpoints
            .iter()
            .enumerate()
            .any(|(i, e)| i != slot.index && !tried.contains(&i) && usable(pool, e));
        let this_try = if others { left / 2 } else { left };
        let backend = slot.backend;
        let outcome = tokio::time::timeout(this_try, connect(backend)).await;
        let error = match outcome {
            Ok(Ok(stream)) => return Ok((stream, slot)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {} ms", this_try.as_millis()),
        };
        backend.m.connect_failures.increment(1);
        table.http.pools[pool.http_index].record(slot.index, false);
        tracing::info!(pool = %pool.state.name, backend = %backend.address, error = %error, "tcp connect to backend failed; trying the next");
        tried.push(slot.index);
        drop(slot);
    }
}

fn usable(pool: &TcpPool, e: &super::TcpEndpoint) -> bool {
    use tandem_core::lb::Endpoint;
    let strict = pool.config.policy == LbPolicy::SingleActive;
    e.admin_state() == tandem_core::AdminState::Enabled
        && e.healthy()
        && (!strict || e.passes_check())
}

async fn connect(b: &TcpBackend) -> io::Result<TcpStream> {
    let stream = match b.socket_addr {
        Some(addr) => TcpStream::connect(addr).await?,
        None => TcpStream::connect(b.address.as_str()).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}
