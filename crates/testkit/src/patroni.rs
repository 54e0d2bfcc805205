//! Real high-availability Postgres for tests: a three-member etcd
//! (Debian's `etcd-server`) and Patroni clusters (Debian's `patroni`)
//! managing streaming replication between real Postgres servers, each
//! member on a loopback "host" of its own (`127.0.0.x`).
//!
//! A member's host is its Patroni process and the Postgres it runs:
//! [`PatroniCluster::kill_host`] kills both at once, as a lost machine
//! would; [`PatroniCluster::kill_postgres`] kills only Postgres (Patroni
//! stays and restarts it). Patroni's REST API answers on the same port on
//! every member's address, as in Patroni's reference setup where HAProxy
//! checks `/primary` on port 8008 of each host.
//!
//! Timers are Patroni's `ttl`, `loop_wait` and `retry_timeout`, set low
//! in tests ([`PatroniOptions::fast`]) since they set the failover time.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::{Process, free_addr_on, http_client};

/// Where Debian's packages put the programs; `apt-get install patroni
/// etcd-server etcd-client` provides them (scripts/test.sh does).
fn require(program: &str, package: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{program} not found: apt-get install {package} (scripts/test.sh installs it)")
}

/// The Postgres 15 binaries Patroni runs (`PATRONI_PG_BIN` overrides).
fn pg_bin() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PATRONI_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let dir = PathBuf::from("/usr/lib/postgresql/15/bin");
    if dir.join("postgres").exists() {
        Ok(dir)
    } else {
        bail!(
            "Patroni runs Postgres from /usr/lib/postgresql/15/bin, which is missing (apt-get install postgresql-15)"
        )
    }
}

/// The `postgres` account when the tests run as root (Postgres refuses
/// root); `None` means run as ourselves.
fn postgres_account() -> anyhow::Result<Option<nix::unistd::User>> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    nix::unistd::User::from_name("postgres")?
        .context("running as root, but there is no `postgres` user to run the servers")
        .map(Some)
}

fn hand_over(path: &Path, account: &Option<nix::unistd::User>) -> anyhow::Result<()> {
    if let Some(u) = account {
        nix::unistd::chown(path, Some(u.uid), Some(u.gid))?;
    }
    Ok(())
}

fn command_as(program: &Path, account: &Option<nix::unistd::User>) -> Command {
    let mut cmd = Command::new(program);
    if let Some(u) = account {
        cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        cmd.env("HOME", &u.dir);
    }
    // A process group of its own: its "host" dies as one.
    cmd.process_group(0);
    cmd
}

/// A port free on every one of `ips` right now (Patroni's REST API takes
/// the same port on every member, so one pool-wide check port fits).
pub fn port_free_on(ips: &[IpAddr]) -> u16 {
    loop {
        let port = free_addr_on(ips[0]).port();
        if ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return port;
        }
    }
}

// === etcd ===

/// A three-member etcd cluster on 127.0.0.1 (v3 API).
pub struct Etcd {
    // Members before the directory: processes die before their data goes.
    members: Vec<EtcdMember>,
    dir: tempfile::TempDir,
}

struct EtcdMember {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    process: Option<Process>,
}

impl Etcd {
    /// Starts three members and waits until the cluster has a leader.
    pub async fn start() -> anyhow::Result<Etcd> {
        let dir = tempfile::Builder::new().prefix("tandem-etcd-").tempdir()?;
        let ip = IpAddr::from([127, 0, 0, 1]);
        let members: Vec<EtcdMember> = (1..=3)
            .map(|i| EtcdMember {
                name: format!("etcd-{i}"),
                client: free_addr_on(ip),
                peer: free_addr_on(ip),
                process: None,
            })
            .collect();
        let mut etcd = Etcd { members, dir };
        for i in 0..etcd.members.len() {
            etcd.start_member(i)?;
        }
        etcd.wait_healthy(Duration::from_secs(30)).await?;
        Ok(etcd)
    }

