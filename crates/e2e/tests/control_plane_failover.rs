//! The raft leader of a three-replica control plane is killed while a proxy
//! serves steady traffic: a new leader takes over within 3 s, no client
//! request fails, and a backend that fails right after is still taken out
//! of rotation by the agents' health decisions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tandem_proto::v1;
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::{
    ControlCluster, NODE_TOKEN, Postgres, Process, declare_pool, free_addr, http_client,
    wait_http_ok,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_raft_leader_under_load_fails_no_request() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cluster = ControlCluster::start(&pg.url(), 3).await?;
    let (leader, term) = cluster.leader(&[], Duration::from_secs(10)).await?;

    let backends = FakeBackend::start_many("web", 3).await?;
    let mut admin = cluster.replicas[0].admin_client().await?;
    let pool = v1::Pool {
        name: "web".into(),
        health_check: Some(v1::HealthCheck {
            path: Some("/healthz".into()),
            interval_ms: Some(500),
            timeout_ms: Some(250),
            rise: Some(2),
            fall: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    };
    let addresses: Vec<String> = backends.iter().map(|b| b.address()).collect();
    declare_pool(&mut admin, pool, &addresses).await?;

    let endpoints = cluster.endpoints();
    let agent_admin = free_addr();
    let _agent = Process::spawn(
        "agent-1",
        "tandem-agent",
        &[],
        &[
            ("TANDEM_CONTROL", endpoints.clone()),
            ("TANDEM_TOKEN", NODE_TOKEN.into()),
            ("TANDEM_NODE_ID", "agent-1".into()),
            ("TANDEM_ADMIN_LISTEN", agent_admin.to_string()),
        ],
    )?;
    let proxy = ProxyProcess::start(
        tempfile::tempdir()?,
        &endpoints,
        &[
            ("TANDEM_TOKEN", NODE_TOKEN.into()),
            ("TANDEM_WORKERS", "1".into()),
        ],
    )?;
    proxy.wait_ready().await?;
    let url = proxy.url("/");
    wait_http_ok(&url, Duration::from_secs(20)).await?;

    // Every backend healthy as decided through raft before the chaos.
    let health = cluster.replicas[0].node_client().await?;
    tandem_testkit::wait_until(Duration::from_secs(15), "all backends healthy", || {
        let mut health = health.clone();
        async move {
            let Ok(h) = health.get_health(v1::GetHealthRequest {}).await else {
                return false;
            };
            let h = h.into_inner();
            h.backends.len() == 3
                && h.backends
                    .iter()
                    .all(|b| b.state == v1::HealthState::Healthy as i32)
        }
    })
    .await?;

    // Steady load: four clients back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let client = http_client();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{other:?}"));
                    }
                }
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // kill -9 the leader.
    cluster.replica(leader).process.kill();
    let killed = Instant::now();
    let (new_leader, new_term) = cluster.leader(&[leader], Duration::from_secs(10)).await?;
    let failover = killed.elapsed();
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
    assert!(
        failover < Duration::from_secs(3),
        "new leader after {failover:?}"
    );

    // A backend whose health check fails right after is taken out: the
    // agent reports to a surviving replica, the new leader decides, and
    // the proxy stops sending it traffic.
    let sick = &backends[1];
    sick.set_healthy(false).await?;
    let survivor = (0..3)
        .find(|i| *i as u64 + 1 != leader)
        .expect("two survivors");
    let health = cluster.replicas[survivor].node_client().await?;
    tandem_testkit::wait_until(
        Duration::from_secs(10),
        "the sick backend decided unhealthy",
        || {
            let mut health = health.clone();
            let addr = sick.address();
            async move {
                let Ok(h) = health.get_health(v1::GetHealthRequest {}).await else {
                    return false;
                };
                h.into_inner()
                    .backends
                    .iter()
                    .any(|b| b.address == addr && b.state == v1::HealthState::Unhealthy as i32)
            }
        },
    )
    .await?;
    // Out of rotation: it gets no more proxied requests.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sick.requests().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sick.requests().await?;

    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for c in clients {
        errors.extend(c.await?);
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "new leader {new_leader} (term {new_term}) {failover:?} after the kill; {ok} requests, {failed} failed"
    );
    assert!(ok > 100, "the load ran ({ok} requests)");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {:?}",
        ok + failed,
        &errors[..errors.len().min(5)]
    );
    // (Its request count excludes health checks.)
    assert_eq!(
        after - before,
        0,
        "the unhealthy backend still got proxied requests"
    );
    Ok(())
}
