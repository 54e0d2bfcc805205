//! A certificate chain and its key: parsed, checked and inspected.

use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::Error;

/// What can be known of a certificate from its chain alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The leaf's DNS names (subjectAltName), lowercased.
    pub sans: Vec<String>,
    pub not_before_unix_s: i64,
    /// The earliest end of validity in the chain: when it stops working.
    pub not_after_unix_s: i64,
    /// SHA-256 of the leaf's DER, hex.
    pub fingerprint_sha256: String,
    /// "ECDSA P-256", "RSA 2048", "Ed25519".
    pub key_type: String,
}

/// A chain and key ready to serve.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub key: Arc<CertifiedKey>,
    pub info: Info,
}

/// Parses `chain_pem` (leaf first) and `key_pem` and checks that the key
/// is the leaf's. Validity dates are not checked (see [`check`]).
pub fn parse(chain_pem: &str, key_pem: &str) -> Result<Parsed, Error> {
    let chain = chain_der(chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
        // The PEM parser's messages may quote the input: say what is wrong
        // in our own words, never with the key's bytes.
        let why = match e {
            pem::Error::NoItemsFound => {
                "no PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block found"
            }
            pem::Error::MissingSectionEnd { .. } => "a PEM block is not closed by its END line",
            pem::Error::Base64Decode(_) => "a PEM block's body is not valid base64",
            _ => "not a PEM private key",
        };
        Error::invalid("key_pem", why)
    })?;
    let signing = crate::signing::load(&key).map_err(|_| {
        Error::invalid(
            "key_pem",
            "unsupported private key (use ECDSA P-256/P-384, RSA of 2048 bits or more, or Ed25519)",
        )
    })?;
    let info = inspect(&chain)?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(Error::invalid(
                "key_pem",
                "does not match the leaf certificate (the first one in chain_pem)",
            ));
        }
        Err(_) => {
            return Err(Error::invalid(
                "key_pem",
                "cannot tell whether it matches the leaf certificate",
            ));
        }
    }
    Ok(Parsed {
        key: Arc::new(certified),
        info,
    })
}

/// [`parse`], then what a certificate must also be to be accepted: every
/// certificate of the chain valid at `now_unix_s`, and the leaf naming at
/// least one DNS name.
pub fn check(chain_pem: &str, key_pem: &str, now_unix_s: i64) -> Result<Parsed, Error> {
    let parsed = parse(chain_pem, key_pem)?;
    for (i, der) in chain_der(chain_pem)?.iter().enumerate() {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| Error::invalid("chain_pem", format!("certificate {}: {e}", i + 1)))?;
        let validity = cert.validity();
        let which = if i == 0 {
            format!("the leaf ({})", cert.subject())
        } else {
            format!("certificate {} ({})", i + 1, cert.subject())
        };
        if validity.not_after.timestamp() < now_unix_s {
            return Err(Error::invalid(
                "chain_pem",
                format!("{which} expired on {}", validity.not_after),
            ));
        }
        if validity.not_before.timestamp() > now_unix_s {
            return Err(Error::invalid(
                "chain_pem",
                format!("{which} is not valid before {}", validity.not_before),
            ));
        }
    }
    if parsed.info.sans.is_empty() {
        return Err(Error::invalid(
            "chain_pem",
            "the leaf names no DNS name in its subjectAltName: no client could match it",
        ));
    }
    Ok(parsed)
}

/// What the chain says of itself (no key needed).
pub fn inspect_chain(chain_pem: &str) -> Result<Info, Error> {
    inspect(&chain_der(chain_pem)?)
}

fn chain_der(chain_pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid("chain_pem", format!("not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(Error::invalid("chain_pem", "no CERTIFICATE block found"));
    }
    Ok(chain)
}

fn inspect(chain: &[CertificateDer<'static>]) -> Result<Info, Error> {
    let mut not_after = i64::MAX;
    let mut leaf_info = None;
    for (i, der) in chain.iter().enumerate() {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| {
            Error::invalid(
                "chain_pem",
                format!("certificate {} is not X.509: {e}", i + 1),
            )
        })?;
        not_after = not_after.min(cert.validity().not_after.timestamp());
        if i == 0 {
            leaf_info = Some(leaf(&cert, der)?);
        }
    }
    let (sans, not_before_unix_s, fingerprint_sha256, key_type) =
        leaf_info.expect("the chain is not empty");
    Ok(Info {
        sans,
        not_before_unix_s,
        not_after_unix_s: not_after,
        fingerprint_sha256,
        key_type,
    })
}

fn leaf(
    cert: &X509Certificate<'_>,
    der: &[u8],
) -> Result<(Vec<String>, i64, String, String), Error> {
    let mut sans = Vec::new();
    let ext = cert
        .subject_alternative_name()
        .map_err(|e| Error::invalid("chain_pem", format!("the leaf's subjectAltName: {e}")))?;
    if let Some(ext) = ext {
        for name in &ext.value.general_names {
            if let GeneralName::DNSName(n) = name {
                sans.push(n.to_ascii_lowercase());
            }
        }
    }
    let key_type = match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        Ok(PublicKey::EC(ec)) => format!("ECDSA P-{}", ec.key_size()),
        _ if cert.public_key().algorithm.algorithm.to_id_string() == "1.3.101.112" => {
            "Ed25519".into()
        }
        _ => cert.public_key().algorithm.algorithm.to_id_string(),
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    Ok((
        sans,
        cert.validity().not_before.timestamp(),
        crate::seal::hex(digest.as_ref()),
        key_type,
    ))
}
