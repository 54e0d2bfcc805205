//! One probe of one backend: a TCP connect, or an HTTP request on a fresh
//! connection, bounded by the check's timeout, and what it means.
//!
//! Why hyper's connection-level client over reqwest: every probe opens its
//! own connection anyway (like HAProxy; a kept-alive connection would hide a
//! backend that stopped accepting), so a pool buys nothing, and owning the
//! socket lets us bind the probe source address, tell a refused connect from
//! a timeout or a bad answer in the detail the operator reads, and close
//! with a reset (`SO_LINGER` 0, as HAProxy does for checks) so a thousand
//! probes a second leave no `TIME_WAIT` sockets behind on the agent.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tandem_core::health::BackendKey;
use tandem_core::{HealthCheckKind, HealthCheckSpec};
use tokio::net::{TcpSocket, TcpStream};

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
    /// A DNS name, resolved at every probe (addresses move).
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

    /// Probes once. Never takes longer than the check's timeout.
    pub async fn run(&self, source: Option<IpAddr>) -> Outcome {
        match tokio::time::timeout(self.timeout, self.attempt(source)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::timeout(self.spec.timeout_ms),
        }
    }

    async fn attempt(&self, source: Option<IpAddr>) -> Outcome {
        let stream = match self.connect(source).await {
            Ok(s) => s,
            Err(outcome) => return outcome,
        };
        match self.spec.kind {
            HealthCheckKind::Tcp => Outcome::tcp_connected(),
            HealthCheckKind::Http => self.http(stream).await,
        }
    }

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

    async fn http(&self, stream: TcpStream) -> Outcome {
        let (mut sender, conn) =
            match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
            {
                Ok(parts) => parts,
                Err(e) => return Outcome::http_error(&e),
            };
        let req = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone())
            .header(HOST, self.host.clone())
            .header(CONNECTION, HeaderValue::from_static("close"))
            .header(USER_AGENT, HeaderValue::from_static(AGENT))
            .body(Empty::<Bytes>::new());
        let req = match req {
            Ok(r) => r,
            Err(e) => return Outcome::other("request", e),
        };
        // Drive the connection in this task rather than spawning it: the
        // probe only needs the status line, and dropping both ends the
        // connection (with a reset, see `connect`).
        let response = sender.send_request(req);
        tokio::pin!(conn);
        tokio::pin!(response);
        let answer = tokio::select! {
            r = &mut response => r,
            c = &mut conn => match c {
                Ok(()) => response.await,
                Err(e) => Err(e),
            },
        };
        match answer {
            Ok(resp) => Outcome::from_status(resp.status().as_u16(), &self.spec),
            Err(e) => Outcome::http_error(&e),
        }
    }
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

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
    async fn http_probe_sends_method_path_host_and_close_and_reads_the_status() {
        let (addr, head) = answer_once("200 OK").await;
        let o = check(addr, spec()).run(None).await;
        assert_eq!(o, Outcome::from_status(200, &spec()));
        let head = head.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("get /healthz http/1.1\r\n"), "{head}");
        assert!(head.contains(&format!("host: {addr}\r\n")), "{head}");
        assert!(head.contains("connection: close\r\n"), "{head}");

        // A Host header from the spec wins; the method is the spec's.
        let (addr, head) = answer_once("503 Service Unavailable").await;
        let s = HealthCheckSpec {
            host: "shop.example.com".into(),
            method: "HEAD".into(),
            ..spec()
        };
        let o = check(addr, s).run(None).await;
        assert_eq!(o.class, Class::Status);
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
                .run(None)
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
        .run(None)
        .await;
        assert_eq!(o.class, Class::Ok, "{o:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_backend_times_out_at_the_check_timeout() {
        // Accepts (the kernel does, from the backlog) but never answers.
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let started = tokio::time::Instant::now();
        let o = check(l.local_addr().unwrap(), spec()).run(None).await;
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
        let o = check(addr, spec()).run(None).await;
        assert_eq!(o.class, Class::Error, "{o:?}");
        assert!(o.detail.starts_with("http: "), "{o:?}");
    }
}
