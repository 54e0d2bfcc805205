//! The probe engine told what to probe: [`Prober::sync`] keeps the
//! engine's targets in step with the configuration, starting, stopping and
//! restarting only the probes whose target or check changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use tandem_core::HealthCheckSpec;
use tandem_core::health::BackendKey;

use crate::engine::{Context, Engine};

/// The probe engine, told what to probe: [`Prober::sync`] keeps its targets
/// in step with the configuration. Dropping it stops every probe.
pub struct Prober {
    ctx: Arc<Context>,
    engine: Engine,
    running: BTreeMap<BackendKey, HealthCheckSpec>,
}

/// What a [`Prober::sync`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub added: usize,
    pub removed: usize,
    pub restarted: usize,
    pub total: usize,
}

impl Prober {
    /// Starts the engine (see [`Engine::start`]).
    pub fn start(ctx: Arc<Context>) -> std::io::Result<Prober> {
        Ok(Prober {
            engine: Engine::start(ctx.clone())?,
            ctx,
            running: BTreeMap::new(),
        })
    }

    /// Starts probes for new targets, stops those of removed ones and
    /// restarts those whose check changed (on a new connection); every
    /// other probe keeps running untouched.
    pub fn sync(&mut self, wanted: BTreeMap<BackendKey, HealthCheckSpec>) -> SyncStats {
        let mut stats = SyncStats::default();
        let engine = &self.engine;
        self.running.retain(|key, _| {
            let keep = wanted.contains_key(key);
            if !keep {
                engine.remove(key.clone());
                stats.removed += 1;
            }
            keep
        });
        for (key, spec) in wanted {
            match self.running.get_mut(&key) {
                Some(running) if *running == spec => {}
                Some(running) => {
                    *running = spec.clone();
                    self.engine.add(key, spec);
                    stats.restarted += 1;
                }
                None => {
                    self.running.insert(key.clone(), spec.clone());
                    self.engine.add(key, spec);
                    stats.added += 1;
                }
            }
        }
        stats.total = self.running.len();
        self.ctx.metrics.targets.set(stats.total as f64);
        stats
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tandem_core::{BackendAddr, PoolName};

    use super::*;
    use crate::metrics::ProbeMetrics;
    use crate::report::ReportQueue;

    fn key(pool: &str, addr: &str) -> BackendKey {
        BackendKey {
            pool: PoolName::new(pool).unwrap(),
            address: BackendAddr::new(addr).unwrap(),
        }
    }

    fn context(queue: Arc<ReportQueue>) -> Arc<Context> {
        Arc::new(Context {
            origin: Instant::now(),
            source_ip: None,
            fresh_connection_every: 10,
            queue,
            metrics: ProbeMetrics::new(),
        })
    }

    #[tokio::test]
    async fn sync_touches_only_the_targets_that_changed() {
        let mut p = Prober::start(context(Arc::new(ReportQueue::new(16)))).unwrap();
        // Addresses nothing listens on: probes fail fast, which is fine here.
        let spec = HealthCheckSpec::default();
        let (a, b, c) = (
            key("shop", "127.0.0.1:1"),
            key("shop", "127.0.0.1:2"),
            key("api", "127.0.0.1:3"),
        );
        let wanted = BTreeMap::from([
            (a.clone(), spec.clone()),
            (b.clone(), spec.clone()),
            (c.clone(), spec.clone()),
        ]);
        let s = p.sync(wanted.clone());
        assert_eq!((s.added, s.removed, s.restarted, s.total), (3, 0, 0, 3));

        // The same configuration again: nothing restarts.
        let s = p.sync(wanted);
        assert_eq!((s.added, s.removed, s.restarted, s.total), (0, 0, 0, 3));

        // c removed, b's pool check changed, a untouched.
        let faster = HealthCheckSpec {
            interval_ms: 500,
            timeout_ms: 200,
            ..spec.clone()
        };
        let s = p.sync(BTreeMap::from([(a, spec), (b, faster)]));
        assert_eq!((s.added, s.removed, s.restarted, s.total), (0, 1, 1, 2));
    }

    #[tokio::test]
    async fn every_probe_result_is_queued_for_reporting() {
        let queue = Arc::new(ReportQueue::new(1_000));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut p = Prober::start(context(queue.clone())).unwrap();
        let spec = HealthCheckSpec {
            kind: tandem_core::HealthCheckKind::Tcp,
            interval_ms: 100,
            timeout_ms: 50,
            ..Default::default()
        };
        let k = key("shop", &addr.to_string());
        p.sync(BTreeMap::from([(k.clone(), spec)]));
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(p);
        let seen = queue.drain();
        for o in &seen {
            assert_eq!(*o.key, k);
            assert!(o.ok(), "{o:?}");
        }
        // One a tenth of a second, the first within the first tenth.
        assert!(
            (15..=21).contains(&seen.len()),
            "{} probes in 2 s",
            seen.len()
        );
    }
}
