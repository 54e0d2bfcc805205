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

use crate::Error;
use crate::consensus::peers::peer_url;
use crate::consensus::storage::DiskStorage;
use crate::consensus::{Consensus, FORWARDED, MemberChange, ProposeError, RaftStatus};
use crate::error::{LeaderError, MembershipError};
use crate::store::{RecordedMember, Store};

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
) -> Result<v1::MemberReply, Error> {
    let r = req.get_ref().clone();
    if r.id == 0 {
        return Err(Error::Membership(MembershipError::InvalidId));
    }
    let address = r.address.trim();
    let valid = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        return Err(Error::Membership(MembershipError::InvalidAddress(
            address.to_string(),
        )));
    }
    if !consensus.status().is_leader() {
        let mut leader = leader_client(consensus, tls, &req, false).await?;
        return forwarded(leader.add_member(r).await);
    }
    let change = MemberChange::Add {
        id: r.id,
        address: address.to_string(),
    };
    let index = change_members(consensus, change).await?;
    tracing::info!(id = r.id, %address, index, "member added as a learner");
    Ok(v1::MemberReply {
        raft_index: index,
        message: format!(
            "member {} ({address}) added as a learner at raft index {index}; start it with \
             --join (TANDEM_RAFT_JOIN=existing): the leader promotes it to voter once it has \
             caught up",
            r.id
        ),
    })
}

