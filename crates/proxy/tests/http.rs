//! HTTP as clients speak it: forwarding headers, hostile input, WebSocket,
//! HTTP/2, bodies, the admin port and graceful shutdown.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::wire::{masked_text_frame, websocket_upgrade};
use common::*;
use tandem_core::LbPolicy;
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::http_client;
use tandem_testkit::proxy::NO_CONTROL_PLANE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// These tests run the proxy with one worker (the single-threaded runtime);
/// the other suites use two (the multi-threaded one).
async fn proxy_with_one_backend(name: &str, env: &[(&str, String)]) -> (ProxyProcess, FakeBackend) {
    let mut env = env.to_vec();
    env.push(("TANDEM_WORKERS", "1".to_string()));
    let env = env.as_slice();
    let b = FakeBackend::start(name).await.unwrap();
    let snapshot = single_pool(
        pool_config("pool", LbPolicy::RoundRobin),
        vec![backend(&b.address())],
    );
    let p = ProxyProcess::with_snapshot_env(&snapshot, env)
        .await
        .unwrap();
    (p, b)
}

/// Writes `request` on a fresh connection and reads until the proxy closes
/// it or `wait` passes.
async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_ones_stripped() {
    let (proxy, _b) = proxy_with_one_backend("hdr", &[]).await;
    let client = http_client();
    let r = client
        .get(proxy.url("/headers"))
        .header("host", "shop.test")
        .header("x-forwarded-for", "192.0.2.9")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "hop")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-app", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h: serde_json::Value = r.json().await.unwrap();
    let one = |k: &str| h[k][0].as_str().unwrap_or_default().to_string();
    // Not a trusted proxy: its X-Forwarded-For is replaced, not appended to.
    assert_eq!(one("x-forwarded-for"), "127.0.0.1");
    assert_eq!(one("x-forwarded-proto"), "http");
    assert_eq!(one("x-forwarded-host"), "shop.test");
    assert_eq!(one("host"), "shop.test");
    assert_eq!(one("x-app"), "kept");
    assert_eq!(one("x-request-id").len(), 32, "{h}");
    assert_eq!(one("traceparent").len(), 55, "{h}");
    for gone in ["x-private", "proxy-authorization", "keep-alive"] {
        assert!(h.get(gone).is_none(), "{gone} reached the backend: {h}");
    }

    // A caller's trace and request id travel unchanged.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = client
        .get(proxy.url("/headers"))
        .header("traceparent", tp)
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    let h: serde_json::Value = r.json().await.unwrap();
    assert_eq!(h["traceparent"][0], tp);
    assert_eq!(h["x-request-id"][0], "req-42");
}

#[tokio::test]
async fn hostile_http_gets_400_class_answers_and_the_proxy_stays_up() {
    let env = [
        ("TANDEM_HEADER_TIMEOUT_MS", "1000".to_string()),
        ("TANDEM_CLIENT_STALL_TIMEOUT_MS", "1000".to_string()),
    ];
    let (proxy, b) = proxy_with_one_backend("hostile", &env).await;
    let big = "a".repeat(100_000);
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        (
            "Content-Length with Transfer-Encoding (smuggling)",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX".to_vec(),
            &[400],
        ),
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            &[400],
        ),
        (
            "a Content-Length that is not a number",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "Transfer-Encoding that does not end in chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            &[400, 501],
        ),
        ("a bad request line", b"GARBAGE\r\n\r\n".to_vec(), &[400]),
        (
            "a space in the target",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "a control character in a header",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\x01b\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "an oversized header",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").into_bytes(),
            &[431],
        ),
        (
            "too many headers",
            format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").into_bytes(),
            &[431],
        ),
        (
            "HTTP/1.1 without Host",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            &[400],
        ),
    ];
    for (what, request, allowed) in cases {
        let response = raw(proxy.addr, &request, Duration::from_secs(3)).await;
        let status = status_of(&response);
        assert!(allowed.contains(&status), "{what}: got {response:?}");
    }
    // A client that never finishes its head is cut off.
    let start = Instant::now();
    let response = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow:",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "slow client kept for {:?}",
        start.elapsed()
    );
    assert!(
        response.is_empty() || status_of(&response) == 408,
        "{response:?}"
    );

    // None of that reached the backend, and the proxy still serves.
    assert_eq!(b.requests().await.unwrap(), 0);
    let ok = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    // So is one that starts a request body and stops sending it.
    let start = Instant::now();
    let _ = raw(
        proxy.addr,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "stalled upload kept for {:?}",
        start.elapsed()
    );
    let (code, _) = proxy.admin_get("/healthz").await.unwrap();
    assert_eq!(code, 200);
}

