//! Following the control plane, the part every node shares: the flags that
//! say where it is and who we are ([`ControlArgs`]), our identity and bearer
//! token ([`Identity`]), the settings of every control-plane
//! connection ([`endpoint`], [`ChannelSettings`]), the bearer token
//! ([`Bearer`]), jittered back-off between attempts ([`Backoff`]), opening a
//! `Watch` stream ([`open_watch`]), applying its events to a [`Snapshot`] ([`apply_event`])
//! and reporting the applied revision ([`report_applied`]).
//!
//! The proxy and the agent each keep their own watch loop around these
//! (the proxy swaps routing tables and batches bursts, the agent re-plans
//! its probes); what they must agree on lives here once.

use std::path::PathBuf;
use std::time::Duration;

mod connect;
pub use connect::{
    Backoff, Bearer, ChannelSettings, ClientTls, ConnectError, EXAMPLE_SECRET_MARK, InvalidToken,
    Jitter, KeepAlive, TlsArgs, constant_time_eq, read_token_file, refuse_example_secrets,
    token_value,
};

use tandem_core::{Revision, Snapshot};
use tandem_proto::convert::{change_from_proto, snapshot_from_proto, store_identity_from_proto};
use tandem_proto::v1::{
    self, NodeKind, ReportAppliedRequest, control_plane_client::ControlPlaneClient,
    watch_event::Event,
};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

/// The flags of every node that follows the control plane (flatten them
/// into a binary's `Args`).
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Control-plane endpoints, comma-separated (http://host:port,...).
    #[arg(
        long,
        env = "TANDEM_CONTROL",
        value_delimiter = ',',
        default_value = ""
    )]
    pub control: Vec<String>,

    /// Bearer token presented to the control plane (node role).
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the bearer token (used when TANDEM_TOKEN is unset).
    #[arg(long, env = "TANDEM_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// This node's id, stable across restarts: the control plane keys what
    /// a node reports by it (default: the role, "-" and the host name).
    #[arg(long, env = "TANDEM_NODE_ID")]
    pub node_id: Option<String>,

    /// Locality label reported to the control plane.
    #[arg(long, env = "TANDEM_ZONE", default_value = "")]
    pub zone: String,

    /// This node's certificate, for `https://` endpoints (mTLS).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Development mode: allows the shipped example tokens (`*-change-me`).
    /// Never in production.
    #[arg(long, env = "TANDEM_DEV", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false)]
    pub dev: bool,
}

/// A flag with a value that cannot be used, named by its variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

impl ControlArgs {
    /// The endpoints (trimmed, empty ones dropped, each checked to be an
    /// http(s) URL) and our identity: the token from `TANDEM_TOKEN` or read
    /// from `TANDEM_TOKEN_FILE`, checked to fit a header; the node id, or
    /// `<role>-<host name>`.
    pub fn resolve(&self, role: &str) -> Result<(Vec<String>, Identity), ConfigError> {
        let bad = |variable, problem| ConfigError { variable, problem };
        let control: Vec<String> = self
            .control
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(c) = control
            .iter()
            .find(|c| !(c.starts_with("http://") || c.starts_with("https://")))
        {
            return Err(bad(
                "TANDEM_CONTROL",
                format!("endpoints must be http://host:port or https://host:port (got {c:?})"),
            ));
        }
        let tls = self
            .tls
            .client()
            .map_err(|e| bad("TANDEM_TLS_CERT_FILE", e))?;
        if tls.is_none()
            && let Some(c) = control.iter().find(|c| c.starts_with("https://"))
        {
            return Err(bad(
                "TANDEM_TLS_CA_FILE",
                format!(
                    "{c} is https:// (mTLS): set TANDEM_TLS_CA_FILE, TANDEM_TLS_CERT_FILE and \
                     TANDEM_TLS_KEY_FILE"
                ),
            ));
        }
        let token = match (token_value(self.token.as_deref()), &self.token_file) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(path)) => {
                let t = read_token_file(path).map_err(|e| {
                    bad(
                        "TANDEM_TOKEN_FILE",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(t).filter(|t| !t.is_empty())
            }
            (None, None) => None,
        };
        if Bearer::new(token.as_deref()).is_err() {
            return Err(bad(
                "TANDEM_TOKEN",
                "must be printable ASCII without line breaks".into(),
            ));
        }
        if !self.dev
            && token
                .as_deref()
                .is_some_and(|t| t.contains(EXAMPLE_SECRET_MARK))
        {
            return Err(bad(
                "TANDEM_TOKEN",
                format!(
                    "refusing to start with a shipped example secret (*-{EXAMPLE_SECRET_MARK}); \
                     set your own, or TANDEM_DEV=1 (--dev) for a development setup"
                ),
            ));
        }
        let node_id = self
            .node_id
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map_or_else(|| default_node_id(role), str::to_string);
        let me = Identity {
            node_id,
            zone: self.zone.clone(),
            token,
            tls,
        };
        Ok((control, me))
    }
}

/// `<role>-<host name>`, or the role alone when the host has no name.
fn default_node_id(role: &str) -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map_or_else(|| role.to_string(), |h| format!("{role}-{h}"))
}

