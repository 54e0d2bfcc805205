//! The whole declared configuration at one revision, and the closed set of
//! changes that move it to the next. The control plane's change log, the
//! Watch stream and the proxy's routing table all speak [`ConfigChange`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    Backend, BackendAddr, CertName, Certificate, Error, HostMatch, ListenAddr, PathPrefix,
    PoolConfig, PoolName, Revision, Route, TcpRoute,
};

/// A pool with its backends (sorted by address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub config: PoolConfig,
    pub backends: Vec<Backend>,
    /// The revision at which the pool or one of its backends last changed.
    pub revision: Revision,
}

impl Pool {
    pub fn backend(&self, address: &BackendAddr) -> Option<&Backend> {
        self.backends.iter().find(|b| &b.address == address)
    }
}

/// One committed change to the declared configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConfigChange {
    /// Creates a pool or replaces its settings; its backends are untouched.
    PoolUpserted(PoolConfig),
    /// Deletes a pool with its backends.
    PoolDeleted {
        name: PoolName,
    },
    /// Adds a backend or replaces it.
    BackendUpserted {
        pool: PoolName,
        backend: Backend,
    },
    BackendRemoved {
        pool: PoolName,
        address: BackendAddr,
    },
    /// Adds a route or replaces the one with the same host and prefix.
    RouteUpserted(Route),
    RouteDeleted {
        host: HostMatch,
        path_prefix: PathPrefix,
    },
    /// Adds a TCP route or replaces the one on the same listen address.
    TcpRouteUpserted(TcpRoute),
    TcpRouteDeleted {
        listen: ListenAddr,
    },
    /// Adds a TLS certificate or replaces the one with the same name.
    CertificateUpserted(Certificate),
    CertificateDeleted {
        name: CertName,
    },
}

/// Which history a revision belongs to: the control database's id (made
/// with it) and its generation, which changes whenever history may have
/// been rewritten (a restore, a failover that lost the last transactions).
/// Revision N of one (id, generation) says nothing of revision N of
/// another: a follower whose identity differs needs a full snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoreIdentity {
    pub id: String,
    pub generation: u64,
}

impl std::fmt::Display for StoreIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.id, self.generation)
    }
}

/// Declared configuration at `revision`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub revision: Revision,
    /// The store this revision belongs to (None: not known, e.g. a copy
    /// written before stores had identities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreIdentity>,
    pub pools: BTreeMap<PoolName, Pool>,
    /// Sorted by (host, path_prefix).
    pub routes: Vec<Route>,
    /// TCP (layer 4) routes, sorted by listen address.
    #[serde(default)]
    pub tcp_routes: Vec<TcpRoute>,
    /// TLS certificates for the proxies' TLS listeners, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub certificates: BTreeMap<CertName, Certificate>,
}

