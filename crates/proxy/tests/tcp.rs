//! TCP (layer 4) routes of a real `tandem-proxy` process serving a saved
//! snapshot: balancing, bytes both ways with half-close, a refused connect
//! moving to the next backend, the per-backend limit with its bounded
//! queue, the idle timeout, the PROXY protocol header as the backend reads
//! it, a port that cannot be bound reported while the others serve, and
//! two proxies of one host sharing a route's address.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tandem_core::{LbPolicy, ListenAddr, PoolName, Snapshot, TcpRoute};
use tandem_testkit::tcp::Echo;
use tandem_testkit::{free_addr, wait_until};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn tcp_snapshot(
    config: tandem_core::PoolConfig,
    backends: &[String],
    listen: SocketAddr,
) -> Snapshot {
    let name = config.name.clone();
    let mut s = SnapshotBuilder::new()
        .pool(config, backends.iter().map(|a| backend(a)).collect())
        .build();
    s.tcp_routes.push(TcpRoute {
        listen: ListenAddr::new(&listen.to_string()).unwrap(),
        pool: name,
    });
    s
}

/// A proxy serving `snapshot`, once its TCP listener on `listen` accepts.
async fn serving(snapshot: &Snapshot, listen: SocketAddr, env: &[(&str, String)]) -> ProxyProcess {
    let proxy = ProxyProcess::with_snapshot_env(snapshot, env)
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the tcp listener", || async move {
        TcpStream::connect(listen).await.is_ok()
    })
    .await
    .unwrap();
    proxy
}

/// Connects through the proxy and reads the backend's greeting.
async fn greeting(addr: SocketAddr) -> anyhow::Result<(String, BufReader<TcpStream>)> {
    let s = TcpStream::connect(addr).await?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await??;
    anyhow::ensure!(!line.is_empty(), "closed without a greeting");
    Ok((line.trim().trim_start_matches("hello ").to_string(), r))
}

async fn metrics(proxy: &ProxyProcess) -> String {
    proxy.admin_get("/metrics").await.unwrap().1
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

// === tests ===

#[tokio::test]
async fn tcp_routes_balance_connections_and_carry_bytes_both_ways_in_either_copy_mode() {
    let backends = [
        Echo::start("b1").await.unwrap(),
        Echo::start("b2").await.unwrap(),
        Echo::start("b3").await.unwrap(),
    ];
    let addrs: Vec<String> = backends.iter().map(Echo::address).collect();
    for mode in ["copy", "splice"] {
        let listen = free_addr();
        let snapshot = tcp_snapshot(pool_config("db", LbPolicy::RoundRobin), &addrs, listen);
        let proxy = serving(&snapshot, listen, &[("TANDEM_TCP_COPY", mode.into())]).await;

        // The readiness probe above took one pick: let it land first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Round robin over the three, connection by connection.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for _ in 0..30 {
            let (name, _) = greeting(listen).await.unwrap();
            *seen.entry(name).or_default() += 1;
        }
        assert_eq!(seen.len(), 3, "{mode}: {seen:?}");
        assert!(seen.values().all(|n| *n == 10), "{mode}: {seen:?}");

        // 4 MiB up and back, the client closing its sending side first:
        // the echo still arrives whole (half-close passes through).
        let (_, conn) = greeting(listen).await.unwrap();
        let mut stream = conn.into_inner();
        let payload: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        let (mut r, mut w) = stream.split();
        let send = async {
            w.write_all(&payload).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let recv = async {
            r.read_to_end(&mut back).await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(send, recv) })
            .await
            .expect("echo within 20 s");
        assert_eq!(back.len(), payload.len(), "{mode}");
        assert!(back == payload, "{mode}: the bytes came back unchanged");

        // Counted per pool and backend, both ways.
        let m = metrics(&proxy).await;
        // 30 + this one + the listener's readiness probe.
        let connections = metric(&m, "tandem_proxy_tcp_connections_total{pool=\"db\"}");
        assert_eq!(connections, 32.0, "{m}");
        let up: f64 = addrs
            .iter()
            .map(|a| metric(&m, &format!("tandem_proxy_tcp_bytes_total{{pool=\"db\",backend=\"{a}\",direction=\"to_backend\"}}")))
            .sum();
        let down: f64 = addrs
            .iter()
            .map(|a| metric(&m, &format!("tandem_proxy_tcp_bytes_total{{pool=\"db\",backend=\"{a}\",direction=\"to_client\"}}")))
            .sum();
        assert_eq!(up, (4 << 20) as f64, "{mode}");
        assert_eq!(
            down,
            (4 << 20) as f64 + connections * 9.0,
            "{mode}: echo and greetings"
        );
    }
}

