//! A real HTTP backend process for tests and demos.
fn main() {}
