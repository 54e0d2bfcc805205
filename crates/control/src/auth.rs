//! Bearer tokens with two roles. `admin` may change configuration; `node`
//! (proxies and agents) may read, watch and report. Tokens are compared in
//! constant time and never logged.

use tonic::{Request, Status};

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

/// A tonic interceptor: resolves the bearer token to a [`Role`] stored in
/// the request's extensions, or rejects the call with UNAUTHENTICATED.
#[derive(Clone)]
pub struct Authenticate(pub Tokens);

impl tonic::service::Interceptor for Authenticate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing `authorization: Bearer <token>` metadata")
        })?;
        let token = header
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        let role = self
            .0
            .role_of(token)
            .ok_or_else(|| Status::unauthenticated("invalid token"))?;
        req.extensions_mut().insert(role);
        Ok(req)
    }
}

/// Fails with PERMISSION_DENIED unless the caller holds the admin role.
pub fn require_admin<T>(req: &Request<T>) -> Result<(), Status> {
    match req.extensions().get::<Role>() {
        Some(Role::Admin) => Ok(()),
        Some(Role::Node) => Err(Status::permission_denied(
            "the node token may read and watch but not change configuration; use an admin token",
        )),
        None => Err(Status::unauthenticated("no credentials")),
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
}
