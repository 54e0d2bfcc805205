use super::*;
use std::io::Write as _;
use tonic::service::Interceptor as _;

const ADMIN: &str = "admin-secret-0123456789";
const NODE: &str = "node-secret-0123456789";
const PEER: &str = "peer-secret-0123456789";

fn sha(token: &str) -> String {
    hex(&sha256(token.as_bytes()))
}

fn access_json(revoked: &[&str]) -> String {
    serde_json::json!({
        "identities": [
            {"name": "alice", "role": "admin", "token_sha256": sha("alice-token")},
            {"name": "shop-team", "role": "admin", "pools": ["shop"], "token_sha256": sha("shop-token")},
            {"name": "oncall", "role": "operator", "token_sha256": sha("oncall-token")},
            {"name": "agent-1", "role": "agent", "token_sha256": sha("agent-1-token")},
            {"name": "proxy-1", "role": "proxy", "token_sha256": sha("proxy-1-token")},
        ],
        "revoked": revoked,
    })
    .to_string()
}

fn credentials(file: &Path) -> Credentials {
    Credentials::new(
        ADMIN.into(),
        Some(NODE.into()),
        Some(PEER.into()),
        Some(AccessFile::load(file).expect("access file loads")),
    )
}

fn write(file: &Path, text: &str) {
    // A new file renamed over the old one, as an editor or a config
    // management tool writes it.
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    drop(f);
    std::fs::rename(&tmp, file).unwrap();
}

/// A request as the interceptor passes it on: with a bearer token.
fn with_token<T>(auth: &mut Authenticate, token: &str, body: T) -> Request<T> {
    let mut req = Request::new(());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let req = auth.call(req).unwrap();
    let (meta, ext, ()) = req.into_parts();
    Request::from_parts(meta, ext, body)
}

/// A request over a connection whose client certificate is `der`.
fn with_certificate<T>(auth: &mut Authenticate, der: &[u8], body: T) -> Request<T> {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(PeerCertificate(Arc::new(der.to_vec())));
    let req = auth.call(req).unwrap();
    let (meta, ext, ()) = req.into_parts();
    Request::from_parts(meta, ext, body)
}

fn config_with_route(pool: &str) -> Arc<Snapshot> {
    let mut s = Snapshot::default();
    s.routes.push(tandem_core::Route {
        host: tandem_core::HostMatch::new("web.example").unwrap(),
        path_prefix: tandem_core::PathPrefix::new("/").unwrap(),
        pool: tandem_core::PoolName::new(pool).unwrap(),
        ..serde_json::from_value(serde_json::json!({
            "host": "x", "path_prefix": "/", "pool": "x"
        }))
        .unwrap()
    });
    Arc::new(s)
}

fn check<T: Subject>(method: &str, req: &Request<T>) -> Result<Identity, AuthError> {
    authorize("ControlPlane", method, req, || config_with_route("shop"))
}

fn add_backend(pool: &str) -> v1::AddBackendRequest {
    v1::AddBackendRequest {
        pool: pool.into(),
        ..Default::default()
    }
}

#[test]
fn every_rpc_of_the_proto_has_one_entry() {
    let proto = include_str!("../../../../proto/tandem/v1/control.proto");
    let mut declared = Vec::new();
    let mut service = None;
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = Some(rest.trim_end_matches('{').trim().to_string());
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let method = rest.split('(').next().unwrap().trim().to_string();
            declared.push((service.clone().expect("rpc inside a service"), method));
        }
    }
    assert!(declared.len() > 25, "the proto parses: {declared:?}");
    for (service, method) in &declared {
        let entries = TABLE
            .iter()
            .filter(|(s, m, _)| s == service && m == method)
            .count();
        assert_eq!(
            entries, 1,
            "{service}/{method} must have exactly one entry in auth::TABLE (has {entries})"
        );
    }
    for (s, m, _) in TABLE {
        assert!(
            declared.iter().any(|(ds, dm)| ds == s && dm == m),
            "auth::TABLE names {s}/{m}, which the proto does not declare"
        );
    }
}

#[test]
fn writes_are_for_admins_and_only_reports_and_raft_for_components() {
    for (s, m, allow) in TABLE {
        match allow.kind {
            Kind::PoolWrite | Kind::ClusterWrite => assert!(
                allow
                    .who
                    .iter()
                    .all(|w| matches!(w, Who::Admin | Who::PoolAdmin)),
                "{s}/{m}"
            ),
            Kind::Raft => assert_eq!(allow.who, &[Who::Replica], "{s}/{m}"),
            Kind::Report => assert!(!allow.who.contains(&Who::Operator), "{s}/{m}"),
            Kind::Read => {}
        }
        if allow.kind == Kind::ClusterWrite {
            assert!(!allow.who.contains(&Who::PoolAdmin), "{s}/{m}");
        }
    }
}

