//! Each subcommand as calls to the control API: connect, build the request
//! from flags, call with a deadline, render the reply.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tandem_client::{Bearer, ChannelSettings, token_value};
use tandem_proto::v1;
use tandem_proto::v1::control_plane_client::ControlPlaneClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::{
    BackendCommand, BackendRef, CertCommand, ClusterCommand, Command, ExplainArgs, GlobalArgs,
    HealthArgs, HealthKind, OnUnhealthyArg, Output, Policy, PoolCommand, PoolSettings,
    ProxyProtocolArg, RouteCommand, SnapshotCommand, WatchArgs,
};
use crate::duration::{Millis, format_duration};
use crate::error::{CtlError, innermost_cause, made_locally};
use crate::output::{self, Health, PoolJson};

mod backup;

// === connecting ===

/// The bearer header for every call: `tandem_client`'s interceptor, its
/// refusal of a bad token put in the flag's words.
pub fn bearer(token: Option<&str>) -> Result<Bearer, CtlError> {
    Bearer::new(token).map_err(|_| {
        CtlError::Usage(
            "the token may only hold visible ASCII characters (check --token / TANDEM_TOKEN)"
                .into(),
        )
    })
}

type Client = ControlPlaneClient<InterceptedService<Channel, Bearer>>;

/// How long a replica in an endpoint list gets to answer before the next one
/// is tried (at most `--timeout`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The comma-separated endpoint list, with `http://` added where no scheme
/// was given.
pub fn endpoints(list: &str) -> Result<Vec<String>, CtlError> {
    let endpoints: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            if e.contains("://") {
                e.to_string()
            } else {
                format!("http://{e}")
            }
        })
        .collect();
    if endpoints.is_empty() {
        return Err(CtlError::Usage(
            "no control-plane endpoint given (--endpoint / TANDEM_ENDPOINT)".into(),
        ));
    }
    Ok(endpoints)
}

/// The token from `--token` or the file named by `--token-file`.
pub fn load_token(global: &GlobalArgs) -> Result<Option<String>, CtlError> {
    if let Some(token) = &global.token {
        return Ok(token_value(Some(token)).map(str::to_string));
    }
    let Some(path) = &global.token_file else {
        return Ok(None);
    };
    read_token_file(path).map(Some)
}

