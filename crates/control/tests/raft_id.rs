//! The raft id's name: TANDEM_RAFT_ID, with TANDEM_NODE_ID (the name
//! proxies and agents use for theirs) still read by the control plane,
//! under a deprecation warning.

use std::time::Duration;

use tandem_testkit::{ControlPlane, ControlPlaneOptions, Postgres};

const DEPRECATED: &str = "TANDEM_NODE_ID (--node-id) is deprecated for the control plane";

#[tokio::test]
async fn the_old_name_still_works_and_is_warned_about_once() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    // testkit names the raft id TANDEM_RAFT_ID; the old name is unset.
    let mut current = ControlPlane::start(&pg.url()).await?;
    assert!(!current.process.logs().contains(DEPRECATED));
    current.process.kill();

    // The old name alone (TANDEM_RAFT_ID empty counts as unset), as
    // deployments written before it set it.
    let mut old = ControlPlane::start_with(
        &pg.url(),
        ControlPlaneOptions {
            raft_id: Some(String::new()),
            env: vec![("TANDEM_NODE_ID".into(), "7".into())],
            ..Default::default()
        },
    )
    .await?;
    let mut admin = old.admin_client().await?;
    let status = admin
        .get_cluster_status(tandem_proto::v1::GetClusterStatusRequest {})
        .await?
        .into_inner();
    assert_eq!(status.leader_id, 7, "the old name gave the raft id");
    let logs = old.process.logs();
    assert_eq!(logs.matches(DEPRECATED).count(), 1, "{logs}");
    old.process.kill();
    Ok(())
}

#[tokio::test]
async fn two_different_ids_stop_the_start_naming_both() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cp = ControlPlane::start_with(
        &pg.url(),
        ControlPlaneOptions {
            raft_id: Some("1".into()),
            env: vec![("TANDEM_NODE_ID".into(), "2".into())],
            skip_ready_wait: true,
            ..Default::default()
        },
    )
    .await?;
    let start = std::time::Instant::now();
    while cp.process.is_running() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still running: {}",
            cp.process.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = cp.process.logs();
    assert!(
        logs.contains("TANDEM_RAFT_ID (1) and the deprecated TANDEM_NODE_ID (2) differ"),
        "{logs}"
    );
    Ok(())
}
