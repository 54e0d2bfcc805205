//! HTTPS end to end, as an operator drives it: `tandemctl cert add`
//! refuses a broken certificate (nothing stored) and stores a good one
//! sealed; a proxy serves it to curl; `cert list` shows who serves it; a
//! rotation applies to new handshakes while an established connection
//! goes on; no private key shows in a read, the database or a log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::certs::{KeyKind, TestCa, write_files};
use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::{ControlPlane, NODE_TOKEN, Postgres, free_addr, wait_until};
use tandem_testkit::{Ran, tandemctl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// `tandemctl args` against `cp`, which must succeed: its stdout.
fn ok(cp: &ControlPlane, args: &[&str]) -> String {
    let r = tandemctl(&cp.endpoint(), args);
    assert_eq!(r.code, 0, "tandemctl {args:?}: {}{}", r.stdout, r.stderr);
    r.stdout
}

async fn curl(ca: &str, tls: SocketAddr) -> (i32, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert", ca, "--resolve"])
        .arg(format!("shop.test:{}:127.0.0.1", tls.port()))
        .arg(format!("https://shop.test:{}/", tls.port()))
        .output()
        .await
        .expect("curl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A TLS connection to the proxy (HTTP/1.1 by ALPN), trusting `ca_pem`.
async fn connect(tls: SocketAddr, ca_pem: &str) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(tls).await?;
    let name = ServerName::try_from("shop.test")?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?)
}

/// One keep-alive request on `conn`; the status.
async fn get(conn: &mut TlsStream<TcpStream>) -> anyhow::Result<u16> {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            let n = conn.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "closed after {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return Ok(text[9..12].parse()?);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await?
}

fn leaf_der(chain_pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM")
        .to_vec()
}

fn served_leaf(conn: &TlsStream<TcpStream>) -> Vec<u8> {
    conn.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_checked_stored_sealed_served_and_rotated() -> anyhow::Result<()> {
    let db = Postgres::start()?;
    let cp = ControlPlane::start(&db.url()).await?;
    let backend = FakeBackend::start("web").await?;
    ok(&cp, &["pool", "create", "web"]);
    ok(&cp, &["backend", "add", "web", &backend.address()]);
    ok(
        &cp,
        &["route", "add", "--host", "shop.test", "--pool", "web"],
    );

    let ca = TestCa::new("Tandem e2e CA")?;
    let files = tempfile::tempdir()?;
    let v1 = ca.issue(&["shop.test"], KeyKind::EcP256)?;
    let (cert1, key1) = write_files(files.path(), "v1", &v1)?;
    let other = ca.issue(&["other.test"], KeyKind::EcP256)?;
    let (_, other_key) = write_files(files.path(), "other", &other)?;
    let expired = ca.issue_dated(
        &["shop.test"],
        KeyKind::EcP256,
        "20240101000000Z",
        "20240201000000Z",
    )?;
    let (expired_cert, expired_key) = write_files(files.path(), "expired", &expired)?;
    let garbage = files.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n")?;
    let s = |p: &std::path::Path| p.display().to_string();

    // Refused on write, each naming its problem; nothing stored.
    for (cert, key, problem) in [
        (
            s(&garbage),
            s(&key1),
            "certificate.chain_pem: no CERTIFICATE block found",
        ),
        (
            s(&cert1),
            s(&garbage),
            "certificate.key_pem: no PRIVATE KEY",
        ),
        (
            s(&cert1),
            s(&other_key),
            "certificate.key_pem: does not match the leaf certificate",
        ),
        (
            s(&expired_cert),
            s(&expired_key),
            "certificate.chain_pem: the leaf (CN=shop.test) expired on",
        ),
    ] {
        let Ran {
            code,
            stdout: out,
            stderr: err,
        } = tandemctl(
            &cp.endpoint(),
            &[
                "cert",
                "add",
                "shop",
                "--cert-file",
                &cert,
                "--key-file",
                &key,
            ],
        );
        assert_eq!(code, 4, "INVALID_ARGUMENT expected: {out}{err}");
        assert!(err.contains(problem), "{problem:?} not in {err}");
        assert!(!err.contains("PRIVATE KEY-----"), "{err}");
    }
    let list = tandemctl(&cp.endpoint(), &["cert", "list"]).stdout;
    assert!(list.starts_with("no certificates"), "{list}");

    let out = ok(
        &cp,
        &[
            "cert",
            "add",
            "shop",
            "--cert-file",
            &s(&cert1),
            "--key-file",
            &s(&key1),
        ],
    );
    assert!(
        out.starts_with("certificate shop (shop.test) stored, valid until"),
        "{out}"
    );

    // A proxy with a TLS listener serves it.
    let tls = free_addr();
    let proxy = ProxyProcess::start(
        tempfile::tempdir()?,
        &cp.endpoint(),
        &[
            ("TANDEM_TOKEN", NODE_TOKEN.into()),
            ("TANDEM_NODE_ID", "proxy-1".into()),
            ("TANDEM_TLS_LISTEN", tls.to_string()),
        ],
    )?;
    proxy.wait_ready().await?;
    let ca_file = s(&ca.cert_path());
    wait_until(Duration::from_secs(10), "HTTPS to answer", || async {
        curl(&ca_file, tls).await.0 == 0
    })
    .await?;
    wait_until(
        Duration::from_secs(15),
        "cert list to name proxy-1",
        || async {
            tandemctl(&cp.endpoint(), &["cert", "list"])
                .stdout
                .contains("proxy-1")
        },
    )
    .await?;
    let list = tandemctl(&cp.endpoint(), &["cert", "list"]).stdout;
    assert!(
        list.contains("shop") && list.contains("shop.test") && list.contains("ECDSA P-256"),
        "{list}"
    );

    // Rotation: a connection established before it goes on with the old
    // certificate; new handshakes get the new one.
    let mut before = connect(tls, &ca.cert_pem).await?;
    assert_eq!(get(&mut before).await?, 200);
    assert_eq!(served_leaf(&before), leaf_der(&v1.chain_pem));
    let v2 = ca.issue(&["shop.test"], KeyKind::Rsa2048)?;
    let (cert2, key2) = write_files(files.path(), "v2", &v2)?;
    ok(
        &cp,
        &[
            "cert",
            "add",
            "shop",
            "--cert-file",
            &s(&cert2),
            "--key-file",
            &s(&key2),
        ],
    );
    let fresh = leaf_der(&v2.chain_pem);
    wait_until(
        Duration::from_secs(10),
        "new handshakes to get the new certificate",
        || async {
            match connect(tls, &ca.cert_pem).await {
                Ok(c) => served_leaf(&c) == fresh,
                Err(_) => false,
            }
        },
    )
    .await?;
    assert_eq!(
        get(&mut before).await?,
        200,
        "the established connection goes on"
    );
    assert_eq!(get(&mut before).await?, 200);

    // No private key in any read, in the database, or in a log.
    let snapshot = tandemctl(&cp.endpoint(), &["snapshot", "-o", "json"]).stdout;
    assert!(
        snapshot.contains("shop.test") || snapshot.contains("BEGIN CERTIFICATE"),
        "{snapshot}"
    );
    let watch_list = tandemctl(&cp.endpoint(), &["cert", "list", "-o", "json"]).stdout;
    for text in [&snapshot, &watch_list] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
    let pg = sqlx::PgPool::connect(&db.url()).await?;
    let sealed: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key_sealed FROM certificates")
        .fetch_all(&pg)
        .await?;
    assert_eq!(sealed.len(), 1);
    assert!(!String::from_utf8_lossy(&sealed[0]).contains("PRIVATE"));
    let log: Vec<String> = sqlx::query_scalar("SELECT change::text FROM change_log")
        .fetch_all(&pg)
        .await?;
    assert!(log.iter().any(|c| c.contains("certificate_upserted")));
    assert!(!log.iter().any(|c| c.contains("PRIVATE KEY")), "{log:?}");
    assert!(!cp.process.logs().contains("PRIVATE KEY"));
    assert!(!proxy.process.logs().contains("PRIVATE KEY"));
    // The proxy's last-known-good copy holds the key: owner-only.
    let copy = proxy.state_dir.path().join("snapshot.json");
    wait_until(Duration::from_secs(5), "the disk copy", || async {
        copy.exists()
    })
    .await?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy)?.permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Removed: nothing to serve, handshakes fail.
    let out = ok(&cp, &["cert", "remove", "shop"]);
    assert!(out.starts_with("certificate shop removed"), "{out}");
    wait_until(Duration::from_secs(10), "HTTPS to stop", || async {
        curl(&ca_file, tls).await.0 != 0
    })
    .await?;
    Ok(())
}
