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
}
