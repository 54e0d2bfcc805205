//! The raft leader of a three-replica control plane is killed while a proxy
//! serves steady traffic: a new leader takes over within 3 s, no client
//! request fails, and a backend that fails right after is still taken out
//! of rotation by the agents' health decisions.

use std::time::{Duration, Instant};

use tandem_testkit::served::{ServedPool, SteadyLoad, fail_until_unhealthy};
use tandem_testkit::{ControlCluster, Postgres};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_raft_leader_under_load_fails_no_request() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cluster = ControlCluster::start(&pg.url(), 3).await?;
    let (leader, term) = cluster.leader(&[], Duration::from_secs(10)).await?;

    let served = ServedPool::start(&cluster).await?;

    // Steady load: four clients back to back.
    let load = SteadyLoad::start(&served.url, 4);
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
    let sick = &served.backends[1];
    let survivor = (0..3)
        .find(|i| *i as u64 + 1 != leader)
        .expect("two survivors");
    let health = cluster.replicas[survivor].node_client().await?;
    fail_until_unhealthy(sick, &health).await?;
    // Out of rotation: it gets no more proxied requests.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sick.requests().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sick.requests().await?;

    let outcome = load.stop().await?;
    eprintln!("new leader {new_leader} (term {new_term}) {failover:?} after the kill; {outcome}");
    outcome.assert_none_failed(100);
    // (Its request count excludes health checks.)
    assert_eq!(
        after - before,
        0,
        "the unhealthy backend still got proxied requests"
    );
    Ok(())
}
