//! The `tandem.v1.ControlPlane` gRPC service.
//!
//! Reads and new Watch streams come from the database while it is
//! reachable, and from the hub's copy in memory, marked with a `stale`
//! field, while it is not; writes are then refused at once by the store.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use tandem_core::{
    BackendAddr, Error as Domain, HostMatch, PathPrefix, PoolConfig, Revision, Snapshot,
    StoreIdentity, ValidationError,
};
use tandem_proto::convert;
use tandem_proto::v1::{self, control_plane_server::ControlPlane};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use tandem_core::health::{BackendKey, Observation};

use crate::auth::{Identity, Subject, authorize, authorize_raft};
use crate::consensus::aggregator::now_ms;
use crate::consensus::peers::PeerClient;
use crate::consensus::{Aggregator, Command, Consensus, FORWARDED, HealthEvent, Peers};
use crate::error::{Error, LeaderError, ProxyError};
use crate::hub::{Committed, Hub, HubEvent};
use crate::store::{ListenerReport, NodeReport, Store};

#[derive(Clone)]
pub struct ControlService {
    store: Store,
    hub: Hub,
    consensus: Consensus,
    aggregator: Aggregator,
    /// The other replicas (none in a cluster of one).
    peers: Option<Peers>,
    /// Raft members' gRPC addresses.
    members: Arc<BTreeMap<u64, String>>,
    replica: Arc<str>,
    shutdown: watch::Receiver<bool>,
    /// Presented to a proxy's admin port by Explain.
    proxy_admin_token: Arc<str>,
}

/// What a replica needs to serve the API.
pub struct Parts {
    pub store: Store,
    pub hub: Hub,
    pub consensus: Consensus,
    pub aggregator: Aggregator,
    pub peers: Option<Peers>,
    pub members: BTreeMap<u64, String>,
    pub replica: String,
    pub shutdown: watch::Receiver<bool>,
    /// What Explain presents to a proxy's admin port.
    pub proxy_admin_token: String,
}

impl ControlService {
    pub fn new(p: Parts) -> Self {
        Self {
            store: p.store,
            hub: p.hub,
            consensus: p.consensus,
            aggregator: p.aggregator,
            peers: p.peers,
            members: Arc::new(p.members),
            replica: p.replica.into(),
            shutdown: p.shutdown,
            proxy_admin_token: p.proxy_admin_token.into(),
        }
    }

    /// A client for the raft leader, when this replica is not it.
    /// `Err` when no leader is known or the call was already forwarded once.
    fn leader_client<T>(&self, req: &Request<T>) -> Result<Option<PeerClient>, Error> {
        let status = self.consensus.status();
        if status.is_leader() {
            return Ok(None);
        }
        if req.metadata().get(FORWARDED).is_some() {
            return Err(Error::Leader(LeaderError::NotLeader {
                id: status.id,
                leader: status.leader,
            }));
        }
        match (status.leader, &self.peers) {
            (0, _) | (_, None) => Err(Error::Leader(LeaderError::NoLeader)),
            (leader, Some(peers)) => peers
                .client(leader)
                .map(Some)
                .ok_or(Error::Leader(LeaderError::UnknownLeader(leader))),
        }
    }
}

/// An answer, and the mark saying it came from memory (None: from the
/// database).
type Read<T> = (T, Option<v1::StaleRead>);

/// The revision a Watch stream starts at, its store identity, and the
/// snapshot it sends first.
type WatchStart = (Revision, Option<StoreIdentity>, Option<v1::Snapshot>);

// === impl ControlService: calls and reads ===

impl ControlService {
    /// This replica's certificate for calls to the others (mTLS), if any.
    fn peer_tls(&self) -> Option<&tandem_client::ClientTls> {
        self.peers.as_ref().and_then(Peers::tls)
    }

    /// Where a new Watch stream starts for a caller at `last`: the
    /// revision, and the snapshot to send first (none when the caller is
    /// already there). From the copy in memory, a caller ahead of it is
    /// never moved back: it stays at its revision and hears the next one
    /// once the database is back.
    ///
    /// The caller's store identity must be the store's: a revision of
    /// another identity (another database, a generation before a restore
    /// or a lost tail) says nothing of what the caller holds, so it gets a
    /// full snapshot, logged. A caller ahead of the database under the same
    /// identity means history was rewritten: a new generation starts first.
    async fn watch_start(
        &self,
        node: &str,
        last: Revision,
        caller: Option<StoreIdentity>,
    ) -> Result<Read<WatchStart>, Error> {
        let from_db = async {
            let (identity, current) = self.store.identity().await?;
            if last == current && caller.as_ref() == Some(&identity) {
                return Ok((current, Some(identity), None));
            }
            if last > Revision::ZERO {
                tracing::warn!(
                    %node,
                    from = last.0,
                    caller_store = %caller.as_ref().map(ToString::to_string).unwrap_or_else(|| "unknown".into()),
                    store = %identity,
                    revision = current.0,
                    "a watcher's revision is not of this store's history: it gets a full snapshot"
                );
            }
            if last > current && caller.as_ref() == Some(&identity) {
                let reason = format!(
                    "a watcher ({node}) is at revision {}, ahead of the database at {}",
                    last.0, current.0
                );
                self.store.new_generation(&identity, &reason).await?;
            }
            let snapshot = self.store.snapshot().await?;
            Ok((
                snapshot.revision,
                snapshot.store.clone(),
                Some(convert::snapshot_to_proto(&snapshot)),
            ))
        };
        self.read(from_db, |copy| {
            let same = caller.is_some() && caller == copy.store;
            // Another generation of the same store, newer than the copy.
            let newer = match (&caller, &copy.store) {
                (Some(c), Some(h)) => c.id == h.id && c.generation > h.generation,
                (None, _) => true,
                _ => false,
            };
            Ok(if last == copy.revision && same {
                (last, caller.clone(), None)
            } else if (last > copy.revision && same) || (last > Revision::ZERO && newer) {
                tracing::info!(
                    from = last.0,
                    copy = copy.revision.0,
                    "a watcher is ahead of this replica's copy; it stays where it is"
                );
                (last, caller.clone(), None)
            } else {
                (
                    copy.revision,
                    copy.store.clone(),
                    Some(convert::snapshot_to_proto(copy)),
                )
            })
        })
        .await
    }

