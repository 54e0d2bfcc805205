//! Moving the bytes of one TCP connection both ways.
//!
//! Two ways to copy, chosen by `TANDEM_TCP_COPY`:
//! - `copy`: read into a buffer and write it out, each direction its own
//!   loop, both driven by the connection's task (what tokio's
//!   `copy_bidirectional` does, with the byte counts, the first backend
//!   byte and the idle clock kept on the way);
//! - `splice`: `splice(2)` from the socket into a pipe and from the pipe
//!   into the other socket, so the bytes never enter user space (through
//!   nix's safe wrapper; the workspace forbids `unsafe`).
//!
//! `docs/benchmarks.md` says which one is the default and why.
//!
//! A direction that reads end-of-stream shuts the other side's write half
//! (half-close passes through); the connection ends when both directions
//! have, or at the first error (a reset ends both). The idle clock is one
//! atomic the directions stamp with the proxy's coarse clock.

use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::task::AtomicWaker;
use metrics::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::clock;

/// How bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CopyMode {
    /// Through a user-space buffer.
    #[default]
    Copy,
    /// With splice(2) through a pipe (Linux), never entering user space.
    Splice,
}

pub struct Settings {
    pub mode: CopyMode,
    /// Bytes per read or splice.
    pub buffer: usize,
    /// Close after this long without a byte either way.
    pub idle: Option<Duration>,
}

/// Where each direction's byte count goes.
pub struct Meter<'a> {
    pub to_backend: &'a Counter,
    pub to_client: &'a Counter,
}

/// How a connection ended.
#[derive(Debug)]
pub enum End {
    /// Both sides finished.
    Closed,
    /// Nothing moved for the idle timeout.
    Idle,
    /// The supervisor closed it.
    Killed,
    /// The backend reset it (or failed) before sending a single byte.
    BackendResetEarly,
    Error(io::Error),
}

/// A direction's failure: on the backend's socket or the client's, and
/// whether the backend had spoken by then.
struct DirError {
    backend_side: bool,
    backend_spoke: bool,
    error: io::Error,
}

/// Copies both ways until the connection ends. `on_first_byte` runs when
/// the backend's first byte arrives (passive health: it answered).
pub async fn run(
    client: &mut TcpStream,
    backend: &mut TcpStream,
    settings: &Settings,
    kill: &CancellationToken,
    meter: &Meter<'_>,
    on_first_byte: impl FnOnce(),
) -> End {
    let last = AtomicU64::new(clock::now_ms());
    let spoke = AtomicU64::new(0);
    let ended = AtomicU64::new(0);
    let direction = |counter, first, from_backend| Direction {
        size: settings.buffer,
        counter,
        last: &last,
        first,
        from_backend,
        spoke: &spoke,
        ended: &ended,
    };
    let up = direction(meter.to_backend, None, false);
    let down = direction(meter.to_client, Some(on_first_byte), true);
    let idle = idle_out(settings.idle, &last);
    match settings.mode {
        CopyMode::Copy => {
            let (mut cr, mut cw) = client.split();
            let (mut br, mut bw) = backend.split();
            let up = copy_dir(&mut cr, &mut bw, up);
            let down = copy_dir(&mut br, &mut cw, down);
            drive(up, down, kill, idle).await
        }
        CopyMode::Splice => {
            let (c, b) = (&*client, &*backend);
            drive(splice_dir(c, b, up), splice_dir(b, c, down), kill, idle).await
        }
    }
}

/// Runs the two directions (until both end, or either fails), the kill
/// switch and the idle timer, whichever ends the connection first.
///
/// Each direction is polled with a waker of its own, and only when that
/// waker fired: a wake-up for the client's bytes polls the copy from the
/// client and nothing else. A `select!` over a `try_join!` polled every
/// part on every wake-up, and polling a part that did not wake is not
/// free: the other socket's readiness check locks its waiter list, the
/// kill switch locks its own mutex and then its `Notify`'s waiter list,
/// the idle timer checks its entry. That was most of what the proxy spent
/// per round trip beyond HAProxy (docs/benchmarks.md). The kill switch and
/// the idle timer rarely fire: they share the third waker.
async fn drive<D>(up: D, down: D, kill: &CancellationToken, idle: impl Future<Output = ()>) -> End
where
    D: Future<Output = Result<(), DirError>>,
{
    let mut up = pin!(up);
    let mut down = pin!(down);
    let mut killed = pin!(kill.cancelled());
    let mut idle = pin!(idle);
    let wakers = Wakers::new();
    // The directions still copying.
    let mut copying = UP | DOWN;
    poll_fn(|cx| {
        let woken = wakers.take(cx.waker());
        let mut stop_cx = Context::from_waker(&wakers.stop);
        if woken & STOP != 0 && killed.as_mut().poll(&mut stop_cx).is_ready() {
            return Poll::Ready(End::Killed);
        }
        for (part, dir, waker) in [
            (UP, up.as_mut(), &wakers.up),
            (DOWN, down.as_mut(), &wakers.down),
        ] {
            if woken & copying & part == 0 {
                continue;
            }
            match dir.poll(&mut Context::from_waker(waker)) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => {
                    copying &= !part;
                    if copying == 0 {
                        return Poll::Ready(End::Closed);
                    }
                }
                Poll::Ready(Err(e)) if e.backend_side && !e.backend_spoke => {
                    return Poll::Ready(End::BackendResetEarly);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(End::Error(e.error)),
            }
        }
        if woken & STOP != 0 && idle.as_mut().poll(&mut stop_cx).is_ready() {
            return Poll::Ready(End::Idle);
        }
        Poll::Pending
    })
    .await
}

