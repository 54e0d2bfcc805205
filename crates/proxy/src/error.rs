//! The proxy's errors (start-up and the control-plane subscription; the
//! request path answers with HTTP statuses instead).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("state file {path}: {source}")]
    StateIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is not a valid snapshot: {source}")]
    StateFormat {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    StateVersion(#[from] tandem_core::format::NewerFormat),
    #[error("admin server: {0}")]
    Admin(std::io::Error),
}
