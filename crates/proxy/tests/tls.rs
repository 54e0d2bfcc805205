//! HTTPS at the edge, judged by real TLS clients: curl with and without
//! the right CA, `openssl s_client` for SNI, ALPN and protocol versions;
//! what the backend receives (`X-Forwarded-Proto: https`); the counters.

mod common;

use std::net::SocketAddr;

use common::*;
use tandem_core::{LbPolicy, Snapshot};
use tandem_testkit::certs::{KeyKind, TestCa};
use tandem_testkit::recording::RecordingBackend;
use tokio::process::Command;

struct Site {
    proxy: ProxyProcess,
    tls: SocketAddr,
    backend: RecordingBackend,
    ca: TestCa,
}

/// A proxy serving two certificates on its TLS listener: `shop`
/// (ECDSA, shop.test and *.shop.test) and `other` (RSA, other.test).
async fn site() -> Site {
    let ca = TestCa::new("Tandem test CA").unwrap();
    let shop = ca
        .issue(&["shop.test", "*.shop.test"], KeyKind::EcP256)
        .unwrap();
    let other = ca.issue(&["other.test"], KeyKind::Rsa2048).unwrap();
    let backend = RecordingBackend::start().await.unwrap();
    let snapshot = single_pool(
        pool_config("web", LbPolicy::RoundRobin),
        vec![common::backend(&backend.address())],
    );
    let (proxy, tls) = tls_proxy(
        snapshot,
        [certificate("shop", &shop), certificate("other", &other)],
    )
    .await;
    Site {
        proxy,
        tls,
        backend,
        ca,
    }
}

/// `openssl s_client`'s report of one handshake.
async fn s_client(tls: SocketAddr, extra: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &tls.to_string()])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl runs");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn resolve(host: &str, tls: SocketAddr) -> String {
    format!("{host}:{}:127.0.0.1", tls.port())
}

impl Site {
    /// curl for `https://HOST:PORT/PATH` on the TLS listener (HOST resolved
    /// to it), trusting the test CA, with `extra` arguments.
    async fn curl_https(&self, host: &str, path: &str, extra: &[&str]) -> (i32, String, String) {
        let ca = self.ca.cert_path().display().to_string();
        let resolve = resolve(host, self.tls);
        let url = format!("https://{host}:{}{path}", self.tls.port());
        let mut args = vec!["--cacert", &ca, "--resolve", &resolve];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args).await
    }

    /// `openssl s_client` with `extra` arguments, trusting the test CA and
    /// refusing what it cannot verify: its report of a handshake that
    /// verified.
    async fn s_client_verified(&self, extra: &[&str]) -> String {
        let ca = self.ca.cert_path().display().to_string();
        let verify = ["-CAfile", ca.as_str(), "-verify_return_error"];
        let out = s_client(self.tls, &[extra, &verify].concat()).await;
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        out
    }
}

