//! Real HTTP backends for tests: `tandem-fake-backend` processes on
//! loopback ports, and helpers to drive them (count their requests, fail
//! their health check, kill or freeze them).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use crate::{Process, free_addr, http_client, wait_http_ok};

/// One `tandem-fake-backend` process. Killed on drop.
pub struct FakeBackend {
    name: String,
    addr: SocketAddr,
    process: Process,
}

impl FakeBackend {
    /// Starts a backend called `name` on a free loopback port and waits
    /// until it answers.
    pub async fn start(name: &str) -> anyhow::Result<FakeBackend> {
        Self::start_with(name, &[]).await
    }

    /// Like [`FakeBackend::start`] with extra flags (e.g. `--delay-ms 200`).
    pub async fn start_with(name: &str, extra: &[&str]) -> anyhow::Result<FakeBackend> {
        let mut last = None;
        // A free port can be taken between probing and binding: try again.
        for _ in 0..3 {
            let addr = free_addr();
            let listen = addr.to_string();
            let mut args = vec!["--listen", &listen, "--name", name];
            args.extend_from_slice(extra);
            let process = Process::spawn(name, "tandem-fake-backend", &args, &[])?;
            let backend = FakeBackend {
                name: name.to_string(),
                addr,
                process,
            };
            match wait_http_ok(&backend.url("/healthz"), Duration::from_secs(10)).await {
                Ok(()) => return Ok(backend),
                Err(e) => last = Some(e.context(backend.process.logs())),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("backend {name} did not start")))
    }

    /// Starts `n` backends named `<prefix>-1` … `<prefix>-n`.
    pub async fn start_many(prefix: &str, n: usize) -> anyhow::Result<Vec<FakeBackend>> {
        let mut out = Vec::with_capacity(n);
        for i in 1..=n {
            out.push(FakeBackend::start(&format!("{prefix}-{i}")).await?);
        }
        Ok(out)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port`, as a pool's backend address.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Requests it has served (besides /stats, /healthz and admin calls).
    pub async fn requests(&self) -> anyhow::Result<u64> {
        let v: serde_json::Value = http_client()
            .get(self.url("/stats"))
            .send()
            .await?
            .json()
            .await?;
        v["requests"]
            .as_u64()
            .context("/stats has no request count")
    }

    /// Makes its /healthz answer 503 (or 200 again with `healthy = true`).
    pub async fn set_healthy(&self, healthy: bool) -> anyhow::Result<()> {
        let path = if healthy {
            "/_admin/health/ok"
        } else {
            "/_admin/health/fail"
        };
        http_client()
            .post(self.url(path))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn freeze(&self) {
        self.process.pause();
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.process.resume();
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }
}