/// Which parts woke since the connection was last polled, and the task's
/// waker to pass their wake-ups on to. Its own waker is the one the kill
/// switch and the idle timer register.
struct Woken {
    parts: AtomicU8,
    task: AtomicWaker,
}

// What woke, as bits of `Woken::parts`: a direction, or the kill switch
// or the idle timer.
const UP: u8 = 1;
const DOWN: u8 = 2;
const STOP: u8 = 4;

impl Woken {
    fn mark(&self, parts: u8) {
        self.parts.fetch_or(parts, Ordering::Release);
        self.task.wake();
    }
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.mark(STOP);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.mark(STOP);
    }
}

/// The waker a direction registers with its two sockets.
struct DirectionWaker {
    woken: Arc<Woken>,
    part: u8,
}

impl Wake for DirectionWaker {
    fn wake(self: Arc<Self>) {
        self.woken.mark(self.part);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.mark(self.part);
    }
}

/// A connection's three wakers, made once (three small allocations: each
/// costs ~100 instructions, a short connection notices) and registered
/// again and again: a registration that finds its own waker already in
/// place keeps it.
struct Wakers {
    woken: Arc<Woken>,
    up: Waker,
    down: Waker,
    stop: Waker,
}

impl Wakers {
    /// Every part counts as woken until first polled.
    fn new() -> Self {
        let woken = Arc::new(Woken {
            parts: AtomicU8::new(UP | DOWN | STOP),
            task: AtomicWaker::new(),
        });
        let direction = |part| {
            Waker::from(Arc::new(DirectionWaker {
                woken: woken.clone(),
                part,
            }))
        };
        Self {
            up: direction(UP),
            down: direction(DOWN),
            stop: Waker::from(woken.clone()),
            woken,
        }
    }

    /// The parts woken since the last call. The task's waker is registered
    /// first, so a part that wakes after the parts were read wakes the
    /// task again.
    fn take(&self, task: &Waker) -> u8 {
        self.woken.task.register(task);
        self.woken.parts.swap(0, Ordering::Acquire)
    }
}

/// Resolves once nothing moved for `idle` (never when `None`).
async fn idle_out(idle: Option<Duration>, last: &AtomicU64) {
    let Some(idle) = idle else {
        return std::future::pending().await;
    };
    let idle_ms = idle.as_millis() as u64;
    loop {
        let since = clock::now_ms().saturating_sub(last.load(Ordering::Relaxed));
        if since >= idle_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(idle_ms - since)).await;
    }
}

/// One direction's share of the connection, whichever way it copies.
struct Direction<'a, F> {
    /// Bytes per read or splice.
    size: usize,
    counter: &'a Counter,
    /// The idle clock, stamped by both directions.
    last: &'a AtomicU64,
    /// Runs at this direction's first byte.
    first: Option<F>,
    /// Does this direction read from the backend?
    from_backend: bool,
    /// Set once the backend has sent a byte.
    spoke: &'a AtomicU64,
    /// How many directions have read end-of-stream.
    ended: &'a AtomicU64,
}

