//! A real `tandem-control` process on free loopback ports.

use std::net::SocketAddr;
use std::time::Duration;

pub use tandem_client::Bearer;
use tandem_client::ChannelSettings;
use tandem_proto::v1;
use tandem_proto::v1::control_plane_client::ControlPlaneClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::{Process, free_addr, free_addr_on, wait_http_ok};

/// Tokens every test control plane accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const NODE_TOKEN: &str = "test-node-token-0123456789";
/// What test replicas present to each other (`TANDEM_PEER_TOKEN`, role
/// replica: the raft transport and forwarded calls).
pub const PEER_TOKEN: &str = "test-peer-token-0123456789";

#[derive(Debug, Clone, Default)]
pub struct ControlPlaneOptions {
    /// `TANDEM_RAFT_ID`; defaults to "1".
    pub raft_id: Option<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Wait for `/readyz` (the database reachable and migrated).
    pub skip_ready_wait: bool,
    /// Fixed listeners (default: free ports on 127.0.0.1).
    pub grpc: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// mTLS with these certificates (the replica presents
    /// `control-<raft id>`, test clients `admin`); `None`: plain TCP
    /// (`TANDEM_INSECURE_PLAINTEXT`).
    pub tls: Option<std::sync::Arc<ComponentCerts>>,
}

/// A CA and component certificates in a temporary directory, made like
/// `tandemctl certs init` does: `control-1`..`control-5` (serving as
/// 127.0.0.1 and localhost), `admin`, `operator`, `proxy-1`, `proxy-2`,
/// `agent-1`, `agent-2`.
pub struct ComponentCerts {
    pub dir: tempfile::TempDir,
    pub ca: tandem_tls::issue::Ca,
}

impl std::fmt::Debug for ComponentCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentCerts")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl ComponentCerts {
    pub fn new() -> anyhow::Result<Self> {
        let ca = tandem_tls::issue::Ca::generate("Tandem test CA")?;
        let dir = tempfile::Builder::new().prefix("tandem-certs-").tempdir()?;
        std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem)?;
        let certs = ComponentCerts { dir, ca };
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        for i in 1..=5 {
            certs.issue("replica", &format!("control-{i}"), &hosts)?;
        }
        for (role, name) in [
            ("admin", "admin"),
            ("operator", "operator"),
            ("proxy", "proxy-1"),
            ("proxy", "proxy-2"),
            ("agent", "agent-1"),
            ("agent", "agent-2"),
        ] {
            certs.issue(role, name, &[])?;
        }
        Ok(certs)
    }

    /// Issues (or re-issues, replacing the files) `name`'s certificate.
    pub fn issue(&self, role: &str, name: &str, hosts: &[String]) -> anyhow::Result<()> {
        let issued = self.ca.issue(role, name, hosts, 30)?;
        let (cert, key) = self.paths(name);
        // Through a rename, as a rotation would: never half a file.
        for (path, pem) in [(cert, issued.cert_pem), (key, issued.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, pem)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(())
    }

    /// `name`'s certificate and key files.
    pub fn paths(&self, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}-key.pem")),
        )
    }

    pub fn files(&self, name: &str) -> tandem_tls::component::Files {
        let (cert, key) = self.paths(name);
        tandem_tls::component::Files {
            ca: self.dir.path().join("ca.pem"),
            cert,
            key,
        }
    }

    /// `TANDEM_TLS_*` for a process presenting `name`.
    pub fn env(&self, name: &str) -> Vec<(String, String)> {
        let f = self.files(name);
        [
            ("TANDEM_TLS_CA_FILE", f.ca),
            ("TANDEM_TLS_CERT_FILE", f.cert),
            ("TANDEM_TLS_KEY_FILE", f.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string_lossy().into_owned()))
        .collect()
    }

    /// A client presenting `name`.
    pub fn client(&self, name: &str) -> anyhow::Result<tandem_client::ClientTls> {
        tandem_client::ClientTls::from_files(&self.files(name)).map_err(anyhow::Error::msg)
    }
}

pub struct ControlPlane {
    pub process: Process,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    database_url: String,
    options: ControlPlaneOptions,
    /// Raft state, kept across restarts of this replica.
    state_dir: tempfile::TempDir,
}

pub type AuthedClient = ControlPlaneClient<InterceptedService<Channel, Bearer>>;

/// A client of the control plane at `endpoint`, presenting `token` (None:
/// no token at all).
pub async fn client_at(endpoint: &str, token: Option<&str>) -> anyhow::Result<AuthedClient> {
    client_at_tls(endpoint, token, None).await
}

