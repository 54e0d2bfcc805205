//! Three real control replicas in a raft group on one Postgres: elections,
//! losing the leader, losing quorum, restarting everything, and a leader
//! cut off from the others by the kernel's packet filter.

mod common;

use common::obs;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tandem_proto::v1;
use tandem_testkit::{ControlCluster, ControlPlane, Postgres};

const B1: &str = "127.0.0.1:9201";
const B2: &str = "127.0.0.1:9202";
const B3: &str = "127.0.0.1:9203";

async fn configure(cp: &ControlPlane) -> anyhow::Result<()> {
    common::shop_pool(cp, 1, 1, &[B1, B2, B3]).await
}

async fn report(cp: &ControlPlane, addr: &str, ok: bool) -> Result<(), tonic::Status> {
    let mut c = cp
        .node_client()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    c.report_health(v1::ReportHealthRequest {
        agent_id: "agent-1".into(),
        zone: "z".into(),
        observations: vec![obs(addr, ok)],
    })
    .await
    .map(|_| ())
}

async fn state_on(cp: &ControlPlane, addr: &str) -> anyhow::Result<Option<i32>> {
    let h = cp
        .node_client()
        .await?
        .get_health(v1::GetHealthRequest {})
        .await?
        .into_inner();
    Ok(h.backends
        .iter()
        .find(|b| b.address == addr)
        .map(|b| b.state))
}

async fn cluster_status(cp: &ControlPlane) -> anyhow::Result<v1::ClusterStatus> {
    Ok(cp
        .node_client()
        .await?
        .get_cluster_status(v1::GetClusterStatusRequest {})
        .await?
        .into_inner())
}

