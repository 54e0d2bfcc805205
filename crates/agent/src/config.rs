//! The agent's flags, each with an environment fallback, and the validated
//! settings the library runs with.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::Error;

/// Tandem's health-probe agent: follows the pools and backends declared on
/// the control plane, probes every backend by HTTP or TCP on its pool's
/// interval, and reports what it sees to the control plane, which decides.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tandem-agent", version, about)]
pub struct Args {
    #[command(flatten)]
    pub control: tandem_client::ControlArgs,

    /// Admin listener for /metrics, /healthz and /readyz (host:port).
    #[arg(long, env = "TANDEM_ADMIN_LISTEN", default_value = "0.0.0.0:7501")]
    pub admin_listen: SocketAddr,

    /// Source address of probe connections (e.g. one interface of a
    /// multi-homed host). Unset: the kernel picks. Connections to the
    /// control plane are not affected.
    #[arg(long, env = "TANDEM_PROBE_SOURCE_IP")]
    pub probe_source_ip: Option<IpAddr>,

    /// HTTP probes keep their connection to a backend open between probes
    /// and open a fresh one at least every this many probes (and after
    /// every failed probe), so a backend that stops accepting connections
    /// while it still answers on the kept one is noticed within this many
    /// intervals (proxies notice at once: their connects fail); in probes.
    /// 1: a new connection for every probe. TCP probes always connect
    /// afresh.
    #[arg(
        long,
        env = "TANDEM_PROBE_FRESH_CONNECTION_EVERY",
        default_value_t = 60
    )]
    pub probe_fresh_connection_every: u32,

    /// How long observations that can move a verdict (failures, changes,
    /// the first passes after a failure) are gathered before they are sent
    /// in one report, in milliseconds (keep it well under the probe
    /// intervals). The window ends on a grid of its own length, which makes
    /// it up to twice as long. Passes that only repeat a settled verdict
    /// may wait up to half their interval (at most 1 s).
    #[arg(long, env = "TANDEM_REPORT_BATCH_MS", default_value_t = 50)]
    pub report_batch_ms: u64,

    /// Timeout of one report to one control-plane endpoint, in milliseconds.
    #[arg(long, env = "TANDEM_REPORT_TIMEOUT_MS", default_value_t = 2_000)]
    pub report_timeout_ms: u64,

    /// Observations held while the control plane is slow or away; past
    /// this count the oldest are dropped (and counted), in observations.
    #[arg(long, env = "TANDEM_REPORT_QUEUE", default_value_t = 16_384)]
    pub report_queue: usize,

    /// Worker threads of the runtime that follows the control plane,
    /// reports and serves the admin port (default: 1). Probes run on an
    /// event loop of their own, one thread whatever this says.
    #[arg(long, env = "TANDEM_WORKERS", default_value_t = 1)]
    pub workers: usize,

    #[command(flatten)]
    pub telemetry: tandem_telemetry::TelemetryArgs,
}

/// Validated settings the library runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub control: Vec<String>,
    pub identity: tandem_client::Identity,
    pub probe_source_ip: Option<IpAddr>,
    pub probe_fresh_connection_every: u32,
    pub report_batch: Duration,
    pub report_timeout: Duration,
    pub report_queue: usize,
}

impl Args {
    /// Checks the flags and reads the token file.
    pub fn settings(&self) -> Result<Settings, Error> {
        let bad = |flag: &str, rule: String| Error::Config(format!("{flag}: {rule}"));
        let (control, identity) = self
            .control
            .resolve("agent")
            .map_err(|e| Error::Config(e.to_string()))?;
        if control.is_empty() {
            return Err(bad(
                "TANDEM_CONTROL",
                "at least one control-plane endpoint is required (http://host:port)".into(),
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
        if self.probe_fresh_connection_every == 0 {
            return Err(bad(
                "TANDEM_PROBE_FRESH_CONNECTION_EVERY",
                "must be at least 1 (1: a new connection for every probe)".into(),
            ));
        }
        if self.report_queue == 0 {
            return Err(bad("TANDEM_REPORT_QUEUE", "must be at least 1".into()));
        }
        if self.workers == 0 {
            return Err(bad("TANDEM_WORKERS", "must be at least 1".into()));
        }
        Ok(Settings {
            control,
            identity,
            probe_source_ip: self.probe_source_ip,
            probe_fresh_connection_every: self.probe_fresh_connection_every,
            report_batch: Duration::from_millis(self.report_batch_ms),
            report_timeout: Duration::from_millis(self.report_timeout_ms),
            report_queue: self.report_queue,
        })
    }
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
        assert_eq!(s.identity.node_id, "agent-1");
        assert_eq!(s.identity.token.as_deref(), Some("t0k"));
        assert_eq!(s.report_batch, Duration::from_millis(50));
        assert_eq!(s.probe_fresh_connection_every, 60);
    }

    #[test]
    fn bad_numbers_name_their_variable() {
        for (flag, value, var) in [
            ("--report-batch-ms", "0", "TANDEM_REPORT_BATCH_MS"),
            ("--report-queue", "0", "TANDEM_REPORT_QUEUE"),
            ("--workers", "0", "TANDEM_WORKERS"),
            (
                "--probe-fresh-connection-every",
                "0",
                "TANDEM_PROBE_FRESH_CONNECTION_EVERY",
            ),
        ] {
            let e = parse(&["--control", "http://a:1", flag, value]).unwrap_err();
            assert!(e.to_string().contains(var), "{e}");
        }
    }
}
