//! The control plane's database is a Patroni cluster of three real Postgres
//! servers, named in `DATABASE_URL` as libpq would
//! (`host-1,host-2,host-3/...?target_session_attrs=read-write`). The
//! primary's host is killed: reads keep being answered from memory, and
//! configuration writes resume by themselves once Patroni has promoted a
//! replica, with nothing committed before the failover lost.

use std::time::{Duration, Instant};

use tandem_proto::v1;
use tandem_testkit::ControlPlane;
use tandem_testkit::patroni::{Etcd, PatroniCluster, PatroniOptions};

fn pool(name: &str) -> v1::CreatePoolRequest {
    v1::CreatePoolRequest {
        pool: Some(v1::Pool {
            name: name.into(),
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_writes_resume_by_themselves_after_a_patroni_failover() -> anyhow::Result<()>
{
    let etcd = Etcd::start().await?;
    let mut cluster = PatroniCluster::start(&etcd, PatroniOptions::fast("control", 71)).await?;
    let primary = cluster.wait_primary(Duration::from_secs(10), None).await?;
    let admin_db = sqlx::PgPool::connect(&cluster.members()[primary].url("postgres")).await?;
    sqlx::query("CREATE DATABASE tandem")
        .execute(&admin_db)
        .await?;
    admin_db.close().await;

    let cp = ControlPlane::start(&cluster.multi_host_url("tandem", "read-write")).await?;
    let mut admin = cp.admin_client().await?;
    admin.create_pool(pool("before")).await?;

    let killed = Instant::now();
    cluster.kill_host(primary);

    // Writes fail (UNAVAILABLE, at once) until Patroni promotes a replica
    // and the control plane finds it; reads are answered all along.
    let mut refused = 0;
    let resumed = loop {
        let listed = admin
            .list_pools(v1::ListPoolsRequest::default())
            .await
            .map_err(|s| anyhow::anyhow!("a read failed during the failover: {s}"))?
            .into_inner();
        assert!(
            listed.pools.iter().any(|p| p.name == "before"),
            "the configuration is still served: {listed:?}"
        );
        match admin.create_pool(pool("after")).await {
            Ok(_) => break killed.elapsed(),
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s}");
                refused += 1;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "writes did not resume within 60 s\n{}\n--- control ---\n{}",
            cluster.logs(),
            cp.process.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let new = cluster
        .wait_primary(Duration::from_secs(5), Some(primary))
        .await?;
    println!(
        "{} promoted; writes resumed {resumed:?} after the kill ({refused} refused meanwhile)",
        cluster.members()[new].name
    );

    // Both changes are on the new primary.
    let db = sqlx::PgPool::connect(&cluster.members()[new].url("tandem")).await?;
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM pools ORDER BY name")
        .fetch_all(&db)
        .await?;
    assert_eq!(names, ["after", "before"]);

    // The replica counted the move (ControlDatabaseFailedOver's metric).
    let metrics = cp.metrics().await?;
    let changes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tandem_control_database_primary_changes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(changes, Some(1.0), "one move to a new primary:\n{metrics}");
    Ok(())
}
