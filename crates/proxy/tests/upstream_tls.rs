//! TLS from the proxy to a pool's backends, against real TLS backends
//! (hyper over tokio-rustls, `testkit::recording`) with certificates from
//! a throwaway CA: the request arrives and connections are reused; the
//! SNI sent is the configured name or the backend's host;
//! `X-Forwarded-Proto` stays what the client used; a backend whose
//! certificate the pool's CA did not sign gets no request, the client
//! 502, and the backend is ejected with the handshake's reason in
//! `/config`; `insecure` accepts any certificate.

mod common;

use std::net::SocketAddr;

use common::*;
use tandem_core::{BackendTls, LbPolicy};
use tandem_testkit::certs::{KeyKind, TestCa};
use tandem_testkit::recording::RecordingBackend;
use tandem_testkit::{http_client, wait_until};

struct Setup {
    proxy: ProxyProcess,
    backend: RecordingBackend,
    /// The proxy's own TLS listener (certificate for shop.test).
    tls: SocketAddr,
    front_ca: TestCa,
}

/// A TLS backend with a certificate for `names` from `backend_ca`, behind
/// a proxy whose pool speaks TLS to it with `tls`; the backend is named
/// `host` (`127.0.0.1` or `localhost`) in the pool.
async fn setup(
    backend_ca: &TestCa,
    names: &[&str],
    host: &str,
    tls: BackendTls,
    outlier_failures: u32,
) -> Setup {
    let issued = backend_ca.issue(names, KeyKind::EcP256).unwrap();
    let backend = RecordingBackend::start_tls(&issued.chain_pem, &issued.key_pem)
        .await
        .unwrap();
    let port = backend.address().rsplit_once(':').unwrap().1.to_string();
    let mut config = pool_config("api", LbPolicy::RoundRobin);
    config.outlier.consecutive_failures = outlier_failures;
    config.backend_tls = Some(tls);
    let snapshot = single_pool(config, vec![common::backend(&format!("{host}:{port}"))]);
    // A TLS listener of its own, for the X-Forwarded-Proto check.
    let front_ca = TestCa::new("front CA").unwrap();
    let front = front_ca.issue(&["shop.test"], KeyKind::EcP256).unwrap();
    let (proxy, tls) = tls_proxy(snapshot, [certificate("shop", &front)]).await;
    Setup {
        proxy,
        backend,
        tls,
        front_ca,
    }
}

fn verified(ca: &TestCa, sni: &str) -> BackendTls {
    BackendTls {
        ca_pem: ca.cert_pem.clone(),
        sni: sni.into(),
        insecure: false,
    }
}

async fn get(url: &str) -> (u16, String) {
    let r = http_client().get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// curl over the proxy's TLS listener: (exit code, status, stderr).
async fn curl_https(s: &Setup, path: &str) -> (i32, String, String) {
    let ca = s.front_ca.cert_path().display().to_string();
    let resolve = format!("shop.test:{}:127.0.0.1", s.tls.port());
    let url = format!("https://shop.test:{}{path}", s.tls.port());
    let args = ["-o", "/dev/null", "-w", "%{http_code}", "--cacert", &ca];
    curl(&[&args[..], &["--resolve", &resolve, &url]].concat()).await
}

#[tokio::test]
async fn requests_reach_a_tls_backend_verified_with_the_configured_sni_and_reuse_connections() {
    let ca = TestCa::new("backend CA").unwrap();
    let s = setup(
        &ca,
        &["api.internal"],
        "127.0.0.1",
        verified(&ca, "api.internal"),
        5,
    )
    .await;
    for i in 0..5 {
        let (status, body) = get(&s.proxy.url(&format!("/item/{i}"))).await;
        assert_eq!(status, 200, "{body}\n{}", s.proxy.process.logs());
        assert_eq!(body, format!("GET /item/{i}"));
    }
    let seen = s.backend.requests();
    assert_eq!(seen.len(), 5);
    for r in &seen {
        assert_eq!(r.sni.as_deref(), Some("api.internal"), "SNI as configured");
        assert_eq!(r.header("x-forwarded-proto"), Some("http"), "{r:?}");
    }
    assert_eq!(
        s.backend.connections(),
        1,
        "sequential requests reuse one pooled TLS connection"
    );

    // A client over HTTPS: the backend is told https.
    let (code, status, err) = curl_https(&s, "/secure").await;
    assert_eq!((code, status.as_str()), (0, "200"), "{err}");
    let last = s.backend.requests().pop().unwrap();
    assert_eq!(last.target, "/secure");
    assert_eq!(last.header("x-forwarded-proto"), Some("https"));

    let (_, metrics) = s.proxy.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("tandem_proxy_upstream_tls_handshakes_total{")
                && l.contains("pool=\"api\"")
                && l.ends_with(" 1")
        ),
        "one handshake counted:\n{metrics}"
    );
    assert!(s.backend.handshake_failures().is_empty());
}

