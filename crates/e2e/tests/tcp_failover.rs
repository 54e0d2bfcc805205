//! The "done when" of TCP routes: three real Postgres servers, each on its
//! own loopback "host", behind one TCP route of a `single_active` pool
//! whose health is checked on another port, where a small responder
//! imitates Patroni's REST API (`/primary` answers 200 only on the member
//! designated primary). A control plane, an agent and a proxy run as real
//! processes.
//!
//! The story: clients reach the primary through the proxy; the primary is
//! demoted (still running, its check now fails) and another promoted: the
//! proxy closes the old connections (a client must not keep writing to a
//! demoted primary) and new ones reach the new primary through the same
//! address. Then that primary is killed outright and a third promoted:
//! clients follow again. Finally two members claim to be primary at once:
//! the proxy still sends to one only, the first by declared order, and
//! says so in the control plane's status.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tandem_proto::v1;
use tandem_testkit::agent::AgentProcess;
use tandem_testkit::patroni::port_free_on;
use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::served::wait_node;
use tandem_testkit::tcp::{PrimaryResponder, primary_pool};
use tandem_testkit::{ControlPlane, Postgres, free_addr};

/// The port of the server a connection reached (each member has its own).
async fn server_port(conn: &mut PgConnection) -> anyhow::Result<u16> {
    let port: String = sqlx::query_scalar("SHOW port").fetch_one(conn).await?;
    Ok(port.parse()?)
}

async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    Ok(tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(url)).await??)
}

/// Waits until a new connection through the proxy reaches `want`.
async fn wait_served_by(url: &str, want: u16, within: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < within {
        match connect(url).await {
            Ok(mut c) => match server_port(&mut c).await {
                Ok(p) if p == want => return Ok(start.elapsed()),
                Ok(p) => last = format!("served by port {p}"),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("no connection reached port {want} within {within:?} (last: {last})")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_follow_the_primary_through_one_address_and_old_connections_are_closed()
-> anyhow::Result<()> {
    let control_db = Postgres::start()?;
    let cp = ControlPlane::start(&control_db.url()).await?;
    let hosts: Vec<IpAddr> = (1..=3).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    let dbs: Vec<Postgres> = hosts
        .iter()
        .map(|ip| Postgres::start_on(*ip))
        .collect::<anyhow::Result<_>>()?;
    let health_port = port_free_on(&hosts);
    let patroni = [
        PrimaryResponder::start(hosts[0], health_port, true).await?,
        PrimaryResponder::start(hosts[1], health_port, false).await?,
        PrimaryResponder::start(hosts[2], health_port, false).await?,
    ];

    // The pool, as an operator would declare it.
    let mut admin = cp.admin_client().await?;
    admin
        .create_pool(v1::CreatePoolRequest {
            pool: Some(primary_pool("db", health_port, 2)),
        })
        .await?;
    for db in &dbs {
        admin
            .add_backend(v1::AddBackendRequest {
                pool: "db".into(),
                backend: Some(v1::Backend {
                    address: db.addr().to_string(),
                    ..Default::default()
                }),
                expected_revision: None,
            })
            .await?;
    }
    let listen = free_addr();
    admin
        .add_tcp_route(v1::AddTcpRouteRequest {
            route: Some(v1::TcpRoute {
                listen: listen.to_string(),
                pool: "db".into(),
            }),
        })
        .await?;

    let _agent = AgentProcess::start("agent-1", "zone-a", &cp.endpoint()).await?;
    let proxy = ProxyProcess::joined("proxy-1", &cp.endpoint(), &[]).await?;
    let url = format!("postgres://postgres@{listen}/postgres");

    // 1. Clients reach the designated primary, db1.
    let first = wait_served_by(&url, dbs[0].port(), Duration::from_secs(20)).await;
    let first =
        first.map_err(|e| anyhow::anyhow!("{e}\n--- proxy ---\n{}", proxy.process.logs()))?;
    println!("db1 served {first:?} after the proxy was ready");
    let mut old = Vec::new();
    for _ in 0..3 {
        let mut c = connect(&url).await?;
        assert_eq!(server_port(&mut c).await?, dbs[0].port());
        old.push(c);
    }

    // 2. Switchover: db1 demoted (still up, its check now fails), db2
    // promoted. New clients reach db2 through the same address...
    let switched = Instant::now();
    patroni[0].set_primary(false);
    patroni[1].set_primary(true);
    let took = wait_served_by(&url, dbs[1].port(), Duration::from_secs(15)).await?;
    println!("switchover: db2 served {took:?} after the demotion");
    // ...and the connections to the demoted primary were closed by the
    // proxy, though db1 itself is still running.
    for c in &mut old {
        let r = tokio::time::timeout(Duration::from_secs(5), server_port(c)).await?;
        assert!(
            r.is_err(),
            "a connection to the demoted primary still works: {r:?}"
        );
    }
    let mut direct = connect(&dbs[0].url()).await?;
    assert_eq!(server_port(&mut direct).await?, dbs[0].port(), "db1 is up");
    assert!(switched.elapsed() < Duration::from_secs(20));

    // 3. Failover: db2 is killed (its REST API dies with it) and db3
    // promoted. Clients follow.
    let mut on_db2 = connect(&url).await?;
    assert_eq!(server_port(&mut on_db2).await?, dbs[1].port());
    dbs[1].kill()?;
    patroni[1].stop();
    patroni[2].set_primary(true);
    let took = wait_served_by(&url, dbs[2].port(), Duration::from_secs(15))
        .await
        .unwrap();
    println!("failover: db3 served {took:?} after db2 was killed");
    let r = tokio::time::timeout(Duration::from_secs(5), server_port(&mut on_db2)).await?;
    assert!(r.is_err(), "the connection to the killed primary is gone");
    // Every new client now lands on db3.
    for _ in 0..5 {
        let mut c = connect(&url).await?;
        assert_eq!(server_port(&mut c).await?, dbs[2].port());
    }

    // 4. Split brain: db1 claims to be primary again while db3 still does.
    // The proxy never sends to two at once: the first by declared order
    // (db1) takes every connection, db3's are closed, and the proxy
    // raises the alert in the control plane's status.
    let mut on_db3 = connect(&url).await?;
    assert_eq!(server_port(&mut on_db3).await?, dbs[2].port());
    patroni[0].set_primary(true);
    wait_served_by(&url, dbs[0].port(), Duration::from_secs(15)).await?;
    let r = tokio::time::timeout(Duration::from_secs(5), server_port(&mut on_db3)).await?;
    assert!(r.is_err(), "db3's connections closed: one member at a time");
    for _ in 0..5 {
        let mut c = connect(&url).await?;
        assert_eq!(server_port(&mut c).await?, dbs[0].port());
    }
    let status = cp.node_client().await?;
    wait_node(
        &status,
        Duration::from_secs(15),
        "the proxy's split-brain alert",
        "proxy-1",
        |n| {
            n.alerts
                .iter()
                .any(|a| a.contains("2 members pass the health check"))
        },
    )
    .await?;
    let (_, metrics) = proxy.admin_get("/metrics").await?;
    assert!(
        metrics.contains("tandem_proxy_tcp_single_active_claimants{pool=\"db\"} 2"),
        "{metrics}"
    );
    assert!(proxy.process.logs().contains("SPLIT BRAIN?"));
    drop(direct);
    Ok(())
}
