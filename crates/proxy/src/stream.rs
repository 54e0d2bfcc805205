//! A connection that is plain TCP or TLS over it: [`PlainOrTls`], one type
//! for both ends. [`ClientIo`] is a client's connection as the HTTP servers
//! see it (TLS terminated here); `upstream::Io` a backend connection (TLS
//! to the backend). The servers read and write through `ClientIo`; only
//! writes differ, since TLS records must be flushed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Plain TCP, or `S` (a TLS stream) over it.
pub enum PlainOrTls<S> {
    Plain(TcpStream),
    /// Boxed: rustls's connection state is large, and most connections
    /// are plain (this keeps the plain case small).
    Tls(Box<S>),
}

/// A client's connection.
pub type ClientIo = PlainOrTls<TlsStream<TcpStream>>;

impl ClientIo {
    /// Writes all of `data` and flushes it, giving up when the client reads
    /// nothing for `stall`. Most answers fit in the socket's buffer and go
    /// out at once, without arming a timer.
    pub async fn write_all_within(&mut self, mut data: &[u8], stall: Duration) -> io::Result<()> {
        let stalled = || io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading");
        match self {
            ClientIo::Plain(tcp) => {
                match tcp.try_write(data) {
                    Ok(n) if n == data.len() => return Ok(()),
                    Ok(n) => data = &data[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                tokio::time::timeout(stall, tcp.write_all(data))
                    .await
                    .unwrap_or_else(|_| Err(stalled()))
            }
            ClientIo::Tls(tls) => {
                let mut write = std::pin::pin!(async {
                    tls.write_all(data).await?;
                    tls.flush().await
                });
                if let Poll::Ready(r) = futures::poll!(write.as_mut()) {
                    return r;
                }
                tokio::time::timeout(stall, write)
                    .await
                    .unwrap_or_else(|_| Err(stalled()))
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ClientIo::Tls(_))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PlainOrTls<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainOrTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PlainOrTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PlainOrTls<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PlainOrTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PlainOrTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PlainOrTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PlainOrTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PlainOrTls::Plain(s) => s.is_write_vectored(),
            PlainOrTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainOrTls::Plain(s) => Pin::new(s).poll_flush(cx),
            PlainOrTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlainOrTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PlainOrTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
