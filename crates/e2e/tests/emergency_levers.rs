//! The emergency lever: with the control database stopped, `tandemctl
//! backend drain` still works, as a runtime override committed through
//! raft. Both proxies stop sending new requests to the drained backend
//! within a second (judged by what the backends receive), `tandemctl
//! status` shows the override, and when the database returns the override
//! is applied to the declared configuration (a new revision) and cleared.

use std::process::Command;
use std::time::{Duration, Instant};

use tandem_proto::v1;
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::{
    ADMIN_TOKEN, ControlCluster, NODE_TOKEN, Postgres, bin_path, declare_pool, http_client,
    wait_http_ok, wait_until,
};

fn tandemctl(endpoints: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin_path("tandemctl"))
        .args(args)
        .env("TANDEM_ENDPOINT", endpoints)
        .env("TANDEM_TOKEN", ADMIN_TOKEN)
        .env_remove("TANDEM_TOKEN_FILE")
        .output()
        .expect("tandemctl runs (cargo build --workspace --bins)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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
    let mut cluster = ControlCluster::start(&pg.url(), 1).await?;
    cluster.leader(&[], Duration::from_secs(10)).await?;
    let endpoints = cluster.endpoints();

    let backends = FakeBackend::start_many("web", 2).await?;
    let addresses: Vec<String> = backends.iter().map(|b| b.address()).collect();
    let pool = v1::Pool {
        name: "web".into(),
        ..Default::default()
    };
    declare_pool(
        &mut cluster.replicas[0].admin_client().await?,
        pool,
        &addresses,
    )
    .await?;
    let proxy_env = [
        ("TANDEM_TOKEN", NODE_TOKEN.to_string()),
        ("TANDEM_WORKERS", "1".to_string()),
    ];
    let a = ProxyProcess::start(tempfile::tempdir()?, &endpoints, &proxy_env)?;
    let b = ProxyProcess::start(tempfile::tempdir()?, &endpoints, &proxy_env)?;
    for p in [&a, &b] {
        p.wait_ready().await?;
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
    let (code, out, err) = tandemctl(&endpoints, &["backend", "drain", "web", drained]);
    assert_eq!(code, 0, "drain with the database down: {out}{err}");
    assert!(out.contains("as a runtime override"), "{out}");
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

    let (code, out, err) = tandemctl(&endpoints, &["status"]);
    assert_eq!(code, 0, "status with the database down: {out}{err}");
    eprintln!("tandemctl status (db down):\n{out}{err}");
    assert!(
        out.contains("override: draining"),
        "status shows the override: {out}{err}"
    );

    // === the database returns: the override becomes declared ===
    pg.restart()?;
    wait_until(
        Duration::from_secs(30),
        "the override to be reconciled",
        || {
            let e = endpoints.clone();
            async move {
                let (_, status, _) = tandemctl(&e, &["status"]);
                let (code, list, _) = tandemctl(&e, &["backend", "list", "web"]);
                code == 0 && !status.contains("override:") && list.contains("draining")
            }
        },
    )
    .await?;
    let (_, list, _) = tandemctl(&endpoints, &["backend", "list", "web"]);
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
