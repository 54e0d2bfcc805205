//! Raft membership over the API (`tandemctl cluster add-member` /
//! `remove-member`), and the start-up check that keeps a replica whose
//! state directory is empty from coming back under an id the group
//! already has.
//!
//! Only the leader changes the membership. A follower passes the call on
//! to the leader with the caller's own credentials (the admin role is the
//! caller's, not the replica's). Removing the leader first hands
//! leadership to the most up-to-date reachable voter, then passes the
//! removal on to it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tandem_client::{ChannelSettings, ClientTls};
use tandem_proto::v1;
use tandem_proto::v1::control_plane_client::ControlPlaneClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::consensus::peers::peer_url;
use crate::consensus::storage::DiskStorage;
use crate::consensus::{Consensus, FORWARDED, MemberChange, ProposeError, RaftStatus};

/// How long a leader being removed waits for its successor.
const TRANSFER_WAIT: Duration = Duration::from_secs(5);

/// The members as this replica last applied them, with their addresses
/// (`fallback`: the command line's, before raft has published a status).
pub fn member_addresses(s: &RaftStatus, fallback: &BTreeMap<u64, String>) -> Vec<(u64, String)> {
    let mut ids: Vec<u64> = s.voters.iter().chain(&s.learners).copied().collect();
    if ids.is_empty() {
        ids = fallback.keys().copied().collect();
    }
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .map(|id| {
            let addr = s
                .addresses
                .get(&id)
                .or_else(|| fallback.get(&id))
                .cloned()
                .unwrap_or_default();
            (id, addr)
        })
        .collect()
}

/// "learner" or "voter".
pub fn suffrage(s: &RaftStatus, id: u64) -> &'static str {
    if s.learners.contains(&id) {
        "learner"
    } else {
        "voter"
    }
}

pub async fn add_member(
    consensus: &Consensus,
    tls: Option<&ClientTls>,
    req: Request<v1::AddMemberRequest>,
) -> Result<Response<v1::MemberReply>, Status> {
    let r = req.get_ref().clone();
    if r.id == 0 {
        return Err(Status::invalid_argument("id: must be a positive integer"));
    }
    let address = r.address.trim();
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        return Err(Status::invalid_argument(format!(
            "address: {address:?} is not host:port (the new replica's gRPC address)"
        )));
    }
    if !consensus.status().is_leader() {
        let mut leader = leader_client(consensus, tls, &req, false).await?;
        return leader.add_member(r).await;
    }
    let change = MemberChange::Add {
        id: r.id,
        address: address.to_string(),
    };
    let index = change_members(consensus, change).await?;
    tracing::info!(id = r.id, %address, index, "member added as a learner");
    Ok(Response::new(v1::MemberReply {
        raft_index: index,
        message: format!(
            "member {} ({address}) added as a learner at raft index {index}; start it with \
             --join (TANDEM_RAFT_JOIN=existing): the leader promotes it to voter once it has \
             caught up",
            r.id
        ),
    }))
}

