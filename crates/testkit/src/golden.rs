//! A fixed sample of configuration for golden-file tests of the stored
//! formats (`snapshot.json`, `change_log` rows): every kind of change and
//! every kind of object, with settings away from their defaults.

use tandem_core::{
    AdminState, Backend, BackendAddr, BackendRole, ConfigChange, HostMatch, LbPolicy, ListenAddr,
    OnUnhealthy, PathPrefix, PoolConfig, PoolName, Revision, Route, Snapshot, TcpRoute, Weight,
};

fn pool(name: &str) -> PoolName {
    PoolName::new(name).expect("a valid sample pool name")
}

fn addr(a: &str) -> BackendAddr {
    BackendAddr::new(a).expect("a valid sample address")
}

/// One change of each kind, in an order that applies from an empty
/// snapshot at revision 0.
pub fn changes() -> Vec<ConfigChange> {
    let mut shop = PoolConfig::new(pool("shop"));
    shop.policy = LbPolicy::LeastConnections;
    shop.health_check.path = "/healthz".into();
    shop.retry.attempts = 3;
    shop.outlier.consecutive_failures = 7;
    let mut db = PoolConfig::new(pool("db"));
    db.policy = LbPolicy::SingleActive;
    db.tcp.idle_timeout_ms = 60_000;
    db.tcp.on_unhealthy = Some(OnUnhealthy::Close);
    db.tcp.proxy_protocol = true;
    let backup = Backend {
        weight: Weight::new(5).expect("a valid weight"),
        role: BackendRole::Backup,
        admin_state: AdminState::Draining,
        order: 1,
        ..Backend::new(addr("10.0.0.2:80"))
    };
    let listen = |a: &str| ListenAddr::new(a).expect("a valid listen address");
    let route = |host: &str, prefix: &str, to: &str| Route {
        host: HostMatch::new(host).expect("a valid host"),
        path_prefix: PathPrefix::new(prefix).expect("a valid prefix"),
        pool: pool(to),
        redirect_https: false,
        hsts_max_age_s: 0,
    };
    vec![
        ConfigChange::PoolUpserted(shop),
        ConfigChange::PoolUpserted(db),
        ConfigChange::PoolUpserted(PoolConfig::new(pool("old"))),
        ConfigChange::BackendUpserted {
            pool: pool("shop"),
            backend: Backend::new(addr("10.0.0.1:80")),
        },
        ConfigChange::BackendUpserted {
            pool: pool("shop"),
            backend: backup,
        },
        ConfigChange::BackendUpserted {
            pool: pool("shop"),
            backend: Backend::new(addr("10.0.0.3:80")),
        },
        ConfigChange::BackendRemoved {
            pool: pool("shop"),
            address: addr("10.0.0.3:80"),
        },
        ConfigChange::BackendUpserted {
            pool: pool("db"),
            backend: Backend::new(addr("10.0.1.1:5432")),
        },
        ConfigChange::RouteUpserted(route("*.example.com", "/", "shop")),
        ConfigChange::RouteUpserted(route("api.example.com", "/v1/", "shop")),
        ConfigChange::RouteDeleted {
            host: HostMatch::new("api.example.com").expect("a valid host"),
            path_prefix: PathPrefix::new("/v1/").expect("a valid prefix"),
        },
        ConfigChange::TcpRouteUpserted(TcpRoute {
            listen: listen("127.0.0.1:5432"),
            pool: pool("db"),
        }),
        ConfigChange::TcpRouteUpserted(TcpRoute {
            listen: listen("127.0.0.1:6432"),
            pool: pool("db"),
        }),
        ConfigChange::TcpRouteDeleted {
            listen: listen("127.0.0.1:6432"),
        },
        ConfigChange::PoolDeleted { name: pool("old") },
    ]
}

/// [`changes`] applied in order, at revisions 1, 2, ..., of a store
/// identity (`snapshot.json` carries it from format version 3).
pub fn snapshot() -> Snapshot {
    let mut s = Snapshot {
        store: Some(tandem_core::StoreIdentity {
            id: "0b7e4c1e-5a8f-4d0a-9c3e-2f6d8a1b9e70".into(),
            generation: 3,
        }),
        ..Snapshot::default()
    };
    for (i, c) in changes().iter().enumerate() {
        s.apply(Revision(i as u64 + 1), c)
            .expect("the sample changes apply in order");
    }
    s
}
