//! What a probe is: its check prepared once per target ([`Check`]: the
//! destination, the request bytes, the timeout), what it saw ([`Outcome`]),
//! and the parsing of an HTTP/1 answer. The [`crate::engine`] runs probes.
//!
//! HTTP probes reuse one kept-alive connection per backend, as Envoy's
//! health checker does by default (`reuse_connection`). A new connection per
//! probe, HAProxy's way, was most of what probing cost: three quarters of
//! the agent's CPU time went to the kernel, mostly for connect, accept and
//! the reset on close. What reuse gives up is noticing a backend that stops
//! *accepting* connections (a closed listener, a full backlog) while it
//! still answers on the one we hold; proxies notice that at once, since
//! their own connects fail, but the agent should too. So reuse is bounded: a
//! fresh connection at least every N probes (`--probe-fresh-connection-every`,
//! default 60; 1 is HAProxy's behaviour), and for every probe after a failed
//! one until one passes. Such a backend is caught within N intervals, and
//! then fails `fall` probes in a row exactly as before, each on a fresh
//! connection. A kept connection the backend closed while it was idle (its
//! keep-alive timeout, a restart) is not a failure: the engine sees it
//! closed before the next probe, or broken before any byte of the answer,
//! and asks once more on a fresh connection within the same timeout.
//!
//! The HTTP/1.1 exchange is done by the agent, on the socket, rather than
//! by hyper. A probe is the simplest exchange there is: one request, always
//! the same bytes, built once per target; one answer, of which only the
//! status line and the three headers that say how the body ends and whether
//! the connection stays open matter. With hyper's client, the per-probe work
//! around those two system calls (a `Request` and a `HeaderMap` each way,
//! the request passed to the connection over a channel, an 8 KiB read
//! buffer per connection, polled as a separate future) was most of the
//! agent's user time, and its buffers most of its memory. Owning the socket
//! also lets us bind the probe source address, decide when a connection is
//! replaced, tell a refused connect from a timeout or a bad answer in the
//! detail the operator reads, and close with a reset (`SO_LINGER` 0, as
//! HAProxy does for checks) so replaced connections leave no `TIME_WAIT`
//! sockets behind on the agent. TCP checks connect afresh every time: the
//! connect is the check.
//!
//! Answers are read by the proxy's HTTP/1 codec (`tandem_http`): heads,
//! interim answers and chunked bodies by the same rules and with the same
//! strictness as the proxy reads its backends' answers.

use std::borrow::Cow;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::{HeaderValue, Method, Uri};
use rustls::pki_types::ServerName;
use tandem_core::health::BackendKey;
use tandem_core::{HealthCheckKind, HealthCheckSpec};
use tandem_http::ResponseBody;
use tandem_http::chunked::ChunkDecoder;
use tandem_http::response;

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
    /// Borrowed for answers' statuses, which is nearly every probe: the
    /// probe path then allocates nothing for it.
    pub detail: Cow<'static, str>,
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
            detail: status_detail(status),
        }
    }

    pub fn timeout(timeout_ms: u32) -> Outcome {
        Outcome {
            class: Class::Timeout,
            detail: format!("timeout after {timeout_ms} ms").into(),
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
            detail: format!("connect: {}", io_text(e)).into(),
        }
    }

    pub(crate) fn tcp_connected() -> Outcome {
        Outcome {
            class: Class::Ok,
            detail: "TCP connect ok".into(),
        }
    }

    /// A TCP check of a TLS backend: the handshake was the check.
    pub(crate) fn tls_handshake_ok() -> Outcome {
        Outcome {
            class: Class::Ok,
            detail: "TLS handshake ok".into(),
        }
    }

    /// The TLS handshake failed: "tls: certificate signed by unknown
    /// authority" (see [`tandem_tls::client::describe`]).
    pub(crate) fn tls(what: &str) -> Outcome {
        Outcome {
            class: Class::Error,
            detail: format!("tls: {what}").into(),
        }
    }

    /// The HTTP exchange failed after the connect: "http: connection
    /// reset", "http: not an HTTP/1 status line".
    pub(crate) fn http(what: &str) -> Outcome {
        Outcome {
            class: Class::Error,
            detail: format!("http: {what}").into(),
        }
    }

    pub(crate) fn other(what: &str, e: impl std::fmt::Display) -> Outcome {
        Outcome {
            class: Class::Error,
            detail: format!("{what}: {e}").into(),
        }
    }
}

