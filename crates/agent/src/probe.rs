//! One probe of one backend, bounded by the check's timeout, and what it
//! means: a TCP connect, or an HTTP/1.1 request.
//!
//! HTTP probes reuse one kept-alive connection per backend, as Envoy's
//! health checker does by default (`reuse_connection`). A new connection per
//! probe, HAProxy's way, was most of what probing cost: three quarters of
//! the agent's CPU time went to the kernel, mostly for connect, accept and
//! the reset on close. Reuse at the default halves the agent's CPU time on
//! the benchmark (`docs/benchmarks.md`, agent probe cost). What reuse
//! gives up is noticing a backend that stops *accepting* connections (a
//! closed listener, a full backlog) while it still answers on the one we
//! hold. So reuse is bounded, by [`Conn`]: a fresh connection at least every
//! N probes (`--probe-fresh-connection-every`, default 10; 1 is HAProxy's
//! behaviour), and for every probe after a failed one until one passes.
//! Such a backend is caught within N intervals, and then fails `fall`
//! probes in a row exactly as before, each on a fresh connection. A kept
//! connection the backend closed while it was idle (its keep-alive timeout,
//! a restart) is not a failure: the probe sees it closed before sending, or
//! broken before any byte of the answer, and asks once more on a fresh
//! connection within the same timeout.
//!
//! Why hyper's connection-level client over reqwest: owning the socket lets
//! us bind the probe source address, decide when a connection is replaced
//! (a pool decides by itself), tell a refused connect from a timeout or a
//! bad answer in the detail the operator reads, and close with a reset
//! (`SO_LINGER` 0, as HAProxy does for checks) so replaced connections leave
//! no `TIME_WAIT` sockets behind on the agent. TCP checks are unchanged: the
//! connect is the check, on a new connection every time.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderMap, USER_AGENT};
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tandem_core::health::BackendKey;
use tandem_core::{HealthCheckKind, HealthCheckSpec};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout_at};

const AGENT: &str = concat!("tandem-agent/", env!("CARGO_PKG_VERSION"));

// === Outcome ===

/// Coarse result classes, for metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Connected (TCP) or answered with an expected status (HTTP).
    Ok,
    /// Answered with a status outside the expected range.
    Status,
    /// No answer within the timeout.
    Timeout,
    /// The connection was refused.
    Refused,
    /// Anything else: unreachable, reset, not HTTP, name not found...
    Error,
}

impl Class {
    pub const ALL: [Class; 5] = [
        Class::Ok,
        Class::Status,
        Class::Timeout,
        Class::Refused,
        Class::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::Status => "status",
            Class::Timeout => "timeout",
            Class::Refused => "refused",
            Class::Error => "error",
        }
    }
}

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub class: Class,
    /// For people: "HTTP 200", "HTTP 503", "connect: connection refused",
    /// "timeout after 1000 ms".
    pub detail: String,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.class == Class::Ok
    }

    /// An HTTP answer: healthy when its status is in the expected range.
    pub fn from_status(status: u16, spec: &HealthCheckSpec) -> Outcome {
        let class = if (spec.expected_status_min..=spec.expected_status_max).contains(&status) {
            Class::Ok
        } else {
            Class::Status
        };
        Outcome {
            class,
            detail: format!("HTTP {status}"),
        }
    }

    pub fn timeout(timeout_ms: u32) -> Outcome {
        Outcome {
            class: Class::Timeout,
            detail: format!("timeout after {timeout_ms} ms"),
        }
    }

    /// A failed connect, named the way `connect(2)` would.
    pub fn connect_error(e: &io::Error) -> Outcome {
        let class = match e.kind() {
            io::ErrorKind::ConnectionRefused => Class::Refused,
            io::ErrorKind::TimedOut => Class::Timeout,
            _ => Class::Error,
        };
        Outcome {
            class,
            detail: format!("connect: {}", io_text(e)),
        }
    }

    fn tcp_connected() -> Outcome {
        Outcome {
            class: Class::Ok,
            detail: "TCP connect ok".into(),
        }
    }

    fn http_error(e: &hyper::Error) -> Outcome {
        let mut detail = format!("http: {e}");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            match s.downcast_ref::<io::Error>() {
                Some(io) => detail.push_str(&format!(": {}", io_text(io))),
                None => detail.push_str(&format!(": {s}")),
            }
            source = s.source();
        }
        Outcome {
            class: Class::Error,
            detail,
        }
    }

    fn other(what: &str, e: impl std::fmt::Display) -> Outcome {
        Outcome {
            class: Class::Error,
            detail: format!("{what}: {e}"),
        }
    }
}