pub async fn remove_member(
    consensus: &Consensus,
    tls: Option<&ClientTls>,
    req: Request<v1::RemoveMemberRequest>,
) -> Result<Response<v1::MemberReply>, Status> {
    let r = *req.get_ref();
    let s = consensus.status();
    if !s.is_leader() {
        let mut leader = leader_client(consensus, tls, &req, false).await?;
        return leader.remove_member(r).await;
    }
    if r.id == s.id {
        // Hand leadership over first: a leader that removes itself keeps
        // leading a group it is not in until it notices.
        let to = s
            .voters
            .iter()
            .copied()
            .filter(|&v| v != s.id && consensus.contact(v).reachable)
            .max_by_key(|v| s.progress.get(v).map(|p| p.matched))
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "{} is the leader and no other voter is reachable to take over",
                    r.id
                ))
            })?;
        tracing::info!(to, "removing the leader: handing leadership over first");
        consensus.transfer_leader(to);
        let start = Instant::now();
        loop {
            let now = consensus.status();
            if now.leader != 0 && now.leader != s.id {
                break;
            }
            if start.elapsed() > TRANSFER_WAIT {
                return Err(Status::unavailable(format!(
                    "leadership did not move from {} to {to} within {TRANSFER_WAIT:?}; retry",
                    s.id
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut leader = leader_client(consensus, tls, &req, true).await?;
        return leader.remove_member(r).await;
    }
    let index = change_members(consensus, MemberChange::Remove { id: r.id }).await?;
    tracing::info!(id = r.id, index, "member removed");
    Ok(Response::new(v1::MemberReply {
        raft_index: index,
        message: format!(
            "member {} removed at raft index {index}; stop that replica (its id is not to be \
             reused: a replacement joins under a new id)",
            r.id
        ),
    }))
}

/// Proposes `change`, waiting out a change still being applied (a new
/// leader's first entry counts as one) for a few seconds.
async fn change_members(consensus: &Consensus, change: MemberChange) -> Result<u64, Status> {
    let start = Instant::now();
    loop {
        match consensus.change_members(change.clone()).await {
            Err(ProposeError::Membership(why))
                if why.starts_with(crate::consensus::node::PENDING_CHANGE)
                    && start.elapsed() < TRANSFER_WAIT =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other.map_err(refused),
        }
    }
}

fn refused(e: ProposeError) -> Status {
    match e {
        ProposeError::Membership(why) => Status::failed_precondition(why),
        ProposeError::Refused(why) => Status::failed_precondition(why),
        ProposeError::NotLeader { leader } => Status::unavailable(format!(
            "this replica is no longer the leader (leader: {leader}); retry"
        )),
        ProposeError::Lost => Status::unavailable(
            "leadership changed before the change was committed: check `tandemctl cluster \
             status`, then retry",
        ),
        ProposeError::Stopped => Status::unavailable("the raft driver has stopped"),
    }
}

/// Passes the caller's credentials on, marked as forwarded.
#[derive(Clone)]
struct PassOn {
    authorization: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for PassOn {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(a) = &self.authorization {
            req.metadata_mut().insert("authorization", a.clone());
        }
        req.metadata_mut()
            .insert(FORWARDED, MetadataValue::from_static("1"));
        Ok(req)
    }
}

type LeaderClient =
    ControlPlaneClient<tonic::service::interceptor::InterceptedService<Channel, PassOn>>;

/// A client of the leader presenting the caller's credentials. A call
/// already forwarded once is not forwarded again unless `again` (after
/// this replica handed leadership over on purpose).
async fn leader_client<T>(
    consensus: &Consensus,
    tls: Option<&ClientTls>,
    req: &Request<T>,
    again: bool,
) -> Result<LeaderClient, Status> {
    let s = consensus.status();
    if s.leader == 0 {
        return Err(Status::unavailable(
            "no raft leader (no quorum of control replicas): membership cannot change now",
        ));
    }
    if req.metadata().get(FORWARDED).is_some() && !again {
        return Err(Status::unavailable(format!(
            "control-{} is not the raft leader (leader: {}); retry",
            s.id, s.leader
        )));
    }
    let addr = s.addresses.get(&s.leader).ok_or_else(|| {
        Status::unavailable(format!("raft leader {} has no known address", s.leader))
    })?;
    let settings = ChannelSettings {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Some(Duration::from_secs(30)),
        keep_alive: None,
    };
    let channel = settings
        .connect(&peer_url(addr, tls), tls)
        .await
        .map_err(|e| {
            Status::unavailable(format!(
                "cannot reach the raft leader control-{} at {addr}: {e}",
                s.leader
            ))
        })?;
    let authorization = req.metadata().get("authorization").cloned();
    Ok(ControlPlaneClient::with_interceptor(
        channel,
        PassOn { authorization },
    ))
}

/// Refuses to start a replica whose state directory is empty under an id
/// the group already counts as a voter it has heard from: that replica
/// has forgotten its term and vote, and could vote twice in one term.
/// Asks the other replicas in `addresses` (their leader's view); when
/// none answers, starts (nothing to go by).
pub async fn refuse_forgotten_member(
    id: u64,
    state_dir: &Path,
    addresses: &BTreeMap<u64, String>,
    token: &str,
    tls: Option<&ClientTls>,
) -> anyhow::Result<()> {
    if !DiskStorage::is_fresh(state_dir) {
        return Ok(());
    }
    let bearer: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow::anyhow!("the node token must be printable ASCII"))?;
    let asks = addresses
        .iter()
        .filter(|(other, _)| **other != id)
        .map(|(other, addr)| {
            let bearer = bearer.clone();
            async move {
                let ask = async {
                    let channel = ChannelSettings::connect_within(Duration::from_secs(1))
                        .connect(&peer_url(addr, tls), tls)
                        .await
                        .ok()?;
                    let mut client =
                        ControlPlaneClient::with_interceptor(channel, move |mut r: Request<()>| {
                            r.metadata_mut().insert("authorization", bearer.clone());
                            Ok(r)
                        });
                    client
                        .get_cluster_status(v1::GetClusterStatusRequest {})
                        .await
                        .ok()
                        .map(Response::into_inner)
                };
                let answer = tokio::time::timeout(Duration::from_secs(3), ask)
                    .await
                    .ok()
                    .flatten();
                (*other, answer)
            }
        });
    let answers = futures::future::join_all(asks).await;
    let asked = answers.len();
    let answered = answers.iter().filter(|(_, a)| a.is_some()).count();
    for (peer, status) in answers {
        let Some(status) = status else { continue };
        let known = status
            .members
            .iter()
            .find(|m| m.id == id && m.suffrage != "learner" && m.last_heard_ms.is_some());
        if known.is_some() {
            anyhow::bail!(
                "raft id {id} is already a voter of the group (control-{} heard from it, per \
                 control-{peer}) but {} holds no raft state: it would have forgotten its vote. \
                 Remove it (`tandemctl cluster remove-member {id}`) and add this replica under \
                 a new id (`tandemctl cluster add-member NEW_ID ADDR`, then start it with \
                 TANDEM_RAFT_ID=NEW_ID and --join)",
                status.leader_id,
                state_dir.display()
            );
        }
    }
    tracing::info!(
        id,
        asked,
        answered,
        "new raft state: no other replica knows this id as a voter it has heard from"
    );
    Ok(())
}
