//! Crash safety of the raft log under load: a three-replica group commits
//! health transitions (agents' reports through the gRPC API) while one
//! replica after another is SIGKILLed at a random moment and restarted.
//! Afterwards every replica's log must agree with every other's on each
//! index both hold as committed (no divergence), and every health state a
//! client was shown at an index must be what the agreed log says at that
//! index (nothing acknowledged lost).
//!
//! The suite runs it for `TANDEM_KILL_LOOP_SECS` (default 20) seconds;
//! `cargo nextest run -p tandem-control --test kill_loop --run-ignored only`
//! runs the five-minute version.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_control::consensus::storage::DiskStorage;
use tandem_control::consensus::{Command, HealthTable};
use tandem_core::health::{BackendKey, HealthState};
use tandem_core::{BackendAddr, PoolName};
use tandem_proto::v1;
use tandem_testkit::{ControlCluster, Postgres, declare_pool};

/// Enough backends that flipping one per round keeps each under the flap
/// damping threshold (4 transitions in 30 s), so every flip commits.
const BACKENDS: u64 = 160;

#[tokio::test]
async fn replicas_killed_under_load_lose_and_diverge_nothing() -> anyhow::Result<()> {
    let secs = std::env::var("TANDEM_KILL_LOOP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    kill_loop(Duration::from_secs(secs)).await
}

#[tokio::test]
#[ignore = "five minutes: run with --run-ignored only"]
async fn replicas_killed_under_load_for_five_minutes() -> anyhow::Result<()> {
    kill_loop(Duration::from_secs(300)).await
}

fn addresses() -> Vec<String> {
    (0..BACKENDS)
        .map(|i| format!("10.9.{}.{}:80", i / 200, i % 200 + 1))
        .collect()
}

/// What a client was shown: the health table at `index`.
type Shown = (u64, BTreeMap<String, HealthState>);

async fn kill_loop(duration: Duration) -> anyhow::Result<()> {
    let seed: u64 = std::env::var("TANDEM_KILL_LOOP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("kill loop: {duration:?}, seed {seed} (TANDEM_KILL_LOOP_SEED)");
    let mut rng = StdRng::seed_from_u64(seed);
    let pg = Postgres::start()?;
    let mut cluster = ControlCluster::start(&pg.url(), 3).await?;
    cluster.leader(&[], Duration::from_secs(30)).await?;
    let mut admin = cluster.replicas[0].admin_client().await?;
    declare_pool(
        &mut admin,
        v1::Pool {
            name: "shop".into(),
            health_check: Some(v1::HealthCheck {
                rise: Some(1),
                fall: Some(1),
                interval_ms: Some(1000),
                ..Default::default()
            }),
            ..Default::default()
        },
        &addresses(),
    )
    .await?;
    let endpoints: Vec<String> = cluster.replicas.iter().map(|r| r.endpoint()).collect();

    // Load: one agent flips one backend each round, through whichever
    // replica answers (followers forward to the leader); after each round
    // a client reads the health table from a random replica.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(load(endpoints, seed, stop_rx));

    let start = Instant::now();
    let mut kills = 0;
    while start.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
        let victim = rng.random_range(0..cluster.replicas.len());
        let replica = &mut cluster.replicas[victim];
        replica.process.kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
        replica.respawn()?;
        // One down at a time: the group keeps its quorum.
        replica.wait_ready().await?;
    }
    stop_tx.send(true)?;
    let shown = load.await??;

    // Let the group settle: one leader, every replica applied its commit.
    let (leader, _) = cluster.leader(&[], Duration::from_secs(30)).await?;
    let settle = Instant::now();
    let final_commit = loop {
        let mut statuses = Vec::new();
        for r in &cluster.replicas {
            let mut c = r.node_client().await?;
            statuses.push(
                c.get_cluster_status(v1::GetClusterStatusRequest {})
                    .await?
                    .into_inner(),
            );
        }
        let commit = statuses[(leader - 1) as usize].commit_index;
        if statuses
            .iter()
            .all(|s| s.commit_index == commit && s.applied_index == commit)
        {
            break commit;
        }
        anyhow::ensure!(
            settle.elapsed() < Duration::from_secs(30),
            "replicas did not converge: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for r in &mut cluster.replicas {
        r.process.kill();
    }

    // Each replica's durable state, read as a restarted replica would.
    let mut logs = Vec::new();
    for r in &cluster.replicas {
        logs.push(ReplicaLog::read(r.state_dir())?);
    }
    let max_shown = shown.iter().map(|(i, _)| *i).max().unwrap_or(0);
    anyhow::ensure!(
        max_shown <= final_commit,
        "a client was shown index {max_shown}, past the final commit {final_commit}"
    );
    for (i, log) in logs.iter().enumerate() {
        anyhow::ensure!(
            log.commit >= final_commit,
            "replica {} lost committed entries: its commit is {}, the group's {final_commit}",
            i + 1,
            log.commit
        );
    }
    // No divergence: every committed index both replicas hold is the same
    // entry.
    let mut compared = 0;
    for a in 0..logs.len() {
        for b in a + 1..logs.len() {
            for (index, entry) in &logs[a].entries {
                if *index > final_commit {
                    continue;
                }
                if let Some(other) = logs[b].entries.get(index) {
                    anyhow::ensure!(
                        entry == other,
                        "replicas {} and {} differ at committed index {index}",
                        a + 1,
                        b + 1
                    );
                    compared += 1;
                }
            }
        }
    }
    // Nothing acknowledged lost: what a client saw at an index is what the
    // log says there (checked on a replica whose log reaches back to it).
    let mut checked = 0;
    for (index, states) in &shown {
        let Some(log) = logs.iter().find(|l| l.snapshot_index <= *index) else {
            continue;
        };
        let replayed = log.table_at(*index)?;
        anyhow::ensure!(
            &replayed == states,
            "at index {index} a client was shown {states:?} but the log says {replayed:?}"
        );
        checked += 1;
    }
    eprintln!(
        "kill loop: {kills} kills, final commit {final_commit}, {compared} entries compared \
         across replicas, {checked}/{} client reads replayed",
        shown.len()
    );
    anyhow::ensure!(
        kills >= 3 && final_commit >= 20,
        "too little happened to judge"
    );
    anyhow::ensure!(
        checked * 2 >= shown.len(),
        "too few client reads could be replayed"
    );
    Ok(())
}

async fn load(
    endpoints: Vec<String>,
    seed: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<Shown>> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut shown = Vec::new();
    let mut round = 0u64;
    while !*stop.borrow() {
        round += 1;
        let endpoint = &endpoints[rng.random_range(0..endpoints.len())];
        let report = v1::ReportHealthRequest {
            agent_id: "agent-1".into(),
            zone: "z".into(),
            observations: addresses()
                .into_iter()
                .enumerate()
                .map(|(i, address)| v1::Observation {
                    pool: "shop".into(),
                    address,
                    // Backend i flips in the rounds ≡ i (mod BACKENDS).
                    ok: ((round + BACKENDS - i as u64) / BACKENDS).is_multiple_of(2),
                    detail: format!("round {round}"),
                    latency_ms: 1,
                })
                .collect(),
        };
        // A replica being killed does not answer: that is the point.
        if let Ok(mut c) =
            tandem_testkit::client_at(endpoint, Some(tandem_testkit::NODE_TOKEN)).await
        {
            let _ = c.report_health(report).await;
        }
        let endpoint = &endpoints[rng.random_range(0..endpoints.len())];
        if let Ok(mut c) =
            tandem_testkit::client_at(endpoint, Some(tandem_testkit::NODE_TOKEN)).await
            && let Ok(reply) = c.get_health(v1::GetHealthRequest {}).await
        {
            let reply = reply.into_inner();
            let states = reply
                .backends
                .iter()
                .map(|b| {
                    let state = match v1::HealthState::try_from(b.state) {
                        Ok(v1::HealthState::Healthy) => HealthState::Healthy,
                        Ok(v1::HealthState::Unhealthy) => HealthState::Unhealthy,
                        _ => HealthState::Unknown,
                    };
                    (b.address.clone(), state)
                })
                .collect();
            shown.push((reply.index, states));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(60)) => {}
            _ = stop.changed() => {}
        }
    }
    Ok(shown)
}

/// One replica's raft state on disk.
struct ReplicaLog {
    snapshot_index: u64,
    snapshot_table: HealthTable,
    commit: u64,
    /// index → (term, data), after the snapshot.
    entries: BTreeMap<u64, (u64, Vec<u8>)>,
}

impl ReplicaLog {
    fn read(dir: &std::path::Path) -> anyhow::Result<ReplicaLog> {
        let (storage, data) = DiskStorage::open(dir, &[1, 2, 3])?;
        use raft::Storage as _;
        let first = storage.first_index()?;
        let last = storage.last_index()?;
        let entries = storage
            .entries(first, last + 1, None, raft::GetEntriesContext::empty(false))?
            .into_iter()
            .map(|e| (e.index, (e.term, e.get_data().to_vec())))
            .collect();
        Ok(ReplicaLog {
            snapshot_index: storage.snapshot_index(),
            snapshot_table: HealthTable::decode(&data)?,
            commit: storage.hard_state().commit,
            entries,
        })
    }

    /// Backend states after applying the log up to `index`.
    fn table_at(&self, index: u64) -> anyhow::Result<BTreeMap<String, HealthState>> {
        let mut table = self.snapshot_table.clone();
        for (i, (_, data)) in self.entries.range(..=index) {
            if !data.is_empty()
                && let Ok(cmd) = Command::decode(data)
            {
                table.apply(*i, &cmd);
            }
        }
        let pool = PoolName::new("shop")?;
        Ok(addresses()
            .into_iter()
            .filter_map(|a| {
                let key = BackendKey {
                    pool: pool.clone(),
                    address: BackendAddr::new(&a).ok()?,
                };
                table.backends.get(&key).map(|h| (a, h.state))
            })
            .collect())
    }
}