    /// `host:port` of every member's client listener.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.to_string()).collect()
    }

    /// SIGKILL of member `i` (0-based).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].process.take() {
            p.kill();
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.start_member(i)
    }

    fn start_member(&mut self, i: usize) -> anyhow::Result<()> {
        let etcd = require("etcd", "etcd-server")?;
        let cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let mut cmd = Command::new(etcd);
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &format!("http://{}", m.client)])
            .args(["--advertise-client-urls", &format!("http://{}", m.client)])
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", m.peer),
            ])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "tandem-test"])
            // etcd's defaults (100 ms heartbeat, 1 s election).
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--log-level", "warn"])
            .process_group(0);
        let process = Process::spawn_command(&m.name, cmd)?;
        self.members[i].process = Some(process);
        Ok(())
    }

    /// Waits until a member answers that the cluster is healthy (it has a
    /// leader and commits).
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let client = http_client();
        let urls: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("http://{}/health", m.client))
            .collect();
        crate::wait_until(timeout, "etcd to be healthy", || {
            let client = client.clone();
            let urls = urls.clone();
            async move {
                for url in urls {
                    let r = client
                        .get(&url)
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await;
                    if let Ok(r) = r
                        && let Ok(v) = r.json::<Value>().await
                        && v["health"] == "true"
                    {
                        return true;
                    }
                }
                false
            }
        })
        .await
    }
}

// === Patroni ===

/// How a Patroni cluster is set up.
#[derive(Debug, Clone)]
pub struct PatroniOptions {
    /// Patroni's `scope`: the cluster's name in etcd.
    pub scope: String,
    pub members: usize,
    /// Member `i` (0-based) listens on `127.0.<subnet>.<i + 1>`.
    pub subnet: u8,
    /// Seconds the leader key lives without being renewed.
    pub ttl: u32,
    /// Seconds between two runs of Patroni's loop.
    pub loop_wait: u32,
    /// Seconds Patroni retries etcd and Postgres before it gives up.
    pub retry_timeout: u32,
    /// `synchronous_mode` with `synchronous_mode_strict`: a commit waits
    /// for a synchronous replica, and without one writes wait.
    pub synchronous_strict: bool,
    /// `failsafe_mode`: a primary that loses etcd stays primary while it
    /// can reach every other member.
    pub failsafe: bool,
    /// Postgres's `fsync`: off for throwaway test data, on where a
    /// benchmark measures what a commit costs.
    pub fsync: bool,
}

impl PatroniOptions {
    /// Three members, timers low enough for a test: `ttl` 10 s,
    /// `loop_wait` 1 s, `retry_timeout` 3 s (Patroni's defaults are
    /// 30/10/10).
    pub fn fast(scope: &str, subnet: u8) -> PatroniOptions {
        PatroniOptions {
            scope: scope.to_string(),
            members: 3,
            subnet,
            ttl: 10,
            loop_wait: 1,
            retry_timeout: 3,
            synchronous_strict: false,
            failsafe: true,
            fsync: false,
        }
    }

    /// "ttl 10 s, loop_wait 1 s, retry_timeout 3 s", for reports.
    pub fn timers(&self) -> String {
        format!(
            "ttl {} s, loop_wait {} s, retry_timeout {} s",
            self.ttl, self.loop_wait, self.retry_timeout
        )
    }
}

/// What Patroni says a member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    /// Anything else: starting, stopped, demoting, unreachable.
    Other(String),
}

/// One member: its loopback host, Postgres and REST addresses.
pub struct PatroniMember {
    pub name: String,
    pub ip: IpAddr,
    pub pg: SocketAddr,
    pub rest: SocketAddr,
    dir: PathBuf,
    process: Option<Process>,
}

impl PatroniMember {
    /// `postgres://postgres@<ip>:<port>/<database>` of this member.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@{}/{database}", self.pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The postmaster's pid, from `postmaster.pid`, if it runs.
    fn postmaster(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        kill(Pid::from_raw(pid), None).ok().map(|()| pid)
    }

