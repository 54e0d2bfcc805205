//! The client side, for TLS from the proxy to a pool's backends: the CA
//! bundle checked, and the rustls client configuration built from a pool's
//! [`BackendTls`] settings.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tandem_core::BackendTls;

use crate::Error;

/// The trust anchors of a PEM bundle: every certificate must parse.
pub fn ca_bundle(ca_pem: &str) -> Result<RootCertStore, Error> {
    let certs = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid("ca_pem", format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::invalid("ca_pem", "no CERTIFICATE block found"));
    }
    let mut roots = RootCertStore::empty();
    for (i, der) in certs.into_iter().enumerate() {
        roots.add(der).map_err(|e| {
            Error::invalid(
                "ca_pem",
                format!("certificate {} is not a usable trust anchor: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

/// The client configuration for a pool's backends: TLS 1.3 and 1.2 with
/// ring, ALPN `http/1.1` (the proxy's upstream client speaks HTTP/1.1),
/// rustls's in-memory session cache (resumption, so a pool's new
/// connections skip the full handshake), and verification against the
/// pool's CA bundle, the Mozilla roots, or nothing when `insecure`.
pub fn client_config(tls: &BackendTls) -> Result<ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::invalid("backend_tls", e.to_string()))?;
    let mut config = if tls.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let roots = if tls.ca_pem.is_empty() {
            RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            }
        } else {
            ca_bundle(&tls.ca_pem)?
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The server name to send and verify, from text (a DNS name or an IP
/// address).
pub fn server_name(name: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(name.to_string())
        .map_err(|_| Error::invalid("sni", format!("{name:?} is not a DNS name or IP address")))
}

/// A failed handshake in words an operator reads (the agents' health
/// reason): "certificate signed by unknown authority", "certificate is not
/// valid for \"api.internal\"", "the backend does not speak TLS on this
/// port". Certificate errors are named the way Go's and curl's clients
/// name them; anything rarer is rustls's own text.
pub fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "certificate signed by unknown authority".into(),
            C::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "certificate is not valid for {:?} (it names {})",
                expected.to_str(),
                presented_names(presented)
            ),
            C::NotValidForName => "certificate is not valid for the server name sent".into(),
            C::Expired | C::ExpiredContext { .. } => "certificate has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "certificate is not valid yet".into(),
            C::Revoked => "certificate has been revoked".into(),
            C::BadSignature | C::UnsupportedSignatureAlgorithmContext { .. } => {
                "certificate signature cannot be verified".into()
            }
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "certificate is not for server authentication".into()
            }
            C::BadEncoding => "certificate cannot be parsed".into(),
            other => format!("invalid certificate: {other:?}"),
        },
        rustls::Error::AlertReceived(a) => format!("the backend refused the handshake ({a:?})"),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the backend does not speak TLS on this port".into()
        }
        rustls::Error::PeerIncompatible(p) => {
            format!("no protocol version or cipher in common with the backend ({p:?})")
        }
        other => other.to_string(),
    }
}

/// The names a certificate presented, as webpki lists them
/// (`DnsName("shop.test")`), for a reason: the first few, bare, with no
/// control characters (they come from the peer).
fn presented_names(presented: &[String]) -> String {
    const SHOWN: usize = 3;
    if presented.is_empty() {
        return "no name".into();
    }
    let mut names: Vec<String> = presented
        .iter()
        .take(SHOWN)
        .map(|n| {
            let bare = n
                .strip_prefix("DnsName(\"")
                .and_then(|n| n.strip_suffix("\")"))
                .unwrap_or(n);
            bare.chars()
                .take(100)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect()
        })
        .collect();
    if presented.len() > SHOWN {
        names.push(format!("{} more", presented.len() - SHOWN));
    }
    names.join(", ")
}

/// `--backend-tls-insecure`: any certificate is accepted, but the
/// handshake's signatures are still checked (the peer holds the key of
/// the certificate it sent).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bundles_are_refused_by_name() {
        let e = ca_bundle("hello").unwrap_err().to_string();
        assert_eq!(e, "ca_pem: no CERTIFICATE block found");
        let e = ca_bundle("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("ca_pem: certificate 1 is not a usable trust anchor"),
            "{e}"
        );
    }

    #[test]
    fn every_mode_builds_and_offers_http1() {
        for tls in [
            BackendTls::default(),
            BackendTls {
                insecure: true,
                ..Default::default()
            },
        ] {
            let c = client_config(&tls).unwrap();
            assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
        }
        assert!(server_name("10.0.0.1").is_ok());
        assert!(server_name("api.internal").is_ok());
        assert!(server_name("not a name").is_err());
    }

    #[test]
    fn handshake_failures_read_like_other_clients_name_them() {
        use rustls::CertificateError as C;
        let bad = |c| describe(&rustls::Error::InvalidCertificate(c));
        assert_eq!(
            bad(C::UnknownIssuer),
            "certificate signed by unknown authority"
        );
        assert_eq!(bad(C::Expired), "certificate has expired");
        assert_eq!(
            bad(C::NotValidForNameContext {
                expected: server_name("api.internal").unwrap(),
                presented: vec![
                    "DnsName(\"shop.test\")".into(),
                    "IpAddress(10.0.0.1)".into()
                ],
            }),
            "certificate is not valid for \"api.internal\" (it names shop.test, IpAddress(10.0.0.1))"
        );
        let plain = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        assert_eq!(
            describe(&plain),
            "the backend does not speak TLS on this port"
        );
    }
}
