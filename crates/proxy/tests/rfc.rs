//! RFC 9112 / 9110 behaviour, one rule at a time: raw bytes from a client,
//! judged by what a recording backend (hyper's parser, not the proxy's)
//! received — not only by the status the client got.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::h2raw;
use common::wire::{self, Answer, masked_text_frame, talk, websocket_upgrade};
use common::*;
use tandem_core::LbPolicy;
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::recording::RecordingBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn statuses(answers: &[Answer]) -> Vec<u16> {
    answers.iter().map(|a| a.status).collect()
}

/// The attack, and the same with every framing field named in
/// `Connection`: the backend must see one request whose body is the
/// would-be smuggled one.
#[tokio::test]
async fn connection_can_never_strip_the_framing_so_nothing_is_smuggled() {
    let (proxy, b) = recorded_proxy(&[], |_| {}).await;
    let smuggled =
        "GET /smuggled HTTP/1.1\r\nHost: internal.test\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    let chunked_smuggled = format!("{:x}\r\n{smuggled}\r\n0\r\n\r\n", smuggled.len());
    for (connection, framing, body) in [
        (
            "content-length",
            format!("Content-Length: {}", smuggled.len()),
            smuggled.to_string(),
        ),
        (
            "Content-Length, Host",
            format!("Content-Length: {}", smuggled.len()),
            smuggled.to_string(),
        ),
        (
            "transfer-encoding",
            "Transfer-Encoding: chunked".to_string(),
            chunked_smuggled.clone(),
        ),
        (
            "keep-alive, Transfer-Encoding, host, x-forwarded-for",
            "Transfer-Encoding: chunked".to_string(),
            chunked_smuggled.clone(),
        ),
    ] {
        b.clear();
        let request = format!(
            "POST / HTTP/1.1\r\nHost: shop.test\r\nConnection: {connection}\r\n{framing}\r\n\r\n{body}"
        );
        let answers = talk(proxy.addr, request.as_bytes()).await;
        assert_eq!(statuses(&answers), [200], "{connection}: {answers:?}");
        let got = b.requests();
        assert_eq!(got.len(), 1, "{connection}: the backend parsed {got:#?}");
        let r = &got[0];
        assert_eq!((r.method.as_str(), r.target.as_str()), ("POST", "/"));
        assert_eq!(r.body, smuggled.as_bytes(), "{connection}: the body, whole");
        assert_eq!(r.header("host"), Some("shop.test"));
        assert_eq!(r.all("x-forwarded-for"), ["127.0.0.1"]);
    }
    // The pooled upstream connection serves the next client cleanly.
    let answers = talk(
        proxy.addr,
        b"GET /victim HTTP/1.1\r\nHost: shop.test\r\n\r\n",
    )
    .await;
    assert_eq!(answers[0].text(), "GET /victim");
    assert!(b.requests().iter().all(|r| !r.target.contains("smuggled")));
}

#[tokio::test]
async fn absolute_form_targets_name_the_host_and_bad_hosts_are_refused() {
    let a = RecordingBackend::start().await.unwrap();
    let other = RecordingBackend::start().await.unwrap();
    let snapshot = SnapshotBuilder::new()
        .pool(
            pool_config("a", LbPolicy::RoundRobin),
            vec![backend(&a.address())],
        )
        .pool(
            pool_config("other", LbPolicy::RoundRobin),
            vec![backend(&other.address())],
        )
        .route("a.test", "/", "a")
        .route("*", "/", "other")
        .build();
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();

    // The authority of an absolute-form target replaces Host (RFC 9112
    // §3.2.2): routed by it, sent on in origin form with it as Host.
    let answers = talk(
        proxy.addr,
        b"GET http://a.test/x?y=1 HTTP/1.1\r\nHost: b.test\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&answers), [200]);
    let got = a.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].target, "/x?y=1");
    assert_eq!(got[0].all("host"), ["a.test"]);
    assert_eq!(got[0].all("x-forwarded-host"), ["a.test"]);

    for (request, why) in [
        (
            "GET http://user:pw@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "userinfo in the request target",
        ),
        (
            "GET ftp://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "only http and https targets are served",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a test\r\n\r\n",
            "invalid character in the host",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a.test/x\r\n\r\n",
            "invalid character in the host",
        ),
        ("GET / HTTP/1.1\r\nHost: a.test:\r\n\r\n", "empty port"),
        (
            "GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
            "more than one Host header",
        ),
        ("GET / HTTP/1.1\r\n\r\n", "missing Host header"),
    ] {
        let answers = talk(proxy.addr, request.as_bytes()).await;
        assert_eq!(statuses(&answers), [400], "{request:?}");
        assert!(
            answers[0].text().contains(why),
            "{request:?}: {}",
            answers[0].text()
        );
    }
    assert_eq!(a.requests().len(), 1, "nothing refused reached a backend");
    assert!(other.requests().is_empty());
}