/// Who we are to the control plane.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_id: String,
    pub zone: String,
    pub token: Option<String>,
    /// Our certificate, for `https://` endpoints.
    pub tls: Option<ClientTls>,
}

impl Identity {
    /// Adds `authorization: Bearer <token>` when we have a token.
    pub fn authorize<T>(&self, req: &mut tonic::Request<T>) -> Result<(), tonic::Status> {
        Bearer::new(self.token.as_deref())
            .map_err(|_| {
                tonic::Status::invalid_argument("TANDEM_TOKEN is not a valid header value")
            })?
            .authorize(req);
        Ok(())
    }
}

/// An endpoint with the settings every node's control-plane connection
/// uses ([`ChannelSettings::NODE`]). The error names `TANDEM_CONTROL` and
/// the URL.
pub fn endpoint(url: &str) -> Result<Endpoint, String> {
    ChannelSettings::NODE
        .endpoint(url)
        .map_err(|e| format!("TANDEM_CONTROL: {url:?} is not a valid URL: {e}"))
}

/// A channel to the control plane at `url` with the node settings,
/// connected now: mTLS with `me`'s certificate for `https://`.
pub async fn connect(url: &str, me: &Identity) -> Result<Channel, ConnectError> {
    ChannelSettings::NODE.connect(url, me.tls.as_ref()).await
}

/// How one `Watch` stream ended, when it ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// At least one event was applied.
    Applied,
    /// A change did not fit: ask for a fresh snapshot next time.
    Diverged,
    /// Nothing was applied.
    Nothing,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The reconnect loop around `Watch` streams: which endpoint to try next
/// (rotating), from which revision (0 after a divergence, for a fresh
/// snapshot), and how long to wait after each attempt.
#[derive(Debug)]
pub struct Reconnect {
    endpoints: Vec<String>,
    /// Control replicas learned from the members' list
    /// ([`Learner::learn_from`]), tried after the configured ones.
    learned: Learner,
    next: usize,
    force_full: bool,
    backoff: Backoff,
    failures: u64,
}

impl Reconnect {
    /// `endpoints` must not be empty.
    pub fn new(endpoints: Vec<String>) -> Self {
        assert!(!endpoints.is_empty(), "no control-plane endpoint to follow");
        Self {
            learned: Learner {
                configured: endpoints.clone(),
                found: Default::default(),
            },
            endpoints,
            next: 0,
            force_full: false,
            backoff: Backoff::reconnect(),
            failures: 0,
        }
    }

    /// The endpoint to try now and the revision to ask from, given what we
    /// hold.
    pub fn attempt(&mut self, current: Option<&Snapshot>) -> (String, Revision) {
        let all: Vec<String> = self
            .endpoints
            .iter()
            .cloned()
            .chain(self.learned.found())
            .collect();
        let url = all[self.next % all.len()].clone();
        self.next += 1;
        let from = match current {
            Some(s) if !self.force_full => s.revision,
            _ => Revision::ZERO,
        };
        (url, from)
    }

    /// The handle a watch loop gives each connection to learn the control
    /// replicas' current members from.
    pub fn learner(&self) -> Learner {
        self.learned.clone()
    }

