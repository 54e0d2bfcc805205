//! What to probe: every backend of every pool, with its pool's check. The
//! check may name another port of the backend's host (Patroni's REST API
//! beside Postgres, say): the probe goes there, and its result is reported
//! for the backend ([`HealthCheckSpec::target_address`]).
//!
//! A pool with TLS to its backends is probed over TLS with the pool's
//! settings (CA bundle, SNI, `insecure`), HAProxy's `check-ssl` with
//! `verify required`: an HTTP check sends its request inside TLS, a TCP
//! check is a TLS handshake. That holds for the traffic port only, as
//! HAProxy's `ssl` does: a check on another port (`--health-port`, a
//! plain-text status endpoint beside the TLS one) stays plain.

use std::collections::BTreeMap;

use tandem_core::health::BackendKey;
use tandem_core::{AdminState, BackendTls, HealthCheckSpec, PoolConfig, Snapshot};

/// One backend's probe: its pool's check, and the pool's TLS settings when
/// the probe speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub spec: HealthCheckSpec,
    pub tls: Option<BackendTls>,
}

/// The probe targets of a configuration, by backend. Disabled backends are
/// not probed (nobody may route to them); draining ones are, since they
/// still finish requests and may be enabled again at any time.
pub fn targets(snapshot: &Snapshot) -> BTreeMap<BackendKey, Target> {
    snapshot
        .pools
        .values()
        .flat_map(|pool| {
            pool.backends
                .iter()
                .filter(|b| b.admin_state != AdminState::Disabled)
                .map(|b| {
                    let key = BackendKey {
                        pool: pool.config.name.clone(),
                        address: b.address.clone(),
                    };
                    let target = target_of(&pool.config, &key);
                    (key, target)
                })
        })
        .collect()
}

/// A backend's probe: its pool's check, over TLS when the pool speaks TLS
/// to its backends and the check goes to the traffic port.
fn target_of(pool: &PoolConfig, key: &BackendKey) -> Target {
    let spec = pool.health_check.clone();
    let on_traffic_port = spec.port.is_none_or(|p| p == key.address.port());
    let tls = pool.backend_tls.clone().filter(|_| on_traffic_port);
    Target { spec, tls }
}

#[cfg(test)]
mod tests {
    use tandem_core::{
        Backend, BackendAddr, ConfigChange, HealthCheckKind, PoolConfig, PoolName, Revision,
    };

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
        assert_eq!(
            t[&api_key],
            Target {
                spec: api_cfg.health_check,
                tls: None
            }
        );
    }

    #[test]
    fn pools_with_tls_to_backends_are_probed_over_tls_on_the_traffic_port_only() {
        let mut c = PoolConfig::new(PoolName::new("tls").unwrap());
        let key = BackendKey {
            pool: c.name.clone(),
            address: BackendAddr::new("10.0.0.1:8443").unwrap(),
        };
        assert_eq!(target_of(&c, &key).tls, None);
        let tls = tandem_core::BackendTls {
            sni: "api.internal".into(),
            ..Default::default()
        };
        c.backend_tls = Some(tls.clone());
        let t = target_of(&c, &key);
        assert_eq!(
            (t.spec.kind, t.tls),
            (HealthCheckKind::Http, Some(tls.clone()))
        );
        // The check names the traffic port: the same.
        c.health_check.port = Some(8443);
        assert_eq!(target_of(&c, &key).tls, Some(tls));
        // Another port: a plain-text status endpoint.
        c.health_check.port = Some(8080);
        assert_eq!(target_of(&c, &key).tls, None);
    }
}