    /// Every call of the API goes through here: checks that the caller may
    /// make it (the authorization table, [`authorize`]), runs its work with
    /// the caller's identity in the request's extensions and as the actor
    /// of any change it commits, times it, and hands the outcome to
    /// [`finish`] with the database named in an UNAVAILABLE answer.
    async fn call<R: Subject, T, Fut>(
        &self,
        method: &'static str,
        mut req: Request<R>,
        work: impl FnOnce(Request<R>) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let start = Instant::now();
        let r = match authorize("ControlPlane", method, &req, || {
            self.hub.copy().snapshot.clone()
        }) {
            Ok(who) => {
                let actor = who.actor();
                req.extensions_mut().insert(who);
                crate::store::as_actor(actor, work(req)).await
            }
            Err(e) => Err(e.into()),
        };
        finish(
            method,
            start,
            r.map_err(|e| e.naming(self.store.availability())),
        )
    }

    /// A read: from the database while it is reachable (`from_db`), else
    /// from the hub's copy (`from_copy`), marked stale. A read the database
    /// fails for being away is answered from the copy too. With no copy at
    /// all, UNAVAILABLE saying so.
    async fn read<T>(
        &self,
        from_db: impl std::future::Future<Output = Result<T, Error>>,
        from_copy: impl FnOnce(&Snapshot) -> Result<T, Error>,
    ) -> Result<Read<T>, Error> {
        let availability = self.store.availability();
        let mut cause = None;
        if availability.is_up() {
            match from_db.await {
                Ok(v) => return Ok((v, None)),
                Err(Error::Unavailable(c)) => cause = Some(c),
                Err(e) => return Err(e),
            }
        }
        let copy = self.hub.copy();
        if !copy.is_loaded() {
            return Err(Error::NoCopy {
                replica: self.replica.to_string(),
                outage: availability.outage(cause),
            });
        }
        metrics::counter!("tandem_control_stale_reads_total").increment(1);
        let v = from_copy(&copy.snapshot)?;
        Ok((v, Some(self.hub.stale_read(&copy, cause))))
    }
}

/// Records a call's outcome in metrics and turns errors into a `Status`
/// (the one place errors are converted and logged).
fn finish<T>(
    method: &'static str,
    start: Instant,
    r: Result<T, Error>,
) -> Result<Response<T>, Status> {
    let code = match &r {
        Ok(_) => tonic::Code::Ok,
        Err(e) => e.code(),
    };
    metrics::counter!("tandem_control_requests_total", "method" => method, "code" => format!("{code:?}"))
        .increment(1);
    metrics::histogram!("tandem_control_request_seconds", "method" => method)
        .record(start.elapsed().as_secs_f64());
    match r {
        Ok(v) => Ok(Response::new(v)),
        Err(e) => {
            if matches!(e, Error::Domain(_)) {
                tracing::debug!(method, error = %e, "rejected");
            }
            Err(e.into())
        }
    }
}

fn required<'a, T>(v: &'a Option<T>, field: &str) -> Result<&'a T, Error> {
    v.as_ref()
        .ok_or_else(|| ValidationError::new(field, "must be set").into())
}

/// What UpdateBackend changes of a backend; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BackendPatch {
    pub weight: Option<tandem_core::Weight>,
    pub role: Option<tandem_core::BackendRole>,
    pub admin_state: Option<tandem_core::AdminState>,
    pub order: Option<u32>,
}

/// The write behind UpdateBackend (`tandemctl backend drain/enable/disable`
/// and the status page's actions): the declared configuration, or, when the
/// database is down and only the admin state changes, the emergency lever,
/// a raft override (`None`: no revision yet; `overrides` applies it to the
/// declared configuration when the database returns).
pub(crate) async fn update_backend(
    store: &Store,
    consensus: &Consensus,
    pool: &tandem_core::PoolName,
    addr: &BackendAddr,
    expected: Option<Revision>,
    patch: BackendPatch,
) -> Result<BackendWrite, Error> {
    let BackendPatch {
        weight,
        role,
        admin_state: state,
        order,
    } = patch;
    let written = store
        .update_backend(pool, addr, expected, |mut b| {
            b.weight = weight.unwrap_or(b.weight);
            b.role = role.unwrap_or(b.role);
            b.admin_state = state.unwrap_or(b.admin_state);
            b.order = order.unwrap_or(b.order);
            b
        })
        .await;
    let lever_only = weight.is_none() && role.is_none() && order.is_none();
    match (written, state) {
        (Err(e @ (Error::Unavailable(_) | Error::DatabaseDown(_))), Some(state)) if lever_only => {
            // The emergency lever: the database is down, so the
            // admin state goes through raft as a runtime override.
            tracing::warn!(
                pool = %pool, backend = %addr, ?state, error = %e,
                "control database unavailable: committing the admin state as a raft override"
            );
            let key = BackendKey {
                pool: pool.clone(),
                address: addr.clone(),
            };
            match consensus
                .propose(&Command::Override {
                    key,
                    state: Some(state),
                })
                .await
            {
                Ok(raft_index) => Ok(BackendWrite::Override { raft_index }),
                // Only the leader proposes.
                Err(crate::consensus::ProposeError::NotLeader { leader }) => {
                    Ok(BackendWrite::NotLeader { leader, cause: e })
                }
                Err(p) => {
                    tracing::warn!(error = %p, "the raft override was not committed either");
                    Err(e)
                }
            }
        }
        (r, _) => r.map(|(backend, rev)| BackendWrite::Declared(backend, rev)),
    }
}

/// What [`update_backend`] did.
pub(crate) enum BackendWrite {
    /// Written into the declared configuration at this revision.
    Declared(tandem_core::Backend, Revision),
    /// The database is down: committed as a raft override at this index.
    Override { raft_index: u64 },
    /// The database is down and this replica is not the raft leader, which
    /// alone may propose the override (`cause` is why the database write
    /// failed).
    NotLeader { leader: u64, cause: Error },
}

fn expected(v: Option<u64>) -> Option<Revision> {
    v.map(Revision)
}

