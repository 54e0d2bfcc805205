//! Two connections joined after a protocol switch (WebSocket): bytes flow
//! both ways until both sides have closed, or until neither has sent
//! anything for the pool's tunnel idle timeout.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::clock;
use crate::upstream::Io;

/// Joins `client` and `backend` until both have closed (a close is passed
/// on as a half-close), either fails, or both are silent for `idle`.
pub async fn join<C: AsyncRead + AsyncWrite + Unpin>(
    client: &mut C,
    backend: &mut Io,
    idle: Duration,
) -> io::Result<()> {
    match backend {
        Io::Plain(tcp) => {
            let (backend_read, backend_write) = tcp.split();
            join_halves(client, backend_read, backend_write, idle).await
        }
        Io::Tls(tls) => {
            let (backend_read, backend_write) = tokio::io::split(tls.as_mut());
            join_halves(client, backend_read, backend_write, idle).await
        }
    }
}

async fn join_halves<C, R, W>(
    client: &mut C,
    mut backend_read: R,
    mut backend_write: W,
    idle: Duration,
) -> io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let last = AtomicU64::new(clock::now_ms());
    let both = async {
        tokio::try_join!(
            copy(&mut client_read, &mut backend_write, &last),
            copy(&mut backend_read, &mut client_write, &last),
        )
    };
    let idle_ms = idle.as_millis() as u64;
    let silence = async {
        loop {
            let quiet_for = clock::now_ms().saturating_sub(last.load(Ordering::Relaxed));
            if quiet_for >= idle_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(idle_ms - quiet_for)).await;
        }
    };
    tokio::select! {
        r = both => r.map(drop),
        () = silence => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the upgraded connection was idle for the pool's tunnel idle timeout",
        )),
    }
}

async fn copy<R, W>(from: &mut R, to: &mut W, last: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        last.store(clock::now_ms(), Ordering::Relaxed);
        to.write_all(&buf[..n]).await?;
        // (A TLS client's records leave only when flushed.)
        to.flush().await?;
        last.store(clock::now_ms(), Ordering::Relaxed);
    }
}
