//! `widget-shop`: parses flags, sets up telemetry, runs the shop.

use clap::Parser;
use tokio::net::TcpListener;
use widget_shop::Config;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let workers = tandem_telemetry::workers_per_core();
    tandem_telemetry::run_node("widget-shop", workers, start(config))
}

async fn start(config: Config) -> anyhow::Result<()> {
    let telemetry = tandem_telemetry::init("widget-shop", &config.telemetry)?;
    let settings = config.settings(telemetry.prometheus())?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (SHOP_LISTEN): {e}", config.listen))?;
    let result =
        widget_shop::server::run(listener, settings, tandem_telemetry::shutdown_signal()).await;
    telemetry.shutdown();
    Ok(result?)
}
