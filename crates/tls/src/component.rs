//! TLS between Tandem's own components (mTLS): every replica, proxy, agent
//! and `tandemctl` holds a certificate from one CA (see [`crate::issue`])
//! and checks the other side's against it.
//!
//! The configurations here read three files ([`Files`]): the CA bundle,
//! the component's certificate chain and its key. The certificate and key
//! are read again when either file changes ([`ReloadingKey`]), so a
//! rotated pair is used by the next handshake without a restart, while
//! established connections continue. The CA is read once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};

use crate::Error;

/// The three files of a component's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// PEM bundle of the CA(s) the other side's certificate must chain to.
    pub ca: PathBuf,
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

fn read(field: &'static str, path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(field, format!("cannot read {}: {e}", path.display())))
}

/// The trust anchors in the CA file.
pub fn roots(files: &Files) -> Result<RootCertStore, Error> {
    let pem = read("ca_file", &files.ca)?;
    crate::client::ca_bundle(&pem).map_err(|e| match e {
        Error::Invalid { why, .. } => {
            Error::invalid("ca_file", format!("{}: {why}", files.ca.display()))
        }
        other => other,
    })
}

/// What identifies one version of a file: a rewrite or a rename over it
/// changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

struct Current {
    stamps: (Option<Stamp>, Option<Stamp>),
    key: Arc<CertifiedKey>,
    /// The stamps of a pair that failed to load, so it is reported once.
    failed: Option<(Option<Stamp>, Option<Stamp>)>,
}

/// A certificate and key read from files and read again, at the next
/// handshake, once either file has changed (modification time, size or
/// inode). A changed pair that does not load (half written, key and
/// certificate not matching) is reported once with `tracing` and the
/// previous pair stays in use until the files are fixed.
pub struct ReloadingKey {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<Current>,
}

impl std::fmt::Debug for ReloadingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingKey")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ReloadingKey {
    /// Reads the pair now: a start with files that do not load fails here.
    pub fn new(cert: &Path, key: &Path) -> Result<Self, Error> {
        let stamps = (stamp(cert), stamp(key));
        let loaded = load(cert, key)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Mutex::new(Current {
                stamps,
                key: loaded,
                failed: None,
            }),
        })
    }

    /// The pair to present now, read again if its files changed.
    pub fn get(&self) -> Arc<CertifiedKey> {
        let stamps = (stamp(&self.cert), stamp(&self.key));
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if stamps != current.stamps && current.failed != Some(stamps) {
            match load(&self.cert, &self.key) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert.display(), "component certificate reloaded");
                    current.key = key;
                    current.stamps = stamps;
                    current.failed = None;
                }
                Err(e) => {
                    tracing::warn!(
                        cert = %self.cert.display(),
                        key = %self.key.display(),
                        error = %e,
                        "changed component certificate does not load; still presenting the previous one"
                    );
                    current.failed = Some(stamps);
                }
            }
        }
        current.key.clone()
    }
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, Error> {
    let chain = read("cert_file", cert)?;
    let key_pem = read("key_file", key)?;
    crate::material::parse(&chain, &key_pem)
        .map(|p| p.key)
        .map_err(|e| match e {
            Error::Invalid { field, why } => {
                let (name, path) = if field == "key_pem" {
                    ("key_file", key)
                } else {
                    ("cert_file", cert)
                };
                Error::invalid(name, format!("{}: {why}", path.display()))
            }
            other => other,
        })
}

impl ResolvesServerCert for ReloadingKey {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for ReloadingKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A server that requires a client certificate chaining to the CA and
/// presents the (reloading) pair; ALPN `h2` (gRPC).
pub fn server_config(files: &Files) -> Result<ServerConfig, Error> {
    let roots = Arc::new(roots(files)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| Error::invalid("ca_file", e.to_string()))?;
    let resolver = Arc::new(ReloadingKey::new(&files.cert, &files.key)?);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| Error::invalid("tls", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A client that checks the server's certificate against the CA and
/// presents the (reloading) pair; ALPN `h2` (gRPC).
pub fn client_config(files: &Files) -> Result<ClientConfig, Error> {
    let roots = roots(files)?;
    let resolver = Arc::new(ReloadingKey::new(&files.cert, &files.key)?);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| Error::invalid("tls", e.to_string()))?
        .with_root_certificates(roots)
        .with_client_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
