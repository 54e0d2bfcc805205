//! Hostile input as a class: property tests through the real proxy.
//!
//! - HTTP/1 request streams (random header sets, `Connection` lists naming
//!   any header, every `Content-Length`/`Transfer-Encoding` combination,
//!   chunk extensions, smuggled-looking bodies, pipelining) to a recording
//!   backend: the backend parses exactly the requests the proxy answered
//!   with the backend's answer, in order, with byte-identical bodies, and
//!   nothing else; what must be refused is refused and closes the
//!   connection.
//! - The same for HTTP/2 (h2c), where downgrade smuggling lives:
//!   `content-length` disagreeing with the DATA frames, connection-specific
//!   fields, CR/LF/NUL in pseudo-fields and values, uppercase names.
//! - The other direction: generated backend answers (conflicting lengths,
//!   1xx chains, bodies on HEAD/204/304, bytes past the length, early
//!   close) over pooled upstream connections shared by concurrent clients:
//!   no client ever sees bytes meant for another.
//!
//! `scripts/test.sh` runs a bounded number of cases; run longer with e.g.
//! `PROPTEST_CASES=5000 cargo nextest run -p tandem-proxy --test properties`.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::h2raw;
use common::wire::{self, Answer};
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tandem_testkit::recording::RecordingBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Cases per property: `PROPTEST_CASES`, or `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default_cases),
        // Failures print their (shrunk) case; nothing is written to the
        // source tree.
        failure_persistence: None,
        ..Config::default()
    })
}

// === HTTP/1 request streams ===

#[derive(Debug, Clone)]
enum Host {
    Normal,
    Missing,
    Twice,
    Bad(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    None,
    Length,
    LengthTwice,
    LengthList,
    LengthConflict,
    LengthBad(&'static str),
    Chunked { piece: usize, ext: bool },
    ChunkedUpper,
    ChunkedAndLength,
    GzipChunked,
    ChunkedGzip,
    ChunkedTwice,
    Gzip,
}

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    http10: bool,
    host: Host,
    absolute: bool,
    path_style: u8,
    connection: Vec<&'static str>,
    extra: Vec<(&'static str, &'static str)>,
    framing: Framing,
    body: Vec<u8>,
}

const TOKENS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "x-forwarded-for",
    "keep-alive",
    "close",
    "x-extra",
    "te",
    "trailer",
    "x-request-id",
    "traceparent",
];

const EXTRAS: &[(&str, &str)] = &[
    ("X-Extra", "1"),
    ("TE", "trailers"),
    ("Trailer", "x-t"),
    ("X_Under", "1"),
    ("Expect", "100-continue"),
    ("Keep-Alive", "timeout=5"),
    ("Upgrade", "h2c"),
    ("Proxy-Connection", "keep-alive"),
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Request-Id", "rid"),
];

const SMUGGLE: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: internal.test\r\n\r\n";

impl Req {
    fn chunked(&self) -> bool {
        matches!(
            self.framing,
            Framing::Chunked { .. }
                | Framing::ChunkedUpper
                | Framing::ChunkedAndLength
                | Framing::GzipChunked
                | Framing::ChunkedGzip
                | Framing::ChunkedTwice
                | Framing::Gzip
        )
    }

    /// What the proxy must accept (the rules of RFC 9112 §3 and §6).
    fn valid(&self) -> bool {
        let framing = match self.framing {
            Framing::None | Framing::Length | Framing::LengthTwice | Framing::LengthList => true,
            Framing::Chunked { .. } | Framing::ChunkedUpper => !self.http10,
            _ => false,
        };
        let host = match self.host {
            Host::Normal => true,
            Host::Missing => self.http10,
            Host::Twice | Host::Bad(_) => false,
        };
        framing && host
    }

    /// After its answer the connection closes.
    fn closes(&self) -> bool {
        !self.valid()
            || self.connection.contains(&"close")
            || (self.http10 && !self.connection.contains(&"keep-alive"))
    }

    /// The body the backend must receive.
    fn sent_body(&self) -> &[u8] {
        if self.framing == Framing::None {
            b""
        } else {
            &self.body
        }
    }

    fn bytes(&self, path: &str) -> Vec<u8> {
        let target = match (self.absolute, self.path_style) {
            (true, _) => format!("http://abs.test{path}"),
            (false, 1) => path.replacen("/r/", "/r/./x/../", 1),
            (false, 2) => format!("/{}", path.replace('/', "//")),
            _ => path.to_string(),
        };
        let version = if self.http10 { "1.0" } else { "1.1" };
        let mut out = format!("{} {target} HTTP/{version}\r\n", self.method);
        match &self.host {
            Host::Normal => out.push_str("Host: shop.test\r\n"),
            Host::Missing => {}
            Host::Twice => out.push_str("Host: shop.test\r\nHost: shop.test\r\n"),
            Host::Bad(h) => out.push_str(&format!("Host: {h}\r\n")),
        }
        if !self.connection.is_empty() {
            out.push_str(&format!("Connection: {}\r\n", self.connection.join(", ")));
        }
        for (n, v) in &self.extra {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        let n = self.body.len();
        let te = |v: &str| format!("Transfer-Encoding: {v}\r\n");
        match self.framing {
            Framing::None => {}
            Framing::Length => out.push_str(&format!("Content-Length: {n}\r\n")),
            Framing::LengthTwice => {
                out.push_str(&format!("Content-Length: {n}\r\nContent-Length: {n}\r\n"))
            }
            Framing::LengthList => out.push_str(&format!("Content-Length: {n}, {n}\r\n")),
            Framing::LengthConflict => out.push_str(&format!(
                "Content-Length: {n}\r\nContent-Length: {}\r\n",
                n + 1
            )),
            Framing::LengthBad(v) => out.push_str(&format!("Content-Length: {v}\r\n")),
            Framing::Chunked { .. } => out.push_str(&te("chunked")),
            Framing::ChunkedUpper => out.push_str(&te("Chunked")),
            Framing::ChunkedAndLength => {
                out.push_str(&te("chunked"));
                out.push_str(&format!("Content-Length: {n}\r\n"));
            }
            Framing::GzipChunked => out.push_str(&te("gzip, chunked")),
            Framing::ChunkedGzip => out.push_str(&te("chunked, gzip")),
            Framing::ChunkedTwice => out.push_str(&te("chunked, chunked")),
            Framing::Gzip => out.push_str(&te("gzip")),
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        match self.framing {
            Framing::None => {}
            f if self.chunked() => {
                let (piece, ext) = match f {
                    Framing::Chunked { piece, ext } => (piece, ext),
                    _ => (7, false),
                };
                for c in self.body.chunks(piece.max(1)) {
                    let ext = if ext { ";name=\"v a\";x" } else { "" };
                    bytes.extend_from_slice(format!("{:x}{ext}\r\n", c.len()).as_bytes());
                    bytes.extend_from_slice(c);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
            }
            _ => bytes.extend_from_slice(&self.body),
        }
        bytes
    }
}

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        3 => Just(Framing::None),
        3 => Just(Framing::Length),
        1 => Just(Framing::LengthTwice),
        1 => Just(Framing::LengthList),
        1 => Just(Framing::LengthConflict),
        1 => prop::sample::select(&["+5", "-1", "0x5", "5 5", "", "abc"][..]).prop_map(Framing::LengthBad),
        3 => (1usize..20, any::<bool>()).prop_map(|(piece, ext)| Framing::Chunked { piece, ext }),
        1 => Just(Framing::ChunkedUpper),
        1 => Just(Framing::ChunkedAndLength),
        1 => Just(Framing::GzipChunked),
        1 => Just(Framing::ChunkedGzip),
        1 => Just(Framing::ChunkedTwice),
        1 => Just(Framing::Gzip),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(any::<u8>(), 0..40),
        any::<bool>(),
        prop::collection::vec(prop::sample::select(&b"\r\n:GET HTTP/1.1 0"[..]), 0..20),
    )
        .prop_map(|(a, smuggle, b)| {
            let mut v = a;
            if smuggle {
                v.extend_from_slice(SMUGGLE);
            }
            v.extend(b);
            v
        })
}

fn request() -> impl Strategy<Value = Req> {
    (
        prop::sample::select(&["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"][..]),
        prop::bool::weighted(0.15),
        prop_oneof![
            8 => Just(Host::Normal),
            1 => Just(Host::Missing),
            1 => Just(Host::Twice),
            1 => prop::sample::select(&["a b", "a/b", "a:", ":80", "a@b"][..]).prop_map(Host::Bad),
        ],
        prop::bool::weighted(0.15),
        0u8..3,
        prop::collection::vec(prop::sample::select(TOKENS), 0..4),
        prop::collection::vec(prop::sample::select(EXTRAS), 0..3),
        framing(),
        body(),
    )
        .prop_map(
            |(method, http10, host, absolute, path_style, connection, extra, framing, body)| Req {
                method,
                http10,
                host,
                absolute,
                path_style,
                connection,
                extra,
                framing,
                body,
            },
        )
}

/// One client connection: requests written (pipelined, in up to three
/// writes), then a half-close; the answers read until the proxy closes.
async fn check_h1_stream(
    proxy: &ProxyProcess,
    backend: &RecordingBackend,
    case: u64,
    reqs: &[Req],
    splits: &[usize],
) -> Result<(), String> {
    backend.clear();
    let mut stream = Vec::new();
    for (j, r) in reqs.iter().enumerate() {
        stream.extend_from_slice(&r.bytes(&format!("/r/{case}/{j}")));
    }
    let mut s = TcpStream::connect(proxy.addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut at = 0;
    for &cut in splits {
        let cut = cut.min(stream.len());
        if cut > at {
            s.write_all(&stream[at..cut])
                .await
                .map_err(|e| e.to_string())?;
            at = cut;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // The proxy may close (after a refusal) before the rest is written.
    let _ = s.write_all(&stream[at..]).await;
    let _ = s.shutdown().await;
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut bytes)).await;
    let answers = wire::answers(&bytes, &[]);
    let log = backend.requests();
    let seen = String::from_utf8_lossy(&bytes);

    let mut recorded_answers = 0;
    for (j, r) in reqs.iter().enumerate() {
        let Some(a) = answers.get(j) else {
            return Err(format!(
                "request {j} ({r:?}) got no answer; the stream read:\n{seen}"
            ));
        };
        if r.valid() {
            check_recorded(a, &log, r, &format!("/r/{case}/{j}"))
                .map_err(|e| format!("request {j} ({r:?}): {e}\n{seen}"))?;
            recorded_answers += 1;
        } else if a.recorded() || !(400..=501).contains(&a.status) {
            return Err(format!("request {j} ({r:?}) must be refused; got {a:?}"));
        }
        if r.closes() {
            if answers.len() != j + 1 {
                return Err(format!(
                    "the connection went on after request {j} ({r:?}):\n{seen}"
                ));
            }
            break;
        }
    }
    if log.len() != recorded_answers {
        return Err(format!(
            "the backend parsed {} requests but the client got {recorded_answers} of its answers: {log:#?}",
            log.len()
        ));
    }
    Ok(())
}

fn check_recorded(
    a: &Answer,
    log: &[tandem_testkit::recording::Recorded],
    r: &Req,
    path: &str,
) -> Result<(), String> {
    let n: usize = a
        .header("x-recorded")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("not the backend's answer: {a:?}"))?;
    let got = log
        .get(n - 1)
        .ok_or("answer names a request the log lacks")?;
    if got.method != r.method || got.target != path {
        return Err(format!("the backend parsed {} {}", got.method, got.target));
    }
    if got.body != r.sent_body() {
        return Err(format!(
            "body {:?}, sent {:?}",
            String::from_utf8_lossy(&got.body),
            String::from_utf8_lossy(r.sent_body())
        ));
    }
    let expected_host = if r.absolute {
        "abs.test"
    } else if matches!(r.host, Host::Missing) {
        ""
    } else {
        "shop.test"
    };
    if !expected_host.is_empty() && got.all("host") != [expected_host] {
        return Err(format!("host {:?}", got.all("host")));
    }
    for framing in ["content-length", "transfer-encoding"] {
        if got.all(framing).len() > 1 {
            return Err(format!("{framing} twice: {:?}", got.headers));
        }
    }
    if got.all("x-forwarded-for") != ["127.0.0.1"] {
        return Err(format!("x-forwarded-for {:?}", got.all("x-forwarded-for")));
    }
    Ok(())
}

#[test]
fn http1_request_streams_reach_the_backend_exactly_as_answered() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (proxy, backend) = rt.block_on(recorded_proxy(&[], |_| {}));
    let strategy = (
        prop::collection::vec(request(), 1..5),
        prop::collection::vec(0usize..400, 0..3),
    );
    let counter = AtomicU64::new(0);
    let result = runner(256).run(&strategy, |(reqs, mut splits)| {
        splits.sort_unstable();
        let case = counter.fetch_add(1, Ordering::SeqCst);
        rt.block_on(check_h1_stream(&proxy, &backend, case, &reqs, &splits))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}\n--- proxy log ---\n{}", proxy.process.logs());
    }
}

// === HTTP/2 request streams ===

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cl {
    None,
    Exact,
    Short,
    Long,
    TwoValues,
}

#[derive(Debug, Clone)]
struct H2Req {
    method: &'static str,
    /// Inserted into the path or the authority (invalid unless empty).
    path_junk: &'static str,
    authority_junk: &'static str,
    extra: Vec<(&'static str, &'static str)>,
    cl: Cl,
    body: Vec<u8>,
    frames: usize,
}

/// (name, value, allowed in HTTP/2)
const H2_EXTRAS: &[(&str, &str, bool)] = &[
    ("x-a", "1", true),
    ("te", "trailers", true),
    ("x_under", "1", true),
    ("host", "other.test", true),
    ("transfer-encoding", "chunked", false),
    ("connection", "close", false),
    ("keep-alive", "timeout=5", false),
    ("upgrade", "h2c", false),
    ("proxy-connection", "x", false),
    ("te", "gzip", false),
    ("X-Upper", "1", false),
    (
        "x-crlf",
        "a\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1",
        false,
    ),
    ("x-lf", "a\nb", false),
    ("x-nul", "a\0b", false),
];

impl H2Req {
    fn valid(&self) -> bool {
        // (A short length of an empty body is the exact one.)
        let cl_ok = match self.cl {
            Cl::None | Cl::Exact => true,
            Cl::Short => self.body.is_empty(),
            Cl::Long | Cl::TwoValues => false,
        };
        // Two Host fields are refused, as in HTTP/1.
        let hosts = self.extra.iter().filter(|(n, _)| *n == "host").count();
        self.path_junk.is_empty()
            && self.authority_junk.is_empty()
            && cl_ok
            && hosts < 2
            && self
                .extra
                .iter()
                .all(|(n, v)| H2_EXTRAS.iter().any(|(a, b, ok)| a == n && b == v && *ok))
    }

    fn stream(&self, path: &str) -> h2raw::Stream {
        let path = format!("{path}{}", self.path_junk);
        let authority = format!("shop.test{}", self.authority_junk);
        let mut fields = h2raw::request(self.method, &authority, path.as_bytes());
        for (n, v) in &self.extra {
            fields.push((n.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
        let n = self.body.len();
        let cl = match self.cl {
            Cl::None => vec![],
            Cl::Exact => vec![n.to_string()],
            Cl::Short => vec![n.saturating_sub(1).to_string()],
            Cl::Long => vec![(n + 1).to_string()],
            Cl::TwoValues => vec![n.to_string(), (n + 1).to_string()],
        };
        for v in cl {
            fields.push((b"content-length".to_vec(), v.into_bytes()));
        }
        let data = if self.body.is_empty() {
            vec![]
        } else {
            self.body
                .chunks(self.body.len().div_ceil(self.frames.max(1)))
                .map(<[u8]>::to_vec)
                .collect()
        };
        h2raw::Stream { fields, data }
    }
}

fn h2_request() -> impl Strategy<Value = H2Req> {
    (
        prop::sample::select(&["GET", "POST", "PUT"][..]),
        prop_oneof![6 => Just(""), 1 => prop::sample::select(&["\r\nx: y", " HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled", "\0", "\n"][..])],
        prop_oneof![6 => Just(""), 1 => prop::sample::select(&["\r\nx", "/a", " b", "@evil"][..])],
        prop::collection::vec(
            prop::sample::select(H2_EXTRAS).prop_map(|(n, v, _)| (n, v)),
            0..3,
        ),
        prop_oneof![
            3 => Just(Cl::None),
            3 => Just(Cl::Exact),
            1 => Just(Cl::Short),
            1 => Just(Cl::Long),
            1 => Just(Cl::TwoValues),
        ],
        body(),
        1usize..4,
    )
        .prop_map(|(method, path_junk, authority_junk, extra, cl, body, frames)| H2Req {
            method,
            path_junk,
            authority_junk,
            extra,
            cl,
            body,
            frames,
        })
}

/// Every stream sent so far, by target, and how much of the backend's log
/// has been checked: a stream on a connection that another stream's
/// protocol error tore down may still reach the backend after its case
/// ended (hyper runs each stream's request on a task of its own), so each
/// log entry is checked against every stream ever sent.
#[derive(Default)]
struct H2Seen {
    sent: std::collections::HashMap<String, H2Req>,
    checked: usize,
}

async fn check_h2_streams(
    proxy: &ProxyProcess,
    backend: &RecordingBackend,
    case: u64,
    reqs: &[H2Req],
    seen: &std::sync::Mutex<H2Seen>,
) -> Result<(), String> {
    let paths: Vec<String> = (0..reqs.len()).map(|i| format!("/h2/{case}/{i}")).collect();
    {
        let mut seen = seen.lock().unwrap();
        for (p, r) in paths.iter().zip(reqs) {
            seen.sent.insert(p.clone(), r.clone());
        }
    }
    let streams: Vec<h2raw::Stream> = reqs.iter().zip(&paths).map(|(r, p)| r.stream(p)).collect();
    let (out, goaway) = h2raw::exchange(proxy.addr, &streams, Duration::from_secs(10)).await;
    let log = backend.requests();
    let mut seen = seen.lock().unwrap();
    for got in &log[seen.checked..] {
        let Some(r) = seen.sent.get(&got.target) else {
            return Err(format!("the backend parsed a request nobody sent: {got:?}"));
        };
        if !r.valid() {
            return Err(format!(
                "{} ({r:?}) must be refused, the backend got {got:?}",
                got.target
            ));
        }
        if got.method != r.method || got.body != r.body {
            return Err(format!("{} ({r:?}) arrived as {got:?}", got.target));
        }
        if got.all("content-length").len() > 1 || got.header("connection").is_some() {
            return Err(format!("framing or hop-by-hop fields leaked: {got:?}"));
        }
    }
    seen.checked = log.len();
    let targets: std::collections::HashSet<_> = log.iter().map(|g| &g.target).collect();
    if targets.len() != log.len() {
        return Err(format!("a stream reached the backend twice: {log:#?}"));
    }
    for (i, (r, o)) in reqs.iter().zip(&out).enumerate() {
        let answered_by_backend = o.body == format!("{} {}", r.method, paths[i]).into_bytes();
        if answered_by_backend && !targets.contains(&paths[i]) {
            return Err(format!(
                "stream {i} was answered for the backend but not parsed by it"
            ));
        }
        if r.valid() && !goaway && !answered_by_backend {
            return Err(format!("stream {i} ({r:?}) is valid but got {o:?}"));
        }
    }
    Ok(())
}

#[test]
fn http2_request_streams_reach_the_backend_exactly_as_answered() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (proxy, backend) = rt.block_on(recorded_proxy(&[], |_| {}));
    let counter = AtomicU64::new(0);
    let seen = std::sync::Mutex::new(H2Seen::default());
    let result = runner(256).run(&prop::collection::vec(h2_request(), 1..5), |reqs| {
        let case = counter.fetch_add(1, Ordering::SeqCst);
        rt.block_on(check_h2_streams(&proxy, &backend, case, &reqs, &seen))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}\n--- proxy log ---\n{}", proxy.process.logs());
    }
}

// === generated backend answers over pooled connections ===

/// How the scripted backend answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    Chunked,
    Interim,
    BothLengths,
    ConflictingLengths,
    HeadWithBody,
    NoContentWithBody,
    NotModifiedWithBody,
    LongerThanLength,
    TwoAnswers,
    EarlyClose,
    UntilClose,
    Garbage,
    GzipCoding,
}

const KINDS: &[Kind] = &[
    Kind::Plain,
    Kind::Chunked,
    Kind::Interim,
    Kind::BothLengths,
    Kind::ConflictingLengths,
    Kind::HeadWithBody,
    Kind::NoContentWithBody,
    Kind::NotModifiedWithBody,
    Kind::LongerThanLength,
    Kind::TwoAnswers,
    Kind::EarlyClose,
    Kind::UntilClose,
    Kind::Garbage,
    Kind::GzipCoding,
];

impl Kind {
    /// The answer's bytes for a request carrying `m`, and whether the
    /// backend closes the connection after writing them.
    fn answer(self, m: &str) -> (Vec<u8>, bool) {
        let body = m.repeat(3);
        let n = body.len();
        let plain = format!("HTTP/1.1 200 OK\r\nX-M: {m}\r\nContent-Length: {n}\r\n\r\n{body}");
        let s = match self {
            Kind::Plain => plain,
            Kind::Chunked => format!(
                "HTTP/1.1 200 OK\r\nX-M: {m}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{m}\r\n{:x};e=1\r\n{}\r\n0\r\nX-T: {m}\r\n\r\n",
                m.len(),
                2 * m.len(),
                m.repeat(2)
            ),
            Kind::Interim => format!(
                "HTTP/1.1 100 Continue\r\nX-M: {m}\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: <{m}>\r\n\r\n{plain}"
            ),
            Kind::BothLengths => format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{n:x}\r\n{body}\r\n0\r\n\r\n"
            ),
            Kind::ConflictingLengths => {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nContent-Length: {}\r\n\r\n{body}",
                    n + 1
                )
            }
            Kind::HeadWithBody => plain,
            Kind::NoContentWithBody => format!("HTTP/1.1 204 No Content\r\nX-M: {m}\r\n\r\n{body}"),
            Kind::NotModifiedWithBody => {
                format!("HTTP/1.1 304 Not Modified\r\nContent-Length: {n}\r\n\r\n{body}")
            }
            Kind::LongerThanLength => format!("{plain}{m}{m}"),
            Kind::TwoAnswers => format!(
                "{plain}HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{m}",
                m.len()
            ),
            Kind::EarlyClose => {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{m}", n + 100)
            }
            Kind::UntilClose => format!("HTTP/1.1 200 OK\r\nX-M: {m}\r\n\r\n{body}"),
            Kind::Garbage => format!("NOT HTTP {m}\r\n\r\n"),
            Kind::GzipCoding => format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n{body}"),
        };
        let closes = matches!(self, Kind::EarlyClose | Kind::UntilClose);
        (s.into_bytes(), closes)
    }
}

/// A backend that answers `/<kind index>/<marker>` with that kind of
/// answer, on as many connections as the proxy opens.
async fn scripted_backend() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(head) = tandem_testkit::read_head(&mut s, &mut buf).await else {
                        return;
                    };
                    let head = String::from_utf8_lossy(&head);
                    let target = head.split(' ').nth(1).unwrap_or("/");
                    let mut parts = target.trim_start_matches('/').split('/');
                    let kind = parts.next().and_then(|k| k.parse::<usize>().ok());
                    let marker = parts.next().unwrap_or("");
                    let Some(kind) = kind.and_then(|k| KINDS.get(k)) else {
                        return;
                    };
                    let (bytes, closes) = kind.answer(marker);
                    if s.write_all(&bytes).await.is_err() || closes {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Every marker (`M<digits>-<digits>-<digits>Z`) in `bytes`.
fn markers(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    for (i, _) in text.match_indices('M') {
        let rest = &text[i + 1..];
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(rest.len());
        if rest[len..].starts_with('Z') && len > 0 {
            out.push(format!("M{}Z", &rest[..len]));
        }
    }
    out
}

async fn check_answers(
    proxy: &ProxyProcess,
    case: u64,
    plans: &[Vec<usize>],
) -> Result<(), String> {
    let mut clients = Vec::new();
    for (c, plan) in plans.iter().enumerate() {
        let url = proxy.url("");
        let plan = plan.clone();
        clients.push(tokio::spawn(async move {
            let client = tandem_testkit::http_client();
            for (n, &k) in plan.iter().enumerate() {
                let kind = KINDS[k];
                let m = format!("M{case}-{c}-{n}Z");
                let url = format!("{url}/{k}/{m}");
                let req = if kind == Kind::HeadWithBody {
                    client.head(&url)
                } else {
                    client.get(&url)
                };
                let r = match req.send().await {
                    Ok(r) => r,
                    Err(_) if kind == Kind::EarlyClose => continue,
                    Err(e) => return Err(format!("{m} ({kind:?}): {e:?}")),
                };
                let status = r.status().as_u16();
                let mut seen = Vec::new();
                for (name, value) in r.headers() {
                    seen.extend_from_slice(name.as_str().as_bytes());
                    seen.extend_from_slice(value.as_bytes());
                }
                let read = r.bytes().await;
                let whole = read.is_ok();
                let body = read.map(|b| b.to_vec()).unwrap_or_default();
                seen.extend_from_slice(&body);
                for found in markers(&seen) {
                    if found != m {
                        return Err(format!(
                            "client {c} asked {m} ({kind:?}) and saw {found}: {:?}",
                            String::from_utf8_lossy(&seen)
                        ));
                    }
                }
                let expect = |ok: bool, what: &str| {
                    if ok {
                        Ok(())
                    } else {
                        Err(format!(
                            "{m} ({kind:?}): {what}, got {status} {:?}",
                            String::from_utf8_lossy(&body)
                        ))
                    }
                };
                match kind {
                    Kind::Plain
                    | Kind::Chunked
                    | Kind::Interim
                    | Kind::BothLengths
                    | Kind::LongerThanLength
                    | Kind::TwoAnswers
                    | Kind::UntilClose => expect(
                        status == 200 && whole && body == m.repeat(3).into_bytes(),
                        "the whole answer",
                    )?,
                    Kind::ConflictingLengths | Kind::Garbage | Kind::GzipCoding => {
                        expect(status == 502, "502")?
                    }
                    Kind::HeadWithBody => {
                        expect(status == 200 && body.is_empty(), "200 without a body")?
                    }
                    Kind::NoContentWithBody => {
                        expect(status == 204 && body.is_empty(), "204 without a body")?
                    }
                    Kind::NotModifiedWithBody => {
                        expect(status == 304 && body.is_empty(), "304 without a body")?
                    }
                    Kind::EarlyClose => {}
                }
            }
            Ok(())
        }));
    }
    for c in clients {
        c.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

#[test]
fn backend_answers_over_pooled_connections_never_reach_another_client() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let proxy = rt.block_on(async {
        let addr = scripted_backend().await;
        let mut config = pool_config("pool", tandem_core::LbPolicy::RoundRobin);
        config.outlier.consecutive_failures = 0;
        // No retries: each request meets exactly the answer it asked for.
        config.retry.attempts = 0;
        let snapshot = single_pool(config, vec![backend(&addr.to_string())]);
        // Few idle connections, so concurrent clients share them.
        ProxyProcess::with_snapshot_env(&snapshot, &[("TANDEM_UPSTREAM_MAX_IDLE", "2".to_string())])
            .await
            .unwrap()
    });
    let counter = AtomicU64::new(0);
    let plans = prop::collection::vec(prop::collection::vec(0..KINDS.len(), 1..8), 2..5);
    let result = runner(48).run(&plans, |plans| {
        let case = counter.fetch_add(1, Ordering::SeqCst);
        rt.block_on(check_answers(&proxy, case, &plans))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}\n--- proxy log ---\n{}", proxy.process.logs());
    }
}