/// "connection refused", not "Connection refused (os error 111)".
fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        io::ErrorKind::ConnectionAborted => "connection aborted".to_string(),
        io::ErrorKind::HostUnreachable => "host unreachable".to_string(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".to_string(),
        io::ErrorKind::AddrNotAvailable => "address not available".to_string(),
        io::ErrorKind::TimedOut => "timed out".to_string(),
        _ => {
            let s = e.to_string();
            let s = match s.find(" (os error") {
                Some(i) => s[..i].to_string(),
                None => s,
            };
            let mut chars = s.chars();
            match chars.next() {
                Some(c) => c.to_lowercase().chain(chars).collect(),
                None => s,
            }
        }
    }
}

// === Check ===

/// Where a backend's address points.
#[derive(Debug, Clone)]
enum Dest {
    /// An IP literal, parsed once.
    Ip(SocketAddr),
    /// A DNS name, resolved for every new connection (addresses move).
    Name(String),
}

/// Everything a probe of one backend needs, prepared once per target.
#[derive(Debug, Clone)]
pub struct Check {
    pub key: BackendKey,
    pub spec: HealthCheckSpec,
    dest: Dest,
    method: Method,
    uri: Uri,
    host: HeaderValue,
    timeout: Duration,
}

impl Check {
    pub fn new(key: BackendKey, spec: HealthCheckSpec) -> Check {
        let address = key.address.as_str();
        let dest = match address.parse::<SocketAddr>() {
            Ok(a) => Dest::Ip(a),
            Err(_) => Dest::Name(address.to_string()),
        };
        // The spec was validated by the control plane and again when it was
        // converted from the wire; fall back to safe values all the same.
        let method = Method::from_bytes(spec.method.as_bytes()).unwrap_or(Method::GET);
        let uri = spec
            .path
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"));
        let host = if spec.host.is_empty() {
            address
        } else {
            &spec.host
        };
        let host =
            HeaderValue::from_str(host).unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let timeout = Duration::from_millis(spec.timeout_ms.max(1).into());
        Check {
            key,
            spec,
            dest,
            method,
            uri,
            host,
            timeout,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.spec.interval_ms.max(1).into())
    }

    pub fn kind(&self) -> HealthCheckKind {
        self.spec.kind
    }