#[tokio::test]
async fn transfer_codings_and_lengths_the_proxy_cannot_honour_are_refused() {
    let (proxy, b) = recorded_proxy(&[], |_| {}).await;
    for (fields, status) in [
        ("Transfer-Encoding: gzip, chunked", 501),
        ("Transfer-Encoding: chunked\r\nContent-Length: 5", 400),
        ("Transfer-Encoding: gzip", 400),
        ("Transfer-Encoding: chunked, chunked", 400),
        ("Content-Length: 5\r\nContent-Length: 6", 400),
        ("Content-Length: 5, 6", 400),
        ("Content-Length: +5", 400),
    ] {
        let request =
            format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        let answers = talk(proxy.addr, request.as_bytes()).await;
        assert_eq!(statuses(&answers), [status], "{fields:?}: {answers:?}");
        assert_eq!(answers[0].header("connection"), Some("close"), "{fields:?}");
    }
    assert!(b.requests().is_empty(), "{:?}", b.requests());

    // Identical lengths collapse into the one the proxy writes.
    for fields in [
        "Content-Length: 5\r\nContent-Length: 5",
        "Content-Length: 5, 5",
    ] {
        b.clear();
        let request = format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n\r\nhello");
        assert_eq!(statuses(&talk(proxy.addr, request.as_bytes()).await), [200]);
        let got = b.requests();
        assert_eq!(got[0].all("content-length"), ["5"], "{fields:?}");
        assert_eq!(got[0].body, b"hello");
    }
    // A chunked body with extensions and trailers is re-chunked by the
    // proxy: neither reaches the backend, the data does.
    b.clear();
    let request = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;name=\"v\"\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n";
    assert_eq!(statuses(&talk(proxy.addr, request).await), [200]);
    let got = b.requests();
    assert_eq!(got[0].body, b"abcde");
    assert_eq!(got[0].all("transfer-encoding"), ["chunked"]);
    assert!(got[0].header("x-trailer").is_none());
    // A broken chunk mid-body: 400, and the backend never parses a request.
    b.clear();
    let request =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n";
    assert_eq!(statuses(&talk(proxy.addr, request).await), [400]);
    assert!(b.requests().is_empty());
}

