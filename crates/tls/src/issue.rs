//! Issuing component certificates (`tandemctl certs`): a development CA
//! and, signed by it, one certificate per component naming its identity
//! ([`crate::peer::identity_uri`]) and, for servers, the host names and
//! addresses it is reached at.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::Error;
use crate::peer::{ROLES, identity_uri, parse_identity_uri};

/// How long a development CA is valid.
pub const CA_DAYS: i64 = 3650;
/// How long a component certificate is valid by default.
pub const LEAF_DAYS: i64 = 365;

/// A CA that signs component certificates.
pub struct Ca {
    /// The CA certificate (PEM): the trust anchor every component is given.
    pub cert_pem: String,
    key: KeyPair,
    common_name: String,
}

/// A component certificate (PEM) and its private key (PEM, PKCS#8).
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

fn rcgen_error(field: &'static str, e: rcgen::Error) -> Error {
    Error::invalid(field, e.to_string())
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Tandem");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl Ca {
    /// A new CA (ECDSA P-256) named `common_name`, valid for [`CA_DAYS`].
    pub fn generate(common_name: &str) -> Result<Ca, Error> {
        let key = KeyPair::generate().map_err(|e| rcgen_error("ca", e))?;
        let mut params = ca_params(common_name);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(CA_DAYS);
        let cert = params.self_signed(&key).map_err(|e| rcgen_error("ca", e))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
            common_name: common_name.to_string(),
        })
    }

    /// A CA read back from its certificate and key (PEM), e.g. to issue one
    /// more certificate. The key must be the certificate's.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, Error> {
        // Also checks that the key is the certificate's.
        crate::material::parse(cert_pem, key_pem).map_err(|e| match e {
            Error::Invalid { field, why } => Error::invalid(
                if field == "key_pem" {
                    "ca_key"
                } else {
                    "ca_cert"
                },
                why,
            ),
            other => other,
        })?;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| Error::invalid("ca_cert", "no CERTIFICATE block found"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| Error::invalid("ca_cert", e.to_string()))?;
        if !cert.is_ca() {
            return Err(Error::invalid("ca_cert", "not a CA certificate"));
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or_else(|| Error::invalid("ca_cert", "the CA names no common name"))?
            .to_string();
        let key = KeyPair::from_pem(key_pem).map_err(|e| rcgen_error("ca_key", e))?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key,
            common_name,
        })
    }

    /// The CA's private key (PEM): keep it off the machines that run
    /// components.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for `name` in `role`, valid for `days`: its one URI
    /// name is the identity, `hosts` (DNS names or IP addresses) are the
    /// names a server is reached at. Every component certificate may serve
    /// and be a client (a replica is both).
    pub fn issue(
        &self,
        role: &str,
        name: &str,
        hosts: &[String],
        days: i64,
    ) -> Result<Issued, Error> {
        if !ROLES.contains(&role) {
            return Err(Error::invalid(
                "role",
                format!("{role:?} is not one of {}", ROLES.join(", ")),
            ));
        }
        let uri = identity_uri(role, name);
        if parse_identity_uri(&uri).is_none() {
            return Err(Error::invalid(
                "name",
                format!("{name:?} must be letters, digits, '-', '_' or '.'"),
            ));
        }
        if !(1..=CA_DAYS).contains(&days) {
            return Err(Error::invalid(
                "days",
                format!("{days} is not between 1 and {CA_DAYS}"),
            ));
        }
        for host in hosts {
            if rustls::pki_types::ServerName::try_from(host.as_str()).is_err() {
                return Err(Error::invalid(
                    "hosts",
                    format!("{host:?} is not a DNS name or an IP address"),
                ));
            }
        }
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(|e| {
            Error::invalid(
                "hosts",
                format!("{hosts:?}: each must be a DNS name or an IP address ({e})"),
            )
        })?;
        params.subject_alt_names.push(SanType::URI(
            uri.clone().try_into().map_err(|e| rcgen_error("name", e))?,
        ));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, role);
        dn.push(DnType::OrganizationName, "Tandem");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(days);
        let key = KeyPair::generate().map_err(|e| rcgen_error("key", e))?;
        let issuer = Issuer::new(ca_params(&self.common_name), &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| rcgen_error("cert", e))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

use rustls::pki_types::pem::PemObject as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_one_identity_and_their_hosts_and_chain_to_the_ca() {
        let ca = Ca::generate("Tandem test CA").unwrap();
        let issued = ca
            .issue(
                "replica",
                "control-1",
                &["control-1".into(), "127.0.0.1".into()],
                30,
            )
            .unwrap();
        let info = crate::inspect_chain(&issued.cert_pem).unwrap();
        assert_eq!(info.sans, vec!["control-1".to_string()]);
        let der =
            rustls::pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let uris: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(uris, vec!["spiffe://tandem/replica/control-1".to_string()]);
        crate::material::parse(&issued.cert_pem, &issued.key_pem).unwrap();

        // Read back, the CA issues certificates that verify the same way.
        let again = Ca::load(&ca.cert_pem, &ca.key_pem()).unwrap();
        let more = again.issue("agent", "agent-9", &[], 1).unwrap();
        let roots = crate::client::ca_bundle(&ca.cert_pem).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        for pem in [&issued.cert_pem, &more.cert_pem] {
            let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            verifier
                .verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now())
                .expect("chains to the CA");
        }
    }

    #[test]
    fn bad_requests_are_refused_naming_what_is_wrong() {
        let ca = Ca::generate("Tandem test CA").unwrap();
        let err = |r: Result<Issued, Error>| r.unwrap_err().to_string();
        assert!(err(ca.issue("root", "x", &[], 1)).starts_with("role: \"root\""));
        assert!(err(ca.issue("proxy", "a/b", &[], 1)).starts_with("name: "));
        assert!(err(ca.issue("proxy", "p", &[], 0)).starts_with("days: "));
        assert!(err(ca.issue("proxy", "p", &["not a host!".into()], 1)).starts_with("hosts: "));
        let other = Ca::generate("other").unwrap();
        assert!(
            Ca::load(&ca.cert_pem, &other.key_pem())
                .err()
                .unwrap()
                .to_string()
                .starts_with("ca_key: ")
        );
    }
}
