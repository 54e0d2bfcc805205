//! What backends send back, as the proxy's own HTTP/1.1 client reads it:
//! chunked and close-delimited bodies, interim 1xx answers, large bodies,
//! kept-alive connections the backend closed, and requests retried with
//! their body after a connection broke.
//!
//! The backends here are scripted on raw sockets so each test controls the
//! exact bytes and when a connection closes.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tandem_core::{LbPolicy, PoolConfig};
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::http_client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as a scripted backend saw it.
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }
}

/// Reads one request (head, and a Content-Length body) off `s`; `None`
/// when the peer closed first.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let head = tandem_testkit::read_head(s, buf).await?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut chunk = [0u8; 16 * 1024];
    while buf.len() < length {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf.drain(..length).collect();
    Some(Seen { head, body })
}

/// A backend that answers each request with `answer(request)`: the bytes
/// to write and whether to close the connection afterwards. Counts the
/// connections it accepted.
async fn scripted<F>(answer: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(&Seen) -> (Vec<u8>, bool) + Send + Sync + 'static,
{
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(req) = read_request(&mut s, &mut buf).await {
                    let (bytes, close) = answer(&req);
                    if s.write_all(&bytes).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

async fn proxy_for(addresses: &[String]) -> ProxyProcess {
    proxy_with(addresses, |_| {}).await
}

async fn proxy_with(addresses: &[String], tune: impl FnOnce(&mut PoolConfig)) -> ProxyProcess {
    let mut config = pool_config("pool", LbPolicy::RoundRobin);
    // Keep every backend in rotation whatever it does.
    config.outlier.consecutive_failures = 0;
    tune(&mut config);
    let snapshot = single_pool(config, addresses.iter().map(|a| backend(a)).collect());
    ProxyProcess::with_snapshot_env(&snapshot, &[("TANDEM_WORKERS", "1".to_string())])
        .await
        .unwrap()
}

fn big_body() -> Vec<u8> {
    (0..1_000_000u32).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn chunked_close_delimited_interim_and_large_answers_pass_through() {
    let (addr, accepted) = scripted(|req| match req.path() {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n".to_vec(),
            false,
        ),
        "/continue" => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated".to_vec(),
            false,
        ),
        "/big" => {
            let body = big_body();
            let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            out.extend_from_slice(&body);
            (out, false)
        }
        "/close" => (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end".to_vec(),
            true,
        ),
        _ => (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(), false),
    })
    .await;
    let proxy = proxy_for(&[addr.to_string()]).await;
    let client = http_client();

    for _ in 0..5 {
        let r = client.get(proxy.url("/chunked")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "hello world");
    }
    // A chunked answer read to its end leaves the connection reusable:
    // five requests, one upstream connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    let r = client.get(proxy.url("/continue")).send().await.unwrap();
    assert_eq!(r.status(), 201, "interim 1xx answers are skipped");
    assert_eq!(r.text().await.unwrap(), "created");

    let r = client.get(proxy.url("/big")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(1_000_000));
    let body = r.bytes().await.unwrap();
    assert!(body[..] == big_body()[..], "1 MB arrives intact");

    let before = accepted.load(Ordering::SeqCst);
    let r = client.get(proxy.url("/close")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "until the end");
    // That connection ended with its body; the next request needs a new one.
    let r = client.get(proxy.url("/chunked")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello world");
    assert_eq!(accepted.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn a_kept_alive_connection_the_backend_closed_is_replaced_without_an_error() {
    // Answers once per connection with a keep-alive answer, then closes it
    // shortly after, as backends with a short idle timeout do.
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_request(&mut s, &mut buf).await.is_some() {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
    });
    let proxy = proxy_for(&[addr.to_string()]).await;
    let client = http_client();
    for i in 0..5 {
        let r = client.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.text().await.unwrap(), "ok");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
    let (_, m) = proxy.admin_get("/metrics").await.unwrap();
    assert!(
        !m.lines()
            .any(|l| l.starts_with("tandem_proxy_upstream_failures_total") && !l.ends_with(" 0")),
        "a closed idle connection is no failure of the backend:\n{m}"
    );
}

#[tokio::test]
async fn an_idempotent_request_whose_body_left_is_retried_with_it_and_a_post_is_not() {
    // The broken backend reads the whole request, then drops the connection
    // without a byte of answer.
    let bodies_dropped = Arc::new(AtomicUsize::new(0));
    let dropped = bodies_dropped.clone();
    let (broken, broken_conns) = scripted(move |req| {
        if req.body.len() == 10_000 {
            dropped.fetch_add(1, Ordering::SeqCst);
        }
        (Vec::new(), true)
    })
    .await;
    let live = FakeBackend::start("replay-live").await.unwrap();
    let proxy = proxy_for(&[broken.to_string(), live.address()]).await;
    let client = http_client();

    for i in 0..6 {
        let body = format!("{i}:").repeat(5_000); // 10 KB, under the replay limit
        let r = client
            .put(proxy.url("/echo"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "PUT {i}");
        assert_eq!(r.text().await.unwrap(), body, "PUT {i} arrived whole");
    }
    assert!(
        broken_conns.load(Ordering::SeqCst) >= 2,
        "round-robin sent PUTs to the broken backend too"
    );
    // Those PUTs had their whole body sent before the connection broke:
    // the retry sent it again from the proxy's copy.
    assert_eq!(
        bodies_dropped.load(Ordering::SeqCst),
        broken_conns.load(Ordering::SeqCst)
    );

    let mut statuses = Vec::new();
    for i in 0..6 {
        let r = client
            .post(proxy.url("/echo"))
            .body(format!("order {i}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    // A POST that reached the broken backend may have run there: 502, not
    // a second try. The others were answered.
    assert!(statuses.contains(&502), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 502 || *s == 200),
        "{statuses:?}"
    );

    // A POST carrying an Idempotency-Key: the client declared a second run
    // safe (the backend finds the first by the key), so it goes to the
    // other backend like a PUT.
    let before = broken_conns.load(Ordering::SeqCst);
    for i in 0..6 {
        let r = client
            .post(proxy.url("/echo"))
            .header("idempotency-key", format!("checkout-{i}"))
            .body(format!("order {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "keyed POST {i}");
        assert_eq!(r.text().await.unwrap(), format!("order {i}"));
    }
    assert!(
        broken_conns.load(Ordering::SeqCst) > before,
        "round-robin sent keyed POSTs to the broken backend too"
    );
}

#[tokio::test]
async fn invalid_answers_are_a_bad_gateway() {
    let (addr, _) = scripted(|req| match req.path() {
        "/ssh" => (b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(), true),
        "/lengths" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok".to_vec(),
            true,
        ),
        _ => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            false,
        ),
    })
    .await;
    let proxy = proxy_for(&[addr.to_string()]).await;
    let client = http_client();
    for path in ["/ssh", "/lengths"] {
        let r = client.post(proxy.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 502, "{path}");
    }
    let r = client.get(proxy.url("/fine")).send().await.unwrap();
    assert_eq!(r.status(), 200, "and the proxy still serves");
}

/// A backend that closes a kept-alive connection after `idle` without a
/// request (as Apache and Node.js do after 5 s), announcing it with
/// `Keep-Alive: timeout=N` when `announce` is set. Counts connections and
/// requests.
async fn idle_closing(
    idle: Duration,
    announce: Option<u32>,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (accepted, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, r) = (accepted.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Ok(Some(_)) =
                    tokio::time::timeout(idle, read_request(&mut s, &mut buf)).await
                {
                    r.fetch_add(1, Ordering::SeqCst);
                    let keep = announce
                        .map(|t| format!("Keep-Alive: timeout={t}\r\n"))
                        .unwrap_or_default();
                    let answer = format!("HTTP/1.1 200 OK\r\n{keep}Content-Length: 2\r\n\r\nok");
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
                // Idle too long: closed, as the server's keep-alive timeout does.
            });
        }
    });
    (addr, accepted, requests)
}

/// `n` GETs, each after `gap`.
async fn spaced_gets(proxy: &ProxyProcess, n: usize, gap: Duration) {
    let client = http_client();
    for i in 0..n {
        tokio::time::sleep(gap).await;
        let r = client.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
}

#[tokio::test]
async fn a_backends_announced_keep_alive_timeout_bounds_reuse() {
    // Keep-Alive: timeout=1: reused for at most half a second.
    let (addr, accepted, _) = idle_closing(Duration::from_secs(1), Some(1)).await;
    let proxy = proxy_for(&[addr.to_string()]).await;
    spaced_gets(&proxy, 4, Duration::from_millis(100)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "quick requests share one connection"
    );
    spaced_gets(&proxy, 3, Duration::from_millis(700)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "after 700 ms idle, past the announced timeout less its margin, a new connection each"
    );
}

#[tokio::test]
async fn the_pools_upstream_idle_timeout_bounds_reuse() {
    let (addr, accepted, _) = idle_closing(Duration::from_secs(60), None).await;
    let proxy = proxy_with(&[addr.to_string()], |c| c.upstream_idle_timeout_ms = 300).await;
    spaced_gets(&proxy, 3, Duration::from_millis(50)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    spaced_gets(&proxy, 3, Duration::from_millis(500)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
    // 0: a connection per request.
    let (addr, accepted, _) = idle_closing(Duration::from_secs(60), None).await;
    let proxy = proxy_with(&[addr.to_string()], |c| c.upstream_idle_timeout_ms = 0).await;
    spaced_gets(&proxy, 3, Duration::from_millis(10)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// A backend that closes idle connections sooner than the pool would keep
/// them, without saying so: every POST still goes through, once.
#[tokio::test]
async fn posts_never_go_on_a_connection_the_backend_closed_and_never_twice() {
    let (addr, accepted, requests) = idle_closing(Duration::from_millis(150), None).await;
    let proxy = proxy_with(&[addr.to_string()], |c| c.upstream_idle_timeout_ms = 60_000).await;
    let client = http_client();
    for i in 0..5 {
        let r = client
            .post(proxy.url("/order"))
            .body(format!("order {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "POST {i}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        5,
        "each POST reached the backend once"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        5,
        "each on a fresh connection"
    );
    let (_, m) = proxy.admin_get("/metrics").await.unwrap();
    assert!(
        !m.lines()
            .any(|l| l.starts_with("tandem_proxy_upstream_failures_total") && !l.ends_with(" 0")),
        "a backend closing idle connections is not failing:\n{m}"
    );
}

/// A backend that closes a kept-alive connection idle for `idle` at the
/// edge, carefully: only when no byte of a next request has arrived, and
/// its FIN first, so a request that crosses its close on the wire is never
/// read and is answered by its kernel with a reset after the FIN. Counts
/// requests.
async fn closing_at_the_edge(idle: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let r = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    if buf.is_empty() && tokio::time::timeout(idle, s.readable()).await.is_err() {
                        // Asks the kernel (not the event loop's view,
                        // which may lag): has a request started?
                        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
                        match socket2::SockRef::from(&s).peek(&mut probe) {
                            Ok(n) if n > 0 => {}
                            // Nothing arrived: its FIN first, then the
                            // close (what still arrives is never read).
                            _ => {
                                let _ =
                                    socket2::SockRef::from(&s).shutdown(std::net::Shutdown::Write);
                                return;
                            }
                        }
                    }
                    if read_request(&mut s, &mut buf).await.is_none() {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, requests)
}

fn resends(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("tandem_proxy_upstream_resends_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The keep-alive race itself: POSTs sent as the backend's idle timer
/// fires (gaps swept across its edge, from several clients at once, so the
/// proxy is busy when the backend's FIN arrives). A POST that crossed the
/// backend's close reached a closed socket: it goes again on a fresh
/// connection, and no client sees a 502. Runs until the race was met a few
/// times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_crossed_the_backends_close_goes_again_and_runs_once() {
    const EDGE_MS: u64 = 20;
    let (addr, requests) = closing_at_the_edge(Duration::from_millis(EDGE_MS)).await;
    let proxy = proxy_with(&[addr.to_string()], |c| c.upstream_idle_timeout_ms = 60_000).await;
    let proxy = Arc::new(proxy);
    let started = std::time::Instant::now();
    let mut ok = 0usize;
    let mut met = 0;
    while met < 3 && started.elapsed() < Duration::from_secs(40) {
        let mut clients = Vec::new();
        for c in 0..12u64 {
            let proxy = proxy.clone();
            clients.push(tokio::spawn(async move {
                let client = http_client();
                let mut statuses = Vec::new();
                for i in 0..40u64 {
                    // 17 to 23 ms: across the backend's 20 ms.
                    let gap_us = (EDGE_MS - 3) * 1_000 + ((i * 7 + c * 13) % 60) * 100;
                    tokio::time::sleep(Duration::from_micros(gap_us)).await;
                    let r = client
                        .post(proxy.url("/order"))
                        .body(format!("order {c}-{i}"))
                        .send()
                        .await
                        .unwrap();
                    statuses.push(r.status().as_u16());
                }
                statuses
            }));
        }
        for c in clients {
            let statuses = c.await.unwrap();
            let failed: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
            assert!(failed.is_empty(), "POSTs failed: {failed:?}");
            ok += statuses.len();
        }
        let (_, m) = proxy.admin_get("/metrics").await.unwrap();
        met = resends(&m);
    }
    assert!(
        met >= 3,
        "the race was met {met} times in 40 s: the test did not test it"
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        ok,
        "each POST ran once: a resent one never reached the backend before"
    );
}
