//! End to end: the real `tandemctl` binary, driven as a subprocess against a
//! real `tandem-control` on a throwaway Postgres, the way an operator or a
//! script would use it.
//!
//! Needs the `tandem-control` binary built beside this test (`cargo build
//! --workspace --bins`); the test kit says so if it is missing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use tandem_proto::v1;
use tandem_testkit::{ADMIN_TOKEN, ControlPlane, NODE_TOKEN, Postgres, free_addr};

/// Exit codes documented in `tandemctl --help`.
const USAGE: i32 = 2;
const NOT_FOUND: i32 = 3;
const INVALID_ARGUMENT: i32 = 4;
const CONFLICT: i32 = 5;
const UNAVAILABLE: i32 = 6;
const AUTH: i32 = 7;
const NO_ANSWER: i32 = 8;

/// The arguments of a command line without quotes: `line` split at spaces.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// `tandemctl` pointed at one control plane with one token.
struct Ctl {
    endpoint: String,
    token: String,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ctl {
    fn new(cp: &ControlPlane, token: &str) -> Ctl {
        Ctl {
            endpoint: cp.endpoint(),
            token: token.into(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tandemctl"));
        c.args(args)
            .env("TANDEM_ENDPOINT", &self.endpoint)
            .env("TANDEM_TOKEN", &self.token)
            .env_remove("TANDEM_TOKEN_FILE")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("tandemctl runs");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code, 0,
            "tandemctl {args:?} failed:\n{}{}",
            r.stdout, r.stderr
        );
        assert!(r.stderr.is_empty(), "stderr on success: {}", r.stderr);
        r.stdout
    }

    /// Runs a command with `-o json` and parses what it printed.
    fn json(&self, args: &[&str]) -> Value {
        let args: Vec<&str> = args.iter().copied().chain(["-o", "json"]).collect();
        let out = self.ok(&args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: not JSON:\n{out}"))
    }

    /// Runs a command that must fail with `code` and one `error:` line.
    fn fails(&self, code: i32, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code, code,
            "tandemctl {args:?}: wrong exit code\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        assert!(r.stdout.is_empty(), "stdout on failure: {}", r.stdout);
        let line = r.stderr.strip_suffix('\n').unwrap_or(&r.stderr);
        assert!(
            line.starts_with("error: ") && !line.contains('\n'),
            "not one error line: {:?}",
            r.stderr
        );
        line.to_string()
    }
}

/// A running `tandemctl watch`, killed on drop, its stdout lines on a channel.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watch {
    fn start(ctl: &Ctl, args: &[&str]) -> Watch {
        let mut child = ctl
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("tandemctl watch starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watch { child, lines }
    }

    /// The next line, within a generous bound.
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(15))
            .expect("tandemctl watch printed a line in time")
    }

    /// The next line about the configuration, past the full health state
    /// every watch starts with.
    fn next_config_line(&self) -> String {
        loop {
            let line = self.next_line();
            if !line.starts_with("health full ") {
                return line;
            }
        }
    }

    /// The first line (of the next 20) that `found` accepts.
    fn find_line(&self, what: &str, found: impl Fn(&str) -> bool) -> String {
        let mut seen = Vec::new();
        for _ in 0..20 {
            let line = self.next_line();
            if found(&line) {
                return line;
            }
            seen.push(line);
        }
        panic!(
            "tandemctl watch never printed {what}; it printed:\n{}",
            seen.join("\n")
        );
    }

    /// SIGINT, as Ctrl-C sends it; returns the exit code.
    fn interrupt(mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal the watcher");
        for _ in 0..200 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn backend<'a>(pool: &'a Value, address: &str) -> &'a Value {
    pool["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["address"] == address))
        .unwrap_or_else(|| panic!("no backend {address} in {pool}"))
}

#[tokio::test]
async fn an_operator_sets_up_a_pool_and_scripts_read_it_back() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    let ctl = Ctl::new(&cp, ADMIN_TOKEN);

    // Create a pool with health-check flags; unset settings take defaults.
    let out = ctl.ok(&words(
        "pool create shop --policy least_connections --health-path /healthz \
         --health-interval 1s --health-fall 2 --health-rise 2 --max-request-body 1MiB",
    ));
    assert!(out.starts_with("pool/shop created (revision "), "{out}");

    // Two backends, one a backup; drain the primary; route a host to it.
    let out = ctl.ok(&["backend", "add", "shop", "127.0.0.1:3001", "--weight", "2"]);
    assert!(
        out.starts_with("backend 127.0.0.1:3001 in pool/shop added (revision "),
        "{out}"
    );
    let added = ctl.json(&["backend", "add", "shop", "127.0.0.1:3002", "--backup"]);
    assert_eq!(added["backend"]["role"], "backup");
    let out = ctl.ok(&["backend", "drain", "shop", "127.0.0.1:3001"]);
    assert!(out.contains("in pool/shop is now draining"), "{out}");
    let out = ctl.ok(&words("route add --host shop.local --prefix / --pool shop"));
    assert!(
        out.contains("route shop.local / -> pool/shop added"),
        "{out}"
    );

    // Tables for people.
    let table = ctl.ok(&["pool", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("NAME   POLICY"), "{table}");
    assert!(
        lines[1].starts_with("shop   least_connections   1/2 enabled"),
        "{table}"
    );
    assert!(
        lines[1].contains("http GET /healthz (200-399) every 1s"),
        "{table}"
    );
    // No agent runs here: nobody has checked either backend.
    let table = ctl.ok(&["backend", "list", "shop"]);
    assert_eq!(
        table,
        "\
ADDRESS          WEIGHT   ROLE      STATE      HEALTH
127.0.0.1:3001   2        primary   draining   unknown
127.0.0.1:3002   1        backup    enabled    unknown
"
    );
    let table = ctl.ok(&["route", "list"]);
    assert_eq!(
        table,
        "HOST         PREFIX   POOL\nshop.local   /        shop\n"
    );
    let detail = ctl.ok(&["pool", "get", "shop"]);
    assert!(
        detail.contains("policy:                 least_connections\n"),
        "{detail}"
    );

    // JSON for scripts: proto field names, lowercase enums.
    let list = ctl.json(&["pool", "list"]);
    let shop = &list["pools"][0];
    assert_eq!(shop["name"], "shop");
    assert_eq!(shop["policy"], "least_connections");
    let hc = &shop["health_check"];
    assert_eq!(hc["kind"], "http");
    assert_eq!(hc["path"], "/healthz");
    assert_eq!(hc["interval_ms"], 1000);
    assert_eq!(
        (hc["rise"].as_u64(), hc["fall"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(hc["timeout_ms"], 1000, "unset: the control plane's default");
    assert_eq!(shop["max_request_body_bytes"], 1_048_576);
    assert_eq!(shop["upstream_idle_timeout_ms"], 4_000, "a default");
    assert_eq!(shop["tunnel_idle_timeout_ms"], 300_000, "a default");
    let primary = backend(shop, "127.0.0.1:3001");
    assert_eq!(primary["weight"], 2);
    assert_eq!(primary["role"], "primary");
    assert_eq!(primary["admin_state"], "draining");
    assert_eq!(backend(shop, "127.0.0.1:3002")["role"], "backup");
    let revision = list["revision"].as_u64().expect("a revision");
    assert_eq!(revision, 5, "five changes so far");
    let routes = ctl.json(&["route", "list"]);
    assert_eq!(
        routes["routes"],
        serde_json::json!([{"host": "shop.local", "path_prefix": "/", "pool": "shop"}])
    );
    let snapshot = ctl.json(&["snapshot"]);
    assert_eq!(snapshot["revision"], revision);
    assert_eq!(
        snapshot["pools"][0]["backends"].as_array().map(Vec::len),
        Some(2)
    );
    assert!(
        ctl.ok(&["snapshot"])
            .starts_with("revision 5: 1 pool, 2 backends, 1 route\n")
    );

    // Status: revision, answering replica, database.
    let status = ctl.ok(&["status"]);
    assert!(status.contains("revision:  5\n"), "{status}");
    assert!(status.contains("replica:   control-1\n"), "{status}");
    assert!(status.contains("database:  reachable\n"), "{status}");
    assert!(
        status.contains("no proxies or agents have reported yet"),
        "{status}"
    );
    // A proxy two revisions behind shows up with its lag.
    cp.node_client()
        .await?
        .report_applied(v1::ReportAppliedRequest {
            node_id: "proxy-1".into(),
            kind: v1::NodeKind::Proxy.into(),
            revision: 3,
            zone: "zone-a".into(),
            detail: "serving from disk".into(),
            ..Default::default()
        })
        .await?;
    let status = ctl.ok(&["status"]);
    let rows: Vec<Vec<&str>> = status
        .lines()
        .skip_while(|l| !l.starts_with("NODE"))
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        rows[0],
        [
            "NODE",
            "KIND",
            "ZONE",
            "APPLIED",
            "LAG",
            "LAST SEEN",
            "REPLICA",
            "DETAIL"
        ],
        "{status}"
    );
    assert_eq!(
        &rows[1][..5],
        ["proxy-1", "proxy", "zone-a", "3", "2"],
        "{status}"
    );
    assert!(rows[1][5].ends_with("s ago"), "{status}");
    assert_eq!(
        &rows[1][6..],
        ["control-1", "serving from disk"],
        "{status}"
    );
    let status = ctl.json(&["status"]);
    assert_eq!(status["revision"], 5);
    assert_eq!(status["database_reachable"], true);
    assert_eq!(status["nodes"][0]["node_id"], "proxy-1");
    assert_eq!(status["nodes"][0]["kind"], "proxy");
    assert_eq!(status["nodes"][0]["lag"], 2);

    // Update with optimistic concurrency: the revision read is expected, so
    // a stale one is refused as a conflict.
    let pool_revision = ctl.json(&["pool", "get", "shop"])["revision"]
        .as_u64()
        .expect("a pool revision");
    let updated = ctl.json(&["pool", "update", "shop", "--policy", "ip_hash"]);
    assert_eq!(updated["pool"]["policy"], "ip_hash");
    assert_eq!(updated["pool"]["health_check"]["path"], "/healthz", "kept");
    let stale = pool_revision.to_string();
    let e = ctl.fails(
        CONFLICT,
        &[
            "pool",
            "update",
            "shop",
            "--retries",
            "2",
            "--expected-revision",
            &stale,
        ],
    );
    assert!(
        e.starts_with("error: FAILED_PRECONDITION: ") || e.starts_with("error: ABORTED: "),
        "{e}"
    );
    ctl.ok(&["pool", "update", "shop", "--retries", "2", "--force"]);

    // Mistakes: one line naming the field, a distinct exit code each.
    let e = ctl.fails(
        INVALID_ARGUMENT,
        &["pool", "create", "bad", "--health-interval", "10ms"],
    );
    assert!(
        e.starts_with("error: INVALID_ARGUMENT: pool.health_check.interval_ms: "),
        "{e}"
    );
    let e = ctl.fails(
        USAGE,
        &["pool", "create", "bad", "--health-interval", "soon"],
    );
    assert!(e.contains("invalid duration \"soon\""), "{e}");
    let e = ctl.fails(NOT_FOUND, &["pool", "get", "nope"]);
    assert!(e.starts_with("error: NOT_FOUND"), "{e}");
    ctl.fails(CONFLICT, &["pool", "create", "shop"]);
    let e = ctl.fails(CONFLICT, &["pool", "delete", "shop"]);
    assert!(e.contains("route"), "a route still targets it: {e}");

    // Credentials: a wrong token, no token, a read-only node token.
    let e = Ctl::new(&cp, "wrong-token").fails(AUTH, &["pool", "list"]);
    assert!(e.starts_with("error: UNAUTHENTICATED"), "{e}");
    let e = Ctl::new(&cp, "").fails(AUTH, &["pool", "list"]);
    assert!(e.contains("--token"), "a hint: {e}");
    let node = Ctl::new(&cp, NODE_TOKEN);
    node.ok(&["pool", "list"]);
    let e = node.fails(AUTH, &["pool", "delete", "shop"]);
    assert!(e.starts_with("error: PERMISSION_DENIED"), "{e}");

    // Tear down in order.
    ctl.ok(&["route", "delete", "--host", "shop.local", "--prefix", "/"]);
    ctl.ok(&["backend", "remove", "shop", "127.0.0.1:3002"]);
    let out = ctl.ok(&["pool", "delete", "shop"]);
    assert!(out.starts_with("pool/shop deleted (revision "), "{out}");
    assert!(ctl.ok(&["pool", "list"]).starts_with("no pools"));
    assert_eq!(ctl.json(&["pool", "list"])["pools"], serde_json::json!([]));

    // A control plane that is not there, then one endpoint of two that is.
    let nowhere = format!("http://{}", free_addr());
    let e = ctl.fails(NO_ANSWER, &["status", "--endpoint", &nowhere]);
    assert_eq!(
        e,
        format!("error: cannot reach the control plane at {nowhere}: connection refused")
    );
    let both = format!("{nowhere},{}", cp.endpoint());
    ctl.ok(&["status", "--endpoint", &both]);
    // A replica that accepts connections but never answers (paused, wedged)
    // is skipped too.
    let wedged = std::net::TcpListener::bind("127.0.0.1:0")?;
    let wedged = format!("http://{}", wedged.local_addr()?);
    let e = ctl.fails(
        NO_ANSWER,
        &["pool", "list", "--endpoint", &wedged, "--timeout", "1s"],
    );
    assert_eq!(e, "error: the control plane did not answer within 1s");
    let list = format!("{wedged},{}", cp.endpoint());
    ctl.ok(&["pool", "list", "--endpoint", &list, "--timeout", "1s"]);
    Ok(())
}

#[tokio::test]
async fn watch_prints_each_change_with_its_revision() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    let ctl = Ctl::new(&cp, ADMIN_TOKEN);
    ctl.ok(&["pool", "create", "shop"]);

    // Behind (at 0), each watcher first gets a snapshot: once it is printed
    // the watch is live and no later change can slip past it.
    let json = Watch::start(&ctl, &["watch", "-o", "json"]);
    let text = Watch::start(&ctl, &["watch"]);
    let first: Value = serde_json::from_str(&json.next_line())?;
    assert_eq!(first["revision"], 1);
    assert_eq!(first["snapshot"]["pools"][0]["name"], "shop");
    assert_eq!(
        text.next_line(),
        "revision=1 snapshot pools=1 backends=0 routes=0"
    );
    // Then the whole health state, empty here.
    let health: Value = serde_json::from_str(&json.next_line())?;
    assert_eq!(health["health"]["full"], true);
    assert_eq!(health["health"]["backends"], serde_json::json!([]));
    let line = text.next_line();
    assert!(
        line.starts_with("health full index=") && line.ends_with(" backends=0"),
        "{line}"
    );

    let created = ctl.json(&["pool", "create", "web", "--policy", "ip_hash"]);
    let revision = created["revision"].as_u64().expect("a revision");
    assert_eq!(revision, 2);
    let change: Value = serde_json::from_str(&json.next_line())?;
    assert_eq!(change["revision"], revision);
    assert_eq!(change["change"]["pool_upserted"]["name"], "web");
    assert_eq!(change["change"]["pool_upserted"]["policy"], "ip_hash");
    let line = text.next_line();
    assert!(
        line.starts_with("revision=2 pool_upserted pool=web policy=ip_hash"),
        "{line}"
    );

    ctl.ok(&["backend", "add", "web", "127.0.0.1:3001"]);
    let change: Value = serde_json::from_str(&json.next_line())?;
    assert_eq!(change["revision"], 3);
    assert_eq!(
        change["change"]["backend_upserted"]["backend"]["address"],
        "127.0.0.1:3001"
    );
    // Every change names who made it (here the admin token).
    assert_eq!(change["actor"], "admin (admin token)");
    assert_eq!(
        text.next_line(),
        "revision=3 backend_upserted pool=web address=127.0.0.1:3001 weight=1 role=primary state=enabled actor=\"admin (admin token)\""
    );

    // Resuming at the current revision: no snapshot, just what comes next.
    // (Had the flag been lost, a snapshot at revision 3 would come first.)
    let resumed = Watch::start(&ctl, &["watch", "--from-revision", "3"]);
    ctl.ok(&["backend", "drain", "web", "127.0.0.1:3001"]);
    let line = resumed.next_config_line();
    // If the drain committed before the watch was live, the control plane
    // sends a snapshot at 4 instead; either way nothing older is replayed.
    assert!(
        line == "revision=4 backend_upserted pool=web address=127.0.0.1:3001 weight=1 role=primary state=draining actor=\"admin (admin token)\""
            || line.starts_with("revision=4 snapshot "),
        "{line}"
    );

    // Ctrl-C ends a watch cleanly.
    assert_eq!(text.interrupt(), Some(0));
    Ok(())
}

/// Backends of the health story: one whose health check fails, one that
/// passes, one no agent probes.
const FAILING: &str = "127.0.0.1:9101";
const PASSING: &str = "127.0.0.1:9102";
const UNCHECKED: &str = "127.0.0.1:9103";

fn observation(address: &str, ok: bool) -> v1::Observation {
    v1::Observation {
        pool: "shop".into(),
        address: address.into(),
        ok,
        detail: if ok { "HTTP 200" } else { "HTTP 503" }.into(),
        latency_ms: 2,
    }
}

fn health_of<'a>(health: &'a Value, address: &str) -> &'a Value {
    health["backends"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["address"] == address))
        .unwrap_or_else(|| panic!("no health for {address} in {health}"))
}

