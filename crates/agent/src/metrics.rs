//! The agent's Prometheus metrics. Handles are registered once and shared
//! with the probe engine, so recording a probe is a few atomic adds.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use tandem_core::HealthCheckKind;
use tandem_telemetry::{LatencyHistogram, MetricsExtra};

use crate::probe::Class;

const KINDS: [HealthCheckKind; 2] = [HealthCheckKind::Http, HealthCheckKind::Tcp];

fn kind_str(k: HealthCheckKind) -> &'static str {
    match k {
        HealthCheckKind::Http => "http",
        HealthCheckKind::Tcp => "tcp",
    }
}

/// Probe counters and latencies, by check kind and result.
pub struct ProbeMetrics {
    /// `tandem_agent_probes_total{kind, result}`, indexed [kind][class].
    probes: [[Counter; Class::ALL.len()]; KINDS.len()],
    /// `tandem_agent_probe_duration_seconds{kind}`, rendered by
    /// [`ProbeMetrics::render_latency`]: recorded a thousand times a second
    /// and more, too often for the exporter's histogram, which keeps every
    /// sample until its upkeep.
    latency: Arc<[LatencyHistogram; KINDS.len()]>,
    /// `tandem_agent_probe_connections_total{kind}`: connections the probes
    /// established (refused or timed-out connects are not counted): one per
    /// passing TCP probe, none for an HTTP probe on its kept-alive
    /// connection.
    connections: [Counter; KINDS.len()],
    /// `tandem_agent_tls_handshakes_total{resumed="true"|"false"}`: TLS
    /// handshakes completed by probes of TLS pools; resumed ones skip the
    /// certificate and most of the cost.
    tls_handshakes: [Counter; 2],
    /// `tandem_agent_targets`: backends being probed.
    pub targets: Gauge,
}

impl ProbeMetrics {
    pub fn new() -> ProbeMetrics {
        ProbeMetrics {
            probes: KINDS.map(|k| {
                Class::ALL.map(|c| {
                    counter!("tandem_agent_probes_total", "kind" => kind_str(k), "result" => c.as_str())
                })
            }),
            latency: Arc::new(Default::default()),
            connections: KINDS.map(|k| {
                counter!("tandem_agent_probe_connections_total", "kind" => kind_str(k))
            }),
            tls_handshakes: ["false", "true"]
                .map(|r| counter!("tandem_agent_tls_handshakes_total", "resumed" => r)),
            targets: gauge!("tandem_agent_targets"),
        }
    }

    /// A probe's TLS handshake completed.
    pub fn tls_handshake(&self, resumed: bool) {
        self.tls_handshakes[usize::from(resumed)].increment(1);
    }

    /// One probe: its result, how long it took and the connections it
    /// opened.
    pub fn record(&self, kind: HealthCheckKind, class: Class, took: Duration, opened: u64) {
        let k = KINDS.iter().position(|x| *x == kind).unwrap_or(0);
        let c = Class::ALL.iter().position(|x| *x == class).unwrap_or(0);
        self.probes[k][c].increment(1);
        self.latency[k].record(took);
        if opened > 0 {
            self.connections[k].increment(opened);
        }
    }
}

impl ProbeMetrics {
    /// Appends the probe-duration histograms to `/metrics`.
    pub fn render_latency(&self) -> MetricsExtra {
        const NAME: &str = "tandem_agent_probe_duration_seconds";
        let latency = self.latency.clone();
        Arc::new(move |out: &mut String| {
            let _ = writeln!(out, "# HELP {NAME} How long a probe took, by check kind.");
            let _ = writeln!(out, "# TYPE {NAME} histogram");
            for (k, h) in KINDS.iter().zip(latency.iter()) {
                h.render(out, NAME, &format!("kind=\"{}\"", kind_str(*k)));
            }
        })
    }
}

impl Default for ProbeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Reporting: `tandem_agent_reports_total{result="sent"|"failed"}` (one per
/// attempt on one endpoint) and
/// `tandem_agent_observations_dropped_total{reason="queue_full"|"report_failed"}`.
pub struct ReportMetrics {
    pub sent: Counter,
    pub failed: Counter,
    pub dropped_queue_full: Counter,
    pub dropped_report_failed: Counter,
}

impl ReportMetrics {
    pub fn new() -> ReportMetrics {
        ReportMetrics {
            sent: counter!("tandem_agent_reports_total", "result" => "sent"),
            failed: counter!("tandem_agent_reports_total", "result" => "failed"),
            dropped_queue_full: counter!("tandem_agent_observations_dropped_total", "reason" => "queue_full"),
            dropped_report_failed: counter!("tandem_agent_observations_dropped_total", "reason" => "report_failed"),
        }
    }
}

impl Default for ReportMetrics {
    fn default() -> Self {
        Self::new()
    }
}