    /// Probes once, on `conn`'s kept connection or a new one. Never takes
    /// longer than the check's timeout.
    pub async fn run(&self, conn: &mut Conn, source: Option<IpAddr>) -> Outcome {
        let deadline = Instant::now() + self.timeout;
        let timed_out = || Outcome::timeout(self.spec.timeout_ms);
        if self.spec.kind == HealthCheckKind::Tcp {
            // Dropping the stream resets it: the connect was the check.
            return match timeout_at(deadline, self.connect(source)).await {
                Ok(Ok(_stream)) => {
                    conn.opened += 1;
                    Outcome::tcp_connected()
                }
                Ok(Err(outcome)) => outcome,
                Err(_) => timed_out(),
            };
        }
        let (mut http, response) = match timeout_at(deadline, self.ask(conn, source)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(outcome)) => return outcome,
            Err(_) => return timed_out(),
        };
        let outcome = Outcome::from_status(response.status().as_u16(), &self.spec);
        // The outcome is decided. Reading the rest of the answer only serves
        // the next probe; a connection that cannot be kept (or takes too
        // long to finish) is dropped, which resets it.
        let keep = outcome.ok()
            && http.uses < conn.fresh_every
            && response.version() == Version::HTTP_11
            && !says_close(response.headers());
        if keep && let Ok(true) = timeout_at(deadline, http.drain(response.into_body())).await {
            conn.kept = Some(http);
        }
        outcome
    }

    /// Sends the request on the kept connection, or a fresh one, and waits
    /// for the answer's head. The connection comes back with it.
    async fn ask(
        &self,
        conn: &mut Conn,
        source: Option<IpAddr>,
    ) -> Result<(Http, Response<Incoming>), Outcome> {
        let mut kept = conn.take_kept().await;
        loop {
            let reused = kept.is_some();
            let mut http = match kept.take() {
                Some(http) => http,
                None => {
                    let stream = self.connect(source).await?;
                    conn.opened += 1;
                    Http::handshake(stream)
                        .await
                        .map_err(|e| Outcome::http_error(&e))?
                }
            };
            http.uses += 1;
            match http.send(self.request()).await {
                Ok(response) => return Ok((http, response)),
                // The backend closed the kept connection before it could
                // carry this request (a keep-alive race): nothing was
                // answered, so nothing failed yet. Once more on a fresh one;
                // `reused` is false then, so never twice.
                Err(_) if reused && !http.heard() => continue,
                Err(e) => return Err(Outcome::http_error(&e)),
            }
        }
    }

    /// The probe request. No `Connection: close`, even on a connection's
    /// last probe: the agent resets the connection it replaces, which
    /// spares the backend a close handshake, and leaves the rule of when to
    /// replace it in one place ([`Check::run`]).
    fn request(&self) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        let headers = req.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
        req
    }

    /// A new connection; a DNS name is resolved again for each.
    async fn connect(&self, source: Option<IpAddr>) -> Result<TcpStream, Outcome> {
        let addrs: Vec<SocketAddr> = match &self.dest {
            Dest::Ip(a) => vec![*a],
            Dest::Name(name) => tokio::net::lookup_host(name.as_str())
                .await
                .map_err(|e| Outcome::other("resolve", io_text(&e)))?
                .collect(),
        };
        let mut last = Outcome::other("resolve", "no addresses");
        for addr in addrs {
            match connect(addr, source).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Outcome::connect_error(&e),
            }
        }
        Err(last)
    }
}

/// Whether a `Connection` header asks to close after this message.
fn says_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

/// A new connection to `addr`, from `source` when set. Closing it sends a
/// reset: the agent keeps no `TIME_WAIT` state, which also keeps a bound
/// source address from running out of ports.
async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    // No TCP_NODELAY: a probe writes its request once, and Nagle only
    // holds back data sent while earlier data is unacknowledged.
    stream.set_zero_linger()?;
    Ok(stream)
}

// === Conn ===

/// One target's probe connection between probes, owned by its probe task
/// (so no locks): the kept-alive HTTP connection, if any, and when to
/// replace it.
pub struct Conn {
    /// A connection serves at most this many probes (at least 1).
    fresh_every: u32,
    /// Kept only after a passing probe, and only until it has carried
    /// `fresh_every` probes: after a failure the next probe connects
    /// afresh, and so on until one passes.
    kept: Option<Http>,
    /// Connections opened so far.
    opened: u64,
}

impl Conn {
    /// Opens a fresh connection at least every `fresh_every` probes; 1 opens
    /// one for every probe.
    pub fn new(fresh_every: u32) -> Conn {
        Conn {
            fresh_every: fresh_every.max(1),
            kept: None,
            opened: 0,
        }
    }

    /// Connections the probes opened so far (TCP and HTTP).
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// The kept connection, unless the backend closed it while it was idle.
    /// (One that carried its last probe was not kept.)
    async fn take_kept(&mut self) -> Option<Http> {
        let mut http = self.kept.take()?;
        std::future::poll_fn(|cx| Poll::Ready(http.still_open(cx)))
            .await
            .then_some(http)
    }
}

/// The most of an answer's body read so that its connection can be kept;
/// past it the connection is dropped instead.
const MAX_DRAIN: usize = 64 * 1024;

type H1 = Connection<TokioIo<Socket>, Empty<Bytes>>;

