//! Command-line flags and their environment fallbacks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tandem_telemetry::PrometheusHandle;

use crate::consensus::RaftSettings;
use crate::server::Settings;
use crate::store::Store;

/// The Tandem control plane: stores pools, backends and routes in Postgres
/// and streams them to proxies and agents over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "tandem-control", version)]
pub struct Config {
    /// gRPC listener (control API, health, reflection), host:port.
    #[arg(long, env = "TANDEM_LISTEN", default_value = "0.0.0.0:7400")]
    pub listen: SocketAddr,

    /// Admin HTTP listener (/metrics, /healthz, /readyz and the read-only status
    /// page at /ui/), host:port. Keep it on a private network.
    #[arg(long, env = "TANDEM_ADMIN_LISTEN", default_value = "0.0.0.0:7401")]
    pub admin_listen: SocketAddr,

    /// Postgres URL of the control-plane database.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Maximum connections to the database.
    #[arg(long, env = "TANDEM_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// Token granting the admin role (changes). Required, unless given by file.
    #[arg(long, env = "TANDEM_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// File holding the admin token (trailing whitespace ignored).
    #[arg(long, env = "TANDEM_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Token granting the node role (watch and report), for proxies and agents.
    #[arg(long, env = "TANDEM_NODE_TOKEN", hide_env_values = true)]
    pub node_token: Option<String>,

    /// File holding the node token.
    #[arg(long, env = "TANDEM_NODE_TOKEN_FILE")]
    pub node_token_file: Option<PathBuf>,

    /// Token the replicas present to each other (role replica: the raft
    /// transport, forwarded calls). Every replica needs the same one.
    /// Unset: derived from the admin token.
    #[arg(long, env = "TANDEM_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: Option<String>,

    /// File holding the peer token.
    #[arg(long, env = "TANDEM_PEER_TOKEN_FILE")]
    pub peer_token_file: Option<PathBuf>,

    /// JSON file of per-name credentials (name, role, SHA-256 of the token,
    /// an admin's pools) and revoked names; re-read when it changes.
    #[arg(long, env = "TANDEM_ACCESS_FILE")]
    pub access_file: Option<PathBuf>,

    /// Development mode: allows the shipped example tokens and passwords
    /// (`*-change-me`). Never in production.
    #[arg(long, env = "TANDEM_DEV", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    pub dev: bool,

    /// File holding the key TLS private keys are sealed under in the
    /// database: 64 hex digits (`openssl rand -hex 32`). Every replica
    /// needs the same one. Unset: certificates cannot be added.
    #[arg(long, env = "TANDEM_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,

    /// This replica's raft id (a positive integer, 1 when unset), stable
    /// across restarts and listed in TANDEM_PEERS.
    #[arg(long, env = "TANDEM_RAFT_ID")]
    pub raft_id: Option<String>,

    /// Deprecated name of --raft-id (TANDEM_NODE_ID names proxies and
    /// agents); still read, with a warning at start-up.
    #[arg(long, env = "TANDEM_NODE_ID", hide = true)]
    pub node_id: Option<String>,

    /// Where raft state (term, vote, log, snapshots) lives; must survive restarts.
    #[arg(long, env = "TANDEM_STATE_DIR", default_value = "tandem-state/control")]
    pub state_dir: PathBuf,

    /// Raft members as `id=host:port,...` (their gRPC addresses), including
    /// this replica. Empty: a cluster of one.
    #[arg(long, env = "TANDEM_PEERS", default_value = "")]
    pub peers: String,

