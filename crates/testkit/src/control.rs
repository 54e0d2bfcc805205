//! A real `tandem-control` process on free loopback ports.

use std::net::SocketAddr;
use std::time::Duration;

use tandem_proto::v1::control_plane_client::ControlPlaneClient;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::{Process, free_addr, wait_http_ok};

/// Tokens every test control plane accepts.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const NODE_TOKEN: &str = "test-node-token-0123456789";

#[derive(Debug, Clone, Default)]
pub struct ControlPlaneOptions {
    /// `TANDEM_NODE_ID`; defaults to "1".
    pub node_id: Option<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Wait for `/readyz` (the database reachable and migrated).
    pub skip_ready_wait: bool,
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

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

impl ControlPlane {
    pub async fn start(database_url: &str) -> anyhow::Result<ControlPlane> {
        Self::start_with(database_url, ControlPlaneOptions::default()).await
    }

    pub async fn start_with(
        database_url: &str,
        options: ControlPlaneOptions,
    ) -> anyhow::Result<ControlPlane> {
        let grpc = free_addr();
        let admin = free_addr();
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

    /// `http://127.0.0.1:<grpc port>`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// A client presenting `token` (None: no token at all).
    pub async fn client_with(&self, token: Option<&str>) -> anyhow::Result<AuthedClient> {
        let channel = Channel::from_shared(self.endpoint())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse()).transpose()?);
        Ok(ControlPlaneClient::with_interceptor(channel, bearer))
    }

    /// A client with the admin token.
    pub async fn admin_client(&self) -> anyhow::Result<AuthedClient> {
        self.client_with(Some(ADMIN_TOKEN)).await
    }

    /// A client with the node token.
    pub async fn node_client(&self) -> anyhow::Result<AuthedClient> {
        self.client_with(Some(NODE_TOKEN)).await
    }

    /// SIGKILL the process and start it again on the same ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.kill();
        self.process = spawn(
            &self.database_url,
            self.grpc,
            self.admin,
            self.state_dir.path(),
            &self.options,
        )?;
        self.wait_ready().await
    }
}

fn spawn(
    db: &str,
    grpc: SocketAddr,
    admin: SocketAddr,
    state_dir: &std::path::Path,
    o: &ControlPlaneOptions,
) -> anyhow::Result<Process> {
    let node_id = o.node_id.clone().unwrap_or_else(|| "1".into());
    let mut env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", db.to_string()),
        ("TANDEM_LISTEN", grpc.to_string()),
        ("TANDEM_ADMIN_LISTEN", admin.to_string()),
        ("TANDEM_ADMIN_TOKEN", ADMIN_TOKEN.to_string()),
        ("TANDEM_NODE_TOKEN", NODE_TOKEN.to_string()),
        ("TANDEM_NODE_ID", node_id.clone()),
        ("TANDEM_STATE_DIR", state_dir.to_string_lossy().into_owned()),
    ];
    env.extend(o.env.iter().map(|(k, v)| (k.as_str(), v.clone())));
    Process::spawn(&format!("control-{node_id}"), "tandem-control", &[], &env)
}
