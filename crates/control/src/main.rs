//! `tandem-control`: parses flags, sets up telemetry, runs a replica.

use clap::Parser;
use tandem_control::{Config, server};
use tokio::net::TcpListener;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let workers = tandem_telemetry::workers_per_core();
    tandem_telemetry::run_node("tandem-control", workers, start(config))
}

async fn start(config: Config) -> anyhow::Result<()> {
    let telemetry = tandem_telemetry::init("tandem-control", &config.telemetry)?;
    let settings = config.settings(telemetry.prometheus())?;
    let grpc = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (TANDEM_LISTEN): {e}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} (TANDEM_ADMIN_LISTEN): {e}",
            config.admin_listen
        )
    })?;
    tracing::info!(admin = %admin.local_addr()?, raft_id = settings.raft.id, "starting");
    let result = server::run(grpc, admin, settings, tandem_telemetry::shutdown_signal()).await;
    telemetry.shutdown();
    result
}