#[tokio::test]
async fn without_a_configured_name_the_backends_host_is_sent_and_verified() {
    let ca = TestCa::new("backend CA").unwrap();
    let s = setup(&ca, &["localhost"], "localhost", verified(&ca, ""), 5).await;
    let (status, body) = get(&s.proxy.url("/x")).await;
    assert_eq!(status, 200, "{body}\n{}", s.proxy.process.logs());
    assert_eq!(s.backend.requests()[0].sni.as_deref(), Some("localhost"));
}

#[tokio::test]
async fn a_certificate_from_another_ca_gets_502_and_ejects_the_backend_with_the_reason() {
    let backend_ca = TestCa::new("backend CA").unwrap();
    let other_ca = TestCa::new("some other CA").unwrap();
    let s = setup(
        &backend_ca,
        &["api.internal"],
        "127.0.0.1",
        verified(&other_ca, "api.internal"),
        3,
    )
    .await;
    assert_eq!(get(&s.proxy.url("/x")).await.0, 502);
    for _ in 0..3 {
        // Once ejected, the pool's only backend is tried anyway (panic
        // mode) or nothing is: never an answer from it.
        let status = get(&s.proxy.url("/x")).await.0;
        assert!(status == 502 || status == 503, "{status}");
    }
    assert!(s.backend.requests().is_empty(), "no request left the proxy");
    let address = s.backend.address();
    let b = s.proxy.backend_state("api", &address).await.unwrap();
    assert_eq!(b["ejected"], true, "{b}");
    let reason = b["tls_failure"].as_str().unwrap_or_default();
    assert!(
        reason.contains("TLS handshake with the backend failed")
            && reason.contains("UnknownIssuer"),
        "{b}"
    );
    // The backend saw the proxy refuse its certificate.
    let refused = s.backend.handshake_failures();
    assert!(!refused.is_empty());
    assert!(
        refused
            .iter()
            .all(|e| e.contains("UnknownCA") || e.contains("unknown")),
        "{refused:?}"
    );
    assert!(
        s.proxy
            .process
            .logs()
            .contains("upstream TLS handshake failed"),
        "warned"
    );
    wait_until(
        std::time::Duration::from_secs(5),
        "the failure counted",
        || async {
            let (_, m) = s.proxy.admin_get("/metrics").await.unwrap();
            m.contains("tandem_proxy_upstream_tls_failures_total{reason=\"unknown_issuer\"}")
        },
    )
    .await
    .unwrap();

    // A name the certificate does not hold fails too, for that reason.
    let s = setup(
        &backend_ca,
        &["api.internal"],
        "127.0.0.1",
        verified(&backend_ca, "other.internal"),
        0,
    )
    .await;
    assert_eq!(get(&s.proxy.url("/x")).await.0, 502);
    let b = s
        .proxy
        .backend_state("api", &s.backend.address())
        .await
        .unwrap();
    assert!(
        b["tls_failure"]
            .as_str()
            .unwrap_or_default()
            .contains("not valid for name"),
        "{b}"
    );
}

#[tokio::test]
async fn insecure_accepts_any_certificate() {
    let unknown = TestCa::new("nobody's CA").unwrap();
    let s = setup(
        &unknown,
        &["whatever"],
        "127.0.0.1",
        BackendTls {
            insecure: true,
            ..Default::default()
        },
        5,
    )
    .await;
    let (status, body) = get(&s.proxy.url("/x")).await;
    assert_eq!(status, 200, "{body}\n{}", s.proxy.process.logs());
    assert_eq!(s.backend.requests()[0].sni, None, "an IP address is no SNI");
}
