//! New TLS handshakes as fast as a few threads can make them, for
//! `scripts/bench/tls.sh`: every connection a new TCP connection and a full
//! TLS 1.3 handshake (no session resumption, no tickets kept), then, unless
//! `--no-get`, one `GET / HTTP/1.0` read to the close.
//!
//! It exists because `openssl s_time` (OpenSSL 3.0) spends more CPU per
//! handshake than either proxy it measures, so on a two-core machine the
//! figure was the client's. This client is cheaper on purpose: it is the
//! proxy's client for `--backend-tls-insecure` backends (rustls with ring,
//! [`tandem_tls::client::client_config`]) without session resumption and
//! without ALPN: it does not check the server's chain, only its handshake
//! signature (the server's work is the same; the client's share is an
//! X25519 exchange, one signature check and the record layer). It measures
//! servers; it is not a client anyone should copy.
//!
//! Usage: `handshakes HOST:PORT SECONDS THREADS [--no-get] [--sni NAME]`.
//! Prints `N handshakes in S s, E errors` (the first error, if any, on
//! stderr); a handshake that is not TLS 1.3 is an error.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ProtocolVersion};
use tandem_core::BackendTls;

fn main() {
    if let Err(e) = run() {
        eprintln!("handshakes: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: handshakes HOST:PORT SECONDS THREADS [--no-get] [--sni NAME]";
    let [addr, secs, threads, rest @ ..] = args.as_slice() else {
        return Err(usage.into());
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    let secs: f64 = secs.parse().map_err(|e| format!("seconds {secs:?}: {e}"))?;
    let threads: usize = threads
        .parse()
        .map_err(|e| format!("threads {threads:?}: {e}"))?;
    let (mut get, mut sni) = (true, "localhost".to_string());
    let mut rest = rest.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--no-get" => get = false,
            "--sni" => sni = rest.next().ok_or(usage)?.clone(),
            other => return Err(format!("unknown argument {other:?}; {usage}")),
        }
    }
    let name = ServerName::try_from(sni).map_err(|e| e.to_string())?;

    let insecure = BackendTls {
        insecure: true,
        ..BackendTls::default()
    };
    let mut config = tandem_tls::client::client_config(&insecure).map_err(|e| e.to_string())?;
    config.resumption = Resumption::disabled();
    config.alpn_protocols.clear();
    let config = Arc::new(config);

    let stop = Arc::new(AtomicBool::new(false));
    let (done, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (config, name, stop) = (config.clone(), name.clone(), stop.clone());
            let (done, errors, first_error) = (done.clone(), errors.clone(), first_error.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match one(&config, addr, &name, get) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e.to_string());
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for w in workers {
        let _ = w.join();
    }
    if let Some(e) = first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        eprintln!("handshakes: first error: {e}");
    }
    println!(
        "{n} handshakes in {elapsed:.3} s, {} errors",
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One connection: connect, a full handshake, and the GET when asked.
fn one(
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
    name: &ServerName<'static>,
    get: bool,
) -> io::Result<()> {
    let mut sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    let mut conn = ClientConnection::new(config.clone(), name.clone()).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)?;
    }
    // Both versions are offered (the proxy's client offers them); both
    // servers pick 1.3.
    if conn.protocol_version() != Some(ProtocolVersion::TLSv1_3) {
        let version = conn.protocol_version();
        return Err(io::Error::other(format!("not TLS 1.3: {version:?}")));
    }
    if get {
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        tls.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut answer = Vec::with_capacity(512);
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                // Closed without close_notify, as HTTP/1.0 servers may.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        if !(answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200")) {
            let head = String::from_utf8_lossy(&answer[..answer.len().min(40)]).into_owned();
            return Err(io::Error::other(format!("answer {head:?}")));
        }
    } else {
        conn.send_close_notify();
        let _ = conn.write_tls(&mut sock);
    }
    Ok(())
}