pub async fn remove_member(
    consensus: &Consensus,
    tls: Option<&ClientTls>,
    req: Request<v1::RemoveMemberRequest>,
) -> Result<v1::MemberReply, Error> {
    let r = *req.get_ref();
    let s = consensus.status();
    if !s.is_leader() {
        let mut leader = leader_client(consensus, tls, &req, false).await?;
        return forwarded(leader.remove_member(r).await);
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
            .ok_or(Error::Membership(MembershipError::NoSuccessor { id: r.id }))?;
        tracing::info!(to, "removing the leader: handing leadership over first");
        consensus.transfer_leader(to);
        let start = Instant::now();
        loop {
            let now = consensus.status();
            if now.leader != 0 && now.leader != s.id {
                break;
            }
            if start.elapsed() > TRANSFER_WAIT {
                return Err(Error::Membership(MembershipError::TransferTimedOut {
                    from: s.id,
                    to,
                    waited: TRANSFER_WAIT,
                }));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut leader = leader_client(consensus, tls, &req, true).await?;
        return forwarded(leader.remove_member(r).await);
    }
    let index = change_members(consensus, MemberChange::Remove { id: r.id }).await?;
    tracing::info!(id = r.id, index, "member removed");
    Ok(v1::MemberReply {
        raft_index: index,
        message: format!(
            "member {} removed at raft index {index}; stop that replica (its id is not to be \
             reused: a replacement joins under a new id)",
            r.id
        ),
    })
}

/// The leader's answer to a call passed on to it, as it is.
fn forwarded<T>(answer: Result<Response<T>, Status>) -> Result<T, Error> {
    answer.map(Response::into_inner).map_err(Error::Forwarded)
}

/// Proposes `change`, waiting out a change still being applied (a new
/// leader's first entry counts as one) for a few seconds.
async fn change_members(consensus: &Consensus, change: MemberChange) -> Result<u64, Error> {
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

fn refused(e: ProposeError) -> Error {
    Error::Membership(match e {
        ProposeError::Membership(why) | ProposeError::Refused(why) => MembershipError::Refused(why),
        ProposeError::NotLeader { leader } => MembershipError::NotLeader { leader },
        ProposeError::Lost => MembershipError::Lost,
        ProposeError::Stopped => MembershipError::Stopped,
    })
}

/// Passes the caller's credentials on, marked as forwarded.
#[derive(Clone)]
pub(crate) struct PassOn {
    authorization: Option<MetadataValue<Ascii>>,
    /// Who this replica speaks for, when it presents its own certificate.
    on_behalf: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for PassOn {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(a) = &self.authorization {
            req.metadata_mut().insert("authorization", a.clone());
        }
        if let Some(who) = &self.on_behalf {
            req.metadata_mut()
                .insert(crate::auth::FORWARDED_FOR, who.clone());
        }
        req.metadata_mut()
            .insert(FORWARDED, MetadataValue::from_static("1"));
        Ok(req)
    }
}

pub(crate) type LeaderClient =
    ControlPlaneClient<tonic::service::interceptor::InterceptedService<Channel, PassOn>>;

/// A client of the leader presenting the caller's credentials (for
/// membership changes and the emergency levers). A call already forwarded
/// once is not forwarded again unless `again` (after this replica handed
/// leadership over on purpose).
pub(crate) async fn leader_client<T>(
    consensus: &Consensus,
    tls: Option<&ClientTls>,
    req: &Request<T>,
    again: bool,
) -> Result<LeaderClient, Error> {
    let s = consensus.status();
    if s.leader == 0 {
        return Err(Error::Leader(LeaderError::NoLeaderToAsk));
    }
    if req.metadata().get(FORWARDED).is_some() && !again {
        return Err(Error::Leader(LeaderError::NotLeader {
            id: s.id,
            leader: s.leader,
        }));
    }
    let addr = s
        .addresses
        .get(&s.leader)
        .ok_or(Error::Leader(LeaderError::UnknownLeader(s.leader)))?;
    let unreachable = |cause: String| {
        Error::Leader(LeaderError::Unreachable {
            leader: s.leader,
            address: addr.clone(),
            cause,
        })
    };
    let settings = ChannelSettings {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Some(Duration::from_secs(30)),
        keep_alive: None,
    };
    let channel = settings
        .connect(&peer_url(addr, tls), tls)
        .await
        .map_err(|e| unreachable(crate::error::innermost_cause(&*e)))?;
    let authorization = req.metadata().get("authorization").cloned();
    Ok(ControlPlaneClient::with_interceptor(
        channel,
        PassOn {
            authorization,
            on_behalf: crate::auth::forwarded_for(req),
        },
    ))
}

/// Refuses to start a replica whose state directory is empty under an id
/// the group already counts as a voter it has heard from: that replica
/// has forgotten its term and vote, and could vote twice in one term.
/// Asks the other replicas in `addresses` (their leader's view), then the
/// membership the leader recorded in the control database ([`record`]):
/// with neither (no replica answers, the database is away or has no
/// record), starts, as there is nothing to go by.
pub async fn refuse_forgotten_member(
    id: u64,
    state_dir: &Path,
    addresses: &BTreeMap<u64, String>,
    token: &str,
    store: &Store,
    tls: Option<&ClientTls>,
) -> anyhow::Result<()> {
    if !DiskStorage::is_fresh(state_dir) {
        return Ok(());
    }
    ask_peers(id, state_dir, addresses, token, tls).await?;
    consult_record(id, state_dir, store).await
}

/// The other replicas' view (their leader's).
async fn ask_peers(
    id: u64,
    state_dir: &Path,
    addresses: &BTreeMap<u64, String>,
    token: &str,
    tls: Option<&ClientTls>,
) -> anyhow::Result<()> {
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

/// How long the start-up check waits for the control database.
const RECORD_WAIT: Duration = Duration::from_secs(3);

/// Refuses when the membership recorded in the control database counts
/// `id` as a voter of a group of several (a group of one cannot vote
/// twice: it is the only voter). An unreachable database, or one without
/// the record yet, says nothing.
async fn consult_record(id: u64, state_dir: &Path, store: &Store) -> anyhow::Result<()> {
    let recorded = match tokio::time::timeout(RECORD_WAIT, store.raft_members()).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "cannot read the raft membership record; starting without it");
            return Ok(());
        }
        Err(_) => {
            tracing::info!(
                "the control database did not answer within {RECORD_WAIT:?}: starting without \
                 the raft membership record"
            );
            return Ok(());
        }
    };
    if let Some(reason) = refusal_by_record(id, state_dir, &recorded) {
        anyhow::bail!(reason);
    }
    Ok(())
}

/// Why the record forbids `id` to start with empty raft state, if it does.
fn refusal_by_record(id: u64, state_dir: &Path, recorded: &[RecordedMember]) -> Option<String> {
    let voters: Vec<u64> = recorded
        .iter()
        .filter(|m| m.suffrage == "voter")
        .map(|m| m.id)
        .collect();
    if voters.len() < 2 || !voters.contains(&id) {
        return None;
    }
    let list = voters
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "raft id {id} is a voter of the group (voters {list}, as recorded in the control \
         database's raft_members table) but {} holds no raft state: it would have forgotten \
         its vote. Remove it (`tandemctl cluster remove-member {id}`) and add this replica under \
         a new id (`tandemctl cluster add-member NEW_ID ADDR`, then start it with \
         TANDEM_RAFT_ID=NEW_ID and --join). Only when re-creating the whole group from empty \
         state directories: clear the record first (DELETE FROM raft_members)",
        state_dir.display()
    ))
}

