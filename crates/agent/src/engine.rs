//! The probe engine: every probe of the agent, run by one event loop on a
//! thread of its own.
//!
//! A probe is a few system calls (a `send`, a `recv`, now and then a
//! `connect`) around a few hundred bytes; what else it costs is overhead, and
//! at a thousand probes a second the overhead was most of the agent's CPU
//! time. With a tokio task per target, each probe paid for two timers (its
//! start and its timeout), two task wake-ups and polls, and a waker
//! registration, all on cold memory; the event loop pays for none of them.
//! It is the shape HAProxy's and nginx's checks have: one `epoll` set
//! (through `mio`), the sockets in it edge-triggered, and two heaps of
//! instants, probe starts and probe deadlines, whose earliest entry bounds
//! each `epoll_wait`. Starts lie on the shared grid of [`crate::schedule`],
//! so one wake-up starts every probe due in a slot and the answers of a
//! slot's probes mostly come back in one or two more.
//!
//! Each target is a small state machine ([`Stage`]) driven by readiness:
//! connect, write the request, read the answer's head, read its body to the
//! end so the connection can carry the next probe. The rules of when a
//! connection is kept, reused or replaced are those of [`crate::probe`].
//!
//! The engine is told what to probe by [`Engine::add`] and
//! [`Engine::remove`] (commands queued for the loop, which a `mio::Waker`
//! wakes up), and hands every result to the report queue and the metrics,
//! both lock-free. DNS names are resolved on the tokio runtime that started
//! the engine (resolution blocks), the result coming back as a command.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::{ClientConnection, HandshakeKind};
use tandem_core::health::BackendKey;
use tandem_core::{HealthCheckKind, HealthCheckSpec};

use crate::metrics::ProbeMetrics;
use crate::probe::{Body, Check, Dest, Head, Outcome, ProbeTls, body_end, io_text, parse_head};

/// A body this short is read to its end before a connection that is not
/// kept closes (see the `Stage::Head` step).
const SHORT_BODY: u64 = 4096;
use crate::report::{Observation, ReportQueue, settled_hold};
use crate::schedule::Cadence;

/// What the probe engine shares with its handles.
pub struct Context {
    /// The origin of the probes' start-time grid.
    pub origin: Instant,
    pub source_ip: Option<IpAddr>,
    /// An HTTP probe opens a fresh connection at least every this many
    /// probes (1: for every probe).
    pub fresh_connection_every: u32,
    pub queue: Arc<ReportQueue>,
    pub metrics: ProbeMetrics,
}

/// The token of the loop's waker; every other token is a target's slot.
const WAKER: Token = Token(usize::MAX);

/// Answers are read this much at a time; a probe's answer usually fits in
/// one read.
const READ_SIZE: usize = 1024;

/// A read buffer that grew past this (a large answer) is not kept for the
/// next probe: a thousand targets would otherwise each hold their largest
/// answer ever.
const KEEP_BUFFER: usize = 4 * READ_SIZE;

/// `connect(2)` on a non-blocking socket: under way (Linux's value; the
/// engine runs on `epoll`).
const EINPROGRESS: i32 = 115;

/// Readiness events gathered by one `epoll_wait`.
const EVENTS: usize = 1024;

enum Command {
    /// Probe this backend with this check. `scheduled`: on its interval;
    /// otherwise (tests) only when asked.
    Add {
        key: BackendKey,
        spec: HealthCheckSpec,
        tls: Option<ProbeTls>,
        scheduled: bool,
    },
    Remove(BackendKey),
    #[cfg(test)]
    ProbeNow(BackendKey),
    /// A DNS name resolved for the probe `probe` of the target in `slot`.
    Resolved {
        slot: usize,
        probe: u64,
        result: Result<Vec<SocketAddr>, Outcome>,
    },
}

/// What the loop and its handles share.
struct Shared {
    commands: Mutex<Vec<Command>>,
    waker: Waker,
    stop: AtomicBool,
}

