//! No library: this crate holds the whole-system tests in `tests/`, where
//! every component runs as a real process on loopback ports.