#[test]
fn legacy_tokens_keep_their_roles_and_the_node_token_no_longer_steps_raft() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.json");
    write(&file, &access_json(&[]));
    let mut auth = Authenticate::new(credentials(&file));
    let admin = check(
        "CreatePool",
        &with_token(&mut auth, ADMIN, add_backend("x")),
    )
    .unwrap();
    assert_eq!((admin.name.as_str(), admin.role), ("admin", Role::Admin));
    assert_eq!(admin.actor(), "admin (admin token)");
    let node = with_token(&mut auth, NODE, v1::RaftBatch::default());
    assert_eq!(
        authorize_raft(&node).unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    let peer = with_token(&mut auth, PEER, v1::RaftBatch::default());
    assert_eq!(authorize_raft(&peer).unwrap().role, Role::Replica);
    // The node token reads and reports for anyone (the old behaviour).
    let report = v1::ReportHealthRequest {
        agent_id: "agent-9".into(),
        ..Default::default()
    };
    assert!(check("ReportHealth", &with_token(&mut auth, NODE, report)).is_ok());
    let e = check(
        "AddBackend",
        &with_token(&mut auth, NODE, add_backend("shop")),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the node token may read, watch and report but not call AddBackend; use an admin token"
    );
    assert_eq!(Error::from(e).code(), tonic::Code::PermissionDenied);
}

#[test]
fn refusals_keep_their_codes_and_words() {
    let mut auth = Authenticate::new(Credentials::new(ADMIN.into(), None, None, None));
    let refused = |req: Request<v1::GetPoolRequest>| {
        let s: Status = Error::from(check("GetPool", &req).unwrap_err()).into();
        (s.code(), s.message().to_string())
    };
    let bare = auth.call(Request::new(())).unwrap();
    let (m, e, ()) = bare.into_parts();
    assert_eq!(
        refused(Request::from_parts(m, e, v1::GetPoolRequest::default())),
        (
            tonic::Code::Unauthenticated,
            "missing `authorization: Bearer <token>` metadata (or a client certificate)".into()
        )
    );
    let mut basic = Request::new(());
    basic
        .metadata_mut()
        .insert("authorization", "Basic x".parse().unwrap());
    let (m, e, ()) = auth.call(basic).unwrap().into_parts();
    assert_eq!(
        refused(Request::from_parts(m, e, v1::GetPoolRequest::default())),
        (
            tonic::Code::Unauthenticated,
            "authorization must be `Bearer <token>`".into()
        )
    );
    assert_eq!(
        refused(with_token(&mut auth, "nope", v1::GetPoolRequest::default())),
        (tonic::Code::Unauthenticated, "invalid token".into())
    );
    assert_eq!(
        check("GetPool", &Request::new(v1::GetPoolRequest::default())),
        Err(AuthError::NoCredentials)
    );
    // Without a peer token, replicas use one derived from the admin token.
    let derived = derived_peer_token(ADMIN);
    assert_ne!(derived, ADMIN);
    let req = with_token(&mut auth, &derived, v1::RaftBatch::default());
    assert!(authorize_raft(&req).is_ok());
    assert_eq!(
        authorize("ControlPlane", "NoSuchCall", &req, Default::default),
        Err(AuthError::NoRule {
            method: "ControlPlane/NoSuchCall".into()
        })
    );
}

#[test]
fn an_operator_reads_but_does_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.json");
    write(&file, &access_json(&[]));
    let mut auth = Authenticate::new(credentials(&file));
    let get = with_token(&mut auth, "oncall-token", v1::GetPoolRequest::default());
    assert_eq!(check("GetPool", &get).unwrap().role, Role::Operator);
    let watch = with_token(&mut auth, "oncall-token", v1::WatchRequest::default());
    let who = check("Watch", &watch).unwrap();
    assert!(
        !who.may_see_keys(),
        "an operator's Watch has no private keys"
    );
    let e = check(
        "AddBackend",
        &with_token(&mut auth, "oncall-token", add_backend("shop")),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "oncall (role operator) may not call AddBackend"
    );
    assert!(e.is_denied());
}