impl Shared {
    fn send(&self, c: Command) {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c);
        if let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "cannot wake the probe engine");
        }
    }
}

/// The handle of a running engine. Dropping it stops the loop, which closes
/// every probe connection.
pub struct Engine {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the loop on a thread of its own. Called from within a tokio
    /// runtime, DNS names are resolved on it; otherwise probes of names
    /// fail.
    pub fn start(ctx: Arc<Context>) -> io::Result<Engine> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let shared = Arc::new(Shared {
            commands: Mutex::new(Vec::new()),
            waker,
            stop: AtomicBool::new(false),
        });
        let mut event_loop = Loop {
            poll,
            ctx,
            shared: shared.clone(),
            runtime: tokio::runtime::Handle::try_current().ok(),
            targets: Vec::new(),
            free: Vec::new(),
            slots: HashMap::new(),
            starts: BTreeMap::new(),
            spare: Vec::new(),
            running: Vec::new(),
            scratch: vec![0; READ_SIZE].into_boxed_slice(),
            next_id: 0,
        };
        let thread = std::thread::Builder::new()
            .name("tandem-probes".into())
            .spawn(move || event_loop.run())?;
        Ok(Engine {
            shared,
            thread: Some(thread),
        })
    }

    /// Probes `key` with `spec` (over TLS when `tls` is set) on its
    /// interval, from a random point of the first interval on. A key
    /// already probed is replaced (its connection closed, its schedule
    /// started over).
    pub fn add(&self, key: BackendKey, spec: HealthCheckSpec, tls: Option<ProbeTls>) {
        self.shared.send(Command::Add {
            key,
            spec,
            tls,
            scheduled: true,
        });
    }

    /// Adds `key` without a schedule: it is probed only by
    /// [`Engine::probe_now`]. For tests, which probe one at a time.
    #[cfg(test)]
    pub(crate) fn add_unscheduled(
        &self,
        key: BackendKey,
        spec: HealthCheckSpec,
        tls: Option<ProbeTls>,
    ) {
        self.shared.send(Command::Add {
            key,
            spec,
            tls,
            scheduled: false,
        });
    }

    /// Stops probing `key` and closes its connection.
    pub fn remove(&self, key: BackendKey) {
        self.shared.send(Command::Remove(key));
    }

    /// Starts a probe of `key` now, unless one is running.
    #[cfg(test)]
    pub(crate) fn probe_now(&self, key: BackendKey) {
        self.shared.send(Command::ProbeNow(key));
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.shared.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// === The loop ===

/// A probe connection. Between probes only a kept one exists: connected,
/// HTTP, and with an answer read to its end.
struct Conn {
    stream: TcpStream,
    /// The TLS session on the stream, for a TLS target, from the connect
    /// on. Boxed: a plain target's connection stays small.
    tls: Option<Box<ClientConnection>>,
    /// Probes this connection carried.
    uses: u32,
}

/// Where a running probe is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the runtime to resolve the backend's name.
    Resolving,
    /// The connect is under way.
    Connecting,
    /// Connected; the TLS handshake is under way.
    Handshake,
    /// Connected (and through the handshake, for TLS): the check starts.
    Connected,
    /// The request is being written; this much of it is out.
    Writing(usize),
    /// Reading the answer's head.
    Head,
    /// The outcome is decided (a pass, from the head's status); reading
    /// the rest of the answer so that the connection can carry the next
    /// probe.
    Body(Head),
}

struct Probe {
    id: u64,
    started: Instant,
    deadline: Instant,
    stage: Stage,
    /// Carried by a connection kept from an earlier probe.
    reused: bool,
    /// Connections established for this probe.
    opened: u64,
    /// Addresses still to try, last first.
    addrs: Vec<SocketAddr>,
    /// Why the last address failed.
    failed: Option<Outcome>,
}