impl<F: FnOnce()> Direction<'_, F> {
    /// A failure reading the source (`reading`) or writing the other side:
    /// reads fail on the source's socket, writes on the other one's.
    fn fail(&self, reading: bool, error: io::Error) -> DirError {
        DirError {
            backend_side: self.from_backend == reading,
            backend_spoke: self.spoke.load(Ordering::Relaxed) > 0,
            error,
        }
    }

    /// End-of-stream was read: should the other side's write half be shut
    /// (half-close)? Not when the other direction already ended: both
    /// sockets are closed at once then, and a shutdown first would only
    /// cost a syscall.
    fn ended(&self) -> bool {
        self.ended.fetch_add(1, Ordering::Relaxed) == 0
    }

    /// `n` bytes read: the first-byte hook, the idle clock, the count.
    fn moved(&mut self, n: usize) {
        if let Some(f) = self.first.take() {
            self.spoke.store(1, Ordering::Relaxed);
            f();
        }
        self.last.store(clock::now_ms(), Ordering::Relaxed);
        self.counter.increment(n as u64);
    }
}

async fn copy_dir<R, W, F>(
    from: &mut R,
    to: &mut W,
    mut dir: Direction<'_, F>,
) -> Result<(), DirError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
    F: FnOnce(),
{
    // Filled by `read_buf` into spare capacity: the buffer is never zeroed,
    // which short connections would pay for on every open.
    let mut buf: Vec<u8> = Vec::with_capacity(dir.size);
    loop {
        buf.clear();
        let n = from
            .read_buf(&mut buf)
            .await
            .map_err(|e| dir.fail(true, e))?;
        if n == 0 {
            if dir.ended() {
                let _ = to.shutdown().await;
            }
            return Ok(());
        }
        dir.moved(n);
        to.write_all(&buf).await.map_err(|e| dir.fail(false, e))?;
    }
}

async fn splice_dir<F: FnOnce()>(
    from: &TcpStream,
    to: &TcpStream,
    mut dir: Direction<'_, F>,
) -> Result<(), DirError> {
    use nix::fcntl::{SpliceFFlags, splice};
    let (pipe_r, pipe_w) = take_pipe().map_err(|e| dir.fail(true, e))?;
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    let size = dir.size;
    loop {
        // Socket → pipe. The pipe is empty here (drained below), so
        // "would block" can only mean the socket has nothing to read.
        let n = loop {
            // `poll_read_ready` keeps one waker per socket and direction,
            // which is all a pump needs (one direction reads each socket);
            // `readable()` would queue a waiter in a locked list each time.
            poll_fn(|cx| from.poll_read_ready(cx))
                .await
                .map_err(|e| dir.fail(true, e))?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pipe_w.as_fd(), None, size, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(dir.fail(true, e)),
            }
        };
        if n == 0 {
            if dir.ended() {
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            }
            // Drained below before every read: empty, fit for another
            // connection. (On an error or a kill it may hold bytes and is
            // closed.)
            give_back_pipe((pipe_r, pipe_w));
            return Ok(());
        }
        dir.moved(n);
        // Pipe → the other socket, until the pipe is empty.
        let mut left = n;
        while left > 0 {
            poll_fn(|cx| to.poll_write_ready(cx))
                .await
                .map_err(|e| dir.fail(false, e))?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe_r.as_fd(), None, to.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(dir.fail(false, e)),
            }
        }
    }
}

/// Empty pipes kept per thread for the next connections: creating and
/// closing a connection's two pipes costs six syscalls, a third of what a
/// short connection asks of the kernel otherwise (docs/benchmarks.md).
const PIPE_CACHE: usize = 32;

thread_local! {
    static PIPES: std::cell::RefCell<Vec<(OwnedFd, OwnedFd)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A pipe (read end, write end), non-blocking: a cached one or a new one.
fn take_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    if let Some(p) = PIPES.try_with(|c| c.borrow_mut().pop()).ok().flatten() {
        return Ok(p);
    }
    nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(io::Error::from)
}

/// Keeps an empty pipe for another connection (closes it when the cache
/// is full).
fn give_back_pipe(pipe: (OwnedFd, OwnedFd)) {
    let _ = PIPES.try_with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < PIPE_CACHE {
            c.push(pipe);
        }
    });
}

#[cfg(test)]
mod tests {
    //! The pump between real loopback sockets: what ends a connection, and
    //! that each part is woken when it must be (a part that never got its
    //! wake-up would leave a test waiting for its timeout).

    use std::sync::atomic::AtomicBool;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::timeout;

    use super::*;

