//! Raft membership changes with real replicas: a fourth member is added
//! (it joins as a learner, catches up, and the leader promotes it) and the
//! leader is removed (it hands leadership over first) while a proxy serves
//! steady traffic through a pool: no client request fails. A replica whose
//! disk was wiped refuses to come back under its old id, saying what to
//! do, and is replaced by a new id.

use std::sync::Arc;
use std::time::Duration;

use tandem_testkit::proxy::ProxyProcess;

use tandem_testkit::served::{
    ServedPool, SteadyLoad, all_healthy, fail_until_unhealthy, wait_health, web_pool,
};
use tandem_testkit::{ControlCluster, Postgres, free_addr, wait_http_ok, wait_until};

/// `tandemctl ARGS` against `endpoints` with the admin token, off the
/// async threads: (exit code, stdout + stderr).
async fn tandemctl(endpoints: &str, args: &[&str]) -> (i32, String) {
    let endpoints = endpoints.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = tandem_testkit::tandemctl(&endpoints, &args);
        (r.code, r.stdout + &r.stderr)
    })
    .await
    .expect("tandemctl task")
}

/// `cluster status` as JSON, from the replicas in `endpoints`.
async fn cluster_status(endpoints: &str) -> Option<serde_json::Value> {
    let (code, out) = tandemctl(endpoints, &["cluster", "status", "-o", "json"]).await;
    (code == 0)
        .then(|| serde_json::from_str(&out).ok())
        .flatten()
}