/// "HTTP 503": the detail of an answer, from a table made once for every
/// three-digit status.
fn status_detail(status: u16) -> Cow<'static, str> {
    static DETAILS: LazyLock<Vec<String>> =
        LazyLock::new(|| (0..1000).map(|s| format!("HTTP {s}")).collect());
    match DETAILS.get(usize::from(status)) {
        Some(d) => Cow::Borrowed(d.as_str()),
        None => Cow::Owned(format!("HTTP {status}")),
    }
}

/// "connection refused", not "Connection refused (os error 111)".
pub(crate) fn io_text(e: &io::Error) -> String {
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
pub(crate) enum Dest {
    /// An IP literal, parsed once.
    Ip(SocketAddr),
    /// A DNS name, resolved for every new connection (addresses move).
    Name(String),
}

/// How a target's probes speak TLS: its pool's client configuration,
/// shared by the pool's targets so that its session cache serves them all
/// (a new connection resumes rather than pays for a full handshake), and
/// the server name sent and verified.
#[derive(Debug, Clone)]
pub struct TlsClient {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

/// A target's TLS: ready, or why it cannot be (a CA bundle that does not
/// parse, a server name that is not one), which every probe then reports.
pub type ProbeTls = Result<TlsClient, Arc<str>>;

/// Everything a probe of one backend needs, prepared once per target.
#[derive(Debug, Clone)]
pub struct Check {
    /// Shared with every observation of this target.
    pub key: Arc<BackendKey>,
    pub spec: HealthCheckSpec,
    pub(crate) dest: Dest,
    /// Set when the probe speaks TLS: an HTTP check's request goes inside
    /// it, a TCP check is the handshake.
    pub(crate) tls: Option<ProbeTls>,
    /// The HTTP request, the same bytes for every probe.
    pub(crate) request: Box<[u8]>,
    /// A `HEAD` request: its answer has no body, whatever its headers say.
    pub(crate) head_request: bool,
    pub(crate) timeout: Duration,
}

impl Check {
    pub fn new(key: BackendKey, spec: HealthCheckSpec, tls: Option<ProbeTls>) -> Check {
        // The pool's check may target another port of the backend's host.
        let target = spec.target_address(&key.address);
        let address = target.as_str();
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
        let request = request_bytes(&method, &uri, &host);
        let timeout = Duration::from_millis(spec.timeout_ms.max(1).into());
        Check {
            key: Arc::new(key),
            spec,
            dest,
            tls,
            request,
            head_request: method == Method::HEAD,
            timeout,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.spec.interval_ms.max(1).into())
    }

    pub fn kind(&self) -> HealthCheckKind {
        self.spec.kind
    }
}

/// The probe request. No `Connection: close`, even on a connection's last
/// probe: the agent resets the connection it replaces, which spares the
/// backend a close handshake, and leaves the rule of when to replace it in
/// one place (the engine). A `POST` says its body is empty, as a user
/// agent should for a method whose body means something.
fn request_bytes(method: &Method, uri: &Uri, host: &HeaderValue) -> Box<[u8]> {
    let mut r = Vec::with_capacity(128);
    r.extend_from_slice(format!("{method} {uri} HTTP/1.1\r\nhost: ").as_bytes());
    r.extend_from_slice(host.as_bytes());
    r.extend_from_slice(format!("\r\nuser-agent: {AGENT}\r\n").as_bytes());
    if method == Method::POST {
        r.extend_from_slice(b"content-length: 0\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r.into_boxed_slice()
}

// === Parsing answers ===

/// The most of an answer's body read so that its connection can be kept;
/// past it the connection is dropped instead.
const MAX_DRAIN: usize = 64 * 1024;

/// The most of an answer's head (status line and headers, after any 1xx
/// answers) read before giving up on it.
const MAX_HEAD: usize = 16 * 1024;

/// The most header fields in an answer's head.
const MAX_HEADERS: usize = 256;

/// How an answer's body ends (RFC 9112, section 6.3): the codec's, shared
/// with the proxy, so probes read answers exactly as the proxy does.
pub(crate) type Body = ResponseBody;

/// Where the body that `read` starts ends: `Ok(Some(n))` once all `n`
/// bytes of it are in, `Ok(None)` while more is to come, an error when the
/// connection cannot be kept for it (no known end, malformed, or longer
/// than [`MAX_DRAIN`]).
pub(crate) fn body_end(body: Body, read: &[u8]) -> Result<Option<usize>, ()> {
    match body {
        Body::Empty => Ok(Some(0)),
        Body::Length(n) if n > MAX_DRAIN as u64 => Err(()),
        Body::Length(n) => Ok((read.len() as u64 >= n).then_some(n as usize)),
        Body::Chunked => chunked_end(read),
        Body::UntilClose => Err(()),
    }
}

/// The parts of an answer's head a probe uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) body: Body,
    /// The connection may carry the next probe after this answer.
    pub(crate) keep_alive: bool,
    /// Bytes of the head (and of the interim answers before it).
    pub(crate) len: usize,
}

/// Parses the answer at the start of `buf` with the codec, skipping
/// interim (1xx) answers: `Ok(None)` until the final answer's head is
/// complete, an error as soon as the bytes cannot be an HTTP/1 answer.
pub(crate) fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<Head>, &'static str> {
    match response::parse_final(buf, head_request, MAX_HEADERS) {
        Ok(Some(m)) => Ok(Some(Head {
            status: m.status.as_u16(),
            body: m.body,
            keep_alive: m.keep_alive,
            len: m.len,
        })),
        Ok(None) if buf.len() > MAX_HEAD => Err("answer head too long"),
        Ok(None) => Ok(None),
        Err(e) => Err(e.0),
    }
}

/// Where a chunked body that starts at `body[0]` ends: `Ok(None)` until
/// it is complete, an error when it is malformed or its data is longer than
/// [`MAX_DRAIN`] (then the connection is not kept; the outcome stands).
fn chunked_end(body: &[u8]) -> Result<Option<usize>, ()> {
    let mut decoder = ChunkDecoder::new();
    let (mut at, mut data) = (0, 0);
    loop {
        let step = decoder.decode(&body[at..]).map_err(drop)?;
        at += step.consumed;
        match step.data {
            Some(d) => {
                data += d.len();
                if data > MAX_DRAIN {
                    return Err(());
                }
            }
            None if decoder.is_done() => return Ok(Some(at)),
            None => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use tandem_core::{BackendAddr, PoolName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::oneshot;

    use super::*;
    use crate::engine::{Context, Engine};
    use crate::metrics::ProbeMetrics;
    use crate::report::ReportQueue;

    /// One backend in a probe engine of its own, probed only when asked,
    /// one probe at a time.
    struct Harness {
        engine: Engine,
        queue: Arc<ReportQueue>,
        key: BackendKey,
    }

    impl Harness {
        /// HTTP probes open a fresh connection at least every
        /// `fresh_every` probes.
        fn start(addr: SocketAddr, spec: HealthCheckSpec, fresh_every: u32) -> Harness {
            Harness::start_as(&addr.to_string(), spec, fresh_every, None)
        }

        /// Probes `address` (`host:port`), over TLS with these settings
        /// when given.
        fn start_as(
            address: &str,
            spec: HealthCheckSpec,
            fresh_every: u32,
            tls: Option<tandem_core::BackendTls>,
        ) -> Harness {
            let queue = Arc::new(ReportQueue::new(16));
            let engine = Engine::start(Arc::new(Context {
                origin: std::time::Instant::now(),
                source_ip: None,
                fresh_connection_every: fresh_every,
                queue: queue.clone(),
                metrics: ProbeMetrics::new(),
            }))
            .unwrap();
            let key = BackendKey {
                pool: PoolName::new("shop").unwrap(),
                address: BackendAddr::new(address).unwrap(),
            };
            // As the prober makes it.
            let tls = tls.map(|settings| {
                let config = crate::prober::pool_config(&settings)?;
                let name =
                    tandem_tls::client::server_name(settings.server_name(&key.address)).unwrap();
                Ok(TlsClient { config, name })
            });
            engine.add_unscheduled(key.clone(), spec, tls);
            Harness { engine, queue, key }
        }

        async fn probe(&self) -> Outcome {
            self.engine.probe_now(self.key.clone());
            loop {
                if let Some(o) = self.queue.drain().pop() {
                    assert_eq!(*o.key, self.key);
                    return Outcome {
                        class: o.class,
                        detail: o.detail,
                    };
                }
                self.queue.wait().await;
            }
        }

        /// Probes `n` times in a row; each outcome with the backend's
        /// accepted connections after it.
        async fn probes(&self, b: &Backend, n: usize) -> Vec<(Class, usize)> {
            let mut seen = Vec::new();
            for _ in 0..n {
                let o = self.probe().await;
                seen.push((o.class, b.accepted()));
            }
            seen
        }
    }

    /// One probe of a backend, by an engine of its own.
    async fn probe_once(addr: SocketAddr, spec: HealthCheckSpec) -> Outcome {
        Harness::start(addr, spec, 10).probe().await
    }

    fn spec() -> HealthCheckSpec {
        HealthCheckSpec {
            path: "/healthz".into(),
            interval_ms: 1_000,
            timeout_ms: 500,
            ..Default::default()
        }
    }

    /// Reads a request's head (up to the blank line, or the close).
    async fn read_request_head(s: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// A one-shot HTTP server answering `status`; hands back the request
    /// head it read.
    async fn answer_once(status_line: &'static str) -> (SocketAddr, oneshot::Receiver<String>) {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let head = read_request_head(&mut s).await;
            let _ = tx.send(head);
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
        let o = probe_once(addr, spec()).await;
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
        let o = probe_once(addr, s).await;
        assert_eq!(o.class, Class::Status, "{o:?}");
        assert_eq!(o.detail, "HTTP 503");
        let head = head.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("head /healthz http/1.1\r\n"), "{head}");
        assert!(head.contains("host: shop.example.com\r\n"), "{head}");
    }

    /// Patroni's REST API answers HTTP/1.0: the head, then the body in a
    /// write of its own, then it closes. A probe that reset the connection
    /// as soon as it had the status made it log a traceback for every
    /// probe; a short body is now read to its end first, whatever the
    /// status and though the connection is not kept.
    #[tokio::test]
    async fn a_short_body_is_read_before_a_connection_that_is_not_kept_closes() {
        for (status, healthy, length) in [
            ("200 OK", true, "content-length: 17\r\n"),
            ("503 Service Unavailable", false, "content-length: 17\r\n"),
            // Patroni's own: no length, the body ends at the close.
            ("200 OK", true, ""),
            ("503 Service Unavailable", false, ""),
        ] {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let addr = l.local_addr().unwrap();
            let (tx, body_written) = oneshot::channel();
            tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                read_request_head(&mut s).await;
                let head = format!("HTTP/1.0 {status}\r\n{length}\r\n");
                s.write_all(head.as_bytes()).await.unwrap();
                // Long enough for a probe that closes at once to have reset
                // the connection before the body goes.
                tokio::time::sleep(Duration::from_millis(150)).await;
                let r = s.write_all(b"{\"role\":\"master\"}").await;
                let _ = tx.send(r.map_err(|e| e.kind()));
                drop(s);
            });
            let o = probe_once(addr, spec()).await;
            assert_eq!(o.ok(), healthy, "{o:?}");
            assert_eq!(
                body_written.await.unwrap(),
                Ok(()),
                "the backend could write its body ({status})"
            );
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_refused_for_tcp_and_http() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        for kind in [HealthCheckKind::Http, HealthCheckKind::Tcp] {
            let o = probe_once(addr, HealthCheckSpec { kind, ..spec() }).await;
            assert_eq!(o.class, Class::Refused, "{kind:?}: {o:?}");
            assert_eq!(o.detail, "connect: connection refused");
        }
    }

    #[tokio::test]
    async fn tcp_probe_passes_on_connect() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let o = probe_once(
            l.local_addr().unwrap(),
            HealthCheckSpec {
                kind: HealthCheckKind::Tcp,
                ..spec()
            },
        )
        .await;
        assert_eq!(o.class, Class::Ok, "{o:?}");
    }

    #[tokio::test]
    async fn a_silent_backend_times_out_at_the_check_timeout() {
        // Accepts (the kernel does, from the backlog) but never answers.
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let started = std::time::Instant::now();
        let o = probe_once(l.local_addr().unwrap(), spec()).await;
        assert_eq!(o, Outcome::timeout(500));
        assert_eq!(o.class, Class::Timeout);
        // Not before the timeout; after it, give or take a busy machine.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_millis(2_000),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn not_http_is_an_error() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        });
        let o = probe_once(addr, spec()).await;
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
        /// Answers a `HEAD` request: the length of the body a `GET` would
        /// get, and no body.
        Head,
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
        loop {
            let Some(head) = tandem_testkit::read_head(&mut s, &mut buf).await else {
                return;
            };
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
                // A body that arrives later than its head: the probe must
                // wait for its end to keep the connection.
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
                Reply::Head => (
                    "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n".into(),
                    None,
                ),
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

    use Class::{Error, Ok as Pass, Refused, Status};

    #[tokio::test]
    async fn http_probes_reuse_one_kept_alive_connection() {
        let b = Backend::start(&[]).await;
        let h = Harness::start(b.addr, spec(), 10);
        assert_eq!(h.probes(&b, 3).await, [(Pass, 1), (Pass, 1), (Pass, 1)]);
        for head in b.heads.lock().unwrap().iter() {
            assert!(!head.contains("connection:"), "{head}");
        }

        // 1: a new connection for every probe.
        let b = Backend::start(&[]).await;
        let h = Harness::start(b.addr, spec(), 1);
        assert_eq!(h.probes(&b, 3).await, [(Pass, 1), (Pass, 2), (Pass, 3)]);
    }

    #[tokio::test]
    async fn a_fresh_connection_opens_every_n_probes() {
        let b = Backend::start(&[]).await;
        let h = Harness::start(b.addr, spec(), 3);
        // Probes 1, 4 and 7 connect.
        assert_eq!(
            h.probes(&b, 7).await,
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
        let h = Harness::start(b.addr, spec(), 10);
        assert_eq!(
            h.probes(&b, 6).await,
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
        let h = Harness::start(b.addr, spec(), 10);
        assert_eq!(h.probes(&b, 1).await, [(Pass, 1)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(h.probes(&b, 2).await, [(Pass, 2), (Pass, 2)]);

        // Closed as the request arrived, with no answer: asked again on a
        // fresh connection within the same probe.
        let b = Backend::start(&[Reply::Status(200), Reply::Close]).await;
        let h = Harness::start(b.addr, spec(), 10);
        assert_eq!(h.probes(&b, 3).await, [(Pass, 1), (Pass, 2), (Pass, 2)]);

        // But an answer that breaks off is a failure, not a stale
        // connection: no second try.
        let b = Backend::start(&[Reply::Status(200), Reply::Partial]).await;
        let h = Harness::start(b.addr, spec(), 10);
        assert_eq!(h.probes(&b, 1).await, [(Pass, 1)]);
        let o = h.probe().await;
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
        let h = Harness::start(b.addr, spec(), 10);
        assert_eq!(
            h.probes(&b, 5).await,
            [(Pass, 1), (Status, 1), (Status, 2), (Pass, 3), (Pass, 3)]
        );
    }

    #[tokio::test]
    async fn a_backend_that_stops_accepting_fails_from_the_fresh_connection_probe_on() {
        let b = Backend::start(&[]).await;
        let h = Harness::start(b.addr, spec(), 3);
        assert_eq!(h.probes(&b, 1).await, [(Pass, 1)]);
        // The listener goes; the connection the agent keeps still answers.
        let addr = b.addr;
        b.stop_accepting().await;
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.push(h.probe().await);
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
    }

    #[tokio::test]
    async fn a_post_says_its_body_is_empty_and_a_head_answer_has_no_body() {
        let (addr, head) = answer_once("200 OK").await;
        let s = HealthCheckSpec {
            method: "POST".into(),
            ..spec()
        };
        let o = probe_once(addr, s).await;
        assert_eq!(o.class, Pass, "{o:?}");
        let head = head.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /healthz http/1.1\r\n"), "{head}");
        assert!(head.contains("content-length: 0\r\n"), "{head}");

        // The answer to HEAD announces a length but carries no body: the
        // connection is still good for the next probe.
        let b = Backend::start(&[Reply::Head, Reply::Head, Reply::Head]).await;
        let s = HealthCheckSpec {
            method: "HEAD".into(),
            ..spec()
        };
        let h = Harness::start(b.addr, s, 10);
        assert_eq!(h.probes(&b, 3).await, [(Pass, 1), (Pass, 1), (Pass, 1)]);
    }

    // === TLS ===

    mod tls {
        use tandem_core::BackendTls;
        use tandem_testkit::certs::{KeyKind, TestCa};
        use tandem_testkit::recording::RecordingBackend;

        use super::*;

        /// A TLS backend with a certificate for `api.test` and `localhost`
        /// from `ca`, as `localhost:port`.
        async fn backend(ca: &TestCa) -> (RecordingBackend, String) {
            let issued = ca
                .issue(&["api.test", "localhost"], KeyKind::EcP256)
                .unwrap();
            let b = RecordingBackend::start_tls(&issued.chain_pem, &issued.key_pem)
                .await
                .unwrap();
            let port = b.address().rsplit_once(':').unwrap().1.to_string();
            (b, format!("localhost:{port}"))
        }

        fn verified(ca: &TestCa, sni: &str) -> BackendTls {
            BackendTls {
                ca_pem: ca.cert_pem.clone(),
                sni: sni.into(),
                insecure: false,
            }
        }

        async fn probe(address: &str, spec: HealthCheckSpec, tls: BackendTls) -> Outcome {
            Harness::start_as(address, spec, 10, Some(tls))
                .probe()
                .await
        }

        #[tokio::test]
        async fn the_right_ca_passes_on_one_kept_connection_with_the_sni_sent() {
            let ca = TestCa::new("backend CA").unwrap();
            let (b, address) = backend(&ca).await;
            let h = Harness::start_as(&address, spec(), 10, Some(verified(&ca, "api.test")));
            for _ in 0..3 {
                assert_eq!(h.probe().await, Outcome::from_status(200, &spec()));
            }
            assert_eq!(b.connections(), 1, "{:?}", b.handshake_failures());
            let seen = b.requests();
            assert_eq!(seen.len(), 3);
            for r in &seen {
                assert_eq!(r.sni.as_deref(), Some("api.test"));
                assert_eq!((r.method.as_str(), r.target.as_str()), ("GET", "/healthz"));
            }
            // No SNI configured: the backend's host is sent and verified.
            let o = probe(&address, spec(), verified(&ca, "")).await;
            assert_eq!(o, Outcome::from_status(200, &spec()));
            assert_eq!(
                b.requests().last().unwrap().sni.as_deref(),
                Some("localhost")
            );
        }

        #[tokio::test]
        async fn fresh_connections_each_shake_hands_again() {
            let ca = TestCa::new("backend CA").unwrap();
            let (b, address) = backend(&ca).await;
            let h = Harness::start_as(&address, spec(), 1, Some(verified(&ca, "api.test")));
            for _ in 0..3 {
                assert_eq!(h.probe().await.class, Pass);
            }
            assert_eq!(b.connections(), 3);
            assert_eq!(b.requests().len(), 3);
        }

        #[tokio::test]
        async fn another_ca_fails_naming_the_reason() {
            let ca = TestCa::new("backend CA").unwrap();
            let other = TestCa::new("someone else").unwrap();
            let (b, address) = backend(&ca).await;
            let o = probe(&address, spec(), verified(&other, "api.test")).await;
            assert_eq!(
                o,
                Outcome::tls("certificate signed by unknown authority"),
                "{o:?}"
            );
            // The backend heard why (the client's alert), and no request.
            assert!(b.requests().is_empty());
            // The Mozilla roots do not know a private CA either.
            let o = probe(&address, spec(), BackendTls::default()).await;
            assert_eq!(o, Outcome::tls("certificate signed by unknown authority"));
        }

        #[tokio::test]
        async fn a_name_the_certificate_does_not_hold_fails() {
            let ca = TestCa::new("backend CA").unwrap();
            let (b, address) = backend(&ca).await;
            let o = probe(&address, spec(), verified(&ca, "db.test")).await;
            assert_eq!(o.class, Class::Error, "{o:?}");
            assert_eq!(
                o.detail,
                "tls: certificate is not valid for \"db.test\" (it names api.test, localhost)"
            );
            assert!(b.requests().is_empty());
        }

        #[tokio::test]
        async fn insecure_accepts_any_certificate() {
            let ca = TestCa::new("backend CA").unwrap();
            let (_b, address) = backend(&ca).await;
            let insecure = BackendTls {
                sni: "db.test".into(),
                insecure: true,
                ..Default::default()
            };
            let o = probe(&address, spec(), insecure).await;
            assert_eq!(o, Outcome::from_status(200, &spec()));
        }

        #[tokio::test]
        async fn a_tcp_check_of_a_tls_backend_is_a_handshake() {
            let ca = TestCa::new("backend CA").unwrap();
            let other = TestCa::new("someone else").unwrap();
            let (b, address) = backend(&ca).await;
            let tcp = HealthCheckSpec {
                kind: HealthCheckKind::Tcp,
                ..spec()
            };
            let o = probe(&address, tcp.clone(), verified(&ca, "api.test")).await;
            assert_eq!(o, Outcome::tls_handshake_ok());
            let o = probe(&address, tcp, verified(&other, "api.test")).await;
            assert_eq!(o, Outcome::tls("certificate signed by unknown authority"));
            assert!(b.requests().is_empty());
        }

        #[tokio::test]
        async fn a_plain_text_port_is_not_tls() {
            // hyper, which answers a ClientHello with a 400.
            let b = RecordingBackend::start().await.unwrap();
            let o = probe(
                &b.address(),
                spec(),
                BackendTls {
                    insecure: true,
                    ..Default::default()
                },
            )
            .await;
            assert_eq!(
                o,
                Outcome::tls("the backend does not speak TLS on this port")
            );
        }

        #[tokio::test]
        async fn a_silent_tls_port_times_out_and_settings_that_give_no_tls_fail_every_probe() {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let address = l.local_addr().unwrap().to_string();
            let o = probe(&address, spec(), BackendTls::default()).await;
            assert_eq!(o, Outcome::timeout(500));
            // A CA bundle the control plane would refuse.
            let broken = BackendTls {
                ca_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
                ..Default::default()
            };
            let o = probe(&address, spec(), broken).await;
            assert_eq!(o.class, Class::Error, "{o:?}");
            assert!(
                o.detail
                    .starts_with("tls: ca_pem: certificate 1 is not a usable trust anchor"),
                "{o:?}"
            );
        }
    }

    // === Parsing answers ===

    fn parsed(answer: &str) -> Result<Option<Head>, &'static str> {
        parse_head(answer.as_bytes(), false)
    }

    #[test]
    fn an_answer_head_gives_its_status_body_and_whether_to_keep_the_connection() {
        let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let head = parsed(ok).unwrap().unwrap();
        assert_eq!(
            (head.status, head.body, head.keep_alive),
            (200, Body::Length(2), true)
        );
        assert_eq!(&ok[head.len..], "ok");
        // Every prefix is incomplete, not wrong.
        for n in 0..ok.len() - 2 {
            assert_eq!(parsed(&ok[..n]), Ok(None), "{:?}", &ok[..n]);
        }
        // Bare LF line ends; a reason phrase is optional.
        let h = parsed("HTTP/1.1 503\ncontent-length: 0\n\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.body, h.keep_alive),
            (503, Body::Length(0), true)
        );
        // Interim answers are skipped.
        let h = parsed("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.body, h.keep_alive), (204, Body::Empty, true));
        // How the body ends.
        let body = |headers: &str| {
            let h = parsed(&format!("HTTP/1.1 200 OK\r\n{headers}\r\n"))
                .unwrap()
                .unwrap();
            (h.body, h.keep_alive)
        };
        assert_eq!(
            body("transfer-encoding: Chunked\r\n"),
            (Body::Chunked, true)
        );
        // Both framings: read as chunked, and the connection not kept (the
        // proxy does the same).
        assert_eq!(
            body("transfer-encoding: chunked\r\ncontent-length: 9\r\n"),
            (Body::Chunked, false)
        );
        // Codings the codec does not implement are not an HTTP answer a
        // probe can read to its end.
        for te in ["gzip, chunked", "chunked, gzip"] {
            let answer = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {te}\r\n\r\n");
            assert!(parsed(&answer).is_err(), "{te}");
        }
        assert_eq!(body(""), (Body::UntilClose, false));
        assert_eq!(
            body("content-length: 2\r\nconnection: keep-alive, Close\r\n"),
            (Body::Length(2), false)
        );
        let h = parsed("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.keep_alive), (200, false));
        // A HEAD request's answer has no body, whatever it announces.
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!((h.body, h.keep_alive), (Body::Empty, true));
    }

    #[test]
    fn what_is_not_an_http_1_answer_is_an_error_as_soon_as_it_shows() {
        for bad in [
            "SSH",
            "SSH-2.0-OpenSSH_9.6\r\n",
            "HTTP/2 200\r\n",
            "HTTP/1.1 20\r\n",
            "HTTP/1.1 2000 OK\r\n",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        ] {
            assert!(parsed(bad).is_err(), "{bad:?}");
        }
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "y".repeat(MAX_HEAD));
        assert!(parsed(&endless).is_err());
    }

    #[test]
    fn a_chunked_body_ends_after_its_last_chunk_and_trailers() {
        let body = "2;ext=1\r\nok\r\n10\r\n0123456789abcdef\r\n0\r\ntrailer: x\r\n\r\n";
        assert_eq!(chunked_end(body.as_bytes()), Ok(Some(body.len())));
        for n in 0..body.len() {
            assert_eq!(chunked_end(&body.as_bytes()[..n]), Ok(None), "{n}");
        }
        // Lines end in CRLF, as the codec requires everywhere.
        assert_eq!(chunked_end(b"0\n\n"), Err(()));
        assert_eq!(chunked_end(b"zz\r\n"), Err(()));
        assert_eq!(chunked_end(b"2\r\nokX\r\n"), Err(()));
        let mut big = format!("{:x}\r\n", MAX_DRAIN + 1).into_bytes();
        assert_eq!(chunked_end(&big), Ok(None));
        big.resize(big.len() + MAX_DRAIN + 1, b'x');
        assert_eq!(
            chunked_end(&big),
            Err(()),
            "more data than is worth draining"
        );
    }
}
