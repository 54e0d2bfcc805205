//! The private keys a certificate is served with: which library signs the
//! handshakes.
//!
//! RSA keys sign with AWS-LC, every other key type with ring. A full
//! handshake's main cost on the server is its one signature, and AWS-LC
//! signs RSA-2048 2.3x faster than ring on the project's machines (255
//! against 590 us of CPU, as fast as OpenSSL 3: both use AVX-512 IFMA
//! there); for ECDSA P-256 the two are within 7 %, about 1 us of a
//! handshake (`examples/signers.rs` measures it; docs/benchmarks.md has
//! the figures). Everything else of a TLS connection (cipher suites, key
//! exchange, tickets, randomness, verification) stays ring's: [`KEYS`] is
//! only the key provider of the otherwise ring-based provider
//! ([`provider`]).
//!
//! AWS-LC is used directly, not through rustls's `aws_lc_rs` feature: with
//! `ring` also on, rustls would have no process default provider to pick
//! from its features, and every configuration built without a provider
//! (by a dependency) would panic unless one was installed first.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self as lc, KeyPair, RsaKeyPair};
use rustls::SignatureAlgorithm;
use rustls::SignatureScheme;
use rustls::crypto::{CryptoProvider, KeyProvider};
use rustls::pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer, alg_id};
use rustls::sign::{Signer, SigningKey, public_key_to_spki};

/// The key provider: RSA with AWS-LC, the rest with ring.
pub static KEYS: Keys = Keys;

/// See [`KEYS`].
#[derive(Debug)]
pub struct Keys;

impl KeyProvider for Keys {
    fn load_private_key(
        &self,
        key_der: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn SigningKey>, rustls::Error> {
        load(&key_der)
    }
}

/// ring's provider with [`KEYS`] as its key provider: what a server
/// presenting certificates uses.
pub fn provider() -> CryptoProvider {
    CryptoProvider {
        key_provider: &KEYS,
        ..rustls::crypto::ring::default_provider()
    }
}

/// A signing key for `der`: an RSA key (PKCS#1 or PKCS#8, 2048 bits or
/// more) signs with AWS-LC, anything else is ring's to load.
pub fn load(der: &PrivateKeyDer<'_>) -> Result<Arc<dyn SigningKey>, rustls::Error> {
    match RsaKey::new(der) {
        Some(rsa) => Ok(Arc::new(rsa)),
        None => rustls::crypto::ring::sign::any_supported_type(der),
    }
}

/// The schemes an RSA key signs with, the preferred first (as rustls's
/// own RSA keys order them).
const RSA_SCHEMES: [(SignatureScheme, &dyn lc::RsaEncoding); 6] = [
    (SignatureScheme::RSA_PSS_SHA512, &lc::RSA_PSS_SHA512),
    (SignatureScheme::RSA_PSS_SHA384, &lc::RSA_PSS_SHA384),
    (SignatureScheme::RSA_PSS_SHA256, &lc::RSA_PSS_SHA256),
    (SignatureScheme::RSA_PKCS1_SHA512, &lc::RSA_PKCS1_SHA512),
    (SignatureScheme::RSA_PKCS1_SHA384, &lc::RSA_PKCS1_SHA384),
    (SignatureScheme::RSA_PKCS1_SHA256, &lc::RSA_PKCS1_SHA256),
];

/// An RSA private key held by AWS-LC.
struct RsaKey(Arc<RsaKeyPair>);

impl RsaKey {
    /// `None` when `der` is not an RSA key AWS-LC accepts.
    fn new(der: &PrivateKeyDer<'_>) -> Option<Self> {
        let pair = match der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            _ => return None,
        };
        pair.ok().map(|p| Self(Arc::new(p)))
    }
}

impl SigningKey for RsaKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let (scheme, encoding) = RSA_SCHEMES
            .into_iter()
            .find(|(scheme, _)| offered.contains(scheme))?;
        Some(Box::new(RsaSigner {
            key: self.0.clone(),
            scheme,
            encoding,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(public_key_to_spki(
            &alg_id::RSA_ENCRYPTION,
            self.0.public_key(),
        ))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::RSA
    }
}

impl fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaKey")
            .field("library", &"aws-lc")
            .field("bits", &(self.0.public_modulus_len() * 8))
            .finish()
    }
}

struct RsaSigner {
    key: Arc<RsaKeyPair>,
    scheme: SignatureScheme,
    encoding: &'static dyn lc::RsaEncoding,
}

impl Signer for RsaSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(self.encoding, &SystemRandom::new(), message, &mut signature)
            .map_err(|_| {
                rustls::Error::General(format!("RSA signing ({:?}) failed", self.scheme))
            })?;
        Ok(signature)
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