/// An HTTP/1.1 connection: hyper's request handle and the connection
/// itself, which the probe task drives only while a probe uses it.
struct Http {
    sender: SendRequest<Empty<Bytes>>,
    /// `None` once it has ended.
    conn: Option<H1>,
    /// Whether the backend sent anything since the last request began.
    heard: Arc<AtomicBool>,
    /// Probes this connection carried.
    uses: u32,
}

impl Http {
    async fn handshake(stream: TcpStream) -> Result<Http, hyper::Error> {
        let heard = Arc::new(AtomicBool::new(false));
        let socket = Socket {
            stream,
            heard: heard.clone(),
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(socket)).await?;
        Ok(Http {
            sender,
            conn: Some(conn),
            heard,
            uses: 0,
        })
    }

    fn heard(&self) -> bool {
        self.heard.load(Ordering::Relaxed)
    }

    /// Whether the idle connection is still open, without waiting: one look
    /// sees the backend's close, or bytes it had no reason to send.
    fn still_open(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        if Pin::new(conn).poll(cx).is_pending() {
            return true;
        }
        self.conn = None;
        false
    }

    /// Sends `req` and waits for the answer's head.
    async fn send(
        &mut self,
        req: Request<Empty<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        self.heard.store(false, Ordering::Relaxed);
        let sender = &mut self.sender;
        let exchange = async move {
            sender.ready().await?;
            sender.send_request(req).await
        };
        drive(&mut self.conn, exchange).await
    }

    /// Reads the answer's body to its end, so that the connection can carry
    /// the next request; false when it is too long or broke off.
    async fn drain(&mut self, mut body: Incoming) -> bool {
        if body.size_hint().lower() > MAX_DRAIN as u64 {
            return false;
        }
        let read = async move {
            let mut read = 0;
            while let Some(frame) = body.frame().await {
                read += frame?.data_ref().map_or(0, Bytes::len);
                if read > MAX_DRAIN {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        matches!(drive(&mut self.conn, read).await, Ok(true)) && self.conn.is_some()
    }
}

/// Runs `work` while driving the connection, which does the socket I/O
/// for it. A connection that ends first is dropped, which settles whatever
/// `work` still waits on; when that is a failure, the error the connection
/// ended with (if it had one) says more.
async fn drive<T>(
    conn: &mut Option<H1>,
    work: impl Future<Output = Result<T, hyper::Error>>,
) -> Result<T, hyper::Error> {
    let Some(c) = conn.as_mut() else {
        return work.await;
    };
    tokio::pin!(work);
    let ended = tokio::select! {
        biased;
        done = &mut work => return done,
        ended = c => ended,
    };
    *conn = None;
    match (work.await, ended) {
        (Err(_), Err(e)) => Err(e),
        (done, _) => done,
    }
}

/// The probe's socket, noting when the backend sends anything: a kept
/// connection that broke before any byte of the answer was a stale one.
struct Socket {
    stream: TcpStream,
    heard: Arc<AtomicBool>,
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
        }
        poll
    }
}

impl AsyncWrite for Socket {
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::Ipv4Addr;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use tandem_core::{BackendAddr, PoolName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::*;

    fn check(addr: SocketAddr, spec: HealthCheckSpec) -> Check {
        Check::new(
            BackendKey {
                pool: PoolName::new("shop").unwrap(),
                address: BackendAddr::new(addr.to_string()).unwrap(),
            },
            spec,
        )
    }

    fn spec() -> HealthCheckSpec {
        HealthCheckSpec {
            path: "/healthz".into(),
            interval_ms: 1_000,
            timeout_ms: 500,
            ..Default::default()
        }
    }

    /// A one-shot HTTP server answering `status`; hands back the request
    /// head it read.
    async fn answer_once(status_line: &'static str) -> (SocketAddr, oneshot::Receiver<String>) {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
            let resp = format!("HTTP/1.1 {status_line}\r\ncontent-length: 2\r\n\r\nok");
            let _ = s.write_all(resp.as_bytes()).await;
        });
        (addr, rx)
    }

    #[test]
    fn statuses_in_the_expected_range_are_healthy() {
        let s = HealthCheckSpec {
            expected_status_min: 200,
            expected_status_max: 299,
            ..spec()
        };
        for (status, class) in [
            (200, Class::Ok),
            (204, Class::Ok),
            (299, Class::Ok),
            (199, Class::Status),
            (301, Class::Status),
            (503, Class::Status),
        ] {
            let o = Outcome::from_status(status, &s);
            assert_eq!(o.class, class, "{status}");
            assert_eq!(o.detail, format!("HTTP {status}"));
        }
    }

