//! "Why this backend", as an operator asks it: `tandemctl explain URL`
//! through the control plane (which asks the proxy on its admin port) and
//! `--admin` straight to the proxy, against a live platform: a control
//! replica, an agent probing three real backends, a proxy.
//!
//! The answer names the route a host and path take and why (an exact host
//! over a wildcard over any host, then the longest prefix), each backend's
//! tier and state (a backend failing its check shows as unhealthy with the
//! agents' reason, a backup as a backup), and the backend the policy picks
//! now: which must be the backend the next request goes to, explain after
//! explain (asking does not move the balancer).

use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::Value;
use tandem_proto::v1;
use tandem_testkit::agent::AgentProcess;
use tandem_testkit::backend::FakeBackend;
use tandem_testkit::proxy::ProxyProcess;
use tandem_testkit::served::checked_pool;
use tandem_testkit::served::quick_health_check;
use tandem_testkit::{ControlPlane, Postgres, declare_pool, http_client, wait_until};
use tandem_testkit::{Ran, tandemctl};

/// One backend's entry in an explain answer.
fn backend<'a>(v: &'a Value, address: &str) -> &'a Value {
    v["pool"]["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["address"] == address))
        .unwrap_or(&Value::Null)
}

fn ok(ran: Ran) -> anyhow::Result<String> {
    ensure!(
        ran.code == 0,
        "tandemctl failed ({:?}):\n{}{}",
        ran.code,
        ran.stdout,
        ran.stderr
    );
    Ok(ran.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_route_the_states_and_the_next_requests_backend() -> anyhow::Result<()> {
    tandem_testkit::init_crypto();
    let pg = Postgres::start()?;
    let control = ControlPlane::start(&pg.url()).await?;
    let web = FakeBackend::start_many("web", 3).await?;
    let addr: Vec<String> = web.iter().map(|b| b.address()).collect();
    let mut admin = control.admin_client().await?;
    let check = || quick_health_check(400);
    // Pool `shop` (every host, `/`): web-1 and web-2, web-3 a backup.
    declare_pool(&mut admin, checked_pool("shop", check()), &addr).await?;
    admin
        .update_backend(v1::UpdateBackendRequest {
            pool: "shop".into(),
            address: addr[2].clone(),
            role: Some(v1::BackendRole::Backup.into()),
            ..Default::default()
        })
        .await?;
    // Pool `api` for api.example.com/v1, and a wildcard route to `shop`.
    admin
        .create_pool(v1::CreatePoolRequest {
            pool: Some(checked_pool("api", check())),
        })
        .await?;
    admin
        .add_backend(v1::AddBackendRequest {
            pool: "api".into(),
            backend: Some(v1::Backend {
                address: addr[0].clone(),
                ..Default::default()
            }),
            expected_revision: None,
        })
        .await?;
    for (host, prefix, pool) in [
        ("api.example.com", "/v1", "api"),
        ("*.example.com", "/", "shop"),
    ] {
        admin
            .add_route(v1::AddRouteRequest {
                route: Some(v1::Route {
                    host: host.into(),
                    path_prefix: prefix.into(),
                    pool: pool.into(),
                    ..Default::default()
                }),
            })
            .await?;
    }
    let _agent = AgentProcess::start("agent-1", "zone-a", &control.endpoint()).await?;
    let proxy = ProxyProcess::following(&control.endpoint(), &[]).await?;
    let explain_json = |url: &str| {
        let admin = proxy.admin.to_string();
        // The proxy's /explain asks for its admin token.
        let token = tandem_testkit::proxy::PROXY_ADMIN_TOKEN;
        let args = [
            "explain", url, "--admin", &admin, "--token", token, "-o", "json",
        ];
        let ran = tandemctl(&control.endpoint(), &args);
        ok(ran).and_then(|s| Ok(serde_json::from_str::<Value>(&s)?))
    };

    // Every backend healthy per the agents.
    wait_until(Duration::from_secs(20), "all backends healthy", || async {
        explain_json("http://www.example.com/").is_ok_and(|v| {
            v["pool"]["backends"]
                .as_array()
                .is_some_and(|b| b.iter().all(|b| b["state"] == "healthy"))
        })
    })
    .await?;

    // The route: an exact host beats the wildcard and any host.
    let out = ok(tandemctl(
        &control.endpoint(),
        &["explain", "http://API.example.com:8080/v1/orders?x=1"],
    ))?;
    ensure!(
        out.contains("api.example.com /v1 -> pool api")
            && out.contains("also matching:")
            && out.contains("*.example.com / -> shop"),
        "{out}"
    );
    ensure!(
        out.contains("proxy-1 (admin "),
        "asked through the control plane: {out}"
    );
    // A host whose routes do not take the path falls through to the wildcard.
    let v = explain_json("api.example.com/v2")?;
    ensure!(v["route"]["host"] == "*.example.com", "{v}");

    // The pick is where the next request goes, explain after explain.
    let client = http_client();
    for _ in 0..4 {
        let v = explain_json("http://www.example.com/")?;
        let again = explain_json("http://www.example.com/")?;
        let pick = v["pool"]["pick"].as_str().context("a pick")?.to_string();
        ensure!(
            again["pool"]["pick"] == pick.as_str(),
            "asking moved the pick: {v} {again}"
        );
        let served = client
            .get(proxy.url("/"))
            .header("host", "www.example.com")
            .send()
            .await?
            .text()
            .await?;
        let expected = web
            .iter()
            .find(|b| b.address() == pick)
            .context("picked a backend")?;
        ensure!(
            served == expected.name(),
            "explain said {pick}, the request went to {served}"
        );
        ensure!(
            pick != addr[2],
            "a backup is never picked while primaries are healthy"
        );
    }

    // A backend failing its check: unhealthy, with the agents' reason; its
    // backup stays a backup.
    web[1].set_healthy(false).await?;
    wait_until(Duration::from_secs(20), "web-2 unhealthy", || async {
        explain_json("www.example.com").is_ok_and(|v| backend(&v, &addr[1])["state"] == "unhealthy")
    })
    .await?;
    let v = explain_json("www.example.com")?;
    let sick = backend(&v, &addr[1]);
    ensure!(
        sick["health_reason"]
            .as_str()
            .is_some_and(|r| r.contains("503"))
            && sick["eligible"] == false,
        "{v}"
    );
    ensure!(backend(&v, &addr[2])["tier"] == "backup", "{v}");
    let out = ok(tandemctl(
        &control.endpoint(),
        &["explain", "www.example.com", "--proxy", "proxy-1"],
    ))?;
    println!("{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with(&addr[1]))
        .context("web-2's row")?;
    ensure!(
        row.contains("unhealthy") && row.contains("agents:") && row.contains("503"),
        "{out}"
    );
    ensure!(!row.contains("<-"), "{out}");

    // Bad questions are refused, naming what is wrong.
    let ran = tandemctl(
        &control.endpoint(),
        &["explain", "www.example.com", "--proxy", "proxy-9"],
    );
    ensure!(
        ran.code == 3 && ran.stderr.contains("proxy-1"),
        "{}",
        ran.stderr
    );
    let admin_addr = proxy.admin.to_string();
    let ran = tandemctl(
        &control.endpoint(),
        &[
            "explain",
            "www.example.com",
            "--admin",
            &admin_addr,
            "--token",
            tandem_testkit::proxy::PROXY_ADMIN_TOKEN,
            "--client",
            "not-an-ip",
        ],
    );
    ensure!(
        ran.code == 2 && ran.stderr.contains("client"),
        "{}",
        ran.stderr
    );
    let ran = tandemctl(
        &control.endpoint(),
        &["explain", "http://www.example.com/%2F"],
    );
    ensure!(
        ran.code == 4 && ran.stderr.contains("path"),
        "{}",
        ran.stderr
    );
    let (status, body) = proxy.admin_get("/explain?host=a%20b").await?;
    ensure!(
        status == 400 && body.starts_with("host:"),
        "{status} {body}"
    );
    Ok(())
}
