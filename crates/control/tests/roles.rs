//! Identities and the authorization table, against a real replica: per-name
//! credentials from the access file (re-read when it changes), roles, a
//! pool-scoped admin, reports only for oneself, raft only from replicas,
//! the actor of each change in Watch, and the refusal to start with the
//! shipped example secrets.

use std::time::Duration;

use tandem_client::Bearer;
use tandem_proto::v1;
use tandem_proto::v1::raft_client::RaftClient;
use tandem_testkit::{
    ControlPlane, ControlPlaneOptions, Grant, NODE_TOKEN, PEER_TOKEN, Postgres, write_access_file,
};
use tokio_stream::StreamExt;
use tonic::Code;

const ALICE: &str = "alice-token-0123456789";
const SHOP_TEAM: &str = "shop-team-token-0123456789";
const ONCALL: &str = "oncall-token-0123456789";
const AGENT_1: &str = "agent-1-token-0123456789";
const PROXY_1: &str = "proxy-1-token-0123456789";

fn grants() -> Vec<Grant<'static>> {
    vec![
        Grant {
            name: "alice",
            role: "admin",
            token: ALICE,
            pools: None,
        },
        Grant {
            name: "shop-team",
            role: "admin",
            token: SHOP_TEAM,
            pools: Some(&["shop"]),
        },
        Grant {
            name: "oncall",
            role: "operator",
            token: ONCALL,
            pools: None,
        },
        Grant {
            name: "agent-1",
            role: "agent",
            token: AGENT_1,
            pools: None,
        },
        Grant {
            name: "proxy-1",
            role: "proxy",
            token: PROXY_1,
            pools: None,
        },
    ]
}

fn pool(name: &str) -> v1::Pool {
    v1::Pool {
        name: name.into(),
        ..Default::default()
    }
}

fn backend(pool: &str, address: &str) -> v1::AddBackendRequest {
    v1::AddBackendRequest {
        pool: pool.into(),
        backend: Some(v1::Backend {
            address: address.into(),
            ..Default::default()
        }),
        expected_revision: None,
    }
}

fn health(agent: &str) -> v1::ReportHealthRequest {
    v1::ReportHealthRequest {
        agent_id: agent.into(),
        zone: "z1".into(),
        observations: vec![v1::Observation {
            pool: "shop".into(),
            address: "127.0.0.1:9101".into(),
            ok: true,
            ..Default::default()
        }],
    }
}

