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

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    let both = async {
        match settings.mode {
            CopyMode::Copy => {
                let (mut cr, mut cw) = client.split();
                let (mut br, mut bw) = backend.split();
                tokio::try_join!(
                    copy_dir(&mut cr, &mut bw, up),
                    copy_dir(&mut br, &mut cw, down)
                )
                .map(|_| ())
            }
            CopyMode::Splice => {
                let (c, b) = (&*client, &*backend);
                tokio::try_join!(splice_dir(c, b, up), splice_dir(b, c, down)).map(|_| ())
            }
        }
    };
    tokio::select! {
        r = both => match r {
            Ok(()) => End::Closed,
            Err(e) if e.backend_side && !e.backend_spoke => End::BackendResetEarly,
            Err(e) => End::Error(e.error),
        },
        () = kill.cancelled() => End::Killed,
        () = idle_out(settings.idle, &last) => End::Idle,
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
            from.readable().await.map_err(|e| dir.fail(true, e))?;
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
            to.writable().await.map_err(|e| dir.fail(false, e))?;
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
