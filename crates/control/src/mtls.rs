//! The replica's gRPC listener over mTLS: TCP connections accepted, TLS
//! handshakes run (each in its own task, within a deadline) with a client
//! certificate required and verified against the CA, and the verified
//! leaf put into every request's extensions as
//! [`tandem_tls::peer::PeerCertificate`] (with the addresses as tonic's
//! `TcpConnectInfo`, for `Request::remote_addr`). The control API and the
//! raft transport share the listener, so both get it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tandem_tls::peer::PeerCertificate;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const BACKLOG: usize = 64;

/// One TLS connection and what is known of its peer.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    info: ConnInfo,
}

/// What the listener knows of a connection, copied into each request.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    pub peer: Option<PeerCertificate>,
}

impl Connected for TlsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connections of `listener` that completed an mTLS handshake under
/// `config`. Refused handshakes (no certificate, one from another CA) are
/// logged and never reach the server. Accepting stops when the stream is
/// dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(conn) = handshake(&acceptor, tcp, remote).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(acceptor: &TlsAcceptor, tcp: TcpStream, remote: SocketAddr) -> Option<TlsConn> {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            metrics::counter!("tandem_control_tls_handshakes_refused_total").increment(1);
            tracing::info!(peer = %remote, error = %e, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            metrics::counter!("tandem_control_tls_handshakes_refused_total").increment(1);
            tracing::info!(peer = %remote, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            return None;
        }
    };
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|leaf| PeerCertificate(Arc::new(leaf.to_vec())));
    Some(TlsConn {
        stream,
        info: ConnInfo {
            tcp: TcpConnectInfo {
                local_addr: local,
                remote_addr: Some(remote),
            },
            peer,
        },
    })
}

/// Copies a connection's [`ConnInfo`] into each request as
/// [`PeerCertificate`] and `TcpConnectInfo` (a no-op over plain TCP).
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerLayer;

impl<S> tower::Layer<S> for PeerLayer {
    type Service = PeerService<S>;

    fn layer(&self, inner: S) -> PeerService<S> {
        PeerService(inner)
    }
}

#[derive(Debug, Clone)]
pub struct PeerService<S>(S);

impl<S, B> tower::Service<http::Request<B>> for PeerService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> S::Future {
        if let Some(info) = req.extensions().get::<ConnInfo>().cloned() {
            req.extensions_mut().insert(info.tcp);
            if let Some(peer) = info.peer {
                req.extensions_mut().insert(peer);
            }
        }
        self.0.call(req)
    }
}

/// A replica's side of mTLS: the server configuration of its listener and
/// the client one for calls to the other replicas, from the same files.
#[derive(Clone)]
pub struct ReplicaTls {
    pub server: Arc<ServerConfig>,
    pub client: tandem_client::ClientTls,
}

impl ReplicaTls {
    pub fn from_files(files: &tandem_tls::component::Files) -> Result<Self, String> {
        let server = tandem_tls::component::server_config(files)
            .map_err(|e| format!("TANDEM_TLS_*: {e}"))?;
        Ok(Self {
            server: Arc::new(server),
            client: tandem_client::ClientTls::from_files(files)?,
        })
    }
}
