//! The emergency levers: with the control database stopped, `tandemctl
//! backend drain|disable|enable` still work, as runtime overrides committed
//! through raft, sent to any replica (a follower passes them on to the
//! leader). Both proxies stop sending new requests to a drained backend
//! within a second (judged by what the backends receive), `tandemctl
//! status` shows the override, and when the database returns the override
//! is applied to the declared configuration (a new revision) and cleared.
//! A disable is a disable (not even panic mode sends to it), an enable puts
//! a declared-disabled backend back in rotation, and `-o json` answers in
//! JSON.

use std::time::{Duration, Instant};

use tandem_proto::v1;
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::served::web_pool;
use tandem_testkit::{
    ControlCluster, Postgres, declare_pool, http_client, wait_http_ok, wait_until,
};
use tandem_testkit::{Ran, tandemctl};

/// Sends `n` requests through each proxy; all must succeed.
async fn traffic(proxies: &[&ProxyProcess], n: usize) -> anyhow::Result<()> {
    let client = http_client();
    for p in proxies {
        for _ in 0..n {
            let r = client.get(p.url("/")).send().await?;
            anyhow::ensure!(r.status().is_success(), "{}", r.status());
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_with_the_database_down_reaches_both_proxies_and_reconciles_after()
-> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cluster = ControlCluster::start(&pg.url(), 3).await?;
    let (leader, _) = cluster.leader(&[], Duration::from_secs(10)).await?;
    let endpoints = cluster.endpoints();
    // The lever is sent to a follower only: it passes it on to the leader.
    let follower = if leader == 1 { 2 } else { 1 };
    let follower_endpoint = cluster.replica(follower).endpoint();

    let (backends, addresses) = web_pool(&mut cluster.replicas[0].admin_client().await?, 2).await?;
    let one_worker = [("TANDEM_WORKERS", "1".to_string())];
    let a = ProxyProcess::following(&endpoints, &one_worker).await?;
    let b = ProxyProcess::following(&endpoints, &one_worker).await?;
    for p in [&a, &b] {
        wait_http_ok(&p.url("/"), Duration::from_secs(20)).await?;
    }
    // Both backends take traffic from both proxies before.
    let before: Vec<u64> = vec![backends[0].requests().await?, backends[1].requests().await?];
    traffic(&[&a, &b], 20).await?;
    assert!(
        backends[0].requests().await? > before[0],
        "backend 0 unused before the drain"
    );
    assert!(
        backends[1].requests().await? > before[1],
        "backend 1 unused before the drain"
    );

    // === the database stops; the lever still works ===
    pg.stop()?;
    let drained = addresses[0].as_str();
    let started = Instant::now();
    let Ran {
        code,
        stdout: out,
        stderr: err,
    } = tandemctl(&follower_endpoint, &["backend", "drain", "web", drained]);
    assert_eq!(
        code, 0,
        "drain sent to follower control-{follower} with the database down: {out}{err}"
    );
    assert!(out.contains("as a runtime override"), "{out}");
    assert!(
        out.contains("raft index"),
        "the committed index is told: {out}"
    );
    eprintln!(
        "tandemctl backend drain (db down, {:?}): {}{}",
        started.elapsed(),
        out.trim_end(),
        err.trim_end()
    );
    // Within a second of the command, no new request reaches it.
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
    let (held, other) = (backends[0].requests().await?, backends[1].requests().await?);
    traffic(&[&a, &b], 20).await?;
    assert_eq!(
        backends[0].requests().await?,
        held,
        "the drained backend got new requests"
    );
    assert!(
        backends[1].requests().await? >= other + 40,
        "the other backend took them"
    );

    let Ran {
        code,
        stdout: out,
        stderr: err,
    } = tandemctl(&endpoints, &["status"]);
    assert_eq!(code, 0, "status with the database down: {out}{err}");
    eprintln!("tandemctl status (db down):\n{out}{err}");
    assert!(
        out.contains("override: draining"),
        "status shows the override: {out}{err}"
    );

    // === the database returns: the override becomes declared ===
    pg.restart()?;
    wait_reconciled(&endpoints, "web", "draining").await?;
    let list = tandemctl(&endpoints, &["backend", "list", "web"]).stdout;
    eprintln!("tandemctl backend list web (db back):\n{list}");
    // Still drained, now by the declared configuration.
    let held = backends[0].requests().await?;
    traffic(&[&a, &b], 20).await?;
    assert_eq!(
        backends[0].requests().await?,
        held,
        "the declared drain holds"
    );
    Ok(())
}

/// Waits until `status` shows no runtime override and `backend list pool`
/// shows `state`: the override became declared configuration.
async fn wait_reconciled(endpoint: &str, pool: &str, state: &str) -> anyhow::Result<()> {
    wait_until(
        Duration::from_secs(30),
        "the override to be reconciled",
        || async {
            let status = tandemctl(endpoint, &["status"]).stdout;
            let list = tandemctl(endpoint, &["backend", "list", pool]);
            list.code == 0 && !status.contains("override:") && list.stdout.contains(state)
        },
    )
    .await
}

/// `tandemctl -o json ARGS` against `endpoint`: the parsed answer.
fn tandemctl_json(endpoint: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let Ran {
        code,
        stdout: out,
        stderr: err,
    } = tandemctl(endpoint, &all);
    anyhow::ensure!(code == 0, "tandemctl {args:?}: exit {code}: {out}{err}");
    serde_json::from_str(out.trim())
        .map_err(|e| anyhow::anyhow!("tandemctl -o json {args:?} printed no JSON ({e}): {out}"))
}

/// Sends `n` requests through `proxy`; returns how many succeeded.
async fn successes(proxy: &ProxyProcess, n: usize) -> anyhow::Result<usize> {
    let client = http_client();
    let mut ok = 0;
    for _ in 0..n {
        if client
            .get(proxy.url("/"))
            .send()
            .await?
            .status()
            .is_success()
        {
            ok += 1;
        }
    }
    Ok(ok)
}

/// A pool of one backend: panic mode would send to it were it merely
/// unhealthy, so only a real disable keeps every request away from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_and_enable_with_the_database_down_act_as_declared_ones() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cluster = ControlCluster::start(&pg.url(), 1).await?;
    cluster.leader(&[], Duration::from_secs(10)).await?;
    let endpoint = cluster.endpoints();

    let backend = FakeBackend::start("solo").await?;
    let address = backend.address();
    let pool = v1::Pool {
        name: "solo".into(),
        ..Default::default()
    };
    declare_pool(
        &mut cluster.replicas[0].admin_client().await?,
        pool,
        std::slice::from_ref(&address),
    )
    .await?;
    let one_worker = [("TANDEM_WORKERS", "1".to_string())];
    let proxy = ProxyProcess::following(&endpoint, &one_worker).await?;
    wait_http_ok(&proxy.url("/"), Duration::from_secs(20)).await?;

    // Declared disabled while the database is up: nothing reaches it.
    let r = tandemctl(&endpoint, &["backend", "disable", "solo", &address]);
    assert_eq!(r.code, 0, "declared disable: {}{}", r.stdout, r.stderr);
    wait_until(Duration::from_secs(10), "the declared disable", || {
        let p = proxy.url("/");
        async move {
            !http_client()
                .get(p)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await?;
    let held = backend.requests().await?;
    assert_eq!(
        successes(&proxy, 10).await?,
        0,
        "a disabled lone backend serves nothing"
    );
    assert_eq!(backend.requests().await?, held, "declared disable");

    // === the database stops: enable puts it back, under the agents' verdict ===
    pg.stop()?;
    let started = Instant::now();
    let enabled = tandemctl_json(&endpoint, &["backend", "enable", "solo", &address])?;
    eprintln!("enable -o json (db down): {enabled}");
    assert_eq!(enabled["runtime_override"], true, "{enabled}");
    assert_eq!(enabled["admin_state"], "enabled", "{enabled}");
    assert!(enabled["raft_index"].as_u64().unwrap_or(0) > 0, "{enabled}");
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
    let before = backend.requests().await?;
    assert_eq!(
        successes(&proxy, 10).await?,
        10,
        "enabled by override: it serves again"
    );
    assert!(
        backend.requests().await? >= before + 10,
        "the backend saw them"
    );

    // === disable again: a real disable, not "unhealthy" (panic mode) ===
    let started = Instant::now();
    let disabled = tandemctl_json(&endpoint, &["backend", "disable", "solo", &address])?;
    eprintln!("disable -o json (db down): {disabled}");
    assert_eq!(disabled["runtime_override"], true, "{disabled}");
    assert_eq!(disabled["admin_state"], "disabled", "{disabled}");
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(started.elapsed())).await;
    let held = backend.requests().await?;
    assert_eq!(
        successes(&proxy, 10).await?,
        0,
        "disabled by override: no request is sent to it, not even in panic mode"
    );
    assert_eq!(backend.requests().await?, held, "the backend saw none");

    // === the database returns: the disable becomes declared ===
    pg.restart()?;
    wait_reconciled(&endpoint, "solo", "disabled").await?;
    let held = backend.requests().await?;
    assert_eq!(
        successes(&proxy, 10).await?,
        0,
        "the declared disable holds"
    );
    assert_eq!(backend.requests().await?, held);
    Ok(())
}
