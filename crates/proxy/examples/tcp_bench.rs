//! The TCP benchmark's backend and load generator (`scripts/bench/tcp.sh`
//! runs it against tandem-proxy and HAProxy in front of the same backend).
//! Not a test: it prints figures and asserts nothing.
//!
//! - `serve ADDR`: the backend. The first byte a client sends says what it
//!   wants: `B` a bulk stream (64 KiB writes until the client leaves), `P`
//!   ping-pong (echo each 64-byte message), `C` one 64-byte request, one
//!   64-byte answer, then close.
//! - `bulk ADDR SECONDS`: one connection reading the stream: MB/s.
//! - `connect ADDR SECONDS CONCURRENCY`: short connections (connect, 64
//!   bytes each way, close) from CONCURRENCY loops: connections/s.
//! - `pingpong ADDR SECONDS CONNECTIONS`: 64-byte request/response over
//!   kept connections, one at a time on each: round trip p50/p99 in µs.
//!
//! Everything runs on one thread (a current-thread runtime), like the
//! single worker of each proxy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MSG: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let arg = |i: usize| -> &str { args.get(i).map_or("", String::as_str) };
    let addr = || -> SocketAddr { arg(1).parse().expect("ADDR is ip:port") };
    let num = |i: usize| -> u64 { arg(i).parse().expect("a number") };
    match arg(0) {
        "serve" => rt.block_on(serve(addr())),
        "bulk" => rt.block_on(bulk(addr(), Duration::from_secs(num(2)))),
        "connect" => rt.block_on(connect(addr(), Duration::from_secs(num(2)), num(3))),
        "pingpong" => rt.block_on(pingpong(addr(), Duration::from_secs(num(2)), num(3))),
        _ => {
            eprintln!("usage: tcp_bench serve|bulk|connect|pingpong ADDR [SECONDS [N]]");
            std::process::exit(2);
        }
    }
}

async fn serve(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut mode = [0u8; 1];
            if s.read_exact(&mut mode).await.is_err() {
                return;
            }
            match mode[0] {
                b'B' => {
                    let chunk = vec![7u8; 64 * 1024];
                    while s.write_all(&chunk).await.is_ok() {}
                }
                b'P' => {
                    let mut buf = [0u8; MSG];
                    while s.read_exact(&mut buf).await.is_ok() {
                        if s.write_all(&buf).await.is_err() {
                            return;
                        }
                    }
                }
                b'C' => {
                    let mut buf = [0u8; MSG];
                    if s.read_exact(&mut buf).await.is_ok() {
                        let _ = s.write_all(&buf).await;
                    }
                }
                _ => {}
            }
        });
    }
}

async fn bulk(addr: SocketAddr, time: Duration) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"B").await.expect("write");
    let mut buf = vec![0u8; 256 * 1024];
    // Warm-up, then measure.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(500) {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "the stream ended");
    }
    let start = Instant::now();
    let mut total = 0u64;
    while start.elapsed() < time {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "the stream ended");
        total += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("mb_per_s {:.1}", total as f64 / secs / 1e6);
}

async fn connect(addr: SocketAddr, time: Duration, concurrency: u64) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut msg = [b'C'; MSG + 1];
            msg[1..].fill(1);
            while start.elapsed() < time {
                let r: std::io::Result<()> = async {
                    let mut s = TcpStream::connect(addr).await?;
                    s.set_nodelay(true)?;
                    s.write_all(&msg).await?;
                    let mut back = [0u8; MSG];
                    s.read_exact(&mut back).await?;
                    Ok(())
                }
                .await;
                match r {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await.expect("a load task");
        ok += o;
        failed += f;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("conns_per_s {:.0} failed {failed}", ok as f64 / secs);
}

async fn pingpong(addr: SocketAddr, time: Duration, connections: u64) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s.write_all(b"P").await.expect("write");
            let msg = [3u8; MSG];
            let mut back = [0u8; MSG];
            let mut samples = Vec::with_capacity(1 << 16);
            let warm = Instant::now();
            while start.elapsed() < time {
                let t = Instant::now();
                s.write_all(&msg).await.expect("write");
                s.read_exact(&mut back).await.expect("read");
                if warm.elapsed() > Duration::from_millis(500) {
                    samples.push(t.elapsed().as_nanos() as u64);
                }
            }
            samples
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a load task"));
    }
    all.sort_unstable();
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1e3;
    println!(
        "rtt_us_p50 {:.1} rtt_us_p99 {:.1} round_trips {}",
        q(0.50),
        q(0.99),
        all.len()
    );
}