    /// A connected pair: (the end the test holds, the end the pump holds).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let outer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (inner, _) = listener.accept().await.unwrap();
        (outer, inner)
    }

    struct Pumped {
        end: End,
        /// How long the pump ran.
        took: Duration,
        to_backend: u64,
        to_client: u64,
        first_byte: bool,
    }

    /// Runs the pump between two fresh pairs while `test` plays the client
    /// (first stream) and the backend (second).
    async fn pump<T: Future<Output = ()>>(
        mode: CopyMode,
        idle: Option<Duration>,
        kill: &CancellationToken,
        test: impl FnOnce(TcpStream, TcpStream) -> T,
    ) -> Pumped {
        let (client, client_side) = pair().await;
        let (backend, backend_side) = pair().await;
        let to_backend = Arc::new(AtomicU64::new(0));
        let to_client = Arc::new(AtomicU64::new(0));
        let meter = Meter {
            to_backend: &Counter::from_arc(to_backend.clone()),
            to_client: &Counter::from_arc(to_client.clone()),
        };
        let settings = Settings {
            mode,
            buffer: 4096,
            idle,
        };
        let first_byte = AtomicBool::new(false);
        let started = tokio::time::Instant::now();
        // Like `conn::serve`, the sockets close when the pump ends: the
        // half-close passed on last is that close.
        let run = async {
            let (mut client_side, mut backend_side) = (client_side, backend_side);
            let end = run(
                &mut client_side,
                &mut backend_side,
                &settings,
                kill,
                &meter,
                || first_byte.store(true, Ordering::Relaxed),
            )
            .await;
            (end, started.elapsed())
        };
        let ((end, took), ()) = timeout(Duration::from_secs(10), async {
            tokio::join!(run, test(client, backend))
        })
        .await
        .expect("the pump ended within 10 s");
        Pumped {
            end,
            took,
            to_backend: to_backend.load(Ordering::Relaxed),
            to_client: to_client.load(Ordering::Relaxed),
            first_byte: first_byte.load(Ordering::Relaxed),
        }
    }

    async fn read_all(s: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_and_a_half_close_passes_through() {
        for mode in [CopyMode::Copy, CopyMode::Splice] {
            let kill = CancellationToken::new();
            let p = pump(mode, None, &kill, |mut client, mut backend| async move {
                client.write_all(b"ping").await.unwrap();
                client.shutdown().await.unwrap();
                // The backend sees the client's end-of-stream and still
                // answers on the half that is open.
                assert_eq!(read_all(&mut backend).await, b"ping");
                backend.write_all(b"pong, at length").await.unwrap();
                backend.shutdown().await.unwrap();
                assert_eq!(read_all(&mut client).await, b"pong, at length");
            })
            .await;
            assert!(matches!(p.end, End::Closed), "{mode:?}: {:?}", p.end);
            assert_eq!((p.to_backend, p.to_client), (4, 15), "{mode:?}");
            assert!(p.first_byte, "{mode:?}");
        }
    }

    #[tokio::test]
    async fn a_kill_closes_a_connection_that_moves_nothing() {
        for mode in [CopyMode::Copy, CopyMode::Splice] {
            let kill = CancellationToken::new();
            let switch = &kill;
            let p = pump(mode, None, &kill, |mut client, mut backend| async move {
                client.write_all(b"x").await.unwrap();
                let mut one = [0; 1];
                backend.read_exact(&mut one).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                switch.cancel();
                // Both sockets stay open meanwhile: only the kill ends it.
                tokio::time::sleep(Duration::from_millis(100)).await;
            })
            .await;
            assert!(matches!(p.end, End::Killed), "{mode:?}: {:?}", p.end);
            assert!(!p.first_byte, "{mode:?}");
        }
    }

    #[tokio::test]
    async fn traffic_defers_the_idle_timeout_and_silence_reaches_it() {
        let kill = CancellationToken::new();
        let idle = Duration::from_millis(300);
        let p = pump(
            CopyMode::Copy,
            Some(idle),
            &kill,
            |mut client, mut backend| async move {
                // A byte every 100 ms for 600 ms: twice the timeout in all.
                for _ in 0..6 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    client.write_all(b"x").await.unwrap();
                    let mut one = [0; 1];
                    backend.read_exact(&mut one).await.unwrap();
                }
                // Had the timer not been deferred, the pump would have
                // stopped copying by now and the last read would wait for
                // the test's timeout. Then nothing for a while.
                tokio::time::sleep(Duration::from_millis(700)).await;
            },
        )
        .await;
        // Idle, not closed: the timeout fired within the 700 ms of silence
        // (when the scenario ends, its sockets close).
        assert!(matches!(p.end, End::Idle), "{:?}", p.end);
        assert_eq!(p.to_backend, 6);
        // Not before the last byte (~600 ms) plus the timeout: traffic
        // deferred it. (No upper bound beyond the one above: how late a
        // timer fires on a loaded machine is not the pump's behaviour.)
        let took = p.took.as_millis();
        assert!(took >= 880, "idled out after {took} ms, before the silence");
    }
}
