//! End to end: a real Postgres, real `tandem-control` processes, a real
//! gRPC client.

use std::time::Duration;

use tandem_proto::v1;
use tandem_testkit::certs::{KeyKind, TestCa};
use tandem_testkit::{ControlPlane, ControlPlaneOptions, Postgres};
use tokio_stream::StreamExt;
use tonic::Code;

fn pool(name: &str) -> v1::Pool {
    v1::Pool {
        name: name.into(),
        ..Default::default()
    }
}

/// A proxy's watch from `last_revision` (no store identity: set
/// `store_id` and `generation` by struct update).
fn watch_request(node_id: impl Into<String>, zone: &str, last_revision: u64) -> v1::WatchRequest {
    v1::WatchRequest {
        node_id: node_id.into(),
        kind: v1::NodeKind::Proxy.into(),
        last_revision,
        zone: zone.into(),
        ..Default::default()
    }
}

/// A fresh control plane on its own Postgres, pool `shop` created (revision
/// 1), and an admin client.
async fn control_with_shop()
-> anyhow::Result<(Postgres, ControlPlane, tandem_testkit::AuthedClient)> {
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    let mut c = cp.admin_client().await?;
    c.create_pool(v1::CreatePoolRequest {
        pool: Some(pool("shop")),
    })
    .await?;
    Ok((pg, cp, c))
}

/// A request for a route from `host` and `prefix` to `pool`.
fn route(host: &str, prefix: &str, pool: &str) -> v1::AddRouteRequest {
    v1::AddRouteRequest {
        route: Some(v1::Route {
            host: host.into(),
            path_prefix: prefix.into(),
            pool: pool.into(),
            ..Default::default()
        }),
    }
}