/// A table's rows as cells (columns are three or more spaces apart).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn an_operator_sees_what_the_agents_decided() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    let ctl = Ctl::new(&cp, ADMIN_TOKEN);
    ctl.ok(&words(
        "pool create shop --health-interval 200ms --health-timeout 100ms \
         --health-fall 2 --health-rise 2",
    ));

    // Two watchers, for people and for scripts: live once they printed the
    // snapshot and the (empty) health state.
    let json = Watch::start(&ctl, &["watch", "-o", "json"]);
    let text = Watch::start(&ctl, &["watch"]);
    let snapshot: Value = serde_json::from_str(&json.next_line())?;
    assert_eq!(snapshot["snapshot"]["pools"][0]["name"], "shop");
    let full: Value = serde_json::from_str(&json.next_line())?;
    assert_eq!(full["health"]["full"], true);
    assert!(text.next_line().starts_with("revision=1 snapshot "));
    assert!(text.next_line().starts_with("health full index="));

    // The backends arrive on the watch, so the control plane's deciding
    // side knows them too before any agent reports.
    for address in [FAILING, PASSING, UNCHECKED] {
        ctl.ok(&["backend", "add", "shop", address]);
        let line = text.next_line();
        assert!(
            line.contains(&format!("backend_upserted pool=shop address={address} ")),
            "{line}"
        );
        let added: Value = serde_json::from_str(&json.next_line())?;
        assert_eq!(
            added["change"]["backend_upserted"]["backend"]["address"],
            address
        );
    }

    // Nobody has reported yet: every configured backend is unknown.
    let health = ctl.json(&["health"]);
    assert_eq!(health["leader"], "control-1");
    for address in [FAILING, PASSING, UNCHECKED] {
        let b = health_of(&health, address);
        assert_eq!(b["state"], "unknown", "{b}");
        assert_eq!(b["reason"], "no agent has reported on it yet", "{b}");
    }

    // An agent probes twice, an interval apart (fall 2, rise 2): FAILING
    // answers 503, PASSING 200.
    let mut agent = cp.node_client().await?;
    for _ in 0..2 {
        agent
            .report_health(v1::ReportHealthRequest {
                agent_id: "agent-1".into(),
                zone: "z1".into(),
                observations: vec![observation(FAILING, false), observation(PASSING, true)],
            })
            .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The watchers show the transition as it is committed.
    let line = text.find_line("FAILING going down", |l| {
        l.starts_with(&format!("health pool=shop backend={FAILING} "))
    });
    assert_eq!(
        line,
        format!(
            "health pool=shop backend={FAILING} unknown→unhealthy reason=\"HTTP 503 from 1/1 agent\""
        )
    );
    let event = json.find_line("FAILING unhealthy", |l| {
        l.contains(&format!("\"address\":\"{FAILING}\"")) && l.contains("\"unhealthy\"")
    });
    let event: Value = serde_json::from_str(&event)?;
    assert_eq!(event["health"]["full"], false);
    let b = health_of(&event["health"], FAILING);
    assert_eq!(b["reason"], "HTTP 503 from 1/1 agent");
    assert_eq!(b["agents"][0]["agent_id"], "agent-1");
    assert_eq!(b["agents"][0]["healthy"], false);

    // `status -o json`: the decision, with its reason and the agent's view,
    // beside the configured backend nobody checks.
    let status = ctl.json(&["status"]);
    let health = &status["health"];
    assert_eq!(health["leader"], "control-1");
    assert!(health["term"].as_u64() >= Some(1), "{health}");
    let failing = health_of(health, FAILING);
    assert_eq!(failing["state"], "unhealthy");
    assert_eq!(failing["reason"], "HTTP 503 from 1/1 agent");
    assert!(failing["since_unix_ms"].as_i64() > Some(0), "{failing}");
    assert_eq!(failing["agents"][0]["last_detail"], "HTTP 503");
    assert_eq!(health_of(health, PASSING)["state"], "healthy");
    assert_eq!(health_of(health, UNCHECKED)["state"], "unknown");

    // The table, in `status` and alone.
    let status = ctl.ok(&["status"]);
    assert!(
        status.contains("\nhealth decided by control-1 (term "),
        "{status}"
    );
    let table = ctl.ok(&["health"]);
    let cells = rows(&table);
    assert!(
        cells[0][0].starts_with("health decided by control-1"),
        "{table}"
    );
    assert_eq!(
        cells[1],
        ["POOL", "BACKEND", "STATE", "SINCE", "REASON", "AGENTS"],
        "{table}"
    );
    let failing = cells
        .iter()
        .find(|r| r.get(1).map(String::as_str) == Some(FAILING))
        .unwrap_or_else(|| panic!("no row for {FAILING}:\n{table}"));
    assert_eq!(&failing[..3], ["shop", FAILING, "unhealthy"], "{table}");
    assert!(failing[3].ends_with("s ago"), "{table}");
    assert_eq!(
        &failing[4..],
        ["HTTP 503 from 1/1 agent", "agent-1:down(HTTP 503)"],
        "{table}"
    );
    assert!(
        cells.contains(&vec![
            "shop".into(),
            UNCHECKED.into(),
            "unknown".into(),
            "-".into(),
            "no agent has reported on it yet".into(),
            "-".into(),
        ]),
        "{table}"
    );
    assert!(
        status.ends_with(&table),
        "status ends with the same table:\n{status}"
    );
    let only = ctl.json(&["health", "--pool", "shop"]);
    assert_eq!(only["backends"].as_array().map(Vec::len), Some(3));
    let e = ctl.fails(NOT_FOUND, &["health", "--pool", "nope"]);
    assert!(e.starts_with("error: NOT_FOUND"), "{e}");
    let list = ctl.ok(&["backend", "list", "shop"]);
    let health_column: Vec<String> = rows(&list)
        .iter()
        .filter_map(|r| r.get(4).cloned())
        .collect();
    assert_eq!(
        health_column,
        ["HEALTH", "unhealthy", "healthy", "unknown"],
        "{list}"
    );

    // A single control replica is a raft group of one and leads itself.
    let cluster = ctl.json(&["cluster", "status"]);
    assert_eq!(cluster["role"], "leader", "{cluster}");
    assert_eq!(cluster["leader_id"], cluster["replica_id"], "{cluster}");
    assert!(cluster["term"].as_u64() >= Some(1), "{cluster}");
    assert!(
        cluster["applied_index"].as_u64() >= Some(1)
            && cluster["commit_index"].as_u64() >= cluster["applied_index"].as_u64(),
        "{cluster}"
    );
    let cluster = ctl.ok(&["cluster", "status"]);
    assert!(
        cluster.starts_with("replica:        control-1\nrole:           leader\nleader:         control-1\nterm:           "),
        "{cluster}"
    );
    Ok(())
}