fn read_token_file(path: &Path) -> Result<String, CtlError> {
    let token = tandem_client::read_token_file(path).map_err(|e| {
        CtlError::Usage(format!(
            "cannot read the token file {}: {}",
            path.display(),
            innermost_cause(&e)
        ))
    })?;
    if token.is_empty() {
        return Err(CtlError::Usage(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

/// A connection to the first endpoint that answers, with the caller's
/// credentials and deadline.
pub struct Session {
    client: Client,
    /// The endpoint it talks to, named in UNAVAILABLE errors.
    endpoint: String,
    timeout: Duration,
    output: Output,
    token_sent: bool,
}

/// Why an endpoint was passed over.
enum Skipped {
    /// It answered UNAVAILABLE (alive, but cannot take calls now).
    Answered(String),
    /// Nothing answered.
    NoAnswer(String),
}

impl Session {
    pub async fn connect(global: &GlobalArgs) -> Result<Self, CtlError> {
        let token = load_token(global)?;
        let auth = bearer(token.as_deref())?;
        let mut failures = Vec::new();
        let mut answered = false;
        let endpoints = endpoints(&global.endpoint)?;
        let tls = global.tls.client().map_err(CtlError::Usage)?;
        if tls.is_none()
            && let Some(url) = endpoints.iter().find(|u| u.starts_with("https://"))
        {
            return Err(CtlError::Usage(format!(
                "{url} is https:// (mTLS): set TANDEM_TLS_CA_FILE, TANDEM_TLS_CERT_FILE and \
                 TANDEM_TLS_KEY_FILE (see tandemctl certs init)"
            )));
        }
        let several = endpoints.len() > 1;
        for url in endpoints {
            let endpoint = ChannelSettings::connect_within(global.timeout)
                .endpoint(&url)
                .map_err(|e| {
                    CtlError::Usage(format!("invalid endpoint {url:?}: {}", innermost_cause(&e)))
                })?;
            // connect_timeout bounds the TCP connect; this bounds the whole
            // attempt, name resolution included.
            drop(endpoint);
            let settings = ChannelSettings::connect_within(global.timeout);
            let connect = settings.connect(&url, tls.as_ref());
            match tokio::time::timeout(global.timeout, connect).await {
                Ok(Ok(channel)) => {
                    let session = Self {
                        client: ControlPlaneClient::with_interceptor(channel, auth.clone()),
                        endpoint: url.clone(),
                        timeout: global.timeout,
                        output: global.output,
                        token_sent: token.is_some(),
                    };
                    if !several {
                        return Ok(session);
                    }
                    match session.probe().await {
                        Ok(()) => return Ok(session),
                        Err(Skipped::Answered(why)) => {
                            answered = true;
                            failures.push((url, why));
                        }
                        Err(Skipped::NoAnswer(why)) => failures.push((url, why)),
                    }
                }
                Ok(Err(e)) => failures.push((url, innermost_cause(&*e))),
                Err(_) => failures.push((
                    url,
                    format!("timed out after {}", format_duration(global.timeout)),
                )),
            }
        }
        Err(CtlError::Unreachable { failures, answered })
    }

    /// Does the replica answer? Connecting only proves the kernel accepted
    /// the connection: a paused or wedged replica accepts too, and must not
    /// stop the failover to the next endpoint. Any answer, even a refusal of
    /// the token, shows it is alive; UNAVAILABLE (shutting down) passes to
    /// the next one too. Only asked when there is a next endpoint, and
    /// before the real call, so no write is ever sent twice. (A replica
    /// whose database is down answers this at once, from memory: it is asked with GetHealth.)
    async fn probe(&self) -> Result<(), Skipped> {
        let deadline = self.timeout.min(PROBE_TIMEOUT);
        let mut client = self.client.clone();
        let call = client.get_health(v1::GetHealthRequest {});
        match tokio::time::timeout(deadline, call).await {
            Err(_) => Err(Skipped::NoAnswer(format!(
                "no answer within {}",
                format_duration(deadline)
            ))),
            Ok(Err(status)) if made_locally(&status) => {
                Err(Skipped::NoAnswer(innermost_cause(&status)))
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                Err(Skipped::Answered(format!(
                    "UNAVAILABLE: {}",
                    status
                        .message()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                )))
            }
            Ok(_) => Ok(()),
        }
    }

    /// Awaits a unary call within the deadline.
    async fn unary<R>(
        &self,
        call: impl Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    ) -> Result<R, CtlError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(self.refused(status)),
            Err(_) => Err(CtlError::Timeout(self.timeout)),
        }
    }

    /// A failed call: the replica's answer, or no answer when tonic made
    /// the status from a broken connection.
    fn refused(&self, status: tonic::Status) -> CtlError {
        if made_locally(&status) {
            return CtlError::Lost {
                endpoint: self.endpoint.clone(),
                cause: innermost_cause(&status),
            };
        }
        CtlError::Status {
            status,
            token_sent: self.token_sent,
            endpoint: self.endpoint.clone(),
        }
    }

    /// One line on stderr when the answer came from a replica's copy in
    /// memory (its database is unreachable): stdout stays the data.
    fn warn_if_stale(&self, stale: Option<&v1::StaleRead>, revision: u64) {
        if let Some(stale) = stale {
            let now_ms = chrono::Utc::now().timestamp_millis();
            eprintln!("{}", output::stale_warning(stale, revision, now_ms));
        }
    }

    /// Table text or JSON, whichever was asked for.
    fn print<T: Serialize>(
        &self,
        out: &mut dyn Write,
        text: impl FnOnce() -> String,
        json: impl FnOnce() -> T,
    ) -> Result<(), CtlError> {
        match self.output {
            Output::Table => {
                let text = text();
                out.write_all(text.as_bytes())?;
                if !text.ends_with('\n') {
                    out.write_all(b"\n")?;
                }
            }
            Output::Json => writeln!(out, "{}", output::to_json(&json()))?,
        }
        out.flush()?;
        Ok(())
    }

    pub async fn run(&self, command: Command, out: &mut dyn Write) -> Result<(), CtlError> {
        match command {
            Command::Pool(c) => self.pool(c, out).await,
            Command::Backend(c) => self.backend(c, out).await,
            Command::Route(c) => self.route(c, out).await,
            Command::Status => self.status(out).await,
            Command::Health(args) => self.health(args, out).await,
            Command::Watch(args) => self.watch(args, out).await,
            Command::Snapshot { action: None } => self.snapshot(out).await,
            Command::Snapshot {
                action: Some(SnapshotCommand::Save { file }),
            } => self.snapshot_save(&file, out).await,
            Command::Snapshot {
                action: Some(SnapshotCommand::Restore { file, yes }),
            } => self.snapshot_restore(&file, yes, out).await,
            Command::Cluster(ClusterCommand::Status) => self.cluster_status(out).await,
            Command::Cluster(ClusterCommand::AddMember { id, address }) => {
                let mut client = self.client.clone();
                let reply = self
                    .unary(client.add_member(v1::AddMemberRequest { id, address }))
                    .await?;
                self.member_reply(out, &reply)
            }
            Command::Cluster(ClusterCommand::RemoveMember { id }) => {
                let mut client = self.client.clone();
                let reply = self
                    .unary(client.remove_member(v1::RemoveMemberRequest { id }))
                    .await?;
                self.member_reply(out, &reply)
            }
            Command::Explain(args) => self.explain(args, out).await,
            Command::Cert(c) => self.cert(c, out).await,
            Command::Certs(c) => crate::certs::run(c, out),
        }
    }

    // === certificates ===

    async fn cert(&self, command: CertCommand, out: &mut dyn Write) -> Result<(), CtlError> {
        match command {
            CertCommand::Add {
                name,
                cert_file,
                key_file,
            } => {
                let read = |path: &std::path::Path, flag: &str| {
                    std::fs::read_to_string(path)
                        .map_err(|e| CtlError::Usage(format!("{flag} {}: {e}", path.display())))
                };
                let req = v1::AddCertificateRequest {
                    certificate: Some(v1::Certificate {
                        name,
                        chain_pem: read(&cert_file, "--cert-file")?,
                        key_pem: read(&key_file, "--key-file")?,
                    }),
                };
                let reply = self.unary(self.client.clone().add_certificate(req)).await?;
                let c = reply.certificate.clone().unwrap_or_default();
                self.print(
                    out,
                    || {
                        format!(
                            "certificate {} ({}) stored, valid until {} (revision {})",
                            c.name,
                            c.sans.join(", "),
                            output::unix_date(c.not_after_unix_s),
                            reply.revision
                        )
                    },
                    || output::CertificateReplyJson {
                        certificate: reply
                            .certificate
                            .as_ref()
                            .map(output::CertificateJson::from),
                        revision: reply.revision,
                    },
                )
            }
            CertCommand::List => {
                let reply = self
                    .unary(
                        self.client
                            .clone()
                            .list_certificates(v1::ListCertificatesRequest {}),
                    )
                    .await?;
                self.warn_if_stale(reply.stale.as_ref(), reply.revision);
                self.print(
                    out,
                    || output::certificates_table(&reply),
                    || output::CertificatesJson {
                        certificates: reply
                            .certificates
                            .iter()
                            .map(output::CertificateJson::from)
                            .collect(),
                        revision: reply.revision,
                        stale: reply.stale.as_ref().map(output::StaleJson::from),
                    },
                )
            }
            CertCommand::Remove { name } => {
                let what = format!("certificate {name} removed");
                let req = v1::RemoveCertificateRequest { name };
                let reply = self
                    .unary(self.client.clone().remove_certificate(req))
                    .await?;
                self.print_change(out, &reply, what)
            }
        }
    }

    async fn explain(&self, args: ExplainArgs, out: &mut dyn Write) -> Result<(), CtlError> {
        let (host, path) = crate::explain::split_url(&args.url)?;
        let req = v1::ExplainRequest {
            proxy: args.proxy.unwrap_or_default(),
            host,
            path,
            client: args.client.unwrap_or_default(),
        };
        let reply = self.unary(self.client.clone().explain(req)).await?;
        crate::explain::print(
            Some(&reply.proxy),
            &reply.admin_address,
            &reply.json,
            self.output,
            out,
        )
    }

    // === pools ===

    async fn get_pool(&self, name: &str) -> Result<v1::Pool, CtlError> {
        let req = v1::GetPoolRequest { name: name.into() };
        self.unary(self.client.clone().get_pool(req)).await
    }

    async fn pool(&self, command: PoolCommand, out: &mut dyn Write) -> Result<(), CtlError> {
        match command {
            PoolCommand::Create { name, settings } => {
                let req = v1::CreatePoolRequest {
                    pool: Some(pool_message(&name, &settings)),
                };
                let reply = self.unary(self.client.clone().create_pool(req)).await?;
                self.print_pool_reply(out, &reply, "created")
            }
            PoolCommand::Get { name } => {
                let pool = self.get_pool(&name).await?;
                self.warn_if_stale(pool.stale.as_ref(), pool.revision);
                self.print(out, || output::pool_detail(&pool), || PoolJson::from(&pool))
            }
            PoolCommand::List => {
                let reply = self
                    .unary(self.client.clone().list_pools(v1::ListPoolsRequest {}))
                    .await?;
                self.warn_if_stale(reply.stale.as_ref(), reply.revision);
                self.print(
                    out,
                    || {
                        if reply.pools.is_empty() {
                            format!("no pools (revision {})", reply.revision)
                        } else {
                            output::pools_table(&reply.pools)
                        }
                    },
                    || output::PoolsJson {
                        pools: reply.pools.iter().map(PoolJson::from).collect(),
                        revision: reply.revision,
                        stale: reply.stale.as_ref().map(output::StaleJson::from),
                    },
                )
            }
            PoolCommand::Update {
                name,
                settings,
                expected_revision,
                force,
            } => {
                let pool = pool_message(&name, &settings);
                // Read-then-write with the revision read, so a concurrent
                // change makes this update fail rather than vanish.
                let expected_revision = match (force, expected_revision) {
                    (true, _) => None,
                    (false, Some(r)) => Some(r),
                    (false, None) => Some(self.get_pool(&name).await?.revision),
                };
                let req = v1::UpdatePoolRequest {
                    pool: Some(pool),
                    expected_revision,
                };
                let reply = self.unary(self.client.clone().update_pool(req)).await?;
                self.print_pool_reply(out, &reply, "updated")
            }
            PoolCommand::Delete {
                name,
                expected_revision,
            } => {
                let req = v1::DeletePoolRequest {
                    name: name.clone(),
                    expected_revision,
                };
                let reply = self.unary(self.client.clone().delete_pool(req)).await?;
                self.print_change(out, &reply, format!("pool/{name} deleted"))
            }
        }
    }

    fn print_pool_reply(
        &self,
        out: &mut dyn Write,
        reply: &v1::PoolReply,
        verb: &str,
    ) -> Result<(), CtlError> {
        let name = reply.pool.as_ref().map(|p| p.name.as_str()).unwrap_or("?");
        self.print(
            out,
            || format!("pool/{name} {verb} (revision {})", reply.revision),
            || output::PoolReplyJson {
                pool: reply.pool.as_ref().map(PoolJson::from),
                revision: reply.revision,
            },
        )
    }

    fn print_change(
        &self,
        out: &mut dyn Write,
        reply: &v1::ChangeReply,
        what: String,
    ) -> Result<(), CtlError> {
        self.print(
            out,
            || format!("{what} (revision {})", reply.revision),
            || output::ChangeReplyJson {
                revision: reply.revision,
            },
        )
    }

    // === backends ===

    async fn backend(&self, command: BackendCommand, out: &mut dyn Write) -> Result<(), CtlError> {
        match command {
            BackendCommand::Add {
                pool,
                address,
                weight,
                backup,
                order,
                expect,
            } => {
                let req = v1::AddBackendRequest {
                    pool: pool.clone(),
                    backend: Some(v1::Backend {
                        address,
                        weight,
                        role: if backup {
                            v1::BackendRole::Backup
                        } else {
                            v1::BackendRole::Primary
                        }
                        .into(),
                        admin_state: v1::AdminState::Enabled.into(),
                        order,
                    }),
                    expected_revision: expect.expected_revision,
                };
                let reply = self.unary(self.client.clone().add_backend(req)).await?;
                self.print_backend_reply(out, &reply, &pool, "added")
            }
            BackendCommand::Update {
                pool,
                address,
                weight,
                backup,
                primary,
                order,
                expect,
            } => {
                let role = match (backup, primary) {
                    (true, _) => Some(v1::BackendRole::Backup),
                    (_, true) => Some(v1::BackendRole::Primary),
                    _ => None,
                };
                let req = v1::UpdateBackendRequest {
                    pool: pool.clone(),
                    address,
                    weight,
                    role: role.map(Into::into),
                    admin_state: None,
                    expected_revision: expect.expected_revision,
                    order,
                };
                let reply = self.unary(self.client.clone().update_backend(req)).await?;
                self.print_backend_reply(out, &reply, &pool, "updated")
            }
            BackendCommand::Drain(b) => {
                self.set_admin_state(b, v1::AdminState::Draining, out).await
            }
            BackendCommand::Enable(b) => {
                self.set_admin_state(b, v1::AdminState::Enabled, out).await
            }
            BackendCommand::Disable(b) => {
                self.set_admin_state(b, v1::AdminState::Disabled, out).await
            }
            BackendCommand::Remove(BackendRef {
                pool,
                address,
                expect,
            }) => {
                let req = v1::RemoveBackendRequest {
                    pool: pool.clone(),
                    address: address.clone(),
                    expected_revision: expect.expected_revision,
                };
                let reply = self.unary(self.client.clone().remove_backend(req)).await?;
                self.print_change(
                    out,
                    &reply,
                    format!("backend {address} removed from pool/{pool}"),
                )
            }
            BackendCommand::List { pool } => {
                let (p, health) = tokio::join!(self.get_pool(&pool), self.get_health());
                let p = p?;
                self.warn_if_stale(p.stale.as_ref(), p.revision);
                let health = health_section(health, Ok(vec![p.clone()]), Some(&pool))?;
                self.print(
                    out,
                    || output::backend_list(&p, &health),
                    || output::BackendsJson::new(&p, &health),
                )
            }
        }
    }

    async fn set_admin_state(
        &self,
        b: BackendRef,
        state: v1::AdminState,
        out: &mut dyn Write,
    ) -> Result<(), CtlError> {
        let req = v1::UpdateBackendRequest {
            pool: b.pool.clone(),
            address: b.address,
            weight: None,
            role: None,
            admin_state: Some(state.into()),
            expected_revision: b.expect.expected_revision,
            order: None,
        };
        let address = req.address.clone();
        let reply = self.unary(self.client.clone().update_backend(req)).await?;
        if reply.override_raft_index.is_some() || (reply.backend.is_none() && reply.revision == 0) {
            // The control plane committed it as a raft override: its
            // database is down (see README, "Emergency levers").
            let name = output::admin_state_name(state.into());
            let index = reply.override_raft_index.unwrap_or(0);
            return self.print(
                out,
                || {
                    format!(
                        "backend {address} in pool/{} is now {name} as a runtime override \
                         (control database unavailable; applied to the declared configuration \
                         when it returns; raft index {index})",
                        b.pool
                    )
                },
                || output::OverrideReplyJson {
                    pool: &b.pool,
                    address: &address,
                    admin_state: name,
                    runtime_override: true,
                    raft_index: index,
                },
            );
        }
        let verb = format!("is now {}", output::admin_state_name(state.into()));
        self.print_backend_reply(out, &reply, &b.pool, &verb)
    }

    fn print_backend_reply(
        &self,
        out: &mut dyn Write,
        reply: &v1::BackendReply,
        pool: &str,
        verb: &str,
    ) -> Result<(), CtlError> {
        let address = reply
            .backend
            .as_ref()
            .map(|b| b.address.as_str())
            .unwrap_or("?");
        self.print(
            out,
            || {
                format!(
                    "backend {address} in pool/{pool} {verb} (revision {})",
                    reply.revision
                )
            },
            || output::BackendReplyJson {
                backend: reply.backend.as_ref().map(output::BackendJson::from),
                revision: reply.revision,
            },
        )
    }

    // === routes ===

    async fn route(&self, command: RouteCommand, out: &mut dyn Write) -> Result<(), CtlError> {
        match command {
            RouteCommand::Add {
                tcp: true,
                listen,
                pool,
                ..
            } => {
                let req = v1::AddTcpRouteRequest {
                    route: Some(v1::TcpRoute {
                        listen: listen.unwrap_or_default(),
                        pool,
                    }),
                };
                let reply = self.unary(self.client.clone().add_tcp_route(req)).await?;
                let route = reply.route.clone().unwrap_or_default();
                self.print(
                    out,
                    || {
                        format!(
                            "tcp route {} -> pool/{} added (revision {})",
                            route.listen, route.pool, reply.revision
                        )
                    },
                    || output::TcpRouteReplyJson {
                        route: reply.route.as_ref().map(output::TcpRouteJson::from),
                        revision: reply.revision,
                    },
                )
            }
            RouteCommand::Add {
                host,
                prefix,
                pool,
                redirect_https,
                hsts_max_age,
                ..
            } => {
                let req = v1::AddRouteRequest {
                    route: Some(v1::Route {
                        host,
                        path_prefix: prefix,
                        pool,
                        redirect_https,
                        hsts_max_age_s: hsts_max_age.unwrap_or(0),
                    }),
                };
                let reply = self.unary(self.client.clone().add_route(req)).await?;
                let route = reply.route.clone().unwrap_or_default();
                self.print(
                    out,
                    || {
                        format!(
                            "route {} {} -> pool/{} added (revision {})",
                            output::route_host(&route.host),
                            route.path_prefix,
                            route.pool,
                            reply.revision
                        )
                    },
                    || output::RouteReplyJson {
                        route: reply.route.as_ref().map(output::RouteJson::from),
                        revision: reply.revision,
                    },
                )
            }
            RouteCommand::List => {
                let reply = self
                    .unary(self.client.clone().list_routes(v1::ListRoutesRequest {}))
                    .await?;
                self.warn_if_stale(reply.stale.as_ref(), reply.revision);
                self.print(
                    out,
                    || output::route_list(&reply),
                    || output::RoutesJson {
                        routes: reply.routes.iter().map(output::RouteJson::from).collect(),
                        tcp_routes: reply
                            .tcp_routes
                            .iter()
                            .map(output::TcpRouteJson::from)
                            .collect(),
                        revision: reply.revision,
                        stale: reply.stale.as_ref().map(output::StaleJson::from),
                    },
                )
            }
            RouteCommand::Delete {
                tcp: true, listen, ..
            } => {
                let listen = listen.unwrap_or_default();
                let what = format!("tcp route {listen} deleted");
                let req = v1::DeleteTcpRouteRequest { listen };
                let reply = self
                    .unary(self.client.clone().delete_tcp_route(req))
                    .await?;
                self.print_change(out, &reply, what)
            }
            RouteCommand::Delete { host, prefix, .. } => {
                let host = host.unwrap_or_default();
                let what = format!("route {} {prefix} deleted", output::route_host(&host));
                let req = v1::DeleteRouteRequest {
                    host,
                    path_prefix: prefix,
                };
                let reply = self.unary(self.client.clone().delete_route(req)).await?;
                self.print_change(out, &reply, what)
            }
        }
    }

    // === status, health, cluster, snapshot, watch ===

    async fn list_pools(&self) -> Result<Vec<v1::Pool>, CtlError> {
        let mut client = self.client.clone();
        let reply = self
            .unary(client.list_pools(v1::ListPoolsRequest {}))
            .await?;
        Ok(reply.pools)
    }

    async fn get_health(&self) -> Result<v1::HealthReply, CtlError> {
        let mut client = self.client.clone();
        self.unary(client.get_health(v1::GetHealthRequest {})).await
    }

    /// GetStatus, GetHealth and ListPools side by side: the pools name the
    /// backends no agent has reported on yet.
    async fn status(&self, out: &mut dyn Write) -> Result<(), CtlError> {
        let mut client = self.client.clone();
        let (reply, health, pools) = tokio::join!(
            self.unary(client.get_status(v1::GetStatusRequest {})),
            self.get_health(),
            self.list_pools(),
        );
        let reply = reply?;
        self.warn_if_stale(reply.stale.as_ref(), reply.revision);
        let policies = pools.as_ref().map(|p| p.clone()).unwrap_or_default();
        let health = health_section(health, pools, None)?;
        let alerts = output::single_active_alerts(&policies, &health);
        let now_ms = chrono::Utc::now().timestamp_millis();
        self.print(
            out,
            || output::status(&reply, &health, &alerts, now_ms),
            || output::StatusJson::new(&reply, &health, &alerts),
        )
    }

    /// The health table alone. Unlike `status`, a GetHealth failure is the
    /// command's failure; the configuration only adds the backends nobody
    /// has reported on, so without it (Postgres down) health still shows.
    async fn health(&self, args: HealthArgs, out: &mut dyn Write) -> Result<(), CtlError> {
        let pools = async {
            match &args.pool {
                Some(name) => self.get_pool(name).await.map(|p| vec![p]),
                None => self.list_pools().await,
            }
        };
        let (health, pools) = tokio::join!(self.get_health(), pools);
        let pools = match pools {
            // A pool that does not exist is a mistake, not a gap.
            Err(e) if e.exit_code() == crate::error::exit::NOT_FOUND => return Err(e),
            pools => pools,
        };
        let (reply, note) = with_config(&health?, pools, args.pool.as_deref());
        let now_ms = chrono::Utc::now().timestamp_millis();
        self.print(
            out,
            || {
                let mut text = output::health_reply(&reply, now_ms);
                if let Some(note) = note {
                    text.push_str(&note);
                }
                text
            },
            || output::HealthJson::from(&reply),
        )
    }

    async fn cluster_status(&self, out: &mut dyn Write) -> Result<(), CtlError> {
        let mut client = self.client.clone();
        let reply = self
            .unary(client.get_cluster_status(v1::GetClusterStatusRequest {}))
            .await?;
        self.print(
            out,
            || output::cluster_status(&reply),
            || output::ClusterStatusJson::from(&reply),
        )
    }

    fn member_reply(&self, out: &mut dyn Write, reply: &v1::MemberReply) -> Result<(), CtlError> {
        self.print(
            out,
            || reply.message.clone(),
            || serde_json::json!({"raft_index": reply.raft_index, "message": reply.message}),
        )
    }

    async fn snapshot(&self, out: &mut dyn Write) -> Result<(), CtlError> {
        let reply = self
            .unary(self.client.clone().get_snapshot(v1::GetSnapshotRequest {}))
            .await?;
        self.warn_if_stale(reply.stale.as_ref(), reply.revision);
        self.print(
            out,
            || output::snapshot(&reply),
            || output::SnapshotJson::from(&reply),
        )
    }

    /// Prints each event as it arrives until Ctrl-C (exit 0) or the stream
    /// ends (6 when the replica ends it, 8 when the connection breaks). The
    /// deadline covers opening the stream, not its life.
    async fn watch(&self, args: WatchArgs, out: &mut dyn Write) -> Result<(), CtlError> {
        // "From revision N" means N of the store's current history: resume
        // with its identity (a watcher without one gets a full snapshot).
        let (store_id, generation) = if args.from_revision > 0 {
            let status = self
                .unary(self.client.clone().get_status(v1::GetStatusRequest {}))
                .await?;
            (status.store_id, status.generation)
        } else {
            (String::new(), 0)
        };
        let req = v1::WatchRequest {
            node_id: format!("tandemctl-{}", std::process::id()),
            kind: v1::NodeKind::Cli.into(),
            last_revision: args.from_revision,
            zone: String::new(),
            store_id,
            generation,
        };
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut client = self.client.clone();
        let mut stream = tokio::select! {
            stream = self.unary(client.watch(req)) => stream?,
            _ = &mut ctrl_c => return Ok(()),
        };
        let mut text = output::WatchText::default();
        loop {
            let event = tokio::select! {
                event = stream.message() => event,
                _ = &mut ctrl_c => return Ok(()),
            };
            let event = match event {
                Ok(Some(event)) => event,
                Ok(None) => return Err(CtlError::StreamEnded),
                Err(status) => return Err(self.refused(status)),
            };
            if let Some(v1::watch_event::Event::Snapshot(s)) = &event.event {
                self.warn_if_stale(s.stale.as_ref(), event.revision);
            }
            let lines = match self.output {
                Output::Table => text.lines(&event),
                Output::Json => vec![output::to_json_line(&output::WatchEventJson::from(&event))],
            };
            for line in lines {
                writeln!(out, "{line}")?;
            }
            out.flush()?;
        }
    }
}

// === health beside the configuration ===

/// Failures of GetHealth that `status` and `backend list` show as a note
/// instead of failing: a control plane without health (UNIMPLEMENTED) or a
/// replica that cannot tell right now (UNAVAILABLE, no answer in time).
fn health_can_wait(e: &CtlError) -> bool {
    match e {
        CtlError::Status { status, .. } => matches!(
            status.code(),
            tonic::Code::Unimplemented | tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        CtlError::Timeout(_) | CtlError::Lost { .. } => true,
        _ => false,
    }
}

/// What to show of health from the replies of GetHealth and of the
/// configuration read beside it: the reported backends plus the configured
/// ones nobody has reported on (only pool `only`'s, when given). A failed
/// configuration read leaves those out, with a note.
pub fn health_section(
    health: Result<v1::HealthReply, CtlError>,
    pools: Result<Vec<v1::Pool>, CtlError>,
    only: Option<&str>,
) -> Result<Health, CtlError> {
    match health {
        Ok(reply) => {
            let (reply, note) = with_config(&reply, pools, only);
            Ok(Health::Known { reply, note })
        }
        Err(e) if health_can_wait(&e) => Ok(Health::Unavailable(e.to_string())),
        Err(e) => Err(e),
    }
}

/// The reply with the configured backends nobody has reported on, or
/// without them and a note saying why.
fn with_config(
    reply: &v1::HealthReply,
    pools: Result<Vec<v1::Pool>, CtlError>,
    only: Option<&str>,
) -> (v1::HealthReply, Option<String>) {
    match pools {
        Ok(pools) => (output::with_unreported(reply, &pools, only), None),
        Err(e) => (
            output::with_unreported(reply, &[], only),
            Some(output::unreported_unknown_note(&e.to_string())),
        ),
    }
}

// === requests from flags ===

/// Refuses commands that parsed but say nothing to do, before connecting.
pub fn preflight(command: &Command) -> Result<(), CtlError> {
    match command {
        Command::Pool(PoolCommand::Update { name, settings, .. })
            if pool_message(name, settings) == pool_message(name, &PoolSettings::default()) =>
        {
            Err(CtlError::Usage(
                "nothing to update: pass at least one setting (see tandemctl pool update --help)"
                    .into(),
            ))
        }
        Command::Backend(BackendCommand::Update {
            weight: None,
            backup: false,
            primary: false,
            order: None,
            ..
        }) => Err(CtlError::Usage(
            "nothing to update: pass --weight, --order, --primary or --backup".into(),
        )),
        _ => Ok(()),
    }
}

fn policy_to_proto(p: Policy) -> v1::LbPolicy {
    match p {
        Policy::RoundRobin => v1::LbPolicy::RoundRobin,
        Policy::LeastConnections => v1::LbPolicy::LeastConnections,
        Policy::IpHash => v1::LbPolicy::IpHash,
        Policy::RandomTwoChoices => v1::LbPolicy::RandomTwoChoices,
        Policy::SingleActive => v1::LbPolicy::SingleActive,
    }
}

fn health_kind_to_proto(k: HealthKind) -> v1::HealthCheckKind {
    match k {
        HealthKind::Http => v1::HealthCheckKind::Http,
        HealthKind::Tcp => v1::HealthCheckKind::Tcp,
    }
}

/// The pool message for create and update: exactly the flags given are set,
/// so the control plane applies its defaults (create) or keeps the current
/// values (update) for the rest. A sub-message none of whose flags were given
/// is left out.
pub fn pool_message(name: &str, s: &PoolSettings) -> v1::Pool {
    fn some_if_set<T: Default + PartialEq>(m: T) -> Option<T> {
        (m != T::default()).then_some(m)
    }
    let ms = |v: Option<Millis>| v.map(|v| v.get());
    v1::Pool {
        name: name.to_string(),
        policy: s
            .policy
            .map(policy_to_proto)
            .unwrap_or(v1::LbPolicy::Unspecified)
            .into(),
        health_check: some_if_set(v1::HealthCheck {
            kind: s.health_kind.map(|k| health_kind_to_proto(k).into()),
            path: s.health_path.clone(),
            method: s.health_method.clone(),
            host: s.health_host.clone(),
            expected_status_min: s.health_status.map(|r| r.min),
            expected_status_max: s.health_status.map(|r| r.max),
            interval_ms: ms(s.health_interval),
            timeout_ms: ms(s.health_timeout),
            rise: s.health_rise,
            fall: s.health_fall,
            port: s.health_port.map(u32::from),
        }),
        connect_timeout_ms: ms(s.connect_timeout),
        request_timeout_ms: ms(s.request_timeout),
        retry: some_if_set(v1::RetryPolicy {
            attempts: s.retries,
            per_try_timeout_ms: ms(s.per_try_timeout),
            budget_percent: s.retry_budget,
        }),
        outlier: some_if_set(v1::OutlierDetection {
            consecutive_failures: s.outlier_failures,
            base_ejection_ms: ms(s.outlier_ejection),
            max_ejected_percent: s.outlier_max_ejected,
        }),
        panic_threshold_percent: s.panic_threshold,
        backends: Vec::new(),
        revision: 0,
        tcp: some_if_set(v1::TcpSettings {
            idle_timeout_ms: ms(s.idle_timeout),
            max_connections: s.max_connections,
            max_queue: s.max_queue,
            queue_timeout_ms: ms(s.queue_timeout),
            on_unhealthy: s.on_unhealthy.map(|o| {
                match o {
                    OnUnhealthyArg::Close => v1::OnUnhealthy::Close,
                    OnUnhealthyArg::Keep => v1::OnUnhealthy::Keep,
                    OnUnhealthyArg::Policy => v1::OnUnhealthy::Unspecified,
                }
                .into()
            }),
            unhealthy_grace_ms: ms(s.unhealthy_grace),
            proxy_protocol: s.proxy_protocol.map(|p| p == ProxyProtocolArg::V2),
        }),
        stale: None,
        max_request_body_bytes: s.max_request_body,
        upstream_idle_timeout_ms: ms(s.upstream_idle_timeout),
        tunnel_idle_timeout_ms: ms(s.tunnel_idle_timeout),
        backend_tls: some_if_set(v1::BackendTls {
            enabled: if s.backend_tls {
                Some(true)
            } else if s.no_backend_tls {
                Some(false)
            } else {
                None
            },
            ca_pem: s.backend_ca_file.clone(),
            sni: s.backend_sni.clone(),
            insecure: s.backend_tls_insecure.then_some(true),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn settings(args: &[&str]) -> PoolSettings {
        let argv = ["tandemctl", "pool", "create", "shop"]
            .iter()
            .chain(args)
            .copied();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Pool(PoolCommand::Create { settings, .. }) => settings,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_given_flags_are_set() {
        let p = pool_message(
            "shop",
            &settings(&["--health-interval", "1s", "--health-fall", "2"]),
        );
        assert_eq!(p.policy, v1::LbPolicy::Unspecified as i32);
        let h = p.health_check.unwrap();
        assert_eq!(h.interval_ms, Some(1_000));
        assert_eq!(h.fall, Some(2));
        assert_eq!(h.rise, None);
        assert_eq!(h.path, None);
        assert_eq!(p.retry, None, "untouched sub-messages are left out");
        assert_eq!(p.outlier, None);
        assert_eq!(p.connect_timeout_ms, None);
    }

    #[test]
    fn every_setting_reaches_its_field() {
        let p = pool_message(
            "shop",
            &settings(&[
                "--policy",
                "ip_hash",
                "--health-kind",
                "tcp",
                "--health-path",
                "/healthz",
                "--health-method",
                "HEAD",
                "--health-host",
                "shop.local",
                "--health-status",
                "200-299",
                "--health-interval",
                "2s",
                "--health-timeout",
                "500ms",
                "--health-rise",
                "3",
                "--health-fall",
                "4",
                "--connect-timeout",
                "1.5s",
                "--request-timeout",
                "1m",
                "--retries",
                "2",
                "--per-try-timeout",
                "5s",
                "--retry-budget",
                "25%",
                "--outlier-failures",
                "7",
                "--outlier-ejection",
                "30s",
                "--outlier-max-ejected",
                "40",
                "--panic-threshold",
                "60",
                "--max-request-body",
                "1MiB",
                "--upstream-idle-timeout",
                "2s",
                "--tunnel-idle-timeout",
                "10m",
            ]),
        );
        assert_eq!(
            p,
            v1::Pool {
                name: "shop".into(),
                policy: v1::LbPolicy::IpHash.into(),
                health_check: Some(v1::HealthCheck {
                    kind: Some(v1::HealthCheckKind::Tcp.into()),
                    path: Some("/healthz".into()),
                    method: Some("HEAD".into()),
                    host: Some("shop.local".into()),
                    expected_status_min: Some(200),
                    expected_status_max: Some(299),
                    interval_ms: Some(2_000),
                    timeout_ms: Some(500),
                    rise: Some(3),
                    fall: Some(4),
                    port: None,
                }),
                connect_timeout_ms: Some(1_500),
                request_timeout_ms: Some(60_000),
                retry: Some(v1::RetryPolicy {
                    attempts: Some(2),
                    per_try_timeout_ms: Some(5_000),
                    budget_percent: Some(25),
                }),
                outlier: Some(v1::OutlierDetection {
                    consecutive_failures: Some(7),
                    base_ejection_ms: Some(30_000),
                    max_ejected_percent: Some(40),
                }),
                panic_threshold_percent: Some(60),
                backends: vec![],
                revision: 0,
                stale: None,
                tcp: None,
                max_request_body_bytes: Some(1 << 20),
                upstream_idle_timeout_ms: Some(2_000),
                tunnel_idle_timeout_ms: Some(600_000),
                backend_tls: None,
            }
        );
    }

    #[test]
    fn backend_tls_flags_fill_their_message() {
        let dir =
            std::env::temp_dir().join(format!("tandemctl-backend-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        std::fs::write(&ca, pem).unwrap();
        let ca = ca.display().to_string();
        let p = pool_message(
            "api",
            &settings(&[
                "--backend-tls",
                "--backend-ca-file",
                &ca,
                "--backend-sni",
                "api.internal",
            ]),
        );
        assert_eq!(
            p.backend_tls,
            Some(v1::BackendTls {
                enabled: Some(true),
                ca_pem: Some(pem.into()),
                sni: Some("api.internal".into()),
                insecure: None,
            })
        );
        let p = pool_message("api", &settings(&["--backend-tls-insecure"]));
        assert_eq!(
            p.backend_tls,
            Some(v1::BackendTls {
                insecure: Some(true),
                ..Default::default()
            })
        );
        let p = pool_message("api", &settings(&["--no-backend-tls"]));
        assert_eq!(p.backend_tls.unwrap().enabled, Some(false));
        assert_eq!(pool_message("api", &settings(&[])).backend_tls, None);
        // A file that is not a CA bundle, and verification both on and off,
        // are refused while parsing.
        let bad = dir.join("bad.pem");
        std::fs::write(&bad, "nope").unwrap();
        for args in [
            vec!["--backend-ca-file".to_string(), bad.display().to_string()],
            vec![
                "--backend-ca-file".into(),
                ca.clone(),
                "--backend-tls-insecure".into(),
            ],
            vec!["--no-backend-tls".into(), "--backend-tls".into()],
        ] {
            let argv = ["tandemctl", "pool", "create", "api"]
                .into_iter()
                .map(String::from)
                .chain(args.clone());
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn updates_without_a_setting_are_usage_errors() {
        let command = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("tandemctl").chain(args.iter().copied()))
                .unwrap()
                .command
        };
        for args in [
            &["pool", "update", "shop"][..],
            &["pool", "update", "shop", "--force"],
            &["backend", "update", "shop", "10.0.0.5:3000"],
        ] {
            let e = preflight(&command(args)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().starts_with("nothing to update"), "{e}");
        }
        for args in [
            &["pool", "update", "shop", "--retries", "0"][..],
            &["backend", "update", "shop", "10.0.0.5:3000", "--primary"],
            &["pool", "list"],
        ] {
            preflight(&command(args)).unwrap();
        }
    }

    #[test]
    fn endpoint_lists() {
        assert_eq!(
            endpoints(" http://a:1, b:2 ,,").unwrap(),
            ["http://a:1", "http://b:2"]
        );
        assert!(matches!(endpoints(" , "), Err(CtlError::Usage(_))));
    }

    #[test]
    fn tokens_come_from_the_flag_or_a_file() {
        let dir = std::env::temp_dir().join(format!("tandemctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let mut global = Cli::try_parse_from(["tandemctl", "status"]).unwrap().global;
        global.token = None;
        global.token_file = Some(file.clone());
        assert_eq!(load_token(&global).unwrap().as_deref(), Some("s3cret"));
        global.token_file = Some(dir.join("missing"));
        let e = load_token(&global).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("cannot read the token file"), "{e}");
        std::fs::write(&file, "  \n").unwrap();
        global.token_file = Some(file);
        assert!(
            load_token(&global)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_token_names_the_flag() {
        assert!(bearer(Some("s3cret")).unwrap().is_set());
        let e = bearer(Some("bad\ntoken")).unwrap_err().to_string();
        assert!(e.contains("--token"), "{e}");
    }

    fn refused(code: tonic::Code) -> CtlError {
        CtlError::Status {
            status: tonic::Status::new(code, "no"),
            token_sent: true,
            endpoint: String::new(),
        }
    }

    fn reported() -> v1::HealthReply {
        v1::HealthReply {
            index: 3,
            backends: vec![v1::BackendHealth {
                pool: "shop".into(),
                address: "10.0.0.5:3000".into(),
                state: v1::HealthState::Unhealthy.into(),
                ..Default::default()
            }],
            leader: "control-1".into(),
            term: 2,
        }
    }

    fn configured() -> Vec<v1::Pool> {
        let backend = |address: &str| v1::Backend {
            address: address.into(),
            ..Default::default()
        };
        vec![v1::Pool {
            name: "shop".into(),
            backends: vec![backend("10.0.0.5:3000"), backend("10.0.0.6:3000")],
            ..Default::default()
        }]
    }

    #[test]
    fn status_goes_on_without_health_only_when_it_cannot_be_had_now() {
        for e in [
            refused(tonic::Code::Unimplemented),
            refused(tonic::Code::Unavailable),
            refused(tonic::Code::DeadlineExceeded),
            CtlError::Timeout(Duration::from_secs(10)),
        ] {
            let why = e.to_string();
            assert_eq!(
                health_section(Err(e), Ok(configured()), None).unwrap(),
                Health::Unavailable(why)
            );
        }
        for code in [
            tonic::Code::PermissionDenied,
            tonic::Code::Internal,
            tonic::Code::InvalidArgument,
        ] {
            let e = health_section(Err(refused(code)), Ok(configured()), None).unwrap_err();
            assert_eq!(e.exit_code(), refused(code).exit_code());
        }
    }

    #[test]
    fn health_names_the_configured_backends_when_it_can_read_them() {
        let Health::Known { reply, note } =
            health_section(Ok(reported()), Ok(configured()), None).unwrap()
        else {
            panic!("health is known");
        };
        assert_eq!(note, None);
        let states: Vec<(&str, i32)> = reply
            .backends
            .iter()
            .map(|b| (b.address.as_str(), b.state))
            .collect();
        assert_eq!(
            states,
            [
                ("10.0.0.5:3000", v1::HealthState::Unhealthy as i32),
                ("10.0.0.6:3000", v1::HealthState::Unknown as i32),
            ]
        );
        // Postgres down: what the agents said, and a note for the rest.
        let Health::Known { reply, note } =
            health_section(Ok(reported()), Err(refused(tonic::Code::Unavailable)), None).unwrap()
        else {
            panic!("health is known");
        };
        assert_eq!(reply.backends.len(), 1);
        let note = note.unwrap();
        assert!(
            note.starts_with("backends no agent has reported on are not listed: "),
            "{note}"
        );
        assert!(note.ends_with("(UNAVAILABLE: no)"), "{note}");
    }
}
