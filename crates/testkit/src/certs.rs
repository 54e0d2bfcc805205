//! Test certificates made with the `openssl` command-line tool: a CA of
//! its own per test, and leaf certificates it signs for given DNS names,
//! key types and validity dates.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The key a certificate is issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcP256,
    Rsa2048,
}

/// A leaf certificate (PEM, leaf only: the CA is the trust anchor) and
/// its private key (PEM, PKCS#8).
#[derive(Debug, Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// A throwaway certificate authority in a temporary directory.
pub struct TestCa {
    dir: tempfile::TempDir,
    pub cert_pem: String,
    issued: std::sync::atomic::AtomicU32,
}

const CONFIG: &str = "\
[ca]
default_ca = test_ca
[test_ca]
dir = .
database = index.txt
new_certs_dir = issued
serial = serial
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
x509_extensions = leaf
[any]
commonName = supplied
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
";

impl TestCa {
    /// A new CA (ECDSA P-256), valid for 30 days.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("ca.cnf"), CONFIG)?;
        std::fs::write(dir.path().join("index.txt"), "")?;
        std::fs::write(dir.path().join("serial"), "1000\n")?;
        std::fs::create_dir(dir.path().join("issued"))?;
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "30",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        let cert_pem = std::fs::read_to_string(dir.path().join("ca.pem"))?;
        Ok(Self {
            dir,
            cert_pem,
            issued: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// The CA's certificate as a file (for `curl --cacert`).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A leaf for `names` (the first is its CN), valid from now for 30 days.
    pub fn issue(&self, names: &[&str], key: KeyKind) -> anyhow::Result<Issued> {
        self.issue_between(names, key, None)
    }

    /// A leaf valid between two dates (`YYYYMMDDHHMMSSZ`), e.g. one that
    /// has expired.
    pub fn issue_dated(
        &self,
        names: &[&str],
        key: KeyKind,
        start: &str,
        end: &str,
    ) -> anyhow::Result<Issued> {
        self.issue_between(names, key, Some((start, end)))
    }

    fn issue_between(
        &self,
        names: &[&str],
        key: KeyKind,
        dates: Option<(&str, &str)>,
    ) -> anyhow::Result<Issued> {
        let Some(first) = names.first() else {
            bail!("a certificate needs at least one name");
        };
        let n = self
            .issued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let dir = self.dir.path();
        let (key_file, csr, cert) = (format!("{n}.key"), format!("{n}.csr"), format!("{n}.pem"));
        match key {
            KeyKind::EcP256 => openssl(
                dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    &key_file,
                ],
            )?,
            KeyKind::Rsa2048 => openssl(
                dir,
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                    &key_file,
                ],
            )?,
        }
        let sans = names
            .iter()
            .map(|n| format!("DNS:{n}"))
            .collect::<Vec<_>>()
            .join(",");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &key_file,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={first}"),
                "-addext",
                &format!("subjectAltName={sans}"),
            ],
        )?;
        let mut args = vec![
            "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in",
            &csr, "-out", &cert, "-notext",
        ];
        match dates {
            Some((start, end)) => args.extend(["-startdate", start, "-enddate", end]),
            None => args.extend(["-days", "30"]),
        }
        openssl(dir, &args)?;
        Ok(Issued {
            chain_pem: std::fs::read_to_string(dir.join(&cert))?,
            key_pem: std::fs::read_to_string(dir.join(&key_file))?,
        })
    }
}

/// The base64 SHA-256 of the leaf's public key (SPKI), as Chromium's
/// `--ignore-certificate-errors-spki-list` takes it: the browser trusts
/// that one key and nothing else.
pub fn spki_sha256_base64(chain_pem: &str) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("leaf.pem"), chain_pem)?;
    let out = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in leaf.pem -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | openssl enc -base64")
        .current_dir(dir.path())
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!("openssl: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Writes `issued` as `<name>.pem` and `<name>.key` in `dir`.
pub fn write_files(dir: &Path, name: &str, issued: &Issued) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, &issued.chain_pem)?;
    std::fs::write(&key, &issued.key_pem)?;
    Ok((cert, key))
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A TLS acceptor (rustls with ring, TLS 1.2 and 1.3, ALPN `http/1.1`)
/// serving this certificate chain and key (PEM), as the test backends do.
pub fn http1_acceptor(chain_pem: &str, key_pem: &str) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the certificate chain (PEM)")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("the private key (PEM)")?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}