/// Members as (id, suffrage, reachable) from a `cluster status` answer
/// given by the leader.
fn members(status: &serde_json::Value) -> Vec<(u64, String, Option<bool>)> {
    status["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    (
                        m["id"].as_u64().unwrap_or(0),
                        m["suffrage"].as_str().unwrap_or("").to_string(),
                        m["reachable"].as_bool(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the leader's view has exactly `want` as voters, each
/// reachable, and no learner.
async fn wait_for_voters(endpoints: &str, want: &[u64], timeout: Duration) -> anyhow::Result<()> {
    let what = format!("voters {want:?}, all reachable");
    let last = Arc::new(std::sync::Mutex::new(None));
    let r = wait_until(timeout, &what, || {
        let last = last.clone();
        async move {
            let Some(s) = cluster_status(endpoints).await else {
                return false;
            };
            let ms = members(&s);
            *last.lock().unwrap() = Some(s);
            s_is_leader_view(&ms)
                && ms.iter().map(|m| m.0).collect::<Vec<_>>() == want
                && ms
                    .iter()
                    .all(|(_, suffrage, reachable)| suffrage == "voter" && *reachable == Some(true))
        }
    })
    .await;
    if r.is_err() {
        anyhow::bail!("{what}: last status {:?}", last.lock().unwrap());
    }
    r
}

fn s_is_leader_view(ms: &[(u64, String, Option<bool>)]) -> bool {
    // Only the leader knows every member's reachability.
    ms.iter().all(|m| m.2.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_fourth_member_and_removing_the_leader_under_load_fails_no_request()
-> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cluster = ControlCluster::start(&pg.url(), 3).await?;
    let (leader, _) = cluster.leader(&[], Duration::from_secs(10)).await?;

    let served = ServedPool::start(&cluster).await?;
    let endpoints = cluster.endpoints();

    // Steady load through the pool: four clients back to back.
    let load = SteadyLoad::start(&served.url, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Add a fourth member: announced first, then started with --join.
    let grpc4 = free_addr();
    let (code, out) = tandemctl(
        &endpoints,
        &["cluster", "add-member", "4", &grpc4.to_string()],
    )
    .await;
    assert_eq!(code, 0, "add-member: {out}");
    assert!(out.contains("added as a learner"), "{out}");
    // Meanwhile it is a learner: a second change waits for it.
    let status = cluster_status(&endpoints).await.expect("cluster status");
    assert!(
        members(&status).contains(&(4, "learner".into(), Some(false)))
            || members(&status).iter().any(|m| m.0 == 4),
        "{status}"
    );
    cluster.join(&pg.url(), 4, grpc4).await?;
    wait_for_voters(&endpoints, &[1, 2, 3, 4], Duration::from_secs(30)).await?;
    // It caught up: it holds the committed health table.
    let fourth = cluster.replica(4).node_client().await?;
    wait_health(
        &fourth,
        Duration::from_secs(10),
        "the fourth member applied the health table",
        all_healthy(3),
    )
    .await?;

    // It caught up from the leader's snapshot (the log before it joined
    // is compacted: the snapshot names it as a learner).
    let logs = cluster.replica(4).process.logs();
    assert!(
        logs.contains("installed a snapshot from the leader"),
        "the fourth member caught up from a snapshot:\n{logs}"
    );

    // Remove the leader: it hands leadership over, then the new leader
    // removes it. Asked of the fourth member (it passes the call on).
    let fourth_endpoint = cluster.replica(4).endpoint();
    let (code, out) = tandemctl(
        &fourth_endpoint,
        &["cluster", "remove-member", &leader.to_string()],
    )
    .await;
    assert_eq!(code, 0, "remove-member {leader}: {out}");
    let remaining: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&i| i != leader).collect();
    let remaining_endpoints = remaining
        .iter()
        .map(|&i| cluster.replica(i).endpoint())
        .collect::<Vec<_>>()
        .join(",");
    wait_for_voters(&remaining_endpoints, &remaining, Duration::from_secs(15)).await?;
    cluster.replica(leader).process.kill();
    let (new_leader, _) = cluster.leader(&[leader], Duration::from_secs(10)).await?;
    assert_ne!(new_leader, leader);

    // The smaller group still decides health: a backend that fails is
    // taken out.
    let health = cluster.replica(4).node_client().await?;
    fail_until_unhealthy(&served.backends[2], &health).await?;

    let outcome = load.stop().await?;
    eprintln!("member 4 added, leader {leader} removed (new leader {new_leader}); {outcome}");
    outcome.assert_none_failed(100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_refuses_its_old_id_and_is_replaced_under_a_new_one() -> anyhow::Result<()>
{
    let pg = Postgres::start()?;
    let mut cluster = ControlCluster::start(&pg.url(), 3).await?;
    let (leader, _) = cluster.leader(&[], Duration::from_secs(10)).await?;
    let endpoints = cluster.endpoints();
    // Every member heard from by the leader.
    wait_for_voters(&endpoints, &[1, 2, 3], Duration::from_secs(10)).await?;
    let victim = if leader == 3 { 2 } else { 3 };

    // Its disk is wiped; it comes back under the same id: refused.
    cluster.replica(victim).respawn_wiped()?;
    wait_until(Duration::from_secs(20), "the wiped replica exits", || {
        let running = cluster.replicas[(victim - 1) as usize].process.is_running();
        async move { !running }
    })
    .await?;
    let logs = cluster.replica(victim).process.logs();
    assert!(
        logs.contains(&format!("raft id {victim} is already a voter"))
            && logs.contains("would have forgotten its vote")
            && logs.contains(&format!("tandemctl cluster remove-member {victim}"))
            && logs.contains("--join"),
        "the refusal says what to do:\n{logs}"
    );
    assert!(
        !logs.contains("control plane serving"),
        "it never served:\n{logs}"
    );

    // Replace it: remove the old id, add a new one, start it with --join.
    let (code, out) = tandemctl(
        &endpoints,
        &["cluster", "remove-member", &victim.to_string()],
    )
    .await;
    assert_eq!(code, 0, "remove-member {victim}: {out}");
    let grpc4 = free_addr();
    let (code, out) = tandemctl(
        &endpoints,
        &["cluster", "add-member", "4", &grpc4.to_string()],
    )
    .await;
    assert_eq!(code, 0, "add-member 4: {out}");
    // Adding the same id again is refused, naming it.
    let (code, out) = tandemctl(
        &endpoints,
        &["cluster", "add-member", "4", &free_addr().to_string()],
    )
    .await;
    assert_ne!(code, 0, "a second add of 4 must fail: {out}");
    assert!(out.contains("already a member"), "{out}");
    cluster.join(&pg.url(), 4, grpc4).await?;
    let mut want: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&i| i != victim).collect();
    want.sort_unstable();
    let live = want
        .iter()
        .map(|&i| cluster.replica(i).endpoint())
        .collect::<Vec<_>>()
        .join(",");
    wait_for_voters(&live, &want, Duration::from_secs(30)).await?;

    // The membership survives a restart of the new member.
    cluster.replica(4).restart().await?;
    wait_for_voters(&live, &want, Duration::from_secs(30)).await?;
    let (text_code, text) = tandemctl(&live, &["cluster", "status"]).await;
    assert_eq!(text_code, 0, "{text}");
    assert!(!text.contains("learner"), "{text}");
    Ok(())
}

/// The record in the control database is the last word when no peer can
/// answer: a voter wiped and restarted while the other replicas are down
/// is refused by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_wiped_while_its_peers_are_down_is_refused_by_the_database_record()
-> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cluster = ControlCluster::start(&pg.url(), 3).await?;
    let (leader, _) = cluster.leader(&[], Duration::from_secs(10)).await?;
    let endpoints = cluster.endpoints();
    wait_for_voters(&endpoints, &[1, 2, 3], Duration::from_secs(10)).await?;

    // The leader records the membership in the control database.
    let db = sqlx::PgPool::connect(&pg.url()).await?;
    wait_until(Duration::from_secs(20), "the membership record", || {
        let db = db.clone();
        async move {
            let rows: Vec<(i64, String, String)> =
                sqlx::query_as("SELECT id, address, suffrage FROM raft_members ORDER BY id")
                    .fetch_all(&db)
                    .await
                    .unwrap_or_default();
            rows.len() == 3
                && rows.iter().all(|(_, a, s)| !a.is_empty() && s == "voter")
                && rows.iter().map(|r| r.0).eq([1, 2, 3])
        }
    })
    .await?;
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, address, suffrage FROM raft_members ORDER BY id")
            .fetch_all(&db)
            .await?;
    eprintln!("raft_members: {rows:?}");

    // Every other replica stops; the victim's disk is wiped; it comes back.
    let victim = if leader == 1 { 2 } else { 1 };
    for id in [1, 2, 3].into_iter().filter(|&i| i != victim) {
        cluster.replica(id).process.kill();
    }
    cluster.replica(victim).respawn_wiped()?;
    wait_until(Duration::from_secs(30), "the wiped replica exits", || {
        let running = cluster.replicas[(victim - 1) as usize].process.is_running();
        async move { !running }
    })
    .await?;
    let logs = cluster.replica(victim).process.logs();
    assert!(
        logs.contains(&format!("raft id {victim} is a voter of the group"))
            && logs.contains("as recorded in the control database")
            && logs.contains(&format!("tandemctl cluster remove-member {victim}"))
            && logs.contains("--join"),
        "the database's record refuses it, saying what to do:\n{logs}"
    );
    assert!(
        !logs.contains("control plane serving"),
        "it never served:\n{logs}"
    );
    Ok(())
}

/// A proxy configured with one replica's endpoint learns the others from
/// the raft members' list, and follows them once that replica is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_configured_with_one_replica_learns_the_others_from_the_members()
-> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cluster = ControlCluster::start(&pg.url(), 3).await?;
    let (leader, _) = cluster.leader(&[], Duration::from_secs(10)).await?;
    wait_for_voters(&cluster.endpoints(), &[1, 2, 3], Duration::from_secs(10)).await?;
    let (_backends, addresses) =
        web_pool(&mut cluster.replicas[0].admin_client().await?, 2).await?;
    // Configured with one follower only.
    let only = if leader == 1 { 2 } else { 1 };
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != only).collect();
    let proxy = ProxyProcess::following(
        &cluster.replica(only).endpoint(),
        &[("TANDEM_WORKERS", "1".to_string())],
    )
    .await?;
    wait_http_ok(&proxy.url("/"), Duration::from_secs(20)).await?;
    let learned: Vec<String> = others
        .iter()
        .map(|&i| cluster.replica(i).endpoint())
        .collect();
    wait_until(
        Duration::from_secs(20),
        "the proxy to learn the other replicas",
        || {
            let logs = proxy.process.logs();
            let all = learned.iter().all(|e| {
                logs.lines()
                    .any(|l| l.contains("control replica learned") && l.contains(e.as_str()))
            });
            async move { all }
        },
    )
    .await?;

    // The replica it was configured with dies; a change made through the
    // others still reaches it.
    cluster.replica(only).process.kill();
    let rest = learned.join(",");
    let (code, out) = tandemctl(&rest, &["backend", "drain", "web", &addresses[0]]).await;
    assert_eq!(code, 0, "drain through the remaining replicas: {out}");
    wait_until(
        Duration::from_secs(30),
        "the proxy to follow a learned replica",
        || {
            let state = proxy.backend_state("web", &addresses[0]);
            async move { state.await.is_ok_and(|b| b["admin_state"] == "draining") }
        },
    )
    .await?;
    Ok(())
}