#[tokio::test]
async fn paths_are_normalised_before_routing_and_sent_as_routed() {
    let api = RecordingBackend::start().await.unwrap();
    let rest = RecordingBackend::start().await.unwrap();
    let snapshot = SnapshotBuilder::new()
        .pool(
            pool_config("api", LbPolicy::RoundRobin),
            vec![backend(&api.address())],
        )
        .pool(
            pool_config("rest", LbPolicy::RoundRobin),
            vec![backend(&rest.address())],
        )
        .route("*", "/api", "api")
        .route("*", "/", "rest")
        .build();
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();
    for (path, to_api, sent) in [
        ("/api/../secret", false, "/secret"),
        ("/api/%2e%2e/secret", false, "/secret"),
        ("/api/.%2E/secret?x=/../y", false, "/secret?x=/../y"),
        ("//api//users/./1", true, "/api/users/1"),
        ("/api/v1/../v2", true, "/api/v2"),
        ("/%61pi/x", true, "/api/x"),
    ] {
        api.clear();
        rest.clear();
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            statuses(&talk(proxy.addr, request.as_bytes()).await),
            [200],
            "{path}"
        );
        let (hit, missed) = if to_api { (&api, &rest) } else { (&rest, &api) };
        let got = hit.requests();
        assert_eq!(got.len(), 1, "{path}");
        assert_eq!(got[0].target, sent, "{path}");
        assert!(
            missed.requests().is_empty(),
            "{path} reached the wrong pool"
        );
    }
    // An encoded slash could become a separator behind the proxy: refused.
    api.clear();
    rest.clear();
    for path in ["/api/..%2Fsecret", "/api%2F../secret", "/api\\..\\secret"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            statuses(&talk(proxy.addr, request.as_bytes()).await),
            [400],
            "{path}"
        );
    }
    assert!(api.requests().is_empty() && rest.requests().is_empty());
}

/// Six clients that start a body and stall, and six that vanish mid-body,
/// against a pool that ejects after three failures: they get 408 (or are
/// closed), and the backend stays in.
#[tokio::test]
async fn a_stalled_or_vanished_upload_is_the_clients_fault_not_the_backends() {
    let env = [("TANDEM_CLIENT_STALL_TIMEOUT_MS", "500".to_string())];
    let (proxy, b) = recorded_proxy(&env, |c| {
        c.outlier.consecutive_failures = 3;
        c.retry.per_try_timeout_ms = 300;
    })
    .await;
    let upload = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc";
    for i in 0..6 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(upload).await.unwrap();
        let start = Instant::now();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        let answers = wire::answers(&out, &[]);
        assert_eq!(statuses(&answers), [408], "stall {i}: {answers:?}");
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "stall {i}: kept for {:?}",
            start.elapsed()
        );
    }
    for _ in 0..6 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(upload).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = proxy.backend_state("pool", &b.address()).await.unwrap();
    assert_eq!(state["ejected"], false, "{state}");
    assert_eq!(state["consecutive_failures"], 0, "{state}");
    assert!(
        b.requests().is_empty(),
        "no half upload was parsed as a request"
    );
    let answers = talk(proxy.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answers[0].recorded(), "{answers:?}");

    // A slow but steady upload takes longer than the per-try timeout: the
    // time spent waiting for the client is not the backend's.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(b"abcd").await.unwrap();
    }
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let answers = wire::answers(&out, &[]);
    assert!(answers.first().is_some_and(Answer::recorded), "{answers:?}");
    let slow = b
        .requests()
        .into_iter()
        .find(|r| r.target == "/slow")
        .unwrap();
    assert_eq!(slow.body, b"abcd".repeat(5));

    let (_, metrics) = proxy.admin_get("/metrics").await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("reason=\"client_timeout\"") && l.ends_with(" 6")),
        "{metrics}"
    );
}