#[tokio::test]
async fn with_the_database_down_reads_warn_and_writes_exit_6_naming_it() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    let database = format!("127.0.0.1:{}/postgres", pg.port());
    let ctl = Ctl::new(&cp, ADMIN_TOKEN);
    ctl.ok(&["pool", "create", "shop"]);
    ctl.ok(&words("route add --host shop.local --prefix / --pool shop"));

    pg.stop()?;
    let readyz = tandem_testkit::http_client();
    tandem_testkit::wait_until(Duration::from_secs(5), "the replica to notice", || {
        let req = readyz.get(cp.admin_url("/readyz")).send();
        async move { matches!(req.await, Ok(r) if r.status() == 503) }
    })
    .await?;

    // Reads answer from memory: the data on stdout, one warning on stderr.
    let r = ctl.run(&["pool", "list"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("shop"), "{}", r.stdout);
    let warning = r.stderr.strip_suffix('\n').unwrap_or(&r.stderr);
    assert!(
        warning.starts_with("warning: control-1 answered from its copy in memory (revision 2): it cannot reach its database ")
            && warning.contains(&database)
            && warning.ends_with("changes made since may be missing")
            && !warning.contains('\n'),
        "{:?}",
        r.stderr
    );
    let r = ctl.run(&["pool", "list", "-o", "json"]);
    let json: Value = serde_json::from_str(&r.stdout)?;
    assert_eq!(json["revision"], 2);
    assert_eq!(json["stale"]["database"], database.as_str());
    assert_eq!(json["stale"]["replica"], "control-1");
    assert!(r.stderr.starts_with("warning: "), "{}", r.stderr);
    for read in [
        &["route", "list"][..],
        &["snapshot"],
        &["pool", "get", "shop"],
    ] {
        let r = ctl.run(read);
        assert_eq!(r.code, 0, "{read:?}: {}", r.stderr);
        assert!(
            r.stderr
                .starts_with("warning: control-1 answered from its copy"),
            "{read:?}: {}",
            r.stderr
        );
    }
    let r = ctl.run(&["status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("database:  UNREACHABLE"), "{}", r.stdout);
    // A watch starts from the copy: its snapshot says so, in the JSON and
    // on stderr.
    let mut watch = ctl
        .command(&["watch", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut first = String::new();
    BufReader::new(watch.stdout.take().expect("piped")).read_line(&mut first)?;
    let _ = watch.kill();
    let out = watch.wait_with_output()?;
    let first: Value = serde_json::from_str(&first)?;
    assert_eq!(
        first["snapshot"]["stale"]["replica"], "control-1",
        "{first}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("warning: control-1 answered from its copy in memory (revision 2)"),
        "{stderr}"
    );

    // A write: exit 6 at once, naming the database and who answered.
    let started = std::time::Instant::now();
    let e = ctl.fails(UNAVAILABLE, &["pool", "create", "web"]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        e.starts_with("error: UNAVAILABLE: the control-plane database ")
            && e.contains(&database)
            && e.ends_with(&format!("(answered by {})", cp.endpoint())),
        "{e}"
    );

    // The database back: the same command works, reads carry no warning.
    pg.restart()?;
    tandem_testkit::wait_until(Duration::from_secs(15), "writes to work again", || {
        let ok = ctl.run(&["pool", "create", "web"]).code == 0;
        async move { ok }
    })
    .await?;
    let out = ctl.ok(&["pool", "list"]);
    assert!(out.contains("web"), "{out}");
    Ok(())
}

#[tokio::test]
async fn tls_to_backends_is_set_shown_and_its_ca_bundle_checked() -> anyhow::Result<()> {
    let pg = Postgres::start()?;
    let cp = ControlPlane::start(&pg.url()).await?;
    let ctl = Ctl::new(&cp, ADMIN_TOKEN);
    let ca = tandem_testkit::certs::TestCa::new("internal CA")?;
    let ca_file = ca.cert_path().display().to_string();

    ctl.ok(&[
        "pool",
        "create",
        "api",
        "--backend-tls",
        "--backend-ca-file",
        &ca_file,
        "--backend-sni",
        "api.internal",
    ]);
    let shown = ctl.ok(&["pool", "get", "api"]);
    assert!(
        shown.contains(
            "on, verified against the pool's CA bundle (1 certificate), SNI api.internal"
        ),
        "{shown}"
    );
    let json = ctl.json(&["pool", "get", "api"]);
    assert_eq!(
        json["backend_tls"]["verify_against"], "pool bundle",
        "{json}"
    );
    assert_eq!(json["backend_tls"]["sni"], "api.internal");

    // No verification is possible only by saying so, and it shows.
    ctl.ok(&["pool", "update", "api", "--backend-tls-insecure"]);
    let shown = ctl.ok(&["pool", "get", "api"]);
    assert!(
        shown.contains("on, NOT VERIFIED (--backend-tls-insecure), SNI api.internal"),
        "{shown}"
    );
    assert_eq!(
        ctl.json(&["pool", "get", "api"])["backend_tls"]["insecure"],
        true
    );
    // A bundle turns verification back on; --no-backend-tls turns TLS off.
    ctl.ok(&["pool", "update", "api", "--backend-ca-file", &ca_file]);
    assert_eq!(
        ctl.json(&["pool", "get", "api"])["backend_tls"]["insecure"],
        false
    );
    ctl.ok(&["pool", "update", "api", "--no-backend-tls"]);
    let shown = ctl.ok(&["pool", "get", "api"]);
    assert!(shown.contains("off (plain HTTP)"), "{shown}");
    assert!(
        ctl.json(&["pool", "get", "api"])
            .get("backend_tls")
            .is_none()
    );

    // A bundle whose certificate does not parse is refused by the control
    // plane, naming the field; nothing changes.
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.pem");
    std::fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )?;
    let e = ctl.fails(
        INVALID_ARGUMENT,
        &[
            "pool",
            "update",
            "api",
            "--backend-ca-file",
            &bad.display().to_string(),
        ],
    );
    assert!(e.contains("pool.backend_tls.ca_pem"), "{e}");
    // And an SNI that is no name.
    let e = ctl.fails(
        INVALID_ARGUMENT,
        &[
            "pool",
            "update",
            "api",
            "--backend-tls",
            "--backend-sni",
            "not a name",
        ],
    );
    assert!(e.contains("pool.backend_tls.sni"), "{e}");
    let shown = ctl.ok(&["pool", "get", "api"]);
    assert!(shown.contains("off (plain HTTP)"), "{shown}");
    Ok(())
}
