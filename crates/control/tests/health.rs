//! End to end: health observations reported to a real control plane are
//! decided on the raft leader, committed, pushed to watchers, visible in
//! GetHealth, and recorded in Postgres as history — which catches up after
//! a database outage while health keeps flowing.

mod common;

use common::obs;
use std::time::Duration;

use tandem_proto::v1;
use tandem_proto::v1::HealthState::{Healthy, Unhealthy};
use tandem_testkit::{ControlPlane, Postgres};
use tokio_stream::StreamExt;

const A: &str = "127.0.0.1:9101";
const B: &str = "127.0.0.1:9102";

/// Postgres and a control plane with pool `shop` of A and B (rise and
/// fall 2).
async fn started() -> anyhow::Result<(Postgres, ControlPlane)> {
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    common::shop_pool(&cp, 2, 2, &[A, B]).await?;
    Ok((pg, cp))
}

async fn report(cp: &ControlPlane, agent: &str, o: Vec<v1::Observation>) -> anyhow::Result<()> {
    cp.node_client()
        .await?
        .report_health(v1::ReportHealthRequest {
            agent_id: agent.into(),
            zone: "z1".into(),
            observations: o,
        })
        .await?;
    Ok(())
}

/// A and B pass their health checks.
fn both_up() -> Vec<v1::Observation> {
    vec![obs(A, true), obs(B, true)]
}

/// A passes, B fails.
fn b_down() -> Vec<v1::Observation> {
    vec![obs(A, true), obs(B, false)]
}

/// A Watch stream as a proxy opens it, from revision 0.
async fn watch_as_proxy(cp: &ControlPlane) -> anyhow::Result<tonic::Streaming<v1::WatchEvent>> {
    let stream = cp
        .node_client()
        .await?
        .watch(v1::WatchRequest {
            node_id: "p1".into(),
            kind: v1::NodeKind::Proxy.into(),
            last_revision: 0,
            zone: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(stream)
}

async fn get_health(cp: &ControlPlane) -> anyhow::Result<v1::HealthReply> {
    Ok(cp
        .node_client()
        .await?
        .get_health(v1::GetHealthRequest {})
        .await?
        .into_inner())
}

/// Reports `observations` every 100 ms, as an agent does, until a health
/// event on the stream shows `addr` in `state`.
async fn report_until(
    cp: &ControlPlane,
    stream: &mut tonic::Streaming<v1::WatchEvent>,
    observations: Vec<v1::Observation>,
    addr: &str,
    state: v1::HealthState,
) -> anyhow::Result<v1::BackendHealth> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        report(cp, "agent-1", observations.clone()).await?;
        let tick = tokio::time::Instant::now() + Duration::from_millis(100);
        while let Ok(ev) = tokio::time::timeout_at(tick, stream.next()).await {
            let ev = ev.ok_or_else(|| anyhow::anyhow!("stream ended"))??;
            if let Some(v1::watch_event::Event::Health(h)) = ev.event
                && let Some(b) = h
                    .backends
                    .iter()
                    .find(|b| b.address == addr && b.state == state as i32)
            {
                return Ok(b.clone());
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("{addr} never became {state:?}");
        }
    }
}

#[tokio::test]
async fn health_decided_through_raft_reaches_watchers_and_history() -> anyhow::Result<()> {
    let (pg, cp) = started().await?;
    let mut stream = watch_as_proxy(&cp).await?;

    // Two probes each (rise 2): both healthy. (A probe that arrives before
    // the control plane has B in its configuration does not count for B,
    // so wait for B.)
    report_until(&cp, &mut stream, both_up(), B, Healthy).await?;

    // B fails twice (fall 2): unhealthy, with the reason and the agent's view.
    let b = report_until(&cp, &mut stream, b_down(), B, Unhealthy).await?;
    assert_eq!(b.reason, "HTTP 503 from 1/1 agent");
    assert_eq!(b.agents.len(), 1);
    assert_eq!(b.agents[0].healthy, Some(false));

    let health = get_health(&cp).await?;
    assert_eq!(health.leader, "control-1");
    assert!(health.term >= 1);
    let state_of = |addr: &str| {
        health
            .backends
            .iter()
            .find(|b| b.address == addr)
            .map(|b| b.state)
    };
    assert_eq!(state_of(A), Some(Healthy as i32));
    assert_eq!(state_of(B), Some(Unhealthy as i32));

    // Postgres goes away: health keeps flowing through raft.
    pg.stop()?;
    report_until(&cp, &mut stream, both_up(), B, Healthy).await?;
    pg.restart()?;

    // History catches up: B healthy, B unhealthy, B healthy again (and A).
    let store = tandem_control::store::Store::connect_lazy(&pg.url(), 2)?;
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = store.health_history().await.unwrap_or_default();
        if rows.iter().filter(|r| r.2 == B).count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b_states: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r.2 == B)
        .map(|r| (r.3.as_str(), r.4.as_str()))
        .collect();
    assert_eq!(
        b_states,
        [
            ("unknown", "healthy"),
            ("healthy", "unhealthy"),
            ("unhealthy", "healthy")
        ],
        "every transition recorded once, in order: {rows:?}"
    );
    Ok(())
}