fn backend(addr: &str) -> v1::Backend {
    v1::Backend {
        address: addr.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn crud_round_trip_survives_a_restart() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cp = ControlPlane::start(&pg.url()).await?;
    let mut c = cp.admin_client().await?;

    let created = c
        .create_pool(v1::CreatePoolRequest {
            pool: Some(v1::Pool {
                policy: v1::LbPolicy::LeastConnections.into(),
                health_check: Some(v1::HealthCheck {
                    path: Some("/healthz".into()),
                    interval_ms: Some(1000),
                    fall: Some(2),
                    ..Default::default()
                }),
                ..pool("shop")
            }),
        })
        .await?
        .into_inner();
    assert_eq!(created.revision, 1);
    let p = created.pool.unwrap();
    let hc = p.health_check.unwrap();
    assert_eq!(hc.path.as_deref(), Some("/healthz"));
    assert_eq!(hc.rise, Some(2), "unset fields get defaults");
    assert_eq!(p.policy, v1::LbPolicy::LeastConnections as i32);

    c.add_backend(v1::AddBackendRequest {
        pool: "shop".into(),
        backend: Some(v1::Backend {
            weight: Some(2),
            ..backend("10.0.0.5:3000")
        }),
        expected_revision: None,
    })
    .await?;
    c.add_backend(v1::AddBackendRequest {
        pool: "shop".into(),
        backend: Some(v1::Backend {
            role: v1::BackendRole::Backup.into(),
            ..backend("10.0.0.6:3000")
        }),
        expected_revision: None,
    })
    .await?;
    c.update_backend(v1::UpdateBackendRequest {
        pool: "shop".into(),
        address: "10.0.0.5:3000".into(),
        admin_state: Some(v1::AdminState::Draining.into()),
        ..Default::default()
    })
    .await?;
    c.add_route(route("shop.local", "/", "shop")).await?;
    let updated = c
        .update_pool(v1::UpdatePoolRequest {
            pool: Some(v1::Pool {
                policy: v1::LbPolicy::IpHash.into(),
                ..pool("shop")
            }),
            // Backend changes bump the pool's revision; routes do not.
            expected_revision: Some(4),
        })
        .await?
        .into_inner();
    assert_eq!(updated.revision, 6);
    let kept = updated.pool.unwrap().health_check.unwrap();
    assert_eq!(
        kept.path.as_deref(),
        Some("/healthz"),
        "update keeps unset fields"
    );

    // Restart the process: everything is still there.
    cp.restart().await?;
    let mut c = cp.admin_client().await?;
    let got = c
        .get_pool(v1::GetPoolRequest {
            name: "shop".into(),
        })
        .await?
        .into_inner();
    assert_eq!(got.revision, 6);
    assert_eq!(got.policy, v1::LbPolicy::IpHash as i32);
    let backends: Vec<_> = got
        .backends
        .iter()
        .map(|b| (b.address.as_str(), b.weight, b.role, b.admin_state))
        .collect();
    assert_eq!(
        backends,
        [
            (
                "10.0.0.5:3000",
                Some(2),
                v1::BackendRole::Primary as i32,
                v1::AdminState::Draining as i32
            ),
            (
                "10.0.0.6:3000",
                Some(1),
                v1::BackendRole::Backup as i32,
                v1::AdminState::Enabled as i32
            ),
        ]
    );
    let routes = c.list_routes(v1::ListRoutesRequest {}).await?.into_inner();
    assert_eq!(routes.routes.len(), 1);
    assert_eq!(routes.revision, 6);

    // A pool with routes cannot go; without, it can, with its backends.
    let err = c
        .delete_pool(v1::DeletePoolRequest {
            name: "shop".into(),
            expected_revision: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    c.delete_route(v1::DeleteRouteRequest {
        host: "shop.local".into(),
        path_prefix: "/".into(),
    })
    .await?;
    c.remove_backend(v1::RemoveBackendRequest {
        pool: "shop".into(),
        address: "10.0.0.6:3000".into(),
        expected_revision: None,
    })
    .await?;
    let rev = c
        .delete_pool(v1::DeletePoolRequest {
            name: "shop".into(),
            expected_revision: None,
        })
        .await?
        .into_inner()
        .revision;
    assert_eq!(rev, 9);
    let err = c
        .get_pool(v1::GetPoolRequest {
            name: "shop".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let snap = c
        .get_snapshot(v1::GetSnapshotRequest {})
        .await?
        .into_inner();
    assert!(snap.pools.is_empty() && snap.routes.is_empty());
    assert_eq!(snap.revision, 9);
    Ok(())
}

/// Deleting a route, a TCP route or a certificate: one that exists goes in
/// one revision; one that does not is `NotFound` and writes nothing.
#[tokio::test]
async fn deletes_remove_what_exists_and_name_what_does_not() -> anyhow::Result<()> {
    let (_pg, _cp, mut c) = control_with_shop().await?;
    c.add_route(route("shop.local", "/", "shop")).await?;
    c.add_tcp_route(v1::AddTcpRouteRequest {
        route: Some(v1::TcpRoute {
            listen: "127.0.0.1:5432".into(),
            pool: "shop".into(),
        }),
    })
    .await?;
    let issued = TestCa::new("deletes-test-ca")?.issue(&["shop.local"], KeyKind::EcP256)?;
    c.add_certificate(v1::AddCertificateRequest {
        certificate: Some(v1::Certificate {
            name: "shop".into(),
            chain_pem: issued.chain_pem,
            key_pem: issued.key_pem,
        }),
    })
    .await?;

    for round in 0..2 {
        let route = c
            .delete_route(v1::DeleteRouteRequest {
                host: "shop.local".into(),
                path_prefix: "/".into(),
            })
            .await;
        let tcp_route = c
            .delete_tcp_route(v1::DeleteTcpRouteRequest {
                listen: "127.0.0.1:5432".into(),
            })
            .await;
        let certificate = c
            .remove_certificate(v1::RemoveCertificateRequest {
                name: "shop".into(),
            })
            .await;
        if round == 0 {
            let revisions = [route?, tcp_route?, certificate?].map(|r| r.into_inner().revision);
            assert_eq!(revisions, [5, 6, 7]);
        } else {
            for (what, err) in [
                ("route", route.unwrap_err()),
                ("tcp route", tcp_route.unwrap_err()),
                ("certificate", certificate.unwrap_err()),
            ] {
                assert_eq!(err.code(), Code::NotFound, "{what}: {err:?}");
            }
        }
    }
    let snap = c
        .get_snapshot(v1::GetSnapshotRequest {})
        .await?
        .into_inner();
    assert!(snap.routes.is_empty() && snap.tcp_routes.is_empty() && snap.certificates.is_empty());
    assert_eq!(snap.revision, 7, "a delete of nothing writes nothing");
    Ok(())
}

/// `value` after `change`: one field set wrong in a table of bad inputs.
fn changed<T>(mut value: T, change: impl FnOnce(&mut T)) -> T {
    change(&mut value);
    value
}

/// A refusal as INVALID_ARGUMENT whose message starts with the `field`.
fn assert_names_field(err: &tonic::Status, field: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
    assert!(
        err.message().starts_with(&format!("{field}:")),
        "{field}: {}",
        err.message()
    );
}

#[tokio::test]
async fn every_validation_rule_names_its_field_and_writes_nothing() -> anyhow::Result<()> {
    let (_pg, _cp, mut c) = control_with_shop().await?;

    let web = |change: fn(&mut v1::Pool)| changed(pool("web"), change);
    let checked = |change: fn(&mut v1::HealthCheck)| v1::Pool {
        health_check: Some(changed(v1::HealthCheck::default(), change)),
        ..pool("web")
    };
    let bad_pools = [
        (pool("Bad_Name"), "pool.name"),
        (pool(""), "pool.name"),
        (web(|p| p.policy = 99), "pool.policy"),
        (
            checked(|h| h.interval_ms = Some(10)),
            "pool.health_check.interval_ms",
        ),
        (
            checked(|h| h.timeout_ms = Some(5000)),
            "pool.health_check.timeout_ms",
        ),
        (checked(|h| h.rise = Some(0)), "pool.health_check.rise"),
        (checked(|h| h.fall = Some(1000)), "pool.health_check.fall"),
        (
            checked(|h| h.path = Some("nope".into())),
            "pool.health_check.path",
        ),
        (
            checked(|h| h.expected_status_min = Some(700)),
            "pool.health_check.expected_status_min",
        ),
        (
            web(|p| p.connect_timeout_ms = Some(0)),
            "pool.connect_timeout_ms",
        ),
        (
            web(|p| p.panic_threshold_percent = Some(150)),
            "pool.panic_threshold_percent",
        ),
        (
            web(|p| p.retry.get_or_insert_default().attempts = Some(9)),
            "pool.retry.attempts",
        ),
        (
            web(|p| p.outlier.get_or_insert_default().max_ejected_percent = Some(101)),
            "pool.outlier.max_ejected_percent",
        ),
    ];
    for (p, field) in bad_pools {
        let err = c
            .create_pool(v1::CreatePoolRequest { pool: Some(p) })
            .await
            .unwrap_err();
        assert_names_field(&err, field);
    }
    let err = c
        .create_pool(v1::CreatePoolRequest { pool: None })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("pool:"), "{}", err.message());

    let at = |change: fn(&mut v1::Backend)| changed(backend("10.0.0.1:80"), change);
    let bad_backends = [
        (backend("10.0.0.1"), "backend.address"),
        (backend("10.0.0.1:0"), "backend.address"),
        (backend("not a host:80"), "backend.address"),
        (at(|b| b.weight = Some(0)), "backend.weight"),
        (at(|b| b.weight = Some(1001)), "backend.weight"),
        (at(|b| b.role = 7), "backend.role"),
        (at(|b| b.admin_state = 7), "backend.admin_state"),
    ];
    for (b, field) in bad_backends {
        let err = c
            .add_backend(v1::AddBackendRequest {
                pool: "shop".into(),
                backend: Some(b),
                expected_revision: None,
            })
            .await
            .unwrap_err();
        assert_names_field(&err, field);
    }

    for (r, field) in [
        (route("a.*.com", "/", "shop"), "route.host"),
        (route("shop.local", "api", "shop"), "route.path_prefix"),
        (route("shop.local", "/a b", "shop"), "route.path_prefix"),
        (route("shop.local", "/", "Nope!"), "route.pool"),
    ] {
        let err = c.add_route(r).await.unwrap_err();
        assert_names_field(&err, field);
    }
    // Well-formed but wrong: not found / already exists.
    let err = c
        .add_route(route("shop.local", "/", "ghost"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    c.add_route(route("*.example.com", "/api", "shop")).await?;
    let err = c
        .add_route(route("*.EXAMPLE.com", "/api", "shop"))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::AlreadyExists,
        "same host and prefix is ambiguous: {err:?}"
    );
    let err = c
        .create_pool(v1::CreatePoolRequest {
            pool: Some(pool("shop")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    // Nothing of the rejected calls was written: revision 2 (pool + route).
    let snap = c
        .get_snapshot(v1::GetSnapshotRequest {})
        .await?
        .into_inner();
    assert_eq!(snap.revision, 2);
    assert_eq!(snap.pools.len(), 1);
    assert!(snap.pools[0].backends.is_empty());
    Ok(())
}

#[tokio::test]
async fn concurrent_updates_with_the_same_expected_revision_exactly_one_wins() -> anyhow::Result<()>
{
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    let mut c = cp.admin_client().await?;
    let rev = c
        .create_pool(v1::CreatePoolRequest {
            pool: Some(pool("shop")),
        })
        .await?
        .into_inner()
        .revision;

    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let mut c = cp.admin_client().await?;
        tasks.push(tokio::spawn(async move {
            c.update_pool(v1::UpdatePoolRequest {
                pool: Some(v1::Pool {
                    connect_timeout_ms: Some(100 + i),
                    ..pool("shop")
                }),
                expected_revision: Some(rev),
            })
            .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await? {
            Ok(_) => wins += 1,
            Err(e) => assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}"),
        }
    }
    assert_eq!(wins, 1);
    let p = c
        .get_pool(v1::GetPoolRequest {
            name: "shop".into(),
        })
        .await?
        .into_inner();
    assert_eq!(p.revision, rev + 1);
    Ok(())
}

/// The next configuration event, which must be a snapshot: its revision
/// and the snapshot.
async fn next_snapshot(
    stream: &mut tonic::Streaming<v1::WatchEvent>,
) -> anyhow::Result<(u64, v1::Snapshot)> {
    let ev = next_event(stream).await?;
    match ev.event {
        Some(v1::watch_event::Event::Snapshot(s)) => Ok((ev.revision, s)),
        other => anyhow::bail!(
            "expected a snapshot, got {other:?} at revision {}",
            ev.revision
        ),
    }
}

/// The next configuration event (health events are skipped).
async fn next_event(
    stream: &mut tonic::Streaming<v1::WatchEvent>,
) -> anyhow::Result<v1::WatchEvent> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(ev)) => {
                let ev = ev?;
                if !matches!(ev.event, Some(v1::watch_event::Event::Health(_))) {
                    return Ok(ev);
                }
            }
            Ok(None) => anyhow::bail!("watch stream ended"),
            Err(_) => anyhow::bail!("no watch event within 10 s"),
        }
    }
}

#[tokio::test]
async fn a_watcher_on_one_replica_sees_changes_made_on_another_in_order() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    // Both start at once on a fresh database: migrations must not collide.
    let url = pg.url();
    let (a, b) = tokio::join!(
        ControlPlane::start_with(
            &url,
            ControlPlaneOptions {
                raft_id: Some("1".into()),
                ..Default::default()
            }
        ),
        ControlPlane::start_with(
            &url,
            ControlPlaneOptions {
                raft_id: Some("2".into()),
                ..Default::default()
            }
        ),
    );
    let (a, b) = (a?, b?);
    let mut writer = a.admin_client().await?;
    writer
        .create_pool(v1::CreatePoolRequest {
            pool: Some(pool("shop")),
        })
        .await?;

    let mut watcher = b.node_client().await?;
    let mut stream = watcher
        .watch(watch_request("proxy-test", "z1", 0))
        .await?
        .into_inner();
    let (_, s) = next_snapshot(&mut stream).await?;
    assert_eq!(s.revision, 1);
    assert_eq!(s.pools.len(), 1);

    for i in 1..=20 {
        writer
            .add_backend(v1::AddBackendRequest {
                pool: "shop".into(),
                backend: Some(backend(&format!("10.0.0.{i}:80"))),
                expected_revision: None,
            })
            .await?;
    }
    for expected in 2..=21u64 {
        let ev = next_event(&mut stream).await?;
        assert_eq!(ev.revision, expected, "in order, no gaps");
        assert!(matches!(ev.event, Some(v1::watch_event::Event::Change(_))));
    }
    drop(stream);

    // Reconnect with the last revision while more changes happen meanwhile:
    // the watcher catches up with a snapshot, then continues in order.
    writer.add_route(route("*", "/", "shop")).await?;
    let mut stream = watcher
        .watch(watch_request("proxy-test", "z1", 21))
        .await?
        .into_inner();
    let (_, s) = next_snapshot(&mut stream).await?;
    assert_eq!(s.revision, 22, "behind: a snapshot");
    assert_eq!(s.routes.len(), 1);
    assert_eq!(s.pools[0].backends.len(), 20);

    // Up to date: no snapshot, just the next change.
    let mut stream = watcher
        .watch(v1::WatchRequest {
            // The store identity the snapshot came with: revision 22 of it.
            store_id: s.store_id.clone(),
            generation: s.generation,
            ..watch_request("proxy-test", "z1", 22)
        })
        .await?
        .into_inner();
    writer
        .create_pool(v1::CreatePoolRequest {
            pool: Some(pool("api")),
        })
        .await?;
    let ev = next_event(&mut stream).await?;
    assert_eq!(ev.revision, 23);
    assert!(
        matches!(ev.event, Some(v1::watch_event::Event::Change(_))),
        "{ev:?}"
    );
    assert_eq!(
        (ev.store_id.as_str(), ev.generation),
        (s.store_id.as_str(), s.generation),
        "a change carries its store identity"
    );

    // The same revision of another store identity (or none) says nothing
    // of what the caller holds: a full snapshot.
    for (store_id, generation) in [(s.store_id.clone(), s.generation + 1), (String::new(), 0)] {
        let mut stream = watcher
            .watch(v1::WatchRequest {
                store_id,
                generation,
                ..watch_request("proxy-other", "z1", 23)
            })
            .await?
            .into_inner();
        let ev = next_event(&mut stream).await?;
        assert!(
            matches!(ev.event, Some(v1::watch_event::Event::Snapshot(_))) && ev.revision == 23,
            "{ev:?}"
        );
    }

    // The proxy reports what it applied; status on A shows it.
    watcher
        .report_applied(v1::ReportAppliedRequest {
            node_id: "proxy-test".into(),
            kind: v1::NodeKind::Proxy.into(),
            revision: 23,
            zone: "z1".into(),
            detail: String::new(),
            ..Default::default()
        })
        .await?;
    let status = writer
        .get_status(v1::GetStatusRequest {})
        .await?
        .into_inner();
    assert_eq!(status.revision, 23);
    assert_eq!(status.replica, "control-1");
    let node = status
        .nodes
        .iter()
        .find(|n| n.node_id == "proxy-test")
        .expect("node listed");
    assert_eq!(node.applied_revision, 23);
    assert_eq!(node.replica, "control-2");
    assert!(!node.stale, "{node:?}");

    // A node whose last report is older than three report intervals is
    // marked stale (it reports every 5 s while alive).
    pg.execute(
        "postgres",
        "UPDATE nodes SET last_seen = now() - interval '16 seconds' WHERE node_id = 'proxy-test'",
    )?;
    let status = writer
        .get_status(v1::GetStatusRequest {})
        .await?
        .into_inner();
    let node = status
        .nodes
        .iter()
        .find(|n| n.node_id == "proxy-test")
        .expect("node listed");
    assert!(node.stale, "{node:?}");
    Ok(())
}

#[tokio::test]
async fn a_database_outage_serves_reads_from_memory_fails_writes_fast_and_loses_nothing()
-> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    let database = format!("127.0.0.1:{}/postgres", pg.port());
    let mut c = cp.admin_client().await?;
    c.create_pool(v1::CreatePoolRequest {
        pool: Some(pool("shop")),
    })
    .await?;
    let status = c.get_status(v1::GetStatusRequest {}).await?.into_inner();
    assert_eq!(status.generation, 1, "{status:?}");
    let mut watch = cp
        .node_client()
        .await?
        .watch(v1::WatchRequest {
            store_id: status.store_id,
            generation: status.generation,
            ..watch_request("w", "", 1)
        })
        .await?
        .into_inner();
    // The copy in memory follows the database asynchronously (the commit's
    // own notice, or LISTEN/NOTIFY): take the database away once it has.
    let ready = tandem_testkit::http_client();
    tandem_testkit::wait_until(Duration::from_secs(10), "the copy at revision 1", || {
        let req = ready.get(cp.admin_url("/readyz")).send();
        async move {
            match req.await {
                Ok(r) => r
                    .text()
                    .await
                    .is_ok_and(|t| t.trim_end().ends_with("at revision 1")),
                Err(_) => false,
            }
        }
    })
    .await?;

    pg.stop()?;
    // The replica notices at once (the server closes its connections) or
    // within a ping; /readyz says so and what it still serves.
    tandem_testkit::wait_until(
        Duration::from_secs(5),
        "/readyz to say the database is away",
        || {
            let req = ready.get(cp.admin_url("/readyz")).send();
            async move { matches!(req.await, Ok(r) if r.status() == 503) }
        },
    )
    .await?;
    let why = ready
        .get(cp.admin_url("/readyz"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        why.contains(&database)
            && why.contains("serving reads and Watch from memory at revision 1"),
        "{why}"
    );
    let health = ready.get(cp.admin_url("/healthz")).send().await?;
    assert_eq!(health.status(), 200, "the process itself is alive");

    // A write fails at once, naming the database.
    let started = std::time::Instant::now();
    let err = c
        .create_pool(v1::CreatePoolRequest {
            pool: Some(pool("web")),
        })
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&database), "{}", err.message());
    assert!(
        err.message().contains("nothing was changed"),
        "{}",
        err.message()
    );
    assert!(
        took < Duration::from_millis(500),
        "fails fast, took {took:?}"
    );

    // Reads answer from memory, marked stale.
    let pools = c.list_pools(v1::ListPoolsRequest {}).await?.into_inner();
    assert_eq!(pools.revision, 1);
    assert_eq!(pools.pools.len(), 1);
    let stale = pools.stale.expect("marked stale");
    assert_eq!(stale.replica, "control-1");
    assert_eq!(stale.database, database);
    assert!(stale.copied_from.is_empty(), "its own copy: {stale:?}");
    assert!(stale.since_unix_ms > 0);
    let got = c
        .get_pool(v1::GetPoolRequest {
            name: "shop".into(),
        })
        .await?
        .into_inner();
    assert_eq!(got.revision, 1);
    assert!(got.stale.is_some());
    let err = c
        .get_pool(v1::GetPoolRequest { name: "web".into() })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "the copy says what is not there"
    );
    let routes = c.list_routes(v1::ListRoutesRequest {}).await?.into_inner();
    assert!(routes.stale.is_some() && routes.revision == 1);
    let snapshot = c
        .get_snapshot(v1::GetSnapshotRequest {})
        .await?
        .into_inner();
    assert!(snapshot.stale.is_some() && snapshot.revision == 1);
    let status = c.get_status(v1::GetStatusRequest {}).await?.into_inner();
    assert!(!status.database_reachable);
    assert_eq!(status.revision, 1);
    assert_eq!(status.stale.map(|s| s.database), Some(database.clone()));

    // A new watcher gets the copy as a snapshot, marked stale; one already
    // there gets nothing; one ahead of the copy is not moved back.
    let watch_from = |last_revision| {
        let cp = &cp;
        async move {
            let stream = cp
                .node_client()
                .await?
                .watch(watch_request(
                    format!("w-{last_revision}"),
                    "",
                    last_revision,
                ))
                .await?
                .into_inner();
            anyhow::Ok(stream)
        }
    };
    let mut fresh = watch_from(0).await?;
    let (revision, s) = next_snapshot(&mut fresh).await?;
    assert_eq!((revision, s.pools.len()), (1, 1));
    assert_eq!(s.stale.map(|s| s.replica), Some("control-1".into()));
    let mut ahead = watch_from(5).await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), next_event(&mut ahead))
            .await
            .is_err(),
        "nothing for a watcher ahead of the copy"
    );

    pg.restart()?;
    // Writes resume by themselves once the hub is back.
    let mut recovered = false;
    for _ in 0..100 {
        if c.create_pool(v1::CreatePoolRequest {
            pool: Some(pool("web")),
        })
        .await
        .is_ok()
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "writes work again after the database returns");
    let pools = c.list_pools(v1::ListPoolsRequest {}).await?.into_inner();
    let names: Vec<_> = pools.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["shop", "web"], "nothing committed before was lost");
    assert_eq!(pools.revision, 2);
    assert!(pools.stale.is_none(), "read from the database again");
    tandem_testkit::wait_http_ok(&cp.admin_url("/readyz"), Duration::from_secs(15)).await?;

    // The watchers opened during the outage carry on: revision 2 arrives.
    let ev = next_event(&mut fresh).await?;
    assert_eq!(ev.revision, 2);
    // The existing watch stream either delivers revision 2 or ends so the
    // watcher can reconnect; it must not deliver anything else.
    match next_event(&mut watch).await {
        Ok(ev) => assert_eq!(ev.revision, 2),
        Err(e) => match e.downcast_ref::<tonic::Status>() {
            Some(status) => assert_eq!(status.code(), Code::Unavailable),
            None => assert!(e.to_string().contains("stream ended"), "{e}"),
        },
    }
    Ok(())
}

