//! A recording backend: a real HTTP/1.1 server (hyper's, a parser
//! independent of the proxy's) that records every request it parses —
//! method, target, fields, body, and which connection it came on — and
//! answers each with `X-Recorded: <n>` and `<method> <target>` as the body.
//!
//! It is how tests judge the proxy by what a backend receives: a smuggled
//! request shows up here as a request nobody sent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the backend parsed it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Which upstream connection it came on (1, 2, ... in accept order).
    pub conn: u64,
    /// The server name the client sent in its TLS handshake (TLS backends
    /// only; None without SNI).
    pub sni: Option<String>,
    pub method: String,
    pub target: String,
    /// Fields in order, names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The values of the fields called `name` (lowercase).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first field called `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }
}

/// A running recording backend. Stops when dropped.
pub struct RecordingBackend {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    accepted: Arc<AtomicU64>,
    /// Failed TLS handshakes (TLS backends), with rustls's reason.
    handshake_failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingBackend {
    /// Starts one on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None).await
    }

    /// Starts one serving HTTPS (HTTP/1.1 over TLS, rustls) with this
    /// certificate chain and key (PEM), recording each connection's SNI.
    pub async fn start_tls(chain_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let acceptor = crate::certs::http1_acceptor(chain_pem, key_pem)?;
        Self::start_with(Some(acceptor)).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicU64::new(0));
        let handshake_failures = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (log, accepted, failures) =
                (log.clone(), accepted.clone(), handshake_failures.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let conn = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                    let (log, tls, failures) = (log.clone(), tls.clone(), failures.clone());
                    tokio::spawn(async move {
                        let Some(tls) = tls else {
                            let svc = service_fn(move |req| record(req, conn, None, log.clone()));
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await;
                            return;
                        };
                        let stream = match tls.accept(stream).await {
                            Ok(s) => s,
                            Err(e) => {
                                failures
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .push(e.to_string());
                                return;
                            }
                        };
                        let sni = stream.get_ref().1.server_name().map(str::to_string);
                        let svc =
                            service_fn(move |req| record(req, conn, sni.clone(), log.clone()));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades()
                            .await;
                    });
                }
            }
        });
        Ok(Self {
            addr,
            log,
            accepted,
            handshake_failures,
            task,
        })
    }

    /// The TLS handshakes that failed so far, with their reasons.
    pub fn handshake_failures(&self) -> Vec<String> {
        self.handshake_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `host:port`, as a pool's backend address.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Every request parsed so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    req: hyper::Request<hyper::body::Incoming>,
    conn: u64,
    sni: Option<String>,
    log: Arc<Mutex<Vec<Recorded>>>,
) -> Result<hyper::Response<Full<Bytes>>, hyper::Error> {
    let (parts, body) = req.into_parts();
    // A body that does not arrive whole was not a request the backend
    // could act on: it is not recorded.
    let body = body.collect().await?.to_bytes();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |pq| pq.to_string());
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let n = {
        let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
        log.push(Recorded {
            conn,
            sni,
            method: parts.method.to_string(),
            target: target.clone(),
            headers,
            body: body.to_vec(),
        });
        log.len()
    };
    let text = format!("{} {}", parts.method, target);
    let mut resp = hyper::Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut()
        .insert("x-recorded", hyper::header::HeaderValue::from(n));
    Ok(resp)
}
