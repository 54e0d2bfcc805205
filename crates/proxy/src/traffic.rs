//! The traffic figures a proxy reports to the control plane: every few
//! seconds, what each backend of the current table answered since the last
//! sample (see [`tandem_core::traffic`]). Read off the request path from
//! the backends' atomic counters; bounded to
//! [`tandem_core::traffic::MAX_ENTRIES`] backends a report.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tandem_core::traffic::{BackendTraffic, LATENCY_BUCKETS, MAX_ENTRIES};
use tandem_core::{BackendAddr, PoolName};

use crate::clock;
use crate::table::{BackendState, Table};

/// Samples closer together than this repeat the last one: a report sent
/// at once for a new revision must not replace a 5 s window by a 50 ms one.
const MIN_WINDOW: Duration = Duration::from_secs(2);

/// Cumulative counts of one backend at the last sample.
#[derive(Clone, Copy)]
struct Totals {
    responses: [u64; 5],
    failures: [u64; 4],
    latency: [u64; LATENCY_BUCKETS],
}

impl Totals {
    fn of(b: &BackendState) -> Self {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Self {
            responses: b.traffic.responses.each_ref().map(load),
            failures: b.traffic.failures.each_ref().map(load),
            latency: b.traffic.latency.each_ref().map(load),
        }
    }
}

fn minus<const N: usize>(mut now: [u64; N], before: [u64; N]) -> [u64; N] {
    for (n, b) in now.iter_mut().zip(before) {
        *n = n.saturating_sub(b);
    }
    now
}

/// Keeps the previous sample to report differences.
pub struct Sampler {
    last: HashMap<(PoolName, BackendAddr), Totals>,
    at: Option<Instant>,
    report: Vec<BackendTraffic>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Self {
        Self {
            last: HashMap::new(),
            at: None,
            report: Vec::new(),
        }
    }

    /// What every backend of `table` did since the previous sample (the
    /// first sample only starts counting and reports nothing).
    pub fn sample(&mut self, table: Option<&Table>) -> Vec<BackendTraffic> {
        let now = Instant::now();
        if self
            .at
            .is_some_and(|at| now.duration_since(at) < MIN_WINDOW)
        {
            return self.report.clone();
        }
        let window_ms = self.at.map(|at| now.duration_since(at).as_millis() as u64);
        self.at = Some(now);
        let mut next = HashMap::new();
        let mut report = Vec::new();
        let now_ms = clock::now_ms();
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for pool in table.iter().flat_map(|t| &t.pools) {
            for b in &pool.backends {
                let key = (pool.config.name.clone(), b.declared.address.clone());
                let totals = Totals::of(&b.state);
                if let (Some(window_ms), Some(before)) = (window_ms, self.last.get(&key))
                    && report.len() < MAX_ENTRIES
                {
                    let mut t = BackendTraffic::new(key.0.clone(), key.1.clone(), window_ms);
                    // A backend removed and declared again starts from 0.
                    let before = if totals.responses.iter().sum::<u64>()
                        < before.responses.iter().sum::<u64>()
                    {
                        Totals {
                            responses: [0; 5],
                            failures: [0; 4],
                            latency: [0; LATENCY_BUCKETS],
                        }
                    } else {
                        *before
                    };
                    t.responses = minus(totals.responses, before.responses);
                    t.failures = minus(totals.failures, before.failures);
                    t.latency = minus(totals.latency, before.latency);
                    let o = b.state.outlier_state();
                    if o.is_ejected(now_ms) {
                        t.ejected_until_ms =
                            Some(wall_ms + o.ejected_until_ms.saturating_sub(now_ms));
                    }
                    report.push(t);
                }
                next.insert(key, totals);
            }
        }
        self.last = next;
        self.report = report;
        self.report.clone()
    }
}
