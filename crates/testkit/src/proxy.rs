//! A real `tandem-proxy` process on free loopback ports, serving either a
//! snapshot written to its state directory (no control plane) or what a
//! control plane sends.

use std::net::SocketAddr;
use std::time::Duration;

use tandem_core::Snapshot;

use crate::{NODE_TOKEN, Process, free_addr, http_client, wait_http_ok};

/// The admin token of test proxies (`TANDEM_ADMIN_TOKEN`): their
/// `/config` and `/explain` ask for it.
pub const PROXY_ADMIN_TOKEN: &str = "test-proxy-admin-token-0123456789";

pub struct ProxyProcess {
    pub process: Process,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub state_dir: tempfile::TempDir,
}

/// Where nothing listens: the control plane is "down".
pub const NO_CONTROL_PLANE: &str = "http://127.0.0.1:9";

impl ProxyProcess {
    /// A proxy serving `snapshot` from its state directory, with no
    /// control plane reachable.
    pub async fn with_snapshot(snapshot: &Snapshot) -> anyhow::Result<Self> {
        Self::with_snapshot_env(snapshot, &[]).await
    }

    pub async fn with_snapshot_env(
        snapshot: &Snapshot,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("snapshot.json"),
            serde_json::to_vec_pretty(snapshot)?,
        )?;
        let p = Self::start(dir, NO_CONTROL_PLANE, env)?;
        p.wait_ready().await?;
        Ok(p)
    }

    /// A proxy following `control` (comma-separated endpoints) with the
    /// node token as node `proxy-1`, in a fresh state directory, once
    /// ready (it may not have its first configuration yet); `env` adds or
    /// overrides settings.
    pub async fn following(control: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        Self::following_as("proxy-1", control, env).await
    }

    /// [`ProxyProcess::following`] as node `id`.
    pub async fn following_as(
        id: &str,
        control: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut all = vec![
            ("TANDEM_TOKEN", NODE_TOKEN.to_string()),
            ("TANDEM_NODE_ID", id.to_string()),
        ];
        all.extend(env.iter().cloned());
        let p = Self::start(tempfile::tempdir()?, control, &all)?;
        p.wait_ready().await?;
        Ok(p)
    }

    /// Starts a proxy on free ports without waiting.
    pub fn start(
        state_dir: tempfile::TempDir,
        control: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let (addr, admin) = (free_addr(), free_addr());
        let mut all: Vec<(&str, String)> = vec![
            ("TANDEM_LISTEN", addr.to_string()),
            ("TANDEM_ADMIN_LISTEN", admin.to_string()),
            ("TANDEM_CONTROL", control.to_string()),
            ("TANDEM_STATE_DIR", state_dir.path().display().to_string()),
            ("TANDEM_NODE_ID", "proxy-test".to_string()),
            ("TANDEM_WORKERS", "2".to_string()),
            ("TANDEM_ADMIN_TOKEN", PROXY_ADMIN_TOKEN.to_string()),
        ];
        for (k, v) in env {
            all.retain(|(key, _)| key != k);
            all.push((k, v.clone()));
        }
        let process = Process::spawn("proxy", "tandem-proxy", &[], &all)?;
        Ok(Self {
            process,
            addr,
            admin,
            state_dir,
        })
    }

    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_http_ok(&self.admin_url("/readyz"), Duration::from_secs(20))
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n--- proxy log ---\n{}", self.process.logs()))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// A GET on the admin port with the proxy's admin token (`/config`
    /// and `/explain` need it).
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let r = http_client()
            .get(self.admin_url(path))
            .bearer_auth(PROXY_ADMIN_TOKEN)
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    pub async fn config(&self) -> anyhow::Result<serde_json::Value> {
        let (_, body) = self.admin_get("/config").await?;
        Ok(serde_json::from_str(&body)?)
    }

    /// The /config entry of one backend.
    pub async fn backend_state(
        &self,
        pool: &str,
        address: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let c = self.config().await?;
        c["pools"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == pool))
            .and_then(|p| p["backends"].as_array())
            .and_then(|bs| bs.iter().find(|b| b["address"] == address))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no backend {address} in pool {pool}: {c}"))
    }
}