    #[test]
    fn connect_errors_read_like_connect() {
        let refused = Outcome::connect_error(&io::Error::from_raw_os_error(111));
        assert_eq!(refused.class, Class::Refused);
        assert_eq!(refused.detail, "connect: connection refused");
        let unreachable = Outcome::connect_error(&io::Error::from_raw_os_error(113));
        assert_eq!(unreachable.class, Class::Error);
        assert_eq!(unreachable.detail, "connect: host unreachable");
        let odd = Outcome::connect_error(&io::Error::other("Something odd"));
        assert_eq!(odd.detail, "connect: something odd");
        assert_eq!(Outcome::timeout(1000).detail, "timeout after 1000 ms");
    }

    #[tokio::test]
    async fn http_probe_sends_method_path_and_host_and_reads_the_status() {
        let (addr, head) = answer_once("200 OK").await;
        let o = check(addr, spec()).run(&mut Conn::new(10), None).await;
        assert_eq!(o, Outcome::from_status(200, &spec()));
        let head = head.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /healthz http/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
        // HTTP/1.1 keeps the connection open by default: no header needed.
        assert!(!head.contains("connection:"), "{head}");

        // A Host header from the spec wins; the method is the spec's.
        let (addr, head) = answer_once("503 Service Unavailable").await;
        let s = HealthCheckSpec {
            host: "shop.example.com".into(),
            method: "HEAD".into(),
            ..spec()
        };
        let o = check(addr, s).run(&mut Conn::new(10), None).await;
        assert_eq!(o.class, Class::Status, "{o:?}");
        assert_eq!(o.detail, "HTTP 503");
        let head = head.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("head /healthz http/1.1\r\n"), "{head}");
        assert!(head.contains("host: shop.example.com\r\n"), "{head}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_refused_for_tcp_and_http() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        for kind in [HealthCheckKind::Http, HealthCheckKind::Tcp] {
            let o = check(addr, HealthCheckSpec { kind, ..spec() })
                .run(&mut Conn::new(10), None)
                .await;
            assert_eq!(o.class, Class::Refused, "{kind:?}: {o:?}");
            assert_eq!(o.detail, "connect: connection refused");
        }
    }

    #[tokio::test]
    async fn tcp_probe_passes_on_connect() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let o = check(
            l.local_addr().unwrap(),
            HealthCheckSpec {
                kind: HealthCheckKind::Tcp,
                ..spec()
            },
        )
        .run(&mut Conn::new(10), None)
        .await;
        assert_eq!(o.class, Class::Ok, "{o:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_backend_times_out_at_the_check_timeout() {
        // Accepts (the kernel does, from the backlog) but never answers.
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let started = tokio::time::Instant::now();
        let o = check(l.local_addr().unwrap(), spec())
            .run(&mut Conn::new(10), None)
            .await;
        assert_eq!(o, Outcome::timeout(500));
        assert_eq!(o.class, Class::Timeout);
        // Virtual time: exactly the timeout, however slow the machine.
        assert_eq!(started.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn not_http_is_an_error() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        });
        let o = check(addr, spec()).run(&mut Conn::new(10), None).await;
        assert_eq!(o.class, Class::Error, "{o:?}");
        assert!(o.detail.starts_with("http: "), "{o:?}");
    }

    // === Connection reuse ===

    /// What the test backend does with one request.
    #[derive(Debug, Clone, Copy)]
    enum Reply {
        /// Answers with this status and a short body; keeps the connection.
        Status(u16),
        /// Answers 200 with a short chunked body, the end of it a moment
        /// after the head; keeps the connection.
        Chunked,
        /// Answers 200 with a 100 KiB body (`content-length`, or chunked).
        Large,
        LargeChunked,
        /// Answers 200, then closes the connection while the agent keeps
        /// it (a short keep-alive timeout).
        OkThenClose,
        /// Reads the request and closes without answering (the backend's
        /// keep-alive timeout crossing the request).
        Close,
        /// Sends half a status line, then closes.
        Partial,
    }

    /// A keep-alive HTTP/1.1 backend on raw sockets. It answers requests,
    /// whichever connection they come on, with `replies` in order and then
    /// with 200, and counts the connections it accepted.
    struct Backend {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        heads: Arc<Mutex<Vec<String>>>,
        accepting: tokio::task::JoinHandle<()>,
    }

    impl Backend {
        async fn start(replies: &[Reply]) -> Backend {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let addr = l.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let heads = Arc::new(Mutex::new(Vec::new()));
            let replies = Arc::new(Mutex::new(VecDeque::from(replies.to_vec())));
            let accepting = tokio::spawn({
                let (accepted, heads) = (accepted.clone(), heads.clone());
                async move {
                    loop {
                        let (s, _) = l.accept().await.unwrap();
                        accepted.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(serve(s, replies.clone(), heads.clone()));
                    }
                }
            });
            Backend {
                addr,
                accepted,
                heads,
                accepting,
            }
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        /// Closes the listener; connections already accepted are still
        /// served.
        async fn stop_accepting(self) {
            self.accepting.abort();
            let _ = self.accepting.await;
        }
    }

    async fn serve(
        mut s: TcpStream,
        replies: Arc<Mutex<VecDeque<Reply>>>,
        heads: Arc<Mutex<Vec<String>>>,
    ) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head: Vec<u8> = buf.drain(..end).collect();
            heads
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&head).to_ascii_lowercase());
            let reply = replies
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Reply::Status(200));
            const CHUNKED: &str = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            let large = "x".repeat(102_400);
            let (answer, rest): (String, Option<&str>) = match reply {
                Reply::Status(code) => (
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\n\r\nok"),
                    None,
                ),
                // A body that arrives later than its head: hyper drops a
                // connection whose unread body is not all buffered yet.
                Reply::Chunked => (format!("{CHUNKED}2\r\nok\r\n"), Some("0\r\n\r\n")),
                Reply::Large => (
                    format!("HTTP/1.1 200 OK\r\ncontent-length: 102400\r\n\r\n{large}"),
                    None,
                ),
                Reply::LargeChunked => (format!("{CHUNKED}19000\r\n{large}\r\n0\r\n\r\n"), None),
                Reply::OkThenClose => (
                    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into(),
                    None,
                ),
                Reply::Close => return,
                Reply::Partial => ("HTTP/1.1 20".into(), None),
            };
            if s.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            if let Some(rest) = rest {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if s.write_all(rest.as_bytes()).await.is_err() {
                    return;
                }
            }
            if matches!(reply, Reply::OkThenClose | Reply::Partial) {
                return;
            }
        }
    }

    /// Probes `n` times in a row; each outcome with the backend's accepted
    /// connections after it.
    async fn probes(check: &Check, conn: &mut Conn, b: &Backend, n: usize) -> Vec<(Class, usize)> {
        let mut seen = Vec::new();
        for _ in 0..n {
            let o = check.run(conn, None).await;
            seen.push((o.class, b.accepted()));
        }
        seen
    }

    use Class::{Error, Ok as Pass, Refused, Status};

    #[tokio::test]
    async fn http_probes_reuse_one_kept_alive_connection() {
        let b = Backend::start(&[]).await;
        let c = check(b.addr, spec());
        let mut conn = Conn::new(10);
        assert_eq!(
            probes(&c, &mut conn, &b, 3).await,
            [(Pass, 1), (Pass, 1), (Pass, 1)]
        );
        assert_eq!(conn.opened(), 1);
        for head in b.heads.lock().unwrap().iter() {
            assert!(!head.contains("connection:"), "{head}");
        }

        // 1: a new connection for every probe.
        let b = Backend::start(&[]).await;
        let c = check(b.addr, spec());
        let mut conn = Conn::new(1);
        assert_eq!(
            probes(&c, &mut conn, &b, 3).await,
            [(Pass, 1), (Pass, 2), (Pass, 3)]
        );
        assert_eq!(conn.opened(), 3);
    }

    #[tokio::test]
    async fn a_fresh_connection_opens_every_n_probes() {
        let b = Backend::start(&[]).await;
        let c = check(b.addr, spec());
        let mut conn = Conn::new(3);
        // Probes 1, 4 and 7 connect.
        assert_eq!(
            probes(&c, &mut conn, &b, 7).await,
            [
                (Pass, 1),
                (Pass, 1),
                (Pass, 1),
                (Pass, 2),
                (Pass, 2),
                (Pass, 2),
                (Pass, 3)
            ]
        );
    }

    #[tokio::test]
    async fn bodies_are_read_to_the_end_and_large_ones_cost_the_connection() {
        use Reply::{Chunked, Large, LargeChunked};
        let b = Backend::start(&[Chunked, Chunked, Large, LargeChunked, Chunked]).await;
        let c = check(b.addr, spec());
        let mut conn = Conn::new(10);
        assert_eq!(
            probes(&c, &mut conn, &b, 6).await,
            [
                (Pass, 1),
                (Pass, 1),
                (Pass, 1),
                (Pass, 2),
                (Pass, 3),
                (Pass, 3)
            ]
        );
    }

    #[tokio::test]
    async fn a_kept_connection_the_backend_closed_is_not_a_failure() {
        // Closed while idle, between probes.
        let b = Backend::start(&[Reply::OkThenClose]).await;
        let c = check(b.addr, spec());
        let mut conn = Conn::new(10);
        assert_eq!(probes(&c, &mut conn, &b, 1).await, [(Pass, 1)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(probes(&c, &mut conn, &b, 2).await, [(Pass, 2), (Pass, 2)]);

        // Closed as the request arrived, with no answer: asked again on a
        // fresh connection within the same probe.
        let b = Backend::start(&[Reply::Status(200), Reply::Close]).await;
        let c = check(b.addr, spec());
        let mut conn = Conn::new(10);
        assert_eq!(
            probes(&c, &mut conn, &b, 3).await,
            [(Pass, 1), (Pass, 2), (Pass, 2)]
        );

        // But an answer that breaks off is a failure, not a stale
        // connection: no second try.
        let b = Backend::start(&[Reply::Status(200), Reply::Partial]).await;
        let c = check(b.addr, spec());
        let mut conn = Conn::new(10);
        assert_eq!(probes(&c, &mut conn, &b, 1).await, [(Pass, 1)]);
        let o = c.run(&mut conn, None).await;
        assert_eq!(o.class, Error, "{o:?}");
        assert!(o.detail.starts_with("http: "), "{o:?}");
        assert_eq!(b.accepted(), 1);
    }

    #[tokio::test]
    async fn after_a_failed_probe_the_next_one_opens_a_new_connection() {
        let b = Backend::start(&[
            Reply::Status(200),
            Reply::Status(503),
            Reply::Status(503),
            Reply::Status(200),
        ])
        .await;
        let c = check(b.addr, spec());
        let mut conn = Conn::new(10);
        assert_eq!(
            probes(&c, &mut conn, &b, 5).await,
            [(Pass, 1), (Status, 1), (Status, 2), (Pass, 3), (Pass, 3)]
        );
    }

    #[tokio::test]
    async fn a_backend_that_stops_accepting_fails_from_the_fresh_connection_probe_on() {
        let b = Backend::start(&[]).await;
        let c = check(b.addr, spec());
        let mut conn = Conn::new(3);
        assert_eq!(probes(&c, &mut conn, &b, 1).await, [(Pass, 1)]);
        // The listener goes; the connection the agent keeps still answers.
        let addr = b.addr;
        b.stop_accepting().await;
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(c.run(&mut conn, None).await);
        }
        let refused = Outcome {
            class: Refused,
            detail: "connect: connection refused".into(),
        };
        let ok = Outcome::from_status(200, &spec());
        // Probe 4 is due a fresh connection, and every one after a failure
        // connects again: failures in a row, as `fall` counts them.
        assert_eq!(
            seen,
            [ok.clone(), ok, refused.clone(), refused.clone(), refused],
            "{addr}"
        );
        assert_eq!(conn.opened(), 1);
    }
}