#[tokio::test]
async fn request_bodies_over_the_pools_limit_get_413() {
    let (proxy, b) = recorded_proxy(&[], |c| c.max_request_body_bytes = 1_000).await;
    let head = |fields: &str| format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n\r\n");
    // Announced: refused before anything is sent upstream.
    let answers = talk(proxy.addr, head("Content-Length: 1001").as_bytes()).await;
    assert_eq!(statuses(&answers), [413]);
    assert_eq!(answers[0].header("connection"), Some("close"));
    // Streamed: cut off when it passes the limit.
    let mut request = head("Transfer-Encoding: chunked").into_bytes();
    for _ in 0..3 {
        request.extend_from_slice(format!("258\r\n{}\r\n", "x".repeat(600)).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(statuses(&talk(proxy.addr, &request).await), [413]);
    assert!(b.requests().is_empty(), "{:?}", b.requests());
    // At the limit: passed on.
    let mut request = head("Content-Length: 1000").into_bytes();
    request.extend_from_slice(&[b'x'; 1000]);
    assert_eq!(statuses(&talk(proxy.addr, &request).await), [200]);
    assert_eq!(b.requests()[0].body.len(), 1_000);

    // HTTP/2: by content-length, and streamed without one.
    b.clear();
    let h2 = |cl: Option<&str>, data: Vec<Vec<u8>>| {
        let mut fields = h2raw::request("POST", "a", b"/h2");
        if let Some(cl) = cl {
            fields.push((b"content-length".to_vec(), cl.as_bytes().to_vec()));
        }
        h2raw::Stream { fields, data }
    };
    let (out, _) = h2raw::exchange(
        proxy.addr,
        &[
            h2(Some("1001"), vec![vec![b'x'; 1001]]),
            h2(None, vec![vec![b'x'; 600], vec![b'x'; 600]]),
            h2(Some("10"), vec![vec![b'y'; 10]]),
        ],
        Duration::from_secs(5),
    )
    .await;
    assert!(
        out[0].body.starts_with(b"request body larger"),
        "{:?}",
        out[0]
    );
    assert!(!out[1].body.starts_with(b"POST"), "{:?}", out[1]);
    assert_eq!(out[2].body, b"POST /h2");
    let got = b.requests();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body, [b'y'; 10]);
}

#[tokio::test]
async fn header_names_with_underscores_are_dropped_by_default_and_the_policy_is_configurable() {
    let request =
        b"GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nmy_field: 1\r\nX-Ok: 1\r\n\r\n";
    let (proxy, b) = recorded_proxy(&[], |_| {}).await;
    assert_eq!(statuses(&talk(proxy.addr, request).await), [200]);
    let got = &b.requests()[0];
    assert!(
        got.header("x_forwarded_for").is_none() && got.header("my_field").is_none(),
        "{got:?}"
    );
    assert_eq!(got.header("x-ok"), Some("1"));
    assert_eq!(got.all("x-forwarded-for"), ["127.0.0.1"]);

    let allow = [("TANDEM_HEADERS_WITH_UNDERSCORES", "allow".to_string())];
    let (proxy, b) = recorded_proxy(&allow, |_| {}).await;
    assert_eq!(statuses(&talk(proxy.addr, request).await), [200]);
    assert_eq!(b.requests()[0].header("my_field"), Some("1"));

    let reject = [("TANDEM_HEADERS_WITH_UNDERSCORES", "reject".to_string())];
    let (proxy, b) = recorded_proxy(&reject, |_| {}).await;
    let answers = talk(proxy.addr, request).await;
    assert_eq!(statuses(&answers), [400]);
    assert!(answers[0].text().contains("underscore in a header name"));
    assert!(b.requests().is_empty());
}

#[tokio::test]
async fn forwarding_fields_are_kept_only_from_trusted_proxies() {
    let env = [("TANDEM_TRUSTED_PROXIES", "127.0.0.2/32".to_string())];
    let (proxy, b) = recorded_proxy(&env, |_| {}).await;
    let request = b"GET / HTTP/1.1\r\nHost: shop.test\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n\r\n";
    let from = |ip: &str| ip.parse::<IpAddr>().ok();
    let wait = Duration::from_secs(10);

    let answers = wire::talk_from(from("127.0.0.1"), proxy.addr, request, wait).await;
    assert_eq!(statuses(&answers), [200]);
    let untrusted = &b.requests()[0];
    assert_eq!(
        untrusted.all("x-forwarded-for"),
        ["127.0.0.1"],
        "replaced, not appended to"
    );
    assert!(untrusted.header("forwarded").is_none());
    assert!(untrusted.header("x-real-ip").is_none());
    assert_eq!(untrusted.all("x-forwarded-proto"), ["http"]);
    assert_eq!(untrusted.all("x-forwarded-host"), ["shop.test"]);

    b.clear();
    let answers = wire::talk_from(from("127.0.0.2"), proxy.addr, request, wait).await;
    assert_eq!(statuses(&answers), [200]);
    let trusted = &b.requests()[0];
    assert_eq!(trusted.all("x-forwarded-for"), ["6.6.6.6, 127.0.0.2"]);
    assert_eq!(trusted.all("forwarded"), ["for=6.6.6.6"]);
    assert_eq!(trusted.all("x-real-ip"), ["6.6.6.6"]);
    assert_eq!(trusted.all("x-forwarded-proto"), ["https"]);
    assert_eq!(trusted.all("x-forwarded-host"), ["evil.test"]);
}

#[tokio::test]
async fn an_upgraded_connection_closes_after_the_pools_tunnel_idle_timeout() {
    let ws = FakeBackend::start("ws-idle").await.unwrap();
    let mut config = pool_config("pool", LbPolicy::RoundRobin);
    config.tunnel_idle_timeout_ms = 1_000;
    let proxy = ProxyProcess::with_snapshot(&single_pool(config, vec![backend(&ws.address())]))
        .await
        .unwrap();
    let (mut s, head) = websocket_upgrade(proxy.addr).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Traffic keeps it open past the timeout...
    let frame = masked_text_frame(b"hi");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        s.write_all(&frame).await.unwrap();
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"\x81\x02hi");
    }
    // ...silence closes it.
    let start = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "still open after 10 s of silence");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// HTTP/2 requests that would turn into something else in HTTP/1
