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
use tandem_testkit::served::wait_node;
use tandem_testkit::tcp::Echo;
use tandem_testkit::{ADMIN_TOKEN, ControlPlane, Postgres, bin_path, free_addr, wait_until};
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

/// `tandemctl route add --tcp`: a route from `listen` to the pool `echo`.
fn add_route(cp: &ControlPlane, listen: SocketAddr) -> anyhow::Result<String> {
    let listen = listen.to_string();
    tandemctl(
        cp,
        &[
            "route", "add", "--tcp", "--listen", &listen, "--pool", "echo",
        ],
    )
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

/// Waits (up to 10 s) until the connection no longer echoes (closed by
/// the proxy).
async fn until_closed(c: &mut BufReader<TcpStream>, what: &str) -> anyhow::Result<()> {
    let within = Duration::from_secs(10);
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        if echoes(c).await.is_err() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("timed out after {within:?} waiting for {what}")
}

/// The connection still echoes after `wait` (`what` says why it should).
async fn open_after(
    c: &mut BufReader<TcpStream>,
    wait: Duration,
    what: &str,
) -> anyhow::Result<()> {
    tokio::time::sleep(wait).await;
    echoes(c)
        .await
        .map_err(|e| anyhow::anyhow!("closed after {wait:?} ({what}): {e}"))
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
    let proxy = ProxyProcess::following(&cp.endpoint(), &[]).await?;

    // A route added while the proxy runs: it listens within moments.
    let (a, b) = (free_addr(), free_addr());
    let out = add_route(&cp, a)?;
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
    add_route(&cp, b)?;
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
    add_route(&cp, busy)?;
    let mut status = cp.node_client().await?;
    wait_node(
        &status,
        Duration::from_secs(15),
        "the unbound listener in status",
        "proxy-1",
        |n| {
            n.listeners
                .iter()
                .any(|l| l.listen == busy.to_string() && !l.bound && l.error.contains("in use"))
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

/// `--on-unhealthy close` with a grace: a connection to a backend the
/// agents mark unhealthy goes on for the grace, then is closed; removing
/// the backend closes it too; with `keep` it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_an_unhealthy_or_removed_backend_close_after_the_grace_or_are_kept()
-> anyhow::Result<()> {
    use std::net::IpAddr;
    use tandem_testkit::agent::AgentProcess;
    use tandem_testkit::free_addr_on;
    use tandem_testkit::tcp::PrimaryResponder;

    let db = Postgres::start()?;
    let cp = ControlPlane::start(&db.url()).await?;
    let host = IpAddr::from([127, 0, 0, 7]);
    let echo = Echo::start_on("echo", host).await?;
    let check = PrimaryResponder::start(host, free_addr_on(host).port(), true).await?;
    let health_port = check.addr.port().to_string();
    tandemctl(
        &cp,
        &[
            "pool",
            "create",
            "echo",
            "--health-path",
            "/primary",
            "--health-port",
            &health_port,
            "--health-interval",
            "200ms",
            "--health-timeout",
            "150ms",
            "--health-rise",
            "1",
            "--health-fall",
            "1",
            "--on-unhealthy",
            "close",
            "--unhealthy-grace",
            "2s",
        ],
    )?;
    tandemctl(&cp, &["backend", "add", "echo", &echo.address()])?;
    let listen = free_addr();
    add_route(&cp, listen)?;
    let _agent = AgentProcess::start("agent-1", "zone-a", &cp.endpoint()).await?;
    let proxy = ProxyProcess::following(&cp.endpoint(), &[]).await?;
    let health = cp.node_client().await?;
    let state_is = |want: v1::HealthState| {
        let health = health.clone();
        move || {
            let mut health = health.clone();
            async move {
                health
                    .get_health(v1::GetHealthRequest {})
                    .await
                    .is_ok_and(|h| {
                        h.into_inner()
                            .backends
                            .iter()
                            .any(|b| b.state == want as i32)
                    })
            }
        }
    };
    // Once the agents find the backend healthy and the route serves: a
    // connection through it.
    let healthy_and_open = |what: &'static str| {
        let healthy = state_is(v1::HealthState::Healthy);
        async move {
            wait_until(Duration::from_secs(15), what, healthy).await?;
            wait_until(Duration::from_secs(10), "the route to serve", || {
                serves(listen)
            })
            .await?;
            open(listen).await
        }
    };
    // The backend's check fails: once the agents find it unhealthy.
    let fails_its_check = |what: &'static str| {
        check.set_primary(false);
        wait_until(
            Duration::from_secs(10),
            what,
            state_is(v1::HealthState::Unhealthy),
        )
    };

    // close, 2 s of grace: still open a second after it turned unhealthy,
    // closed a few seconds later.
    let mut conn = healthy_and_open("the backend healthy").await?;
    fails_its_check("the backend unhealthy").await?;
    let second = Duration::from_secs(1);
    open_after(&mut conn, second, "the grace is 2 s").await?;
    until_closed(&mut conn, "the connection closed after the grace").await?;

    // Removing the backend closes what is open to it (close, 2 s grace).
    check.set_primary(true);
    let mut last = healthy_and_open("healthy again").await?;
    tandemctl(&cp, &["backend", "remove", "echo", &echo.address()])?;
    until_closed(&mut last, "the removed backend's connection closed").await?;

    // keep: the connection outlives the backend's health. (Added again,
    // the backend starts afresh: the control plane forgot its history.)
    tandemctl(&cp, &["pool", "update", "echo", "--on-unhealthy", "keep"])?;
    tandemctl(&cp, &["backend", "add", "echo", &echo.address()])?;
    let mut kept = healthy_and_open("healthy once added again").await?;
    fails_its_check("unhealthy again").await?;
    let grace_and_more = Duration::from_secs(3);
    open_after(&mut kept, grace_and_more, "on-unhealthy keep").await?;
    let (_, metrics) = proxy.admin_get("/metrics").await?;
    for reason in ["unhealthy", "removed"] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"}} 1"))
                || metrics.contains(&format!("reason=\"{reason}\"}} 2")),
            "closed for {reason}: {metrics}"
        );
    }
    Ok(())
}
