//! Revisions that cannot lie, and backups that come back: real control
//! plane, real Postgres, two real proxies, `tandemctl` as an operator runs it.
//!
//! - A restore drill: `snapshot save`, changes, `snapshot restore --yes`;
//!   both proxies converge to the saved configuration under the store's
//!   new generation.
//! - A database that lost its last transactions (a failover that lost the
//!   tail, simulated by deleting them) while the control plane runs, and
//!   again while it is down: the proxy that was at the higher revision
//!   takes a full snapshot instead of keeping a configuration that no
//!   longer exists, and later changes reach it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_proto::v1;
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::tandemctl;
use tandem_testkit::{
    AuthedClient, ControlPlane, NODE_TOKEN, Postgres, declare_pool, wait_http_ok, wait_until,
};

fn start_proxy(name: &str, endpoint: &str) -> anyhow::Result<(ProxyProcess, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().to_path_buf();
    let env = [
        ("TANDEM_TOKEN", NODE_TOKEN.to_string()),
        ("TANDEM_NODE_ID", name.to_string()),
        ("TANDEM_WORKERS", "1".to_string()),
    ];
    Ok((ProxyProcess::start(dir, endpoint, &env)?, path))
}

/// The proxy's copy on disk (`snapshot.json`), which it writes after
/// applying each revision.
fn disk_copy(dir: &Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(dir.join("snapshot.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Pool name → its backends' addresses, sorted.
fn pools_of(config: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = config["pools"]
        .as_object()
        .map(|pools| {
            pools
                .iter()
                .map(|(name, p)| {
                    let mut addrs: Vec<String> = p["backends"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|b| b["address"].as_str().map(String::from))
                        .collect();
                    addrs.sort();
                    (name.clone(), addrs)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

async fn wait_disk(
    dir: &Path,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    wait_until(Duration::from_secs(10), what, || async {
        disk_copy(dir).is_some_and(|c| check(&c))
    })
    .await?;
    Ok(disk_copy(dir).expect("just read"))
}

async fn create_pool(admin: &mut AuthedClient, name: &str) -> anyhow::Result<u64> {
    let reply = admin
        .create_pool(v1::CreatePoolRequest {
            pool: Some(v1::Pool {
                name: name.into(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    Ok(reply.revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_drill_brings_every_proxy_back_to_the_saved_configuration() -> anyhow::Result<()>
{
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    let endpoint = cp.endpoint();
    let backends = FakeBackend::start_many("drill", 2).await?;
    let (a, b) = (backends[0].address(), backends[1].address());
    let mut admin = cp.admin_client().await?;
    let pool = v1::Pool {
        name: "web".into(),
        ..Default::default()
    };
    declare_pool(&mut admin, pool, std::slice::from_ref(&a)).await?;
    let (p1, dir1) = start_proxy("proxy-1", &endpoint)?;
    let (p2, dir2) = start_proxy("proxy-2", &endpoint)?;
    for p in [&p1, &p2] {
        p.wait_ready().await?;
        wait_http_ok(&p.url("/"), Duration::from_secs(20)).await?;
    }

    // === save ===
    let saved_file = tempfile::tempdir()?;
    let file = saved_file.path().join("tandem-backup.json");
    let file_arg = file.to_str().expect("a UTF-8 temp path");
    let r = tandemctl(&endpoint, &["snapshot", "save", file_arg]);
    assert_eq!(r.code, 0, "save: {}{}", r.stdout, r.stderr);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
    assert_eq!(saved["format_version"], 1);
    assert_eq!(saved["revision"], 3, "pool, backend, route: {saved}");
    let store_id = saved["store"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(store_id.len(), 36, "a uuid: {saved}");
    assert_eq!(saved["store"]["generation"], 1);
    let saved_pools = pools_of(&saved["configuration"]);
    assert_eq!(saved_pools, vec![("web".to_string(), vec![a.clone()])]);

    // === changes after the backup ===
    admin
        .add_backend(v1::AddBackendRequest {
            pool: "web".into(),
            backend: Some(v1::Backend {
                address: b.clone(),
                ..Default::default()
            }),
            expected_revision: None,
        })
        .await?;
    admin
        .remove_backend(v1::RemoveBackendRequest {
            pool: "web".into(),
            address: a.clone(),
            expected_revision: None,
        })
        .await?;
    let changed_at = create_pool(&mut admin, "extra").await?;
    assert_eq!(changed_at, 6);
    for dir in [&dir1, &dir2] {
        wait_disk(dir, "both proxies at revision 6", |c| c["revision"] == 6).await?;
    }

    // === restore: refused without a confirmation, then with --yes ===
    let r = tandemctl(&endpoint, &["snapshot", "restore", file_arg]);
    assert_ne!(r.code, 0, "no terminal, no --yes: {}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    assert!(
        r.stdout.contains(&format!("+ backend web {a}"))
            && r.stdout.contains(&format!("- backend web {b}"))
            && r.stdout.contains("- pool extra"),
        "the diff is shown first: {}",
        r.stdout
    );
    let r = tandemctl(&endpoint, &["snapshot", "restore", file_arg, "--yes"]);
    assert_eq!(r.code, 0, "restore: {}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains(&format!(
            "restored as revision 7 (store {store_id} generation 2)"
        )),
        "{}",
        r.stdout
    );

    // === every proxy converges to the saved configuration ===
    for dir in [&dir1, &dir2] {
        let copy = wait_disk(dir, "each proxy at the restored revision", |c| {
            c["revision"] == 7 && c["store"]["generation"] == 2
        })
        .await?;
        assert_eq!(copy["store"]["id"], store_id.as_str());
        assert_eq!(pools_of(&copy), saved_pools, "{copy}");
    }
    let before = backends[0].requests().await?;
    for p in [&p1, &p2] {
        for _ in 0..5 {
            let r = tandem_testkit::http_client().get(p.url("/")).send().await?;
            assert!(r.status().is_success(), "{}", r.status());
        }
    }
    assert_eq!(
        backends[0].requests().await? - before,
        10,
        "traffic back on the restored backend only"
    );

    // A change after the restore reaches both, on top of it.
    let next = create_pool(&mut admin, "after").await?;
    assert_eq!(next, 8);
    for dir in [&dir1, &dir2] {
        wait_disk(dir, "the change after the restore", |c| {
            c["revision"] == 8 && c["pools"].get("after").is_some()
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_lost_its_last_transactions_makes_a_proxy_ahead_of_it_resync()
-> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cp = ControlPlane::start(&pg.url()).await?;
    let endpoint = cp.endpoint();
    let backend = FakeBackend::start("tail").await?;
    let mut admin = cp.admin_client().await?;
    let pool = v1::Pool {
        name: "web".into(),
        ..Default::default()
    };
    declare_pool(&mut admin, pool, &[backend.address()]).await?;
    let (proxy, dir) = start_proxy("proxy-1", &endpoint)?;
    proxy.wait_ready().await?;
    assert_eq!(create_pool(&mut admin, "lost").await?, 4);
    let copy = wait_disk(&dir, "the proxy at revision 4", |c| c["revision"] == 4).await?;
    let first = copy["store"].clone();
    assert_eq!(first["generation"], 1, "{copy}");

    // === the database loses revision 4 under a running control plane ===
    let lose = |revision: u64, pool: &str| {
        format!(
            "BEGIN; DELETE FROM pools WHERE name = '{pool}'; \
             DELETE FROM change_log WHERE revision = {revision}; \
             UPDATE config_revision SET revision = {}; COMMIT;",
            revision - 1
        )
    };
    pg.execute("postgres", &lose(4, "lost"))?;
    let copy = wait_disk(
        &dir,
        "the proxy resynced to revision 3 of a new generation",
        |c| c["revision"] == 3 && c["store"]["generation"] == 2,
    )
    .await?;
    assert!(copy["pools"].get("lost").is_none(), "{copy}");
    assert_eq!(copy["store"]["id"], first["id"]);
    // Revision 4 again, another change: the proxy takes it.
    assert_eq!(create_pool(&mut admin, "kept").await?, 4);
    let copy = wait_disk(&dir, "the new revision 4", |c| c["revision"] == 4).await?;
    assert!(copy["pools"].get("kept").is_some() && copy["pools"].get("lost").is_none());

    // === again while the control plane is down: it finds the database
    // behind what it served (noted in its state directory) at start ===
    assert_eq!(create_pool(&mut admin, "lost-again").await?, 5);
    wait_disk(&dir, "the proxy at revision 5", |c| c["revision"] == 5).await?;
    cp.process.kill();
    pg.execute("postgres", &lose(5, "lost-again"))?;
    cp.respawn()?;
    cp.wait_ready().await?;
    let mut admin = cp.admin_client().await?;
    let copy = wait_disk(
        &dir,
        "the proxy resynced to revision 4 of generation 3",
        |c| c["revision"] == 4 && c["store"]["generation"] == 3,
    )
    .await?;
    assert!(copy["pools"].get("lost-again").is_none(), "{copy}");
    assert_eq!(create_pool(&mut admin, "fresh").await?, 5);
    let copy = wait_disk(&dir, "the new revision 5", |c| c["revision"] == 5).await?;
    assert!(copy["pools"].get("fresh").is_some() && copy["pools"].get("lost-again").is_none());
    Ok(())
}
