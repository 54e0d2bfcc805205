//! The agent's flags, each with an environment fallback, and the validated
//! settings the library runs with.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::Error;

/// Tandem's health-probe agent: follows the pools and backends declared on
/// the control plane, probes every backend by HTTP or TCP on its pool's
/// interval, and reports what it sees to the control plane, which decides.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tandem-agent", version, about)]
pub struct Args {
    /// Control-plane endpoints, comma-separated (http://host:port,...).
    /// Required.
    #[arg(
        long,
        env = "TANDEM_CONTROL",
        value_delimiter = ',',
        default_value = ""
    )]
    pub control: Vec<String>,

    /// Bearer token presented to the control plane (node role).
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the bearer token (used when TANDEM_TOKEN is unset).
    #[arg(long, env = "TANDEM_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// This agent's id, stable across restarts: the control plane counts
    /// one vote per id (default: "agent-" and the host name).
    #[arg(long, env = "TANDEM_NODE_ID")]
    pub node_id: Option<String>,

    /// Locality label reported with every observation.
    #[arg(long, env = "TANDEM_ZONE", default_value = "")]
    pub zone: String,

    /// Admin listener for /metrics, /healthz and /readyz (host:port).
    #[arg(long, env = "TANDEM_ADMIN_LISTEN", default_value = "0.0.0.0:7501")]
    pub admin_listen: SocketAddr,

    /// Source address of probe connections (e.g. one interface of a
    /// multi-homed host). Unset: the kernel picks. Connections to the
    /// control plane are not affected.
    #[arg(long, env = "TANDEM_PROBE_SOURCE_IP")]
    pub probe_source_ip: Option<IpAddr>,

    /// How long observations are gathered before they are sent in one
    /// report, in milliseconds (keep it well under the probe intervals).
    #[arg(long, env = "TANDEM_REPORT_BATCH_MS", default_value_t = 50)]
    pub report_batch_ms: u64,

    /// Timeout of one report to one control-plane endpoint, in milliseconds.
    #[arg(long, env = "TANDEM_REPORT_TIMEOUT_MS", default_value_t = 2_000)]
    pub report_timeout_ms: u64,

    /// Observations held while the control plane is slow or away; past
    /// this count the oldest are dropped (and counted), in observations.
    #[arg(long, env = "TANDEM_REPORT_QUEUE", default_value_t = 16_384)]
    pub report_queue: usize,

    /// Worker threads (default: 1; probes are I/O-bound and a single thread
    /// keeps them cheap).
    #[arg(long, env = "TANDEM_WORKERS", default_value_t = 1)]
    pub workers: usize,

    #[command(flatten)]
    pub telemetry: tandem_telemetry::TelemetryArgs,
}

/// Validated settings the library runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub control: Vec<String>,
    pub token: Option<String>,
    pub node_id: String,
    pub zone: String,
    pub probe_source_ip: Option<IpAddr>,
    pub report_batch: Duration,
    pub report_timeout: Duration,
    pub report_queue: usize,
}

impl Args {
    /// Checks the flags and reads the token file.
    pub fn settings(&self) -> Result<Settings, Error> {
        let bad = |flag: &str, rule: String| Error::Config(format!("{flag}: {rule}"));
        let control: Vec<String> = self
            .control
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if control.is_empty() {
            return Err(bad(
                "TANDEM_CONTROL",
                "at least one control-plane endpoint is required (http://host:port)".into(),
            ));
        }
        for c in &control {
            if !(c.starts_with("http://") || c.starts_with("https://")) {
                return Err(bad(
                    "TANDEM_CONTROL",
                    format!("endpoints must be http://host:port (got {c:?})"),
                ));
            }
        }
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) if !t.trim().is_empty() => Some(t.trim().to_string()),
            (_, Some(path)) => {
                let t = std::fs::read_to_string(path).map_err(|e| {
                    bad(
                        "TANDEM_TOKEN_FILE",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(t.trim().to_string()).filter(|t| !t.is_empty())
            }
            _ => None,
        };
        if let Some(t) = &token
            && http::HeaderValue::from_str(&format!("Bearer {t}")).is_err()
        {
            return Err(bad(
                "TANDEM_TOKEN",
                "must be printable ASCII without line breaks".into(),
            ));
        }
        if !(1..=10_000).contains(&self.report_batch_ms) {
            return Err(bad(
                "TANDEM_REPORT_BATCH_MS",
                format!("must be between 1 and 10000 (got {})", self.report_batch_ms),
            ));
        }
        if !(10..=60_000).contains(&self.report_timeout_ms) {
            return Err(bad(
                "TANDEM_REPORT_TIMEOUT_MS",
                format!(
                    "must be between 10 and 60000 (got {})",
                    self.report_timeout_ms
                ),
            ));
        }
        if self.report_queue == 0 {
            return Err(bad("TANDEM_REPORT_QUEUE", "must be at least 1".into()));
        }
        if self.workers == 0 {
            return Err(bad("TANDEM_WORKERS", "must be at least 1".into()));
        }
        let node_id = self
            .node_id
            .clone()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(default_node_id);
        Ok(Settings {
            control,
            token,
            node_id,
            zone: self.zone.clone(),
            probe_source_ip: self.probe_source_ip,
            report_batch: Duration::from_millis(self.report_batch_ms),
            report_timeout: Duration::from_millis(self.report_timeout_ms),
            report_queue: self.report_queue,
        })
    }
}

fn default_node_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| format!("agent-{h}"))
        .unwrap_or_else(|| "agent".into())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, Error> {
        let mut argv = vec!["tandem-agent"];
        argv.extend_from_slice(args);
        Args::try_parse_from(argv)
            .map_err(|e| Error::Config(e.to_string()))?
            .settings()
    }

    #[test]
    fn endpoints_are_required_and_checked() {
        // Only flags here, so the environment of the test run cannot leak in
        // through clap's env fallbacks where it matters.
        let e = parse(&["--control", "127.0.0.1:7400"]).unwrap_err();
        assert!(e.to_string().contains("TANDEM_CONTROL"), "{e}");
        let s = parse(&[
            "--control",
            "http://a:1, http://b:2",
            "--node-id",
            "agent-1",
            "--token",
            "t0k",
        ])
        .unwrap();
        assert_eq!(s.control, ["http://a:1", "http://b:2"]);
        assert_eq!(s.node_id, "agent-1");
        assert_eq!(s.token.as_deref(), Some("t0k"));
        assert_eq!(s.report_batch, Duration::from_millis(50));
    }

    #[test]
    fn bad_numbers_name_their_variable() {
        for (flag, value, var) in [
            ("--report-batch-ms", "0", "TANDEM_REPORT_BATCH_MS"),
            ("--report-queue", "0", "TANDEM_REPORT_QUEUE"),
            ("--workers", "0", "TANDEM_WORKERS"),
        ] {
            let e = parse(&["--control", "http://a:1", flag, value]).unwrap_err();
            assert!(e.to_string().contains(var), "{e}");
        }
    }
}
