//! What to probe: every backend of every pool, with its pool's check. The
//! check may name another port of the backend's host (Patroni's REST API
//! beside Postgres, say): the probe goes there, and its result is reported
//! for the backend ([`HealthCheckSpec::target_address`]).

use std::collections::BTreeMap;

use tandem_core::health::BackendKey;
use tandem_core::{AdminState, HealthCheckKind, HealthCheckSpec, PoolConfig, Snapshot};

/// The probe targets of a configuration, by backend. Disabled backends are
/// not probed (nobody may route to them); draining ones are, since they
/// still finish requests and may be enabled again at any time.
pub fn targets(snapshot: &Snapshot) -> BTreeMap<BackendKey, HealthCheckSpec> {
    snapshot
        .pools
        .values()
        .flat_map(|pool| {
            pool.backends
                .iter()
                .filter(|b| b.admin_state != AdminState::Disabled)
                .map(|b| {
                    (
                        BackendKey {
                            pool: pool.config.name.clone(),
                            address: b.address.clone(),
                        },
                        check_of(&pool.config),
                    )
                })
        })
        .collect()
}

/// A pool's check as the agent runs it. The agent's HTTP probes speak
/// plain HTTP/1.1 only: for a pool with TLS to its backends, an HTTP check
/// would send plain text to a TLS port and fail every backend, so it runs
/// as a TCP connect check instead (the proxies' own handshakes, counted by
/// outlier detection, catch certificate problems).
fn check_of(pool: &PoolConfig) -> HealthCheckSpec {
    let mut spec = pool.health_check.clone();
    if pool.backend_tls.is_some() && spec.kind == HealthCheckKind::Http {
        spec.kind = HealthCheckKind::Tcp;
    }
    spec
}

#[cfg(test)]
mod tests {
    use tandem_core::{Backend, BackendAddr, ConfigChange, PoolConfig, PoolName, Revision};

    use super::*;

    #[test]
    fn every_backend_but_disabled_ones_with_its_pool_check() {
        let shop = PoolName::new("shop").unwrap();
        let api = PoolName::new("api").unwrap();
        let mut api_cfg = PoolConfig::new(api.clone());
        api_cfg.health_check.kind = tandem_core::HealthCheckKind::Tcp;
        let backend = |addr: &str, state| Backend {
            admin_state: state,
            ..Backend::new(BackendAddr::new(addr).unwrap())
        };
        let changes = [
            ConfigChange::PoolUpserted(PoolConfig::new(shop.clone())),
            ConfigChange::PoolUpserted(api_cfg.clone()),
            ConfigChange::BackendUpserted {
                pool: shop.clone(),
                backend: backend("10.0.0.1:80", AdminState::Enabled),
            },
            ConfigChange::BackendUpserted {
                pool: shop.clone(),
                backend: backend("10.0.0.2:80", AdminState::Draining),
            },
            ConfigChange::BackendUpserted {
                pool: shop.clone(),
                backend: backend("10.0.0.3:80", AdminState::Disabled),
            },
            // The same address in two pools is two targets.
            ConfigChange::BackendUpserted {
                pool: api.clone(),
                backend: backend("10.0.0.1:80", AdminState::Enabled),
            },
        ];
        let mut s = Snapshot::default();
        for (i, c) in changes.iter().enumerate() {
            s.apply(Revision(i as u64 + 1), c).unwrap();
        }
        let t = targets(&s);
        let got: Vec<(&str, &str)> = t
            .keys()
            .map(|k| (k.pool.as_str(), k.address.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("api", "10.0.0.1:80"),
                ("shop", "10.0.0.1:80"),
                ("shop", "10.0.0.2:80")
            ]
        );
        let api_key = BackendKey {
            pool: api,
            address: BackendAddr::new("10.0.0.1:80").unwrap(),
        };
        assert_eq!(t[&api_key], api_cfg.health_check);
    }

    #[test]
    fn pools_with_tls_to_backends_are_checked_by_connect() {
        let mut c = PoolConfig::new(PoolName::new("tls").unwrap());
        assert_eq!(check_of(&c).kind, HealthCheckKind::Http);
        c.backend_tls = Some(tandem_core::BackendTls::default());
        assert_eq!(check_of(&c).kind, HealthCheckKind::Tcp);
    }
}