    /// How a replica with an empty state directory starts: `new` (the
    /// members listed in TANDEM_PEERS form a new group) or `existing`
    /// (join a running group after `tandemctl cluster add-member`: it
    /// learns the members from the leader, and TANDEM_PEERS only says where
    /// to reach them). `--join` alone means `existing`. Ignored once the
    /// state directory holds raft state. Like etcd's
    /// `--initial-cluster-state`.
    #[arg(
        long = "join",
        env = "TANDEM_RAFT_JOIN",
        value_enum,
        num_args = 0..=1,
        default_missing_value = "existing",
        default_value = "new"
    )]
    pub join: Join,

    /// Raft tick in milliseconds.
    #[arg(long, env = "TANDEM_RAFT_TICK_MS", default_value_t = 100)]
    pub raft_tick_ms: u64,

    /// Ticks without hearing from a leader before an election (randomised up to twice that).
    #[arg(long, env = "TANDEM_RAFT_ELECTION_TICKS", default_value_t = 10)]
    pub raft_election_ticks: usize,

    /// Ticks between leader heartbeats.
    #[arg(long, env = "TANDEM_RAFT_HEARTBEAT_TICKS", default_value_t = 1)]
    pub raft_heartbeat_ticks: usize,

    /// Seconds to wait for in-flight calls after SIGTERM.
    #[arg(long, env = "TANDEM_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,

    /// This replica's certificate and the CA (mTLS on the gRPC listener:
    /// clients must present a certificate from that CA; and to the other
    /// replicas).
    #[command(flatten)]
    pub tls: tandem_client::TlsArgs,

    /// Serve gRPC over plain TCP, without TLS: anyone who reaches the port
    /// talks to the control plane with only a token. For tests and local
    /// experiments; logs a warning at start.
    #[arg(
        long,
        env = "TANDEM_INSECURE_PLAINTEXT",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub insecure_plaintext: bool,

    #[command(flatten)]
    pub telemetry: tandem_telemetry::TelemetryArgs,
}

/// `--join` / `TANDEM_RAFT_JOIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Join {
    New,
    Existing,
}

impl Config {
    /// Checks the flags and builds what the replica runs with (logging the
    /// deprecated ones). The database is not contacted: the replica starts,
    /// not ready, while it is down.
    pub fn settings(&self, prometheus: PrometheusHandle) -> anyhow::Result<Settings> {
        let credentials = self.credentials().map_err(anyhow::Error::msg)?;
        let mut store = Store::connect_lazy(&self.database_url, self.db_max_connections)?;
        if let Some(path) = &self.secrets_key_file {
            let key = tandem_tls::SecretsKey::from_file(path)
                .map_err(|e| anyhow::anyhow!("TANDEM_SECRETS_KEY_FILE: {e}"))?;
            store = store.with_secrets(key);
        } else {
            tracing::warn!("TANDEM_SECRETS_KEY_FILE is unset: TLS certificates cannot be added");
        }
        for warning in self.deprecations() {
            tracing::warn!("{warning}");
        }
        let id = self.raft_id().map_err(anyhow::Error::msg)?;
        let members = self.members().map_err(anyhow::Error::msg)?;
        if self.join == Join::Existing
            && members.len() < 2
            && crate::consensus::storage::DiskStorage::is_fresh(&self.state_dir)
        {
            anyhow::bail!(
                "--join (TANDEM_RAFT_JOIN=existing) needs TANDEM_PEERS to list the group's current \
                 members and this replica (id=host:port,...): that is how it reaches the leader"
            );
        }
        let raft = RaftSettings {
            id,
            // A joining replica learns the members from the leader.
            voters: match self.join {
                Join::New => members.keys().copied().collect(),
                Join::Existing => Vec::new(),
            },
            addresses: members.clone(),
            state_dir: self.state_dir.clone(),
            tick: Duration::from_millis(self.raft_tick_ms),
            election_ticks: self.raft_election_ticks,
            heartbeat_ticks: self.raft_heartbeat_ticks,
        };
        let tls = self.replica_tls().map_err(anyhow::Error::msg)?;
        Ok(Settings {
            tls,
            store,
            peer_token: credentials.peer_token(),
            credentials,
            replica: format!("control-{id}"),
            prometheus,
            drain: Duration::from_secs(self.drain_seconds),
            raft,
            members,
        })
    }

