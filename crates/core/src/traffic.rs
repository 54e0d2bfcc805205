//! Traffic figures: what one proxy saw of one backend over a window
//! (answers by status class, failed tries by kind, a latency histogram),
//! and the same merged across proxies as rates and percentiles.
//!
//! Proxies report these every few seconds with `ReportApplied`; the
//! control plane keeps each proxy's latest window and merges them for
//! `GetStatus` and the status page. Pure: time is passed in.

use serde::{Deserialize, Serialize};

use crate::{BackendAddr, PoolName};

/// Upper bounds of the latency buckets, in microseconds (the last bucket
/// counts everything above them). The same bounds as the proxy's
/// `/metrics` histograms.
pub const LATENCY_BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Buckets in a latency histogram.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// The most backends one report may carry.
pub const MAX_ENTRIES: usize = 4_096;

/// The longest window a report may cover, milliseconds.
pub const MAX_WINDOW_MS: u64 = 600_000;

/// Why a try got no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Connect = 0,
    Timeout = 1,
    /// The connection closed before any answer.
    Reset = 2,
    /// The answer was not valid HTTP.
    Invalid = 3,
}

/// One proxy's figures for one backend over `window_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTraffic {
    pub pool: PoolName,
    pub address: BackendAddr,
    pub window_ms: u64,
    /// Answers by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [u64; 5],
    /// Tries without a usable answer, by [`FailureKind`].
    pub failures: [u64; 4],
    /// Time to each answer's head, counted per bucket
    /// ([`LATENCY_BOUNDS_US`]).
    pub latency: [u64; LATENCY_BUCKETS],
    /// Ejected by this proxy's outlier detection until then (Unix ms).
    #[serde(default)]
    pub ejected_until_ms: Option<u64>,
}

impl BackendTraffic {
    pub fn new(pool: PoolName, address: BackendAddr, window_ms: u64) -> Self {
        Self {
            pool,
            address,
            window_ms,
            responses: [0; 5],
            failures: [0; 4],
            latency: [0; LATENCY_BUCKETS],
            ejected_until_ms: None,
        }
    }

    pub fn answers(&self) -> u64 {
        self.responses.iter().sum()
    }

    /// Answers of class 5xx and tries without a usable answer.
    pub fn errors(&self) -> u64 {
        self.responses[4] + self.failures.iter().sum::<u64>()
    }

    fn per_s(&self, n: u64) -> f64 {
        if self.window_ms == 0 {
            0.0
        } else {
            n as f64 * 1_000.0 / self.window_ms as f64
        }
    }

    pub fn requests_per_s(&self) -> f64 {
        self.per_s(self.answers() + self.failures.iter().sum::<u64>())
    }

    pub fn errors_per_s(&self) -> f64 {
        self.per_s(self.errors())
    }

    /// The `q` quantile (0..1) of the latency, in milliseconds: the upper
    /// bound of the bucket it falls in (the top bound for the overflow
    /// bucket). `None` without answers.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        quantile_ms(&self.latency, q)
    }
}

/// See [`BackendTraffic::quantile_ms`].
pub fn quantile_ms(latency: &[u64; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = latency.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in latency.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let bound = LATENCY_BOUNDS_US
                .get(i)
                .or(LATENCY_BOUNDS_US.last())
                .copied()
                .unwrap_or(0);
            return Some(bound as f64 / 1_000.0);
        }
    }
    None
}

/// One backend's figures merged across the proxies that reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedTraffic {
    pub pool: PoolName,
    pub address: BackendAddr,
    /// Proxies whose figures are in.
    pub proxies: u32,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    /// By status class, 1xx..5xx.
    pub responses_per_s: [f64; 5],
    /// By [`FailureKind`].
    pub failures_per_s: [f64; 4],
    /// The proxies' latency buckets summed.
    pub latency: [u64; LATENCY_BUCKETS],
}

impl MergedTraffic {
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        quantile_ms(&self.latency, q)
    }
}