#[test]
fn a_pool_scoped_admin_changes_its_pools_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.json");
    write(&file, &access_json(&[]));
    let mut auth = Authenticate::new(credentials(&file));
    let mut as_shop = |body| with_token(&mut auth, "shop-token", body);
    assert!(check("AddBackend", &as_shop(add_backend("shop"))).is_ok());
    assert_eq!(
        check("AddBackend", &as_shop(add_backend("billing")))
            .unwrap_err()
            .to_string(),
        "shop-team may change only the pools shop, not \"billing\""
    );
    // A delete named by host and prefix: the route's pool decides.
    let delete = v1::DeleteRouteRequest {
        host: "WEB.example".into(),
        path_prefix: "/".into(),
    };
    let req = with_token(&mut auth, "shop-token", delete.clone());
    assert!(check("DeleteRoute", &req).is_ok());
    let elsewhere = authorize("ControlPlane", "DeleteRoute", &req, || {
        config_with_route("billing")
    });
    assert!(matches!(elsewhere, Err(AuthError::OutOfScope { .. })));
    let unknown = authorize("ControlPlane", "DeleteRoute", &req, Default::default);
    assert!(matches!(unknown, Err(AuthError::NoPool { .. })));
    // Reads are open to it; the cluster is not.
    let req = with_token(&mut auth, "shop-token", v1::ListPoolsRequest::default());
    assert!(check("ListPools", &req).is_ok());
    let req = with_token(
        &mut auth,
        "shop-token",
        v1::RestoreSnapshotRequest::default(),
    );
    assert_eq!(
        check("RestoreSnapshot", &req).unwrap_err().to_string(),
        "shop-team is an admin scoped to pools: RestoreSnapshot needs an admin of everything"
    );
    let req = with_token(&mut auth, "alice-token", add_backend("billing"));
    assert!(check("AddBackend", &req).is_ok(), "an unscoped admin");
}

#[test]
fn components_report_only_for_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.json");
    write(&file, &access_json(&[]));
    let mut auth = Authenticate::new(credentials(&file));
    let report = |id: &str| v1::ReportHealthRequest {
        agent_id: id.into(),
        ..Default::default()
    };
    let req = with_token(&mut auth, "agent-1-token", report("agent-1"));
    assert!(check("ReportHealth", &req).is_ok());
    let req = with_token(&mut auth, "agent-1-token", report("agent-2"));
    let e = check("ReportHealth", &req).unwrap_err();
    assert_eq!(
        e.to_string(),
        "agent-1 (role agent) may report only for itself, not for \"agent-2\" (agent_id)"
    );
    assert_eq!(Error::from(e).code(), tonic::Code::PermissionDenied);
    let applied = v1::ReportAppliedRequest {
        node_id: "proxy-2".into(),
        ..Default::default()
    };
    let req = with_token(&mut auth, "proxy-1-token", applied);
    assert!(matches!(
        check("ReportApplied", &req),
        Err(AuthError::NotYours { .. })
    ));
    // A proxy does not report health, nor step raft.
    let req = with_token(&mut auth, "proxy-1-token", report("proxy-1"));
    assert!(matches!(
        check("ReportHealth", &req),
        Err(AuthError::NotAllowed { .. })
    ));
    let req = with_token(&mut auth, "proxy-1-token", v1::RaftBatch::default());
    assert_eq!(
        authorize_raft(&req).unwrap_err().message(),
        "proxy-1 (role proxy) may not call Step"
    );
}

#[test]
fn a_certificate_names_the_caller_and_wins_over_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.json");
    write(&file, &access_json(&[]));
    let mut auth = Authenticate::new(credentials(&file));
    let agent = include_bytes!("../../../tls/src/testdata/agent.der");
    let report = |id: &str| v1::ReportHealthRequest {
        agent_id: id.into(),
        ..Default::default()
    };
    let req = with_certificate(&mut auth, agent, report("agent-1"));
    let who = check("ReportHealth", &req).unwrap();
    assert_eq!(who.actor(), "agent-1 (certificate)");
    let req = with_certificate(&mut auth, agent, report("agent-7"));
    assert!(matches!(
        check("ReportHealth", &req),
        Err(AuthError::NotYours { .. })
    ));
    let proxy = include_bytes!("../../../tls/src/testdata/proxy.der");
    let req = with_certificate(&mut auth, proxy, v1::RaftBatch::default());
    assert!(
        authorize_raft(&req).is_err(),
        "a proxy's certificate cannot step raft"
    );
    let none = include_bytes!("../../../tls/src/testdata/no-identity.der");
    let req = with_certificate(&mut auth, none, v1::GetPoolRequest::default());
    let s: Status = Error::from(check("GetPool", &req).unwrap_err()).into();
    assert_eq!(s.code(), tonic::Code::Unauthenticated);
    assert!(
        s.message().contains("spiffe://tandem/<role>/<name>"),
        "{}",
        s.message()
    );
}