fn address(s: &str, field: &str) -> Result<BackendAddr, Error> {
    Ok(BackendAddr::new(s).map_err(|e| ValidationError::new(field, e.rule))?)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchEvent, Status>> + Send>>;

/// A Watch event with any private key emptied.
fn without_keys(mut e: v1::WatchEvent) -> v1::WatchEvent {
    match &mut e.event {
        Some(v1::watch_event::Event::Snapshot(s)) => convert::snapshot_without_keys(s),
        Some(v1::watch_event::Event::Change(c)) => convert::change_without_keys(c),
        _ => {}
    }
    e
}

/// What a certificate's chain says of it, for ListCertificates and
/// AddCertificate's answer.
fn certificate_info(
    name: &str,
    info: &tandem_tls::Info,
    revision: Revision,
    proxies: Vec<String>,
) -> v1::CertificateInfo {
    v1::CertificateInfo {
        name: name.to_string(),
        sans: info.sans.clone(),
        not_before_unix_s: info.not_before_unix_s,
        not_after_unix_s: info.not_after_unix_s,
        fingerprint_sha256: info.fingerprint_sha256.clone(),
        key_type: info.key_type.clone(),
        revision: revision.0,
        proxies,
    }
}

/// A certificate or key the checks refused, as INVALID_ARGUMENT naming
/// the field (`certificate.key_pem`) and the problem.
fn refused(e: tandem_tls::Error) -> Error {
    match e {
        tandem_tls::Error::Invalid { field, why } => {
            ValidationError::new(format!("certificate.{field}"), why).into()
        }
        other => Error::Secrets(other.to_string()),
    }
}

/// A pool whose backend CA bundle does not parse is refused, naming the
/// field (`pool.backend_tls.ca_pem`) and the problem.
fn backend_tls_checked(config: PoolConfig) -> Result<PoolConfig, ValidationError> {
    if let Some(tls) = &config.backend_tls
        && !tls.ca_pem.is_empty()
        && let Err(e) = tandem_tls::client::ca_bundle(&tls.ca_pem)
    {
        return Err(match e {
            tandem_tls::Error::Invalid { field, why } => {
                ValidationError::new(format!("pool.backend_tls.{field}"), why)
            }
            other => ValidationError::new("pool.backend_tls", other.to_string()),
        });
    }
    Ok(config)
}

fn now_unix_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[tonic::async_trait]
impl ControlPlane for ControlService {
    async fn create_pool(
        &self,
        req: Request<v1::CreatePoolRequest>,
    ) -> Result<Response<v1::PoolReply>, Status> {
        self.call("CreatePool", req, |req| async move {
            let msg = required(&req.get_ref().pool, "pool")?;
            let name = convert::pool_name(&msg.name, "pool.name")?;
            let config =
                backend_tls_checked(convert::pool_config_from_proto(PoolConfig::new(name), msg)?)?;
            if !msg.backends.is_empty() {
                return Err(ValidationError::new(
                    "pool.backends",
                    "must be empty; add backends with AddBackend",
                )
                .into());
            }
            let (pool, rev) = self.store.create_pool(config).await?;
            Ok(v1::PoolReply {
                pool: Some(convert::pool_to_proto(&pool)),
                revision: rev.0,
            })
        })
        .await
    }

    async fn get_pool(
        &self,
        req: Request<v1::GetPoolRequest>,
    ) -> Result<Response<v1::Pool>, Status> {
        self.call("GetPool", req, |req| async move {
            let name = convert::pool_name(&req.get_ref().name, "name")?;
            let (pool, stale) = self
                .read(self.store.pool(&name), |s| {
                    s.pools.get(&name).cloned().ok_or_else(|| {
                        Domain::UnknownPool {
                            name: name.to_string(),
                        }
                        .into()
                    })
                })
                .await?;
            let mut pool = convert::pool_to_proto(&pool);
            pool.stale = stale;
            Ok(pool)
        })
        .await
    }

    async fn list_pools(
        &self,
        req: Request<v1::ListPoolsRequest>,
    ) -> Result<Response<v1::ListPoolsReply>, Status> {
        self.call("ListPools", req, |_| async move {
            let ((pools, rev), stale) = self
                .read(self.store.pools(), |s| {
                    Ok((s.pools.values().cloned().collect(), s.revision))
                })
                .await?;
            Ok(v1::ListPoolsReply {
                pools: pools.iter().map(convert::pool_to_proto).collect(),
                revision: rev.0,
                stale,
            })
        })
        .await
    }

    async fn update_pool(
        &self,
        req: Request<v1::UpdatePoolRequest>,
    ) -> Result<Response<v1::PoolReply>, Status> {
        self.call("UpdatePool", req, |req| async move {
            let req = req.get_ref();
            let msg = required(&req.pool, "pool")?;
            let name = convert::pool_name(&msg.name, "pool.name")?;
            let (pool, rev) = self
                .store
                .update_pool(&name, expected(req.expected_revision), |current| {
                    backend_tls_checked(convert::pool_config_from_proto(current, msg)?)
                })
                .await?;
            Ok(v1::PoolReply {
                pool: Some(convert::pool_to_proto(&pool)),
                revision: rev.0,
            })
        })
        .await
    }

    async fn delete_pool(
        &self,
        req: Request<v1::DeletePoolRequest>,
    ) -> Result<Response<v1::ChangeReply>, Status> {
        self.call("DeletePool", req, |req| async move {
            let req = req.get_ref();
            let name = convert::pool_name(&req.name, "name")?;
            let rev = self
                .store
                .delete_pool(&name, expected(req.expected_revision))
                .await?;
            Ok(v1::ChangeReply { revision: rev.0 })
        })
        .await
    }

    async fn add_backend(
        &self,
        req: Request<v1::AddBackendRequest>,
    ) -> Result<Response<v1::BackendReply>, Status> {
        self.call("AddBackend", req, |req| async move {
            let req = req.get_ref();
            let pool = convert::pool_name(&req.pool, "pool")?;
            let backend =
                convert::backend_from_proto(required(&req.backend, "backend")?, "backend")?;
            let (backend, rev) = self
                .store
                .add_backend(&pool, backend, expected(req.expected_revision))
                .await?;
            Ok(v1::BackendReply {
                backend: Some(convert::backend_to_proto(&backend)),
                revision: rev.0,
                ..Default::default()
            })
        })
        .await
    }

    async fn update_backend(
        &self,
        req: Request<v1::UpdateBackendRequest>,
    ) -> Result<Response<v1::BackendReply>, Status> {
        self.call("UpdateBackend", req, |full| async move {
            let req = full.get_ref();
            let pool = convert::pool_name(&req.pool, "pool")?;
            let addr = address(&req.address, "address")?;
            let weight = req.weight.map(tandem_core::Weight::new).transpose()?;
            let role = match req.role {
                Some(r) => convert::role_from_proto(r, "role")?,
                None => None,
            };
            let state = match req.admin_state {
                Some(s) => convert::admin_state_from_proto(s, "admin_state")?,
                None => None,
            };
            let order = req.order.map(|o| convert::order(o, "order")).transpose()?;
            let patch = BackendPatch {
                weight,
                role,
                admin_state: state,
                order,
            };
            let written = update_backend(
                &self.store,
                &self.consensus,
                &pool,
                &addr,
                expected(req.expected_revision),
                patch,
            )
            .await?;
            let (backend, rev) = match written {
                BackendWrite::Declared(backend, rev) => (backend, rev),
                BackendWrite::Override { raft_index } => {
                    return Ok(v1::BackendReply {
                        backend: None,
                        revision: 0,
                        override_raft_index: Some(raft_index),
                    });
                }
                // A follower passes the call on with the caller's own
                // credentials (the leader checks them, and tries its
                // database first).
                BackendWrite::NotLeader { leader, .. } => {
                    tracing::info!(leader, "passing the override on to the raft leader");
                    let mut to = crate::membership::leader_client(
                        &self.consensus,
                        self.peer_tls(),
                        &full,
                        false,
                    )
                    .await?;
                    return to
                        .update_backend(req.clone())
                        .await
                        .map(Response::into_inner)
                        .map_err(Error::Forwarded);
                }
            };
            Ok(v1::BackendReply {
                backend: Some(convert::backend_to_proto(&backend)),
                revision: rev.0,
                ..Default::default()
            })
        })
        .await
    }

    async fn remove_backend(
        &self,
        req: Request<v1::RemoveBackendRequest>,
    ) -> Result<Response<v1::ChangeReply>, Status> {
        self.call("RemoveBackend", req, |req| async move {
            let req = req.get_ref();
            let pool = convert::pool_name(&req.pool, "pool")?;
            let addr = address(&req.address, "address")?;
            let rev = self
                .store
                .remove_backend(&pool, &addr, expected(req.expected_revision))
                .await?;
            Ok(v1::ChangeReply { revision: rev.0 })
        })
        .await
    }

    async fn add_route(
        &self,
        req: Request<v1::AddRouteRequest>,
    ) -> Result<Response<v1::RouteReply>, Status> {
        self.call("AddRoute", req, |req| async move {
            let route =
                convert::route_from_proto(required(&req.get_ref().route, "route")?, "route")?;
            let rev = self.store.add_route(route.clone()).await?;
            Ok(v1::RouteReply {
                route: Some(convert::route_to_proto(&route)),
                revision: rev.0,
            })
        })
        .await
    }

    async fn list_routes(
        &self,
        req: Request<v1::ListRoutesRequest>,
    ) -> Result<Response<v1::ListRoutesReply>, Status> {
        self.call("ListRoutes", req, |_| async move {
            let ((routes, tcp_routes, rev), stale) = self
                .read(self.store.routes(), |s| {
                    Ok((s.routes.clone(), s.tcp_routes.clone(), s.revision))
                })
                .await?;
            Ok(v1::ListRoutesReply {
                routes: routes.iter().map(convert::route_to_proto).collect(),
                revision: rev.0,
                tcp_routes: tcp_routes.iter().map(convert::tcp_route_to_proto).collect(),
                stale,
            })
        })
        .await
    }

    async fn add_tcp_route(
        &self,
        req: Request<v1::AddTcpRouteRequest>,
    ) -> Result<Response<v1::TcpRouteReply>, Status> {
        self.call("AddTcpRoute", req, |req| async move {
            let route =
                convert::tcp_route_from_proto(required(&req.get_ref().route, "route")?, "route")?;
            let rev = self.store.add_tcp_route(route.clone()).await?;
            Ok(v1::TcpRouteReply {
                route: Some(convert::tcp_route_to_proto(&route)),
                revision: rev.0,
            })
        })
        .await
    }

    async fn delete_tcp_route(
        &self,
        req: Request<v1::DeleteTcpRouteRequest>,
    ) -> Result<Response<v1::ChangeReply>, Status> {
        self.call("DeleteTcpRoute", req, |req| async move {
            let listen = convert::listen_addr(&req.get_ref().listen, "listen")?;
            let rev = self.store.delete_tcp_route(&listen).await?;
            Ok(v1::ChangeReply { revision: rev.0 })
        })
        .await
    }

    async fn delete_route(
        &self,
        req: Request<v1::DeleteRouteRequest>,
    ) -> Result<Response<v1::ChangeReply>, Status> {
        self.call("DeleteRoute", req, |req| async move {
            let req = req.get_ref();
            let host = HostMatch::new(&req.host)?;
            let prefix = PathPrefix::new(&req.path_prefix)?;
            let rev = self.store.delete_route(&host, &prefix).await?;
            Ok(v1::ChangeReply { revision: rev.0 })
        })
        .await
    }

    async fn add_certificate(
        &self,
        req: Request<v1::AddCertificateRequest>,
    ) -> Result<Response<v1::CertificateReply>, Status> {
        self.call("AddCertificate", req, |req| async move {
            let msg = required(&req.get_ref().certificate, "certificate")?;
            let cert = convert::certificate_from_proto(msg, "certificate")?;
            let parsed = tandem_tls::check(&cert.chain_pem, cert.key_pem.expose(), now_unix_s())
                .map_err(refused)?;
            let name = cert.name.to_string();
            let rev = self.store.upsert_certificate(cert).await?;
            tracing::info!(
                certificate = %name,
                sans = ?parsed.info.sans,
                not_after_unix_s = parsed.info.not_after_unix_s,
                revision = rev.0,
                "certificate stored"
            );
            Ok(v1::CertificateReply {
                certificate: Some(certificate_info(&name, &parsed.info, rev, Vec::new())),
                revision: rev.0,
            })
        })
        .await
    }

    async fn list_certificates(
        &self,
        req: Request<v1::ListCertificatesRequest>,
    ) -> Result<Response<v1::ListCertificatesReply>, Status> {
        self.call("ListCertificates", req, |_| async move {
            // Chains only: the keys stay sealed in the database.
            let from_db = async {
                let revisions = self.store.certificate_revisions().await?;
                let nodes = self.store.nodes().await?;
                let snapshot = self.store.snapshot().await?;
                Ok((snapshot, revisions, nodes))
            };
            let ((snapshot, revisions, nodes), stale) = self
                .read(from_db, |s| Ok((s.clone(), Vec::new(), Vec::new())))
                .await?;
            let revisions: BTreeMap<String, Revision> = revisions.into_iter().collect();
            let mut certificates = Vec::with_capacity(snapshot.certificates.len());
            for (name, cert) in &snapshot.certificates {
                let info = tandem_tls::inspect_chain(&cert.chain_pem)
                    .map_err(|e| Error::Corrupt(format!("certificate {name:?}: {e}")))?;
                let proxies = nodes
                    .iter()
                    .filter(|n| n.report.certificates.iter().any(|c| c == name.as_str()))
                    .map(|n| n.report.node_id.clone())
                    .collect();
                let revision = revisions.get(name.as_str()).copied().unwrap_or_default();
                certificates.push(certificate_info(name.as_str(), &info, revision, proxies));
            }
            Ok(v1::ListCertificatesReply {
                certificates,
                revision: snapshot.revision.0,
                stale,
            })
        })
        .await
    }

    async fn remove_certificate(
        &self,
        req: Request<v1::RemoveCertificateRequest>,
    ) -> Result<Response<v1::ChangeReply>, Status> {
        self.call("RemoveCertificate", req, |req| async move {
            let name = tandem_core::CertName::new(&*req.get_ref().name)?;
            let rev = self.store.delete_certificate(&name).await?;
            Ok(v1::ChangeReply { revision: rev.0 })
        })
        .await
    }

    async fn restore_snapshot(
        &self,
        req: Request<v1::RestoreSnapshotRequest>,
    ) -> Result<Response<v1::RestoreSnapshotReply>, Status> {
        self.call("RestoreSnapshot", req, |req| async move {
            let req = req.get_ref();
            let snapshot = convert::snapshot_from_proto(required(&req.snapshot, "snapshot")?)?;
            let (rev, identity) = self
                .store
                .restore(&snapshot, expected(req.expected_revision))
                .await?;
            Ok(v1::RestoreSnapshotReply {
                revision: rev.0,
                store_id: identity.id,
                generation: identity.generation,
            })
        })
        .await
    }

    async fn get_snapshot(
        &self,
        req: Request<v1::GetSnapshotRequest>,
    ) -> Result<Response<v1::Snapshot>, Status> {
        self.call("GetSnapshot", req, |_| async move {
            let (snapshot, stale) = self.read(self.store.snapshot(), |s| Ok(s.clone())).await?;
            let mut message = convert::snapshot_to_proto(&snapshot);
            // No read returns a private key.
            convert::snapshot_without_keys(&mut message);
            message.stale = stale;
            Ok(message)
        })
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.call("Watch", req, |req| async move {
            let keys = req
                .extensions()
                .get::<Identity>()
                .is_some_and(Identity::may_see_keys);
            let req = req.into_inner();
            if req.node_id.is_empty() {
                return Err(ValidationError::new("node_id", "must be set").into());
            }
            // Subscribe before reading, so nothing committed in between is missed.
            let mut changes = self.hub.subscribe();
            let mut health = self.consensus.subscribe();
            let caller = convert::store_identity_from_proto(&req.store_id, req.generation);
            let ((at, store_at, first), stale) = self
                .watch_start(&req.node_id, Revision(req.last_revision), caller)
                .await?;
            let (tx, rx) = mpsc::channel(64);
            let kind = node_kind_name(req.kind);
            tracing::info!(node = %req.node_id, kind, from = req.last_revision, at = at.0, stale = stale.is_some(), "watch started");
            if let Some(mut snapshot) = first {
                snapshot.stale = stale;
                let event = v1::WatchEvent {
                    revision: at.0,
                    store_id: snapshot.store_id.clone(),
                    generation: snapshot.generation,
                    event: Some(v1::watch_event::Event::Snapshot(snapshot)),
                    ..Default::default()
                };
                // The channel is new and has room.
                let _ = tx.try_send(Ok(event));
            }
            let table = self.consensus.table();
            let health_at = table.index;
            let _ = tx.try_send(Ok(health_event(at, table.full_update())));
            let store = self.store.clone();
            let consensus = self.consensus.clone();
            let mut shutdown = self.shutdown.clone();
            let node = req.node_id.clone();
            tokio::spawn(async move {
                metrics::gauge!("tandem_control_watch_streams").increment(1.0);
                let mut streams = Streams {
                    changes: &mut changes,
                    health: &mut health,
                    consensus: &consensus,
                };
                let end = follow(
                    &store,
                    &mut streams,
                    &tx,
                    (at, store_at),
                    health_at,
                    &mut shutdown,
                )
                .await;
                metrics::gauge!("tandem_control_watch_streams").decrement(1.0);
                tracing::info!(%node, reason = %end, "watch ended");
            });
            // Private keys go to proxies only (they serve them); an agent or a
            // CLI following the configuration gets certificates without them,
            // and so does any caller whose identity may not see them.
            let stream: WatchStream = if req.kind == v1::NodeKind::Proxy as i32 && keys {
                Box::pin(ReceiverStream::new(rx))
            } else {
                use tokio_stream::StreamExt as _;
                Box::pin(ReceiverStream::new(rx).map(|e| e.map(without_keys)))
            };
            Ok(stream)
        })
        .await
    }

    async fn report_applied(
        &self,
        req: Request<v1::ReportAppliedRequest>,
    ) -> Result<Response<v1::ReportAppliedReply>, Status> {
        self.call("ReportApplied", req, |req| async move {
            let peer = req.remote_addr();
            let req = req.into_inner();
            if req.node_id.is_empty() {
                return Err(ValidationError::new("node_id", "must be set").into());
            }
            let admin = admin_address(&req.admin_address, peer)?;
            let report_node_id = req.node_id.clone();
            if req.traffic.len() > tandem_core::traffic::MAX_ENTRIES {
                return Err(ValidationError::new(
                    "traffic",
                    format!(
                        "at most {} backends a report (got {})",
                        tandem_core::traffic::MAX_ENTRIES,
                        req.traffic.len()
                    ),
                )
                .into());
            }
            let traffic = req
                .traffic
                .iter()
                .enumerate()
                .map(|(i, t)| convert::backend_traffic_from_proto(t, &format!("traffic[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            self.store
                .report_node(&NodeReport {
                    node_id: req.node_id,
                    kind: node_kind_name(req.kind).to_string(),
                    zone: req.zone,
                    applied_revision: Revision(req.revision),
                    detail: req.detail,
                    replica: self.replica.to_string(),
                    listeners: req
                        .listeners
                        .into_iter()
                        .map(|l| ListenerReport {
                            listen: l.listen,
                            pool: l.pool,
                            bound: l.bound,
                            error: l.error,
                        })
                        .collect(),
                    alerts: req.alerts,
                    certificates: req.certificates,
                    traffic,
                })
                .await?;
            if let Some(admin) = admin {
                self.store
                    .report_admin_address(&report_node_id, &admin)
                    .await?;
            }
            Ok(v1::ReportAppliedReply {})
        })
        .await
    }

    async fn get_status(
        &self,
        req: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::StatusReply>, Status> {
        self.call("GetStatus", req, |_| async move {
            // Answers at once while the database is known to be away: clients
            // (tandemctl) ask this first to learn whether the replica is alive.
            let mut cause = None;
            if self.store.availability().is_up() {
                let read = async {
                    let (identity, revision) = self.store.identity().await?;
                    Ok::<_, Error>((identity, revision, self.store.nodes().await?))
                };
                match read.await {
                    Ok((identity, revision, nodes)) => {
                        let mut reply = status_reply(&self.replica, (revision, nodes), None);
                        reply.store_id = identity.id;
                        reply.generation = identity.generation;
                        return Ok(reply);
                    }
                    Err(Error::Unavailable(c)) => cause = Some(c),
                    Err(e) => cause = Some(e.to_string()),
                }
            }
            let copy = self.hub.copy();
            let stale = self.hub.stale_read(&copy, cause);
            let mut reply = status_reply(
                &self.replica,
                (copy.snapshot.revision, Vec::new()),
                Some(stale),
            );
            if let Some(identity) = &copy.snapshot.store {
                reply.store_id = identity.id.clone();
                reply.generation = identity.generation;
            }
            Ok(reply)
        })
        .await
    }

    async fn report_health(
        &self,
        req: Request<v1::ReportHealthRequest>,
    ) -> Result<Response<v1::ReportHealthReply>, Status> {
        self.call("ReportHealth", req, |req| async move {
            if let Some(mut leader) = self.leader_client(&req)? {
                // Followers forward: the leader decides.
                metrics::counter!("tandem_control_health_reports_forwarded_total").increment(1);
                // The leader's span of the call continues the agent's trace.
                let mut forwarded = Request::new(req.into_inner());
                if let Some(tp) = tandem_telemetry::spans::traceparent_of(&tracing::Span::current())
                    && let Ok(v) = tp.parse()
                {
                    forwarded.metadata_mut().insert("traceparent", v);
                }
                return leader
                    .report_health(forwarded)
                    .await
                    .map(Response::into_inner)
                    .map_err(Error::Forwarded);
            }
            let req = req.into_inner();
            if req.agent_id.is_empty() {
                return Err(ValidationError::new("agent_id", "must be set").into());
            }
            let now = now_ms();
            let mut batch = Vec::with_capacity(req.observations.len());
            for (i, o) in req.observations.iter().enumerate() {
                let field = format!("observations[{i}]");
                let key = match (
                    convert::pool_name(&o.pool, &format!("{field}.pool")),
                    address(&o.address, &format!("{field}.address")),
                ) {
                    (Ok(pool), Ok(address)) => BackendKey { pool, address },
                    (Err(e), _) => return Err(e.into()),
                    (_, Err(e)) => return Err(e),
                };
                metrics::counter!("tandem_control_observations_total", "ok" => if o.ok { "true" } else { "false" })
                    .increment(1);
                batch.push(Observation {
                    agent: req.agent_id.clone(),
                    zone: req.zone.clone(),
                    key,
                    ok: o.ok,
                    detail: o.detail.clone(),
                    // The decider's clock: this replica's, not the agent's.
                    at_ms: now,
                });
            }
            if !self.aggregator.submit(batch) {
                return Err(Error::Saturated);
            }
            Ok(v1::ReportHealthReply {})
        })
        .await
    }

    async fn get_health(
        &self,
        req: Request<v1::GetHealthRequest>,
    ) -> Result<Response<v1::HealthReply>, Status> {
        self.call("GetHealth", req, |_| async move {
            let table = self.consensus.table();
            let status = self.consensus.status();
            let mut update = table.full_update();
            let reply = v1::HealthReply {
                index: update.index,
                backends: std::mem::take(&mut update.backends),
                leader: if status.leader == 0 {
                    String::new()
                } else {
                    format!("control-{}", status.leader)
                },
                term: status.term,
            };
            Ok(reply)
        })
        .await
    }

    async fn explain(
        &self,
        req: Request<v1::ExplainRequest>,
    ) -> Result<Response<v1::ExplainReply>, Status> {
        self.call("Explain", req, |req| async move {
            let req = req.into_inner();
            for (field, value, max) in [
                ("host", &req.host, 261),
                ("path", &req.path, 8192),
                ("client", &req.client, 64),
                ("proxy", &req.proxy, 255),
            ] {
                if value.len() > max {
                    return Err(
                        ValidationError::new(field, format!("longer than {max} bytes")).into(),
                    );
                }
            }
            let proxies = self.store.proxy_admin_addresses().await?;
            let known = || {
                proxies
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (name, address) = match (req.proxy.as_str(), proxies.as_slice()) {
                (_, []) => return Err(Error::Proxy(ProxyError::None)),
                ("", [only]) => only.clone(),
                ("", _) => return Err(Error::Proxy(ProxyError::Unnamed { known: known() })),
                (wanted, _) => proxies
                    .iter()
                    .find(|(n, _)| n == wanted)
                    .cloned()
                    .ok_or_else(|| {
                        Error::Proxy(ProxyError::Unknown {
                            name: wanted.to_string(),
                            known: known(),
                        })
                    })?,
            };
            use tandem_telemetry::admin_client::{encode, get_with_token};
            let mut path = format!("/explain?host={}", encode(&req.host));
            if !req.path.is_empty() {
                path.push_str(&format!("&path={}", encode(&req.path)));
            }
            if !req.client.is_empty() {
                path.push_str(&format!("&client={}", encode(&req.client)));
            }
            let unreachable = |cause: String| {
                Error::Proxy(ProxyError::Unreachable {
                    name: name.clone(),
                    address: address.clone(),
                    cause,
                })
            };
            let token = Some(&*self.proxy_admin_token);
            let (status, body) = get_with_token(&address, &path, Duration::from_secs(5), token)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            match status {
                200 => Ok(v1::ExplainReply {
                    proxy: name,
                    admin_address: address,
                    json: body,
                }),
                400 => Err(Error::Proxy(ProxyError::Refused {
                    name,
                    message: body.trim().to_string(),
                })),
                other => Err(unreachable(format!("HTTP {other}: {}", body.trim()))),
            }
        })
        .await
    }

    async fn add_member(
        &self,
        req: Request<v1::AddMemberRequest>,
    ) -> Result<Response<v1::MemberReply>, Status> {
        self.call("AddMember", req, |req| async move {
            crate::membership::add_member(&self.consensus, self.peer_tls(), req).await
        })
        .await
    }

    async fn remove_member(
        &self,
        req: Request<v1::RemoveMemberRequest>,
    ) -> Result<Response<v1::MemberReply>, Status> {
        self.call("RemoveMember", req, |req| async move {
            crate::membership::remove_member(&self.consensus, self.peer_tls(), req).await
        })
        .await
    }

    async fn get_cluster_status(
        &self,
        req: Request<v1::GetClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatus>, Status> {
        self.call("GetClusterStatus", req, |req| async move {
            let s = self.consensus.status();
            // Member progress is the leader's knowledge: ask it when we can
            // (a replica that stopped applying answers for itself, to say so).
            if s.apply_error.is_none()
                && let Ok(Some(mut leader)) = self.leader_client(&req)
                && let Ok(reply) = leader
                    .get_cluster_status(v1::GetClusterStatusRequest {})
                    .await
            {
                return Ok(reply.into_inner());
            }
            let members = crate::membership::member_addresses(&s, &self.members)
                .into_iter()
                .map(|(id, addr)| {
                    let progress = s.progress.get(&id);
                    let matched = progress.map(|p| p.matched);
                    // A follower hears only from the leader: what it could say
                    // of the other followers would read as "unreachable".
                    let known = s.is_leader() || id == s.id || (id == s.leader && s.leader != 0);
                    let contact = known.then(|| self.consensus.contact(id));
                    v1::ClusterMember {
                        id,
                        address: addr.clone(),
                        role: if id == s.leader {
                            "leader".into()
                        } else if s.is_leader() {
                            "follower".into()
                        } else {
                            "unknown".into()
                        },
                        matched_index: matched.unwrap_or(0),
                        lag: matched.map(|m| s.last_index.saturating_sub(m)).unwrap_or(0),
                        reachable: contact.map(|c| c.reachable),
                        last_heard_ms: contact
                            .and_then(|c| c.last_heard)
                            .map(|d| d.as_millis() as u64),
                        progress: progress.map(|p| p.state.to_string()).unwrap_or_default(),
                        suffrage: crate::membership::suffrage(&s, id).into(),
                    }
                })
                .collect();
            let reply = v1::ClusterStatus {
                replica_id: s.id,
                role: s.role.to_string(),
                leader_id: s.leader,
                term: s.term,
                commit_index: s.commit,
                applied_index: s.applied,
                members,
                apply_error: s.apply_error.clone().unwrap_or_default(),
                entry_format: crate::consensus::state::ENTRY_FORMAT,
            };
            Ok(reply)
        })
        .await
    }
}

struct Streams<'a> {
    changes: &'a mut broadcast::Receiver<HubEvent>,
    health: &'a mut broadcast::Receiver<HealthEvent>,
    consensus: &'a Consensus,
}

fn health_event(at: Revision, update: v1::HealthUpdate) -> v1::WatchEvent {
    v1::WatchEvent {
        revision: at.0,
        event: Some(v1::watch_event::Event::Health(update)),
        ..Default::default()
    }
}

/// Streams committed config changes after `at`, in order and without
/// gaps, and health updates after `health_at`, until the watcher leaves or
/// the replica shuts down. Returns why it ended.
async fn follow(
    store: &Store,
    streams: &mut Streams<'_>,
    tx: &mpsc::Sender<Result<v1::WatchEvent, Status>>,
    (mut at, mut store_at): (Revision, Option<StoreIdentity>),
    mut health_at: u64,
    shutdown: &mut watch::Receiver<bool>,
) -> String {
    loop {
        let next = tokio::select! {
            _ = tx.closed() => return "watcher left".into(),
            _ = shutdown.changed() => {
                let _ = tx.send(Err(Error::ShuttingDown.into())).await;
                return "replica shutting down".into();
            }
            h = streams.health.recv() => {
                let update = match h {
                    Ok(u) if u.index <= health_at && !u.full => continue,
                    Ok(u) => (*u).clone(),
                    Err(broadcast::error::RecvError::Lagged(_)) => streams.consensus.table().full_update(),
                    Err(broadcast::error::RecvError::Closed) => return "raft stopped".into(),
                };
                health_at = update.index;
                if tx.send(Ok(health_event(at, update))).await.is_err() {
                    return "watcher left".into();
                }
                continue;
            }
            next = streams.changes.recv() => next,
        };
        let gap = match next {
            Ok(HubEvent::Reloaded {
                revision,
                store,
                event,
            }) => {
                // The replica's copy was replaced whole (read from the
                // database after a copy from another replica, or history
                // rewritten: a new store generation): a watcher behind it,
                // or of another identity, starts again from it.
                if revision > at || (store.is_some() && store != store_at) {
                    if tx.send(Ok((*event).clone())).await.is_err() {
                        return "watcher left".into();
                    }
                    at = revision;
                    store_at = store;
                }
                continue;
            }
            Ok(HubEvent::Change(c)) if c.revision <= at => continue,
            Ok(HubEvent::Change(c)) if c.revision == at.next() => {
                if tx.send(Ok(c.event.clone())).await.is_err() {
                    return "watcher left".into();
                }
                at = c.revision;
                continue;
            }
            Ok(_) => true,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(
                    skipped = n,
                    "watcher lagged behind the hub; reading the log"
                );
                true
            }
            Err(broadcast::error::RecvError::Closed) => return "hub closed".into(),
        };
        if gap {
            // Fill the gap from the log (the hub is behind or we lagged),
            // unless the store's identity moved meanwhile: then the log
            // after `at` is another history, and a snapshot goes instead.
            match store.identity().await {
                Ok((identity, _)) if Some(&identity) != store_at.as_ref() => {
                    match store.snapshot().await {
                        Ok(snapshot) => {
                            let message = convert::snapshot_to_proto(&snapshot);
                            let event = v1::WatchEvent {
                                revision: snapshot.revision.0,
                                store_id: message.store_id.clone(),
                                generation: message.generation,
                                event: Some(v1::watch_event::Event::Snapshot(message)),
                                ..Default::default()
                            };
                            if tx.send(Ok(event)).await.is_err() {
                                return "watcher left".into();
                            }
                            at = snapshot.revision;
                            store_at = snapshot.store;
                            continue;
                        }
                        Err(e) => {
                            let _ = tx
                                .send(Err(Status::from(e.naming(store.availability()))))
                                .await;
                            return "database unavailable while catching up".into();
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::from(e.naming(store.availability()))))
                        .await;
                    return "database unavailable while catching up".into();
                }
            }
            match store.changes_with_actors_since(at, 10_000).await {
                Ok(batch) => {
                    for (rev, change, actor) in batch {
                        let event =
                            Committed::new(store_at.as_ref(), rev, change, actor.as_deref());
                        if tx.send(Ok(event.event)).await.is_err() {
                            return "watcher left".into();
                        }
                        at = rev;
                    }
                }
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::from(e.naming(store.availability()))))
                        .await;
                    return "database unavailable while catching up".into();
                }
            }
        }
    }
}

/// A `StatusReply` from a revision and the nodes' reports.
fn status_reply(
    replica: &str,
    (revision, nodes): (Revision, Vec<crate::store::NodeRow>),
    stale: Option<v1::StaleRead>,
) -> v1::StatusReply {
    // Judged by this replica's clock against the database's `now()` at the
    // report: the bound (15 s) is far above the skew of synced clocks.
    let stale_before = now_ms() as i64 - tandem_proto::NODE_STALE_AFTER.as_millis() as i64;
    // Merged across the proxies still reporting.
    let traffic = tandem_core::traffic::merge(
        nodes
            .iter()
            .filter(|n| n.last_seen_unix_ms >= stale_before)
            .flat_map(|n| &n.report.traffic),
    )
    .iter()
    .map(convert::merged_traffic_to_proto)
    .collect();
    v1::StatusReply {
        traffic,
        revision: revision.0,
        replica: replica.to_string(),
        database_reachable: stale.is_none(),
        nodes: nodes
            .into_iter()
            .map(|n| v1::NodeStatus {
                node_id: n.report.node_id,
                kind: node_kind_from_name(&n.report.kind).into(),
                applied_revision: n.report.applied_revision.0,
                zone: n.report.zone,
                last_seen_unix_ms: n.last_seen_unix_ms,
                replica: n.report.replica,
                detail: n.report.detail,
                stale: n.last_seen_unix_ms < stale_before,
                listeners: n
                    .report
                    .listeners
                    .into_iter()
                    .map(|l| v1::ListenerStatus {
                        listen: l.listen,
                        pool: l.pool,
                        bound: l.bound,
                        error: l.error,
                    })
                    .collect(),
                alerts: n.report.alerts,
                traffic: n
                    .report
                    .traffic
                    .iter()
                    .map(convert::backend_traffic_to_proto)
                    .collect(),
            })
            .collect(),
        stale,
        ..Default::default()
    }
}

/// A proxy's admin address as the control plane can reach it: an
/// unspecified host (0.0.0.0, [::]) becomes the address the report came
/// from. Empty: none given.
fn admin_address(
    given: &str,
    peer: Option<std::net::SocketAddr>,
) -> Result<Option<String>, ValidationError> {
    if given.is_empty() {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = given.parse().map_err(|_| {
        ValidationError::new(
            "admin_address",
            "must be ip:port (the admin listener's address)",
        )
    })?;
    if addr.port() == 0 {
        return Err(ValidationError::new("admin_address", "port 0"));
    }
    Ok(Some(
        match peer {
            Some(p) if addr.ip().is_unspecified() => std::net::SocketAddr::new(p.ip(), addr.port()),
            _ => addr,
        }
        .to_string(),
    ))
}

fn node_kind_name(kind: i32) -> &'static str {
    match v1::NodeKind::try_from(kind) {
        Ok(v1::NodeKind::Proxy) => "proxy",
        Ok(v1::NodeKind::Agent) => "agent",
        Ok(v1::NodeKind::Cli) => "cli",
        _ => "unknown",
    }
}

fn node_kind_from_name(name: &str) -> v1::NodeKind {
    match name {
        "proxy" => v1::NodeKind::Proxy,
        "agent" => v1::NodeKind::Agent,
        "cli" => v1::NodeKind::Cli,
        _ => v1::NodeKind::Unspecified,
    }
}

// === the internal raft transport ===

/// Receives raft messages from the other replicas.
pub struct RaftService {
    consensus: Consensus,
}

impl RaftService {
    pub fn new(consensus: Consensus) -> Self {
        Self { consensus }
    }
}

#[tonic::async_trait]
impl v1::raft_server::Raft for RaftService {
    async fn step(&self, req: Request<v1::RaftBatch>) -> Result<Response<v1::RaftAck>, Status> {
        use protobuf::Message as _;
        authorize_raft(&req)?;
        for bytes in &req.get_ref().messages {
            let msg = raft::prelude::Message::parse_from_bytes(bytes)
                .map_err(|e| Error::NotRaft(e.to_string()))?;
            self.consensus.step(msg);
        }
        Ok(Response::new(v1::RaftAck {}))
    }
}
