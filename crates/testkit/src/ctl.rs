//! `tandemctl` run as a person runs it: the built binary, the admin token,
//! its output captured.

use std::process::Command;

use crate::{ADMIN_TOKEN, bin_path};

/// What one `tandemctl` run did.
#[derive(Debug)]
pub struct Ran {
    /// The exit code, -1 when a signal ended it.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tandemctl args` against `endpoint` (comma-separated endpoints
/// allowed) with the admin token and no token file.
pub fn tandemctl(endpoint: &str, args: &[&str]) -> Ran {
    let out = Command::new(bin_path("tandemctl"))
        .args(args)
        .env("TANDEM_ENDPOINT", endpoint)
        .env("TANDEM_TOKEN", ADMIN_TOKEN)
        .env_remove("TANDEM_TOKEN_FILE")
        .output()
        .expect("tandemctl runs (cargo build --workspace --bins)");
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