struct Target {
    check: Check,
    /// This incarnation of the target (a re-added key gets a new one), so
    /// that heap entries of a removed target are ignored.
    id: u64,
    cadence: Option<Cadence>,
    conn: Option<Conn>,
    probe: Option<Probe>,
    buf: Vec<u8>,
    last_ok: Option<bool>,
    /// Passing probes in a row.
    passes: u32,
    /// The target's first connection is yet to come: it carries a random
    /// share of the probes a connection may carry, so that targets added
    /// together do not all replace their connections in the same second.
    spread: bool,
}

/// Why an exchange failed.
enum Failed {
    /// Before any byte of the answer: on a kept connection, the backend
    /// had closed it (a keep-alive race), which is not the backend failing.
    Unanswered(String),
    /// The answer broke off or was not HTTP.
    Broken(String),
}

struct Loop {
    poll: Poll,
    ctx: Arc<Context>,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Handle>,
    /// Targets by slot (a slot is the token of the target's socket).
    targets: Vec<Option<Target>>,
    free: Vec<usize>,
    slots: HashMap<BackendKey, usize>,
    /// The next probe of each scheduled target, as (slot, target id), by
    /// start time. Starts lie on the grid, so a few dozen instants hold
    /// them all and one map operation serves a whole slot.
    starts: BTreeMap<Instant, Vec<(usize, u64)>>,
    /// Emptied vectors of `starts`, for the next instants.
    spare: Vec<Vec<(usize, u64)>>,
    /// The slots of the targets whose probe is running; their deadlines
    /// are checked on every turn of the loop (a probe takes a millisecond
    /// or so, so few are running at once).
    running: Vec<usize>,
    /// Answers are read here first, then appended to the target's buffer.
    scratch: Box<[u8]>,
    next_id: u64,
}

