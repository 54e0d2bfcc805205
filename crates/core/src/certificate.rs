//! TLS certificates as declared configuration: a name, a PEM chain and its
//! private key. Parsing and checking the PEM is `tandem-tls`'s job; this
//! module only carries them, and keeps the key out of `Debug` output so a
//! log line can never show it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// A certificate's name: the same rules as a pool's (a DNS label).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CertName(String);

impl CertName {
    pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
        let name = name.into();
        crate::PoolName::new(name.clone())?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CertName {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, ValidationError> {
        CertName::new(s)
    }
}

impl From<CertName> for String {
    fn from(n: CertName) -> String {
        n.0
    }
}

/// A private key in PEM. `Debug` never shows it; it is serialised (the
/// proxy's on-disk copy, written 0600, needs it), so whatever serialises a
/// [`Certificate`] decides where the key goes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct PrivateKeyPem(String);

impl PrivateKeyPem {
    pub fn new(pem: impl Into<String>) -> Self {
        Self(pem.into())
    }

    /// The PEM text: only for the code that parses or seals it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(<redacted>)")
    }
}

/// A certificate chain (leaf first) and its private key, served by the
/// proxies' TLS listeners to clients whose SNI matches one of the leaf's
/// names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub name: CertName,
    pub chain_pem: String,
    pub key_pem: PrivateKeyPem,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let c = Certificate {
            name: CertName::new("shop").unwrap(),
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_pem: PrivateKeyPem::new("-----BEGIN PRIVATE KEY-----\nsecret"),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("redacted"));
        assert!(CertName::new("Bad_Name").is_err());
    }
}
