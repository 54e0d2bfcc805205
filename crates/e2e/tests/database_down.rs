//! The control plane's database stops under three real replicas, a proxy
//! serving steady traffic, and an operator using `tandemctl`: every replica
//! keeps answering reads from memory (marked stale), a fresh proxy with an
//! empty state directory gets its configuration and serves, a replica
//! restarted meanwhile copies the configuration from the others, and a
//! write exits 6 at once naming the database. The database back, everything
//! resumes without a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::served::web_pool;
use tandem_testkit::tandemctl;
use tandem_testkit::{
    ControlCluster, ControlPlane, Postgres, http_client, wait_http_ok, wait_until,
};

/// `tandemctl -o json ...` that must succeed; its JSON and its stderr.
fn tandemctl_json(endpoints: &str, args: &[&str]) -> (serde_json::Value, String) {
    let args: Vec<&str> = args.iter().copied().chain(["-o", "json"]).collect();
    let r = tandemctl(endpoints, &args);
    assert_eq!(r.code, 0, "tandemctl {args:?}: {}{}", r.stdout, r.stderr);
    let json = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("tandemctl {args:?}: {e}: {}", r.stdout));
    (json, r.stderr)
}

async fn readyz_status(cp: &ControlPlane) -> Option<u16> {
    let r = http_client().get(cp.admin_url("/readyz")).send().await;
    r.ok().map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_down_replicas_answer_from_memory_and_resume_after() -> anyhow::Result<()>
{
    let pg = Postgres::start()?;
    let database = format!("127.0.0.1:{}/postgres", pg.port());
    let mut cluster = ControlCluster::start(&pg.url(), 3).await?;
    cluster.leader(&[], Duration::from_secs(10)).await?;
    let endpoints = cluster.endpoints();

    let (_backends, addresses) =
        web_pool(&mut cluster.replicas[0].admin_client().await?, 2).await?;
    let one_worker = [("TANDEM_WORKERS", "1".to_string())];
    let proxy = ProxyProcess::following(&endpoints, &one_worker).await?;
    wait_http_ok(&proxy.url("/"), Duration::from_secs(20)).await?;
    // Every replica's copy has the whole configuration (revision 4: the
    // pool, two backends, the route) before the database goes.
    for r in &cluster.replicas {
        let url = r.admin_url("/metrics");
        wait_until(
            Duration::from_secs(5),
            "every replica's copy at revision 4",
            || {
                let req = http_client().get(&url).send();
                async move {
                    match req.await {
                        Ok(res) => res.text().await.is_ok_and(|m| {
                            m.lines().any(|l| l == "tandem_control_copy_revision 4")
                        }),
                        Err(_) => false,
                    }
                }
            },
        )
        .await?;
    }

    // Steady traffic through the proxy for the whole outage.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = tokio::spawn({
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), proxy.url("/"));
        async move {
            let client = http_client();
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    // === the database stops ===
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok_before = ok.load(Ordering::Relaxed);
    pg.stop()?;
    for r in &cluster.replicas {
        wait_until(
            Duration::from_secs(5),
            "every replica to notice",
            || async { readyz_status(r).await == Some(503) },
        )
        .await?;
    }

    // `pool list` answers from memory, with the mark, through the usual
    // endpoint list and from every replica alone.
    let r = tandemctl(&endpoints, &["pool", "list"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("web"), "{}", r.stdout);
    assert!(
        r.stderr.starts_with("warning: control-") && r.stderr.contains(&database),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr.lines().count(),
        1,
        "one warning line: {}",
        r.stderr
    );
    eprintln!("tandemctl pool list: {}", r.stderr.trim_end());
    for (i, replica) in cluster.replicas.iter().enumerate() {
        let (json, _) = tandemctl_json(&replica.endpoint(), &["pool", "list"]);
        assert_eq!(json["revision"], 4, "{json}");
        assert_eq!(json["pools"][0]["name"], "web");
        assert_eq!(json["stale"]["replica"], format!("control-{}", i + 1));
        assert_eq!(json["stale"]["database"], database.as_str());
        assert_eq!(json["stale"]["copied_from"], "");
    }

    // A write: exit 6 within a second, naming the database.
    let started = Instant::now();
    let r = tandemctl(&endpoints, &["pool", "create", "api"]);
    let took = started.elapsed();
    assert_eq!(r.code, 6, "{}{}", r.stdout, r.stderr);
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    assert!(
        r.stderr
            .starts_with("error: UNAVAILABLE: the control-plane database ")
            && r.stderr.contains(&database)
            && r.stderr.contains("(answered by http://"),
        "{}",
        r.stderr
    );

    eprintln!(
        "tandemctl pool create (exit {} after {:?}): {}",
        r.code,
        took,
        r.stderr.trim_end()
    );

    // A replica restarted now has never read its database: it copies the
    // configuration from the others and serves it, saying whose it is.
    let restarted = cluster.replica(3);
    restarted.respawn()?;
    let only_three = restarted.endpoint();
    wait_until(
        Duration::from_secs(15),
        "the restarted replica to copy the configuration",
        || {
            let r = tandemctl(&only_three, &["pool", "list", "-o", "json"]);
            async move { r.code == 0 }
        },
    )
    .await?;
    let (json, _) = tandemctl_json(&only_three, &["pool", "list"]);
    assert_eq!(json["revision"], 4, "{json}");
    assert_eq!(json["stale"]["replica"], "control-3");
    let copied_from = json["stale"]["copied_from"].as_str().unwrap_or_default();
    assert!(
        copied_from == "control-1" || copied_from == "control-2",
        "{json}"
    );

    // A fresh proxy with an empty state directory, following only that
    // replica, gets the configuration and serves.
    let fresh = ProxyProcess::following(&only_three, &one_worker).await?;
    let res = http_client().get(fresh.url("/")).send().await?;
    assert!(res.status().is_success(), "{}", res.status());

    // === the database is back ===
    let served_meanwhile = ok.load(Ordering::Relaxed) - ok_before;
    pg.restart()?;
    let started = Instant::now();
    wait_until(Duration::from_secs(15), "writes to work again", || {
        let r = tandemctl(&endpoints, &["pool", "create", "api"]);
        async move { r.code == 0 }
    })
    .await?;
    let resumed_after = started.elapsed();
    let r = tandemctl(&endpoints, &["backend", "add", "api", &addresses[0]]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = tandemctl(
        &endpoints,
        &[
            "route",
            "add",
            "--host",
            "api.local",
            "--prefix",
            "/",
            "--pool",
            "api",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Every replica reads from its database again, and both proxies get
    // the changes (the fresh one through the restarted replica).
    for replica in &cluster.replicas {
        let endpoint = replica.endpoint();
        wait_until(Duration::from_secs(10), "every replica fresh again", || {
            let r = tandemctl(&endpoint, &["pool", "list", "-o", "json"]);
            async move {
                r.code == 0
                    && r.stderr.is_empty()
                    && serde_json::from_str::<serde_json::Value>(&r.stdout)
                        .is_ok_and(|j| j["revision"] == 7 && j.get("stale").is_none())
            }
        })
        .await?;
        wait_until(
            Duration::from_secs(10),
            "every replica ready again",
            || async { readyz_status(replica).await == Some(200) },
        )
        .await?;
    }
    for p in [&proxy, &fresh] {
        wait_until(
            Duration::from_secs(10),
            "both proxies at revision 7",
            || async {
                p.config()
                    .await
                    .is_ok_and(|c| c["revision"] == 7 && c.to_string().contains("api.local"))
            },
        )
        .await?;
    }

    stop.store(true, Ordering::Relaxed);
    load.await?;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "outage: writes resumed {resumed_after:?} after the database returned; {ok} proxied requests ({served_meanwhile} while it was down), {failed} failed"
    );
    assert!(
        ok_before > 0 && served_meanwhile > 5,
        "the load ran: {ok_before} requests before, {served_meanwhile} during the outage"
    );
    assert_eq!(
        failed, 0,
        "no proxied request fails while the database is down"
    );
    Ok(())
}
