//! `widget-shop`: parses flags, sets up telemetry, runs the shop.

use clap::Parser;
use tokio::net::TcpListener;
use widget_shop::Config;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Err(e) = run(config).await {
        eprintln!("widget-shop: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
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