/// [`client_at`], presenting `tls` to an `https://` endpoint.
pub async fn client_at_tls(
    endpoint: &str,
    token: Option<&str>,
    tls: Option<&tandem_client::ClientTls>,
) -> anyhow::Result<AuthedClient> {
    let channel = ChannelSettings::connect_within(Duration::from_secs(5))
        .connect(endpoint, tls)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(ControlPlaneClient::with_interceptor(
        channel,
        Bearer::new(token)?,
    ))
}

/// Declares `pool` with `addresses` as its backends and a catch-all route
/// to it, as an operator would with tandemctl.
pub async fn declare_pool(
    admin: &mut AuthedClient,
    pool: v1::Pool,
    addresses: &[String],
) -> anyhow::Result<()> {
    let name = pool.name.clone();
    create_pool_with(admin, pool, addresses).await?;
    admin
        .add_route(v1::AddRouteRequest {
            route: Some(v1::Route {
                host: "*".into(),
                path_prefix: "/".into(),
                pool: name,
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

/// Adds a TCP route: connections to `listen` go to `pool`.
pub async fn add_tcp_route(
    admin: &mut AuthedClient,
    listen: std::net::SocketAddr,
    pool: &str,
) -> anyhow::Result<()> {
    admin
        .add_tcp_route(v1::AddTcpRouteRequest {
            route: Some(v1::TcpRoute {
                listen: listen.to_string(),
                pool: pool.into(),
            }),
        })
        .await?;
    Ok(())
}

/// Creates `pool` and adds `addresses` as its backends, in order (no
/// route).
pub async fn create_pool_with(
    admin: &mut AuthedClient,
    pool: v1::Pool,
    addresses: &[String],
) -> anyhow::Result<()> {
    let name = pool.name.clone();
    admin
        .create_pool(v1::CreatePoolRequest { pool: Some(pool) })
        .await?;
    for address in addresses {
        admin
            .add_backend(v1::AddBackendRequest {
                pool: name.clone(),
                backend: Some(v1::Backend {
                    address: address.clone(),
                    ..Default::default()
                }),
                expected_revision: None,
            })
            .await?;
    }
    Ok(())
}

impl ControlPlane {
    pub async fn start(database_url: &str) -> anyhow::Result<ControlPlane> {
        Self::start_with(database_url, ControlPlaneOptions::default()).await
    }

    pub async fn start_with(
        database_url: &str,
        options: ControlPlaneOptions,
    ) -> anyhow::Result<ControlPlane> {
        let grpc = options.grpc.unwrap_or_else(free_addr);
        let admin = options.admin.unwrap_or_else(free_addr);
        let state_dir = tempfile::Builder::new()
            .prefix("tandem-control-state-")
            .tempdir()?;
        let mut cp = ControlPlane {
            process: spawn(database_url, grpc, admin, state_dir.path(), &options)?,
            grpc,
            admin,
            database_url: database_url.to_string(),
            options,
            state_dir,
        };
        if !cp.options.skip_ready_wait {
            cp.wait_ready().await?;
        }
        Ok(cp)
    }

    /// Waits for `/readyz`.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", self.admin);
        if let Err(e) = wait_http_ok(&url, Duration::from_secs(30)).await {
            anyhow::bail!("{e}\n--- control plane log ---\n{}", self.process.logs());
        }
        Ok(())
    }

    /// `http://127.0.0.1:<grpc port>` (`https://` with mTLS)
    pub fn endpoint(&self) -> String {
        match self.options.tls {
            Some(_) => format!("https://{}", self.grpc),
            None => format!("http://{}", self.grpc),
        }
    }

    /// The replica's `/metrics` page (Prometheus text).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let res = crate::http_client()
            .get(self.admin_url("/metrics"))
            .send()
            .await?;
        Ok(res.text().await?)
    }

    /// The certificates of an mTLS replica.
    pub fn certs(&self) -> Option<&std::sync::Arc<ComponentCerts>> {
        self.options.tls.as_ref()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Where this replica keeps its raft state (kept across restarts).
    pub fn state_dir(&self) -> &std::path::Path {
        self.state_dir.path()
    }

    /// A client presenting `token` (None: no token at all).
    /// With mTLS, it presents the `admin` certificate.
    pub async fn client_with(&self, token: Option<&str>) -> anyhow::Result<AuthedClient> {
        let tls = match &self.options.tls {
            Some(certs) => Some(certs.client("admin")?),
            None => None,
        };
        client_at_tls(&self.endpoint(), token, tls.as_ref()).await
    }

    /// A client with the admin token.
    pub async fn admin_client(&self) -> anyhow::Result<AuthedClient> {
        self.client_with(Some(ADMIN_TOKEN)).await
    }

    /// A client with the node token.
    pub async fn node_client(&self) -> anyhow::Result<AuthedClient> {
        self.client_with(Some(NODE_TOKEN)).await
    }

    /// SIGKILL the process, empty its state directory (a wiped disk), and
    /// start it again on the same ports without waiting.
    pub fn respawn_wiped(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        for entry in std::fs::read_dir(self.state_dir.path())? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        self.respawn()
    }

    /// SIGKILL the process and start it again on the same ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.respawn()?;
        self.wait_ready().await
    }

    /// SIGKILL the process and start it again on the same ports, without
    /// waiting for it to be ready (its database may be down).
    pub fn respawn(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        self.process = spawn(
            &self.database_url,
            self.grpc,
            self.admin,
            self.state_dir.path(),
            &self.options,
        )?;
        Ok(())
    }
}

fn spawn(
    db: &str,
    grpc: SocketAddr,
    admin: SocketAddr,
    state_dir: &std::path::Path,
    o: &ControlPlaneOptions,
) -> anyhow::Result<Process> {
    let raft_id = o.raft_id.clone().unwrap_or_else(|| "1".into());
    // Every test replica seals certificates' keys under the same key, so
    // the replicas of one cluster can open each other's.
    let secrets = state_dir.join("secrets.key");
    std::fs::write(&secrets, TEST_SECRETS_KEY)?;
    let mut env: Vec<(&str, String)> = vec![
        (
            "TANDEM_SECRETS_KEY_FILE",
            secrets.to_string_lossy().into_owned(),
        ),
        ("DATABASE_URL", db.to_string()),
        ("TANDEM_LISTEN", grpc.to_string()),
        ("TANDEM_ADMIN_LISTEN", admin.to_string()),
        ("TANDEM_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("TANDEM_NODE_TOKEN", NODE_TOKEN.to_string()),
        ("TANDEM_PEER_TOKEN", PEER_TOKEN.to_string()),
        ("TANDEM_RAFT_ID", raft_id.clone()),
        ("TANDEM_STATE_DIR", state_dir.to_string_lossy().into_owned()),
    ];
    let tls_env = match &o.tls {
        Some(certs) => certs.env(&format!("control-{raft_id}")),
        None => vec![("TANDEM_INSECURE_PLAINTEXT".into(), "true".into())],
    };
    env.extend(tls_env.iter().map(|(k, v)| (k.as_str(), v.clone())));
    env.extend(o.env.iter().map(|(k, v)| (k.as_str(), v.clone())));
    Process::spawn(&format!("control-{raft_id}"), "tandem-control", &[], &env)
}

/// The secrets key test replicas use (`TANDEM_SECRETS_KEY_FILE`).
pub const TEST_SECRETS_KEY: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

// === several replicas ===

/// A raft group of real `tandem-control` processes on one database.
pub struct ControlCluster {
    pub replicas: Vec<ControlPlane>,
}

impl ControlCluster {
    /// `n` replicas on 127.0.0.1, ids 1..=n.
    pub async fn start(database_url: &str, n: usize) -> anyhow::Result<ControlCluster> {
        let ips = vec![std::net::IpAddr::from([127, 0, 0, 1]); n];
        Self::start_on(database_url, &ips, &[]).await
    }

    /// One replica per IP (ids 1..=n), each listening on and sending from
    /// its own address, so traffic between two of them can be cut.
    pub async fn start_on(
        database_url: &str,
        ips: &[std::net::IpAddr],
        env: &[(&str, &str)],
    ) -> anyhow::Result<ControlCluster> {
        Self::start_with_tls(database_url, ips, env, None).await
    }

    /// [`Self::start_on`], with mTLS between the replicas and to them when
    /// `tls` is given.
    pub async fn start_with_tls(
        database_url: &str,
        ips: &[std::net::IpAddr],
        env: &[(&str, &str)],
        tls: Option<std::sync::Arc<ComponentCerts>>,
    ) -> anyhow::Result<ControlCluster> {
        let grpcs: Vec<SocketAddr> = ips.iter().map(|ip| free_addr_on(*ip)).collect();
        let peers = grpcs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut starting = Vec::new();
        for (i, grpc) in grpcs.iter().enumerate() {
            let mut env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            env.push(("TANDEM_PEERS".into(), peers.clone()));
            let options = ControlPlaneOptions {
                raft_id: Some((i + 1).to_string()),
                env,
                grpc: Some(*grpc),
                tls: tls.clone(),
                ..Default::default()
            };
            starting.push(ControlPlane::start_with(database_url, options));
        }
        let mut replicas = Vec::new();
        // Replicas need each other to become ready: start them together.
        for r in futures::future::join_all(starting).await {
            replicas.push(r?);
        }
        Ok(ControlCluster { replicas })
    }

    /// `TANDEM_PEERS` naming every replica started so far (ids 1..=n).
    pub fn peers(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| format!("{}={}", i + 1, r.grpc))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts replica `id` (the next one: `replicas.len() + 1`) joining the
    /// running group (`TANDEM_RAFT_JOIN=existing`) at `grpc`, with every
    /// replica started so far as its peers; waits for `/readyz` (the
    /// database, not raft). Add it with `AddMember` before or after.
    pub async fn join(
        &mut self,
        database_url: &str,
        id: u64,
        grpc: SocketAddr,
    ) -> anyhow::Result<&mut ControlPlane> {
        anyhow::ensure!(
            id as usize == self.replicas.len() + 1,
            "replica ids are 1..=n in order: the next is {}",
            self.replicas.len() + 1
        );
        let peers = format!("{},{id}={grpc}", self.peers());
        let options = ControlPlaneOptions {
            raft_id: Some(id.to_string()),
            env: vec![
                ("TANDEM_PEERS".into(), peers),
                ("TANDEM_RAFT_JOIN".into(), "existing".into()),
            ],
            grpc: Some(grpc),
            ..Default::default()
        };
        let replica = ControlPlane::start_with(database_url, options).await?;
        self.replicas.push(replica);
        Ok(self.replicas.last_mut().expect("just pushed"))
    }

    /// Replica `id` (1-based).
    pub fn replica(&mut self, id: u64) -> &mut ControlPlane {
        &mut self.replicas[(id - 1) as usize]
    }

    /// Every replica's endpoint, comma-separated (for TANDEM_CONTROL).
    pub fn endpoints(&self) -> String {
        self.replicas
            .iter()
            .map(|r| r.endpoint())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until the running replicas other than `except` agree on one
    /// leader; returns (leader id, term).
    pub async fn leader(
        &mut self,
        except: &[u64],
        timeout: Duration,
    ) -> anyhow::Result<(u64, u64)> {
        let start = std::time::Instant::now();
        loop {
            let mut seen = Vec::new();
            for (i, r) in self.replicas.iter_mut().enumerate() {
                let id = i as u64 + 1;
                if except.contains(&id) || !r.process.is_running() {
                    continue;
                }
                let status = match r.node_client().await {
                    Ok(mut c) => c
                        .get_cluster_status(tandem_proto::v1::GetClusterStatusRequest {})
                        .await
                        .ok(),
                    Err(_) => None,
                };
                seen.push(
                    status
                        .map(|s| s.into_inner())
                        .map(|s| (s.leader_id, s.term)),
                );
            }
            if let Some(Some((leader, term))) = seen.first().cloned()
                && leader != 0
                && !except.contains(&leader)
                && seen.iter().all(|s| s.map(|(l, _)| l) == Some(leader))
            {
                return Ok((leader, term));
            }
            if start.elapsed() > timeout {
                anyhow::bail!("no agreed leader within {timeout:?}: {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

// === per-name credentials ===

/// The SHA-256 of `token` in hex, as the access file stores it.
pub fn token_sha256(token: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One identity of an access file: name, role, token, and an admin's pools.
pub struct Grant<'a> {
    pub name: &'a str,
    pub role: &'a str,
    pub token: &'a str,
    pub pools: Option<&'a [&'a str]>,
}

/// Writes an access file (`TANDEM_ACCESS_FILE`) granting `grants` and
/// revoking `revoked`, replacing `path` at once (a new file renamed over
/// it), as a configuration tool would.
pub fn write_access_file(
    path: &std::path::Path,
    grants: &[Grant<'_>],
    revoked: &[&str],
) -> std::io::Result<()> {
    let identities: Vec<serde_json::Value> = grants
        .iter()
        .map(|g| {
            let mut e = serde_json::json!({
                "name": g.name,
                "role": g.role,
                "token_sha256": token_sha256(g.token),
            });
            if let Some(pools) = g.pools {
                e["pools"] = serde_json::json!(pools);
            }
            e
        })
        .collect();
    let text = serde_json::json!({ "identities": identities, "revoked": revoked }).to_string();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
