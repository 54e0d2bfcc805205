//! TLS termination: the certificates the proxy serves, picked by SNI, and
//! the handshake in front of the HTTP servers.
//!
//! The certificates come with the configuration ([`Snapshot::certificates`]).
//! Each applied snapshot whose certificates changed builds a new [`Certs`]
//! and swaps it in (`ArcSwap`): a handshake reads the set once, lock-free,
//! so a rotated certificate applies to new handshakes only, and connections
//! already established keep theirs. ALPN offers `h2` and `http/1.1`; TLS 1.3
//! and 1.2 with rustls's default (ring) cipher suites; RSA keys sign with
//! AWS-LC, the others with ring ([`tandem_tls::signing`]).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics::Counter;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tandem_core::{CertName, Certificate, Snapshot};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The certificates served now.
#[derive(Debug, Default)]
pub struct Certs {
    /// In name order; with no SNI, or an SNI nothing matches, the first
    /// one answers (as nginx's default server does).
    served: Vec<(CertName, Arc<CertifiedKey>)>,
    names: tandem_tls::Names,
}

impl Certs {
    /// Builds the set from declared certificates. One that does not parse
    /// (the control plane checks them on write, so only a hand-edited disk
    /// copy can hold one) is left out and reported.
    pub fn build(declared: &BTreeMap<CertName, Certificate>) -> (Certs, Vec<String>) {
        let mut certs = Certs::default();
        let mut problems = Vec::new();
        for (name, c) in declared {
            match tandem_tls::parse(&c.chain_pem, c.key_pem.expose()) {
                Ok(parsed) => {
                    let index = certs.served.len();
                    certs
                        .names
                        .insert(index, parsed.info.sans.iter().map(String::as_str));
                    certs.served.push((name.clone(), parsed.key));
                    metrics::gauge!("tandem_proxy_tls_certificate_not_after_seconds", "name" => name.to_string())
                        .set(parsed.info.not_after_unix_s as f64);
                    metrics::gauge!("tandem_proxy_tls_certificate_served", "name" => name.to_string())
                        .set(1.0);
                }
                Err(e) => problems.push(format!("certificate {name:?} is not served: {e}")),
            }
        }
        (certs, problems)
    }

    pub fn names(&self) -> impl Iterator<Item = &CertName> {
        self.served.iter().map(|(n, _)| n)
    }

    fn pick(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let index = sni.and_then(|s| self.names.lookup(s)).unwrap_or(0);
        self.served.get(index).map(|(_, k)| k)
    }
}

/// Reads the current set on every handshake.
#[derive(Debug)]
struct Resolver(Arc<ArcSwap<Certs>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().pick(hello.server_name()).cloned()
    }
}

/// The proxy's TLS side: its certificates, its rustls configuration and
/// its counters.
pub struct Tls {
    certs: Arc<ArcSwap<Certs>>,
    /// The declared certificates last built, to rebuild only on a change
    /// (touched by the config subscription only, never by a handshake).
    declared: Mutex<BTreeMap<CertName, Certificate>>,
    acceptor: TlsAcceptor,
    handshakes: Handshakes,
}