/// (downgrade smuggling) never reach the backend.
#[tokio::test]
async fn http2_requests_that_would_desynchronise_an_http1_backend_are_refused() {
    let (proxy, b) = recorded_proxy(&[], |_| {}).await;
    let post = |extra: Vec<(&[u8], &[u8])>, path: &[u8], data: Vec<Vec<u8>>| {
        let mut fields = h2raw::request("POST", "a", path);
        fields.extend(extra.into_iter().map(|(n, v)| (n.to_vec(), v.to_vec())));
        h2raw::Stream { fields, data }
    };
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
    let cases = [
        post(
            vec![(b"content-length", b"0")],
            b"/cl-short",
            vec![smuggled.clone()],
        ),
        post(
            vec![(b"content-length", b"100")],
            b"/cl-long",
            vec![b"abc".to_vec()],
        ),
        // The announced length arrives in the first frame, more in the next:
        // the request must not be completed upstream before the end.
        post(
            vec![(b"content-length", b"2")],
            b"/cl-split",
            vec![b"ab".to_vec(), b"c".to_vec()],
        ),
        post(
            vec![(b"content-length", b"0")],
            b"/cl-zero",
            vec![smuggled.clone()],
        ),
        post(
            vec![(b"transfer-encoding", b"chunked")],
            b"/te",
            vec![b"0\r\n\r\n".to_vec()],
        ),
        post(vec![(b"connection", b"keep-alive")], b"/conn", vec![]),
        post(
            vec![],
            b"/a HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled",
            vec![],
        ),
        post(
            vec![(
                b"x-a",
                b"1\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1",
            )],
            b"/crlf-value",
            vec![],
        ),
        post(vec![(b"X-Upper", b"1")], b"/upper", vec![]),
    ];
    for (i, case) in cases.iter().enumerate() {
        let (out, _) = h2raw::exchange(
            proxy.addr,
            std::slice::from_ref(case),
            Duration::from_secs(5),
        )
        .await;
        let body = String::from_utf8_lossy(&out[0].body).into_owned();
        assert!(
            !body.starts_with("POST"),
            "case {i} reached the backend: {body}"
        );
    }
    assert!(b.requests().is_empty(), "{:#?}", b.requests());
    // A well-formed one on the same proxy does.
    let ok = post(
        vec![(b"content-length", b"3")],
        b"/ok",
        vec![b"abc".to_vec()],
    );
    let (out, _) = h2raw::exchange(proxy.addr, &[ok], Duration::from_secs(5)).await;
    assert_eq!(out[0].body, b"POST /ok");
    assert_eq!(b.requests()[0].body, b"abc");
}
