//! TLS material as Tandem handles it, shared by the control plane (which
//! checks certificates on write and keeps their keys sealed at rest) and
//! the proxy (which serves them).
//!
//! - [`material`]: a PEM chain and key parsed, checked (the key matches the
//!   leaf, the chain is within its validity) and inspected (names, dates,
//!   key type) — every problem an [`Error`] naming what is wrong;
//! - [`names`]: which certificate answers a client's SNI (exact names
//!   first, then one-label wildcards);
//! - [`client`]: the CA bundle and client configuration for TLS from the
//!   proxy to a pool's backends;
//! - [`signing`]: which library signs a certificate's handshakes (RSA
//!   with AWS-LC, the rest with ring) and the server's crypto provider;
//! - [`seal`]: private keys encrypted at rest with AES-256-GCM under a key
//!   read from a file;
//! - [`component`]: mTLS between Tandem's own components: the rustls
//!   server and client configurations, with a certificate and key read
//!   again from their files when they change (rotation without restart);
//! - [`issue`]: a development CA and the component certificates it signs
//!   (`tandemctl certs`);
//! - [`peer`]: the identity a component certificate carries (role and
//!   name in a SPIFFE-shaped URI) and the request extension holding it.
//!
//! It logs only when a rotated component certificate is picked up or does
//! not load, and no error it makes contains key material.

pub mod client;
pub mod component;
pub mod issue;
pub mod material;
pub mod names;
pub mod peer;
pub mod seal;
pub mod signing;

pub use material::{Info, Parsed, check, inspect_chain, parse};
pub use names::Names;
pub use seal::SecretsKey;

/// What is wrong with a certificate, a key or sealed data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `field` is the input at fault (`chain_pem`, `key_pem`), `why` says
    /// what is wrong with it.
    #[error("{field}: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("secrets key: {0}")]
    SecretsKey(String),
    #[error("sealed key of certificate {name:?} cannot be opened: {why}")]
    Unseal { name: String, why: String },
}

impl Error {
    fn invalid(field: &'static str, why: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            why: why.into(),
        }
    }
}
