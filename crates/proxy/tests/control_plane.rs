//! The proxy following a real control plane (real Postgres, real
//! `tandem-control`): live reconfiguration under load, and static stability
//! when the control plane is gone.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tandem_proto::v1;
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::{
    ADMIN_TOKEN, AuthedClient, ControlPlane, ControlPlaneOptions, NODE_TOKEN, Postgres, client_at,
    declare_pool, free_addr, wait_until,
};

async fn seed(c: &mut AuthedClient, backends: &[&FakeBackend]) -> anyhow::Result<()> {
    let pool = v1::Pool {
        name: "shop".into(),
        policy: v1::LbPolicy::RoundRobin.into(),
        ..Default::default()
    };
    let addresses: Vec<String> = backends.iter().map(|b| b.address()).collect();
    declare_pool(c, pool, &addresses).await
}

async fn latest_revision(c: &mut AuthedClient) -> anyhow::Result<u64> {
    Ok(c.get_status(v1::GetStatusRequest {})
        .await?
        .into_inner()
        .revision)
}

fn following(cp: &ControlPlane) -> Vec<(&'static str, String)> {
    vec![
        ("TANDEM_CONTROL", cp.endpoint()),
        ("TANDEM_TOKEN", NODE_TOKEN.to_string()),
    ]
}

/// Waits until the proxy's live table is at `revision`.
async fn wait_revision(proxy: &ProxyProcess, revision: u64) {
    let reached = wait_until(
        Duration::from_secs(15),
        "the proxy to apply the revision",
        || async { matches!(proxy.config().await, Ok(c) if c["revision"] == revision) },
    )
    .await;
    if let Err(e) = reached {
        panic!(
            "{e}: {:?}\n{}",
            proxy.config().await.ok(),
            proxy.process.logs()
        );
    }
}

fn start_following(cp: &ControlPlane, dir: tempfile::TempDir) -> ProxyProcess {
    let env = following(cp);
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
    let control = cp.endpoint();
    ProxyProcess::start(dir, &control, &env).unwrap()
}