    /// Records how the attempt at `url` ended, logs a failure (loud on the
    /// first, then every tenth: a long outage must not flood the logs;
    /// `meanwhile` says what the node does in the meantime), then waits.
    pub async fn ended(&mut self, url: &str, outcome: Result<Progress, BoxError>, meanwhile: &str) {
        match outcome {
            Ok(Progress::Applied) => {
                self.force_full = false;
                self.backoff.reset();
                self.failures = 0;
            }
            Ok(Progress::Diverged) => {
                self.force_full = true;
                self.backoff.reset();
            }
            Ok(Progress::Nothing) => {}
            Err(e) => {
                self.failures += 1;
                if self.failures == 1 || self.failures.is_multiple_of(10) {
                    tracing::warn!(endpoint = %url, error = %error_chain(&*e), attempts = self.failures, "control plane unavailable; {meanwhile}");
                } else {
                    tracing::debug!(endpoint = %url, error = %error_chain(&*e), "control plane unavailable");
                }
            }
        }
        tokio::time::sleep(self.backoff.next_wait()).await;
    }
}

/// At most this many learned endpoints are kept.
const MAX_LEARNED: usize = 16;

/// Control replicas learned from the raft members' list (`GetClusterStatus`
/// asked of a replica we reached): a member added after this node started
/// joins its rotation, so it still finds the control plane once the
/// replicas it was configured with are gone. The configured endpoints are
/// always kept; the learned ones are replaced by each answer.
#[derive(Debug, Clone)]
pub struct Learner {
    configured: Vec<String>,
    found: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Learner {
    fn found(&self) -> Vec<String> {
        self.found.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes the members' addresses (`host:port`) as endpoints with the
    /// scheme of `url` (the endpoint that answered); keeps those not
    /// configured already. Returns the ones new to the rotation.
    pub fn learn(&self, url: &str, addresses: &[String]) -> Vec<String> {
        let scheme = url.split_once("://").map_or("http", |(s, _)| s);
        let mut now: Vec<String> = Vec::new();
        for a in addresses {
            let valid = a.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(['/', '@', ' '])
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            let e = format!("{scheme}://{a}");
            if valid
                && !self.configured.contains(&e)
                && !now.contains(&e)
                && now.len() < MAX_LEARNED
            {
                now.push(e);
            }
        }
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        let new: Vec<String> = now.iter().filter(|e| !found.contains(e)).cloned().collect();
        *found = now;
        new
    }

    /// Asks the replica behind `channel` for the members (within a few
    /// seconds, never failing the caller) and learns their addresses.
    pub async fn learn_from(self, channel: Channel, url: String, me: Identity) {
        let mut req = tonic::Request::new(v1::GetClusterStatusRequest {});
        if me.authorize(&mut req).is_err() {
            return;
        }
        let mut client = ControlPlaneClient::new(channel);
        let ask = client.get_cluster_status(req);
        let status = match tokio::time::timeout(Duration::from_secs(5), ask).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(e)) => {
                tracing::debug!(endpoint = %url, error = %e.message(), "cannot list the control replicas");
                return;
            }
            Err(_) => return,
        };
        let addresses: Vec<String> = status.members.into_iter().map(|m| m.address).collect();
        for e in self.learn(&url, &addresses) {
            tracing::info!(endpoint = %e, "control replica learned from the raft members: added to the rotation");
        }
    }
}

/// Opens a `Watch` stream at `url` for `me`, a node of `kind`, from
/// revision `from`, resuming with the store identity of `current`; the
/// connected replica is asked for its members on the side (`learner`).
/// Returns the channel (for the node's reports) and the stream.
pub async fn open_watch(
    url: &str,
    me: &Identity,
    kind: NodeKind,
    from: Revision,
    current: Option<&Snapshot>,
    learner: Learner,
) -> Result<(Channel, tonic::Streaming<v1::WatchEvent>), BoxError> {
    let channel = connect(url, me).await?;
    // Control replicas added since we started join the rotation.
    tokio::spawn(learner.learn_from(channel.clone(), url.to_string(), me.clone()));
    let mut client = ControlPlaneClient::new(channel.clone());
    let (store_id, generation) = resume_identity(current, from);
    let mut req = tonic::Request::new(v1::WatchRequest {
        node_id: me.node_id.clone(),
        kind: kind.into(),
        last_revision: from.0,
        zone: me.zone.clone(),
        store_id,
        generation,
    });
    me.authorize(&mut req)?;
    let stream = client.watch(req).await?.into_inner();
    Ok((channel, stream))
}