impl Snapshot {
    pub fn route(&self, host: &HostMatch, path_prefix: &PathPrefix) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| &r.host == host && &r.path_prefix == path_prefix)
    }

    pub fn tcp_route(&self, listen: &ListenAddr) -> Option<&TcpRoute> {
        self.tcp_routes.iter().find(|r| &r.listen == listen)
    }

    /// How many routes of either kind send traffic to `pool`.
    pub fn routes_to(&self, pool: &PoolName) -> usize {
        self.routes.iter().filter(|r| &r.pool == pool).count()
            + self.tcp_routes.iter().filter(|r| &r.pool == pool).count()
    }

    /// Applies a change committed at `revision`, which must be the next one.
    /// A change that does not fit (a backend of an unknown pool, say) means
    /// the follower has diverged and should fetch a fresh snapshot. It
    /// decides no rule: the control plane's store checked the change
    /// before committing it.
    pub fn apply(&mut self, revision: Revision, change: &ConfigChange) -> Result<(), Error> {
        if revision != self.revision.next() {
            return Err(Error::StaleRevision {
                what: "the snapshot".into(),
                expected: self.revision.next().0,
                actual: revision.0,
            });
        }
        match change {
            ConfigChange::PoolUpserted(config) => {
                let pool = self
                    .pools
                    .entry(config.name.clone())
                    .or_insert_with(|| Pool {
                        config: config.clone(),
                        backends: Vec::new(),
                        revision,
                    });
                pool.config = config.clone();
                pool.revision = revision;
            }
            ConfigChange::PoolDeleted { name } => {
                self.pools.remove(name).ok_or_else(|| unknown_pool(name))?;
            }
            ConfigChange::BackendUpserted { pool, backend } => {
                let p = self.pools.get_mut(pool).ok_or_else(|| unknown_pool(pool))?;
                match p
                    .backends
                    .binary_search_by(|b| b.address.cmp(&backend.address))
                {
                    Ok(i) => p.backends[i] = backend.clone(),
                    Err(i) => p.backends.insert(i, backend.clone()),
                }
                p.revision = revision;
            }
            ConfigChange::BackendRemoved { pool, address } => {
                let p = self.pools.get_mut(pool).ok_or_else(|| unknown_pool(pool))?;
                let i = p
                    .backends
                    .binary_search_by(|b| b.address.cmp(address))
                    .map_err(|_| Error::UnknownBackend {
                        pool: pool.to_string(),
                        address: address.to_string(),
                    })?;
                p.backends.remove(i);
                p.revision = revision;
            }
            ConfigChange::RouteUpserted(route) => {
                if !self.pools.contains_key(&route.pool) {
                    return Err(unknown_pool(&route.pool));
                }
                match self.route_index(&route.host, &route.path_prefix) {
                    Ok(i) => self.routes[i] = route.clone(),
                    Err(i) => self.routes.insert(i, route.clone()),
                }
            }
            ConfigChange::RouteDeleted { host, path_prefix } => {
                let i = self
                    .route_index(host, path_prefix)
                    .map_err(|_| Error::UnknownRoute {
                        host: host.to_string(),
                        path_prefix: path_prefix.to_string(),
                    })?;
                self.routes.remove(i);
            }
            ConfigChange::TcpRouteUpserted(route) => {
                if !self.pools.contains_key(&route.pool) {
                    return Err(unknown_pool(&route.pool));
                }
                match self
                    .tcp_routes
                    .binary_search_by(|r| r.listen.cmp(&route.listen))
                {
                    Ok(i) => self.tcp_routes[i] = route.clone(),
                    Err(i) => self.tcp_routes.insert(i, route.clone()),
                }
            }
            ConfigChange::TcpRouteDeleted { listen } => {
                let i = self
                    .tcp_routes
                    .binary_search_by(|r| r.listen.cmp(listen))
                    .map_err(|_| Error::UnknownTcpRoute {
                        listen: listen.to_string(),
                    })?;
                self.tcp_routes.remove(i);
            }
            ConfigChange::CertificateUpserted(cert) => {
                self.certificates.insert(cert.name.clone(), cert.clone());
            }
            ConfigChange::CertificateDeleted { name } => {
                self.certificates
                    .remove(name)
                    .ok_or_else(|| Error::UnknownCertificate {
                        name: name.to_string(),
                    })?;
            }
        }
        self.revision = revision;
        Ok(())
    }

    fn route_index(&self, host: &HostMatch, path_prefix: &PathPrefix) -> Result<usize, usize> {
        self.routes
            .binary_search_by(|r| (&r.host, &r.path_prefix).cmp(&(host, path_prefix)))
    }
}