    /// Patroni's log so far.
    pub fn logs(&self) -> String {
        self.process.as_ref().map(Process::logs).unwrap_or_default()
    }
}

/// A Patroni cluster of real Postgres servers. Everything is killed on
/// drop.
pub struct PatroniCluster {
    pub options: PatroniOptions,
    members: Vec<PatroniMember>,
    etcd: Vec<String>,
    rest_port: u16,
    _dir: tempfile::TempDir,
}

impl PatroniCluster {
    /// Bootstraps the cluster against `etcd` and waits until it has a
    /// primary and every replica streams from it.
    pub async fn start(etcd: &Etcd, options: PatroniOptions) -> anyhow::Result<PatroniCluster> {
        require("patroni", "patroni")?;
        pg_bin()?;
        let account = postgres_account()?;
        let dir = tempfile::Builder::new()
            .prefix("tandem-patroni-")
            .tempdir()?;
        hand_over(dir.path(), &account)?;
        let ips: Vec<IpAddr> = (1..=options.members)
            .map(|i| IpAddr::from([127, 0, options.subnet, i as u8]))
            .collect();
        let rest_port = port_free_on(&ips);
        let pg_port = port_free_on(&ips);
        let members = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let name = format!("{}-{}", options.scope, i + 1);
                let mdir = dir.path().join(&name);
                std::fs::create_dir(&mdir)?;
                hand_over(&mdir, &account)?;
                Ok(PatroniMember {
                    name,
                    ip: *ip,
                    pg: SocketAddr::new(*ip, pg_port),
                    rest: SocketAddr::new(*ip, rest_port),
                    dir: mdir,
                    process: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut cluster = PatroniCluster {
            options,
            members,
            etcd: etcd.endpoints(),
            rest_port,
            _dir: dir,
        };
        // The first member bootstraps (initdb); the others then clone it.
        cluster.start_host(0)?;
        cluster
            .wait_primary(Duration::from_secs(60), None)
            .await
            .map_err(|e| cluster.with_logs(e))?;
        for i in 1..cluster.members.len() {
            cluster.start_host(i)?;
        }
        cluster
            .wait_replicas(cluster.members.len() - 1, Duration::from_secs(60))
            .await
            .map_err(|e| cluster.with_logs(e))?;
        Ok(cluster)
    }

    pub fn members(&self) -> &[PatroniMember] {
        &self.members
    }

    /// The port of Patroni's REST API, the same on every member.
    pub fn rest_port(&self) -> u16 {
        self.rest_port
    }

    /// A libpq URL naming every member with `target_session_attrs` set, as
    /// libpq-based clients use a Patroni cluster without a proxy.
    pub fn multi_host_url(&self, database: &str, attrs: &str) -> String {
        let hosts = self
            .members
            .iter()
            .map(|m| m.pg.to_string())
            .collect::<Vec<_>>()
            .join(",");
        format!("postgres://postgres@{hosts}/{database}?target_session_attrs={attrs}")
    }

    /// What member `i`'s REST API says it is (`GET /patroni`).
    pub async fn role(&self, i: usize) -> Role {
        let url = format!("http://{}/patroni", self.members[i].rest);
        let answer = http_client()
            .get(&url)
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        let Ok(answer) = answer else {
            return Role::Other("unreachable".into());
        };
        let Ok(v) = answer.json::<Value>().await else {
            return Role::Other("unreadable answer".into());
        };
        match (v["role"].as_str(), v["state"].as_str()) {
            (Some("master" | "primary"), Some("running")) => Role::Primary,
            (Some("replica" | "standby_leader"), Some("running")) => Role::Replica,
            (role, state) => Role::Other(format!("{role:?}/{state:?}")),
        }
    }

    /// `GET /primary` on member `i`: 200 only on the primary (what a
    /// load balancer checks).
    pub async fn answers_primary(&self, i: usize) -> bool {
        let url = format!("http://{}/primary", self.members[i].rest);
        let r = http_client()
            .get(&url)
            .timeout(Duration::from_secs(1))
            .send()
            .await;
        matches!(r, Ok(r) if r.status().as_u16() == 200)
    }

    /// The member that is primary now, if exactly one is.
    pub async fn primary(&self) -> Option<usize> {
        let mut found = Vec::new();
        for i in 0..self.members.len() {
            if self.members[i].process.is_some() && self.role(i).await == Role::Primary {
                found.push(i);
            }
        }
        (found.len() == 1).then(|| found[0])
    }

    /// Waits for a primary other than `not` (the one just killed).
    pub async fn wait_primary(
        &self,
        timeout: Duration,
        not: Option<usize>,
    ) -> anyhow::Result<usize> {
        let start = Instant::now();
        loop {
            if let Some(p) = self.primary().await
                && Some(p) != not
            {
                return Ok(p);
            }
            if start.elapsed() > timeout {
                bail!(
                    "{}: no primary{} within {timeout:?}",
                    self.options.scope,
                    not.map(|n| format!(" other than {}", self.members[n].name))
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `n` members run as replicas streaming from the primary.
    pub async fn wait_replicas(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let mut streaming = 0;
            for i in 0..self.members.len() {
                if self.role(i).await == Role::Replica && self.streams(i).await {
                    streaming += 1;
                }
            }
            if streaming >= n {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{}: {streaming} of {n} replicas streaming after {timeout:?}",
                    self.options.scope
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until Patroni names a synchronous standby (`GET /cluster`):
    /// with `synchronous_mode`, only it may be promoted, so a failover
    /// before then finds no candidate.
    pub async fn wait_sync_standby(&self, timeout: Duration) -> anyhow::Result<String> {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            for m in self.members.iter().filter(|m| m.process.is_some()) {
                let url = format!("http://{}/cluster", m.rest);
                let answer = http_client()
                    .get(&url)
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await;
                let Ok(answer) = answer else { continue };
                let Ok(v) = answer.json::<Value>().await else {
                    continue;
                };
                let sync = v["members"].as_array().and_then(|ms| {
                    ms.iter()
                        .find(|m| m["role"] == "sync_standby" && m["state"] == "running")
                });
                if let Some(name) = sync.and_then(|m| m["name"].as_str()) {
                    return Ok(name.to_string());
                }
                last = v.to_string();
                break;
            }
            if start.elapsed() > timeout {
                bail!(
                    "{}: no synchronous standby after {timeout:?} (cluster: {last})\n{}",
                    self.options.scope,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Does member `i` receive WAL from a primary?
    async fn streams(&self, i: usize) -> bool {
        let url = format!("http://{}/patroni", self.members[i].rest);
        let Ok(r) = http_client()
            .get(&url)
            .timeout(Duration::from_secs(1))
            .send()
            .await
        else {
            return false;
        };
        let Ok(v) = r.json::<Value>().await else {
            return false;
        };
        v["replication_state"] == "streaming"
            || v["xlog"]["received_location"].is_number()
                && v["xlog"]["replayed_location"].is_number()
    }

    /// Kills member `i`'s Postgres as a crash would (SIGKILL of the
    /// postmaster and every server process at once); Patroni lives on.
    pub fn kill_postgres(&self, i: usize) -> anyhow::Result<()> {
        let pid = self.members[i]
            .postmaster()
            .with_context(|| format!("{} runs no Postgres", self.members[i].name))?;
        kill_postmaster(pid);
        Ok(())
    }

    /// Member `i`'s host dies: Patroni and Postgres are SIGKILLed at once.
    pub fn kill_host(&mut self, i: usize) {
        let m = &mut self.members[i];
        let postmaster = m.postmaster();
        if let Some(p) = &m.process
            && let Some(pid) = p.pid()
        {
            // Patroni's process group first, so it cannot restart Postgres.
            let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
        }
        if let Some(mut p) = m.process.take() {
            p.kill();
        }
        if let Some(pid) = postmaster {
            kill_postmaster(pid);
        }
    }

    /// Starts member `i`'s host (Patroni, which starts Postgres): after a
    /// kill it rejoins as a replica, rewinding if it must.
    pub fn start_host(&mut self, i: usize) -> anyhow::Result<()> {
        let account = postgres_account()?;
        let config = self.config(i)?;
        let m = &mut self.members[i];
        let path = m.dir.join("patroni.json");
        // JSON is YAML: Patroni reads it as its configuration file.
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        hand_over(&path, &account)?;
        let mut cmd = command_as(&require("patroni", "patroni")?, &account);
        cmd.arg(&path).current_dir(&m.dir);
        m.process = Some(Process::spawn_command(&m.name, cmd)?);
        Ok(())
    }

    /// Patroni's logs of every member, for a failing test.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("----- {} -----\n{}", m.name, tail(&m.logs(), 30)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn with_logs(&self, e: anyhow::Error) -> anyhow::Error {
        anyhow::anyhow!("{e}\n{}", self.logs())
    }

    fn config(&self, i: usize) -> anyhow::Result<Value> {
        let o = &self.options;
        let m = &self.members[i];
        let bin = pg_bin()?;
        let mut dcs = json!({
            "ttl": o.ttl,
            "loop_wait": o.loop_wait,
            "retry_timeout": o.retry_timeout,
            "maximum_lag_on_failover": 1_048_576,
            "failsafe_mode": o.failsafe,
            "postgresql": {
                "use_pg_rewind": true,
                "parameters": {
                    "wal_log_hints": "on",
                    "max_connections": 300,
                    "wal_keep_size": "128MB",
                }
            }
        });
        if o.synchronous_strict {
            dcs["synchronous_mode"] = json!(true);
            dcs["synchronous_mode_strict"] = json!(true);
        }
        let superuser = json!({"username": "postgres", "password": "postgres"});
        Ok(json!({
            "scope": o.scope,
            "name": m.name,
            "namespace": "/tandem/",
            "log": {"level": "INFO"},
            "restapi": {
                "listen": m.rest.to_string(),
                "connect_address": m.rest.to_string(),
            },
            "etcd3": {"hosts": self.etcd},
            "bootstrap": {
                "dcs": dcs,
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}],
            },
            "postgresql": {
                "listen": m.pg.to_string(),
                "connect_address": m.pg.to_string(),
                "data_dir": m.data_dir(),
                "bin_dir": bin,
                "pgpass": m.dir.join("pgpass"),
                // Loopback only, and throwaway: trust.
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.0/8 trust",
                    "host replication all 127.0.0.0/8 trust",
                ],
                "authentication": {
                    "superuser": superuser,
                    "replication": {"username": "replicator", "password": "replicator"},
                    "rewind": superuser,
                },
                "parameters": {
                    "unix_socket_directories": m.dir,
                    // Throwaway data: no fsync unless asked (replication
                    // still is real).
                    "fsync": if o.fsync { "on" } else { "off" },
                },
            },
        }))
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_host(i);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// SIGKILL of a postmaster and of every process it forked. Each Postgres
/// child runs in a session of its own, so no process group covers them:
/// the postmaster is stopped first (it forks no more), its children are
/// found by parent pid, then all are killed.
fn kill_postmaster(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
    let children = children_of(pid);
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    for c in children {
        let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
    }
}

fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // The parent pid is the second field after the command
                    // name, which is in parentheses and may hold spaces.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// The last `lines` of Patroni's log, without the tracebacks its REST API
/// prints when a checker hangs up early.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .filter(|l| {
            !(l.starts_with(' ')
                || l.starts_with("Traceback")
                || l.starts_with("ConnectionResetError")
                || l.starts_with("BrokenPipeError")
                || l.contains("Exception happened during processing")
                || l.contains("Traceback (most recent call last)"))
        })
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
