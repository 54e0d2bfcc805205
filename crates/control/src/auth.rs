//! Bearer tokens with two roles. `admin` may change configuration; `node`
//! (proxies and agents) may read, watch and report. Tokens are compared in
//! constant time and never logged.

use tonic::{Request, Status};

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Node,
}

/// The tokens this replica accepts.
#[derive(Clone)]
pub struct Tokens {
    admin: Vec<u8>,
    node: Option<Vec<u8>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(<redacted>)")
    }
}

impl Tokens {
    /// The admin token is required; without a node token, nodes use the
    /// admin token.
    pub fn new(admin: String, node: Option<String>) -> Tokens {
        Tokens {
            admin: admin.into_bytes(),
            node: node.filter(|n| !n.is_empty()).map(String::into_bytes),
        }
    }

    /// The token replicas present to each other (node role).
    pub fn peer_token(&self) -> String {
        String::from_utf8_lossy(self.node.as_ref().unwrap_or(&self.admin)).into_owned()
    }

    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        // Check both so the time taken does not reveal which one matched.
        let admin = constant_time_eq(presented, &self.admin);
        let node = self
            .node
            .as_ref()
            .is_some_and(|n| constant_time_eq(presented, n));
        if admin {
            Some(Role::Admin)
        } else if node {
            Some(Role::Node)
        } else {
            None
        }
    }
}

/// Equality whose running time depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0
}

/// Why a call is refused before its work starts (UNAUTHENTICATED, or
/// PERMISSION_DENIED for [`AuthError::NotAdmin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing `authorization: Bearer <token>` metadata")]
    Missing,
    #[error("authorization must be `Bearer <token>`")]
    Malformed,
    #[error("invalid token")]
    Invalid,
    #[error("no credentials")]
    NoCredentials,
    #[error("the node token may read and watch but not change configuration; use an admin token")]
    NotAdmin,
}

/// Who called, as the interceptor found it: a role, or why none.
#[derive(Debug, Clone, Copy)]
struct Caller(Result<Role, AuthError>);

/// What a call needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any valid token (node or admin): reads, watches, reports.
    Any,
    /// The admin token: changes to the configuration.
    Admin,
}

/// A tonic interceptor: resolves the bearer token to a role. In front of
/// the control API it only records what it found, and the service's
/// request wrapper refuses the call ([`check`]), so that refusals are
/// counted in the request metrics like any other answer; in front of the
/// raft transport it refuses at once.
#[derive(Clone)]
pub struct Authenticate {
    tokens: Tokens,
    refuse: bool,
}

impl Authenticate {
    /// Records the caller for [`check`].
    pub fn deferred(tokens: Tokens) -> Self {
        Self {
            tokens,
            refuse: false,
        }
    }

    /// Refuses a call without a valid token itself.
    pub fn refusing(tokens: Tokens) -> Self {
        Self {
            tokens,
            refuse: true,
        }
    }

    fn role(&self, req: &Request<()>) -> Result<Role, AuthError> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or(AuthError::Missing)?;
        let token = header
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .ok_or(AuthError::Malformed)?;
        self.tokens.role_of(token).ok_or(AuthError::Invalid)
    }
}

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.role(&req);
        if self.refuse
            && let Err(e) = caller
        {
            return Err(Error::from(e).into());
        }
        req.extensions_mut().insert(Caller(caller));
        Ok(req)
    }
}

/// Whether the caller of `req` may make a call that needs `access`.
pub fn check<T>(req: &Request<T>, access: Access) -> Result<(), AuthError> {
    let role = match req.extensions().get::<Caller>() {
        Some(Caller(found)) => (*found)?,
        None => return Err(AuthError::NoCredentials),
    };
    match (access, role) {
        (Access::Admin, Role::Node) => Err(AuthError::NotAdmin),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_token() {
        let t = Tokens::new("admin-secret".into(), Some("node-secret".into()));
        assert_eq!(t.role_of(b"admin-secret"), Some(Role::Admin));
        assert_eq!(t.role_of(b"node-secret"), Some(Role::Node));
        assert_eq!(t.role_of(b"admin-secre"), None);
        assert_eq!(t.role_of(b"admin-secretx"), None);
        assert_eq!(t.role_of(b""), None);
        let only_admin = Tokens::new("a".into(), None);
        assert_eq!(only_admin.role_of(b""), None);
        assert_eq!(only_admin.role_of(b"a"), Some(Role::Admin));
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    fn call(auth: &mut Authenticate, header: Option<&str>, access: Access) -> Result<(), Status> {
        use tonic::service::Interceptor as _;
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        let req = auth.call(req)?;
        check(&req, access).map_err(|e| Error::from(e).into())
    }

    #[test]
    fn refusals_keep_their_codes_and_words_deferred_or_not() {
        let tokens = Tokens::new("admin-secret".into(), Some("node-secret".into()));
        for mut auth in [
            Authenticate::deferred(tokens.clone()),
            Authenticate::refusing(tokens.clone()),
        ] {
            let refused =
                |r: Result<(), Status>| r.map_err(|s| (s.code(), s.message().to_string()));
            assert_eq!(
                refused(call(&mut auth, None, Access::Any)),
                Err((
                    tonic::Code::Unauthenticated,
                    "missing `authorization: Bearer <token>` metadata".into()
                ))
            );
            assert_eq!(
                refused(call(&mut auth, Some("Basic x"), Access::Any)),
                Err((
                    tonic::Code::Unauthenticated,
                    "authorization must be `Bearer <token>`".into()
                ))
            );
            assert_eq!(
                refused(call(&mut auth, Some("Bearer nope"), Access::Any)),
                Err((tonic::Code::Unauthenticated, "invalid token".into()))
            );
            assert!(call(&mut auth, Some("Bearer node-secret"), Access::Any).is_ok());
            assert_eq!(
                call(&mut auth, Some("Bearer node-secret"), Access::Admin)
                    .unwrap_err()
                    .code(),
                tonic::Code::PermissionDenied
            );
            assert!(call(&mut auth, Some("Bearer admin-secret"), Access::Admin).is_ok());
        }
        assert_eq!(
            check(&Request::new(()), Access::Any),
            Err(AuthError::NoCredentials)
        );
    }
}