#[test]
fn a_revoked_name_is_refused_once_the_file_changes_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.json");
    write(&file, &access_json(&[]));
    let mut auth = Authenticate::new(credentials(&file));
    let report = || v1::ReportHealthRequest {
        agent_id: "agent-1".into(),
        ..Default::default()
    };
    let agent = include_bytes!("../../../tls/src/testdata/agent.der");
    assert!(
        check(
            "ReportHealth",
            &with_token(&mut auth, "agent-1-token", report())
        )
        .is_ok()
    );
    write(&file, &access_json(&["agent-1"]));
    for req in [
        with_token(&mut auth, "agent-1-token", report()),
        with_certificate(&mut auth, agent, report()),
    ] {
        let e = check("ReportHealth", &req).unwrap_err();
        assert_eq!(
            e.to_string(),
            "agent-1 is revoked (the deny list of the access file)"
        );
        assert_eq!(Error::from(e).code(), tonic::Code::PermissionDenied);
    }
    // A file that no longer parses refuses its identities (and says so in
    // the log); the legacy tokens still work.
    write(&file, "{ not json");
    let req = with_token(&mut auth, "alice-token", v1::GetPoolRequest::default());
    assert_eq!(check("GetPool", &req), Err(AuthError::Invalid));
    let req = with_token(&mut auth, ADMIN, v1::GetPoolRequest::default());
    assert!(check("GetPool", &req).is_ok());
    write(&file, &access_json(&[]));
    let req = with_token(&mut auth, "alice-token", v1::GetPoolRequest::default());
    assert!(check("GetPool", &req).is_ok());
}

#[test]
fn the_access_file_names_what_is_wrong() {
    let bad = |v: serde_json::Value| parse_access(&v.to_string()).unwrap_err();
    let entry = |extra: serde_json::Value| {
        let mut e = serde_json::json!({"name": "a", "role": "admin", "token_sha256": sha("t")});
        e.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::json!({ "identities": [e] })
    };
    assert!(bad(entry(serde_json::json!({"role": "root"}))).starts_with("identities[0].role"));
    assert!(
        bad(entry(serde_json::json!({"token_sha256": "abc"})))
            .starts_with("identities[0].token_sha256")
    );
    assert!(bad(entry(serde_json::json!({"name": "a b"}))).starts_with("identities[0].name"));
    assert!(bad(entry(serde_json::json!({"pools": []}))).starts_with("identities[0].pools"));
    assert!(
        bad(entry(
            serde_json::json!({"role": "agent", "pools": ["shop"]})
        ))
        .contains("only an admin has a pool scope")
    );
    assert!(bad(entry(serde_json::json!({"token": "plain"}))).contains("unknown field"));
    let twice = serde_json::json!({"identities": [
        {"name": "a", "role": "admin", "token_sha256": sha("t")},
        {"name": "b", "role": "agent", "token_sha256": sha("t")},
    ]});
    assert!(bad(twice).contains("the same token as an earlier identity"));
    assert!(AccessFile::load(Path::new("/nonexistent/access.json")).is_err());
}

/// A request carrying `token` and a FORWARDED_FOR of `on_behalf`'s caller.
fn passed_on<T>(
    auth: &mut Authenticate,
    token: &str,
    on_behalf: &Request<()>,
    body: T,
) -> Request<T> {
    let mut req = Request::new(());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req.metadata_mut().insert(
        FORWARDED_FOR,
        forwarded_for(on_behalf).expect("an identity to pass on"),
    );
    let req = auth.call(req).unwrap();
    let (meta, ext, ()) = req.into_parts();
    Request::from_parts(meta, ext, body)
}

#[test]
fn a_replica_passing_a_call_on_speaks_for_its_caller_and_nobody_else_can() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.json");
    write(&file, &access_json(&[]));
    let mut auth = Authenticate::new(credentials(&file));
    // What the follower admitted: a pool-scoped admin, and an operator.
    let scoped = with_token(&mut auth, "shop-token", ());
    let operator = with_token(&mut auth, "oncall-token", ());

    // The leader sees the caller, with its scope, not the replica.
    let req = passed_on(&mut auth, PEER, &scoped, add_backend("shop"));
    let who = check("AddBackend", &req).unwrap();
    assert_eq!(who.actor(), "shop-team (access-file token)");
    let req = passed_on(&mut auth, PEER, &scoped, add_backend("web"));
    assert!(matches!(
        check("AddBackend", &req),
        Err(AuthError::OutOfScope { .. })
    ));
    let req = passed_on(&mut auth, PEER, &operator, add_backend("shop"));
    assert!(matches!(
        check("AddBackend", &req),
        Err(AuthError::NotAllowed { .. })
    ));

    // Anyone but a replica claiming to speak for the admin stays itself.
    let admin = with_token(&mut auth, ADMIN, ());
    let req = passed_on(&mut auth, "oncall-token", &admin, add_backend("shop"));
    assert!(matches!(
        check("AddBackend", &req),
        Err(AuthError::NotAllowed { .. })
    ));

    // A revoked caller is refused at the leader too.
    write(&file, &access_json(&["shop-team"]));
    let req = passed_on(&mut auth, PEER, &scoped, add_backend("shop"));
    assert!(matches!(
        check("AddBackend", &req),
        Err(AuthError::Revoked { .. })
    ));
}