/// The store identity to resume a `Watch` from `from` with (empty and 0
/// when unknown, or when asking for a full snapshot anyway).
fn resume_identity(current: Option<&Snapshot>, from: Revision) -> (String, u64) {
    match current.and_then(|s| s.store.as_ref()) {
        Some(store) if from != Revision::ZERO => (store.id.clone(), store.generation),
        _ => (String::new(), 0),
    }
}

/// Applies one `Watch` event to the configuration; `Ok(true)` when it moved.
/// A snapshot replaces it; a change must be the next revision and applies
/// to a copy, so one that fails leaves nothing half-done. Health events do
/// not move the configuration.
pub fn apply_event(current: &mut Option<Snapshot>, event: &v1::WatchEvent) -> Result<bool, String> {
    match &event.event {
        Some(Event::Snapshot(s)) => {
            if let Some(stale) = &s.stale {
                // Still the whole configuration as of its revision: apply
                // it, and say where it came from.
                tracing::warn!(
                    revision = event.revision,
                    replica = %stale.replica,
                    database = %stale.database,
                    cause = %stale.cause,
                    copied_from = %stale.copied_from,
                    "configuration from a control replica's copy in memory: its database is unreachable, so changes made since may be missing"
                );
            }
            let mut snapshot = snapshot_from_proto(s).map_err(|e| e.to_string())?;
            snapshot.revision = Revision(event.revision);
            if snapshot.store.is_none() {
                snapshot.store = store_identity_from_proto(&event.store_id, event.generation);
            }
            if let Some(held) = current.as_ref()
                && held.store.is_some()
                && held.store != snapshot.store
            {
                tracing::warn!(
                    held_revision = held.revision.0,
                    held_store = %held.store.as_ref().map(ToString::to_string).unwrap_or_default(),
                    revision = event.revision,
                    store = %snapshot.store.as_ref().map(ToString::to_string).unwrap_or_else(|| "unknown".into()),
                    "the control plane's store identity changed (a restore, or a database that lost its last transactions): replacing the whole configuration"
                );
            }
            *current = Some(snapshot);
            Ok(true)
        }
        Some(Event::Change(c)) => {
            let change = change_from_proto(c).map_err(|e| e.to_string())?;
            let s = current
                .as_mut()
                .ok_or_else(|| "a change arrived before any snapshot".to_string())?;
            let theirs = store_identity_from_proto(&event.store_id, event.generation);
            if theirs.is_some() && theirs != s.store {
                return Err(format!(
                    "the change at revision {} belongs to store {}, not to {} which revision {} held came from (history was rewritten: a restore, or a database that lost its last transactions)",
                    event.revision,
                    theirs.as_ref().map(ToString::to_string).unwrap_or_default(),
                    s.store
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_else(|| "an unknown store".into()),
                    s.revision.0
                ));
            }
            let mut next = s.clone();
            next.apply(Revision(event.revision), &change)
                .map_err(|e| e.to_string())?;
            *s = next;
            Ok(true)
        }
        Some(Event::Health(_)) => Ok(false),
        None => Err("an empty watch event".into()),
    }
}

/// How often the applied revision is reported again while it stays the
/// same; the control plane marks a node stale after three missed reports.
pub const REPORT_EVERY: Duration = tandem_proto::REPORT_APPLIED_EVERY;

/// What a node tells the control plane about itself beside its revision:
/// a proxy's TCP listeners and the alerts it raises.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeState {
    pub listeners: Vec<v1::ListenerStatus>,
    pub alerts: Vec<String>,
    /// A proxy's admin listener (`Explain` asks it there).
    pub admin_address: String,
    /// A proxy's TLS listener: the certificates it serves.
    pub certificates: Vec<String>,
}

/// Called for every report: the traffic figures it carries (a proxy's,
/// sampled anew at most every few seconds).
pub type TrafficSource = Box<dyn FnMut() -> Vec<v1::BackendTraffic> + Send>;