#[tokio::test]
async fn ten_config_changes_a_second_under_load_fail_no_request() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    let mut c = cp.admin_client().await?;
    let b = start_backends("live", 4).await;
    seed(&mut c, &[&b[0], &b[1], &b[2]]).await?;
    let proxy = start_following(&cp, tempfile::tempdir()?);
    proxy.wait_ready().await?;
    wait_revision(&proxy, latest_revision(&mut c).await?).await;
    let (_, ready) = proxy.admin_get("/readyz").await?;
    assert!(ready.contains("from control plane"), "{ready}");

    // The control plane knows which revision this proxy runs.
    let rev = latest_revision(&mut c).await?;
    wait_until(Duration::from_secs(10), "ReportApplied", || {
        let mut c = c.clone();
        async move {
            let s = c
                .get_status(v1::GetStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            s.nodes
                .iter()
                .any(|n| n.node_id == "proxy-test" && n.applied_revision == rev)
        }
    })
    .await?;

    let (stop, load) = steady_load(&proxy.url("/"), 8);
    let start = Instant::now();
    let mut changes = 0u32;
    while start.elapsed() < Duration::from_secs(10) {
        let tick = Instant::now();
        let addr = |i: usize| b[i].address();
        match changes % 6 {
            // Add a fourth backend, later remove it again.
            0 => {
                c.add_backend(v1::AddBackendRequest {
                    pool: "shop".into(),
                    backend: Some(v1::Backend {
                        address: addr(3),
                        ..Default::default()
                    }),
                    expected_revision: None,
                })
                .await?;
            }
            1 => {
                c.update_backend(v1::UpdateBackendRequest {
                    pool: "shop".into(),
                    address: addr(0),
                    weight: Some(1 + changes % 5),
                    ..Default::default()
                })
                .await?;
            }
            2 => {
                c.update_backend(v1::UpdateBackendRequest {
                    pool: "shop".into(),
                    address: addr(1),
                    admin_state: Some(v1::AdminState::Draining.into()),
                    ..Default::default()
                })
                .await?;
            }
            3 => {
                c.update_pool(v1::UpdatePoolRequest {
                    pool: Some(v1::Pool {
                        name: "shop".into(),
                        policy: if changes % 12 == 3 {
                            v1::LbPolicy::LeastConnections.into()
                        } else {
                            v1::LbPolicy::RoundRobin.into()
                        },
                        ..Default::default()
                    }),
                    expected_revision: None,
                })
                .await?;
            }
            4 => {
                c.update_backend(v1::UpdateBackendRequest {
                    pool: "shop".into(),
                    address: addr(1),
                    admin_state: Some(v1::AdminState::Enabled.into()),
                    ..Default::default()
                })
                .await?;
            }
            _ => {
                c.remove_backend(v1::RemoveBackendRequest {
                    pool: "shop".into(),
                    address: addr(3),
                    expected_revision: None,
                })
                .await?;
            }
        }
        changes += 1;
        tokio::time::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed())).await;
    }
    let last = latest_revision(&mut c).await?;
    wait_revision(&proxy, last).await;
    stop.store(true, Ordering::Relaxed);
    let t = load.await?;

    assert!(changes >= 50, "only {changes} changes in 10 s");
    assert!(t.total() > 1_000, "{t:?}");
    assert_eq!(t.failures(), 0, "{:?} {:?}", t.by_status, t.error_samples);
    assert!(
        t.by_backend.get("live-4").is_some_and(|n| *n > 0),
        "changes reached traffic: {:?}",
        t.by_backend
    );
    // The last revision is on disk too.
    wait_until(Duration::from_secs(5), "the snapshot on disk", || async {
        std::fs::read(proxy.state_dir.path().join("snapshot.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|s| s["revision"] == last)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn with_the_control_plane_gone_a_restarted_proxy_serves_from_its_disk_copy()
-> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cp = ControlPlane::start(&pg.url()).await?;
    let mut c = cp.admin_client().await?;
    let b = start_backends("stable", 2).await;
    seed(&mut c, &[&b[0], &b[1]]).await?;
    let rev = latest_revision(&mut c).await?;
    let mut proxy = start_following(&cp, tempfile::tempdir()?);
    proxy.wait_ready().await?;
    wait_revision(&proxy, rev).await;
    let saved = proxy.state_dir.path().join("snapshot.json");
    wait_until(Duration::from_secs(5), "the snapshot on disk", || async {
        saved.exists()
    })
    .await?;

    // The whole control plane dies: the proxy keeps serving, and says so.
    cp.process.kill();
    assert_eq!(sequential(&proxy.url("/"), 20).await.ok(), 20);
    wait_until(Duration::from_secs(10), "readyz to mention the outage", || async {
        matches!(proxy.admin_get("/readyz").await, Ok((200, body)) if body.contains("unreachable"))
    })
    .await?;

    // And so does the proxy; started again, it serves from its copy. It
    // is told of a second replica too, which is not running yet.
    let dir = std::mem::replace(&mut proxy.state_dir, tempfile::tempdir()?);
    proxy.process.kill();
    let spare = free_addr();
    let endpoints = format!("{},http://{spare}", cp.endpoint());
    let restarted =
        ProxyProcess::start(dir, &endpoints, &[("TANDEM_TOKEN", NODE_TOKEN.to_string())])?;
    restarted.wait_ready().await?;
    let (_, ready) = restarted.admin_get("/readyz").await?;
    assert!(
        ready.contains(&format!("revision {rev} from disk")),
        "{ready}"
    );
    let t = sequential(&restarted.url("/"), 20).await;
    assert_eq!(t.ok(), 20, "{t:?}");
    assert_eq!(t.by_backend.len(), 2, "{t:?}");
    assert!(
        restarted
            .process
            .logs()
            .contains("serving the configuration saved on disk")
    );

    // A control plane comes back (the spare replica): the proxy, rotating
    // over its endpoints with back-off, finds it and follows it again.
    let cp2 = ControlPlane::start_with(
        &pg.url(),
        ControlPlaneOptions {
            raft_id: Some("2".into()),
            env: vec![("TANDEM_LISTEN".into(), spare.to_string())],
            ..Default::default()
        },
    )
    .await?;
    let mut c2 = client_at(&format!("http://{spare}"), Some(ADMIN_TOKEN)).await?;
    let back = wait_until(Duration::from_secs(20), "the proxy to reconnect", || async {
        matches!(restarted.admin_get("/readyz").await, Ok((200, body)) if body.contains("control plane"))
    })
    .await;
    if let Err(e) = back {
        panic!(
            "{e}\n--- proxy ---\n{}\n--- control ---\n{}",
            restarted.process.logs(),
            cp2.process.logs()
        );
    }
    // And it takes changes from it.
    c2.update_backend(v1::UpdateBackendRequest {
        pool: "shop".into(),
        address: b[0].address(),
        admin_state: Some(v1::AdminState::Disabled.into()),
        ..Default::default()
    })
    .await?;
    wait_revision(&restarted, latest_revision(&mut c2).await?).await;
    let t = sequential(&restarted.url("/"), 10).await;
    assert_eq!(t.by_backend.get("stable-2"), Some(&10), "{t:?}");
    Ok(())
}