/// How often the leader compares the membership with the record.
const RECORD_EVERY: Duration = Duration::from_secs(1);

/// Runs until shutdown: while this replica leads and its database is up,
/// writes the membership (ids, addresses, suffrage) to the control
/// database whenever it differs from what this replica last wrote (so at
/// least once per leadership), for [`refuse_forgotten_member`] to consult
/// when no other replica answers.
pub async fn record(
    store: Store,
    consensus: Consensus,
    fallback: BTreeMap<u64, String>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = crate::leader::Ticks::new(RECORD_EVERY, shutdown);
    let mut written: Option<(u64, Vec<RecordedMember>)> = None;
    while ticks.next().await {
        let Some(s) = crate::leader::on_duty(&consensus, &store) else {
            continue;
        };
        let members: Vec<RecordedMember> = member_addresses(&s, &fallback)
            .into_iter()
            .map(|(id, address)| RecordedMember {
                id,
                suffrage: suffrage(&s, id).to_string(),
                address,
            })
            .collect();
        if written.as_ref() == Some(&(s.term, members.clone())) {
            continue;
        }
        match store.record_raft_members(s.term, s.applied, &members).await {
            Ok(newer) => {
                if newer {
                    tracing::info!(
                        term = s.term,
                        raft_index = s.applied,
                        members = members.len(),
                        "raft membership recorded in the control database"
                    );
                } else {
                    tracing::info!("a newer raft membership record is in the database; kept");
                }
                written = Some((s.term, members));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the raft membership yet; will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, suffrage: &str) -> RecordedMember {
        RecordedMember {
            id,
            address: format!("127.0.0.1:{}", 7000 + id),
            suffrage: suffrage.into(),
        }
    }

    #[test]
    fn the_record_refuses_only_a_voter_of_a_group_of_several() {
        let dir = Path::new("/var/lib/tandem");
        let group = [
            member(1, "voter"),
            member(2, "voter"),
            member(3, "voter"),
            member(4, "learner"),
        ];
        let why = refusal_by_record(2, dir, &group).expect("a known voter is refused");
        assert!(why.contains("raft id 2 is a voter"), "{why}");
        assert!(why.contains("voters 1, 2, 3"), "{why}");
        assert!(why.contains("remove-member 2"), "{why}");
        assert_eq!(
            refusal_by_record(4, dir, &group),
            None,
            "a learner has no vote"
        );
        assert_eq!(refusal_by_record(9, dir, &group), None, "a new id");
        assert_eq!(
            refusal_by_record(1, dir, &[member(1, "voter")]),
            None,
            "a group of one"
        );
        assert_eq!(refusal_by_record(1, dir, &[]), None, "no record");
    }
}
