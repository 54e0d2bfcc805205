//! Real HTTP backends for tests (owned by the proxy work; see the proxy crate's tests).
