//! The probe engine told what to probe: [`Prober::sync`] keeps the
//! engine's targets in step with the configuration, starting, stopping and
//! restarting only the probes whose target or check changed. It also keeps
//! one TLS client configuration per pool with TLS to its backends, built
//! with the proxy's own code (`tandem_tls::client`: the pool's CA bundle or
//! the Mozilla roots, `insecure`), while the pool's settings stay the same,
//! so that its session cache lives on and new connections resume.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::Resumption;
use tandem_core::health::BackendKey;
use tandem_core::{BackendTls, PoolName};

use crate::engine::{Context, Engine};
use crate::probe::{ProbeTls, TlsClient};
use crate::target::Target;

/// A pool's TLS client configuration, or why its settings give none.
type PoolTls = Result<Arc<ClientConfig>, Arc<str>>;

/// The probe engine, told what to probe: [`Prober::sync`] keeps its targets
/// in step with the configuration. Dropping it stops every probe.
pub struct Prober {
    ctx: Arc<Context>,
    engine: Engine,
    running: BTreeMap<BackendKey, Target>,
    /// Each TLS pool's settings and the configuration built from them.
    tls: HashMap<PoolName, (BackendTls, PoolTls)>,
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
            tls: HashMap::new(),
        })
    }

    /// Starts probes for new targets, stops those of removed ones and
    /// restarts those whose check changed (on a new connection); every
    /// other probe keeps running untouched.
    pub fn sync(&mut self, wanted: BTreeMap<BackendKey, Target>) -> SyncStats {
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
        // TLS configurations of pools gone or no longer TLS go too.
        self.tls.retain(|pool, (settings, _)| {
            wanted
                .iter()
                .any(|(k, t)| k.pool == *pool && t.tls.as_ref() == Some(settings))
        });
        for (key, target) in wanted {
            let change = match self.running.get(&key) {
                Some(running) if *running == target => continue,
                Some(_) => &mut stats.restarted,
                None => &mut stats.added,
            };
            *change += 1;
            let tls = target.tls.as_ref().map(|t| self.tls_for(&key, t));
            self.engine.add(key.clone(), target.spec.clone(), tls);
            self.running.insert(key, target);
        }
        stats.total = self.running.len();
        self.ctx.metrics.targets.set(stats.total as f64);
        stats
    }

    /// The TLS of a backend's probes: its pool's configuration (kept while
    /// the settings stay the same) and the server name, the pool's `sni`
    /// or the backend's host.
    fn tls_for(&mut self, key: &BackendKey, settings: &BackendTls) -> ProbeTls {
        let config = match self.tls.get(&key.pool) {
            Some((s, config)) if s == settings => config.clone(),
            _ => {
                let config = pool_config(settings);
                if let Err(why) = &config {
                    tracing::warn!(pool = %key.pool, %why, "no TLS for this pool's probes; they fail");
                }
                self.tls
                    .insert(key.pool.clone(), (settings.clone(), config.clone()));
                config
            }
        }?;
        let name = tandem_tls::client::server_name(settings.server_name(&key.address))
            .map_err(|e| Arc::<str>::from(e.to_string()))?;
        Ok(TlsClient { config, name })
    }
}

/// Sessions a pool's configuration remembers, one per server name (a pool
/// with an `sni` shares one name across its backends).
const SESSIONS: usize = 1024;

/// The client configuration for a pool's probes: the proxy's, with a
/// session cache sized for many backends.
pub(crate) fn pool_config(settings: &BackendTls) -> PoolTls {
    let mut config =
        tandem_tls::client::client_config(settings).map_err(|e| Arc::<str>::from(e.to_string()))?;
    config.resumption = Resumption::in_memory_sessions(SESSIONS);
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tandem_core::{BackendAddr, HealthCheckSpec, PoolName};

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
        let spec = Target {
            spec: HealthCheckSpec::default(),
            tls: None,
        };
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
        let faster = Target {
            spec: HealthCheckSpec {
                interval_ms: 500,
                timeout_ms: 200,
                ..spec.spec.clone()
            },
            tls: None,
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
        p.sync(BTreeMap::from([(k.clone(), Target { spec, tls: None })]));
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