/// Reports the latest applied revision with `ReportApplied`, coalescing
/// bursts: the watch loop only overwrites the value in `rx`, this task
/// sends the newest. Each new revision goes at once, and the current one
/// again every [`REPORT_EVERY`], so the control plane's "last seen" stays
/// fresh and a failed report is retried. Ends when the sender is dropped.
pub async fn report_applied(
    rx: watch::Receiver<Option<(Channel, Revision)>>,
    me: Identity,
    kind: NodeKind,
    detail: &'static str,
) {
    report_applied_with(rx, None, None, me, kind, detail).await
}

/// [`report_applied`], with the node's [`NodeState`] too (a change of it
/// is reported at once, like a new revision) and its traffic figures.
pub async fn report_applied_with(
    mut rx: watch::Receiver<Option<(Channel, Revision)>>,
    mut state: Option<watch::Receiver<NodeState>>,
    mut traffic: Option<TrafficSource>,
    me: Identity,
    kind: NodeKind,
    detail: &'static str,
) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let state_changed = async {
            match state.as_mut() {
                Some(s) => s.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            alive = state_changed => if !alive { state = None },
            _ = tick.tick() => {}
        }
        let Some((channel, revision)) = rx.borrow_and_update().clone() else {
            continue;
        };
        let extra = state
            .as_mut()
            .map(|s| s.borrow_and_update().clone())
            .unwrap_or_default();
        let mut req = tonic::Request::new(ReportAppliedRequest {
            node_id: me.node_id.clone(),
            kind: kind.into(),
            revision: revision.0,
            zone: me.zone.clone(),
            detail: detail.into(),
            listeners: extra.listeners,
            alerts: extra.alerts,
            admin_address: extra.admin_address,
            certificates: extra.certificates,
            traffic: traffic.as_mut().map(|t| t()).unwrap_or_default(),
        });
        req.set_timeout(Duration::from_secs(5));
        if me.authorize(&mut req).is_err() {
            continue;
        }
        let mut client = ControlPlaneClient::new(channel);
        match tokio::time::timeout(Duration::from_secs(5), client.report_applied(req)).await {
            Ok(Ok(_)) => tracing::debug!(revision = revision.0, "reported applied revision"),
            Ok(Err(e)) => {
                tracing::debug!(revision = revision.0, error = %e, "ReportApplied failed; will report again")
            }
            Err(_) => tracing::debug!(revision = revision.0, "ReportApplied timed out"),
        }
    }
}

/// The innermost cause of an error as a person reads it: "connection
/// refused", "pool timed out while waiting for an open connection" (the
/// OS error number dropped, the first letter lowered); `None` when it says
/// nothing.
pub fn innermost_cause(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut innermost = e;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let text = innermost.to_string();
    // "Connection refused (os error 111)" -> "connection refused"
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text.as_str(),
    };
    let mut chars = text.chars();
    let first = chars.next()?;
    Some(first.to_lowercase().chain(chars).collect())
}

