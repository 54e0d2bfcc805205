//! Connections to the other replicas: the raft transport (batches of raft
//! messages over the internal `tandem.v1.Raft` service) and clients for
//! forwarding calls to the leader and for copying the configuration from a
//! replica that holds it (see `hub`). Every call presents the node token.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use tandem_client::{Bearer, ChannelSettings, ClientTls};
use tandem_proto::v1;
use tandem_proto::v1::control_plane_client::ControlPlaneClient;
use tandem_proto::v1::raft_client::RaftClient;
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::node::{Consensus, Transport};

/// Set on calls one replica forwards to another, so they are never
/// forwarded twice.
pub const FORWARDED: &str = "x-tandem-forwarded";

/// Messages queued per peer before new ones are dropped (raft resends).
const QUEUE: usize = 4096;
/// Messages sent in one call.
const BATCH: usize = 256;

/// The node token, and the mark of a forwarded call.
#[derive(Clone)]
pub struct Auth {
    bearer: Bearer,
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.bearer.authorize(&mut req);
        req.metadata_mut()
            .insert(FORWARDED, MetadataValue::from_static("1"));
        Ok(req)
    }
}

pub type PeerClient = ControlPlaneClient<InterceptedService<Channel, Auth>>;

/// The URL of a replica at `addr`: `https://` when replicas speak mTLS.
pub fn peer_url(addr: &str, tls: Option<&ClientTls>) -> String {
    match tls {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    }
}

/// Every other replica, by raft id. Members come and go with membership
/// changes ([`Transport::set_members`]).
#[derive(Clone)]
pub struct Peers {
    me: u64,
    links: Arc<RwLock<BTreeMap<u64, Link>>>,
    auth: Auth,
    local_ip: Option<IpAddr>,
    /// This replica's certificate, for mTLS to the others.
    tls: Option<ClientTls>,
    consensus: Arc<OnceLock<Consensus>>,
}

/// One peer: its address, a channel, and the queue of its send loop
/// (dropping the queue ends the loop).
struct Link {
    addr: String,
    channel: Channel,
    queue: mpsc::Sender<Message>,
}

impl Peers {
    /// `members` maps ids to gRPC addresses (this replica's included);
    /// `local_ip`, when set, is the source address of outgoing calls.
    pub fn new(
        me: u64,
        members: &BTreeMap<u64, String>,
        token: &str,
        local_ip: Option<IpAddr>,
        tls: Option<ClientTls>,
    ) -> anyhow::Result<Peers> {
        let bearer = Bearer::new(Some(token))
            .map_err(|_| anyhow::anyhow!("the node token must be printable ASCII"))?;
        let peers = Peers {
            me,
            links: Arc::new(RwLock::new(BTreeMap::new())),
            auth: Auth { bearer },
            local_ip,
            tls,
            consensus: Arc::new(OnceLock::new()),
        };
        let mut links = BTreeMap::new();
        for (&id, addr) in members {
            if id != me {
                links.insert(id, peers.link(id, addr)?);
            }
        }
        *peers.links.write().unwrap_or_else(|p| p.into_inner()) = links;
        Ok(peers)
    }

    /// A lazy channel to `addr` and the send loop of peer `id`.
    fn link(&self, id: u64, addr: &str) -> anyhow::Result<Link> {
        let tls = self.tls.as_ref();
        let channel = ChannelSettings::PEER
            .connect_lazy(&peer_url(addr, tls), tls, self.local_ip)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let (queue, rx) = mpsc::channel(QUEUE);
        let client = RaftClient::with_interceptor(channel.clone(), self.auth.clone());
        tokio::spawn(send_loop(
            id,
            addr.to_string(),
            client,
            rx,
            self.consensus.clone(),
        ));
        Ok(Link {
            addr: addr.to_string(),
            channel,
            queue,
        })
    }

    /// Lets the send loops report unreachable peers and snapshot results.
    pub fn attach(&self, consensus: Consensus) {
        let _ = self.consensus.set(consensus);
    }

    /// This replica's certificate for calls to the others (mTLS), if any.
    pub fn tls(&self) -> Option<&ClientTls> {
        self.tls.as_ref()
    }

    pub fn me(&self) -> u64 {
        self.me
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Link>> {
        self.links.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The other replicas' ids.
    pub fn ids(&self) -> impl Iterator<Item = u64> + use<> {
        self.read().keys().copied().collect::<Vec<_>>().into_iter()
    }

    pub fn address(&self, id: u64) -> Option<String> {
        self.read().get(&id).map(|l| l.addr.clone())
    }

    /// A control-API client for replica `id` (for forwarding to the leader).
    pub fn client(&self, id: u64) -> Option<PeerClient> {
        self.read()
            .get(&id)
            .map(|l| ControlPlaneClient::with_interceptor(l.channel.clone(), self.auth.clone()))
    }
}

impl Transport for Peers {
    fn set_members(&self, members: &BTreeMap<u64, String>) {
        let mut links = self.links.write().unwrap_or_else(|p| p.into_inner());
        links.retain(|id, l| {
            let keep = members.get(id) == Some(&l.addr);
            if !keep {
                tracing::info!(peer = id, addr = %l.addr, "raft peer removed");
            }
            keep
        });
        for (&id, addr) in members {
            if id == self.me || links.contains_key(&id) {
                continue;
            }
            match self.link(id, addr) {
                Ok(link) => {
                    tracing::info!(peer = id, %addr, "raft peer added");
                    links.insert(id, link);
                }
                Err(e) => {
                    tracing::error!(peer = id, %addr, error = %e, "cannot reach this member's address")
                }
            }
        }
    }

    fn send(&self, msgs: Vec<Message>) {
        let links = self.read();
        for m in msgs {
            match links.get(&m.to).map(|l| &l.queue) {
                Some(q) => {
                    if q.try_send(m).is_err() {
                        metrics::counter!("tandem_raft_messages_dropped_total").increment(1);
                    }
                }
                None => tracing::debug!(to = m.to, "raft message for an unknown member dropped"),
            }
        }
    }
}

async fn send_loop(
    id: u64,
    addr: String,
    mut client: RaftClient<InterceptedService<Channel, Auth>>,
    mut rx: mpsc::Receiver<Message>,
    consensus: Arc<OnceLock<Consensus>>,
) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let snapshots = batch
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .count();
        let messages: Vec<Vec<u8>> = batch
            .iter()
            .filter_map(|m| m.write_to_bytes().ok())
            .collect();
        let n = messages.len();
        let result = client.step(v1::RaftBatch { messages }).await;
        let ok = result.is_ok();
        if let Some(c) = consensus.get() {
            if snapshots > 0 {
                c.report_snapshot(id, ok);
            }
            if !ok {
                c.report_unreachable(id);
            }
        }
        match result {
            Ok(_) => {
                if failing {
                    tracing::info!(peer = id, %addr, "raft peer reachable again");
                    failing = false;
                }
                metrics::counter!("tandem_raft_messages_sent_total").increment(n as u64);
            }
            Err(status) => {
                if !failing {
                    tracing::warn!(peer = id, %addr, error = %status.message(), "raft peer unreachable");
                    failing = true;
                }
                metrics::counter!("tandem_raft_send_failures_total").increment(1);
                // Raft resends what matters; do not hammer a dead peer.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