    /// mTLS from the TANDEM_TLS_* files; plain TCP only with
    /// `--insecure-plaintext`, and a warning.
    pub fn replica_tls(&self) -> Result<Option<crate::mtls::ReplicaTls>, String> {
        match (self.tls.files()?, self.insecure_plaintext) {
            (Some(files), insecure) => {
                if insecure {
                    tracing::warn!(
                        "TANDEM_INSECURE_PLAINTEXT is set but so are TANDEM_TLS_*: serving mTLS"
                    );
                }
                crate::mtls::ReplicaTls::from_files(&files).map(Some)
            }
            (None, true) => {
                tracing::warn!(
                    "serving gRPC over plain TCP (TANDEM_INSECURE_PLAINTEXT): no certificates \
                     are checked, and traffic between components can be read and forged"
                );
                Ok(None)
            }
            (None, false) => Err(
                "no certificate: set TANDEM_TLS_CA_FILE, TANDEM_TLS_CERT_FILE \
                 and TANDEM_TLS_KEY_FILE (make them with `tandemctl certs init DIR`), or pass \
                 --insecure-plaintext (TANDEM_INSECURE_PLAINTEXT=true) to serve plain TCP"
                    .to_string(),
            ),
        }
    }

    /// This replica's raft id: TANDEM_RAFT_ID, else the deprecated
    /// TANDEM_NODE_ID, else 1 (an empty value counts as unset). Both set to
    /// different ids is an error.
    pub fn raft_id(&self) -> Result<u64, String> {
        let parse = |name: &str, v: &str| {
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|id| *id > 0)
                .ok_or_else(|| format!("{name} must be a positive integer (got {v:?})"))
        };
        let raft = self
            .raft_id
            .as_deref()
            .filter(|v| !v.trim().is_empty())
            .map(|v| parse("TANDEM_RAFT_ID (--raft-id)", v))
            .transpose()?;
        let node = self
            .node_id
            .as_deref()
            .filter(|v| !v.trim().is_empty())
            .map(|v| {
                parse(
                    "TANDEM_NODE_ID (deprecated for the control plane: use TANDEM_RAFT_ID)",
                    v,
                )
            })
            .transpose()?;
        match (raft, node) {
            (Some(r), Some(n)) if r != n => Err(format!(
                "TANDEM_RAFT_ID ({r}) and the deprecated TANDEM_NODE_ID ({n}) differ: \
                 set TANDEM_RAFT_ID only"
            )),
            (Some(id), _) | (None, Some(id)) => Ok(id),
            (None, None) => Ok(1),
        }
    }

    /// Settings given under a deprecated name, as warnings to log once at
    /// start-up.
    pub fn deprecations(&self) -> Vec<&'static str> {
        let mut warnings = Vec::new();
        if self
            .node_id
            .as_deref()
            .is_some_and(|v| !v.trim().is_empty())
        {
            warnings.push(
                "TANDEM_NODE_ID (--node-id) is deprecated for the control plane: \
                 name the raft id TANDEM_RAFT_ID (--raft-id)",
            );
        }
        warnings
    }

    /// The raft members and their gRPC addresses (just this one when
    /// TANDEM_PEERS is empty).
    pub fn members(&self) -> Result<BTreeMap<u64, String>, String> {
        let id = self.raft_id()?;
        let mut members = BTreeMap::new();
        for part in self
            .peers
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (pid, addr) = part
                .split_once('=')
                .ok_or_else(|| format!("TANDEM_PEERS: {part:?} is not id=host:port"))?;
            let pid: u64 = pid
                .trim()
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("TANDEM_PEERS: {pid:?} is not a positive integer id"))?;
            let addr = addr.trim();
            if !addr.contains(':') {
                return Err(format!("TANDEM_PEERS: {addr:?} is not host:port"));
            }
            if members.insert(pid, addr.to_string()).is_some() {
                return Err(format!("TANDEM_PEERS: id {pid} appears twice"));
            }
        }
        if members.is_empty() {
            members.insert(id, self.listen.to_string());
        }
        if !members.contains_key(&id) {
            return Err(format!("TANDEM_PEERS does not list this replica's id {id}"));
        }
        Ok(members)
    }

    /// Resolves the tokens from flags, env or files, and loads the access
    /// file. The shipped example secrets (`*-change-me`) are refused
    /// unless `--dev`.
    pub fn credentials(&self) -> Result<crate::auth::Credentials, String> {
        let admin =
            read_token("admin", &self.admin_token, &self.admin_token_file)?.ok_or_else(|| {
                "no admin token: set TANDEM_ADMIN_TOKEN or TANDEM_ADMIN_TOKEN_FILE".to_string()
            })?;
        let node = read_token("node", &self.node_token, &self.node_token_file)?;
        let peer = read_token("peer", &self.peer_token, &self.peer_token_file)?;
        tandem_client::refuse_example_secrets(
            self.dev,
            &[
                ("TANDEM_ADMIN_TOKEN", Some(admin.as_str())),
                ("TANDEM_NODE_TOKEN", node.as_deref()),
                ("TANDEM_PEER_TOKEN", peer.as_deref()),
                ("DATABASE_URL", Some(self.database_url.as_str())),
            ],
        )?;
        for (role, t) in [
            ("admin", Some(&admin)),
            ("node", node.as_ref()),
            ("peer", peer.as_ref()),
        ] {
            if t.is_some_and(|t| t.len() < 16) {
                tracing::warn!(
                    role,
                    "token is shorter than 16 characters; use a long random one"
                );
            }
        }
        let access = self
            .access_file
            .as_deref()
            .map(crate::auth::AccessFile::load)
            .transpose()?;
        Ok(crate::auth::Credentials::new(admin, node, peer, access))
    }
}