#[tokio::test]
async fn curl_gets_https_with_the_right_ca_and_refuses_without_it() {
    let s = site().await;
    let url = format!("https://www.shop.test:{}/hello", s.tls.port());
    let fmt = "\n%{http_code} %{http_version}";

    let (code, out, err) = s.curl_https("www.shop.test", "/hello", &["-w", fmt]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\n200 2"), "HTTP/2 by ALPN: {out}");
    let (code, out, err) = s
        .curl_https("www.shop.test", "/hello", &["--http1.1", "-w", fmt])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\n200 1.1"), "{out}");
    // TLS 1.2 too.
    let (code, out, err) = s
        .curl_https("www.shop.test", "/hello", &["--tls-max", "1.2", "-w", fmt])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\n200 2"), "{out}");

    // What the backend got: the request, told it came over HTTPS.
    let seen = s.backend.requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for r in &seen {
        assert_eq!(r.target, "/hello");
        assert_eq!(r.header("x-forwarded-proto"), Some("https"), "{r:?}");
        assert_eq!(
            r.header("x-forwarded-host"),
            Some(&*format!("www.shop.test:{}", s.tls.port()))
        );
    }
    // A client that sets X-Forwarded-Proto itself is not believed.
    let (code, _, err) = s
        .curl_https(
            "www.shop.test",
            "/hello",
            &["-H", "X-Forwarded-Proto: http"],
        )
        .await;
    assert_eq!(code, 0, "{err}");
    let last_proto = || {
        let last = s.backend.requests().pop().unwrap();
        last.all("x-forwarded-proto").join(", ")
    };
    assert_eq!(last_proto(), "https");
    // The plain listener still says http.
    let (code, _, err) = curl(&[&s.proxy.url("/plain")]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(last_proto(), "http");

    // Without the CA (the system's store only): curl refuses the
    // certificate, and nothing reaches the backend.
    let before = s.backend.requests().len();
    let (code, _, err) = curl(&["--resolve", &resolve("www.shop.test", s.tls), &url]).await;
    assert_eq!(code, 60, "certificate problem expected: {err}");
    // A name the certificate does not cover, even with the right CA.
    let (code, _, err) = s.curl_https("a.b.shop.test", "/", &[]).await;
    assert!(
        code == 60 || code == 51,
        "name mismatch expected ({code}): {err}"
    );
    assert_eq!(s.backend.requests().len(), before);

    let (_, metrics) = s.proxy.admin_get("/metrics").await.unwrap();
    let line = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
            .to_owned()
    };
    line(r#"tandem_proxy_tls_handshakes_total{version="1.3",alpn="h2"}"#);
    line(r#"tandem_proxy_tls_handshakes_total{version="1.3",alpn="http/1.1"}"#);
    line(r#"tandem_proxy_tls_handshakes_total{version="1.2",alpn="h2"}"#);
    line(r#"tandem_proxy_tls_handshake_failures_total{reason="client_rejected_certificate"}"#);
    let not_after = line(r#"tandem_proxy_tls_certificate_not_after_seconds{name="shop"}"#);
    let value: f64 = not_after.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        value > now + 29.0 * 86400.0 && value < now + 31.0 * 86400.0,
        "{not_after}"
    );
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_the_protocol() {
    let s = site().await;

    let out = s
        .s_client_verified(&["-servername", "other.test", "-alpn", "h2,http/1.1"])
        .await;
    assert!(out.contains("subject=CN = other.test"), "{out}");
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    assert!(out.contains("Server public key is 2048 bit"), "RSA: {out}");
    assert!(out.contains("Peer signature type: RSA-PSS"), "{out}");
    // TLS 1.2 with a client offering only PKCS#1 v1.5 signatures: the RSA
    // key (AWS-LC's, tandem_tls::signing) signs those too.
    let out = s
        .s_client_verified(&[
            "-servername",
            "other.test",
            "-tls1_2",
            "-sigalgs",
            "RSA+SHA256",
        ])
        .await;
    assert!(out.contains("Peer signature type: RSA\n"), "{out}");

    let out = s
        .s_client_verified(&["-servername", "api.shop.test", "-alpn", "http/1.1"])
        .await;
    assert!(out.contains("subject=CN = shop.test"), "wildcard: {out}");
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    assert!(out.contains("Server public key is 256 bit"), "ECDSA: {out}");

    let out = s
        .s_client_verified(&["-servername", "shop.test", "-tls1_2"])
        .await;
    assert!(
        out.contains("Protocol  : TLSv1.2") || out.contains("TLSv1.2, Cipher"),
        "{out}"
    );
    assert!(out.contains("No ALPN negotiated"), "{out}");

    // Without SNI the first certificate by name answers (nginx's default
    // server); a client checking the name then refuses it.
    let out = s_client(s.tls, &["-noservername"]).await;
    assert!(out.contains("subject=CN = other.test"), "{out}");

    // Plain HTTP on the TLS port is a handshake failure, counted.
    let (code, _, _) = curl(&[&format!("http://{}/", s.tls)]).await;
    assert_ne!(code, 0);
    let (_, metrics) = s.proxy.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains(r#"tandem_proxy_tls_handshake_failures_total{reason="not_tls"}"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn routes_redirect_plain_http_to_https_and_send_hsts_over_tls() {
    let ca = TestCa::new("Tandem test CA").unwrap();
    let shop = ca.issue(&["shop.test"], KeyKind::EcP256).unwrap();
    let backend = RecordingBackend::start().await.unwrap();
    let mut snapshot: Snapshot = single_pool(
        pool_config("web", LbPolicy::RoundRobin),
        vec![common::backend(&backend.address())],
    );
    for r in &mut snapshot.routes {
        r.redirect_https = true;
        r.hsts_max_age_s = 31_536_000;
    }
    let (proxy, tls) = tls_proxy(snapshot, [certificate("shop", &shop)]).await;

    // Plain HTTP: 308 to the same URL on https (the TLS listener's port),
    // nothing forwarded, no HSTS (it means nothing over plain HTTP).
    let plain = format!("http://shop.test:{}/cart?id=7", proxy.addr.port());
    let (code, out, err) = curl(&[
        "-i",
        "--resolve",
        &format!("shop.test:{}:127.0.0.1", proxy.addr.port()),
        &plain,
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    let location = format!("location: https://shop.test:{}/cart?id=7\r\n", tls.port());
    assert!(out.to_ascii_lowercase().contains(&location), "{out}");
    assert!(
        !out.to_ascii_lowercase()
            .contains("strict-transport-security"),
        "{out}"
    );
    assert!(backend.requests().is_empty());

    // curl follows it (POST stays POST with 308) and gets HSTS over TLS,
    // on HTTP/2 and HTTP/1.1.
    let ca_path = ca.cert_path().display().to_string();
    for version in ["--http2", "--http1.1"] {
        let (code, out, err) = curl(&[
            version,
            "-i",
            "-L",
            "--cacert",
            &ca_path,
            "-d",
            "x=1",
            "--resolve",
            &format!("shop.test:{}:127.0.0.1", proxy.addr.port()),
            "--resolve",
            &resolve("shop.test", tls),
            &plain,
        ])
        .await;
        assert_eq!(code, 0, "{err}");
        let lower = out.to_ascii_lowercase();
        assert!(
            lower.contains("strict-transport-security: max-age=31536000\r\n"),
            "{out}"
        );
        assert_eq!(
            lower.matches("strict-transport-security").count(),
            1,
            "{out}"
        );
    }
    let seen = backend.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter()
            .all(|r| r.method == "POST" && r.target == "/cart?id=7" && r.body == b"x=1")
    );
}
