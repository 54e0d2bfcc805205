//! The proxy's flags, each with an environment fallback.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tandem_http::{EncodedSlashes, ParseOptions, Underscores};

use crate::Error;
use crate::sampling::{SampleRatio, Sampling};

/// Tandem's HTTP proxy: routes requests to pools of backends using the
/// configuration it follows from the control plane, and keeps serving from
/// its on-disk copy when no control plane answers.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tandem-proxy", version, about)]
pub struct Args {
    /// HTTP listener (host:port).
    #[arg(long, env = "TANDEM_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// HTTPS listener (host:port): TLS 1.3 and 1.2 with the certificates
    /// declared through the control plane, picked by SNI; ALPN offers h2
    /// and http/1.1. Unset: no TLS listener.
    #[arg(long, env = "TANDEM_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,

    /// Admin listener for /metrics, /healthz, /readyz, /config and /explain
    /// (host:port). On this machine only unless set otherwise: /config and
    /// /explain reveal the topology (they need a token, see
    /// TANDEM_ADMIN_TOKEN).
    #[arg(long, env = "TANDEM_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,

    /// Token the admin port's /config and /explain ask for (`Authorization:
    /// Bearer <token>`); the proxy's control-plane token (TANDEM_TOKEN) is
    /// accepted too, which is what the control plane's Explain presents.
    /// /metrics, /healthz and /readyz stay open.
    #[arg(long, env = "TANDEM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

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

    /// Idle upstream keep-alive connections kept per backend. How long
    /// one is reused is a pool setting (`upstream_idle_timeout_ms`).
    #[arg(long, env = "TANDEM_UPSTREAM_MAX_IDLE", default_value_t = 128)]
    pub upstream_max_idle: usize,

    /// Peers whose forwarding fields are kept: comma-separated addresses or
    /// CIDR blocks (e.g. `10.0.0.0/8,192.0.2.7`). From a trusted peer the
    /// proxy appends to `X-Forwarded-For` and keeps `X-Forwarded-Proto`,
    /// `X-Forwarded-Host`, `X-Real-IP` and `Forwarded`; from any other it
    /// replaces `X-Forwarded-For` with the peer's address, sets the
    /// `X-Forwarded-Proto`/`-Host` itself and drops the rest. Default: none.
    #[arg(long, env = "TANDEM_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,