fn read_token(
    role: &str,
    value: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<String>, String> {
    if let Some(v) = tandem_client::token_value(value.as_deref()) {
        return Ok(Some(v.to_string()));
    }
    match file {
        Some(path) => {
            let t = tandem_client::read_token_file(path)
                .map_err(|e| format!("reading the {role} token file {}: {e}", path.display()))?;
            if t.is_empty() {
                return Err(format!("the {role} token file {} is empty", path.display()));
            }
            Ok(Some(t))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        let mut all = vec!["tandem-control", "--database-url", "postgres://x/y"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).expect("flags parse")
    }

    #[test]
    fn the_raft_id_has_its_own_name_and_the_old_one_still_works_with_a_warning() {
        let c = config(&[]);
        assert_eq!((c.raft_id(), c.deprecations().len()), (Ok(1), 0));
        let c = config(&["--raft-id", "3"]);
        assert_eq!((c.raft_id(), c.deprecations().len()), (Ok(3), 0));
        let c = config(&["--node-id", "2"]);
        assert_eq!(c.raft_id(), Ok(2));
        assert_eq!(c.deprecations().len(), 1);
        assert!(c.deprecations()[0].contains("TANDEM_RAFT_ID"));
        let c = config(&["--node-id", "2", "--raft-id", "2"]);
        assert_eq!(c.raft_id(), Ok(2), "the same id under both names is fine");
    }

    #[test]
    fn join_takes_a_bare_flag_or_a_value() {
        assert_eq!(config(&[]).join, Join::New);
        assert_eq!(config(&["--join"]).join, Join::Existing);
        assert_eq!(config(&["--join", "existing"]).join, Join::Existing);
        assert_eq!(config(&["--join=new"]).join, Join::New);
        let mut all = vec!["tandem-control", "--database-url", "postgres://x/y"];
        all.extend_from_slice(&["--join", "maybe"]);
        assert!(Config::try_parse_from(all).is_err());
    }

    #[test]
    fn two_different_ids_are_refused_naming_both() {
        let c = config(&["--node-id", "2", "--raft-id", "3"]);
        assert_eq!(
            c.raft_id(),
            Err(
                "TANDEM_RAFT_ID (3) and the deprecated TANDEM_NODE_ID (2) differ: \
                 set TANDEM_RAFT_ID only"
                    .into()
            )
        );
        let c = config(&["--raft-id", "proxy-1"]);
        assert!(
            c.raft_id()
                .unwrap_err()
                .starts_with("TANDEM_RAFT_ID (--raft-id) must be a positive integer")
        );
    }
}