async fn step_raft(cp: &ControlPlane, token: &str) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(cp.endpoint())
        .expect("endpoint")
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut raft = RaftClient::with_interceptor(channel, Bearer::new(Some(token)).expect("token"));
    // No messages: authorization is all that is asked.
    raft.step(v1::RaftBatch { messages: vec![] })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn each_identity_may_do_what_its_role_allows_and_no_more() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let dir = tempfile::tempdir()?;
    let access = dir.path().join("access.json");
    write_access_file(&access, &grants(), &[])?;
    let cp = ControlPlane::start_with(
        &pg.url(),
        ControlPlaneOptions {
            env: vec![(
                "TANDEM_ACCESS_FILE".into(),
                access.to_string_lossy().into_owned(),
            )],
            ..Default::default()
        },
    )
    .await?;

    // The actor of every change is on the Watch stream (an operator may
    // watch).
    let mut oncall = cp.client_with(Some(ONCALL)).await?;
    let mut stream = oncall
        .watch(v1::WatchRequest {
            node_id: "oncall-cli".into(),
            kind: v1::NodeKind::Cli.into(),
            ..Default::default()
        })
        .await?
        .into_inner();

    let mut alice = cp.client_with(Some(ALICE)).await?;
    for name in ["shop", "billing"] {
        alice
            .create_pool(v1::CreatePoolRequest {
                pool: Some(pool(name)),
            })
            .await?;
    }

    // A pool-scoped admin: its pool, not another, not the cluster.
    let mut shop_team = cp.client_with(Some(SHOP_TEAM)).await?;
    shop_team
        .add_backend(backend("shop", "127.0.0.1:9101"))
        .await?;
    let e = shop_team
        .add_backend(backend("billing", "127.0.0.1:9201"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(
        e.message(),
        "shop-team may change only the pools shop, not \"billing\""
    );
    let e = shop_team
        .remove_member(v1::RemoveMemberRequest { id: 2 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    shop_team.list_pools(v1::ListPoolsRequest {}).await?;

    // An operator reads and cannot write.
    oncall.list_pools(v1::ListPoolsRequest {}).await?;
    let e = oncall
        .add_backend(backend("shop", "127.0.0.1:9102"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::PermissionDenied,
            "oncall (role operator) may not call AddBackend"
        )
    );

    // An agent reports for itself only.
    let mut agent = cp.client_with(Some(AGENT_1)).await?;
    agent.report_health(health("agent-1")).await?;
    let e = agent.report_health(health("agent-2")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::PermissionDenied,
            "agent-1 (role agent) may report only for itself, not for \"agent-2\" (agent_id)"
        )
    );
    // The shared node token still reports (older setups), unchecked.
    cp.node_client()
        .await?
        .report_health(health("agent-2"))
        .await?;

    // Raft only from replicas: not a proxy, not the node token.
    let e = step_raft(&cp, PROXY_1).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::PermissionDenied,
            "proxy-1 (role proxy) may not call Step"
        )
    );
    let e = step_raft(&cp, NODE_TOKEN).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    step_raft(&cp, PEER_TOKEN).await?;

    // Who made each change, as it happened.
    let mut actors = Vec::new();
    while actors.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await?
            .expect("stream open")?;
        if let Some(v1::watch_event::Event::Change(_)) = event.event {
            actors.push(event.actor);
        }
    }
    assert_eq!(
        actors,
        [
            "alice (access-file token)",
            "alice (access-file token)",
            "shop-team (access-file token)"
        ]
    );
    // And in the log.
    let db = sqlx::PgPool::connect(&pg.url()).await?;
    let logged: Vec<Option<String>> =
        sqlx::query_scalar("SELECT actor FROM change_log ORDER BY revision")
            .fetch_all(&db)
            .await?;
    assert_eq!(logged, actors.iter().cloned().map(Some).collect::<Vec<_>>());

    // A revoked name is refused once the file changes, without a restart.
    write_access_file(&access, &grants(), &["agent-1"])?;
    let e = agent.report_health(health("agent-1")).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::PermissionDenied,
            "agent-1 is revoked (the deny list of the access file)"
        )
    );
    alice.list_pools(v1::ListPoolsRequest {}).await?;
    Ok(())
}

#[tokio::test]
async fn the_shipped_example_token_stops_the_start_unless_dev() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let example = "compose-admin-token-change-me";
    let mut refused = ControlPlane::start_with(
        &pg.url(),
        ControlPlaneOptions {
            env: vec![("TANDEM_ADMIN_TOKEN".into(), example.into())],
            skip_ready_wait: true,
            ..Default::default()
        },
    )
    .await?;
    let start = std::time::Instant::now();
    while refused.process.is_running() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still running: {}",
            refused.process.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = refused.process.logs();
    let line = "refusing to start: TANDEM_ADMIN_TOKEN holds a shipped example secret \
                (*-change-me); set your own, or TANDEM_DEV=1 (--dev) for a development setup";
    assert!(logs.contains(line), "{logs}");
    assert!(
        !logs.contains(example),
        "the secret itself is not logged: {logs}"
    );

    let dev = ControlPlane::start_with(
        &pg.url(),
        ControlPlaneOptions {
            env: vec![
                ("TANDEM_ADMIN_TOKEN".into(), example.into()),
                ("TANDEM_DEV".into(), "1".into()),
            ],
            ..Default::default()
        },
    )
    .await?;
    dev.client_with(Some(example))
        .await?
        .list_pools(v1::ListPoolsRequest {})
        .await?;
    Ok(())
}