    /// Request header names containing `_`: `drop` them (as nginx does),
    /// `allow` them, or `reject` the request (400). Some frameworks read
    /// `X_Forwarded_For` as `X-Forwarded-For`.
    #[arg(
        long,
        env = "TANDEM_HEADERS_WITH_UNDERSCORES",
        value_enum,
        default_value = "drop"
    )]
    pub headers_with_underscores: UnderscoresArg,

    /// `%2F` and `%5C` in request paths: `reject` (400), or `keep` them,
    /// passed on encoded and never taken as separators when the path is
    /// normalised.
    #[arg(
        long,
        env = "TANDEM_ENCODED_SLASHES",
        value_enum,
        default_value = "reject"
    )]
    pub encoded_slashes: EncodedSlashesArg,

    /// How TCP routes move bytes: `copy` (through a buffer) or `splice`
    /// (splice(2) through a pipe, never entering user space).
    #[arg(long, env = "TANDEM_TCP_COPY", value_enum, default_value_t = crate::tcp::CopyMode::default())]
    pub tcp_copy: crate::tcp::CopyMode,

    /// TCP routes: bytes per read (copy) or per splice, at least 4096. 32 KiB
    /// took the least CPU per GB in `scripts/bench/tcp.sh` (16 KiB: more
    /// syscalls; 64 KiB: the copies spill out of the L1 cache).
    #[arg(long, env = "TANDEM_TCP_BUFFER_BYTES", default_value_t = 32_768)]
    pub tcp_buffer_bytes: usize,

    /// Access log: a line per request, written to this file (appended
    /// to), or to standard output with `-`. Unset: no access log.
    #[arg(long, env = "TANDEM_ACCESS_LOG")]
    pub access_log: Option<PathBuf>,

    /// Access log lines: `json` (one object per line) or `common` (the
    /// common log format, then Tandem's fields as key=value).
    #[arg(
        long,
        env = "TANDEM_ACCESS_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub access_log_format: crate::access_log::Format,

    /// Access log lines waiting to be written at most; when the writer
    /// falls behind, further lines are dropped (and counted in
    /// tandem_proxy_access_log_dropped_total), never waited for.
    #[arg(long, env = "TANDEM_ACCESS_LOG_BUFFER", default_value_t = 65_536)]
    pub access_log_buffer: usize,
    /// Share of requests traced when the caller's `traceparent` did not
    /// decide (a ratio, `0.01`, or a percentage, `1%`). Requests that end
    /// in error are traced whatever it says. Spans are exported only with
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` set.
    #[arg(long, env = "TANDEM_TRACE_SAMPLE", default_value = "0.01")]
    pub trace_sample: SampleRatio,

    /// Pools traced at another ratio than `TANDEM_TRACE_SAMPLE`:
    /// comma-separated `pool=ratio` pairs (e.g. `shop=0.5,api=100%`).
    #[arg(long, env = "TANDEM_TRACE_SAMPLE_POOLS", default_value = "")]
    pub trace_sample_pools: String,

    #[command(flatten)]
    pub telemetry: tandem_telemetry::TelemetryArgs,
}

/// Limits on what one client may do.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub drain_timeout: Duration,
    pub stall_timeout: Duration,
}

impl From<&Settings> for Limits {
    fn from(s: &Settings) -> Self {
        Self {
            header_timeout: s.header_timeout,
            max_header_bytes: s.max_header_bytes,
            max_headers: s.max_headers,
            max_connections: s.max_connections,
            drain_timeout: s.drain_timeout,
            stall_timeout: s.stall_timeout,
        }
    }
}

/// Validated settings the library runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub control: Vec<String>,
    /// The TLS listener's port (redirects to https name it unless 443).
    pub https_port: Option<u16>,
    pub identity: tandem_client::Identity,
    pub state_dir: Option<PathBuf>,
    pub drain_timeout: Duration,
    pub header_timeout: Duration,
    pub stall_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub upstream_max_idle: usize,
    pub tcp: crate::tcp::TcpOptions,
    pub trusted_proxies: TrustedProxies,
    pub underscores: Underscores,
    pub encoded_slashes: EncodedSlashes,
    pub access_log: Option<crate::access_log::Options>,
    pub sampling: Sampling,
    /// The tokens the admin port's /config and /explain accept.
    pub admin_tokens: Vec<String>,
}

impl Settings {
    /// How request heads are read.
    pub fn parse_options(&self) -> ParseOptions {
        ParseOptions {
            max_headers: self.max_headers,
            max_head_bytes: self.max_header_bytes,
            underscores: self.underscores,
            encoded_slashes: self.encoded_slashes,
        }
    }
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
        if self.max_headers > tandem_http::request::MAX_HEADERS {
            return Err(bad(
                "TANDEM_MAX_HEADERS",
                format!(
                    "must be at most {} (got {})",
                    tandem_http::request::MAX_HEADERS,
                    self.max_headers
                ),
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
        if self.access_log_buffer == 0 || self.access_log_buffer > 1 << 24 {
            return Err(bad(
                "TANDEM_ACCESS_LOG_BUFFER",
                format!(
                    "must be between 1 and 16777216 lines (got {})",
                    self.access_log_buffer
                ),
            ));
        }
        if self.header_timeout_ms == 0 {
            return Err(bad("TANDEM_HEADER_TIMEOUT_MS", "must be at least 1".into()));
        }
        let sampling = Sampling {
            default: self.trace_sample,
            pools: crate::sampling::parse_pool_ratios(&self.trace_sample_pools)
                .map_err(|e| bad("TANDEM_TRACE_SAMPLE_POOLS", e))?,
        };
        let admin_token = tandem_client::token_value(self.admin_token.as_deref());
        if !self.control.dev
            && admin_token.is_some_and(|t| t.contains(tandem_client::EXAMPLE_SECRET_MARK))
        {
            return Err(bad(
                "TANDEM_ADMIN_TOKEN",
                "refusing to start with a shipped example secret (*-change-me); set your own, \
                 or TANDEM_DEV=1 (--dev) for a development setup"
                    .into(),
            ));
        }
        let admin_tokens = admin_token
            .into_iter()
            .map(str::to_string)
            .chain(identity.token.clone())
            .collect();
        Ok(Settings {
            admin_tokens,
            https_port: self.tls_listen.map(|a| a.port()),
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
            tcp: crate::tcp::TcpOptions {
                copy: self.tcp_copy,
                buffer: self.tcp_buffer_bytes,
                ..Default::default()
            },
            trusted_proxies: self.trusted_proxies.clone(),
            underscores: match self.headers_with_underscores {
                UnderscoresArg::Drop => Underscores::Drop,
                UnderscoresArg::Allow => Underscores::Allow,
                UnderscoresArg::Reject => Underscores::Reject,
            },
            encoded_slashes: match self.encoded_slashes {
                EncodedSlashesArg::Reject => EncodedSlashes::Reject,
                EncodedSlashesArg::Keep => EncodedSlashes::Keep,
            },
            access_log: self
                .access_log
                .as_ref()
                .filter(|p| !p.as_os_str().is_empty())
                .map(|path| crate::access_log::Options {
                    path: path.clone(),
                    format: self.access_log_format,
                    buffer: self.access_log_buffer,
                }),
            sampling,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UnderscoresArg {
    Drop,
    Allow,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EncodedSlashesArg {
    Reject,
    Keep,
}

// === trusted proxies ===

/// An address block: an address and how many leading bits of it match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let masked = |v: u128, width: u32| {
            let shift = width - u32::from(self.bits);
            if shift >= 128 { 0 } else { v >> shift }
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                masked(u32::from(a).into(), 32) == masked(u32::from(b).into(), 32)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                masked(u128::from(a), 128) == masked(u128::from(b), 128)
            }
            _ => false,
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?} is not an address or a CIDR block (e.g. 10.0.0.0/8)");
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr = canonical(addr.trim().parse::<IpAddr>().map_err(|_| err())?);
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => width,
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= width)
                .ok_or_else(err)?,
        };
        Ok(Cidr { addr, bits })
    }
}

/// The peers whose forwarding fields are trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Cidr::from_str)
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_are_addresses_and_blocks() {
        let t: TrustedProxies = "10.0.0.0/8, 192.0.2.7 ,2001:db8::/32,".parse().unwrap();
        for (ip, trusted) in [
            ("10.1.2.3", true),
            ("::ffff:10.1.2.3", true),
            ("11.0.0.1", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("2001:db8:1::5", true),
            ("2001:db9::5", false),
        ] {
            assert_eq!(t.contains(ip.parse().unwrap()), trusted, "{ip}");
        }
        assert!(!TrustedProxies::default().contains("127.0.0.1".parse().unwrap()));
        let all: TrustedProxies = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<TrustedProxies>().is_err(), "{bad}");
        }
        assert!("".parse::<TrustedProxies>().unwrap() == TrustedProxies::default());
    }
}