impl Tls {
    pub fn new() -> Result<Self, rustls::Error> {
        let certs = Arc::new(ArcSwap::from_pointee(Certs::default()));
        let provider = Arc::new(tandem_tls::signing::provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(certs.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        // Stateless resumption, as nginx does by default; the ticket key
        // rotates every 6 hours.
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Self {
            certs,
            declared: Mutex::new(BTreeMap::new()),
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshakes: Handshakes::new(),
        })
    }

    /// Serves the certificates of `snapshot` from the next handshake on,
    /// if they changed. Returns the problems found (certificates left out).
    pub fn install(&self, snapshot: &Snapshot) -> Vec<String> {
        let mut declared = self.declared.lock().unwrap_or_else(|p| p.into_inner());
        if *declared == snapshot.certificates {
            return Vec::new();
        }
        for gone in declared
            .keys()
            .filter(|n| !snapshot.certificates.contains_key(*n))
        {
            metrics::gauge!("tandem_proxy_tls_certificate_served", "name" => gone.to_string())
                .set(0.0);
        }
        // A replica that copied its configuration from another (its own
        // database away since it started) has the chains but not the
        // keys, which no read returns: keep the key we have for a chain
        // we already serve.
        let mut incoming = snapshot.certificates.clone();
        for (name, c) in incoming.iter_mut() {
            if c.key_pem.is_empty()
                && let Some(known) = declared.get(name)
                && known.chain_pem == c.chain_pem
            {
                c.key_pem = known.key_pem.clone();
            }
        }
        let (certs, problems) = Certs::build(&incoming);
        for p in &problems {
            tracing::error!(problem = %p, "certificate left out");
        }
        tracing::info!(
            certificates = certs.served.len(),
            names = ?certs.names().map(CertName::as_str).collect::<Vec<_>>(),
            "TLS certificates applied to new handshakes"
        );
        self.certs.store(Arc::new(certs));
        *declared = incoming;
        problems
    }

    /// The names of the certificates served now.
    pub fn served(&self) -> Vec<String> {
        self.certs.load().names().map(|n| n.to_string()).collect()
    }

    /// The handshake, within `timeout`. Failures are counted by reason and
    /// logged at debug level (a scanner's garbage is not an event).
    pub async fn accept(&self, tcp: TcpStream, timeout: Duration) -> Option<TlsStream<TcpStream>> {
        if self.certs.load().served.is_empty() {
            self.handshakes.failed("no_certificate");
            return None;
        }
        let result = tokio::time::timeout(timeout, self.acceptor.accept(tcp)).await;
        match result {
            Ok(Ok(stream)) => {
                self.handshakes.done(stream.get_ref().1);
                Some(stream)
            }
            Ok(Err(e)) => {
                let reason = failure_reason(&e);
                tracing::debug!(error = %e, reason, "TLS handshake failed");
                self.handshakes.failed(reason);
                None
            }
            Err(_) => {
                self.handshakes.failed("timeout");
                None
            }
        }
    }
}

/// A bounded set of reasons, for the failures counter's label.
fn failure_reason(e: &io::Error) -> &'static str {
    use rustls::AlertDescription as A;
    let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof => "closed",
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => "closed",
            _ => "io",
        };
    };
    match tls {
        // The client refused our certificate (curl without the right CA).
        rustls::Error::AlertReceived(A::UnknownCA | A::BadCertificate | A::CertificateUnknown) => {
            "client_rejected_certificate"
        }
        rustls::Error::AlertReceived(_) => "client_alert",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        rustls::Error::NoApplicationProtocol => "no_application_protocol",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => "not_tls",
        rustls::Error::PeerMisbehaved(_) => "misbehaved",
        _ => "other",
    }
}

struct Handshakes {
    /// By version (1.3, 1.2) and ALPN (h2, http/1.1, none).
    done: [[Counter; 3]; 2],
}

impl Handshakes {
    fn new() -> Self {
        let c = |v: &'static str, a: &'static str| metrics::counter!("tandem_proxy_tls_handshakes_total", "version" => v, "alpn" => a);
        let per = |v| [c(v, "h2"), c(v, "http/1.1"), c(v, "none")];
        Self {
            done: [per("1.3"), per("1.2")],
        }
    }

    fn done(&self, conn: &rustls::ServerConnection) {
        let v = usize::from(conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3));
        let a = match conn.alpn_protocol() {
            Some(b"h2") => 0,
            Some(_) => 1,
            None => 2,
        };
        self.done[v][a].increment(1);
    }

    fn failed(&self, reason: &'static str) {
        metrics::counter!("tandem_proxy_tls_handshake_failures_total", "reason" => reason)
            .increment(1);
    }
}

/// Did the client pick HTTP/2 by ALPN?
pub fn is_h2(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}
