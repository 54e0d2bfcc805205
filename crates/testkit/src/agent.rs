//! A real `tandem-agent` process on a free admin port.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;

use crate::{NODE_TOKEN, Process, free_addr, wait_http_ok};

/// One `tandem-agent` process following the control plane. Killed on drop.
pub struct AgentProcess {
    pub process: Process,
    pub admin: SocketAddr,
}

impl AgentProcess {
    /// Starts agent `id` in `zone`, reporting to `control` (comma-separated
    /// endpoints) with the node token, and waits until it is ready.
    pub async fn start(id: &str, zone: &str, control: &str) -> anyhow::Result<AgentProcess> {
        let admin = free_addr();
        let process = Process::spawn(
            id,
            "tandem-agent",
            &[],
            &[
                ("TANDEM_CONTROL", control.to_string()),
                ("TANDEM_TOKEN", NODE_TOKEN.to_string()),
                ("TANDEM_NODE_ID", id.to_string()),
                ("TANDEM_ZONE", zone.to_string()),
                ("TANDEM_ADMIN_LISTEN", admin.to_string()),
            ],
        )?;
        let agent = AgentProcess { process, admin };
        let ready = format!("http://{admin}/readyz");
        if let Err(e) = wait_http_ok(&ready, Duration::from_secs(20)).await {
            bail!("{e}\n--- {id} log ---\n{}", agent.process.logs());
        }
        Ok(agent)
    }
}