#[tokio::test]
async fn health_survives_a_control_plane_restart() -> anyhow::Result<()> {
    let (_pg, mut cp) = started().await?;
    // Report the way an agent does, every interval, until it is decided.
    let mut term_before = 0;
    let mut decided = false;
    for _ in 0..100 {
        report(&cp, "agent-1", vec![obs(A, false)]).await?;
        let h = get_health(&cp).await?;
        term_before = h.term;
        if h.backends
            .iter()
            .any(|b| b.address == A && b.state == Unhealthy as i32)
        {
            decided = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(decided, "A was never decided unhealthy");
    cp.restart().await?;
    // Restored from the raft log on disk, without any new report.
    let mut h = v1::HealthReply::default();
    for _ in 0..100 {
        h = match cp
            .node_client()
            .await?
            .get_health(v1::GetHealthRequest {})
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => panic!("{e}: {}", cp.process.logs()),
        };
        if !h.backends.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = h
        .backends
        .iter()
        .find(|b| b.address == A)
        .unwrap_or_else(|| panic!("A is not known: {}", cp.process.logs()));
    assert_eq!(a.state, Unhealthy as i32);
    assert!(
        h.term >= term_before,
        "the term never goes backwards ({} < {term_before})",
        h.term
    );
    Ok(())
}

#[tokio::test]
async fn a_backend_removed_from_the_configuration_has_its_health_forgotten() -> anyhow::Result<()> {
    let (_pg, cp) = started().await?;
    let mut stream = watch_as_proxy(&cp).await?;
    report_until(&cp, &mut stream, b_down(), B, Unhealthy).await?;
    // Both have a verdict before B goes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h = get_health(&cp).await?;
        if h.backends.len() == 2 {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no verdict for both: {h:?}"
        );
        report(&cp, "agent-1", b_down()).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    cp.admin_client()
        .await?
        .remove_backend(v1::RemoveBackendRequest {
            pool: "shop".into(),
            address: B.into(),
            expected_revision: None,
        })
        .await?;

    // Watchers get a full update without B (so proxies drop its verdict),
    // still with A.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let full = loop {
        let ev = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("no full health update without {B}"))?
            .ok_or_else(|| anyhow::anyhow!("stream ended"))??;
        if let Some(v1::watch_event::Event::Health(h)) = ev.event
            && h.full
            && h.backends.iter().all(|b| b.address != B)
        {
            break h;
        }
    };
    assert!(full.backends.iter().any(|b| b.address == A), "{full:?}");
    let health = get_health(&cp).await?;
    let addresses: Vec<&str> = health.backends.iter().map(|b| b.address.as_str()).collect();
    assert_eq!(addresses, [A], "only declared backends keep a verdict");
    Ok(())
}