/// An admin client of a replica that is still starting.
async fn connect_when_listening(cp: &ControlPlane) -> anyhow::Result<tandem_testkit::AuthedClient> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match cp.admin_client().await {
            Ok(c) => return Ok(c),
            Err(e) if std::time::Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn a_replica_that_never_reached_its_database_says_so_clearly() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    pg.stop()?;
    let database = format!("127.0.0.1:{}/postgres", pg.port());
    let mut cp = ControlPlane::start_with(
        &pg.url(),
        ControlPlaneOptions {
            skip_ready_wait: true,
            ..Default::default()
        },
    )
    .await?;
    // It answers (GetStatus at once), but has nothing to read from.
    let mut c = connect_when_listening(&cp).await?;
    let started = std::time::Instant::now();
    let status = c.get_status(v1::GetStatusRequest {}).await?.into_inner();
    assert!(!status.database_reachable);
    assert!(started.elapsed() < Duration::from_millis(500));
    let err = c.list_pools(v1::ListPoolsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message()
            .contains("control-1 has no copy of the configuration")
            && err.message().contains(&database)
            && err
                .message()
                .contains("not reached since this replica started"),
        "{}",
        err.message()
    );
    let err = cp
        .node_client()
        .await?
        .watch(watch_request("w", "", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    let err = c
        .create_pool(v1::CreatePoolRequest {
            pool: Some(pool("shop")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains(&database), "{}", err.message());

    // Once the database comes, it migrates and serves without a restart.
    pg.restart()?;
    cp.wait_ready().await?;
    c.create_pool(v1::CreatePoolRequest {
        pool: Some(pool("shop")),
    })
    .await?;
    let pools = c.list_pools(v1::ListPoolsRequest {}).await?.into_inner();
    assert!(pools.stale.is_none() && pools.pools.len() == 1);
    Ok(())
}

#[tokio::test]
async fn tokens_and_roles_are_enforced() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;

    let mut none = cp.client_with(None).await?;
    let err = none.list_pools(v1::ListPoolsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut wrong = cp.client_with(Some("not-the-token")).await?;
    let err = wrong.list_pools(v1::ListPoolsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(!err.message().contains(tandem_testkit::ADMIN_TOKEN));

    let mut node = cp.node_client().await?;
    let err = node
        .create_pool(v1::CreatePoolRequest {
            pool: Some(pool("shop")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    node.list_pools(v1::ListPoolsRequest {}).await?;

    let mut admin = cp.admin_client().await?;
    admin
        .create_pool(v1::CreatePoolRequest {
            pool: Some(pool("shop")),
        })
        .await?;
    let snap = admin
        .get_snapshot(v1::GetSnapshotRequest {})
        .await?
        .into_inner();
    assert_eq!(snap.revision, 1, "the node token's write changed nothing");
    assert!(
        !cp.process.logs().contains(tandem_testkit::ADMIN_TOKEN),
        "tokens are never logged"
    );
    Ok(())
}

// Multi-threaded: `terminate` blocks its thread while the client's
// connections must keep answering the server's GOAWAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_tools_see_health_and_reflection_and_sigterm_drains() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let mut cp = ControlPlane::start(&pg.url()).await?;
    let channel = tonic::transport::Channel::from_shared(cp.endpoint())?
        .connect()
        .await?;

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tandem.v1.ControlPlane".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await?
        .into_inner();
    let msg = resp.next().await.expect("a reflection answer")?;
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer {msg:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"tandem.v1.ControlPlane"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    // Metrics are exposed in Prometheus text.
    cp.admin_client()
        .await?
        .list_pools(v1::ListPoolsRequest {})
        .await?;
    let metrics = cp.metrics().await?;
    assert!(
        metrics.contains("tandem_control_requests_total"),
        "{metrics}"
    );

    // An open watch stream does not keep SIGTERM from finishing.
    let mut w = cp.node_client().await?;
    let _stream = w.watch(watch_request("w", "", 0)).await?;
    let status = cp.process.terminate(Duration::from_secs(15))?;
    assert!(status.success(), "exit status {status:?}");
    let logs = cp.process.logs();
    assert!(logs.contains("watch ended"), "{logs}");
    assert!(
        !logs.contains("drain deadline passed"),
        "open streams held shutdown: {logs}"
    );
    Ok(())
}