/// An error with its causes: "transport error: connection refused".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use tandem_proto::v1::config_change::Change;

    use super::*;

    fn change(revision: u64, c: Change) -> v1::WatchEvent {
        v1::WatchEvent {
            revision,
            event: Some(Event::Change(v1::ConfigChange { change: Some(c) })),
            ..Default::default()
        }
    }

    #[test]
    fn snapshot_then_changes_in_order_and_a_gap_is_refused() {
        let mut cur = None;
        let snap = v1::WatchEvent {
            revision: 1,
            event: Some(Event::Snapshot(v1::Snapshot {
                revision: 1,
                pools: vec![v1::Pool {
                    name: "shop".into(),
                    ..Default::default()
                }],
                stale: None,
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(apply_event(&mut cur, &snap), Ok(true));
        let add = change(
            2,
            Change::BackendUpserted(v1::BackendUpserted {
                pool: "shop".into(),
                backend: Some(v1::Backend {
                    address: "10.0.0.1:80".into(),
                    ..Default::default()
                }),
            }),
        );
        assert_eq!(apply_event(&mut cur, &add), Ok(true));
        assert_eq!(cur.as_ref().map(|s| s.revision), Some(Revision(2)));

        // Health events do not move the configuration.
        let health = v1::WatchEvent {
            revision: 2,
            event: Some(Event::Health(v1::HealthUpdate::default())),
            ..Default::default()
        };
        assert_eq!(apply_event(&mut cur, &health), Ok(false));

        // Revision 4 after 2, or a backend of an unknown pool: refused, and
        // nothing changed.
        let gap = change(4, Change::PoolDeleted("shop".into()));
        assert!(apply_event(&mut cur, &gap).is_err());
        let unknown = change(
            3,
            Change::BackendRemoved(v1::BackendRemoved {
                pool: "ghost".into(),
                address: "10.0.0.1:80".into(),
            }),
        );
        assert!(apply_event(&mut cur, &unknown).is_err());
        let s = cur.unwrap();
        assert_eq!(s.revision, Revision(2));
        assert_eq!(s.pools.values().next().map(|p| p.backends.len()), Some(1));

        let mut empty = None;
        assert!(
            apply_event(&mut empty, &add).is_err(),
            "a change before any snapshot"
        );
    }

    #[test]
    fn a_change_of_another_store_identity_is_refused_and_a_snapshot_replaces_it() {
        let ident = |id: &str, generation| v1::WatchEvent {
            store_id: id.into(),
            generation,
            ..Default::default()
        };
        let snap = v1::WatchEvent {
            revision: 5,
            event: Some(Event::Snapshot(v1::Snapshot {
                revision: 5,
                pools: vec![v1::Pool {
                    name: "shop".into(),
                    ..Default::default()
                }],
                store_id: "s1".into(),
                generation: 1,
                ..Default::default()
            })),
            ..ident("s1", 1)
        };
        let mut cur = None;
        assert_eq!(apply_event(&mut cur, &snap), Ok(true));
        assert_eq!(
            resume_identity(cur.as_ref(), Revision(5)),
            ("s1".to_string(), 1)
        );
        assert_eq!(
            resume_identity(cur.as_ref(), Revision::ZERO),
            (String::new(), 0),
            "a full snapshot asked for: no identity"
        );
        let next = |generation| v1::WatchEvent {
            revision: 6,
            event: Some(Event::Change(v1::ConfigChange {
                change: Some(Change::PoolDeleted("shop".into())),
            })),
            ..ident("s1", generation)
        };
        // Revision 6 of generation 2 is not revision 6 of generation 1.
        let e = apply_event(&mut cur, &next(2)).unwrap_err();
        assert!(e.contains("s1/2") && e.contains("s1/1"), "{e}");
        assert_eq!(cur.as_ref().unwrap().pools.len(), 1, "nothing applied");
        assert_eq!(apply_event(&mut cur, &next(1)), Ok(true));
        // A snapshot of a new generation replaces everything, even at a
        // lower revision.
        let restored = v1::WatchEvent {
            revision: 3,
            event: Some(Event::Snapshot(v1::Snapshot {
                revision: 3,
                store_id: "s1".into(),
                generation: 2,
                ..Default::default()
            })),
            ..ident("s1", 2)
        };
        assert_eq!(apply_event(&mut cur, &restored), Ok(true));
        let s = cur.unwrap();
        assert_eq!(s.revision, Revision(3));
        assert_eq!(s.store.map(|i| i.generation), Some(2));
    }

    #[test]
    fn learned_members_join_the_rotation_after_the_configured_ones() {
        let mut r = Reconnect::new(vec!["http://a:1".into()]);
        let learner = r.learner();
        let new = learner.learn(
            "http://a:1",
            &[
                "a:1".into(),
                "b:2".into(),
                "c:3".into(),
                "no-port".into(),
                "evil/x:4".into(),
                "d:0".into(),
            ],
        );
        assert_eq!(new, ["http://b:2", "http://c:3"], "only valid, new ones");
        let tried: Vec<String> = (0..3).map(|_| r.attempt(None).0).collect();
        assert_eq!(tried, ["http://a:1", "http://b:2", "http://c:3"]);
        // A later answer replaces the learned ones; the configured stay.
        assert_eq!(
            learner.learn("https://a:1", &["d:4".into()]),
            ["https://d:4"]
        );
        let tried: Vec<String> = (0..2).map(|_| r.attempt(None).0).collect();
        assert!(tried.contains(&"http://a:1".to_string()), "{tried:?}");
        assert!(tried.contains(&"https://d:4".to_string()), "{tried:?}");
        assert!(!tried.contains(&"http://b:2".to_string()), "{tried:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn reconnects_rotate_endpoints_and_ask_for_a_snapshot_after_a_divergence() {
        let mut r = Reconnect::new(vec!["http://a:1".into(), "http://b:2".into()]);
        let held = Snapshot {
            revision: Revision(7),
            ..Default::default()
        };
        assert_eq!(r.attempt(None), ("http://a:1".into(), Revision::ZERO));
        r.ended("http://a:1", Err("refused".into()), "waiting")
            .await;
        assert_eq!(r.attempt(Some(&held)), ("http://b:2".into(), Revision(7)));
        r.ended("http://b:2", Ok(Progress::Diverged), "waiting")
            .await;
        assert_eq!(r.attempt(Some(&held)).1, Revision::ZERO, "a fresh snapshot");
        r.ended("http://a:1", Ok(Progress::Applied), "waiting")
            .await;
        assert_eq!(r.attempt(Some(&held)), ("http://b:2".into(), Revision(7)));
        assert_eq!(r.failures, 0);
    }

    fn control_args(args: &[&str]) -> ControlArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            control: ControlArgs,
        }
        let mut argv = vec!["node"];
        argv.extend_from_slice(args);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().control
    }

    #[test]
    fn an_example_token_is_refused_unless_dev() {
        let e = control_args(&["--token", "compose-node-token-change-me"])
            .resolve("proxy")
            .unwrap_err();
        assert_eq!(e.variable, "TANDEM_TOKEN");
        assert!(
            e.to_string()
                .starts_with("TANDEM_TOKEN: refusing to start with a shipped example secret"),
            "{e}"
        );
        let args = ["--token", "compose-node-token-change-me", "--dev"];
        assert!(control_args(&args).resolve("proxy").is_ok());
    }

    #[test]
    fn flags_resolve_to_endpoints_and_an_identity() {
        let (control, me) = control_args(&[
            "--control",
            " http://a:1 ,,http://b:2",
            "--token",
            " t0k ",
            "--node-id",
            "edge-1",
            "--zone",
            "z1",
        ])
        .resolve("proxy")
        .unwrap();
        assert_eq!(control, ["http://a:1", "http://b:2"]);
        assert_eq!(
            (me.node_id.as_str(), me.zone.as_str(), me.token.as_deref()),
            ("edge-1", "z1", Some("t0k"))
        );

        // The token file is read when no token is given; the node id
        // defaults to the role and the host.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let (control, me) = control_args(&["--token-file", file.to_str().unwrap()])
            .resolve("agent")
            .unwrap();
        assert!(control.is_empty());
        assert_eq!(me.token.as_deref(), Some("from-file"));
        assert!(me.node_id.starts_with("agent"), "{}", me.node_id);
    }

    #[test]
    fn bad_flags_name_their_variable() {
        let variable = |args: &[&str]| control_args(args).resolve("proxy").unwrap_err().variable;
        assert_eq!(variable(&["--control", "127.0.0.1:7400"]), "TANDEM_CONTROL");
        assert_eq!(
            variable(&["--token-file", "/nonexistent/token"]),
            "TANDEM_TOKEN_FILE"
        );
        assert_eq!(variable(&["--token", "two\nlines"]), "TANDEM_TOKEN");
        assert_eq!(
            variable(&["--control", "https://a:1"]),
            "TANDEM_TLS_CA_FILE",
            "https:// without a certificate"
        );
        assert_eq!(
            variable(&["--tls-ca-file", "/ca.pem"]),
            "TANDEM_TLS_CERT_FILE",
            "one of the three files"
        );
    }

    #[test]
    fn tokens_become_bearer_headers_and_bad_urls_name_the_variable() {
        let me = Identity {
            node_id: "n".into(),
            zone: "z".into(),
            token: Some("s3cret".into()),
            tls: None,
        };
        let mut req = tonic::Request::new(());
        me.authorize(&mut req).unwrap();
        assert_eq!(
            req.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        let e = endpoint("not a url").unwrap_err();
        assert!(
            e.contains("TANDEM_CONTROL") && e.contains("not a url"),
            "{e}"
        );
        assert!(endpoint("http://127.0.0.1:7400").is_ok());
    }
}
