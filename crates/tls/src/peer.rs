//! Component identities carried by certificates: the contract between the
//! code that issues them (`tandemctl certs init`) and the code that reads
//! them on every call (the control plane's authorization).
//!
//! A component certificate names its holder with one URI subject
//! alternative name, `spiffe://tandem/<role>/<name>` (the SPIFFE ID shape
//! Consul Connect and Istio use), e.g. `spiffe://tandem/proxy/proxy-1`.
//! Roles are [`ROLES`]; a name is what `change_log` records as the actor and
//! what `ReportHealth`/`ReportApplied` must match.

use std::sync::Arc;

/// The roles a component certificate may carry.
pub const ROLES: [&str; 5] = ["admin", "operator", "replica", "proxy", "agent"];

/// The URI a certificate for `name` in `role` carries as its identity.
pub fn identity_uri(role: &str, name: &str) -> String {
    format!("spiffe://tandem/{role}/{name}")
}

/// `(role, name)` from an identity URI, if it is one of ours.
pub fn parse_identity_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("spiffe://tandem/")?;
    let (role, name) = rest.split_once('/')?;
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (ROLES.contains(&role) && valid_name).then_some((role, name))
}

/// The verified leaf certificate (DER) a client presented on the TLS
/// connection a request arrived on. The server's connection layer puts it
/// into each request's extensions; it is absent over plain TCP or when the
/// client presented none.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<Vec<u8>>);

/// The identity a component certificate names: its role (one of
/// [`ROLES`]) and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    pub role: String,
    pub name: String,
}

/// Why a verified certificate names no identity Tandem accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the client certificate does not parse: {0}")]
    Unparsable(String),
    #[error(
        "the client certificate carries no `spiffe://tandem/<role>/<name>` URI (roles: {})",
        ROLES.join(", ")
    )]
    None,
    #[error("the client certificate carries {0} Tandem identity URIs; a component has one")]
    Several(usize),
}

/// The identity in a component certificate (DER of the leaf): its one
/// `spiffe://tandem/<role>/<name>` URI subject alternative name. Other
/// names (DNS, IP, foreign URIs) are ignored; none or several of ours is
/// an error, so a certificate never stands for two components.
pub fn identity_of(der: &[u8]) -> Result<CertIdentity, IdentityError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparsable(format!("subjectAltName: {e}")))?;
    let found: Vec<CertIdentity> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(uri) => parse_identity_uri(uri),
            _ => None,
        })
        .map(|(role, name)| CertIdentity {
            role: role.to_string(),
            name: name.to_string(),
        })
        .collect();
    match found.len() {
        0 => Err(IdentityError::None),
        1 => Ok(found.into_iter().next().expect("one")),
        n => Err(IdentityError::Several(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_round_trip_and_refuse_strangers() {
        let uri = identity_uri("proxy", "proxy-1");
        assert_eq!(uri, "spiffe://tandem/proxy/proxy-1");
        assert_eq!(parse_identity_uri(&uri), Some(("proxy", "proxy-1")));
        assert_eq!(parse_identity_uri("spiffe://tandem/root/x"), None);
        assert_eq!(parse_identity_uri("spiffe://tandem/proxy/"), None);
        assert_eq!(parse_identity_uri("spiffe://tandem/proxy/a/b"), None);
        assert_eq!(parse_identity_uri("spiffe://other/proxy/a"), None);
        assert_eq!(parse_identity_uri("spiffe://tandem/admin/a b"), None);
    }

    // Made with `openssl req -x509 -addext subjectAltName=URI:...` (the
    // issuing side does not matter here: the TLS layer verified the chain).
    const AGENT: &[u8] = include_bytes!("testdata/agent.der");
    const PROXY: &[u8] = include_bytes!("testdata/proxy.der");
    const NO_IDENTITY: &[u8] = include_bytes!("testdata/no-identity.der");
    const TWO: &[u8] = include_bytes!("testdata/two-identities.der");

    #[test]
    fn the_identity_is_the_one_tandem_uri_of_the_certificate() {
        assert_eq!(
            identity_of(AGENT),
            Ok(CertIdentity {
                role: "agent".into(),
                name: "agent-1".into()
            })
        );
        assert_eq!(identity_of(PROXY).map(|i| i.role), Ok("proxy".into()));
        assert_eq!(identity_of(NO_IDENTITY), Err(IdentityError::None));
        assert_eq!(identity_of(TWO), Err(IdentityError::Several(2)));
        assert!(matches!(
            identity_of(&AGENT[..AGENT.len() / 2]),
            Err(IdentityError::Unparsable(_))
        ));
        assert!(matches!(
            identity_of(b"not a certificate"),
            Err(IdentityError::Unparsable(_))
        ));
    }
}
