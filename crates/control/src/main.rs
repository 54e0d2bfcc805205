//! `tandem-control`: parses flags, sets up telemetry, runs a replica.

use clap::Parser;
use tandem_control::consensus::RaftSettings;
use tandem_control::{Config, server, store::Store};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Err(e) = run(config).await {
        eprintln!("tandem-control: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let telemetry = tandem_telemetry::init("tandem-control", &config.telemetry)?;
    let tokens = config.tokens().map_err(anyhow::Error::msg)?;
    let mut store = Store::connect_lazy(&config.database_url, config.db_max_connections)?;
    if let Some(path) = &config.secrets_key_file {
        let key = tandem_tls::SecretsKey::from_file(path)
            .map_err(|e| anyhow::anyhow!("TANDEM_SECRETS_KEY_FILE: {e}"))?;
        store = store.with_secrets(key);
    } else {
        tracing::warn!("TANDEM_SECRETS_KEY_FILE is unset: TLS certificates cannot be added");
    }
    let grpc = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (TANDEM_LISTEN): {e}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} (TANDEM_ADMIN_LISTEN): {e}",
            config.admin_listen
        )
    })?;
    for warning in config.deprecations() {
        tracing::warn!("{warning}");
    }
    let id = config.raft_id().map_err(anyhow::Error::msg)?;
    tracing::info!(admin = %admin.local_addr()?, raft_id = id, "starting");
    let members = config.members().map_err(anyhow::Error::msg)?;
    if config.join == tandem_control::config::Join::Existing
        && members.len() < 2
        && tandem_control::consensus::storage::DiskStorage::is_fresh(&config.state_dir)
    {
        anyhow::bail!(
            "--join (TANDEM_RAFT_JOIN=existing) needs TANDEM_PEERS to list the group's current \
             members and this replica (id=host:port,...): that is how it reaches the leader"
        );
    }
    let raft = RaftSettings {
        id,
        // A joining replica learns the members from the leader.
        voters: match config.join {
            tandem_control::config::Join::New => members.keys().copied().collect(),
            tandem_control::config::Join::Existing => Vec::new(),
        },
        addresses: members.clone(),
        state_dir: config.state_dir.clone(),
        tick: std::time::Duration::from_millis(config.raft_tick_ms),
        election_ticks: config.raft_election_ticks,
        heartbeat_ticks: config.raft_heartbeat_ticks,
    };
    let settings = server::Settings {
        store,
        tokens: tokens.clone(),
        replica: format!("control-{id}"),
        prometheus: telemetry.prometheus(),
        drain: std::time::Duration::from_secs(config.drain_seconds),
        raft,
        members,
        peer_token: tokens.peer_token(),
    };
    let result = server::run(grpc, admin, settings, tandem_telemetry::shutdown_signal()).await;
    telemetry.shutdown();
    result
}
