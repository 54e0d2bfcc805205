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
    let both = async {
        match settings.mode {
            CopyMode::Copy => {
                let (mut cr, mut cw) = client.split();
                let (mut br, mut bw) = backend.split();
                let up = copy_dir(
                    &mut cr,
                    &mut bw,
                    settings.buffer,
                    meter.to_backend,
                    &last,
                    None::<fn()>,
                    false,
                    &spoke,
                    &ended,
                );
                let down = copy_dir(
                    &mut br,
                    &mut cw,
                    settings.buffer,
                    meter.to_client,
                    &last,
                    Some(on_first_byte),
                    true,
                    &spoke,
                    &ended,
                );
                tokio::try_join!(up, down).map(|_| ())
            }
            CopyMode::Splice => {
                let (c, b) = (&*client, &*backend);
                let up = splice_dir(
                    c,
                    b,
                    settings.buffer,
                    meter.to_backend,
                    &last,
                    None::<fn()>,
                    false,
                    &spoke,
                    &ended,
                );
                let down = splice_dir(
                    b,
                    c,
                    settings.buffer,
                    meter.to_client,
                    &last,
                    Some(on_first_byte),
                    true,
                    &spoke,
                    &ended,
                );
                tokio::try_join!(up, down).map(|_| ())
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

#[allow(clippy::too_many_arguments)] // one call site per mode, each direction spelled out
async fn copy_dir<R, W, F>(
    from: &mut R,
    to: &mut W,
    size: usize,
    counter: &Counter,
    last: &AtomicU64,
    mut first: Option<F>,
    from_backend: bool,
    spoke: &AtomicU64,
    ended: &AtomicU64,
) -> Result<(), DirError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
    F: FnOnce(),
{
    // Reads fail on the source's socket, writes on the other one's.
    let fail = |error: io::Error| DirError {
        backend_side: from_backend,
        backend_spoke: spoke.load(Ordering::Relaxed) > 0,
        error,
    };
    let fail_write = |error: io::Error| DirError {
        backend_side: !from_backend,
        backend_spoke: spoke.load(Ordering::Relaxed) > 0,
        error,
    };
    // Filled by `read_buf` into spare capacity: the buffer is never zeroed,
    // which short connections would pay for on every open.
    let mut buf: Vec<u8> = Vec::with_capacity(size);
    loop {
        buf.clear();
        let n = from.read_buf(&mut buf).await.map_err(fail)?;
        if n == 0 {
            // Half-close: tell the other side we are done sending, unless
            // the other direction already ended (both sockets are closed
            // at once then; a shutdown first would only cost a syscall).
            if ended.fetch_add(1, Ordering::Relaxed) == 0 {
                let _ = to.shutdown().await;
            }
            return Ok(());
        }
        if let Some(f) = first.take() {
            spoke.store(1, Ordering::Relaxed);
            f();
        }
        last.store(clock::now_ms(), Ordering::Relaxed);
        counter.increment(n as u64);
        to.write_all(&buf).await.map_err(fail_write)?;
    }
}

#[allow(clippy::too_many_arguments)] // as copy_dir
async fn splice_dir<F: FnOnce()>(
    from: &TcpStream,
    to: &TcpStream,
    size: usize,
    counter: &Counter,
    last: &AtomicU64,
    mut first: Option<F>,
    from_backend: bool,
    spoke: &AtomicU64,
    ended: &AtomicU64,
) -> Result<(), DirError> {
    use nix::fcntl::{SpliceFFlags, splice};
    // Reads fail on the source's socket, writes on the other one's.
    let fail = |error: io::Error| DirError {
        backend_side: from_backend,
        backend_spoke: spoke.load(Ordering::Relaxed) > 0,
        error,
    };
    let fail_write = |error: io::Error| DirError {
        backend_side: !from_backend,
        backend_spoke: spoke.load(Ordering::Relaxed) > 0,
        error,
    };
    let (pipe_r, pipe_w): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| fail(e.into()))?;
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    loop {
        // Socket → pipe. The pipe is empty here (drained below), so
        // "would block" can only mean the socket has nothing to read.
        let n = loop {
            from.readable().await.map_err(fail)?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pipe_w.as_fd(), None, size, flags)
                    .map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(fail(e)),
            }
        };
        if n == 0 {
            if ended.fetch_add(1, Ordering::Relaxed) == 0 {
                let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
            }
            return Ok(());
        }
        if let Some(f) = first.take() {
            spoke.store(1, Ordering::Relaxed);
            f();
        }
        last.store(clock::now_ms(), Ordering::Relaxed);
        counter.increment(n as u64);
        // Pipe → the other socket, until the pipe is empty.
        let mut left = n;
        while left > 0 {
            to.writable().await.map_err(fail_write)?;
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe_r.as_fd(), None, to.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(fail_write(e)),
            }
        }
    }
}