fn unknown_pool(name: &PoolName) -> Error {
    Error::UnknownPool {
        name: name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AdminState, Weight};

    fn name(s: &str) -> PoolName {
        PoolName::new(s).unwrap()
    }

    #[test]
    fn changes_replay_in_order() {
        let mut s = Snapshot::default();
        let changes = vec![
            ConfigChange::PoolUpserted(PoolConfig::new(name("shop"))),
            ConfigChange::BackendUpserted {
                pool: name("shop"),
                backend: Backend::new(BackendAddr::new("10.0.0.2:80").unwrap()),
            },
            ConfigChange::BackendUpserted {
                pool: name("shop"),
                backend: Backend::new(BackendAddr::new("10.0.0.1:80").unwrap()),
            },
            ConfigChange::RouteUpserted(Route {
                host: HostMatch::Any,
                path_prefix: PathPrefix::new("/").unwrap(),
                pool: name("shop"),
                redirect_https: false,
                hsts_max_age_s: 0,
            }),
            ConfigChange::TcpRouteUpserted(TcpRoute {
                listen: ListenAddr::new("0.0.0.0:5432").unwrap(),
                pool: name("shop"),
            }),
            ConfigChange::BackendUpserted {
                pool: name("shop"),
                backend: Backend {
                    weight: Weight::new(5).unwrap(),
                    admin_state: AdminState::Draining,
                    ..Backend::new(BackendAddr::new("10.0.0.1:80").unwrap())
                },
            },
        ];
        for (i, c) in changes.iter().enumerate() {
            s.apply(Revision(i as u64 + 1), c).unwrap();
        }
        assert_eq!(s.revision, Revision(6));
        let shop = &s.pools[&name("shop")];
        let addrs: Vec<_> = shop.backends.iter().map(|b| b.address.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.2:80"]);
        assert_eq!(shop.backends[0].admin_state, AdminState::Draining);
        assert_eq!(shop.revision, Revision(6));
        assert_eq!(s.routes.len(), 1);
        assert_eq!(s.tcp_routes.len(), 1);
        assert_eq!(s.routes_to(&name("shop")), 2);

        // The log's JSON form round-trips.
        for c in &changes {
            let back: ConfigChange =
                serde_json::from_str(&serde_json::to_string(c).unwrap()).unwrap();
            assert_eq!(&back, c);
        }
    }

    #[test]
    fn gaps_and_unknown_pools_are_refused() {
        let mut s = Snapshot::default();
        let c = ConfigChange::PoolUpserted(PoolConfig::new(name("a")));
        assert!(matches!(
            s.apply(Revision(2), &c),
            Err(Error::StaleRevision { .. })
        ));
        let c = ConfigChange::BackendRemoved {
            pool: name("nope"),
            address: BackendAddr::new("h:1").unwrap(),
        };
        assert!(matches!(
            s.apply(Revision(1), &c),
            Err(Error::UnknownPool { .. })
        ));
        assert_eq!(s.revision, Revision(0));
    }

    #[test]
    fn tcp_routes_are_keyed_by_listen_address() {
        let mut s = Snapshot::default();
        let listen = ListenAddr::new("127.0.0.1:6432").unwrap();
        let route = |pool: &str| {
            ConfigChange::TcpRouteUpserted(TcpRoute {
                listen,
                pool: name(pool),
            })
        };
        assert!(matches!(
            s.apply(Revision(1), &route("db")),
            Err(Error::UnknownPool { .. })
        ));
        s.apply(
            Revision(1),
            &ConfigChange::PoolUpserted(PoolConfig::new(name("db"))),
        )
        .unwrap();
        s.apply(
            Revision(2),
            &ConfigChange::PoolUpserted(PoolConfig::new(name("db2"))),
        )
        .unwrap();
        s.apply(Revision(3), &route("db")).unwrap();
        s.apply(Revision(4), &route("db2")).unwrap();
        assert_eq!(s.tcp_routes.len(), 1, "replaced");
        assert_eq!(s.tcp_route(&listen).unwrap().pool, name("db2"));
        s.apply(Revision(5), &ConfigChange::TcpRouteDeleted { listen })
            .unwrap();
        assert!(matches!(
            s.apply(Revision(6), &ConfigChange::TcpRouteDeleted { listen }),
            Err(Error::UnknownTcpRoute { .. })
        ));
        // A snapshot saved before TCP routes existed still loads.
        let old = r#"{"revision":3,"pools":{},"routes":[]}"#;
        let back: Snapshot = serde_json::from_str(old).unwrap();
        assert!(back.tcp_routes.is_empty());
    }
}