impl fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaSigner")
            .field("library", &"aws-lc")
            .field("scheme", &self.scheme)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::encoding::AsDer;
    use rustls::pki_types::{PrivatePkcs1KeyDer, PrivatePkcs8KeyDer};

    use super::*;

    fn rsa_pkcs8() -> Vec<u8> {
        aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .and_then(|k| k.as_der())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// The RSAPrivateKey inside a PKCS#8 PrivateKeyInfo (its third field,
    /// an OCTET STRING): the key as `BEGIN RSA PRIVATE KEY` holds it.
    fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
        let (_, info) = x509_parser::der_parser::parse_der(pkcs8).unwrap();
        info.as_sequence().unwrap()[2].as_slice().unwrap().to_vec()
    }

    fn pkcs8(der: &[u8]) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()))
    }

    #[test]
    fn rsa_keys_sign_with_aws_lc_and_ecdsa_keys_with_ring() {
        let rsa = rsa_pkcs8();
        for der in [
            pkcs8(&rsa),
            PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(pkcs1_of(&rsa))),
        ] {
            let key = load(&der).unwrap();
            assert_eq!(
                format!("{key:?}"),
                r#"RsaKey { library: "aws-lc", bits: 2048 }"#
            );
            assert_eq!(key.algorithm(), SignatureAlgorithm::RSA);
        }
        let rng = ring::rand::SystemRandom::new();
        let p256 = &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let ec = ring::signature::EcdsaKeyPair::generate_pkcs8(p256, &rng).unwrap();
        let key = load(&pkcs8(ec.as_ref())).unwrap();
        assert!(!format!("{key:?}").contains("aws-lc"), "{key:?}");
        assert_eq!(key.algorithm(), SignatureAlgorithm::ECDSA);
        // Through the provider a server is built with, too.
        let key = provider()
            .key_provider
            .load_private_key(pkcs8(&rsa))
            .unwrap();
        assert!(format!("{key:?}").contains("aws-lc"), "{key:?}");
    }

    #[test]
    fn rsa_signatures_verify_with_ring_for_every_scheme_offered() {
        use ring::signature as v;
        let key = load(&pkcs8(&rsa_pkcs8())).unwrap();
        let spki = key.public_key().unwrap();
        // The SPKI's BIT STRING: the RSAPublicKey ring verifies with.
        let (_, spki) = x509_parser::der_parser::parse_der(spki.as_ref()).unwrap();
        let public = spki.as_sequence().unwrap()[1]
            .as_bitstring()
            .unwrap()
            .data
            .to_vec();
        let message = b"TLS 1.3, server CertificateVerify";
        let checks: [(SignatureScheme, &dyn v::VerificationAlgorithm); 6] = [
            (
                SignatureScheme::RSA_PSS_SHA256,
                &v::RSA_PSS_2048_8192_SHA256,
            ),
            (
                SignatureScheme::RSA_PSS_SHA384,
                &v::RSA_PSS_2048_8192_SHA384,
            ),
            (
                SignatureScheme::RSA_PSS_SHA512,
                &v::RSA_PSS_2048_8192_SHA512,
            ),
            (
                SignatureScheme::RSA_PKCS1_SHA256,
                &v::RSA_PKCS1_2048_8192_SHA256,
            ),
            (
                SignatureScheme::RSA_PKCS1_SHA384,
                &v::RSA_PKCS1_2048_8192_SHA384,
            ),
            (
                SignatureScheme::RSA_PKCS1_SHA512,
                &v::RSA_PKCS1_2048_8192_SHA512,
            ),
        ];
        for (scheme, algorithm) in checks {
            let signer = key.choose_scheme(&[scheme]).unwrap();
            assert_eq!(signer.scheme(), scheme);
            let signature = signer.sign(message).unwrap();
            v::UnparsedPublicKey::new(algorithm, &public)
                .verify(message, &signature)
                .unwrap_or_else(|_| panic!("{scheme:?}: the signature does not verify"));
        }
    }

    #[test]
    fn rsa_keys_prefer_pss_and_refuse_schemes_of_other_key_types() {
        let key = load(&pkcs8(&rsa_pkcs8())).unwrap();
        let offered = [
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::RSA_PKCS1_SHA256,
            SignatureScheme::RSA_PSS_SHA256,
        ];
        let signer = key.choose_scheme(&offered).unwrap();
        assert_eq!(signer.scheme(), SignatureScheme::RSA_PSS_SHA256);
        assert!(
            key.choose_scheme(&[
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignatureScheme::ED25519
            ])
            .is_none()
        );
    }
}