#[tokio::test]
async fn a_refused_connect_goes_to_the_next_backend_and_repeated_refusals_eject() {
    let live = Echo::start("live").await.unwrap();
    let dead = dead_address();
    let listen = free_addr();
    let mut config = pool_config("db", LbPolicy::RoundRobin);
    config.outlier.consecutive_failures = 3;
    let snapshot = tcp_snapshot(config, &[dead.clone(), live.address()], listen);
    let proxy = serving(&snapshot, listen, &[]).await;
    for _ in 0..20 {
        let (name, _) = greeting(listen).await.expect("every client served");
        assert_eq!(name, "live");
    }
    let m = metrics(&proxy).await;
    let failures = metric(
        &m,
        &format!(
            "tandem_proxy_tcp_backend_connect_failures_total{{pool=\"db\",backend=\"{dead}\"}}"
        ),
    );
    assert_eq!(failures, 3.0, "tried until ejected, then not any more: {m}");
    let b = proxy.backend_state("db", &dead).await.unwrap();
    assert_eq!(b["ejected"], true, "{b}");
}

#[tokio::test]
async fn a_full_backend_queues_clients_up_to_the_bound_then_refuses() {
    let only = Echo::start("only").await.unwrap();
    let listen = free_addr();
    let mut config = pool_config("db", LbPolicy::LeastConnections);
    config.tcp.max_connections = 1;
    config.tcp.max_queue = 1;
    config.tcp.queue_timeout_ms = 10_000;
    let snapshot = tcp_snapshot(config, &[only.address()], listen);
    let proxy = serving(&snapshot, listen, &[]).await;
    // Probing the listener opened (and closed) connections: wait until the
    // backend's slot is free again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = only.accepted.load(Ordering::SeqCst);

    let (_, first) = greeting(listen).await.unwrap();
    // The second waits in the queue: connected, but no greeting yet.
    let second = TcpStream::connect(listen).await.unwrap();
    let mut second = BufReader::new(second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The third finds the queue full: closed at once, no greeting.
    let third = TcpStream::connect(listen).await.unwrap();
    let mut buf = [0u8; 16];
    let mut third = third;
    let n = tokio::time::timeout(Duration::from_secs(3), third.read(&mut buf))
        .await
        .expect("refused promptly")
        .unwrap_or(0);
    assert_eq!(n, 0, "refused without reaching the backend");
    assert_eq!(
        only.accepted.load(Ordering::SeqCst),
        before + 1,
        "only the first reached it"
    );

    // The first leaves: the second gets its turn.
    drop(first);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), second.read_line(&mut line))
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert_eq!(line, "hello only\n");
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "tandem_proxy_tcp_failed_connections_total{pool=\"db\",reason=\"queue_full\"}"
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_pool_idle_timeout() {
    let b = Echo::start("b").await.unwrap();
    let listen = free_addr();
    let mut config = pool_config("db", LbPolicy::RoundRobin);
    config.tcp.idle_timeout_ms = 1_000;
    let snapshot = tcp_snapshot(config, &[b.address()], listen);
    let proxy = serving(&snapshot, listen, &[]).await;
    let (_, mut conn) = greeting(listen).await.unwrap();
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        conn.get_mut().write_all(b"ping\n").await.unwrap();
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        assert_eq!(line, "ping\n");
    }
    // ...silence closes it.
    let start = Instant::now();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "{:?}",
        start.elapsed()
    );
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            &format!(
                "tandem_proxy_tcp_closed_connections_total{{pool=\"db\",backend=\"{}\",reason=\"idle_timeout\"}}",
                b.address()
            )
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn the_backend_reads_the_client_address_from_a_proxy_protocol_v2_header() {
    // A backend that parses the header with an independent parser and
    // answers with the source address it carries.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256];
                let mut have = 0;
                loop {
                    let n = s.read(&mut buf[have..]).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    have += n;
                    match ppp::v2::Header::try_from(&buf[..have]) {
                        Ok(h) => {
                            let answer = match h.addresses {
                                ppp::v2::Addresses::IPv4(a) => {
                                    format!(
                                        "{}:{} -> {}:{}\n",
                                        a.source_address,
                                        a.source_port,
                                        a.destination_address,
                                        a.destination_port
                                    )
                                }
                                other => format!("unexpected {other:?}\n"),
                            };
                            let rest = buf[h.len()..have].to_vec();
                            let _ = s.write_all(answer.as_bytes()).await;
                            let _ = s.write_all(&rest).await;
                            // Then echo whatever follows.
                            let (mut r, mut w) = s.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            return;
                        }
                        Err(ppp::v2::ParseError::Incomplete(_)) => continue,
                        Err(e) => {
                            let _ = s.write_all(format!("bad header: {e:?}\n").as_bytes()).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    let listen: SocketAddr = format!("127.0.0.1:{}", free_addr().port()).parse().unwrap();
    let mut config = pool_config("db", LbPolicy::RoundRobin);
    config.tcp.proxy_protocol = true;
    let snapshot = tcp_snapshot(config, &[backend.to_string()], listen);
    let _proxy = serving(&snapshot, listen, &[]).await;
    let mut s = TcpStream::connect(listen).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"first bytes").await.unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(line, format!("{me} -> {listen}\n"));
    let mut rest = [0u8; 11];
    r.read_exact(&mut rest).await.unwrap();
    assert_eq!(
        &rest, b"first bytes",
        "the client's bytes follow the header"
    );
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_is_reported_and_the_other_routes_serve() {
    let b = Echo::start("b").await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let free = free_addr();
    let mut snapshot = tcp_snapshot(
        pool_config("db", LbPolicy::RoundRobin),
        &[b.address()],
        free,
    );
    snapshot.tcp_routes.push(TcpRoute {
        listen: ListenAddr::new(&busy.to_string()).unwrap(),
        pool: PoolName::new("db").unwrap(),
    });
    snapshot.tcp_routes.sort_by_key(|r| r.listen);
    let proxy = ProxyProcess::with_snapshot(&snapshot).await.unwrap();
    let route = |c: &serde_json::Value, at: SocketAddr| {
        c["tcp"]["routes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["listen"] == at.to_string().as_str()))
            .cloned()
    };
    wait_until(Duration::from_secs(10), "both listeners reported", || {
        let p = &proxy;
        async move {
            let c = p.config().await.unwrap_or_default();
            route(&c, busy).is_some() && route(&c, free).is_some()
        }
    })
    .await
    .unwrap();
    let c = proxy.config().await.unwrap();
    let bad = route(&c, busy).unwrap();
    assert_eq!(bad["bound"], false, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("in use"), "{bad}");
    assert_eq!(route(&c, free).unwrap()["bound"], true);
    let (name, _) = greeting(free).await.unwrap();
    assert_eq!(name, "b", "the other route serves");
    assert!(
        proxy
            .process
            .logs()
            .contains("cannot bind the tcp listener")
    );
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            &format!("tandem_proxy_tcp_listener_up{{listen=\"{busy}\",pool=\"db\"}}")
        ),
        0.0,
        "{m}"
    );

    // Freed: bound within a few retries, without a restart.
    drop(taken);
    wait_until(Duration::from_secs(10), "the freed port bound", || {
        let p = &proxy;
        async move {
            let c = p.config().await.unwrap_or_default();
            route(&c, busy).is_some_and(|r| r["bound"] == true)
        }
    })
    .await
    .unwrap();
    let (name, _) = greeting(busy).await.unwrap();
    assert_eq!(name, "b");
}

#[tokio::test]
async fn two_proxies_on_one_host_share_a_routes_address_and_one_killed_leaves_no_gap() {
    let b = Echo::start("b").await.unwrap();
    let listen = free_addr();
    let snapshot = tcp_snapshot(
        pool_config("db", LbPolicy::RoundRobin),
        &[b.address()],
        listen,
    );
    let mut first = serving(&snapshot, listen, &[]).await;
    let second = serving(&snapshot, listen, &[]).await;
    let up = format!("tandem_proxy_tcp_listener_up{{listen=\"{listen}\",pool=\"db\"}}");
    for proxy in [&first, &second] {
        assert_eq!(
            metric(&metrics(proxy).await, &up),
            1.0,
            "both bound the address"
        );
    }

    // One of them dies without a word: every new connection is served by
    // the other at once, none refused while it waits to bind again.
    first.process.kill();
    for i in 0..50 {
        let (name, _) = greeting(listen)
            .await
            .unwrap_or_else(|e| panic!("connection {i} after the kill: {e}"));
        assert_eq!(name, "b");
    }
    assert_eq!(metric(&metrics(&second).await, &up), 1.0);
}

#[tokio::test]
async fn backups_take_over_from_a_dead_primary_and_draining_backends_get_nothing_new() {
    let backup = Echo::start("backup").await.unwrap();
    let draining = Echo::start("draining").await.unwrap();
    let dead = dead_address();
    let listen = free_addr();
    let mut config = pool_config("db", LbPolicy::RoundRobin);
    config.outlier.consecutive_failures = 2;
    let name = config.name.clone();
    let mut snapshot = SnapshotBuilder::new()
        .pool(
            config,
            vec![
                backend(&dead),
                with_role(backend(&backup.address()), tandem_core::BackendRole::Backup),
                with_state(
                    backend(&draining.address()),
                    tandem_core::AdminState::Draining,
                ),
            ],
        )
        .build();
    snapshot.tcp_routes.push(TcpRoute {
        listen: ListenAddr::new(&listen.to_string()).unwrap(),
        pool: name,
    });
    let _proxy = serving(&snapshot, listen, &[]).await;
    for _ in 0..10 {
        let (name, _) = greeting(listen).await.expect("served");
        assert_eq!(name, "backup");
    }
    assert_eq!(draining.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_backend_that_resets_before_saying_anything_is_ejected_like_a_refused_one() {
    // Accepts, then resets at once (SO_LINGER 0): a connect succeeds, no
    // byte ever comes back.
    let resetter = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad = resetter.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = resetter.accept().await {
            let s = s.into_std().unwrap();
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    let good = Echo::start("good").await.unwrap();
    let listen = free_addr();
    let mut config = pool_config("db", LbPolicy::RoundRobin);
    config.outlier.consecutive_failures = 2;
    let snapshot = tcp_snapshot(config, &[bad.clone(), good.address()], listen);
    let proxy = serving(&snapshot, listen, &[]).await;
    let mut served = 0;
    for _ in 0..20 {
        if let Ok((name, _)) = greeting(listen).await {
            assert_eq!(name, "good");
            served += 1;
        }
    }
    // Round robin sent some to the resetter until two resets in a row
    // ejected it; the readiness probes may have met one or both of them
    // (then all 20 are served). The ejection itself is checked below.
    assert!((18..=20).contains(&served), "served {served} of 20");
    let b = proxy.backend_state("db", &bad).await.unwrap();
    assert_eq!(b["ejected"], true, "{b}");
}
