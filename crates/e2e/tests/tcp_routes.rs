//! TCP routes follow the configuration through `tandemctl`, as an operator
//! would drive them: `route add --tcp` opens a listener on a running proxy
//! without a restart, a second one leaves the first's connections alone,
//! `route list` shows both, `route delete --tcp` closes the listener while
//! its connections go on, and a route on a port the proxy cannot bind is
//! reported in `tandemctl status`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tandem_proto::v1;
use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::tcp::Echo;
use tandem_testkit::{
    ADMIN_TOKEN, ControlPlane, NODE_TOKEN, Postgres, bin_path, free_addr, wait_until,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Runs `tandemctl` against `cp` and returns its standard output.
fn tandemctl(cp: &ControlPlane, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin_path("tandemctl"))
        .args(args)
        .env("TANDEM_ENDPOINT", cp.endpoint())
        .env("TANDEM_TOKEN", ADMIN_TOKEN)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "tandemctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// A connection through `addr` that has read its greeting.
async fn open(addr: SocketAddr) -> anyhow::Result<BufReader<TcpStream>> {
    let mut r = BufReader::new(TcpStream::connect(addr).await?);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await??;
    anyhow::ensure!(line == "hello echo\n", "greeting {line:?}");
    Ok(r)
}

async fn echoes(c: &mut BufReader<TcpStream>) -> anyhow::Result<()> {
    c.get_mut().write_all(b"still here\n").await?;
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_line(&mut line)).await??;
    anyhow::ensure!(line == "still here\n", "echo {line:?}");
    Ok(())
}

async fn serves(addr: SocketAddr) -> bool {
    open(addr).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_routes_open_and_close_on_a_running_proxy_and_unbindable_ports_are_reported()
-> anyhow::Result<()> {
    let db = Postgres::start()?;
    let cp = ControlPlane::start(&db.url()).await?;
    let echo = Echo::start("echo").await?;
    tandemctl(
        &cp,
        &["pool", "create", "echo", "--policy", "least_connections"],
    )?;
    tandemctl(&cp, &["backend", "add", "echo", &echo.address()])?;
    let proxy = ProxyProcess::start(
        tempfile::tempdir()?,
        &cp.endpoint(),
        &[
            ("TANDEM_TOKEN", NODE_TOKEN.into()),
            ("TANDEM_NODE_ID", "proxy-1".into()),
        ],
    )?;
    proxy.wait_ready().await?;

    // A route added while the proxy runs: it listens within moments.
    let (a, b) = (free_addr(), free_addr());
    let out = tandemctl(
        &cp,
        &[
            "route",
            "add",
            "--tcp",
            "--listen",
            &a.to_string(),
            "--pool",
            "echo",
        ],
    )?;
    assert!(
        out.starts_with(&format!("tcp route {a} -> pool/echo added")),
        "{out}"
    );
    wait_until(Duration::from_secs(10), "the first route to serve", || {
        serves(a)
    })
    .await?;
    let mut long_lived = open(a).await?;

    // A second route: the first's connection is not disturbed.
    tandemctl(
        &cp,
        &[
            "route",
            "add",
            "--tcp",
            "--listen",
            &b.to_string(),
            "--pool",
            "echo",
        ],
    )?;
    wait_until(Duration::from_secs(10), "the second route to serve", || {
        serves(b)
    })
    .await?;
    echoes(&mut long_lived).await?;
    let list = tandemctl(&cp, &["route", "list"])?;
    assert!(list.contains("TCP LISTEN"), "{list}");
    assert!(
        list.contains(&format!("{a}   echo")) && list.contains(&format!("{b}   echo")),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&tandemctl(&cp, &["route", "list", "-o", "json"])?)?;
    assert_eq!(
        json["tcp_routes"].as_array().map(Vec::len),
        Some(2),
        "{json}"
    );

    // Deleting the first closes its listener; its connection goes on.
    tandemctl(
        &cp,
        &["route", "delete", "--tcp", "--listen", &a.to_string()],
    )?;
    wait_until(
        Duration::from_secs(10),
        "the first listener to close",
        || async move { TcpStream::connect(a).await.is_err() },
    )
    .await?;
    echoes(&mut long_lived).await?;
    assert!(serves(b).await, "the other route still serves");

    // A port the proxy cannot bind: reported for that proxy in status.
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let busy = taken.local_addr()?;
    tandemctl(
        &cp,
        &[
            "route",
            "add",
            "--tcp",
            "--listen",
            &busy.to_string(),
            "--pool",
            "echo",
        ],
    )?;
    let mut status = cp.node_client().await?;
    wait_until(
        Duration::from_secs(15),
        "the unbound listener in status",
        || {
            let mut status = status.clone();
            async move {
                let Ok(s) = status.get_status(v1::GetStatusRequest {}).await else {
                    return false;
                };
                s.into_inner().nodes.iter().any(|n| {
                    n.node_id == "proxy-1"
                        && n.listeners.iter().any(|l| {
                            l.listen == busy.to_string() && !l.bound && l.error.contains("in use")
                        })
                })
            }
        },
    )
    .await?;
    let text = tandemctl(&cp, &["status"])?;
    assert!(
        text.contains(&format!(
            "proxy-1: tcp listener {busy} (pool/echo) NOT BOUND: Address already in use"
        )),
        "{text}"
    );
    assert!(
        proxy
            .process
            .logs()
            .contains("cannot bind the tcp listener")
    );
    // The bound one is listed as such.
    let s = status
        .get_status(v1::GetStatusRequest {})
        .await?
        .into_inner();
    let node = s
        .nodes
        .iter()
        .find(|n| n.node_id == "proxy-1")
        .expect("the proxy reported");
    assert!(
        node.listeners
            .iter()
            .any(|l| l.listen == b.to_string() && l.bound),
        "{node:?}"
    );
    drop(taken);
    Ok(())
}