/// Reports `addr` as `ok` through `via` until every replica in `on`
/// shows the resulting state.
async fn drive(
    cluster: &ControlCluster,
    via: usize,
    on: &[usize],
    addr: &str,
    ok: bool,
) -> anyhow::Result<()> {
    let want = if ok {
        v1::HealthState::Healthy
    } else {
        v1::HealthState::Unhealthy
    } as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = report(&cluster.replicas[via], addr, ok).await;
        let mut all = true;
        for &i in on {
            all &= state_on(&cluster.replicas[i], addr).await.ok().flatten() == Some(want);
        }
        if all {
            return Ok(());
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = cluster
                .replicas
                .iter()
                .map(|r| format!("--- {} ---\n{}", r.process.name(), r.process.logs()))
                .collect();
            let last = report(&cluster.replicas[via], addr, ok).await;
            anyhow::bail!(
                "{addr} did not become {want} on replicas {on:?} (last report: {last:?})\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_when_the_leader_is_killed() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cluster = ControlCluster::start(&pg.url(), 3).await?;
    let (leader, term) = cluster.leader(&[], Duration::from_secs(10)).await?;
    configure(&cluster.replicas[0]).await?;

    // Reported through a follower: forwarded to the leader, decided,
    // committed, visible on every replica.
    let follower = (1..=3).find(|i| *i != leader).expect("three members") as usize - 1;
    drive(&cluster, follower, &[0, 1, 2], B1, false).await?;

    // Members and their lag, from any replica.
    let status = cluster.replicas[follower]
        .node_client()
        .await?
        .get_cluster_status(v1::GetClusterStatusRequest {})
        .await?
        .into_inner();
    assert_eq!(status.leader_id, leader);
    assert_eq!(status.members.len(), 3);
    assert!(
        status.members.iter().all(|m| m.matched_index > 0),
        "{status:?}"
    );
    // The leader hears from every member (heartbeat responses).
    assert!(
        status
            .members
            .iter()
            .all(|m| m.reachable == Some(true) && m.last_heard_ms.is_some_and(|ms| ms < 1_000)),
        "{status:?}"
    );
    // /metrics on the leader says the same.
    let metrics = cluster.replicas[(leader - 1) as usize].metrics().await?;
    for name in [
        "tandem_raft_term",
        "tandem_raft_is_leader 1",
        "tandem_raft_commit_index",
        "tandem_raft_member_lag{member=",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }

    // Kill -9 the leader: the others elect a new one within 3 s.
    cluster.replica(leader).process.kill();
    let killed_at = Instant::now();
    let (new_leader, new_term) = cluster.leader(&[leader], Duration::from_secs(10)).await?;
    let took = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
    assert!(took < Duration::from_secs(3), "failover took {took:?}");

    // The new leader does not pass the dead member off as healthy: it has
    // not heard from it since before the kill.
    let dead_unreachable = |s: &v1::ClusterStatus| {
        s.members
            .iter()
            .any(|m| m.id == leader && m.reachable == Some(false))
    };
    tandem_testkit::wait_until(
        Duration::from_secs(3),
        "the new leader to mark the killed member unreachable",
        || async {
            cluster_status(&cluster.replicas[(new_leader - 1) as usize])
                .await
                .is_ok_and(|s| dead_unreachable(&s))
        },
    )
    .await?;
    let status = cluster_status(&cluster.replicas[(new_leader - 1) as usize]).await?;
    let dead = status
        .members
        .iter()
        .find(|m| m.id == leader)
        .expect("the killed member is still listed");
    assert_eq!(dead.reachable, Some(false), "{status:?}");
    assert!(
        dead.last_heard_ms.is_none_or(|ms| ms >= 1_000),
        "the killed member was heard from {:?} ms ago: {status:?}",
        dead.last_heard_ms
    );
    assert_eq!(dead.progress, "probe", "{status:?}");
    let alive = status
        .members
        .iter()
        .filter(|m| m.id != leader)
        .all(|m| m.reachable == Some(true));
    assert!(alive, "{status:?}");

    // A backend that fails right after is still taken out.
    let survivors: Vec<usize> = (0..3).filter(|i| *i as u64 + 1 != leader).collect();
    drive(&cluster, survivors[0], &survivors, B2, false).await?;

    // The old leader comes back as a follower and catches up.
    cluster.replica(leader).restart().await?;
    let old = (leader - 1) as usize;
    drive(&cluster, survivors[0], &[0, 1, 2], B3, false).await?;
    tandem_testkit::wait_until(
        Duration::from_secs(5),
        "the restarted member to be reachable again",
        || async {
            cluster_status(&cluster.replicas[(new_leader - 1) as usize])
                .await
                .is_ok_and(|s| s.members.iter().all(|m| m.reachable == Some(true)))
        },
    )
    .await?;
    assert_eq!(
        state_on(&cluster.replicas[old], B2).await?,
        Some(v1::HealthState::Unhealthy as i32)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_quorum_pauses_decisions_and_a_restart_resumes_them() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cluster = ControlCluster::start(&pg.url(), 3).await?;
    let (leader, _) = cluster.leader(&[], Duration::from_secs(10)).await?;
    configure(&cluster.replicas[0]).await?;
    drive(&cluster, 0, &[0, 1, 2], B1, true).await?;

    // One follower down: no visible effect.
    let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    cluster.replica(followers[0]).process.kill();
    let l = (leader - 1) as usize;
    drive(&cluster, l, &[l], B1, false).await?;

    // Two down: the survivor cannot commit; decisions pause.
    cluster.replica(followers[1]).process.kill();
    tokio::time::sleep(Duration::from_secs(3)).await; // past check-quorum: the leader steps down
    for _ in 0..10 {
        let _ = report(&cluster.replicas[l], B1, true).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        state_on(&cluster.replicas[l], B1).await?,
        Some(v1::HealthState::Unhealthy as i32),
        "without a quorum nothing is committed"
    );
    // The config API (Postgres) still answers on the survivor.
    cluster.replicas[l]
        .admin_client()
        .await?
        .list_pools(v1::ListPoolsRequest {})
        .await?;

    // One back: quorum again, decisions resume.
    cluster.replica(followers[0]).restart().await?;
    drive(&cluster, l, &[l, (followers[0] - 1) as usize], B1, true).await?;
    Ok(())
}

/// Each replica logs `raft state opened ... term=T vote=V` at start.
fn opened(logs: &str) -> Vec<(u64, u64)> {
    logs.lines()
        .filter(|l| l.contains("raft state opened"))
        .filter_map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{name}=")))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            Some((field("term")?, field("vote")?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_restarted_restores_its_state_from_disk() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cluster = ControlCluster::start(&pg.url(), 3).await?;
    let (_, term0) = cluster.leader(&[], Duration::from_secs(10)).await?;
    configure(&cluster.replicas[0]).await?;
    drive(&cluster, 0, &[0, 1, 2], B1, false).await?;
    drive(&cluster, 1, &[0, 1, 2], B2, true).await?;

    // Record (term, vote) pairs each replica persisted, across restarts.
    let mut votes: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut last_term = term0;
    for round in 0..2 {
        for r in cluster.replicas.iter_mut() {
            r.process.kill();
        }
        for r in cluster.replicas.iter_mut() {
            r.restart().await?;
        }
        let (_, term) = cluster.leader(&[], Duration::from_secs(15)).await?;
        assert!(
            term >= last_term,
            "round {round}: the term went backwards ({term} < {last_term})"
        );
        last_term = term;
        for (i, r) in cluster.replicas.iter().enumerate() {
            for (t, v) in opened(&r.process.logs()) {
                if v == 0 {
                    continue;
                }
                let prev = votes.insert((i as u64 + 1, t), v);
                assert!(
                    prev.is_none_or(|p| p == v),
                    "replica {} voted for {prev:?} and {v} in term {t}",
                    i + 1
                );
            }
        }
        // State restored from disk without any new report.
        for i in 0..3 {
            let mut state = None;
            for _ in 0..100 {
                state = state_on(&cluster.replicas[i], B1).await.ok().flatten();
                if state.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                state,
                Some(v1::HealthState::Unhealthy as i32),
                "replica {}",
                i + 1
            );
        }
    }
    Ok(())
}

/// Drops every packet between `a` and each of `others` (both ways) while
/// alive. Needs root and iptables.
struct Partition {
    rules: Vec<Vec<String>>,
}

impl Partition {
    fn cut(a: IpAddr, others: &[IpAddr]) -> anyhow::Result<Partition> {
        let mut rules = Vec::new();
        for o in others {
            for (s, d) in [(a, *o), (*o, a)] {
                rules.push(vec![
                    "INPUT".into(),
                    "-s".into(),
                    s.to_string(),
                    "-d".into(),
                    d.to_string(),
                    "-j".into(),
                    "DROP".into(),
                ]);
            }
        }
        let p = Partition { rules };
        for r in &p.rules {
            iptables("-I", r)?;
        }
        Ok(p)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for r in &self.rules {
            let _ = iptables("-D", r);
        }
    }
}

fn iptables(op: &str, rule: &[String]) -> anyhow::Result<()> {
    let out = std::process::Command::new("iptables")
        .arg("-w")
        .arg(op)
        .args(rule)
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "this test cuts traffic with iptables (run as root with iptables installed): {e}"
            )
        })?;
    anyhow::ensure!(
        out.status.success(),
        "iptables {op} {rule:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_others_commits_nothing() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let ips: Vec<IpAddr> = (0..3).map(|i| IpAddr::from([127, 0, 0, 31 + i])).collect();
    let mut cluster = ControlCluster::start_on(&pg.url(), &ips, &[]).await?;
    let (leader, term) = cluster.leader(&[], Duration::from_secs(10)).await?;
    configure(&cluster.replicas[0]).await?;
    drive(&cluster, 0, &[0, 1, 2], B1, true).await?;

    let l = (leader - 1) as usize;
    let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let cut = Partition::cut(ips[l], &[ips[others[0]], ips[others[1]]])?;

    // The majority elects a new leader in a higher term.
    let (new_leader, new_term) = cluster.leader(&[leader], Duration::from_secs(10)).await?;
    assert_ne!(new_leader, leader);
    assert!(new_term > term);

    // Reports sent to the old leader are not committed anywhere.
    for _ in 0..10 {
        let _ = report(&cluster.replicas[l], B2, false).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for &i in &others {
        assert_ne!(
            state_on(&cluster.replicas[i], B2).await?,
            Some(v1::HealthState::Unhealthy as i32)
        );
    }
    assert_ne!(
        state_on(&cluster.replicas[l], B2).await?,
        Some(v1::HealthState::Unhealthy as i32),
        "the deposed leader committed on its own"
    );
    // The majority keeps deciding.
    drive(&cluster, others[0], &others, B3, false).await?;

    // Healed: the old leader follows the new term and catches up.
    drop(cut);
    drive(&cluster, others[0], &[0, 1, 2], B3, false).await?;
    let (_, healed_term) = cluster.leader(&[], Duration::from_secs(10)).await?;
    assert!(healed_term >= new_term);
    Ok(())
}