impl Loop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(EVENTS);
        while !self.shared.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            self.fire_timers(now);
            let timeout = self.next_timer().map(|t| t.saturating_duration_since(now));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "the probe engine cannot wait for events; probing stops");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => self.commands(),
                    Token(slot) => self.ready(slot),
                }
            }
        }
    }

    /// The earliest start or deadline.
    fn next_timer(&self) -> Option<Instant> {
        let start = self.starts.keys().next().copied();
        let deadline = self
            .running
            .iter()
            .filter_map(|&slot| self.targets[slot].as_ref()?.probe.as_ref())
            .map(|p| p.deadline)
            .min();
        match (start, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.running.len() {
            let slot = self.running[i];
            let expired = self.targets[slot]
                .as_ref()
                .and_then(|t| t.probe.as_ref())
                .is_some_and(|p| p.deadline <= now);
            if expired {
                // Finishing takes the slot out of `running`, in its place.
                self.timed_out(slot);
            } else {
                i += 1;
            }
        }
        while let Some(entry) = self.starts.first_entry() {
            if *entry.key() > now {
                break;
            }
            let mut due = entry.remove();
            for &(slot, id) in &due {
                if self.target(slot).is_some_and(|t| t.id == id) {
                    self.start(slot);
                }
            }
            due.clear();
            self.spare.push(due);
        }
    }

    fn schedule(&mut self, at: Instant, slot: usize, id: u64) {
        let spare = &mut self.spare;
        self.starts
            .entry(at)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push((slot, id));
    }

    fn commands(&mut self) {
        let commands = std::mem::take(
            &mut *self
                .shared
                .commands
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for c in commands {
            match c {
                Command::Add {
                    key,
                    spec,
                    tls,
                    scheduled,
                } => self.add(key, spec, tls, scheduled),
                Command::Remove(key) => {
                    if let Some(slot) = self.slots.remove(&key) {
                        self.running.retain(|&s| s != slot);
                        // Dropping the target closes its connection.
                        self.targets[slot] = None;
                        self.free.push(slot);
                    }
                }
                #[cfg(test)]
                Command::ProbeNow(key) => {
                    if let Some(&slot) = self.slots.get(&key)
                        && self.target(slot).is_some_and(|t| t.probe.is_none())
                    {
                        self.start(slot);
                    }
                }
                Command::Resolved {
                    slot,
                    probe,
                    result,
                } => self.resolved(slot, probe, result),
            }
        }
    }

    fn add(
        &mut self,
        key: BackendKey,
        spec: HealthCheckSpec,
        tls: Option<ProbeTls>,
        scheduled: bool,
    ) {
        let slot = match self.slots.get(&key) {
            Some(&slot) => slot,
            None => {
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.targets.push(None);
                    self.targets.len() - 1
                });
                self.slots.insert(key.clone(), slot);
                slot
            }
        };
        let id = self.id();
        let check = Check::new(key, spec, tls);
        let cadence = scheduled.then(|| {
            Cadence::new(
                check.interval(),
                rand::random(),
                self.ctx.origin,
                Instant::now(),
            )
        });
        if let Some(c) = &cadence {
            self.schedule(c.next_start(), slot, id);
        }
        // A replaced target's probe is not running any more.
        self.running.retain(|&s| s != slot);
        self.targets[slot] = Some(Target {
            check,
            id,
            cadence,
            conn: None,
            probe: None,
            buf: Vec::new(),
            last_ok: None,
            passes: 0,
            spread: scheduled,
        });
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn target(&mut self, slot: usize) -> Option<&mut Target> {
        self.targets.get_mut(slot).and_then(Option::as_mut)
    }

    /// Starts a probe: on the kept connection when there is one, else on a
    /// new one.
    fn start(&mut self, slot: usize) {
        let id = self.id();
        let now = Instant::now();
        let Some(t) = self.target(slot) else { return };
        if t.probe.is_some() {
            return;
        }
        let deadline = now + t.check.timeout;
        let mut probe = Probe {
            id,
            started: now,
            deadline,
            stage: Stage::Connecting,
            reused: false,
            opened: 0,
            addrs: Vec::new(),
            failed: None,
        };
        t.buf.clear();
        if let Some(c) = &mut t.conn {
            c.uses += 1;
            probe.reused = true;
            probe.stage = Stage::Writing(0);
        }
        t.probe = Some(probe);
        self.running.push(slot);
        if self.target(slot).is_some_and(|t| t.conn.is_some()) {
            self.drive(slot);
        } else {
            self.open(slot);
        }
    }

    /// Opens a new connection for the running probe: resolves the name
    /// first if the backend has one.
    fn open(&mut self, slot: usize) {
        let runtime = self.runtime.clone();
        let shared = self.shared.clone();
        let Some(t) = self.target(slot) else { return };
        if let Some(Err(why)) = &t.check.tls {
            // No connection can pass: say why without making one.
            let o = Outcome::tls(why);
            self.finish(slot, o, false);
            return;
        }
        let dest = match &t.check.dest {
            Dest::Ip(a) => Ok(*a),
            Dest::Name(name) => Err(name.clone()),
        };
        let Some(p) = t.probe.as_mut() else { return };
        match dest {
            Ok(a) => {
                p.addrs = vec![a];
                self.connect_next(slot);
            }
            Err(name) => {
                let Some(runtime) = runtime else {
                    self.finish(slot, Outcome::other("resolve", "no runtime"), false);
                    return;
                };
                p.stage = Stage::Resolving;
                let probe = p.id;
                runtime.spawn(async move {
                    let result = match tokio::net::lookup_host(name.as_str()).await {
                        // Tried in order, so the first one last.
                        Ok(addrs) => Ok(addrs.collect::<Vec<_>>().into_iter().rev().collect()),
                        Err(e) => Err(Outcome::other("resolve", io_text(&e))),
                    };
                    shared.send(Command::Resolved {
                        slot,
                        probe,
                        result,
                    });
                });
            }
        }
    }

    fn resolved(&mut self, slot: usize, probe: u64, result: Result<Vec<SocketAddr>, Outcome>) {
        let Some(t) = self.target(slot) else { return };
        let Some(p) = t.probe.as_mut().filter(|p| p.id == probe) else {
            return;
        };
        match result {
            Ok(addrs) => {
                p.addrs = addrs;
                self.connect_next(slot);
            }
            Err(o) => self.finish(slot, o, false),
        }
    }

    /// Connects to the next address left to try; the probe fails with the
    /// last error when none is left.
    fn connect_next(&mut self, slot: usize) {
        let source = self.ctx.source_ip;
        let registry = self.poll.registry();
        let Some(t) = self.targets.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let Some(p) = t.probe.as_mut() else { return };
        while let Some(addr) = p.addrs.pop() {
            let opened = connect(addr, source).and_then(|mut stream| {
                registry.register(
                    &mut stream,
                    Token(slot),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                Ok(stream)
            });
            match opened {
                Ok(stream) => {
                    p.stage = Stage::Connecting;
                    t.conn = Some(Conn {
                        stream,
                        tls: None,
                        uses: 0,
                    });
                    // Readiness comes as an event, even when the connect
                    // already completed.
                    return;
                }
                Err(e) => p.failed = Some(Outcome::connect_error(&e)),
            }
        }
        let o = p
            .failed
            .take()
            .unwrap_or_else(|| Outcome::other("resolve", "no addresses"));
        self.finish(slot, o, false);
    }

    /// A readiness event on the target's socket.
    fn ready(&mut self, slot: usize) {
        let Some(t) = self.target(slot) else { return };
        if t.probe.is_some() {
            self.drive(slot);
            return;
        }
        // Between probes a kept connection has nothing to say: readable
        // means the backend closed it (or sent what it had no reason to
        // send); either way it is not used again. A write-ready event is
        // not news.
        let Some(c) = t.conn.as_mut() else { return };
        let keep = match c.tls.as_deref_mut() {
            None => matches!(
                c.stream.read(&mut [0u8; 1]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
            ),
            Some(tls) => idle_tls_keeps(tls, &mut c.stream),
        };
        if !keep {
            t.conn = None;
        }
    }

    /// Moves the running probe as far as its socket lets it.
    fn drive(&mut self, slot: usize) {
        let fresh_every = self.ctx.fresh_connection_every;
        loop {
            let Some(t) = self.targets.get_mut(slot).and_then(Option::as_mut) else {
                return;
            };
            let (Some(p), Some(c)) = (t.probe.as_mut(), t.conn.as_mut()) else {
                return;
            };
            match p.stage {
                Stage::Resolving => return,
                Stage::Connecting => {
                    let error = match c.stream.take_error() {
                        Ok(None) => None,
                        Ok(Some(e)) | Err(e) => Some(e),
                    };
                    if let Some(e) = error {
                        p.failed = Some(Outcome::connect_error(&e));
                        t.conn = None;
                        self.connect_next(slot);
                        return;
                    }
                    match c.stream.peer_addr() {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                        Err(e) => {
                            p.failed = Some(Outcome::connect_error(&e));
                            t.conn = None;
                            self.connect_next(slot);
                            return;
                        }
                    }
                    p.opened += 1;
                    let Some(tls) = &t.check.tls else {
                        p.stage = Stage::Connected;
                        continue;
                    };
                    // `open` fails a probe whose TLS is not ready.
                    let Ok(client) = tls else { return };
                    match ClientConnection::new(client.config.clone(), client.name.clone()) {
                        Ok(session) => {
                            c.tls = Some(Box::new(session));
                            p.stage = Stage::Handshake;
                        }
                        Err(e) => {
                            let o = Outcome::tls(&tandem_tls::client::describe(&e));
                            self.finish(slot, o, false);
                            return;
                        }
                    }
                }
                Stage::Handshake => {
                    let Some(tls) = c.tls.as_deref_mut() else {
                        p.stage = Stage::Connected;
                        continue;
                    };
                    match handshake(tls, &mut c.stream) {
                        Ok(true) => {
                            let resumed = tls.handshake_kind() == Some(HandshakeKind::Resumed);
                            self.ctx.metrics.tls_handshake(resumed);
                            p.stage = Stage::Connected;
                        }
                        Ok(false) => return,
                        Err(o) => {
                            self.finish(slot, o, false);
                            return;
                        }
                    }
                }
                Stage::Connected => {
                    if t.check.kind() == HealthCheckKind::Tcp {
                        // The connect (and the handshake) was the check;
                        // closing resets it.
                        let o = if c.tls.is_some() {
                            Outcome::tls_handshake_ok()
                        } else {
                            Outcome::tcp_connected()
                        };
                        self.finish(slot, o, false);
                        return;
                    }
                    c.uses = 1;
                    // Between 2 and `fresh_every` probes on the first
                    // connection.
                    if std::mem::take(&mut t.spread) && fresh_every > 2 {
                        c.uses += rand::random_range(0..fresh_every - 1);
                    }
                    p.stage = Stage::Writing(0);
                }
                Stage::Writing(at) => match send(c, &t.check.request, at) {
                    Ok(n) if at + n == t.check.request.len() => {
                        // The answer cannot be there yet: wait for its
                        // arrival, which is an edge of its own, rather
                        // than pay for a read that would block.
                        p.stage = Stage::Head;
                        return;
                    }
                    Ok(n) => p.stage = Stage::Writing(at + n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let failed = Failed::Unanswered(io_text(&e));
                        self.failed(slot, failed);
                        return;
                    }
                },
                Stage::Head => {
                    let heard = !t.buf.is_empty();
                    match recv(c, &mut self.scratch, &mut t.buf) {
                        Ok(n) if n > 0 => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        ended => {
                            let what = match ended {
                                Err(e) => io_text(&e),
                                Ok(_) => "connection closed before the answer's head ended".into(),
                            };
                            let failed = if heard {
                                Failed::Broken(what)
                            } else {
                                Failed::Unanswered(what)
                            };
                            self.failed(slot, failed);
                            return;
                        }
                    }
                    match parse_head(&t.buf, t.check.head_request) {
                        Ok(None) => {}
                        Err(why) => {
                            self.failed(slot, Failed::Broken(why.to_string()));
                            return;
                        }
                        Ok(Some(head)) => {
                            let outcome = Outcome::from_status(head.status, &t.check.spec);
                            // The outcome is decided. Reading the rest of
                            // the answer serves the next probe, and, for
                            // a short body, the backend: a connection reset
                            // while it still writes its answer makes it log
                            // an error for every probe (Patroni's REST API
                            // writes the body after the head, and closes).
                            let reuse = outcome.ok() && c.uses < fresh_every && head.keep_alive;
                            let short = matches!(
                                head.body,
                                Body::Length(n) if n <= SHORT_BODY
                            ) || head.body == Body::UntilClose;
                            if reuse || short {
                                p.stage = Stage::Body(head);
                            } else {
                                self.finish(slot, outcome, false);
                                return;
                            }
                        }
                    }
                }
                Stage::Body(head) if head.body == Body::UntilClose => {
                    // Read to the backend's close (the connection goes
                    // anyway), or until the body is longer than a short one.
                    let ended = t.buf.len() - head.len > SHORT_BODY as usize
                        || match recv(c, &mut self.scratch, &mut t.buf) {
                            Ok(n) if n > 0 => false,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                            _ => true,
                        };
                    if ended {
                        let o = Outcome::from_status(head.status, &t.check.spec);
                        self.finish(slot, o, false);
                        return;
                    }
                }
                Stage::Body(head) => {
                    let read_so_far = t.buf.len() - head.len;
                    let keep = match body_end(head.body, &t.buf[head.len..]) {
                        Ok(Some(end)) => end == read_so_far,
                        Err(()) => false,
                        Ok(None) => match recv(c, &mut self.scratch, &mut t.buf) {
                            Ok(n) if n > 0 => continue,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            // Broken off: the outcome stands, the
                            // connection goes.
                            _ => false,
                        },
                    };
                    let o = Outcome::from_status(head.status, &t.check.spec);
                    let keep = keep && o.ok() && c.uses < fresh_every && head.keep_alive;
                    self.finish(slot, o, keep);
                    return;
                }
            }
        }
    }

    /// The exchange failed. A kept connection the backend had closed before
    /// it could carry this request (nothing was answered, so nothing failed
    /// yet) is replaced, once, within the same probe.
    fn failed(&mut self, slot: usize, failed: Failed) {
        let Some(t) = self.target(slot) else { return };
        let Some(p) = t.probe.as_mut() else { return };
        match failed {
            Failed::Unanswered(_) if p.reused => {
                p.reused = false;
                t.conn = None;
                t.buf.clear();
                self.open(slot);
            }
            Failed::Unanswered(what) | Failed::Broken(what) => {
                self.finish(slot, Outcome::http(&what), false);
            }
        }
    }

    fn timed_out(&mut self, slot: usize) {
        let Some(t) = self.target(slot) else { return };
        let Some(p) = t.probe.as_mut() else { return };
        let o = match p.stage {
            // The answer's end did not come in time: the outcome stands,
            // the connection goes.
            Stage::Body(head) => Outcome::from_status(head.status, &t.check.spec),
            _ => Outcome::timeout(t.check.spec.timeout_ms),
        };
        self.finish(slot, o, false);
    }

    /// Ends the running probe: keeps or closes its connection, records and
    /// queues the outcome, and schedules the next probe.
    fn finish(&mut self, slot: usize, outcome: Outcome, keep: bool) {
        let now = Instant::now();
        let Some(t) = self.targets.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let Some(p) = t.probe.take() else { return };
        if let Some(i) = self.running.iter().position(|&s| s == slot) {
            self.running.swap_remove(i);
        }
        if !keep {
            // Closing resets the connection (`SO_LINGER` 0).
            t.conn = None;
        }
        t.buf.clear();
        if t.buf.capacity() > KEEP_BUFFER {
            t.buf = Vec::new();
        }
        let took = now.saturating_duration_since(p.started);
        self.ctx
            .metrics
            .record(t.check.kind(), outcome.class, took, p.opened);
        let ok = outcome.ok();
        if t.last_ok != Some(ok) {
            let key = &t.check.key;
            if ok {
                tracing::info!(pool = %key.pool, backend = %key.address, detail = %outcome.detail, "probe passes");
            } else {
                tracing::warn!(pool = %key.pool, backend = %key.address, detail = %outcome.detail, "probe fails");
            }
            t.last_ok = Some(ok);
        }
        // A pass after `rise` others in a row cannot move the verdict: it
        // may wait for a later report. Anything else goes with the next.
        t.passes = if ok { t.passes.saturating_add(1) } else { 0 };
        let hold = if t.passes > t.check.spec.rise {
            settled_hold(t.check.interval())
        } else {
            Duration::ZERO
        };
        self.ctx.queue.push(
            Observation {
                key: t.check.key.clone(),
                class: outcome.class,
                detail: outcome.detail,
                latency_ms: u32::try_from(took.as_millis()).unwrap_or(u32::MAX),
            },
            hold,
        );
        if let Some(c) = t.cadence.as_mut() {
            c.advance(rand::random(), now);
            let (at, id) = (c.next_start(), t.id);
            self.schedule(at, slot, id);
        }
    }
}

/// Reads what arrived (through `scratch`) to the end of `buf`, decrypted
/// on a TLS connection; 0 at the end of the stream.
fn recv(c: &mut Conn, scratch: &mut [u8], buf: &mut Vec<u8>) -> io::Result<usize> {
    let Some(tls) = c.tls.as_deref_mut() else {
        let n = c.stream.read(scratch)?;
        buf.extend_from_slice(&scratch[..n]);
        return Ok(n);
    };
    // The request's records, if the socket did not take them all at once.
    flush_some(tls, &mut c.stream)?;
    loop {
        // Plaintext already decrypted first; at the end of the stream this
        // is 0 (after the peer's close_notify) or an unexpected end.
        match tls.reader().read(scratch) {
            Ok(n) => {
                buf.extend_from_slice(&scratch[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        tls.read_tls(&mut c.stream)?;
        tls.process_new_packets()
            .map_err(|e| io::Error::other(format!("tls: {}", tandem_tls::client::describe(&e))))?;
        // What the records asked for (a key update's answer).
        flush_some(tls, &mut c.stream)?;
    }
}

/// Writes the request from byte `at` on: straight to the socket, or into
/// the TLS session, which takes it whole (it is a few hundred bytes) and
/// sends it encrypted. Records the socket cannot take yet go out from
/// [`recv`], on the writable edge that follows.
fn send(c: &mut Conn, request: &[u8], at: usize) -> io::Result<usize> {
    let Some(tls) = c.tls.as_deref_mut() else {
        return c.stream.write(&request[at..]);
    };
    tls.writer().write_all(&request[at..])?;
    flush_some(tls, &mut c.stream)?;
    Ok(request.len() - at)
}

/// [`flush`], as far as the socket takes it now.
fn flush_some(tls: &mut ClientConnection, stream: &mut TcpStream) -> io::Result<()> {
    match flush(tls, stream) {
        Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
        _ => Ok(()),
    }
}

/// Sends the TLS records the session has queued.
fn flush(tls: &mut ClientConnection, stream: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Moves a TLS handshake on as far as the socket lets it: `Ok(true)` once
/// it is done, `Ok(false)` while it waits for the socket, the probe's
/// failure otherwise ("tls: certificate signed by unknown authority").
fn handshake(tls: &mut ClientConnection, stream: &mut TcpStream) -> Result<bool, Outcome> {
    let failed = |e: &io::Error| Outcome::tls(&format!("handshake: {}", io_text(e)));
    loop {
        match flush(tls, stream) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(failed(&e)),
        }
        if !tls.is_handshaking() {
            return Ok(true);
        }
        match tls.read_tls(stream) {
            Ok(0) => {
                return Err(Outcome::tls(
                    "the backend closed the connection during the handshake",
                ));
            }
            Ok(_) => {
                if let Err(e) = tls.process_new_packets() {
                    // Tell the backend why, if the socket takes it.
                    let _ = tls.write_tls(stream);
                    return Err(Outcome::tls(&tandem_tls::client::describe(&e)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(&e)),
        }
    }
}

/// A kept TLS connection spoke between probes: records the session takes
/// quietly (a TLS 1.3 session ticket) keep it; anything else (the end of
/// the stream, a close_notify, an error, data no request asked for) does
/// not.
fn idle_tls_keeps(tls: &mut ClientConnection, stream: &mut TcpStream) -> bool {
    loop {
        match tls.read_tls(stream) {
            Ok(0) => return false,
            Ok(_) => {
                if tls.process_new_packets().is_err() {
                    return false;
                }
                match tls.reader().read(&mut [0u8; 1]) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    _ => return false,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// A non-blocking connect to `addr`, from `source` when set; its outcome
/// comes as a readiness event. Closing the connection sends a reset: the
/// agent keeps no `TIME_WAIT` state, which also keeps a bound source
/// address from running out of ports. No `TCP_NODELAY`: a probe writes its
/// request once, and Nagle only holds back data sent while earlier data is
/// unacknowledged.
fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_linger(Some(Duration::ZERO))?;
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(socket.into()))
}