/// Reads from `s` until `want` answers have fully arrived (their bodies by
/// Content-Length) or `wait` passes.
async fn read_answers(s: &mut TcpStream, want: usize, wait: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        while complete_answers(&out) < want {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

fn complete_answers(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes);
    let mut rest: &str = &text;
    let mut n = 0;
    while let Some(end) = rest.find("\r\n\r\n") {
        let head = &rest[..end];
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        let body_start = end + 4;
        if head.starts_with("HTTP/1.1 100") {
            rest = &rest[body_start..];
            continue;
        }
        if rest.len() < body_start + len {
            break;
        }
        rest = &rest[body_start + len..];
        n += 1;
    }
    n
}

#[tokio::test]
async fn http1_keep_alive_pipelining_continue_and_chunked_uploads() {
    let (proxy, b) = proxy_with_one_backend("h1", &[]).await;

    // Three pipelined requests in one write: three answers, in order, on
    // the same connection.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          GET /status/202 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let answers = read_answers(&mut s, 3, Duration::from_secs(5)).await;
    let statuses: Vec<&str> = answers
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answers[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["201", "200", "202"], "{answers}");
    assert!(answers.contains("\r\n\r\nhello"), "{answers}");

    // A chunked upload, with Expect: 100-continue: the proxy says
    // continue, the backend gets the whole body, the connection stays.
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut interim))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"6\r\nchunky\r\n7\r\n-upload\r\n0\r\n\r\n")
        .await
        .unwrap();
    let answer = read_answers(&mut s, 1, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nchunky-upload"), "{answer}");

    // HTTP/1.0: closed after the answer unless the client asks to keep it.
    let once = raw(
        proxy.addr,
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(once.starts_with("HTTP/1.1 200"), "{once}");
    assert!(once.contains("connection: close"), "{once}");
    let mut kept = TcpStream::connect(proxy.addr).await.unwrap();
    for _ in 0..2 {
        kept.write_all(b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answers(&mut kept, 1, Duration::from_secs(5)).await;
        assert!(answer.contains("connection: keep-alive"), "{answer}");
    }

    // CONNECT is refused by name; nothing above reached the backend twice.
    let connect = raw(
        proxy.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(status_of(&connect), 405, "{connect}");
    assert_eq!(b.requests().await.unwrap(), 7);
}

/// An answer that comes before the end of an upload reaches the client,
/// who is still sending: the proxy does not reset the connection under it.
#[tokio::test]
async fn an_answer_before_the_end_of_an_upload_reaches_the_client() {
    let (proxy, _b) = proxy_with_one_backend("early", &[]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    // The proxy answers 400 (no Host) without reading the body; the
    // client keeps sending, and must still read the answer.
    // The rest of the upload is swallowed, not met with a reset.
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    let writer = async {
        for _ in 0..15 {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    assert_eq!(sent, 15, "the upload was cut off after {sent} pieces");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&text), 400, "{text}");
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let (proxy, _b) = proxy_with_one_backend("ws", &[]).await;
    let (mut s, head) = websocket_upgrade(proxy.addr).await;
    let head = head.to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // A masked text frame "hello", echoed back unmasked.
    s.write_all(&masked_text_frame(b"hello")).await.unwrap();
    let mut echo = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"\x81\x05hello");
}

#[tokio::test]
async fn http2_clients_and_request_bodies() {
    let (proxy, _b) = proxy_with_one_backend("h2", &[]).await;
    tandem_testkit::init_crypto();
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(proxy.url("/")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "h2");
    let r = h2.get(proxy.url("/headers")).send().await.unwrap();
    let h: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        h["host"][0],
        proxy.addr.to_string(),
        "HTTP/2 :authority becomes Host"
    );

    // A large body streams through both ways, over HTTP/1.1 and HTTP/2.
    let body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    for client in [http_client(), h2] {
        assert!(echo(&client, &proxy, body.clone()).await == body);
    }
}

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_then_exits() {
    let env = [("TANDEM_DRAIN_TIMEOUT_MS", "10000".to_string())];
    let (mut proxy, _b) = proxy_with_one_backend("drain", &env).await;
    let url = proxy.url("/delay/1500");
    let in_flight = tokio::spawn(async move { http_client().get(url).send().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = proxy.process.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No longer accepting...
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "still accepting"
    );
    // ...but the request that was running completes.
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "drain");
    let status = proxy.process.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status:?}\n{}", proxy.process.logs());
}

#[tokio::test]
async fn admin_port_reports_readiness_metrics_and_the_live_table() {
    let (proxy, b) = proxy_with_one_backend("admin", &[]).await;
    assert_eq!(sequential(&proxy.url("/"), 5).await.ok(), 5);
    let (code, body) = proxy.admin_get("/healthz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = proxy.admin_get("/readyz").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("revision 1 from disk"), "{body}");

    let (_, metrics) = proxy.admin_get("/metrics").await.unwrap();
    for want in [
        "tandem_proxy_requests_total{",
        "tandem_proxy_request_duration_seconds_bucket{",
        "tandem_proxy_active_connections",
        "tandem_proxy_config_revision 1",
        "tandem_proxy_config_from_disk 1",
    ] {
        assert!(metrics.contains(want), "{want} missing from\n{metrics}");
    }
    let served = metrics
        .lines()
        .find(|l| {
            l.starts_with("tandem_proxy_requests_total{")
                && l.contains(&b.address())
                && l.contains("status=\"2xx\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(served.ends_with(" 5"), "{served}");

    let c = proxy.config().await.unwrap();
    assert_eq!(c["revision"], 1);
    assert_eq!(c["source"], "disk");
    assert_eq!(c["routes"][0]["pool"], "pool");
    let be = &c["pools"][0]["backends"][0];
    assert_eq!(be["address"], b.address());
    assert_eq!(be["admin_state"], "enabled");
    assert_eq!(be["ejected"], false);
    assert_eq!(be["in_flight"], 0);
    assert!(
        be["idle_connections"].as_u64().unwrap() >= 1,
        "keep-alive: {be}"
    );

    // A proxy with no configuration at all is alive but not ready.
    let empty = ProxyProcess::start(tempfile::tempdir().unwrap(), NO_CONTROL_PLANE, &[]).unwrap();
    tandem_testkit::wait_http_ok(&empty.admin_url("/healthz"), Duration::from_secs(10))
        .await
        .unwrap();
    let (code, body) = empty.admin_get("/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    let r = http_client().get(empty.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
}