/// Merges the figures of many proxies per backend: rates add up (each
/// over its own window), histograms add up. Sorted by pool and address.
pub fn merge<'a>(reports: impl IntoIterator<Item = &'a BackendTraffic>) -> Vec<MergedTraffic> {
    let mut merged: std::collections::BTreeMap<(PoolName, BackendAddr), MergedTraffic> =
        Default::default();
    for t in reports {
        let m = merged
            .entry((t.pool.clone(), t.address.clone()))
            .or_insert_with(|| MergedTraffic {
                pool: t.pool.clone(),
                address: t.address.clone(),
                proxies: 0,
                requests_per_s: 0.0,
                errors_per_s: 0.0,
                responses_per_s: [0.0; 5],
                failures_per_s: [0.0; 4],
                latency: [0; LATENCY_BUCKETS],
            });
        m.proxies += 1;
        m.requests_per_s += t.requests_per_s();
        m.errors_per_s += t.errors_per_s();
        for (sum, n) in m.responses_per_s.iter_mut().zip(t.responses) {
            *sum += t.per_s(n);
        }
        for (sum, n) in m.failures_per_s.iter_mut().zip(t.failures) {
            *sum += t.per_s(n);
        }
        for (sum, n) in m.latency.iter_mut().zip(t.latency) {
            *sum = sum.saturating_add(n);
        }
    }
    merged.into_values().collect()
}

/// The bucket a duration (microseconds) is counted in.
pub fn bucket_of(us: u64) -> usize {
    LATENCY_BOUNDS_US
        .iter()
        .position(|&b| us <= b)
        .unwrap_or(LATENCY_BOUNDS_US.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(address: &str, window_ms: u64, ok: u64, err5: u64, connect: u64) -> BackendTraffic {
        let mut t = BackendTraffic::new(
            PoolName::new("shop").unwrap(),
            BackendAddr::new(address).unwrap(),
            window_ms,
        );
        t.responses = [0, ok, 0, 0, err5];
        t.failures = [connect, 0, 0, 0];
        t.latency[bucket_of(800)] = ok + err5;
        t
    }

    #[test]
    fn rates_come_from_each_window_and_add_up_across_proxies() {
        let a = t("10.0.0.1:80", 5_000, 500, 10, 0);
        assert_eq!(a.requests_per_s(), 102.0);
        assert_eq!(a.errors_per_s(), 2.0);
        // A second proxy over a shorter window, with connect failures.
        let b = t("10.0.0.1:80", 2_000, 100, 0, 20);
        let other = t("10.0.0.2:80", 5_000, 50, 0, 0);
        let merged = merge([&a, &b, &other]);
        assert_eq!(merged.len(), 2);
        let m = &merged[0];
        assert_eq!(m.proxies, 2);
        assert_eq!(m.requests_per_s, 102.0 + 60.0);
        assert_eq!(m.errors_per_s, 2.0 + 10.0);
        assert_eq!(m.responses_per_s[4], 2.0);
        assert_eq!(m.failures_per_s[FailureKind::Connect as usize], 10.0);
        assert_eq!(m.latency[bucket_of(800)], 610);
        assert_eq!(merged[1].requests_per_s, 10.0);
        let empty = t("10.0.0.3:80", 0, 0, 0, 0);
        assert_eq!(empty.requests_per_s(), 0.0, "no window, no rate");
    }

    #[test]
    fn quantiles_are_bucket_bounds() {
        let mut l = [0u64; LATENCY_BUCKETS];
        assert_eq!(quantile_ms(&l, 0.99), None);
        l[bucket_of(400)] = 98; // <= 0.5 ms
        l[bucket_of(30_000)] = 1; // <= 50 ms
        l[bucket_of(60_000_000)] = 1; // above 10 s
        assert_eq!(quantile_ms(&l, 0.5), Some(0.5));
        assert_eq!(quantile_ms(&l, 0.99), Some(50.0));
        assert_eq!(quantile_ms(&l, 1.0), Some(10_000.0), "the top bound");
        assert_eq!(bucket_of(500), 0, "on the bound");
        assert_eq!(bucket_of(501), 1);
    }
}
