//! The proxy's flags, each with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::Error;

/// Tandem's HTTP proxy: routes requests to pools of backends using the
/// configuration it follows from the control plane, and keeps serving from
/// its on-disk copy when no control plane answers.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tandem-proxy", version, about)]
pub struct Args {
    /// HTTP listener (host:port).
    #[arg(long, env = "TANDEM_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Admin listener for /metrics, /healthz, /readyz and /config (host:port).
    #[arg(long, env = "TANDEM_ADMIN_LISTEN", default_value = "0.0.0.0:8081")]
    pub admin_listen: SocketAddr,

    #[command(flatten)]
    pub control: tandem_client::ControlArgs,

    /// Directory for the last-known-good configuration (snapshot.json).
    /// Unset: nothing is written and a restart needs the control plane.
    #[arg(long, env = "TANDEM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// Worker threads (default: the number of cores).
    #[arg(long, env = "TANDEM_WORKERS")]
    pub workers: Option<usize>,

    /// On SIGTERM, how long in-flight requests may take to finish, in
    /// milliseconds.
    #[arg(long, env = "TANDEM_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    pub drain_timeout_ms: u64,

    /// Time a client has to send a complete request head, and the longest a
    /// keep-alive connection may sit idle, in milliseconds (HTTP/1).
    #[arg(long, env = "TANDEM_HEADER_TIMEOUT_MS", default_value_t = 30_000)]
    pub header_timeout_ms: u64,

    /// A client that stops reading our answer, or stops sending a request
    /// body it started, is disconnected after this many milliseconds.
    #[arg(long, env = "TANDEM_CLIENT_STALL_TIMEOUT_MS", default_value_t = 60_000)]
    pub stall_timeout_ms: u64,

    /// Largest request head a client may send, in bytes (at least 8192).
    #[arg(long, env = "TANDEM_MAX_HEADER_BYTES", default_value_t = 65_536)]
    pub max_header_bytes: usize,

    /// Most header fields in one request (at most 256).
    #[arg(long, env = "TANDEM_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,

    /// Most simultaneous client connections; further ones wait in the
    /// kernel's accept queue.
    #[arg(long, env = "TANDEM_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Idle upstream keep-alive connections kept per backend.
    #[arg(long, env = "TANDEM_UPSTREAM_MAX_IDLE", default_value_t = 128)]
    pub upstream_max_idle: usize,

    /// How long an idle upstream connection is kept, in milliseconds.
    #[arg(
        long,
        env = "TANDEM_UPSTREAM_IDLE_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub upstream_idle_timeout_ms: u64,

    /// How TCP routes move bytes: `copy` (through a buffer) or `splice`
    /// (splice(2) through a pipe, never entering user space).
    #[arg(long, env = "TANDEM_TCP_COPY", value_enum, default_value_t = crate::tcp::CopyMode::default())]
    pub tcp_copy: crate::tcp::CopyMode,

    /// TCP routes: bytes per read (copy) or per splice, at least 4096. 32 KiB
    /// took the least CPU per GB in `scripts/bench/tcp.sh` (16 KiB: more
    /// syscalls; 64 KiB: the copies spill out of the L1 cache).
    #[arg(long, env = "TANDEM_TCP_BUFFER_BYTES", default_value_t = 32_768)]
    pub tcp_buffer_bytes: usize,

    #[command(flatten)]
    pub telemetry: tandem_telemetry::TelemetryArgs,
}

/// Validated settings the library runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub control: Vec<String>,
    pub identity: tandem_client::Identity,
    pub state_dir: Option<PathBuf>,
    pub drain_timeout: Duration,
    pub header_timeout: Duration,
    pub stall_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub upstream_max_idle: usize,
    pub upstream_idle_timeout: Duration,
    pub tcp: crate::tcp::TcpOptions,
}

impl Args {
    /// Checks the flags and reads the token file.
    pub fn settings(&self) -> Result<Settings, Error> {
        let bad = |flag: &str, rule: String| Error::Config(format!("{flag}: {rule}"));
        let (control, identity) = self
            .control
            .resolve("proxy")
            .map_err(|e| Error::Config(e.to_string()))?;
        if self.max_header_bytes < 8_192 {
            return Err(bad(
                "TANDEM_MAX_HEADER_BYTES",
                format!("must be at least 8192 (got {})", self.max_header_bytes),
            ));
        }
        if self.max_headers == 0 || self.workers == Some(0) || self.upstream_max_idle == 0 {
            return Err(bad(
                "TANDEM_MAX_HEADERS/TANDEM_WORKERS/TANDEM_UPSTREAM_MAX_IDLE",
                "must be at least 1".into(),
            ));
        }
        if !(4_096..=16 << 20).contains(&self.tcp_buffer_bytes) {
            return Err(bad(
                "TANDEM_TCP_BUFFER_BYTES",
                format!(
                    "must be between 4096 and 16777216 (got {})",
                    self.tcp_buffer_bytes
                ),
            ));
        }
        if self.header_timeout_ms == 0 {
            return Err(bad("TANDEM_HEADER_TIMEOUT_MS", "must be at least 1".into()));
        }
        Ok(Settings {
            control,
            identity,
            state_dir: self.state_dir.clone(),
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            stall_timeout: Duration::from_millis(self.stall_timeout_ms.max(1)),
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            // Far beyond what one process can hold open; keeps the semaphore valid.
            max_connections: self.max_connections.clamp(1, 1 << 24),
            upstream_max_idle: self.upstream_max_idle,
            upstream_idle_timeout: Duration::from_millis(self.upstream_idle_timeout_ms),
            tcp: crate::tcp::TcpOptions {
                copy: self.tcp_copy,
                buffer: self.tcp_buffer_bytes,
                ..Default::default()
            },
        })
    }

    /// Worker threads to start.
    pub fn worker_threads(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}
